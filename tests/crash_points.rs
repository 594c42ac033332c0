//! wharfd killed (SIGKILL) at each step of RunPodSandbox and StartContainer, through the
//! test-only crash points of `src/crash_point.rs` (`WHARF_TEST_CRASH_AT`), then
//! restarted: what it reports must match what runs, the calls must work afterwards, and
//! once everything is removed nothing may be left (process, cgroup, runtime state,
//! mount, bridge port, lease).

mod support;

use std::os::unix::process::ExitStatusExt;
use std::path::Path;

use k8s_cri::v1 as cri;
use support::net::{bridge_ports, stored_leases, TestBridge};
use support::pods::{pod_namespaces, PodEnv};

const CRASH_ENV: &str = "WHARF_TEST_CRASH_AT";
const RUNNING: i32 = cri::ContainerState::ContainerRunning as i32;
const CREATED: i32 = cri::ContainerState::ContainerCreated as i32;
const EXITED: i32 = cri::ContainerState::ContainerExited as i32;

/// Restarts the daemon so that it kills itself at `point`.
async fn arm(env: &mut PodEnv, point: &str) {
    assert!(env.daemon.stop().success(), "wharfd stopped cleanly");
    env.daemon.env = vec![(CRASH_ENV.to_string(), point.to_string())];
    env.daemon.restart().await;
    env.rt = env.daemon.runtime_client().await;
}

/// Waits for the daemon to die at its crash point and starts it again, unarmed.
async fn after_crash(env: &mut PodEnv, point: &str) {
    let status = env.daemon.wait_exited();
    assert_eq!(
        status.signal(),
        Some(nix::libc::SIGKILL),
        "wharfd did not die at {point}: {status}"
    );
    env.daemon.env.clear();
    env.daemon.restart().await;
    env.rt = env.daemon.runtime_client().await;
}

/// Processes of pods and containers (monitors, watchers, PID-namespace holders) of the
/// daemon with state dir `state`: their command lines name its `pods/` or
/// `containers/` dir (wharfd's own names neither).
fn processes_of(state: &Path) -> Vec<String> {
    let mut found = processes_naming(&state.join("pods"));
    found.extend(processes_naming(&state.join("containers")));
    found
}

/// Processes whose command line contains `needle`.
fn processes_naming(needle: &Path) -> Vec<String> {
    let needle = needle.as_os_str().as_encoded_bytes();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if !name.chars().all(|c| c.is_ascii_digit()) || name == std::process::id().to_string() {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if cmdline.windows(needle.len()).any(|w| w == needle) {
            found.push(format!("{name}: {}", String::from_utf8_lossy(&cmdline)));
        }
    }
    found
}

/// Directories named `id` anywhere under the daemon's cgroup parent, in every hierarchy.
fn cgroups_named(cgroup_parent: &str, id: &str) -> Vec<String> {
    fn walk(dir: &Path, id: &str, found: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                if entry.file_name().to_string_lossy().contains(id) {
                    found.push(path.display().to_string());
                }
                walk(&path, id, found);
            }
        }
    }
    let mut found = Vec::new();
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup")
        .expect("cgroup root")
        .flatten()
    {
        walk(
            &hierarchy.path().join(cgroup_parent.trim_start_matches('/')),
            id,
            &mut found,
        );
    }
    found
}

fn shared_pid_pod(env: &PodEnv, name: &str) -> cri::PodSandboxConfig {
    let mut pod = env.pod_config(name);
    pod_namespaces(&mut pod).pid = cri::NamespaceMode::Pod as i32;
    pod
}

