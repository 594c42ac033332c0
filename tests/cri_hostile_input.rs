//! CRI input that tries to escape its place or gain what its pod never had, and
//! clients that give up half-way: refused with InvalidArgument naming the field before
//! anything is made, or completed / rolled back whatever the client does.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use support::pods::{pod_namespaces, unique, wait_for_file, PodEnv};
use tonic::Code;

fn assert_invalid(err: &tonic::Status, field: &str) {
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains(field),
        "the message names {field}: {}",
        err.message()
    );
    assert!(
        err.message().len() < 1024,
        "the message is bounded: {} bytes",
        err.message().len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn log_paths_stay_inside_the_pod_log_directory() {
    let mut env = PodEnv::start().await;
    let pod = env.pod_config("logs");
    let pod_id = env.run_pod(&pod).await;
    let log_dir = std::path::PathBuf::from(&pod.log_directory);

    // An absolute log_path is joined as a string (containerd), not taken as it is.
    let victim = std::env::temp_dir().join(unique("wharf-victim"));
    let mut config = env.container_config("abs", &["echo", "absolute"]);
    config.log_path = victim.display().to_string();
    let id = env.run(&pod_id, &pod, &config).await;
    let inside = log_dir.join(victim.strip_prefix("/").expect("absolute"));
    wait_for_file(&inside, |t| t.contains("absolute")).await;
    assert!(!victim.exists(), "the log went to {}", victim.display());
    assert_eq!(env.status(&id).await.log_path, inside.display().to_string());

    // `..` that stays inside is fine; `..` that leaves is refused, nothing made.
    let mut config = env.container_config("dots", &["echo", "dots"]);
    config.log_path = "sub/../dots.log".into();
    env.run(&pod_id, &pod, &config).await;
    wait_for_file(&log_dir.join("dots.log"), |t| t.contains("dots")).await;
    for escape in ["../escape.log", "a/../../escape.log", "/../../escape.log"] {
        let mut config = env.container_config(&unique("escape"), &["true"]);
        config.log_path = escape.into();
        let err = env
            .create(&pod_id, &pod, &config)
            .await
            .expect_err("a log path that leaves the directory");
        assert_invalid(&err, "config.log_path");
    }
    assert!(!log_dir
        .parent()
        .expect("parent")
        .join("escape.log")
        .exists());
    assert_eq!(
        env.list_containers(cri::ContainerFilter::default())
            .await
            .len(),
        2
    );

    // A symlink in the log file's place is not followed.
    let target = std::env::temp_dir().join(unique("wharf-link-target"));
    std::fs::write(&target, "untouched").expect("target");
    std::os::unix::fs::symlink(&target, log_dir.join("link.log")).expect("symlink");
    let mut config = env.container_config("link", &["echo", "through-link"]);
    config.log_path = "link.log".into();
    let err = env
        .create(&pod_id, &pod, &config)
        .await
        .expect_err("a log file that is a symlink");
    assert!(err.message().contains("link.log"), "{}", err.message());
    assert_eq!(
        std::fs::read_to_string(&target).expect("target"),
        "untouched"
    );
    std::fs::remove_file(&target).expect("remove target");
    env.stop_pod(&pod_id).await;
    env.remove_pod(&pod_id).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pod_configs_are_checked_before_anything_is_made() {
    let mut env = PodEnv::start().await;
    type Change = fn(&mut cri::PodSandboxConfig);
    let cases: Vec<(&str, Change)> = vec![
        ("config.log_directory", |p| {
            p.log_directory = "rel-probe-logs".into()
        }),
        ("config.hostname", |p| {
            p.hostname = "web\n10.0.0.1 evil".into()
        }),
        ("config.hostname", |p| p.hostname = "h".repeat(10_000)),
        ("config.hostname", |p| p.hostname = "-leading-dash".into()),
        ("config.dns_config.servers[0]", |p| {
            p.dns_config = Some(cri::DnsConfig {
                servers: vec!["not-an-address".into()],
                ..Default::default()
            })
        }),
        ("config.dns_config", |p| {
            p.dns_config = Some(cri::DnsConfig {
                options: vec!["ndots:5\nnameserver 1.1.1.1".into()],
                ..Default::default()
            })
        }),
        ("config.port_mappings[0].host_ip", |p| {
            p.port_mappings = vec![cri::PortMapping {
                protocol: cri::Protocol::Tcp as i32,
                container_port: 80,
                host_port: 8080,
                host_ip: "nowhere".into(),
            }]
        }),
        ("config.port_mappings[0].container_port", |p| {
            p.port_mappings = vec![cri::PortMapping {
                protocol: cri::Protocol::Tcp as i32,
                container_port: 70_000,
                host_port: 0,
                host_ip: String::new(),
            }]
        }),
        ("linux.sysctls[\"net.ipv4/../../kernel/panic\"]", |p| {
            p.linux.as_mut().expect("linux").sysctls =
                HashMap::from([("net.ipv4/../../kernel/panic".into(), "1".into())])
        }),
        ("linux.sysctls[\"kernel.panic\"]", |p| {
            p.linux.as_mut().expect("linux").sysctls =
                HashMap::from([("kernel.panic".into(), "1".into())])
        }),
        ("linux.sysctls[\"net.ipv4.ip_forward\"]", |p| {
            pod_namespaces(p).network = cri::NamespaceMode::Node as i32;
            p.linux.as_mut().expect("linux").sysctls =
                HashMap::from([("net.ipv4.ip_forward".into(), "1".into())])
        }),
    ];
    for (field, change) in cases {
        let mut pod = env.pod_config("bad");
        change(&mut pod);
        let err = env
            .run_pod_with(&pod, "")
            .await
            .expect_err("a bad pod config");
        assert_invalid(&err, field);
        env.assert_no_pods_left().await;
    }
    let cwd = std::fs::read_link(format!("/proc/{}/cwd", env.daemon.pid())).expect("cwd");
    assert!(!cwd.join("rel-probe-logs").exists());
    // A namespaced sysctl is still fine.
    let mut pod = env.pod_config("good-sysctl");
    pod.linux.as_mut().expect("linux").sysctls =
        HashMap::from([("net.ipv4.ping_group_range".into(), "0 0".into())]);
    let pod_id = env.run_pod(&pod).await;
    env.stop_pod(&pod_id).await;
    env.remove_pod(&pod_id).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_container_gets_nothing_its_pod_does_not_have() {
    let mut env = PodEnv::start().await;
    let pod = env.pod_config("within");
    let pod_id = env.run_pod(&pod).await;
    let mut config = env.container_config("hostpid", &["true"]);
    config
        .linux
        .get_or_insert_with(Default::default)
        .security_context = Some(cri::LinuxContainerSecurityContext {
        namespace_options: Some(cri::NamespaceOption {
            pid: cri::NamespaceMode::Node as i32,
            ..Default::default()
        }),
        ..Default::default()
    });
    let err = env
        .create(&pod_id, &pod, &config)
        .await
        .expect_err("host PID in a pod without it");
    assert_invalid(&err, "namespace_options.pid");

    // A Localhost seccomp profile that is a FIFO is refused, not opened forever.
    let dir = tempfile::tempdir().expect("dir");
    let fifo = dir.path().join("profile.json");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("fifo");
    let mut config = env.container_config("fifo", &["true"]);
    config
        .linux
        .get_or_insert_with(Default::default)
        .security_context = Some(cri::LinuxContainerSecurityContext {
        seccomp: Some(cri::SecurityProfile {
            profile_type: cri::security_profile::ProfileType::Localhost as i32,
            localhost_ref: fifo.display().to_string(),
        }),
        ..Default::default()
    });
    let created = tokio::time::timeout(Duration::from_secs(20), env.create(&pod_id, &pod, &config))
        .await
        .expect("CreateContainer with a FIFO profile hung");
    let err = created.expect_err("a FIFO as seccomp profile");
    assert_invalid(&err, "not a regular file");
    assert!(env
        .list_containers(cri::ContainerFilter::default())
        .await
        .is_empty());
    env.stop_pod(&pod_id).await;
    env.remove_pod(&pod_id).await;
}

/// A small deterministic generator (xorshift), seeded from the clock and printed, so a
/// failing run can be replayed with WHARF_TEST_SEED.
struct Rng(u64);

impl Rng {
    fn seeded() -> Rng {
        let seed = std::env::var("WHARF_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
                    | 1
            });
        eprintln!("cancellation test seed: WHARF_TEST_SEED={seed}");
        Rng(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelled_creates_complete_or_roll_back() {
    const TRIES: usize = 200;
    let mut env = PodEnv::start().await;
    let mut rng = Rng::seeded();
    let base = env.pod_config("cancel-base");
    let base_id = env.run_pod(&base).await;
    let mut pods = Vec::new();
    let mut containers = Vec::new();
    for i in 0..TRIES {
        let deadline = Duration::from_millis(1 + rng.below(60));
        if i % 2 == 0 {
            let mut pod = env.pod_config("cancel");
            pod_namespaces(&mut pod).pid = cri::NamespaceMode::Pod as i32;
            let name = pod.metadata.as_ref().expect("metadata").name.clone();
            let call = env.rt.run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(pod),
                runtime_handler: String::new(),
            });
            let _ = tokio::time::timeout(deadline, call).await;
            pods.push(name);
        } else {
            let config = env.container_config(&unique("cancel"), &["sleep", "3600"]);
            let name = config.metadata.as_ref().expect("metadata").name.clone();
            let call = env.rt.create_container(cri::CreateContainerRequest {
                pod_sandbox_id: base_id.clone(),
                config: Some(config),
                sandbox_config: Some(base.clone()),
            });
            let _ = tokio::time::timeout(deadline, call).await;
            containers.push(name);
        }
    }
    // The detached work finishes by itself; then every object is whole or absent.
    let settle = Instant::now() + Duration::from_secs(60);
    loop {
        let listed_pods = env.list_pods(cri::PodSandboxFilter::default()).await;
        let listed = env.list_containers(cri::ContainerFilter::default()).await;
        let pods_ready = listed_pods
            .iter()
            .all(|p| p.state == cri::PodSandboxState::SandboxReady as i32);
        let containers_created = listed
            .iter()
            .all(|c| c.state == cri::ContainerState::ContainerCreated as i32);
        let state = &env.daemon.paths.state;
        let pod_dirs = std::fs::read_dir(state.join("pods")).map_or(0, |d| d.count());
        let container_dirs = std::fs::read_dir(state.join("containers")).map_or(0, |d| d.count());
        if pods_ready
            && containers_created
            && pod_dirs == listed_pods.len()
            && container_dirs == listed.len()
        {
            break;
        }
        assert!(
            Instant::now() < settle,
            "half-made objects remain: {} pods ({pod_dirs} dirs), {} containers \
             ({container_dirs} dirs)",
            listed_pods.len(),
            listed.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A retry of a cancelled name either finds it made or makes it now.
    for (kind, name) in pods
        .iter()
        .map(|n| ("pod", n))
        .chain(containers.iter().map(|n| ("container", n)))
        .take(6)
    {
        let listed_pods = env.list_pods(cri::PodSandboxFilter::default()).await;
        let listed = env.list_containers(cri::ContainerFilter::default()).await;
        let made = match kind {
            "pod" => listed_pods
                .iter()
                .any(|p| p.metadata.as_ref().is_some_and(|m| &m.name == name)),
            _ => listed
                .iter()
                .any(|c| c.metadata.as_ref().is_some_and(|m| &m.name == name)),
        };
        if made {
            continue;
        }
        if kind == "container" {
            let mut config = env.container_config(name, &["sleep", "3600"]);
            config.metadata.as_mut().expect("metadata").name = name.clone();
            env.create(&base_id, &base, &config)
                .await
                .unwrap_or_else(|err| panic!("retry of container {name}: {err:?}"));
        }
    }
    // Everything goes away completely.
    for container in env.list_containers(cri::ContainerFilter::default()).await {
        env.remove_container(&container.id).await;
    }
    for pod in env.list_pods(cri::PodSandboxFilter::default()).await {
        env.stop_pod(&pod.id).await;
        env.remove_pod(&pod.id).await;
    }
    env.assert_no_pods_left().await;
    let state = env.daemon.paths.state.clone();
    let dirs = std::fs::read_dir(state.join("containers")).map_or(0, |d| d.count());
    assert_eq!(dirs, 0, "container state dirs left");
    let monitors: Vec<String> = std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).to_string())
        .filter(|c| c.contains(&state.display().to_string()) && !c.contains("--cri-socket"))
        .collect();
    assert!(monitors.is_empty(), "processes left: {monitors:?}");
}
