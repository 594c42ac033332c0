//! The two Compose clients of the suite, pointed at a test's wharfd by `DOCKER_HOST`:
//! Compose v2 (the Go `docker compose` of `github.com/docker/compose/v5`, built by
//! tests/go/build.sh into target/go-tools/docker-compose) and Debian's `docker-compose`
//! 1.29 (Python, over docker-py). A project lives in a temporary directory; a real pty
//! runs the interactive commands (`up` attached, `exec` with a TTY).

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::docker::{DockerEnv, Run};

/// Which Compose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    /// Compose v2 (Go), built from the module pinned in tests/compose/go.mod.
    V2,
    /// Debian's docker-compose 1.29 (Python).
    V1,
}

impl Client {
    fn program(self) -> PathBuf {
        match self {
            Client::V2 => super::go_tools::go_tool("docker-compose"),
            Client::V1 => {
                super::require_installed("/usr/bin/docker-compose", "docker-compose").into()
            }
        }
    }

    /// The separator of container names: `proj-web-1` (v2) or `proj_web_1` (v1).
    pub fn separator(self) -> char {
        match self {
            Client::V2 => '-',
            Client::V1 => '_',
        }
    }
}

/// A Compose project in a temporary directory, run by one client against one wharfd.
pub struct Project<'a> {
    pub docker: &'a DockerEnv,
    pub client: Client,
    pub name: String,
    dir: tempfile::TempDir,
}

impl<'a> Project<'a> {
    /// A project named `name` whose `compose.yaml` is `yaml`.
    pub fn new(docker: &'a DockerEnv, client: Client, name: &str, yaml: &str) -> Project<'a> {
        let dir = tempfile::Builder::new()
            .prefix("wharf-compose-")
            .tempdir()
            .expect("project dir");
        let project = Project {
            docker,
            client,
            name: name.to_string(),
            dir,
        };
        project.write("compose.yaml", yaml);
        project
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `content` at `path` in the project (directories made).
    pub fn write(&self, path: &str, content: &str) {
        let path = self.dir.path().join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("project subdir");
        }
        std::fs::write(&path, content).expect("write a project file");
    }

    /// The container name of replica `n` of `service`.
    pub fn container(&self, service: &str, n: u32) -> String {
        let sep = self.client.separator();
        format!("{}{sep}{service}{sep}{n}", self.name)
    }

    /// The client's command for `args`, in the project dir, on this wharfd.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(self.client.program());
        command
            .args(["-p", &self.name])
            .args(args)
            .current_dir(self.dir.path())
            .env(
                "DOCKER_HOST",
                format!("unix://{}", self.docker.socket().display()),
            )
            .env("DOCKER_CONFIG", self.docker.config_dir())
            // The classic builder (POST /build): wharfd has no BuildKit session API.
            .env("DOCKER_BUILDKIT", "0")
            .env("COMPOSE_BAKE", "false")
            .env_remove("DOCKER_CONTEXT")
            .env_remove("DOCKER_TLS_VERIFY")
            .env_remove("COMPOSE_FILE")
            .env_remove("COMPOSE_PROJECT_NAME");
        command
    }

