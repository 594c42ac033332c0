//! CRI pod sandbox and container calls: request validation, filters, and the
//! translation of wharf's records into CRI messages. The work is in `crate::runtime`.

use std::collections::HashMap;

use k8s_cri::v1 as cri;
use tonic::Status;

use super::status::{self, from_runtime};
use super::{CriServer, NAMESPACE};
use crate::runtime::{ContainerRecord, ContainerState, PodRecord, PodState};

fn pod_state(state: PodState) -> i32 {
    match state {
        PodState::Ready => cri::PodSandboxState::SandboxReady as i32,
        PodState::NotReady | PodState::Creating => cri::PodSandboxState::SandboxNotready as i32,
    }
}

fn container_state(state: ContainerState) -> i32 {
    match state {
        ContainerState::Created | ContainerState::Creating => {
            cri::ContainerState::ContainerCreated as i32
        }
        ContainerState::Running => cri::ContainerState::ContainerRunning as i32,
        ContainerState::Exited => cri::ContainerState::ContainerExited as i32,
        ContainerState::Unknown => cri::ContainerState::ContainerUnknown as i32,
    }
}

fn labels_match(labels: &HashMap<String, String>, selector: &HashMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

pub async fn run_pod_sandbox(
    server: &CriServer,
    request: cri::RunPodSandboxRequest,
) -> Result<cri::RunPodSandboxResponse, Status> {
    let config = request
        .config
        .ok_or_else(|| Status::invalid_argument("config: is missing"))?;
    let pod_sandbox_id = server
        .runtime
        .run_pod(NAMESPACE, config, &request.runtime_handler)
        .await
        .map_err(from_runtime)?;
    Ok(cri::RunPodSandboxResponse { pod_sandbox_id })
}

pub async fn stop_pod_sandbox(server: &CriServer, id: &str) -> Result<(), Status> {
    server
        .runtime
        .stop_pod(NAMESPACE, id)
        .await
        .map_err(from_runtime)
}

pub async fn remove_pod_sandbox(server: &CriServer, id: &str) -> Result<(), Status> {
    server
        .runtime
        .remove_pod(NAMESPACE, id)
        .await
        .map_err(from_runtime)
}

pub fn pod_sandbox_status(
    server: &CriServer,
    request: &cri::PodSandboxStatusRequest,
) -> Result<cri::PodSandboxStatusResponse, Status> {
    let pod = server
        .runtime
        .find_pod(NAMESPACE, &request.pod_sandbox_id)
        .ok_or_else(|| {
            Status::not_found(format!(
                "pod sandbox {:?} not found",
                request.pod_sandbox_id
            ))
        })?;
    let config = pod.config().map_err(|err| status::from_error(&err))?;
    let options = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.clone());
    let status = cri::PodSandboxStatus {
        id: pod.id.clone(),
        metadata: config.metadata.clone(),
        state: pod_state(pod.state),
        created_at: pod.created_at,
        network: Some(pod_network_status(&pod)),
        linux: Some(cri::LinuxPodSandboxStatus {
            namespaces: Some(cri::Namespace { options }),
        }),
        labels: config.labels.clone(),
        annotations: config.annotations.clone(),
        runtime_handler: pod.runtime_handler.clone(),
    };
    let info = if request.verbose {
        HashMap::from([("info".to_string(), pod_info(&pod, &config).to_string())])
    } else {
        HashMap::new()
    };
    Ok(cri::PodSandboxStatusResponse {
        status: Some(status),
        info,
        containers_statuses: Vec::new(),
        timestamp: 0,
    })
}

fn pod_network_status(pod: &PodRecord) -> cri::PodSandboxNetworkStatus {
    let ips = pod
        .network
        .as_ref()
        .map(|n| n.ips.clone())
        .unwrap_or_default();
    let mut ips = ips.into_iter();
    cri::PodSandboxNetworkStatus {
        ip: ips.next().unwrap_or_default(),
        additional_ips: ips.map(|ip| cri::PodIp { ip }).collect(),
    }
}

fn pod_info(pod: &PodRecord, config: &cri::PodSandboxConfig) -> serde_json::Value {
    serde_json::json!({
        "id": pod.id,
        "state": pod.state,
        "runtimeHandler": pod.runtime_handler,
        "hostname": config.hostname,
        "logDirectory": config.log_directory,
        "cgroupParent": pod.cgroup_parent,
        "namespaces": pod.namespaces,
        "pidNamespaceHolder": pod.pid_holder,
        "stateDir": pod.dir,
        "shm": pod.shm_mounted.then(|| pod.dir.join("shm")),
        "network": pod.network,
    })
}

pub fn list_pod_sandbox(
    server: &CriServer,
    filter: Option<cri::PodSandboxFilter>,
) -> cri::ListPodSandboxResponse {
    let filter = filter.unwrap_or_default();
    let mut items = Vec::new();
    server.runtime.for_each_pod(NAMESPACE, |pod| {
        if pod.state == PodState::Creating
            || (!filter.id.is_empty() && !pod.id.starts_with(&filter.id))
            || filter
                .state
                .as_ref()
                .is_some_and(|s| s.state != pod_state(pod.state))
        {
            return;
        }
        let config = match pod.list_fields() {
            Ok(config) => config,
            Err(err) => {
                // Skipped and logged, rather than failing kubelet's whole list.
                tracing::error!(pod = %pod.id, "ListPodSandbox skips it: {err}");
                return;
            }
        };
        if !labels_match(&config.labels, &filter.label_selector) {
            return;
        }
        items.push(cri::PodSandbox {
            id: pod.id.clone(),
            metadata: config.metadata,
            state: pod_state(pod.state),
            created_at: pod.created_at,
            labels: config.labels,
            annotations: config.annotations,
            runtime_handler: pod.runtime_handler.clone(),
        });
    });
    items.sort_by_key(|p| p.created_at);
    cri::ListPodSandboxResponse { items }
}

