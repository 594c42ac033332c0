//! `POST /build` (the classic builder, which the docker CLI uses without the buildx
//! plugin or with `DOCKER_BUILDKIT=0`, and docker-py's `images.build`), and
//! `POST /build/prune`.
//!
//! Before the answer starts, the context (a tar stream, plain or compressed) is
//! extracted to disk as it arrives, `.dockerignore` applied, and the Dockerfile read
//! and parsed: a bad context or Dockerfile is an HTTP 400 naming what is wrong, as
//! dockerd answers. Then the steps run ([`steps`]) and the answer streams dockerd's
//! messages: `{"stream":"Step 1/3 : FROM busybox\n"}`, ` ---> Running in <id>`, RUN's
//! output (stderr wrapped in `ESC[91m` ... `ESC[0m` as dockerd's `NewStderrWriter`),
//! ` ---> Using cache`, ` ---> <id>`, `{"aux":{"ID":"sha256:..."}}` after each stage,
//! `Successfully built <id>` and `Successfully tagged <name>`; a failure is the last
//! message, `{"errorDetail":{"code":N,"message":...},"error":...}` (a RUN's exit code
//! is the code, which the docker CLI exits with).
//!
//! The build's files live in `<root>/docker/builds/<id>/` and are removed when it
//! ends; what a killed daemon leaves there is removed at the next start
//! ([`clean_leftovers`]).

mod cache;
mod copy;
mod run;
mod steps;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use base64::Engine as _;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::error::ApiError;
use super::images::{body_reader, familiar, finish_body, AuthConfig};
use super::{DockerServer, NAMESPACE};
use crate::image::build::context::ContextError;
use crate::image::build::dockerfile::{self, Dockerfile};
use crate::image::build::ignore::IgnoreMatcher;
use crate::image::build::index::ContextIndex;
use crate::image::registry::{Credentials, ImageReference};

/// What a build request asks for (the query of `POST /build`).
#[derive(Debug, Default, Clone)]
pub(super) struct BuildOptions {
    pub tags: Vec<String>,
    pub dockerfile: String,
    pub quiet: bool,
    pub no_cache: bool,
    pub pull: bool,
    pub remove: bool,
    pub force_remove: bool,
    /// `buildargs`: a value of `None` takes the variable from nowhere (dockerd reads
    /// the client's environment on the client side; null means unset).
    pub build_args: BTreeMap<String, Option<String>>,
    pub labels: BTreeMap<String, String>,
    pub target: String,
    pub network_mode: String,
    pub extra_hosts: Vec<String>,
    pub shm_size: i64,
    pub memory: i64,
    pub memory_swap: i64,
    pub cpu_shares: i64,
    pub cpuset_cpus: String,
    pub cpu_period: i64,
    pub cpu_quota: i64,
    /// `cachefrom`: images whose steps a build may take when its own cache has none
    /// (an image pulled from a registry carries its steps in its history).
    pub cache_from: Vec<String>,
    /// Registry credentials by server (`X-Registry-Config`), for the pulls of FROM.
    pub auth: HashMap<String, Credentials>,
}

fn truthy(value: &str) -> bool {
    matches!(value.to_ascii_lowercase().as_str(), "1" | "true" | "yes")
}

fn number(key: &str, value: &str) -> Result<i64, ApiError> {
    if value.is_empty() {
        return Ok(0);
    }
    value.parse().map_err(|_| {
        ApiError::bad_request(format!(
            "invalid {key} value {:?}: a number is needed",
            crate::image::bounded(value, crate::image::MAX_ECHO)
        ))
    })
}

fn json_map<T: serde::de::DeserializeOwned + Default>(
    key: &str,
    value: &str,
) -> Result<T, ApiError> {
    if value.is_empty() {
        return Ok(T::default());
    }
    serde_json::from_str(value)
        .map_err(|err| ApiError::bad_request(format!("invalid {key}: {err}")))
}

