//! Pods and containers through the real CRI: a wharfd with the busybox test image
//! pulled from a real local registry, and builders for the CRI configs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

use super::daemon::Daemon;
use super::images::ImageBuilder;
use super::registry::Registry;

pub type Runtime = RuntimeServiceClient<Channel>;

/// A wharfd with a pulled busybox image; pods' logs go under `logs`.
pub struct PodEnv {
    pub daemon: Daemon,
    pub registry: Registry,
    pub rt: Runtime,
    pub image: String,
    pub logs: tempfile::TempDir,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The namespace options of a pod config (every `PodEnv::pod_config` has them).
pub fn pod_namespaces(pod: &mut cri::PodSandboxConfig) -> &mut cri::NamespaceOption {
    pod.linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
        .and_then(|s| s.namespace_options.as_mut())
        .expect("pod_config sets namespace options")
}

/// A name unique in this test process.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

impl PodEnv {
    pub async fn start() -> PodEnv {
        PodEnv::start_with_config("").await
    }

    pub async fn start_with_config(config: &str) -> PodEnv {
        PodEnv::start_with_state(config, None).await
    }

    /// With the daemon's state dir at `state` in its temporary dir (see
    /// [`Daemon::start_with_state`]).
    pub async fn start_with_state(config: &str, state: Option<&Path>) -> PodEnv {
        let registry = Registry::start().await;
        registry
            .push("test/busybox", "latest", &ImageBuilder::busybox().build())
            .await;
        let daemon = Daemon::start_with_state(config, state).await;
        let image = format!("{}/test/busybox:latest", registry.host());
        let mut images = daemon.image_client().await;
        images
            .pull_image(cri::PullImageRequest {
                image: Some(cri::ImageSpec {
                    image: image.clone(),
                    ..Default::default()
                }),
                auth: None,
                sandbox_config: None,
            })
            .await
            .expect("pull the busybox test image");
        let rt = daemon.runtime_client().await;
        let logs = tempfile::Builder::new()
            .prefix("wharf-pod-logs-")
            .tempdir()
            .expect("log dir");
        PodEnv {
            daemon,
            registry,
            rt,
            image,
            logs,
        }
    }

    /// A pod config with a unique name; containers get their own PID namespace.
    pub fn pod_config(&self, name: &str) -> cri::PodSandboxConfig {
        let name = unique(name);
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.clone(),
                uid: format!("uid-{name}"),
                namespace: "default".into(),
                attempt: 0,
            }),
            hostname: name.clone(),
            log_directory: self.logs.path().join(&name).display().to_string(),
            labels: HashMap::from([("app".to_string(), name)]),
            linux: Some(cri::LinuxPodSandboxConfig {
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(cri::NamespaceOption {
                        network: cri::NamespaceMode::Pod as i32,
                        pid: cri::NamespaceMode::Container as i32,
                        ipc: cri::NamespaceMode::Pod as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Asserts that no pod is listed and no pod state directory or mount is left (after
    /// a RunPodSandbox that failed).
    pub async fn assert_no_pods_left(&mut self) {
        let pods = self.list_pods(cri::PodSandboxFilter::default()).await;
        assert!(pods.is_empty(), "pods left: {pods:?}");
        let state = self.daemon.paths.state.clone();
        let left: Vec<_> = std::fs::read_dir(state.join("pods"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "a failed pod left {left:?}");
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        assert!(
            !mounts.contains(&format!("{}/pods/", state.display())),
            "a failed pod left mounts"
        );
    }

    pub async fn run_pod(&mut self, config: &cri::PodSandboxConfig) -> String {
        self.run_pod_with(config, "").await.expect("RunPodSandbox")
    }

    pub async fn run_pod_with(
        &mut self,
        config: &cri::PodSandboxConfig,
        handler: &str,
    ) -> Result<String, tonic::Status> {
        self.rt
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: handler.to_string(),
            })
            .await
            .map(|r| r.into_inner().pod_sandbox_id)
    }

    /// A container config running `command` in the busybox image, logging to
    /// `<name>.log` in the pod's log directory.
    pub fn container_config(&self, name: &str, command: &[&str]) -> cri::ContainerConfig {
        cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: name.to_string(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: self.image.clone(),
                ..Default::default()
            }),
            command: command.iter().map(|s| s.to_string()).collect(),
            log_path: format!("{name}.log"),
            labels: HashMap::from([("container".to_string(), name.to_string())]),
            linux: Some(cri::LinuxContainerConfig::default()),
            ..Default::default()
        }
    }

    pub async fn create(
        &mut self,
        pod_id: &str,
        pod: &cri::PodSandboxConfig,
        config: &cri::ContainerConfig,
    ) -> Result<String, tonic::Status> {
        self.rt
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod_id.to_string(),
                config: Some(config.clone()),
                sandbox_config: Some(pod.clone()),
            })
            .await
            .map(|r| r.into_inner().container_id)
    }

