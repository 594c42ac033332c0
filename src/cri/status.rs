//! Core errors to gRPC status codes: the one place this mapping lives.

use tonic::{Code, Status};

use crate::store::StoreError;

/// The answer for an RPC whose implementation has not landed yet.
pub fn not_implemented(service: &str, rpc: &str) -> Status {
    Status::unimplemented(format!(
        "runtime.v1.{service}/{rpc} is not implemented by wharf {} yet",
        env!("CARGO_PKG_VERSION")
    ))
}

pub fn from_store(err: StoreError) -> Status {
    let code = match &err {
        StoreError::NameTaken { .. } | StoreError::IdTaken { .. } => Code::AlreadyExists,
        StoreError::NewerSchema { .. } => Code::FailedPrecondition,
        StoreError::Open { .. }
        | StoreError::Migration { .. }
        | StoreError::Corrupt { .. }
        | StoreError::Encode { .. }
        | StoreError::Sqlite(_) => Code::Internal,
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