impl BuildOptions {
    /// The query as dockerd reads it; what cannot be done is refused before anything
    /// is read (`squash`, a remote context).
    pub(super) fn parse(
        params: &[(String, String)],
        headers: &HeaderMap,
    ) -> Result<Self, ApiError> {
        let mut options = BuildOptions {
            remove: true,
            dockerfile: "Dockerfile".to_string(),
            ..Default::default()
        };
        for (key, value) in params {
            match key.as_str() {
                "t" if !value.is_empty() => options.tags.push(checked_tag(value)?),
                "dockerfile" if !value.is_empty() => options.dockerfile = value.clone(),
                "q" => options.quiet = truthy(value),
                "nocache" => options.no_cache = truthy(value),
                "pull" => options.pull = truthy(value),
                "rm" => options.remove = value.is_empty() || truthy(value),
                "forcerm" => options.force_remove = truthy(value),
                "buildargs" => options.build_args = json_map(key, value)?,
                "labels" => options.labels = json_map(key, value)?,
                "target" => options.target = value.clone(),
                "networkmode" => options.network_mode = value.clone(),
                "extrahosts" => {
                    options.extra_hosts.extend(
                        value
                            .split(',')
                            .filter(|h| !h.is_empty())
                            .map(str::to_string),
                    );
                }
                "shmsize" => options.shm_size = number(key, value)?,
                "memory" => options.memory = number(key, value)?,
                "memswap" => options.memory_swap = number(key, value)?,
                "cpushares" => options.cpu_shares = number(key, value)?,
                "cpusetcpus" => options.cpuset_cpus = value.clone(),
                "cpuperiod" => options.cpu_period = number(key, value)?,
                "cpuquota" => options.cpu_quota = number(key, value)?,
                "squash" if truthy(value) => {
                    return Err(ApiError::bad_request(
                        "squash is not supported by this daemon's builder: build without \
                         --squash (a multi-stage build copying into a scratch stage makes a \
                         one-layer image)",
                    ))
                }
                "remote" if !value.is_empty() => {
                    return Err(ApiError::bad_request(format!(
                        "remote build contexts ({}) are not supported: this daemon does not \
                         fetch from the network; send the context as a tar stream",
                        crate::image::bounded(value, crate::image::MAX_ECHO)
                    )))
                }
                "cachefrom" => options.cache_from = json_map(key, value)?,
                "platform" if !value.is_empty() => {
                    check_platform(value).map_err(ApiError::bad_request)?;
                }
                _ => {}
            }
        }
        if let Some(value) = headers.get("x-registry-config") {
            options.auth = registry_config(value.as_bytes())?;
        }
        Ok(options)
    }
}

/// A platform a build may target: this machine's (the classic builder runs each
/// RUN here, without emulation).
pub(super) fn check_platform(value: &str) -> Result<(), String> {
    let platform = crate::image::platform::Platform::parse(value).map_err(|err| err.to_string())?;
    if platform.runs_here() {
        return Ok(());
    }
    Err(format!(
        "the platform {value} is not this machine's ({}): wharf builds images for the \
         platform it runs on",
        crate::image::platform::Platform::host()
    ))
}

/// A `t` value: a valid reference naming a tag (`name` alone is `name:latest`).
fn checked_tag(value: &str) -> Result<String, ApiError> {
    let parsed = ImageReference::parse(value).map_err(|err| {
        ApiError::bad_request(format!(
            "invalid reference format: {:?}: {err}",
            crate::image::bounded(value, crate::image::MAX_ECHO)
        ))
    })?;
    if parsed.digest().is_some() {
        return Err(ApiError::bad_request(format!(
            "invalid tag {:?}: a build tags its image, it cannot name a digest",
            crate::image::bounded(value, crate::image::MAX_ECHO)
        )));
    }
    parsed.repo_tag().ok_or_else(|| {
        ApiError::bad_request(format!(
            "invalid reference format: {:?}",
            crate::image::bounded(value, crate::image::MAX_ECHO)
        ))
    })
}

