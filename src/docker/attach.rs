//! POST `/containers/{id}/attach` and `/containers/{id}/resize`: the container's
//! stdio over a hijacked connection (`Upgrade: tcp`, 101, then raw bytes both ways; a
//! request without the upgrade gets a 200 with the output as its body, as dockerd's),
//! through the container's monitor (`runtime::monitor_control`): Docker's stdcopy
//! frames for output without a TTY, raw bytes with one; the client's input goes to the
//! container's stdin, and its half-close ends that input (closing the container's
//! stdin with `StdinOnce`) while output keeps flowing until the container exits. Since
//! the monitor exists from create on, an attach before start loses no output (what
//! `docker run` does).
//!
//! `logs=1` first replays the container's log (the streams asked for), then, with
//! `stream=1`, goes on with the live output: the monitor says where its output stood as
//! the attach took effect (the log's size and the start of a line not logged yet), so
//! each byte is shown once. `stream=0` ends the connection after the log. With a TTY
//! the client's input is watched for the detach keys (`detachKeys`, dockerd's
//! `ctrl-p,ctrl-q` by default): they end the attach and leave the container running,
//! as dockerd does (which looks for them only with a TTY).

use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::response::Response;
use futures_util::StreamExt;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::containers::{extension, find};
use super::error::ApiError;
use super::filesystem::container_event;
use super::logs::{replay, Selection};
use super::{DockerServer, NAMESPACE};
use crate::runtime::monitor_control::{AttachPoint, AttachStreams, Event, Session};
use crate::runtime::{ContainerState, RuntimeError};

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

/// How long a log replay waits after the 101 (see its use).
const HEADERS_READ_GRACE: std::time::Duration = std::time::Duration::from_millis(100);

/// dockerd's default detach keys: ctrl-p, ctrl-q.
pub(super) const DEFAULT_DETACH_KEYS: [u8; 2] = [16, 17];

