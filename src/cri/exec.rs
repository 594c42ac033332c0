//! ExecSync: a command run in a container to completion, its output and exit code in
//! the response (the work is `Runtime::exec_sync`). Exec, Attach and PortForward answer
//! with a one-time URL on the streaming server (src/streaming/), as containerd and
//! CRI-O do; the container (or pod) is checked now, so a wrong ID fails the RPC rather
//! than the stream.

use k8s_cri::v1 as cri;
use tonic::Status;

use super::status::{from_error, from_runtime};
use super::{CriServer, NAMESPACE};
use crate::runtime::PodState;
use crate::streaming::session::StreamRequest;

pub(super) fn exec(
    server: &CriServer,
    request: cri::ExecRequest,
) -> Result<cri::ExecResponse, Status> {
    let container = server
        .runtime
        .running_container(NAMESPACE, &request.container_id)
        .map_err(from_runtime)?;
    let url = server
        .streaming
        .issue(StreamRequest::Exec {
            namespace: NAMESPACE.to_string(),
            container_id: container.id,
            cmd: request.cmd,
            stdin: request.stdin,
            stdout: request.stdout,
            stderr: request.stderr,
            tty: request.tty,
        })
        .map_err(|err| from_error(&err))?;
    Ok(cri::ExecResponse { url })
}

pub(super) fn attach(
    server: &CriServer,
    request: cri::AttachRequest,
) -> Result<cri::AttachResponse, Status> {
    let container = server
        .runtime
        .running_container(NAMESPACE, &request.container_id)
        .map_err(from_runtime)?;
    let url = server
        .streaming
        .issue(StreamRequest::Attach {
            namespace: NAMESPACE.to_string(),
            container_id: container.id,
            stdin: request.stdin,
            stdout: request.stdout,
            stderr: request.stderr,
            tty: request.tty,
        })
        .map_err(|err| from_error(&err))?;
    Ok(cri::AttachResponse { url })
}

pub(super) fn port_forward(
    server: &CriServer,
    request: cri::PortForwardRequest,
) -> Result<cri::PortForwardResponse, Status> {
    let pod = server
        .runtime
        .find_pod(NAMESPACE, &request.pod_sandbox_id)
        .ok_or_else(|| {
            Status::not_found(format!(
                "pod sandbox {:?} not found",
                request.pod_sandbox_id
            ))
        })?;
    if pod.state != PodState::Ready {
        return Err(Status::failed_precondition(format!(
            "pod sandbox {} is not ready (state {:?})",
            pod.id, pod.state
        )));
    }
    // The ports are the client's to name on the stream (kubelet ignores this list
    // too).
    let url = server
        .streaming
        .issue(StreamRequest::PortForward {
            namespace: NAMESPACE.to_string(),
            pod_id: pod.id,
        })
        .map_err(|err| from_error(&err))?;
    Ok(cri::PortForwardResponse { url })
}

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
