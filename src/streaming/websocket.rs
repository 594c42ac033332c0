//! The WebSocket transport (axum's `ws`, tokio-tungstenite): kubelet's channel
//! protocol. Every message starts with its channel; with a `base64.` protocol it is a
//! text message, the channel an ASCII digit and the rest base64.
//!
//! - Remote commands: channels 0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize;
//!   `channel.k8s.io` (error as text), `v4.channel.k8s.io` (error as a metav1.Status),
//!   `v5.channel.k8s.io` (v4, and a client message `[255, 0]` closes stdin: the one
//!   way to send stdin's EOF over WebSocket, which kubelet's own library never
//!   served), and their base64 variants.
//! - Port-forward: the ports in the query (`?port=80&port=443`); port i has channels
//!   2i (data) and 2i+1 (error), each opened by the server with the port number (2
//!   bytes, little endian), as kubelet's `v4.channel.k8s.io` port-forward does.

use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;

use super::session::{self, Activity, Outcome, StreamRequest, Streams};
use super::status::{error_stream_bytes, ErrorFormat};
use super::StreamingServer;

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
/// v5: a client message on this channel closes the channel named by its payload.
const CLOSE: u8 = 255;

/// Remote-command protocols, preferred first.
const REMOTE_COMMAND_PROTOCOLS: [&str; 5] = [
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v4.base64.channel.k8s.io",
    "channel.k8s.io",
    "base64.channel.k8s.io",
];
/// Port-forward protocols (kubelet's v4, binary and base64; `v4.portforward.k8s.io`
/// as a binary alias).
const PORT_FORWARD_PROTOCOLS: [&str; 3] = [
    "v4.channel.k8s.io",
    "v4.base64.channel.k8s.io",
    "v4.portforward.k8s.io",
];

/// Buffer of each in-memory stream between the socket and the session.
const PIPE_BUFFER: usize = 64 * 1024;

#[derive(Debug, Clone, Copy)]
struct Framing {
    base64: bool,
}

impl Framing {
    fn encode(self, channel: u8, data: &[u8]) -> Message {
        if self.base64 {
            let mut text = String::with_capacity(1 + data.len() * 4 / 3 + 4);
            text.push(char::from(b'0' + channel % 10));
            base64::engine::general_purpose::STANDARD.encode_string(data, &mut text);
            Message::Text(text.into())
        } else {
            let mut bytes = Vec::with_capacity(data.len() + 1);
            bytes.push(channel);
            bytes.extend_from_slice(data);
            Message::Binary(bytes.into())
        }
    }

    /// The channel and payload of a client message; None for control messages and
    /// malformed ones.
    fn decode(self, message: Message) -> Option<(u8, Vec<u8>)> {
        match message {
            Message::Binary(bytes) if !self.base64 => {
                let (&channel, data) = bytes.split_first()?;
                Some((channel, data.to_vec()))
            }
            Message::Text(text) if self.base64 => {
                let text = text.as_str();
                let channel = text.as_bytes().first()?.checked_sub(b'0')?;
                let data = base64::engine::general_purpose::STANDARD
                    .decode(&text[1..])
                    .ok()?;
                Some((channel, data))
            }
            _ => None,
        }
    }
}

/// Upgrades and serves `request` (whose token was valid) over WebSocket.
pub async fn serve(
    server: Arc<StreamingServer>,
    stream_request: StreamRequest,
    request: Request,
) -> Response {
    let port_forward = matches!(stream_request, StreamRequest::PortForward { .. });
    let ports = if port_forward {
        match ports_of(request.uri().query().unwrap_or("")) {
            Ok(ports) => ports,
            Err(message) => return (StatusCode::BAD_REQUEST, message).into_response(),
        }
    } else {
        Vec::new()
    };
    let offered = super::header_values(&request, "sec-websocket-protocol");
    let (mut parts, _body) = request.into_parts();
    let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(upgrade) => upgrade,
        Err(rejection) => return rejection.into_response(),
    };
    let supported: &[&'static str] = if port_forward {
        &PORT_FORWARD_PROTOCOLS
    } else {
        &REMOTE_COMMAND_PROTOCOLS
    };
    // No protocol offered: the binary channel protocol, as kubelet's "" entry.
    let protocol = if offered.is_empty() {
        ""
    } else {
        match super::negotiate(&offered, supported) {
            Some(protocol) => protocol,
            None => {
                return (
                    StatusCode::FORBIDDEN,
                    format!(
                        "unable to negotiate protocol: client supports {offered:?}, server \
                         supports {supported:?}\n"
                    ),
                )
                    .into_response()
            }
        }
    };
    let upgrade = if protocol.is_empty() {
        upgrade
    } else {
        upgrade.protocols([protocol])
    };
    let framing = Framing {
        base64: protocol.contains("base64"),
    };
    let format = if protocol.starts_with("v4.") || protocol.starts_with("v5.") {
        ErrorFormat::Status
    } else {
        ErrorFormat::Text
    };
    let closes_stdin = protocol.starts_with("v5.");
    upgrade
        .on_upgrade(move |socket| async move {
            if port_forward {
                port_forward_session(server, stream_request, ports, socket, framing).await;
            } else {
                remote_command(
                    server,
                    stream_request,
                    socket,
                    framing,
                    format,
                    closes_stdin,
                )
                .await;
            }
        })
        .into_response()
}

