//! ExecSync: a command run in a container to completion, its output and exit code in
//! the response (the work is `Runtime::exec_sync`). Exec, Attach and PortForward, which
//! answer with a streaming URL, belong here once the streaming server lands.

use k8s_cri::v1 as cri;
use tonic::Status;

use super::status::from_runtime;
use super::{CriServer, NAMESPACE};

pub(super) async fn exec_sync(
    server: &CriServer,
    request: cri::ExecSyncRequest,
) -> Result<cri::ExecSyncResponse, Status> {
    let output = server
        .runtime
        .exec_sync(
            NAMESPACE,
            &request.container_id,
            request.cmd,
            request.timeout,
        )
        .await
        .map_err(from_runtime)?;
    Ok(cri::ExecSyncResponse {
        stdout: output.stdout,
        stderr: output.stderr,
        exit_code: output.exit_code,
    })
}
