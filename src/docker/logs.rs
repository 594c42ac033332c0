//! GET `/containers/{id}/logs`: the container's log file (the CRI format the monitor
//! writes: `<RFC 3339 time> <stream> <P|F> <text>`) as Docker clients read it:
//! stdcopy frames (`[stream, 0, 0, 0, length BE32]` + bytes) for a container without a
//! TTY, raw bytes with one; `stdout`, `stderr`, `since`, `until`, `timestamps`, `tail`,
//! and `follow` until the container stops.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::response::Response;
use serde::Deserialize;
use tokio::io::AsyncReadExt;

use super::containers::{extension, find};
use super::error::ApiError;
use super::DockerServer;
use crate::runtime::ContainerState;

/// How often a follower looks for new lines while the container runs quietly.
const FOLLOW_POLL: Duration = Duration::from_millis(100);

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub(super) struct LogsQuery {
    stdout: Option<String>,
    stderr: Option<String>,
    follow: Option<String>,
    since: Option<String>,
    until: Option<String>,
    timestamps: Option<String>,
    tail: Option<String>,
}

fn truthy(value: &Option<String>) -> bool {
    matches!(value.as_deref(), Some("1" | "true" | "True" | "yes"))
}

/// `since` / `until`: Unix seconds, with an optional fraction; 0 or absent: no bound.
fn parse_time(value: &Option<String>, key: &str) -> Result<Option<i64>, ApiError> {
    let Some(text) = value.as_deref().filter(|t| !t.is_empty() && *t != "0") else {
        return Ok(None);
    };
    let (secs, frac) = text.split_once('.').unwrap_or((text, ""));
    let secs: i64 = secs
        .parse()
        .map_err(|_| ApiError::bad_request(format!("invalid value for {key}: {text:?}")))?;
    let mut nanos: i64 = 0;
    if !frac.is_empty() {
        let digits: String = frac.chars().take(9).collect();
        nanos = format!("{digits:0<9}")
            .parse()
            .map_err(|_| ApiError::bad_request(format!("invalid value for {key}: {text:?}")))?;
    }
    Ok(Some(secs * 1_000_000_000 + nanos))
}

/// One line of the log file.
#[derive(Debug, PartialEq, Eq)]
struct LogLine<'a> {
    time: &'a str,
    nanos: i64,
    stderr: bool,
    partial: bool,
    text: &'a [u8],
}

fn parse_line(line: &[u8]) -> Option<LogLine<'_>> {
    let mut fields = line.splitn(4, |b| *b == b' ');
    let time = std::str::from_utf8(fields.next()?).ok()?;
    let stream = fields.next()?;
    let tag = fields.next()?;
    let text = fields.next().unwrap_or_default();
    let nanos = chrono::DateTime::parse_from_rfc3339(time)
        .ok()?
        .timestamp_nanos_opt()?;
    Some(LogLine {
        time,
        nanos,
        stderr: stream == b"stderr",
        partial: tag.first() == Some(&b'P'),
        text,
    })
}

/// What the request selects, and how it is framed.
pub(super) struct Selection {
    stdout: bool,
    stderr: bool,
    since: Option<i64>,
    until: Option<i64>,
    timestamps: bool,
    framed: bool,
}

impl Selection {
    /// Every line of the streams asked for, as they were written (attach's `logs`).
    pub(super) fn streams(stdout: bool, stderr: bool, framed: bool) -> Selection {
        Selection {
            stdout,
            stderr,
            since: None,
            until: None,
            timestamps: false,
            framed,
        }
    }

    /// The bytes a client gets for `line` (empty when it is not selected).
    fn render(&self, line: &LogLine<'_>, out: &mut Vec<u8>) {
        if (line.stderr && !self.stderr) || (!line.stderr && !self.stdout) {
            return;
        }
        if self.since.is_some_and(|s| line.nanos < s) || self.until.is_some_and(|u| line.nanos > u)
        {
            return;
        }
        let mut payload = Vec::with_capacity(line.text.len() + 40);
        if self.timestamps {
            payload.extend_from_slice(line.time.as_bytes());
            payload.push(b' ');
        }
        payload.extend_from_slice(line.text);
        if !line.partial {
            payload.push(b'\n');
        }
        if self.framed {
            out.push(if line.stderr { 2 } else { 1 });
            out.extend_from_slice(&[0, 0, 0]);
            out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        }
        out.extend_from_slice(&payload);
    }
}

