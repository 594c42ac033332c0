//! `wharf-monitor oci`: the built-in OCI runtime's CLI, a runc-compatible subset backed
//! by libcontainer, so the daemon drives `builtin`, `runc` and `crun` the same way.
//!
//! Errors go to stderr (and, with `--log`, to that file as `{"level":"error","msg":..}`
//! JSON lines, as runc writes them); the exit code is 1, or 255 for `exec` when the
//! runtime failed before the process ran (then no pid file is written).

use std::collections::HashMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use libcgroups::common::{CgroupConfig, CgroupManager, ControllerOpt};
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::{Container, ContainerStatus};
use libcontainer::error::LibcontainerError;
use libcontainer::signal::Signal as RuntimeSignal;
use libcontainer::syscall::syscall::SyscallType;
use nix::errno::Errno;
use nix::sys::signal::{kill, signal, SigHandler, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use oci_spec::runtime::LinuxResources;
use serde::Serialize;

use super::cli::{OciArgs, OciCommand};
use super::cri_log::format_timestamp;
use super::files::{self, error_chain};

/// Exit code of `exec` when the runtime itself failed (runc uses 255 too).
pub const EXEC_RUNTIME_FAILURE: i32 = 255;

#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("invalid container id {0:?}")]
    InvalidId(String),
    #[error("container {0} does not exist")]
    NotFound(String),
    // libcontainer's error is large: boxed, so every Result here stays small.
    #[error("failed to load container {id}")]
    Load {
        id: String,
        #[source]
        source: Box<LibcontainerError>,
    },
    #[error("failed to {action} container {id}")]
    Runtime {
        action: &'static str,
        id: String,
        #[source]
        source: Box<LibcontainerError>,
    },
    #[error("invalid signal {0:?}")]
    InvalidSignal(String),
    #[error("failed to read {path}")]
    ReadFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("invalid resources in {path}")]
    ParseResources {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("failed to {action} the cgroup of container {id}: {message}")]
    Cgroup {
        action: &'static str,
        id: String,
        message: String,
    },
    #[error("failed to remove {path}")]
    RemoveDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to write pid file {path}")]
    PidFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to wait for exec'd process {pid}")]
    Wait {
        pid: i32,
        #[source]
        source: Errno,
    },
    #[error("failed to print state")]
    Print(#[source] io::Error),
}

/// Entry point of `wharf-monitor oci`; returns the exit code.
pub fn main(args: OciArgs) -> i32 {
    let is_exec = matches!(args.command, OciCommand::Exec { .. });
    match run_command(&args.root, args.command) {
        Ok(code) => code,
        Err(err) => {
            let message = error_chain(&err);
            eprintln!("{message}");
            if let Some(log) = &args.log {
                log_error(log, &message);
            }
            if is_exec {
                EXEC_RUNTIME_FAILURE
            } else {
                1
            }
        }
    }
}

#[derive(Serialize)]
struct LogEntry<'a> {
    level: &'a str,
    msg: &'a str,
    time: String,
}

fn log_error(path: &Path, message: &str) {
    let entry = LogEntry {
        level: "error",
        msg: message,
        time: format_timestamp(&Utc::now()),
    };
    if let Ok(line) = serde_json::to_string(&entry) {
        let _ = files::append_line(path, &line);
    }
}

fn run_command(root: &Path, command: OciCommand) -> Result<i32, OciError> {
    match command {
        OciCommand::Start { id } => start(root, &id)?,
        OciCommand::Kill { all, id, signal } => {
            let signal = parse_signal(&signal)?;
            let mut container = load(root, &id)?;
            container
                .kill(RuntimeSignal::from(signal), all)
                .map_err(runtime_error("kill", &id))?;
        }
        OciCommand::Delete { force, id } => match load(root, &id) {
            Ok(mut container) => container
                .delete(force)
                .map_err(runtime_error("delete", &id))?,
            Err(err @ OciError::Load { .. }) if force => delete_unloadable(root, &id, &err)?,
            Err(err) => return Err(err),
        },
        OciCommand::State { id } => print_state(&load(root, &id)?)?,
        OciCommand::Pause { id } => load(root, &id)?
            .pause()
            .map_err(runtime_error("pause", &id))?,
        OciCommand::Resume { id } => load(root, &id)?
            .resume()
            .map_err(runtime_error("resume", &id))?,
        OciCommand::Exec {
            process,
            pid_file,
            detach,
            console_socket,
            id,
        } => {
            let options = ExecOptions {
                pid_file: pid_file.as_deref(),
                console_socket: console_socket.as_deref(),
                detach,
            };
            return exec(root, &id, &process, &options);
        }
        OciCommand::Update { resources, id } => update(root, &id, &resources)?,
    }
    Ok(0)
}

