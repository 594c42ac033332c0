//! A real OCI registry (`/usr/bin/docker-registry`, distribution 2.8) for
//! tests, listening on a free 127.0.0.1 port with its own temp storage.
//!
//! ```ignore
//! let registry = Registry::start().await;
//! let image = images::busybox_image();
//! registry.push("test/busybox", "latest", &image).await;
//! // pull from registry.host() ("127.0.0.1:PORT") with plain HTTP
//! ```
//!
//! The registry process is stopped (SIGTERM, then SIGKILL) and reaped on
//! drop, also when the test panics. It additionally gets SIGKILL if the
//! thread that started it dies (PR_SET_PDEATHSIG), so a killed test binary
//! leaves no registry behind: start it from the test's own task.

use std::fmt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use reqwest::header::{HeaderMap, ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use reqwest::{Method, RequestBuilder, StatusCode};
use tempfile::TempDir;

use super::images::{sha256_digest, OciImage, OciIndex, MEDIA_TYPE_INDEX};

/// The registry binary (Debian package `docker-registry`).
pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";
/// htpasswd (Debian package `apache2-utils`).
pub const HTPASSWD_BIN: &str = "htpasswd";

/// Accept header listing every manifest type a puller asks for.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.v2+json, \
application/vnd.docker.distribution.manifest.list.v2+json";

const STARTUP_TIMEOUT: Duration = Duration::from_secs(15);
const BIND_ATTEMPTS: usize = 5;

/// User name and password for HTTP Basic auth. `Debug` hides the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Options for [`Registry::start_with`]. Build with the methods; new options
/// will be added as methods, so this stays source-compatible.
#[derive(Clone, Debug, Default)]
pub struct RegistryOptions {
    basic_auth: Option<Credentials>,
    log_level: Option<String>,
}

impl RegistryOptions {
    pub fn new() -> Self {
        Self::default()
    }

    /// Require HTTP Basic auth (htpasswd, bcrypt) for every request.
    pub fn basic_auth(mut self, username: &str, password: &str) -> Self {
        self.basic_auth = Some(Credentials {
            username: username.to_string(),
            password: password.to_string(),
        });
        self
    }

    /// distribution log level (`error`, `warn`, `info`, `debug`); default `info`.
    pub fn log_level(mut self, level: &str) -> Self {
        self.log_level = Some(level.to_string());
        self
    }
}

fn registry_bin() -> &'static Path {
    super::require_installed(REGISTRY_BIN, "docker-registry")
}

/// The `docker-registry serve CONFIG` command, logging to `log_path`, with the
/// `REGISTRY_*` variables (which would override the config file) removed, and killed if
/// the thread that starts it exits, so a killed test binary leaves no registry behind.
pub fn registry_command(bin: &Path, config_path: &Path, log_path: &Path) -> Command {
    let log = std::fs::File::create(log_path).expect("create registry log");
    let mut cmd = Command::new(bin);
    cmd.arg("serve")
        .arg(config_path)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup log fd"))
        .stderr(log);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("REGISTRY_") {
            cmd.env_remove(key);
        }
    }
    // SAFETY: only prctl(2) runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
        });
    }
    cmd
}

/// YAML single-quoted scalar.
fn yaml_str(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

fn write_htpasswd(path: &Path, creds: &Credentials) {
    // The password is passed on the command line (-b); fine on a test box.
    let out = Command::new(HTPASSWD_BIN)
        .arg("-Bbn")
        .arg(&creds.username)
        .arg(&creds.password)
        .stdin(Stdio::null())
        .output();
    let out = match out {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "`{HTPASSWD_BIN}` is missing: install the Debian package `apache2-utils` \
             (scripts/test installs it)"
        ),
        Err(e) => panic!("run {HTPASSWD_BIN}: {e}"),
    };
    // Never print stdout: it holds the password hash.
    assert!(
        out.status.success(),
        "{HTPASSWD_BIN} -Bbn failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(path, &out.stdout).expect("write htpasswd file");
}

/// The registry child process; stopped and reaped on drop (also while a
/// test panics, including during startup).
struct Process {
    child: Option<Child>,
}

impl Process {
    fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    fn has_exited(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => !matches!(child.try_wait(), Ok(None)),
            None => true,
        }
    }

    /// SIGTERM this PID only, wait up to 3 s, SIGKILL, reap. The PID cannot
    /// be reused before we reap it, so signalling it is safe.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(None) = child.try_wait() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                match child.try_wait() {
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                    _ => break,
                }
            }
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
            }
        }
        let _ = child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}

