//! The monitor's watch loop, and `wharf-monitor-watch`: the small binary that a
//! monitor becomes once its container exists.
//!
//! # Why a second binary
//!
//! `wharf-monitor` links libcontainer, oci-spec and clap for the create; as a PIE, the
//! loader writes every pointer of its relocated constants (`.data.rel.ro`, 460 KB), so
//! those pages are private to each process, and a long-lived monitor kept them for the
//! container's whole life: two thirds of its private memory. After the sync line the
//! monitor needs none of that code, so it `execve`s `wharf-monitor-watch` (next to its
//! own binary), which links only this loop. The exec keeps what the loop relies on:
//! the pid and start time that `monitor.json` names, the children (the container
//! init), the subreaper flag, the session, the blocked signal mask and any pending
//! SIGCHLD. The pipes and the log file go over as fds named on the command line. If the
//! exec fails (a missing binary), the monitor notes it and watches in-process.
//!
//! The command line is an internal contract between the two binaries, written only by
//! [`Monitor::exec_watcher`]; it is parsed by hand here because clap's tables would be
//! a good part of the watcher's private memory (see `docs/benchmarks.md`):
//!
//! ```text
//! wharf-monitor-watch --id ID --bundle DIR --log-path FILE --max-log-line BYTES
//!     --init-pid PID --stdout-fd FD --stderr-fd FD --log-fd FD --parent-baseline N
//!     [--cgroup PATH] [--control-fd FD] [--stdin none|open|once] [--stdin-fd FD]
//!     [--pty-fd FD]
//! ```
//!
//! `--control-fd` is the listening control socket ([`super::control`]), `--stdin-fd`
//! the write end of the container's stdin pipe, `--pty-fd` the master of its TTY.

