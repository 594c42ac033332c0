//! wharf under the real kubelet (issue 27's e2e), built from `k8s.io/kubernetes` by
//! e2e/k8s/build.sh:
//! - standalone kubelet with static pods: probes, restarts, log rotation through
//!   ReopenContainerLog, graceful deletion, `/stats/summary`, and no CRI error logged;
//! - `kill -9` of wharfd under kubelet: nothing restarted, nothing lost.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use support::daemon::Daemon;
use support::docker::DockerEnv;
use support::images::busybox_image;
use support::kube::{
    cri_errors, k8s_binaries, node_name, ControlPlane, Kubelet, KubeletOptions, NodeAddress,
    ONE_KUBELET,
};
use support::net::TestBridge;
use support::registry::Registry;
use support::tmux::Tmux;

/// Pods that must run steadily: ready, never restarted.
const STEADY_PODS: usize = 30;

fn steady_pod(name: &str, image: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels:
    role: steady
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: main
    image: {image}
    command: ["sh", "-c", "touch /tmp/ready; echo up; exec sleep 3600"]
    livenessProbe:
      exec:
        command: ["true"]
      periodSeconds: 5
    readinessProbe:
      exec:
        command: ["cat", "/tmp/ready"]
      periodSeconds: 2
"#
    )
}

/// A container that exits after printing its start: kubelet restarts it.
fn exiting_pod(image: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: exiting
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: main
    image: {image}
    command: ["sh", "-c", "echo started; sleep 1; exit 3"]
"#
    )
}

/// A container whose liveness probe starts failing: kubelet kills and restarts it.
fn unhealthy_pod(image: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: unhealthy
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: main
    image: {image}
    command: ["sh", "-c", "touch /tmp/alive; sleep 4; rm /tmp/alive; exec sleep 3600"]
    livenessProbe:
      exec:
        command: ["cat", "/tmp/alive"]
      periodSeconds: 1
      failureThreshold: 2
"#
    )
}

/// A container writing ~20 KiB/s of numbered lines: kubelet rotates its log.
fn chatty_pod(image: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: chatty
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: main
    image: {image}
    command: ["sh", "-c", "i=0; while true; do i=$((i+1)); echo \"line $i ..............................................................................................\"; usleep 5000; done"]
"#
    )
}

/// A container that records its SIGTERM in a host directory before it exits.
fn graceful_pod(image: &str, out: &std::path::Path) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: graceful
spec:
  terminationGracePeriodSeconds: 20
  volumes:
  - name: out
    hostPath:
      path: {out}
      type: Directory
  containers:
  - name: main
    image: {image}
    command: ["sh", "-c", "trap 'echo term > /out/signal; exit 0' TERM; echo started > /out/started; while true; do sleep 0.2; done"]
    volumeMounts:
    - name: out
      mountPath: /out
"#,
        out = out.display()
    )
}

/// What kubelet reports of one pod's first container.
#[derive(Debug, Clone, PartialEq)]
struct ContainerView {
    phase: String,
    ready: bool,
    restarts: u64,
    container_id: String,
}

