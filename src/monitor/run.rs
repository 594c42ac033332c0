//! `wharf-monitor run`: create one container, then hand it over to the watcher
//! ([`super::watch`]) that follows it until it exits. The process model and the files
//! it writes are described in [`crate::monitor`].

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::syscall::syscall::SyscallType;
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::sys::signal::{signal, SigHandler, SigSet, Signal};
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, getpid, pipe2, ForkResult, Pid};
use serde::Serialize;

use super::cli::{RunArgs, RuntimeKind};
use super::control::console::{self, ConsoleSocket};
use super::control::server::{Input, Server, StdinMode};
use super::files::{self, error_chain};
use super::oom::{self, OomCounters};
use super::rotate::LogRotation;
use super::watch::{self, Monitor};

/// The daemon passes the write end of the sync pipe as stdout (so it can spawn the
/// monitor with posix_spawn: a fork of the daemon would copy its page tables on a
/// worker thread); the monitor moves it to this fd and puts /dev/null on stdout.
pub const SYNC_FD: RawFd = 3;

pub const INIT_PID_FILE: &str = "init.pid";
pub const MONITOR_STATE_FILE: &str = "monitor.json";
pub const EXIT_FILE: &str = "exit.json";
pub const RUNTIME_LOG_FILE: &str = "runtime.log";
pub const MONITOR_LOG_FILE: &str = "monitor.log";
/// How long after a successful create the PTY master may take to arrive.
const CONSOLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("stdout (the sync pipe) is not open")]
    NoSyncPipe,
    #[error("failed to resolve path {path}")]
    Path {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to prepare the monitor process: {what}")]
    Setup {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    OpenLog(#[from] watch::LogOpenError),
    #[error("failed to read the container's cgroup from the bundle")]
    Spec(#[from] oom::OomError),
    #[error("container {0} already exists in the runtime root")]
    AlreadyExists(String),
    #[error("failed to create container {id}: {message}")]
    Create { id: String, message: String },
    #[error("failed to run runtime {runtime}")]
    SpawnRuntime {
        runtime: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to read init pid from {path}")]
    InitPid {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("container init {pid} is not a child of the monitor (parent {parent})")]
    NotOurChild { pid: i32, parent: i32 },
    #[error("failed to write {path}")]
    WriteState {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn setup_error(what: &'static str) -> impl FnOnce(Errno) -> RunError {
    move |errno| RunError::Setup {
        what,
        source: errno.into(),
    }
}

/// Paths made absolute before the monitor moves to `/`.
struct Options {
    id: String,
    bundle: PathBuf,
    runtime: RuntimeKind,
    runtime_root: PathBuf,
    log_path: PathBuf,
    max_log_line: usize,
    rotation: Option<LogRotation>,
    stdin: StdinMode,
    tty: bool,
}

impl Options {
    fn from_args(args: RunArgs) -> Result<Self, RunError> {
        let absolute = |path: PathBuf| {
            std::path::absolute(&path).map_err(|source| RunError::Path { path, source })
        };
        Ok(Self {
            id: args.id,
            bundle: absolute(args.bundle)?,
            runtime: args.runtime,
            runtime_root: absolute(args.runtime_root)?,
            log_path: absolute(args.log_path)?,
            max_log_line: usize::try_from(args.max_log_line).unwrap_or(usize::MAX),
            rotation: args.log_max_size.map(|max_size| LogRotation {
                max_size,
                max_files: args.log_max_files,
            }),
            stdin: StdinMode {
                enabled: args.stdin,
                once: args.stdin && args.stdin_once,
            },
            tty: args.tty,
        })
    }

    fn bundle_file(&self, name: &str) -> PathBuf {
        self.bundle.join(name)
    }
}

/// The write end of the daemon's sync pipe: exactly one JSON line goes through it.
struct SyncPipe(File);

#[derive(Serialize)]
struct SyncOk {
    monitor_pid: i32,
    pid: i32,
}

#[derive(Serialize)]
struct SyncError<'a> {
    monitor_pid: i32,
    error: &'a str,
}

impl SyncPipe {
    /// Moves the pipe from stdout to `SYNC_FD` (close-on-exec) and reopens stdout on
    /// /dev/null, so neither the runtime nor the container can write to the daemon.
    fn take_from_stdout() -> Result<Self, RunError> {
        let setup = |source: Errno| RunError::Setup {
            what: "moving the sync pipe off stdout",
            source: source.into(),
        };
        fcntl(1, FcntlArg::F_GETFD).map_err(|_| RunError::NoSyncPipe)?;
        nix::unistd::dup2(1, SYNC_FD).map_err(setup)?;
        fcntl(SYNC_FD, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(setup)?;
        let null = OpenOptions::new()
            .write(true)
            .open("/dev/null")
            .map_err(|source| RunError::Setup {
                what: "opening /dev/null for stdout",
                source,
            })?;
        nix::unistd::dup2(null.as_raw_fd(), 1).map_err(setup)?;
        // SAFETY: SYNC_FD was just made a copy of the pipe; nothing else owns it.
        Ok(Self(unsafe { File::from_raw_fd(SYNC_FD) }))
    }

    fn send(mut self, message: &impl Serialize) -> io::Result<()> {
        let mut line = serde_json::to_vec(message).map_err(io::Error::other)?;
        line.push(b'\n');
        self.0.write_all(&line)
    }

    fn send_ok(self, monitor_pid: i32, pid: i32) -> io::Result<()> {
        self.send(&SyncOk { monitor_pid, pid })
    }

    fn send_error(self, monitor_pid: i32, error: &str) -> io::Result<()> {
        self.send(&SyncError { monitor_pid, error })
    }
}

/// Entry point of `wharf-monitor run`; returns the exit code.
pub fn main(args: RunArgs) -> i32 {
    // Before the fork, failures can only go to stderr.
    let prepared = files::ensure_stdio_open()
        .and_then(|()| files::set_cloexec_from(SYNC_FD))
        .map_err(|source| RunError::Setup {
            what: "close-on-exec of inherited fds",
            source,
        })
        .and_then(|()| SyncPipe::take_from_stdout());
    let sync = match prepared {
        Ok(sync) => sync,
        Err(err) => {
            eprintln!("wharf-monitor run: {}", error_chain(&err));
            return 1;
        }
    };
    let options = match Options::from_args(args) {
        Ok(options) => options,
        Err(err) => {
            let message = error_chain(&err);
            eprintln!("wharf-monitor run: {message}");
            let _ = sync.send_error(getpid().as_raw(), &message);
            return 1;
        }
    };

    // SAFETY: the process is single-threaded here, so the child may run anything.
    match unsafe { fork() } {
        // The daemon reaps this parent at once; the child is adopted by init.
        Ok(ForkResult::Parent { .. }) => unsafe { nix::libc::_exit(0) },
        Ok(ForkResult::Child) => {}
        Err(errno) => {
            let message = format!("failed to fork the monitor: {errno}");
            let _ = sync.send_error(getpid().as_raw(), &message);
            return 1;
        }
    }

    let monitor_pid = getpid().as_raw();
    match start(&options) {
        Ok(monitor) => {
            if let Err(err) = sync.send_ok(monitor_pid, monitor.init_pid.as_raw()) {
                // The daemon is gone; the container still needs its monitor.
                monitor.note(&format!("failed to write the sync message: {err}"));
            }
            // None of the create code is needed again: become the small watcher (see
            // `watch`), or watch from here if that binary cannot be run.
            let err = monitor.exec_watcher();
            monitor.note(&format!("watching in-process: {err}"));
            if let Err(err) = files::release_clean_file_pages() {
                monitor.note(&format!("failed to release startup pages: {err}"));
            }
            monitor.watch()
        }
        Err(failure) => {
            let message = error_chain(&failure.error);
            if failure.runtime_touched {
                delete_from_runtime(&options);
                for name in [INIT_PID_FILE, MONITOR_STATE_FILE] {
                    let _ = fs::remove_file(options.bundle_file(name));
                }
            }
            let _ = sync.send_error(monitor_pid, &message);
            1
        }
    }
}

struct StartFailure {
    error: RunError,
    /// The runtime may hold state for the container that must be deleted.
    runtime_touched: bool,
}

fn before_runtime(error: impl Into<RunError>) -> StartFailure {
    StartFailure {
        error: error.into(),
        runtime_touched: false,
    }
}

fn after_runtime(error: impl Into<RunError>) -> StartFailure {
    StartFailure {
        error: error.into(),
        runtime_touched: true,
    }
}

/// The container's stdio as the runtime receives it.
struct ContainerStdio {
    stdin: OwnedFd,
    stdout: OwnedFd,
    stderr: OwnedFd,
    /// With a TTY: where the runtime sends the PTY master (`--console-socket`).
    console: Option<PathBuf>,
}

/// Everything up to the sync message: set up the monitor process, create the
/// container, record who is who.
fn start(options: &Options) -> Result<Monitor, StartFailure> {
    let signals = become_monitor().map_err(before_runtime)?;
    let log_file = watch::open_log(&options.log_path).map_err(before_runtime)?;

    let (stdout_read, stdout_write) =
        pipe2(OFlag::O_CLOEXEC).map_err(|e| before_runtime(setup_error("stdout pipe")(e)))?;
    let (stderr_read, stderr_write) =
        pipe2(OFlag::O_CLOEXEC).map_err(|e| before_runtime(setup_error("stderr pipe")(e)))?;
    for read_end in [&stdout_read, &stderr_read] {
        fcntl(read_end.as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK))
            .map_err(|e| before_runtime(setup_error("non-blocking pipe")(e)))?;
    }
    // With stdin (and no TTY) the container reads a pipe whose write end the monitor
    // keeps, so its stdin stays open; otherwise /dev/null (a TTY's input is the PTY).
    let (stdin, stdin_pipe) = if options.stdin.enabled && !options.tty {
        let (read, write) =
            pipe2(OFlag::O_CLOEXEC).map_err(|e| before_runtime(setup_error("stdin pipe")(e)))?;
        fcntl(write.as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK))
            .map_err(|e| before_runtime(setup_error("non-blocking stdin pipe")(e)))?;
        (read, Some(write))
    } else {
        let null = File::open("/dev/null").map_err(|source| {
            before_runtime(RunError::Setup {
                what: "open /dev/null",
                source,
            })
        })?;
        (OwnedFd::from(null), None)
    };
    let control_setup = |what: &'static str| {
        move |source: io::Error| before_runtime(RunError::Setup { what, source })
    };
    // The control socket exists before the daemon hears of the container.
    let (control_dir, control_dir_fd) =
        console::prepare_dir(&options.bundle).map_err(control_setup("control directory"))?;
    // A burst of exec sessions and attaches connects at once: a backlog to take them.
    let listener = console::listen_in(&control_dir_fd, super::control::SOCKET_NAME, 128)
        .map_err(control_setup("control socket"))?;
    let console_socket = if options.tty {
        Some(
            ConsoleSocket::listen(&control_dir, &control_dir_fd)
                .map_err(control_setup("console socket"))?,
        )
    } else {
        None
    };

    let cgroup = oom::cgroups_path_from_bundle(&options.bundle).map_err(before_runtime)?;

    // Never clean up a container this monitor did not create.
    if options.runtime_root.join(&options.id).exists() {
        return Err(before_runtime(RunError::AlreadyExists(options.id.clone())));
    }
    // Leftovers of an earlier attempt with this bundle would be read as ours.
    for name in [INIT_PID_FILE, MONITOR_STATE_FILE, EXIT_FILE] {
        let _ = fs::remove_file(options.bundle_file(name));
    }

    let stdio = ContainerStdio {
        stdin,
        stdout: stdout_write,
        stderr: stderr_write,
        console: console_socket.as_ref().map(|c| c.path().to_path_buf()),
    };
    match &options.runtime {
        RuntimeKind::Builtin => create_builtin(options, stdio),
        RuntimeKind::External(runtime) => create_external(options, runtime, stdio),
    }
    .map_err(after_runtime)?;
    let pty = console_socket
        .map(|console| console.receive(CONSOLE_TIMEOUT))
        .transpose()
        .map_err(|source| {
            after_runtime(RunError::Setup {
                what: "receiving the PTY master from the runtime",
                source,
            })
        })?;
    drop(control_dir_fd);

    let init_pid = read_init_pid(&options.bundle_file(INIT_PID_FILE)).map_err(after_runtime)?;
    // The runtime's processes have exited, so the init was re-parented to us
    // (subreaper); if not, nobody could ever learn its exit status.
    let parent = files::process_parent_pid(&init_pid.to_string()).map_err(|source| {
        after_runtime(RunError::InitPid {
            path: PathBuf::from(format!("/proc/{init_pid}/stat")),
            source,
        })
    })?;
    if parent != getpid().as_raw() {
        return Err(after_runtime(RunError::NotOurChild {
            pid: init_pid.as_raw(),
            parent,
        }));
    }

    let counters = OomCounters::default();
    let parent_cgroup = cgroup.as_deref().and_then(oom::parent_cgroup);
    let parent_baseline = parent_cgroup
        .as_deref()
        .map_or(0, |path| counters.oom_kill_count(path));

    write_monitor_state(options, init_pid).map_err(after_runtime)?;

    Ok(Monitor {
        id: options.id.clone(),
        max_log_line: options.max_log_line,
        rotation: options.rotation,
        bundle: options.bundle.clone(),
        log_path: options.log_path.clone(),
        signals,
        log: watch::log_writer(log_file, options.max_log_line, options.rotation),
        log_failing: false,
        stdout: Some(stdout_read),
        stderr: Some(stderr_read),
        input: Input::new(options.stdin, pty.is_some(), stdin_pipe),
        pty,
        control: Some(Server::new(
            listener,
            watch::control_socket_path(&options.bundle),
        )),
        init_pid,
        init_exit: None,
        counters,
        cgroup,
        parent_cgroup,
        parent_baseline,
    })
}

/// Own session, subreaper, signals through a signalfd, cwd `/`.
fn become_monitor() -> Result<SignalFd, RunError> {
    nix::unistd::setsid().map_err(setup_error("setsid"))?;
    nix::sys::prctl::set_child_subreaper(true).map_err(setup_error("PR_SET_CHILD_SUBREAPER"))?;
    // SAFETY: installing SIG_IGN runs no code in signal context.
    unsafe { signal(Signal::SIGPIPE, SigHandler::SigIgn) }
        .map_err(setup_error("ignore SIGPIPE"))?;
    let signal_fd = watch::signal_fd().map_err(setup_error("signalfd"))?;
    std::env::set_current_dir("/").map_err(|source| RunError::Setup {
        what: "chdir /",
        source,
    })?;
    Ok(signal_fd)
}

/// Undoes the monitor's signal setup in a child that will become (part of) the
/// container: ignored dispositions and the mask survive exec.
fn reset_signals_for_child() {
    let _ = SigSet::empty().thread_set_mask();
    // SAFETY: restoring the default disposition runs no code in signal context.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
}

/// libcontainer creates in a forked child: its side effects on the calling process
/// (non-dumpable, the container's oom_score_adj, memory) stay out of the monitor, and
/// the init is re-parented to the monitor when that child exits.
fn create_builtin(options: &Options, stdio: ContainerStdio) -> Result<(), RunError> {
    let (error_read, error_write) = pipe2(OFlag::O_CLOEXEC).map_err(setup_error("error pipe"))?;
    // SAFETY: single-threaded; the child only runs libcontainer and exits.
    match unsafe { fork() }.map_err(setup_error("fork for create"))? {
        ForkResult::Child => {
            reset_signals_for_child();
            // The init inherits this process's fds until it execs at start: the sync
            // pipe must not stay open there, or the daemon would wait for its EOF.
            // The console socket is reached by a path through the monitor's own fds.
            let keep = [
                0,
                1,
                2,
                stdio.stdin.as_raw_fd(),
                stdio.stdout.as_raw_fd(),
                stdio.stderr.as_raw_fd(),
                error_write.as_raw_fd(),
            ];
            let code = match files::close_fds_except(&keep)
                .map_err(|err| format!("failed to close inherited fds: {err}"))
                .and_then(|()| build_with_libcontainer(options, stdio))
            {
                Ok(()) => 0,
                Err(message) => {
                    let _ = nix::unistd::write(&error_write, message.as_bytes());
                    1
                }
            };
            // SAFETY: leave without running the parent's destructors or atexit hooks.
            unsafe { nix::libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            drop(error_write);
            drop(stdio);
            let status = wait_for(child).map_err(setup_error("wait for create"))?;
            // Read only after the child exited: the init holds a copy of the write end
            // until it execs, so EOF would not come.
            fcntl(error_read.as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK))
                .map_err(setup_error("non-blocking error pipe"))?;
            let message = read_available(&error_read);
            match status {
                WaitStatus::Exited(_, 0) => Ok(()),
                other => Err(RunError::Create {
                    id: options.id.clone(),
                    message: if message.is_empty() {
                        format!("create process ended with {other:?}")
                    } else {
                        message
                    },
                }),
            }
        }
    }
}

fn build_with_libcontainer(options: &Options, stdio: ContainerStdio) -> Result<(), String> {
    ContainerBuilder::new(options.id.clone(), SyscallType::default())
        .validate_id()
        .and_then(|builder| builder.with_root_path(&options.runtime_root))
        .and_then(|builder| builder.with_pid_file(Some(options.bundle_file(INIT_PID_FILE))))
        .and_then(|builder| {
            builder
                .with_stdin(stdio.stdin)
                .with_stdout(stdio.stdout)
                .with_stderr(stdio.stderr)
                .with_console_socket(stdio.console.as_ref())
                .as_init(&options.bundle)
                .with_systemd(false)
                .with_detach(true)
                .build()
        })
        .map(|_| ())
        .map_err(|err| error_chain(&err))
}

fn create_external(
    options: &Options,
    runtime: &Path,
    stdio: ContainerStdio,
) -> Result<(), RunError> {
    let runtime_log = options.bundle_file(RUNTIME_LOG_FILE);
    // std resets the signal mask and SIGPIPE in the child before exec. The Command (and
    // with it the pipe write ends) is dropped at the end of this statement.
    let mut command = Command::new(runtime);
    command
        .arg("--root")
        .arg(&options.runtime_root)
        .arg("--log")
        .arg(&runtime_log)
        .arg("--log-format")
        .arg("json")
        .arg("create")
        .arg("--bundle")
        .arg(&options.bundle)
        .arg("--pid-file")
        .arg(options.bundle_file(INIT_PID_FILE));
    if let Some(console) = &stdio.console {
        command.arg("--console-socket").arg(console);
    }
    let status = command
        .arg(&options.id)
        .stdin(Stdio::from(stdio.stdin))
        .stdout(Stdio::from(stdio.stdout))
        .stderr(Stdio::from(stdio.stderr))
        .status()
        .map_err(|source| RunError::SpawnRuntime {
            runtime: runtime.to_path_buf(),
            source,
        })?;
    if status.success() {
        return Ok(());
    }
    let logged = fs::read_to_string(&runtime_log)
        .ok()
        .and_then(|text| last_runtime_message(&text));
    Err(RunError::Create {
        id: options.id.clone(),
        message: match logged {
            Some(message) => format!("{} create: {message}", runtime.display()),
            None => format!("{} create exited with {status}", runtime.display()),
        },
    })
}

/// The last `msg` of a runtime's JSON log (runc/crun `--log-format json`), or the last
/// non-empty raw line when the log is not JSON.
pub fn last_runtime_message(log: &str) -> Option<String> {
    let mut lines = log.lines().rev().map(str::trim).filter(|l| !l.is_empty());
    let last_line = lines.clone().next()?;
    lines
        .find_map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).ok()?;
            value.get("msg")?.as_str().map(str::to_owned)
        })
        .or_else(|| Some(last_line.to_owned()))
}

