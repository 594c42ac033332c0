//! Driving an OCI runtime through its runc-compatible command line: `runc`, `crun`, or
//! wharf's built-in libcontainer runtime (`wharf-monitor oci`, same arguments). The
//! daemon never forks by hand; it only spawns these commands (fork+exec is safe in a
//! multi-threaded process, a bare fork is not). One exception: the built-in runtime's
//! `start` runs in-process, since it forks nothing (see `OciRuntime::start`).
//!
//! `create` is not here: the monitor runs it, so the container's init becomes the
//! monitor's child and its stdio the monitor's pipes.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::AsyncReadExt;
use tokio::process::Command;
use tokio::sync::{OnceCell, Semaphore, SemaphorePermit};

use super::exec_tree::{ExecTree, KillOnDrop};

/// The name of the built-in runtime handler (also the empty handler).
pub const BUILTIN_HANDLER: &str = "builtin";

/// At most this much of an exec's stdout and stderr, together, is kept. kubelet's CRI
/// client refuses a response over 16 MiB (its gRPC max receive size), so an ExecSync
/// answer must fit in that with its framing; a cap of 16 MiB per stream (wharf's
/// before, after containerd's) lets a response reach 32 MiB that kubelet then cannot
/// read. Bounding the sum
/// also bounds the memory of one call: these buffers plus one encoded copy of the
/// response.
pub const MAX_EXEC_OUTPUT: usize = (16 << 20) - (64 << 10);

/// What any exec may keep of its output without a large-output permit.
pub const SMALL_EXEC_OUTPUT: usize = 1 << 20;

/// How many execs at once may keep more than [`SMALL_EXEC_OUTPUT`]. Another one stops
/// reading until a permit frees (its command blocks on the full pipe, its timeout still
/// runs), so N concurrent execs hold at most about N x 1 MiB + 4 x 16 MiB of output
/// (plus the encoded copy of each response being sent), not N x 16 MiB.
const LARGE_EXEC_OUTPUTS: usize = 4;

static LARGE_EXEC_OUTPUT_PERMITS: Semaphore = Semaphore::const_new(LARGE_EXEC_OUTPUTS);

/// What one exec may still keep of its stdout and stderr together, and its
/// large-output permit once it needs one.
struct OutputBudget<'a> {
    cap: usize,
    left: AtomicUsize,
    large: &'a Semaphore,
    permit: OnceCell<Option<SemaphorePermit<'a>>>,
}

impl<'a> OutputBudget<'a> {
    fn new(cap: usize, large: &'a Semaphore) -> OutputBudget<'a> {
        OutputBudget {
            cap,
            left: AtomicUsize::new(cap),
            large,
            permit: OnceCell::new(),
        }
    }

    /// Takes up to `n` bytes; returns how many, and what was left before. Past
    /// [`SMALL_EXEC_OUTPUT`] in all, waits for a large-output permit first.
    async fn take(&self, n: usize) -> (usize, usize) {
        let left = self.left.load(Ordering::Relaxed);
        if left > 0 && self.cap - left + n > SMALL_EXEC_OUTPUT {
            self.permit
                .get_or_init(|| async { self.large.acquire().await.ok() })
                .await;
        }
        let left = self
            .left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                Some(left - left.min(n))
            })
            .unwrap_or(0);
        (n.min(left), left)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: PathBuf,
        source: std::io::Error,
    },
    #[error("{program} {operation} {id} failed: {message}")]
    Failed {
        program: PathBuf,
        operation: &'static str,
        id: String,
        message: String,
    },
    #[error("{program} {operation} {id} did not finish within {timeout:?}")]
    Timeout {
        program: PathBuf,
        operation: &'static str,
        id: String,
        timeout: Duration,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl crate::error::HasKind for OciError {
    fn kind(&self) -> crate::error::ErrorKind {
        match self {
            OciError::Timeout { .. } => crate::error::ErrorKind::DeadlineExceeded,
            _ => crate::error::ErrorKind::Internal,
        }
    }
}

impl OciError {
    /// Whether the runtime said the container does not exist (delete/kill of a gone one).
    pub fn is_not_exist(&self) -> bool {
        match self {
            OciError::Failed { message, .. } => {
                let m = message.to_ascii_lowercase();
                m.contains("does not exist") || m.contains("not exist") || m.contains("not found")
            }
            _ => false,
        }
    }
}

/// One OCI runtime: how to invoke it and where it keeps its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciRuntime {
    /// The handler name (`builtin`, `runc`, ...).
    pub handler: String,
    pub program: PathBuf,
    /// Arguments before the runc-style ones (`oci` for the built-in runtime).
    pub prefix: Vec<String>,
    /// `--root`: the runtime's state directory (under wharf's state dir, per handler).
    pub root: PathBuf,
}

