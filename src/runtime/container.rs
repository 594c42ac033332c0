//! Containers: CreateContainer, StartContainer, StopContainer, RemoveContainer,
//! ExecSync, UpdateContainerResources, ReopenContainerLog.
//!
//! Each container has a bundle under `<state>/containers/<id>/` (config.json, the
//! rootfs mount point, the monitor's files) and its writable layer under
//! `<root>/containers/<id>/` (overlay upper and work dirs), which survives a daemon
//! crash as the container does.

use std::os::unix::fs::FileTypeExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use oci_spec::runtime::{LinuxDevice, LinuxDeviceType, Spec};
use tracing::Instrument;

use crate::image::snapshot;
use crate::store::Kind;

use super::model::{ContainerSpec, NamespaceMode, PodSpec, Propagation, Resources};
use super::monitor;
use super::oci::ExecOutput;
use super::records::{now_nanos, ContainerRecord, ContainerState, PodState};
use super::service::{blocking, new_id, Result, Runtime, RuntimeError};
use super::spec::{self, ImageDefaults, PodContext, SpecOptions};

/// How long to wait for a container to die after SIGKILL before giving up.
const KILL_WAIT: Duration = Duration::from_secs(10);

impl Runtime {
    /// CreateContainer: makes a container from `spec` in the pod `pod_query` names and
    /// returns its ID. Detached from the caller like [`Runtime::run_pod`]: a cancelled
    /// request never leaves a half-made container. `extension` is the front end's own
    /// data, stored with the container.
    #[tracing::instrument(level = "debug", name = "create_container", skip_all)]
    pub async fn create_container(
        self: &Arc<Self>,
        namespace: &str,
        pod_query: &str,
        spec: ContainerSpec,
        extension: Vec<u8>,
    ) -> Result<String> {
        let runtime = self.clone();
        let pod_query = pod_query.to_string();
        let namespace = namespace.to_string();
        tokio::spawn(
            async move {
                runtime
                    .make_container(&namespace, &pod_query, spec, extension)
                    .await
            }
            .in_current_span(),
        )
        .await
        .map_err(|err| RuntimeError::Internal(format!("CreateContainer task failed: {err}")))?
    }

