//! Manifests and indexes: parsing and checking them (media types, descriptors),
//! picking one platform's manifest from an index, and resolving a reference to a
//! verified manifest and config.

use bytes::Bytes;
use futures_util::stream::TryStreamExt;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use tracing::debug;

use super::auth::{Access, Credentials, Session};
use super::blob::BlobDownload;
use super::endpoint::Endpoint;
use super::error::{echo, truncate};
use super::redirect::{read_capped, unfollowed_redirect};
use super::reference::check_digest;
use super::retry::{status_failure, Failure};
use super::{
    ImageReference, LayerDescriptor, Platform, RegistryClient, RegistryError, ResolvedImage,
    CONFIG_MEDIA_TYPES, LAYER_MEDIA_TYPES, MANIFEST_MEDIA_TYPES, MEDIA_TYPE_DOCKER_MANIFEST,
    MEDIA_TYPE_DOCKER_MANIFEST_LIST, MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_OCI_MANIFEST,
};

const MEDIA_TYPE_DOCKER_SCHEMA1_SIGNED: &str =
    "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// Manifests and indexes larger than this are refused (containerd's limit).
const MAX_MANIFEST_SIZE: usize = 4 << 20;
/// Image configs larger than this are refused: they are held in memory.
const MAX_CONFIG_SIZE: u64 = 32 << 20;

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
pub(crate) struct IndexEntry {
    digest: String,
    size: u64,
    platform: Option<Platform>,
}

#[derive(Debug)]
pub(crate) enum ParsedManifest {
    Image {
        media_type: String,
        config: LayerDescriptor,
        layers: Vec<LayerDescriptor>,
    },
    Index {
        entries: Vec<IndexEntry>,
    },
}

pub(super) fn strings(items: &[&str]) -> Vec<String> {
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
pub(crate) fn parse_manifest(
    bytes: &[u8],
    reference: &str,
) -> Result<ParsedManifest, RegistryError> {
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

pub(super) fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

impl RegistryClient {
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

    pub(super) async fn resolve_at(
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::registry::tests::HEX;
    use crate::image::registry::MEDIA_TYPE_OCI_CONFIG;

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
}
