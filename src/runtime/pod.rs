//! Pod sandboxes: RunPodSandbox, StopPodSandbox, RemovePodSandbox.
//!
//! A pod is namespaces pinned by bind mounts (network, IPC, UTS), files its containers
//! bind-mount (hostname, hosts, resolv.conf), a /dev/shm tmpfs, and in POD pid mode a
//! tiny PID-namespace holder (`wharf-monitor pause`), since a PID namespace dies with its
//! first process and cannot be kept by a bind mount. No infra container otherwise.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_cri::v1 as cri;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use prost::Message;

use crate::store::{Kind, CRI_NAMESPACE};

use super::monitor;
use super::namespaces::{self, NamespaceRequest};
use super::records::{now_nanos, NetworkPhase, PodNetwork, PodRecord, PodState, ProcessRef};
use super::service::{blocking, new_id, Result, Runtime, RuntimeError};
use crate::cni::{Attachment, PortMapping, RuntimeConfig as CniRuntimeConfig};

/// Size of a pod's /dev/shm (Docker's and containerd's default).
const SHM_SIZE: &str = "size=65536k";

/// `NamespaceMode` values of the CRI.
pub(super) const MODE_POD: i32 = 0;
pub(super) const MODE_NODE: i32 = 2;

/// The record name that reserves a pod's metadata (unique per CRI namespace).
fn pod_name(meta: &cri::PodSandboxMetadata) -> String {
    format!(
        "{}_{}_{}_{}",
        meta.name, meta.namespace, meta.uid, meta.attempt
    )
}

