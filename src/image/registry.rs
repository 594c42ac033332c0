//! The registry client wharf pulls and pushes with.
//!
//! [`RegistryClient::resolve`] turns an [`ImageReference`] into one platform's manifest
//! and verified config, [`RegistryClient::fetch_blob`] streams a blob with its size and
//! digest checked (and resumes an interrupted download with a `Range` request), and
//! [`RegistryClient::push`] uploads an image (skipping blobs the registry has, mounting
//! from other repositories when it can, uploading monolithically or in chunks).
//!
//! Pushes go through `oci-client`; pulls (manifest and blob GETs) are plain `reqwest`
//! requests whose redirects wharf follows itself, each hop checked by
//! [`check_redirect`].
//! Also done here:
//! - authentication: the `/v2/` ping, the `WWW-Authenticate` challenge and the token
//!   request (GET with Basic credentials, or the OAuth2 POST with an identity token), with
//!   the scope of the operation (`pull`, or `pull,push` plus `pull` on the repositories a
//!   push mounts from). oci-client then only ever sees a ready bearer token or Basic
//!   credentials. Clients are cached per (endpoint, credentials, scope), so two pulls with
//!   different credentials never share a token;
//! - endpoint selection: configured mirrors in order (`?ns=<registry>`, as containerd
//!   sends), then the registry itself; plain HTTP only for registries listed as insecure
//!   and for loopback hosts, as Docker does. The credentials given for a registry are
//!   also offered to its mirrors (as Docker and containerd do): mirrors are configured
//!   by the administrator, not by the image reference;
//! - token realms: credentials go to one only over HTTPS, or over plain HTTP when it is
//!   on the registry's own host ([`RegistryError::InsecureRealm`] otherwise);
//! - redirects: at most 5 hops, http(s) only, never HTTPS to HTTP, never into another
//!   address class than the registry's unless `registry.redirect_allow` says so;
//! - retries with exponential backoff on transient errors (connection failures, 5xx, 429)
//!   on the origin; a failing mirror falls through to the next endpoint at once;
//! - verification: manifest digests (the asked digest, the index entry's digest), the
//!   config blob, and every streamed blob (size and sha256).
//!
//! No error message ever carries credentials: authentication failures only name the
//! registry, and free-text messages are scrubbed of the secrets the call was given.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::{self, BoxStream, StreamExt, TryStreamExt};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciEnvelope, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use tracing::{debug, warn};

pub use super::platform::Platform;
use super::platform::PlatformError;
use crate::config::RegistryConfig;

/// OCI image manifest.
pub const MEDIA_TYPE_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const MEDIA_TYPE_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker image manifest, schema 2.
pub const MEDIA_TYPE_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const MEDIA_TYPE_DOCKER_MANIFEST_LIST: &str =
    "application/vnd.docker.distribution.manifest.list.v2+json";
/// OCI image config.
pub const MEDIA_TYPE_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Docker image config.
pub const MEDIA_TYPE_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const MEDIA_TYPE_DOCKER_SCHEMA1_SIGNED: &str =
    "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// Manifest media types wharf pulls and pushes (also the `Accept` header of a pull).
pub const MANIFEST_MEDIA_TYPES: &[&str] = &[
    MEDIA_TYPE_OCI_MANIFEST,
    MEDIA_TYPE_OCI_INDEX,
    MEDIA_TYPE_DOCKER_MANIFEST,
    MEDIA_TYPE_DOCKER_MANIFEST_LIST,
];
/// Config media types of a runnable image.
pub const CONFIG_MEDIA_TYPES: &[&str] = &[MEDIA_TYPE_OCI_CONFIG, MEDIA_TYPE_DOCKER_CONFIG];
/// Layer media types wharf can unpack: tar, gzip or zstd, OCI or Docker spelling.
pub const LAYER_MEDIA_TYPES: &[&str] = &[
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar",
];

/// Manifests and indexes larger than this are refused (containerd's limit).
const MAX_MANIFEST_SIZE: usize = 4 << 20;
/// Image configs larger than this are refused: they are held in memory.
const MAX_CONFIG_SIZE: u64 = 32 << 20;
/// oci-client never sends more than this in one PATCH.
const MAX_UPLOAD_CHUNK: usize = 4 << 20;
/// Redirects followed for one request (Go's client, and so Docker, follow 10).
const MAX_REDIRECTS: usize = 5;
/// Cached authenticated clients; beyond this, expired ones and then all are dropped.
const MAX_SESSIONS: usize = 64;
const USER_AGENT: &str = concat!("wharf/", env!("CARGO_PKG_VERSION"));
/// The OAuth2 `client_id` sent with identity-token requests.
const OAUTH_CLIENT_ID: &str = "wharf";

// ---------------------------------------------------------------------------
// errors

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },
    #[error("invalid digest {digest:?}: {reason}")]
    InvalidDigest { digest: String, reason: String },
    #[error(transparent)]
    InvalidPlatform(#[from] PlatformError),
    #[error("{reference} not found in repository {repository} of registry {registry}")]
    NotFound {
        registry: String,
        repository: String,
        reference: String,
    },
    #[error("authentication failed for registry {registry}")]
    Unauthorized { registry: String },
    #[error("unsupported media type {media_type:?}; supported: {}", .supported.join(", "))]
    UnsupportedMediaType {
        media_type: String,
        supported: Vec<String>,
    },
    #[error("no image for platform {wanted} in the index; it offers: {}", list_or_none(.available))]
    PlatformNotFound {
        wanted: String,
        available: Vec<String>,
    },
    #[error("content of {expected} does not match its digest: it hashes to {actual}")]
    DigestMismatch { expected: String, actual: String },
    #[error("size of {digest} is {actual} bytes, expected {expected}")]
    SizeMismatch {
        digest: String,
        expected: u64,
        actual: u64,
    },
    #[error("invalid manifest {reference}: {reason}")]
    InvalidManifest { reference: String, reason: String },
    #[error("registry {registry} unreachable: {message}")]
    Transport { registry: String, message: String },
    #[error("registry {registry} refused the request: {message}")]
    Registry { registry: String, message: String },
    #[error("refused redirect to {url}: {reason}")]
    Redirect { url: String, reason: String },
    #[error(
        "registry {registry} sends credentials to token realm {realm}: refused, credentials \
         go to a token realm only over HTTPS or to the registry's own host"
    )]
    InsecureRealm { registry: String, realm: String },
    /// Every endpoint (mirrors, then the registry) failed: the most specific cause, and
    /// what each endpoint answered.
    #[error("{cause} (endpoints tried: {})", .tried.join("; "))]
    Endpoints {
        cause: Box<RegistryError>,
        tried: Vec<String>,
    },
    #[error("blob {digest} at {}: {source}", .path.display())]
    BlobFile {
        digest: String,
        path: PathBuf,
        source: std::io::Error,
    },
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "no platform at all".to_string()
    } else {
        items.join(", ")
    }
}

impl RegistryError {
    /// The registry (or mirror) has no such manifest or blob.
    pub fn is_not_found(&self) -> bool {
        match self {
            RegistryError::Endpoints { cause, .. } => cause.is_not_found(),
            other => matches!(other, RegistryError::NotFound { .. }),
        }
    }

    /// The error that decides the outcome: the cause when every endpoint failed.
    pub fn cause(&self) -> &RegistryError {
        match self {
            RegistryError::Endpoints { cause, .. } => cause.cause(),
            other => other,
        }
    }

    /// How telling an endpoint's failure is, when every endpoint failed: an answer from
    /// a registry (not found, refused, bad content) says more than not reaching one.
    fn specificity(&self) -> u8 {
        match self {
            RegistryError::Transport { .. } => 0,
            RegistryError::Registry { .. } => 1,
            _ => 2,
        }
    }

    /// Replaces every secret of `credentials` in free-text messages (defence in depth:
    /// the messages come from registries and transports that never see them in clear).
    fn scrub(self, credentials: &Credentials) -> RegistryError {
        let secrets = credentials.secrets();
        if secrets.is_empty() {
            return self;
        }
        let clean = |mut s: String| {
            for secret in &secrets {
                if !secret.is_empty() {
                    s = s.replace(secret, "<redacted>");
                }
            }
            s
        };
        match self {
            RegistryError::Transport { registry, message } => RegistryError::Transport {
                registry,
                message: clean(message),
            },
            RegistryError::Registry { registry, message } => RegistryError::Registry {
                registry,
                message: clean(message),
            },
            RegistryError::InvalidManifest { reference, reason } => {
                RegistryError::InvalidManifest {
                    reference,
                    reason: clean(reason),
                }
            }
            RegistryError::Endpoints { cause, tried } => RegistryError::Endpoints {
                cause: Box::new(cause.scrub(credentials)),
                tried: tried.into_iter().map(clean).collect(),
            },
            other => other,
        }
    }
}

/// An error plus whether trying again may help.
struct Failure {
    error: RegistryError,
    transient: bool,
}

impl Failure {
    fn fatal(error: RegistryError) -> Failure {
        Failure {
            error,
            transient: false,
        }
    }

    fn transient(error: RegistryError) -> Failure {
        Failure {
            error,
            transient: true,
        }
    }
}

impl From<RegistryError> for Failure {
    fn from(error: RegistryError) -> Failure {
        Failure::fatal(error)
    }
}

/// An error and its sources, for transport messages ("error sending request: ...:
/// connection refused").
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        let text = inner.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = inner.source();
    }
    message
}

fn truncate(s: String, max: usize) -> String {
    if s.len() > max {
        super::bounded(&s, max)
    } else {
        s
    }
}

/// Text taken from a registry (a URL, a header) as errors and logs may show it.
fn echo(s: &str) -> String {
    super::bounded(s, super::MAX_ECHO)
}

// ---------------------------------------------------------------------------
// references

/// A normalized image reference: `docker.io/library/busybox:latest`,
/// `127.0.0.1:5000/test/busybox@sha256:...`. Parsed as Docker does: a first path
/// component with a `.` or `:` (or `localhost`, or `[ipv6]`) is the registry, otherwise
/// the registry is `docker.io`, whose one-component names live under `library/`; no tag
/// and no digest means `latest`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ImageReference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<String>,
}

const DOCKER_HUB: &str = "docker.io";
const NAME_MAX_LEN: usize = 255;

impl ImageReference {
    pub fn parse(s: &str) -> Result<ImageReference, RegistryError> {
        let invalid = |reason: String| RegistryError::InvalidReference {
            reference: s.to_string(),
            reason,
        };
        if s.is_empty() {
            return Err(invalid("the reference is empty".to_string()));
        }
        if s.len() > 4096 {
            return Err(invalid("the reference is too long".to_string()));
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid(
                "the reference contains whitespace or control characters".to_string(),
            ));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((rest, digest)) => (rest, Some(digest)),
            None => (s, None),
        };
        if let Some(digest) = digest {
            check_digest(digest).map_err(invalid)?;
        }
        let last_slash = rest.rfind('/');
        let (name, tag) = match rest.rfind(':') {
            Some(colon) if last_slash.is_none_or(|slash| colon > slash) => {
                (&rest[..colon], Some(&rest[colon + 1..]))
            }
            _ => (rest, None),
        };
        if let Some(tag) = tag {
            check_tag(tag).map_err(invalid)?;
        }
        if name.is_empty() {
            return Err(invalid("the repository name is empty".to_string()));
        }
        let (registry, path) = match name.split_once('/') {
            Some((first, path))
                if first.contains(['.', ':']) || first == "localhost" || first.starts_with('[') =>
            {
                check_registry_host(first).map_err(invalid)?;
                (first.to_string(), path)
            }
            _ => (DOCKER_HUB.to_string(), name),
        };
        let registry = if registry == "index.docker.io" {
            DOCKER_HUB.to_string()
        } else {
            registry
        };
        if path.is_empty() {
            return Err(invalid("the repository name is empty".to_string()));
        }
        for component in path.split('/') {
            check_path_component(component).map_err(invalid)?;
        }
        if registry == DOCKER_HUB
            && !name.contains('/')
            && path.len() == 64
            && path.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(invalid(
                "a 64-character hexadecimal string is an image ID, not a repository name"
                    .to_string(),
            ));
        }
        let repository = if registry == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path.to_string()
        };
        if registry.len() + 1 + repository.len() > NAME_MAX_LEN {
            return Err(invalid(format!(
                "the repository name is longer than {NAME_MAX_LEN} characters"
            )));
        }
        let tag = match (tag, digest) {
            (None, None) => Some("latest".to_string()),
            (tag, _) => tag.map(str::to_string),
        };
        Ok(ImageReference {
            registry,
            repository,
            tag,
            digest: digest.map(str::to_string),
        })
    }

    /// `docker.io`, `127.0.0.1:5000`, `[::1]:5000`.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// `library/busybox`.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }

    /// `docker.io/library/busybox`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The same repository at `digest`, without tag (a RepoDigest).
    pub fn with_digest(&self, digest: &str) -> ImageReference {
        ImageReference {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: None,
            digest: Some(digest.to_string()),
        }
    }

    /// `docker.io/library/busybox:latest` when tagged (a RepoTag).
    pub fn repo_tag(&self) -> Option<String> {
        self.tag
            .as_ref()
            .map(|tag| format!("{}/{}:{tag}", self.registry, self.repository))
    }

    /// The tag or digest a manifest request asks for (the digest when both are set).
    fn manifest_reference(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }
}

