//! Pod sandboxes: RunPodSandbox, StopPodSandbox, RemovePodSandbox.
//!
//! A pod is namespaces pinned by bind mounts (network, IPC, UTS), files its containers
//! bind-mount (hostname, hosts, resolv.conf), a /dev/shm tmpfs, and in POD pid mode a
//! tiny PID-namespace holder (`wharf-monitor pause`), since a PID namespace dies with its
//! first process and cannot be kept by a bind mount. No infra container otherwise.
//!
//! The pod's files are written by pod_files.rs; its config is checked by
//! pod_validation.rs. This file holds the lifecycle, the network attachment's arguments
//! and the teardown.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use tracing::Instrument;

use crate::store::Kind;

use super::model::{DnsConfig, NamespaceMode, PodSpec};
use super::monitor;
use super::namespaces::{self, NamespaceRequest};
use super::pod_files;
use super::pod_validation::{given_dns_config, port_mappings, validate_pod_config};
use super::records::{now_nanos, NetworkPhase, PodNetwork, PodRecord, PodState, ProcessRef};
use super::service::{blocking, new_id, Result, Runtime, RuntimeError};
use crate::cni::{Attachment, Bandwidth, Dns, RuntimeConfig as CniRuntimeConfig};

/// Size of a pod's /dev/shm (Docker's and containerd's default).
const SHM_SIZE: &str = "size=65536k";

/// The file in a pod's state dir where the PID-namespace holder writes its pid.
const PAUSE_PID_FILE: &str = "pause.pid";

impl Runtime {
    /// RunPodSandbox: makes a pod from `spec` and returns its ID. The work runs detached from the caller: a client that cancels
    /// (a deadline, a dropped connection) drops only its wait, and the pod is either
    /// made or rolled back all the same, never left half-made with its name taken.
    ///
    /// `bandwidth` is the pod's traffic shaping, which each front end parses from its own
    /// way of asking (the CRI: kubelet's bandwidth annotations); `extension` is the
    /// front end's own data, stored with the pod and never read by the core.
    pub async fn run_pod(
        self: &Arc<Self>,
        namespace: &str,
        spec: PodSpec,
        extension: Vec<u8>,
        runtime_handler: &str,
        bandwidth: Option<Bandwidth>,
    ) -> Result<String> {
        let runtime = self.clone();
        let handler = runtime_handler.to_string();
        let namespace = namespace.to_string();
        tokio::spawn(
            async move {
                runtime
                    .make_pod(&namespace, spec, extension, &handler, bandwidth)
                    .await
            }
            .in_current_span(),
        )
        .await
        .map_err(|err| RuntimeError::Internal(format!("RunPodSandbox task failed: {err}")))?
    }

