//! `docker exec`: POST `/containers/{id}/exec` (create), POST `/exec/{id}/start`
//! (hijacked, or detached), POST `/exec/{id}/resize`, GET `/exec/{id}/json` (inspect;
//! the CLI reads the exit code there once the stream ends).
//!
//! The process runs through the container's monitor (`Runtime::exec`, the exec
//! sessions of the monitor control channel, as CRI Exec): the stream carries Docker's
//! stdcopy frames without a TTY and raw bytes with one; the client's half-close ends
//! the process's stdin. A detached exec (`-d`) keeps its session in a task of the
//! daemon until it exits. As dockerd, exec instances live in memory: a restarted
//! wharfd has forgotten them (and its monitors killed their processes).

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::containers::find;
use super::error::{parse_json, ApiError};
use super::{DockerServer, NAMESPACE};
use crate::runtime::monitor_control::{Control, Event, Events, ExecRequest};

/// Finished exec instances kept for inspect (dockerd keeps them until the container
/// goes); the oldest finished ones go first beyond this.
const MAX_FINISHED: usize = 1024;

/// One exec instance.
#[derive(Debug, Clone)]
pub(super) struct ExecEntry {
    id: String,
    container_id: String,
    config: ExecConfig,
    started: bool,
    running: bool,
    exit_code: Option<i32>,
    pid: i32,
    /// The running session, for resize.
    control: Option<Control>,
    /// A resize that came before the process ran: its first size.
    pending_size: Option<(u16, u16)>,
    /// Order of finishing, for eviction.
    finished_seq: u64,
}

/// The instances, by ID.
#[derive(Debug, Default)]
pub(super) struct Execs {
    entries: HashMap<String, ExecEntry>,
    seq: u64,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, rename_all = "PascalCase")]
struct ExecConfig {
    attach_stdin: bool,
    attach_stdout: bool,
    attach_stderr: bool,
    /// docker-py spells it `detachKeys` (dockerd's JSON decoding ignores case).
    #[serde(alias = "detachKeys")]
    detach_keys: String,
    tty: bool,
    env: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    privileged: bool,
    user: String,
    working_dir: String,
    /// [height, width] (API 1.42; accepted when sent).
    console_size: Option<[u32; 2]>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default, rename_all = "PascalCase")]
struct StartConfig {
    detach: bool,
    tty: Option<bool>,
    console_size: Option<[u32; 2]>,
}

fn lock(server: &DockerServer) -> std::sync::MutexGuard<'_, Execs> {
    server.execs.lock().unwrap_or_else(|p| p.into_inner())
}

fn no_such_exec(id: &str) -> ApiError {
    ApiError::not_found(format!("No such exec instance: {id}"))
}

/// POST `/containers/{id}/exec`: 201 `{"Id"}`.
pub(super) async fn create(
    State(server): State<Arc<DockerServer>>,
    Path(query): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let config: ExecConfig = parse_json(&body)?;
    let container = find(&server, &query)?;
    if container.state != crate::runtime::ContainerState::Running {
        return Err(ApiError::conflict(format!(
            "Container {} is not running",
            container.id
        )));
    }
    if container.paused {
        return Err(ApiError::conflict(format!(
            "Container {} is paused, unpause the container before exec",
            container.id
        )));
    }
    if config.cmd.as_ref().is_none_or(Vec::is_empty) {
        return Err(ApiError::bad_request("No exec command specified"));
    }
    // dockerd's words (its exec create says "escape" where attach says "detach").
    super::attach::detach_keys(Some(&config.detach_keys), "escape")?;
    if config.privileged {
        return Err(ApiError::bad_request(
            "privileged exec is not supported by wharf: the process gets the container's \
             capabilities and seccomp profile",
        ));
    }
    if !config.working_dir.is_empty() && !config.working_dir.starts_with('/') {
        return Err(ApiError::bad_request(format!(
            "the working directory {:?} is invalid: it needs to be an absolute path",
            config.working_dir
        )));
    }
    let id = crate::runtime::new_id().map_err(ApiError::from)?;
    lock(&server).entries.insert(
        id.clone(),
        ExecEntry {
            id: id.clone(),
            container_id: container.id,
            config,
            started: false,
            running: false,
            exit_code: None,
            pid: 0,
            control: None,
            pending_size: None,
            finished_seq: 0,
        },
    );
    Ok((StatusCode::CREATED, Json(json!({ "Id": id }))).into_response())
}

