//! wharfd start-up, refusal of a second daemon, bad configuration, signals and restart.

mod support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

use k8s_cri::v1::VersionRequest;
use support::daemon::{require_root, run_wharfd, Daemon};

const EXIT_TIMEOUT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn socket_is_root_only() {
    let daemon = Daemon::start().await;
    let meta = std::fs::metadata(&daemon.paths.cri_socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o660);
    assert_eq!((meta.uid(), meta.gid()), (0, 0));
}

#[tokio::test]
async fn second_daemon_on_the_same_root_is_refused_and_the_first_keeps_serving() {
    let daemon = Daemon::start().await;
    // Same root, but its own state dir and socket: only the lock can stop it.
    let other_state = daemon.dir().join("other-state");
    let args = vec![
        "--config".to_string(),
        daemon.paths.config.display().to_string(),
        "--root".to_string(),
        daemon.paths.root.display().to_string(),
        "--state".to_string(),
        other_state.display().to_string(),
        "--cri-socket".to_string(),
        other_state.join("wharf.sock").display().to_string(),
    ];
    let output = run_wharfd(&args, EXIT_TIMEOUT);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "second daemon must fail: {stderr}"
    );
    assert!(
        stderr.contains("already running on root")
            && stderr.contains(&daemon.paths.root.display().to_string())
            && stderr.contains(&format!("pid {}", daemon.pid())),
        "{stderr}"
    );
    assert!(!other_state.join("wharf.sock").exists());

    let version = daemon
        .runtime_client()
        .await
        .version(VersionRequest::default())
        .await
        .expect("the first daemon still serves")
        .into_inner();
    assert_eq!(version.runtime_name, "wharf");
}

#[tokio::test]
async fn second_daemon_on_the_same_socket_is_refused() {
    let daemon = Daemon::start().await;
    let other = tempfile::tempdir().unwrap();
    let args = vec![
        "--config".to_string(),
        daemon.paths.config.display().to_string(),
        "--root".to_string(),
        other.path().join("root").display().to_string(),
        "--state".to_string(),
        other.path().join("state").display().to_string(),
        "--cri-socket".to_string(),
        daemon.paths.cri_socket.display().to_string(),
    ];
    let output = run_wharfd(&args, EXIT_TIMEOUT);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("in use")
            && stderr.contains(&daemon.paths.cri_socket.display().to_string()),
        "{stderr}"
    );
    daemon
        .runtime_client()
        .await
        .version(VersionRequest::default())
        .await
        .expect("the first daemon's socket was left alone");
}

#[tokio::test]
async fn sigterm_exits_zero_and_removes_the_socket() {
    let mut daemon = Daemon::start().await;
    let status = daemon.stop();
    assert_eq!(status.code(), Some(0), "log:\n{}", daemon.log());
    assert!(
        !daemon.paths.cri_socket.exists(),
        "socket {} left behind",
        daemon.paths.cri_socket.display()
    );
    assert!(daemon.log().contains("wharfd stopped"));
}

#[tokio::test]
async fn restart_after_kill_9_reuses_the_root_and_replaces_the_stale_socket() {
    let mut daemon = Daemon::start().await;
    daemon.kill9();
    // The socket file survives a SIGKILL; the lock does not.
    assert!(daemon.paths.cri_socket.exists());
    daemon.restart().await;
    let version = daemon
        .runtime_client()
        .await
        .version(VersionRequest::default())
        .await
        .expect("Version after restart")
        .into_inner();
    assert_eq!(version.runtime_name, "wharf");
    assert_eq!(daemon.stop().code(), Some(0));
}

/// Runs wharfd with a config file and extra flags in a fresh dir; asserts that it fails
/// with a message containing every one of `expected`, and creates nothing.
fn assert_start_fails(config_toml: &str, extra_args: &[&str], expected: &[&str]) {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("wharf.toml");
    std::fs::write(&config, config_toml).unwrap();
    let root = dir.path().join("root");
    let state = dir.path().join("state");
    let mut args = vec![
        "--config".to_string(),
        config.display().to_string(),
        "--root".to_string(),
        root.display().to_string(),
        "--state".to_string(),
        state.display().to_string(),
        "--cri-socket".to_string(),
        state.join("wharf.sock").display().to_string(),
    ];
    args.extend(extra_args.iter().map(|s| s.to_string()));
    let output = run_wharfd(&args, EXIT_TIMEOUT);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "wharfd started with bad input: {stderr}"
    );
    for needle in expected {
        assert!(
            stderr.contains(needle),
            "stderr lacks {needle:?}:\n{stderr}"
        );
    }
    assert!(
        !root.exists() && !state.exists(),
        "a rejected configuration must not create directories"
    );
}