    /// Creates and starts a container; returns its ID.
    pub async fn run(
        &mut self,
        pod_id: &str,
        pod: &cri::PodSandboxConfig,
        config: &cri::ContainerConfig,
    ) -> String {
        let id = self
            .create(pod_id, pod, config)
            .await
            .unwrap_or_else(|err| {
                let name = config.metadata.as_ref().map(|m| m.name.as_str());
                panic!("CreateContainer {name:?}: {err:?}")
            });
        self.rt
            .start_container(cri::StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .expect("StartContainer");
        id
    }

    pub async fn status(&mut self, id: &str) -> cri::ContainerStatus {
        self.rt
            .container_status(cri::ContainerStatusRequest {
                container_id: id.to_string(),
                verbose: false,
            })
            .await
            .expect("ContainerStatus")
            .into_inner()
            .status
            .expect("status")
    }

    /// Waits until the container has exited; returns its status.
    pub async fn wait_exited(&mut self, id: &str) -> cri::ContainerStatus {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = self.status(id).await;
            if status.state == cri::ContainerState::ContainerExited as i32 {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "container {id} did not exit within 30s: {status:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn exec(
        &mut self,
        id: &str,
        cmd: &[&str],
        timeout: i64,
    ) -> Result<cri::ExecSyncResponse, tonic::Status> {
        self.rt
            .exec_sync(cri::ExecSyncRequest {
                container_id: id.to_string(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                timeout,
            })
            .await
            .map(|r| r.into_inner())
    }

    /// Runs `cmd` in the container and returns its trimmed stdout; panics unless it
    /// exits 0.
    pub async fn exec_ok(&mut self, id: &str, cmd: &[&str]) -> String {
        let out = self.exec(id, cmd, 30).await.expect("ExecSync");
        assert_eq!(
            out.exit_code,
            0,
            "{cmd:?} in {id} exited {}: stdout {:?} stderr {:?}",
            out.exit_code,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub async fn stop_container(&mut self, id: &str, timeout: i64) {
        self.rt
            .stop_container(cri::StopContainerRequest {
                container_id: id.to_string(),
                timeout,
            })
            .await
            .expect("StopContainer");
    }

    pub async fn remove_container(&mut self, id: &str) {
        self.rt
            .remove_container(cri::RemoveContainerRequest {
                container_id: id.to_string(),
            })
            .await
            .expect("RemoveContainer");
    }

    pub async fn stop_pod(&mut self, id: &str) {
        self.rt
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: id.to_string(),
            })
            .await
            .expect("StopPodSandbox");
    }

    pub async fn remove_pod(&mut self, id: &str) {
        self.rt
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: id.to_string(),
            })
            .await
            .expect("RemovePodSandbox");
    }

    pub async fn list_containers(&mut self, filter: cri::ContainerFilter) -> Vec<cri::Container> {
        self.rt
            .list_containers(cri::ListContainersRequest {
                filter: Some(filter),
            })
            .await
            .expect("ListContainers")
            .into_inner()
            .containers
    }

    pub async fn list_pods(&mut self, filter: cri::PodSandboxFilter) -> Vec<cri::PodSandbox> {
        self.rt
            .list_pod_sandbox(cri::ListPodSandboxRequest {
                filter: Some(filter),
            })
            .await
            .expect("ListPodSandbox")
            .into_inner()
            .items
    }

    /// The container's log file (pod log directory + container log path).
    pub fn log_path(&self, pod: &cri::PodSandboxConfig, name: &str) -> PathBuf {
        Path::new(&pod.log_directory).join(format!("{name}.log"))
    }
}

/// Parses CRI log lines into (stream, tag, text).
pub fn parse_log(text: &str) -> Vec<(String, String, String)> {
    text.lines()
        .map(|line| {
            let mut parts = line.splitn(4, ' ');
            let time = parts.next().unwrap_or_default();
            chrono::DateTime::parse_from_rfc3339(time)
                .unwrap_or_else(|e| panic!("bad CRI log timestamp {time:?} in {line:?}: {e}"));
            let stream = parts.next().unwrap_or_default().to_string();
            let tag = parts.next().unwrap_or_default().to_string();
            let text = parts.next().unwrap_or_default().to_string();
            (stream, tag, text)
        })
        .collect()
}

/// Waits until `path` exists and `pred` holds for its contents.
pub async fn wait_for_file(path: &Path, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if pred(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{} did not reach the expected contents within 20s; it holds {text:?}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
