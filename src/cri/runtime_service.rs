//! runtime.v1.RuntimeService.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_cri::v1::{
    CgroupDriver, LinuxRuntimeConfiguration, RuntimeCondition, RuntimeConfigRequest,
    RuntimeConfigResponse, RuntimeStatus, StatusRequest, StatusResponse, VersionRequest,
    VersionResponse,
};
use tonic::{Request, Response, Status};

use super::{status, workloads, CriServer, NAMESPACE, RUNTIME_API_VERSION, RUNTIME_NAME};
use crate::config;
use crate::runtime::{self, Condition, HostInfo};
use k8s_cri::v1 as cri;

pub struct Runtime(pub(super) Arc<CriServer>);

/// The version of the kubelet runtime API answered by `Version` (what containerd and
/// CRI-O answer too).
const KUBELET_API_VERSION: &str = "0.1.0";

cri_service! {
    impl k8s_cri::v1::runtime_service_server::RuntimeService as "RuntimeService" for Runtime;
    pending {
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

    async fn run_pod_sandbox(
        &self,
        request: Request<cri::RunPodSandboxRequest>,
    ) -> Result<Response<cri::RunPodSandboxResponse>, Status> {
        workloads::run_pod_sandbox(&self.0, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn stop_pod_sandbox(
        &self,
        request: Request<cri::StopPodSandboxRequest>,
    ) -> Result<Response<cri::StopPodSandboxResponse>, Status> {
        workloads::stop_pod_sandbox(&self.0, &request.get_ref().pod_sandbox_id).await?;
        Ok(Response::new(cri::StopPodSandboxResponse {}))
    }

    async fn remove_pod_sandbox(
        &self,
        request: Request<cri::RemovePodSandboxRequest>,
    ) -> Result<Response<cri::RemovePodSandboxResponse>, Status> {
        workloads::remove_pod_sandbox(&self.0, &request.get_ref().pod_sandbox_id).await?;
        Ok(Response::new(cri::RemovePodSandboxResponse {}))
    }

    async fn pod_sandbox_status(
        &self,
        request: Request<cri::PodSandboxStatusRequest>,
    ) -> Result<Response<cri::PodSandboxStatusResponse>, Status> {
        workloads::pod_sandbox_status(&self.0, request.get_ref()).map(Response::new)
    }

    async fn list_pod_sandbox(
        &self,
        request: Request<cri::ListPodSandboxRequest>,
    ) -> Result<Response<cri::ListPodSandboxResponse>, Status> {
        Ok(Response::new(workloads::list_pod_sandbox(
            &self.0,
            request.into_inner().filter,
        )))
    }

    async fn create_container(
        &self,
        request: Request<cri::CreateContainerRequest>,
    ) -> Result<Response<cri::CreateContainerResponse>, Status> {
        workloads::create_container(&self.0, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn start_container(
        &self,
        request: Request<cri::StartContainerRequest>,
    ) -> Result<Response<cri::StartContainerResponse>, Status> {
        self.0
            .runtime
            .start_container(NAMESPACE, &request.get_ref().container_id)
            .await
            .map_err(status::from_runtime)?;
        Ok(Response::new(cri::StartContainerResponse {}))
    }

    async fn stop_container(
        &self,
        request: Request<cri::StopContainerRequest>,
    ) -> Result<Response<cri::StopContainerResponse>, Status> {
        let request = request.into_inner();
        self.0
            .runtime
            .stop_container(NAMESPACE, &request.container_id, request.timeout)
            .await
            .map_err(status::from_runtime)?;
        Ok(Response::new(cri::StopContainerResponse {}))
    }

    async fn remove_container(
        &self,
        request: Request<cri::RemoveContainerRequest>,
    ) -> Result<Response<cri::RemoveContainerResponse>, Status> {
        self.0
            .runtime
            .remove_container(NAMESPACE, &request.get_ref().container_id)
            .await
            .map_err(status::from_runtime)?;
        Ok(Response::new(cri::RemoveContainerResponse {}))
    }

    async fn list_containers(
        &self,
        request: Request<cri::ListContainersRequest>,
    ) -> Result<Response<cri::ListContainersResponse>, Status> {
        Ok(Response::new(workloads::list_containers(
            &self.0,
            request.into_inner().filter,
        )))
    }

    async fn container_status(
        &self,
        request: Request<cri::ContainerStatusRequest>,
    ) -> Result<Response<cri::ContainerStatusResponse>, Status> {
        workloads::container_status(&self.0, request.get_ref()).map(Response::new)
    }

    async fn update_container_resources(
        &self,
        request: Request<cri::UpdateContainerResourcesRequest>,
    ) -> Result<Response<cri::UpdateContainerResourcesResponse>, Status> {
        let request = request.into_inner();
        self.0
            .runtime
            .update_resources(NAMESPACE, &request.container_id, request.linux)
            .await
            .map_err(status::from_runtime)?;
        Ok(Response::new(cri::UpdateContainerResourcesResponse {}))
    }

    async fn reopen_container_log(
        &self,
        request: Request<cri::ReopenContainerLogRequest>,
    ) -> Result<Response<cri::ReopenContainerLogResponse>, Status> {
        self.0
            .runtime
            .reopen_log(NAMESPACE, &request.get_ref().container_id)
            .await
            .map_err(status::from_runtime)?;
        Ok(Response::new(cri::ReopenContainerLogResponse {}))
    }

    async fn exec_sync(
        &self,
        request: Request<cri::ExecSyncRequest>,
    ) -> Result<Response<cri::ExecSyncResponse>, Status> {
        workloads::exec_sync(&self.0, request.into_inner())
            .await
            .map(Response::new)
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
            cri_condition("NetworkReady", self.0.runtime.network_condition().await),
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