impl fmt::Display for ImageReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl FromStr for ImageReference {
    type Err = RegistryError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ImageReference::parse(s)
    }
}

/// `sha256:<64 lowercase hex>`: digests become URLs and file names, nothing else passes.
fn check_digest(digest: &str) -> Result<(), String> {
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return Err(format!("digest {digest:?} is not of the form sha256:<hex>"));
    };
    if algorithm != "sha256" {
        return Err(format!(
            "digest algorithm {algorithm:?} is not supported (only sha256)"
        ));
    }
    if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(format!(
            "digest {digest:?} is not sha256: followed by 64 lowercase hex digits"
        ));
    }
    Ok(())
}

fn valid_digest(digest: &str) -> Result<(), RegistryError> {
    check_digest(digest).map_err(|reason| RegistryError::InvalidDigest {
        digest: digest.to_string(),
        reason,
    })
}

fn check_tag(tag: &str) -> Result<(), String> {
    let bytes = tag.as_bytes();
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let ok = !bytes.is_empty()
        && bytes.len() <= 128
        && word(bytes[0])
        && bytes.iter().all(|&b| word(b) || b == b'.' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "tag {tag:?} is invalid: 1 to 128 letters, digits, '_', '.' or '-', not starting with '.' or '-'"
        ))
    }
}

fn check_path_component(component: &str) -> Result<(), String> {
    if component.is_empty() {
        return Err("the repository name has an empty path component".to_string());
    }
    if component.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(format!(
            "repository name must be lowercase (component {component:?})"
        ));
    }
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = component.as_bytes();
    let mut ok = alnum(bytes[0]) && alnum(bytes[bytes.len() - 1]);
    let mut i = 0;
    while ok && i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let separator = &component[start..i];
        ok = matches!(separator, "." | "_" | "__") || separator.bytes().all(|b| b == b'-');
    }
    if ok {
        Ok(())
    } else {
        Err(format!(
            "repository path component {component:?} is invalid: lowercase letters and digits, \
             separated by '.', '_', '__' or '-'"
        ))
    }
}

fn check_registry_host(registry: &str) -> Result<(), String> {
    let bad = || format!("registry {registry:?} is not a valid host[:port]");
    let (host, port) = if let Some(rest) = registry.strip_prefix('[') {
        let (ip, after) = rest.split_once(']').ok_or_else(bad)?;
        ip.parse::<std::net::Ipv6Addr>().map_err(|_| bad())?;
        match after {
            "" => (None, None),
            _ => (None, Some(after.strip_prefix(':').ok_or_else(bad)?)),
        }
    } else {
        match registry.split_once(':') {
            Some((host, port)) => (Some(host), Some(port)),
            None => (Some(registry), None),
        }
    };
    if let Some(port) = port {
        if port.is_empty() || port.len() > 5 || port.parse::<u16>().is_err() {
            return Err(bad());
        }
    }
    if let Some(host) = host {
        let label_ok = |label: &str| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        };
        if !host.split('.').all(label_ok) {
            return Err(bad());
        }
    }
    Ok(())
}

/// `host` of `host:port` or `[v6]:port` (brackets kept).
fn host_part(registry: &str) -> &str {
    if registry.starts_with('[') {
        match registry.find(']') {
            Some(end) => &registry[..=end],
            None => registry,
        }
    } else {
        registry.split(':').next().unwrap_or(registry)
    }
}

fn host_ip(registry: &str) -> Option<IpAddr> {
    host_part(registry)
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
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

/// `addr/prefix` contains `ip`.
fn cidr_contains(cidr: &str, ip: IpAddr) -> bool {
    let Some((addr, prefix)) = cidr.split_once('/') else {
        return false;
    };
    let (Ok(addr), Ok(prefix)) = (addr.parse::<IpAddr>(), prefix.parse::<u32>()) else {
        return false;
    };
    match (addr, ip) {
        (IpAddr::V4(net), IpAddr::V4(ip)) if prefix <= 32 => {
            let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
            u32::from(net) & mask == u32::from(ip) & mask
        }
        (IpAddr::V6(net), IpAddr::V6(ip)) if prefix <= 128 => {
            let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
            u128::from(net) & mask == u128::from(ip) & mask
        }
        _ => false,
    }
}

// ---------------------------------------------------------------------------
// credentials

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
    fn secrets(&self) -> Vec<&str> {
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

// ---------------------------------------------------------------------------
// resolved images and push input

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerDescriptor {
    pub digest: String,
    pub size: u64,
    pub media_type: String,
}

/// One platform's image as the registry serves it, manifest and config verified.
#[derive(Clone)]
pub struct ResolvedImage {
    /// As asked.
    pub reference: ImageReference,
    /// Digest of the platform manifest.
    pub manifest_digest: String,
    /// Digest of the index (or manifest list) the manifest was picked from, if any:
    /// containerd uses it for RepoDigests.
    pub index_digest: Option<String>,
    pub manifest: Vec<u8>,
    pub manifest_media_type: String,
    pub config: Vec<u8>,
    pub config_digest: String,
    pub layers: Vec<LayerDescriptor>,
    /// The endpoint that served it: a mirror URL as configured, or the registry's own
    /// (`https://index.docker.io`, `http://127.0.0.1:5000`).
    pub endpoint: String,
}

impl ResolvedImage {
    /// `registry/repository@<index digest, or manifest digest>`, as containerd records
    /// RepoDigests.
    pub fn repo_digest(&self) -> String {
        let digest = self
            .index_digest
            .as_deref()
            .unwrap_or(&self.manifest_digest);
        self.reference.with_digest(digest).to_string()
    }
}

impl fmt::Debug for ResolvedImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResolvedImage")
            .field("reference", &self.reference.to_string())
            .field("manifest_digest", &self.manifest_digest)
            .field("index_digest", &self.index_digest)
            .field("manifest_media_type", &self.manifest_media_type)
            .field("manifest_len", &self.manifest.len())
            .field("config_digest", &self.config_digest)
            .field("config_len", &self.config.len())
            .field("layers", &self.layers)
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

/// A blob to push, read from a file (the content store).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushBlob {
    pub digest: String,
    pub size: u64,
    pub path: PathBuf,
}

// ---------------------------------------------------------------------------
// manifests

#[derive(Deserialize)]
struct RawPlatform {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    variant: Option<String>,
}

#[derive(Deserialize)]
struct RawDescriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    #[serde(default)]
    digest: String,
    #[serde(default)]
    size: i64,
    #[serde(default)]
    platform: Option<RawPlatform>,
}

#[derive(Deserialize)]
struct RawManifest {
    #[serde(rename = "schemaVersion", default)]
    schema_version: Option<i64>,
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default)]
    config: Option<RawDescriptor>,
    #[serde(default)]
    layers: Option<Vec<RawDescriptor>>,
    #[serde(default)]
    manifests: Option<Vec<RawDescriptor>>,
}

#[derive(Clone, Debug)]
struct IndexEntry {
    digest: String,
    size: u64,
    platform: Option<Platform>,
}

#[derive(Debug)]
enum ParsedManifest {
    Image {
        media_type: String,
        config: LayerDescriptor,
        layers: Vec<LayerDescriptor>,
    },
    Index {
        entries: Vec<IndexEntry>,
    },
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn descriptor(
    raw: RawDescriptor,
    what: &str,
    reference: &str,
) -> Result<LayerDescriptor, RegistryError> {
    let invalid = |reason: String| RegistryError::InvalidManifest {
        reference: reference.to_string(),
        reason: truncate(reason, 512),
    };
    check_digest(&raw.digest).map_err(|reason| invalid(format!("{what}: {reason}")))?;
    let size = u64::try_from(raw.size)
        .map_err(|_| invalid(format!("{what} {} has a negative size", raw.digest)))?;
    Ok(LayerDescriptor {
        digest: raw.digest,
        size,
        media_type: raw.media_type,
    })
}

/// Parses a manifest or index, checking media types and descriptors. `reference` names
/// it in errors.
fn parse_manifest(bytes: &[u8], reference: &str) -> Result<ParsedManifest, RegistryError> {
    let invalid = |reason: String| RegistryError::InvalidManifest {
        reference: reference.to_string(),
        reason: truncate(reason, 512),
    };
    let raw: RawManifest =
        serde_json::from_slice(bytes).map_err(|e| invalid(format!("not a JSON manifest: {e}")))?;
    if raw.schema_version == Some(1) {
        return Err(RegistryError::UnsupportedMediaType {
            media_type: echo(
                raw.media_type
                    .as_deref()
                    .unwrap_or(MEDIA_TYPE_DOCKER_SCHEMA1_SIGNED),
            ),
            supported: strings(MANIFEST_MEDIA_TYPES),
        });
    }
    let media_type = match raw.media_type.filter(|m| !m.is_empty()) {
        Some(media_type) => media_type,
        // OCI allows leaving mediaType out: tell manifests from indexes by shape.
        None if raw.manifests.is_some() => MEDIA_TYPE_OCI_INDEX.to_string(),
        None if raw.config.is_some() => MEDIA_TYPE_OCI_MANIFEST.to_string(),
        None => {
            return Err(invalid(
                "neither an image manifest nor an index".to_string(),
            ))
        }
    };
    if let Some(version) = raw.schema_version.filter(|v| *v != 2) {
        return Err(invalid(format!("unsupported schemaVersion {version}")));
    }
    match media_type.as_str() {
        MEDIA_TYPE_OCI_MANIFEST | MEDIA_TYPE_DOCKER_MANIFEST => {
            let config = raw
                .config
                .ok_or_else(|| invalid("the manifest has no config".to_string()))?;
            let config = descriptor(config, "config", reference)?;
            if !CONFIG_MEDIA_TYPES.contains(&config.media_type.as_str()) {
                return Err(RegistryError::UnsupportedMediaType {
                    media_type: echo(&config.media_type),
                    supported: strings(CONFIG_MEDIA_TYPES),
                });
            }
            let layers = raw
                .layers
                .unwrap_or_default()
                .into_iter()
                .map(|layer| descriptor(layer, "layer", reference))
                .collect::<Result<Vec<_>, _>>()?;
            if let Some(layer) = layers
                .iter()
                .find(|l| !LAYER_MEDIA_TYPES.contains(&l.media_type.as_str()))
            {
                return Err(RegistryError::UnsupportedMediaType {
                    media_type: echo(&layer.media_type),
                    supported: strings(LAYER_MEDIA_TYPES),
                });
            }
            Ok(ParsedManifest::Image {
                media_type,
                config,
                layers,
            })
        }
        MEDIA_TYPE_OCI_INDEX | MEDIA_TYPE_DOCKER_MANIFEST_LIST => {
            let mut entries = Vec::new();
            for raw in raw.manifests.unwrap_or_default() {
                let platform = raw
                    .platform
                    .as_ref()
                    .map(|p| Platform::new(&p.os, &p.architecture, p.variant.as_deref()));
                let media_type = raw.media_type.clone();
                let desc = descriptor(raw, "index entry", reference)?;
                // Nested indexes, artifacts and attestations are not images to run here.
                if matches!(
                    media_type.as_str(),
                    MEDIA_TYPE_OCI_MANIFEST | MEDIA_TYPE_DOCKER_MANIFEST | ""
                ) {
                    entries.push(IndexEntry {
                        digest: desc.digest,
                        size: desc.size,
                        platform,
                    });
                } else {
                    debug!(%reference, %media_type, digest = %desc.digest, "skipping index entry");
                }
            }
            Ok(ParsedManifest::Index { entries })
        }
        // Docker schema 1, artifacts, anything else.
        _ => Err(RegistryError::UnsupportedMediaType {
            media_type: echo(&media_type),
            supported: strings(MANIFEST_MEDIA_TYPES),
        }),
    }
}

/// The best entry of an index for `wanted`; entries without a platform come last and
/// are checked against the config afterwards.
fn select_platform<'a>(
    entries: &'a [IndexEntry],
    wanted: &Platform,
) -> Result<&'a IndexEntry, RegistryError> {
    let best = entries
        .iter()
        .enumerate()
        .filter_map(|(i, entry)| match &entry.platform {
            Some(platform) => wanted.rank(platform).map(|rank| (rank, i, entry)),
            None => Some((u32::MAX, i, entry)),
        })
        .min_by_key(|(rank, i, _)| (*rank, *i));
    match best {
        Some((_, _, entry)) => Ok(entry),
        None => Err(platform_not_found(entries, wanted)),
    }
}

