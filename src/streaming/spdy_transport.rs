//! The SPDY/3.1 transport ([`super::spdy`]), as kubelet's streaming server speaks it
//! (k8s.io/cri-streaming over k8s.io/streaming's httpstream/spdy):
//!
//! - Remote commands (`X-Stream-Protocol-Version`: `v4.channel.k8s.io`, the newest
//!   kubelet serves, and v3, v2, v1 for clients offering only those; the client's
//!   order decides): the client opens one stream per `streamType` header (`error`,
//!   `stdin`, `stdout`, `stderr`, `resize`); every one is answered; once all the
//!   request needs are there (within [`STREAM_CREATION_TIMEOUT`]) the session runs, and
//!   its end is written to the error stream (v4: a metav1.Status).
//! - Port-forward (`portforward.k8s.io`): streams come in pairs, `error` and `data`,
//!   with the same `requestID` and a `port`; each pair is one TCP connection into the
//!   pod. A connection that fails writes its error to its own error stream and resets
//!   its data stream: the session and its other connections go on.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;

use super::session::{self, Activity, Outcome, StreamRequest, Streams};
use super::spdy::{IncomingStream, ResetStatus, Session, Stream};
use super::status::{error_stream_bytes, ErrorFormat};
use super::{StreamingServer, STREAM_CREATION_TIMEOUT};

/// Remote-command versions over SPDY (kubelet's `SupportedStreamingProtocols`).
const REMOTE_COMMAND_PROTOCOLS: [&str; 4] = [
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];
const PORT_FORWARD_PROTOCOLS: [&str; 1] = ["portforward.k8s.io"];
const PROTOCOL_HEADER: &str = "x-stream-protocol-version";

/// Answers the upgrade and serves the session on the upgraded connection.
pub async fn serve(
    server: Arc<StreamingServer>,
    stream_request: StreamRequest,
    mut request: Request,
) -> Response {
    let port_forward = matches!(stream_request, StreamRequest::PortForward { .. });
    let supported: &[&'static str] = if port_forward {
        &PORT_FORWARD_PROTOCOLS
    } else {
        &REMOTE_COMMAND_PROTOCOLS
    };
    let offered = super::header_values(&request, PROTOCOL_HEADER);
    if offered.is_empty() {
        return (
            StatusCode::BAD_REQUEST,
            format!("missing the {PROTOCOL_HEADER} header: the client offered no protocol\n"),
        )
            .into_response();
    }
    let Some(protocol) = super::negotiate(&offered, supported) else {
        return (
            StatusCode::FORBIDDEN,
            format!(
                "unable to negotiate protocol: client supports {offered:?}, server supports \
                 {supported:?}\n"
            ),
        )
            .into_response();
    };
    let on_upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(err) => {
                tracing::warn!("streaming: the SPDY upgrade failed: {err}");
                return;
            }
        };
        let (session, incoming) = Session::server(TokioIo::new(upgraded));
        if port_forward {
            port_forward_session(server, stream_request, session, incoming).await;
        } else {
            remote_command(server, stream_request, protocol, session, incoming).await;
        }
    });
    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
    headers.insert(PROTOCOL_HEADER, HeaderValue::from_static(protocol));
    response
}

/// The streams of a remote command, as they arrive.
#[derive(Default)]
struct Opened {
    error: Option<Stream>,
    stdin: Option<Stream>,
    stdout: Option<Stream>,
    stderr: Option<Stream>,
    resize: Option<Stream>,
}