/// Detach keys as moby's `term.ToBytes` reads them: comma-separated, each a single
/// character, `ctrl-@`, `ctrl-a`..`ctrl-z`, `ctrl-[`, `ctrl-\\`, `ctrl-]`, `ctrl-^`,
/// `ctrl-_` or `DEL`. None when one is none of those.
pub(super) fn parse_detach_keys(keys: &str) -> Option<Vec<u8>> {
    keys.split(',')
        .map(|key| match key.as_bytes() {
            [one] => Some(*one),
            b"DEL" => Some(127),
            [b'c', b't', b'r', b'l', b'-', code] => match code {
                b'@' => Some(0),
                b'a'..=b'z' => Some(code - b'a' + 1),
                b'[' => Some(27),
                b'\\' => Some(28),
                b']' => Some(29),
                b'^' => Some(30),
                b'_' => Some(31),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// `detachKeys` of a request: dockerd's default when absent or empty, a 400 with
/// dockerd's message when malformed. `what` is "detach" (attach) or "escape" (exec).
pub(super) fn detach_keys(value: Option<&str>, what: &str) -> Result<Vec<u8>, ApiError> {
    match value {
        None | Some("") => Ok(DEFAULT_DETACH_KEYS.to_vec()),
        Some(keys) => parse_detach_keys(keys).ok_or_else(|| {
            ApiError::bad_request(format!(
                "Invalid {what} keys ({}) provided",
                crate::image::bounded(keys, crate::image::MAX_ECHO)
            ))
        }),
    }
}

/// Finds the detach keys in a client's input (moby's `escapeProxy`, over a byte stream
/// rather than one read per key): bytes that may start the sequence are held back
/// until they turn out to be it (the attach ends) or not (they are passed on).
#[derive(Debug)]
pub(super) struct DetachMatcher {
    keys: Vec<u8>,
    held: Vec<u8>,
}

/// The client's input in `data` that goes on to the process, into `passed` (cleared
/// first): all of it without a matcher, else what the detach-key matcher lets through.
/// Returns whether the detach keys were typed.
pub(super) fn pass_input(
    matcher: Option<&mut DetachMatcher>,
    data: &[u8],
    passed: &mut Vec<u8>,
) -> bool {
    passed.clear();
    match matcher {
        Some(matcher) => matcher.feed(data, passed),
        None => {
            passed.extend_from_slice(data);
            false
        }
    }
}

impl DetachMatcher {
    pub(super) fn new(keys: Vec<u8>) -> DetachMatcher {
        DetachMatcher {
            keys,
            held: Vec::new(),
        }
    }

    /// Appends to `out` what of `data` goes on to the container; true when the keys
    /// were typed (then what followed them is dropped).
    pub(super) fn feed(&mut self, data: &[u8], out: &mut Vec<u8>) -> bool {
        if self.keys.is_empty() {
            out.extend_from_slice(data);
            return false;
        }
        for &byte in data {
            self.held.push(byte);
            while !self.keys.starts_with(&self.held) {
                out.push(self.held.remove(0));
            }
            if self.held.len() == self.keys.len() {
                self.held.clear();
                return true;
            }
        }
        false
    }
}

/// One stdcopy frame: `[stream, 0, 0, 0, length BE32]` + data.
pub(super) fn frame(stream: u8, data: &[u8], out: &mut Vec<u8>) {
    out.push(stream);
    out.extend_from_slice(&[0, 0, 0]);
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
}

/// POST `/containers/{id}/attach?stream=&logs=&stdin=&stdout=&stderr=&detachKeys=`.
pub(super) async fn attach(
    State(server): State<Arc<DockerServer>>,
    Path(query): Path<String>,
    Query(params): Query<AttachQuery>,
    mut request: Request,
) -> Result<Response, ApiError> {
    let keys = detach_keys(params.detach_keys.as_deref(), "detach")?;
    let container = find(&server, &query)?;
    if container.paused {
        return Err(ApiError::conflict(format!(
            "container {} is paused, unpause the container before attach",
            crate::image::bounded(&query, crate::image::MAX_ECHO)
        )));
    }
    let upgrade = request
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("tcp"));
    let tty = container.spec.tty;
    let logs = truthy(&params.logs);
    let want_stderr = truthy(&params.stderr);
    let streams = AttachStreams {
        stdin: truthy(&params.stdin),
        stdout: truthy(&params.stdout),
        // With a TTY stderr is stdout (the terminal merges them): Docker clients ask
        // for both, the monitor has one.
        stderr: want_stderr && !tty,
    };
    let log_path = std::path::PathBuf::from(extension(&container).log_path);
    // Attached before the 101, so a refusal is an HTTP error the client reads.
    let mut next_run = None;
    let live = if truthy(&params.stream) {
        let attached = if !matches!(
            container.state,
            ContainerState::Created | ContainerState::Running
        ) {
            // Stopped: dockerd's stream waits for the next run (`docker start -a`,
            // docker-compose 1.x's `up` attach before they start), and carries it
            // from where the log is now.
            next_run = Some(NextRun {
                log_offset: log_size(&log_path).await,
                started_at: container.started_at,
            });
            None
        } else {
            match server
                .runtime
                .attach_at(NAMESPACE, &container.id, streams)
                .await
            {
                Ok(attached) => Some(attached),
                // It exited meanwhile: its log is complete.
                Err(RuntimeError::FailedPrecondition(_)) if logs => None,
                Err(err) => return Err(err.into()),
            }
        };
        match attached {
            Some((session, mut point)) => {
                if point.log_offset.is_none() && logs {
                    // A monitor that does not say: the log's size now is the nearest.
                    point.log_offset = tokio::fs::metadata(&log_path).await.ok().map(|m| m.len());
                }
                Some((session, point))
            }
            None => None,
        }
    } else {
        None
    };
    container_event(&server, &container, "attach", &[]);
    let attach = Attachment {
        server: server.clone(),
        id: container.id.clone(),
        live,
        next_run,
        logs,
        log_path,
        selection: Selection::streams(streams.stdout, want_stderr, !tty),
        streams,
        tty,
        keys,
    };
    if !upgrade {
        // dockerd answers a plain request (curl's) with 200 and the stream as the body;
        // stdin is the request's body if it has one, else never ends (an empty body is
        // not a half-close that would close a `StdinOnce` container's stdin).
        let has_body = request.headers().contains_key(header::CONTENT_LENGTH)
            || request.headers().contains_key(header::TRANSFER_ENCODING);
        let stdin: Box<dyn tokio::io::AsyncRead + Unpin + Send> = if has_body {
            Box::new(tokio_util::io::StreamReader::new(
                request
                    .into_body()
                    .into_data_stream()
                    .map(|chunk| chunk.map_err(std::io::Error::other)),
            ))
        } else {
            Box::new(tokio_util::io::StreamReader::new(
                futures_util::stream::pending::<Result<axum::body::Bytes, std::io::Error>>(),
            ))
        };
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        tokio::spawn(attach.serve(stdin, ours));
        return Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "application/vnd.docker.raw-stream")
            .body(axum::body::Body::from_stream(
                tokio_util::io::ReaderStream::new(theirs),
            ))
            .map_err(|err| ApiError::internal(err.to_string()));
    }
    let on_upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(err) => {
                tracing::warn!(container = %attach.id, "attach: the connection upgrade failed: {err}");
                return;
            }
        };
        let (reader, writer) = tokio::io::split(TokioIo::new(upgraded));
        attach.serve(reader, writer).await;
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "tcp")
        .header(header::CONTENT_TYPE, "application/vnd.docker.raw-stream")
        .body(axum::body::Body::empty())
        .map_err(|err| ApiError::internal(err.to_string()))
}

