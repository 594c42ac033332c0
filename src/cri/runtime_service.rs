//! runtime.v1.RuntimeService.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_cri::v1::{
    CgroupDriver, LinuxRuntimeConfiguration, RuntimeCondition, RuntimeConfigRequest,
    RuntimeConfigResponse, RuntimeStatus, StatusRequest, StatusResponse, VersionRequest,
    VersionResponse,
};
use tonic::{Request, Response, Status};

use super::{status, CriServer, RUNTIME_API_VERSION, RUNTIME_NAME};
use crate::config;
use crate::runtime::{self, Condition, HostInfo};

pub struct Runtime(pub(super) Arc<CriServer>);

/// The version of the kubelet runtime API answered by `Version` (what containerd and
/// CRI-O answer too).
const KUBELET_API_VERSION: &str = "0.1.0";

cri_service! {
    impl k8s_cri::v1::runtime_service_server::RuntimeService as "RuntimeService" for Runtime;
    pending {
        run_pod_sandbox(RunPodSandboxRequest) -> RunPodSandboxResponse;
        stop_pod_sandbox(StopPodSandboxRequest) -> StopPodSandboxResponse;
        remove_pod_sandbox(RemovePodSandboxRequest) -> RemovePodSandboxResponse;
        pod_sandbox_status(PodSandboxStatusRequest) -> PodSandboxStatusResponse;
        list_pod_sandbox(ListPodSandboxRequest) -> ListPodSandboxResponse;
        create_container(CreateContainerRequest) -> CreateContainerResponse;
        start_container(StartContainerRequest) -> StartContainerResponse;
        stop_container(StopContainerRequest) -> StopContainerResponse;
        remove_container(RemoveContainerRequest) -> RemoveContainerResponse;
        list_containers(ListContainersRequest) -> ListContainersResponse;
        container_status(ContainerStatusRequest) -> ContainerStatusResponse;
        update_container_resources(UpdateContainerResourcesRequest) -> UpdateContainerResourcesResponse;
        reopen_container_log(ReopenContainerLogRequest) -> ReopenContainerLogResponse;
        exec_sync(ExecSyncRequest) -> ExecSyncResponse;
        exec(ExecRequest) -> ExecResponse;
        attach(AttachRequest) -> AttachResponse;
        port_forward(PortForwardRequest) -> PortForwardResponse;
        container_stats(ContainerStatsRequest) -> ContainerStatsResponse;
        list_container_stats(ListContainerStatsRequest) -> ListContainerStatsResponse;
        pod_sandbox_stats(PodSandboxStatsRequest) -> PodSandboxStatsResponse;
        list_pod_sandbox_stats(ListPodSandboxStatsRequest) -> ListPodSandboxStatsResponse;
        update_runtime_config(UpdateRuntimeConfigRequest) -> UpdateRuntimeConfigResponse;
        checkpoint_container(CheckpointContainerRequest) -> CheckpointContainerResponse;
        list_metric_descriptors(ListMetricDescriptorsRequest) -> ListMetricDescriptorsResponse;
        list_pod_sandbox_metrics(ListPodSandboxMetricsRequest) -> ListPodSandboxMetricsResponse;
    }

    async fn version(
        &self,
        _request: Request<VersionRequest>,
    ) -> Result<Response<VersionResponse>, Status> {
        Ok(Response::new(VersionResponse {
            version: KUBELET_API_VERSION.to_string(),
            runtime_name: RUNTIME_NAME.to_string(),
            runtime_version: env!("CARGO_PKG_VERSION").to_string(),
            runtime_api_version: RUNTIME_API_VERSION.to_string(),
        }))
    }

    async fn status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let server = self.0.clone();
        // The store probe does blocking I/O: keep it off the async workers.
        let runtime_ready = tokio::task::spawn_blocking(move || {
            runtime::runtime_condition(&server.config.root, &server.config.state, &server.store)
        })
        .await
        .map_err(|err| Status::internal(format!("runtime readiness check failed: {err}")))?;
        let conditions = vec![
            cri_condition("RuntimeReady", runtime_ready),
            cri_condition("NetworkReady", runtime::network_condition()),
        ];
        let info = if request.get_ref().verbose {
            verbose_info(&self.0)?
        } else {
            HashMap::new()
        };
        Ok(Response::new(StatusResponse {
            status: Some(RuntimeStatus { conditions }),
            info,
            runtime_handlers: Vec::new(),
            features: None,
        }))
    }

    async fn runtime_config(
        &self,
        _request: Request<RuntimeConfigRequest>,
    ) -> Result<Response<RuntimeConfigResponse>, Status> {
        let cgroup_driver = match self.0.config.cgroup_driver {
            config::CgroupDriver::Cgroupfs => CgroupDriver::Cgroupfs,
        };
        Ok(Response::new(RuntimeConfigResponse {
            linux: Some(LinuxRuntimeConfiguration {
                cgroup_driver: cgroup_driver as i32,
            }),
        }))
    }

    type GetContainerEventsStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<k8s_cri::v1::ContainerEventResponse, Status>> + Send>,
    >;

    async fn get_container_events(
        &self,
        _request: Request<k8s_cri::v1::GetEventsRequest>,
    ) -> Result<Response<Self::GetContainerEventsStream>, Status> {
        Err(status::not_implemented("RuntimeService", "GetContainerEvents"))
    }
}

fn cri_condition(kind: &str, condition: Condition) -> RuntimeCondition {
    RuntimeCondition {
        r#type: kind.to_string(),
        status: condition.ready,
        reason: condition.reason,
        message: condition.message,
    }
}

/// `Status(verbose)` info: each value is JSON, as the CRI asks. `config` is the
/// effective daemon configuration (what containerd and CRI-O return under that key).
fn verbose_info(server: &CriServer) -> Result<HashMap<String, String>, Status> {
    let to_json = |value: serde_json::Value| value.to_string();
    let schema_version = server.store.schema_version().map_err(status::from_store)?;
    Ok(HashMap::from([
        ("config".to_string(), to_json(server.config.to_json())),
        (
            "host".to_string(),
            to_json(serde_json::to_value(HostInfo::probe()).unwrap_or_default()),
        ),
        (
            "store".to_string(),
            to_json(serde_json::json!({
                "path": server.store.path(),
                "schemaVersion": schema_version,
            })),
        ),
    ]))
}