async fn remote_command(
    server: Arc<StreamingServer>,
    request: StreamRequest,
    protocol: &'static str,
    session: Session,
    mut incoming: tokio::sync::mpsc::Receiver<IncomingStream>,
) {
    let (stdin, stdout, stderr, tty) = request.streams();
    // v1 and v2 have no resize stream.
    let resize = tty && matches!(protocol, "v4.channel.k8s.io" | "v3.channel.k8s.io");
    let format = if protocol == "v4.channel.k8s.io" {
        ErrorFormat::Status
    } else {
        ErrorFormat::Text
    };
    let mut opened = Opened::default();
    let complete = |o: &Opened| {
        o.error.is_some()
            && (!stdin || o.stdin.is_some())
            && (!stdout || o.stdout.is_some())
            && (!stderr || o.stderr.is_some())
            && (!resize || o.resize.is_some())
    };
    // A session idle before it even started is over too.
    let creation_timeout = STREAM_CREATION_TIMEOUT.min(server.idle_timeout);
    let deadline = Instant::now() + creation_timeout;
    while !complete(&opened) {
        let next = tokio::time::timeout_at(deadline.into(), incoming.recv()).await;
        let stream = match next {
            Ok(Some(stream)) => stream,
            Ok(None) => return,
            Err(_) => {
                tracing::info!(
                    "streaming: the client did not open its streams within {creation_timeout:?}"
                );
                if let Some(mut error) = opened.error.take() {
                    let message = format!(
                        "timed out waiting for the client to create its streams \
                         ({creation_timeout:?})"
                    );
                    let _ = error.write_all(message.as_bytes()).await;
                    let _ = error.shutdown().await;
                }
                session.close().await;
                return;
            }
        };
        let kind = stream
            .header("streamtype")
            .unwrap_or("")
            .to_ascii_lowercase();
        let slot = match kind.as_str() {
            "error" => &mut opened.error,
            "stdin" => &mut opened.stdin,
            "stdout" => &mut opened.stdout,
            "stderr" => &mut opened.stderr,
            "resize" => &mut opened.resize,
            _ => {
                stream.reset(ResetStatus::REFUSED_STREAM).await;
                continue;
            }
        };
        if slot.is_some() {
            stream.reset(ResetStatus::PROTOCOL_ERROR).await;
            continue;
        }
        match stream.accept(&[]).await {
            Ok(accepted) => *slot = Some(accepted),
            Err(err) => {
                tracing::info!("streaming: answering a {kind} stream: {err}");
                return;
            }
        }
    }
    let mut error = opened.error.take();
    let streams = Streams {
        stdin: opened.stdin.take().map(|s| Box::pin(s) as session::Reader),
        stdout: opened.stdout.take().map(|s| Box::pin(s) as session::Writer),
        stderr: opened.stderr.take().map(|s| Box::pin(s) as session::Writer),
        resize: opened.resize.take().map(|s| Box::pin(s) as session::Reader),
    };
    let activity = Activity::default();
    let idle_timeout = server.idle_timeout;
    // Streams the client opens later than expected are refused.
    let refuse_late = async {
        while let Some(stream) = incoming.recv().await {
            stream.reset(ResetStatus::REFUSED_STREAM).await;
        }
        std::future::pending::<()>().await
    };
    let outcome = tokio::select! {
        outcome = session::run_remote_command(server.engine(), &request, streams, &activity) => outcome,
        () = activity.idle(idle_timeout) => Outcome::Failed(format!(
            "the session was idle for {idle_timeout:?}"
        )),
        () = refuse_late => Outcome::ClientGone,
        () = session.closed() => Outcome::ClientGone,
    };
    if let (Some(stream), Some(bytes)) = (error.as_mut(), error_stream_bytes(&outcome, format)) {
        if !bytes.is_empty() {
            let _ = stream.write_all(&bytes).await;
        }
        let _ = stream.shutdown().await;
    }
    session.close().await;
}

/// A port-forward connection's two streams, as they arrive.
struct Pair {
    port: Option<u16>,
    data: Option<Stream>,
    error: Option<Stream>,
    since: Instant,
}

