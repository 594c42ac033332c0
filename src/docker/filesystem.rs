//! A container's filesystem: `GET /containers/{id}/changes` (`docker diff`: its
//! read-write layer against its image) and `GET /containers/{id}/export` (`docker
//! export`: its whole root filesystem as a tar). Both read fd by fd, never through a
//! symlink (`crate::image::rwlayer`): the export walks the container's rootfs mount,
//! not host paths, so nothing outside the container can be reached, whatever it does
//! to its files meanwhile.

use std::io::Write;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use axum::Json;
use serde_json::{json, Value};

use super::containers::find;
use super::error::ApiError;
use super::{DockerServer, NAMESPACE};
use crate::events::{Event, EventKind};
use crate::image::rwlayer::{self, RUNTIME_MOUNTPOINTS};
use crate::runtime::ContainerRecord;

/// Publishes a container event of the Docker front end's own (`commit`, `export`) with
/// the attributes the runtime's events carry (name, image, labels).
pub(super) fn container_event(
    server: &DockerServer,
    container: &ContainerRecord,
    action: &str,
    extra: &[(&str, String)],
) {
    let mut event = Event::new(NAMESPACE, EventKind::Container, action, &container.id)
        .with("name", container.spec.name.clone())
        .with("image", container.image.clone());
    for (key, value) in extra {
        event = event.with(key, value.clone());
    }
    for (key, value) in &container.spec.labels {
        event
            .attributes
            .entry(key.clone())
            .or_insert_with(|| value.clone());
    }
    server.events.publish(event);
}

/// GET `/containers/{id}/changes`: `[{"Path", "Kind"}]` (0 modified, 1 added, 2
/// deleted), or null when nothing changed, as dockerd answers.
pub(super) async fn changes(
    State(server): State<Arc<DockerServer>>,
    Path(query): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let c = find(&server, &query)?;
    let layer = server.runtime.container_layer(NAMESPACE, &c.id)?;
    let changes =
        tokio::task::spawn_blocking(move || rwlayer::changes(&layer, RUNTIME_MOUNTPOINTS))
            .await
            .map_err(|err| ApiError::internal(format!("reading the changes: {err}")))?
            .map_err(|err| {
                ApiError::internal(format!("reading the changes of container {}: {err}", c.id))
            })?;
    if changes.is_empty() {
        return Ok(Json(Value::Null));
    }
    Ok(Json(Value::Array(
        changes
            .iter()
            .map(|change| json!({ "Path": change.path, "Kind": change.kind.code() }))
            .collect(),
    )))
}

/// How much of the tar is sent at once.
const CHUNK: usize = 64 * 1024;

/// A `Write` that sends what is written, in chunks, to an async body; fails once the
/// body is gone (the client left), which stops the walk writing into it.
struct ChannelWriter {
    sender: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.sender.blocking_send(Ok(chunk)).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away")
        })
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

/// GET `/containers/{id}/export`: the container's root filesystem (its rootfs mount:
/// image layers and read-write layer, no volumes) as a tar stream.
pub(super) async fn export(
    State(server): State<Arc<DockerServer>>,
    Path(query): Path<String>,
) -> Result<Response, ApiError> {
    let c = find(&server, &query)?;
    let (rootfs, _) = server.runtime.container_rootfs(NAMESPACE, &c.id)?;
    // Opened before answering, so a missing rootfs is an error status, not a cut tar.
    let checked = rootfs.clone();
    tokio::task::spawn_blocking(move || std::fs::read_dir(&checked).map(drop))
        .await
        .map_err(|err| ApiError::internal(format!("exporting: {err}")))?
        .map_err(|err| {
            ApiError::internal(format!(
                "exporting container {}: its root filesystem {}: {err}",
                c.id,
                rootfs.display()
            ))
        })?;
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(8);
    let id = c.id.clone();
    tokio::task::spawn_blocking(move || {
        let errors = sender.clone();
        let writer = ChannelWriter {
            sender,
            buf: Vec::with_capacity(CHUNK),
        };
        let written = rwlayer::write_tar(&rootfs, None, writer).and_then(|mut w| w.flush());
        if let Err(err) = written {
            if err.kind() != std::io::ErrorKind::BrokenPipe {
                tracing::warn!(container = %id, "exporting the container: {err}");
                // An error ends the body without its last chunk: the client sees a cut
                // stream, not a tar that looks complete.
                let _ = errors.blocking_send(Err(err));
            }
        }
    });
    container_event(&server, &c, "export", &[]);
    let stream = futures_util::stream::poll_fn(move |cx| receiver.poll_recv(cx));
    let mut response = Response::new(Body::from_stream(stream));
    *response.status_mut() = StatusCode::OK;
    response.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("application/x-tar"),
    );
    Ok(response)
}
