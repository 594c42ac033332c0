//! The registry client's error type, and how errors are reported: scrubbed of
//! credentials, bounded when they echo a registry, the most telling one when every
//! endpoint failed.

use std::path::PathBuf;

use super::auth::Credentials;
use crate::image::platform::PlatformError;

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

impl crate::error::HasKind for RegistryError {
    fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind;
        match self {
            RegistryError::InvalidReference { .. }
            | RegistryError::InvalidDigest { .. }
            | RegistryError::InvalidPlatform { .. } => ErrorKind::InvalidArgument,
            RegistryError::NotFound { .. } | RegistryError::PlatformNotFound { .. } => {
                ErrorKind::NotFound
            }
            RegistryError::Unauthorized { .. } => ErrorKind::Unauthenticated,
            // Policy refusals (a redirect or token realm wharf will not follow): retrying
            // cannot help until the registry or the configuration changes.
            RegistryError::UnsupportedMediaType { .. }
            | RegistryError::InvalidManifest { .. }
            | RegistryError::Redirect { .. }
            | RegistryError::InsecureRealm { .. }
            | RegistryError::Registry { .. } => ErrorKind::FailedPrecondition,
            RegistryError::DigestMismatch { .. } | RegistryError::SizeMismatch { .. } => {
                ErrorKind::DataLoss
            }
            RegistryError::Transport { .. } => ErrorKind::Unavailable,
            RegistryError::BlobFile { .. } => ErrorKind::Internal,
            RegistryError::Endpoints { cause, .. } => cause.kind(),
        }
    }
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
    pub(super) fn scrub(self, credentials: &Credentials) -> RegistryError {
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

/// The error to report when every endpoint failed (in order: mirrors, then the
/// registry): the registry's own answer when it gave one, else the first mirror's answer,
/// and only when no endpoint answered at all a failure to reach one. With more than one
/// endpoint, the error also says what each one answered.
pub(super) fn most_specific(failures: Vec<(String, RegistryError)>) -> Option<RegistryError> {
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

/// An error and its sources, for transport messages ("error sending request: ...:
/// connection refused").
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
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

pub(super) fn truncate(s: String, max: usize) -> String {
    if s.len() > max {
        crate::image::bounded(&s, max)
    } else {
        s
    }
}

/// Text taken from a registry (a URL, a header) as errors and logs may show it.
pub(super) fn echo(s: &str) -> String {
    crate::image::bounded(s, crate::image::MAX_ECHO)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