async fn port_forward_session(
    server: Arc<StreamingServer>,
    request: StreamRequest,
    session: Session,
    mut incoming: tokio::sync::mpsc::Receiver<IncomingStream>,
) {
    let StreamRequest::PortForward { namespace, pod_id } = request else {
        return;
    };
    let activity = Activity::default();
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    let mut sweep = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        let stream = tokio::select! {
            next = incoming.recv() => match next {
                Some(stream) => stream,
                None => break,
            },
            () = activity.idle(server.idle_timeout) => {
                tracing::info!(pod = %pod_id, "streaming: port-forward idle for {:?}: closed", server.idle_timeout);
                break;
            }
            () = session.closed() => break,
            _ = sweep.tick() => {
                // A pair whose other half never came: reset what came.
                let now = Instant::now();
                let stale: Vec<String> = pairs
                    .iter()
                    .filter(|(_, p)| now.duration_since(p.since) > STREAM_CREATION_TIMEOUT)
                    .map(|(k, _)| k.clone())
                    .collect();
                for key in stale {
                    if let Some(pair) = pairs.remove(&key) {
                        for stream in [pair.data, pair.error].into_iter().flatten() {
                            stream.reset(ResetStatus::CANCEL).await;
                        }
                    }
                }
                continue;
            }
        };
        activity.touch();
        let kind = stream
            .header("streamtype")
            .unwrap_or("")
            .to_ascii_lowercase();
        let port = stream.header("port").map(str::to_string);
        // Old clients send no requestID: an error stream is created just before its
        // data stream (kubelet pairs them by id the same way).
        let key = match stream.header("requestid") {
            Some(id) => id.to_string(),
            None if kind == "data" => stream.id.saturating_sub(2).to_string(),
            None => stream.id.to_string(),
        };
        if kind != "data" && kind != "error" {
            stream.reset(ResetStatus::REFUSED_STREAM).await;
            continue;
        }
        let port = match port.as_deref().map(str::parse::<u16>) {
            Some(Ok(port)) if port > 0 => port,
            _ => {
                stream.reset(ResetStatus::PROTOCOL_ERROR).await;
                continue;
            }
        };
        let accepted = match stream.accept(&[]).await {
            Ok(accepted) => accepted,
            Err(_) => break,
        };
        let pair = pairs.entry(key.clone()).or_insert_with(|| Pair {
            port: None,
            data: None,
            error: None,
            since: Instant::now(),
        });
        pair.port.get_or_insert(port);
        if kind == "data" {
            pair.data = Some(accepted);
        } else {
            pair.error = Some(accepted);
        }
        if pair.data.is_none() || pair.error.is_none() {
            continue;
        }
        let Some(pair) = pairs.remove(&key) else {
            continue;
        };
        let (Some(data), Some(error), Some(port)) = (pair.data, pair.error, pair.port) else {
            continue;
        };
        let (server, namespace, pod_id, activity) = (
            server.clone(),
            namespace.clone(),
            pod_id.clone(),
            activity.clone(),
        );
        tokio::spawn(async move {
            forward_one(&server, &namespace, &pod_id, port, data, error, &activity).await;
        });
    }
    session.close().await;
}

/// One forwarded connection: its data stream copied to and from `port` in the pod.
async fn forward_one(
    server: &StreamingServer,
    namespace: &str,
    pod_id: &str,
    port: u16,
    data: Stream,
    mut error: Stream,
    activity: &Activity,
) {
    match server
        .engine()
        .runtime
        .port_forward_dial(namespace, pod_id, port)
        .await
    {
        Ok(connection) => {
            let (read, write) = tokio::io::split(data);
            session::copy_port_forward(Box::pin(read), Box::pin(write), connection, activity).await;
            let _ = error.shutdown().await;
        }
        Err(err) => {
            // kubelet's words, then this pair (only) ends.
            let message = format!("error {err}");
            let _ = error.write_all(message.as_bytes()).await;
            let _ = error.shutdown().await;
            data.reset(ResetStatus::CANCEL).await;
        }
    }
}
