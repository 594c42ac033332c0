//! POST `/containers/{id}/attach` and `/containers/{id}/resize`: the container's
//! stdio over a hijacked connection (`Upgrade: tcp`, 101, then raw bytes both ways),
//! through the container's monitor (`runtime::monitor_control`): Docker's stdcopy
//! frames for output without a TTY, raw bytes with one; the client's input goes to the
//! container's stdin, and its half-close ends that input (closing the container's
//! stdin with `StdinOnce`) while output keeps flowing until the container exits. Since
//! the monitor exists from create on, an attach before start loses no output (what
//! `docker run` does).

use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::response::Response;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::containers::find;
use super::error::ApiError;
use super::{DockerServer, NAMESPACE};
use crate::runtime::monitor_control::{AttachStreams, Event};

#[derive(Debug, Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
pub(super) struct AttachQuery {
    stream: Option<String>,
    stdin: Option<String>,
    stdout: Option<String>,
    stderr: Option<String>,
    logs: Option<String>,
    detach_keys: Option<String>,
}

fn truthy(value: &Option<String>) -> bool {
    matches!(value.as_deref(), Some("1" | "true" | "True"))
}

/// One stdcopy frame: `[stream, 0, 0, 0, length BE32]` + data.
pub(super) fn frame(stream: u8, data: &[u8], out: &mut Vec<u8>) {
    out.push(stream);
    out.extend_from_slice(&[0, 0, 0]);
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
}

/// POST `/containers/{id}/attach?stream=1&stdin=&stdout=&stderr=`.
pub(super) async fn attach(
    State(server): State<Arc<DockerServer>>,
    Path(query): Path<String>,
    Query(params): Query<AttachQuery>,
    mut request: Request,
) -> Result<Response, ApiError> {
    let container = find(&server, &query)?;
    if !truthy(&params.stream) {
        // `logs` without `stream`: what the log holds, then the end.
        return Err(ApiError::bad_request(
            "attach without stream=1 is not supported by wharf yet; use the logs endpoint",
        ));
    }
    let _ = (&params.logs, &params.detach_keys);
    let upgrade = request
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("tcp"));
    if !upgrade {
        return Err(ApiError::bad_request(
            "attach needs a connection upgrade (Upgrade: tcp), as the docker CLI and SDKs send",
        ));
    }
    let streams = AttachStreams {
        stdin: truthy(&params.stdin),
        stdout: truthy(&params.stdout),
        // With a TTY stderr is stdout (the terminal merges them): Docker clients ask
        // for both, the monitor has one.
        stderr: truthy(&params.stderr) && !container.spec.tty,
    };
    // Attached before the 101, so a refusal is an HTTP error the client reads.
    let session = server
        .runtime
        .attach(NAMESPACE, &container.id, streams)
        .await?;
    let tty = session.info().tty;
    let on_upgrade = hyper::upgrade::on(&mut request);
    let id = container.id.clone();
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(err) => {
                tracing::warn!(container = %id, "attach: the connection upgrade failed: {err}");
                return;
            }
        };
        let (mut reader, mut writer) = tokio::io::split(TokioIo::new(upgraded));
        let (control, mut events) = session.into_parts();
        let input = if streams.stdin {
            let control = control.clone();
            Some(tokio::spawn(async move {
                let mut buf = vec![0u8; 32 * 1024];
                loop {
                    match reader.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if control.write_stdin(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                // The client half-closed: its input ends (StdinOnce closes stdin).
                let _ = control.end_stdin().await;
            }))
        } else {
            None
        };
        let mut out = Vec::with_capacity(32 * 1024);
        while let Some(event) = events.next().await {
            out.clear();
            match event {
                Ok(Event::Stdout(data)) if tty => out.extend_from_slice(&data),
                Ok(Event::Stdout(data)) => frame(1, &data, &mut out),
                Ok(Event::Stderr(data)) if tty => out.extend_from_slice(&data),
                Ok(Event::Stderr(data)) => frame(2, &data, &mut out),
                Ok(Event::Exit { .. }) => break,
                Err(err) => {
                    tracing::debug!(container = %id, "attach: {err}");
                    break;
                }
            }
            if writer.write_all(&out).await.is_err() {
                break;
            }
        }
        let _ = writer.flush().await;
        let _ = writer.shutdown().await;
        if let Some(input) = input {
            input.abort();
        }
        drop(control);
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "tcp")
        .header(header::CONTENT_TYPE, "application/vnd.docker.raw-stream")
        .body(axum::body::Body::empty())
        .map_err(|err| ApiError::internal(err.to_string()))
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub(super) struct ResizeQuery {
    h: Option<u32>,
    w: Option<u32>,
}

/// POST `/containers/{id}/resize?h=&w=`: the TTY's window size; 200.
pub(super) async fn resize(
    State(server): State<Arc<DockerServer>>,
    Path(query): Path<String>,
    Query(params): Query<ResizeQuery>,
) -> Result<StatusCode, ApiError> {
    let container = find(&server, &query)?;
    let (Some(height), Some(width)) = (params.h, params.w) else {
        return Err(ApiError::bad_request("resize needs h and w"));
    };
    let (Ok(height), Ok(width)) = (u16::try_from(height), u16::try_from(width)) else {
        return Err(ApiError::bad_request("h and w must be at most 65535"));
    };
    let session = server
        .runtime
        .monitor_session(NAMESPACE, &container.id)
        .await?;
    if !session.info().tty {
        return Err(ApiError::bad_request(format!(
            "container {} has no TTY to resize",
            container.id
        )));
    }
    session
        .control
        .resize(width, height)
        .await
        .map_err(|err| ApiError::from_error(&err))?;
    Ok(StatusCode::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdcopy_frames() {
        let mut out = Vec::new();
        frame(2, b"oops", &mut out);
        assert_eq!(out, b"\x02\0\0\0\0\0\0\x04oops");
    }
}
