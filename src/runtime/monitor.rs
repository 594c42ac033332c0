//! The daemon's side of `wharf-monitor` (see `crate::monitor` for the monitor itself):
//! spawning one per container, reading the files it leaves in the bundle, and waiting
//! for it to exit through a pidfd, which works for processes that are not our children,
//! so it works the same after a daemon restart.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;
use tokio::io::AsyncReadExt;

use super::oci::OciRuntime;

#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("cannot start the monitor {program}: {source}")]
    Spawn {
        program: PathBuf,
        source: std::io::Error,
    },
    #[error("container create failed: {0}")]
    Create(String),
    #[error("container create did not finish within {0:?}")]
    Timeout(Duration),
    #[error("monitor: {0}")]
    Io(#[from] std::io::Error),
}

impl crate::error::HasKind for MonitorError {
    fn kind(&self) -> crate::error::ErrorKind {
        match self {
            MonitorError::Timeout(_) => crate::error::ErrorKind::DeadlineExceeded,
            // A command the image does not have is the request's fault, found by the
            // runtime (moby classifies the same words as an invalid parameter).
            MonitorError::Create(message) if command_not_found(message) => {
                crate::error::ErrorKind::InvalidArgument
            }
            // What a config or the host can get wrong is refused before the runtime
            // runs (InvalidArgument, FailedPrecondition); a runtime failure is Internal,
            // with the runtime's whole cause chain in the message.
            MonitorError::Create(_) | MonitorError::Spawn { .. } | MonitorError::Io(_) => {
                crate::error::ErrorKind::Internal
            }
        }
    }
}

/// Whether a runtime's create failure says the process's executable is missing
/// (youki: "executable 'x' not found in $PATH"; runc: "executable file not found in
/// $PATH").
fn command_not_found(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("executable") && (m.contains("not found") || m.contains("no such file or directory"))
}

/// `<bundle>/monitor.json`: who the monitor and the container's init are. Start times
/// (field 22 of /proc/<pid>/stat) tell a live process from a reused pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorInfo {
    pub monitor_pid: i32,
    pub monitor_start_time: u64,
    pub pid: i32,
    pub pid_start_time: u64,
}

/// `<bundle>/exit.json`, written by the monitor when the container's init exited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub finished_at: String,
    pub oom_killed: bool,
}

#[derive(Deserialize)]
struct SyncMessage {
    #[serde(default)]
    pid: Option<i32>,
    #[serde(default)]
    error: Option<String>,
}

/// How the container's stdio is set up (from CRI `stdin`, `stdin_once`, `tty`): the
/// monitor keeps stdin open for clients of its control channel, and holds the TTY.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StdioOptions {
    pub stdin: bool,
    pub stdin_once: bool,
    pub tty: bool,
    /// The log's size-based rotation (Docker's `--log-opt max-size/max-file`).
    pub log_rotation: Option<crate::monitor::rotate::LogRotation>,
}

/// Where the monitor binary is: configured, or next to the running executable.
pub fn monitor_program(configured: Option<&Path>) -> PathBuf {
    if let Some(path) = configured {
        return path.to_path_buf();
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("wharf-monitor")))
        .unwrap_or_else(|| PathBuf::from("wharf-monitor"))
}