#[test]
fn unknown_config_key_is_named() {
    assert_start_fails(
        "[cri]\nsokcet = \"/tmp/x.sock\"\n",
        &[],
        &["sokcet", "wharf.toml"],
    );
}

#[test]
fn bad_config_value_is_named() {
    assert_start_fails("[log]\nformat = \"xml\"\n", &[], &["format", "xml"]);
    assert_start_fails(
        "cgroup_driver = \"systemd\"\n",
        &[],
        &["cgroup_driver", "systemd"],
    );
    assert_start_fails(
        "[cri]\nshutdown_timeout_secs = -1\n",
        &[],
        &["shutdown_timeout_secs"],
    );
    assert_start_fails(
        "[registry]\nplatform = \"linux/amd64/v8/extra\"\n",
        &[],
        &["registry.platform", "linux/amd64/v8/extra"],
    );
    assert_start_fails(
        "[registry.mirrors]\n\"docker.io\" = [\"mirror.local\"]\n",
        &[],
        &["registry.mirrors", "mirror.local"],
    );
}

#[test]
fn bad_flag_values_are_named() {
    assert_start_fails(
        "",
        &["--root", "relative/root"],
        &["root", "relative/root", "absolute"],
    );
    assert_start_fails("", &["--log-level", "loud"], &["log.level", "loud"]);
    let long_socket = format!("/tmp/{}.sock", "s".repeat(120));
    assert_start_fails(
        "",
        &["--cri-socket", &long_socket],
        &["cri.socket", "at most"],
    );
}

#[test]
fn missing_config_file_is_named() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("absent.toml");
    let output = run_wharfd(
        &["--config".to_string(), missing.display().to_string()],
        EXIT_TIMEOUT,
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains(&missing.display().to_string()), "{stderr}");
}

#[test]
fn unusable_root_path_is_named() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a directory").unwrap();
    let config = dir.path().join("wharf.toml");
    std::fs::write(&config, "").unwrap();
    let state = dir.path().join("state");
    let output = run_wharfd(
        &[
            "--config".to_string(),
            config.display().to_string(),
            "--root".to_string(),
            file.display().to_string(),
            "--state".to_string(),
            state.display().to_string(),
            "--cri-socket".to_string(),
            state.join("wharf.sock").display().to_string(),
        ],
        EXIT_TIMEOUT,
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains(&file.display().to_string()) && stderr.contains("not a directory"),
        "{stderr}"
    );
    assert!(!state.join("wharf.sock").exists());
}

#[test]
fn print_config_shows_file_and_flag_values() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("wharf.toml");
    std::fs::write(&config, "[log]\nformat = \"json\"\n").unwrap();
    let output = run_wharfd(
        &[
            "--config".to_string(),
            config.display().to_string(),
            "--root".to_string(),
            "/srv/wharf-elsewhere".to_string(),
            "--print-config".to_string(),
        ],
        EXIT_TIMEOUT,
    );
    assert!(output.status.success(), "{output:?}");
    let printed: toml::Table = toml::from_str(&String::from_utf8_lossy(&output.stdout)).unwrap();
    assert_eq!(printed["root"].as_str(), Some("/srv/wharf-elsewhere"));
    assert_eq!(printed["log"]["format"].as_str(), Some("json"));
    assert_eq!(printed["state"].as_str(), Some("/run/wharf"));
}

/// The soft limit of the open-file limit of process `pid`.
fn soft_nofile(pid: u32) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no open-file limit in {limits}"))
}

/// Many idle clients (more than the usual soft limit of 1024 open files) do not
/// exhaust wharfd: it raises its soft limit to the hard one at start, as Go daemons
/// do, and keeps serving the CRI and the Docker API while they hang on.
#[tokio::test]
async fn many_idle_clients_do_not_exhaust_the_daemon() {
    let mut docker = support::docker::DockerEnv::start_pulled().await;
    assert!(docker.env.daemon.stop().success());
    docker.env.daemon.nofile = Some((1024, 16384));
    docker.env.daemon.restart().await;
    let pid = docker.env.daemon.pid();
    assert_eq!(soft_nofile(pid), 16384);
    let mut idle = Vec::new();
    for i in 0..1500 {
        let socket = if i % 3 == 0 {
            docker.env.daemon.paths.cri_socket.clone()
        } else {
            docker.socket()
        };
        idle.push(std::os::unix::net::UnixStream::connect(&socket).expect("an idle client"));
    }
    // Still served, with the clients connected.
    assert_eq!(
        docker.ok(&["run", "--rm", &docker.image, "echo", "served"]),
        "served"
    );
    let mut client = docker.env.daemon.runtime_client().await;
    assert!(client.version(VersionRequest::default()).await.is_ok());
    drop(idle);
}