/// `X-Registry-Config`: base64 JSON, `{"server": {"username", "password", "auth",
/// "identitytoken"}}`. Never echoed: it holds secrets.
fn registry_config(value: &[u8]) -> Result<HashMap<String, Credentials>, ApiError> {
    let text = std::str::from_utf8(value)
        .map_err(|_| ApiError::bad_request("X-Registry-Config: not text"))?;
    if text.is_empty() {
        return Ok(HashMap::new());
    }
    let bytes = base64::engine::general_purpose::URL_SAFE
        .decode(text)
        .or_else(|_| base64::engine::general_purpose::STANDARD.decode(text))
        .map_err(|_| ApiError::bad_request("X-Registry-Config: invalid base64"))?;
    let configs: HashMap<String, AuthConfig> = serde_json::from_slice(&bytes)
        .map_err(|_| ApiError::bad_request("X-Registry-Config: invalid JSON"))?;
    let mut out = HashMap::new();
    for (server, auth) in configs {
        let credentials = match auth.credentials() {
            Some(Credentials::Anonymous) => continue,
            Some(credentials) => credentials,
            None => {
                return Err(ApiError::bad_request(format!(
                    "X-Registry-Config: invalid auth field for {}",
                    crate::image::bounded(&server, crate::image::MAX_ECHO)
                )))
            }
        };
        let host = server
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap_or_default()
            .to_string();
        let host = if host == "index.docker.io" {
            "docker.io".to_string()
        } else {
            host
        };
        out.insert(host, credentials);
    }
    Ok(out)
}

/// The directory of one build's files.
pub(super) fn builds_dir(server: &DockerServer) -> PathBuf {
    server.config.root.join("docker").join("builds")
}

/// The file of a build's directory that names the containers of its RUN steps, a
/// line each, written before each is made.
const CONTAINERS_FILE: &str = "containers";

/// Removes what builds of an earlier run of the daemon left (a kill -9 mid-build):
/// mounts first, then the files. Returns the names of the RUN containers they made,
/// for the caller to remove (`remove_build_containers`).
pub(super) fn clean_leftovers(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut containers = Vec::new();
    for build in entries.flatten() {
        if let Ok(names) = std::fs::read_to_string(build.path().join(CONTAINERS_FILE)) {
            containers.extend(names.lines().filter(|n| !n.is_empty()).map(str::to_string));
        }
        if let Ok(steps) = std::fs::read_dir(build.path()) {
            for step in steps.flatten() {
                if !step.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let rootfs = step.path().join("rootfs");
                if let Err(err) = crate::image::snapshot::unmount_rootfs(&rootfs) {
                    tracing::warn!("unmounting a build's leftover {}: {err}", rootfs.display());
                }
            }
        }
        if let Err(err) = std::fs::remove_dir_all(build.path()) {
            tracing::warn!(
                "removing a build's leftovers {}: {err}",
                build.path().display()
            );
        }
    }
    containers
}

/// Removes the RUN containers of builds a crash cut (named by `clean_leftovers`),
/// those that were made.
pub(super) async fn remove_build_containers(server: &DockerServer, names: Vec<String>) {
    for name in names {
        let Some(record) = super::containers::name_taken(server, &name)
            .and_then(|id| server.runtime.find_container(NAMESPACE, &id))
        else {
            continue;
        };
        tracing::warn!(container = %record.id, name = %name, "removing the container of a build step a crash cut");
        if let Err(err) = super::containers::remove_container(server, &record, true).await {
            tracing::error!(container = %record.id, "removing a cut build's container: {}", err.message);
        }
    }
}

/// One build's directory, removed (mounts first) when dropped.
pub(super) struct BuildDir {
    pub path: PathBuf,
}

impl BuildDir {
    /// Notes (synced) that this build makes a container named `name`.
    pub(super) async fn record_container(&self, name: &str) -> Result<(), BuildError> {
        let file = self.path.join(CONTAINERS_FILE);
        let line = format!("{name}\n");
        tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let mut out = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&file)?;
            out.write_all(line.as_bytes())?;
            out.sync_all()
        })
        .await
        .map_err(|err| BuildError::new(format!("recording a build container: {err}")))?
        .map_err(|err| BuildError::new(format!("recording a build container's name: {err}")))
    }
}

impl Drop for BuildDir {
    fn drop(&mut self) {
        let path = self.path.clone();
        let cleanup = move || {
            clean_leftovers_of(&path);
        };
        // Dropped inside the runtime most of the time: do not block a worker.
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn_blocking(cleanup);
            }
            Err(_) => cleanup(),
        }
    }
}