#[tokio::test(flavor = "multi_thread")]
async fn run_pod_sandbox_cut_at_each_step_leaks_nothing() {
    let net = TestBridge::new(41);
    let mut env = PodEnv::start_with_config(&net.config()).await;
    let state = env.daemon.paths.state.clone();
    for point in [
        "pod.after_network",
        "pod.after_pid_holder",
        "pod.before_ready",
    ] {
        let pod = shared_pid_pod(&env, "crash-pod");
        arm(&mut env, point).await;
        let cut = env.run_pod_with(&pod, "").await;
        assert!(cut.is_err(), "{point}: RunPodSandbox answered {cut:?}");
        after_crash(&mut env, point).await;

        // The interrupted pod is gone, with everything it had made.
        env.assert_no_pods_left().await;
        let left = processes_naming(&state.join("pods"));
        assert!(
            left.is_empty(),
            "{point}: processes of the cut pod: {left:?}"
        );
        assert!(
            bridge_ports(net.name()).is_empty(),
            "{point}: veths left on the bridge: {:?}",
            bridge_ports(net.name())
        );
        assert!(
            stored_leases(&env.daemon.paths.root).is_empty(),
            "{point}: leases left"
        );

        // The same request works now, and its pod goes away completely.
        let pod_id = env.run_pod(&pod).await;
        let config = env.container_config("main", &["sleep", "3600"]);
        let id = env.run(&pod_id, &pod, &config).await;
        assert_eq!(env.exec_ok(&id, &["echo", "alive"]).await, "alive");
        env.remove_container(&id).await;
        env.stop_pod(&pod_id).await;
        env.remove_pod(&pod_id).await;
        env.assert_no_pods_left().await;
        let left = processes_of(&state);
        assert!(left.is_empty(), "{point}: processes left: {left:?}");
        assert!(bridge_ports(net.name()).is_empty(), "{point}: veths left");
        assert!(stored_leases(&env.daemon.paths.root).is_empty());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn start_container_cut_at_each_step_reports_what_runs() {
    let mut env = PodEnv::start().await;
    let state = env.daemon.paths.state.clone();
    let cgroup_parent = env.daemon.cgroup_parent.clone();
    for (point, started) in [
        ("start.before_runtime", false),
        ("start.after_init_exec", true),
        ("start.after_runtime", true),
    ] {
        let pod = env.pod_config("crash-start");
        let pod_id = env.run_pod(&pod).await;
        let config = env.container_config("main", &["sleep", "3600"]);
        let id = env.create(&pod_id, &pod, &config).await.expect("create");
        arm(&mut env, point).await;
        let cut = env
            .rt
            .start_container(cri::StartContainerRequest {
                container_id: id.clone(),
            })
            .await;
        assert!(cut.is_err(), "{point}: StartContainer answered {cut:?}");
        after_crash(&mut env, point).await;

        let status = env.status(&id).await;
        if started {
            assert_eq!(
                status.state, RUNNING,
                "{point}: the container runs: {status:?}"
            );
        } else {
            assert_eq!(status.state, CREATED, "{point}: {status:?}");
            env.rt
                .start_container(cri::StartContainerRequest {
                    container_id: id.clone(),
                })
                .await
                .unwrap_or_else(|err| panic!("{point}: StartContainer after the crash: {err:?}"));
            assert_eq!(env.status(&id).await.state, RUNNING);
        }
        // It is the container's program that runs, and it takes commands.
        assert_eq!(env.exec_ok(&id, &["echo", "alive"]).await, "alive");

        env.stop_container(&id, 2).await;
        assert_eq!(env.status(&id).await.state, EXITED, "{point}");
        env.remove_container(&id).await;
        env.stop_pod(&pod_id).await;
        env.remove_pod(&pod_id).await;

        let runtime_state = state.join("runtime/builtin").join(&id);
        assert!(
            !runtime_state.exists(),
            "{point}: runtime state left at {}",
            runtime_state.display()
        );
        let cgroups = cgroups_named(&cgroup_parent, &id);
        assert!(cgroups.is_empty(), "{point}: cgroups left: {cgroups:?}");
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        assert!(
            !mounts.contains(&id),
            "{point}: mounts of the container left"
        );
        let left = processes_of(&state);
        assert!(left.is_empty(), "{point}: processes left: {left:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_container_whose_runtime_state_is_torn_can_be_removed() {
    // An empty state.json: what a crash left when libcontainer truncated the file
    // before writing it (it now replaces it atomically; other damage is possible).
    let mut env = PodEnv::start().await;
    let state = env.daemon.paths.state.clone();
    let cgroup_parent = env.daemon.cgroup_parent.clone();
    let pod = env.pod_config("torn");
    let pod_id = env.run_pod(&pod).await;
    let config = env.container_config("main", &["sleep", "3600"]);
    let id = env.run(&pod_id, &pod, &config).await;
    let runtime_state = state.join("runtime/builtin").join(&id);
    std::fs::write(runtime_state.join("state.json"), "").expect("tear state.json");

    env.remove_container(&id).await;
    assert!(!runtime_state.exists(), "runtime state left");
    let cgroups = cgroups_named(&cgroup_parent, &id);
    assert!(cgroups.is_empty(), "cgroups left: {cgroups:?}");
    let left = processes_of(&state);
    assert!(left.is_empty(), "processes left: {left:?}");
    env.stop_pod(&pod_id).await;
    env.remove_pod(&pod_id).await;
}

const UNKNOWN: i32 = cri::ContainerState::ContainerUnknown as i32;

/// The monitor's record of a container's processes (`<bundle>/monitor.json`): the
/// monitor's pid and the init's.
fn monitor_and_init(state: &Path, id: &str) -> (i32, i32) {
    let path = state.join("containers").join(id).join("monitor.json");
    let info: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display())),
    )
    .expect("monitor.json");
    let pid = |key: &str| info[key].as_i64().expect("a pid in monitor.json") as i32;
    (pid("monitor_pid"), pid("pid"))
}

fn sigkill(pid: i32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap_or_else(|e| panic!("SIGKILL {pid}: {e}"));
}

/// Whether `pid` still runs (a zombie does not: its parent has yet to reap it).
fn runs(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let after = stat[stat.rfind(')')? + 1..].trim_start().to_string();
            after.chars().next()
        })
        .is_some_and(|state| state != 'Z' && state != 'X')
}

