//! The per-container monitor, `wharf-monitor`.
//!
//! # Why a monitor per container
//!
//! `wharfd` is a multi-threaded tokio process and must never fork: forking a
//! multi-threaded process leaves the child with locks held by threads that no longer
//! exist. It also must be killable (upgrade, crash, `kill -9`) without stopping or losing
//! a single container. So each container gets a small single-threaded process,
//! `wharf-monitor run`, that creates the container, holds its stdio (output pipes,
//! stdin pipe, TTY master), writes the CRI log file, reaps the container's init
//! process and records how it ended. The daemon learns about the container through files in the bundle and a
//! one-shot sync pipe, so a restarted daemon rebuilds its view from those files; to
//! attach to the container's stdio, resize its TTY or signal it, it connects to the
//! monitor's control socket ([`control`]), which a restarted daemon finds again.
//!
//! # Process dance (`run`)
//!
//! 1. The daemon spawns `wharf-monitor run ...` with stdin and stderr on /dev/null and
//!    the write end of a sync pipe as stdout (no fd juggling between fork and exec, so
//!    the daemon spawns with posix_spawn). The monitor moves the pipe to fd 3
//!    (close-on-exec) and puts /dev/null on stdout.
//! 2. The monitor forks at once and the parent exits 0 (the daemon reaps it). The child
//!    is re-parented to init, calls `setsid()` (its own session: no signal aimed at the
//!    daemon's process group reaches it) and `PR_SET_CHILD_SUBREAPER` (processes orphaned
//!    below it, such as the container init once the OCI runtime exits, are re-parented
//!    to the monitor, so it can `waitpid` them and learn the exit status).
//! 3. Signals are blocked and read through a signalfd: SIGCHLD (reap), SIGUSR1 (reopen
//!    the log file after kubelet rotated it); SIGTERM/SIGINT/SIGHUP are ignored, the
//!    monitor lives exactly as long as its container.
//! 4. The container is created (OCI "create": the init waits to be started) either by
//!    libcontainer in a short-lived forked child (so the monitor itself never carries
//!    libcontainer's side effects: non-dumpable, oom_score_adj, memory) or by an external
//!    runtime (`runc`/`crun create`).
//! 5. One JSON line on the sync pipe tells the daemon whether the container exists; the daemon
//!    then starts it with `<runtime> start` (or `wharf-monitor oci start`).
//! 6. The monitor `execve`s `wharf-monitor-watch` (same pid, same start time; see
//!    [`watch`] for why and what carries over), which copies output to the CRI log
//!    until the init exits, writes `exit.json` (at once: the daemon watches the init
//!    too, and reads the file as soon as it appears), drains what processes left
//!    behind still write to the pipes (at most 2 s: a daemonized grandchild may hold
//!    them forever) and exits. It never deletes the container: the daemon does that on
//!    removal.
//!
//! # Files in the bundle
//!
//! | file | written by | content |
//! |---|---|---|
//! | `config.json` | daemon | the OCI runtime spec |
//! | `init.pid` | runtime | host pid of the container init |
//! | `monitor.json` | monitor, atomically, before the sync line | `{"monitor_pid","monitor_start_time","pid","pid_start_time"}`; start times are field 22 of `/proc/<pid>/stat`, so pid reuse is detectable |
//! | `exit.json` | monitor, atomically, after the init exited | `{"exit_code","signal","finished_at","oom_killed"}`; `exit_code` is 128+signal when killed |
//! | `runtime.log` | external runtime (`--log`, JSON lines) | the runtime's own errors; the last `msg` becomes the create error |
//! | `monitor.log` | monitor | errors after the sync line (its stderr is /dev/null) |
//! | `control/monitor.sock` | monitor, before the sync line; removed at exit | the control channel ([`control`]): attach, stdin, resize, signal |
//! | `control/console.sock` | monitor, during create with a TTY | the runtime's console socket: the PTY master comes through it |
//!
//! # CLI contract (the daemon depends on it)
//!
//! ```text
//! wharf-monitor run --id ID --bundle DIR --runtime builtin|/abs/runtime --runtime-root DIR
//!                   --log-path FILE [--max-log-line BYTES]          (stdout: sync pipe)
//!                   [--stdin [--stdin-once]] [--tty]
//!   sync line: {"monitor_pid":N,"pid":M} or {"monitor_pid":N,"error":"..."}
//! wharf-monitor oci --root DIR [--log FILE] [--log-format FMT] start|kill|delete|state|exec|update ...
//!   runc-compatible subset backed by libcontainer; errors: stderr + exit 1 (exec: 255)
//! wharf-monitor pause --pid-file FILE
//!   a PID-namespace holder for pods sharing one PID namespace; FILE gets its host pid
//! wharf-monitor archive --root ROOTFS --path PATH stat|get|put
//!   copies out of / into a container's rootfs from a chroot (`archive`)
//! wharf-monitor-watch --id ID --bundle DIR ... (internal: only `run` starts it, by exec)
//! ```
//!
//! Log lines follow the CRI format (`cri_log`); OOM detection reads the cgroup's own
//! counters (`oom`).

pub mod archive;
pub mod cli;
pub mod control;
pub mod cri_log;
mod files;
pub use files::{error_chain, parse_parent_pid, parse_start_time};
pub mod oci;
pub mod oom;
pub mod pause;
pub mod rotate;
pub mod run;
pub mod watch;

/// Runs one parsed `wharf-monitor` command line; the result is the process exit code.
pub fn main(cli: cli::Cli) -> i32 {
    match cli.command {
        cli::Command::Run(args) => run::main(args),
        cli::Command::Oci(args) => oci::main(args),
        cli::Command::Pause(args) => pause::main(args),
        cli::Command::Archive(args) => archive::main(args),
    }
}
