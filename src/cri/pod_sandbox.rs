//! RunPodSandbox, StopPodSandbox, RemovePodSandbox, PodSandboxStatus, ListPodSandbox:
//! CRI messages to `Runtime` pod calls, and pod records to CRI messages. The work is in
//! `crate::runtime` (pod.rs).

use std::collections::HashMap;

use k8s_cri::v1 as cri;
use prost::Message;
use tonic::Status;

use super::records::pod_config;
use super::status::{self, from_runtime};
use super::{labels_match, CriServer, NAMESPACE};
use crate::runtime::{PodRecord, PodState};

fn pod_state(state: PodState) -> i32 {
    match state {
        PodState::Ready => cri::PodSandboxState::SandboxReady as i32,
        PodState::NotReady | PodState::Creating => cri::PodSandboxState::SandboxNotready as i32,
    }
}

pub(super) async fn run_pod_sandbox(
    server: &CriServer,
    request: cri::RunPodSandboxRequest,
) -> Result<cri::RunPodSandboxResponse, Status> {
    let config = request
        .config
        .ok_or_else(|| Status::invalid_argument("config: is missing"))?;
    let host_network = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref())
        .is_some_and(|n| n.network == cri::NamespaceMode::Node as i32);
    // Traffic shaping applies to the pod's own network only.
    let bandwidth = if host_network {
        None
    } else {
        super::bandwidth::pod_bandwidth(&config.annotations)?
    };
    let spec = super::convert::pod_spec(&config).map_err(from_runtime)?;
    let pod_sandbox_id = server
        .runtime
        .run_pod(
            NAMESPACE,
            spec,
            config.encode_to_vec(),
            &request.runtime_handler,
            bandwidth,
        )
        .await
        .map_err(from_runtime)?;
    Ok(cri::RunPodSandboxResponse { pod_sandbox_id })
}

pub(super) async fn stop_pod_sandbox(
    server: &CriServer,
    request: cri::StopPodSandboxRequest,
) -> Result<cri::StopPodSandboxResponse, Status> {
    server
        .runtime
        .stop_pod(NAMESPACE, &request.pod_sandbox_id)
        .await
        .map_err(from_runtime)?;
    Ok(cri::StopPodSandboxResponse {})
}

pub(super) async fn remove_pod_sandbox(
    server: &CriServer,
    request: cri::RemovePodSandboxRequest,
) -> Result<cri::RemovePodSandboxResponse, Status> {
    server
        .runtime
        .remove_pod(NAMESPACE, &request.pod_sandbox_id)
        .await
        .map_err(from_runtime)?;
    Ok(cri::RemovePodSandboxResponse {})
}

pub(super) fn pod_sandbox_status(
    server: &CriServer,
    request: cri::PodSandboxStatusRequest,
) -> Result<cri::PodSandboxStatusResponse, Status> {
    let pod = server
        .runtime
        .find_pod(NAMESPACE, &request.pod_sandbox_id)
        .ok_or_else(|| {
            Status::not_found(format!(
                "pod sandbox {:?} not found",
                request.pod_sandbox_id
            ))
        })?;
    let config = pod_config(&pod).map_err(|err| status::from_error(&err))?;
    let options = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.clone());
    let status = cri::PodSandboxStatus {
        id: pod.id.clone(),
        metadata: config.metadata.clone(),
        state: pod_state(pod.state),
        created_at: pod.created_at,
        network: Some(pod_network_status(&pod)),
        linux: Some(cri::LinuxPodSandboxStatus {
            namespaces: Some(cri::Namespace { options }),
        }),
        labels: config.labels.clone(),
        annotations: config.annotations.clone(),
        runtime_handler: pod.runtime_handler.clone(),
    };
    let info = if request.verbose {
        HashMap::from([("info".to_string(), pod_info(&pod, &config).to_string())])
    } else {
        HashMap::new()
    };
    Ok(cri::PodSandboxStatusResponse {
        status: Some(status),
        info,
        containers_statuses: Vec::new(),
        timestamp: 0,
    })
}

fn pod_network_status(pod: &PodRecord) -> cri::PodSandboxNetworkStatus {
    let ips = pod
        .network
        .as_ref()
        .map(|n| n.ips.clone())
        .unwrap_or_default();
    let mut ips = ips.into_iter();
    cri::PodSandboxNetworkStatus {
        ip: ips.next().unwrap_or_default(),
        additional_ips: ips.map(|ip| cri::PodIp { ip }).collect(),
    }
}

fn pod_info(pod: &PodRecord, config: &cri::PodSandboxConfig) -> serde_json::Value {
    serde_json::json!({
        "id": pod.id,
        "state": pod.state,
        "runtimeHandler": pod.runtime_handler,
        "hostname": config.hostname,
        "logDirectory": config.log_directory,
        "cgroupParent": pod.cgroup_parent,
        "namespaces": pod.namespaces,
        "pidNamespaceHolder": pod.pid_holder,
        "stateDir": pod.dir,
        "shm": pod.shm_mounted.then(|| pod.dir.join("shm")),
        "network": pod.network,
    })
}

pub(super) fn list_pod_sandbox(
    server: &CriServer,
    request: cri::ListPodSandboxRequest,
) -> cri::ListPodSandboxResponse {
    let filter = request.filter.unwrap_or_default();
    let mut fields = server.pod_fields.hold("pod sandbox");
    let mut items = Vec::with_capacity(fields.expected());
    let mut order = Vec::with_capacity(fields.expected());
    server.runtime.for_each_pod(NAMESPACE, |pod| {
        fields.visit();
        if pod.state == PodState::Creating
            || (!filter.id.is_empty() && !pod.id.starts_with(&filter.id))
            || filter
                .state
                .as_ref()
                .is_some_and(|s| s.state != pod_state(pod.state))
        {
            return;
        }
        let config = match fields.get(&pod.id, &pod.extension) {
            Ok(config) => config,
            Err(err) => {
                // Skipped and logged, rather than failing kubelet's whole list.
                tracing::error!(pod = %pod.id, "ListPodSandbox skips it: {err}");
                return;
            }
        };
        if !labels_match(&config.labels, &filter.label_selector) {
            return;
        }
        order.push((pod.created_at, items.len()));
        items.push(cri::PodSandbox {
            id: pod.id.clone(),
            metadata: config.metadata.clone(),
            state: pod_state(pod.state),
            created_at: pod.created_at,
            labels: config.labels.clone(),
            annotations: config.annotations.clone(),
            runtime_handler: pod.runtime_handler.clone(),
        });
    });
    fields.done(|| server.runtime.pod_ids(NAMESPACE));
    cri::ListPodSandboxResponse {
        items: super::ordered_by_key(items, order),
    }
}
