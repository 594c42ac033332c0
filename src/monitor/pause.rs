//! `wharf-monitor pause --pid-file FILE`: holds a new PID namespace for a pod whose
//! containers share one.
//!
//! ```text
//! caller ── fork ──> intermediate: setsid, unshare(CLONE_NEWPID), fork ──> holder
//!   waits for the report            writes holder's host pid to FILE,     PID 1 of the
//!   exits 0 / 1                     reports "ok" or the error, exits      namespace
//! ```
//!
//! The holder is named `wharf-pause`, has /dev/null as stdio and no other fd, reaps
//! zombies (orphans of the namespace are re-parented to it) and exits 0 on SIGTERM or
//! SIGINT. All signals are blocked and taken with sigwait: the init of a PID namespace
//! only receives signals it handles or blocks, so a plain default disposition would let
//! the kernel drop SIGTERM. The daemon then uses `/proc/<pid>/ns/pid`.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{dup2, fork, pipe2, setsid, ForkResult, Pid};

use super::cli::PauseArgs;
use super::files::{self, error_chain};

/// The holder's process name (comm).
pub const PAUSE_PROCESS_NAME: &str = "wharf-pause";
const REPORT_OK: &str = "ok";

#[derive(Debug, thiserror::Error)]
pub enum PauseError {
    #[error("failed to resolve path {path}")]
    Path {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to {what}")]
    Sys {
        what: &'static str,
        #[source]
        source: Errno,
    },
    #[error("failed to read the holder's report")]
    Report(#[source] io::Error),
    #[error("failed to write pid file {path}")]
    PidFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("PID namespace holder failed: {0}")]
    Holder(String),
}

fn sys(what: &'static str) -> impl FnOnce(Errno) -> PauseError {
    move |source| PauseError::Sys { what, source }
}

/// Entry point of `wharf-monitor pause`; returns the exit code.
pub fn main(args: PauseArgs) -> i32 {
    match start_holder(&args.pid_file) {
        Ok(()) => 0,
        Err(err) => {
            eprintln!("wharf-monitor pause: {}", error_chain(&err));
            1
        }
    }
}

fn start_holder(pid_file: &Path) -> Result<(), PauseError> {
    let pid_file = std::path::absolute(pid_file).map_err(|source| PauseError::Path {
        path: pid_file.to_path_buf(),
        source,
    })?;
    let (report_read, report_write) = pipe2(OFlag::O_CLOEXEC).map_err(sys("create a pipe"))?;
    // SAFETY: single-threaded; the child only forks again, writes a file and exits.
    match unsafe { fork() }.map_err(sys("fork"))? {
        ForkResult::Child => {
            drop(report_read);
            run_intermediate(&pid_file, report_write)
        }
        ForkResult::Parent { child } => {
            drop(report_write);
            let mut report = String::new();
            let read = File::from(report_read).read_to_string(&mut report);
            let status = loop {
                match waitpid(child, None) {
                    Err(Errno::EINTR) => continue,
                    other => break other.map_err(sys("wait for the intermediate"))?,
                }
            };
            read.map_err(PauseError::Report)?;
            match (report.as_str(), status) {
                (REPORT_OK, WaitStatus::Exited(_, 0)) => Ok(()),
                ("", status) => Err(PauseError::Holder(format!(
                    "intermediate ended with {status:?}"
                ))),
                (message, _) => Err(PauseError::Holder(message.to_owned())),
            }
        }
    }
}

fn run_intermediate(pid_file: &Path, report: OwnedFd) -> ! {
    let result = (|| {
        setsid().map_err(sys("setsid"))?;
        unshare(CloneFlags::CLONE_NEWPID).map_err(sys("unshare the PID namespace"))?;
        // SAFETY: single-threaded; the child becomes the holder and never returns.
        match unsafe { fork() }.map_err(sys("fork the holder"))? {
            ForkResult::Child => run_holder(),
            ForkResult::Parent { child } => {
                crate::state_file::replace(pid_file, child.to_string().as_bytes(), 0o644).map_err(
                    |source| {
                        // Nobody would know about the holder: do not leave it behind.
                        let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
                        PauseError::PidFile {
                            path: pid_file.to_path_buf(),
                            source,
                        }
                    },
                )
            }
        }
    })();
    let (message, code) = match result {
        Ok(()) => (REPORT_OK.to_owned(), 0),
        Err(err) => (error_chain(&err), 1),
    };
    let _ = nix::unistd::write(&report, message.as_bytes());
    // SAFETY: leave without running destructors or atexit hooks of the caller.
    unsafe { nix::libc::_exit(code) }
}

fn run_holder() -> ! {
    // Nothing of the caller stays open: stdio on /dev/null, every other fd closed
    // (this includes the report pipe, so the caller sees EOF).
    if let Ok(null) = OpenOptions::new().read(true).write(true).open("/dev/null") {
        for fd in 0..3 {
            let _ = dup2(null.as_raw_fd(), fd);
        }
    }
    let _ = files::close_fds_from(3);
    let _ = std::env::set_current_dir("/");
    if let Ok(name) = std::ffi::CString::new(PAUSE_PROCESS_NAME) {
        let _ = nix::sys::prctl::set_name(&name);
    }

    let all = SigSet::all();
    let _ = all.thread_block();
    loop {
        match all.wait() {
            Ok(Signal::SIGTERM | Signal::SIGINT) => {
                // SAFETY: plain process exit.
                unsafe { nix::libc::_exit(0) }
            }
            Ok(Signal::SIGCHLD) => reap_all(),
            _ => {}
        }
    }
}

fn reap_all() {
    loop {
        match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
            Err(Errno::EINTR) | Ok(_) => {}
            Err(_) => return,
        }
    }
}