    async fn make_pod(
        self: &Arc<Self>,
        namespace: &str,
        spec: PodSpec,
        extension: Vec<u8>,
        runtime_handler: &str,
        bandwidth: Option<Bandwidth>,
    ) -> Result<String> {
        if spec.name.is_empty() {
            return Err(RuntimeError::invalid("name", "is empty"));
        }
        self.oci_runtime(runtime_handler)?;
        let modes = &spec.namespaces;
        if modes.network == NamespaceMode::Target
            || modes.ipc == NamespaceMode::Target
            || modes.pid == NamespaceMode::Target && modes.target_id.is_empty()
        {
            return Err(RuntimeError::invalid(
                "config.linux.security_context.namespace_options",
                "TARGET mode is only valid for a container's pid namespace",
            ));
        }
        let host_network = modes.network == NamespaceMode::Node;
        let host_ipc = modes.ipc == NamespaceMode::Node;
        let shared_pid = modes.pid == NamespaceMode::Pod;
        validate_pod_config(&spec, host_network, host_ipc)?;
        let cgroup_parent = Some(spec.cgroup_parent.clone())
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
            namespace: namespace.to_string(),
            state: PodState::Creating,
            spec,
            extension,
            runtime_handler: runtime_handler.to_string(),
            created_at: now_nanos(),
            namespaces: Default::default(),
            pid_holder: None,
            cgroup_parent,
            dir: dir.clone(),
            shm_mounted: false,
            network: None,
        };
        let name = record.spec.name.clone();
        // Intent first: the name is reserved and a crash from here on is cleaned up by
        // the start-up pass.
        self.store
            .update(|tx| tx.insert(namespace, Kind::Pod, &id, Some(&name), &record))
            .map_err(|err| match err {
                crate::store::StoreError::NameTaken { .. } => RuntimeError::AlreadyExists(format!(
                    "pod sandbox name {name:?} is already in use by another pod"
                )),
                other => other.into(),
            })?;
        let _guard = self.lock(&id).await;
        let result = async {
            self.setup_pod(&mut record, host_network, host_ipc, shared_pid, bandwidth)
                .await?;
            crate::crash_point::reached("pod.before_ready");
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
                self.release_name(Kind::Pod, namespace, &id);
                Err(err)
            }
        }
    }

    async fn setup_pod(
        &self,
        record: &mut PodRecord,
        host_network: bool,
        host_ipc: bool,
        shared_pid: bool,
        bandwidth: Option<Bandwidth>,
    ) -> Result<()> {
        let dir = record.dir.clone();
        let hostname = if host_network || record.spec.hostname.is_empty() {
            nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().to_string())
                .unwrap_or_default()
        } else {
            record.spec.hostname.clone()
        };
        let dns = record.spec.dns.clone();
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
            pod_files::write_pod_files(&dir, &pod_hostname, host_network, dns.as_ref())?;
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
            self.attach_network(record, bandwidth).await?;
            crate::crash_point::reached("pod.after_network");
        }
        if shared_pid {
            record.pid_holder = Some(self.start_pid_holder(&record.dir).await?);
            crate::crash_point::reached("pod.after_pid_holder");
        }
        // Persist what was made so far, so a crash after this point is cleaned up.
        self.store
            .update(|tx| tx.replace(&record.namespace, Kind::Pod, &record.id, &*record))?;
        Ok(())
    }

    /// Attaches the pod's network namespace to the selected network (CNI or the
    /// built-in bridge); in network mode `none` the pod keeps loopback only.
    async fn attach_network(
        &self,
        record: &mut PodRecord,
        bandwidth: Option<Bandwidth>,
    ) -> Result<()> {
        if record.spec.loopback_only {
            return Ok(());
        }
        if !record.spec.networks.is_empty() {
            return self.attach_user_networks(record).await;
        }
        let Some(selected) = self.cni.select().map_err(RuntimeError::Network)? else {
            return Ok(());
        };
        record.network = Some(PodNetwork {
            name: self.cni.name(&selected),
            ifname: POD_IFNAME.to_string(),
            phase: NetworkPhase::Attaching,
            ips: Vec::new(),
            mac: String::new(),
        });
        // Intent first: a crash during ADD still owes a DEL.
        self.store
            .update(|tx| tx.replace(&record.namespace, Kind::Pod, &record.id, &*record))?;
        let mut attachment = attachment(record)?;
        // Only ADD needs these: DEL and CHECK use the capability args cached by ADD.
        attachment.capability_args.bandwidth = bandwidth;
        attachment.capability_args.dns = cni_dns(record.spec.dns.as_ref());
        if !record.spec.mac_address.is_empty() {
            attachment.capability_args.mac = Some(record.spec.mac_address.clone());
        }
        let network_name = self.cni.name(&selected);
        let started = std::time::Instant::now();
        let result = self.cni.add(&selected, &attachment).await;
        self.metrics
            .network_operation("attach", &network_name, started, result.is_ok());
        let result = result.map_err(RuntimeError::Network)?;
        if let Some(network) = record.network.as_mut() {
            network.phase = NetworkPhase::Attached;
            network.ips = result.pod_ips().iter().map(|ip| ip.to_string()).collect();
            network.mac = result
                .interfaces
                .iter()
                .find(|i| i.name == POD_IFNAME && i.sandbox.is_some())
                .and_then(|i| i.mac.clone())
                .unwrap_or_default();
        }
        // resolv.conf was written before ADD; the result's DNS may change it.
        let dns = record.spec.dns.clone();
        let network_dns = result.dns.clone();
        let path = record.dir.join("resolv.conf");
        blocking(move || {
            pod_files::update_resolv_conf(&path, dns.as_ref(), &network_name, &network_dns)
        })
        .await
    }

    /// Attaches a pod to the user-defined networks its spec names (eth0, eth1, ...),
    /// with the embedded DNS in its resolv.conf.
    async fn attach_user_networks(&self, record: &mut PodRecord) -> Result<()> {
        let requests = record.spec.networks.clone();
        record.network = Some(PodNetwork {
            name: requests
                .first()
                .map(|r| r.network.clone())
                .unwrap_or_default(),
            ifname: POD_IFNAME.to_string(),
            phase: NetworkPhase::Attaching,
            ips: Vec::new(),
            mac: String::new(),
        });
        // Intent first: a crash while attaching still owes a detach.
        self.store
            .update(|tx| tx.replace(&record.namespace, Kind::Pod, &record.id, &*record))?;
        let mut ips = Vec::new();
        let mut first_mac = String::new();
        for (index, request) in requests.iter().enumerate() {
            // --mac-address is the first interface's.
            let mac = Some(record.spec.mac_address.clone()).filter(|m| index == 0 && !m.is_empty());
            let endpoint = self
                .connect_pod(record, request, format!("eth{index}"), mac)
                .await?;
            if let Some(ip) = endpoint.ip {
                ips.push(ip.to_string());
            }
            if index == 0 {
                first_mac = endpoint.mac.clone();
            }
        }
        if let Some(network) = record.network.as_mut() {
            network.phase = NetworkPhase::Attached;
            network.ips = ips;
            network.mac = first_mac;
        }
        let dns = record.spec.dns.clone();
        let path = record.dir.join("resolv.conf");
        blocking(move || pod_files::write_embedded_dns_resolv_conf(&path, dns.as_ref())).await
    }

    async fn connect_pod(
        &self,
        pod: &PodRecord,
        request: &crate::runtime::model::NetworkRequest,
        ifname: String,
        mac: Option<String>,
    ) -> Result<crate::network::Endpoint> {
        let netns = pod.namespaces.network.clone().ok_or_else(|| {
            RuntimeError::FailedPrecondition(format!(
                "pod {} has no network namespace of its own to connect",
                pod.id
            ))
        })?;
        let ipv4 = match request.ipv4.as_str() {
            "" => None,
            text => Some(text.parse().map_err(|_| {
                RuntimeError::invalid("ipv4", format!("{text:?} is not an IPv4 address"))
            })?),
        };
        let ipv6 = match request.ipv6.as_str() {
            "" => None,
            text => Some(text.parse().map_err(|_| {
                RuntimeError::invalid("ipv6", format!("{text:?} is not an IPv6 address"))
            })?),
        };
        let endpoint = self
            .cni
            .registry()
            .connect(
                &pod.namespace,
                crate::network::EndpointRequest {
                    network: request.network.clone(),
                    pod_id: pod.id.clone(),
                    owner_id: request.owner_id.clone(),
                    name: pod.spec.name.clone(),
                    aliases: request.aliases.clone(),
                    dns_names: request.dns_names.clone(),
                    ipv4,
                    ipv6,
                    netns,
                    ifname,
                    upstreams: pod
                        .spec
                        .dns
                        .as_ref()
                        .map(|d| d.servers.clone())
                        .unwrap_or_default(),
                    mac,
                    links: request.links.clone(),
                },
            )
            .await?;
        Ok(endpoint)
    }

    /// The built-in bridge network.
    pub fn builtin_bridge(&self) -> &crate::cni::bridge::BridgeNetwork {
        self.cni.bridge()
    }

    /// Rewrites a pod's /etc/hosts with `entries` (address, names) and its own address
    /// and hostname (a front end's managed hosts file: Docker's links and extra hosts).
    pub async fn write_pod_hosts(
        &self,
        pod_id: &str,
        entries: &[(String, String)],
        own_ip: Option<&str>,
        hostname: &str,
    ) -> Result<()> {
        let pod = self
            .pod(pod_id)
            .ok_or_else(|| RuntimeError::NotFound(format!("pod {pod_id}")))?;
        let host_network = pod.spec.namespaces.network == NamespaceMode::Node;
        let path = pod.dir.join("hosts");
        let entries = entries.to_vec();
        let own_ip = own_ip.map(str::to_string);
        let hostname = hostname.to_string();
        blocking(move || {
            pod_files::write_hosts_with(&path, host_network, &hostname, own_ip.as_deref(), &entries)
        })
        .await
    }

    /// The user-defined networks registry.
    pub fn networks(&self) -> &Arc<crate::network::NetworkRegistry> {
        self.cni.registry()
    }

    /// Connects a pod that exists to one more user-defined network (Docker's
    /// `network connect`), on the next free interface.
    pub async fn connect_network(
        self: &Arc<Self>,
        namespace: &str,
        pod_id: &str,
        request: crate::runtime::model::NetworkRequest,
    ) -> Result<crate::network::Endpoint> {
        let _guard = self.lock(pod_id).await;
        let pod = self
            .pod(pod_id)
            .filter(|p| p.namespace == namespace)
            .ok_or_else(|| RuntimeError::NotFound(format!("pod {pod_id} not found")))?;
        if pod.spec.namespaces.network == NamespaceMode::Node || pod.namespaces.network.is_none() {
            return Err(RuntimeError::FailedPrecondition(
                "container cannot be disconnected from host network or connected to host network"
                    .into(),
            ));
        }
        let used: Vec<String> = self
            .networks()
            .endpoints_of_pod(pod_id)
            .into_iter()
            .map(|(_, e)| e.ifname)
            .chain(
                pod.network
                    .iter()
                    .filter(|n| n.phase != NetworkPhase::Detached)
                    .map(|n| n.ifname.clone()),
            )
            .collect();
        let ifname = (0..)
            .map(|i| format!("eth{i}"))
            .find(|name| !used.contains(name))
            .unwrap_or_else(|| POD_IFNAME.to_string());
        self.connect_pod(&pod, &request, ifname, None).await
    }

    /// Disconnects a pod from a user-defined network.
    pub async fn disconnect_network(
        self: &Arc<Self>,
        namespace: &str,
        pod_id: &str,
        network: &str,
        container: &str,
    ) -> Result<()> {
        let _guard = self.lock(pod_id).await;
        Ok(self
            .networks()
            .disconnect(namespace, network, pod_id, container)
            .await?)
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
        let attachment = attachment(pod)?;
        let network_name = pod
            .network
            .as_ref()
            .map(|n| n.name.clone())
            .unwrap_or_default();
        let started = std::time::Instant::now();
        let deleted = self.cni.del(&attachment).await;
        self.metrics
            .network_operation("detach", &network_name, started, deleted.is_ok());
        deleted.map_err(RuntimeError::Network)?;
        if let Some(network) = pod.network.as_mut() {
            network.phase = NetworkPhase::Detached;
        }
        Ok(())
    }

    /// Starts the holder of a pod's shared PID namespace.
    async fn start_pid_holder(&self, dir: &Path) -> Result<ProcessRef> {
        let pid_file = dir.join(PAUSE_PID_FILE);
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
    pub async fn stop_pod(self: &Arc<Self>, namespace: &str, query: &str) -> Result<()> {
        let Some(pod) = self.find_pod(namespace, query) else {
            return Ok(());
        };
        let _guard = self.lock(&pod.id).await;
        for container in self.pod_containers(&pod.id) {
            self.stop_container(namespace, &container, 0).await?;
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
    pub async fn remove_pod(self: &Arc<Self>, namespace: &str, query: &str) -> Result<()> {
        let Some(pod) = self.find_pod(namespace, query) else {
            return Ok(());
        };
        self.stop_pod(namespace, &pod.id).await?;
        let guard = self.lock(&pod.id).await;
        for container in self.pod_containers(&pod.id) {
            self.remove_container(namespace, &container).await?;
        }
        let Some(pod) = self.pod(&pod.id) else {
            return Ok(());
        };
        self.cleanup_pod(&pod).await;
        self.store
            .update(|tx| tx.delete(&pod.namespace, Kind::Pod, &pod.id))?;
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

/// The CNI attachment of a pod: its netns, CNI_ARGS as kubelet's runtimes pass them
/// (`IgnoreUnknown`, the front end's args, the pod's ID), and the port mappings for
/// plugins that ask for them.
pub(super) fn attachment(pod: &PodRecord) -> Result<Attachment> {
    let netns = pod.namespaces.network.clone().ok_or_else(|| {
        RuntimeError::Internal(format!("pod {} has no network namespace to attach", pod.id))
    })?;
    let port_mappings = port_mappings(&pod.spec)?;
    let mut args = vec![("IgnoreUnknown".to_string(), "1".to_string())];
    args.extend(pod.spec.network_args.iter().cloned());
    args.push(("K8S_POD_INFRA_CONTAINER_ID".into(), pod.id.clone()));
    Ok(Attachment {
        container_id: pod.id.clone(),
        netns,
        ifname: pod
            .network
            .as_ref()
            .map(|n| n.ifname.clone())
            .unwrap_or_else(|| POD_IFNAME.to_string()),
        args,
        capability_args: CniRuntimeConfig {
            port_mappings,
            ..Default::default()
        },
    })
}

/// Kills the PID-namespace holder that `pid_file` names, if it still runs, and waits
/// (briefly) for it to go. A crash between starting a holder and saving the record that
/// names it leaves only this file, so recovery and every teardown read it.
fn kill_holder_of_pid_file(pid_file: &Path) {
    const HOLDER_EXIT_WAIT: Duration = Duration::from_secs(5);
    let Some(pid) = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|text| text.trim().parse::<i32>().ok())
    else {
        return;
    };
    // The pid may have been reused: only a wharf-pause started for this file is ours.
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let file = pid_file.as_os_str().as_encoded_bytes();
    let ours = comm.trim() == crate::monitor::pause::PAUSE_PROCESS_NAME
        && cmdline.split(|b| *b == 0).any(|arg| arg == file);
    let Some(start) = monitor::start_time(pid).filter(|_| ours) else {
        return;
    };
    match monitor::signal(pid, start, nix::libc::SIGKILL) {
        Ok(true) => {
            tracing::warn!(pid, pid_file = %pid_file.display(), "killed a pod PID holder no record named");
            let deadline = std::time::Instant::now() + HOLDER_EXIT_WAIT;
            while monitor::alive(pid, start) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        Ok(false) => {}
        Err(err) => tracing::warn!(pid, "killing the pod PID holder: {err}"),
    }
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

/// Unmounts and removes a pod's state directory (shm, namespace pins, files), after
/// ending the PID-namespace holder its `pause.pid` names.
pub(super) fn teardown_pod_dir(dir: &Path) -> Result<()> {
    kill_holder_of_pid_file(&dir.join(PAUSE_PID_FILE));
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

/// The `dns` capability arg: the pod's DNS config as containerd passes it
/// (`toCNIDNS` in internal/cri/server/sandbox_run.go); CRI-O passes none.
fn cni_dns(dns: Option<&DnsConfig>) -> Option<Dns> {
    given_dns_config(dns).map(|d| Dns {
        nameservers: d.servers.clone(),
        domain: None,
        search: d.searches.clone(),
        options: d.options.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_capability_is_the_dns_config() {
        assert_eq!(cni_dns(None), None);
        assert_eq!(cni_dns(Some(&DnsConfig::default())), None);
        let dns = DnsConfig {
            servers: vec!["10.96.0.10".into()],
            searches: vec!["default.svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        };
        assert_eq!(
            cni_dns(Some(&dns)),
            Some(Dns {
                nameservers: vec!["10.96.0.10".into()],
                domain: None,
                search: vec!["default.svc.cluster.local".into()],
                options: vec!["ndots:5".into()],
            })
        );
    }
}