/// What an exec produced.
#[derive(Debug, Clone, Default)]
pub struct ExecOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: i32,
    pub timed_out: bool,
}

impl OciRuntime {
    pub fn builtin(monitor: &Path, state_dir: &Path) -> OciRuntime {
        OciRuntime {
            handler: BUILTIN_HANDLER.to_string(),
            program: monitor.to_path_buf(),
            prefix: vec!["oci".to_string()],
            root: state_dir.join("runtime").join(BUILTIN_HANDLER),
        }
    }

    pub fn external(handler: &str, program: &Path, state_dir: &Path) -> OciRuntime {
        OciRuntime {
            handler: handler.to_string(),
            program: program.to_path_buf(),
            prefix: Vec::new(),
            root: state_dir.join("runtime").join(handler),
        }
    }

    /// Whether this is wharf's own libcontainer runtime (`wharf-monitor oci`).
    pub fn is_builtin(&self) -> bool {
        !self.prefix.is_empty()
    }

    /// What the monitor's `--runtime` takes: `builtin` or the runtime binary.
    pub fn monitor_arg(&self) -> &std::ffi::OsStr {
        if self.is_builtin() {
            std::ffi::OsStr::new(BUILTIN_HANDLER)
        } else {
            self.program.as_os_str()
        }
    }