enum Startup {
    Ready,
    Exited,
    TimedOut,
}

async fn wait_ready(client: &reqwest::Client, port: u16, process: &mut Process) -> Startup {
    let url = format!("http://127.0.0.1:{port}/v2/");
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    while Instant::now() < deadline {
        if process.has_exited() {
            return Startup::Exited;
        }
        let resp = client
            .get(&url)
            .timeout(Duration::from_secs(2))
            .send()
            .await;
        if let Ok(resp) = resp {
            let ok = matches!(resp.status(), StatusCode::OK | StatusCode::UNAUTHORIZED)
                && resp
                    .headers()
                    .contains_key("docker-distribution-api-version");
            // Make sure it is our process answering, not a port thief.
            if ok && !process.has_exited() {
                return Startup::Ready;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Startup::TimedOut
}

/// A running registry; stopped on drop.
pub struct Registry {
    process: Process,
    port: u16,
    credentials: Option<Credentials>,
    client: reqwest::Client,
    log_path: PathBuf,
    /// Declared last: removed once the process is gone.
    dir: TempDir,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("url", &self.url())
            .field("pid", &self.process.pid())
            .field("credentials", &self.credentials)
            .field("dir", &self.dir.path())
            .finish()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.process.stop();
    }
}

fn read_log(path: &Path) -> String {
    match std::fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

impl Registry {
    /// Start an open (no auth) registry.
    pub async fn start() -> Registry {
        Self::start_with(RegistryOptions::new()).await
    }

    /// Start a registry requiring HTTP Basic auth with these credentials.
    /// [`Registry::push`] and the request helpers send them automatically.
    pub async fn start_with_basic_auth(username: &str, password: &str) -> Registry {
        Self::start_with(RegistryOptions::new().basic_auth(username, password)).await
    }

    pub async fn start_with(options: RegistryOptions) -> Registry {
        let bin = registry_bin();
        let dir = tempfile::Builder::new()
            .prefix("wharf-registry-")
            .tempdir()
            .expect("create registry temp dir");
        let storage = dir.path().join("storage");
        let log_path = dir.path().join("registry.log");
        let config_path = dir.path().join("config.yml");

        let auth_section = match &options.basic_auth {
            Some(creds) => {
                let htpasswd = dir.path().join("htpasswd");
                write_htpasswd(&htpasswd, creds);
                format!(
                    "auth:\n  htpasswd:\n    realm: wharf-test-registry\n    path: {}\n",
                    yaml_str(htpasswd.to_str().expect("utf-8 temp path"))
                )
            }
            None => String::new(),
        };
        let log_level = options.log_level.as_deref().unwrap_or("info");

        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(120))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .expect("build HTTP client");

        for attempt in 1..=BIND_ATTEMPTS {
            let _ = std::fs::remove_dir_all(&storage);
            std::fs::create_dir(&storage).expect("create storage dir");
            let port = free_port();
            let config = format!(
                "version: 0.1\n\
                 log:\n  level: {log_level}\n  formatter: text\n\
                 storage:\n  filesystem:\n    rootdirectory: {storage}\n  \
                 delete:\n    enabled: true\n  \
                 maintenance:\n    uploadpurging:\n      enabled: false\n\
                 http:\n  addr: 127.0.0.1:{port}\n  secret: wharf-test-secret-{port}\n\
                 {auth_section}",
                storage = yaml_str(storage.to_str().expect("utf-8 temp path")),
            );
            std::fs::write(&config_path, config).expect("write registry config");
            let mut cmd = registry_command(bin, &config_path, &log_path);
            cmd.current_dir(dir.path());
            let child = cmd
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
            let mut process = Process { child: Some(child) };
            match wait_ready(&client, port, &mut process).await {
                Startup::Ready => {
                    return Registry {
                        process,
                        port,
                        credentials: options.basic_auth,
                        client,
                        log_path,
                        dir,
                    };
                }
                Startup::Exited => {
                    process.stop();
                    let log = read_log(&log_path);
                    if log.contains("address already in use") && attempt < BIND_ATTEMPTS {
                        continue;
                    }
                    panic!(
                        "docker-registry exited during startup on 127.0.0.1:{port}; log:\n{log}"
                    );
                }
                Startup::TimedOut => {
                    process.stop();
                    panic!(
                        "docker-registry did not answer GET /v2/ on 127.0.0.1:{port} within \
                         {STARTUP_TIMEOUT:?}; log:\n{}",
                        read_log(&log_path)
                    );
                }
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// `127.0.0.1:PORT`, for image references (`127.0.0.1:PORT/test/busybox:latest`).
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// PID of the registry process.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub fn credentials(&self) -> Option<&Credentials> {
        self.credentials.as_ref()
    }

    /// The registry's log so far (stdout + stderr, access log included).
    pub fn log(&self) -> String {
        read_log(&self.log_path)
    }

    /// Root of the registry's filesystem storage.
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// A plain client (no proxy, no credentials attached).
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// Request to `path` (`/v2/...`) or an absolute URL, carrying the
    /// registry's credentials when it has some.
    pub fn request(&self, method: Method, path_or_url: &str) -> RequestBuilder {
        let req = self.request_anonymous(method, path_or_url);
        match &self.credentials {
            Some(c) => req.basic_auth(&c.username, Some(&c.password)),
            None => req,
        }
    }

    /// Like [`Registry::request`] but never sends credentials.
    pub fn request_anonymous(&self, method: Method, path_or_url: &str) -> RequestBuilder {
        let url = if path_or_url.starts_with("http://") {
            path_or_url.to_string()
        } else {
            format!("{}{}", self.url(), path_or_url)
        };
        self.client.request(method, url)
    }

    async fn send(&self, what: &str, req: RequestBuilder) -> reqwest::Response {
        req.send().await.unwrap_or_else(|e| {
            panic!(
                "{what}: request failed: {e}\nregistry log tail:\n{}",
                self.log_tail()
            )
        })
    }

    fn log_tail(&self) -> String {
        tail(&self.log(), 4000).to_string()
    }

    async fn expect_status(
        &self,
        what: &str,
        resp: reqwest::Response,
        want: StatusCode,
    ) -> (HeaderMap, Vec<u8>) {
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp
            .bytes()
            .await
            .unwrap_or_else(|e| panic!("{what}: read body: {e}"))
            .to_vec();
        if status != want {
            panic!(
                "{what}: HTTP {status} (expected {want}): {}\nregistry log tail:\n{}",
                String::from_utf8_lossy(tail_bytes(&body, 2000)),
                self.log_tail()
            );
        }
        (headers, body)
    }

    /// Does the repository have this blob (HEAD)?
    pub async fn blob_exists(&self, repo: &str, digest: &str) -> bool {
        let what = format!("HEAD blob {repo}@{digest}");
        let resp = self
            .send(
                &what,
                self.request(Method::HEAD, &format!("/v2/{repo}/blobs/{digest}")),
            )
            .await;
        match resp.status() {
            StatusCode::OK => true,
            StatusCode::NOT_FOUND => false,
            s => panic!("{what}: unexpected HTTP {s}"),
        }
    }

    /// Monolithic upload: POST /blobs/uploads/, then PUT <location>?digest=.
    pub async fn push_blob(&self, repo: &str, digest: &str, bytes: &[u8]) {
        assert_eq!(
            sha256_digest(bytes),
            digest,
            "push_blob: bytes do not match {digest}"
        );
        let what = format!("start upload of {digest} to {repo}");
        let resp = self
            .send(
                &what,
                self.request(Method::POST, &format!("/v2/{repo}/blobs/uploads/")),
            )
            .await;
        let (headers, _) = self.expect_status(&what, resp, StatusCode::ACCEPTED).await;
        let location = headers
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("{what}: no Location header"));
        let mut url = reqwest::Url::parse(&self.url())
            .and_then(|base| base.join(location))
            .unwrap_or_else(|e| panic!("{what}: bad Location {location:?}: {e}"));
        url.query_pairs_mut().append_pair("digest", digest);

        let what = format!("upload {digest} to {repo}");
        let req = self
            .request(Method::PUT, url.as_str())
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_LENGTH, bytes.len())
            .body(bytes.to_vec());
        let resp = self.send(&what, req).await;
        let (headers, _) = self.expect_status(&what, resp, StatusCode::CREATED).await;
        let got = headers
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert_eq!(got, digest, "{what}: registry computed another digest");
    }

    /// PUT a manifest (or index) under `reference` (tag or digest). Returns
    /// the Docker-Content-Digest, asserted equal to the sha256 of `bytes`.
    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> String {
        let what = format!("PUT manifest {repo}:{reference}");
        let req = self
            .request(Method::PUT, &format!("/v2/{repo}/manifests/{reference}"))
            .header(CONTENT_TYPE, media_type)
            .body(bytes.to_vec());
        let resp = self.send(&what, req).await;
        let (headers, _) = self.expect_status(&what, resp, StatusCode::CREATED).await;
        let digest = headers
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("{what}: no Docker-Content-Digest header"))
            .to_string();
        assert_eq!(digest, sha256_digest(bytes), "{what}: digest mismatch");
        digest
    }

    /// Upload the image's blobs (skipping those already present) and its
    /// manifest as `repo:reference` (a tag, or the manifest digest).
    pub async fn push(&self, repo: &str, reference: &str, image: &OciImage) {
        for digest in image.blob_digests() {
            if !self.blob_exists(repo, &digest).await {
                self.push_blob(repo, &digest, &image.read_blob(&digest))
                    .await;
            }
        }
        let digest = self
            .put_manifest(repo, reference, &image.manifest_media_type, &image.manifest)
            .await;
        assert_eq!(digest, image.manifest_digest, "pushed manifest digest");
    }

    /// Push every image by digest, then the index as `repo:reference`.
    /// Returns the index digest.
    pub async fn push_index(
        &self,
        repo: &str,
        reference: &str,
        images: &[&OciImage],
        index: &OciIndex,
    ) -> String {
        for image in images {
            self.push(repo, &image.manifest_digest, image).await;
        }
        let digest = self
            .put_manifest(repo, reference, MEDIA_TYPE_INDEX, &index.bytes)
            .await;
        assert_eq!(digest, index.digest, "pushed index digest");
        digest
    }

    /// GET a manifest with [`MANIFEST_ACCEPT`]; returns (body, Content-Type,
    /// Docker-Content-Digest). Panics unless 200.
    pub async fn get_manifest(&self, repo: &str, reference: &str) -> (Vec<u8>, String, String) {
        let what = format!("GET manifest {repo}:{reference}");
        let req = self
            .request(Method::GET, &format!("/v2/{repo}/manifests/{reference}"))
            .header(ACCEPT, MANIFEST_ACCEPT);
        let resp = self.send(&what, req).await;
        let (headers, body) = self.expect_status(&what, resp, StatusCode::OK).await;
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        (
            body,
            header("content-type"),
            header("docker-content-digest"),
        )
    }

    /// GET a blob; panics unless 200.
    pub async fn get_blob(&self, repo: &str, digest: &str) -> Vec<u8> {
        let what = format!("GET blob {repo}@{digest}");
        let resp = self
            .send(
                &what,
                self.request(Method::GET, &format!("/v2/{repo}/blobs/{digest}")),
            )
            .await;
        self.expect_status(&what, resp, StatusCode::OK).await.1
    }

    /// DELETE a manifest by digest (the registry has deletes enabled).
    pub async fn delete_manifest(&self, repo: &str, digest: &str) {
        let what = format!("DELETE manifest {repo}@{digest}");
        let resp = self
            .send(
                &what,
                self.request(Method::DELETE, &format!("/v2/{repo}/manifests/{digest}")),
            )
            .await;
        self.expect_status(&what, resp, StatusCode::ACCEPTED).await;
    }

    /// Tags of a repository.
    pub async fn tags(&self, repo: &str) -> Vec<String> {
        let what = format!("GET tags of {repo}");
        let resp = self
            .send(
                &what,
                self.request(Method::GET, &format!("/v2/{repo}/tags/list")),
            )
            .await;
        let (_, body) = self.expect_status(&what, resp, StatusCode::OK).await;
        let v: serde_json::Value = serde_json::from_slice(&body).expect("tags JSON");
        let mut tags: Vec<String> = v["tags"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|t| t.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        tags.sort();
        tags
    }
}

fn tail_bytes(b: &[u8], max: usize) -> &[u8] {
    &b[b.len().saturating_sub(max)..]
}
