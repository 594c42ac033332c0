//! The CRI streaming server: where the one-time URLs that Exec, Attach and PortForward
//! answer with lead (kubelet proxies or redirects `kubectl exec/attach/port-forward`
//! there; crictl connects directly), as containerd's and CRI-O's do.
//!
//! - **URLs**: `http://<address>:<port>/{exec,attach,portforward}/<token>`. A token is
//!   128 random bits, single use, and expires after `token_ttl_secs` unused (kubelet's
//!   streaming cache: 1 minute); at most [`MAX_TOKENS`] wait at once. An unknown, used or
//!   expired token is a 404, as kubelet answers.
//! - **Protocols**: SPDY/3.1 (`Upgrade: SPDY/3.1`, [`spdy_transport`]) and WebSocket
//!   ([`websocket`]), each with every sub-protocol kubelet clients speak; the session
//!   logic beneath them is protocol-neutral ([`session`]), so Docker's hijacked
//!   exec/attach can use it too.
//! - **Idle timeout**: a session that moves no byte for `idle_timeout_secs` is closed.
//! - **Listener**: `[cri.streaming] address` (127.0.0.1 by default; any other needs
//!   TLS), port 0 picks a free one.

pub mod session;
pub mod spdy;
pub mod spdy_transport;
pub mod status;
pub mod websocket;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;

use crate::config::StreamingConfig;
use crate::engine::Engine;
use session::StreamRequest;

/// Unused URLs kept at once (kubelet's streaming cache holds 1000 too).
pub const MAX_TOKENS: usize = 1000;
/// How long a client may take to open the streams a session expects (kubelet's
/// streaming library waits 30 s).
pub const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a URL could not be issued.
#[derive(Debug, thiserror::Error)]
pub enum StreamingError {
    #[error(
        "{MAX_TOKENS} streaming URLs are waiting to be used already; try again once some \
         are used or expire"
    )]
    TooManyTokens,
    #[error("{field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    #[error("making a streaming token: {0}")]
    Token(String),
}

impl crate::error::HasKind for StreamingError {
    fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind;
        match self {
            StreamingError::TooManyTokens => ErrorKind::ResourceExhausted,
            StreamingError::InvalidArgument { .. } => ErrorKind::InvalidArgument,
            StreamingError::Token(_) => ErrorKind::Internal,
        }
    }
}

#[derive(Debug)]
struct Pending {
    request: StreamRequest,
    expires: Instant,
}

/// The server's shared state: the engine, its settings, the pending tokens.
#[derive(Debug)]
pub struct StreamingServer {
    engine: Arc<Engine>,
    /// `http://host:port` (IPv6 in brackets).
    base_url: String,
    token_ttl: Duration,
    pub(crate) idle_timeout: Duration,
    pending: Mutex<HashMap<String, Pending>>,
}

