//! Docker registry token authentication for tests: a small bearer token server and a
//! `docker-registry` (distribution 2.8) that trusts it.
//!
//! ```ignore
//! let tokens = TokenServer::start("alice", "alice-pw", "refresh-token").await;
//! let registry = TokenRegistry::start(&plain_registry.storage_dir(), &tokens).await;
//! // pull from registry.host(); tokens.requests() tells what was asked for
//! ```
//!
//! The token server speaks both flows a client may use:
//! - `GET /token?service=..&scope=..` with HTTP Basic credentials (or none: an
//!   anonymous token that grants nothing, as Docker Hub gives for private repositories);
//! - `POST /token` with an OAuth2 form: `grant_type=refresh_token` (identity tokens) or
//!   `grant_type=password`.
//!
//! Tokens are ES256 JWTs with the signing certificate in `x5c`; the registry's
//! `rootcertbundle` is that (self-signed) certificate. Keys, certificates and signatures
//! come from the `openssl` command (Debian package `openssl`), so no crypto crate is
//! needed. Every request is recorded ([`TokenServer::requests`]).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// `service` of the registry and the tokens' audience.
pub const SERVICE: &str = "wharf-test-registry";
/// `iss` of the tokens.
pub const ISSUER: &str = "wharf-test-token-issuer";
const OPENSSL: &str = "openssl";
const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// One request the token server answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRequest {
    /// `GET` or `POST`.
    pub method: String,
    /// `basic` (GET with credentials), `anonymous` (GET without), `refresh_token` or
    /// `password` (POST).
    pub grant: String,
    /// Requested scopes, e.g. `repository:test/busybox:pull`.
    pub scopes: Vec<String>,
    pub service: String,
    /// Whether the credentials were accepted (a token was issued for the scopes).
    pub granted: bool,
}

struct Accounts {
    username: String,
    password: String,
    refresh_token: String,
}

struct Shared {
    accounts: Accounts,
    key_path: PathBuf,
    cert_der_b64: String,
    requests: Mutex<Vec<TokenRequest>>,
    next_id: AtomicU64,
}

/// The token server; stops when dropped.
pub struct TokenServer {
    port: u16,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
    dir: TempDir,
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn openssl(args: &[&str], stdin: Option<&[u8]>) -> Vec<u8> {
    use std::io::Write;
    let child = Command::new(OPENSSL)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("`openssl` is missing: install the Debian package `openssl`")
        }
        Err(e) => panic!("run openssl: {e}"),
    };
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("openssl stdin");
        pipe.write_all(input).expect("write to openssl");
    }
    let out = child.wait_with_output().expect("wait for openssl");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

const B64_STD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const B64_URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn base64(data: &[u8], alphabet: &[u8; 64], pad: bool) -> String {
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(alphabet[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else if pad {
                out.push('=');
            }
        }
    }
    out
}

fn base64url(data: &[u8]) -> String {
    base64(data, B64_URL, false)
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut bits = 0u32;
    let mut nbits = 0;
    let mut out = Vec::new();
    for c in s.bytes().filter(|&c| c != b'=') {
        let v = B64_STD.iter().position(|&a| a == c)? as u32;
        bits = (bits << 6) | v;
        nbits += 6;
        if nbits >= 8 {
            nbits -= 8;
            out.push((bits >> nbits) as u8);
        }
    }
    Some(out)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_form(s: &str) -> Vec<(String, String)> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(p), String::new()),
        })
        .collect()
}

/// DER `ECDSA-Sig-Value ::= SEQUENCE { r INTEGER, s INTEGER }` -> 64-byte `r || s`.
fn der_signature_to_raw(der: &[u8]) -> Vec<u8> {
    fn read_len(der: &[u8], i: &mut usize) -> usize {
        let first = der[*i];
        *i += 1;
        if first & 0x80 == 0 {
            first as usize
        } else {
            let n = (first & 0x7f) as usize;
            let mut len = 0;
            for _ in 0..n {
                len = (len << 8) | der[*i] as usize;
                *i += 1;
            }
            len
        }
    }
    let mut i = 0;
    assert_eq!(der[i], 0x30, "DER signature is not a SEQUENCE");
    i += 1;
    read_len(der, &mut i);
    let mut raw = Vec::with_capacity(64);
    for _ in 0..2 {
        assert_eq!(der[i], 0x02, "DER signature part is not an INTEGER");
        i += 1;
        let len = read_len(der, &mut i);
        let mut int = &der[i..i + len];
        i += len;
        while int.len() > 32 && int[0] == 0 {
            int = &int[1..];
        }
        assert!(int.len() <= 32, "ECDSA P-256 integer too long");
        raw.extend(std::iter::repeat_n(0u8, 32 - int.len()));
        raw.extend_from_slice(int);
    }
    raw
}