/// GET `/containers/{id}/logs`.
pub(super) async fn logs(
    State(server): State<Arc<DockerServer>>,
    Path(query): Path<String>,
    Query(params): Query<LogsQuery>,
) -> Result<Response, ApiError> {
    let container = find(&server, &query)?;
    let ext = extension(&container);
    if ext.log_path.is_empty() {
        return Err(ApiError::bad_request(
            "configured logging driver does not support reading",
        ));
    }
    let selection = Selection {
        stdout: truthy(&params.stdout),
        stderr: truthy(&params.stderr),
        since: parse_time(&params.since, "since")?,
        until: parse_time(&params.until, "until")?,
        timestamps: truthy(&params.timestamps),
        framed: !container.spec.tty,
    };
    if !selection.stdout && !selection.stderr {
        return Err(ApiError::bad_request(
            "Bad parameters: you must choose at least one stream",
        ));
    }
    let tail = match params.tail.as_deref() {
        None | Some("" | "all") => None,
        Some(n) => Some(
            n.parse::<usize>()
                .map_err(|_| ApiError::bad_request(format!("invalid value for tail: {n:?}")))?,
        ),
    };
    let follow = truthy(&params.follow) && selection.until.is_none();
    let path = std::path::PathBuf::from(&ext.log_path);
    let runtime = server.runtime.clone();
    let id = container.id.clone();
    // API 1.41 calls both framed and raw streams this (1.42 added multiplexed-stream).
    let content_type = "application/vnd.docker.raw-stream";

    let stream = async_stream(move |sender| async move {
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(file) => Some(file),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
            Err(err) => {
                tracing::warn!(path = %path.display(), "reading a container log: {err}");
                return;
            }
        };
        // Files the monitor rotated (`--log-opt max-size`) come first, oldest first;
        // each ends with a whole line.
        let mut pending: Vec<u8> = Vec::new();
        for rotated in crate::monitor::rotate::rotated_files(&path) {
            match tokio::fs::read(&rotated).await {
                Ok(bytes) => pending.extend_from_slice(&bytes),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => {
                    tracing::warn!(path = %rotated.display(), "reading a container log: {err}");
                    return;
                }
            }
        }
        let mut buf = vec![0u8; 64 * 1024];
        // The tail: the last N selected lines of what is there now.
        let mut first_pass = true;
        loop {
            let mut read_any = false;
            if let Some(f) = file.as_mut() {
                if let Err(err) = read_to_end(f, &mut buf, &mut pending, &mut read_any).await {
                    tracing::warn!("reading a container log: {err}");
                    return;
                }
                // Rotated while followed: what the old file got last, then the new one.
                if follow && !read_any && replaced(f, &path).await {
                    if let Err(err) = read_to_end(f, &mut buf, &mut pending, &mut read_any).await {
                        tracing::warn!("reading a container log: {err}");
                        return;
                    }
                    file = tokio::fs::File::open(&path).await.ok();
                    read_any = true;
                }
            }
            let complete = pending
                .iter()
                .rposition(|b| *b == b'\n')
                .map_or(0, |i| i + 1);
            let mut out = Vec::new();
            if complete > 0 {
                let lines: Vec<&[u8]> = pending[..complete]
                    .split(|b| *b == b'\n')
                    .filter(|l| !l.is_empty())
                    .collect();
                if first_pass && tail.is_some() {
                    let keep = tail.unwrap_or(usize::MAX);
                    let mut rendered: VecDeque<Vec<u8>> = VecDeque::new();
                    for line in lines.iter().filter_map(|l| parse_line(l)) {
                        let mut one = Vec::new();
                        selection.render(&line, &mut one);
                        if !one.is_empty() {
                            rendered.push_back(one);
                            if rendered.len() > keep {
                                rendered.pop_front();
                            }
                        }
                    }
                    for one in rendered {
                        out.extend_from_slice(&one);
                    }
                } else {
                    for line in lines.iter().filter_map(|l| parse_line(l)) {
                        selection.render(&line, &mut out);
                    }
                }
                pending.drain(..complete);
            }
            first_pass = false;
            if !out.is_empty() && sender.send(Bytes::from(out)).await.is_err() {
                return; // the client left
            }
            if !follow {
                return;
            }
            let running = runtime.container(&id).is_some_and(|c| {
                matches!(c.state, ContainerState::Running | ContainerState::Created)
            });
            if !running && !read_any {
                return;
            }
            if file.is_none() {
                file = tokio::fs::File::open(&path).await.ok();
            }
            if !read_any {
                tokio::time::sleep(FOLLOW_POLL).await;
            }
        }
    });
    Response::builder()
        .status(200)
        .header("content-type", content_type)
        .body(Body::from_stream(stream))
        .map_err(|err| ApiError::internal(err.to_string()))
}

