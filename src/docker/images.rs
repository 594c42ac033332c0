//! `/images/...`: pull and import (`POST /images/create`), list, inspect, history, tag,
//! remove, save (`GET /images/get`, `/images/{name}/get`) and load (`POST /images/load`).
//! The archive formats are the core's (`crate::image::archive`): the handlers only move
//! bytes between the request or response and the core's blocking readers and writers.
//! Images of the Docker API live in the `docker` namespace of the same image service
//! (content and snapshots are shared with the CRI's, records are not). Names are shown
//! in Docker's familiar form (`busybox:latest` for `docker.io/library/busybox:latest`).

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};

use super::containers::{label_matches, parse_filters, rfc3339, truthy};
use super::error::ApiError;
use super::{DockerServer, NAMESPACE};
use crate::image::registry::Credentials;
use crate::image::Image;
use crate::runtime::ContainerState;

/// `docker.io/library/busybox:latest` -> `busybox:latest`, as dockerd shows names.
pub(super) fn familiar(reference: &str) -> String {
    crate::image::familiar(reference)
}

/// The image config JSON of `image`, or null.
fn config_of(server: &DockerServer, image: &Image) -> Value {
    server
        .images
        .config_json(image)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or(Value::Null)
}

fn created_of(config: &Value) -> (i64, String) {
    let text = config
        .get("created")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let nanos = chrono::DateTime::parse_from_rfc3339(text)
        .ok()
        .and_then(|t| t.timestamp_nanos_opt())
        .unwrap_or(0);
    (nanos / 1_000_000_000, rfc3339(nanos))
}

