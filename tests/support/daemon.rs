//! A real `wharfd` on a fresh temporary root, with its own state dir, sockets and config
//! file, so tests run in parallel without touching the host's /var/lib/wharf or
//! /etc/wharf. The daemon is always stopped (SIGTERM, then SIGKILL) when the fixture is
//! dropped, and its log is printed when the test failed.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::VersionRequest;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;
use tonic::transport::Channel;

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

pub fn wharfd_binary() -> &'static str {
    env!("CARGO_BIN_EXE_wharfd")
}

pub fn wharf_binary() -> &'static str {
    env!("CARGO_BIN_EXE_wharf")
}

/// wharfd creates root-owned sockets, and later namespaces, cgroups and mounts.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "wharf's integration tests must run as root (they start wharfd, which creates \
         root-owned sockets, mounts, namespaces and cgroups): run them with ./scripts/test as root"
    );
}

/// Paths of one daemon instance, all inside one temporary directory.
#[derive(Debug, Clone)]
pub struct DaemonPaths {
    pub root: PathBuf,
    pub state: PathBuf,
    pub cri_socket: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
}

impl DaemonPaths {
    fn in_dir(dir: &Path) -> DaemonPaths {
        DaemonPaths {
            root: dir.join("root"),
            state: dir.join("state"),
            cri_socket: dir.join("state/wharf.sock"),
            config: dir.join("wharf.toml"),
            log: dir.join("wharfd.log"),
        }
    }

    /// With the state dir `state` deep inside `dir` (the CRI socket stays short).
    fn in_dir_with_state(dir: &Path, state: &Path) -> DaemonPaths {
        DaemonPaths {
            state: dir.join(state),
            cri_socket: dir.join("wharf.sock"),
            ..DaemonPaths::in_dir(dir)
        }
    }

    /// The flags that put a daemon on these paths.
    pub fn args(&self) -> Vec<String> {
        vec![
            "--config".into(),
            self.config.display().to_string(),
            "--root".into(),
            self.root.display().to_string(),
            "--state".into(),
            self.state.display().to_string(),
            "--cri-socket".into(),
            self.cri_socket.display().to_string(),
            "--log-level".into(),
            "debug".into(),
        ]
    }
}

pub struct Daemon {
    pub paths: DaemonPaths,
    dir: TempDir,
    child: Option<Child>,
    /// The default cgroup parent of this daemon's pods (removed on drop).
    pub cgroup_parent: String,
    /// Extra environment of the next (re)start, e.g. a crash point.
    pub env: Vec<(String, String)>,
    /// The open-file limit (soft, hard) of the next (re)start; None: the test's.
    pub nofile: Option<(u64, u64)>,
}

impl Daemon {
    /// Starts wharfd with an empty config file and waits until it answers `Version`.
    pub async fn start() -> Daemon {
        Daemon::start_with_config("").await
    }

    /// Starts wharfd with `config_toml` as its config file (paths still come from flags).
    pub async fn start_with_config(config_toml: &str) -> Daemon {
        Daemon::start_with_state(config_toml, None).await
    }

    /// Like [`Daemon::start_with_config`], with the state dir at `state` relative to
    /// the daemon's temporary dir (e.g. a path longer than a socket address can be).
    pub async fn start_with_state(config_toml: &str, state: Option<&Path>) -> Daemon {
        require_root();
        let dir = tempfile::Builder::new()
            .prefix("wharf-test-")
            .tempdir()
            .expect("create temporary dir for wharfd");
        let paths = match state {
            Some(state) => DaemonPaths::in_dir_with_state(dir.path(), state),
            None => DaemonPaths::in_dir(dir.path()),
        };
        let cgroup_parent = format!(
            "/{}",
            dir.path()
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_else(|| "wharf-test".into())
        );
        let mut config_toml = config_toml.to_string();
        if !config_toml.contains("[runtime]") {
            // Pods of this daemon go under a cgroup the fixture removes afterwards.
            config_toml.push_str(&format!(
                "\n[runtime]\ndefault_cgroup_parent = {cgroup_parent:?}\n"
            ));
        }
        if !config_toml.contains("[cni]") {
            // Never the host's /etc/cni/net.d: a test's pods get the networks it writes.
            let conf_dir = dir.path().join("cni/net.d");
            std::fs::create_dir_all(&conf_dir).expect("create the test's CNI conf dir");
            config_toml.push_str(&format!(
                "\n[cni]\nconf_dir = {:?}\n",
                conf_dir.display().to_string()
            ));
        }
        if !config_toml.contains("[network") {
            // Loopback-only pods unless a test picks a network: the built-in bridge
            // (mode auto's default) would be shared by every test's daemon.
            config_toml.push_str("\n[network]\nmode = \"none\"\n");
        }
        if !config_toml.contains("[metrics]") {
            // The default metrics port is one per host: tests that scrape pick their own.
            config_toml.push_str("\n[metrics]\naddress = \"\"\n");
        }
        std::fs::write(&paths.config, &config_toml).expect("write wharfd config");
        let mut daemon = Daemon {
            paths,
            dir,
            child: None,
            cgroup_parent,
            env: Vec::new(),
            nofile: None,
        };
        daemon.spawn().await;
        daemon
    }

