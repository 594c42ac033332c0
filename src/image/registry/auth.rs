//! Authentication: credentials, the `/v2/` ping, the `WWW-Authenticate` challenge, the
//! token request (GET with Basic credentials, or the OAuth2 POST with an identity
//! token) with the scope of the operation, token realms, and the cache of
//! authenticated sessions.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use oci_client::secrets::RegistryAuth;
use oci_client::Client;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use tracing::{debug, warn};

use super::endpoint::{host_part, Endpoint};
use super::error::echo;
use super::redirect::read_capped;
use super::retry::Failure;
use super::{ImageReference, RegistryClient, RegistryError};

/// Cached authenticated clients; beyond this, expired ones and then all are dropped.
const MAX_SESSIONS: usize = 64;

/// The OAuth2 `client_id` sent with identity-token requests.
const OAUTH_CLIENT_ID: &str = "wharf";

/// How to authenticate to a registry. `Debug` never shows a secret.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum Credentials {
    #[default]
    Anonymous,
    /// Sent as HTTP Basic to registries that ask for it, or exchanged for a bearer
    /// token at the token endpoint.
    Basic { username: String, password: String },
    /// An OAuth2 refresh token (Docker's `identitytoken`), exchanged for a bearer token
    /// with `grant_type=refresh_token` at the token endpoint.
    IdentityToken(String),
    /// A bearer token sent as is.
    RegistryToken(String),
}

impl Credentials {
    pub(super) fn secrets(&self) -> Vec<&str> {
        match self {
            Credentials::Anonymous => Vec::new(),
            Credentials::Basic { password, .. } => vec![password.as_str()],
            Credentials::IdentityToken(token) | Credentials::RegistryToken(token) => {
                vec![token.as_str()]
            }
        }
    }

    /// Session cache key: credentials are compared by hash, not kept as keys.
    fn fingerprint(&self) -> [u8; 32] {
        let mut hasher = Sha256::new();
        let mut field = |bytes: &[u8]| {
            hasher.update((bytes.len() as u64).to_le_bytes());
            hasher.update(bytes);
        };
        match self {
            Credentials::Anonymous => field(b"anonymous"),
            Credentials::Basic { username, password } => {
                field(b"basic");
                field(username.as_bytes());
                field(password.as_bytes());
            }
            Credentials::IdentityToken(token) => {
                field(b"identity");
                field(token.as_bytes());
            }
            Credentials::RegistryToken(token) => {
                field(b"registry");
                field(token.as_bytes());
            }
        }
        hasher.finalize().into()
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Anonymous => f.write_str("Anonymous"),
            Credentials::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
            Credentials::IdentityToken(_) => {
                f.debug_tuple("IdentityToken").field(&"<redacted>").finish()
            }
            Credentials::RegistryToken(_) => {
                f.debug_tuple("RegistryToken").field(&"<redacted>").finish()
            }
        }
    }
}

/// `url` names the host of `host_port` (`name[:port]`): the same name or address,
/// whatever the port.
fn same_host(url: &reqwest::Url, host_port: &str) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let ours = host_part(host_port)
        .trim_start_matches('[')
        .trim_end_matches(']');
    let theirs = host.trim_start_matches('[').trim_end_matches(']');
    match (theirs.parse::<IpAddr>(), ours.parse::<IpAddr>()) {
        (Ok(a), Ok(b)) => a == b,
        _ => theirs.eq_ignore_ascii_case(ours),
    }
}

/// What a session may do, which decides the token scope.
#[derive(Clone, Debug)]
pub(super) enum Access {
    Pull,
    /// Push to the repository, and mount from these repositories of the same registry.
    Push {
        mount_from: Vec<String>,
    },
}