fn view(pod: &serde_json::Value) -> ContainerView {
    let status = &pod["status"]["containerStatuses"][0];
    ContainerView {
        phase: pod["status"]["phase"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        ready: status["ready"].as_bool().unwrap_or(false),
        restarts: status["restartCount"].as_u64().unwrap_or(0),
        container_id: status["containerID"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    }
}

async fn views(kubelet: &Kubelet) -> BTreeMap<String, ContainerView> {
    kubelet
        .pods()
        .await
        .into_iter()
        .map(|(name, pod)| (name, view(&pod)))
        .collect()
}

/// Waits up to `timeout` for `check` over kubelet's pods to hold; panics with the
/// last views and `what` otherwise.
async fn wait_pods(
    kubelet: &Kubelet,
    timeout: Duration,
    what: &str,
    check: impl Fn(&BTreeMap<String, ContainerView>) -> bool,
) -> BTreeMap<String, ContainerView> {
    let deadline = Instant::now() + timeout;
    loop {
        let current = views(kubelet).await;
        if check(&current) {
            return current;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {timeout:?}; kubelet's pods: {current:#?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn steady_names() -> Vec<String> {
    (0..STEADY_PODS).map(|i| format!("steady-{i:02}")).collect()
}

fn all_steady_ready(pods: &BTreeMap<String, ContainerView>) -> bool {
    steady_names()
        .iter()
        .all(|n| pods.get(n).is_some_and(|v| v.ready && v.phase == "Running"))
}

/// The pod log directory kubelet made for static pod `name`.
fn pod_log_dir(kubelet: &Kubelet, name: &str) -> std::path::PathBuf {
    let prefix = format!("default_{name}-{}_", kubelet.node_name);
    support::entries(&kubelet.pod_logs)
        .into_iter()
        .find(|e| e.starts_with(&prefix))
        .map(|e| kubelet.pod_logs.join(e))
        .unwrap_or_else(|| {
            panic!(
                "no log dir of {name} in {}: {:?}",
                kubelet.pod_logs.display(),
                support::entries(&kubelet.pod_logs)
            )
        })
}

async fn wait_until(timeout: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn assert_no_cri_errors(kubelet: &Kubelet, log: &str) {
    let errors = cri_errors(log);
    assert!(
        errors.is_empty(),
        "kubelet logged {} CRI error(s) from wharf (kubelet log: {}):\n{}",
        errors.len(),
        kubelet.log.display(),
        errors.join("\n")
    );
}

/// A node for a standalone kubelet: wharfd on a bridge of its own (`index`), and the
/// busybox test image in a local registry (its reference).
async fn node(index: u32) -> (TestBridge, Registry, String, Daemon) {
    let bridge = TestBridge::new(index);
    let registry = Registry::start().await;
    registry
        .push("e2e/busybox", "latest", &busybox_image())
        .await;
    let image = format!("{}/e2e/busybox:latest", registry.host());
    let daemon = Daemon::start_with_config(&bridge.config()).await;
    (bridge, registry, image, daemon)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_kubelet_runs_static_pods_on_wharf() {
    let binaries = k8s_binaries();
    let _one = ONE_KUBELET.lock().await;
    let (_bridge, _registry, image, daemon) = node(80).await;
    let kubelet = Kubelet::start(
        &binaries.kubelet,
        KubeletOptions {
            cri_socket: &daemon.paths.cri_socket,
            cgroup_root: &daemon.cgroup_parent,
            kubeconfig: None,
            address: "127.0.0.1",
            extra_config: "containerLogMaxSize: 16Ki\ncontainerLogMaxFiles: 3\n\
                           containerLogMonitorInterval: 3s\n",
        },
    )
    .await;
    let out = tempfile::tempdir().expect("create the graceful pod's host dir");

    let started = Instant::now();
    for name in steady_names() {
        kubelet.add_manifest(&name, &steady_pod(&name, &image));
    }
    kubelet.add_manifest("exiting", &exiting_pod(&image));
    kubelet.add_manifest("unhealthy", &unhealthy_pod(&image));
    kubelet.add_manifest("chatty", &chatty_pod(&image));
    kubelet.add_manifest("graceful", &graceful_pod(&image, out.path()));

    wait_pods(
        &kubelet,
        Duration::from_secs(180),
        "30 static pods running and ready (exec readiness probes)",
        all_steady_ready,
    )
    .await;
    eprintln!(
        "{STEADY_PODS} static pods ready in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // Restarts: the exiting container and the one failing its liveness probe.
    let pods = wait_pods(
        &kubelet,
        Duration::from_secs(120),
        "kubelet restarted the exiting container twice and the unhealthy one once",
        |pods| {
            pods.get("exiting").is_some_and(|v| v.restarts >= 2)
                && pods.get("unhealthy").is_some_and(|v| v.restarts >= 1)
        },
    )
    .await;
    // Each attempt logs to a file of its own (`<attempt>.log`); kubelet removes the
    // older dead attempts (and their files) as it garbage-collects them.
    let exiting_logs = pod_log_dir(&kubelet, "exiting").join("main");
    let attempts: Vec<String> = support::entries(&exiting_logs)
        .into_iter()
        .filter(|f| f.ends_with(".log"))
        .collect();
    let newest = attempts
        .iter()
        .filter_map(|f| f.trim_end_matches(".log").parse::<u32>().ok())
        .max();
    assert!(
        newest.is_some_and(|n| n >= 2),
        "a log file of the third attempt or later: {attempts:?}"
    );
    for file in &attempts {
        let log = std::fs::read_to_string(exiting_logs.join(file))
            .unwrap_or_else(|err| panic!("{file} of `exiting`: {err}"));
        assert!(
            log.contains("stdout F started"),
            "{file} of `exiting` has its attempt's start: {log:?}"
        );
    }
    assert!(
        kubelet
            .log_text()
            .contains("failed liveness probe, will be restarted"),
        "kubelet's log says why `unhealthy` was restarted"
    );

    // Log rotation: kubelet renames the file, asks wharf to reopen it, and the
    // container's next lines land in the new file.
    let chatty_logs = pod_log_dir(&kubelet, "chatty").join("main");
    wait_until(
        Duration::from_secs(60),
        "kubelet rotated chatty's log (a 0.log.<time> file)",
        || {
            support::entries(&chatty_logs)
                .iter()
                .any(|e| e.starts_with("0.log."))
        },
    )
    .await;
    let size_after_rotation = std::fs::metadata(chatty_logs.join("0.log"))
        .map(|m| m.len())
        .unwrap_or(0);
    wait_until(
        Duration::from_secs(10),
        "chatty's lines reach the reopened 0.log",
        || {
            std::fs::metadata(chatty_logs.join("0.log"))
                .is_ok_and(|m| m.len() > size_after_rotation)
        },
    )
    .await;
    let rotated = support::entries(&chatty_logs);
    assert!(
        rotated.len() <= 3 + 1,
        "containerLogMaxFiles 3 keeps at most 3 files (plus one being compressed): {rotated:?}"
    );

    // Stats: kubelet's summary has CPU and memory for wharf's pods (from cadvisor, which
    // reads the pod cgroups at its own housekeeping pace) and containers (from wharf's
    // ListContainerStats).
    let has_usage = |v: &serde_json::Value| {
        v["memory"]["workingSetBytes"].as_u64().unwrap_or(0) > 0
            && v["cpu"]["usageCoreNanoSeconds"].as_u64().unwrap_or(0) > 0
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let summary = kubelet.get_json("/stats/summary").await;
        let steady_stats: Vec<serde_json::Value> = summary["pods"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|p| {
                p["podRef"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("steady-"))
            })
            .collect();
        let complete = steady_stats.len() == STEADY_PODS
            && steady_stats
                .iter()
                .all(|p| has_usage(p) && has_usage(&p["containers"][0]));
        if complete {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/stats/summary has CPU and memory for every steady pod and its container \
             within 90 s: {summary}"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }

    // Graceful deletion: removing the manifest sends SIGTERM, the container exits by
    // itself, and the pod is gone from kubelet.
    wait_until(Duration::from_secs(60), "graceful started", || {
        out.path().join("started").exists()
    })
    .await;
    kubelet.remove_manifest("graceful");
    wait_until(
        Duration::from_secs(30),
        "graceful's container got SIGTERM",
        || out.path().join("signal").exists(),
    )
    .await;
    wait_pods(
        &kubelet,
        Duration::from_secs(60),
        "kubelet forgot the deleted pod",
        |pods| !pods.contains_key("graceful"),
    )
    .await;

    // Nothing steady restarted, and kubelet saw no CRI error over the whole run.
    let now = views(&kubelet).await;
    for name in steady_names() {
        assert_eq!(now[&name].restarts, 0, "{name} never restarted: {now:#?}");
    }
    assert!(
        pods["exiting"].restarts >= 2,
        "the exiting pod's restarts are counted"
    );
    assert_no_cri_errors(&kubelet, &kubelet.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_wharfd_under_kubelet_restarts_and_loses_nothing() {
    let binaries = k8s_binaries();
    let _one = ONE_KUBELET.lock().await;
    let (_bridge, _registry, image, mut daemon) = node(81).await;
    let kubelet = Kubelet::start(
        &binaries.kubelet,
        KubeletOptions {
            cri_socket: &daemon.paths.cri_socket,
            cgroup_root: &daemon.cgroup_parent,
            kubeconfig: None,
            address: "127.0.0.1",
            extra_config: "",
        },
    )
    .await;
    for name in steady_names() {
        kubelet.add_manifest(&name, &steady_pod(&name, &image));
    }
    let before = wait_pods(
        &kubelet,
        Duration::from_secs(180),
        "30 static pods running and ready",
        all_steady_ready,
    )
    .await;
    let containers_before = support::go_tools::crictl_ok(&daemon.paths.cri_socket, &["ps", "-q"]);
    let sandboxes_before = support::go_tools::crictl_ok(&daemon.paths.cri_socket, &["pods", "-q"]);
    assert_eq!(containers_before.lines().count(), STEADY_PODS);

    let log_at_kill = kubelet.log_text().len();
    daemon.kill9();
    let down = Instant::now();
    wait_until(
        Duration::from_secs(90),
        "kubelet reports the container runtime down",
        || kubelet.log_text()[log_at_kill..].contains("container runtime is down"),
    )
    .await;
    eprintln!(
        "kubelet reported the runtime down after {:.1} s",
        down.elapsed().as_secs_f64()
    );
    daemon.restart().await;
    // kubelet's gRPC channels redial on a backoff of up to 3 s: calls made before they
    // reconnect still fail to connect. After 10 s nothing may fail.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let log_settled = kubelet.log_text().len();
    // Let kubelet relist, probe and sync every pod a few times against the new daemon.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let after = wait_pods(
        &kubelet,
        Duration::from_secs(60),
        "every pod ready again",
        all_steady_ready,
    )
    .await;
    for name in steady_names() {
        assert_eq!(
            (after[&name].restarts, &after[&name].container_id),
            (0, &before[&name].container_id),
            "{name}: the same container, never restarted"
        );
    }
    let containers_after = support::go_tools::crictl_ok(&daemon.paths.cri_socket, &["ps", "-q"]);
    let sandboxes_after = support::go_tools::crictl_ok(&daemon.paths.cri_socket, &["pods", "-q"]);
    let sorted = |s: &str| {
        let mut v: Vec<String> = s.lines().map(str::to_string).collect();
        v.sort();
        v
    };
    assert_eq!(
        sorted(&containers_after),
        sorted(&containers_before),
        "the same containers"
    );
    assert_eq!(
        sorted(&sandboxes_after),
        sorted(&sandboxes_before),
        "the same sandboxes"
    );

    // While wharfd was down (and until kubelet redialled) kubelet's calls failed to
    // connect; anything else is a finding, and once settled nothing may fail.
    let log = kubelet.log_text();
    assert_no_cri_errors(&kubelet, &log[..log_at_kill]);
    let not_connection_errors: Vec<String> = cri_errors(&log[log_at_kill..log_settled])
        .into_iter()
        // Unavailable: a call that dialled a closed socket, or was in flight on the
        // connection the kill cut.
        .filter(|l| !l.contains("code = Unavailable"))
        .collect();
    assert!(
        not_connection_errors.is_empty(),
        "kubelet's errors while wharfd was down are connection errors only:\n{}",
        not_connection_errors.join("\n")
    );
    assert_no_cri_errors(&kubelet, &log[log_settled..]);
}

/// A pod bound to the node (no scheduler here) and without a service account token
/// (no controller manager publishes the root CA a token volume needs).
fn cluster_pod(
    name: &str,
    node: &str,
    image: &str,
    container_extra: &str,
    command: &str,
) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  nodeName: {node}
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: 2
  containers:
  - name: main
    image: {image}
    command: ["sh", "-c", {command:?}]
{container_extra}"#
    )
}

/// Reads `child`'s stdout on a thread until a line contains `what` (60 s at most); the
/// thread drains the rest (kubectl fails on a closed stdout: port-forward writes a line
/// for each connection).
fn read_until(child: &mut std::process::Child, what: &str) -> String {
    use std::io::BufRead;
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = String::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                seen.push_str(&line);
                seen.push('\n');
                if line.contains(what) {
                    return seen;
                }
            }
            Err(_) => panic!("{what:?} never came; the output so far:\n{seen}"),
        }
    }
}

/// A client process (kubectl logs -f, attach, port-forward) killed when the test is
/// done with it, or fails.
struct Client(std::process::Child);

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_node_cluster_runs_on_wharf() {
    use std::io::Write;
    use std::process::Stdio;

    let binaries = k8s_binaries();
    let _one = ONE_KUBELET.lock().await;
    let bridge = TestBridge::new(82);
    let node_ip = NodeAddress::new(82);
    // One wharfd for kubelet and the docker CLI, with the busybox image in a registry.
    let docker = DockerEnv::start_with_config(&bridge.config()).await;
    let daemon = &docker.env.daemon;
    let image = docker.image.clone();
    let started = Instant::now();
    let plane = ControlPlane::start(&binaries, &node_name()).await;
    eprintln!(
        "control plane ready in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let kubelet = Kubelet::start(
        &binaries.kubelet,
        KubeletOptions {
            cri_socket: &daemon.paths.cri_socket,
            cgroup_root: &daemon.cgroup_parent,
            kubeconfig: Some(&plane.kubelet_kubeconfig),
            address: &node_ip.address,
            extra_config: "",
        },
    )
    .await;
    let node = kubelet.node_name.clone();

    // The node registers, turns Ready, and shows wharf as its runtime.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let out = plane.kubectl(&[
            "get",
            "node",
            &node,
            "-o",
            r#"jsonpath={.status.conditions[?(@.type=="Ready")].status}"#,
        ]);
        if String::from_utf8_lossy(&out.stdout) == "True" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node {node} not Ready within 120 s: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let runtime = plane.kubectl_ok(&[
        "get",
        "node",
        &node,
        "-o",
        "jsonpath={.status.nodeInfo.containerRuntimeVersion}",
    ]);
    assert_eq!(runtime, format!("wharf://{}", env!("CARGO_PKG_VERSION")));

    let manifests = [
        cluster_pod("shell", &node, &image, "", "exec sleep 3600"),
        cluster_pod(
            "ticker",
            &node,
            &image,
            "",
            "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.2; done",
        ),
        cluster_pod(
            "attachable",
            &node,
            &image,
            "    stdin: true\n",
            "while read line; do echo got-$line; done",
        ),
        cluster_pod(
            "web",
            &node,
            &image,
            "    ports:\n    - containerPort: 8080\n",
            "mkdir -p /www && echo served-by-wharf > /www/index.html && exec httpd -f -p 8080 -h /www",
        ),
    ]
    .join("---\n");
    let mut apply = plane
        .kubectl_command()
        .args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kubectl apply");
    apply
        .stdin
        .take()
        .expect("kubectl's stdin")
        .write_all(manifests.as_bytes())
        .expect("write the manifests to kubectl");
    let applied = apply.wait_with_output().expect("kubectl apply");
    assert!(
        applied.status.success(),
        "kubectl apply: {}",
        String::from_utf8_lossy(&applied.stderr)
    );
    plane.kubectl_ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/shell",
        "pod/ticker",
        "pod/attachable",
        "pod/web",
        "--timeout=180s",
    ]);

    // kubectl logs -f follows the container's log as it grows.
    let spawn = |args: &[&str], stdin: Stdio| {
        Client(
            plane
                .kubectl_command()
                .args(args)
                .stdin(stdin)
                .stdout(Stdio::piped())
                .spawn()
                .unwrap_or_else(|err| panic!("run kubectl {args:?}: {err}")),
        )
    };
    let first = read_until(
        &mut spawn(&["logs", "-f", "ticker"], Stdio::null()).0,
        "tick 3",
    );
    assert!(
        first.starts_with("tick 1\n"),
        "logs from the start: {first}"
    );
    read_until(
        &mut spawn(&["logs", "-f", "--tail=1", "ticker"], Stdio::null()).0,
        "tick 40",
    );

    // kubectl exec over WebSocket (its default) and over SPDY, with exit codes.
    for websockets in ["true", "false"] {
        let run = |args: &[&str]| {
            plane
                .kubectl_command()
                .env("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", websockets)
                .args(["exec", "shell", "--"])
                .args(args)
                .output()
                .expect("run kubectl exec")
        };
        let out = run(&["sh", "-c", "echo $((6*7)); echo to-stderr >&2"]);
        assert!(
            out.status.success(),
            "exec (websockets={websockets}): {out:?}"
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), "42\n");
        assert_eq!(String::from_utf8_lossy(&out.stderr), "to-stderr\n");
        let out = run(&["sh", "-c", "exit 7"]);
        assert_eq!(
            out.status.code(),
            Some(7),
            "exec's exit code (websockets={websockets})"
        );
    }

    // kubectl exec -it on a real pty: typed input, the terminal's size.
    let tmux = Tmux::new();
    for (window, websockets) in [("ws", "true"), ("spdy", "false")] {
        tmux.start(
            window,
            &format!(
                "KUBECTL_REMOTE_COMMAND_WEBSOCKETS={websockets} {} --kubeconfig {} exec -it shell -- sh",
                binaries.kubectl.display(),
                plane.admin_kubeconfig.display()
            ),
        );
        tmux.wait_for(window, "/ #").await;
        tmux.keys(window, &["echo typed-$((6*7))", "Enter"]);
        tmux.wait_for(window, "typed-42").await;
        tmux.keys(window, &["stty size", "Enter"]);
        tmux.wait_for(window, "24 80").await;
        tmux.keys(window, &["exit", "Enter"]);
    }

    // kubectl attach to a container reading its stdin.
    let mut attach = spawn(&["attach", "-i", "attachable"], Stdio::piped());
    let mut attach_stdin = attach.0.stdin.take().expect("attach's stdin");
    let writer = std::thread::spawn(move || {
        for _ in 0..50 {
            if attach_stdin.write_all(b"hello\n").is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    read_until(&mut attach.0, "got-hello");
    drop(attach);
    let _ = writer.join();

    // kubectl cp both ways (tar through exec).
    let files = tempfile::tempdir().expect("tempdir");
    let sent = support::incompressible(300_000, 27);
    std::fs::write(files.path().join("sent"), &sent).expect("write the file to copy");
    plane.kubectl_ok(&[
        "cp",
        &files.path().join("sent").display().to_string(),
        "default/shell:/tmp/copied",
    ]);
    plane.kubectl_ok(&[
        "cp",
        "default/shell:/tmp/copied",
        &files.path().join("back").display().to_string(),
    ]);
    assert!(
        std::fs::read(files.path().join("back")).expect("the file copied back") == sent,
        "kubectl cp carried the bytes both ways"
    );

    // kubectl port-forward carries HTTP to the pod's server, over WebSocket (its
    // default) and over SPDY.
    for websockets in ["true", "false"] {
        let local = support::kube::free_port();
        let mut forward = Client(
            plane
                .kubectl_command()
                .env("KUBECTL_PORT_FORWARD_WEBSOCKETS", websockets)
                .args(["port-forward", "pod/web", &format!("{local}:8080")])
                .stdout(Stdio::piped())
                .spawn()
                .expect("run kubectl port-forward"),
        );
        read_until(&mut forward.0, "Forwarding from");
        for _ in 0..3 {
            let body = reqwest::get(format!("http://127.0.0.1:{local}/index.html"))
                .await
                .unwrap_or_else(|err| {
                    panic!("GET through kubectl port-forward (websockets={websockets}): {err}")
                })
                .text()
                .await
                .expect("the body");
            assert_eq!(body, "served-by-wharf\n");
        }
    }

    // The chart's objects are valid for this API server.
    let rendered = helm_template();
    let mut dry_run = plane
        .kubectl_command()
        .args(["apply", "--dry-run=server", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kubectl apply --dry-run=server");
    dry_run
        .stdin
        .take()
        .expect("kubectl's stdin")
        .write_all(rendered.as_bytes())
        .expect("write the chart's objects to kubectl");
    let checked = dry_run
        .wait_with_output()
        .expect("kubectl apply --dry-run=server");
    let checked_out = String::from_utf8_lossy(&checked.stdout);
    assert!(
        checked.status.success() && checked_out.contains("daemonset.apps/wharf"),
        "the chart's objects pass kubectl apply --dry-run=server: {checked_out}{}",
        String::from_utf8_lossy(&checked.stderr)
    );

    // The everyday docker CLI flow on the same daemon, beside kubelet's pods.
    docker_flow(&docker, &tmux).await;

    // Deleting a pod through the API stops it on wharf.
    plane.kubectl_ok(&["delete", "pod", "ticker", "--wait=true", "--timeout=60s"]);
    let others = plane.kubectl_ok(&[
        "get",
        "pods",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name}={.status.containerStatuses[0].restartCount} {end}",
    ]);
    assert_eq!(
        others.trim(),
        "attachable=0 shell=0 web=0",
        "kubelet's pods ran through it all without a restart"
    );

    assert_no_cri_errors(&kubelet, &kubelet.log_text());
}

/// `helm template` of helm/wharf with its default values (helm built by
/// e2e/helm/build.sh).
fn helm_template() -> String {
    let helm = support::go_tools::go_tool("helm");
    let home = tempfile::tempdir().expect("helm's home");
    let chart = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("helm/wharf");
    let out = std::process::Command::new(helm)
        .env("HELM_CACHE_HOME", home.path().join("cache"))
        .env("HELM_CONFIG_HOME", home.path().join("config"))
        .env("HELM_DATA_HOME", home.path().join("data"))
        .args(["template", "wharf"])
        .arg(chart)
        .args(["--namespace", "kube-system"])
        .output()
        .expect("run helm template");
    assert!(
        out.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `docker run -it` of the registry's image on a pty, a named volume served on a
/// published port, and an image built, pushed, removed and pulled back.
async fn docker_flow(docker: &DockerEnv, tmux: &Tmux) {
    tmux.start(
        "docker",
        &format!(
            "DOCKER_HOST=unix://{} DOCKER_CONFIG={} {} run -it --rm {} sh",
            docker.socket().display(),
            docker.config_dir().display(),
            support::docker::docker_cli(),
            docker.image
        ),
    );
    tmux.wait_for("docker", "/ #").await;
    tmux.keys("docker", &["echo docker-$((6*7))", "Enter"]);
    tmux.wait_for("docker", "docker-42").await;
    tmux.keys("docker", &["exit", "Enter"]);

    let port = support::kube::free_port();
    docker.ok(&["volume", "create", "e2e-www"]);
    docker.ok(&[
        "run",
        "-d",
        "--name",
        "e2e-web",
        "-v",
        "e2e-www:/www",
        "-p",
        &format!("127.0.0.1:{port}:8080"),
        &docker.image,
        "sh",
        "-c",
        "echo from-a-volume > /www/index.html && exec httpd -f -p 8080 -h /www",
    ]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let body = loop {
        match reqwest::get(format!("http://127.0.0.1:{port}/index.html")).await {
            Ok(response) => break response.text().await.expect("the body"),
            Err(err) => {
                assert!(
                    Instant::now() < deadline,
                    "GET on the published port: {err}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert_eq!(body, "from-a-volume\n");
    docker.ok(&["rm", "-f", "e2e-web"]);
    docker.ok(&["volume", "rm", "e2e-www"]);

    let context = tempfile::tempdir().expect("build context");
    std::fs::write(
        context.path().join("Dockerfile"),
        format!("FROM {}\nRUN echo built-by-wharf > /built\n", docker.image),
    )
    .expect("write the Dockerfile");
    let built = docker.image.replace("/test/busybox:latest", "/e2e/built:1");
    docker.ok(&[
        "build",
        "-q",
        "-t",
        &built,
        &context.path().display().to_string(),
    ]);
    docker.ok(&["push", &built]);
    docker.ok(&["rmi", &built]);
    docker.ok(&["pull", &built]);
    assert_eq!(
        docker.ok(&["run", "--rm", &built, "cat", "/built"]),
        "built-by-wharf"
    );
    docker.ok(&["rmi", &built]);
}