    /// The runtime's program and the arguments before its subcommand, as the monitor
    /// runs it for an exec session.
    pub fn command_prefix(&self) -> Vec<String> {
        let mut argv = vec![self.program.to_string_lossy().into_owned()];
        argv.extend(self.prefix.iter().cloned());
        argv.push("--root".into());
        argv.push(self.root.to_string_lossy().into_owned());
        argv
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.prefix)
            .arg("--root")
            .arg(&self.root)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    }

    /// Runs `<operation> <before..> <id> <after..>`; the error carries the runtime's
    /// own message.
    async fn run(
        &self,
        operation: &'static str,
        before: &[&str],
        id: &str,
        after: &[&str],
    ) -> Result<(), OciError> {
        let mut cmd = self.command();
        cmd.arg(operation).args(before).arg(id).args(after);
        let output = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .await
            .map_err(|source| OciError::Spawn {
                program: self.program.clone(),
                source,
            })?;
        if output.status.success() {
            return Ok(());
        }
        Err(OciError::Failed {
            program: self.program.clone(),
            operation,
            id: id.to_string(),
            message: runtime_message(&output.stderr, output.status),
        })
    }

    /// Starts a created container (its process runs).
    pub async fn start(&self, id: &str) -> Result<(), OciError> {
        if !self.is_builtin() {
            return self.run("start", &[], id, &[]).await;
        }
        // The built-in runtime's start is a socket write and a state file update: done
        // in-process, it saves exec'ing the monitor binary on every StartContainer.
        let root = self.root.clone();
        let owned_id = id.to_string();
        let result =
            tokio::task::spawn_blocking(move || crate::monitor::oci::start(&root, &owned_id))
                .await
                .map_err(|e| OciError::Io(std::io::Error::other(e)))?;
        result.map_err(|err| OciError::Failed {
            program: self.program.clone(),
            operation: "start",
            id: id.to_string(),
            message: crate::monitor::error_chain(&err),
        })
    }

    /// Records a start that a crash cut before the built-in runtime's state file said
    /// so (see [`crate::monitor::oci::mark_started`]); external runtimes keep their own.
    pub async fn mark_started(&self, id: &str) -> Result<(), OciError> {
        if !self.is_builtin() {
            return Ok(());
        }
        let root = self.root.clone();
        let owned_id = id.to_string();
        tokio::task::spawn_blocking(move || crate::monitor::oci::mark_started(&root, &owned_id))
            .await
            .map_err(|e| OciError::Io(std::io::Error::other(e)))?
            .map_err(|err| OciError::Failed {
                program: self.program.clone(),
                operation: "start (recovery)",
                id: id.to_string(),
                message: crate::monitor::error_chain(&err),
            })
    }

    /// Deletes the container's runtime state and cgroup, killing what still runs in it.
    /// A container the runtime does not know is fine (idempotent removal).
    pub async fn delete(&self, id: &str) -> Result<(), OciError> {
        match self.run("delete", &["--force"], id, &[]).await {
            Err(err) if err.is_not_exist() => Ok(()),
            other => other,
        }
    }

    /// The container's status as the runtime reports it (`created`, `running`,
    /// `stopped`), or None if it does not know the container.
    pub async fn status(&self, id: &str) -> Option<String> {
        let mut cmd = self.command();
        cmd.args(["state", id]);
        let output = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .output()
            .await
            .ok()?;
        if !output.status.success() {
            return None;
        }
        let state: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
        state.get("status")?.as_str().map(str::to_string)
    }

    /// Freezes the container's processes (`pause`).
    pub async fn pause(&self, id: &str) -> Result<(), OciError> {
        self.run("pause", &[], id, &[]).await
    }

    /// Thaws them (`resume`).
    pub async fn resume(&self, id: &str) -> Result<(), OciError> {
        self.run("resume", &[], id, &[]).await
    }

    /// Signals every process of the container (`kill --all`).
    pub async fn kill_all(&self, id: &str, signal: i32) -> Result<(), OciError> {
        self.run("kill", &["--all"], id, &[&signal.to_string()])
            .await
    }

    /// Applies `resources_file` (OCI LinuxResources JSON) to a running container.
    pub async fn update(&self, id: &str, resources_file: &Path) -> Result<(), OciError> {
        let file = resources_file.to_string_lossy();
        self.run("update", &["--resources", &file], id, &[]).await
    }

    /// Runs the process described by `process_file` (OCI Process JSON) in the container,
    /// collecting at most [`MAX_EXEC_OUTPUT`] bytes of its stdout and stderr together
    /// (the rest is read and dropped, so the process never blocks on a full pipe). The
    /// pid file tells a process that ran from a runtime that failed before running
    /// anything.
    ///
    /// At `timeout` (if any) the process and everything it started are killed
    /// ([`ExecTree`]) and `timed_out` is set, without waiting for the output pipes
    /// (a process that escaped the kill may still hold them). If the returned future is
    /// dropped before it finishes (the CRI client cancelled the call), the same kill
    /// runs.
    pub async fn exec(
        &self,
        id: &str,
        process_file: &Path,
        pid_file: &Path,
        timeout: Option<Duration>,
    ) -> Result<ExecOutput, OciError> {
        let mut cmd = self.command();
        cmd.arg("exec")
            .arg("--process")
            .arg(process_file)
            .arg("--pid-file")
            .arg(pid_file)
            .arg(id)
            // A process group of its own: its helpers (and runc's exec'd process, were
            // it not a session leader) can be told from wharfd's other children.
            .process_group(0)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|source| OciError::Spawn {
            program: self.program.clone(),
            source,
        })?;
        let mut guard = child
            .id()
            .and_then(|pid| i32::try_from(pid).ok())
            .map(|pid| KillOnDrop::new(ExecTree::new(pid, pid_file)));
        let budget = OutputBudget::new(MAX_EXEC_OUTPUT, &LARGE_EXEC_OUTPUT_PERMITS);
        let mut stdout = child.stdout.take();
        let mut stderr = child.stderr.take();
        let read_out = async {
            let mut buf = Vec::new();
            if let Some(s) = stdout.as_mut() {
                read_capped(s, &mut buf, &budget).await;
            }
            buf
        };
        let read_err = async {
            let mut buf = Vec::new();
            if let Some(s) = stderr.as_mut() {
                read_capped(s, &mut buf, &budget).await;
            }
            buf
        };
        let outputs = async { tokio::join!(read_out, read_err, child.wait()) };
        let finished = match timeout {
            None => Some(outputs.await),
            Some(limit) => tokio::time::timeout(limit, outputs).await.ok(),
        };
        let Some((out, err, status)) = finished else {
            let killed = guard.as_mut().map_or(0, KillOnDrop::kill_now);
            // The runtime exits once its process is gone; reap it if it does so soon,
            // else kill_on_drop ends it.
            let _ = tokio::time::timeout(Duration::from_secs(2), child.wait()).await;
            tracing::info!(
                container = id,
                ?timeout,
                killed,
                "exec timed out: its processes were killed"
            );
            return Ok(ExecOutput {
                timed_out: true,
                exit_code: -1,
                ..Default::default()
            });
        };
        if let Some(guard) = guard.as_mut() {
            guard.disarm();
        }
        let status = status?;
        if read_pid(pid_file).is_none() {
            return Err(OciError::Failed {
                program: self.program.clone(),
                operation: "exec",
                id: id.to_string(),
                message: runtime_message(&err, status),
            });
        }
        Ok(ExecOutput {
            stdout: out,
            stderr: err,
            exit_code: exit_code(status),
            timed_out: false,
        })
    }
}