/// Starts a monitor that creates container `id` from `bundle` with `runtime`, and waits
/// until the container is created (its init waits to be started).
pub async fn create(
    program: &Path,
    runtime: &OciRuntime,
    id: &str,
    bundle: &Path,
    log_path: &Path,
    stdio: StdioOptions,
    timeout: Duration,
) -> Result<MonitorInfo, MonitorError> {
    let (read_end, write_end) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| MonitorError::Io(e.into()))?;
    // The sync pipe goes in as stdout: with no pre_exec hook, std spawns through
    // posix_spawn (vfork-like), not a fork that copies the daemon's page tables on a
    // worker thread (10-30 ms when many containers start at once).
    let mut cmd = tokio::process::Command::new(program);
    cmd.arg("run")
        .arg("--id")
        .arg(id)
        .arg("--bundle")
        .arg(bundle)
        .arg("--runtime")
        .arg(runtime.monitor_arg())
        .arg("--runtime-root")
        .arg(&runtime.root)
        .arg("--log-path")
        .arg(log_path)
        .args(stdio.stdin.then_some("--stdin"))
        .args((stdio.stdin && stdio.stdin_once).then_some("--stdin-once"))
        .args(stdio.tty.then_some("--tty"))
        .args(stdio.log_rotation.iter().flat_map(|r| {
            [
                "--log-max-size".to_string(),
                r.max_size.to_string(),
                "--log-max-files".to_string(),
                r.max_files.to_string(),
            ]
        }))
        .stdin(Stdio::null())
        .stdout(Stdio::from(write_end))
        .stderr(Stdio::null());
    let mut child = cmd.spawn().map_err(|source| MonitorError::Spawn {
        program: program.to_path_buf(),
        source,
    })?;
    // `cmd` holds the parent's copy of the write end: drop it, or no EOF ever comes.
    drop(cmd);
    // The monitor forks at once and its first process exits; reap it.
    let first = child.wait().await?;
    if !first.success() {
        return Err(MonitorError::Create(format!(
            "{} exited with {first} before creating the container",
            program.display()
        )));
    }
    let mut reader = tokio::net::unix::pipe::Receiver::from_owned_fd(read_end)?;
    let mut line = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            let n = reader.read(&mut buf).await?;
            if n == 0 {
                return Ok::<(), std::io::Error>(());
            }
            line.extend_from_slice(&buf[..n]);
        }
    };
    let outcome = tokio::time::timeout(timeout, read).await;
    match outcome {
        Ok(result) => result?,
        Err(_) => {
            // The monitor may still be creating: keep listening, and when it reports,
            // undo what it made (the caller has already cleaned up and released the
            // name), so a late create cannot leak a container.
            let runtime = runtime.clone();
            let id = id.to_string();
            let bundle = bundle.to_path_buf();
            tokio::spawn(async move {
                let mut rest = [0u8; 4096];
                let _ = tokio::time::timeout(Duration::from_secs(600), async {
                    while let Ok(n) = reader.read(&mut rest).await {
                        if n == 0 {
                            break;
                        }
                    }
                })
                .await;
                abandon(&runtime, &id, &bundle).await;
            });
            return Err(MonitorError::Timeout(timeout));
        }
    }
    let text = String::from_utf8_lossy(&line);
    let message: SyncMessage = serde_json::from_str(text.trim()).map_err(|_| {
        MonitorError::Create(if text.trim().is_empty() {
            "the monitor exited without reporting".to_string()
        } else {
            format!("unexpected monitor report {:?}", text.trim())
        })
    })?;
    if let Some(error) = message.error {
        return Err(MonitorError::Create(error));
    }
    if message.pid.is_none() {
        return Err(MonitorError::Create("the monitor reported no pid".into()));
    }
    read_info(bundle).ok_or_else(|| {
        MonitorError::Create(format!(
            "the monitor reported success but {} is missing",
            bundle.join("monitor.json").display()
        ))
    })
}

