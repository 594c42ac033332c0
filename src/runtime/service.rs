//! The pod and container service: the `Runtime` struct, the state kept in memory for
//! List/Status, the per-object locks that serialize lifecycle calls, and the helpers
//! that save, update and delete records and record container exits. Pod calls are in
//! `pod.rs`, container calls in `container.rs`, opening and recovery after a restart in
//! `recovery.rs`; nothing here calls into them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crate::config::Config;
use crate::events::{Event, EventBus, EventKind};
use crate::image::ImageService;
use crate::store::{Kind, Store, StoreError};

use super::monitor::{self, MonitorError};
use super::namespaces::NamespaceError;
use super::oci::{OciError, OciRuntime, BUILTIN_HANDLER};
use super::records::InNamespace;
use super::records::{parse_time, ContainerRecord, ContainerState, PodRecord};
use super::spec::SpecError;
use crate::image::snapshot::SnapshotError;

/// Why a pod or container call failed. The front-ends map these to gRPC codes and HTTP
/// statuses (`cri/status.rs`).
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    #[error("{0} not found")]
    NotFound(String),
    /// CreateContainer names an image that is not pulled.
    #[error("image {0:?} not found (config.image.image); pull it first")]
    ImageNotPulled(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    /// A host port another holds, in dockerd's words: dockerd answers it as a system
    /// error (500), not a conflict, and clients match on that.
    #[error("{0}")]
    PortAllocated(String),
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Namespace(#[from] NamespaceError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    Oci(#[from] OciError),
    #[error(transparent)]
    Monitor(#[from] MonitorError),
    #[error(transparent)]
    Control(#[from] super::monitor_control::ControlError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("pod network: {0}")]
    Network(crate::cni::CniError),
    /// Boxed: the registry's errors are larger than the rest.
    #[error(transparent)]
    UserNetwork(Box<crate::network::NetworkError>),
    #[error(transparent)]
    Corrupt(#[from] super::records::CorruptRecord),
    #[error(transparent)]
    Volume(#[from] crate::volume::VolumeError),
    #[error("{0}")]
    Internal(String),
    /// Requested CDI devices that cannot be given.
    #[error(transparent)]
    Device(#[from] crate::device::CdiError),
}

impl From<crate::network::NetworkError> for RuntimeError {
    fn from(err: crate::network::NetworkError) -> RuntimeError {
        RuntimeError::UserNetwork(Box::new(err))
    }
}

impl crate::error::HasKind for RuntimeError {
    fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind;
        match self {
            RuntimeError::InvalidArgument { .. } => ErrorKind::InvalidArgument,
            RuntimeError::NotFound(_) | RuntimeError::ImageNotPulled(_) => ErrorKind::NotFound,
            RuntimeError::AlreadyExists(_) => ErrorKind::AlreadyExists,
            RuntimeError::FailedPrecondition(_) => ErrorKind::FailedPrecondition,
            RuntimeError::DeadlineExceeded(_) => ErrorKind::DeadlineExceeded,
            RuntimeError::PortAllocated(_) => ErrorKind::ResourceExhausted,
            RuntimeError::Spec(err) => err.kind(),
            RuntimeError::Store(err) => err.kind(),
            RuntimeError::Namespace(err) => err.kind(),
            RuntimeError::Snapshot(err) => err.kind(),
            RuntimeError::Oci(err) => err.kind(),
            RuntimeError::Monitor(err) => err.kind(),
            RuntimeError::Control(err) => err.kind(),
            RuntimeError::Network(err) => err.kind(),
            RuntimeError::UserNetwork(err) => err.kind(),
            RuntimeError::Corrupt(err) => err.kind(),
            RuntimeError::Volume(err) => err.kind(),
            RuntimeError::Device(err) => err.kind(),
            RuntimeError::Io { .. } | RuntimeError::Internal(_) => ErrorKind::Internal,
        }
    }
}

impl RuntimeError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> RuntimeError {
        RuntimeError::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> RuntimeError {
        let context = context.into();
        move |source| RuntimeError::Io { context, source }
    }
}

pub type Result<T> = std::result::Result<T, RuntimeError>;

/// Runs blocking filesystem / mount work off the async workers.
pub(super) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| RuntimeError::Internal(format!("blocking task failed: {err}")))?
}

/// Pods and containers of the CRI namespace.
pub struct Runtime {
    pub(super) config: Arc<Config>,
    pub(super) store: Arc<Store>,
    pub(super) images: Arc<ImageService>,
    pub(super) volumes: Arc<crate::volume::VolumeService>,
    pub(super) monitor: PathBuf,
    pub(super) restrict_oom_score_adj: bool,
    pub(super) cgroup_v2: bool,
    pub(super) swap_limit: bool,
    pub(super) hugetlb: bool,
    pub(super) cni: crate::cni::Networks,
    pub(super) pods: RwLock<HashMap<String, PodRecord>>,
    pub(super) containers: RwLock<HashMap<String, ContainerRecord>>,
    /// One async lock per pod / container ID: lifecycle calls on one object run one at
    /// a time; List/Status never take these.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Serializes read-modify-write of container records (see `update_container`).
    container_writes: Mutex<()>,
    /// Bumped whenever a container exits, to wake whoever waits for one.
    pub(super) exits: tokio::sync::watch::Sender<u64>,
    /// What happened to containers, for the front ends' event streams.
    pub(super) events: Arc<EventBus>,
    /// Health of the containers that have a check.
    pub(super) health: super::health::HealthTable,
    /// Writable-layer usage, refreshed at most every few seconds (stats polls).
    pub(super) layer_usage: super::stats::LayerUsageCache,
    pub(super) metrics: super::metrics::RuntimeMetrics,
    /// CDI specs, for the devices containers ask for by name.
    pub(super) cdi: Arc<crate::device::CdiRegistry>,
    /// Publishing host ports is one at a time (each counts what every network holds).
    pub(super) publish_lock: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").finish_non_exhaustive()
    }
}

/// A random 64-hex-digit ID, as containerd and CRI-O make them.
pub fn new_id() -> Result<String> {
    let mut bytes = [0u8; 32];
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(RuntimeError::io("reading /dev/urandom"))?;
    Ok(hex::encode(bytes))
}

impl Runtime {
    /// A runtime with empty maps: host facts, the monitor program and the networks set
    /// up from `config`. `Runtime::open` (recovery.rs) builds one and recovers into it.
    pub(super) fn new(
        config: Arc<Config>,
        store: Arc<Store>,
        images: Arc<ImageService>,
        volumes: Arc<crate::volume::VolumeService>,
        events: Arc<EventBus>,
    ) -> Result<Arc<Runtime>> {
        let host = super::HostInfo::probe();
        let cgroup_v2 = host.cgroup == super::CgroupLayout::Unified;
        let restrict_oom_score_adj = config
            .runtime
            .restrict_oom_score_adj
            .unwrap_or_else(|| !has_cap_sys_resource());
        let monitor = monitor::monitor_program(config.runtime.monitor_path.as_deref());
        let (exits, _) = tokio::sync::watch::channel(0);
        let cni = crate::cni::Cni::new(crate::cni::CniConfig {
            conf_dir: config.cni.conf_dir.clone(),
            plugin_dirs: config.cni.plugin_dirs.clone(),
            cache_dir: config.state.join("cni"),
            timeout: Duration::from_secs(config.cni.plugin_timeout_secs),
        });
        let bridge = &config.network.bridge;
        let bridge = crate::cni::bridge::BridgeNetwork::new(
            crate::cni::bridge::BridgeSpec::basic(
                bridge.name.clone(),
                // Validated with the rest of the config.
                bridge.subnet.parse().ok(),
                bridge.masquerade,
                bridge.ip_forward,
                bridge.mtu,
            ),
            store.clone(),
        )
        .map_err(|err| RuntimeError::Network(err.into()))?;
        let registry = crate::network::NetworkRegistry::open(
            store.clone(),
            events.clone(),
            config.network.bridge.ip_forward,
            &config.network.bridge.name,
        )?;
        let cni = crate::cni::Networks::new(config.network.mode, cni, bridge, Arc::new(registry));
        Ok(Arc::new(Runtime {
            store,
            images,
            volumes,
            monitor,
            restrict_oom_score_adj,
            cgroup_v2,
            swap_limit: super::spec::host_swap_limit_supported(),
            hugetlb: super::spec::host_hugetlb_supported(),
            cni,
            pods: RwLock::new(HashMap::new()),
            containers: RwLock::new(HashMap::new()),
            locks: Mutex::new(HashMap::new()),
            container_writes: Mutex::new(()),
            exits,
            events,
            health: Default::default(),
            layer_usage: Default::default(),
            metrics: Default::default(),
            cdi: Arc::new(crate::device::CdiRegistry::new(
                config.cdi.spec_dirs.clone(),
            )),
            publish_lock: tokio::sync::Mutex::new(()),
            config,
        }))
    }

    /// The CDI spec registry (for listings, status and the front ends' checks).
    pub fn cdi(&self) -> &Arc<crate::device::CdiRegistry> {
        &self.cdi
    }

    pub(super) fn state_dir(&self) -> &Path {
        &self.config.state
    }

    /// Whether pods can be given a network: a usable CNI network config exists (looked
    /// up afresh, so writing one turns this true without a restart).
    pub async fn network_condition(&self) -> super::Condition {
        match self.cni.ready().await {
            Ok(()) => super::Condition::ready(),
            Err(err) => super::Condition::not_ready("NetworkPluginNotReady", err.to_string()),
        }
    }

    /// The OCI runtime for a CRI runtime handler; unknown handlers are InvalidArgument.
    pub(super) fn oci_runtime(&self, handler: &str) -> Result<OciRuntime> {
        if handler.is_empty() || handler == BUILTIN_HANDLER {
            return Ok(OciRuntime::builtin(&self.monitor, self.state_dir()));
        }
        match self.config.runtime.handlers.get(handler) {
            Some(program) => Ok(OciRuntime::external(handler, program, self.state_dir())),
            None => {
                let mut known: Vec<&str> = vec![BUILTIN_HANDLER];
                known.extend(self.config.runtime.handlers.keys().map(String::as_str));
                Err(RuntimeError::invalid(
                    "runtime_handler",
                    format!(
                        "unknown runtime handler {handler:?}; configured handlers: {}",
                        known.join(", ")
                    ),
                ))
            }
        }
    }

    /// The lifecycle lock of object `id`.
    pub(super) async fn lock(&self, id: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            locks.entry(id.to_string()).or_default().clone()
        };
        lock.lock_owned().await
    }

    pub(super) fn forget_lock(&self, id: &str) {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(lock) = locks.get(id) {
            // Only the map and the caller's guard hold it: nobody waits.
            if Arc::strong_count(lock) <= 2 {
                locks.remove(id);
            }
        }
    }

    pub fn pod(&self, id: &str) -> Option<PodRecord> {
        let pods = self.pods.read().unwrap_or_else(|p| p.into_inner());
        pods.get(id).cloned()
    }

    /// The pod's first IP (None without a network), without copying its record: what
    /// lists show per container.
    pub fn pod_ip(&self, id: &str) -> Option<String> {
        let pods = self.pods.read().unwrap_or_else(|p| p.into_inner());
        pods.get(id)?.network.as_ref()?.ips.first().cloned()
    }

    /// The MAC address of a pod's first interface, without cloning the pod (per
    /// container of a list).
    pub fn pod_mac(&self, id: &str) -> Option<String> {
        let pods = self.pods.read().unwrap_or_else(|p| p.into_inner());
        Some(pods.get(id)?.network.as_ref()?.mac.clone())
    }

    /// Finds a pod of `namespace` by full ID or unique ID prefix (as crictl accepts).
    pub fn find_pod(&self, namespace: &str, query: &str) -> Option<PodRecord> {
        let pods = self.pods.read().unwrap_or_else(|p| p.into_inner());
        find_by_prefix(&pods, namespace, query).cloned()
    }

    pub fn pods(&self) -> Vec<PodRecord> {
        let pods = self.pods.read().unwrap_or_else(|p| p.into_inner());
        pods.values().cloned().collect()
    }

    pub fn container(&self, id: &str) -> Option<ContainerRecord> {
        let containers = self.containers.read().unwrap_or_else(|p| p.into_inner());
        containers.get(id).cloned()
    }

    /// Finds a container of `namespace` by full ID or unique ID prefix.
    pub fn find_container(&self, namespace: &str, query: &str) -> Option<ContainerRecord> {
        let containers = self.containers.read().unwrap_or_else(|p| p.into_inner());
        find_by_prefix(&containers, namespace, query).cloned()
    }

    /// Publishes `action` for `container` (Docker's container event attributes: its
    /// name and image).
    pub(super) fn container_event(
        &self,
        container: &ContainerRecord,
        action: &str,
        extra: &[(&str, String)],
    ) {
        let mut event = Event::new(
            &container.namespace,
            EventKind::Container,
            action,
            &container.id,
        )
        .with("name", container.spec.name.clone())
        .with("image", container.image.clone());
        for (key, value) in extra {
            event = event.with(key, value.clone());
        }
        for (key, value) in &container.spec.labels {
            event
                .attributes
                .entry(key.clone())
                .or_insert_with(|| value.clone());
        }
        self.events.publish(event);
    }

    /// Changes whenever a container exits or is removed: a waiter looks at the
    /// container again each time (Docker's `wait` conditions).
    pub fn container_events(&self) -> tokio::sync::watch::Receiver<u64> {
        self.exits.subscribe()
    }

    /// Calls `f` with each container of `namespace`, under the read lock (no clone of
    /// the ones `f` skips: kubelet lists every second).
    pub fn for_each_container(&self, namespace: &str, mut f: impl FnMut(&ContainerRecord)) {
        let containers = self.containers.read().unwrap_or_else(|p| p.into_inner());
        containers
            .values()
            .filter(|c| c.namespace == namespace)
            .for_each(&mut f);
    }

    /// The runtime's metrics, for the engine's registry.
    pub fn metric_collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        self.metrics.collectors()
    }

    /// Calls `f` with every container of every namespace, under the read lock.
    pub fn for_each_container_everywhere(&self, f: impl FnMut(&ContainerRecord)) {
        let containers = self.containers.read().unwrap_or_else(|p| p.into_inner());
        containers.values().for_each(f);
    }

    /// The IDs of the pods of `namespace`.
    pub fn pod_ids(&self, namespace: &str) -> std::collections::HashSet<String> {
        let mut ids = std::collections::HashSet::new();
        self.for_each_pod(namespace, |pod| {
            ids.insert(pod.id.clone());
        });
        ids
    }

    /// The IDs of the containers of `namespace`.
    pub fn container_ids(&self, namespace: &str) -> std::collections::HashSet<String> {
        let mut ids = std::collections::HashSet::new();
        self.for_each_container(namespace, |c| {
            ids.insert(c.id.clone());
        });
        ids
    }

    /// Calls `f` with each pod of `namespace`, under the read lock.
    pub fn for_each_pod(&self, namespace: &str, mut f: impl FnMut(&PodRecord)) {
        let pods = self.pods.read().unwrap_or_else(|p| p.into_inner());
        pods.values()
            .filter(|p| p.namespace == namespace)
            .for_each(&mut f);
    }

    pub(super) fn pod_containers(&self, pod_id: &str) -> Vec<String> {
        let containers = self.containers.read().unwrap_or_else(|p| p.into_inner());
        containers
            .values()
            .filter(|c| c.pod_id == pod_id)
            .map(|c| c.id.clone())
            .collect()
    }

    /// Deletes the record of a pod or container whose creation failed, freeing its name
    /// for the retry.
    pub(super) fn release_name(&self, kind: Kind, namespace: &str, id: &str) {
        if let Err(err) = self.store.update(|tx| tx.delete(namespace, kind, id)) {
            tracing::error!(%id, "releasing the name of a failed {kind}: {err}");
        }
    }

    /// The container `query` names, with its lifecycle lock held.
    pub(super) async fn lock_container(
        &self,
        namespace: &str,
        query: &str,
    ) -> Result<(tokio::sync::OwnedMutexGuard<()>, ContainerRecord)> {
        let not_found = || RuntimeError::NotFound(format!("container {query:?}"));
        let container = self
            .find_container(namespace, query)
            .ok_or_else(not_found)?;
        let guard = self.lock(&container.id).await;
        let container = self.container(&container.id).ok_or_else(not_found)?;
        Ok((guard, container))
    }

    /// Writes a pod record to the store, then to memory.
    pub(super) fn save_pod(&self, pod: &PodRecord) -> Result<()> {
        self.store
            .update(|tx| tx.replace(&pod.namespace, Kind::Pod, &pod.id, pod))?;
        let mut pods = self.pods.write().unwrap_or_else(|p| p.into_inner());
        pods.insert(pod.id.clone(), pod.clone());
        Ok(())
    }

    /// Writes a container record to the store, then to memory.
    pub(super) fn save_container(&self, container: &ContainerRecord) -> Result<()> {
        let _writes = self
            .container_writes
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        self.save_container_locked(container)
    }

    fn save_container_locked(&self, container: &ContainerRecord) -> Result<()> {
        self.store.update(|tx| {
            tx.replace(
                &container.namespace,
                Kind::Container,
                &container.id,
                container,
            )
        })?;
        let mut containers = self.containers.write().unwrap_or_else(|p| p.into_inner());
        containers.insert(container.id.clone(), container.clone());
        Ok(())
    }

    /// Gives container `id` the name `name`, and its pod too when the pod bears the
    /// container's name (a Docker container's pod), in one transaction. A name in use
    /// is `AlreadyExists`.
    pub(super) fn rename_records(&self, id: &str, name: &str) -> Result<ContainerRecord> {
        let _writes = self
            .container_writes
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut container = self
            .container(id)
            .ok_or_else(|| RuntimeError::NotFound(format!("container {id:?}")))?;
        let mut pod = self
            .pod(&container.pod_id)
            .filter(|p| p.spec.name == container.spec.name);
        let old = std::mem::replace(&mut container.spec.name, name.to_string());
        if let Some(pod) = pod.as_mut() {
            pod.spec.name = name.to_string();
            // The name it answers to on its networks when they are joined again.
            for network in &mut pod.spec.networks {
                for dns_name in network.dns_names.iter_mut().filter(|n| **n == old) {
                    *dns_name = name.to_string();
                }
            }
        }
        let taken = |err| match err {
            StoreError::NameTaken { .. } => {
                RuntimeError::AlreadyExists(format!("the name {name:?} is already in use"))
            }
            other => other.into(),
        };
        self.store
            .update(|tx| {
                tx.rename(&container.namespace, Kind::Container, id, name, &container)?;
                if let Some(pod) = &pod {
                    tx.rename(&pod.namespace, Kind::Pod, &pod.id, name, pod)?;
                }
                Ok(())
            })
            .map_err(taken)?;
        if let Some(pod) = pod {
            let mut pods = self.pods.write().unwrap_or_else(|p| p.into_inner());
            pods.insert(pod.id.clone(), pod);
        }
        let mut containers = self.containers.write().unwrap_or_else(|p| p.into_inner());
        containers.insert(container.id.clone(), container.clone());
        Ok(container)
    }

    /// Applies `change` to the container's record (store, then memory), if it exists
    /// and `change` returns true. Read, change and write happen under one lock, so an
    /// exit recorded by the watcher and a lifecycle call never overwrite each other.
    pub(super) fn update_container(
        &self,
        id: &str,
        change: impl FnOnce(&mut ContainerRecord) -> bool,
    ) -> Result<Option<ContainerRecord>> {
        let _writes = self
            .container_writes
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let Some(mut record) = self.container(id) else {
            return Ok(None);
        };
        if !change(&mut record) {
            return Ok(None);
        }
        self.save_container_locked(&record)?;
        Ok(Some(record))
    }

    /// Deletes a container record from the store and memory.
    pub(super) fn delete_container_record(&self, id: &str) -> Result<()> {
        let _writes = self
            .container_writes
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let Some(container) = self.container(id) else {
            return Ok(());
        };
        self.store
            .update(|tx| tx.delete(&container.namespace, Kind::Container, id))?;
        self.container_event(&container, "destroy", &[]);
        self.forget_health(id);
        {
            let mut containers = self.containers.write().unwrap_or_else(|p| p.into_inner());
            containers.remove(id);
        }
        // Waiters for a removal (Docker's `wait?condition=removed`) look again.
        self.exits.send_modify(|n| *n += 1);
        Ok(())
    }

    /// Watches container `id` and records its exit: when its monitor has written
    /// exit.json after the init exited (processes the init left behind may keep the
    /// monitor draining output for a while), or when the monitor is gone.
    pub(super) fn watch(self: &Arc<Self>, id: String, info: monitor::MonitorInfo) {
        self.watch_health(id.clone());
        let runtime = self.clone();
        let Some(bundle) = self.container(&id).map(|c| c.bundle) else {
            return;
        };
        tokio::spawn(async move {
            tokio::select! {
                _ = monitor::wait_exit(info.monitor_pid, info.monitor_start_time) => {}
                _ = monitor::wait_exit_recorded(&bundle, info.pid, info.pid_start_time) => {}
            }
            let orphan_killed = runtime.kill_orphaned(&id).await;
            if let Err(err) = runtime.record_exit(&id, orphan_killed) {
                tracing::error!(container = %id, "recording container exit: {err}");
            }
            runtime.withdraw_ports_after_exit(&id).await;
            runtime.remove_if_auto(&id).await;
            runtime.restart_by_policy(&id).await;
        });
    }

    /// Starts an exited container again if its restart policy says so, after dockerd's
    /// backoff: 100 ms doubling with each restart up to 1 minute, back to 100 ms when
    /// the last run lasted 10 s or more.
    pub(super) async fn restart_by_policy(self: &Arc<Self>, id: &str) {
        const FIRST_DELAY: Duration = Duration::from_millis(100);
        const MAX_DELAY: Duration = Duration::from_secs(60);
        const STABLE_RUN_NANOS: i64 = 10_000_000_000;
        let Some(container) = self.container(id) else {
            return;
        };
        if !restart_wanted(&container) {
            return;
        }
        let ran = container.finished_at - container.started_at;
        let delay = if ran >= STABLE_RUN_NANOS {
            FIRST_DELAY
        } else {
            FIRST_DELAY
                .saturating_mul(1 << container.restart_count.min(10))
                .min(MAX_DELAY)
        };
        tokio::time::sleep(delay).await;
        // Looked at again: it may have been removed, started or stopped meanwhile.
        match self.container(id) {
            Some(now) if restart_wanted(&now) && now.finished_at == container.finished_at => {
                tracing::info!(container = %id, restarts = now.restart_count + 1, "restarting by its restart policy");
                if let Err(err) = self.restart_container(&now.namespace, id, true).await {
                    tracing::warn!(container = %id, "restart by policy: {err}");
                }
            }
            _ => {}
        }
    }

    /// Removes the pod of an exited container that asked for it (`auto_remove`).
    pub(super) async fn remove_if_auto(self: &Arc<Self>, id: &str) {
        let Some(container) = self.container(id) else {
            return;
        };
        let exited = matches!(
            container.state,
            ContainerState::Exited | ContainerState::Unknown
        );
        if !(container.spec.auto_remove && exited) {
            return;
        }
        match self
            .remove_pod(&container.namespace, &container.pod_id)
            .await
        {
            // (Its anonymous volumes went with it: remove_container.)
            Ok(()) => tracing::info!(container = %id, "removed on exit (auto-remove)"),
            Err(err) => tracing::error!(container = %id, "auto-remove: {err}"),
        }
    }

    /// A container whose monitor died while its init runs can no longer be logged,
    /// attached or waited for (its exit status goes to whoever reaps the orphan): it is
    /// killed, as containerd kills a task whose shim died, and its exit is recorded as
    /// that kill: the dead monitor's pid is returned for `record_exit`. Does nothing
    /// (None) while the monitor lives or once the init is gone.
    pub(super) async fn kill_orphaned(&self, id: &str) -> Option<i32> {
        const ORPHAN_KILL_WAIT: Duration = Duration::from_secs(10);
        let container = self.container(id)?;
        let info = container.monitor?;
        if monitor::alive(info.monitor_pid, info.monitor_start_time)
            || !monitor::alive(info.pid, info.pid_start_time)
            || monitor::read_exit(&container.bundle).is_some()
        {
            return None;
        }
        tracing::warn!(container = %id, monitor_pid = info.monitor_pid, "the container's monitor is gone while the container runs; killing the container");
        if let Err(err) = monitor::signal(info.pid, info.pid_start_time, nix::libc::SIGKILL) {
            tracing::warn!(container = %id, "killing the init of a container without a monitor: {err}");
        }
        // The init's own children die with its PID namespace; in a pod's shared one
        // they are the runtime's to find, in the container's cgroup.
        if let Ok(runtime) = self.oci_runtime(&container.runtime_handler) {
            if let Err(err) = runtime.kill_all(id, nix::libc::SIGKILL).await {
                tracing::debug!(container = %id, "kill --all of a container without a monitor: {err}");
            }
        }
        if tokio::time::timeout(
            ORPHAN_KILL_WAIT,
            monitor::wait_exit(info.pid, info.pid_start_time),
        )
        .await
        .is_err()
        {
            tracing::error!(container = %id, pid = info.pid, "the init of a container without a monitor outlived SIGKILL");
            return None;
        }
        Some(info.monitor_pid)
    }

    /// Reads the exit the monitor left (or, with `orphan_killed` (the dead monitor's
    /// pid), the kill `kill_orphaned` made; or marks the container Unknown when nobody
    /// saw how it ended) and wakes waiters.
    pub(super) fn record_exit(&self, id: &str, orphan_killed: Option<i32>) -> Result<()> {
        let Some(current) = self.container(id) else {
            return Ok(());
        };
        let exit = monitor::read_exit(&current.bundle);
        let changed = self.update_container(id, |c| {
            if matches!(c.state, ContainerState::Exited | ContainerState::Unknown) {
                return false;
            }
            c.paused = false;
            match (&exit, orphan_killed) {
                (Some(exit), _) => {
                    c.state = ContainerState::Exited;
                    c.exit_code = exit.exit_code;
                    c.finished_at =
                        parse_time(&exit.finished_at).unwrap_or_else(super::records::now_nanos);
                    c.reason = if exit.oom_killed {
                        "OOMKilled"
                    } else if exit.exit_code == 0 {
                        "Completed"
                    } else {
                        "Error"
                    }
                    .to_string();
                }
                (None, Some(monitor_pid)) => {
                    c.state = ContainerState::Exited;
                    c.exit_code = 128 + nix::libc::SIGKILL;
                    c.finished_at = super::records::now_nanos();
                    c.reason = "Error".to_string();
                    c.message = format!(
                        "the container's monitor (pid {monitor_pid}) died while it ran; wharf killed the \
                         container, which could no longer be logged or waited for"
                    );
                }
                (None, None) => {
                    c.state = ContainerState::Unknown;
                    c.exit_code = 255;
                    c.finished_at = super::records::now_nanos();
                    c.reason = "Unknown".to_string();
                    c.message = "the container's monitor exited without recording an exit".into();
                }
            }
            true
        })?;
        if let Some(exited) = changed {
            tracing::info!(container = %id, "container exited");
            self.deactivate_volumes(&exited);
            if exited.reason == "OOMKilled" {
                self.container_event(&exited, "oom", &[]);
            }
            self.container_event(
                &exited,
                "die",
                &[("exitCode", exited.exit_code.to_string())],
            );
            self.exits.send_modify(|n| *n += 1);
        }
        Ok(())
    }

    /// Waits until container `id` is no longer Created/Running, up to `timeout`.
    pub(super) async fn wait_stopped(&self, id: &str, timeout: Duration) -> bool {
        let mut exits = self.exits.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.container(id) {
                None => return true,
                Some(c)
                    if !matches!(c.state, ContainerState::Created | ContainerState::Running) =>
                {
                    return true
                }
                Some(_) => {}
            }
            if tokio::time::timeout_at(deadline, exits.changed())
                .await
                .is_err()
            {
                return false;
            }
        }
    }
}