/// The `port` query parameters.
fn ports_of(query: &str) -> Result<Vec<u16>, String> {
    let mut ports = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key != "port" {
            continue;
        }
        match value.parse::<u16>() {
            Ok(port) if port > 0 => ports.push(port),
            _ => return Err(format!("port {value:?} is not a TCP port number\n")),
        }
    }
    if ports.is_empty() {
        return Err(
            "a port-forward over WebSocket needs at least one port query parameter\n".into(),
        );
    }
    Ok(ports)
}

/// Copies what the session writes to `reader` into `channel` messages.
async fn forward_output(mut reader: DuplexStream, channel: u8, out: mpsc::Sender<(u8, Vec<u8>)>) {
    let mut chunk = vec![0u8; 32 * 1024];
    loop {
        match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if out.send((channel, chunk[..n].to_vec())).await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn remote_command(
    server: Arc<StreamingServer>,
    request: StreamRequest,
    socket: WebSocket,
    framing: Framing,
    format: ErrorFormat,
    closes_stdin: bool,
) {
    let (stdin, stdout, stderr, tty) = request.streams();
    let (mut sink, mut source) = socket.split();
    let (out_tx, mut out_rx) = mpsc::channel::<(u8, Vec<u8>)>(16);
    let mut streams = Streams::default();
    let mut stdin_writer = None;
    if stdin {
        let (ours, theirs) = tokio::io::duplex(PIPE_BUFFER);
        streams.stdin = Some(Box::pin(theirs));
        stdin_writer = Some(ours);
    }
    let mut resize_writer = None;
    if tty {
        let (ours, theirs) = tokio::io::duplex(4096);
        streams.resize = Some(Box::pin(theirs));
        resize_writer = Some(ours);
    }
    let mut forwarders = Vec::new();
    for (wanted, channel) in [(stdout, STDOUT), (stderr, STDERR)] {
        if !wanted {
            continue;
        }
        let (ours, theirs) = tokio::io::duplex(PIPE_BUFFER);
        if channel == STDOUT {
            streams.stdout = Some(Box::pin(theirs));
        } else {
            streams.stderr = Some(Box::pin(theirs));
        }
        forwarders.push(tokio::spawn(forward_output(ours, channel, out_tx.clone())));
    }
    // The socket's reader: stdin, resize and (v5) stdin's close.
    let reader = async move {
        while let Some(Ok(message)) = source.next().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
            let Some((channel, data)) = framing.decode(message) else {
                continue;
            };
            match channel {
                STDIN => {
                    if let Some(writer) = stdin_writer.as_mut() {
                        if writer.write_all(&data).await.is_err() {
                            stdin_writer = None;
                        }
                    }
                }
                RESIZE => {
                    if let Some(writer) = resize_writer.as_mut() {
                        let _ = writer.write_all(&data).await;
                    }
                }
                CLOSE if closes_stdin && data.first() == Some(&STDIN) => stdin_writer = None,
                _ => {}
            }
        }
        // The client is gone: the session sees its stdin end, then its writes fail.
    };
    let mut reader = tokio::spawn(reader);
    let activity = Activity::default();
    let idle_timeout = server.idle_timeout;
    let writer = async {
        while let Some((channel, data)) = out_rx.recv().await {
            if sink.send(framing.encode(channel, &data)).await.is_err() {
                break;
            }
        }
        sink
    };
    let session = async {
        let outcome = tokio::select! {
            outcome = session::run_remote_command(server.engine(), &request, streams, &activity) => outcome,
            () = activity.idle(idle_timeout) => Outcome::Failed(format!(
                "the session was idle for {idle_timeout:?}"
            )),
            // The connection ended: the client is gone (dropping the session kills an
            // exec'd process).
            _ = &mut reader => Outcome::ClientGone,
        };
        // Output first, then the status.
        for forwarder in forwarders {
            let _ = forwarder.await;
        }
        if let Some(bytes) = error_stream_bytes(&outcome, format) {
            if !bytes.is_empty() {
                let _ = out_tx.send((ERROR, bytes)).await;
            }
        }
        drop(out_tx);
    };
    let ((), mut sink) = tokio::join!(session, writer);
    // A normal closure: client-go reads any other as an error of every stream, the
    // error stream's status included.
    let _ = sink.send(normal_close()).await;
    let _ = sink.close().await;
    reader.abort();
}

async fn port_forward_session(
    server: Arc<StreamingServer>,
    request: StreamRequest,
    ports: Vec<u16>,
    socket: WebSocket,
    framing: Framing,
) {
    let StreamRequest::PortForward { namespace, pod_id } = request else {
        return;
    };
    let (mut sink, mut source) = socket.split();
    let (out_tx, mut out_rx) = mpsc::channel::<(u8, Vec<u8>)>(16);
    // Every channel opens with its port number.
    for (index, port) in ports.iter().enumerate() {
        let data = (2 * index) as u8;
        for channel in [data, data + 1] {
            if sink
                .send(framing.encode(channel, &port.to_le_bytes()))
                .await
                .is_err()
            {
                return;
            }
        }
    }
    let activity = Activity::default();
    let mut to_pod = Vec::new();
    let mut tasks = Vec::new();
    for (index, port) in ports.iter().copied().enumerate() {
        let data_channel = (2 * index) as u8;
        let (ours, theirs) = tokio::io::duplex(PIPE_BUFFER);
        let (client_read, client_write) = tokio::io::split(theirs);
        let (ours_read, ours_write) = tokio::io::split(ours);
        to_pod.push(Some(ours_write));
        tasks.push(tokio::spawn(forward_output_half(
            ours_read,
            data_channel,
            out_tx.clone(),
        )));
        let (engine_server, namespace, pod_id, out, activity) = (
            server.clone(),
            namespace.clone(),
            pod_id.clone(),
            out_tx.clone(),
            activity.clone(),
        );
        tasks.push(tokio::spawn(async move {
            match engine_server
                .engine()
                .runtime
                .port_forward_dial(&namespace, &pod_id, port)
                .await
            {
                Ok(connection) => {
                    session::copy_port_forward(
                        Box::pin(client_read),
                        Box::pin(client_write),
                        connection,
                        &activity,
                    )
                    .await
                }
                Err(err) => {
                    let message = format!("error {err}");
                    let _ = out.send((data_channel + 1, message.into_bytes())).await;
                }
            }
        }));
    }
    drop(out_tx);
    let reader = async {
        while let Some(Ok(message)) = source.next().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
            let Some((channel, data)) = framing.decode(message) else {
                continue;
            };
            let index = usize::from(channel / 2);
            if channel % 2 != 0 {
                continue;
            }
            if let Some(slot) = to_pod.get_mut(index) {
                if let Some(writer) = slot.as_mut() {
                    if writer.write_all(&data).await.is_err() {
                        *slot = None;
                    }
                }
            }
        }
    };
    let writer = async {
        while let Some((channel, data)) = out_rx.recv().await {
            if sink.send(framing.encode(channel, &data)).await.is_err() {
                break;
            }
        }
    };
    tokio::select! {
        () = reader => {}
        () = writer => {}
        () = activity.idle(server.idle_timeout) => {}
    }
    for task in tasks {
        task.abort();
    }
    let _ = sink.send(normal_close()).await;
}