/// Kills and deletes a container whose create was given up on, and its monitor.
pub async fn abandon(runtime: &OciRuntime, id: &str, bundle: &Path) {
    if let Some(info) = read_info(bundle) {
        let _ = signal(info.pid, info.pid_start_time, nix::libc::SIGKILL);
        let _ = tokio::time::timeout(
            Duration::from_secs(10),
            wait_exit(info.monitor_pid, info.monitor_start_time),
        )
        .await;
    }
    if let Err(err) = runtime.delete(id).await {
        tracing::warn!(container = %id, "deleting an abandoned container: {err}");
    }
    tracing::warn!(container = %id, "abandoned container deleted");
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Option<T> {
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

pub fn read_info(bundle: &Path) -> Option<MonitorInfo> {
    read_json(&bundle.join("monitor.json"))
}

pub fn read_exit(bundle: &Path) -> Option<ExitInfo> {
    read_json(&bundle.join("exit.json"))
}

/// Field 22 of /proc/<pid>/stat: when the process started, in clock ticks since boot.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Whether `pid` is still the process that started at `start`, and not a zombie.
pub fn alive(pid: i32, start: u64) -> bool {
    liveness(pid, start).unwrap_or(false)
}

/// Like [`alive`], but None when /proc could not tell (EMFILE, ENOMEM): a caller
/// waiting for an exit must not take that for one.
fn liveness(pid: i32, start: u64) -> Option<bool> {
    if pid <= 0 {
        return Some(false);
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
                return Some(false);
            };
            let mut fields = after.split_whitespace();
            let state = fields.next().unwrap_or("");
            let started = fields.nth(18).and_then(|s| s.parse::<u64>().ok());
            Some(state != "Z" && state != "X" && started == Some(start))
        }
        Err(err)
            if err.kind() == std::io::ErrorKind::NotFound
                || err.raw_os_error() == Some(nix::libc::ESRCH) =>
        {
            Some(false)
        }
        Err(_) => None,
    }
}

fn pidfd_open(pid: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: plain syscall; a returned fd is new and owned by us.
    let fd = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Sends `signal` to `pid` if it is still the process that started at `start`. The
/// pidfd is taken and the start time checked before the signal, so a recycled pid
/// is never signalled. Returns false if the process is gone.
pub fn signal(pid: i32, start: u64, signal: i32) -> std::io::Result<bool> {
    let fd = match pidfd_open(pid) {
        Ok(fd) => fd,
        Err(err) if err.raw_os_error() == Some(nix::libc::ESRCH) => return Ok(false),
        Err(err) => return Err(err),
    };
    if !alive(pid, start) {
        return Ok(false);
    }
    // SAFETY: plain syscall on a pidfd we own.
    let rc = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            signal,
            std::ptr::null::<nix::libc::siginfo_t>(),
            0,
        )
    };
    if rc < 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(nix::libc::ESRCH) {
            return Ok(false);
        }
        return Err(err);
    }
    Ok(true)
}

/// Waits until process `pid` (started at `start`) exits. Returns at once if it is gone.
pub async fn wait_exit(pid: i32, start: u64) {
    let fd = match pidfd_open(pid) {
        Ok(fd) => fd,
        Err(err) if err.raw_os_error() == Some(nix::libc::ESRCH) => return,
        // No pidfd is not an exit (EMFILE when the daemon is out of fds, ENOSYS before
        // Linux 5.3): watch the process table instead.
        Err(_) => return poll_until_gone(pid, start).await,
    };
    if liveness(pid, start) == Some(false) {
        return;
    }
    // SAFETY: the pidfd is owned by the AsyncFd and not used elsewhere.
    match unsafe { AsyncFd::register(fd) } {
        Ok(async_fd) => {
            // A pidfd becomes readable when the process exits.
            let _ = async_fd.readable().await;
        }
        Err(_) => poll_until_gone(pid, start).await,
    }
}

/// Whether process `pid` (started at `start`) runs the executable file `program`
/// (same device and inode); None when the process is gone or cannot be inspected.
pub fn runs_program(pid: i32, start: u64, program: &Path) -> Option<bool> {
    use std::os::unix::fs::MetadataExt;
    let exe = std::fs::metadata(format!("/proc/{pid}/exe")).ok()?;
    let wanted = std::fs::metadata(program).ok()?;
    // The pid may have been reused between the stat and now.
    if start_time(pid)? != start {
        return None;
    }
    Some(exe.dev() == wanted.dev() && exe.ino() == wanted.ino())
}

