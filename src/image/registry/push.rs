//! Pushes: for each blob, skip it if the repository has it, else mount it from another
//! repository of the registry, else upload it (monolithically or in chunks); then the
//! manifest.

use bytes::Bytes;
use futures_util::stream::{self, StreamExt, TryStreamExt};
use oci_client::errors::OciDistributionError;
use oci_client::Reference;
use tracing::debug;

use super::auth::{Access, Credentials};
use super::endpoint::{mirror_key, Endpoint};
use super::manifest::{parse_manifest, sha256_digest, strings};
use super::reference::{check_path_component, valid_digest, DOCKER_HUB};
use super::retry::{oci_failure, Failure};
use super::{ImageReference, PushBlob, RegistryClient, RegistryError, MANIFEST_MEDIA_TYPES};
use crate::image::progress::{Outcome, ProgressSink};

impl RegistryClient {
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

    #[allow(clippy::too_many_arguments)]
    pub(super) async fn push_inner(
        &self,
        target: &ImageReference,
        credentials: &Credentials,
        manifest: &[u8],
        manifest_media_type: &str,
        blobs: &[PushBlob],
        mount_from: &[String],
        progress: &ProgressSink,
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
            .map(|i| {
                self.push_blob(
                    &endpoint,
                    target,
                    credentials,
                    &access,
                    &blobs[i],
                    &sources,
                    progress,
                )
            })
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

    #[allow(clippy::too_many_arguments)]
    async fn push_blob(
        &self,
        endpoint: &Endpoint,
        target: &ImageReference,
        credentials: &Credentials,
        access: &Access,
        blob: &PushBlob,
        sources: &[String],
        progress: &ProgressSink,
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
            progress.done(digest, Outcome::Exists);
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
                    progress.done(
                        digest,
                        Outcome::Mounted {
                            from: source.clone(),
                        },
                    );
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
                let mut transferred = progress.transfer(digest, size);
                let body = tokio_util::io::ReaderStream::with_capacity(file, chunk_size)
                    .inspect_ok(move |chunk| transferred.add(chunk.len() as u64))
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
        progress.done(digest, Outcome::Pushed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::registry::tests::{parse, HEX};

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
}
