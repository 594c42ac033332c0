//! CreateContainer, StartContainer, StopContainer, RemoveContainer, ListContainers,
//! ContainerStatus, UpdateContainerResources, ReopenContainerLog: CRI messages to
//! `Runtime` container calls, and container records to CRI messages. The work is in
//! `crate::runtime` (container.rs).

use std::collections::HashMap;

use k8s_cri::v1 as cri;
use prost::Message;
use tonic::Status;

use super::records::{container_config, pod_list_fields};
use super::status::{self, from_runtime};
use super::{labels_match, CriServer, NAMESPACE};
use crate::runtime::{ContainerRecord, ContainerState, RuntimeError};

fn container_state(state: ContainerState) -> i32 {
    match state {
        ContainerState::Created | ContainerState::Creating => {
            cri::ContainerState::ContainerCreated as i32
        }
        ContainerState::Running => cri::ContainerState::ContainerRunning as i32,
        ContainerState::Exited => cri::ContainerState::ContainerExited as i32,
        ContainerState::Unknown => cri::ContainerState::ContainerUnknown as i32,
    }
}

pub(super) async fn create_container(
    server: &CriServer,
    request: cri::CreateContainerRequest,
) -> Result<cri::CreateContainerResponse, Status> {
    let config = request
        .config
        .ok_or_else(|| Status::invalid_argument("config: is missing"))?;
    // The container's name is made from its pod's metadata too.
    let pod = server
        .runtime
        .find_pod(NAMESPACE, &request.pod_sandbox_id)
        .ok_or_else(|| {
            from_runtime(RuntimeError::NotFound(format!(
                "pod sandbox {:?}",
                request.pod_sandbox_id
            )))
        })?;
    let pod_meta = pod_list_fields(&pod)
        .map_err(|err| status::from_error(&err))?
        .metadata
        .unwrap_or_default();
    let spec = super::convert::container_spec(&config, &pod.id, &pod_meta).map_err(from_runtime)?;
    let container_id = server
        .runtime
        .create_container(NAMESPACE, &pod.id, spec, config.encode_to_vec())
        .await
        .map_err(from_runtime)?;
    Ok(cri::CreateContainerResponse { container_id })
}

pub(super) async fn start_container(
    server: &CriServer,
    request: cri::StartContainerRequest,
) -> Result<cri::StartContainerResponse, Status> {
    server
        .runtime
        .start_container(NAMESPACE, &request.container_id)
        .await
        .map_err(from_runtime)?;
    Ok(cri::StartContainerResponse {})
}

pub(super) async fn stop_container(
    server: &CriServer,
    request: cri::StopContainerRequest,
) -> Result<cri::StopContainerResponse, Status> {
    server
        .runtime
        .stop_container(NAMESPACE, &request.container_id, request.timeout)
        .await
        .map_err(from_runtime)?;
    Ok(cri::StopContainerResponse {})
}

pub(super) async fn remove_container(
    server: &CriServer,
    request: cri::RemoveContainerRequest,
) -> Result<cri::RemoveContainerResponse, Status> {
    server
        .runtime
        .remove_container(NAMESPACE, &request.container_id)
        .await
        .map_err(from_runtime)?;
    Ok(cri::RemoveContainerResponse {})
}

fn image_spec(container: &ContainerRecord) -> cri::ImageSpec {
    cri::ImageSpec {
        image: container.image.clone(),
        ..Default::default()
    }
}

