//! CRI Version / Status / RuntimeConfig over a real wharfd socket, with the k8s-cri client.

mod support;

use k8s_cri::v1::{
    CgroupDriver, CheckpointContainerRequest, RunPodSandboxRequest, RuntimeConfigRequest,
    StatusRequest, VersionRequest,
};
use support::daemon::{wharf_binary, Daemon};
use tonic::Code;

#[tokio::test]
async fn version_names_wharf_and_its_versions() {
    let daemon = Daemon::start().await;
    let version = daemon
        .runtime_client()
        .await
        .version(VersionRequest {
            version: "0.1.0".into(),
        })
        .await
        .expect("Version")
        .into_inner();
    assert_eq!(version.runtime_name, "wharf");
    assert_eq!(version.runtime_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(version.runtime_api_version, "v1");
    assert_eq!(version.version, "0.1.0");
}

#[tokio::test]
async fn status_tells_runtime_and_network_readiness() {
    // CNI only, and no CNI config: pods cannot get a network yet.
    let daemon = Daemon::start_with_config("[network]\nmode = \"cni\"\n").await;
    let response = daemon
        .runtime_client()
        .await
        .status(StatusRequest { verbose: false })
        .await
        .expect("Status")
        .into_inner();
    assert!(
        response.info.is_empty(),
        "info is only for verbose requests"
    );
    let conditions = response.status.expect("RuntimeStatus").conditions;
    let find = |kind: &str| {
        conditions
            .iter()
            .find(|c| c.r#type == kind)
            .unwrap_or_else(|| panic!("no {kind} condition in {conditions:?}"))
            .clone()
    };
    let runtime = find("RuntimeReady");
    assert!(
        runtime.status,
        "this machine has overlayfs and cgroups, so the runtime is ready: {runtime:?}"
    );
    // No pod network exists yet: NetworkReady must say so, with a reason and a message.
    let network = find("NetworkReady");
    assert!(!network.status);
    assert_eq!(network.reason, "NetworkPluginNotReady");
    assert!(network.message.contains("network"), "{network:?}");
}

#[tokio::test]
async fn runtime_ready_turns_false_naming_an_unusable_directory() {
    let daemon = Daemon::start().await;
    let mut client = daemon.runtime_client().await;
    // The state dir vanishes under the running daemon (an operator's rm -rf): the
    // condition must stop claiming readiness and name the directory.
    let moved = daemon.dir().join("state-moved");
    std::fs::rename(&daemon.paths.state, &moved).unwrap();
    let response = client
        .status(StatusRequest { verbose: false })
        .await
        .expect("Status")
        .into_inner();
    std::fs::rename(&moved, &daemon.paths.state).unwrap();
    let runtime = response
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.r#type == "RuntimeReady")
        .unwrap();
    assert!(!runtime.status, "{runtime:?}");
    assert_eq!(runtime.reason, "RuntimePrerequisitesMissing");
    assert!(
        runtime
            .message
            .contains(&daemon.paths.state.display().to_string()),
        "{runtime:?}"
    );
}

#[tokio::test]
async fn verbose_status_returns_the_effective_config_as_json() {
    let daemon = Daemon::start_with_config("[cri]\nshutdown_timeout_secs = 7\n").await;
    let response = daemon
        .runtime_client()
        .await
        .status(StatusRequest { verbose: true })
        .await
        .expect("Status")
        .into_inner();
    let config: serde_json::Value =
        serde_json::from_str(response.info.get("config").expect("config in info"))
            .expect("config is JSON");
    assert_eq!(config["root"], daemon.paths.root.display().to_string());
    assert_eq!(config["state"], daemon.paths.state.display().to_string());
    assert_eq!(
        config["cri"]["socket"],
        daemon.paths.cri_socket.display().to_string()
    );
    // From the file, not a default:
    assert_eq!(config["cri"]["shutdown_timeout_secs"], 7);
    assert_eq!(config["cgroup_driver"], "cgroupfs");
    let store: serde_json::Value = serde_json::from_str(&response.info["store"]).unwrap();
    assert_eq!(store["schemaVersion"], 1);
    let host: serde_json::Value = serde_json::from_str(&response.info["host"]).unwrap();
    assert_eq!(host["overlayfs"], true);
}

#[tokio::test]
async fn runtime_config_reports_the_cgroupfs_driver() {
    let daemon = Daemon::start().await;
    let response = daemon
        .runtime_client()
        .await
        .runtime_config(RuntimeConfigRequest {})
        .await
        .expect("RuntimeConfig")
        .into_inner();
    assert_eq!(
        response.linux.expect("linux config").cgroup_driver,
        CgroupDriver::Cgroupfs as i32
    );
}

#[tokio::test]
async fn pending_rpcs_answer_unimplemented_naming_the_rpc() {
    let daemon = Daemon::start().await;
    let status = daemon
        .runtime_client()
        .await
        .checkpoint_container(CheckpointContainerRequest::default())
        .await
        .expect_err("CheckpointContainer has not landed");
    assert_eq!(status.code(), Code::Unimplemented);
    assert!(
        status
            .message()
            .contains("RuntimeService/CheckpointContainer"),
        "{status:?}"
    );
    // An implemented RPC with a bad request names the missing field instead.
    let status = daemon
        .runtime_client()
        .await
        .run_pod_sandbox(RunPodSandboxRequest::default())
        .await
        .expect_err("RunPodSandbox without a config");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("config"), "{status:?}");
}

#[tokio::test]
async fn wharf_cli_shows_versions_and_info() {
    let daemon = Daemon::start_with_config("[network]\nmode = \"cni\"\n").await;
    let host = format!(
        "unix://{}",
        daemon.paths.state.join("docker.sock").display()
    );
    let run = |command: &str| {
        let output = std::process::Command::new(wharf_binary())
            .args(["-H", &host, "--cri-socket"])
            .arg(&daemon.paths.cri_socket)
            .arg(command)
            .output()
            .expect("run wharf");
        assert!(output.status.success(), "wharf {command}: {output:?}");
        String::from_utf8(output.stdout).unwrap()
    };
    let version = run("version");
    assert!(
        version.contains(&format!(
            "Client: wharf\n Version:           {}",
            env!("CARGO_PKG_VERSION")
        )) && version.contains("API version:      1.41 (minimum version 1.24)"),
        "{version}"
    );
    // The Docker view, then the CRI's conditions of the same daemon.
    let info = run("info");
    assert!(info.contains("\nCRI:\n RuntimeReady: true"), "{info}");
    assert!(info.contains(" NetworkReady: false ("), "{info}");

    let missing = daemon.dir().join("nothing.sock");
    let output = std::process::Command::new(wharf_binary())
        .args(["-H", &format!("unix://{}", missing.display()), "version"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("Cannot connect to wharfd") && stderr.contains("nothing.sock"),
        "{stderr}"
    );
}