/// Whether an exited container's restart policy asks for a restart now.
fn restart_wanted(container: &ContainerRecord) -> bool {
    use super::model::RestartPolicy;
    if !matches!(
        container.state,
        ContainerState::Exited | ContainerState::Unknown
    ) || container.spec.auto_remove
    {
        return false;
    }
    match container.spec.restart {
        RestartPolicy::No => false,
        RestartPolicy::Always | RestartPolicy::UnlessStopped => !container.stopped_by_user,
        RestartPolicy::OnFailure { max_retries } => {
            container.exit_code != 0
                && !container.stopped_by_user
                && (max_retries == 0 || container.restart_count < max_retries)
        }
    }
}

/// The object of `namespace` whose ID is `query` or starts with it (when one does).
fn find_by_prefix<'a, T: InNamespace>(
    map: &'a HashMap<String, T>,
    namespace: &str,
    query: &str,
) -> Option<&'a T> {
    if query.is_empty() {
        return None;
    }
    if let Some(found) = map.get(query) {
        return (found.namespace() == namespace).then_some(found);
    }
    let mut matches = map
        .iter()
        .filter(|(id, record)| id.starts_with(query) && record.namespace() == namespace);
    match (matches.next(), matches.next()) {
        (Some((_, found)), None) => Some(found),
        _ => None,
    }
}

