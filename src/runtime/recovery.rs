//! Opening the runtime and recovery after a restart: pods and containers are loaded
//! from the store and reconciled with what runs (half-made objects cleaned up, live
//! containers watched again, exits that happened while wharfd was down recorded), and
//! directories and runtime state that no record owns are removed.

use std::sync::Arc;

use crate::config::Config;
use crate::image::ImageService;
use crate::store::{Kind, Store};

use super::monitor;
use super::records::{ContainerRecord, ContainerState, PodRecord, PodState};
use super::service::{blocking, Result, Runtime};

impl Runtime {
    /// Loads pods and containers from the store and reconciles them with what runs:
    /// half-created objects are cleaned up, containers whose monitor is alive are
    /// watched again, and those that exited while wharfd was down get their exit.
    pub async fn open(
        config: Arc<Config>,
        store: Arc<Store>,
        images: Arc<ImageService>,
        volumes: Arc<crate::volume::VolumeService>,
        events: Arc<crate::events::EventBus>,
    ) -> Result<Arc<Runtime>> {
        let runtime = Runtime::new(config, store, images, volumes, events)?;
        runtime.recover().await?;
        Ok(runtime)
    }

    async fn recover(self: &Arc<Self>) -> Result<()> {
        let pods = self.store.list::<PodRecord>(None, Kind::Pod)?;
        let containers = self.store.list::<ContainerRecord>(None, Kind::Container)?;
        // Creates cut by a crash give back the volumes they made once every other
        // container's references are known (one may use them meanwhile).
        let mut interrupted = Vec::new();
        for record in containers {
            // The store's key is the truth (records written before they named it).
            let mut container = record.value;
            container.namespace = record.namespace.clone();
            if container.state == ContainerState::Creating {
                tracing::warn!(container = %container.id, "cleaning up a container whose create was interrupted");
                self.cleanup_container(&container).await;
                self.store
                    .update(|tx| tx.delete(&record.namespace, Kind::Container, &container.id))?;
                interrupted.push(container);
                continue;
            }
            self.images.hold(&container.id, container.chain_ids.clone());
            for name in super::volumes::volume_names(&container.spec.mounts) {
                if let Err(err) = self.volumes.add_ref(name, &container.id) {
                    tracing::error!(container = %container.id, volume = %name, "the volume of a container: {err}");
                }
            }
            let id = container.id.clone();
            let live = matches!(
                container.state,
                ContainerState::Created | ContainerState::Running
            );
            let info = container.monitor;
            {
                let mut map = self.containers.write().unwrap_or_else(|p| p.into_inner());
                map.insert(id.clone(), container.clone());
            }
            if !live {
                continue;
            }
            match info {
                Some(info) if monitor::alive(info.monitor_pid, info.monitor_start_time) => {
                    if container.state == ContainerState::Created
                        && monitor::alive(info.pid, info.pid_start_time)
                        && self.started_while_down(&container).await
                    {
                        self.update_container(&id, |c| {
                            c.state = ContainerState::Running;
                            c.started_at = super::records::now_nanos();
                            true
                        })?;
                    }
                    // Still running with its volumes: they stay mounted.
                    if let Err(err) = super::volumes::activate_volumes(
                        &self.volumes,
                        &id,
                        &container.spec.mounts,
                        true,
                    ) {
                        tracing::error!(container = %id, "mounting the volumes of a live container: {err}");
                    }
                    self.watch(id, info)
                }
                _ => {
                    let orphan_killed = self.kill_orphaned(&id).await;
                    self.record_exit(&id, orphan_killed)?
                }
            }
        }
        for container in interrupted {
            self.remove_made_volumes(&container).await;
        }
        for record in pods {
            let mut pod = record.value;
            pod.namespace = record.namespace.clone();
            if pod.state == PodState::Creating {
                tracing::warn!(pod = %pod.id, "cleaning up a pod whose creation was interrupted");
                self.cleanup_pod(&pod).await;
                self.store
                    .update(|tx| tx.delete(&record.namespace, Kind::Pod, &pod.id))?;
                continue;
            }
            let mut pods = self.pods.write().unwrap_or_else(|p| p.into_inner());
            pods.insert(pod.id.clone(), pod);
        }
        let owned: std::collections::HashSet<String> =
            self.pods().into_iter().map(|p| p.id).collect();
        self.cni.release_unowned(&owned).await;
        // Option-backed volumes whose users stopped while wharfd was down.
        self.volumes.unmount_unused();
        self.reconcile_dirs().await;
        // Ports of containers that exited while wharfd was down (or were being started
        // when it stopped) go, as their watcher would have withdrawn them.
        let not_running: Vec<String> = self
            .containers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|c| c.state != ContainerState::Running && !c.spec.published_ports.is_empty())
            .map(|c| c.id.clone())
            .collect();
        for id in not_running {
            if let Err(err) = self.withdraw_ports(&id).await {
                tracing::error!(container = %id, "withdrawing the published ports of a stopped container: {err}");
            }
        }
        // Containers that asked to be removed on exit and exited while wharfd was down.
        let exited_auto_remove: Vec<String> = self
            .containers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|c| {
                c.spec.auto_remove
                    && matches!(c.state, ContainerState::Exited | ContainerState::Unknown)
            })
            .map(|c| c.id.clone())
            .collect();
        for id in exited_auto_remove {
            self.remove_if_auto(&id).await;
        }
        // Restart policies of containers that exited while wharfd was down (in the
        // background: a backoff must not hold up the daemon's start).
        let ids: Vec<String> = self
            .containers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        for id in ids {
            let runtime = self.clone();
            tokio::spawn(async move { runtime.restart_by_policy(&id).await });
        }
        Ok(())
    }

    /// A container recorded as Created may have been started just before a crash. The
    /// kernel decides before the runtime's state file, which a crash may have cut
    /// between the init's exec and the file's update: a created init is still the
    /// runtime's own binary (`wharf-monitor` for the built-in runtime), a started one
    /// runs the container's program. External runtimes may run their init from a
    /// copy of themselves (runc's memfd clone), so for them the runtime says.
    async fn started_while_down(&self, container: &ContainerRecord) -> bool {
        let Ok(runtime) = self.oci_runtime(&container.runtime_handler) else {
            return false;
        };
        if runtime.status(&container.id).await.as_deref() == Some("running") {
            return true;
        }
        let Some(info) = container.monitor else {
            return false;
        };
        let execed = runtime.is_builtin()
            && monitor::runs_program(info.pid, info.pid_start_time, &runtime.program)
                == Some(false);
        if execed {
            tracing::warn!(container = %container.id, "a start was cut before the runtime recorded it; recording it now");
            if let Err(err) = runtime.mark_started(&container.id).await {
                tracing::error!(container = %container.id, "recording the start: {err}");
            }
        }
        execed
    }

    /// Removes state and data directories of pods and containers that no record owns
    /// (left by a crash between a cleanup and the record's deletion).
    async fn reconcile_dirs(&self) {
        let owned_pods: Vec<String> = self.pods().into_iter().map(|p| p.id).collect();
        let mut owned_containers = Vec::new();
        {
            let containers = self.containers.read().unwrap_or_else(|p| p.into_inner());
            owned_containers.extend(containers.keys().cloned());
        }
        // Runtime state (runc's or libcontainer's) of containers no record owns.
        if let Ok(handlers) = std::fs::read_dir(self.config.state.join("runtime")) {
            for handler in handlers.flatten() {
                let name = handler.file_name().to_string_lossy().to_string();
                let Ok(runtime) = self.oci_runtime(&name) else {
                    continue;
                };
                let Ok(ids) = std::fs::read_dir(handler.path()) else {
                    continue;
                };
                for id in ids.flatten() {
                    let id = id.file_name().to_string_lossy().to_string();
                    if owned_containers.contains(&id) {
                        continue;
                    }
                    tracing::warn!(container = %id, handler = %name, "deleting runtime state no container owns");
                    if let Err(err) = runtime.delete(&id).await {
                        tracing::error!("reconcile: {err}");
                    }
                }
            }
        }
        let dirs = [
            (self.config.state.join("pods"), owned_pods.clone(), true),
            (
                self.config.state.join("containers"),
                owned_containers.clone(),
                false,
            ),
            (self.config.root.join("containers"), owned_containers, false),
        ];
        for (dir, owned, is_pod) in dirs {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().to_string();
                if owned.contains(&name) {
                    continue;
                }
                let path = entry.path();
                tracing::warn!(path = %path.display(), "removing state no pod or container owns");
                if !is_pod {
                    // A container whose record is gone may still run: end it first.
                    if let Some(info) = monitor::read_info(&path) {
                        let _ = monitor::signal(info.pid, info.pid_start_time, nix::libc::SIGKILL);
                        let _ = monitor::signal(
                            info.monitor_pid,
                            info.monitor_start_time,
                            nix::libc::SIGKILL,
                        );
                    }
                }
                let result = blocking(move || {
                    if is_pod {
                        super::pod::teardown_pod_dir(&path)?;
                    } else {
                        super::container::teardown_container_dir(&path)?;
                    }
                    Ok(())
                })
                .await;
                if let Err(err) = result {
                    tracing::error!("reconcile: {err}");
                }
            }
        }
    }
}