fn normal_close() -> Message {
    Message::Close(Some(axum::extract::ws::CloseFrame {
        code: axum::extract::ws::close_code::NORMAL,
        reason: "".into(),
    }))
}

async fn forward_output_half(
    mut reader: tokio::io::ReadHalf<DuplexStream>,
    channel: u8,
    out: mpsc::Sender<(u8, Vec<u8>)>,
) {
    let mut chunk = vec![0u8; 32 * 1024];
    loop {
        match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if out.send((channel, chunk[..n].to_vec())).await.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_in_both_framings() {
        for base64 in [false, true] {
            let framing = Framing { base64 };
            let message = framing.encode(STDERR, b"some bytes\x00\xff");
            assert_eq!(
                framing.decode(message),
                Some((STDERR, b"some bytes\x00\xff".to_vec()))
            );
        }
        assert_eq!(
            Framing { base64: true }.decode(Message::Text("1aGk=".into())),
            Some((STDOUT, b"hi".to_vec()))
        );
        assert_eq!(
            Framing { base64: false }.decode(Message::Binary(Vec::new().into())),
            None
        );
    }

    #[test]
    fn ports_come_from_the_query() {
        assert_eq!(ports_of("port=80&port=8080"), Ok(vec![80, 8080]));
        assert!(ports_of("").is_err());
        assert!(ports_of("port=http").unwrap_err().contains("http"));
        assert!(ports_of("port=0").is_err());
    }
}