fn platform_not_found(entries: &[IndexEntry], wanted: &Platform) -> RegistryError {
    let mut available: Vec<String> = Vec::new();
    for entry in entries {
        let name = match &entry.platform {
            Some(p) if p.os == "unknown" && p.architecture == "unknown" => continue,
            Some(p) => p.to_string(),
            None => "unknown".to_string(),
        };
        let name = echo(&name);
        if !available.contains(&name) {
            if available.len() == 32 {
                available.push("...".to_string());
                break;
            }
            available.push(name);
        }
    }
    RegistryError::PlatformNotFound {
        wanted: wanted.to_string(),
        available,
    }
}

fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

// ---------------------------------------------------------------------------
// endpoints

/// Where requests for a registry go: one of its mirrors or the registry itself.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Endpoint {
    /// `http://127.0.0.1:5000`: the mirror URL as configured, or the origin's.
    url: String,
    /// `host[:port]` requests go to.
    host: String,
    http: bool,
    mirror: bool,
    /// How errors name it: the registry name for the origin, the URL for a mirror.
    name: String,
}

fn parse_mirror(url: &str) -> Result<Endpoint, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| e.to_string())?;
    let http = match parsed.scheme() {
        "http" => true,
        "https" => false,
        other => return Err(format!("scheme {other:?} is not http or https")),
    };
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("credentials in the URL are not supported".to_string());
    }
    if !matches!(parsed.path(), "" | "/" | "/v2" | "/v2/") || parsed.query().is_some() {
        return Err("a path or query other than /v2 is not supported".to_string());
    }
    let host = parsed.host_str().ok_or("no host")?;
    let host = match parsed.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    };
    Ok(Endpoint {
        url: url
            .trim_end_matches('/')
            .trim_end_matches("/v2")
            .to_string(),
        host,
        http,
        mirror: true,
        name: url.to_string(),
    })
}

/// What a session may do, which decides the token scope.
#[derive(Clone, Debug)]
enum Access {
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

// ---------------------------------------------------------------------------
// authentication

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
struct Session {
    auth: RegistryAuth,
    /// Monolithic blob uploads and every non-upload request.
    client: Client,
    /// Chunked blob uploads (push sessions only).
    chunked: Option<Client>,
    /// When the bearer token runs out (with a margin).
    expires: Option<Instant>,
    /// The token came from our negotiation: renegotiate once on a 401.
    negotiated: bool,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct SessionKey {
    endpoint: String,
    credentials: [u8; 32],
    scope: String,
}

// ---------------------------------------------------------------------------
// the client

/// Knobs that are not in the daemon config (tests lower the thresholds).
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Blobs larger than this are uploaded in chunks (a PATCH per chunk); smaller ones
    /// in one streamed PUT.
    pub chunked_upload_threshold: u64,
    /// Size of one PATCH of a chunked upload (at most 4 MiB, oci-client's limit).
    pub upload_chunk_size: usize,
    /// First retry delay; doubled at each attempt, capped at 10 s.
    pub retry_base_delay: Duration,
    /// Blobs of one push uploaded at the same time.
    pub max_concurrent_uploads: usize,
    pub connect_timeout: Duration,
    /// Longest wait for any read from a registry.
    pub read_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            chunked_upload_threshold: 32 << 20,
            upload_chunk_size: MAX_UPLOAD_CHUNK,
            retry_base_delay: Duration::from_millis(200),
            max_concurrent_uploads: 3,
            connect_timeout: Duration::from_secs(15),
            read_timeout: Duration::from_secs(60),
        }
    }
}

/// The registry client. Cheap to clone (shared state behind an `Arc`).
#[derive(Clone)]
pub struct RegistryClient {
    inner: Arc<Inner>,
}

struct Inner {
    mirrors: HashMap<String, Vec<Endpoint>>,
    insecure: Vec<String>,
    max_attempts: u32,
    max_concurrent_downloads: usize,
    options: ClientOptions,
    /// `registry.redirect_allow`: redirect targets allowed across address classes.
    redirect_allow: Arc<Vec<String>>,
    /// Blob downloads: no overall timeout (a blob may take long), a read timeout.
    blob_http: OnceLock<Result<reqwest::Client, String>>,
    /// For the `/v2/` ping and token requests. Built on first use: a TLS client
    /// configuration is a few hundred KB of code and data a node that never pulls
    /// (or not yet) need not page in.
    http: OnceLock<Result<reqwest::Client, String>>,
    sessions: Mutex<HashMap<SessionKey, Arc<Session>>>,
}

impl fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut mirrors: Vec<(&String, Vec<&str>)> = self
            .inner
            .mirrors
            .iter()
            .map(|(k, v)| (k, v.iter().map(|e| e.url.as_str()).collect()))
            .collect();
        mirrors.sort();
        f.debug_struct("RegistryClient")
            .field("mirrors", &mirrors)
            .field("insecure", &self.inner.insecure)
            .field("max_attempts", &self.inner.max_attempts)
            .field("options", &self.inner.options)
            .finish()
    }
}

/// Registry names that mean Docker Hub, as mirror keys.
fn mirror_key(registry: &str) -> &str {
    match registry {
        "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB,
        other => other,
    }
}

impl RegistryClient {
    pub fn new(config: &RegistryConfig) -> RegistryClient {
        RegistryClient::with_options(config, ClientOptions::default())
    }

    pub fn with_options(config: &RegistryConfig, options: ClientOptions) -> RegistryClient {
        let mut mirrors: HashMap<String, Vec<Endpoint>> = HashMap::new();
        for (registry, urls) in &config.mirrors {
            let endpoints = urls
                .iter()
                .filter_map(|url| match parse_mirror(url) {
                    Ok(endpoint) => Some(endpoint),
                    Err(reason) => {
                        warn!(%registry, mirror = %url, %reason, "ignoring registry mirror");
                        None
                    }
                })
                .collect::<Vec<_>>();
            mirrors
                .entry(mirror_key(registry).to_string())
                .or_default()
                .extend(endpoints);
        }
        let options = ClientOptions {
            upload_chunk_size: options.upload_chunk_size.clamp(1, MAX_UPLOAD_CHUNK),
            max_concurrent_uploads: options.max_concurrent_uploads.max(1),
            ..options
        };
        RegistryClient {
            inner: Arc::new(Inner {
                mirrors,
                insecure: config.insecure.clone(),
                max_attempts: config.max_attempts.max(1),
                max_concurrent_downloads: config.max_concurrent_downloads.max(1),
                options,
                redirect_allow: Arc::new(config.redirect_allow.clone()),
                blob_http: OnceLock::new(),
                http: OnceLock::new(),
                sessions: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Layers of one pull to download at the same time (`registry.max_concurrent_downloads`).
    pub fn max_concurrent_downloads(&self) -> usize {
        self.inner.max_concurrent_downloads
    }

    /// Resolves a reference (tag or digest) to one platform's manifest, fetches and
    /// verifies its config blob. Mirrors of the registry are tried first, in order.
    ///
    /// (The public futures are boxed: `Send` is proven here once, and callers' futures
    /// stay small.)
    pub fn resolve<'a>(
        &'a self,
        reference: &'a ImageReference,
        credentials: &'a Credentials,
        platform: &'a Platform,
    ) -> BoxFuture<'a, Result<ResolvedImage, RegistryError>> {
        Box::pin(self.resolve_inner(reference, credentials, platform))
    }

    async fn resolve_inner(
        &self,
        reference: &ImageReference,
        credentials: &Credentials,
        platform: &Platform,
    ) -> Result<ResolvedImage, RegistryError> {
        let endpoints = self.endpoints(reference);
        let mut failures = Vec::new();
        for endpoint in &endpoints {
            match self
                .resolve_at(endpoint, reference, credentials, platform)
                .await
            {
                Ok(image) => return Ok(image),
                Err(error) => {
                    if endpoint.mirror {
                        warn!(
                            reference = %reference, mirror = %endpoint.url, %error,
                            "mirror failed, trying the next endpoint"
                        );
                    }
                    failures.push((endpoint.name.clone(), error));
                }
            }
        }
        Err(most_specific(failures)
            .unwrap_or_else(|| RegistryError::Transport {
                registry: reference.registry().to_string(),
                message: "no endpoint".to_string(),
            })
            .scrub(credentials))
    }

    /// Streams one blob from the endpoint `image` was resolved from (falling back to the
    /// other endpoints of the registry if it cannot be opened there). The stream checks
    /// the size as it goes and the sha256 at the end, yielding an error item on a
    /// mismatch; a download cut short is resumed with a `Range` request.
    pub fn fetch_blob<'a>(
        &'a self,
        image: &'a ResolvedImage,
        digest: &'a str,
        size: u64,
        credentials: &'a Credentials,
    ) -> BoxFuture<'a, Result<BoxStream<'static, Result<Bytes, RegistryError>>, RegistryError>>
    {
        Box::pin(self.fetch_blob_inner(image, digest, size, credentials))
    }

    async fn fetch_blob_inner(
        &self,
        image: &ResolvedImage,
        digest: &str,
        size: u64,
        credentials: &Credentials,
    ) -> Result<BoxStream<'static, Result<Bytes, RegistryError>>, RegistryError> {
        valid_digest(digest)?;
        let mut endpoints = self.endpoints(&image.reference);
        if let Some(position) = endpoints.iter().position(|e| e.url == image.endpoint) {
            endpoints.drain(..position);
        }
        let mut last = None;
        let count = endpoints.len();
        for (i, endpoint) in endpoints.into_iter().enumerate() {
            let download = BlobDownload::new(
                self.clone(),
                endpoint.clone(),
                image.reference.clone(),
                credentials.clone(),
                digest,
                size,
            );
            match download.open().await {
                Ok(download) => return Ok(download.into_stream()),
                Err(error) if i + 1 < count => {
                    warn!(%digest, endpoint = %endpoint.url, %error, "blob fetch failed, trying the next endpoint");
                    last = Some(error);
                }
                Err(error) => return Err(error.scrub(credentials)),
            }
        }
        Err(last
            .unwrap_or_else(|| RegistryError::Transport {
                registry: image.reference.registry().to_string(),
                message: "no endpoint".to_string(),
            })
            .scrub(credentials))
    }

