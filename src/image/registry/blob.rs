//! Verified, resumable blob downloads: the size checked as the stream goes and the
//! sha256 at the end, an interrupted download resumed with a `Range` request.

use bytes::Bytes;
use futures_util::stream::{self, BoxStream, StreamExt};
use sha2::{Digest as _, Sha256};
use tracing::debug;

use super::auth::{Access, Credentials, Session};
use super::endpoint::Endpoint;
use super::error::{error_chain, truncate};
use super::redirect::{read_capped, unfollowed_redirect};
use super::retry::{status_failure, Failure};
use super::{ImageReference, RegistryClient, RegistryError};

impl RegistryClient {
    /// Opens a blob at `offset`: the byte stream, its announced length and whether the
    /// registry honoured the range (206) or sent the whole blob (200). Redirects (to a
    /// CDN, typically) are followed as [`check_redirect`](super::redirect::check_redirect)
    /// allows; the registry's `Authorization` header never goes to another host.
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
}

struct OpenedBlob {
    stream: BoxStream<'static, Result<Bytes, std::io::Error>>,
    length: Option<u64>,
    partial: bool,
}

pub(super) struct BlobDownload {
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
    pub(super) fn new(
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
    pub(super) async fn open(mut self) -> Result<BlobDownload, RegistryError> {
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

    pub(super) fn into_stream(self) -> BoxStream<'static, Result<Bytes, RegistryError>> {
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