impl Shared {
    fn sign(&self, claims: &Value) -> String {
        let header = json!({"typ": "JWT", "alg": "ES256", "x5c": [self.cert_der_b64]});
        let signing_input = format!(
            "{}.{}",
            base64url(header.to_string().as_bytes()),
            base64url(claims.to_string().as_bytes())
        );
        let key = self.key_path.to_str().expect("utf-8 key path");
        let der = openssl(
            &["dgst", "-sha256", "-sign", key],
            Some(signing_input.as_bytes()),
        );
        format!("{signing_input}.{}", base64url(&der_signature_to_raw(&der)))
    }

    fn token(&self, subject: &str, scopes: &[String], granted: bool) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let access: Vec<Value> = if granted {
            scopes
                .iter()
                .filter_map(|scope| {
                    let (kind, rest) = scope.split_once(':')?;
                    let (name, actions) = rest.rsplit_once(':')?;
                    let actions: Vec<&str> = actions.split(',').collect();
                    Some(json!({"type": kind, "name": name, "actions": actions}))
                })
                .collect()
        } else {
            Vec::new()
        };
        let claims = json!({
            "iss": ISSUER,
            "sub": subject,
            "aud": SERVICE,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": format!("wharf-test-{}", self.next_id.fetch_add(1, Ordering::SeqCst)),
            "access": access,
        });
        self.sign(&claims)
    }
}

struct HttpRequest {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl HttpRequest {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

async fn read_request(stream: &mut TcpStream) -> Option<HttpRequest> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 || buf.len() > 64 * 1024 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_string();
    let target = request_line.next()?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some(HttpRequest {
        method,
        target,
        headers,
        body,
    })
}

async fn respond(stream: &mut TcpStream, status: &str, body: &Value) {
    let body = body.to_string();
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

async fn handle(shared: Arc<Shared>, mut stream: TcpStream) {
    let Some(request) = read_request(&mut stream).await else {
        return;
    };
    let (path, query) = request
        .target
        .split_once('?')
        .unwrap_or((request.target.as_str(), ""));
    if path != "/token" {
        respond(&mut stream, "404 Not Found", &json!({"error": "not found"})).await;
        return;
    }
    let accounts = &shared.accounts;
    let (grant, subject, granted, service, scopes) = match request.method.as_str() {
        "GET" => {
            let params = parse_form(query);
            let scopes: Vec<String> = params
                .iter()
                .filter(|(k, _)| k == "scope")
                .map(|(_, v)| v.clone())
                .collect();
            let service = params
                .iter()
                .find(|(k, _)| k == "service")
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            match request
                .header("authorization")
                .and_then(|v| v.strip_prefix("Basic "))
            {
                Some(encoded) => {
                    let decoded = base64_decode(encoded.trim())
                        .map(|d| String::from_utf8_lossy(&d).into_owned())
                        .unwrap_or_default();
                    let (user, password) = decoded.split_once(':').unwrap_or(("", ""));
                    let ok = user == accounts.username && password == accounts.password;
                    ("basic", user.to_string(), ok, service, scopes)
                }
                None => ("anonymous", String::new(), false, service, scopes),
            }
        }
        "POST" => {
            let form = parse_form(&String::from_utf8_lossy(&request.body));
            let get = |key: &str| {
                form.iter()
                    .find(|(k, _)| k == key)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            };
            let scopes: Vec<String> = get("scope")
                .split(' ')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
            match get("grant_type").as_str() {
                "refresh_token" => {
                    let ok = get("refresh_token") == accounts.refresh_token;
                    (
                        "refresh_token",
                        accounts.username.clone(),
                        ok,
                        get("service"),
                        scopes,
                    )
                }
                "password" => {
                    let ok = get("username") == accounts.username
                        && get("password") == accounts.password;
                    ("password", get("username"), ok, get("service"), scopes)
                }
                _ => ("unknown", String::new(), false, get("service"), scopes),
            }
        }
        _ => {
            respond(&mut stream, "405 Method Not Allowed", &json!({})).await;
            return;
        }
    };
    shared
        .requests
        .lock()
        .expect("token requests")
        .push(TokenRequest {
            method: request.method.clone(),
            grant: grant.to_string(),
            scopes: scopes.clone(),
            service: service.clone(),
            granted,
        });
    let anonymous = grant == "anonymous";
    if !granted && !anonymous {
        respond(
            &mut stream,
            "401 Unauthorized",
            &json!({"errors": [{"code": "UNAUTHORIZED", "message": "invalid credentials"}]}),
        )
        .await;
        return;
    }
    let token = shared.token(&subject, &scopes, granted);
    let body = if request.method == "POST" {
        json!({"access_token": token, "expires_in": 300, "scope": scopes.join(" ")})
    } else {
        json!({"token": token, "access_token": token, "expires_in": 300})
    };
    respond(&mut stream, "200 OK", &body).await;
}

impl TokenServer {
    /// Accepts `username`/`password` (Basic GET or password grant) and `refresh_token`
    /// (refresh-token grant), granting whatever scope is asked.
    pub async fn start(username: &str, password: &str, refresh_token: &str) -> TokenServer {
        let dir = tempfile::Builder::new()
            .prefix("wharf-token-server-")
            .tempdir()
            .expect("token server temp dir");
        let key = dir.path().join("key.pem");
        let cert = dir.path().join("cert.pem");
        let path = |p: &Path| p.to_str().expect("utf-8 temp path").to_string();
        openssl(
            &[
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out",
                &path(&key),
            ],
            None,
        );
        openssl(
            &[
                "req",
                "-x509",
                "-new",
                "-key",
                &path(&key),
                "-subj",
                "/CN=wharf-test-token-issuer",
                "-days",
                "2",
                "-out",
                &path(&cert),
            ],
            None,
        );
        let der = openssl(&["x509", "-in", &path(&cert), "-outform", "DER"], None);
        let shared = Arc::new(Shared {
            accounts: Accounts {
                username: username.to_string(),
                password: password.to_string(),
                refresh_token: refresh_token.to_string(),
            },
            key_path: key,
            cert_der_b64: base64(&der, B64_STD, true),
            requests: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(1),
        });
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind token server");
        let port = listener.local_addr().expect("token server address").port();
        let task_shared = shared.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(handle(task_shared.clone(), stream));
            }
        });
        TokenServer {
            port,
            shared,
            task,
            dir,
        }
    }

    /// `http://127.0.0.1:PORT/token`
    pub fn realm(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }

    /// The self-signed certificate the tokens are signed with (PEM).
    pub fn cert_path(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    /// Requests answered so far, in order.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.shared.requests.lock().expect("token requests").clone()
    }

    /// Forget the recorded requests.
    pub fn clear_requests(&self) {
        self.shared.requests.lock().expect("token requests").clear();
    }

    /// A token for `scopes` as the server would issue it to a valid user.
    pub fn issue(&self, scopes: &[&str]) -> String {
        let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
        self.shared
            .token(&self.shared.accounts.username, &scopes, true)
    }
}