    /// Pushes an image: for each blob, skip it if the repository has it, else mount it
    /// from one of `mount_from` (repositories of the same registry: `library/busybox`
    /// or `registry/library/busybox[:tag]`), else upload it (one streamed PUT up to
    /// `chunked_upload_threshold`, PATCH chunks above); then put the manifest under the
    /// target's tag (or digest). Returns the manifest digest.
    #[allow(clippy::too_many_arguments)]
    pub fn push<'a>(
        &'a self,
        target: &'a ImageReference,
        credentials: &'a Credentials,
        manifest: &'a [u8],
        manifest_media_type: &'a str,
        blobs: &'a [PushBlob],
        mount_from: &'a [String],
    ) -> BoxFuture<'a, Result<String, RegistryError>> {
        Box::pin(async move {
            self.push_inner(
                target,
                credentials,
                manifest,
                manifest_media_type,
                blobs,
                mount_from,
            )
            .await
            .map_err(|e| e.scrub(credentials))
        })
    }

    // -- endpoints ----------------------------------------------------------

    fn plain_http(&self, registry: &str) -> bool {
        let host = host_part(registry);
        if host == "localhost" || host_ip(registry).is_some_and(|ip| ip.is_loopback()) {
            return true;
        }
        self.inner.insecure.iter().any(|entry| {
            entry == registry
                || entry == host
                || host_ip(registry).is_some_and(|ip| cidr_contains(entry, ip))
        })
    }

    fn origin(&self, reference: &ImageReference) -> Endpoint {
        let host = Reference::with_tag(
            reference.registry.clone(),
            reference.repository.clone(),
            "latest".to_string(),
        )
        .resolve_registry()
        .to_string();
        let http = self.plain_http(&reference.registry);
        Endpoint {
            url: format!("{}://{host}", if http { "http" } else { "https" }),
            host,
            http,
            mirror: false,
            name: reference.registry.clone(),
        }
    }

    /// Mirrors in order, then the registry itself.
    fn endpoints(&self, reference: &ImageReference) -> Vec<Endpoint> {
        let mut endpoints = self
            .inner
            .mirrors
            .get(mirror_key(&reference.registry))
            .cloned()
            .unwrap_or_default();
        endpoints.push(self.origin(reference));
        endpoints
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(1).min(10);
        let max = Duration::from_secs(10);
        self.inner
            .options
            .retry_base_delay
            .checked_mul(factor)
            .map_or(max, |delay| delay.min(max))
    }

    // -- sessions -----------------------------------------------------------

    fn build_client(&self, endpoint: &Endpoint, monolithic: bool) -> Result<Client, Failure> {
        let config = ClientConfig {
            protocol: if endpoint.http {
                ClientProtocol::Http
            } else {
                ClientProtocol::Https
            },
            use_monolithic_push: monolithic,
            platform_resolver: None,
            max_concurrent_upload: self.inner.options.max_concurrent_uploads,
            max_concurrent_download: self.inner.max_concurrent_downloads,
            connect_timeout: Some(self.inner.options.connect_timeout),
            read_timeout: Some(self.inner.options.read_timeout),
            user_agent: USER_AGENT,
            ..ClientConfig::default()
        };
        Client::try_from(config).map_err(|e| {
            Failure::fatal(RegistryError::Transport {
                registry: endpoint.name.clone(),
                message: format!("cannot create an HTTP client: {}", error_chain(&e)),
            })
        })
    }

    /// A cached session for (endpoint, credentials, scope), or a new one after the
    /// `/v2/` ping and, for token registries, a token request. The flag tells whether it
    /// came from the cache.
    async fn session(
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

    fn forget_session(&self, session: &Arc<Session>) {
        if let Ok(mut sessions) = self.inner.sessions.lock() {
            sessions.retain(|_, s| !Arc::ptr_eq(s, session));
        }
    }

    fn http(&self, endpoint: &Endpoint) -> Result<&reqwest::Client, Failure> {
        let http = self.inner.http.get_or_init(|| {
            reqwest::Client::builder()
                .user_agent(USER_AGENT)
                .connect_timeout(self.inner.options.connect_timeout)
                .timeout(Duration::from_secs(60))
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(|e| error_chain(&e))
        });
        http.as_ref().map_err(|message| {
            Failure::fatal(RegistryError::Transport {
                registry: endpoint.name.clone(),
                message: format!("cannot create an HTTP client: {message}"),
            })
        })
    }

    fn blob_http(&self, endpoint: &Endpoint) -> Result<&reqwest::Client, Failure> {
        let http = self.inner.blob_http.get_or_init(|| {
            reqwest::Client::builder()
                .user_agent(USER_AGENT)
                .connect_timeout(self.inner.options.connect_timeout)
                .read_timeout(self.inner.options.read_timeout)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(|e| error_chain(&e))
        });
        http.as_ref().map_err(|message| {
            Failure::fatal(RegistryError::Transport {
                registry: endpoint.name.clone(),
                message: format!("cannot create an HTTP client: {message}"),
            })
        })
    }

    /// GETs `url`, following redirects by hand as [`check_redirect`] allows: so that a
    /// failure names the URL that failed (reqwest's error names the first), and `auth`
    /// goes only to the first URL's origin (scheme, host and port), never to where the
    /// registry redirects. A redirect without a `Location` comes back as the response.
    async fn get_following(
        &self,
        http: &reqwest::Client,
        endpoint: &Endpoint,
        url: &str,
        headers: reqwest::header::HeaderMap,
        auth: &RegistryAuth,
        what: &str,
    ) -> Result<reqwest::Response, Failure> {
        let first = reqwest::Url::parse(url).map_err(|e| {
            Failure::fatal(RegistryError::Registry {
                registry: endpoint.name.clone(),
                message: format!("{what}: {} is not a URL: {e}", echo(url)),
            })
        })?;
        let mut current = first.clone();
        let mut chain = vec![first];
        loop {
            let mut request = http.get(current.clone()).headers(headers.clone());
            if current.origin() == chain[0].origin() {
                request = with_auth(request, auth);
            }
            // reqwest's error names the URL of this request: the one that failed.
            let response = request
                .send()
                .await
                .map_err(|e| Self::request_failure(endpoint, what, &e))?;
            if !response.status().is_redirection() {
                return Ok(response);
            }
            let Some(location) = response.headers().get(reqwest::header::LOCATION) else {
                return Ok(response);
            };
            let location = String::from_utf8_lossy(location.as_bytes()).into_owned();
            let next = current.join(&location).map_err(|e| {
                Failure::fatal(RegistryError::Redirect {
                    url: echo(&location),
                    reason: format!("not a URL: {e}"),
                })
            })?;
            check_redirect(&chain, &next, &self.inner.redirect_allow).map_err(|reason| {
                debug!(url = %echo(next.as_str()), %reason, "refusing a redirect");
                Failure::fatal(RegistryError::Redirect {
                    url: echo(next.as_str()),
                    reason,
                })
            })?;
            debug!(from = %echo(current.as_str()), to = %echo(next.as_str()), "following a redirect");
            chain.push(next.clone());
            current = next;
        }
    }

    fn request_failure(endpoint: &Endpoint, what: &str, err: &reqwest::Error) -> Failure {
        let error = RegistryError::Transport {
            registry: endpoint.name.clone(),
            message: truncate(format!("{what}: {}", error_chain(err)), 1024),
        };
        if err.is_builder() || err.is_redirect() {
            Failure::fatal(error)
        } else {
            Failure::transient(error)
        }
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

    /// Runs `op` with a session for `endpoint`, retrying transient failures with backoff
    /// (the origin only: a mirror gets one attempt) and renegotiating a cached token once
    /// when the registry refuses it.
    async fn with_session<T, F, Fut>(
        &self,
        endpoint: &Endpoint,
        credentials: &Credentials,
        repository: &str,
        access: &Access,
        mut op: F,
    ) -> Result<T, RegistryError>
    where
        F: FnMut(Arc<Session>) -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let attempts = if endpoint.mirror {
            1
        } else {
            self.inner.max_attempts
        };
        let mut attempt = 1;
        let mut renewed = false;
        loop {
            let result = match self
                .session(endpoint, credentials, repository, access)
                .await
            {
                Ok((session, cached)) => match op(session.clone()).await {
                    Err(failure)
                        if matches!(failure.error, RegistryError::Unauthorized { .. })
                            && session.negotiated
                            && cached
                            && !renewed =>
                    {
                        debug!(endpoint = %endpoint.url, "token refused, getting a new one");
                        self.forget_session(&session);
                        renewed = true;
                        continue;
                    }
                    other => other,
                },
                Err(failure) => Err(failure),
            };
            match result {
                Ok(value) => return Ok(value),
                Err(failure) if failure.transient && attempt < attempts => {
                    let delay = self.backoff(attempt);
                    debug!(endpoint = %endpoint.url, attempt, ?delay, error = %failure.error, "retrying");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err(failure) => return Err(failure.error),
            }
        }
    }

    // -- pull ---------------------------------------------------------------

    /// GET a manifest with the session's auth. (Not oci-client's `pull_manifest_raw`:
    /// it stores the auth in the client, and with `Anonymous` stored oci-client pings
    /// `/v2/` before every later request.)
    async fn get_manifest(
        &self,
        session: &Session,
        endpoint: &Endpoint,
        reference: &ImageReference,
        object: &str,
    ) -> Result<Bytes, Failure> {
        let http = self.http(endpoint)?;
        let mut url = format!(
            "{}/v2/{}/manifests/{object}",
            endpoint.url, reference.repository
        );
        if endpoint.mirror {
            url.push_str("?ns=");
            url.push_str(&reference.registry);
        }
        let mut headers = reqwest::header::HeaderMap::new();
        if let Ok(accept) = reqwest::header::HeaderValue::from_str(&MANIFEST_MEDIA_TYPES.join(", "))
        {
            headers.insert(reqwest::header::ACCEPT, accept);
        }
        let what = format!("GET manifest {object}");
        let response = self
            .get_following(http, endpoint, &url, headers, &session.auth, &what)
            .await?;
        let status = response.status();
        if status.is_redirection() {
            return Err(Failure::fatal(unfollowed_redirect(&response)));
        }
        if !status.is_success() {
            let body = read_capped(response, 64 << 10)
                .await
                .map(|(body, _)| body)
                .unwrap_or_default();
            return Err(status_failure(
                status.as_u16(),
                &body,
                endpoint,
                &reference.repository,
                object,
            ));
        }
        if response
            .content_length()
            .is_some_and(|len| len > MAX_MANIFEST_SIZE as u64)
        {
            return Err(Failure::fatal(RegistryError::InvalidManifest {
                reference: format!("{}@{object}", reference.name()),
                reason: format!("larger than the {MAX_MANIFEST_SIZE} bytes a manifest may have"),
            }));
        }
        let header_digest = response
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let (body, complete) = read_capped(response, MAX_MANIFEST_SIZE)
            .await
            .map_err(|e| Self::request_failure(endpoint, &what, &e))?;
        if !complete {
            return Err(Failure::fatal(RegistryError::InvalidManifest {
                reference: format!("{}@{object}", reference.name()),
                reason: format!("larger than the {MAX_MANIFEST_SIZE} bytes a manifest may have"),
            }));
        }
        let body = Bytes::from(body);
        // The registry's own digest of what it sent must match it (by tag this is the
        // only check there is).
        if let Some(expected) = header_digest.filter(|d| d.starts_with("sha256:")) {
            let actual = sha256_digest(&body);
            if actual != expected {
                return Err(Failure::fatal(RegistryError::DigestMismatch {
                    expected,
                    actual,
                }));
            }
        }
        Ok(body)
    }

    async fn fetch_manifest(
        &self,
        endpoint: &Endpoint,
        reference: &ImageReference,
        credentials: &Credentials,
        object: &str,
    ) -> Result<Bytes, RegistryError> {
        let repository = reference.repository.as_str();
        let body = self
            .with_session(
                endpoint,
                credentials,
                repository,
                &Access::Pull,
                |session| async move {
                    self.get_manifest(&session, endpoint, reference, object)
                        .await
                },
            )
            .await?;
        if body.len() > MAX_MANIFEST_SIZE {
            return Err(RegistryError::InvalidManifest {
                reference: format!("{}@{object}", reference.name()),
                reason: format!(
                    "{} bytes is more than the {MAX_MANIFEST_SIZE} bytes a manifest may have",
                    body.len()
                ),
            });
        }
        if object.starts_with("sha256:") {
            let actual = sha256_digest(&body);
            if actual != object {
                return Err(RegistryError::DigestMismatch {
                    expected: object.to_string(),
                    actual,
                });
            }
        }
        Ok(body)
    }

    async fn resolve_at(
        &self,
        endpoint: &Endpoint,
        reference: &ImageReference,
        credentials: &Credentials,
        platform: &Platform,
    ) -> Result<ResolvedImage, RegistryError> {
        let asked = reference.manifest_reference();
        let body = self
            .fetch_manifest(endpoint, reference, credentials, asked)
            .await?;
        let top_digest = sha256_digest(&body);
        let (manifest, manifest_digest, index_digest, media_type, config, layers, check_platform) =
            match parse_manifest(&body, &reference.to_string())? {
                ParsedManifest::Image {
                    media_type,
                    config,
                    layers,
                } => (body, top_digest, None, media_type, config, layers, false),
                ParsedManifest::Index { entries } => {
                    let entry = select_platform(&entries, platform)?.clone();
                    let child = self
                        .fetch_manifest(endpoint, reference, credentials, &entry.digest)
                        .await?;
                    if child.len() as u64 != entry.size {
                        return Err(RegistryError::SizeMismatch {
                            digest: entry.digest,
                            expected: entry.size,
                            actual: child.len() as u64,
                        });
                    }
                    let name = reference.with_digest(&entry.digest).to_string();
                    match parse_manifest(&child, &name)? {
                        ParsedManifest::Image {
                            media_type,
                            config,
                            layers,
                        } => (
                            child,
                            entry.digest,
                            Some(top_digest),
                            media_type,
                            config,
                            layers,
                            entry.platform.is_none(),
                        ),
                        ParsedManifest::Index { .. } => {
                            return Err(RegistryError::InvalidManifest {
                                reference: name,
                                reason: "an index entry points to another index".to_string(),
                            })
                        }
                    }
                }
            };
        if config.size > MAX_CONFIG_SIZE {
            return Err(RegistryError::InvalidManifest {
                reference: reference.to_string(),
                reason: format!(
                    "config {} of {} bytes is larger than {MAX_CONFIG_SIZE} bytes",
                    config.digest, config.size
                ),
            });
        }
        let download = BlobDownload::new(
            self.clone(),
            endpoint.clone(),
            reference.clone(),
            credentials.clone(),
            &config.digest,
            config.size,
        );
        let config_bytes: Vec<u8> = download
            .open()
            .await?
            .into_stream()
            .try_fold(Vec::new(), |mut all, chunk| async move {
                all.extend_from_slice(&chunk);
                Ok(all)
            })
            .await?;
        if check_platform {
            // The index entry had no platform: the config says what the image is.
            #[derive(Deserialize)]
            struct ConfigPlatform {
                #[serde(default)]
                os: String,
                #[serde(default)]
                architecture: String,
                #[serde(default)]
                variant: Option<String>,
            }
            let offered = serde_json::from_slice::<ConfigPlatform>(&config_bytes)
                .map(|c| Platform::new(&c.os, &c.architecture, c.variant.as_deref()))
                .ok();
            if offered.as_ref().and_then(|p| platform.rank(p)).is_none() {
                return Err(RegistryError::PlatformNotFound {
                    wanted: platform.to_string(),
                    available: offered.map(|p| p.to_string()).into_iter().collect(),
                });
            }
        }
        Ok(ResolvedImage {
            reference: reference.clone(),
            manifest_digest,
            index_digest,
            manifest: manifest.to_vec(),
            manifest_media_type: media_type,
            config: config_bytes,
            config_digest: config.digest,
            layers,
            endpoint: endpoint.url.clone(),
        })
    }

    /// Opens a blob at `offset`: the byte stream, its announced length and whether the
    /// registry honoured the range (206) or sent the whole blob (200). Redirects (to a
    /// CDN, typically) are followed as [`check_redirect`] allows; the registry's
    /// `Authorization` header never goes to another host.
    async fn open_blob(
        &self,
        endpoint: &Endpoint,
        reference: &ImageReference,
        credentials: &Credentials,
        digest: &str,
        offset: u64,
    ) -> Result<OpenedBlob, RegistryError> {
        let repository = reference.repository.as_str();
        self.with_session(
            endpoint,
            credentials,
            repository,
            &Access::Pull,
            |session| async move {
                self.get_blob(&session, endpoint, reference, digest, offset)
                    .await
            },
        )
        .await
    }

    async fn get_blob(
        &self,
        session: &Session,
        endpoint: &Endpoint,
        reference: &ImageReference,
        digest: &str,
        offset: u64,
    ) -> Result<OpenedBlob, Failure> {
        let http = self.blob_http(endpoint)?;
        let mut url = format!(
            "{}/v2/{}/blobs/{digest}",
            endpoint.url, reference.repository
        );
        if endpoint.mirror {
            url.push_str("?ns=");
            url.push_str(&reference.registry);
        }
        let mut headers = reqwest::header::HeaderMap::new();
        if offset > 0 {
            if let Ok(range) = reqwest::header::HeaderValue::from_str(&format!("bytes={offset}-")) {
                headers.insert(reqwest::header::RANGE, range);
            }
        }
        let what = format!("GET blob {digest}");
        let response = self
            .get_following(http, endpoint, &url, headers, &session.auth, &what)
            .await?;
        if response.status().is_redirection() {
            return Err(Failure::fatal(unfollowed_redirect(&response)));
        }
        let partial = match response.status().as_u16() {
            200 => false,
            206 if offset > 0 => true,
            code => {
                let body = read_capped(response, 64 << 10)
                    .await
                    .map(|(body, _)| body)
                    .unwrap_or_default();
                return Err(status_failure(
                    code,
                    &body,
                    endpoint,
                    &reference.repository,
                    digest,
                ));
            }
        };
        let length = response.content_length();
        let stream = stream::unfold(Some(response), |state| async move {
            let mut response = state?;
            match response.chunk().await {
                Ok(Some(chunk)) => Some((Ok(chunk), Some(response))),
                Ok(None) => None,
                Err(e) => Some((
                    Err(std::io::Error::other(truncate(error_chain(&e), 1024))),
                    None,
                )),
            }
        })
        .boxed();
        Ok(OpenedBlob {
            stream,
            length,
            partial,
        })
    }

    // -- push ---------------------------------------------------------------

    /// Repositories of `mount_from` that are on `target`'s registry, without tag or
    /// digest, deduplicated, the target itself left out.
    fn mount_sources(target: &ImageReference, mount_from: &[String]) -> Vec<String> {
        let mut sources: Vec<String> = Vec::new();
        for entry in mount_from {
            let without_digest = entry.split('@').next().unwrap_or(entry);
            let first = without_digest.split('/').next().unwrap_or("");
            let path =
                if first.contains(['.', ':']) || first == "localhost" || first.starts_with('[') {
                    if mirror_key(first) != mirror_key(&target.registry) {
                        continue;
                    }
                    without_digest.split_once('/').map_or("", |(_, path)| path)
                } else {
                    without_digest
                };
            let path = match path.rfind(':') {
                Some(colon) if !path[colon..].contains('/') => &path[..colon],
                _ => path,
            };
            let path = if target.registry == DOCKER_HUB && !path.contains('/') {
                format!("library/{path}")
            } else {
                path.to_string()
            };
            if path.is_empty()
                || path == target.repository
                || path.split('/').any(|c| check_path_component(c).is_err())
                || sources.contains(&path)
            {
                continue;
            }
            sources.push(path);
        }
        sources
    }

    async fn push_inner(
        &self,
        target: &ImageReference,
        credentials: &Credentials,
        manifest: &[u8],
        manifest_media_type: &str,
        blobs: &[PushBlob],
        mount_from: &[String],
    ) -> Result<String, RegistryError> {
        let manifest_digest = sha256_digest(manifest);
        if let Some(expected) = target.digest() {
            if expected != manifest_digest {
                return Err(RegistryError::DigestMismatch {
                    expected: expected.to_string(),
                    actual: manifest_digest,
                });
            }
        }
        if !MANIFEST_MEDIA_TYPES.contains(&manifest_media_type) {
            return Err(RegistryError::UnsupportedMediaType {
                media_type: manifest_media_type.to_string(),
                supported: strings(MANIFEST_MEDIA_TYPES),
            });
        }
        parse_manifest(manifest, &target.to_string())?;
        let content_type =
            reqwest::header::HeaderValue::from_str(manifest_media_type).map_err(|_| {
                RegistryError::UnsupportedMediaType {
                    media_type: manifest_media_type.to_string(),
                    supported: strings(MANIFEST_MEDIA_TYPES),
                }
            })?;
        for blob in blobs {
            valid_digest(&blob.digest)?;
        }
        let endpoint = self.origin(target);
        let sources = Self::mount_sources(target, mount_from);
        let access = Access::Push {
            mount_from: sources.clone(),
        };
        // One session (and token) for the whole push, before the parallel uploads.
        self.with_session(
            &endpoint,
            credentials,
            &target.repository,
            &access,
            |_| async { Ok::<(), Failure>(()) },
        )
        .await?;
        // Indexes, not `&PushBlob`: a closure over references here trips rustc's
        // "FnOnce is not general enough" when the future must be Send.
        stream::iter(0..blobs.len())
            .map(|i| self.push_blob(&endpoint, target, credentials, &access, &blobs[i], &sources))
            .buffer_unordered(self.inner.options.max_concurrent_uploads)
            .try_collect::<Vec<()>>()
            .await?;

        // Pushing by digest: oci-client's fallback for a registry that omits Location
        // strips the tag from the URL, so the digest goes in as the "tag".
        let object = target
            .tag()
            .map(str::to_string)
            .unwrap_or_else(|| manifest_digest.clone());
        let oci = Reference::with_tag(
            target.registry.clone(),
            target.repository.clone(),
            object.clone(),
        );
        let body = Bytes::copy_from_slice(manifest);
        let repository = target.repository.as_str();
        self.with_session(&endpoint, credentials, repository, &access, |session| {
            let (oci, body, content_type, object) =
                (&oci, body.clone(), content_type.clone(), &object);
            let endpoint = &endpoint;
            async move {
                session
                    .client
                    .push_manifest_raw(oci, body, content_type)
                    .await
                    .map(|_| ())
                    .map_err(|e| oci_failure(e, endpoint, repository, object))
            }
        })
        .await?;
        debug!(target = %target, digest = %manifest_digest, "pushed manifest");
        Ok(manifest_digest)
    }

    async fn push_blob(
        &self,
        endpoint: &Endpoint,
        target: &ImageReference,
        credentials: &Credentials,
        access: &Access,
        blob: &PushBlob,
        sources: &[String],
    ) -> Result<(), RegistryError> {
        let file_error = |source| RegistryError::BlobFile {
            digest: blob.digest.clone(),
            path: blob.path.clone(),
            source,
        };
        let actual = tokio::fs::metadata(&blob.path)
            .await
            .map_err(file_error)?
            .len();
        if actual != blob.size {
            return Err(RegistryError::SizeMismatch {
                digest: blob.digest.clone(),
                expected: blob.size,
                actual,
            });
        }
        let repository = target.repository.as_str();
        let digest = blob.digest.as_str();
        let oci = Reference::with_tag(
            target.registry.clone(),
            target.repository.clone(),
            "latest".to_string(),
        );
        let exists = self
            .with_session(endpoint, credentials, repository, access, |session| {
                let oci = &oci;
                async move {
                    session
                        .client
                        .blob_exists(oci, digest)
                        .await
                        .map_err(|e| oci_failure(e, endpoint, repository, digest))
                }
            })
            .await?;
        if exists {
            debug!(%digest, %target, "blob already in the repository");
            return Ok(());
        }
        for source in sources {
            let from = Reference::with_tag(
                target.registry.clone(),
                source.clone(),
                "latest".to_string(),
            );
            let mounted = self
                .with_session(endpoint, credentials, repository, access, |session| {
                    let (oci, from) = (&oci, &from);
                    async move {
                        session
                            .client
                            .mount_blob(oci, from, digest)
                            .await
                            .map_err(|e| oci_failure(e, endpoint, repository, digest))
                    }
                })
                .await;
            match mounted {
                Ok(()) => {
                    debug!(%digest, %target, from = %source, "blob mounted");
                    return Ok(());
                }
                Err(error) => debug!(%digest, from = %source, %error, "blob mount failed"),
            }
        }
        let chunked = blob.size > self.inner.options.chunked_upload_threshold;
        let chunk_size = self.inner.options.upload_chunk_size;
        let size = blob.size;
        let path = blob.path.clone();
        self.with_session(endpoint, credentials, repository, access, |session| {
            let (oci, path) = (&oci, path.clone());
            async move {
                let file = tokio::fs::File::open(&path)
                    .await
                    .map_err(|source| Failure::fatal(file_error(source)))?;
                let body = tokio_util::io::ReaderStream::with_capacity(file, chunk_size)
                    .map_err(OciDistributionError::IoError);
                let result = match (chunked, &session.chunked) {
                    (true, Some(client)) => client.push_blob_stream(oci, body, digest, None).await,
                    _ => {
                        session
                            .client
                            .push_blob_stream(oci, body, digest, Some(size))
                            .await
                    }
                };
                result
                    .map(|_| ())
                    .map_err(|e| oci_failure(e, endpoint, repository, digest))
            }
        })
        .await?;
        debug!(%digest, %target, chunked, "blob uploaded");
        Ok(())
    }
}

/// The error to report when every endpoint failed (in order: mirrors, then the
/// registry): the registry's own answer when it gave one, else the first mirror's answer,
/// and only when no endpoint answered at all a failure to reach one. With more than one
/// endpoint, the error also says what each one answered.
fn most_specific(failures: Vec<(String, RegistryError)>) -> Option<RegistryError> {
    if failures.len() <= 1 {
        return failures.into_iter().next().map(|(_, error)| error);
    }
    let best = failures
        .iter()
        .map(|(_, error)| error.specificity())
        .max()
        .unwrap_or(0);
    // The last endpoint is the registry itself: its answer wins a tie.
    let pick = if failures
        .last()
        .is_some_and(|(_, error)| error.specificity() == best)
    {
        failures.len() - 1
    } else {
        failures
            .iter()
            .position(|(_, error)| error.specificity() == best)
            .unwrap_or(0)
    };
    let tried = failures
        .iter()
        .map(|(name, error)| format!("{}: {}", echo(name), truncate(error.to_string(), 512)))
        .collect();
    let cause = failures.into_iter().nth(pick).map(|(_, error)| error)?;
    Some(RegistryError::Endpoints {
        cause: Box::new(cause),
        tried,
    })
}

/// `request` with the session's credentials.
fn with_auth(request: reqwest::RequestBuilder, auth: &RegistryAuth) -> reqwest::RequestBuilder {
    match auth {
        RegistryAuth::Anonymous => request,
        RegistryAuth::Basic(username, password) => request.basic_auth(username, Some(password)),
        RegistryAuth::Bearer(token) => request.bearer_auth(token),
    }
}

// ---------------------------------------------------------------------------
// redirects

/// Where an address lies, for redirects: a registry on one class may not send wharf to
/// another (a loopback or private registry to a public address, or a public registry
/// into the node's own network) unless `registry.redirect_allow` lists the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AddressClass {
    Loopback,
    Private,
    Public,
}