    async fn make_container(
        self: &Arc<Self>,
        namespace: &str,
        pod_query: &str,
        mut config: ContainerSpec,
        extension: Vec<u8>,
    ) -> Result<String> {
        let pod = self
            .find_pod(namespace, pod_query)
            .ok_or_else(|| RuntimeError::NotFound(format!("pod sandbox {pod_query:?}")))?;
        if config.name.is_empty() {
            return Err(RuntimeError::invalid("name", "is empty"));
        }
        reject_nul_bytes(&config)?;
        let image_name = config.image.clone();
        if image_name.is_empty() {
            return Err(RuntimeError::invalid("config.image.image", "is empty"));
        }
        let image = self
            .images
            .get(namespace, &image_name)
            .ok_or_else(|| RuntimeError::ImageNotPulled(image_name.clone()))?;
        if config
            .mounts
            .iter()
            .any(|m| m.propagation != Propagation::Private)
        {
            let config = config.clone();
            blocking(move || check_mount_propagation(&config)).await?;
        }
        let pod_guard = self.lock(&pod.id).await;
        let pod = self
            .pod(&pod.id)
            .ok_or_else(|| RuntimeError::NotFound(format!("pod sandbox {pod_query:?}")))?;
        if pod.state != PodState::Ready {
            return Err(RuntimeError::FailedPrecondition(format!(
                "pod sandbox {} is not ready",
                pod.id
            )));
        }
        check_within_pod(&config, &pod.spec, &pod.id)?;
        if !config.cdi_devices.is_empty() {
            // Unknown or conflicting devices are refused before anything is made.
            let cdi = self.cdi.clone();
            let names = config.cdi_devices.clone();
            blocking(move || cdi.resolve(&names).map(drop).map_err(RuntimeError::from)).await?;
        }
        let runtime = self.oci_runtime(&pod.runtime_handler)?;
        let image_config = self
            .images
            .config_json(&image)
            .map_err(|e| RuntimeError::Internal(format!("reading the image config: {e}")))?;
        let defaults = ImageDefaults::from_config_json(&image_config)?;

        let id = match &config.requested_id {
            Some(id)
                if id.len() == 64 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) =>
            {
                id.clone()
            }
            Some(id) => {
                return Err(RuntimeError::invalid(
                    "id",
                    format!(
                        "{:?} is not 64 lowercase hex digits",
                        crate::image::bounded(id, crate::image::MAX_ECHO)
                    ),
                ))
            }
            None => new_id()?,
        };
        let bundle = self.state_dir().join("containers").join(&id);
        let log_path = container_log_path(&pod.spec.log_directory, &config.log_path)?;
        let image_ref = image
            .repo_digests
            .first()
            .cloned()
            .unwrap_or_else(|| image.id.clone());
        let stop_signal = config
            .stop_signal
            .clone()
            .or_else(|| defaults.stop_signal.clone());
        // Last of the checks: the volumes are checked and named before the record is
        // stored, so a create cut by a crash knows which ones it made.
        let has_volumes = config.mounts.iter().any(|m| m.volume.is_some());
        if has_volumes {
            let volumes = self.volumes.clone();
            let mut mounts = std::mem::take(&mut config.mounts);
            config.mounts = blocking(move || {
                super::volumes::name_volumes(&volumes, &mut mounts)?;
                Ok(mounts)
            })
            .await?;
        }
        let mut record = ContainerRecord {
            id: id.clone(),
            namespace: namespace.to_string(),
            pod_id: pod.id.clone(),
            state: ContainerState::Creating,
            spec: config,
            extension,
            image: image_name.clone(),
            image_id: image.id.clone(),
            image_ref,
            chain_ids: image.chain_ids(),
            runtime_handler: pod.runtime_handler.clone(),
            stop_signal,
            log_path: log_path.clone(),
            bundle: bundle.clone(),
            created_at: now_nanos(),
            started_at: 0,
            finished_at: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            monitor: None,
            restart_count: 0,
            stopped_by_user: false,
            paused: false,
            published_ports: Vec::new(),
        };
        let name = record.spec.name.clone();
        self.images.hold(&id, record.chain_ids.clone());
        let inserted = tracing::debug_span!("store.insert").in_scope(|| {
            self.store
                .update(|tx| tx.insert(namespace, Kind::Container, &id, Some(&name), &record))
        });
        if let Err(err) = inserted {
            self.images.release(&id);
            return Err(match err {
                crate::store::StoreError::NameTaken { .. } => RuntimeError::AlreadyExists(format!(
                    "container name {name:?} is already in use in pod {}",
                    pod.id
                )),
                other => other.into(),
            });
        }
        let _guard = self.lock(&id).await;
        let result = async {
            if has_volumes {
                // From here the container holds references on its volumes (made now
                // when missing), given back if the create fails.
                let volumes = self.volumes.clone();
                let container = id.clone();
                let mut mounts = std::mem::take(&mut record.spec.mounts);
                let (mounts, taken) = blocking(move || {
                    let taken = super::volumes::take_volumes(&volumes, &container, &mut mounts);
                    Ok((mounts, taken))
                })
                .await?;
                record.spec.mounts = mounts;
                taken?;
                crate::crash_point::reached("create.after_volumes");
            }
            let info = self
                .setup_container(&mut record, &pod, &defaults, &runtime)
                .await?;
            record.state = ContainerState::Created;
            record.monitor = Some(info);
            tracing::debug_span!("store.save").in_scope(|| self.save_container(&record))?;
            Ok(info)
        }
        .await;
        drop(pod_guard);
        match result {
            Ok(info) => {
                self.watch(id.clone(), info);
                tracing::info!(container = %id, name = %name, "container created");
                if let Some(created) = self.container(&id) {
                    self.container_event(&created, "create", &[]);
                }
                Ok(id)
            }
            Err(err) => {
                // The monitor's stderr is not kept: the cause goes to wharfd's log too.
                tracing::warn!(container = %id, name = %name, error = %err, "container create failed");
                self.cleanup_container(&record).await;
                self.remove_made_volumes(&record).await;
                self.release_name(Kind::Container, namespace, &id);
                Err(err)
            }
        }
    }

    async fn setup_container(
        &self,
        record: &mut ContainerRecord,
        pod: &super::records::PodRecord,
        defaults: &ImageDefaults,
        runtime: &super::oci::OciRuntime,
    ) -> Result<monitor::MonitorInfo> {
        let ns_options = record.spec.security.namespaces.clone();
        let target_pid_ns = if ns_options.pid == NamespaceMode::Target {
            let target = self
                .find_container(&record.namespace, &ns_options.target_id)
                .ok_or_else(|| {
                    RuntimeError::NotFound(format!(
                    "target container {:?} (linux.security_context.namespace_options.target_id)",
                    ns_options.target_id
                ))
                })?;
            let pid = target
                .monitor
                .filter(|m| monitor::alive(m.pid, m.pid_start_time))
                .map(|m| m.pid)
                .ok_or_else(|| {
                    RuntimeError::FailedPrecondition(format!(
                        "target container {} is not running",
                        target.id
                    ))
                })?;
            Some(PathBuf::from(format!("/proc/{pid}/ns/pid")))
        } else {
            None
        };
        let pid_ns = match (ns_options.pid, pod.pid_holder) {
            (NamespaceMode::Pod, Some(holder)) => {
                if !monitor::alive(holder.pid, holder.start_time) {
                    return Err(RuntimeError::FailedPrecondition(format!(
                        "the PID namespace of pod {} is gone",
                        pod.id
                    )));
                }
                Some(PathBuf::from(format!("/proc/{}/ns/pid", holder.pid)))
            }
            _ => None,
        };
        let pod_context = PodContext {
            hostname: std::fs::read_to_string(pod.dir.join("hostname"))
                .map(|h| h.trim().to_string())
                .unwrap_or_default(),
            netns_path: pod.namespaces.network.clone(),
            ipc_ns_path: pod.namespaces.ipc.clone(),
            uts_ns_path: pod.namespaces.uts.clone(),
            pid_ns_path: pid_ns,
            cgroup_parent: pod.cgroup_parent.clone(),
            shm_path: pod.shm_mounted.then(|| pod.dir.join("shm")),
            resolv_conf: Some(pod.dir.join("resolv.conf")),
            hosts: Some(pod.dir.join("hosts")),
            hostname_file: Some(pod.dir.join("hostname")),
            sysctls: pod.spec.sysctls.clone(),
        };
        let options = SpecOptions {
            rootfs: record.bundle.join("rootfs"),
            container_id: record.id.clone(),
            restrict_oom_score_adj: self.restrict_oom_score_adj,
            seccomp_profile_root: self.config.runtime.seccomp_profile_root.clone(),
            cgroup_v2: self.cgroup_v2,
            pids_limit: None,
            swap_limit: self.swap_limit,
            hugetlb: self.hugetlb,
            target_pid_ns_path: target_pid_ns,
            bounding_capabilities: Some(super::host::bounding_capabilities()),
        };
        let stdio = monitor::StdioOptions {
            stdin: record.spec.stdin,
            stdin_once: record.spec.stdin_once,
            tty: record.spec.tty,
            log_rotation: record.spec.log_rotation,
        };
        let images = self.images.clone();
        let chain = record.chain_ids.clone();
        let bundle = record.bundle.clone();
        let data_dir = self.config.root.join("containers").join(&record.id);
        let config = record.spec.clone();
        let defaults = defaults.clone();
        let privileged = config.security.privileged;
        let log_path = record.log_path.clone();
        let span = tracing::Span::current();
        let volumes = self.volumes.clone();
        let container_id = record.id.clone();
        let cdi = self.cdi.clone();
        blocking(move || {
            let _span = tracing::debug_span!(parent: &span, "bundle.prepare").entered();
            std::fs::create_dir_all(&bundle)
                .map_err(RuntimeError::io(format!("creating {}", bundle.display())))?;
            create_missing_host_paths(&config)?;
            super::volumes::activate_volumes(&volumes, &container_id, &config.mounts, false)?;
            if !log_path.is_empty() {
                if let Some(parent) = Path::new(&log_path).parent() {
                    std::fs::create_dir_all(parent).map_err(RuntimeError::io(format!(
                        "creating the log directory {}",
                        parent.display()
                    )))?;
                }
            }
            let rootfs = bundle.join("rootfs");
            // A read-only rootfs still gets an upper dir: the runtime creates mount
            // points in it; the spec's root.readonly makes it read-only inside.
            tracing::debug_span!("rootfs.mount").in_scope(|| {
                snapshot::mount_rootfs(images.snapshots(), &chain, &data_dir, &rootfs, false)
            })?;
            crate::crash_point::reached("rootfs.after_mount");
            tracing::debug_span!("volumes.copy_up")
                .in_scope(|| super::volumes::copy_up_volumes(&rootfs, &config.mounts))?;
            let spec_span = tracing::debug_span!("spec.write").entered();
            let mut spec = spec::container_spec(&config, &pod_context, &defaults, &options)?;
            if privileged {
                add_host_devices(&mut spec)?;
            }
            cdi.resolve(&config.cdi_devices)?.apply(&mut spec)?;
            let json = serde_json::to_vec_pretty(&spec)
                .map_err(|e| RuntimeError::Internal(format!("encoding config.json: {e}")))?;
            crate::state_file::replace(&bundle.join("config.json"), &json, 0o644)
                .map_err(RuntimeError::io("writing config.json"))?;
            drop(spec_span);
            Ok(())
        })
        .await?;
        let log_path = if record.log_path.is_empty() {
            PathBuf::from("/dev/null")
        } else {
            PathBuf::from(&record.log_path)
        };
        let timeout = Duration::from_secs(self.config.runtime.create_timeout_secs);
        let info = monitor::create(
            &self.monitor,
            runtime,
            &record.id,
            &record.bundle,
            &log_path,
            stdio,
            timeout,
        )
        .instrument(tracing::debug_span!("monitor.create"))
        .await?;
        crate::crash_point::reached("monitor.after_create");
        Ok(info)
    }

    /// Undoes whatever of a container exists: its process, runtime state, rootfs mount,
    /// directories, image hold. Errors are logged; the start-up reconcile retries.
    pub(super) async fn cleanup_container(&self, container: &ContainerRecord) {
        if let Some(info) = monitor::read_info(&container.bundle).or(container.monitor) {
            let _ = monitor::signal(info.pid, info.pid_start_time, nix::libc::SIGKILL);
        }
        if let Ok(runtime) = self.oci_runtime(&container.runtime_handler) {
            if let Err(err) = runtime.delete(&container.id).await {
                tracing::warn!(container = %container.id, "runtime delete: {err}");
            }
        }
        if let Some(info) = monitor::read_info(&container.bundle).or(container.monitor) {
            let _ = tokio::time::timeout(
                KILL_WAIT,
                monitor::wait_exit(info.monitor_pid, info.monitor_start_time),
            )
            .await;
        }
        let bundle = container.bundle.clone();
        let data_dir = self.config.root.join("containers").join(&container.id);
        let result = blocking(move || {
            teardown_container_dir(&bundle)?;
            teardown_container_dir(&data_dir)
        })
        .await;
        if let Err(err) = result {
            tracing::error!(container = %container.id, "cleaning up container: {err}");
        }
        self.release_volumes(container);
        if self.images.release(&container.id) {
            if let Err(err) = self.images.gc().await {
                tracing::warn!("image garbage collection: {err}");
            }
        }
    }

    /// The container, if it is running (FailedPrecondition otherwise, NotFound when
    /// there is none).
    pub fn running_container(&self, namespace: &str, query: &str) -> Result<ContainerRecord> {
        self.running(namespace, query)
    }

    pub(super) fn running(&self, namespace: &str, query: &str) -> Result<ContainerRecord> {
        let container = self
            .find_container(namespace, query)
            .ok_or_else(|| RuntimeError::NotFound(format!("container {query:?}")))?;
        if container.state != ContainerState::Running {
            return Err(RuntimeError::FailedPrecondition(format!(
                "container {} is not running (state {:?})",
                container.id, container.state
            )));
        }
        Ok(container)
    }

    /// StartContainer.
    #[tracing::instrument(level = "debug", name = "start_container", skip_all)]
    pub async fn start_container(self: &Arc<Self>, namespace: &str, query: &str) -> Result<()> {
        let (_guard, container) = self.lock_container(namespace, query).await?;
        if container.state != ContainerState::Created {
            return Err(RuntimeError::FailedPrecondition(format!(
                "container {} cannot be started: it is {:?}, not Created",
                container.id, container.state
            )));
        }
        self.start_locked(&container).await
    }

    /// Starts a created container; its lifecycle lock is held.
    async fn start_locked(&self, container: &ContainerRecord) -> Result<()> {
        let runtime = self.oci_runtime(&container.runtime_handler)?;
        // Taken before the start: a fast container can exit (and its exit be recorded)
        // before `start` returns, and its start must not come after its finish.
        let started_at = now_nanos();
        if let Err(err) = self.publish_ports(container).await {
            self.update_container(&container.id, |c| {
                c.message = err.to_string();
                true
            })?;
            return Err(err);
        }
        crate::crash_point::reached("start.before_runtime");
        if let Err(err) = runtime.start(&container.id).await {
            self.update_container(&container.id, |c| {
                c.message = err.to_string();
                true
            })?;
            if let Err(undo) = self.withdraw_ports(&container.id).await {
                tracing::warn!(container = %container.id, "withdrawing the ports of a failed start: {undo}");
            }
            return Err(err.into());
        }
        crate::crash_point::reached("start.after_runtime");
        self.update_container(&container.id, |c| {
            c.started_at = started_at;
            if c.state == ContainerState::Created {
                c.state = ContainerState::Running;
            }
            true
        })?;
        tracing::info!(container = %container.id, "container started");
        self.container_event(container, "start", &[]);
        Ok(())
    }

    /// Starts an exited container again (Docker's start of a stopped container, and
    /// restarts): the runtime's old container is deleted, a new one is created from the
    /// same bundle (config.json, rootfs with its writable layer, log file) by a new
    /// monitor, and started. The CRI never does this: kubelet makes a new container.
    ///
    /// `by_policy`: a restart policy's restart (counted), not a start through the API
    /// (which resets the count).
    pub async fn restart_container(
        self: &Arc<Self>,
        namespace: &str,
        query: &str,
        by_policy: bool,
    ) -> Result<()> {
        let (_guard, container) = self.lock_container(namespace, query).await?;
        if !matches!(
            container.state,
            ContainerState::Exited | ContainerState::Unknown
        ) {
            return Err(RuntimeError::FailedPrecondition(format!(
                "container {} cannot be started again: it is {:?}, not exited",
                container.id, container.state
            )));
        }
        let pod = self
            .pod(&container.pod_id)
            .filter(|p| p.state == PodState::Ready)
            .ok_or_else(|| {
                RuntimeError::FailedPrecondition(format!(
                    "the pod {} of container {} is not ready",
                    container.pod_id, container.id
                ))
            })?;
        let runtime = self.oci_runtime(&container.runtime_handler)?;
        if let Some(old) = container.monitor {
            // The old monitor drains what the container's leftovers write, then exits.
            let _ = tokio::time::timeout(
                KILL_WAIT,
                monitor::wait_exit(old.monitor_pid, old.monitor_start_time),
            )
            .await;
        }
        runtime.delete(&container.id).await?;
        let log_path = if container.log_path.is_empty() {
            PathBuf::from("/dev/null")
        } else {
            PathBuf::from(&container.log_path)
        };
        let timeout = Duration::from_secs(self.config.runtime.create_timeout_secs);
        let stdio = monitor::StdioOptions {
            stdin: container.spec.stdin,
            stdin_once: container.spec.stdin_once,
            tty: container.spec.tty,
            log_rotation: container.spec.log_rotation,
        };
        {
            let volumes = self.volumes.clone();
            let id = container.id.clone();
            let mounts = container.spec.mounts.clone();
            blocking(move || super::volumes::activate_volumes(&volumes, &id, &mounts, false))
                .await?;
        }
        let info = match monitor::create(
            &self.monitor,
            &runtime,
            &container.id,
            &container.bundle,
            &log_path,
            stdio,
            timeout,
        )
        .instrument(tracing::debug_span!("monitor.create"))
        .await
        {
            Ok(info) => info,
            Err(err) => {
                self.deactivate_volumes(&container);
                return Err(err.into());
            }
        };
        let updated = self.update_container(&container.id, |c| {
            c.state = ContainerState::Created;
            c.monitor = Some(info);
            c.exit_code = 0;
            c.reason.clear();
            c.message.clear();
            c.stopped_by_user = false;
            c.restart_count = if by_policy { c.restart_count + 1 } else { 0 };
            true
        })?;
        self.watch(container.id.clone(), info);
        tracing::info!(container = %container.id, pod = %pod.id, "container created again");
        let container = updated.unwrap_or(container);
        self.start_locked(&container).await
    }

    /// StopContainer: the stop signal (the image's, else SIGTERM), then SIGKILL after
    /// `timeout` seconds. Stopping a stopped container succeeds.
    pub async fn stop_container(
        self: &Arc<Self>,
        namespace: &str,
        query: &str,
        timeout: i64,
    ) -> Result<()> {
        let container = self
            .find_container(namespace, query)
            .ok_or_else(|| RuntimeError::NotFound(format!("container {query:?}")))?;
        let _guard = self.lock(&container.id).await;
        let was_running = self
            .container(&container.id)
            .is_some_and(|c| c.state == ContainerState::Running);
        if was_running {
            // Before the exit is recorded, so the restart policy sees it.
            self.update_container(&container.id, |c| {
                c.stopped_by_user = true;
                true
            })?;
        }
        self.stop_locked(&container.id, timeout).await?;
        self.withdraw_ports(&container.id).await?;
        if was_running {
            self.container_event(&container, "stop", &[]);
        }
        Ok(())
    }

    async fn stop_locked(&self, id: &str, timeout: i64) -> Result<()> {
        let Some(container) = self.container(id) else {
            return Ok(());
        };
        if container.paused {
            // Frozen processes take no signal: thaw first (dockerd stops a paused
            // container too).
            self.resume_locked(&container).await?;
        }
        if !matches!(
            container.state,
            ContainerState::Created | ContainerState::Running
        ) {
            return Ok(());
        }
        let Some(info) = container.monitor else {
            return Ok(());
        };
        if timeout > 0 && container.state == ContainerState::Running {
            let signal = stop_signal(container.stop_signal.as_deref());
            match monitor::signal(info.pid, info.pid_start_time, signal) {
                Ok(_) => {}
                Err(err) => tracing::warn!(container = %id, "sending the stop signal: {err}"),
            }
            if self
                .wait_stopped(id, Duration::from_secs(timeout as u64))
                .await
            {
                return Ok(());
            }
        }
        if let Err(err) = monitor::signal(info.pid, info.pid_start_time, nix::libc::SIGKILL) {
            tracing::warn!(container = %id, "sending SIGKILL: {err}");
        }
        if self.wait_stopped(id, KILL_WAIT).await {
            return Ok(());
        }
        Err(RuntimeError::DeadlineExceeded(format!(
            "container {id} did not exit within {KILL_WAIT:?} of SIGKILL"
        )))
    }

    /// RemoveContainer: stops it if needed, then removes everything it had. Removing
    /// an unknown container succeeds.
    pub async fn remove_container(self: &Arc<Self>, namespace: &str, query: &str) -> Result<()> {
        let Some(container) = self.find_container(namespace, query) else {
            return Ok(());
        };
        let guard = self.lock(&container.id).await;
        self.stop_locked(&container.id, 0).await?;
        let Some(container) = self.container(&container.id) else {
            return Ok(());
        };
        self.cleanup_container(&container).await;
        if container.spec.auto_remove {
            // Docker's --rm takes the anonymous volumes too, before the removal is
            // seen (the CLI lists volumes right after its wait for "removed").
            self.remove_anonymous_volumes(&container).await;
        }
        self.delete_container_record(&container.id)?;
        drop(guard);
        self.forget_lock(&container.id);
        tracing::info!(container = %container.id, "container removed");
        Ok(())
    }

    /// ExecSync: runs `cmd` in the container with its process settings; `timeout`
    /// seconds (0 = none) bound it.
    pub async fn exec_sync(
        &self,
        namespace: &str,
        query: &str,
        cmd: Vec<String>,
        timeout: i64,
    ) -> Result<ExecOutput> {
        if cmd.is_empty() {
            return Err(RuntimeError::invalid("cmd", "is empty"));
        }
        let container = self.running(namespace, query)?;
        let runtime = self.oci_runtime(&container.runtime_handler)?;
        let program = cmd[0].clone();
        let bundle = container.bundle.clone();
        let exec_id = &new_id()?[..16];
        let process_file = bundle.join(format!("exec-{exec_id}.json"));
        let pid_file = bundle.join(format!("exec-{exec_id}.pid"));
        // Removed however the call ends, a cancelled one included (the runtime's exec
        // kills its processes itself when dropped).
        struct RemoveOnDrop([PathBuf; 2]);
        impl Drop for RemoveOnDrop {
            fn drop(&mut self) {
                for file in &self.0 {
                    let _ = std::fs::remove_file(file);
                }
            }
        }
        let _files = RemoveOnDrop([process_file.clone(), pid_file.clone()]);
        let file = process_file.clone();
        blocking(move || {
            let spec = Spec::load(bundle.join("config.json"))
                .map_err(|e| RuntimeError::Internal(format!("reading config.json: {e}")))?;
            let mut process = spec.process().clone().unwrap_or_default();
            process.set_args(Some(cmd));
            process.set_terminal(Some(false));
            let json = serde_json::to_vec(&process)
                .map_err(|e| RuntimeError::Internal(format!("encoding the process: {e}")))?;
            std::fs::write(&file, json)
                .map_err(RuntimeError::io(format!("writing {}", file.display())))
        })
        .await?;
        let limit = (timeout > 0).then(|| Duration::from_secs(timeout as u64));
        let output = runtime
            .exec(&container.id, &process_file, &pid_file, limit)
            .await?;
        if output.timed_out {
            // containerd's words: "timeout 1s exceeded".
            return Err(RuntimeError::DeadlineExceeded(format!(
                "ExecSync {:?} in container {}: timeout {timeout}s exceeded; the command \
                 and the processes it started were killed",
                program, container.id
            )));
        }
        Ok(output)
    }

    /// UpdateContainerResources: applies new limits to a created or running container
    /// and records them.
    pub async fn update_resources(
        &self,
        namespace: &str,
        query: &str,
        resources: Option<Resources>,
    ) -> Result<()> {
        let (_guard, container) = self.lock_container(namespace, query).await?;
        if !matches!(
            container.state,
            ContainerState::Created | ContainerState::Running
        ) {
            return Err(RuntimeError::FailedPrecondition(format!(
                "container {} is not running (state {:?})",
                container.id, container.state
            )));
        }
        let options = SpecOptions {
            swap_limit: self.swap_limit,
            hugetlb: self.hugetlb,
            ..Default::default()
        };
        let mut oci_resources = spec::resources(resources.as_ref(), &options)?;
        oci_resources.set_devices(None);
        let file = container.bundle.join("resources.json");
        let json = serde_json::to_vec(&oci_resources)
            .map_err(|e| RuntimeError::Internal(format!("encoding resources: {e}")))?;
        std::fs::write(&file, json)
            .map_err(RuntimeError::io(format!("writing {}", file.display())))?;
        let runtime = self.oci_runtime(&container.runtime_handler)?;
        runtime.update(&container.id, &file).await?;
        if let Some(new) = resources {
            self.update_container(&container.id, |c| {
                c.spec.resources = Some(new.clone());
                true
            })?;
        }
        Ok(())
    }

    /// Sets the restart policy of a container (Docker's update).
    pub async fn set_restart_policy(
        &self,
        namespace: &str,
        query: &str,
        policy: super::model::RestartPolicy,
    ) -> Result<()> {
        let (_guard, container) = self.lock_container(namespace, query).await?;
        if container.spec.auto_remove && policy != super::model::RestartPolicy::No {
            return Err(RuntimeError::invalid(
                "restart",
                "a container removed on exit (auto_remove) cannot have a restart policy",
            ));
        }
        self.update_container(&container.id, |c| {
            c.spec.restart = policy;
            true
        })?;
        Ok(())
    }

    /// Renames a container (and its pod, when the pod bears its name: a Docker
    /// container's). The name is the store's unique name of the namespace.
    pub async fn rename_container(&self, namespace: &str, query: &str, name: &str) -> Result<()> {
        if name.is_empty() {
            return Err(RuntimeError::invalid("name", "is empty"));
        }
        let (_guard, container) = self.lock_container(namespace, query).await?;
        let old = container.spec.name.clone();
        if self
            .pod(&container.pod_id)
            .is_some_and(|p| p.spec.name == old)
        {
            // Endpoints first: a name taken on a network changes nothing.
            self.networks()
                .rename_pod(&container.pod_id, &old, name)
                .await?;
        }
        let renamed = match self.rename_records(&container.id, name) {
            Ok(renamed) => renamed,
            Err(err) => {
                let back = self.networks().rename_pod(&container.pod_id, name, &old);
                if let Err(undo) = back.await {
                    tracing::warn!(container = %container.id, "renaming its endpoints back: {undo}");
                }
                return Err(err);
            }
        };
        self.container_event(&renamed, "rename", &[("oldName", old)]);
        Ok(())
    }

    /// The host pids of a running container's processes: its cgroup's `cgroup.procs`
    /// (found through its init's /proc/PID/cgroup), so every pid mode is covered.
    pub fn container_pids(&self, namespace: &str, query: &str) -> Result<Vec<i32>> {
        let container = self.running(namespace, query)?;
        let info = container.monitor.ok_or_else(|| {
            RuntimeError::FailedPrecondition(format!("container {} has no init", container.id))
        })?;
        let cgroups = std::fs::read_to_string(format!("/proc/{}/cgroup", info.pid)).map_err(
            RuntimeError::io(format!("reading the cgroups of container {}", container.id)),
        )?;
        // cgroup v1 "N:pids:/path" (any one controller holds every process), or v2
        // "0::/path".
        let procs_file = cgroups.lines().find_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            match controllers {
                "" => Some(PathBuf::from(format!("/sys/fs/cgroup{path}/cgroup.procs"))),
                c if c.split(',').any(|c| c == "pids") => Some(PathBuf::from(format!(
                    "/sys/fs/cgroup/{c}{path}/cgroup.procs"
                ))),
                _ => None,
            }
        });
        let procs_file = procs_file.ok_or_else(|| {
            RuntimeError::Internal(format!("container {} has no pids cgroup", container.id))
        })?;
        let text = std::fs::read_to_string(&procs_file).map_err(RuntimeError::io(format!(
            "reading {}",
            procs_file.display()
        )))?;
        Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
    }

    /// The root filesystem of an existing container (mounted from create to removal),
    /// and the monitor program that copies files in and out of it from a chroot
    /// (`wharf-monitor archive`).
    pub fn container_rootfs(&self, namespace: &str, query: &str) -> Result<(PathBuf, PathBuf)> {
        let container = self
            .find_container(namespace, query)
            .filter(|c| c.state != ContainerState::Creating)
            .ok_or_else(|| RuntimeError::NotFound(format!("container {query:?}")))?;
        Ok((container.bundle.join("rootfs"), self.monitor.clone()))
    }

    /// What a copy into or out of a container (`docker cp`) mounts over its root
    /// filesystem: its volumes and bind mounts in mount order (tmpfs mounts live only
    /// in the container's namespace, as with dockerd). Option-backed volumes are
    /// mounted for the copy when no run holds them; the returned guard lets them go.
    pub fn container_copy_mounts(
        &self,
        namespace: &str,
        query: &str,
    ) -> Result<(Vec<crate::monitor::archive::ArchiveMount>, CopyHold)> {
        let container = self
            .find_container(namespace, query)
            .filter(|c| c.state != ContainerState::Creating)
            .ok_or_else(|| RuntimeError::NotFound(format!("container {query:?}")))?;
        let mut hold = CopyHold {
            volumes: self.volumes.clone(),
            holder: format!("copy:{}", container.id),
            names: Vec::new(),
        };
        let mut mounts = Vec::new();
        for mount in &container.spec.mounts {
            if mount.tmpfs.is_some() || mount.host_path.is_empty() {
                continue;
            }
            if let Some(volume) = &mount.volume {
                let event = crate::volume::MountEvent {
                    destination: mount.container_path.clone(),
                    propagation: String::new(),
                    readonly: mount.readonly,
                    quiet: true,
                };
                self.volumes.activate(&volume.name, &hold.holder, &event)?;
                hold.names.push(volume.name.clone());
            }
            mounts.push(crate::monitor::archive::ArchiveMount {
                source: PathBuf::from(&mount.host_path),
                destination: mount.container_path.clone(),
                readonly: mount.readonly,
            });
        }
        Ok((mounts, hold))
    }

    /// The read-write layer of an existing container: its overlay upper dir
    /// (`<root>/containers/<id>/upper`) and its image's layer dirs, top-most first.
    pub fn container_layer(
        &self,
        namespace: &str,
        query: &str,
    ) -> Result<crate::image::rwlayer::LayerSource> {
        let container = self
            .find_container(namespace, query)
            .filter(|c| c.state != ContainerState::Creating)
            .ok_or_else(|| RuntimeError::NotFound(format!("container {query:?}")))?;
        let snapshots = self.images.snapshots();
        Ok(crate::image::rwlayer::LayerSource {
            upper: self
                .config
                .root
                .join("containers")
                .join(&container.id)
                .join("upper"),
            lowers: container
                .chain_ids
                .iter()
                .rev()
                .map(|chain| snapshots.layer_dir(chain))
                .collect(),
        })
    }

    /// Pauses a running container: every process frozen (cgroup freezer), as Docker's
    /// pause.
    pub async fn pause_container(&self, namespace: &str, query: &str) -> Result<()> {
        let (_guard, container) = self.lock_container(namespace, query).await?;
        if container.state != ContainerState::Running {
            return Err(RuntimeError::FailedPrecondition(format!(
                "Container {} is not running",
                container.id
            )));
        }
        if container.paused {
            return Err(RuntimeError::FailedPrecondition(format!(
                "Container {} is already paused",
                container.id
            )));
        }
        let runtime = self.oci_runtime(&container.runtime_handler)?;
        runtime.pause(&container.id).await?;
        self.update_container(&container.id, |c| {
            c.paused = true;
            true
        })?;
        self.container_event(&container, "pause", &[]);
        Ok(())
    }

    /// Unpauses a paused container.
    pub async fn unpause_container(&self, namespace: &str, query: &str) -> Result<()> {
        let (_guard, container) = self.lock_container(namespace, query).await?;
        if !container.paused || container.state != ContainerState::Running {
            return Err(RuntimeError::FailedPrecondition(format!(
                "Container {} is not paused",
                container.id
            )));
        }
        self.resume_locked(&container).await?;
        self.container_event(&container, "unpause", &[]);
        Ok(())
    }

    /// Thaws a paused container (its lock held) and records it.
    async fn resume_locked(&self, container: &ContainerRecord) -> Result<()> {
        let runtime = self.oci_runtime(&container.runtime_handler)?;
        runtime.resume(&container.id).await?;
        self.update_container(&container.id, |c| {
            c.paused = false;
            true
        })?;
        Ok(())
    }

    /// Sends `signal` to the container's init (Docker's kill). The container must run.
    pub fn signal_container(&self, namespace: &str, query: &str, signal: i32) -> Result<()> {
        let container = self.running(namespace, query)?;
        let not_running = || {
            RuntimeError::FailedPrecondition(format!("container {} is not running", container.id))
        };
        let info = container.monitor.ok_or_else(not_running)?;
        let sent =
            monitor::signal(info.pid, info.pid_start_time, signal).map_err(RuntimeError::io(
                format!("sending signal {signal} to container {}", container.id),
            ))?;
        if !sent {
            return Err(not_running());
        }
        self.container_event(&container, "kill", &[("signal", signal.to_string())]);
        Ok(())
    }

    /// ReopenContainerLog: the monitor reopens the log file (after kubelet rotated it).
    /// The new file exists when the call returns (kubelet's rotation checks for it), even
    /// before the container writes again: wharfd creates it, the monitor appends to it.
    pub async fn reopen_log(&self, namespace: &str, query: &str) -> Result<()> {
        let container = self.running(namespace, query)?;
        let info = container.monitor.ok_or_else(|| {
            RuntimeError::FailedPrecondition(format!("container {} has no monitor", container.id))
        })?;
        if !container.log_path.is_empty() {
            let log_path = PathBuf::from(&container.log_path);
            blocking(move || {
                crate::monitor::watch::open_log(&log_path)
                    .map(drop)
                    .map_err(|err| RuntimeError::Io {
                        context: format!("creating the new log file {}", log_path.display()),
                        source: err.source,
                    })
            })
            .await?;
        }
        let sent = monitor::signal(
            info.monitor_pid,
            info.monitor_start_time,
            nix::libc::SIGUSR1,
        )
        .map_err(RuntimeError::io("signalling the monitor"))?;
        if !sent {
            return Err(RuntimeError::FailedPrecondition(format!(
                "the monitor of container {} is gone",
                container.id
            )));
        }
        Ok(())
    }
}