/// Whether wharfd may lower oom_score_adj (CAP_SYS_RESOURCE, bit 24 of CapEff).
fn has_cap_sys_resource() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << 24) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record in namespace `.0`.
    #[derive(Debug, PartialEq)]
    struct Object(&'static str);

    impl InNamespace for Object {
        fn namespace(&self) -> &str {
            self.0
        }
    }

    #[test]
    fn prefixes_must_be_unique_within_the_namespace() {
        let map = HashMap::from([
            ("abc123".to_string(), Object("k8s.io")),
            ("abd456".to_string(), Object("k8s.io")),
            ("abe789".to_string(), Object("docker")),
        ]);
        let find = |ns, query| find_by_prefix(&map, ns, query).map(|_| ());
        assert!(find("k8s.io", "abc").is_some());
        assert!(
            find("k8s.io", "ab").is_none(),
            "two k8s.io objects start with ab"
        );
        assert!(find("k8s.io", "abd456").is_some());
        assert!(find("k8s.io", "").is_none());
        // The other namespace's objects are neither found nor make a prefix ambiguous.
        assert!(find("k8s.io", "abe789").is_none());
        assert!(find("k8s.io", "abe").is_none());
        assert!(find("docker", "ab").is_some());
        assert!(find("docker", "abc123").is_none());
    }

    #[test]
    fn ids_are_random_hex() {
        let a = new_id().unwrap();
        let b = new_id().unwrap();
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
    }
}
