//! Version, Status, RuntimeConfig: what the runtime is, whether it is ready (the
//! `RuntimeReady` and `NetworkReady` conditions, and with `verbose` its configuration,
//! host facts and store), and its cgroup driver. UpdateRuntimeConfig is not implemented
//! yet (answered in runtime_service.rs).

use std::collections::HashMap;
use std::sync::Arc;

use k8s_cri::v1 as cri;
use tonic::Status;

use super::{status, CriServer, RUNTIME_API_VERSION, RUNTIME_NAME};
use crate::config;
use crate::runtime::{self, Condition, HostInfo};

/// The version of the kubelet runtime API answered by `Version` (what containerd and
/// CRI-O answer too).
const KUBELET_API_VERSION: &str = "0.1.0";

pub(super) fn version(_request: cri::VersionRequest) -> cri::VersionResponse {
    cri::VersionResponse {
        version: KUBELET_API_VERSION.to_string(),
        runtime_name: RUNTIME_NAME.to_string(),
        runtime_version: env!("CARGO_PKG_VERSION").to_string(),
        runtime_api_version: RUNTIME_API_VERSION.to_string(),
    }
}

pub(super) async fn status(
    server: &Arc<CriServer>,
    request: cri::StatusRequest,
) -> Result<cri::StatusResponse, Status> {
    let probed = server.clone();
    // The store probe does blocking I/O: keep it off the async workers.
    let runtime_ready = tokio::task::spawn_blocking(move || {
        runtime::runtime_condition(&probed.config.root, &probed.config.state, &probed.store)
    })
    .await
    .map_err(|err| Status::internal(format!("runtime readiness check failed: {err}")))?;
    let conditions = vec![
        cri_condition("RuntimeReady", runtime_ready),
        cri_condition("NetworkReady", server.runtime.network_condition().await),
    ];
    let info = if request.verbose {
        let cdi = server.runtime.cdi().clone();
        let scan = tokio::task::spawn_blocking(move || cdi.scan())
            .await
            .map_err(|err| Status::internal(format!("CDI spec scan failed: {err}")))?;
        let mut info = verbose_info(server)?;
        info.insert("cdi".to_string(), cdi_info(server, &scan).to_string());
        info
    } else {
        HashMap::new()
    };
    Ok(cri::StatusResponse {
        status: Some(cri::RuntimeStatus { conditions }),
        info,
        runtime_handlers: Vec::new(),
        features: None,
    })
}

pub(super) fn runtime_config(
    server: &CriServer,
    _request: cri::RuntimeConfigRequest,
) -> cri::RuntimeConfigResponse {
    let cgroup_driver = match server.config.cgroup_driver {
        config::CgroupDriver::Cgroupfs => cri::CgroupDriver::Cgroupfs,
    };
    cri::RuntimeConfigResponse {
        linux: Some(cri::LinuxRuntimeConfiguration {
            cgroup_driver: cgroup_driver as i32,
        }),
    }
}

fn cri_condition(kind: &str, condition: Condition) -> cri::RuntimeCondition {
    cri::RuntimeCondition {
        r#type: kind.to_string(),
        status: condition.ready,
        reason: condition.reason,
        message: condition.message,
    }
}

/// The CDI spec dirs, the devices they define and the spec files skipped (a malformed
/// spec never stops the daemon: it is reported here and in the log).
fn cdi_info(server: &CriServer, scan: &crate::device::CdiScan) -> serde_json::Value {
    let devices: Vec<serde_json::Value> = scan
        .devices()
        .into_iter()
        .map(|d| serde_json::json!({"name": d.name, "spec": d.spec_path}))
        .collect();
    let errors: Vec<serde_json::Value> = scan
        .errors()
        .iter()
        .map(|e| serde_json::json!({"path": e.path, "error": e.message}))
        .collect();
    serde_json::json!({
        "specDirs": server.runtime.cdi().dirs(),
        "devices": devices,
        "specErrors": errors,
    })
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