    /// Runs the client with `args` (no input).
    pub fn run(&self, args: &[&str]) -> Run {
        let output = self
            .command(args)
            .stdin(Stdio::null())
            .output()
            .expect("run the Compose client");
        Run {
            status: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Runs the client and asserts it succeeded.
    pub fn ok(&self, args: &[&str]) -> Run {
        let run = self.run(args);
        assert_eq!(
            run.status,
            0,
            "{:?} compose {args:?} failed:\n{}{}\n--- wharfd log (tail):\n{}",
            self.client,
            run.stdout,
            run.stderr,
            tail(&self.docker.env.daemon.log(), 60)
        );
        run
    }

    /// Runs the client and asserts it failed; returns stdout and stderr together.
    pub fn fails(&self, args: &[&str]) -> String {
        let run = self.run(args);
        assert_ne!(
            run.status, 0,
            "{:?} compose {args:?} succeeded:\n{}{}",
            self.client, run.stdout, run.stderr
        );
        format!("{}{}", run.stdout, run.stderr)
    }

    /// The client in the background, its output collected (for `events`, `logs -f`).
    pub fn spawn(&self, args: &[&str]) -> Background {
        let mut child = self
            .command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the Compose client");
        let output = Arc::new(Mutex::new(Vec::new()));
        let readers = [
            collect(
                child
                    .stdout
                    .take()
                    .map(|s| Box::new(s) as Box<dyn Read + Send>),
                &output,
            ),
            collect(
                child
                    .stderr
                    .take()
                    .map(|s| Box::new(s) as Box<dyn Read + Send>),
                &output,
            ),
        ];
        Background {
            child,
            output,
            _readers: readers,
        }
    }

    /// The client on a new pty (its controlling terminal, 120x30).
    pub fn in_pty(&self, args: &[&str]) -> Pty {
        Pty::spawn(self.command(args))
    }

    /// The IDs of the project's containers (running or not), by its label.
    pub fn container_ids(&self) -> Vec<String> {
        let filter = format!("label=com.docker.compose.project={}", self.name);
        let listed = self
            .docker
            .ok(&["ps", "-aq", "--no-trunc", "--filter", &filter]);
        let mut ids: Vec<String> = listed.lines().map(str::to_string).collect();
        ids.sort();
        ids
    }

    /// What the project left on wharfd: containers, networks, volumes with its label.
    pub fn leftovers(&self) -> Vec<String> {
        let filter = format!("label=com.docker.compose.project={}", self.name);
        let mut left = Vec::new();
        for kind in ["container", "network", "volume"] {
            let args: Vec<&str> = match kind {
                "container" => vec!["ps", "-a", "--format", "{{.Names}}", "--filter", &filter],
                "network" => vec![
                    "network",
                    "ls",
                    "--format",
                    "{{.Name}}",
                    "--filter",
                    &filter,
                ],
                _ => vec!["volume", "ls", "--format", "{{.Name}}", "--filter", &filter],
            };
            left.extend(
                self.docker
                    .ok(&args)
                    .lines()
                    .filter(|l| !l.is_empty())
                    .map(|l| format!("{kind} {l}")),
            );
        }
        left
    }
}

impl Drop for Project<'_> {
    /// Whatever a failed test left: `down -v` by the same client, then by label.
    fn drop(&mut self) {
        if self.leftovers().is_empty() {
            return;
        }
        let _ = self.run(&["down", "-v", "-t", "1", "--remove-orphans"]);
        let filter = format!("label=com.docker.compose.project={}", self.name);
        for id in self
            .docker
            .run(&["ps", "-aq", "--filter", &filter])
            .stdout
            .lines()
        {
            self.docker.run(&["rm", "-f", "-v", id]);
        }
        for kind in ["network", "volume"] {
            for name in self
                .docker
                .run(&[kind, "ls", "-q", "--filter", &filter])
                .stdout
                .lines()
            {
                self.docker.run(&[kind, "rm", name]);
            }
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn collect(
    source: Option<Box<dyn Read + Send>>,
    into: &Arc<Mutex<Vec<u8>>>,
) -> Option<std::thread::JoinHandle<()>> {
    let mut source = source?;
    let into = into.clone();
    Some(std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = source.read(&mut buf) {
            if n == 0 {
                break;
            }
            into.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    }))
}

/// Output seen so far in `buffer`, as text.
fn seen(buffer: &Arc<Mutex<Vec<u8>>>) -> String {
    String::from_utf8_lossy(&buffer.lock().unwrap()).into_owned()
}

/// Calls `check` until it gives a value; panics with `failure()` after `timeout`.
fn poll_until<T>(
    timeout: Duration,
    mut check: impl FnMut() -> Option<T>,
    failure: impl Fn() -> String,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "{}", failure());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until `buffer` holds `needle`; panics with what it holds after `timeout`.
fn wait_in(buffer: &Arc<Mutex<Vec<u8>>>, needle: &str, timeout: Duration, what: &str) -> String {
    poll_until(
        timeout,
        || Some(seen(buffer)).filter(|text| text.contains(needle)),
        || {
            format!(
                "{needle:?} never appeared in the output of {what}:\n{}",
                seen(buffer)
            )
        },
    )
}

/// A client running in the background; killed on drop if still running.
pub struct Background {
    child: Child,
    output: Arc<Mutex<Vec<u8>>>,
    _readers: [Option<std::thread::JoinHandle<()>>; 2],
}

impl Background {
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> String {
        wait_in(&self.output, needle, timeout, "a background Compose client")
    }

    pub fn output(&self) -> String {
        seen(&self.output)
    }

    /// Waits for it to exit by itself.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        wait_child(&mut self.child, timeout)
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_child(child: &mut Child, timeout: Duration) -> ExitStatus {
    poll_until(
        timeout,
        || child.try_wait().expect("poll a child"),
        || format!("a Compose client did not exit within {timeout:?}"),
    )
}

/// A command on a pty of its own, as in a terminal: its session's controlling
/// terminal, so Ctrl-C typed there is a SIGINT to it.
pub struct Pty {
    child: Child,
    master: std::fs::File,
    output: Arc<Mutex<Vec<u8>>>,
    _reader: Option<std::thread::JoinHandle<()>>,
}

impl Pty {
    fn spawn(mut command: Command) -> Pty {
        let size = nix::pty::Winsize {
            ws_row: 30,
            ws_col: 120,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = nix::pty::openpty(Some(&size), None).expect("openpty");
        let slave: OwnedFd = pty.slave;
        let stdio = |fd: &OwnedFd| Stdio::from(fd.try_clone().expect("dup the pty"));
        command
            .stdin(stdio(&slave))
            .stdout(stdio(&slave))
            .stderr(stdio(&slave))
            .env("TERM", "xterm");
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            command.pre_exec(|| {
                nix::unistd::setsid().map_err(std::io::Error::from)?;
                if nix::libc::ioctl(0, nix::libc::TIOCSCTTY, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().expect("spawn on a pty");
        drop(slave);
        let master = std::fs::File::from(pty.master);
        let output = Arc::new(Mutex::new(Vec::new()));
        // The reader ends at EIO, once the last process holding the pty's other side
        // is gone.
        let reader = collect(
            Some(Box::new(master.try_clone().expect("dup the pty master"))),
            &output,
        );
        Pty {
            child,
            master,
            output,
            _reader: reader,
        }
    }

    /// Types `keys` (e.g. `"\x03"`, Ctrl-C).
    pub fn send(&mut self, keys: &str) {
        self.master
            .write_all(keys.as_bytes())
            .expect("write to the pty");
    }

    pub fn wait_for(&self, needle: &str, timeout: Duration) -> String {
        wait_in(&self.output, needle, timeout, "a Compose client on a pty")
    }

    pub fn output(&self) -> String {
        seen(&self.output)
    }

    /// Waits for it to exit; its status and everything it printed.
    pub fn wait(&mut self, timeout: Duration) -> (ExitStatus, String) {
        let status = wait_child(&mut self.child, timeout);
        // What it wrote last may still be in the reader.
        std::thread::sleep(Duration::from_millis(200));
        (status, self.output())
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