/// GET `/exec/{id}/json`.
pub(super) async fn inspect(
    State(server): State<Arc<DockerServer>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let entry = lock(&server)
        .entries
        .get(&id)
        .cloned()
        .ok_or_else(|| no_such_exec(&id))?;
    let cmd = entry.config.cmd.clone().unwrap_or_default();
    let (entrypoint, arguments) = match cmd.split_first() {
        Some((first, rest)) => (first.clone(), rest.to_vec()),
        None => (String::new(), Vec::new()),
    };
    Ok(Json(json!({
        "ID": entry.id,
        "Running": entry.running,
        "ExitCode": entry.exit_code,
        "ProcessConfig": {
            "tty": entry.config.tty,
            "entrypoint": entrypoint,
            "arguments": arguments,
            "privileged": entry.config.privileged,
            "user": entry.config.user,
        },
        "OpenStdin": entry.config.attach_stdin,
        "OpenStderr": entry.config.attach_stderr,
        "OpenStdout": entry.config.attach_stdout,
        "CanRemove": !entry.running && entry.started,
        "ContainerID": entry.container_id,
        "DetachKeys": entry.config.detach_keys,
        "Pid": entry.pid,
    })))
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub(super) struct ResizeQuery {
    h: Option<u32>,
    w: Option<u32>,
}

/// POST `/exec/{id}/resize?h=&w=`: 201.
pub(super) async fn resize(
    State(server): State<Arc<DockerServer>>,
    Path(id): Path<String>,
    Query(params): Query<ResizeQuery>,
) -> Result<StatusCode, ApiError> {
    let (Some(height), Some(width)) = (params.h, params.w) else {
        return Err(ApiError::bad_request("resize needs h and w"));
    };
    let (Ok(height), Ok(width)) = (u16::try_from(height), u16::try_from(width)) else {
        return Err(ApiError::bad_request("h and w must be at most 65535"));
    };
    let control = {
        let mut execs = lock(&server);
        let entry = execs
            .entries
            .get_mut(&id)
            .ok_or_else(|| no_such_exec(&id))?;
        if !entry.running {
            return Err(ApiError::conflict(format!("Exec {id} is not running")));
        }
        if !entry.config.tty {
            return Err(ApiError::bad_request(format!(
                "exec {id} has no TTY to resize"
            )));
        }
        match &entry.control {
            Some(control) => control.clone(),
            // The CLI resizes right after start, maybe before the process runs: that
            // size is its first.
            None => {
                entry.pending_size = Some((width, height));
                return Ok(StatusCode::CREATED);
            }
        }
    };
    control
        .resize(width, height)
        .await
        .map_err(|err| ApiError::from_error(&err))?;
    Ok(StatusCode::CREATED)
}

/// POST `/exec/{id}/start`: runs the process; with `Detach` 200 at once, else the
/// hijacked stream (101 on `Upgrade: tcp`, or a 200 raw stream without).
pub(super) async fn start(
    State(server): State<Arc<DockerServer>>,
    Path(id): Path<String>,
    mut request: Request,
) -> Result<Response, ApiError> {
    let wants_upgrade = request
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("tcp"));
    let body = axum::body::to_bytes(std::mem::take(request.body_mut()), 1 << 20)
        .await
        .map_err(|err| ApiError::bad_request(format!("reading the request body: {err}")))?;
    let start: StartConfig = if body.iter().all(u8::is_ascii_whitespace) {
        StartConfig::default()
    } else {
        parse_json(&body)?
    };
    let entry = {
        let mut execs = lock(&server);
        let entry = execs
            .entries
            .get_mut(&id)
            .ok_or_else(|| no_such_exec(&id))?;
        if entry.started {
            return Err(ApiError::conflict(if entry.running {
                format!("Error: Exec command {id} is already running")
            } else {
                format!("Error: Exec command {id} has already run")
            }));
        }
        entry.started = true;
        entry.running = true;
        entry.clone()
    };
    let container_id = entry.container_id.clone();
    let config = &entry.config;
    let tty = start.tty.unwrap_or(config.tty) || config.tty;
    let size = start
        .console_size
        .or(config.console_size)
        .and_then(|[h, w]| Some((u16::try_from(w).ok()?, u16::try_from(h).ok()?)))
        .filter(|(w, h)| *w > 0 && *h > 0);
    let detach = start.detach;
    let exec_request = ExecRequest {
        cmd: config.cmd.clone().unwrap_or_default(),
        stdin: config.attach_stdin && !detach,
        // A detached exec's output is read and dropped (as dockerd's, to nothing).
        stdout: config.attach_stdout || detach,
        stderr: (config.attach_stderr || detach) && !tty,
        tty,
        size,
        env: config.env.clone().unwrap_or_default(),
        user: config.user.clone(),
        working_dir: config.working_dir.clone(),
    };
    let exec_request = ExecRequest {
        // At least one stream: the session needs something to carry.
        stdout: exec_request.stdout || !(exec_request.stdin || exec_request.stderr),
        ..exec_request
    };
    if wants_upgrade && !detach {
        // Hijacked first, as dockerd: a process that cannot start is reported on the
        // stream (then inspect says 126).
        let on_upgrade = hyper::upgrade::on(&mut request);
        let exec_id = id.clone();
        tokio::spawn(async move {
            let upgraded = match on_upgrade.await {
                Ok(upgraded) => upgraded,
                Err(err) => {
                    tracing::warn!(exec = %exec_id, "exec: the connection upgrade failed: {err}");
                    finish(&server, &exec_id, None);
                    return;
                }
            };
            let (reader, mut writer) = tokio::io::split(TokioIo::new(upgraded));
            match run(&server, &exec_id, &container_id, exec_request.clone()).await {
                Ok((control, events)) => {
                    let stdin = exec_request.stdin.then_some(reader);
                    // With a TTY the detach keys end the stream and leave the process
                    // running, as dockerd.
                    let keys = tty
                        .then(|| {
                            super::attach::detach_keys(Some(&entry.config.detach_keys), "escape")
                                .ok()
                        })
                        .flatten();
                    relay(&server, &exec_id, control, events, stdin, writer, tty, keys).await;
                }
                Err(err) => {
                    // On stdout, framed without a TTY, as dockerd writes it.
                    let message = format!("{}\r\n", exec_error(&err).message);
                    let mut out = Vec::new();
                    if tty {
                        out.extend_from_slice(message.as_bytes());
                    } else {
                        super::attach::frame(1, message.as_bytes(), &mut out);
                    }
                    let _ = writer.write_all(&out).await;
                    let _ = writer.shutdown().await;
                }
            }
        });
        return Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, "Upgrade")
            .header(header::UPGRADE, "tcp")
            .header(header::CONTENT_TYPE, "application/vnd.docker.raw-stream")
            .body(axum::body::Body::empty())
            .map_err(|err| ApiError::internal(err.to_string()));
    }
    let (control, events) = run(&server, &id, &container_id, exec_request)
        .await
        .map_err(|err| exec_error(&err))?;
    if detach {
        tokio::spawn(drain_detached(server.clone(), id.clone(), control, events));
        return Ok(StatusCode::OK.into_response());
    }
    // No upgrade asked: the output as the response body (no stdin), as dockerd
    // answers such a client.
    let (pipe_writer, pipe_reader) = tokio::io::duplex(64 * 1024);
    let exec_id = id.clone();
    tokio::spawn(async move {
        relay(
            &server,
            &exec_id,
            control,
            events,
            None::<tokio::io::Empty>,
            pipe_writer,
            tty,
            None,
        )
        .await;
    });
    let stream = tokio_util::io::ReaderStream::new(pipe_reader);
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/vnd.docker.raw-stream")
        .body(axum::body::Body::from_stream(stream))
        .map_err(|err| ApiError::internal(err.to_string()))
}