impl fmt::Display for AddressClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AddressClass::Loopback => "loopback",
            AddressClass::Private => "private",
            AddressClass::Public => "public",
        })
    }
}

fn ip_class(ip: IpAddr) -> AddressClass {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            if v4.is_loopback() {
                AddressClass::Loopback
            } else if v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || (a == 100 && (b & 0xc0) == 64)
            {
                AddressClass::Private
            } else {
                AddressClass::Public
            }
        }
        IpAddr::V6(v6) => {
            if v6.is_loopback() {
                AddressClass::Loopback
            } else if let Some(v4) = v6.to_ipv4_mapped() {
                ip_class(IpAddr::V4(v4))
            } else if (v6.segments()[0] & 0xfe00) == 0xfc00
                || (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6.is_unspecified()
            {
                AddressClass::Private
            } else {
                AddressClass::Public
            }
        }
    }
}

/// The class of a URL's host. Names are judged by the name only (no lookup): `localhost`
/// is loopback, any other name public.
fn host_class(host: &str) -> AddressClass {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return ip_class(ip);
    }
    let lower = bare.to_ascii_lowercase();
    if lower == "localhost" || lower.ends_with(".localhost") {
        AddressClass::Loopback
    } else {
        AddressClass::Public
    }
}

/// `url`'s host is listed in `registry.redirect_allow` (name, name:port, address, CIDR).
fn redirect_allowed(allow: &[String], url: &reqwest::Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let ip = bare.parse::<IpAddr>().ok();
    let with_port = url
        .port_or_known_default()
        .map(|port| format!("{host}:{port}"));
    allow.iter().any(|entry| {
        entry.eq_ignore_ascii_case(host)
            || entry.eq_ignore_ascii_case(bare)
            || with_port
                .as_deref()
                .is_some_and(|hp| entry.eq_ignore_ascii_case(hp))
            || ip.is_some_and(|ip| {
                entry.parse::<IpAddr>().is_ok_and(|e| e == ip) || cidr_contains(entry, ip)
            })
    })
}