/// Reads `reader` to its end, keeping what `budget` (shared by an exec's stdout and
/// stderr) still allows and dropping the rest. The buffer grows by doubling, but never
/// past what it could still be given, so an exec's buffers together stay within about
/// twice the budget even in the worst interleaving, and within the budget itself when
/// one stream fills it.
async fn read_capped(
    reader: &mut (impl AsyncReadExt + Unpin),
    buf: &mut Vec<u8>,
    budget: &OutputBudget<'_>,
) {
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let (take, left) = budget.take(n).await;
                if take == 0 {
                    continue;
                }
                if buf.capacity() - buf.len() < take {
                    let want = (buf.capacity() * 2)
                        .max(buf.len() + take)
                        .min(buf.len() + left);
                    buf.reserve_exact(want - buf.len());
                }
                buf.extend_from_slice(&chunk[..take]);
            }
        }
    }
}

fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// A process exit status as a shell reports it: the code, or 128 + signal.
pub fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => 255,
    }
}

/// The runtime's error message from its stderr: the last JSON `msg` (runc and crun log
/// JSON when asked), else the last non-empty line, else the exit status.
fn runtime_message(stderr: &[u8], status: std::process::ExitStatus) -> String {
    let text = String::from_utf8_lossy(stderr);
    let mut last = None;
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let message = serde_json::from_str::<serde_json::Value>(line)
            .ok()
            .and_then(|v| v.get("msg").and_then(|m| m.as_str()).map(str::to_string))
            .unwrap_or_else(|| line.to_string());
        last = Some(message);
    }
    last.unwrap_or_else(|| format!("exited with {status}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[tokio::test]
    async fn exec_output_budget_is_shared_and_bounds_the_buffers() {
        use tokio::io::AsyncReadExt as _;
        let large = Semaphore::new(1);
        let budget = OutputBudget::new(100_000, &large);
        let mut out_src = tokio::io::repeat(1).take(1_000_000);
        let mut err_src = tokio::io::repeat(2).take(1_000_000);
        let (mut out, mut err) = (Vec::new(), Vec::new());
        tokio::join!(
            read_capped(&mut out_src, &mut out, &budget),
            read_capped(&mut err_src, &mut err, &budget)
        );
        assert_eq!(out.len() + err.len(), 100_000);
        assert!(out.iter().all(|b| *b == 1) && err.iter().all(|b| *b == 2));
        // Read to the end (nothing left for a writer to block on).
        assert_eq!(out_src.limit() + err_src.limit(), 0);
        assert!(out.capacity() <= 100_000 && err.capacity() <= 100_000);

        let budget = OutputBudget::new(MAX_EXEC_OUTPUT, &large);
        let mut big = tokio::io::repeat(0).take(40 << 20);
        let mut buf = Vec::new();
        read_capped(&mut big, &mut buf, &budget).await;
        assert_eq!(buf.len(), MAX_EXEC_OUTPUT);
        assert_eq!(buf.capacity(), MAX_EXEC_OUTPUT, "no doubling past the cap");
    }

    /// Only so many execs keep more than the small share at once; another stops reading
    /// (its writer blocks) until a permit frees, then goes on to the end.
    #[tokio::test]
    async fn large_outputs_wait_for_a_permit() {
        use std::time::Duration;
        use tokio::io::AsyncReadExt as _;
        let large = Semaphore::new(1);
        // A reads past the small share from a source that then stays open and idle.
        let a = OutputBudget::new(MAX_EXEC_OUTPUT, &large);
        let (_idle_writer, idle) = tokio::io::duplex(1024);
        let mut a_src = tokio::io::repeat(0)
            .take(SMALL_EXEC_OUTPUT as u64 + 10)
            .chain(idle);
        let mut a_buf = Vec::new();
        {
            let a_read = read_capped(&mut a_src, &mut a_buf, &a);
            assert!(tokio::time::timeout(Duration::from_millis(100), a_read)
                .await
                .is_err());
        }
        assert_eq!(a_buf.len(), SMALL_EXEC_OUTPUT + 10);
        assert_eq!(large.available_permits(), 0, "A holds the permit");

        let b = OutputBudget::new(MAX_EXEC_OUTPUT, &large);
        let total = 4 * SMALL_EXEC_OUTPUT as u64;
        let mut b_src = tokio::io::repeat(1).take(total);
        let mut b_buf = Vec::new();
        {
            let b_read = read_capped(&mut b_src, &mut b_buf, &b);
            assert!(
                tokio::time::timeout(Duration::from_millis(100), b_read)
                    .await
                    .is_err(),
                "B went past the small share without a permit"
            );
        }
        assert!(b_buf.len() <= SMALL_EXEC_OUTPUT, "{}", b_buf.len());
        assert!(
            b_src.limit() > SMALL_EXEC_OUTPUT as u64,
            "B stopped reading"
        );

        drop(a);
        read_capped(&mut b_src, &mut b_buf, &b).await;
        assert_eq!(b_src.limit(), 0, "B read to the end once A was done");
        assert!(b_buf.len() > 2 * SMALL_EXEC_OUTPUT);
    }

    #[test]
    fn runtime_messages() {
        let status = std::process::ExitStatus::from_raw(1 << 8);
        assert_eq!(
            runtime_message(
                b"{\"level\":\"error\",\"msg\":\"container does not exist\"}\n",
                status
            ),
            "container does not exist"
        );
        assert_eq!(
            runtime_message(b"first\nlast line\n\n", status),
            "last line"
        );
        assert_eq!(runtime_message(b"", status), "exited with exit status: 1");
    }

    #[test]
    fn exit_codes() {
        assert_eq!(exit_code(std::process::ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(exit_code(std::process::ExitStatus::from_raw(9)), 137);
    }

    #[test]
    fn not_exist_is_recognized() {
        let err = OciError::Failed {
            program: PathBuf::from("runc"),
            operation: "delete",
            id: "x".into(),
            message: "container \"x\" does not exist".into(),
        };
        assert!(err.is_not_exist());
    }
}
