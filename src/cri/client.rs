//! A tonic channel to a CRI endpoint on a UNIX socket, for the `wharf` CLI, tests and
//! benchmarks (with `RuntimeServiceClient::new` / `ImageServiceClient::new` on top).

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
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