pub(super) fn list_containers(
    server: &CriServer,
    request: cri::ListContainersRequest,
) -> cri::ListContainersResponse {
    let filter = request.filter.unwrap_or_default();
    let mut fields = server.container_fields.hold("container");
    let mut containers = Vec::with_capacity(fields.expected());
    let mut order = Vec::with_capacity(fields.expected());
    server.runtime.for_each_container(NAMESPACE, |c| {
        fields.visit();
        if c.state == ContainerState::Creating
            || (!filter.id.is_empty() && !c.id.starts_with(&filter.id))
            || (!filter.pod_sandbox_id.is_empty() && !c.pod_id.starts_with(&filter.pod_sandbox_id))
            || filter
                .state
                .as_ref()
                .is_some_and(|s| s.state != container_state(c.state))
        {
            return;
        }
        let config = match fields.get(&c.id, &c.extension) {
            Ok(config) => config,
            Err(err) => {
                tracing::error!(container = %c.id, "ListContainers skips it: {err}");
                return;
            }
        };
        if !labels_match(&config.labels, &filter.label_selector) {
            return;
        }
        order.push((c.created_at, containers.len()));
        containers.push(cri::Container {
            id: c.id.clone(),
            pod_sandbox_id: c.pod_id.clone(),
            metadata: config.metadata.clone(),
            image: Some(image_spec(c)),
            image_ref: c.image_ref.clone(),
            state: container_state(c.state),
            created_at: c.created_at,
            labels: config.labels.clone(),
            annotations: config.annotations.clone(),
            image_id: c.image_id.clone(),
        });
    });
    fields.done(|| server.runtime.container_ids(NAMESPACE));
    cri::ListContainersResponse {
        containers: super::ordered_by_key(containers, order),
    }
}

pub(super) fn container_status(
    server: &CriServer,
    request: cri::ContainerStatusRequest,
) -> Result<cri::ContainerStatusResponse, Status> {
    let c = server
        .runtime
        .find_container(NAMESPACE, &request.container_id)
        .ok_or_else(|| {
            Status::not_found(format!("container {:?} not found", request.container_id))
        })?;
    let config = container_config(&c).map_err(|err| status::from_error(&err))?;
    let mounts = config
        .mounts
        .iter()
        .map(|m| cri::Mount {
            container_path: m.container_path.clone(),
            host_path: m.host_path.clone(),
            readonly: m.readonly,
            selinux_relabel: m.selinux_relabel,
            propagation: m.propagation,
            ..Default::default()
        })
        .collect();
    // Resources as UpdateContainerResources last set them.
    let resources = c.spec.resources.as_ref().map(super::convert::cri_resources);
    let status = cri::ContainerStatus {
        id: c.id.clone(),
        metadata: config.metadata.clone(),
        state: container_state(c.state),
        created_at: c.created_at,
        started_at: c.started_at,
        finished_at: c.finished_at,
        exit_code: c.exit_code,
        image: Some(image_spec(&c)),
        image_ref: c.image_ref.clone(),
        reason: c.reason.clone(),
        message: c.message.clone(),
        labels: config.labels.clone(),
        annotations: config.annotations.clone(),
        mounts,
        log_path: c.log_path.clone(),
        resources: resources.map(|linux| cri::ContainerResources {
            linux: Some(linux),
            ..Default::default()
        }),
        image_id: c.image_id.clone(),
        user: None,
    };
    let info = if request.verbose {
        let info = serde_json::json!({
            "id": c.id,
            "sandboxID": c.pod_id,
            "runtimeHandler": c.runtime_handler,
            "bundle": c.bundle,
            "pid": c.monitor.map(|m| m.pid),
            "monitorPid": c.monitor.map(|m| m.monitor_pid),
            "snapshotChain": c.chain_ids,
        });
        HashMap::from([("info".to_string(), info.to_string())])
    } else {
        HashMap::new()
    };
    Ok(cri::ContainerStatusResponse {
        status: Some(status),
        info,
    })
}

pub(super) async fn update_container_resources(
    server: &CriServer,
    request: cri::UpdateContainerResourcesRequest,
) -> Result<cri::UpdateContainerResourcesResponse, Status> {
    server
        .runtime
        .update_resources(
            NAMESPACE,
            &request.container_id,
            request.linux.as_ref().map(super::convert::resources),
        )
        .await
        .map_err(from_runtime)?;
    Ok(cri::UpdateContainerResourcesResponse {})
}

pub(super) async fn reopen_container_log(
    server: &CriServer,
    request: cri::ReopenContainerLogRequest,
) -> Result<cri::ReopenContainerLogResponse, Status> {
    server
        .runtime
        .reopen_log(NAMESPACE, &request.container_id)
        .await
        .map_err(from_runtime)?;
    Ok(cri::ReopenContainerLogResponse {})
}