async fn wait_not_running(env: &mut PodEnv, id: &str, what: &str) -> cri::ContainerStatus {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let status = env.status(id).await;
        if status.state != RUNNING {
            return status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: still reported running: {status:?}\n--- wharfd log:\n{}",
            env.daemon.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The container init and the monitor killed from outside (SIGKILL), with wharfd up
/// and while it is down: the runtime reports what happened. A killed init exited 137
/// (the monitor saw it). A killed monitor leaves a container nobody can log or wait
/// for: wharf kills it too, as containerd kills a task whose shim died, and reports
/// 137 with the reason. Both killed while wharfd was down: nobody saw the init's exit
/// status, so the container is Unknown (exit code 255). Each is removed completely.
#[tokio::test(flavor = "multi_thread")]
async fn killed_inits_and_monitors_are_reported_as_what_happened() {
    let mut env = PodEnv::start().await;
    let state = env.daemon.paths.state.clone();
    let pod = env.pod_config("kills");
    let pod_id = env.run_pod(&pod).await;
    let mut containers = Vec::new();
    for name in [
        "init-up",
        "monitor-up",
        "init-down",
        "monitor-down",
        "both-down",
    ] {
        let config = env.container_config(name, &["sleep", "100000"]);
        let id = env.run(&pod_id, &pod, &config).await;
        let (monitor, init) = monitor_and_init(&state, &id);
        containers.push((name, id, monitor, init));
    }
    let find = |name: &str| {
        containers
            .iter()
            .find(|c| c.0 == name)
            .map(|c| (c.1.clone(), c.2, c.3))
            .expect("a container of the test")
    };

    // wharfd up.
    let (id, _, init) = find("init-up");
    sigkill(init);
    let status = wait_not_running(&mut env, &id, "init killed").await;
    assert_eq!(
        (status.state, status.exit_code, status.reason.as_str()),
        (EXITED, 137, "Error"),
        "init killed: {status:?}"
    );
    let (id, monitor, init) = find("monitor-up");
    sigkill(monitor);
    let status = wait_not_running(&mut env, &id, "monitor killed").await;
    assert_eq!(
        (status.state, status.exit_code, status.reason.as_str()),
        (EXITED, 137, "Error"),
        "monitor killed: {status:?}"
    );
    assert!(
        status.message.contains("monitor"),
        "the message says why: {status:?}"
    );
    assert!(
        !runs(init),
        "the init of a container whose monitor died still runs"
    );

    // wharfd down.
    env.daemon.kill9();
    let (_, _, init) = find("init-down");
    sigkill(init);
    let (_, monitor, monitor_down_init) = find("monitor-down");
    sigkill(monitor);
    let (_, monitor, init) = find("both-down");
    sigkill(monitor);
    // The monitor's death reparents the init; wait until it is gone before the init.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while runs(monitor) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    sigkill(init);
    env.daemon.restart().await;
    env.rt = env.daemon.runtime_client().await;

    let (id, _, _) = find("init-down");
    let status = wait_not_running(&mut env, &id, "init killed while wharfd was down").await;
    assert_eq!(
        (status.state, status.exit_code, status.reason.as_str()),
        (EXITED, 137, "Error"),
        "init killed while wharfd was down: {status:?}"
    );
    let (id, _, _) = find("monitor-down");
    let status = wait_not_running(&mut env, &id, "monitor killed while wharfd was down").await;
    assert_eq!(
        (status.state, status.exit_code, status.reason.as_str()),
        (EXITED, 137, "Error"),
        "monitor killed while wharfd was down: {status:?}"
    );
    assert!(
        !runs(monitor_down_init),
        "the init of a container whose monitor died while wharfd was down still runs"
    );
    let (id, _, _) = find("both-down");
    let status = wait_not_running(&mut env, &id, "both killed while wharfd was down").await;
    assert_eq!(
        (status.state, status.exit_code, status.reason.as_str()),
        (UNKNOWN, 255, "Unknown"),
        "monitor and init killed while wharfd was down: {status:?}"
    );

    for (_, id, _, _) in &containers {
        env.remove_container(id).await;
    }
    env.stop_pod(&pod_id).await;
    env.remove_pod(&pod_id).await;
    let left = processes_of(&state);
    assert!(left.is_empty(), "processes left: {left:?}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    for (name, id, _, _) in &containers {
        assert!(!mounts.contains(id.as_str()), "{name}: mounts left");
        let cgroups = cgroups_named(&env.daemon.cgroup_parent, id);
        assert!(cgroups.is_empty(), "{name}: cgroups left: {cgroups:?}");
    }
}
