//! Core errors to gRPC status codes: the one place this mapping lives. Every core error
//! says what kind of failure it is ([`HasKind`]); each kind has one code.

use tonic::{Code, Status};

use crate::error::{ErrorKind, HasKind};
use crate::image::ImageError;
use crate::runtime::RuntimeError;
use crate::store::StoreError;

/// The answer for an RPC whose implementation has not landed yet.
pub fn not_implemented(service: &str, rpc: &str) -> Status {
    Status::unimplemented(format!(
        "runtime.v1.{service}/{rpc} is not implemented by wharf {} yet",
        env!("CARGO_PKG_VERSION")
    ))
}

/// The gRPC code of each kind of failure.
pub fn code(kind: ErrorKind) -> Code {
    match kind {
        ErrorKind::InvalidArgument => Code::InvalidArgument,
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::AlreadyExists => Code::AlreadyExists,
        ErrorKind::FailedPrecondition => Code::FailedPrecondition,
        ErrorKind::ResourceExhausted => Code::ResourceExhausted,
        ErrorKind::PermissionDenied => Code::PermissionDenied,
        ErrorKind::DeadlineExceeded => Code::DeadlineExceeded,
        ErrorKind::Unauthenticated => Code::Unauthenticated,
        ErrorKind::DataLoss => Code::DataLoss,
        ErrorKind::Unavailable => Code::Unavailable,
        ErrorKind::Internal => Code::Internal,
        ErrorKind::Unknown => Code::Unknown,
    }
}

/// The status for any core error: its kind's code and its message (bounded).
pub fn from_error(err: &impl HasKind) -> Status {
    Status::new(code(err.kind()), bounded_message(err.to_string()))
}

pub fn from_store(err: StoreError) -> Status {
    from_error(&err)
}

pub fn from_image(err: ImageError) -> Status {
    from_error(&err)
}

pub fn from_runtime(err: RuntimeError) -> Status {
    from_error(&err)
}

/// Longest status message sent: input echoed in errors is bounded where it is taken,
/// and this caps the whole (far below gRPC's header limits).
const MAX_MESSAGE: usize = 4096;

fn bounded_message(message: String) -> String {
    if message.len() > MAX_MESSAGE {
        crate::image::bounded(&message, MAX_MESSAGE)
    } else {
        message
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Kind;

    #[test]
    fn taken_names_are_already_exists() {
        let status = from_store(StoreError::NameTaken {
            namespace: "k8s.io".into(),
            kind: Kind::Container,
            name: "web".into(),
        });
        assert_eq!(status.code(), Code::AlreadyExists);
        assert!(status.message().contains("web"));
    }

    #[test]
    fn kinds_nested_in_runtime_errors_keep_their_code() {
        use crate::cni::bridge::{BridgeError, IpamError};
        let exhausted =
            RuntimeError::Network(crate::cni::CniError::Bridge(Box::new(BridgeError::Ipam {
                network: "wharf0".into(),
                source: IpamError::Exhausted {
                    subnet: "10.88.0.0/30".parse().expect("subnet"),
                    used: 2,
                },
            })));
        assert_eq!(from_runtime(exhausted).code(), Code::ResourceExhausted);
        let taken = RuntimeError::Store(StoreError::NameTaken {
            namespace: "k8s.io".into(),
            kind: Kind::Pod,
            name: "web".into(),
        });
        assert_eq!(from_runtime(taken).code(), Code::AlreadyExists);
        let long = RuntimeError::Internal("x".repeat(100_000));
        assert!(from_runtime(long).message().len() <= MAX_MESSAGE + 32);
    }

    #[test]
    fn not_implemented_names_the_rpc() {
        let status = not_implemented("RuntimeService", "RunPodSandbox");
        assert_eq!(status.code(), Code::Unimplemented);
        assert!(status
            .message()
            .contains("runtime.v1.RuntimeService/RunPodSandbox"));
    }
}