fn image_labels(config: &Value) -> Value {
    config
        .pointer("/config/Labels")
        .cloned()
        .filter(|v| !v.is_null())
        .unwrap_or_else(|| json!({}))
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub(super) struct ListQuery {
    all: Option<String>,
    filters: Option<String>,
}

/// dockerd's `reference.FamiliarMatch`: the pattern (`path.Match`: `*` does not cross
/// `/`) against the familiar `name:tag`, or against the name alone.
fn reference_matches(pattern: &glob::Pattern, familiar_tag: &str) -> bool {
    let options = glob::MatchOptions {
        case_sensitive: true,
        require_literal_separator: true,
        require_literal_leading_dot: false,
    };
    let name = match familiar_tag.rfind(':') {
        Some(colon) if !familiar_tag[colon..].contains('/') => &familiar_tag[..colon],
        _ => familiar_tag,
    };
    pattern.matches_with(familiar_tag, options) || pattern.matches_with(name, options)
}

/// GET `/images/json`.
pub(super) async fn list(
    State(server): State<Arc<DockerServer>>,
    Query(query): Query<ListQuery>,
) -> Result<Json<Vec<Value>>, ApiError> {
    // Intermediate images (untagged, with children: a build's steps) only with `all`.
    let all = truthy(query.all.as_deref());
    let filters = parse_filters(query.filters.as_deref())?;
    for key in filters.keys() {
        if !matches!(
            key.as_str(),
            "dangling" | "reference" | "label" | "before" | "since"
        ) {
            return Err(ApiError::bad_request(format!("invalid filter '{key}'")));
        }
    }
    let patterns = filters
        .get("reference")
        .map(|values| {
            values
                .iter()
                .map(|v| {
                    glob::Pattern::new(v).map_err(|err| {
                        ApiError::bad_request(format!("invalid reference filter {v:?}: {err}"))
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?
        .unwrap_or_default();
    // `before=`/`since=` an image: created before or after it.
    let created_bound = |key: &str| -> Result<Option<i64>, ApiError> {
        match filters.get(key).and_then(|v| v.last()) {
            None => Ok(None),
            Some(name) => {
                let image = find_image(&server, name)?;
                Ok(Some(created_of(&config_of(&server, &image)).0))
            }
        }
    };
    let before = created_bound("before")?;
    let since = created_bound("since")?;
    let mut images = server.images.list(NAMESPACE);
    images.sort_by(|a, b| b.id.cmp(&a.id));
    let mut out = Vec::new();
    for image in images {
        let config = config_of(&server, &image);
        let labels: std::collections::HashMap<String, String> =
            serde_json::from_value(image_labels(&config)).unwrap_or_default();
        let tags: Vec<String> = image.repo_tags.iter().map(|t| familiar(t)).collect();
        if !all
            && image.repo_tags.is_empty()
            && image.repo_digests.is_empty()
            && !server.images.children(NAMESPACE, &image.id).is_empty()
        {
            continue;
        }
        let keep = filters.iter().all(|(key, values)| match key.as_str() {
            "dangling" => values
                .iter()
                .any(|v| (v == "true") == image.repo_tags.is_empty()),
            "reference" => patterns
                .iter()
                .any(|pattern| tags.iter().any(|t| reference_matches(pattern, t))),
            "label" => values.iter().all(|v| label_matches(&labels, v)),
            _ => true,
        });
        let (created, _) = created_of(&config);
        let keep = keep
            && before.is_none_or(|bound| created < bound)
            && since.is_none_or(|bound| created > bound);
        if !keep {
            continue;
        }
        out.push(json!({
            "Id": image.id,
            "ParentId": image.parent.clone().unwrap_or_default(),
            "RepoTags": tags,
            "RepoDigests": image.repo_digests.iter().map(|d| familiar(d)).collect::<Vec<_>>(),
            "Created": created,
            "Size": image.size,
            "SharedSize": -1,
            "VirtualSize": image.size,
            "Labels": labels,
            "Containers": -1,
        }));
    }
    Ok(Json(out))
}

/// The credentials of an `X-Registry-Auth` header (base64url JSON).
pub(super) fn registry_auth(headers: &HeaderMap) -> Result<Credentials, ApiError> {
    let Some(value) = headers.get("x-registry-auth") else {
        return Ok(Credentials::Anonymous);
    };
    let text = value
        .to_str()
        .map_err(|_| ApiError::bad_request("X-Registry-Auth: not text"))?;
    if text.is_empty() || text == "e30=" || text == "e30" {
        return Ok(Credentials::Anonymous);
    }
    let bytes = base64::engine::general_purpose::URL_SAFE
        .decode(text)
        .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text))
        .or_else(|_| base64::engine::general_purpose::STANDARD.decode(text))
        .map_err(|_| ApiError::bad_request("X-Registry-Auth: invalid base64"))?;
    // Never echo the header: it holds secrets.
    let auth: AuthConfig = serde_json::from_slice(&bytes)
        .map_err(|_| ApiError::bad_request("X-Registry-Auth: invalid JSON"))?;
    auth.credentials()
        .ok_or_else(|| ApiError::bad_request("X-Registry-Auth: invalid auth field"))
}

/// Docker's `AuthConfig` (`X-Registry-Auth`, and each entry of a build's
/// `X-Registry-Config`).
#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct AuthConfig {
    username: String,
    password: String,
    auth: String,
    identitytoken: String,
    registrytoken: String,
}

impl AuthConfig {
    /// The credentials it gives, in dockerd's order of preference; `None` when its
    /// `auth` field is not base64 of text.
    pub(super) fn credentials(self) -> Option<Credentials> {
        if !self.registrytoken.is_empty() {
            return Some(Credentials::RegistryToken(self.registrytoken));
        }
        if !self.identitytoken.is_empty() {
            return Some(Credentials::IdentityToken(self.identitytoken));
        }
        if !self.username.is_empty() {
            return Some(Credentials::Basic {
                username: self.username,
                password: self.password,
            });
        }
        if !self.auth.is_empty() {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(&self.auth)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())?;
            if let Some((username, password)) = decoded.split_once(':') {
                return Some(Credentials::Basic {
                    username: username.to_string(),
                    password: password.to_string(),
                });
            }
        }
        Some(Credentials::Anonymous)
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
pub(super) struct CreateQuery {
    from_image: Option<String>,
    from_src: Option<String>,
    repo: Option<String>,
    tag: Option<String>,
    message: Option<String>,
    platform: Option<String>,
}

use super::transfer::message as progress;

/// POST `/images/create?fromImage=&tag=`: pulls, answering dockerd's JSON progress
/// messages. Errors before anything was pulled are HTTP errors (as dockerd's, whose
/// headers wait for the first message).
pub(super) async fn create(
    State(server): State<Arc<DockerServer>>,
    Query(query): Query<CreateQuery>,
    headers: HeaderMap,
    uri: Uri,
    body: Body,
) -> Result<Response, ApiError> {
    if let Some(platform) = query.platform.as_deref().filter(|p| !p.is_empty()) {
        let wanted = crate::image::platform::Platform::parse(platform)
            .map_err(|err| ApiError::bad_request(err.to_string()))?;
        let host = crate::image::platform::Platform::host();
        if wanted.os != host.os || wanted.architecture != host.architecture {
            return Err(ApiError::bad_request(format!(
                "image platform {platform} does not match this host's {}/{}",
                host.os, host.architecture
            )));
        }
    }
    if let Some(source) = query.from_src.clone().filter(|s| !s.is_empty()) {
        return import(server, query, source, &uri, body).await;
    }
    let from = query
        .from_image
        .filter(|f| !f.is_empty())
        .ok_or_else(|| ApiError::bad_request("fromImage or fromSrc is required"))?;
    let reference = match query.tag.as_deref().filter(|t| !t.is_empty()) {
        Some(tag) if tag.starts_with("sha256:") => format!("{from}@{tag}"),
        Some(tag) => format!("{from}:{tag}"),
        None if from.contains('@') || last_component_has_tag(&from) => from.clone(),
        None => format!("{from}:latest"),
    };
    super::transfer::pull(&server, &from, reference, &headers).await
}

/// Whether the last path component of a reference carries a `:tag`.
pub(super) fn last_component_has_tag(reference: &str) -> bool {
    reference
        .rsplit('/')
        .next()
        .is_some_and(|last| last.contains(':'))
}

/// GET `/images/search?term=`: dockerd asks Docker Hub's v1 search API
/// (index.docker.io), which this daemon does not call: registries have no common
/// search API (the v2 distribution API has none), and nodes running wharf are often
/// offline. The answer says so instead of failing with a network error.
pub(super) async fn search() -> ApiError {
    ApiError::new(
        StatusCode::NOT_IMPLEMENTED,
        "searching registries is not supported by wharf: Docker Hub's v1 search API is not \
         called (search on the registry's website, then pull by name)",
    )
}

fn find_image(server: &DockerServer, name: &str) -> Result<Image, ApiError> {
    server
        .images
        .get(NAMESPACE, name)
        .ok_or_else(|| ApiError::no_such_image(name))
}

/// GET `/images/{name}/json` and `/images/{name}/history` (names contain slashes).
pub(super) async fn get_by_name(
    State(server): State<Arc<DockerServer>>,
    Path(rest): Path<String>,
) -> Result<Response, ApiError> {
    if let Some(name) = rest.strip_suffix("/json") {
        return inspect(&server, name).map(IntoResponse::into_response);
    }
    if let Some(name) = rest.strip_suffix("/history") {
        return history(&server, name).map(IntoResponse::into_response);
    }
    if let Some(name) = rest.strip_suffix("/get") {
        return save_names(&server, vec![name.to_string()]);
    }
    Err(ApiError::not_found(format!(
        "page not found: /images/{}",
        crate::image::bounded(&rest, crate::image::MAX_ECHO)
    )))
}

fn inspect(server: &DockerServer, name: &str) -> Result<Json<Value>, ApiError> {
    let image = find_image(server, name)?;
    let config = config_of(server, &image);
    let (_, created) = created_of(&config);
    Ok(Json(json!({
        "Id": image.id,
        "RepoTags": image.repo_tags.iter().map(|t| familiar(t)).collect::<Vec<_>>(),
        "RepoDigests": image.repo_digests.iter().map(|d| familiar(d)).collect::<Vec<_>>(),
        "Parent": image.parent.clone().unwrap_or_default(),
        "Comment": config.get("comment").cloned().unwrap_or(json!("")),
        "Created": created,
        "Container": "",
        "ContainerConfig": config.get("container_config").cloned().unwrap_or(json!({})),
        "DockerVersion": config.get("docker_version").cloned().unwrap_or(json!("")),
        "Author": config.get("author").cloned().unwrap_or(json!("")),
        "Config": config.get("config").cloned().unwrap_or(json!({})),
        "Architecture": config.get("architecture").cloned().unwrap_or(json!("")),
        "Variant": config.get("variant").cloned(),
        "Os": config.get("os").cloned().unwrap_or(json!("linux")),
        "Size": image.size,
        "VirtualSize": image.size,
        "GraphDriver": { "Name": "overlay2", "Data": null },
        "RootFS": {
            "Type": "layers",
            "Layers": image.layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>(),
        },
        "Metadata": { "LastTagTime": "0001-01-01T00:00:00Z" },
    })))
}

fn history(server: &DockerServer, name: &str) -> Result<Json<Vec<Value>>, ApiError> {
    let image = find_image(server, name)?;
    let config = config_of(server, &image);
    let entries = config
        .get("history")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut out: Vec<Value> = entries
        .iter()
        .map(|h| {
            let created = h
                .get("created")
                .and_then(Value::as_str)
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map_or(0, |t| t.timestamp());
            json!({
                "Id": "<missing>",
                "Created": created,
                "CreatedBy": h.get("created_by").cloned().unwrap_or(json!("")),
                "Tags": null,
                "Size": 0,
                "Comment": h.get("comment").cloned().unwrap_or(json!("")),
            })
        })
        .collect();
    out.reverse();
    if let Some(first) = out.first_mut() {
        first["Id"] = json!(image.id);
        first["Tags"] = json!(image
            .repo_tags
            .iter()
            .map(|t| familiar(t))
            .collect::<Vec<_>>());
    }
    Ok(Json(out))
}

/// POST `/images/create?fromSrc=-|URL` (`docker import`): the tarball (plain, gzip,
/// zstd, bzip2 or xz) is the request body or downloaded from the URL; `repo` (with
/// `tag`) names the image, `changes` are Dockerfile instructions for its config,
/// `message` its comment; answers `{"status": "<id>"}` (after dockerd's `Downloading
/// from` and `Importing` progress for a URL).
async fn import(
    server: Arc<DockerServer>,
    query: CreateQuery,
    source: String,
    uri: &Uri,
    body: Body,
) -> Result<Response, ApiError> {
    let changes = Query::<Vec<(String, String)>>::try_from_uri(uri)
        .map(|Query(pairs)| {
            pairs
                .into_iter()
                .filter(|(key, _)| key == "changes")
                .map(|(_, value)| value)
                .collect()
        })
        .unwrap_or_default();
    let repo = query.repo.filter(|r| !r.is_empty());
    let reference = match (repo, query.tag.filter(|t| !t.is_empty())) {
        (Some(repo), Some(tag)) => {
            let name = if last_component_has_tag(&repo) && !repo.contains('@') {
                repo.rsplit_once(':')
                    .map_or(repo.as_str(), |(name, _)| name)
            } else {
                repo.as_str()
            };
            Some(format!("{name}:{tag}"))
        }
        (repo, _) => repo,
    };
    let options = crate::image::archive::ImportOptions {
        reference,
        message: query.message,
        changes,
        source: source.clone(),
    };
    if source == "-" {
        let (reader, task) = body_reader(body);
        let image = server.images.import(NAMESPACE, reader, options).await;
        finish_body(task).await;
        let image = image?;
        return json_stream(vec![progress(json!({ "status": image.id }))]);
    }
    // A URL: the body is not read (dockerd closes it). A failed GET is the answer's
    // error; once the download runs, errors are in the stream.
    drop(body);
    let remote = server.images.open_import_url(&source).await?;
    let (body_tx, body_rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    let _ = body_tx
        .send(Ok(progress(
            json!({"status": format!("Downloading from {}", remote.url)}),
        )))
        .await;
    let reader = ImportProgress {
        inner: tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(
            remote
                .response
                .bytes_stream()
                .map(|chunk| chunk.map_err(std::io::Error::other)),
        )),
        total: remote.length,
        current: 0,
        reported: 0,
        messages: body_tx.clone(),
    };
    tokio::spawn(async move {
        let last = match server.images.import(NAMESPACE, reader, options).await {
            Ok(image) => json!({ "status": image.id }),
            Err(err) => {
                let text = err.to_string();
                json!({"errorDetail": {"message": text}, "error": text})
            }
        };
        let _ = body_tx.send(Ok(progress(last))).await;
    });
    super::transfer::channel_response(body_rx)
}

/// The downloaded tarball, reporting dockerd's `Importing` progress (every 512 KiB, as
/// its progress reader) while the import reads it (on a blocking thread).
struct ImportProgress<R> {
    inner: R,
    total: Option<u64>,
    current: u64,
    reported: u64,
    messages: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
}

impl<R: std::io::Read> std::io::Read for ImportProgress<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.current += n as u64;
        if self.current - self.reported >= 512 * 1024 || (n == 0 && self.current > self.reported) {
            self.reported = self.current;
            let total = self.total.unwrap_or(0);
            let value = json!({
                "status": "Importing",
                "progressDetail": {"current": self.current, "total": total},
                "progress": super::transfer::progress_bar(self.current, total),
            });
            // A client that went away does not stop the import.
            let _ = self.messages.blocking_send(Ok(progress(value)));
        }
        Ok(n)
    }
}

/// The request body as a blocking reader, for the core's archive readers (which run on
/// blocking threads), and the task that feeds it. When the reader is dropped early (the
/// core refused the input), the task reads the rest of the body and drops it: the answer
/// waits for it ([`finish_body`]), since a client still sending would otherwise get a
/// reset instead of the error.
pub(super) fn body_reader(body: Body) -> (impl std::io::Read + Send + 'static, BodyTask) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    let task = tokio::spawn(async move {
        let mut stream = body.into_data_stream();
        let mut reader_gone = false;
        while let Some(chunk) = stream.next().await {
            if reader_gone {
                continue;
            }
            let chunk = chunk.map_err(std::io::Error::other);
            let failed = chunk.is_err();
            if tx.send(chunk).await.is_err() {
                reader_gone = true;
            }
            if failed {
                break;
            }
        }
    });
    let reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(
        tokio_stream::wrappers::ReceiverStream::new(rx),
    ));
    (reader, task)
}