/// Whether a redirect from the chain `previous` (the first is the registry's URL) to
/// `next` may be followed: at most [`MAX_REDIRECTS`] hops, http(s) only, never from
/// HTTPS down to plain HTTP, and never into another address class than the registry's
/// unless `allow` lists the target.
fn check_redirect(
    previous: &[reqwest::Url],
    next: &reqwest::Url,
    allow: &[String],
) -> Result<(), String> {
    if previous.len() > MAX_REDIRECTS {
        return Err(format!("more than {MAX_REDIRECTS} redirects"));
    }
    match next.scheme() {
        "http" | "https" => {}
        other => return Err(format!("scheme {:?} is not http or https", echo(other))),
    }
    if next.scheme() == "http" && previous.iter().any(|u| u.scheme() == "https") {
        return Err("a redirect from HTTPS to plain HTTP".to_string());
    }
    let Some(host) = next.host_str() else {
        return Err("the URL has no host".to_string());
    };
    let Some(registry) = previous.first().and_then(|u| u.host_str()) else {
        return Ok(());
    };
    let (from, to) = (host_class(registry), host_class(host));
    if from != to && !redirect_allowed(allow, next) {
        return Err(format!(
            "the registry at {from} address {} may not send wharf to a {to} address \
             (registry.redirect_allow lists the exceptions)",
            echo(registry)
        ));
    }
    Ok(())
}

/// A redirect response that was not followed: one without a `Location`.
fn unfollowed_redirect(response: &reqwest::Response) -> RegistryError {
    let location = response
        .headers()
        .get(reqwest::header::LOCATION)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    match location {
        Some(location) => {
            let reason = match response.url().join(&location) {
                Ok(next) if !matches!(next.scheme(), "http" | "https") => {
                    format!("scheme {:?} is not http or https", echo(next.scheme()))
                }
                Ok(_) => format!("HTTP {} not followed", response.status().as_u16()),
                Err(e) => format!("not a URL: {e}"),
            };
            RegistryError::Redirect {
                url: echo(&location),
                reason,
            }
        }
        None => RegistryError::Redirect {
            url: "(no Location header)".to_string(),
            reason: format!(
                "HTTP {} from {}",
                response.status().as_u16(),
                echo(response.url().as_str())
            ),
        },
    }
}

/// Reads at most `limit` bytes of a body; the flag tells whether it was all of it.
async fn read_capped(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > limit {
            let room = limit - body.len();
            body.extend_from_slice(&chunk[..room]);
            return Ok((body, false));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, true))
}

/// A registry's error envelope (`{"errors":[{"code":"MANIFEST_UNKNOWN",...}]}`) as ours.
fn envelope_failure(
    envelope: &OciEnvelope,
    status: Option<u16>,
    endpoint: &Endpoint,
    repository: &str,
    object: &str,
) -> Failure {
    let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
    if codes
        .iter()
        .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
        || matches!(status, Some(401 | 403))
    {
        return Failure::fatal(RegistryError::Unauthorized {
            registry: endpoint.name.clone(),
        });
    }
    if codes.iter().any(|c| {
        matches!(
            c,
            OciErrorCode::ManifestUnknown
                | OciErrorCode::BlobUnknown
                | OciErrorCode::NameUnknown
                | OciErrorCode::NotFound
        )
    }) || status == Some(404)
    {
        return Failure::fatal(RegistryError::NotFound {
            registry: endpoint.name.clone(),
            repository: repository.to_string(),
            reference: object.to_string(),
        });
    }
    let message = truncate(envelope.to_string(), 512);
    let registry = endpoint.name.clone();
    if codes.contains(&&OciErrorCode::Toomanyrequests)
        || status.is_some_and(|s| s == 408 || s == 429 || s >= 500)
    {
        Failure::transient(RegistryError::Transport { registry, message })
    } else {
        Failure::fatal(RegistryError::Registry { registry, message })
    }
}

/// An HTTP error status (and body) as ours: 401/403 refuse, 404 is not found, 408, 429
/// and 5xx may pass.
fn status_failure(
    code: u16,
    body: &[u8],
    endpoint: &Endpoint,
    repository: &str,
    object: &str,
) -> Failure {
    if let Ok(envelope) = serde_json::from_slice::<OciEnvelope>(body) {
        return envelope_failure(&envelope, Some(code), endpoint, repository, object);
    }
    let message = truncate(
        format!("HTTP {code}: {}", String::from_utf8_lossy(body).trim()),
        512,
    );
    match code {
        401 | 403 => Failure::fatal(RegistryError::Unauthorized {
            registry: endpoint.name.clone(),
        }),
        404 => Failure::fatal(RegistryError::NotFound {
            registry: endpoint.name.clone(),
            repository: repository.to_string(),
            reference: object.to_string(),
        }),
        408 | 429 | 500..=599 => Failure::transient(RegistryError::Transport {
            registry: endpoint.name.clone(),
            message,
        }),
        _ => Failure::fatal(RegistryError::Registry {
            registry: endpoint.name.clone(),
            message,
        }),
    }
}

