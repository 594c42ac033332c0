//! The connection to wharfd's Docker API: which endpoint (`-H`, `WHARF_HOST`,
//! `DOCKER_HOST`, the default socket), plain requests answered as JSON, streamed bodies
//! (pull progress, logs, events), uploads (load, import, cp) and hijacked connections
//! (attach, exec). One HTTP/1.1 connection per request, as the docker CLI on a UNIX
//! socket: nothing to pool for a short-lived process.

use std::path::PathBuf;
use std::pin::Pin;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};

use super::CliError;

/// The socket wharfd serves the Docker API on by default.
pub const DEFAULT_HOST: &str = "unix:///run/wharf/docker.sock";
/// The API version every request names (wharfd's, as dockerd 20.10).
pub const API_VERSION: &str = "1.41";

/// Where the daemon is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    Unix(PathBuf),
    /// `host:port`, plain HTTP (wharfd serves plain TCP on loopback only).
    Tcp(String),
}

impl Host {
    /// `-H` first, then `WHARF_HOST`, then `DOCKER_HOST`, then the default socket.
    pub fn resolve(flag: Option<&str>) -> Result<Host, CliError> {
        let from_env = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
        let text = flag
            .map(str::to_string)
            .or_else(|| from_env("WHARF_HOST"))
            .or_else(|| from_env("DOCKER_HOST"))
            .unwrap_or_else(|| DEFAULT_HOST.to_string());
        Host::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Host, CliError> {
        if let Some(path) = text.strip_prefix("unix://") {
            if path.is_empty() {
                return Err(CliError::usage(format!(
                    "invalid host {text:?}: no socket path"
                )));
            }
            return Ok(Host::Unix(PathBuf::from(path)));
        }
        if let Some(addr) = text
            .strip_prefix("tcp://")
            .or_else(|| text.strip_prefix("http://"))
        {
            let addr = addr.trim_end_matches('/');
            if addr.is_empty() {
                return Err(CliError::usage(format!(
                    "invalid host {text:?}: no address"
                )));
            }
            let addr = if addr.contains(':') {
                addr.to_string()
            } else {
                format!("{addr}:2375")
            };
            return Ok(Host::Tcp(addr));
        }
        if text.starts_with('/') {
            return Ok(Host::Unix(PathBuf::from(text)));
        }
        Err(CliError::usage(format!(
            "invalid host {text:?}: use unix:///path/to/socket or tcp://host:port"
        )))
    }
}

impl std::fmt::Display for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Host::Unix(path) => write!(f, "unix://{}", path.display()),
            Host::Tcp(addr) => write!(f, "tcp://{addr}"),
        }
    }
}

/// A byte stream to the daemon (a UNIX or TCP socket).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

pub type Body = BoxBody<Bytes, std::io::Error>;

/// An empty request body.
pub fn empty() -> Body {
    Full::new(Bytes::new())
        .map_err(|never| match never {})
        .boxed()
}

/// A JSON request body.
pub fn json_body(value: &Value) -> Body {
    Full::new(Bytes::from(value.to_string()))
        .map_err(|never| match never {})
        .boxed()
}

/// A request body streamed from `reader` (an archive to load, import or copy).
pub fn reader_body(reader: impl AsyncRead + Send + Sync + 'static) -> Body {
    use futures_util::StreamExt;
    let stream = tokio_util::io::ReaderStream::new(reader).map(|chunk| chunk.map(Frame::data));
    BodyExt::boxed(StreamBody::new(stream))
}

/// A client of one daemon.
#[derive(Debug, Clone)]
pub struct Client {
    pub host: Host,
}

/// A hijacked connection: raw bytes both ways after the 101.
pub type Hijacked = TokioIo<hyper::upgrade::Upgraded>;

impl Client {
    pub fn new(host: Host) -> Client {
        Client { host }
    }

