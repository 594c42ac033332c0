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
//! [`check_redirect`](redirect::check_redirect).
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

mod auth;
mod blob;
mod endpoint;
mod error;
mod manifest;
mod push;
mod redirect;
mod reference;
mod retry;

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::Client;
use tracing::warn;

pub use super::platform::Platform;
use crate::config::RegistryConfig;
use crate::image::progress::ProgressSink;

pub use auth::Credentials;
use auth::{Session, SessionKey};
use blob::BlobDownload;
use endpoint::{mirror_key, parse_mirror, Endpoint};
pub(crate) use error::error_chain;
use error::most_specific;
pub use error::RegistryError;
pub(crate) use manifest::{parse_manifest, ParsedManifest};
use reference::valid_digest;
pub use reference::ImageReference;
use retry::Failure;

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

/// oci-client never sends more than this in one PATCH.
const MAX_UPLOAD_CHUNK: usize = 4 << 20;
const USER_AGENT: &str = concat!("wharf/", env!("CARGO_PKG_VERSION"));

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
            let nobody = ProgressSink::none();
            self.push_with_progress(
                target,
                credentials,
                manifest,
                manifest_media_type,
                blobs,
                mount_from,
                &nobody,
            )
            .await
        })
    }

    /// `push`, reporting each blob's progress to `progress`.
    #[allow(clippy::too_many_arguments)]
    pub fn push_with_progress<'a>(
        &'a self,
        target: &'a ImageReference,
        credentials: &'a Credentials,
        manifest: &'a [u8],
        manifest_media_type: &'a str,
        blobs: &'a [PushBlob],
        mount_from: &'a [String],
        progress: &'a ProgressSink,
    ) -> BoxFuture<'a, Result<String, RegistryError>> {
        Box::pin(async move {
            self.push_inner(
                target,
                credentials,
                manifest,
                manifest_media_type,
                blobs,
                mount_from,
                progress,
            )
            .await
            .map_err(|e| e.scrub(credentials))
        })
    }

    // -- HTTP clients -------------------------------------------------------

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

    /// The client for API calls: a whole-request timeout (manifests and tokens are small).
    fn http(&self, endpoint: &Endpoint) -> Result<&reqwest::Client, Failure> {
        built_client(
            &self.inner.http,
            endpoint,
            || reqwest::Client::builder().timeout(Duration::from_secs(60)),
            &self.inner.options,
        )
    }

    /// The client for blobs: a read timeout only, as a large layer may take long.
    fn blob_http(&self, endpoint: &Endpoint) -> Result<&reqwest::Client, Failure> {
        built_client(
            &self.inner.blob_http,
            endpoint,
            || reqwest::Client::builder().read_timeout(self.inner.options.read_timeout),
            &self.inner.options,
        )
    }
}

/// The HTTP client in `cell`, built on first use from `builder` with what every
/// registry client has: wharf's user agent, the connect timeout, and no automatic
/// redirects (wharf follows them itself, hop by hop; see redirect.rs).
fn built_client<'a>(
    cell: &'a OnceLock<Result<reqwest::Client, String>>,
    endpoint: &Endpoint,
    builder: impl FnOnce() -> reqwest::ClientBuilder,
    options: &ClientOptions,
) -> Result<&'a reqwest::Client, Failure> {
    let http = cell.get_or_init(|| {
        builder()
            .user_agent(USER_AGENT)
            .connect_timeout(options.connect_timeout)
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

#[cfg(test)]
mod tests {
    //! Helpers for the tests of every file.

    use super::*;

    pub(super) const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    pub(super) fn parse(s: &str) -> ImageReference {
        ImageReference::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    pub(super) fn client(insecure: &[&str], mirrors: &[(&str, &[&str])]) -> RegistryClient {
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

    pub(super) fn url(s: &str) -> reqwest::Url {
        reqwest::Url::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }
}