/// Runs exec `id`'s process; records its pid and session (and applies a size that came
/// first), or its failure (126).
async fn run(
    server: &DockerServer,
    id: &str,
    container_id: &str,
    mut request: ExecRequest,
) -> Result<(Control, Events), crate::runtime::RuntimeError> {
    if request.tty && request.size.is_none() {
        request.size = lock(server).entries.get(id).and_then(|e| e.pending_size);
    }
    let (session, pid) = match server.runtime.exec(NAMESPACE, container_id, &request).await {
        Ok(started) => started,
        Err(err) => {
            finish(server, id, None);
            return Err(err);
        }
    };
    let (control, events) = session.into_parts();
    let late_size = {
        let mut execs = lock(server);
        match execs.entries.get_mut(id) {
            Some(entry) => {
                entry.pid = pid;
                entry.control = Some(control.clone());
                entry
                    .pending_size
                    .take()
                    .filter(|size| Some(*size) != request.size)
            }
            None => None,
        }
    };
    if let Some((width, height)) = late_size {
        let _ = control.resize(width, height).await;
    }
    Ok((control, events))
}

/// A failed start: dockerd's words for the runtime's refusal (the CLI exits 126).
fn exec_error(err: &crate::runtime::RuntimeError) -> ApiError {
    use crate::error::{ErrorKind, HasKind};
    match err.kind() {
        ErrorKind::FailedPrecondition | ErrorKind::Internal => {
            ApiError::internal(format!("OCI runtime exec failed: {err}: unknown"))
        }
        _ => ApiError::from_error(err),
    }
}