fn scopes(repository: &str, access: &Access) -> Vec<String> {
    match access {
        Access::Pull => vec![format!("repository:{repository}:pull")],
        Access::Push { mount_from } => {
            std::iter::once(format!("repository:{repository}:pull,push"))
                .chain(mount_from.iter().map(|r| format!("repository:{r}:pull")))
                .collect()
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Challenge {
    scheme: String,
    params: HashMap<String, String>,
}

/// Parses `WWW-Authenticate`: `Bearer realm="...",service="...",scope="..."`,
/// `Basic realm="..."`, several challenges possibly in one value.
fn parse_challenges(value: &str) -> Vec<Challenge> {
    let bytes = value.as_bytes();
    let mut challenges: Vec<Challenge> = Vec::new();
    let mut i = 0;
    let is_sep = |b: u8| b == b',' || b.is_ascii_whitespace();
    loop {
        while i < bytes.len() && is_sep(bytes[i]) {
            i += 1;
        }
        if i >= bytes.len() {
            break;
        }
        let start = i;
        while i < bytes.len() && !is_sep(bytes[i]) && bytes[i] != b'=' {
            i += 1;
        }
        let token = &value[start..i];
        let mut j = i;
        while j < bytes.len() && bytes[j] == b' ' {
            j += 1;
        }
        if j < bytes.len() && bytes[j] == b'=' {
            // key=value of the current challenge
            i = j + 1;
            while i < bytes.len() && bytes[i] == b' ' {
                i += 1;
            }
            let mut param = String::new();
            if i < bytes.len() && bytes[i] == b'"' {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    if bytes[i] == b'\\' && i + 1 < bytes.len() {
                        i += 1;
                    }
                    let ch_len = value[i..].chars().next().map_or(1, char::len_utf8);
                    param.push_str(&value[i..i + ch_len]);
                    i += ch_len;
                }
                i += 1;
            } else {
                let vstart = i;
                while i < bytes.len() && !is_sep(bytes[i]) {
                    i += 1;
                }
                param.push_str(&value[vstart..i]);
            }
            if let Some(challenge) = challenges.last_mut() {
                challenge.params.insert(token.to_ascii_lowercase(), param);
            }
        } else {
            challenges.push(Challenge {
                scheme: token.to_ascii_lowercase(),
                params: HashMap::new(),
            });
        }
    }
    challenges
}

/// application/x-www-form-urlencoded
fn form_encode(pairs: &[(&str, &str)]) -> String {
    let encode = |s: &str| {
        let mut out = String::with_capacity(s.len());
        for b in s.bytes() {
            match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                    out.push(b as char)
                }
                b' ' => out.push('+'),
                _ => out.push_str(&format!("%{b:02X}")),
            }
        }
        out
    };
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// A token goes into an `Authorization` header: visible ASCII only.
fn usable_token(token: &str) -> bool {
    !token.is_empty() && token.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

#[derive(Deserialize)]
struct TokenResponse {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// Authenticated oci-client clients for one endpoint, credentials and scope.
pub(super) struct Session {
    pub(super) auth: RegistryAuth,
    /// Monolithic blob uploads and every non-upload request.
    pub(super) client: Client,
    /// Chunked blob uploads (push sessions only).
    pub(super) chunked: Option<Client>,
    /// When the bearer token runs out (with a margin).
    expires: Option<Instant>,
    /// The token came from our negotiation: renegotiate once on a 401.
    pub(super) negotiated: bool,
}

#[derive(Clone, PartialEq, Eq, Hash)]
pub(super) struct SessionKey {
    endpoint: String,
    credentials: [u8; 32],
    scope: String,
}

impl RegistryClient {
    /// A cached session for (endpoint, credentials, scope), or a new one after the
    /// `/v2/` ping and, for token registries, a token request. The flag tells whether it
    /// came from the cache.
    pub(super) async fn session(
        &self,
        endpoint: &Endpoint,
        credentials: &Credentials,
        repository: &str,
        access: &Access,
    ) -> Result<(Arc<Session>, bool), Failure> {
        let scopes = scopes(repository, access);
        let key = SessionKey {
            endpoint: endpoint.url.clone(),
            credentials: credentials.fingerprint(),
            scope: scopes.join(" "),
        };
        if let Some(session) = self.cached_session(&key) {
            return Ok((session, true));
        }
        let (auth, expires, negotiated) = self.negotiate(endpoint, credentials, &scopes).await?;
        // oci-client gets the auth only when there is some: with `Anonymous` stored it
        // would ping `/v2/` before every request.
        let store = !matches!(auth, RegistryAuth::Anonymous);
        let client = self.build_client(endpoint, true)?;
        if store {
            client.store_auth_if_needed(&endpoint.host, &auth).await;
        }
        let chunked = match access {
            Access::Push { .. } => {
                let chunked = self.build_client(endpoint, false)?;
                if store {
                    chunked.store_auth_if_needed(&endpoint.host, &auth).await;
                }
                Some(chunked)
            }
            Access::Pull => None,
        };
        let session = Arc::new(Session {
            auth,
            client,
            chunked,
            expires,
            negotiated,
        });
        if let Ok(mut sessions) = self.inner.sessions.lock() {
            if sessions.len() >= MAX_SESSIONS {
                let now = Instant::now();
                sessions.retain(|_, s| s.expires.is_none_or(|e| e > now));
                if sessions.len() >= MAX_SESSIONS {
                    sessions.clear();
                }
            }
            sessions.insert(key, session.clone());
        }
        Ok((session, false))
    }

    fn cached_session(&self, key: &SessionKey) -> Option<Arc<Session>> {
        let sessions = self.inner.sessions.lock().ok()?;
        let session = sessions.get(key)?;
        if session.expires.is_some_and(|e| e <= Instant::now()) {
            return None;
        }
        Some(session.clone())
    }

    pub(super) fn forget_session(&self, session: &Arc<Session>) {
        if let Ok(mut sessions) = self.inner.sessions.lock() {
            sessions.retain(|_, s| !Arc::ptr_eq(s, session));
        }
    }

    /// Checks `credentials` against `registry` (a host[:port], `docker login`'s
    /// server): a token registry must grant a token for them (no repository scope),
    /// a Basic one must answer `/v2/` with them. Nothing is cached.
    pub async fn login(
        &self,
        registry: &str,
        credentials: &Credentials,
    ) -> Result<(), RegistryError> {
        let result = async {
            let reference = ImageReference::parse(&format!("{registry}/login-check"))?;
            let endpoint = self.origin(&reference);
            let (auth, _, _) = self
                .negotiate(&endpoint, credentials, &[])
                .await
                .map_err(|f| f.error)?;
            if let RegistryAuth::Basic(..) = auth {
                let http = self.http(&endpoint).map_err(|f| f.error)?;
                let url = format!("{}/v2/", endpoint.url);
                let response = self
                    .get_following(
                        http,
                        &endpoint,
                        &url,
                        reqwest::header::HeaderMap::new(),
                        &auth,
                        "GET /v2/",
                    )
                    .await
                    .map_err(|f| f.error)?;
                if response.status().as_u16() == 401 {
                    return Err(RegistryError::Unauthorized {
                        registry: endpoint.name.clone(),
                    });
                }
            }
            Ok(())
        }
        .await;
        result.map_err(|e| e.scrub(credentials))
    }

    /// The auth oci-client is to use: pings `/v2/` and follows the challenge.
    async fn negotiate(
        &self,
        endpoint: &Endpoint,
        credentials: &Credentials,
        scopes: &[String],
    ) -> Result<(RegistryAuth, Option<Instant>, bool), Failure> {
        let unauthorized = || {
            Failure::fatal(RegistryError::Unauthorized {
                registry: endpoint.name.clone(),
            })
        };
        if let Credentials::RegistryToken(token) = credentials {
            if !usable_token(token) {
                return Err(unauthorized());
            }
            return Ok((RegistryAuth::Bearer(token.clone()), None, false));
        }
        let http = self.http(endpoint)?;
        let url = format!("{}/v2/", endpoint.url);
        let response = self
            .get_following(
                http,
                endpoint,
                &url,
                reqwest::header::HeaderMap::new(),
                &RegistryAuth::Anonymous,
                "GET /v2/",
            )
            .await?;
        let status = response.status();
        if status.is_server_error() || status.as_u16() == 429 {
            return Err(Failure::transient(RegistryError::Transport {
                registry: endpoint.name.clone(),
                message: format!("GET /v2/ answered HTTP {status}"),
            }));
        }
        if status.as_u16() != 401 {
            debug!(endpoint = %endpoint.url, %status, "registry needs no authentication");
            return Ok((RegistryAuth::Anonymous, None, false));
        }
        let challenges: Vec<Challenge> = response
            .headers()
            .get_all(reqwest::header::WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(parse_challenges)
            .collect();
        let bearer = challenges
            .iter()
            .find(|c| c.scheme == "bearer" && c.params.contains_key("realm"));
        match (bearer, credentials) {
            (Some(challenge), _) => {
                let realm = challenge
                    .params
                    .get("realm")
                    .map(String::as_str)
                    .unwrap_or("");
                let service = challenge.params.get("service").map(String::as_str);
                let (token, expires) = self
                    .fetch_token(endpoint, realm, service, scopes, credentials)
                    .await?;
                Ok((RegistryAuth::Bearer(token), Some(expires), true))
            }
            (None, Credentials::Basic { username, password }) => Ok((
                RegistryAuth::Basic(username.clone(), password.clone()),
                None,
                false,
            )),
            // Identity tokens only work with a token server; without credentials the
            // registry will refuse, which is the error the caller gets.
            (None, _) => Ok((RegistryAuth::Anonymous, None, false)),
        }
    }

    /// Gets a bearer token for `scopes` from the token server at `realm`.
    async fn fetch_token(
        &self,
        endpoint: &Endpoint,
        realm: &str,
        service: Option<&str>,
        scopes: &[String],
        credentials: &Credentials,
    ) -> Result<(String, Instant), Failure> {
        let refused = |message: String| {
            Failure::fatal(RegistryError::Registry {
                registry: endpoint.name.clone(),
                message,
            })
        };
        let mut url = reqwest::Url::parse(realm)
            .map_err(|e| refused(format!("token realm {:?} is not a URL: {e}", echo(realm))))?;
        let sends_credentials = !matches!(credentials, Credentials::Anonymous);
        match url.scheme() {
            "https" => {}
            "http" if !sends_credentials => {}
            "http" if same_host(&url, &endpoint.host) => {
                warn!(
                    registry = %endpoint.name, realm = %echo(realm),
                    "sending credentials over plain HTTP to the registry's own token realm"
                );
            }
            "http" => {
                return Err(Failure::fatal(RegistryError::InsecureRealm {
                    registry: endpoint.name.clone(),
                    realm: echo(realm),
                }))
            }
            other => {
                return Err(refused(format!(
                    "token realm {:?} has scheme {:?}, not https",
                    echo(realm),
                    echo(other)
                )))
            }
        }
        let http = self.http(endpoint)?;
        let response = match credentials {
            Credentials::IdentityToken(refresh_token) => {
                let scope = scopes.join(" ");
                let mut form = vec![
                    ("grant_type", "refresh_token"),
                    ("refresh_token", refresh_token.as_str()),
                    ("client_id", OAUTH_CLIENT_ID),
                    ("scope", scope.as_str()),
                ];
                if let Some(service) = service {
                    form.push(("service", service));
                }
                // A POST is not redirected (a 3xx is a refusal).
                http.post(url)
                    .header(
                        reqwest::header::CONTENT_TYPE,
                        "application/x-www-form-urlencoded",
                    )
                    .body(form_encode(&form))
                    .send()
                    .await
                    .map_err(|e| Self::request_failure(endpoint, "token request", &e))?
            }
            _ => {
                {
                    let mut query = url.query_pairs_mut();
                    if let Some(service) = service {
                        query.append_pair("service", service);
                    }
                    for scope in scopes {
                        query.append_pair("scope", scope);
                    }
                }
                let auth = match credentials {
                    Credentials::Basic { username, password } => {
                        RegistryAuth::Basic(username.clone(), password.clone())
                    }
                    _ => RegistryAuth::Anonymous,
                };
                self.get_following(
                    http,
                    endpoint,
                    url.as_str(),
                    reqwest::header::HeaderMap::new(),
                    &auth,
                    "token request",
                )
                .await?
            }
        };
        let status = response.status();
        if status.is_server_error() || status.as_u16() == 429 {
            return Err(Failure::transient(RegistryError::Transport {
                registry: endpoint.name.clone(),
                message: format!("token server answered HTTP {status}"),
            }));
        }
        if !status.is_success() {
            debug!(endpoint = %endpoint.url, %status, "token request refused");
            return Err(Failure::fatal(RegistryError::Unauthorized {
                registry: endpoint.name.clone(),
            }));
        }
        let (body, complete) = read_capped(response, 1 << 20)
            .await
            .map_err(|e| Self::request_failure(endpoint, "token response", &e))?;
        if !complete {
            return Err(refused("token server sent more than 1 MiB".to_string()));
        }
        let parsed: TokenResponse = serde_json::from_slice(&body)
            .map_err(|e| refused(format!("token server sent an unreadable answer: {e}")))?;
        let token = parsed
            .token
            .filter(|t| !t.is_empty())
            .or(parsed.access_token)
            .unwrap_or_default();
        if !usable_token(&token) {
            return Err(refused("token server sent no usable token".to_string()));
        }
        // At least 60 s (the token spec's default), at most a day; renewed 10 s early.
        let lifetime = parsed.expires_in.unwrap_or(60).clamp(60, 86_400);
        let expires = Instant::now() + Duration::from_secs(lifetime - 10);
        Ok((token, expires))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::registry::tests::url;

    #[test]
    fn challenges() {
        let c = parse_challenges(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(c[0].params["realm"], "https://auth.docker.io/token");
        assert_eq!(c[0].params["service"], "registry.docker.io");
        assert_eq!(c[0].params["scope"], "repository:library/busybox:pull");
        let c = parse_challenges(
            r#"Basic realm="a \"quoted\" realm", Bearer realm=http://x/t,service=s"#,
        );
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].scheme, "basic");
        assert_eq!(c[0].params["realm"], "a \"quoted\" realm");
        assert_eq!(c[1].params["realm"], "http://x/t");
        assert_eq!(c[1].params["service"], "s");
        assert!(parse_challenges("").is_empty());
    }

    #[test]
    fn form_encoding() {
        assert_eq!(
            form_encode(&[("scope", "repository:a/b:pull push"), ("x", "1&2=ü")]),
            "scope=repository%3Aa%2Fb%3Apull+push&x=1%262%3D%C3%BC"
        );
    }

    #[test]
    fn credentials_debug_is_redacted() {
        let all = [
            Credentials::Basic {
                username: "alice".into(),
                password: "hunter2-secret".into(),
            },
            Credentials::IdentityToken("refresh-secret".into()),
            Credentials::RegistryToken("bearer-secret".into()),
        ];
        for c in all {
            let debug = format!("{c:?}");
            assert!(!debug.contains("secret"), "{debug}");
            assert!(debug.contains("redacted"), "{debug}");
        }
        assert_ne!(
            Credentials::IdentityToken("a".into()).fingerprint(),
            Credentials::RegistryToken("a".into()).fingerprint()
        );
    }

    #[test]
    fn token_realm_host_is_compared_without_port() {
        assert!(same_host(
            &url("http://127.0.0.1:9999/token"),
            "127.0.0.1:5000"
        ));
        assert!(same_host(&url("http://[::1]:1/token"), "[::1]:5000"));
        assert!(same_host(&url("http://Reg.LAN/token"), "reg.lan:5000"));
        assert!(!same_host(&url("http://127.0.0.2/token"), "127.0.0.1:5000"));
        assert!(!same_host(
            &url("http://10.255.255.1/token"),
            "127.0.0.1:5000"
        ));
        assert!(!same_host(&url("http://localhost/token"), "127.0.0.1:5000"));
    }
}
