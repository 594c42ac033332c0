//! runtime.v1.RuntimeService: the tonic service. Each RPC is handled in the file of its
//! group: pod_sandbox.rs, container.rs, exec.rs, runtime_info.rs; those not implemented
//! yet answer UNIMPLEMENTED (`pending`).

use std::sync::Arc;

use k8s_cri::v1 as cri;
use tonic::{Request, Response, Status};

use super::{container, exec, metrics, pod_sandbox, runtime_info, stats, CriServer};

pub struct Runtime(pub(super) Arc<CriServer>);

cri_service! {
    impl k8s_cri::v1::runtime_service_server::RuntimeService as "RuntimeService" for Runtime;
    pending {
        update_runtime_config(UpdateRuntimeConfigRequest) -> UpdateRuntimeConfigResponse;
        checkpoint_container(CheckpointContainerRequest) -> CheckpointContainerResponse;
    }

    // Pod sandboxes (pod_sandbox.rs).

    async fn run_pod_sandbox(
        &self,
        request: Request<cri::RunPodSandboxRequest>,
    ) -> Result<Response<cri::RunPodSandboxResponse>, Status> {
        pod_sandbox::run_pod_sandbox(&self.0, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn stop_pod_sandbox(
        &self,
        request: Request<cri::StopPodSandboxRequest>,
    ) -> Result<Response<cri::StopPodSandboxResponse>, Status> {
        pod_sandbox::stop_pod_sandbox(&self.0, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn remove_pod_sandbox(
        &self,
        request: Request<cri::RemovePodSandboxRequest>,
    ) -> Result<Response<cri::RemovePodSandboxResponse>, Status> {
        pod_sandbox::remove_pod_sandbox(&self.0, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn pod_sandbox_status(
        &self,
        request: Request<cri::PodSandboxStatusRequest>,
    ) -> Result<Response<cri::PodSandboxStatusResponse>, Status> {
        pod_sandbox::pod_sandbox_status(&self.0, request.into_inner()).map(Response::new)
    }

    async fn list_pod_sandbox(
        &self,
        request: Request<cri::ListPodSandboxRequest>,
    ) -> Result<Response<cri::ListPodSandboxResponse>, Status> {
        Ok(Response::new(pod_sandbox::list_pod_sandbox(
            &self.0,
            request.into_inner(),
        )))
    }

    // Containers (container.rs).

    async fn create_container(
        &self,
        request: Request<cri::CreateContainerRequest>,
    ) -> Result<Response<cri::CreateContainerResponse>, Status> {
        container::create_container(&self.0, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn start_container(
        &self,
        request: Request<cri::StartContainerRequest>,
    ) -> Result<Response<cri::StartContainerResponse>, Status> {
        container::start_container(&self.0, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn stop_container(
        &self,
        request: Request<cri::StopContainerRequest>,
    ) -> Result<Response<cri::StopContainerResponse>, Status> {
        container::stop_container(&self.0, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn remove_container(
        &self,
        request: Request<cri::RemoveContainerRequest>,
    ) -> Result<Response<cri::RemoveContainerResponse>, Status> {
        container::remove_container(&self.0, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_containers(
        &self,
        request: Request<cri::ListContainersRequest>,
    ) -> Result<Response<cri::ListContainersResponse>, Status> {
        Ok(Response::new(container::list_containers(
            &self.0,
            request.into_inner(),
        )))
    }

    async fn container_status(
        &self,
        request: Request<cri::ContainerStatusRequest>,
    ) -> Result<Response<cri::ContainerStatusResponse>, Status> {
        container::container_status(&self.0, request.into_inner()).map(Response::new)
    }

    async fn update_container_resources(
        &self,
        request: Request<cri::UpdateContainerResourcesRequest>,
    ) -> Result<Response<cri::UpdateContainerResourcesResponse>, Status> {
        container::update_container_resources(&self.0, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn reopen_container_log(
        &self,
        request: Request<cri::ReopenContainerLogRequest>,
    ) -> Result<Response<cri::ReopenContainerLogResponse>, Status> {
        container::reopen_container_log(&self.0, request.into_inner())
            .await
            .map(Response::new)
    }

    // Exec (exec.rs).

    async fn exec_sync(
        &self,
        request: Request<cri::ExecSyncRequest>,
    ) -> Result<Response<cri::ExecSyncResponse>, Status> {
        exec::exec_sync(&self.0, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn exec(
        &self,
        request: Request<cri::ExecRequest>,
    ) -> Result<Response<cri::ExecResponse>, Status> {
        exec::exec(&self.0, request.into_inner()).map(Response::new)
    }

    async fn attach(
        &self,
        request: Request<cri::AttachRequest>,
    ) -> Result<Response<cri::AttachResponse>, Status> {
        exec::attach(&self.0, request.into_inner()).map(Response::new)
    }

    async fn port_forward(
        &self,
        request: Request<cri::PortForwardRequest>,
    ) -> Result<Response<cri::PortForwardResponse>, Status> {
        exec::port_forward(&self.0, request.into_inner()).map(Response::new)
    }

    // Stats (stats.rs).

    async fn container_stats(
        &self,
        request: Request<cri::ContainerStatsRequest>,
    ) -> Result<Response<cri::ContainerStatsResponse>, Status> {
        // cgroup files and a writable layer's walk: off the async workers.
        let server = self.0.clone();
        let request = request.into_inner();
        tokio::task::spawn_blocking(move || stats::container_stats(&server, request))
            .await
            .map_err(|err| Status::internal(format!("container_stats: {err}")))?
            .map(Response::new)
    }

    async fn list_container_stats(
        &self,
        request: Request<cri::ListContainerStatsRequest>,
    ) -> Result<Response<cri::ListContainerStatsResponse>, Status> {
        // cgroup files and a writable layer's walk: off the async workers.
        let server = self.0.clone();
        let request = request.into_inner();
        tokio::task::spawn_blocking(move || stats::list_container_stats(&server, request))
            .await
            .map_err(|err| Status::internal(format!("list_container_stats: {err}")))?
            .map(Response::new)
    }

    async fn pod_sandbox_stats(
        &self,
        request: Request<cri::PodSandboxStatsRequest>,
    ) -> Result<Response<cri::PodSandboxStatsResponse>, Status> {
        // cgroup files and a writable layer's walk: off the async workers.
        let server = self.0.clone();
        let request = request.into_inner();
        tokio::task::spawn_blocking(move || stats::pod_sandbox_stats(&server, request))
            .await
            .map_err(|err| Status::internal(format!("pod_sandbox_stats: {err}")))?
            .map(Response::new)
    }

    async fn list_metric_descriptors(
        &self,
        _request: Request<cri::ListMetricDescriptorsRequest>,
    ) -> Result<Response<cri::ListMetricDescriptorsResponse>, Status> {
        Ok(Response::new(metrics::list_metric_descriptors()))
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _request: Request<cri::ListPodSandboxMetricsRequest>,
    ) -> Result<Response<cri::ListPodSandboxMetricsResponse>, Status> {
        // cgroup files and writable layers: off the async workers.
        let server = self.0.clone();
        tokio::task::spawn_blocking(move || metrics::list_pod_sandbox_metrics(&server))
            .await
            .map_err(|err| Status::internal(format!("list_pod_sandbox_metrics: {err}")))?
            .map(Response::new)
    }

    async fn list_pod_sandbox_stats(
        &self,
        request: Request<cri::ListPodSandboxStatsRequest>,
    ) -> Result<Response<cri::ListPodSandboxStatsResponse>, Status> {
        // cgroup files and a writable layer's walk: off the async workers.
        let server = self.0.clone();
        let request = request.into_inner();
        tokio::task::spawn_blocking(move || stats::list_pod_sandbox_stats(&server, request))
            .await
            .map_err(|err| Status::internal(format!("list_pod_sandbox_stats: {err}")))?
            .map(Response::new)
    }

    // The runtime itself (runtime_info.rs).

    async fn version(
        &self,
        request: Request<cri::VersionRequest>,
    ) -> Result<Response<cri::VersionResponse>, Status> {
        Ok(Response::new(runtime_info::version(request.into_inner())))
    }

    async fn status(
        &self,
        request: Request<cri::StatusRequest>,
    ) -> Result<Response<cri::StatusResponse>, Status> {
        runtime_info::status(&self.0, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn runtime_config(
        &self,
        request: Request<cri::RuntimeConfigRequest>,
    ) -> Result<Response<cri::RuntimeConfigResponse>, Status> {
        Ok(Response::new(runtime_info::runtime_config(
            &self.0,
            request.into_inner(),
        )))
    }

    // Events (events.rs).

    type GetContainerEventsStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<k8s_cri::v1::ContainerEventResponse, Status>> + Send>,
    >;

    async fn get_container_events(
        &self,
        _request: Request<k8s_cri::v1::GetEventsRequest>,
    ) -> Result<Response<Self::GetContainerEventsStream>, Status> {
        let events = super::events::get_container_events(self.0.clone());
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(events),
        )))
    }
}