/// Copies the client's input to the process and its output, framed, to the client;
/// records the exit before the stream ends (the CLI inspects right after). With
/// `detach_keys`, the client typing them ends the stream and leaves the process
/// running (its output then dropped, its exit recorded, as a detached exec's).
#[allow(clippy::too_many_arguments)]
async fn relay<R, W>(
    server: &Arc<DockerServer>,
    id: &str,
    control: Control,
    mut events: Events,
    stdin: Option<R>,
    mut writer: W,
    tty: bool,
    detach_keys: Option<Vec<u8>>,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin,
{
    let (detach_tx, mut detach_rx) = tokio::sync::oneshot::channel::<()>();
    let input = stdin.map(|mut reader| {
        let control = control.clone();
        tokio::spawn(async move {
            let mut matcher = detach_keys.map(super::attach::DetachMatcher::new);
            let mut buf = vec![0u8; 32 * 1024];
            let mut passed = Vec::with_capacity(buf.len());
            let mut feeding = true;
            loop {
                match reader.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    // After the process's end, what the client still sends is read and
                    // dropped: closing with unread input would reset the connection
                    // under the client before it read the end of the output.
                    Ok(n) if feeding => {
                        let detached =
                            super::attach::pass_input(matcher.as_mut(), &buf[..n], &mut passed);
                        if !passed.is_empty() {
                            feeding = control.write_stdin(&passed).await.is_ok();
                        }
                        if detached {
                            // The process's stdin stays open.
                            let _ = detach_tx.send(());
                            return;
                        }
                    }
                    Ok(_) => {}
                }
            }
            // The client half-closed: the process's stdin ends.
            if feeding {
                let _ = control.end_stdin().await;
            }
        })
    });
    let mut exit = None;
    let mut out = Vec::with_capacity(32 * 1024);
    let mut input_done = false;
    loop {
        let event = tokio::select! {
            event = events.next() => event,
            result = &mut detach_rx, if !input_done => {
                input_done = true;
                if result.is_err() {
                    continue;
                }
                // Detached: the process runs on; its session goes to a task of the
                // daemon that records its exit.
                if let Some(container) = lock(server)
                    .entries
                    .get(id)
                    .and_then(|e| server.runtime.container(&e.container_id))
                {
                    super::filesystem::container_event(
                        server,
                        &container,
                        "exec_detach",
                        &[("execID", id.to_string())],
                    );
                }
                let _ = writer.flush().await;
                let _ = writer.shutdown().await;
                if let Some(input) = input {
                    input.abort();
                }
                tokio::spawn(drain_detached(server.clone(), id.to_string(), control, events));
                return;
            }
        };
        let Some(event) = event else { break };
        out.clear();
        match event {
            Ok(Event::Stdout(data)) if tty => out.extend_from_slice(&data),
            Ok(Event::Stdout(data)) => super::attach::frame(1, &data, &mut out),
            Ok(Event::Stderr(data)) if tty => out.extend_from_slice(&data),
            Ok(Event::Stderr(data)) => super::attach::frame(2, &data, &mut out),
            Ok(Event::Exit { exit_code, .. }) => {
                exit = Some(exit_code);
                break;
            }
            Err(err) => {
                tracing::debug!(exec = %id, "exec: {err}");
                break;
            }
        }
        if writer.write_all(&out).await.is_err() {
            // The client went: dropping the session kills the process.
            break;
        }
    }
    finish(server, id, exit);
    let _ = writer.flush().await;
    let _ = writer.shutdown().await;
    if let Some(mut input) = input {
        // The client closes once it has read the end; until then its input is drained.
        if tokio::time::timeout(std::time::Duration::from_secs(2), &mut input)
            .await
            .is_err()
        {
            input.abort();
        }
    }
    drop(control);
}

/// A detached exec: its output is dropped, its exit recorded.
async fn drain_detached(
    server: Arc<DockerServer>,
    id: String,
    control: Control,
    mut events: Events,
) {
    let mut exit = None;
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Exit { exit_code, .. }) => {
                exit = Some(exit_code);
                break;
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    finish(&server, &id, exit);
    drop(control);
}

/// Records the end of exec `id` (None: it never ran or its end is unknown).
fn finish(server: &DockerServer, id: &str, exit_code: Option<i32>) {
    let mut execs = lock(server);
    execs.seq += 1;
    let seq = execs.seq;
    if let Some(entry) = execs.entries.get_mut(id) {
        entry.running = false;
        // Never ran: dockerd reports 126 ("cannot execute"); an end not seen stays
        // unknown (null).
        entry.exit_code = exit_code.or((entry.pid == 0).then_some(126));
        entry.control = None;
        entry.finished_seq = seq;
    }
    let finished = execs
        .entries
        .values()
        .filter(|e| !e.running && e.started)
        .count();
    if finished > MAX_FINISHED {
        if let Some(oldest) = execs
            .entries
            .values()
            .filter(|e| !e.running && e.started)
            .min_by_key(|e| e.finished_seq)
            .map(|e| e.id.clone())
        {
            execs.entries.remove(&oldest);
        }
    }
}