    /// Connects, explaining a missing socket, a daemon that is not running and a
    /// permission that is missing instead of printing a bare errno.
    async fn dial(&self) -> Result<Pin<Box<dyn Io>>, CliError> {
        match &self.host {
            Host::Unix(path) => match tokio::net::UnixStream::connect(path).await {
                Ok(stream) => Ok(Box::pin(stream)),
                Err(err) => Err(explain_unix_error(path, &self.host, err)),
            },
            Host::Tcp(addr) => match tokio::net::TcpStream::connect(addr).await {
                Ok(stream) => Ok(Box::pin(stream)),
                Err(err) => Err(CliError::connect(format!(
                    "Cannot connect to wharfd at {}: {err}. Is wharfd running with a TCP \
                     listener there ([docker] listen in its configuration)?",
                    self.host
                ))),
            },
        }
    }

    /// Sends one request; `upgrade` asks for a hijacked connection.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Body,
        content_type: &str,
        upgrade: bool,
        headers: &[(&str, String)],
    ) -> Result<Response<Incoming>, CliError> {
        let io = self.dial().await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|err| {
                CliError::connect(format!("HTTP handshake with {}: {err}", self.host))
            })?;
        // The connection task ends with the response (or the hijacked stream).
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        let mut request = Request::builder()
            .method(method.clone())
            .uri(format!("/v{API_VERSION}{path}"))
            .header("Host", "docker")
            .header("User-Agent", concat!("wharf/", env!("CARGO_PKG_VERSION")))
            .header("Content-Type", content_type);
        if upgrade {
            request = request
                .header("Connection", "Upgrade")
                .header("Upgrade", "tcp");
        }
        for (name, value) in headers {
            request = request.header(*name, value.as_str());
        }
        let request = request.body(body).map_err(|err| {
            CliError::internal(format!("building the request {method} {path}: {err}"))
        })?;
        sender.send_request(request).await.map_err(|err| {
            CliError::connect(format!(
                "{method} {path}: the connection to wharfd at {} failed: {err}",
                self.host
            ))
        })
    }

    /// A request whose answer must be a success; errors become the daemon's message.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Body,
        content_type: &str,
    ) -> Result<Response<Incoming>, CliError> {
        self.call_with(method, path, body, content_type, &[]).await
    }

    /// As `call`, with more request headers (X-Registry-Auth).
    pub async fn call_with(
        &self,
        method: Method,
        path: &str,
        body: Body,
        content_type: &str,
        headers: &[(&str, String)],
    ) -> Result<Response<Incoming>, CliError> {
        let response = self
            .send(method, path, body, content_type, false, headers)
            .await?;
        if response.status().is_success() || response.status() == StatusCode::NOT_MODIFIED {
            return Ok(response);
        }
        Err(daemon_error(response).await)
    }

    /// GET `path`, answered as JSON.
    pub async fn get(&self, path: &str) -> Result<Value, CliError> {
        let response = self
            .call(Method::GET, path, empty(), "application/json")
            .await?;
        read_json(response, path).await
    }

    /// POST `path` with a JSON body (or none), answered as JSON (null when empty).
    pub async fn post(&self, path: &str, body: Option<&Value>) -> Result<Value, CliError> {
        let body = body.map(json_body).unwrap_or_else(empty);
        let response = self
            .call(Method::POST, path, body, "application/json")
            .await?;
        read_json(response, path).await
    }

    /// DELETE `path`, answered as JSON (null when empty).
    pub async fn delete(&self, path: &str) -> Result<Value, CliError> {
        let response = self
            .call(Method::DELETE, path, empty(), "application/json")
            .await?;
        read_json(response, path).await
    }

    /// POST `path` asking for a hijacked connection (attach, exec start).
    pub async fn hijack(&self, path: &str, body: Option<&Value>) -> Result<Hijacked, CliError> {
        let body = body.map(json_body).unwrap_or_else(empty);
        let mut response = self
            .send(Method::POST, path, body, "application/json", true, &[])
            .await?;
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            if response.status().is_success() {
                return Err(CliError::internal(format!(
                    "POST {path}: wharfd answered {} instead of upgrading the connection",
                    response.status()
                )));
            }
            return Err(daemon_error(response).await);
        }
        let upgraded = hyper::upgrade::on(&mut response).await.map_err(|err| {
            CliError::connect(format!("POST {path}: the connection upgrade failed: {err}"))
        })?;
        Ok(TokioIo::new(upgraded))
    }
}