/// Deletes whatever the runtime left of a failed create (best effort).
fn delete_from_runtime(options: &Options) {
    match &options.runtime {
        RuntimeKind::Builtin => {
            let root = options.runtime_root.join(&options.id);
            if root.exists() {
                if let Ok(mut container) = Container::load(root) {
                    let _ = container.delete(true);
                }
            }
        }
        RuntimeKind::External(runtime) => {
            let _ = Command::new(runtime)
                .arg("--root")
                .arg(&options.runtime_root)
                .args(["delete", "--force"])
                .arg(&options.id)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn read_init_pid(path: &Path) -> Result<Pid, RunError> {
    let error = |source| RunError::InitPid {
        path: path.to_path_buf(),
        source,
    };
    let text = fs::read_to_string(path).map_err(error)?;
    match text.trim().parse::<i32>() {
        Ok(pid) if pid > 0 => Ok(Pid::from_raw(pid)),
        _ => Err(error(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("not a pid: {text:?}"),
        ))),
    }
}

#[derive(Serialize)]
struct MonitorState {
    monitor_pid: i32,
    monitor_start_time: u64,
    pid: i32,
    pid_start_time: u64,
}

fn write_monitor_state(options: &Options, init_pid: Pid) -> Result<(), RunError> {
    let path = options.bundle_file(MONITOR_STATE_FILE);
    let error = |source| RunError::WriteState {
        path: path.clone(),
        source,
    };
    let state = MonitorState {
        monitor_pid: getpid().as_raw(),
        monitor_start_time: files::process_start_time("self").map_err(error)?,
        pid: init_pid.as_raw(),
        pid_start_time: files::process_start_time(&init_pid.to_string()).map_err(error)?,
    };
    let json = serde_json::to_vec(&state).map_err(|e| error(io::Error::other(e)))?;
    crate::state_file::replace(&path, &json, 0o644).map_err(error)
}

fn wait_for(child: Pid) -> Result<WaitStatus, Errno> {
    loop {
        match waitpid(child, None) {
            Err(Errno::EINTR) => continue,
            other => return other,
        }
    }
}

/// Whatever is in a non-blocking pipe right now, as text.
fn read_available(fd: &OwnedFd) -> String {
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    while let Ok(n) = nix::unistd::read(fd.as_raw_fd(), &mut chunk) {
        if n == 0 {
            break;
        }
        bytes.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&bytes).trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_message_is_the_last_json_msg() {
        let log = concat!(
            "{\"level\":\"warning\",\"msg\":\"old warning\",\"time\":\"t\"}\n",
            "{\"level\":\"error\",\"msg\":\"exec: \\\"nope\\\": executable file not found\",\"time\":\"t\"}\n",
            "\n"
        );
        assert_eq!(
            last_runtime_message(log).as_deref(),
            Some("exec: \"nope\": executable file not found")
        );
    }

    #[test]
    fn runtime_message_falls_back_to_raw_text() {
        assert_eq!(
            last_runtime_message("first\nsomething broke\n").as_deref(),
            Some("something broke")
        );
        assert_eq!(last_runtime_message("\n  \n"), None);
    }
}