pub(super) type BodyTask = tokio::task::JoinHandle<()>;

/// Waits (at most a minute) until the rest of the request body was read.
pub(super) async fn finish_body(task: BodyTask) {
    if tokio::time::timeout(std::time::Duration::from_secs(60), task)
        .await
        .is_err()
    {
        tracing::debug!("gave up draining a request body");
    }
}

/// A 200 answer streaming dockerd's JSON messages.
fn json_stream(messages: Vec<Bytes>) -> Result<Response, ApiError> {
    let stream = futures_util::stream::iter(messages.into_iter().map(Ok::<_, std::io::Error>));
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .map_err(|err| ApiError::internal(err.to_string()))
}

/// GET `/images/get?names=a&names=b` (`docker save`): a docker-archive, streamed.
pub(super) async fn save(
    State(server): State<Arc<DockerServer>>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let names = pairs
        .into_iter()
        .filter(|(key, _)| key == "names")
        .map(|(_, value)| value)
        .collect();
    save_names(&server, names)
}

/// The archive of `names`: errors finding them are HTTP errors; one while writing
/// aborts the response (the client sees a cut transfer, never a short archive that
/// looks whole).
fn save_names(server: &DockerServer, names: Vec<String>) -> Result<Response, ApiError> {
    let archive = server.images.save(NAMESPACE, &names)?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(8);
    tokio::task::spawn_blocking(move || {
        let out = std::io::BufWriter::with_capacity(256 * 1024, ChannelWriter(tx.clone()));
        if let Err(err) = archive.write_to(out) {
            tracing::warn!(error = %err, "docker save failed midway");
            let _ = tx.blocking_send(Err(std::io::Error::other(err.to_string())));
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/x-tar")
        .body(Body::from_stream(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
        .map_err(|err| ApiError::internal(err.to_string()))
}

/// A blocking writer into a response body's channel.
struct ChannelWriter(tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>);

impl std::io::Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .blocking_send(Ok(Bytes::copy_from_slice(buf)))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client left"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub(super) struct LoadQuery {
    quiet: Option<String>,
}

/// POST `/images/load?quiet=` (`docker load`): a docker-archive or an OCI image layout
/// tarball. Everything is checked and stored before the answer starts, so a bad
/// archive is a 400 naming what is wrong (dockerd answers 200 and puts the error in the
/// stream; the docker CLI and docker-py report both alike). The answer is dockerd's:
/// `Loading layer` progress unless quiet, then `Loaded image: name:tag` (or `Loaded
/// image ID: sha256:...` when the last image has no tag) as `{"stream"}` messages.
pub(super) async fn load(
    State(server): State<Arc<DockerServer>>,
    Query(query): Query<LoadQuery>,
    body: Body,
) -> Result<Response, ApiError> {
    // dockerd's default is quiet; "0", "false", "none" and "" turn it off.
    let quiet = !matches!(
        query
            .quiet
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("" | "0" | "false" | "none")
    );
    let (reader, task) = body_reader(body);
    let report = server.images.load(NAMESPACE, reader).await;
    finish_body(task).await;
    let report = report?;
    let stream = |text: String| progress(json!({ "stream": text }));
    let mut messages = Vec::new();
    let mut ids = String::new();
    for image in &report.images {
        if !quiet {
            for (diff_id, size) in &image.layers {
                let short: String = diff_id
                    .trim_start_matches("sha256:")
                    .chars()
                    .take(12)
                    .collect();
                messages.push(progress(json!({
                    "status": "Loading layer",
                    "progressDetail": {"current": size, "total": size},
                    "progress": super::transfer::progress_bar(*size, *size),
                    "id": short,
                })));
            }
        }
        ids.push_str(&format!("Loaded image ID: {}\n", image.id));
        for (tag, previous) in &image.moved_tags {
            messages.push(stream(format!(
                "The image {} already exists, renaming the old one with ID {previous} to empty \
                 string\n",
                familiar(tag)
            )));
        }
        for tag in &image.tags {
            messages.push(stream(format!("Loaded image: {}\n", familiar(tag))));
        }
    }
    if report
        .images
        .last()
        .is_some_and(|image| image.tags.is_empty())
    {
        messages.push(stream(ids));
    }
    json_stream(messages)
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub(super) struct TagQuery {
    repo: Option<String>,
    tag: Option<String>,
}

/// POST `/images/{name}/tag?repo=&tag=`: 201.
pub(super) async fn post_by_name(
    State(server): State<Arc<DockerServer>>,
    Path(rest): Path<String>,
    Query(query): Query<TagQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Some(name) = rest.strip_suffix("/tag") else {
        if let Some(name) = rest.strip_suffix("/push") {
            let tag = query.tag.as_deref().filter(|t| !t.is_empty());
            return super::transfer::push(&server, name, tag, &headers).await;
        }
        return Err(ApiError::not_found(format!(
            "page not found: /images/{}",
            crate::image::bounded(&rest, crate::image::MAX_ECHO)
        )));
    };
    let repo = query
        .repo
        .filter(|r| !r.is_empty())
        .ok_or_else(|| ApiError::bad_request("repo is required"))?;
    let tag = query
        .tag
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| "latest".into());
    let image = find_image(&server, name)?;
    server
        .images
        .tag(NAMESPACE, &image.id, &format!("{repo}:{tag}"))
        .await
        .map_err(|err| ApiError::bad_request(err.to_string()))?;
    Ok(StatusCode::CREATED.into_response())
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub(super) struct RemoveQuery {
    force: Option<String>,
    noprune: Option<String>,
}

/// DELETE `/images/{name}?force=`: `[{"Untagged"}, {"Deleted"}]`; 409 while a
/// container uses it.
pub(super) async fn remove(
    State(server): State<Arc<DockerServer>>,
    Path(name): Path<String>,
    Query(query): Query<RemoveQuery>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let prune = !truthy(query.noprune.as_deref());
    let force = matches!(query.force.as_deref(), Some("1" | "true" | "True"));
    let image = find_image(&server, &name)?;
    let mut user = None;
    server.runtime.for_each_container(NAMESPACE, |c| {
        if c.image_id == image.id && c.state != ContainerState::Creating {
            user = Some((c.id.clone(), c.state));
        }
    });
    let by_id = image.id == name
        || image
            .id
            .trim_start_matches("sha256:")
            .starts_with(name.trim_start_matches("sha256:"));
    let untag_only = !by_id && image.repo_tags.len() > 1;
    if let Some((container, state)) = &user {
        if !untag_only && (!force || *state == ContainerState::Running) {
            let short = &image.id.trim_start_matches("sha256:")[..12];
            return Err(ApiError::conflict(format!(
                "conflict: unable to delete {short} (must be forced) - image is being used by \
                 {}container {}",
                if *state == ContainerState::Running {
                    "running "
                } else {
                    "stopped "
                },
                &container[..12]
            )));
        }
    }
    let mut answer = Vec::new();
    let query = if by_id {
        image.id.clone()
    } else {
        name.clone()
    };
    if by_id && image.repo_tags.len() > 1 && !force {
        return Err(ApiError::conflict(format!(
            "conflict: unable to delete {} (must be forced) - image is referenced in multiple \
             repositories",
            &image.id.trim_start_matches("sha256:")[..12]
        )));
    }
    let tags: Vec<String> = if by_id {
        image.repo_tags.clone()
    } else {
        crate::image::registry::ImageReference::parse(&name)
            .ok()
            .and_then(|r| r.repo_tag())
            .into_iter()
            .collect()
    };
    if by_id && !server.images.children(NAMESPACE, &image.id).is_empty() {
        return Err(ApiError::conflict(format!(
            "conflict: unable to delete {} (cannot be forced) - image has dependent child images",
            &image.id.trim_start_matches("sha256:")[..12]
        )));
    }
    let pruned = remove_image(&server, &query, prune).await?;
    for tag in &tags {
        answer.push(json!({ "Untagged": familiar(tag) }));
    }
    if server.images.get(NAMESPACE, &image.id).is_none() {
        for digest in &image.repo_digests {
            answer.push(json!({ "Untagged": familiar(digest) }));
        }
        answer.push(json!({ "Deleted": image.id }));
        for parent in pruned {
            answer.push(json!({ "Deleted": parent }));
        }
    }
    Ok(Json(answer))
}

/// Removes the image `query` names and, with `prune`, dockerd's parent pruning: each
/// parent up the chain that is then an untagged image with no other child and no
/// container goes too (a build's steps), in the same store transaction. Returns the
/// parents removed.
pub(super) async fn remove_image(
    server: &DockerServer,
    query: &str,
    prune: bool,
) -> Result<Vec<String>, ApiError> {
    let mut used = std::collections::HashSet::new();
    server.runtime.for_each_container(NAMESPACE, |c| {
        used.insert(c.image_id.clone());
    });
    let in_use = move |id: &str| used.contains(id);
    let pruned = server
        .images
        .remove_pruning(NAMESPACE, query, prune.then_some(&in_use as _))
        .await?;
    Ok(pruned.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_in_familiar_form() {
        assert_eq!(
            familiar("docker.io/library/busybox:latest"),
            "busybox:latest"
        );
        assert_eq!(familiar("docker.io/me/app:1"), "me/app:1");
        assert_eq!(
            familiar("127.0.0.1:5000/busybox:1"),
            "127.0.0.1:5000/busybox:1"
        );
        assert!(last_component_has_tag("127.0.0.1:5000/busybox:1"));
        assert!(!last_component_has_tag("127.0.0.1:5000/busybox"));
    }

    #[test]
    fn registry_auth_headers() {
        let mut headers = HeaderMap::new();
        assert!(matches!(
            registry_auth(&headers).unwrap(),
            Credentials::Anonymous
        ));
        let json = r#"{"username":"alice","password":"s3cret","serveraddress":"r"}"#;
        headers.insert(
            "x-registry-auth",
            base64::engine::general_purpose::URL_SAFE
                .encode(json)
                .parse()
                .unwrap(),
        );
        assert!(matches!(
            registry_auth(&headers).unwrap(),
            Credentials::Basic { .. }
        ));
        headers.insert("x-registry-auth", "%%%".parse().unwrap());
        let err = registry_auth(&headers).unwrap_err();
        assert!(!err.message.contains("%%%"));
    }
}