/// `delete --force` of a container whose state libcontainer cannot load (an empty or
/// torn state.json): what runs in its cgroup is killed, the cgroup and the state
/// directory removed, so the container can always be removed.
fn delete_unloadable(root: &Path, id: &str, load_error: &OciError) -> Result<(), OciError> {
    const KILL_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
    let dir = container_dir(root, id)?;
    let cgroup_error = |message: String| OciError::Cgroup {
        action: "clean up",
        id: id.to_owned(),
        message,
    };
    // libcontainer writes config.json (the cgroup path) once, at create.
    match libcontainer::config::YoukiConfig::load(&dir) {
        Ok(config) => {
            let manager = libcgroups::common::create_cgroup_manager(CgroupConfig {
                cgroup_path: config.cgroup_path,
                systemd_cgroup: false,
                container_name: id.to_owned(),
            })
            .map_err(|err| cgroup_error(format!("opening its cgroup: {err}")))?;
            let deadline = std::time::Instant::now() + KILL_WAIT;
            loop {
                let pids = manager
                    .get_all_pids()
                    .map_err(|err| cgroup_error(format!("listing its processes: {err}")))?;
                if pids.is_empty() {
                    break;
                }
                if std::time::Instant::now() > deadline {
                    return Err(cgroup_error(format!(
                        "{} processes still run {KILL_WAIT:?} after SIGKILL",
                        pids.len()
                    )));
                }
                for pid in pids {
                    let _ = kill(pid, Signal::SIGKILL);
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            manager
                .remove()
                .map_err(|err| cgroup_error(format!("removing its cgroup: {err}")))?;
        }
        Err(err) => eprintln!(
            "container {id}: no cgroup path to clean up ({}); removing its state only",
            error_chain(&err)
        ),
    }
    std::fs::remove_dir_all(&dir).map_err(|source| OciError::RemoveDir {
        path: dir.clone(),
        source,
    })?;
    eprintln!(
        "container {id}: deleted although its state could not be loaded: {}",
        error_chain(load_error)
    );
    Ok(())
}

/// Records in libcontainer's state that container `id` runs. wharfd's recovery calls
/// this when a crash cut a start after the init exec'd the container's program but
/// before the state file said so: without it, exec, kill and delete would take the
/// container for a created one.
pub fn mark_started(root: &Path, id: &str) -> Result<(), OciError> {
    let mut container = load(root, id)?;
    if container.status() == ContainerStatus::Created {
        container
            .set_status(ContainerStatus::Running)
            .save()
            .map_err(runtime_error("record the start of", id))?;
    }
    Ok(())
}

/// `start`: lets a created container's init exec the user process. wharfd calls this
/// in-process for the built-in runtime (it only connects to the container's notify
/// socket, updates the state file and runs poststart hooks: no fork, no chdir).
pub fn start(root: &Path, id: &str) -> Result<(), OciError> {
    let mut container = load(root, id)?;
    container.start().map_err(runtime_error("start", id))
}

fn runtime_error(action: &'static str, id: &str) -> impl FnOnce(LibcontainerError) -> OciError {
    let id = id.to_owned();
    move |source| OciError::Runtime {
        action,
        id,
        source: Box::new(source),
    }
}

/// Container IDs name directories under the root: no separators, no `.`/`..`.
fn check_id(id: &str) -> Result<(), OciError> {
    let valid = !id.is_empty()
        && id != "."
        && id != ".."
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '-' | '.'));
    if valid {
        Ok(())
    } else {
        Err(OciError::InvalidId(id.to_owned()))
    }
}

fn container_dir(root: &Path, id: &str) -> Result<PathBuf, OciError> {
    check_id(id)?;
    let dir = std::fs::canonicalize(root)
        .map(|root| root.join(id))
        .map_err(|_| OciError::NotFound(id.to_owned()))?;
    if dir.exists() {
        Ok(dir)
    } else {
        Err(OciError::NotFound(id.to_owned()))
    }
}

fn load(root: &Path, id: &str) -> Result<Container, OciError> {
    Container::load(container_dir(root, id)?).map_err(|source| OciError::Load {
        id: id.to_owned(),
        source: Box::new(source),
    })
}

/// TERM, SIGTERM (any case) or a number, as runc accepts.
pub fn parse_signal(text: &str) -> Result<Signal, OciError> {
    let invalid = || OciError::InvalidSignal(text.to_owned());
    if let Ok(number) = text.parse::<i32>() {
        return Signal::try_from(number).map_err(|_| invalid());
    }
    let upper = text.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse().map_err(|_| invalid())
}

/// What `runc state` prints.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StateOutput<'a> {
    oci_version: &'a str,
    id: &'a str,
    pid: i32,
    status: ContainerStatus,
    bundle: &'a Path,
    #[serde(skip_serializing_if = "Option::is_none")]
    created: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    annotations: Option<&'a HashMap<String, String>>,
}

