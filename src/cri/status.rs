//! Core errors to gRPC status codes: the one place this mapping lives.

use tonic::{Code, Status};

use crate::cni::bridge::{BridgeError, IpamError};
use crate::cni::CniError;
use crate::image::content::ContentError;
use crate::image::registry::RegistryError;
use crate::image::snapshot::SnapshotError;
use crate::image::ImageError;
use crate::runtime::monitor::MonitorError;
use crate::runtime::oci::OciError;
use crate::runtime::RuntimeError;
use crate::store::StoreError;

/// The answer for an RPC whose implementation has not landed yet.
pub fn not_implemented(service: &str, rpc: &str) -> Status {
    Status::unimplemented(format!(
        "runtime.v1.{service}/{rpc} is not implemented by wharf {} yet",
        env!("CARGO_PKG_VERSION")
    ))
}

pub fn from_store(err: StoreError) -> Status {
    Status::new(store_code(&err), err.to_string())
}

fn store_code(err: &StoreError) -> Code {
    match err {
        StoreError::NameTaken { .. } | StoreError::IdTaken { .. } => Code::AlreadyExists,
        StoreError::NewerSchema { .. } => Code::FailedPrecondition,
        StoreError::Open { .. }
        | StoreError::Migration { .. }
        | StoreError::Corrupt { .. }
        | StoreError::Encode { .. }
        | StoreError::Sqlite(_) => Code::Internal,
    }
}

pub fn from_image(err: ImageError) -> Status {
    let code = match &err {
        ImageError::Registry(registry) => registry_code(registry),
        ImageError::Content(content) => match content {
            ContentError::InvalidDigest(_) => Code::InvalidArgument,
            ContentError::NotFound(_) => Code::NotFound,
            ContentError::DigestMismatch { .. } | ContentError::SizeMismatch { .. } => {
                Code::DataLoss
            }
            ContentError::Io { .. } => Code::Internal,
        },
        ImageError::NotFound(_) => Code::NotFound,
        // A configured limit: a quota, as RESOURCE_EXHAUSTED means; kubelet reports it
        // as ErrImagePull with the message, like any pull failure.
        err if err.is_limit() => Code::ResourceExhausted,
        ImageError::InvalidImage { .. } | ImageError::Unpack { .. } => Code::FailedPrecondition,
        ImageError::DiffIdMismatch { .. } => Code::DataLoss,
        ImageError::Store(store) => store_code(store),
        ImageError::Snapshot(_) | ImageError::Task(_) => Code::Internal,
        ImageError::TooManyLayers { .. } => Code::ResourceExhausted,
    };
    Status::new(code, bounded_message(err.to_string()))
}

fn registry_code(err: &RegistryError) -> Code {
    match err {
        RegistryError::InvalidReference { .. }
        | RegistryError::InvalidDigest { .. }
        | RegistryError::InvalidPlatform { .. } => Code::InvalidArgument,
        RegistryError::NotFound { .. } | RegistryError::PlatformNotFound { .. } => Code::NotFound,
        RegistryError::Unauthorized { .. } => Code::Unauthenticated,
        // Policy refusals (a redirect or token realm wharf will not follow): retrying
        // cannot help until the registry or the configuration changes.
        RegistryError::UnsupportedMediaType { .. }
        | RegistryError::InvalidManifest { .. }
        | RegistryError::Redirect { .. }
        | RegistryError::InsecureRealm { .. }
        | RegistryError::Registry { .. } => Code::FailedPrecondition,
        RegistryError::DigestMismatch { .. } | RegistryError::SizeMismatch { .. } => Code::DataLoss,
        RegistryError::Transport { .. } => Code::Unavailable,
        RegistryError::BlobFile { .. } => Code::Internal,
        RegistryError::Endpoints { cause, .. } => registry_code(cause),
    }
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

/// Plugin failures stay Unknown (the message carries the plugin's CNI code); what the
/// built-in bridge can tell apart gets its own code.
fn network_code(err: &CniError) -> Code {
    match err {
        CniError::NoNetwork { .. } => Code::FailedPrecondition,
        CniError::Bridge(bridge) => match bridge.as_ref() {
            BridgeError::InvalidRequest { .. } => Code::InvalidArgument,
            BridgeError::PortInUse { .. } => Code::AlreadyExists,
            BridgeError::Ipam {
                source: IpamError::Exhausted { .. },
                ..
            }
            | BridgeError::NoSubnet { .. } => Code::ResourceExhausted,
            BridgeError::Ipam { .. } => Code::InvalidArgument,
            BridgeError::Store { source, .. } => store_code(source),
            BridgeError::NotAttached { .. } => Code::NotFound,
            BridgeError::Netlink { .. }
            | BridgeError::Internal { .. }
            | BridgeError::Firewall { .. }
            | BridgeError::Sysctl { .. } => Code::Internal,
        },
        _ => Code::Unknown,
    }
}

pub fn from_runtime(err: RuntimeError) -> Status {
    let code = match &err {
        RuntimeError::InvalidArgument { .. } => Code::InvalidArgument,
        RuntimeError::NotFound(_) | RuntimeError::ImageNotPulled(_) => Code::NotFound,
        RuntimeError::AlreadyExists(_) => Code::AlreadyExists,
        RuntimeError::FailedPrecondition(_) => Code::FailedPrecondition,
        RuntimeError::DeadlineExceeded(_) => Code::DeadlineExceeded,
        RuntimeError::Spec(spec) if spec.is_invalid_argument() => Code::InvalidArgument,
        RuntimeError::Spec(spec) if spec.is_host_limit() => Code::FailedPrecondition,
        RuntimeError::Store(store) => store_code(store),
        RuntimeError::Monitor(MonitorError::Timeout(_)) => Code::DeadlineExceeded,
        // What a config or the host can get wrong is refused before the runtime runs
        // (InvalidArgument, FailedPrecondition); a runtime failure is Internal, with
        // the runtime's whole cause chain in the message.
        RuntimeError::Monitor(MonitorError::Create(_)) => Code::Internal,
        RuntimeError::Oci(OciError::Timeout { .. }) => Code::DeadlineExceeded,
        RuntimeError::Oci(_) => Code::Internal,
        RuntimeError::Snapshot(SnapshotError::NotFound(_)) => Code::NotFound,
        RuntimeError::Network(network) => network_code(network),
        RuntimeError::Spec(_)
        | RuntimeError::Namespace(_)
        | RuntimeError::Snapshot(_)
        | RuntimeError::Monitor(_)
        | RuntimeError::Io { .. }
        | RuntimeError::Internal(_) => Code::Internal,
    };
    Status::new(code, err.to_string())
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
    fn not_implemented_names_the_rpc() {
        let status = not_implemented("RuntimeService", "RunPodSandbox");
        assert_eq!(status.code(), Code::Unimplemented);
        assert!(status
            .message()
            .contains("runtime.v1.RuntimeService/RunPodSandbox"));
    }
}