use std::ffi::{CString, OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use serde::Serialize;

use super::control::proto;
use super::control::server::{Context, Input, OutputPosition, Server, Source, StdinMode};
use super::cri_log::{format_timestamp, CriLogWriter, Stream};
use super::files::{self, error_chain};
use super::oom::{self, OomCounters};
use super::rotate::LogRotation;
use super::run::{EXIT_FILE, MONITOR_LOG_FILE};

/// File name of the watcher binary, looked up next to `wharf-monitor`.
pub const WATCHER_BINARY: &str = "wharf-monitor-watch";
/// How long output is still collected after the init exited.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
const READ_CHUNK: usize = 32 * 1024;
/// 1 MiB, the largest pipe buffer an unprivileged container can ask for.
const MAX_DRAIN_CHUNKS_AT_EXIT: usize = 32;

/// The signals the monitor takes through its signalfd (blocked, so also kept pending
/// across the exec into the watcher).
fn monitor_signals() -> SigSet {
    let mut set = SigSet::empty();
    for signal in [
        Signal::SIGCHLD,
        Signal::SIGUSR1,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
    ] {
        set.add(signal);
    }
    set
}

/// Blocks the monitor's signals and opens a signalfd for them.
pub(super) fn signal_fd() -> Result<SignalFd, Errno> {
    let signals = monitor_signals();
    signals.thread_block()?;
    SignalFd::with_flags(&signals, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
}

/// The log writer on `file`, holding lines back at the rotation's size.
pub(super) fn log_writer(
    file: File,
    max_log_line: usize,
    rotation: Option<LogRotation>,
) -> CriLogWriter<File> {
    let size = file.metadata().map_or(0, |m| m.len());
    let mut writer = CriLogWriter::new(file, max_log_line);
    writer.set_limit(rotation.map(|r| r.max_size), size);
    writer
}

/// Opens (creating) the CRI log file for appending, close-on-exec.
pub fn open_log(path: &Path) -> Result<File, LogOpenError> {
    let open_error = |source| LogOpenError {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(open_error)?;
    }
    // std opens with O_CLOEXEC. A symlink in the file's place is refused (ELOOP): the
    // log must not be redirected to another file of the host.
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
        .map_err(open_error)
}

#[derive(Debug, thiserror::Error)]
#[error("failed to open log file {path}")]
pub struct LogOpenError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("usage: {WATCHER_BINARY} is started by wharf-monitor only: {0}")]
    Usage(String),
    #[error("fd {fd} named by {flag} is not open")]
    FdNotOpen { flag: &'static str, fd: RawFd },
    #[error("failed to prepare the watcher: {what}")]
    Setup {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("failed to write {path}")]
    WriteState {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The watcher's command line, decoded.
#[derive(Debug, PartialEq, Eq)]
pub struct WatchArgs {
    pub id: String,
    pub bundle: PathBuf,
    pub log_path: PathBuf,
    pub max_log_line: usize,
    pub rotation: Option<LogRotation>,
    pub init_pid: i32,
    pub stdout_fd: RawFd,
    pub stderr_fd: RawFd,
    pub log_fd: RawFd,
    pub parent_baseline: u64,
    pub cgroup: Option<PathBuf>,
    pub control_fd: Option<RawFd>,
    pub stdin: StdinMode,
    pub stdin_fd: Option<RawFd>,
    pub pty_fd: Option<RawFd>,
}

impl WatchArgs {
    /// The arguments after argv[0], in the order [`WatchArgs::parse`] reads them.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::with_capacity(20);
        let mut push = |flag: &str, value: OsString| {
            args.push(flag.into());
            args.push(value);
        };
        push("--id", self.id.clone().into());
        push("--bundle", self.bundle.clone().into_os_string());
        push("--log-path", self.log_path.clone().into_os_string());
        push("--max-log-line", self.max_log_line.to_string().into());
        if let Some(rotation) = &self.rotation {
            push("--log-max-size", rotation.max_size.to_string().into());
            push("--log-max-files", rotation.max_files.to_string().into());
        }
        push("--init-pid", self.init_pid.to_string().into());
        push("--stdout-fd", self.stdout_fd.to_string().into());
        push("--stderr-fd", self.stderr_fd.to_string().into());
        push("--log-fd", self.log_fd.to_string().into());
        push("--parent-baseline", self.parent_baseline.to_string().into());
        if let Some(cgroup) = &self.cgroup {
            push("--cgroup", cgroup.clone().into_os_string());
        }
        if let Some(fd) = self.control_fd {
            push("--control-fd", fd.to_string().into());
        }
        if self.stdin.enabled {
            push("--stdin", self.stdin.name().into());
        }
        if let Some(fd) = self.stdin_fd {
            push("--stdin-fd", fd.to_string().into());
        }
        if let Some(fd) = self.pty_fd {
            push("--pty-fd", fd.to_string().into());
        }
        args
    }

    /// Decodes the arguments after argv[0]: `--flag value` pairs, each flag once, all
    /// but `--cgroup` and the stdio ones required.
    pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Self, WatchError> {
        const FLAGS: [&str; 16] = [
            "--id",
            "--bundle",
            "--log-path",
            "--max-log-line",
            "--init-pid",
            "--stdout-fd",
            "--stderr-fd",
            "--log-fd",
            "--parent-baseline",
            "--cgroup",
            "--control-fd",
            "--stdin",
            "--stdin-fd",
            "--pty-fd",
            "--log-max-size",
            "--log-max-files",
        ];
        let mut values: [Option<OsString>; 16] = Default::default();
        let mut args = args.into_iter();
        while let Some(flag) = args.next() {
            let index = FLAGS
                .iter()
                .position(|known| OsStr::new(known) == flag)
                .ok_or_else(|| WatchError::Usage(format!("unknown argument {flag:?}")))?;
            let value = args
                .next()
                .ok_or_else(|| WatchError::Usage(format!("{} needs a value", FLAGS[index])))?;
            if values[index].replace(value).is_some() {
                return Err(WatchError::Usage(format!("{} given twice", FLAGS[index])));
            }
        }
        let mut take = |index: usize| {
            values[index]
                .take()
                .ok_or_else(|| WatchError::Usage(format!("{} is required", FLAGS[index])))
        };
        let id = take(0)?
            .into_string()
            .map_err(|id| WatchError::Usage(format!("--id must be UTF-8, got {id:?}")))?;
        let bundle = PathBuf::from(take(1)?);
        let log_path = PathBuf::from(take(2)?);
        let max_log_line = number(FLAGS[3], take(3)?)?;
        let init_pid = number(FLAGS[4], take(4)?)?;
        let stdout_fd = number(FLAGS[5], take(5)?)?;
        let stderr_fd = number(FLAGS[6], take(6)?)?;
        let log_fd = number(FLAGS[7], take(7)?)?;
        let parent_baseline = number(FLAGS[8], take(8)?)?;
        let cgroup = values[9].take().map(PathBuf::from);
        let control_fd = values[10]
            .take()
            .map(|v| number(FLAGS[10], v))
            .transpose()?;
        let stdin = match values[11].take() {
            None => StdinMode::default(),
            Some(value) => value.to_str().and_then(StdinMode::parse).ok_or_else(|| {
                WatchError::Usage(format!("--stdin must be none, open or once, got {value:?}"))
            })?,
        };
        let stdin_fd = values[12]
            .take()
            .map(|v| number(FLAGS[12], v))
            .transpose()?;
        let pty_fd = values[13]
            .take()
            .map(|v| number(FLAGS[13], v))
            .transpose()?;
        let rotation = match (values[14].take(), values[15].take()) {
            (None, None) => None,
            (Some(size), files) => {
                let max_size: u64 = number(FLAGS[14], size)?;
                let max_files: u32 = files.map_or(Ok(1), |f| number(FLAGS[15], f))?;
                if max_size == 0 || max_files == 0 {
                    return Err(WatchError::Usage(
                        "--log-max-size and --log-max-files must be at least 1".into(),
                    ));
                }
                Some(LogRotation {
                    max_size,
                    max_files,
                })
            }
            (None, Some(_)) => {
                return Err(WatchError::Usage(
                    "--log-max-files needs --log-max-size".into(),
                ))
            }
        };
        for (flag, path) in [("--bundle", &bundle), ("--log-path", &log_path)] {
            if !path.is_absolute() {
                return Err(WatchError::Usage(format!(
                    "{flag} must be an absolute path, got {path:?}"
                )));
            }
        }
        Ok(Self {
            id,
            bundle,
            log_path,
            max_log_line,
            rotation,
            init_pid,
            stdout_fd,
            stderr_fd,
            log_fd,
            parent_baseline,
            cgroup,
            control_fd,
            stdin,
            stdin_fd,
            pty_fd,
        })
    }
}

fn number<T: std::str::FromStr>(flag: &str, value: OsString) -> Result<T, WatchError> {
    value
        .to_str()
        .and_then(|text| text.parse().ok())
        .ok_or_else(|| WatchError::Usage(format!("{flag} must be a number, got {value:?}")))
}

/// Where the monitor of the container in `bundle` serves its control channel.
pub fn control_socket_path(bundle: &Path) -> PathBuf {
    super::control::control_dir(bundle).join(super::control::SOCKET_NAME)
}

/// What poll reported ready, in [`Monitor::wait_and_handle`].
#[derive(Debug, Clone, Copy)]
enum Ready {
    Signals,
    Output(Stream),
    Pty,
    StdinPipe,
    Control(Source),
}

/// Takes ownership of an fd named on the command line, close-on-exec again.
fn inherited_fd(flag: &'static str, fd: RawFd) -> Result<OwnedFd, WatchError> {
    if fd < 3 {
        return Err(WatchError::FdNotOpen { flag, fd });
    }
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))
        .map_err(|_| WatchError::FdNotOpen { flag, fd })?;
    // SAFETY: the fd is open (F_SETFD succeeded) and was handed to this process for it
    // alone by the exec'ing monitor; nothing else in this process refers to it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Entry point of `wharf-monitor-watch`; returns the exit code.
pub fn main(args: impl IntoIterator<Item = OsString>) -> i32 {
    let args = match WatchArgs::parse(args) {
        Ok(args) => args,
        Err(err) => {
            eprintln!("{WATCHER_BINARY}: {}", error_chain(&err));
            return 2;
        }
    };
    let bundle = args.bundle.clone();
    match Monitor::from_watch_args(args) {
        Ok(monitor) => {
            if let Err(err) = files::release_clean_file_pages() {
                monitor.note(&format!("failed to release startup pages: {err}"));
            }
            monitor.watch()
        }
        Err(err) => {
            let message = format!("{WATCHER_BINARY}: {}", error_chain(&err));
            eprintln!("{message}");
            let line = format!("{} {message}", format_timestamp(&Utc::now()));
            let _ = files::append_line(&bundle.join(MONITOR_LOG_FILE), &line);
            1
        }
    }
}

/// How the container init ended.
#[derive(Debug, Clone, Copy)]
pub(super) struct InitExit {
    exit_code: i32,
    signal: Option<i32>,
    finished_at: DateTime<Utc>,
}

#[derive(Serialize)]
struct ExitRecord {
    exit_code: i32,
    signal: Option<i32>,
    finished_at: String,
    oom_killed: bool,
}

/// The monitor after a successful create.
pub(super) struct Monitor {
    pub(super) id: String,
    pub(super) max_log_line: usize,
    /// Docker's size-based rotation of the log; None for CRI logs (kubelet's).
    pub(super) rotation: Option<LogRotation>,
    pub(super) bundle: PathBuf,
    pub(super) log_path: PathBuf,
    pub(super) signals: SignalFd,
    pub(super) log: CriLogWriter<File>,
    /// Set after a log write error was noted, so a full disk is noted once.
    pub(super) log_failing: bool,
    pub(super) stdout: Option<OwnedFd>,
    pub(super) stderr: Option<OwnedFd>,
    /// The master of the container's TTY: its output, and its input when it has stdin.
    pub(super) pty: Option<OwnedFd>,
    /// The container's stdin (see [`super::control`]).
    pub(super) input: Input,
    /// The control channel; None only when the watcher was started without one.
    pub(super) control: Option<Server>,
    pub(super) init_pid: Pid,
    pub(super) init_exit: Option<InitExit>,
    pub(super) counters: OomCounters,
    pub(super) cgroup: Option<PathBuf>,
    pub(super) parent_cgroup: Option<PathBuf>,
    pub(super) parent_baseline: u64,
}

impl Monitor {
    /// Appends an error to `monitor.log` (stderr is /dev/null).
    pub(super) fn note(&self, message: &str) {
        let line = format!("{} {message}", format_timestamp(&Utc::now()));
        let _ = files::append_line(&self.bundle.join(MONITOR_LOG_FILE), &line);
    }

    /// The main loop; returns the exit code of the monitor.
    pub(super) fn watch(mut self) -> i32 {
        let mut buffer = vec![0u8; READ_CHUNK];
        // An init that exited while the monitor exec'd its watcher left a pending
        // SIGCHLD, which the new signalfd reports; reap once anyway, so nothing hinges
        // on that.
        self.reap_children(&mut buffer);
        let exit = loop {
            match self.init_exit {
                Some(exit) => break exit,
                None => self.wait_and_handle(PollTimeout::NONE, &mut buffer),
            }
        };
        // Reaping logged what the init wrote. Pipes still open now are held by processes
        // it left behind: record the exit at once, since Stop, Status and kubelet wait
        // for exit.json, and only then collect what those still write, for a while.
        let orphans_hold_output = self.output_open();
        let mut recorded = orphans_hold_output.then(|| self.record_exit_noting(&exit));
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        while self.output_open() || self.control.as_ref().is_some_and(Server::execs_active) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let timeout = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
            self.wait_and_handle(timeout, &mut buffer);
        }
        let now = Utc::now();
        for stream in [Stream::Stdout, Stream::Stderr] {
            let result = self.log.flush_stream(stream, &now);
            self.log_result(result);
        }
        self.stdout = None;
        self.stderr = None;
        self.pty = None;
        let recorded = *recorded.get_or_insert_with(|| self.record_exit_noting(&exit));
        // Attached clients learn the exit after all the output, and once exit.json is
        // there (a client may ask the daemon for the status next).
        if let Some(control) = self.control.take() {
            control.finish(exit.exit_code, exit.signal);
        }
        if recorded {
            0
        } else {
            1
        }
    }

    /// Writes exit.json; a failure goes to monitor.log. Returns whether it was written.
    fn record_exit_noting(&self, exit: &InitExit) -> bool {
        match self.record_exit(exit) {
            Ok(()) => true,
            Err(err) => {
                self.note(&error_chain(&err));
                false
            }
        }
    }

    /// Whether some output source is still open.
    fn output_open(&self) -> bool {
        self.stdout.is_some() || self.stderr.is_some() || self.pty.is_some()
    }

    fn wait_and_handle(&mut self, timeout: PollTimeout, buffer: &mut [u8]) {
        // An exec draining its output ends at its deadline.
        let timeout = match self.control.as_ref().and_then(Server::next_deadline) {
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                let left = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
                if timeout == PollTimeout::NONE {
                    left
                } else {
                    timeout.min(left)
                }
            }
            None => timeout,
        };
        let ready: Vec<(Ready, PollFlags)> = {
            let mut fds = Vec::with_capacity(4);
            let mut sources = Vec::with_capacity(4);
            fds.push(PollFd::new(self.signals.as_fd(), PollFlags::POLLIN));
            sources.push(Ready::Signals);
            for (stream, fd) in [
                (Stream::Stdout, &self.stdout),
                (Stream::Stderr, &self.stderr),
            ] {
                if let Some(fd) = fd {
                    fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
                    sources.push(Ready::Output(stream));
                }
            }
            if let Some(pty) = &self.pty {
                let mut flags = PollFlags::POLLIN;
                if self.input.tty && self.input.wants_write() {
                    flags |= PollFlags::POLLOUT;
                }
                fds.push(PollFd::new(pty.as_fd(), flags));
                sources.push(Ready::Pty);
            }
            if let Some(pipe) = self.input.pipe() {
                if self.input.wants_write() {
                    fds.push(PollFd::new(pipe.as_fd(), PollFlags::POLLOUT));
                    sources.push(Ready::StdinPipe);
                }
            }
            if let Some(control) = &self.control {
                for (fd, flags, source) in control.poll_fds(self.input.is_full()) {
                    fds.push(PollFd::new(fd, flags));
                    sources.push(Ready::Control(source));
                }
            }
            match poll(&mut fds, timeout) {
                Ok(_) => {}
                Err(Errno::EINTR) => return,
                Err(errno) => {
                    self.note(&format!("poll failed: {errno}"));
                    // Avoid a hot loop if poll keeps failing.
                    std::thread::sleep(Duration::from_millis(100));
                    return;
                }
            }
            sources
                .into_iter()
                .zip(&fds)
                .filter_map(|(source, fd)| {
                    let events = fd.revents().filter(|events| !events.is_empty())?;
                    Some((source, events))
                })
                .collect()
        };
        let mut signals_ready = false;
        for (source, events) in ready {
            match source {
                Ready::Signals => signals_ready = true,
                Ready::Output(stream) => {
                    self.read_stream(stream, buffer);
                }
                Ready::Pty => {
                    if events.contains(PollFlags::POLLOUT) {
                        self.input.flush(self.pty.as_ref().map(AsFd::as_fd));
                    }
                    if events.intersects(!PollFlags::POLLOUT) {
                        self.read_pty(buffer);
                    }
                }
                Ready::StdinPipe => self.input.flush(None),
                Ready::Control(source) => self.serve_control(source, events, buffer),
            }
        }
        // Children first: an exec reaped now whose output is drained ends in this round
        // (its Exit sent, its connection closed), as nothing else would wake poll before
        // its drain deadline.
        if signals_ready {
            self.handle_signals(buffer);
        }
        if let Some(control) = &mut self.control {
            let mut ctx = Context {
                container_id: &self.id,
                input: &mut self.input,
                pty: self.pty.as_ref().map(AsFd::as_fd),
                init_pid: self.init_pid,
                running: self.init_exit.is_none(),
                output: None,
            };
            control.tick();
            control.reap(&mut ctx);
            // Whatever the clients sent: to the container at once, without waiting a
            // poll round for POLLOUT.
            if ctx.input.wants_write() {
                ctx.input.flush(ctx.pty);
            }
        }
    }

    fn serve_control(&mut self, source: Source, events: PollFlags, buffer: &mut [u8]) {
        let Some(control) = &mut self.control else {
            return;
        };
        match source {
            Source::Listener => {
                if let Some(note) = control.accept() {
                    self.note(&note);
                }
            }
            Source::Exec(index, which) => control.exec_ready(index, which, events, buffer),
            Source::Client(index) => {
                let mut ctx = Context {
                    container_id: &self.id,
                    input: &mut self.input,
                    pty: self.pty.as_ref().map(AsFd::as_fd),
                    init_pid: self.init_pid,
                    running: self.init_exit.is_none(),
                    output: Some(OutputPosition {
                        log: self.log.sink().as_fd(),
                        stdout_pending: self.log.pending(Stream::Stdout),
                        stderr_pending: self.log.pending(Stream::Stderr),
                    }),
                };
                control.client_ready(index, events, &mut ctx, buffer);
            }
        }
    }

    /// Copies output (already logged) to the attached clients.
    fn broadcast(&mut self, stream: proto::Stream, data: &[u8]) {
        let Some(control) = &mut self.control else {
            return;
        };
        let dropped = control.broadcast(stream, data);
        if dropped > 0 {
            self.note(&format!(
                "control channel: disconnected {dropped} attached client(s) that fell {} \
                 bytes behind",
                super::control::server::CLIENT_BUFFER
            ));
        }
    }

    /// Reads one chunk of the terminal's output (logged as stdout); returns whether
    /// there may be more now. EIO means no process holds the terminal any more.
    fn read_pty(&mut self, buffer: &mut [u8]) -> bool {
        let Some(fd) = self.pty.as_ref() else {
            return false;
        };
        match nix::unistd::read(fd.as_raw_fd(), buffer) {
            Ok(0) | Err(Errno::EIO) => {
                self.pty = None;
                if self.input.tty {
                    self.input.container_gone();
                }
                let result = self.log.flush_stream(Stream::Stdout, &Utc::now());
                self.log_result(result);
                false
            }
            Ok(n) => {
                let result = self
                    .log
                    .write_output(Stream::Stdout, &buffer[..n], &Utc::now());
                self.log_result(result);
                self.broadcast(proto::Stream::Stdout, &buffer[..n]);
                true
            }
            Err(Errno::EINTR) => true,
            Err(Errno::EAGAIN) => false,
            Err(errno) => {
                self.pty = None;
                self.note(&format!("reading the container's terminal failed: {errno}"));
                false
            }
        }
    }

    /// Reads one chunk; returns whether the stream may have more to read now.
    fn read_stream(&mut self, stream: Stream, buffer: &mut [u8]) -> bool {
        let slot = match stream {
            Stream::Stdout => &mut self.stdout,
            Stream::Stderr => &mut self.stderr,
        };
        let Some(fd) = slot.as_ref() else {
            return false;
        };
        match nix::unistd::read(fd.as_raw_fd(), buffer) {
            Ok(0) => {
                *slot = None;
                let result = self.log.flush_stream(stream, &Utc::now());
                self.log_result(result);
                false
            }
            Ok(n) => {
                let result = self.log.write_output(stream, &buffer[..n], &Utc::now());
                self.log_result(result);
                let stream = match stream {
                    Stream::Stdout => proto::Stream::Stdout,
                    Stream::Stderr => proto::Stream::Stderr,
                };
                self.broadcast(stream, &buffer[..n]);
                true
            }
            Err(Errno::EINTR) => true,
            Err(Errno::EAGAIN) => false,
            Err(errno) => {
                *slot = None;
                self.note(&format!(
                    "reading container {} failed: {errno}",
                    stream.name()
                ));
                false
            }
        }
    }

    /// Logs what the pipes hold now. Called when the init is reaped: all it wrote is
    /// in the pipes by then, so its lines are stamped before its `finished_at`, even
    /// when poll saw the exit before the output. Bounded, as orphans may keep writing.
    fn drain_pending_output(&mut self, buffer: &mut [u8]) {
        for stream in [Stream::Stdout, Stream::Stderr] {
            for _ in 0..MAX_DRAIN_CHUNKS_AT_EXIT {
                if !self.read_stream(stream, buffer) {
                    break;
                }
            }
        }
        for _ in 0..MAX_DRAIN_CHUNKS_AT_EXIT {
            if !self.read_pty(buffer) {
                break;
            }
        }
    }

    fn log_result(&mut self, result: io::Result<()>) {
        match result {
            Ok(()) => {
                self.log_failing = false;
                self.rotate_if_full();
            }
            Err(err) => self.log_error(err),
        }
    }

    /// Notes a failed log write once (a full disk fails every write).
    fn log_error(&mut self, err: io::Error) {
        if !self.log_failing {
            self.log_failing = true;
            self.note(&format!(
                "writing log {} failed: {err}",
                self.log_path.display()
            ));
        }
    }

    fn handle_signals(&mut self, buffer: &mut [u8]) {
        loop {
            match self.signals.read_signal() {
                Ok(Some(info)) => match Signal::try_from(info.ssi_signo as i32) {
                    Ok(Signal::SIGCHLD) => self.reap_children(buffer),
                    Ok(Signal::SIGUSR1) => {
                        let _ = self.reopen_log(); // noted
                    }
                    // SIGTERM, SIGINT, SIGHUP: the monitor lives as long as its container.
                    _ => {}
                },
                Ok(None) | Err(Errno::EAGAIN) => break,
                Err(Errno::EINTR) => {}
                Err(errno) => {
                    self.note(&format!("reading signalfd failed: {errno}"));
                    break;
                }
            }
        }
    }

    /// As a subreaper the monitor also inherits orphans of the container: reap them all.
    fn reap_children(&mut self, buffer: &mut [u8]) {
        loop {
            let status = match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(status) => status,
                Err(Errno::EINTR) => continue,
                Err(errno) => {
                    self.note(&format!("waitpid failed: {errno}"));
                    return;
                }
            };
            let (pid, exit_code, signal) = match status {
                WaitStatus::Exited(pid, code) => (pid, code, None),
                WaitStatus::Signaled(pid, signal, _) => {
                    (pid, 128 + signal as i32, Some(signal as i32))
                }
                _ => continue,
            };
            if pid != self.init_pid {
                // An exec's runtime or process; anything else is an orphan.
                if let Some(control) = &mut self.control {
                    control.child_exited(&self.id, pid, exit_code, signal);
                }
                continue;
            }
            self.drain_pending_output(buffer);
            // Nothing reads the container's stdin any more.
            self.input.container_gone();
            self.init_exit = Some(InitExit {
                exit_code,
                signal,
                finished_at: Utc::now(),
            });
        }
    }

    /// Rotates the log once it holds `max_size` bytes (Docker's `max-size`), then
    /// writes the lines that waited for the new file (as many rotations as they fill).
    fn rotate_if_full(&mut self) {
        let Some(rotation) = self.rotation else {
            return;
        };
        while self.log.full() {
            let rotated = rotation
                .rotate(&self.log_path)
                .map_err(|err| err.to_string());
            if let Err(err) = rotated.and_then(|()| self.reopen_log()) {
                // Never hold output back without bound: log on, unrotated.
                self.log.set_limit(None, 0);
                self.note(&format!(
                    "rotating log {} failed, writing on without rotation: {err}",
                    self.log_path.display()
                ));
                return;
            }
            for stream in [Stream::Stdout, Stream::Stderr] {
                if let Err(err) = self.log.write_output(stream, &[], &Utc::now()) {
                    self.log_error(err);
                }
            }
        }
    }

    /// kubelet renames the log file, then asks for a reopen; keep the old file when the
    /// new one cannot be opened, rather than losing output.
    fn reopen_log(&mut self) -> Result<(), String> {
        match open_log(&self.log_path) {
            Ok(file) => {
                let size = file.metadata().map_or(0, |m| m.len());
                drop(self.log.replace_sink(file, size));
                self.log_failing = false;
                Ok(())
            }
            Err(err) => {
                let message = error_chain(&err);
                self.note(&message);
                Err(message)
            }
        }
    }

    fn record_exit(&self, exit: &InitExit) -> Result<(), WatchError> {
        let container_count = self
            .cgroup
            .as_deref()
            .map_or(0, |path| self.counters.oom_kill_count(path));
        let parent_count = self
            .parent_cgroup
            .as_deref()
            .map_or(0, |path| self.counters.oom_kill_count(path));
        let record = ExitRecord {
            exit_code: exit.exit_code,
            signal: exit.signal,
            finished_at: format_timestamp(&exit.finished_at),
            oom_killed: oom::was_oom_killed(
                container_count,
                exit.signal == Some(Signal::SIGKILL as i32),
                self.parent_baseline,
                parent_count,
            ),
        };
        let path = self.bundle.join(EXIT_FILE);
        let error = |source| WatchError::WriteState {
            path: path.clone(),
            source,
        };
        let json = serde_json::to_vec(&record).map_err(|e| error(io::Error::other(e)))?;
        crate::state_file::replace(&path, &json, 0o644).map_err(error)
    }
}

