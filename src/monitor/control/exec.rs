//! Exec sessions in the monitor: a process started in the running container on a
//! client's request, whose stdio the monitor holds and relays over that client's
//! connection (see [`super`] for the protocol).
//!
//! How it runs: as containerd's shim does, the monitor runs the OCI runtime's
//! `exec --detach` with the process's stdio (pipes, or with a TTY a console socket
//! that receives the PTY master) and a pid file. The runtime exits once the process
//! runs, which leaves it to the monitor: a child subreaper, so the process is
//! reparented to it and reaped by the watcher's SIGCHLD handling like the init.
//! Nothing blocks the watcher's loop: the runtime's exit comes through SIGCHLD, and
//! only then are the pid file read and the PTY master taken (already in the socket).
//!
//! The exec'd process is a session leader (both runtimes setsid), so killing its
//! process group takes what it started in the foreground too; a client that leaves
//! before the process exits gets it killed and reaped, never orphaned.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

use super::console::ConsoleSocket;
use super::proto::{self, Code};
use super::server::{Input, StdinMode};

/// The OCI Process the daemon writes in the exec's directory.
pub const PROCESS_FILE: &str = "process.json";
/// The exec'd process's host pid, written by the runtime.
pub const PID_FILE: &str = "pid";
/// The runtime's JSON log: its error message when it fails.
pub const RUNTIME_LOG: &str = "runtime.log";
/// How long output is still relayed after the exec'd process exited: what it wrote
/// before is in the pipes, and a background child holding them open must not keep the
/// session (and its client) waiting.
pub const EXEC_DRAIN: Duration = Duration::from_millis(500);
/// How long the PTY master may still take to arrive once the runtime exited.
const CONSOLE_WAIT: Duration = Duration::from_millis(500);

/// Where an exec is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecState {
    /// The runtime (this pid) is starting the process.
    Starting {
        runtime: Pid,
    },
    Running {
        pid: Pid,
    },
    /// The process exited; its output is relayed until `deadline` at the latest.
    Exited {
        exit_code: i32,
        signal: Option<i32>,
        deadline: Instant,
    },
    /// The client has had its `Exit`.
    Done,
}

/// Which fd of an exec poll reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecFd {
    Stdout,
    Stderr,
    Pty,
    StdinPipe,
}

/// One exec session's process and the monitor's ends of its stdio.
#[derive(Debug)]
pub struct ExecProcess {
    pub state: ExecState,
    /// The `Exec` request, answered once the process runs (or the runtime failed).
    pub request_id: u64,
    dir: PathBuf,
    tty: bool,
    size: Option<(u16, u16)>,
    pub input: Input,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
    pub pty: Option<OwnedFd>,
    /// With a TTY, until the runtime exited: the socket it sends the master to, and
    /// the directory fd its short path goes through.
    console: Option<(ConsoleSocket, OwnedFd)>,
}

impl std::fmt::Debug for ConsoleSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleSocket")
            .field("path", &self.path())
            .finish_non_exhaustive()
    }
}

fn failed(message: String) -> (Code, String) {
    (Code::Internal, message)
}

/// A pipe whose both ends are close-on-exec (the child's end is dup'ed onto its
/// stdio by the spawn, which clears the flag there).
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(OFlag::O_CLOEXEC)?)
}

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
    Ok(())
}

