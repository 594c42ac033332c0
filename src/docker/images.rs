//! `/images/...`: pull (`POST /images/create`), list, inspect, history, tag, remove.
//! Images of the Docker API live in the `docker` namespace of the same image service
//! (content and snapshots are shared with the CRI's, records are not). Names are shown
//! in Docker's familiar form (`busybox:latest` for `docker.io/library/busybox:latest`).

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};

use super::containers::{label_matches, parse_filters, rfc3339};
use super::error::ApiError;
use super::{DockerServer, NAMESPACE};
use crate::image::registry::Credentials;
use crate::image::Image;
use crate::runtime::ContainerState;

/// `docker.io/library/busybox:latest` -> `busybox:latest`, as dockerd shows names.
pub(super) fn familiar(reference: &str) -> String {
    if let Some(rest) = reference.strip_prefix("docker.io/") {
        return rest.strip_prefix("library/").unwrap_or(rest).to_string();
    }
    reference.to_string()
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

/// GET `/images/json`.
pub(super) async fn list(
    State(server): State<Arc<DockerServer>>,
    Query(query): Query<ListQuery>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let _ = query.all; // no intermediate images: every image is a top-level one
    let filters = parse_filters(query.filters.as_deref())?;
    for key in filters.keys() {
        if !matches!(key.as_str(), "dangling" | "reference" | "label") {
            return Err(ApiError::bad_request(format!("invalid filter '{key}'")));
        }
    }
    let mut images = server.images.list(NAMESPACE);
    images.sort_by(|a, b| b.id.cmp(&a.id));
    let mut out = Vec::new();
    for image in images {
        let config = config_of(&server, &image);
        let labels: std::collections::HashMap<String, String> =
            serde_json::from_value(image_labels(&config)).unwrap_or_default();
        let tags: Vec<String> = image.repo_tags.iter().map(|t| familiar(t)).collect();
        let keep = filters.iter().all(|(key, values)| match key.as_str() {
            "dangling" => values
                .iter()
                .any(|v| (v == "true") == image.repo_tags.is_empty()),
            "reference" => values.iter().any(|pattern| {
                tags.iter()
                    .any(|t| t == pattern || t.split(':').next() == Some(pattern.as_str()))
            }),
            "label" => values.iter().all(|v| label_matches(&labels, v)),
            _ => true,
        });
        if !keep {
            continue;
        }
        let (created, _) = created_of(&config);
        out.push(json!({
            "Id": image.id,
            "ParentId": "",
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
fn registry_auth(headers: &HeaderMap) -> Result<Credentials, ApiError> {
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
    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct AuthConfig {
        username: String,
        password: String,
        auth: String,
        identitytoken: String,
        registrytoken: String,
    }
    // Never echo the header: it holds secrets.
    let auth: AuthConfig = serde_json::from_slice(&bytes)
        .map_err(|_| ApiError::bad_request("X-Registry-Auth: invalid JSON"))?;
    if !auth.registrytoken.is_empty() {
        return Ok(Credentials::RegistryToken(auth.registrytoken));
    }
    if !auth.identitytoken.is_empty() {
        return Ok(Credentials::IdentityToken(auth.identitytoken));
    }
    if !auth.username.is_empty() {
        return Ok(Credentials::Basic {
            username: auth.username,
            password: auth.password,
        });
    }
    if !auth.auth.is_empty() {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(&auth.auth)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| ApiError::bad_request("X-Registry-Auth: invalid auth field"))?;
        if let Some((username, password)) = decoded.split_once(':') {
            return Ok(Credentials::Basic {
                username: username.to_string(),
                password: password.to_string(),
            });
        }
    }
    Ok(Credentials::Anonymous)
}

#[derive(Debug, Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
pub(super) struct CreateQuery {
    from_image: Option<String>,
    from_src: Option<String>,
    tag: Option<String>,
    platform: Option<String>,
}

/// One JSON message of a progress stream.
fn progress(message: Value) -> Bytes {
    Bytes::from(format!("{message}\r\n"))
}

/// POST `/images/create?fromImage=&tag=`: pulls, answering dockerd's JSON progress
/// messages. Errors before anything was pulled are HTTP errors (as dockerd's, whose
/// headers wait for the first message).
pub(super) async fn create(
    State(server): State<Arc<DockerServer>>,
    Query(query): Query<CreateQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if query.from_src.is_some() {
        return Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "importing an image from a tarball (fromSrc) is not supported by wharf yet",
        ));
    }
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
    let credentials = registry_auth(&headers)?;
    let before = server.images.get(NAMESPACE, &reference).map(|i| i.id);
    let image = server
        .images
        .pull(NAMESPACE, &reference, &credentials)
        .await
        .map_err(|err| match &err {
            crate::image::ImageError::NotFound(_) => ApiError::not_found(format!(
                "pull access denied for {}, repository does not exist or may require \
                 'docker login': {err}",
                familiar(&from)
            )),
            _ => ApiError::from(err),
        })?;
    let shown = familiar(&reference);
    let parsed = crate::image::registry::ImageReference::parse(&reference)
        .map_err(|err| ApiError::bad_request(err.to_string()))?;
    let tag_or_digest = parsed
        .digest()
        .or(parsed.tag())
        .unwrap_or("latest")
        .to_string();
    let mut messages = vec![progress(json!({
        "status": format!("Pulling from {}", parsed.repository()),
        "id": tag_or_digest,
    }))];
    let up_to_date = before.as_deref() == Some(image.id.as_str());
    for layer in &image.layers {
        let short = layer
            .digest
            .strip_prefix("sha256:")
            .unwrap_or(&layer.digest)
            .chars()
            .take(12)
            .collect::<String>();
        let status = if up_to_date {
            "Already exists"
        } else {
            "Pull complete"
        };
        messages.push(progress(
            json!({"status": status, "progressDetail": {}, "id": short}),
        ));
    }
    messages.push(progress(json!({
        "status": format!("Digest: {}", image.manifest_digest)
    })));
    messages.push(progress(json!({
        "status": if up_to_date {
            format!("Status: Image is up to date for {shown}")
        } else {
            format!("Status: Downloaded newer image for {shown}")
        }
    })));
    tracing::info!(reference = %reference, image = %image.id, "pulled image (docker)");
    let stream = futures_util::stream::iter(messages.into_iter().map(Ok::<_, std::io::Error>));
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .map_err(|err| ApiError::internal(err.to_string()))
}

/// Whether the last path component of a reference carries a `:tag`.
fn last_component_has_tag(reference: &str) -> bool {
    reference
        .rsplit('/')
        .next()
        .is_some_and(|last| last.contains(':'))
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
        "Parent": "",
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
) -> Result<StatusCode, ApiError> {
    let Some(name) = rest.strip_suffix("/tag") else {
        if rest.ends_with("/push") {
            return Err(ApiError::new(
                StatusCode::NOT_IMPLEMENTED,
                "pushing images through the Docker API is not supported by wharf yet",
            ));
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
    Ok(StatusCode::CREATED)
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
    let _ = query.noprune;
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
    server.images.remove(NAMESPACE, &query).await?;
    for tag in &tags {
        answer.push(json!({ "Untagged": familiar(tag) }));
    }
    if server.images.get(NAMESPACE, &image.id).is_none() {
        for digest in &image.repo_digests {
            answer.push(json!({ "Untagged": familiar(digest) }));
        }
        answer.push(json!({ "Deleted": image.id }));
    }
    Ok(Json(answer))
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