/// Signal number of an image's StopSignal (`SIGQUIT`, `QUIT`, `3`); SIGTERM otherwise.
fn stop_signal(name: Option<&str>) -> i32 {
    let Some(name) = name else {
        return nix::libc::SIGTERM;
    };
    if let Ok(number) = name.parse::<i32>() {
        return number;
    }
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    full.parse::<nix::sys::signal::Signal>()
        .map(|s| s as i32)
        .unwrap_or(nix::libc::SIGTERM)
}

/// What a container may not ask beyond its pod (as containerd, and a little stricter):
/// privileged only in a privileged pod; the host's PID namespace only in a pod that
/// has it. Network, IPC and UTS are always the pod's (the container cannot choose).
fn check_within_pod(config: &ContainerSpec, pod: &PodSpec, pod_id: &str) -> Result<()> {
    if config.security.privileged && !pod.privileged {
        return Err(RuntimeError::invalid(
            "linux.security_context.privileged",
            format!(
                "no privileged container allowed in sandbox {pod_id}: the pod is not privileged"
            ),
        ));
    }
    let pod_host_pid = pod.namespaces.pid == NamespaceMode::Node;
    if config.security.namespaces.pid == NamespaceMode::Node && !pod_host_pid {
        return Err(RuntimeError::invalid(
            "linux.security_context.namespace_options.pid",
            format!("the host PID namespace is not allowed in sandbox {pod_id}: the pod does not use it"),
        ));
    }
    Ok(())
}