/// Maps an oci-client error to ours, deciding whether to retry.
fn oci_failure(
    err: OciDistributionError,
    endpoint: &Endpoint,
    repository: &str,
    object: &str,
) -> Failure {
    let registry = endpoint.name.clone();
    let unauthorized = || {
        Failure::fatal(RegistryError::Unauthorized {
            registry: endpoint.name.clone(),
        })
    };
    let not_found = || {
        Failure::fatal(RegistryError::NotFound {
            registry: endpoint.name.clone(),
            repository: repository.to_string(),
            reference: object.to_string(),
        })
    };
    let by_status = |code: u16, message: String| {
        status_failure(code, message.as_bytes(), endpoint, repository, object)
    };
    match err {
        OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::AuthenticationFailure(_) => unauthorized(),
        OciDistributionError::ImageManifestNotFoundError(_) => not_found(),
        OciDistributionError::RegistryError { envelope, .. } => {
            envelope_failure(&envelope, None, endpoint, repository, object)
        }
        OciDistributionError::ServerError { code, message, .. } => by_status(code, message),
        OciDistributionError::RequestError(e) => match e.status() {
            Some(status) => by_status(status.as_u16(), String::new()),
            None => {
                let error = RegistryError::Transport {
                    registry,
                    message: error_chain(&e),
                };
                if e.is_builder() || e.is_redirect() {
                    Failure::fatal(error)
                } else {
                    Failure::transient(error)
                }
            }
        },
        OciDistributionError::IoError(e) => Failure::transient(RegistryError::Transport {
            registry,
            message: error_chain(&e),
        }),
        OciDistributionError::DigestError(oci_client::errors::DigestError::VerificationError {
            expected,
            actual,
        }) => Failure::fatal(RegistryError::DigestMismatch { expected, actual }),
        OciDistributionError::UnsupportedMediaTypeError(media_type) => {
            Failure::fatal(RegistryError::UnsupportedMediaType {
                media_type,
                supported: strings(MANIFEST_MEDIA_TYPES),
            })
        }
        other => Failure::fatal(RegistryError::Registry {
            registry,
            message: truncate(error_chain(&other), 512),
        }),
    }
}

// ---------------------------------------------------------------------------
// verified, resumable blob downloads

struct OpenedBlob {
    stream: BoxStream<'static, Result<Bytes, std::io::Error>>,
    length: Option<u64>,
    partial: bool,
}

struct BlobDownload {
    client: RegistryClient,
    endpoint: Endpoint,
    reference: ImageReference,
    credentials: Credentials,
    digest: String,
    size: u64,
    inner: Option<BoxStream<'static, Result<Bytes, std::io::Error>>>,
    received: u64,
    /// Bytes to drop: a resumed request that got the whole blob again.
    skip: u64,
    hasher: Sha256,
    failures: u32,
    finished: bool,
}

impl BlobDownload {
    fn new(
        client: RegistryClient,
        endpoint: Endpoint,
        reference: ImageReference,
        credentials: Credentials,
        digest: &str,
        size: u64,
    ) -> BlobDownload {
        BlobDownload {
            client,
            endpoint,
            reference,
            credentials,
            digest: digest.to_string(),
            size,
            inner: None,
            received: 0,
            skip: 0,
            hasher: Sha256::new(),
            failures: 0,
            finished: false,
        }
    }

    /// Sends the request (at the current offset) and checks the announced length.
    async fn open(mut self) -> Result<BlobDownload, RegistryError> {
        self.reopen().await?;
        Ok(self)
    }

    async fn reopen(&mut self) -> Result<(), RegistryError> {
        let opened = self
            .client
            .open_blob(
                &self.endpoint,
                &self.reference,
                &self.credentials,
                &self.digest,
                self.received,
            )
            .await?;
        let (expected, base) = if opened.partial {
            (self.size - self.received, self.received)
        } else {
            (self.size, 0)
        };
        if let Some(length) = opened.length {
            if length != expected {
                return Err(RegistryError::SizeMismatch {
                    digest: self.digest.clone(),
                    expected: self.size,
                    actual: base + length,
                });
            }
        }
        self.skip = if opened.partial { 0 } else { self.received };
        self.inner = Some(opened.stream);
        Ok(())
    }