impl Runtime {
    /// RunPodSandbox: returns the new pod's ID.
    pub async fn run_pod(
        self: &Arc<Self>,
        config: cri::PodSandboxConfig,
        runtime_handler: &str,
    ) -> Result<String> {
        let meta = config
            .metadata
            .clone()
            .ok_or_else(|| RuntimeError::invalid("config.metadata", "is missing"))?;
        if meta.name.is_empty() {
            return Err(RuntimeError::invalid("config.metadata.name", "is empty"));
        }
        self.oci_runtime(runtime_handler)?;
        let options = config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.clone())
            .unwrap_or_default();
        if options.network == 3
            || options.ipc == 3
            || options.pid == 3 && options.target_id.is_empty()
        {
            return Err(RuntimeError::invalid(
                "config.linux.security_context.namespace_options",
                "TARGET mode is only valid for a container's pid namespace",
            ));
        }
        let host_network = options.network == MODE_NODE;
        let host_ipc = options.ipc == MODE_NODE;
        let cgroup_parent = config
            .linux
            .as_ref()
            .map(|l| l.cgroup_parent.clone())
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| self.config.runtime.default_cgroup_parent.clone());
        if !cgroup_parent.starts_with('/') || cgroup_parent.split('/').any(|c| c == "..") {
            return Err(RuntimeError::invalid(
                "config.linux.cgroup_parent",
                format!("{cgroup_parent:?} is not an absolute cgroupfs path"),
            ));
        }
        let id = new_id()?;
        let dir = self.state_dir().join("pods").join(&id);
        let mut record = PodRecord {
            id: id.clone(),
            state: PodState::Creating,
            config: config.encode_to_vec(),
            runtime_handler: runtime_handler.to_string(),
            created_at: now_nanos(),
            namespaces: Default::default(),
            pid_holder: None,
            cgroup_parent,
            dir: dir.clone(),
            shm_mounted: false,
            network: None,
        };
        let name = pod_name(&meta);
        // Intent first: the name is reserved and a crash from here on is cleaned up by
        // the start-up pass.
        self.store
            .update(|tx| tx.insert(CRI_NAMESPACE, Kind::Pod, &id, Some(&name), &record))
            .map_err(|err| match err {
                crate::store::StoreError::NameTaken { .. } => RuntimeError::AlreadyExists(format!(
                    "pod sandbox name {name:?} is already in use by another pod"
                )),
                other => other.into(),
            })?;
        let _guard = self.lock(&id).await;
        let result = async {
            self.setup_pod(
                &mut record,
                &config,
                host_network,
                host_ipc,
                options.pid == MODE_POD,
            )
            .await?;
            record.state = PodState::Ready;
            self.save_pod(&record)
        }
        .await;
        match result {
            Ok(()) => {
                tracing::info!(pod = %id, name = %name, "pod sandbox ready");
                Ok(id)
            }
            Err(err) => {
                self.cleanup_pod(&record).await;
                self.release_name(Kind::Pod, &id);
                Err(err)
            }
        }
    }

    async fn setup_pod(
        &self,
        record: &mut PodRecord,
        config: &cri::PodSandboxConfig,
        host_network: bool,
        host_ipc: bool,
        shared_pid: bool,
    ) -> Result<()> {
        let dir = record.dir.clone();
        let hostname = if host_network || config.hostname.is_empty() {
            nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().to_string())
                .unwrap_or_default()
        } else {
            config.hostname.clone()
        };
        let dns = config.dns_config.clone();
        let request = NamespaceRequest {
            network: !host_network,
            ipc: !host_ipc,
            // The UTS namespace follows the network's, as in containerd.
            uts: !host_network,
        };
        let pod_hostname = hostname.clone();
        let (pinned, shm_mounted) = blocking(move || {
            std::fs::create_dir_all(&dir).map_err(RuntimeError::io(format!(
                "creating pod directory {}",
                dir.display()
            )))?;
            write_file(
                &dir.join("hostname"),
                format!("{pod_hostname}\n").as_bytes(),
            )?;
            write_file(
                &dir.join("hosts"),
                &hosts_file(host_network, &pod_hostname)?,
            )?;
            write_file(&dir.join("resolv.conf"), &resolv_conf(dns.as_ref())?)?;
            let pinned = namespaces::pin(&dir.join("ns"), request, &pod_hostname)?;
            let mut shm_mounted = false;
            if !host_ipc {
                let shm = dir.join("shm");
                std::fs::create_dir_all(&shm)
                    .map_err(RuntimeError::io(format!("creating {}", shm.display())))?;
                mount(
                    Some("shm"),
                    &shm,
                    Some("tmpfs"),
                    MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                    Some(format!("mode=1777,{SHM_SIZE}").as_str()),
                )
                .map_err(|e| RuntimeError::Io {
                    context: format!("mounting the pod's /dev/shm at {}", shm.display()),
                    source: e.into(),
                })?;
                shm_mounted = true;
            }
            Ok((pinned, shm_mounted))
        })
        .await?;
        record.namespaces = pinned;
        record.shm_mounted = shm_mounted;
        if !host_network {
            self.attach_network(record, config).await?;
        }
        if shared_pid {
            record.pid_holder = Some(self.start_pid_holder(&record.dir).await?);
        }
        // Persist what was made so far, so a crash after this point is cleaned up.
        self.store
            .update(|tx| tx.replace(CRI_NAMESPACE, Kind::Pod, &record.id, &*record))?;
        Ok(())
    }

    /// Attaches the pod's network namespace to the selected network (CNI or the
    /// built-in bridge); in network mode `none` the pod keeps loopback only.
    async fn attach_network(
        &self,
        record: &mut PodRecord,
        config: &cri::PodSandboxConfig,
    ) -> Result<()> {
        let Some(selected) = self.cni.select().map_err(RuntimeError::Network)? else {
            return Ok(());
        };
        record.network = Some(PodNetwork {
            name: self.cni.name(&selected),
            ifname: POD_IFNAME.to_string(),
            phase: NetworkPhase::Attaching,
            ips: Vec::new(),
        });
        // Intent first: a crash during ADD still owes a DEL.
        self.store
            .update(|tx| tx.replace(CRI_NAMESPACE, Kind::Pod, &record.id, &*record))?;
        let attachment = attachment(record, config)?;
        let result = self
            .cni
            .add(&selected, &attachment)
            .await
            .map_err(RuntimeError::Network)?;
        if let Some(network) = record.network.as_mut() {
            network.phase = NetworkPhase::Attached;
            network.ips = result.pod_ips().iter().map(|ip| ip.to_string()).collect();
        }
        Ok(())
    }

    /// Runs CNI DEL for the pod once (it is owed after ADD started, until it ran).
    async fn detach_network(&self, pod: &mut PodRecord) -> Result<()> {
        let owed = pod
            .network
            .as_ref()
            .is_some_and(|n| n.phase != NetworkPhase::Detached);
        if !owed {
            return Ok(());
        }
        let attachment = attachment(pod, &pod.config())?;
        self.cni
            .del(&attachment)
            .await
            .map_err(RuntimeError::Network)?;
        if let Some(network) = pod.network.as_mut() {
            network.phase = NetworkPhase::Detached;
        }
        Ok(())
    }

    /// Starts the holder of a pod's shared PID namespace.
    async fn start_pid_holder(&self, dir: &Path) -> Result<ProcessRef> {
        let pid_file = dir.join("pause.pid");
        let output = tokio::process::Command::new(&self.monitor)
            .arg("pause")
            .arg("--pid-file")
            .arg(&pid_file)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .output()
            .await
            .map_err(RuntimeError::io(format!(
                "starting the pod PID namespace holder {}",
                self.monitor.display()
            )))?;
        if !output.status.success() {
            return Err(RuntimeError::Internal(format!(
                "the pod PID namespace holder failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| {
                RuntimeError::Internal(format!("{} holds no pid", pid_file.display()))
            })?;
        let start_time = monitor::start_time(pid).ok_or_else(|| {
            RuntimeError::Internal(format!("the pod PID namespace holder {pid} is gone"))
        })?;
        Ok(ProcessRef { pid, start_time })
    }

    /// Undoes whatever of `pod` exists: holder, shm, pins, directory. Errors are logged;
    /// the start-up reconcile retries what is left.
    pub(super) async fn cleanup_pod(&self, pod: &PodRecord) {
        if let Some(holder) = pod.pid_holder {
            kill_holder(holder).await;
        }
        let mut pod = pod.clone();
        if let Err(err) = self.detach_network(&mut pod).await {
            tracing::error!(pod = %pod.id, "CNI DEL: {err}");
        }
        let dir = pod.dir.clone();
        if let Err(err) = blocking(move || teardown_pod_dir(&dir)).await {
            tracing::error!(pod = %pod.id, "cleaning up pod: {err}");
        }
    }

    /// StopPodSandbox: stops every container of the pod and its PID namespace holder.
    /// Stopping a stopped or unknown pod succeeds.
    pub async fn stop_pod(self: &Arc<Self>, query: &str) -> Result<()> {
        let Some(pod) = self.find_pod(query) else {
            return Ok(());
        };
        let _guard = self.lock(&pod.id).await;
        for container in self.pod_containers(&pod.id) {
            self.stop_container(&container, 0).await?;
        }
        let Some(mut pod) = self.pod(&pod.id) else {
            return Ok(());
        };
        if let Some(holder) = pod.pid_holder.take() {
            kill_holder(holder).await;
        }
        let network_was_owed = pod
            .network
            .as_ref()
            .is_some_and(|n| n.phase != NetworkPhase::Detached);
        self.detach_network(&mut pod).await?;
        if pod.state != PodState::NotReady || network_was_owed {
            pod.state = PodState::NotReady;
            self.save_pod(&pod)?;
            tracing::info!(pod = %pod.id, "pod sandbox stopped");
        }
        Ok(())
    }

    /// RemovePodSandbox: stops and removes the pod's containers, then the pod.
    /// Removing an unknown pod succeeds.
    pub async fn remove_pod(self: &Arc<Self>, query: &str) -> Result<()> {
        let Some(pod) = self.find_pod(query) else {
            return Ok(());
        };
        self.stop_pod(&pod.id).await?;
        let guard = self.lock(&pod.id).await;
        for container in self.pod_containers(&pod.id) {
            self.remove_container(&container).await?;
        }
        let Some(pod) = self.pod(&pod.id) else {
            return Ok(());
        };
        self.cleanup_pod(&pod).await;
        self.store
            .update(|tx| tx.delete(CRI_NAMESPACE, Kind::Pod, &pod.id))?;
        {
            let mut pods = self.pods.write().unwrap_or_else(|p| p.into_inner());
            pods.remove(&pod.id);
        }
        drop(guard);
        self.forget_lock(&pod.id);
        tracing::info!(pod = %pod.id, "pod sandbox removed");
        Ok(())
    }
}

/// The interface name of a pod's network inside its namespace.
const POD_IFNAME: &str = "eth0";

/// The CNI attachment of a pod: its netns, CNI_ARGS as kubelet's runtimes pass them,
/// and the port mappings for plugins that ask for them.
fn attachment(pod: &PodRecord, config: &cri::PodSandboxConfig) -> Result<Attachment> {
    let netns = pod.namespaces.network.clone().ok_or_else(|| {
        RuntimeError::Internal(format!("pod {} has no network namespace to attach", pod.id))
    })?;
    let meta = config.metadata.clone().unwrap_or_default();
    let mut port_mappings = Vec::new();
    for (i, m) in config.port_mappings.iter().enumerate() {
        if m.host_port == 0 {
            continue;
        }
        let port = |v: i32, field: &str| {
            u16::try_from(v).ok().filter(|p| *p > 0).ok_or_else(|| {
                RuntimeError::invalid(
                    format!("config.port_mappings[{i}].{field}"),
                    format!("{v} is not a port number"),
                )
            })
        };
        let protocol = match cri::Protocol::try_from(m.protocol) {
            Ok(cri::Protocol::Tcp) => "tcp",
            Ok(cri::Protocol::Udp) => "udp",
            Ok(cri::Protocol::Sctp) => "sctp",
            Err(_) => {
                return Err(RuntimeError::invalid(
                    format!("config.port_mappings[{i}].protocol"),
                    format!("unknown protocol {}", m.protocol),
                ))
            }
        };
        port_mappings.push(PortMapping {
            host_port: port(m.host_port, "host_port")?,
            container_port: port(m.container_port, "container_port")?,
            protocol: protocol.to_string(),
            host_ip: m.host_ip.clone(),
        });
    }
    Ok(Attachment {
        container_id: pod.id.clone(),
        netns,
        ifname: pod
            .network
            .as_ref()
            .map(|n| n.ifname.clone())
            .unwrap_or_else(|| POD_IFNAME.to_string()),
        args: vec![
            ("IgnoreUnknown".into(), "1".into()),
            ("K8S_POD_NAMESPACE".into(), meta.namespace),
            ("K8S_POD_NAME".into(), meta.name),
            ("K8S_POD_INFRA_CONTAINER_ID".into(), pod.id.clone()),
            ("K8S_POD_UID".into(), meta.uid),
        ],
        capability_args: CniRuntimeConfig {
            port_mappings,
            ..Default::default()
        },
    })
}

/// Ends a PID-namespace holder; the kernel then kills everything left in the namespace.
async fn kill_holder(holder: ProcessRef) {
    match monitor::signal(holder.pid, holder.start_time, nix::libc::SIGKILL) {
        Ok(true) => {
            let _ = tokio::time::timeout(
                Duration::from_secs(5),
                monitor::wait_exit(holder.pid, holder.start_time),
            )
            .await;
        }
        Ok(false) => {}
        Err(err) => tracing::warn!(pid = holder.pid, "killing the pod PID holder: {err}"),
    }
}

/// Unmounts and removes a pod's state directory (shm, namespace pins, files).
pub(super) fn teardown_pod_dir(dir: &Path) -> Result<()> {
    let shm = dir.join("shm");
    if let Err(err) = umount2(&shm, MntFlags::MNT_DETACH) {
        if err != nix::errno::Errno::EINVAL && err != nix::errno::Errno::ENOENT {
            return Err(RuntimeError::Io {
                context: format!("unmounting {}", shm.display()),
                source: err.into(),
            });
        }
    }
    namespaces::unpin(&dir.join("ns"))?;
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(RuntimeError::Io {
            context: format!("removing {}", dir.display()),
            source: err,
        }),
    }
}

