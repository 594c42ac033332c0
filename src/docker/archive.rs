//! `/containers/{id}/archive` (HEAD, GET, PUT): `docker cp` both ways. The copy runs
//! in `wharf-monitor archive`, chrooted into the container's rootfs (see
//! `crate::monitor::archive` for why), with the tar streamed through this process.

use std::process::Stdio;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use base64::Engine as _;
use futures_util::StreamExt;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::containers::find;
use super::error::ApiError;
use super::{DockerServer, NAMESPACE};
use crate::monitor::archive::{EXIT_NOT_A_DIRECTORY, EXIT_NOT_FOUND};
use crate::runtime::CopyHold;

#[derive(Debug, Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
pub(super) struct ArchiveQuery {
    path: Option<String>,
    no_overwrite_dir_non_dir: Option<String>,
}

/// The archive command for a container and path.
/// The archive command for a container and path, with the container's volumes and
/// bind mounts where it sees them (dockerd copies into and out of them too); the
/// hold keeps option-backed volumes mounted until the copy ends.
fn command(
    server: &DockerServer,
    query: &str,
    path: &str,
) -> Result<(tokio::process::Command, String, CopyHold), ApiError> {
    let container = find(server, query)?;
    let (rootfs, monitor) = server.runtime.container_rootfs(NAMESPACE, &container.id)?;
    let (mounts, hold) = server
        .runtime
        .container_copy_mounts(NAMESPACE, &container.id)?;
    let mounts = serde_json::to_string(&mounts)
        .map_err(|err| ApiError::internal(format!("describing the container's mounts: {err}")))?;
    let mut cmd = tokio::process::Command::new(monitor);
    cmd.arg("archive")
        .arg("--root")
        .arg(rootfs)
        .arg("--path")
        .arg(path)
        .arg("--mounts")
        .arg(mounts)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    Ok((cmd, container.id, hold))
}

fn path_of(query: &ArchiveQuery) -> Result<String, ApiError> {
    let path = query
        .path
        .clone()
        .filter(|p| !p.is_empty())
        .ok_or_else(|| ApiError::bad_request("path is required"))?;
    if path.contains('\0') {
        return Err(ApiError::bad_request("path contains a NUL byte"));
    }
    // Relative paths are relative to the container's root, as dockerd's.
    Ok(if path.starts_with('/') {
        path
    } else {
        format!("/{path}")
    })
}

/// The error of a failed archive command, with dockerd's statuses and words.
fn failure(code: Option<i32>, stderr: &[u8], path: &str, id: &str) -> ApiError {
    let message = String::from_utf8_lossy(stderr).trim().to_string();
    match code {
        Some(EXIT_NOT_FOUND) => ApiError::not_found(format!(
            "Could not find the file {} in container {id}",
            crate::image::bounded(path, crate::image::MAX_ECHO)
        )),
        Some(EXIT_NOT_A_DIRECTORY) => ApiError::bad_request(message),
        _ => ApiError::bad_request(if message.is_empty() {
            "the copy failed".to_string()
        } else {
            message
        }),
    }
}

/// Runs `stat`: the `X-Docker-Container-Path-Stat` value (base64 JSON).
async fn path_stat(server: &DockerServer, query: &str, path: &str) -> Result<String, ApiError> {
    let (mut cmd, id, _hold) = command(server, query, path)?;
    cmd.arg("stat");
    let output = cmd
        .output()
        .await
        .map_err(|err| ApiError::internal(format!("starting the archive helper: {err}")))?;
    if !output.status.success() {
        return Err(failure(output.status.code(), &output.stderr, path, &id));
    }
    let json = String::from_utf8_lossy(&output.stdout).trim().to_string();
    Ok(base64::engine::general_purpose::STANDARD.encode(json))
}

/// HEAD `/containers/{id}/archive?path=`: the path's stat header.
pub(super) async fn head(
    State(server): State<Arc<DockerServer>>,
    Path(id): Path<String>,
    Query(query): Query<ArchiveQuery>,
) -> Result<Response, ApiError> {
    let path = path_of(&query)?;
    let stat = path_stat(&server, &id, &path).await?;
    Response::builder()
        .status(StatusCode::OK)
        .header("x-docker-container-path-stat", stat)
        .body(Body::empty())
        .map_err(|err| ApiError::internal(err.to_string()))
}

/// GET `/containers/{id}/archive?path=`: a tar of the path.
pub(super) async fn get(
    State(server): State<Arc<DockerServer>>,
    Path(id): Path<String>,
    Query(query): Query<ArchiveQuery>,
) -> Result<Response, ApiError> {
    let path = path_of(&query)?;
    let stat = path_stat(&server, &id, &path).await?;
    let (mut cmd, _, hold) = command(&server, &id, &path)?;
    cmd.arg("get");
    let mut child = cmd
        .spawn()
        .map_err(|err| ApiError::internal(format!("starting the archive helper: {err}")))?;
    let mut stdout = child
        .stdout
        .take()
        .ok_or_else(|| ApiError::internal("the archive helper has no stdout"))?;
    let stream = super::logs::async_stream(move |sender| async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match stdout.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sender
                        .send(Bytes::copy_from_slice(&buf[..n]))
                        .await
                        .is_err()
                    {
                        break; // the client left: kill_on_drop ends the helper
                    }
                }
            }
        }
        let output = child.wait_with_output().await;
        drop(hold);
        if let Ok(output) = output {
            if !output.status.success() {
                tracing::warn!(
                    "copying out of a container: {}",
                    String::from_utf8_lossy(&output.stderr).trim()
                );
            }
        }
    });
    let mut response = Response::new(Body::from_stream(stream));
    let headers = response.headers_mut();
    headers.insert(
        "content-type",
        HeaderValue::from_static("application/x-tar"),
    );
    if let Ok(value) = HeaderValue::from_str(&stat) {
        headers.insert("x-docker-container-path-stat", value);
    }
    Ok(response)
}

/// PUT `/containers/{id}/archive?path=`: extracts the tar body into the directory.
pub(super) async fn put(
    State(server): State<Arc<DockerServer>>,
    Path(id): Path<String>,
    Query(query): Query<ArchiveQuery>,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let path = path_of(&query)?;
    let (mut cmd, container_id, _hold) = command(&server, &id, &path)?;
    cmd.arg("put").stdin(Stdio::piped());
    if matches!(
        query.no_overwrite_dir_non_dir.as_deref(),
        Some("1" | "true" | "True")
    ) {
        cmd.arg("--no-overwrite-dir-non-dir");
    }
    let mut child = cmd
        .spawn()
        .map_err(|err| ApiError::internal(format!("starting the archive helper: {err}")))?;
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| ApiError::internal("the archive helper has no stdin"))?;
    let mut data = body.into_data_stream();
    let mut read_error = None;
    while let Some(chunk) = data.next().await {
        match chunk {
            Ok(chunk) => {
                // The helper stopped reading (a refused entry): its exit says why.
                if stdin.write_all(&chunk).await.is_err() {
                    break;
                }
            }
            Err(err) => {
                read_error = Some(err.to_string());
                break;
            }
        }
    }
    drop(stdin);
    let output = child
        .wait_with_output()
        .await
        .map_err(|err| ApiError::internal(format!("waiting for the archive helper: {err}")))?;
    if let Some(err) = read_error {
        return Err(ApiError::bad_request(format!("reading the archive: {err}")));
    }
    if !output.status.success() {
        return Err(failure(
            output.status.code(),
            &output.stderr,
            &path,
            &container_id,
        ));
    }
    Ok(StatusCode::OK)
}