/// The container's log file: `log_path` inside the pod's `log_directory`, joined as
/// containerd does (as strings: an absolute `log_path` is still inside the directory).
/// A path whose `..` would leave the directory is refused; the file itself is opened
/// without following a symlink (`monitor::watch::open_log`). Empty when either is.
/// A NUL byte cannot stand in a path, an argument or an environment entry (the
/// kernel takes C strings): refused by name, before anything is made, instead of
/// failing in the monitor's or the runtime's exec.
fn reject_nul_bytes(config: &ContainerSpec) -> Result<()> {
    let mut fields: Vec<(String, &str)> = vec![
        ("name".into(), &config.name),
        ("image".into(), &config.image),
        ("working_dir".into(), &config.working_dir),
        ("log_path".into(), &config.log_path),
    ];
    for (i, word) in config.command.iter().enumerate() {
        fields.push((format!("command[{i}]"), word));
    }
    for (i, word) in config.args.iter().enumerate() {
        fields.push((format!("args[{i}]"), word));
    }
    for (i, (key, value)) in config.env.iter().enumerate() {
        fields.push((format!("envs[{i}].key"), key));
        fields.push((format!("envs[{i}].value"), value));
    }
    for (i, mount) in config.mounts.iter().enumerate() {
        fields.push((format!("mounts[{i}].container_path"), &mount.container_path));
        fields.push((format!("mounts[{i}].host_path"), &mount.host_path));
    }
    match fields.into_iter().find(|(_, value)| value.contains('\0')) {
        Some((field, _)) => Err(RuntimeError::invalid(field, "contains a NUL byte")),
        None => Ok(()),
    }
}