fn clean_leftovers_of(path: &Path) {
    if let Ok(steps) = std::fs::read_dir(path) {
        for step in steps
            .flatten()
            .filter(|s| s.file_type().is_ok_and(|t| t.is_dir()))
        {
            let _ = crate::image::snapshot::unmount_rootfs(&step.path().join("rootfs"));
        }
    }
    if let Err(err) = std::fs::remove_dir_all(path) {
        if err.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!("removing the build directory {}: {err}", path.display());
        }
    }
}

/// The container of the RUN under way, if any (removed when the build is cancelled).
pub(super) type RunningContainer = Arc<std::sync::Mutex<Option<String>>>;

/// The messages of a build's answer.
#[derive(Clone)]
pub(super) struct Output {
    tx: mpsc::Sender<Bytes>,
    quiet: bool,
}

impl Output {
    async fn send(&self, value: Value) {
        // A client gone does not stop the build (dockerd's classic builder goes on
        // too, until the request's context is cancelled).
        let _ = self.tx.send(Bytes::from(format!("{value}\r\n"))).await;
    }

    /// A line (or part of one) of the builder's own output, or a RUN's stdout.
    pub(super) async fn stream(&self, text: impl Into<String>) {
        if !self.quiet {
            self.send(json!({ "stream": text.into() })).await;
        }
    }

    /// A RUN's stderr, as dockerd's `NewStderrWriter` wraps it.
    pub(super) async fn stderr(&self, data: &[u8]) {
        if !self.quiet {
            let text = String::from_utf8_lossy(data);
            self.send(json!({ "stream": format!("\u{1b}[91m{text}\u{1b}[0m") }))
                .await;
        }
    }

    /// Resolves when the client has gone away (the answer's body was dropped).
    async fn closed(&self) {
        self.tx.closed().await
    }

    pub(super) async fn aux_id(&self, id: &str) {
        self.send(json!({ "aux": { "ID": id } })).await;
    }

    async fn error(&self, message: &str, code: Option<i32>) {
        let detail = match code {
            Some(code) => json!({ "code": code, "message": message }),
            None => json!({ "message": message }),
        };
        self.send(json!({ "errorDetail": detail, "error": message }))
            .await;
    }
}

/// Why a build stopped.
#[derive(Debug)]
pub(super) struct BuildError {
    pub message: String,
    /// A failed RUN's exit code.
    pub code: Option<i32>,
}

impl BuildError {
    pub(super) fn new(message: impl Into<String>) -> BuildError {
        BuildError {
            message: message.into(),
            code: None,
        }
    }
}

impl From<ApiError> for BuildError {
    fn from(err: ApiError) -> BuildError {
        BuildError::new(err.message)
    }
}

impl From<ContextError> for BuildError {
    fn from(err: ContextError) -> BuildError {
        BuildError::new(err.to_string())
    }
}

impl From<crate::image::ImageError> for BuildError {
    fn from(err: crate::image::ImageError) -> BuildError {
        BuildError::new(err.to_string())
    }
}

impl From<crate::runtime::RuntimeError> for BuildError {
    fn from(err: crate::runtime::RuntimeError) -> BuildError {
        BuildError::new(err.to_string())
    }
}

fn context_error(err: ContextError) -> ApiError {
    match err {
        ContextError::Invalid(message) => ApiError::bad_request(message),
        other => ApiError::internal(other.to_string()),
    }
}

/// Reads the Dockerfile the options name, inside the context (a symlink cannot take
/// it outside), then applies `.dockerignore` to the context's index.
fn prepare_context(
    index: &mut ContextIndex,
    options: &BuildOptions,
) -> Result<Dockerfile, ApiError> {
    let shown = || crate::image::bounded(&options.dockerfile, crate::image::MAX_ECHO);
    let path = index
        .resolve(&options.dockerfile, true)
        .map_err(context_error)?;
    let bytes = index
        .read_small(&path)
        .map_err(context_error)?
        .ok_or_else(|| {
            ApiError::bad_request(format!("Cannot locate specified Dockerfile: {}", shown()))
        })?;
    let text = String::from_utf8(bytes).map_err(|_| {
        ApiError::bad_request(format!("the Dockerfile ({}) is not UTF-8 text", shown()))
    })?;
    let parsed = dockerfile::parse(&text).map_err(|err| ApiError::bad_request(err.to_string()))?;
    if let Some(bytes) = index.read_small(".dockerignore").map_err(context_error)? {
        let matcher = IgnoreMatcher::parse(&String::from_utf8_lossy(&bytes))
            .map_err(|err| ApiError::bad_request(format!("error reading .dockerignore: {err}")))?;
        index.apply_ignore(&matcher);
    }
    Ok(parsed)
}