/// A `docker-registry` with token auth, serving an existing storage directory (e.g. a
/// fixture registry's, to pull what was pushed there). Stopped on drop.
pub struct TokenRegistry {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
}

impl Drop for TokenRegistry {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                if !matches!(child.try_wait(), Ok(None)) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

impl TokenRegistry {
    pub async fn start(storage: &Path, tokens: &TokenServer) -> TokenRegistry {
        let registry_bin = super::require_installed(REGISTRY_BIN, "docker-registry");
        let mut dir = tempfile::Builder::new()
            .prefix("wharf-token-registry-")
            .tempdir()
            .expect("registry temp dir");
        let log_path = dir.path().join("registry.log");
        let config_path = dir.path().join("config.yml");
        let quote = |s: &str| format!("'{}'", s.replace('\'', "''"));
        for _attempt in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("free port")
                .port();
            let config = format!(
                "version: 0.1\n\
                 log:\n  level: info\n  formatter: text\n\
                 storage:\n  filesystem:\n    rootdirectory: {storage}\n  \
                 delete:\n    enabled: true\n  \
                 maintenance:\n    uploadpurging:\n      enabled: false\n\
                 http:\n  addr: 127.0.0.1:{port}\n  secret: wharf-test-secret-{port}\n\
                 auth:\n  token:\n    realm: {realm}\n    service: {SERVICE}\n    \
                 issuer: {ISSUER}\n    rootcertbundle: {cert}\n",
                storage = quote(storage.to_str().expect("utf-8 storage path")),
                realm = quote(&tokens.realm()),
                cert = quote(tokens.cert_path().to_str().expect("utf-8 cert path")),
            );
            std::fs::write(&config_path, config).expect("write registry config");
            let mut cmd = super::registry::registry_command(registry_bin, &config_path, &log_path);
            let child = cmd.spawn().expect("spawn docker-registry");
            let mut registry = TokenRegistry {
                child: Some(child),
                port,
                dir,
            };
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                let exited = registry
                    .child
                    .as_mut()
                    .is_none_or(|c| !matches!(c.try_wait(), Ok(None)));
                if exited {
                    break;
                }
                if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)).await {
                    let _ = stream
                        .write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                        .await;
                    let mut answer = Vec::new();
                    let _ = stream.read_to_end(&mut answer).await;
                    let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
                    if answer.contains("docker-distribution-api-version") {
                        return registry;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let log = registry.log();
            if log.contains("address already in use") {
                dir = std::mem::replace(&mut registry.dir, tempfile::tempdir().expect("temp dir"));
                continue;
            }
            panic!("token-auth docker-registry did not start on 127.0.0.1:{port}; log:\n{log}");
        }
        panic!("token-auth docker-registry: no free port after 5 attempts");
    }

    /// `127.0.0.1:PORT`
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read(self.dir.path().join("registry.log"))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }
}