fn container_log_path(log_directory: &str, log_path: &str) -> Result<String> {
    if log_directory.is_empty() || log_path.is_empty() {
        return Ok(String::new());
    }
    let dir = Path::new(log_directory);
    if !dir.is_absolute() {
        return Err(RuntimeError::invalid(
            "sandbox_config.log_directory",
            format!("{log_directory:?} is not an absolute path"),
        ));
    }
    let mut inside: Vec<&std::ffi::OsStr> = Vec::new();
    for component in Path::new(log_path).components() {
        match component {
            std::path::Component::Normal(part) => inside.push(part),
            std::path::Component::ParentDir if inside.pop().is_none() => {
                return Err(RuntimeError::invalid(
                    "config.log_path",
                    format!("{log_path:?} leaves the pod's log directory"),
                ));
            }
            _ => {}
        }
    }
    if inside.is_empty() {
        return Err(RuntimeError::invalid(
            "config.log_path",
            format!("{log_path:?} names no file in the pod's log directory"),
        ));
    }
    let path: PathBuf = inside
        .iter()
        .fold(dir.to_path_buf(), |p, part| p.join(part));
    Ok(path.to_string_lossy().into_owned())
}

/// Mounts that propagate need a host source that propagates: BIDIRECTIONAL a
/// shared mount, HOST_TO_CONTAINER a shared or slave one. Refused otherwise with
/// containerd's message, before anything is made (the runtime would create a
/// container whose mounts silently never propagate).
fn check_mount_propagation(config: &ContainerSpec) -> Result<()> {
    for (i, m) in config.mounts.iter().enumerate() {
        // What the host mount must be, and whether a slave one will do.
        let (needs, slave_will_do) = match m.propagation {
            Propagation::Bidirectional => ("a shared mount", false),
            Propagation::HostToContainer => ("a shared or slave mount", true),
            Propagation::Private => continue,
        };
        let path = Path::new(&m.host_path);
        if !path.is_absolute() {
            continue; // refused with the field's name by the spec
        }
        let mount = super::host::mount_of(path).map_err(RuntimeError::io(format!(
            "finding the mount of mounts[{i}].host_path {}",
            path.display()
        )))?;
        let propagates = mount.shared || (mount.slave && slave_will_do);
        if !propagates {
            return Err(RuntimeError::FailedPrecondition(format!(
                "mounts[{i}]: path {:?} is mounted on {:?} but it is not {needs}",
                m.host_path,
                mount.mount_point.display().to_string()
            )));
        }
    }
    Ok(())
}

