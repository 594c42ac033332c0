//! The Docker API through clients we did not write: the real `docker` CLI (and raw
//! HTTP for what the CLI hides: statuses and headers), against a wharfd whose Docker
//! socket is in its state dir, with the busybox test image in a local registry.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use super::pods::PodEnv;

/// The docker CLI: `/usr/local/bin/docker` (28) or Debian docker.io's.
pub fn docker_cli() -> &'static str {
    for path in ["/usr/local/bin/docker", "/usr/bin/docker"] {
        if Path::new(path).is_file() {
            return path;
        }
    }
    panic!(
        "the docker CLI is missing: install the Debian package docker.io (./scripts/test does), \
         or put a docker CLI at /usr/local/bin/docker"
    )
}

/// A wharfd (with a CRI pod environment beside it) and a docker CLI pointed at it.
pub struct DockerEnv {
    pub env: PodEnv,
    /// The busybox test image's reference in the local registry.
    pub image: String,
    /// DOCKER_CONFIG: the CLI never reads the host's ~/.docker.
    config: tempfile::TempDir,
}

/// What a CLI run printed.
#[derive(Debug)]
pub struct Run {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(output: Output) -> Run {
        Run {
            status: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

impl DockerEnv {
    pub async fn start() -> DockerEnv {
        DockerEnv::start_with_config("").await
    }

    /// With `config` (TOML) for the daemon.
    pub async fn start_with_config(config: &str) -> DockerEnv {
        let env = PodEnv::start_with_config(config).await;
        let image = env.image.clone();
        let config = tempfile::Builder::new()
            .prefix("wharf-docker-config-")
            .tempdir()
            .expect("DOCKER_CONFIG dir");
        DockerEnv { env, image, config }
    }

    /// As `start`, with the test image pulled through the Docker API (`docker pull`).
    pub async fn start_pulled() -> DockerEnv {
        let docker = DockerEnv::start().await;
        let image = docker.image.clone();
        docker.ok(&["pull", "-q", &image]);
        docker
    }

    /// DOCKER_CONFIG of this environment's CLI runs.
    pub fn config_dir(&self) -> &Path {
        self.config.path()
    }

    pub fn socket(&self) -> PathBuf {
        self.env.daemon.paths.state.join("docker.sock")
    }

    /// Runs `docker args...` against this wharfd.
    pub fn run(&self, args: &[&str]) -> Run {
        let output = Command::new(docker_cli())
            .args(args)
            .env("DOCKER_HOST", format!("unix://{}", self.socket().display()))
            .env("DOCKER_CONFIG", self.config.path())
            .env_remove("DOCKER_CONTEXT")
            .env_remove("DOCKER_TLS_VERIFY")
            // No input: a CLI that prompts (for a login) fails instead of waiting.
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run the docker CLI");
        Run::from(output)
    }

    /// Runs the shell `script` (`sh -c`) with this environment's DOCKER_HOST and
    /// DOCKER_CONFIG, and `$DOCKER` the CLI's path: for pipes (`"$DOCKER" save x |
    /// "$DOCKER" load`).
    pub fn shell(&self, script: &str) -> Run {
        let output = Command::new("sh")
            .arg("-c")
            .arg(script)
            .env("DOCKER", docker_cli())
            .env("DOCKER_HOST", format!("unix://{}", self.socket().display()))
            .env("DOCKER_CONFIG", self.config.path())
            .env_remove("DOCKER_CONTEXT")
            .env_remove("DOCKER_TLS_VERIFY")
            .output()
            .expect("run sh");
        Run::from(output)
    }

    /// Runs `docker args...` and asserts it succeeded; returns its stdout, trimmed.
    pub fn ok(&self, args: &[&str]) -> String {
        let run = self.run(args);
        assert_eq!(
            run.status,
            0,
            "docker {args:?} failed: {}{}\n--- wharfd log:\n{}",
            run.stdout,
            run.stderr,
            self.env.daemon.log()
        );
        run.stdout.trim().to_string()
    }

    /// Runs `docker args...`, asserts it failed, and returns its stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let run = self.run(args);
        assert_ne!(run.status, 0, "docker {args:?} succeeded: {}", run.stdout);
        run.stderr
    }

    /// One raw HTTP/1.1 request on the Docker socket: (status, headers, body).
    pub fn http(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String, String) {
        raw_http(&self.socket(), method, path, body)
    }
}

/// A raw HTTP/1.1 request over a UNIX socket (`Connection: close`).
pub fn raw_http(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, String, String) {
    raw_http_bytes(
        socket,
        method,
        path,
        "application/json",
        body.unwrap_or("").as_bytes(),
    )
}

/// A raw HTTP/1.1 request with a binary body.
pub fn raw_http_bytes(
    socket: &Path,
    method: &str,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> (u16, String, String) {
    let mut stream = UnixStream::connect(socket).expect("connect to the Docker socket");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("read timeout");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\
         Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(request.as_bytes()).expect("send");
    stream.write_all(body).expect("send the body");
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .expect("read the response");
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    (status, head.to_string(), body)
}

fn dechunk(mut text: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = text.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        text = rest[size..].trim_start_matches("\r\n");
    }
    out
}