pub async fn create_container(
    server: &CriServer,
    request: cri::CreateContainerRequest,
) -> Result<cri::CreateContainerResponse, Status> {
    let config = request
        .config
        .ok_or_else(|| Status::invalid_argument("config: is missing"))?;
    let container_id = server
        .runtime
        .create_container(NAMESPACE, &request.pod_sandbox_id, config)
        .await
        .map_err(from_runtime)?;
    Ok(cri::CreateContainerResponse { container_id })
}

fn image_spec(container: &ContainerRecord) -> cri::ImageSpec {
    cri::ImageSpec {
        image: container.image.clone(),
        ..Default::default()
    }
}

pub fn list_containers(
    server: &CriServer,
    filter: Option<cri::ContainerFilter>,
) -> cri::ListContainersResponse {
    let filter = filter.unwrap_or_default();
    let mut containers = Vec::new();
    server.runtime.for_each_container(NAMESPACE, |c| {
        if c.state == ContainerState::Creating
            || (!filter.id.is_empty() && !c.id.starts_with(&filter.id))
            || (!filter.pod_sandbox_id.is_empty() && !c.pod_id.starts_with(&filter.pod_sandbox_id))
            || filter
                .state
                .as_ref()
                .is_some_and(|s| s.state != container_state(c.state))
        {
            return;
        }
        let config = match c.list_fields() {
            Ok(config) => config,
            Err(err) => {
                tracing::error!(container = %c.id, "ListContainers skips it: {err}");
                return;
            }
        };
        if !labels_match(&config.labels, &filter.label_selector) {
            return;
        }
        containers.push(cri::Container {
            id: c.id.clone(),
            pod_sandbox_id: c.pod_id.clone(),
            metadata: config.metadata,
            image: Some(image_spec(c)),
            image_ref: c.image_ref.clone(),
            state: container_state(c.state),
            created_at: c.created_at,
            labels: config.labels,
            annotations: config.annotations,
            image_id: c.image_id.clone(),
        });
    });
    containers.sort_by_key(|c| c.created_at);
    cri::ListContainersResponse { containers }
}

pub fn container_status(
    server: &CriServer,
    request: &cri::ContainerStatusRequest,
) -> Result<cri::ContainerStatusResponse, Status> {
    let c = server
        .runtime
        .find_container(NAMESPACE, &request.container_id)
        .ok_or_else(|| {
            Status::not_found(format!("container {:?} not found", request.container_id))
        })?;
    let config = c.config().map_err(|err| status::from_error(&err))?;
    let mounts = config
        .mounts
        .iter()
        .map(|m| cri::Mount {
            container_path: m.container_path.clone(),
            host_path: m.host_path.clone(),
            readonly: m.readonly,
            selinux_relabel: m.selinux_relabel,
            propagation: m.propagation,
            ..Default::default()
        })
        .collect();
    let resources = config.linux.as_ref().and_then(|l| l.resources.clone());
    let status = cri::ContainerStatus {
        id: c.id.clone(),
        metadata: config.metadata.clone(),
        state: container_state(c.state),
        created_at: c.created_at,
        started_at: c.started_at,
        finished_at: c.finished_at,
        exit_code: c.exit_code,
        image: Some(image_spec(&c)),
        image_ref: c.image_ref.clone(),
        reason: c.reason.clone(),
        message: c.message.clone(),
        labels: config.labels.clone(),
        annotations: config.annotations.clone(),
        mounts,
        log_path: c.log_path.clone(),
        resources: resources.map(|linux| cri::ContainerResources {
            linux: Some(linux),
            ..Default::default()
        }),
        image_id: c.image_id.clone(),
        user: None,
    };
    let info = if request.verbose {
        let info = serde_json::json!({
            "id": c.id,
            "sandboxID": c.pod_id,
            "runtimeHandler": c.runtime_handler,
            "bundle": c.bundle,
            "pid": c.monitor.map(|m| m.pid),
            "monitorPid": c.monitor.map(|m| m.monitor_pid),
            "snapshotChain": c.chain_ids,
        });
        HashMap::from([("info".to_string(), info.to_string())])
    } else {
        HashMap::new()
    };
    Ok(cri::ContainerStatusResponse {
        status: Some(status),
        info,
    })
}

pub async fn exec_sync(
    server: &CriServer,
    request: cri::ExecSyncRequest,
) -> Result<cri::ExecSyncResponse, Status> {
    let output = server
        .runtime
        .exec_sync(
            NAMESPACE,
            &request.container_id,
            request.cmd,
            request.timeout,
        )
        .await
        .map_err(from_runtime)?;
    Ok(cri::ExecSyncResponse {
        stdout: output.stdout,
        stderr: output.stderr,
        exit_code: output.exit_code,
    })
}
