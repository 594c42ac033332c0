//! `docker import`: a root filesystem tarball (plain, gzip, zstd, bzip2 or xz) becomes a one-layer
//! image, its config made as dockerd's `ImportImage` makes it.

use std::io::{self, Read, Write};

use serde_json::json;
use sha2::{Digest as _, Sha256};

use super::spool::SpooledFile;
use super::{sniff, whole_stream, ArchiveError, Detected};
use crate::image::registry::ImageReference;
use crate::image::unpack::{self, Compression};
use crate::image::{blocking, changes, Image, ImageError, ImageService, Layer};

/// What `docker import` asks besides the tarball.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// `repo[:tag]` to tag the image with (`latest` when no tag); none leaves it untagged.
    pub reference: Option<String>,
    /// The image's comment (and its history entry's); default `Imported from <source>`.
    pub message: Option<String>,
    /// Dockerfile instructions applied to the image's config (`CMD ["sh"]`, `ENV A=b`).
    pub changes: Vec<String>,
    /// Where the tarball came from, for the default message: `-` for a request body.
    pub source: String,
}

/// A tarball `docker import URL` is downloading.
#[derive(Debug)]
pub struct RemoteTarball {
    /// The URL as fetched (`http://` added where the source had no scheme).
    pub url: String,
    /// Its `Content-Length`, when the server sent one.
    pub length: Option<u64>,
    /// The body, not read yet.
    pub response: reqwest::Response,
}

/// Redirects an import URL may take (Go's `http.Get` default).
const MAX_IMPORT_REDIRECTS: usize = 10;

/// How much of an error page is quoted.
const QUOTED_BODY: usize = 512;

/// Copies what is read through it into the spool file, hashing it: the layer blob is
/// the tarball as it came.
struct Tee<R, W> {
    inner: R,
    out: W,
    hasher: Sha256,
    size: u64,
    write_error: Option<io::Error>,
}

impl<R: Read, W: Write> Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Err(err) = self.out.write_all(&buf[..n]) {
            let message = err.to_string();
            self.write_error = Some(err);
            return Err(io::Error::other(message));
        }
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
}