/// Clients that connect and stay (slow, idle or hostile) hold at most
/// `max_connections` of a socket: the next is refused with an error that says why (the
/// docker CLI shows dockerd-style JSON of a 503; crictl, a grpc-go client, the GOAWAY's
/// debug data), and once some go the socket serves again.
#[tokio::test(flavor = "multi_thread")]
async fn connections_past_the_limit_are_refused_with_a_clear_error() {
    use std::io::{Read, Write};
    let docker = support::docker::DockerEnv::start_with_config(
        "[cri]\nmax_connections = 24\n[docker]\nmax_connections = 24\n",
    )
    .await;
    let cri_socket = docker.env.daemon.paths.cri_socket.clone();
    // Fill both sockets.
    let connect = |path: &std::path::Path| {
        std::os::unix::net::UnixStream::connect(path).expect("an idle client")
    };
    let mut idle_docker: Vec<_> = (0..24).map(|_| connect(&docker.socket())).collect();
    // gRPC clients that made one call and stay connected (a connection that never
    // says anything may be closed by the server before the test gets to it).
    // (The fixture's own clients may hold some of the 24.)
    let mut idle_cri = Vec::new();
    let refusal = loop {
        let channel = wharf::cri::connect(&cri_socket)
            .await
            .expect("a CRI client");
        let mut client = k8s_cri::v1::runtime_service_client::RuntimeServiceClient::new(channel);
        match client.version(VersionRequest::default()).await {
            Ok(_) => idle_cri.push(client),
            Err(status) => break status,
        }
        assert!(
            idle_cri.len() <= 24,
            "more than 24 CRI connections were served"
        );
    };
    assert!(
        refusal.code() == tonic::Code::Unavailable
            && refusal.message().contains("[cri] max_connections"),
        "the CRI call past the limit: {refusal:?}"
    );
    // Half a request each: slow clients that never finish their headers.
    for stream in &mut idle_docker {
        stream
            .write_all(b"GET /_ping HTTP/1.1\r\nHost: d")
            .expect("a slow client");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut refused = connect(&docker.socket());
    refused
        .write_all(b"GET /_ping HTTP/1.1\r\nHost: d\r\n\r\n")
        .expect("send a request");
    let mut answer = String::new();
    refused
        .read_to_string(&mut answer)
        .expect("read the refusal");
    assert!(
        answer.starts_with("HTTP/1.1 503") && answer.contains("[docker] max_connections"),
        "{answer}"
    );
    let cli = docker.run(&["version", "--format", "{{.Server.Version}}"]);
    assert!(
        cli.status != 0 && cli.stderr.contains("too many connections"),
        "docker version at the limit: {cli:?}"
    );
    let crictl = support::go_tools::crictl(&cri_socket, &["--timeout", "5s", "version"]);
    let crictl_err = String::from_utf8_lossy(&crictl.stderr);
    assert!(
        !crictl.status.success() && crictl_err.contains("too many connections"),
        "crictl at the limit: {crictl:?}"
    );

    // Some clients go: the sockets serve again.
    idle_docker.truncate(20);
    idle_cri.truncate(idle_cri.len().saturating_sub(4));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        docker.ok(&["version", "--format", "{{.Server.Version}}"]),
        docker.ok(&["version", "--format", "{{.Server.Version}}"])
    );
    support::go_tools::crictl_ok(&cri_socket, &["version"]);
    drop(idle_docker);
    drop(idle_cri);
}

/// A container that forks until its pids limit stays within it, and neither wharfd nor
/// the removal of the container suffers.
#[tokio::test]
async fn a_fork_bomb_stays_in_its_pids_limit() {
    let docker = support::docker::DockerEnv::start_pulled().await;
    let name = support::pods::unique("bomb");
    docker.ok(&[
        "run",
        "-d",
        "--name",
        &name,
        "--pids-limit",
        "40",
        &docker.image,
        "sh",
        "-c",
        "bomb() { bomb | bomb & }; bomb; sleep 600",
    ]);
    let mut most = 0u64;
    // (Each `stats --no-stream` samples the CPU over about a second.)
    for _ in 0..4 {
        let pids: u64 = docker
            .ok(&["stats", "--no-stream", "--format", "{{.PIDs}}", &name])
            .parse()
            .unwrap_or(0);
        most = most.max(pids);
    }
    assert!(most > 5, "the bomb did not fork ({most} processes)");
    assert!(most <= 40, "{most} processes past a limit of 40");
    assert_eq!(
        docker.ok(&["version", "--format", "{{.Server.Os}}"]),
        "linux"
    );
    let removed = std::time::Instant::now();
    docker.ok(&["rm", "-f", &name]);
    assert!(
        removed.elapsed() < Duration::from_secs(20),
        "the removal took {:?}",
        removed.elapsed()
    );
    assert_eq!(docker.ok(&["ps", "-aq"]), "");
}