/// An attach once accepted: what it replays and streams.
struct Attachment {
    server: Arc<DockerServer>,
    id: String,
    live: Option<(Session, AttachPoint)>,
    /// Stopped when attached: the stream is the next run's.
    next_run: Option<NextRun>,
    logs: bool,
    log_path: std::path::PathBuf,
    selection: Selection,
    streams: AttachStreams,
    tty: bool,
    keys: Vec<u8>,
}

impl Attachment {
    /// Replays the log (when asked), then the live streams, over `reader` (the
    /// client's input) and `writer` (the container's output).
    async fn serve<R, W>(mut self, reader: R, mut writer: W)
    where
        R: tokio::io::AsyncRead + Unpin + Send + 'static,
        W: tokio::io::AsyncWrite + Unpin,
    {
        let mut point = self.live.as_ref().map(|(_, point)| point.clone());
        if let Some(next) = self.next_run {
            // The log before the next run.
            point = Some(AttachPoint {
                log_offset: Some(next.log_offset),
                stdout_pending: Vec::new(),
                stderr_pending: Vec::new(),
            });
        }
        if self.logs {
            // A client that reads the 101 through a buffered reader and then takes the
            // socket under it (docker-py) loses what came with the headers: the log,
            // ready at once, waits until it has read them.
            tokio::time::sleep(HEADERS_READ_GRACE).await;
        }
        if self.logs
            && replay_logs(
                &self.log_path,
                point.as_ref(),
                &self.selection,
                self.tty,
                &mut writer,
            )
            .await
            .is_err()
        {
            return;
        }
        if let Some(next) = self.next_run {
            // What the next run wrote before the attach reached its monitor comes
            // from the log.
            // A client's end of input is no sign it left (the docker CLI half-closes
            // at once without -i): the wait ends with the next run or the removal.
            self.live = self.wait_for_next_run(next.started_at).await;
            let from = next.log_offset;
            let point = self.live.as_ref().map(|(_, point)| point.clone());
            let limit = point.as_ref().and_then(|p| p.log_offset);
            if replay(&self.log_path, from, limit, &self.selection, &mut writer)
                .await
                .is_err()
            {
                return;
            }
            if let Some(point) = point {
                if write_pending(&point, self.tty, &mut writer).await.is_err() {
                    return;
                }
            }
        }
        if let Some((session, _)) = self.live {
            let detached = stream_live(
                session,
                self.streams,
                self.tty,
                self.keys,
                reader,
                &mut writer,
                &self.id,
            )
            .await;
            if detached {
                if let Some(container) = self.server.runtime.container(&self.id) {
                    container_event(&self.server, &container, "detach", &[]);
                }
            }
        }
        let _ = writer.flush().await;
        let _ = writer.shutdown().await;
    }
}