impl StreamingServer {
    /// The server for a listener bound at `address`.
    pub fn new(engine: Arc<Engine>, config: &StreamingConfig, address: SocketAddr) -> Arc<Self> {
        let scheme = if config.tls_cert_file.is_some() {
            "https"
        } else {
            "http"
        };
        Arc::new(StreamingServer {
            engine,
            base_url: format!("{scheme}://{address}"),
            token_ttl: Duration::from_secs(config.token_ttl_secs),
            idle_timeout: Duration::from_secs(config.idle_timeout_secs),
            pending: Mutex::new(HashMap::new()),
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Checks `request` as kubelet's streaming server does, and issues its URL.
    pub fn issue(&self, request: StreamRequest) -> Result<String, StreamingError> {
        let invalid = |field, reason: &str| {
            Err(StreamingError::InvalidArgument {
                field,
                reason: reason.to_string(),
            })
        };
        match &request {
            StreamRequest::Exec {
                cmd,
                stdin,
                stdout,
                stderr,
                tty,
                ..
            } => {
                if cmd.is_empty() {
                    return invalid("cmd", "is empty");
                }
                if !(*stdin || *stdout || *stderr) {
                    return invalid(
                        "stdin, stdout, stderr",
                        "one of stdin, stdout, or stderr must be set",
                    );
                }
                if *tty && *stderr {
                    return invalid("tty", "tty and stderr cannot both be true");
                }
            }
            StreamRequest::Attach {
                stdin,
                stdout,
                stderr,
                tty,
                ..
            } => {
                if !(*stdin || *stdout || *stderr) {
                    return invalid(
                        "stdin, stdout, stderr",
                        "one of stdin, stdout, or stderr must be set",
                    );
                }
                if *tty && *stderr {
                    return invalid("tty", "tty and stderr cannot both be true");
                }
            }
            StreamRequest::PortForward { .. } => {}
        }
        let token = crate::runtime::new_id()
            .map_err(|err| StreamingError::Token(err.to_string()))?[..32]
            .to_string();
        let kind = request.kind();
        let now = Instant::now();
        let mut pending = self.lock();
        pending.retain(|_, p| p.expires > now);
        if pending.len() >= MAX_TOKENS {
            return Err(StreamingError::TooManyTokens);
        }
        pending.insert(
            token.clone(),
            Pending {
                request,
                expires: now + self.token_ttl,
            },
        );
        Ok(format!("{}/{kind}/{token}", self.base_url))
    }

    /// Takes the request of `token` (once: a used token is gone) if it is for `kind`
    /// and has not expired.
    fn take(&self, kind: &str, token: &str) -> Option<StreamRequest> {
        let mut pending = self.lock();
        let entry = pending.remove(token)?;
        (entry.expires > Instant::now() && entry.request.kind() == kind).then_some(entry.request)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The server's routes.
pub fn routes(server: Arc<StreamingServer>) -> Router {
    Router::new()
        .route("/{kind}/{token}", any(serve_token))
        .with_state(server)
}

/// Serves `listener` (over TLS with `tls`) until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    server: Arc<StreamingServer>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    let app = routes(server).into_make_service();
    // Interactive streams: a keystroke's echo must not wait for the peer's delayed ACK
    // (the TLS listener sets it on every connection too).
    match tls {
        Some(acceptor) => {
            axum::serve(crate::tls::TlsListener::new(listener, acceptor)?, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
        None => {
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
    }
}

async fn serve_token(
    State(server): State<Arc<StreamingServer>>,
    Path((kind, token)): Path<(String, String)>,
    request: Request,
) -> Response {
    if !matches!(kind.as_str(), "exec" | "attach" | "portforward") {
        return (StatusCode::NOT_FOUND, "404 page not found\n").into_response();
    }
    let Some(stream_request) = server.take(&kind, &token) else {
        return (StatusCode::NOT_FOUND, "404 page not found\n").into_response();
    };
    let upgrade = request
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    match upgrade.as_str() {
        "websocket" => websocket::serve(server, stream_request, request).await,
        "spdy/3.1" => spdy_transport::serve(server, stream_request, request).await,
        other => (
            StatusCode::BAD_REQUEST,
            format!(
                "a streaming URL needs a connection upgrade to SPDY/3.1 or websocket, not \
                 {other:?}\n"
            ),
        )
            .into_response(),
    }
}

/// The sub-protocol a client offered that the server speaks, in the client's order
/// of preference (kubelet's `httpstream.Handshake`); the header may be repeated and
/// comma-separated.
pub(crate) fn negotiate<'a>(offered: &[String], supported: &[&'a str]) -> Option<&'a str> {
    offered
        .iter()
        .find_map(|p| supported.iter().find(|s| **s == p.as_str()).copied())
}

/// Every value of header `name`, split at commas and trimmed.
pub(crate) fn header_values(request: &Request, name: &str) -> Vec<String> {
    request
        .headers()
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_follows_the_clients_order() {
        let supported = ["v4.channel.k8s.io", "v3.channel.k8s.io", "channel.k8s.io"];
        let offered: Vec<String> = [
            "v5.channel.k8s.io",
            "v4.channel.k8s.io",
            "v3.channel.k8s.io",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(negotiate(&offered, &supported), Some("v4.channel.k8s.io"));
        let old: Vec<String> = vec!["v2.channel.k8s.io".into(), "channel.k8s.io".into()];
        assert_eq!(negotiate(&old, &supported), Some("channel.k8s.io"));
        assert_eq!(negotiate(&["v9".into()], &supported), None);
    }
}