impl Monitor {
    /// The monitor as the watcher finds it after the exec.
    fn from_watch_args(args: WatchArgs) -> Result<Self, WatchError> {
        let stdout = inherited_fd("--stdout-fd", args.stdout_fd)?;
        let stderr = inherited_fd("--stderr-fd", args.stderr_fd)?;
        let log_file = File::from(inherited_fd("--log-fd", args.log_fd)?);
        let signals = signal_fd().map_err(|errno| WatchError::Setup {
            what: "signalfd",
            source: errno.into(),
        })?;
        let parent_cgroup = args.cgroup.as_deref().and_then(oom::parent_cgroup);
        let control = args
            .control_fd
            .map(|fd| inherited_fd("--control-fd", fd))
            .transpose()?
            .map(|listener| Server::new(listener, control_socket_path(&args.bundle)));
        let stdin_pipe = args
            .stdin_fd
            .map(|fd| inherited_fd("--stdin-fd", fd))
            .transpose()?;
        let pty = args
            .pty_fd
            .map(|fd| inherited_fd("--pty-fd", fd))
            .transpose()?;
        let input = Input::new(args.stdin, pty.is_some(), stdin_pipe);
        Ok(Self {
            id: args.id,
            max_log_line: args.max_log_line,
            rotation: args.rotation,
            bundle: args.bundle,
            log_path: args.log_path,
            signals,
            log: log_writer(log_file, args.max_log_line, args.rotation),
            log_failing: false,
            stdout: Some(stdout),
            stderr: Some(stderr),
            pty,
            input,
            control,
            init_pid: Pid::from_raw(args.init_pid),
            init_exit: None,
            counters: OomCounters::default(),
            cgroup: args.cgroup,
            parent_cgroup,
            parent_baseline: args.parent_baseline,
        })
    }