/// Appends what is left in `file` to `pending` (`read_any` set when there was some).
async fn read_to_end(
    file: &mut tokio::fs::File,
    buf: &mut [u8],
    pending: &mut Vec<u8>,
    read_any: &mut bool,
) -> std::io::Result<()> {
    loop {
        match file.read(buf).await? {
            0 => return Ok(()),
            n => {
                *read_any = true;
                pending.extend_from_slice(&buf[..n]);
            }
        }
    }
}

/// Whether `path` is no longer the file `file` has open (the monitor rotated it).
async fn replaced(file: &tokio::fs::File, path: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(open), current) = (file.metadata().await, tokio::fs::metadata(path).await) else {
        return false;
    };
    match current {
        Ok(current) => (current.dev(), current.ino()) != (open.dev(), open.ino()),
        Err(err) => err.kind() == std::io::ErrorKind::NotFound,
    }
}

/// Writes the selected lines of the log at `path`, from byte `from` (a line's start)
/// up to byte `limit` (the end without), to `out`: what `attach?logs=1` replays. A log
/// not there yet is empty; a line cut at `limit` is left out (it was not complete
/// there).
pub(super) async fn replay<W: tokio::io::AsyncWrite + Unpin>(
    path: &std::path::Path,
    from: u64,
    limit: Option<u64>,
    selection: &Selection,
    out: &mut W,
) -> std::io::Result<()> {
    use tokio::io::{AsyncSeekExt, AsyncWriteExt};
    let mut file = match tokio::fs::File::open(path).await {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(err),
    };
    file.seek(std::io::SeekFrom::Start(from)).await?;
    let mut file = file.take(limit.map_or(u64::MAX, |limit| limit.saturating_sub(from)));
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut rendered = Vec::new();
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        pending.extend_from_slice(&buf[..n]);
        let complete = pending
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |i| i + 1);
        rendered.clear();
        for line in pending[..complete]
            .split(|b| *b == b'\n')
            .filter_map(parse_line)
        {
            selection.render(&line, &mut rendered);
        }
        pending.drain(..complete);
        if !rendered.is_empty() {
            out.write_all(&rendered).await?;
        }
    }
}

/// A body stream fed by a task: the task sends chunks; the stream ends when it returns
/// (or the client goes away and the send fails).
pub(super) fn async_stream<F, Fut>(
    task: F,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send
where
    F: FnOnce(tokio::sync::mpsc::Sender<Bytes>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (sender, receiver) = tokio::sync::mpsc::channel::<Bytes>(16);
    tokio::spawn(task(sender));
    futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|chunk| (Ok(chunk), receiver))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_framed_and_filtered() {
        let out_line = parse_line(b"2026-12-04T10:00:00.000000001Z stdout F hello").unwrap();
        let err_line = parse_line(b"2026-12-04T10:00:01Z stderr P oops").unwrap();
        assert!(!out_line.partial && err_line.partial && err_line.stderr);
        let mut selection = Selection {
            stdout: true,
            stderr: true,
            since: None,
            until: None,
            timestamps: false,
            framed: true,
        };
        let mut out = Vec::new();
        selection.render(&out_line, &mut out);
        assert_eq!(out, b"\x01\0\0\0\0\0\0\x06hello\n");
        out.clear();
        selection.render(&err_line, &mut out);
        assert_eq!(out, b"\x02\0\0\0\0\0\0\x04oops");
        selection.framed = false;
        selection.timestamps = true;
        out.clear();
        selection.render(&out_line, &mut out);
        assert_eq!(out, b"2026-12-04T10:00:00.000000001Z hello\n");
        selection.since = parse_time(&Some("1796464801".into()), "since").unwrap();
        out.clear();
        selection.render(&out_line, &mut out);
        assert!(out.is_empty());
        assert!(parse_time(&Some("x".into()), "since").is_err());
        assert_eq!(
            parse_time(&Some("1.5".into()), "since").unwrap(),
            Some(1_500_000_000)
        );
    }
}