/// kubelet expects a missing bind-mount source to be created as a directory.
fn create_missing_host_paths(config: &ContainerSpec) -> Result<()> {
    for (i, m) in config.mounts.iter().enumerate() {
        if m.host_path.is_empty() {
            continue;
        }
        let path = Path::new(&m.host_path);
        if !path.is_absolute() {
            return Err(RuntimeError::invalid(
                format!("mounts[{i}].host_path"),
                format!("{:?} is not an absolute path", m.host_path),
            ));
        }
        if std::fs::symlink_metadata(path).is_err() {
            std::fs::create_dir_all(path).map_err(RuntimeError::io(format!(
                "creating the missing mounts[{i}].host_path {}",
                path.display()
            )))?;
        }
    }
    Ok(())
}

/// Privileged containers see the host's devices (as Docker and containerd give them).
fn add_host_devices(spec: &mut Spec) -> Result<()> {
    let mut devices = Vec::new();
    collect_devices(Path::new("/dev"), &mut devices)?;
    if let Some(linux) = spec.linux_mut() {
        let mut all = linux.devices().clone().unwrap_or_default();
        let known: std::collections::HashSet<PathBuf> =
            all.iter().map(|d| d.path().clone()).collect();
        all.extend(devices.into_iter().filter(|d| !known.contains(d.path())));
        linux.set_devices(Some(all));
    }
    Ok(())
}