/// The whole body of `response` as bytes.
pub async fn read_body(response: Response<Incoming>, what: &str) -> Result<Bytes, CliError> {
    response
        .into_body()
        .collect()
        .await
        .map(|collected| collected.to_bytes())
        .map_err(|err| CliError::connect(format!("reading the answer to {what}: {err}")))
}

async fn read_json(response: Response<Incoming>, what: &str) -> Result<Value, CliError> {
    let bytes = read_body(response, what).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&bytes).map_err(|err| {
        CliError::internal(format!(
            "the answer to {what} is not JSON ({err}): {}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
        ))
    })
}

/// A failed call's `{"message"}` as docker prints it ("Error response from daemon: ...").
async fn daemon_error(response: Response<Incoming>) -> CliError {
    let status = response.status();
    let bytes = read_body(response, "the error").await.unwrap_or_default();
    let message = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| {
            let text = String::from_utf8_lossy(&bytes).trim().to_string();
            if text.is_empty() {
                status.to_string()
            } else {
                text
            }
        });
    CliError::daemon(status.as_u16(), message)
}

fn explain_unix_error(path: &std::path::Path, host: &Host, err: std::io::Error) -> CliError {
    use std::os::unix::fs::MetadataExt;
    let start_hint = "Start it with `sudo wharfd` (or `sudo systemctl start wharfd`), \
                      or point -H / WHARF_HOST at the socket it serves";
    let message = match err.kind() {
        std::io::ErrorKind::NotFound => format!(
            "Cannot connect to wharfd at {host}: the socket {} does not exist, so wharfd is \
             not running or serves another socket. {start_hint}.",
            path.display()
        ),
        std::io::ErrorKind::ConnectionRefused => format!(
            "Cannot connect to wharfd at {host}: nothing listens on {} (a socket left by a \
             wharfd that stopped). {start_hint}.",
            path.display()
        ),
        std::io::ErrorKind::PermissionDenied => {
            let owner = std::fs::metadata(path)
                .map(|m| {
                    format!(
                        " (the socket is owned by uid {} gid {}, mode {:o})",
                        m.uid(),
                        m.gid(),
                        m.mode() & 0o777
                    )
                })
                .unwrap_or_default();
            format!(
                "Permission denied connecting to wharfd at {host}: connecting needs write \
                 permission on {}{owner} and search permission on its directories. Run as \
                 root, or join the group that wharfd's `[docker] group` setting gives the socket.",
                path.display()
            )
        }
        _ => format!("Cannot connect to wharfd at {host}: {err}"),
    };
    CliError::connect(message)
}

/// A response body as an AsyncRead.
pub fn body_reader(
    response: hyper::Response<hyper::body::Incoming>,
) -> impl tokio::io::AsyncRead + Unpin {
    use futures_util::StreamExt;
    let stream = http_body_util::BodyStream::new(response.into_body()).map(|frame| {
        frame
            .map(|f| f.into_data().unwrap_or_default())
            .map_err(std::io::Error::other)
    });
    tokio_util::io::StreamReader::new(stream)
}

/// The next JSON message of a progress stream (pull, push, load, build), lines that
/// are not JSON skipped; `None` at its end, or the message's error as the command's:
/// `errorDetail.message`, and `errorDetail.code` as the exit code (a failed RUN's).
pub async fn next_message<R: tokio::io::AsyncBufRead + Unpin>(
    lines: &mut tokio::io::Lines<R>,
    what: &str,
) -> Result<Option<Value>, CliError> {
    loop {
        let line = match lines.next_line().await {
            Ok(Some(line)) => line,
            Ok(None) => return Ok(None),
            Err(err) => return Err(CliError::connect(format!("reading the {what}: {err}"))),
        };
        let Ok(msg) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if let Some(err) = msg.get("error").and_then(Value::as_str) {
            let message = msg
                .pointer("/errorDetail/message")
                .and_then(Value::as_str)
                .unwrap_or(err);
            let code = msg
                .pointer("/errorDetail/code")
                .and_then(Value::as_i64)
                .filter(|c| (1..=255).contains(c))
                .unwrap_or(1);
            return Err(CliError {
                code: code as i32,
                message: message.to_string(),
                status: 0,
            });
        }
        return Ok(Some(msg));
    }
}