async fn log_size(path: &std::path::Path) -> u64 {
    tokio::fs::metadata(path).await.map_or(0, |m| m.len())
}

impl Attachment {
    /// Waits until the stopped container runs again (its new monitor is up), then
    /// attaches to it. None if it is removed first, or ran and exited between two
    /// looks (started since `started_at`: its log has the whole run).
    async fn wait_for_next_run(&self, started_at: i64) -> Option<(Session, AttachPoint)> {
        let mut poll = NEXT_RUN_POLL;
        loop {
            let container = self.server.runtime.container(&self.id)?;
            if matches!(
                container.state,
                ContainerState::Created | ContainerState::Running
            ) {
                return self
                    .server
                    .runtime
                    .attach_at(NAMESPACE, &self.id, self.streams)
                    .await
                    .ok();
            }
            if container.started_at != started_at {
                return None;
            }
            tokio::time::sleep(poll).await;
            poll = (poll * 2).min(NEXT_RUN_POLL_MAX);
        }
    }
}

/// Where a stopped container was when attached.
#[derive(Debug, Clone, Copy)]
struct NextRun {
    /// Its log's size.
    log_offset: u64,
    started_at: i64,
}

/// How often an attach to a stopped container looks for its next run: at first, and
/// at most (a `start` soon after the attach is the usual case).
const NEXT_RUN_POLL: std::time::Duration = std::time::Duration::from_millis(10);
const NEXT_RUN_POLL_MAX: std::time::Duration = std::time::Duration::from_millis(200);

/// The log up to where the live output starts (all of it when nothing is live), then
/// what the streams wrote since their last logged line.
async fn replay_logs<W: tokio::io::AsyncWrite + Unpin>(
    path: &std::path::Path,
    point: Option<&AttachPoint>,
    selection: &Selection,
    tty: bool,
    writer: &mut W,
) -> std::io::Result<()> {
    let limit = point.and_then(|p| p.log_offset);
    if let Err(err) = replay(path, 0, limit, selection, writer).await {
        tracing::debug!(path = %path.display(), "attach: replaying the log: {err}");
        return Err(err);
    }
    match point {
        Some(point) => write_pending(point, tty, writer).await,
        None => Ok(()),
    }
}

/// What the streams wrote since their last logged line (the monitor's), framed.
async fn write_pending<W: tokio::io::AsyncWrite + Unpin>(
    point: &AttachPoint,
    tty: bool,
    writer: &mut W,
) -> std::io::Result<()> {
    let mut out = Vec::new();
    for (stream, pending) in [(1u8, &point.stdout_pending), (2, &point.stderr_pending)] {
        if pending.is_empty() {
            continue;
        }
        if tty {
            out.extend_from_slice(pending);
        } else {
            frame(stream, pending, &mut out);
        }
    }
    if !out.is_empty() {
        writer.write_all(&out).await?;
    }
    Ok(())
}