fn collect_devices(dir: &Path, out: &mut Vec<LinuxDevice>) -> Result<()> {
    let entries =
        std::fs::read_dir(dir).map_err(RuntimeError::io(format!("reading {}", dir.display())))?;
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let file_type = meta.file_type();
        if file_type.is_dir() {
            // containerd skips these: they are mounted per container.
            let name = entry.file_name();
            if matches!(
                name.to_str(),
                Some("pts" | "shm" | "fd" | "mqueue" | ".lxc" | ".lxd-mounts" | ".udev")
            ) {
                continue;
            }
            collect_devices(&path, out)?;
            continue;
        }
        let typ = if file_type.is_char_device() {
            LinuxDeviceType::C
        } else if file_type.is_block_device() {
            LinuxDeviceType::B
        } else {
            continue;
        };
        if path == Path::new("/dev/console") {
            continue;
        }
        let rdev = meta.rdev();
        let mut device = LinuxDevice::default();
        device.set_path(path);
        device.set_typ(typ);
        device.set_major(nix::sys::stat::major(rdev) as i64);
        device.set_minor(nix::sys::stat::minor(rdev) as i64);
        device.set_file_mode(Some(meta.mode() & 0o777));
        device.set_uid(Some(meta.uid()));
        device.set_gid(Some(meta.gid()));
        out.push(device);
    }
    Ok(())
}

