//! A hand-served HTTP/1.1 server on loopback that answers what a test tells it to: a
//! hostile registry (crafted challenges, redirects, layers) or a host wharf must never
//! reach, recording every connection and request.
//!
//! ```ignore
//! let routes = Routes::for_image("evil/img", "latest", &image);
//! let server = HostileServer::start("127.0.0.1:0", move |req| routes.serve(req)).await;
//! // pull server.host()/evil/img:latest; server.requests() tells what came
//! ```
//!
//! Every response carries `Connection: close`, so each request is one connection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::images::OciImage;

/// One request the server read.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    /// Path and query, as sent.
    pub path: String,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The path without the query.
    pub fn route(&self) -> &str {
        self.path.split('?').next().unwrap_or(&self.path)
    }
}

/// What to answer.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// After the body, bytes without end (no Content-Length: the body ends when the
    /// connection does) until the client hangs up; the count sent is recorded.
    pub endless: bool,
}

impl Response {
    pub fn new(status: u16) -> Response {
        Response {
            endless: false,
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Response {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Response {
        self.body = body.into();
        self
    }

    /// A registry error envelope (`{"errors":[{"code":..}]}`).
    pub fn registry_error(status: u16, code: &str) -> Response {
        Response::new(status)
            .header("Content-Type", "application/json")
            .body(format!(
                r#"{{"errors":[{{"code":"{code}","message":"{code}"}}]}}"#
            ))
    }

    /// A redirect to `location`.
    pub fn redirect(status: u16, location: &str) -> Response {
        Response::new(status).header("Location", location)
    }
}

type Handler = dyn Fn(&Request) -> Response + Send + Sync;

/// The server; stops when dropped.
pub struct HostileServer {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<Request>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for HostileServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HostileServer {
    /// Listens on `bind` (`127.0.0.1:0` for a free port; any 127/8 address works).
    pub async fn start(
        bind: &str,
        handler: impl Fn(&Request) -> Response + Send + Sync + 'static,
    ) -> HostileServer {
        let listener = TcpListener::bind(bind)
            .await
            .unwrap_or_else(|e| panic!("bind {bind}: {e}"));
        let addr = listener.local_addr().expect("local addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let (c, r) = (connections.clone(), requests.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                c.fetch_add(1, Ordering::SeqCst);
                let (handler, requests) = (handler.clone(), r.clone());
                tokio::spawn(async move {
                    serve(stream, handler, requests).await;
                });
            }
        });
        HostileServer {
            addr,
            connections,
            requests,
            task,
        }
    }

    /// A server that answers 404 to everything: a host that must never be reached.
    pub async fn forbidden(bind: &str) -> HostileServer {
        HostileServer::start(bind, |_| Response::new(404)).await
    }

    /// `127.0.0.1:<port>`
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> Vec<Request> {
        self.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

async fn serve(mut stream: TcpStream, handler: Arc<Handler>, requests: Arc<Mutex<Vec<Request>>>) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > 1 << 20 {
            return;
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines = text.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let method = first.next().unwrap_or("").to_string();
    let path = first.next().unwrap_or("").to_string();
    let headers = lines
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let request = Request {
        method,
        path,
        headers,
    };
    let response = handler(&request);
    requests
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(request.clone());
    let mut out = format!("HTTP/1.1 {} X\r\n", response.status);
    for (name, value) in &response.headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    let body = if request.method == "HEAD" {
        Vec::new()
    } else {
        response.body.clone()
    };
    if response.endless {
        out.push_str("Connection: close\r\n\r\n");
    } else {
        out.push_str(&format!(
            "Content-Length: {}\r\nConnection: close\r\n\r\n",
            response.body.len()
        ));
    }
    let _ = stream.write_all(out.as_bytes()).await;
    let _ = stream.write_all(&body).await;
    if response.endless && request.method != "HEAD" {
        // At most 4 GiB: a client that never stops reading fails the test's timeout,
        // not the machine's disk.
        let chunk = vec![0x5au8; 64 * 1024];
        let mut sent = body.len() as u64;
        while sent < 4 << 30 && stream.write_all(&chunk).await.is_ok() {
            sent += chunk.len() as u64;
        }
        ENDLESS_SENT.fetch_max(sent, Ordering::SeqCst);
    }
    let _ = stream.shutdown().await;
}

/// The most bytes one endless response sent before its client hung up.
pub static ENDLESS_SENT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A registry's read-only routes for images: `/v2/`, manifests by tag or digest, blobs.
#[derive(Clone, Default)]
pub struct Routes {
    /// `repo` -> reference (tag or digest) -> (media type, bytes)
    manifests: HashMap<String, HashMap<String, (String, Vec<u8>)>>,
    blobs: HashMap<String, Vec<u8>>,
}

impl Routes {
    pub fn new() -> Routes {
        Routes::default()
    }

    pub fn for_image(repo: &str, tag: &str, image: &OciImage) -> Routes {
        Routes::new().image(repo, tag, image)
    }

    /// Serves `image` as `repo:tag` (and by digest), with all its blobs.
    pub fn image(mut self, repo: &str, tag: &str, image: &OciImage) -> Routes {
        self = self.manifest(
            repo,
            tag,
            &image.manifest_media_type,
            image.manifest.clone(),
        );
        self = self.blob(image.config.clone());
        for layer in &image.layers {
            let bytes = image.read_blob(&layer.digest);
            self.blobs.insert(layer.digest.clone(), bytes);
        }
        self
    }

    /// A manifest (any bytes) under `tag` and under its digest.
    pub fn manifest(mut self, repo: &str, tag: &str, media_type: &str, bytes: Vec<u8>) -> Routes {
        let digest = super::images::sha256_digest(&bytes);
        let entry = self.manifests.entry(repo.to_string()).or_default();
        entry.insert(tag.to_string(), (media_type.to_string(), bytes.clone()));
        entry.insert(digest, (media_type.to_string(), bytes));
        self
    }

    /// A blob under its digest.
    pub fn blob(mut self, bytes: Vec<u8>) -> Routes {
        self.blobs
            .insert(super::images::sha256_digest(&bytes), bytes);
        self
    }

    /// The answer for `request`, as a registry without auth would give it.
    pub fn serve(&self, request: &Request) -> Response {
        let route = request.route();
        if route == "/v2/" || route == "/v2" {
            return Response::new(200).header("Content-Type", "application/json");
        }
        let Some(rest) = route.strip_prefix("/v2/") else {
            return Response::new(404);
        };
        if let Some((repo, reference)) = rest.rsplit_once("/manifests/") {
            return match self.manifests.get(repo).and_then(|m| m.get(reference)) {
                Some((media_type, bytes)) => Response::new(200)
                    .header("Content-Type", media_type)
                    .header(
                        "Docker-Content-Digest",
                        &super::images::sha256_digest(bytes),
                    )
                    .body(bytes.clone()),
                None => Response::registry_error(404, "MANIFEST_UNKNOWN"),
            };
        }
        if let Some((_, digest)) = rest.rsplit_once("/blobs/") {
            return match self.blobs.get(digest) {
                Some(bytes) => Response::new(200)
                    .header("Content-Type", "application/octet-stream")
                    .header("Docker-Content-Digest", digest)
                    .body(bytes.clone()),
                None => Response::registry_error(404, "BLOB_UNKNOWN"),
            };
        }
        Response::new(404)
    }
}