impl ExecProcess {
    /// Starts the runtime's `exec --detach` for `request` in container `container_id`.
    /// `control_dir` is the monitor's control directory (for the console socket);
    /// `serial` names the console socket apart from others.
    pub fn spawn(
        request: &proto::Exec,
        request_id: u64,
        container_id: &str,
        control_dir: &Path,
        serial: u64,
    ) -> Result<ExecProcess, (Code, String)> {
        let invalid = |message: String| Err((Code::InvalidArgument, message));
        let Some((program, runtime_args)) = request.runtime.split_first() else {
            return invalid("an exec must name the runtime".into());
        };
        if !Path::new(program).is_absolute() {
            return invalid(format!("the runtime {program:?} is not an absolute path"));
        }
        let dir = PathBuf::from(&request.dir);
        if !dir.is_absolute() {
            return invalid(format!(
                "the exec directory {:?} is not an absolute path",
                request.dir
            ));
        }
        if request.tty && request.stderr {
            return invalid(
                "an exec with a TTY has all its output on stdout: ask without stderr".into(),
            );
        }
        let size = match (request.width, request.height) {
            (0, 0) => None,
            (width, height) => match (u16::try_from(width), u16::try_from(height)) {
                (Ok(w), Ok(h)) if w > 0 && h > 0 => Some((w, h)),
                _ => return invalid(format!("terminal size {width}x{height} is out of range")),
            },
        };
        let io_error = |what: &str| {
            let what = what.to_string();
            move |err: io::Error| failed(format!("exec in container {container_id}: {what}: {err}"))
        };
        let mut command = Command::new(program);
        command
            .args(runtime_args)
            .arg("--log")
            .arg(dir.join(RUNTIME_LOG))
            .arg("--log-format")
            .arg("json")
            .arg("exec")
            .arg("--detach")
            .arg("--pid-file")
            .arg(dir.join(PID_FILE))
            .arg("--process")
            .arg(dir.join(PROCESS_FILE));
        let (mut stdin_pipe, mut stdout, mut stderr, mut console) = (None, None, None, None);
        if request.tty {
            let dir_fd =
                super::open_dir(control_dir).map_err(io_error("opening the control dir"))?;
            let socket = ConsoleSocket::listen_named(
                control_dir,
                &dir_fd,
                &format!("exec-{}-{serial}.sock", std::process::id()),
            )
            .map_err(io_error("listening for the exec's terminal"))?;
            command.arg("--console-socket").arg(socket.path());
            command
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            console = Some((socket, dir_fd));
        } else {
            if request.stdin {
                let (read, write) = pipe().map_err(io_error("creating the stdin pipe"))?;
                set_nonblocking(&write).map_err(io_error("setting up the stdin pipe"))?;
                command.stdin(Stdio::from(read));
                stdin_pipe = Some(write);
            } else {
                command.stdin(Stdio::null());
            }
            for (wanted, slot, is_stdout) in [
                (request.stdout, &mut stdout, true),
                (request.stderr, &mut stderr, false),
            ] {
                if !wanted {
                    if is_stdout {
                        command.stdout(Stdio::null());
                    } else {
                        command.stderr(Stdio::null());
                    }
                    continue;
                }
                let (read, write) = pipe().map_err(io_error("creating an output pipe"))?;
                set_nonblocking(&read).map_err(io_error("setting up an output pipe"))?;
                if is_stdout {
                    command.stdout(Stdio::from(write));
                } else {
                    command.stderr(Stdio::from(write));
                }
                *slot = Some(read);
            }
        }
        command.arg(container_id);
        // std resets the signal mask and dispositions in the child: the runtime does not
        // inherit the watcher's blocked signals.
        let child = command.spawn().map_err(|err| {
            failed(format!(
                "exec in container {container_id}: running {program}: {err}"
            ))
        })?;
        // The child's pipe ends go with the command; ours stay.
        drop(command);
        let runtime = Pid::from_raw(child.id() as i32);
        let mode = StdinMode {
            enabled: request.stdin,
            once: true,
        };
        Ok(ExecProcess {
            state: ExecState::Starting { runtime },
            request_id,
            dir,
            tty: request.tty,
            size,
            input: Input::new(mode, request.tty, stdin_pipe),
            stdout,
            stderr,
            pty: None,
            console,
        })
    }

    /// The runtime exited with `status` (an exit code, or 128 + signal): on success
    /// the process runs, and its pid is returned; otherwise the runtime's message.
    pub fn runtime_exited(
        &mut self,
        container_id: &str,
        status: i32,
    ) -> Result<Pid, (Code, String)> {
        let console = self.console.take();
        if status != 0 {
            self.close_all();
            let message = runtime_message(&self.dir.join(RUNTIME_LOG))
                .unwrap_or_else(|| format!("the runtime exited with status {status}"));
            return Err((
                Code::ExecFailed,
                format!("exec in container {container_id}: {message}"),
            ));
        }
        let pid = std::fs::read_to_string(self.dir.join(PID_FILE))
            .ok()
            .and_then(|text| text.trim().parse::<i32>().ok())
            .filter(|pid| *pid > 0)
            .map(Pid::from_raw);
        let Some(pid) = pid else {
            self.close_all();
            return Err(failed(format!(
                "exec in container {container_id}: the runtime succeeded but wrote no pid \
                 file in {}",
                self.dir.display()
            )));
        };
        if let Some((socket, _dir_fd)) = console {
            match socket.receive(CONSOLE_WAIT) {
                Ok(master) => {
                    if let Some((width, height)) = self.size {
                        // A size the terminal refuses leaves the default: not fatal.
                        let _ = super::server::set_window_size(master.as_fd(), width, height);
                    }
                    self.pty = Some(master);
                }
                Err(err) => {
                    kill_group(pid);
                    self.close_all();
                    return Err(failed(format!(
                        "exec in container {container_id}: receiving its terminal: {err}"
                    )));
                }
            }
        }
        self.state = ExecState::Running { pid };
        Ok(pid)
    }