fn print_state(container: &Container) -> Result<(), OciError> {
    let state = &container.state;
    let output = StateOutput {
        oci_version: &state.oci_version,
        id: &state.id,
        // runc reports pid 0 once the container stopped (the pid may be reused).
        pid: match state.status {
            ContainerStatus::Stopped => 0,
            _ => state.pid.unwrap_or(0),
        },
        status: state.status,
        bundle: &state.bundle,
        created: state.created,
        annotations: state.annotations.as_ref(),
    };
    let json = serde_json::to_string_pretty(&output).map_err(|e| OciError::Print(e.into()))?;
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "{json}").map_err(OciError::Print)
}

/// How `exec` runs its process.
struct ExecOptions<'a> {
    pid_file: Option<&'a Path>,
    /// With `process.terminal`: where to send the PTY master (needs `detach`).
    console_socket: Option<&'a Path>,
    detach: bool,
}

fn exec(root: &Path, id: &str, process: &Path, options: &ExecOptions<'_>) -> Result<i32, OciError> {
    let ExecOptions {
        pid_file,
        console_socket,
        detach,
    } = *options;
    container_dir(root, id)?;
    // Rust ignores SIGPIPE at startup; the exec'd process must get the default back.
    // SAFETY: restoring the default disposition runs no code in signal context.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };

    // No pid file through libcontainer: it writes one before the exec is known to have
    // succeeded, and the daemon reads the file's presence as "the process ran".
    let pid = ContainerBuilder::new(id.to_owned(), SyscallType::default())
        .with_root_path(root)
        .and_then(ContainerBuilder::validate_id)
        .map(|builder| builder.with_console_socket(console_socket))
        .and_then(|builder| {
            builder
                .as_tenant()
                .with_detach(detach)
                .with_process(Some(process))
                .build()
        })
        .map_err(runtime_error("exec in", id))?;

    if let Some(path) = pid_file {
        if let Err(source) = crate::state_file::replace(path, pid.to_string().as_bytes(), 0o644) {
            // Without the pid file the daemon could not track it: undo.
            let _ = kill(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
            return Err(OciError::PidFile {
                path: path.to_path_buf(),
                source,
            });
        }
    }
    if detach {
        return Ok(0);
    }
    wait_forwarding_signals(pid)
}

/// Waits for the exec'd process (our child: libcontainer clones it as a sibling of its
/// intermediate) and forwards the usual termination signals to it, as runc does.
fn wait_forwarding_signals(pid: Pid) -> Result<i32, OciError> {
    let mut forwarded = SigSet::empty();
    for signal in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
    ] {
        forwarded.add(signal);
    }
    let wait_error = |source| OciError::Wait {
        pid: pid.as_raw(),
        source,
    };
    forwarded.thread_block().map_err(wait_error)?;
    loop {
        // Checked before every wait: a SIGCHLD from before the block was discarded.
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, signal, _)) => return Ok(128 + signal as i32),
            Ok(_) | Err(Errno::EINTR) => {}
            Err(errno) => return Err(wait_error(errno)),
        }
        match forwarded.wait() {
            Ok(Signal::SIGCHLD) | Err(_) => {}
            Ok(signal) => {
                let _ = kill(pid, signal);
            }
        }
    }
}

fn update(root: &Path, id: &str, resources_path: &Path) -> Result<(), OciError> {
    let container = load(root, id)?;
    let text = std::fs::read(resources_path).map_err(|source| OciError::ReadFile {
        path: resources_path.to_path_buf(),
        source,
    })?;
    let resources: LinuxResources =
        serde_json::from_slice(&text).map_err(|source| OciError::ParseResources {
            path: resources_path.to_path_buf(),
            source,
        })?;
    let cgroup_error = |message: String| OciError::Cgroup {
        action: "update",
        id: id.to_owned(),
        message,
    };
    let config = container
        .spec()
        .map_err(|err| cgroup_error(error_chain(&err)))?;
    let manager = libcgroups::common::create_cgroup_manager(CgroupConfig {
        cgroup_path: config.cgroup_path,
        systemd_cgroup: container.systemd(),
        container_name: id.to_owned(),
    })
    .map_err(|err| cgroup_error(error_chain(&err)))?;
    manager
        .apply(&ControllerOpt {
            resources: &resources,
            disable_oom_killer: false,
            oom_score_adj: None,
            freezer_state: None,
        })
        .map_err(|err| cgroup_error(error_chain(&err)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_like_runc() {
        for (text, expected) in [("TERM", 15), ("SIGKILL", 9), ("9", 9), ("hup", 1)] {
            assert_eq!(
                parse_signal(text).expect("valid") as i32,
                expected,
                "{text}"
            );
        }
        assert!(parse_signal("NOPE").is_err());
    }

    #[test]
    fn ids_cannot_escape_the_root() {
        for bad in ["", ".", "..", "a/b", "../x"] {
            assert!(check_id(bad).is_err(), "{bad:?}");
        }
        check_id("abc-1.2_3+x").expect("valid id");
    }

    #[test]
    fn missing_container_is_not_found() {
        let root = tempfile::tempdir().expect("tempdir");
        let err = load(root.path(), "nope").expect_err("missing");
        assert_eq!(err.to_string(), "container nope does not exist");
    }
}