    fn into_stream(self) -> BoxStream<'static, Result<Bytes, RegistryError>> {
        stream::unfold(self, |mut download| async move {
            let item = download.next_item().await?;
            Some((item, download))
        })
        .boxed()
    }

    /// End of data: the size and the digest decide.
    fn finish(&mut self) -> Option<Result<Bytes, RegistryError>> {
        self.finished = true;
        self.inner = None;
        if self.received != self.size {
            return Some(Err(RegistryError::SizeMismatch {
                digest: self.digest.clone(),
                expected: self.size,
                actual: self.received,
            }));
        }
        let actual = format!("sha256:{}", hex::encode(self.hasher.finalize_reset()));
        if actual != self.digest {
            return Some(Err(RegistryError::DigestMismatch {
                expected: self.digest.clone(),
                actual,
            }));
        }
        None
    }

    async fn next_item(&mut self) -> Option<Result<Bytes, RegistryError>> {
        loop {
            if self.finished {
                return None;
            }
            let Some(inner) = self.inner.as_mut() else {
                if let Err(error) = self.reopen().await {
                    self.finished = true;
                    return Some(Err(error.scrub(&self.credentials)));
                }
                continue;
            };
            match inner.next().await {
                Some(Ok(mut chunk)) => {
                    if self.skip > 0 {
                        let n = self.skip.min(chunk.len() as u64);
                        let _ = chunk.split_to(n as usize);
                        self.skip -= n;
                    }
                    if chunk.is_empty() {
                        continue;
                    }
                    let len = chunk.len() as u64;
                    if self.received + len > self.size {
                        self.finished = true;
                        self.inner = None;
                        return Some(Err(RegistryError::SizeMismatch {
                            digest: self.digest.clone(),
                            expected: self.size,
                            actual: self.received + len,
                        }));
                    }
                    self.hasher.update(&chunk);
                    self.received += len;
                    self.failures = 0;
                    return Some(Ok(chunk));
                }
                // All bytes are in: oci-client's own end-of-stream check (or a late
                // transport error) is superseded by ours.
                Some(Err(_)) if self.received == self.size => return self.finish(),
                Some(Err(error)) => {
                    self.inner = None;
                    self.failures += 1;
                    if self.failures >= self.client.inner.max_attempts {
                        self.finished = true;
                        let message = format!(
                            "download of {} stopped at {} of {} bytes: {}",
                            self.digest,
                            self.received,
                            self.size,
                            error_chain(&error)
                        );
                        return Some(Err(RegistryError::Transport {
                            registry: self.endpoint.name.clone(),
                            message,
                        }
                        .scrub(&self.credentials)));
                    }
                    let delay = self.client.backoff(self.failures);
                    debug!(digest = %self.digest, received = self.received, %error, ?delay, "blob download interrupted, resuming");
                    tokio::time::sleep(delay).await;
                }
                None => return self.finish(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn parse(s: &str) -> ImageReference {
        ImageReference::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn docker_normalization() {
        let r = parse("busybox");
        assert_eq!(r.to_string(), "docker.io/library/busybox:latest");
        assert_eq!(r.registry(), "docker.io");
        assert_eq!(r.repository(), "library/busybox");
        assert_eq!(r.tag(), Some("latest"));
        assert_eq!(r.digest(), None);
        assert_eq!(
            r.repo_tag().as_deref(),
            Some("docker.io/library/busybox:latest")
        );
        assert_eq!(parse("user/app:1.0").to_string(), "docker.io/user/app:1.0");
        assert_eq!(
            parse("index.docker.io/busybox").to_string(),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            parse("docker.io/library/busybox:1.36").to_string(),
            "docker.io/library/busybox:1.36"
        );
        let r = parse("localhost:5000/a/b:t");
        assert_eq!(
            (r.registry(), r.repository(), r.tag()),
            ("localhost:5000", "a/b", Some("t"))
        );
        let r = parse("localhost/a");
        assert_eq!((r.registry(), r.repository()), ("localhost", "a"));
        let r = parse("[::1]:5000/x/y");
        assert_eq!((r.registry(), r.repository()), ("[::1]:5000", "x/y"));
        let r = parse("quay.io/coreos/etcd:v3.5.0-rc.1");
        assert_eq!(r.tag(), Some("v3.5.0-rc.1"));
        // "test.com:5000" alone is a Docker Hub image with tag 5000, as Docker has it
        assert_eq!(
            parse("test.com:5000").to_string(),
            "docker.io/library/test.com:5000"
        );
        assert_eq!(parse("a__b/c-d/e.f--g").repository(), "a__b/c-d/e.f--g");
    }

    #[test]
    fn digests() {
        let r = parse(&format!("x@sha256:{HEX}"));
        assert_eq!(r.to_string(), format!("docker.io/library/x@sha256:{HEX}"));
        assert_eq!(r.tag(), None);
        assert_eq!(r.repo_tag(), None);
        assert_eq!(r.manifest_reference(), format!("sha256:{HEX}"));
        let r = parse(&format!("reg.io:5000/x:1@sha256:{HEX}"));
        assert_eq!(r.tag(), Some("1"));
        assert_eq!(r.manifest_reference(), format!("sha256:{HEX}"));
        assert_eq!(r.to_string(), format!("reg.io:5000/x:1@sha256:{HEX}"));
        let d = parse("busybox").with_digest(&format!("sha256:{HEX}"));
        assert_eq!(
            d.to_string(),
            format!("docker.io/library/busybox@sha256:{HEX}")
        );
    }

    #[test]
    fn invalid_references_name_input_and_reason() {
        let cases = [
            ("", "empty"),
            ("UPPER/case", "lowercase"),
            ("Busybox", "lowercase"),
            ("a:b:c", "a:b"),
            ("busybox:", "tag"),
            ("busybox:-x", "tag"),
            ("x@sha256:abc", "64"),
            ("x@md5:0123", "algorithm"),
            (&format!("x@sha256:{}", HEX.to_uppercase()), "lowercase hex"),
            ("x@", "sha256"),
            ("-x/y", "component"),
            ("x//y", "empty"),
            ("x/", "empty"),
            ("bad_host.com:99999/x", "host"),
            ("a b", "whitespace"),
            (HEX, "image ID"),
            ("x/y.", "component"),
        ];
        for (input, reason) in cases {
            match ImageReference::parse(input) {
                Err(e @ RegistryError::InvalidReference { .. }) => {
                    let msg = e.to_string();
                    assert!(msg.contains(&format!("{input:?}")), "{input}: {msg}");
                    assert!(msg.contains(reason), "{input}: {msg} (wanted {reason:?})");
                }
                other => panic!("{input:?}: {other:?}"),
            }
        }
    }

    fn entry(digest_char: char, platform: Option<Platform>) -> IndexEntry {
        IndexEntry {
            digest: format!("sha256:{}", digest_char.to_string().repeat(64)),
            size: 1,
            platform,
        }
    }

    #[test]
    fn platform_selection() {
        let entries = vec![
            entry('a', Some(Platform::new("linux", "arm", Some("v6")))),
            entry('b', Some(Platform::new("linux", "amd64", None))),
            entry('c', Some(Platform::new("linux", "arm", Some("v7")))),
            entry('d', Some(Platform::new("unknown", "unknown", None))),
            entry('e', Some(Platform::new("linux", "arm64", Some("v8")))),
        ];
        let pick = |p: Platform| select_platform(&entries, &p).map(|e| e.digest.clone());
        assert!(pick(Platform::new("linux", "amd64", None))
            .unwrap()
            .contains("bbbb"));
        assert!(pick(Platform::new("linux", "arm", Some("v7")))
            .unwrap()
            .contains("cccc"));
        assert!(pick(Platform::new("linux", "arm64", None))
            .unwrap()
            .contains("eeee"));
        match pick(Platform::new("linux", "s390x", None)) {
            Err(e @ RegistryError::PlatformNotFound { .. }) => {
                let msg = e.to_string();
                assert!(
                    msg.contains("linux/s390x")
                        && msg.contains("linux/arm/v6, linux/amd64, linux/arm/v7, linux/arm64/v8"),
                    "{msg}"
                );
                assert!(!msg.contains("unknown"), "{msg}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn manifests() {
        let config = format!(
            r#"{{"mediaType":"{MEDIA_TYPE_OCI_CONFIG}","digest":"sha256:{HEX}","size":10}}"#
        );
        let layer = format!(
            r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:{HEX}","size":20}}"#
        );
        let manifest = format!(r#"{{"schemaVersion":2,"config":{config},"layers":[{layer}]}}"#);
        match parse_manifest(manifest.as_bytes(), "m").unwrap() {
            ParsedManifest::Image {
                media_type, layers, ..
            } => {
                assert_eq!(media_type, MEDIA_TYPE_OCI_MANIFEST);
                assert_eq!(layers[0].size, 20);
            }
            other => panic!("{other:?}"),
        }
        // schema 1
        let schema1 = br#"{"schemaVersion":1,"name":"x","tag":"latest","fsLayers":[]}"#;
        match parse_manifest(schema1, "old") {
            Err(e @ RegistryError::UnsupportedMediaType { .. }) => {
                let msg = e.to_string();
                assert!(
                    msg.contains("v1+prettyjws") && msg.contains(MEDIA_TYPE_DOCKER_MANIFEST),
                    "{msg}"
                );
            }
            other => panic!("{other:?}"),
        }
        // unknown manifest type, unknown layer type, bad digest
        let artifact =
            br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.artifact.manifest.v1+json"}"#;
        assert!(matches!(
            parse_manifest(artifact, "a"),
            Err(RegistryError::UnsupportedMediaType { .. })
        ));
        let helm = manifest.replace(
            "application/vnd.oci.image.layer.v1.tar+gzip",
            "application/x-helm",
        );
        match parse_manifest(helm.as_bytes(), "h") {
            Err(RegistryError::UnsupportedMediaType {
                media_type,
                supported,
            }) => {
                assert_eq!(media_type, "application/x-helm");
                assert!(supported
                    .contains(&"application/vnd.docker.image.rootfs.diff.tar.gzip".to_string()));
            }
            other => panic!("{other:?}"),
        }
        let bad = manifest.replace(
            &format!("sha256:{HEX}\",\"size\":20"),
            "sha256:../../etc\",\"size\":20",
        );
        assert!(matches!(
            parse_manifest(bad.as_bytes(), "b"),
            Err(RegistryError::InvalidManifest { .. })
        ));
        assert!(matches!(
            parse_manifest(b"not json", "j"),
            Err(RegistryError::InvalidManifest { .. })
        ));
        // index: artifacts and nested indexes skipped
        let index = format!(
            r#"{{"schemaVersion":2,"mediaType":"{MEDIA_TYPE_DOCKER_MANIFEST_LIST}","manifests":[
            {{"mediaType":"{MEDIA_TYPE_DOCKER_MANIFEST}","digest":"sha256:{HEX}","size":5,"platform":{{"os":"linux","architecture":"amd64"}}}},
            {{"mediaType":"{MEDIA_TYPE_OCI_INDEX}","digest":"sha256:{HEX}","size":5}}]}}"#
        );
        match parse_manifest(index.as_bytes(), "i").unwrap() {
            ParsedManifest::Index { entries } => {
                assert_eq!(entries.len(), 1);
                assert_eq!(
                    entries[0].platform,
                    Some(Platform::new("linux", "amd64", None))
                );
            }
            other => panic!("{other:?}"),
        }
    }

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
    fn scrub_removes_secrets() {
        let c = Credentials::Basic {
            username: "u".into(),
            password: "pw-123".into(),
        };
        let e = RegistryError::Registry {
            registry: "r".into(),
            message: "echo pw-123".into(),
        }
        .scrub(&c);
        assert!(!e.to_string().contains("pw-123"), "{e}");
    }

    fn client(insecure: &[&str], mirrors: &[(&str, &[&str])]) -> RegistryClient {
        let config = RegistryConfig {
            insecure: insecure.iter().map(|s| s.to_string()).collect(),
            mirrors: mirrors
                .iter()
                .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
                .collect(),
            ..RegistryConfig::default()
        };
        RegistryClient::new(&config)
    }

    #[test]
    fn plain_http_only_for_insecure_and_loopback() {
        let c = client(&["reg.local:5000", "other.local", "10.1.0.0/16"], &[]);
        for (registry, http) in [
            ("localhost:5000", true),
            ("localhost", true),
            ("127.0.0.1:5000", true),
            ("127.8.9.1", true),
            ("[::1]:5000", true),
            ("reg.local:5000", true),
            ("reg.local:5001", false),
            ("other.local:443", true),
            ("10.1.2.3:5000", true),
            ("10.2.0.1:5000", false),
            ("docker.io", false),
            ("quay.io", false),
        ] {
            assert_eq!(c.plain_http(registry), http, "{registry}");
        }
        assert_eq!(c.origin(&parse("busybox")).url, "https://index.docker.io");
        assert_eq!(
            c.origin(&parse("127.0.0.1:5000/x")).url,
            "http://127.0.0.1:5000"
        );
    }

    #[test]
    fn mirrors_then_origin() {
        let c = client(
            &[],
            &[(
                "docker.io",
                &[
                    "http://127.0.0.1:5001",
                    "https://mirror.example/v2/",
                    "ftp://x",
                    "https://m.example/path",
                ],
            )],
        );
        let endpoints = c.endpoints(&parse("busybox"));
        let urls: Vec<&str> = endpoints.iter().map(|e| e.url.as_str()).collect();
        assert_eq!(
            urls,
            [
                "http://127.0.0.1:5001",
                "https://mirror.example",
                "https://index.docker.io"
            ]
        );
        assert!(endpoints[0].http && endpoints[0].mirror);
        assert!(!endpoints[1].http && endpoints[1].mirror);
        assert!(!endpoints[2].mirror);
        assert_eq!(c.endpoints(&parse("quay.io/x")).len(), 1);
    }

    fn url(s: &str) -> reqwest::Url {
        reqwest::Url::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn redirect_policy_rules() {
        let allow: Vec<String> = vec!["10.1.0.0/16".into(), "minio.lan".into()];
        let check = |chain: &[&str], next: &str| {
            let chain: Vec<reqwest::Url> = chain.iter().map(|u| url(u)).collect();
            check_redirect(&chain, &url(next), &allow)
        };
        // a public registry to its CDN, https all along
        assert!(check(
            &["https://registry-1.docker.io/v2/x/blobs/sha256:a"],
            "https://production.cloudflare.docker.com/blob"
        )
        .is_ok());
        // loopback to loopback (another port), plain HTTP
        assert!(check(&["http://127.0.0.1:5000/v2/"], "http://localhost:6000/b").is_ok());
        // never down to plain HTTP, even on the same host, even a hop later
        let err = check(&["https://r.example/v2/"], "http://r.example/b").unwrap_err();
        assert!(err.contains("HTTPS to plain HTTP"), "{err}");
        assert!(check(
            &["https://r.example/v2/", "https://cdn.example/a"],
            "http://cdn.example/b"
        )
        .is_err());
        // never to another scheme
        let err = check(&["http://127.0.0.1:5000/v2/"], "file:///etc/passwd").unwrap_err();
        assert!(err.contains("\"file\""), "{err}");
        assert!(check(&["https://r.example/v2/"], "ftp://r.example/b").is_err());
        // not across address classes, either way, unless allowed
        for (from, to) in [
            ("http://127.0.0.1:5000/v2/", "http://10.255.255.1/b"),
            ("http://127.0.0.1:5000/v2/", "https://203.0.113.7/b"),
            ("http://[::1]:5000/v2/", "https://cdn.example/b"),
            ("http://10.0.0.5:5000/v2/", "https://cdn.example/b"),
            ("http://192.168.1.2/v2/", "http://127.0.0.1:80/b"),
            ("https://r.example/v2/", "https://10.0.0.1/b"),
            ("https://r.example/v2/", "https://[fd00::1]/b"),
            ("https://r.example/v2/", "https://169.254.169.254/latest"),
            ("https://r.example/v2/", "https://localhost/b"),
            ("https://r.example/v2/", "https://[::ffff:127.0.0.1]/b"),
        ] {
            let err = check(&[from], to).expect_err(to);
            assert!(err.contains("may not send wharf"), "{from} -> {to}: {err}");
        }
        assert!(check(&["https://r.example/v2/"], "https://10.1.2.3/b").is_ok());
        assert!(check(&["http://10.0.0.5:5000/v2/"], "http://minio.lan:9000/b").is_ok());
        assert!(check(&["http://10.0.0.5:5000/v2/"], "http://10.0.0.6/b").is_ok());
        // at most MAX_REDIRECTS hops
        let chain: Vec<String> = (0..=MAX_REDIRECTS)
            .map(|i| format!("https://r{i}.example/"))
            .collect();
        let refs: Vec<&str> = chain.iter().map(String::as_str).collect();
        assert!(check(&refs[..MAX_REDIRECTS], "https://last.example/").is_ok());
        let err = check(&refs, "https://last.example/").unwrap_err();
        assert!(err.contains("more than 5 redirects"), "{err}");
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

    #[test]
    fn the_most_specific_endpoint_failure_is_reported() {
        let transport = |r: &str| RegistryError::Transport {
            registry: r.to_string(),
            message: "dns error".to_string(),
        };
        let not_found = |r: &str| RegistryError::NotFound {
            registry: r.to_string(),
            repository: "library/busybox".to_string(),
            reference: "nope".to_string(),
        };
        let mirror = "http://127.0.0.1:5001";
        let err = most_specific(vec![
            (mirror.to_string(), not_found(mirror)),
            ("docker.io".to_string(), transport("docker.io")),
        ])
        .unwrap();
        assert!(err.is_not_found(), "{err}");
        let text = err.to_string();
        assert!(
            text.contains(mirror) && text.contains("docker.io"),
            "{text}"
        );
        // the registry's own answer wins over a mirror's
        let err = most_specific(vec![
            (mirror.to_string(), not_found(mirror)),
            (
                "docker.io".to_string(),
                RegistryError::Unauthorized {
                    registry: "docker.io".to_string(),
                },
            ),
        ])
        .unwrap();
        assert!(matches!(err.cause(), RegistryError::Unauthorized { .. }));
        // one endpoint: its error as is
        let err = most_specific(vec![("docker.io".to_string(), transport("docker.io"))]).unwrap();
        assert!(matches!(err, RegistryError::Transport { .. }));
    }

    #[test]
    fn mount_sources_stay_on_the_registry() {
        let target = parse("127.0.0.1:5000/pushed/img:v1");
        let sources = RegistryClient::mount_sources(
            &target,
            &[
                "test/busybox".into(),
                "127.0.0.1:5000/test/other:latest".into(),
                format!("127.0.0.1:5000/test/third@sha256:{HEX}"),
                "docker.io/library/busybox".into(),
                "127.0.0.1:5001/elsewhere".into(),
                "pushed/img".into(),
                "test/busybox".into(),
                "Bad/Name".into(),
            ],
        );
        assert_eq!(sources, ["test/busybox", "test/other", "test/third"]);
        let hub = RegistryClient::mount_sources(
            &parse("docker.io/me/app"),
            &["busybox".into(), "docker.io/library/alpine:3".into()],
        );
        assert_eq!(hub, ["library/busybox", "library/alpine"]);
    }

    #[test]
    fn backoff_doubles() {
        let c = client(&[], &[]);
        assert_eq!(c.backoff(1), Duration::from_millis(200));
        assert_eq!(c.backoff(2), Duration::from_millis(400));
        assert_eq!(c.backoff(3), Duration::from_millis(800));
        assert_eq!(c.backoff(30), Duration::from_secs(10));
    }

    #[test]
    fn cidr() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(cidr_contains("10.0.0.0/8", ip("10.9.9.9")));
        assert!(!cidr_contains("10.0.0.0/8", ip("11.0.0.1")));
        assert!(cidr_contains("0.0.0.0/0", ip("1.2.3.4")));
        assert!(cidr_contains("fd00::/8", ip("fd12::1")));
        assert!(!cidr_contains("fd00::/8", ip("10.0.0.1")));
        assert!(!cidr_contains("garbage", ip("10.0.0.1")));
    }
}