fn write_file(path: &PathBuf, contents: &[u8]) -> Result<()> {
    let mut file = std::fs::File::create(path)
        .map_err(RuntimeError::io(format!("creating {}", path.display())))?;
    file.write_all(contents)
        .map_err(RuntimeError::io(format!("writing {}", path.display())))?;
    file.set_permissions(std::fs::Permissions::from_mode(0o644))
        .map_err(RuntimeError::io(format!("chmod {}", path.display())))
}

/// /etc/hosts of a pod: the host's for host-network pods, else localhost entries and
/// the pod's hostname (kubelet mounts its own managed file over this for k8s pods).
fn hosts_file(host_network: bool, hostname: &str) -> Result<Vec<u8>> {
    if host_network {
        return std::fs::read("/etc/hosts").or_else(|err| match err.kind() {
            std::io::ErrorKind::NotFound => Ok(Vec::new()),
            _ => Err(RuntimeError::Io {
                context: "reading /etc/hosts".into(),
                source: err,
            }),
        });
    }
    let mut text = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\n\
         ff02::2\tip6-allrouters\n",
    );
    if !hostname.is_empty() {
        text.push_str(&format!("127.0.1.1\t{hostname}\n"));
    }
    Ok(text.into_bytes())
}

/// /etc/resolv.conf of a pod: from the CRI `DNSConfig` when given (as containerd writes
/// it), else the host's.
fn resolv_conf(dns: Option<&cri::DnsConfig>) -> Result<Vec<u8>> {
    let Some(dns) =
        dns.filter(|d| !(d.servers.is_empty() && d.searches.is_empty() && d.options.is_empty()))
    else {
        return std::fs::read("/etc/resolv.conf").or_else(|err| match err.kind() {
            std::io::ErrorKind::NotFound => Ok(Vec::new()),
            _ => Err(RuntimeError::Io {
                context: "reading /etc/resolv.conf".into(),
                source: err,
            }),
        });
    };
    for (i, value) in dns
        .servers
        .iter()
        .chain(&dns.searches)
        .chain(&dns.options)
        .enumerate()
    {
        if value.is_empty() || value.contains(['\n', ' ', '\t']) {
            return Err(RuntimeError::invalid(
                "config.dns_config",
                format!("entry {i} {value:?} is empty or contains whitespace"),
            ));
        }
    }
    let mut text = String::new();
    if !dns.searches.is_empty() {
        text.push_str(&format!("search {}\n", dns.searches.join(" ")));
    }
    for server in &dns.servers {
        text.push_str(&format!("nameserver {server}\n"));
    }
    if !dns.options.is_empty() {
        text.push_str(&format!("options {}\n", dns.options.join(" ")));
    }
    Ok(text.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_from_dns_config() {
        let dns = cri::DnsConfig {
            servers: vec!["10.0.0.10".into()],
            searches: vec![
                "default.svc.cluster.local".into(),
                "svc.cluster.local".into(),
            ],
            options: vec!["ndots:5".into()],
        };
        let text = String::from_utf8(resolv_conf(Some(&dns)).unwrap()).unwrap();
        assert_eq!(
            text,
            "search default.svc.cluster.local svc.cluster.local\nnameserver 10.0.0.10\noptions ndots:5\n"
        );
        let bad = cri::DnsConfig {
            servers: vec!["10.0.0.10\nnameserver 1.1.1.1".into()],
            ..Default::default()
        };
        assert!(resolv_conf(Some(&bad)).is_err());
    }

    #[test]
    fn pod_hosts_file_names_the_pod() {
        let text = String::from_utf8(hosts_file(false, "web-0").unwrap()).unwrap();
        assert!(text.starts_with("127.0.0.1\tlocalhost\n"));
        assert!(text.ends_with("127.0.1.1\tweb-0\n"));
    }

    #[test]
    fn pod_names_include_uid_and_attempt() {
        let meta = cri::PodSandboxMetadata {
            name: "web".into(),
            uid: "u1".into(),
            namespace: "default".into(),
            attempt: 1,
        };
        assert_eq!(pod_name(&meta), "web_default_u1_1");
    }
}