/// The live part of an attach: the container's output to the client until it exits
/// (or the client goes), the client's input to its stdin. Returns whether the client
/// typed the detach keys (looked for with a TTY only, as dockerd).
async fn stream_live<R, W>(
    session: Session,
    streams: AttachStreams,
    tty: bool,
    keys: Vec<u8>,
    mut reader: R,
    writer: &mut W,
    id: &str,
) -> bool
where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
    W: tokio::io::AsyncWrite + Unpin,
{
    let (control, mut events) = session.into_parts();
    let (detach_tx, mut detach_rx) = tokio::sync::oneshot::channel::<()>();
    let input = if streams.stdin {
        let control = control.clone();
        Some(tokio::spawn(async move {
            let mut matcher = tty.then(|| DetachMatcher::new(keys));
            let mut buf = vec![0u8; 32 * 1024];
            let mut passed = Vec::with_capacity(buf.len());
            loop {
                match reader.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let detached = pass_input(matcher.as_mut(), &buf[..n], &mut passed);
                        if !passed.is_empty() && control.write_stdin(&passed).await.is_err() {
                            return;
                        }
                        if detached {
                            // The container's stdin stays as it is: no end of input.
                            let _ = detach_tx.send(());
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
    let (mut detached, mut input_done) = (false, false);
    let mut out = Vec::with_capacity(32 * 1024);
    loop {
        let event = tokio::select! {
            event = events.next() => event,
            result = &mut detach_rx, if !input_done => {
                input_done = true;
                if result.is_ok() {
                    detached = true;
                    break;
                }
                // The input ended without detaching: output goes on.
                continue;
            }
        };
        let Some(event) = event else { break };
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
    if let Some(input) = input {
        input.abort();
    }
    drop(control);
    detached
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
    fn detach_keys_read_as_dockers() {
        assert_eq!(parse_detach_keys("ctrl-p,ctrl-q"), Some(vec![16, 17]));
        assert_eq!(
            parse_detach_keys("ctrl-@,ctrl-a,ctrl-z,ctrl-[,ctrl-\\,ctrl-],ctrl-^,ctrl-_"),
            Some(vec![0, 1, 26, 27, 28, 29, 30, 31])
        );
        assert_eq!(parse_detach_keys("a,b,DEL"), Some(vec![b'a', b'b', 127]));
        for bad in [
            "",
            "ctrl-",
            "ctrl-A",
            "ctrl-1",
            "ab",
            "a,",
            "ctrl-p,,ctrl-q",
        ] {
            assert_eq!(parse_detach_keys(bad), None, "{bad:?}");
        }
        assert_eq!(detach_keys(None, "detach").unwrap(), vec![16, 17]);
        assert_eq!(detach_keys(Some(""), "detach").unwrap(), vec![16, 17]);
        let err = detach_keys(Some("ctrl-"), "detach").unwrap_err();
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
        assert_eq!(err.message, "Invalid detach keys (ctrl-) provided");
    }

    #[test]
    fn detach_keys_are_found_in_a_byte_stream() {
        let mut out = Vec::new();
        let mut m = DetachMatcher::new(vec![16, 17]);
        // Not the sequence: everything passes, the held key too.
        assert!(!m.feed(b"ab\x10", &mut out));
        assert_eq!(out, b"ab");
        assert!(!m.feed(b"c", &mut out));
        assert_eq!(out, b"ab\x10c");
        // The sequence across reads: what came before passes, what follows is dropped.
        out.clear();
        assert!(!m.feed(b"x\x10", &mut out));
        assert!(m.feed(b"\x11after", &mut out));
        assert_eq!(out, b"x");
        // Overlapping starts: p p q is a p, then the sequence.
        let mut m = DetachMatcher::new(vec![16, 16, 17]);
        out.clear();
        assert!(m.feed(b"\x10\x10\x10\x11", &mut out));
        assert_eq!(out, b"\x10");
        // A held key followed by the start again.
        let mut m = DetachMatcher::new(vec![b'a', b'b']);
        out.clear();
        assert!(!m.feed(b"aa", &mut out));
        assert_eq!(out, b"a");
        assert!(m.feed(b"b", &mut out));
        assert_eq!(out, b"a");
    }

    #[test]
    fn stdcopy_frames() {
        let mut out = Vec::new();
        frame(2, b"oops", &mut out);
        assert_eq!(out, b"\x02\0\0\0\0\0\0\x04oops");
    }
}
