//! A tonic channel to a CRI endpoint on a UNIX socket, for the `wharf` CLI, tests and
//! benchmarks (with `RuntimeServiceClient::new` / `ImageServiceClient::new` on top), and
//! the calls the `wharf` CLI makes, answered in plain types.

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{StatusRequest, VersionRequest};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// Connects to the CRI socket at `path` (a plain path or a `unix://` URL).
pub async fn connect(path: impl AsRef<Path>) -> Result<Channel, tonic::transport::Error> {
    let path: PathBuf = match path
        .as_ref()
        .to_str()
        .and_then(|s| s.strip_prefix("unix://"))
    {
        Some(stripped) => PathBuf::from(stripped),
        None => path.as_ref().to_path_buf(),
    };
    // The URI is required by the API but unused: every connection goes to the socket.
    Endpoint::from_static("http://wharf.invalid")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
}

/// What `Version` answers, in plain types (for the `wharf` CLI).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonVersion {
    pub runtime_name: String,
    pub runtime_version: String,
    pub runtime_api_version: String,
}

/// One readiness condition of `Status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonCondition {
    pub kind: String,
    pub ready: bool,
    pub reason: String,
    pub message: String,
}

/// What a verbose `Status` answers, in plain types (for the `wharf` CLI).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonStatus {
    pub conditions: Vec<DaemonCondition>,
    /// The verbose info: key -> JSON text.
    pub info: std::collections::HashMap<String, String>,
}

/// Asks the daemon at `channel` for its version.
pub async fn version(channel: Channel) -> Result<DaemonVersion, tonic::Status> {
    let version = RuntimeServiceClient::new(channel)
        .version(VersionRequest::default())
        .await?
        .into_inner();
    Ok(DaemonVersion {
        runtime_name: version.runtime_name,
        runtime_version: version.runtime_version,
        runtime_api_version: version.runtime_api_version,
    })
}

/// Asks the daemon at `channel` for its readiness conditions and verbose info.
pub async fn status(channel: Channel) -> Result<DaemonStatus, tonic::Status> {
    let response = RuntimeServiceClient::new(channel)
        .status(StatusRequest { verbose: true })
        .await?
        .into_inner();
    Ok(DaemonStatus {
        conditions: response
            .status
            .map(|s| s.conditions)
            .unwrap_or_default()
            .into_iter()
            .map(|c| DaemonCondition {
                kind: c.r#type,
                ready: c.status,
                reason: c.reason,
                message: c.message,
            })
            .collect(),
        info: response.info,
    })
}
