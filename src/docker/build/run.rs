//! RUN: a container of the current image (the Docker front end's create, attach,
//! start and remove), its output streamed, its layer committed.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use super::steps::{short, string_list, Builder, Stage, PROXY_ARGS};
use super::BuildError;
use crate::docker::containers::{create_container, name_taken, random_name, remove_container};
use crate::docker::NAMESPACE;
use crate::image::build::dockerfile::CommandLine;
use crate::image::rwlayer::RUNTIME_MOUNTPOINTS;
use crate::runtime::monitor_control::{AttachStreams, Event};

impl<'a> Builder<'a> {
    /// RUN: a container of the current image runs the command with the build args in
    /// its environment; its layer is committed.
    pub(super) async fn run_step(
        &mut self,
        state: &mut Stage,
        line: CommandLine,
    ) -> Result<(), BuildError> {
        let cmd = self.command_line(state, line);
        let mut build_env = state.arg_env();
        // Proxy args given with the request are in the environment, not the history.
        let declared: BTreeSet<String> = build_env
            .iter()
            .map(|e| e.split('=').next().unwrap_or(e).to_string())
            .collect();
        build_env.sort();
        let mut save_cmd = cmd.clone();
        if !build_env.is_empty() {
            save_cmd = std::iter::once(format!("|{}", build_env.len()))
                .chain(build_env.iter().cloned())
                .chain(cmd.iter().cloned())
                .collect();
        }
        let mut probe = state.config.clone();
        probe.insert("Cmd".into(), string_list(&save_cmd));
        if !save_cmd.is_empty() {
            probe.insert("Entrypoint".into(), Value::Null);
        }
        let probe = self.with_image(state, probe);
        if self.cached(state, &probe).await {
            return Ok(());
        }
        let Some(parent) = state.image.clone() else {
            return Err(BuildError::new(format!(
                "The command '{}' cannot run: a scratch image has no files yet",
                cmd.join(" ")
            )));
        };
        let mut env = state.env();
        env.extend(build_env.iter().cloned());
        for proxy in PROXY_ARGS {
            if declared.contains(*proxy) {
                continue;
            }
            if let Some(Some(value)) = self.options.build_args.get(*proxy) {
                env.push(format!("{proxy}={value}"));
            }
        }
        let request = self.run_request(state, &parent, &cmd, &env);
        // Named before it is made, and the name kept in the build's directory: a
        // daemon killed mid-step finds the container there at its next start and
        // removes it (`clean_leftovers`).
        let name = random_name(|n| name_taken(self.server, n).is_some());
        self.dir.record_container(&name).await?;
        let id = create_container(self.server, Some(name), request).await?;
        *self.running.lock().unwrap_or_else(|p| p.into_inner()) = Some(id.clone());
        self.output
            .stream(format!(" ---> Running in {}\n", short(&id)))
            .await;
        let ran = self.run_container(&id).await;
        let record = self.server.runtime.find_container(NAMESPACE, &id);
        let exit_code = match ran {
            Ok(code) => code,
            Err(err) => {
                if let Some(record) = &record {
                    self.remove_intermediate(record, self.options.force_remove)
                        .await;
                }
                return Err(err);
            }
        };
        if exit_code != 0 {
            if let Some(record) = &record {
                self.remove_intermediate(record, self.options.force_remove)
                    .await;
            }
            return Err(BuildError {
                message: format!(
                    "The command '{}' returned a non-zero code: {exit_code}",
                    cmd.join(" ")
                ),
                code: Some(exit_code),
            });
        }
        let layer = self.server.runtime.container_layer(NAMESPACE, &id)?;
        let committed = self
            .commit(state, layer, RUNTIME_MOUNTPOINTS, probe, id.clone())
            .await;
        if let Some(record) = &record {
            let remove = self.options.remove || self.options.force_remove;
            self.remove_intermediate(record, remove).await;
        }
        committed
    }

    /// The create request of a RUN's container.
    pub(super) fn run_request(
        &self,
        state: &Stage,
        parent: &str,
        cmd: &[String],
        env: &[String],
    ) -> Value {
        let o = self.options;
        let mut host = json!({
            "NetworkMode": if o.network_mode.is_empty() { "default" } else { o.network_mode.as_str() },
        });
        if !o.extra_hosts.is_empty() {
            host["ExtraHosts"] = json!(o.extra_hosts);
        }
        for (key, value) in [
            ("ShmSize", o.shm_size),
            ("Memory", o.memory),
            ("MemorySwap", o.memory_swap),
            ("CpuShares", o.cpu_shares),
            ("CpuPeriod", o.cpu_period),
            ("CpuQuota", o.cpu_quota),
        ] {
            if value != 0 {
                host[key] = json!(value);
            }
        }
        if !o.cpuset_cpus.is_empty() {
            host["CpusetCpus"] = json!(o.cpuset_cpus);
        }
        let mut request = json!({
            "Image": parent,
            "Cmd": cmd,
            "Entrypoint": [""],
            "Env": env,
            "WorkingDir": state.config.get("WorkingDir").cloned().unwrap_or(json!("")),
            "User": state.config.get("User").cloned().unwrap_or(json!("")),
            "Healthcheck": {"Test": ["NONE"]},
            "AttachStdout": true,
            "AttachStderr": true,
            "HostConfig": host,
        });
        if let Some(volumes) = state.config.get("Volumes").filter(|v| v.is_object()) {
            request["Volumes"] = volumes.clone();
        }
        request
    }

    /// Starts a RUN's container and streams its output; its exit code.
    pub(super) async fn run_container(&self, id: &str) -> Result<i32, BuildError> {
        let session = self
            .server
            .runtime
            .attach(
                NAMESPACE,
                id,
                AttachStreams {
                    stdin: false,
                    stdout: true,
                    stderr: true,
                },
            )
            .await?;
        self.server.runtime.start_container(NAMESPACE, id).await?;
        let crate::runtime::monitor_control::Session {
            control,
            mut events,
        } = session;
        let mut exit = None;
        while let Some(event) = events.next().await {
            match event {
                Ok(Event::Stdout(data)) => {
                    self.output
                        .stream(String::from_utf8_lossy(&data).into_owned())
                        .await
                }
                Ok(Event::Stderr(data)) => self.output.stderr(&data).await,
                Ok(Event::Exit { exit_code, .. }) => {
                    exit = Some(exit_code);
                    break;
                }
                Err(err) => {
                    tracing::debug!(container = %id, "build step output: {err}");
                    break;
                }
            }
        }
        drop(control);
        if let Some(code) = exit {
            return Ok(code);
        }
        // The session ended early: the record has the exit once the monitor wrote it.
        for _ in 0..600 {
            match self.server.runtime.find_container(NAMESPACE, id) {
                Some(c) if c.state == crate::runtime::ContainerState::Exited => {
                    return Ok(c.exit_code)
                }
                Some(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
                None => {
                    return Err(BuildError::new(format!(
                        "the container {id} of a RUN step vanished"
                    )))
                }
            }
        }
        Err(BuildError::new(format!(
            "the container {id} of a RUN step did not report its exit"
        )))
    }

    pub(super) async fn remove_intermediate(
        &self,
        record: &crate::runtime::ContainerRecord,
        remove: bool,
    ) {
        // Done with: a cancel from now on does not take it (a failed RUN's stays).
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if !remove {
            return;
        }
        self.output
            .stream(format!(
                "Removing intermediate container {}\n",
                short(&record.id)
            ))
            .await;
        if let Err(err) = remove_container(self.server, record, true).await {
            tracing::warn!(container = %record.id, "removing a build container: {}", err.message);
        }
    }
}