    /// Replaces this process with `wharf-monitor-watch`, handing it the pipes and the
    /// log file. Must be called before anything was read from the pipes (the watcher
    /// starts with empty line buffers). Returns only if the exec failed.
    pub(super) fn exec_watcher(&self) -> io::Error {
        let watcher = match std::env::current_exe() {
            Ok(exe) => exe.with_file_name(WATCHER_BINARY),
            Err(err) => return err,
        };
        let (Some(stdout), Some(stderr)) = (&self.stdout, &self.stderr) else {
            return io::Error::other("the output pipes are already closed");
        };
        let args = WatchArgs {
            id: self.id.clone(),
            bundle: self.bundle.clone(),
            log_path: self.log_path.clone(),
            max_log_line: self.max_log_line,
            rotation: self.rotation,
            init_pid: self.init_pid.as_raw(),
            stdout_fd: stdout.as_raw_fd(),
            stderr_fd: stderr.as_raw_fd(),
            log_fd: self.log.sink().as_raw_fd(),
            parent_baseline: self.parent_baseline,
            cgroup: self.cgroup.clone(),
            control_fd: self.control.as_ref().map(|c| c.listener().as_raw_fd()),
            stdin: self.input.mode,
            stdin_fd: self.input.pipe().map(AsRawFd::as_raw_fd),
            pty_fd: self.pty.as_ref().map(AsRawFd::as_raw_fd),
        };
        let c_string = |value: &OsStr| CString::new(value.as_bytes()).map_err(io::Error::other);
        let argv: Result<Vec<CString>, io::Error> = std::iter::once(watcher.as_os_str())
            .chain(args.to_args().iter().map(OsString::as_os_str))
            .map(c_string)
            .collect();
        let argv = match argv {
            Ok(argv) => argv,
            Err(err) => return err,
        };
        let Some(path) = argv.first() else {
            return io::Error::other("empty argv");
        };
        let handed_over: Vec<RawFd> = [args.stdout_fd, args.stderr_fd, args.log_fd]
            .into_iter()
            .chain(args.control_fd)
            .chain(args.stdin_fd)
            .chain(args.pty_fd)
            .collect();
        let failure = match handed_over
            .iter()
            .try_for_each(|&fd| fcntl(fd, FcntlArg::F_SETFD(FdFlag::empty())).map(drop))
        {
            Ok(()) => {
                let Err(errno) = nix::unistd::execv(path, &argv);
                io::Error::other(format!("exec {}: {errno}", watcher.display()))
            }
            Err(errno) => io::Error::other(format!("clear close-on-exec: {errno}")),
        };
        // Still this process: the fds must not leak into anything it runs later.
        for &fd in &handed_over {
            let _ = fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
        }
        failure
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> WatchArgs {
        WatchArgs {
            id: "c1".into(),
            bundle: "/run/wharf/c1".into(),
            log_path: "/var/log/pods/p/c/0.log".into(),
            max_log_line: 16384,
            rotation: None,
            init_pid: 4242,
            stdout_fd: 5,
            stderr_fd: 7,
            log_fd: 4,
            parent_baseline: 3,
            cgroup: Some("/wharf/pod1/c1".into()),
            control_fd: Some(8),
            stdin: StdinMode {
                enabled: true,
                once: true,
            },
            stdin_fd: Some(9),
            pty_fd: None,
        }
    }

    #[test]
    fn command_line_round_trips() {
        let args = sample();
        assert_eq!(WatchArgs::parse(args.to_args()).expect("parse"), args);
        let without_cgroup = WatchArgs {
            cgroup: None,
            control_fd: None,
            stdin: StdinMode::default(),
            stdin_fd: None,
            ..sample()
        };
        assert_eq!(
            WatchArgs::parse(without_cgroup.to_args()).expect("parse"),
            without_cgroup
        );
        let with_tty = WatchArgs {
            stdin_fd: None,
            pty_fd: Some(10),
            rotation: Some(LogRotation {
                max_size: 10 << 20,
                max_files: 3,
            }),
            ..sample()
        };
        assert_eq!(
            WatchArgs::parse(with_tty.to_args()).expect("parse"),
            with_tty
        );
    }

    #[test]
    fn bad_command_lines_name_the_flag() {
        let message = |args: Vec<OsString>| match WatchArgs::parse(args) {
            Ok(parsed) => panic!("accepted {parsed:?}"),
            Err(err) => err.to_string(),
        };
        let mut args = sample().to_args();
        args.retain(|arg| arg != "--log-fd" && arg != "4");
        assert!(message(args).contains("--log-fd is required"));

        let mut args = sample().to_args();
        args.extend(["--id".into(), "again".into()]);
        assert!(message(args).contains("--id given twice"));

        let mut args = sample().to_args();
        args.push("--cgroup".into());
        assert!(message(args).contains("--cgroup needs a value"));

        let mut args = sample().to_args();
        let at = args.iter().position(|a| a == "--stdout-fd").expect("flag") + 1;
        args[at] = "-".into();
        assert!(message(args).contains("--stdout-fd must be a number, got \"-\""));

        let mut args = sample().to_args();
        let at = args.iter().position(|a| a == "--bundle").expect("flag") + 1;
        args[at] = "relative/dir".into();
        assert!(message(args).contains("--bundle must be an absolute path"));

        assert!(message(vec!["--verbose".into()]).contains("unknown argument \"--verbose\""));

        let mut args = sample().to_args();
        let at = args.iter().position(|a| a == "--stdin").expect("flag") + 1;
        args[at] = "always".into();
        assert!(message(args).contains("--stdin must be none, open or once"));
    }

    #[test]
    fn standard_fds_are_never_taken_over() {
        assert!(matches!(
            inherited_fd("--log-fd", 1),
            Err(WatchError::FdNotOpen { fd: 1, .. })
        ));
    }
}