/// POST `/build`: a 200 streaming the build's messages; a context or Dockerfile that
/// cannot be read is a 400 before the stream starts.
pub(super) async fn build(
    State(server): State<Arc<DockerServer>>,
    Query(params): Query<Vec<(String, String)>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let options = BuildOptions::parse(&params, &headers)?;
    let id = crate::runtime::new_id().map_err(ApiError::from)?;
    let dir = BuildDir {
        path: builds_dir(&server).join(&id),
    };
    let (reader, task) = body_reader(body);
    let received = {
        let spool = dir.path.join("context.tar");
        tokio::task::spawn_blocking(move || ContextIndex::receive(reader, &spool))
            .await
            .map_err(|err| ApiError::internal(format!("reading the build context: {err}")))?
    };
    finish_body(task).await;
    let mut index = received.map_err(context_error)?;
    let context_bytes = index.bytes();
    let (index, dockerfile) = {
        let options = options.clone();
        tokio::task::spawn_blocking(move || {
            prepare_context(&mut index, &options).map(|dockerfile| (index, dockerfile))
        })
        .await
        .map_err(|err| ApiError::internal(format!("reading the build context: {err}")))??
    };
    let context = Arc::new(index);
    let plan = steps::Plan::new(&dockerfile, &options)?;
    tracing::info!(build = %id, context_bytes, "docker build");
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let output = Output {
        tx,
        quiet: options.quiet,
    };
    tokio::spawn(async move {
        let running = RunningContainer::default();
        // A client that goes away (ctrl-c) cancels the build, as dockerd's: the step
        // under way stops, its container is removed; what was committed stays.
        let result = tokio::select! {
            result = steps::Builder::new(&server, &dir, &options, &output, context, running.clone())
                .run(&dockerfile, &plan) => Some(result),
            () = output.closed() => None,
        };
        match result {
            Some(Ok(image_id)) => finish(&server, &options, &output, &image_id).await,
            Some(Err(err)) => {
                tracing::info!(build = %id, "docker build failed: {}", err.message);
                output.error(&err.message, err.code).await;
            }
            None => {
                tracing::info!(build = %id, "docker build cancelled: the client went away");
                let container = running.lock().unwrap_or_else(|p| p.into_inner()).take();
                if let Some(record) =
                    container.and_then(|c| server.runtime.find_container(NAMESPACE, &c))
                {
                    if let Err(err) =
                        super::containers::remove_container(&server, &record, true).await
                    {
                        tracing::warn!(container = %record.id, "removing a cancelled build's container: {}", err.message);
                    }
                }
            }
        }
        drop(dir);
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok::<_, std::io::Error>);
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .map_err(|err| ApiError::internal(err.to_string()))
}

use tokio_stream::StreamExt as _;

/// The end of a successful build: the ID, then each tag.
async fn finish(server: &DockerServer, options: &BuildOptions, output: &Output, image_id: &str) {
    let short: String = image_id
        .trim_start_matches("sha256:")
        .chars()
        .take(12)
        .collect();
    output.stream(format!("Successfully built {short}\n")).await;
    for tag in &options.tags {
        match server.images.tag(NAMESPACE, image_id, tag).await {
            Ok(_) => {
                output
                    .stream(format!("Successfully tagged {}\n", familiar(tag)))
                    .await
            }
            Err(err) => {
                output
                    .error(&format!("tagging {}: {err}", familiar(tag)), None)
                    .await;
                return;
            }
        }
    }
    if options.quiet {
        output
            .send(json!({ "stream": format!("{image_id}\n") }))
            .await;
    }
}

/// POST `/build/prune`: the build cache is the intermediate images of builds (untagged
/// images with a parent, which no other image and no container uses): removed, each
/// chain up to an image still needed. `{"CachesDeleted": [...], "SpaceReclaimed": N}`.
pub(super) async fn prune(
    State(server): State<Arc<DockerServer>>,
) -> Result<Json<Value>, ApiError> {
    let mut deleted = Vec::new();
    let mut reclaimed = 0u64;
    loop {
        let mut removed_one = false;
        for image in server.images.list(NAMESPACE) {
            if !is_unused_cache(&server, &image) {
                continue;
            }
            let layer = image.layers.last().map(|l| l.size).unwrap_or(0);
            let parent_layers = image
                .parent
                .as_deref()
                .and_then(|p| server.images.get(NAMESPACE, p))
                .map(|p| p.layers.len())
                .unwrap_or(0);
            if server.images.remove(NAMESPACE, &image.id).await? {
                if image.layers.len() > parent_layers {
                    reclaimed += layer;
                }
                deleted.push(image.id.clone());
                removed_one = true;
            }
        }
        if !removed_one {
            break;
        }
    }
    Ok(Json(json!({
        "CachesDeleted": if deleted.is_empty() { Value::Null } else { json!(deleted) },
        "SpaceReclaimed": reclaimed,
    })))
}

/// Whether `image` is a build step nothing needs any more.
pub(super) fn is_unused_cache(server: &DockerServer, image: &crate::image::Image) -> bool {
    if image.parent.is_none() || !image.repo_tags.is_empty() || !image.repo_digests.is_empty() {
        return false;
    }
    if !server.images.children(NAMESPACE, &image.id).is_empty() {
        return false;
    }
    let mut used = false;
    server.runtime.for_each_container(NAMESPACE, |c| {
        used |= c.image_id == image.id;
    });
    !used
}

/// The build cache's figures for `/system/df`: intermediate images of builds.
pub(super) fn cache_usage(server: &DockerServer) -> Vec<Value> {
    server
        .images
        .list(NAMESPACE)
        .into_iter()
        .filter(|image| {
            image.parent.is_some() && image.repo_tags.is_empty() && image.repo_digests.is_empty()
        })
        .map(|image| {
            let in_use = !server.images.children(NAMESPACE, &image.id).is_empty();
            json!({
                "ID": image.id.trim_start_matches("sha256:"),
                "Parent": image.parent.as_deref().unwrap_or("").trim_start_matches("sha256:"),
                "Type": "regular",
                "Description": "an intermediate image of a build step",
                "InUse": in_use,
                "Shared": false,
                "Size": image.layers.last().map(|l| l.size).unwrap_or(0),
                "UsageCount": 0,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn options_as_dockerd_reads_them() {
        let options = BuildOptions::parse(
            &params(&[
                ("t", "app"),
                ("t", "reg.local:5000/app:v1"),
                ("buildargs", r#"{"A":"1","B":null}"#),
                ("labels", r#"{"l":"v"}"#),
                ("rm", "0"),
                ("forcerm", "1"),
                ("memory", "1048576"),
            ]),
            &HeaderMap::new(),
        )
        .unwrap();
        assert_eq!(
            options.tags,
            vec!["docker.io/library/app:latest", "reg.local:5000/app:v1"]
        );
        assert_eq!(options.build_args["A"].as_deref(), Some("1"));
        assert_eq!(options.build_args["B"], None);
        assert!(!options.remove && options.force_remove);
        assert_eq!(options.memory, 1 << 20);
        assert_eq!(options.dockerfile, "Dockerfile");
        for bad in [
            ("t", "Bad:Tag:x"),
            ("buildargs", "[1]"),
            ("memory", "lots"),
            ("squash", "1"),
            ("remote", "https://example.com/ctx.tar"),
        ] {
            let err = BuildOptions::parse(&params(&[bad]), &HeaderMap::new()).unwrap_err();
            assert_eq!(err.status, StatusCode::BAD_REQUEST, "{bad:?}");
        }
    }

    #[test]
    fn registry_config_by_host() {
        let json = r#"{"https://index.docker.io/v1/":{"username":"u","password":"p"},"reg.local:5000":{"auth":"YTpi"}}"#;
        let encoded = base64::engine::general_purpose::URL_SAFE.encode(json);
        let auth = registry_config(encoded.as_bytes()).unwrap();
        assert!(
            matches!(&auth["docker.io"], Credentials::Basic { username, .. } if username == "u")
        );
        assert!(
            matches!(&auth["reg.local:5000"], Credentials::Basic { username, password } if username == "a" && password == "b")
        );
    }
}