    /// Starts wharfd again on the same root and sockets (after `stop` or `kill9`).
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "restart: the daemon is still running");
        self.spawn().await;
    }

    async fn spawn(&mut self) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.paths.log)
            .expect("open wharfd log file");
        let mut command = Command::new(wharfd_binary());
        if let Some((soft, hard)) = self.nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe.
            unsafe {
                command.pre_exec(move || {
                    nix::sys::resource::setrlimit(
                        nix::sys::resource::Resource::RLIMIT_NOFILE,
                        soft,
                        hard,
                    )
                    .map_err(std::io::Error::from)
                });
            }
        }
        let child = command
            .args(self.paths.args())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn wharfd");
        self.child = Some(child);
        self.wait_ready().await;
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child_mut().try_wait().expect("poll wharfd") {
                self.child = None;
                panic!(
                    "wharfd exited with {status} before it was ready; its log:\n{}",
                    self.log()
                );
            }
            if self.paths.cri_socket.exists() {
                if let Ok(channel) = wharf::cri::connect(&self.paths.cri_socket).await {
                    let mut client = RuntimeServiceClient::new(channel);
                    if client.version(VersionRequest::default()).await.is_ok() {
                        return;
                    }
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "wharfd did not answer Version on {} within {READY_TIMEOUT:?}; its log:\n{}",
                    self.paths.cri_socket.display(),
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("wharfd is not running").id()
    }

    fn child_mut(&mut self) -> &mut Child {
        self.child.as_mut().expect("wharfd is not running")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.paths.log).unwrap_or_default()
    }

    pub async fn channel(&self) -> Channel {
        wharf::cri::connect(&self.paths.cri_socket)
            .await
            .unwrap_or_else(|err| panic!("connect to {}: {err}", self.paths.cri_socket.display()))
    }

    pub async fn runtime_client(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(self.channel().await)
    }

    pub async fn image_client(&self) -> ImageServiceClient<Channel> {
        ImageServiceClient::new(self.channel().await)
    }

    /// Sends SIGTERM and waits for the exit; returns its status.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal_and_wait(Signal::SIGTERM)
    }

    /// Waits for a daemon that kills itself (a crash point) to exit; returns its status.
    pub fn wait_exited(&mut self) -> ExitStatus {
        self.wait_for_exit("by itself")
    }

    /// The daemon's exit status if it exits within `timeout` (a crash point's kill),
    /// None if it still runs then.
    pub fn exited_within(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut()?;
            if let Some(status) = child.try_wait().expect("poll wharfd") {
                self.child = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether the daemon process runs (it was started and has not been seen to exit).
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILL: the crash every component must survive.
    pub fn kill9(&mut self) -> ExitStatus {
        self.signal_and_wait(Signal::SIGKILL)
    }

    fn signal_and_wait(&mut self, signal: Signal) -> ExitStatus {
        kill(Pid::from_raw(self.pid() as i32), signal).expect("signal wharfd");
        self.wait_for_exit(&format!("after {signal}"))
    }

    /// Waits up to STOP_TIMEOUT for the daemon to exit (killing it and panicking with
    /// its log otherwise); `when` says what it should have exited on.
    fn wait_for_exit(&mut self, when: &str) -> ExitStatus {
        let mut child = self.child.take().expect("wharfd is not running");
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("poll wharfd") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "wharfd did not exit {when} within {STOP_TIMEOUT:?}; its log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            let deadline = Instant::now() + STOP_TIMEOUT;
            while child.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        super::cleanup::cleanup_runtime(self.dir.path(), &self.paths.state, &self.cgroup_parent);
        if std::thread::panicking() {
            eprintln!(
                "---- wharfd log ({}) ----\n{}---- end of wharfd log ----",
                self.paths.log.display(),
                self.log()
            );
        }
    }
}

/// Runs wharfd with `args` to completion (for starts that must fail), killing it if it
/// is still running after `timeout`.
pub fn run_wharfd(args: &[String], timeout: Duration) -> Output {
    let mut child = Command::new(wharfd_binary())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn wharfd");
    let deadline = Instant::now() + timeout;
    while child.try_wait().expect("poll wharfd").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().expect("collect wharfd output");
            panic!(
                "wharfd was expected to exit but still ran after {timeout:?}; stderr:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().expect("collect wharfd output")
}