/// Unmounts a container's rootfs (if this is its bundle) and removes the directory.
pub(super) fn teardown_container_dir(dir: &Path) -> Result<()> {
    let rootfs = dir.join("rootfs");
    if rootfs.exists() {
        snapshot::unmount_rootfs(&rootfs)?;
    }
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(RuntimeError::Io {
            context: format!("removing {}", dir.display()),
            source: err,
        }),
    }
}

/// Volumes held for a copy (see [`Runtime::container_copy_mounts`]): let go on drop.
pub struct CopyHold {
    volumes: Arc<crate::volume::VolumeService>,
    holder: String,
    names: Vec<String>,
}

impl Drop for CopyHold {
    fn drop(&mut self) {
        for name in &self.names {
            self.volumes.deactivate_with(name, &self.holder, true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_signals() {
        assert_eq!(stop_signal(None), nix::libc::SIGTERM);
        assert_eq!(stop_signal(Some("SIGQUIT")), nix::libc::SIGQUIT);
        assert_eq!(stop_signal(Some("int")), nix::libc::SIGINT);
        assert_eq!(stop_signal(Some("9")), 9);
    }

    #[test]
    fn host_devices_include_null() {
        let mut devices = Vec::new();
        collect_devices(Path::new("/dev"), &mut devices).unwrap();
        assert!(devices.iter().any(|d| d.path() == Path::new("/dev/null")));
        assert!(!devices.iter().any(|d| d.path().starts_with("/dev/pts")));
    }
}
