//! Retries: which failures are transient (connection failures, 408, 429, 5xx), the
//! exponential backoff, and running an operation with a session, retried on the origin
//! (a mirror gets one attempt) and with a refused cached token renegotiated once.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use oci_client::errors::{OciDistributionError, OciEnvelope, OciErrorCode};
use tracing::debug;

use super::auth::{Access, Credentials, Session};
use super::endpoint::Endpoint;
use super::error::{error_chain, truncate};
use super::manifest::strings;
use super::{RegistryClient, RegistryError, MANIFEST_MEDIA_TYPES};

/// An error plus whether trying again may help.
pub(super) struct Failure {
    pub(super) error: RegistryError,
    transient: bool,
}

impl Failure {
    pub(super) fn fatal(error: RegistryError) -> Failure {
        Failure {
            error,
            transient: false,
        }
    }

    pub(super) fn transient(error: RegistryError) -> Failure {
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

impl RegistryClient {
    pub(super) fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(1).min(10);
        let max = Duration::from_secs(10);
        self.inner
            .options
            .retry_base_delay
            .checked_mul(factor)
            .map_or(max, |delay| delay.min(max))
    }

    pub(super) fn request_failure(
        endpoint: &Endpoint,
        what: &str,
        err: &reqwest::Error,
    ) -> Failure {
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

    /// Runs `op` with a session for `endpoint`, retrying transient failures with backoff
    /// (the origin only: a mirror gets one attempt) and renegotiating a cached token once
    /// when the registry refuses it.
    pub(super) async fn with_session<T, F, Fut>(
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
pub(super) fn status_failure(
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
pub(super) fn oci_failure(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::registry::tests::client;

    #[test]
    fn backoff_doubles() {
        let c = client(&[], &[]);
        assert_eq!(c.backoff(1), Duration::from_millis(200));
        assert_eq!(c.backoff(2), Duration::from_millis(400));
        assert_eq!(c.backoff(3), Duration::from_millis(800));
        assert_eq!(c.backoff(30), Duration::from_secs(10));
    }
}