    /// The exec'd process exited.
    pub fn exited(&mut self, exit_code: i32, signal: Option<i32>) {
        // Nothing reads its stdin any more.
        self.input.container_gone();
        self.state = ExecState::Exited {
            exit_code,
            signal,
            deadline: Instant::now() + EXEC_DRAIN,
        };
    }

    /// Whether an output fd is still open.
    pub fn output_open(&self) -> bool {
        self.stdout.is_some() || self.stderr.is_some() || self.pty.is_some()
    }

    pub fn pty(&self) -> Option<BorrowedFd<'_>> {
        self.pty.as_ref().map(AsFd::as_fd)
    }

    pub fn is_tty(&self) -> bool {
        self.tty
    }

    /// Drops every fd the monitor holds for this exec.
    pub fn close_all(&mut self) {
        self.input.container_gone();
        self.stdout = None;
        self.stderr = None;
        self.pty = None;
        self.console = None;
    }

    /// The client went (or the monitor is finishing): a running process is killed
    /// with its process group. Returns the runtime's pid while it still runs (its
    /// process is killed once it is known).
    pub fn abandon(&mut self) -> Option<Pid> {
        self.close_all();
        match self.state {
            ExecState::Running { pid } => {
                kill_group(pid);
                self.state = ExecState::Done;
                None
            }
            ExecState::Starting { runtime } => Some(runtime),
            ExecState::Exited { .. } | ExecState::Done => None,
        }
    }

    /// The directory the daemon made for this exec.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// SIGKILL to `pid`'s process group and to `pid` (it leads its group unless the
/// runtime failed to setsid it).
pub fn kill_group(pid: Pid) {
    let _ = killpg(pid, Signal::SIGKILL);
    let _ = kill(pid, Signal::SIGKILL);
}

/// The last `msg` of the runtime's JSON log (runc's, crun's and wharf's own format).
fn runtime_message(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines().rev().find_map(|line| {
        let value: serde_json::Value = serde_json::from_str(line.trim()).ok()?;
        let level = value
            .get("level")
            .and_then(|l| l.as_str())
            .unwrap_or("error");
        if !matches!(level, "error" | "fatal") {
            return None;
        }
        value.get("msg")?.as_str().map(str::to_string)
    })
}

/// Reads one chunk from a non-blocking output fd: `Some(n)` bytes, `Some(0)` at its
/// end (or a terminal's EIO), `None` when nothing is there now.
pub fn read_output(fd: &OwnedFd, buffer: &mut [u8]) -> Option<usize> {
    loop {
        match nix::unistd::read(fd.as_raw_fd(), buffer) {
            Ok(n) => return Some(n),
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => return None,
            Err(_) => return Some(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runtime_message_is_its_last_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join(RUNTIME_LOG);
        std::fs::write(
            &log,
            "{\"level\":\"error\",\"msg\":\"first\"}\n\
             {\"level\":\"info\",\"msg\":\"noise\"}\n\
             {\"level\":\"error\",\"msg\":\"exec: \\\"nope\\\": executable file not found in $PATH\"}\n\
             {\"level\":\"debug\",\"msg\":\"later noise\"}\n",
        )
        .expect("write");
        assert_eq!(
            runtime_message(&log).as_deref(),
            Some("exec: \"nope\": executable file not found in $PATH")
        );
        assert_eq!(runtime_message(&dir.path().join("missing")), None);
    }

    fn request(runtime: &[&str], dir: &str) -> proto::Exec {
        proto::Exec {
            runtime: runtime.iter().map(|s| s.to_string()).collect(),
            dir: dir.to_string(),
            stdout: true,
            ..Default::default()
        }
    }

    #[test]
    fn bad_requests_are_refused_before_anything_runs() {
        let control = tempfile::tempdir().expect("tempdir");
        let spawn = |r: proto::Exec| ExecProcess::spawn(&r, 1, "c1", control.path(), 1);
        for (bad, words) in [
            (request(&[], "/x"), "name the runtime"),
            (request(&["runc"], "/x"), "absolute path"),
            (request(&["/bin/true"], "rel"), "absolute path"),
            (
                proto::Exec {
                    tty: true,
                    stderr: true,
                    ..request(&["/bin/true"], "/x")
                },
                "without stderr",
            ),
            (
                proto::Exec {
                    tty: true,
                    width: 70000,
                    height: 1,
                    ..request(&["/bin/true"], "/x")
                },
                "out of range",
            ),
        ] {
            let (code, message) = spawn(bad).expect_err("refused");
            assert_eq!(code, Code::InvalidArgument, "{message}");
            assert!(message.contains(words), "{message}");
        }
    }
}