/// Returns once the container init (`pid`, `start`) has exited and its monitor has
/// written `<bundle>/exit.json` (atomically, by rename: present means complete). The
/// monitor reaps the init, logs what it wrote and writes the file within milliseconds.
pub async fn wait_exit_recorded(bundle: &Path, pid: i32, start: u64) {
    const EXIT_FILE_POLL: Duration = Duration::from_millis(5);
    wait_exit(pid, start).await;
    let exit_file = bundle.join("exit.json");
    while !tokio::fs::try_exists(&exit_file).await.unwrap_or(false) {
        tokio::time::sleep(EXIT_FILE_POLL).await;
    }
}

async fn poll_until_gone(pid: i32, start: u64) {
    while liveness(pid, start) != Some(false) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_start_time_and_liveness() {
        let pid = std::process::id() as i32;
        let start = start_time(pid).expect("start time of self");
        assert!(alive(pid, start));
        assert!(!alive(pid, start + 1));
        assert!(!alive(-1, start));
    }

    #[tokio::test]
    async fn waits_for_a_process_that_is_not_a_child() {
        let mut child = std::process::Command::new("sleep")
            .arg("0.2")
            .spawn()
            .expect("sleep");
        let pid = child.id() as i32;
        let start = start_time(pid).expect("start time");
        let reaper = std::thread::spawn(move || child.wait());
        tokio::time::timeout(Duration::from_secs(5), wait_exit(pid, start))
            .await
            .expect("exit noticed");
        reaper.join().expect("join").expect("wait");
        assert!(!signal(pid, start, 0).expect("signal gone process"));
    }

    /// With every fd in use, pidfd_open and /proc fail: that is no exit. Runs in a
    /// child process of the test binary, as it lowers the fd limit.
    #[test]
    fn running_out_of_fds_is_not_taken_for_an_exit() {
        const CHILD_ENV: &str = "WHARF_TEST_OUT_OF_FDS";
        const NAME: &str = "runtime::monitor::tests::running_out_of_fds_is_not_taken_for_an_exit";
        if std::env::var_os(CHILD_ENV).is_none() {
            let output = std::process::Command::new(std::env::current_exe().expect("exe"))
                .args(["--exact", NAME, "--test-threads=1", "--nocapture"])
                .env(CHILD_ENV, "1")
                .output()
                .expect("run the test binary");
            let stdout = String::from_utf8_lossy(&output.stdout);
            assert!(
                output.status.success() && stdout.contains("1 passed"),
                "child test failed: {stdout}{}",
                String::from_utf8_lossy(&output.stderr)
            );
            return;
        }
        let mut child = std::process::Command::new("sleep")
            .arg("0.3")
            .spawn()
            .expect("sleep");
        let pid = child.id() as i32;
        let start = start_time(pid).expect("start time");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .expect("getrlimit");
        nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, 256, limit.1)
            .expect("setrlimit");
        let mut filler = Vec::new();
        loop {
            match std::fs::File::open("/dev/null") {
                Ok(file) => filler.push(file),
                Err(err) if err.raw_os_error() == Some(nix::libc::EMFILE) => break,
                Err(err) => panic!("open /dev/null: {err}"),
            }
        }
        assert!(pidfd_open(pid).is_err(), "no fd should be left");
        runtime.block_on(async move {
            let wait = wait_exit(pid, start);
            tokio::pin!(wait);
            // The sleep exits in this second, but nothing can be known without an fd.
            let starved = tokio::time::timeout(Duration::from_secs(1), &mut wait).await;
            assert!(starved.is_err(), "wait_exit returned with no fd free");
            drop(filler);
            tokio::time::timeout(Duration::from_secs(10), wait)
                .await
                .expect("the exit is noticed once fds are free");
        });
        // wait_exit returned: the sleep must have exited (a zombie until reaped).
        let status = child.try_wait().expect("try_wait");
        assert!(
            status.is_some_and(|status| status.success()),
            "wait_exit returned while the process ran: {status:?}"
        );
    }
}
