//! Go CRI clients against a real wharfd: grpc-go dialing the socket by its path (as
//! cri-tools and older kubelets do, sending the path as the HTTP/2 `:authority`), and
//! crictl running the README's commands and a whole pod. Neither was written by wharf.

mod support;

use serde_json::Value;
use support::daemon::Daemon;
use support::go_tools::{crictl, crictl_ok, go_tool};
use support::images::ImageBuilder;
use support::pods::{unique, wait_for_file};
use support::registry::Registry;

async fn daemon_and_image() -> (Daemon, Registry, String) {
    let registry = Registry::start().await;
    registry
        .push("test/busybox", "latest", &ImageBuilder::busybox().build())
        .await;
    let image = format!("{}/test/busybox:latest", registry.host());
    (Daemon::start().await, registry, image)
}

#[tokio::test(flavor = "multi_thread")]
async fn go_grpc_client_dialing_the_socket_path_runs_a_pod() {
    let (daemon, _registry, image) = daemon_and_image().await;
    let logs = tempfile::Builder::new()
        .prefix("wharf-go-logs-")
        .tempdir()
        .expect("log dir");
    let client = go_tool("cri-client");
    let socket = daemon.paths.cri_socket.clone();
    let log_dir = logs.path().to_path_buf();
    let name = unique("go-pod");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(client)
            .arg("-socket")
            .arg(&socket)
            .arg("-image")
            .arg(&image)
            .arg("-logs")
            .arg(&log_dir)
            .args(["-name", &name])
            .output()
            .expect("run cri-client")
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the Go gRPC client failed ({}):\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    for step in [
        "Version wharf",
        "PullImage sha256:",
        "RunPodSandbox ",
        "CreateContainer ",
        "StartContainer ok",
        "CONTAINER_RUNNING",
        "ExecSync exit=7 stdout=\"exec-out\"",
        "StopContainer CONTAINER_EXITED",
        "removed ok",
    ] {
        assert!(stdout.contains(step), "no {step:?} in:\n{stdout}");
    }
    // The container's output reached its log before the removal.
    let log = std::fs::read_to_string(logs.path().join("main.log")).unwrap_or_default();
    assert!(log.contains("hello-from-go"), "log: {log:?}");
}

fn write_json(dir: &std::path::Path, name: &str, value: &Value) -> String {
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_vec_pretty(value).expect("json")).expect("write");
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn crictl_runs_the_readme_commands_and_a_pod() {
    let (daemon, _registry, image) = daemon_and_image().await;
    let socket = daemon.paths.cri_socket.clone();
    let dir = tempfile::Builder::new()
        .prefix("wharf-crictl-")
        .tempdir()
        .expect("dir");

    let version = crictl_ok(&socket, &["version"]);
    assert!(version.contains("RuntimeName:  wharf"), "{version}");
    let info: Value = serde_json::from_str(&crictl_ok(&socket, &["info", "-o", "json"]))
        .expect("crictl info prints JSON");
    let conditions = info["status"]["conditions"]
        .as_array()
        .expect("status conditions");
    assert!(
        conditions
            .iter()
            .any(|c| c["type"] == "RuntimeReady" && c["status"] == true),
        "{info}"
    );

    assert!(crictl_ok(&socket, &["pull", &image]).contains("sha256:"));
    let images = crictl_ok(&socket, &["images", "-o", "json"]);
    assert!(images.contains("test/busybox"), "{images}");

    let name = unique("crictl-pod");
    let logs = dir.path().join("logs");
    let pod = serde_json::json!({
        "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}")},
        "log_directory": logs.display().to_string(),
        "linux": {}
    });
    let container = serde_json::json!({
        "metadata": {"name": "main"},
        "image": {"image": image},
        "command": ["sh", "-c", "echo hello-from-crictl; exec sleep 3600"],
        "log_path": "main.log",
        "linux": {}
    });
    let pod_file = write_json(dir.path(), "pod.json", &pod);
    let container_file = write_json(dir.path(), "container.json", &container);

    let pod_id = crictl_ok(&socket, &["runp", &pod_file]).trim().to_string();
    let id = crictl_ok(&socket, &["create", &pod_id, &container_file, &pod_file])
        .trim()
        .to_string();
    crictl_ok(&socket, &["start", &id]);
    let ps: Value =
        serde_json::from_str(&crictl_ok(&socket, &["ps", "--pod", &pod_id, "-o", "json"]))
            .expect("crictl ps prints JSON");
    assert_eq!(ps["containers"][0]["id"], id.as_str(), "{ps}");
    assert_eq!(ps["containers"][0]["state"], "CONTAINER_RUNNING", "{ps}");

    let exec = crictl_ok(
        &socket,
        &["exec", "--sync", &id, "echo", "exec-from-crictl"],
    );
    assert_eq!(exec.trim(), "exec-from-crictl");
    let failed = crictl(&socket, &["exec", "--sync", &id, "sh", "-c", "exit 3"]);
    assert!(
        !failed.status.success()
            && String::from_utf8_lossy(&failed.stderr).contains("exited with 3"),
        "crictl exec reports the command's failure: {failed:?}"
    );

    wait_for_file(&logs.join("main.log"), |t| t.contains("hello-from-crictl")).await;
    let logs_out = crictl_ok(&socket, &["logs", &id]);
    assert!(logs_out.contains("hello-from-crictl"), "{logs_out}");
    let inspect: Value = serde_json::from_str(&crictl_ok(&socket, &["inspect", &id]))
        .expect("crictl inspect prints JSON");
    assert_eq!(inspect["status"]["state"], "CONTAINER_RUNNING", "{inspect}");
    let inspectp: Value = serde_json::from_str(&crictl_ok(&socket, &["inspectp", &pod_id]))
        .expect("crictl inspectp prints JSON");
    assert_eq!(inspectp["status"]["state"], "SANDBOX_READY", "{inspectp}");

    crictl_ok(&socket, &["stop", &id]);
    crictl_ok(&socket, &["rm", &id]);
    crictl_ok(&socket, &["stopp", &pod_id]);
    crictl_ok(&socket, &["rmp", &pod_id]);
    let pods = crictl_ok(&socket, &["pods", "-q"]);
    assert!(!pods.contains(&pod_id), "{pods}");
    crictl_ok(&socket, &["rmi", &image]);
    let images = crictl_ok(&socket, &["images", "-q"]);
    assert!(images.trim().is_empty(), "{images}");

    // An error reaches the user with wharf's message.
    let missing = crictl(&socket, &["inspect", "no-such-container"]);
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(stderr.contains("no-such-container"), "{stderr}");
}