impl ImageService {
    /// Starts the download of `source` for an import, as dockerd: a source without a
    /// scheme is `http://source`; only http and https; an answer of 400 or more is an
    /// error naming the URL, the status and the start of the body.
    pub async fn open_import_url(&self, source: &str) -> Result<RemoteTarball, ImageError> {
        let with_scheme = if source.contains("://") {
            source.to_string()
        } else {
            format!("http://{source}")
        };
        let echo = |text: &str| crate::image::bounded(text, crate::image::MAX_ECHO);
        let url = reqwest::Url::parse(&with_scheme).map_err(|err| {
            ArchiveError::invalid(format!("invalid import source {:?}: {err}", echo(source)))
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ArchiveError::invalid(format!(
                "invalid import source {:?}: only http and https URLs (or - for the request \
                 body) can be imported",
                echo(source)
            ))
            .into());
        }
        let client = reqwest::Client::builder()
            .user_agent(concat!("wharf/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(std::time::Duration::from_secs(30))
            .read_timeout(std::time::Duration::from_secs(300))
            .redirect(reqwest::redirect::Policy::limited(MAX_IMPORT_REDIRECTS))
            .build()
            .map_err(|err| {
                ArchiveError::Download(format!("cannot create an HTTP client: {err}"))
            })?;
        let shown = echo(url.as_str());
        let response = client.get(url.clone()).send().await.map_err(|err| {
            ArchiveError::Download(format!(
                "error downloading remote context {shown}: {}",
                crate::image::registry::error_chain(&err)
            ))
        })?;
        let status = response.status();
        if status.as_u16() >= 400 {
            let body = response.text().await.unwrap_or_default();
            return Err(ArchiveError::Download(format!(
                "failed to GET {shown} with status {status}: {}",
                crate::image::bounded(body.trim(), QUOTED_BODY)
            ))
            .into());
        }
        Ok(RemoteTarball {
            url: url.to_string(),
            length: response.content_length(),
            response,
        })
    }

    /// Imports the tarball `input` as a one-layer image in `namespace`, tagged as
    /// `options` says. The reference and the changes are checked before the input is
    /// read. Reading is blocking (done on a blocking thread).
    pub async fn import(
        &self,
        namespace: &str,
        input: impl Read + Send + 'static,
        options: ImportOptions,
    ) -> Result<Image, ImageError> {
        let tag = match options.reference.as_deref().filter(|r| !r.is_empty()) {
            Some(reference) => {
                let parsed = ImageReference::parse(reference)?;
                if parsed.digest().is_some() {
                    return Err(ArchiveError::invalid("cannot import digest reference").into());
                }
                parsed.repo_tag()
            }
            None => None,
        };
        let mut container_config = changes::empty_config();
        changes::apply(&mut container_config, &options.changes).map_err(ArchiveError::Invalid)?;
        let result = self
            .import_inner(namespace, input, tag, container_config, &options)
            .await;
        if let Err(error) = &result {
            tracing::info!(%error, "image import refused");
            if let Err(gc) = self.gc().await {
                tracing::warn!(error = %gc, "cleaning up after a failed import");
            }
        }
        result
    }

    async fn import_inner(
        &self,
        namespace: &str,
        input: impl Read + Send + 'static,
        tag: Option<String>,
        container_config: serde_json::Value,
        options: &ImportOptions,
    ) -> Result<Image, ImageError> {
        let spool = self.content.spool_dir()?;
        let pending = self.snapshots.prepare()?;
        let dest = pending.path().to_path_buf();
        let limits = unpack::Limits {
            image_bytes: Default::default(),
            ..self.unpack_limits.clone()
        };
        let (spool, blob, diff_id, compression) = blocking(move || {
            let read_error =
                |err: io::Error| ArchiveError::Read(crate::image::bounded(&err.to_string(), 512));
            let (detected, input) = sniff(input).map_err(read_error)?;
            // gzip, zstd and plain tarballs are kept as they came; bzip2 and xz, which
            // no registry takes as a layer, are stored decompressed.
            let (compression, input): (Compression, Box<dyn Read>) = match detected {
                Detected::Bzip2 | Detected::Xz => (
                    Compression::None,
                    whole_stream(detected, input).map_err(read_error)?,
                ),
                _ => (detected.compression("the tarball")?, Box::new(input)),
            };
            let (file, path) = spool.create().map_err(ArchiveError::Internal)?;
            let mut tee = Tee {
                inner: input,
                out: io::BufWriter::with_capacity(256 * 1024, file),
                hasher: Sha256::new(),
                size: 0,
                write_error: None,
            };
            let stats = unpack::apply_layer_limited(&mut tee, compression, &dest, limits);
            let spool_error = |source: io::Error| {
                ArchiveError::Internal(crate::image::content::ContentError::Io {
                    path: path.clone(),
                    source,
                })
            };
            if let Some(err) = tee.write_error.take() {
                return Err(spool_error(err));
            }
            let stats = stats.map_err(|source| ArchiveError::Layer {
                path: "of the imported tarball".to_string(),
                source,
            })?;
            tee.out.flush().map_err(spool_error)?;
            let blob = SpooledFile {
                name: "the tarball".to_string(),
                path: path.clone(),
                digest: format!("sha256:{}", hex::encode(tee.hasher.finalize())),
                size: tee.size,
            };
            Ok::<_, ArchiveError>((spool, blob, stats.diff_id, compression))
        })
        .await?;

        let created = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
        let comment = options
            .message
            .clone()
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| format!("Imported from {}", options.source));
        let user = container_config
            .get("User")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_string();
        let host = crate::image::platform::Platform::host();
        let mut config = json!({
            "architecture": host.architecture,
            "comment": comment,
            "config": container_config,
            "container_config": changes::empty_config(),
            "created": created,
            "docker_version": env!("CARGO_PKG_VERSION"),
            "history": [{"created": created, "comment": comment}],
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        });
        if let Some(variant) = host.variant.as_deref() {
            config["variant"] = json!(variant);
        }
        let config =
            serde_json::to_vec(&config).map_err(|err| ImageError::Task(err.to_string()))?;
        let config_digest = crate::image::content::sha256_digest(&config);
        let media_type = match compression {
            Compression::None => "application/vnd.docker.image.rootfs.diff.tar",
            Compression::Gzip => "application/vnd.docker.image.rootfs.diff.tar.gzip",
            Compression::Zstd => "application/vnd.docker.image.rootfs.diff.tar.zstd",
        };
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": super::MEDIA_TYPE_DOCKER_MANIFEST,
            "config": {
                "mediaType": super::MEDIA_TYPE_DOCKER_CONFIG,
                "size": config.len(),
                "digest": config_digest,
            },
            "layers": [{"mediaType": media_type, "size": blob.size, "digest": blob.digest}],
        }))
        .map_err(|err| ImageError::Task(err.to_string()))?;
        let manifest_digest = crate::image::content::sha256_digest(&manifest);
        let chain_id = diff_id.clone();

        let _lease = self.leases.take(vec![
            blob.digest.clone(),
            chain_id.clone(),
            config_digest.clone(),
            manifest_digest.clone(),
        ]);
        {
            let _locks = self.lock_layer(&blob.digest, &chain_id).await;
            if !self.snapshots.exists(&chain_id) {
                self.commit_snapshot(pending, &chain_id).await?;
            }
            let content = self.content.clone();
            let (path, digest) = (blob.path.clone(), blob.digest.clone());
            let blobs = [
                (config_digest.clone(), config.clone()),
                (manifest_digest.clone(), manifest.clone()),
            ];
            blocking(move || {
                content.commit_spooled(&path, &digest)?;
                blobs
                    .iter()
                    .try_for_each(|(digest, data)| content.write_blob(digest, data))
            })
            .await?;
        }
        drop(spool);
        let image = Image {
            id: config_digest.clone(),
            repo_tags: tag.into_iter().collect(),
            repo_digests: Vec::new(),
            manifest_digest,
            manifest_media_type: super::MEDIA_TYPE_DOCKER_MANIFEST.to_string(),
            index_digest: None,
            layers: vec![Layer {
                digest: blob.digest,
                size: blob.size,
                media_type: media_type.to_string(),
                diff_id,
                chain_id,
            }],
            size: blob.size + config.len() as u64 + manifest.len() as u64,
            user,
            pinned: false,
            parent: None,
        };
        let image = self.record_pulled(namespace, image).await?;
        self.image_event(namespace, "import", &image.id, &image.id);
        tracing::info!(image = %image.id, tags = ?image.repo_tags, "imported image");
        Ok(image)
    }
}
