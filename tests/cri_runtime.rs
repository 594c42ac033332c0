//! CRI RuntimeService pods and containers against a real wharfd, real namespaces,
//! cgroups and overlayfs, with the busybox image pulled from a real local registry.

mod support;

fn set_security_context(
    config: &mut cri::ContainerConfig,
    context: cri::LinuxContainerSecurityContext,
) {
    config
        .linux
        .get_or_insert_with(Default::default)
        .security_context = Some(context);
}

use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use support::pods::{parse_log, pod_namespaces, unique, wait_for_file, PodEnv};
use tonic::Code;

const EXITED: i32 = cri::ContainerState::ContainerExited as i32;
const RUNNING: i32 = cri::ContainerState::ContainerRunning as i32;

#[tokio::test(flavor = "multi_thread")]
async fn container_lifecycle_exit_code_and_logs() {
    let mut env = PodEnv::start().await;
    let pod = env.pod_config("life");
    let pod_id = env.run_pod(&pod).await;
    let config = env.container_config(
        "main",
        &["sh", "-c", "echo hello; echo oops >&2; echo; exit 3"],
    );
    let id = env.create(&pod_id, &pod, &config).await.expect("create");
    let created = env.status(&id).await;
    assert_eq!(created.state, cri::ContainerState::ContainerCreated as i32);
    assert!(created.created_at > 0);
    env.rt
        .start_container(cri::StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .expect("start");
    let status = env.wait_exited(&id).await;
    assert_eq!(status.exit_code, 3);
    assert_eq!(status.reason, "Error");
    assert!(status.started_at >= status.created_at && status.finished_at >= status.started_at);
    assert_eq!(
        status.image.as_ref().map(|i| i.image.as_str()),
        Some(env.image.as_str())
    );
    assert!(status.image_ref.contains("sha256:"), "{}", status.image_ref);
    assert_eq!(
        status.log_path,
        env.log_path(&pod, "main").display().to_string()
    );
    assert_eq!(
        status.labels.get("container").map(String::as_str),
        Some("main")
    );

    let log = wait_for_file(&env.log_path(&pod, "main"), |t| t.lines().count() >= 3).await;
    let mut lines = parse_log(&log);
    lines.sort();
    assert_eq!(
        lines,
        vec![
            ("stderr".into(), "F".into(), "oops".into()),
            ("stdout".into(), "F".into(), "".into()),
            ("stdout".into(), "F".into(), "hello".into()),
        ]
    );

    // Filters: by pod, state, label, id prefix.
    let by_pod = env
        .list_containers(cri::ContainerFilter {
            pod_sandbox_id: pod_id.clone(),
            ..Default::default()
        })
        .await;
    assert_eq!(by_pod.len(), 1);
    let running = env
        .list_containers(cri::ContainerFilter {
            pod_sandbox_id: pod_id.clone(),
            state: Some(cri::ContainerStateValue { state: RUNNING }),
            ..Default::default()
        })
        .await;
    assert!(running.is_empty());
    let by_label = env
        .list_containers(cri::ContainerFilter {
            id: id[..12].to_string(),
            label_selector: [("container".to_string(), "main".to_string())].into(),
            ..Default::default()
        })
        .await;
    assert_eq!(by_label.len(), 1);
    assert_eq!(by_label[0].id, id);

    // Remove is idempotent; the pod goes with everything it had.
    env.remove_container(&id).await;
    env.remove_container(&id).await;
    let gone = env
        .rt
        .container_status(cri::ContainerStatusRequest {
            container_id: id.clone(),
            verbose: false,
        })
        .await
        .expect_err("status of a removed container");
    assert_eq!(gone.code(), Code::NotFound);
    env.stop_pod(&pod_id).await;
    env.stop_pod(&pod_id).await;
    let pods = env
        .list_pods(cri::PodSandboxFilter {
            id: pod_id.clone(),
            ..Default::default()
        })
        .await;
    assert_eq!(pods[0].state, cri::PodSandboxState::SandboxNotready as i32);
    env.remove_pod(&pod_id).await;
    env.remove_pod(&pod_id).await;
    assert!(env
        .list_pods(cri::PodSandboxFilter::default())
        .await
        .is_empty());
    let state = &env.daemon.paths.state;
    for dir in ["pods", "containers"] {
        let left: Vec<_> = std::fs::read_dir(state.join(dir))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "left in {dir}: {left:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn long_lines_are_split_into_partial_entries() {
    let mut env = PodEnv::start().await;
    let pod = env.pod_config("longlog");
    let pod_id = env.run_pod(&pod).await;
    // 40000 bytes then a newline: 16384 + 16384 (P, P) + 7232 (F).
    let config = env.container_config(
        "long",
        &[
            "sh",
            "-c",
            "head -c 40000 /dev/zero | tr '\\0' x; echo; printf tail",
        ],
    );
    let id = env.run(&pod_id, &pod, &config).await;
    assert_eq!(env.wait_exited(&id).await.exit_code, 0);
    let log = wait_for_file(&env.log_path(&pod, "long"), |t| t.lines().count() >= 4).await;
    let lines = parse_log(&log);
    let tags: Vec<(&str, usize)> = lines
        .iter()
        .map(|(_, tag, text)| (tag.as_str(), text.len()))
        .collect();
    assert_eq!(
        tags,
        vec![("P", 16384), ("P", 16384), ("F", 7232), ("F", 4)]
    );
    assert_eq!(lines[3].2, "tail");
    env.remove_pod(&pod_id).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_sync_output_exit_code_and_timeout() {
    let mut env = PodEnv::start().await;
    let pod = env.pod_config("exec");
    let pod_id = env.run_pod(&pod).await;
    let id = env
        .run(
            &pod_id,
            &pod,
            &env.container_config("sleeper", &["sleep", "1000"]),
        )
        .await;
    let out = env
        .exec(&id, &["sh", "-c", "echo out; echo err >&2; exit 7"], 10)
        .await
        .expect("exec");
    assert_eq!(out.exit_code, 7);
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");

    let started = Instant::now();
    let err = env
        .exec(&id, &["sleep", "60"], 1)
        .await
        .expect_err("exec past its timeout");
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the timed-out exec was not killed"
    );
    // The timed-out process is gone.
    let ps = env.exec_ok(&id, &["ps", "-o", "args"]).await;
    assert!(!ps.contains("sleep 60"), "{ps}");

    let missing = env.exec(&id, &["/no/such/binary"], 10).await;
    match missing {
        Ok(out) => assert_ne!(out.exit_code, 0),
        Err(status) => assert_ne!(status.code(), Code::Ok),
    }
    env.remove_pod(&pod_id).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn stop_sends_term_then_kill() {
    let mut env = PodEnv::start().await;
    let pod = env.pod_config("stop");
    let pod_id = env.run_pod(&pod).await;
    let graceful = env
        .run(
            &pod_id,
            &pod,
            &env.container_config(
                "graceful",
                &[
                    "sh",
                    "-c",
                    "trap 'exit 0' TERM; while true; do sleep 0.1; done",
                ],
            ),
        )
        .await;
    // PID 1 without a TERM handler ignores SIGTERM: only the SIGKILL ends it.
    let stubborn = env
        .run(
            &pod_id,
            &pod,
            &env.container_config("stubborn", &["sleep", "1000"]),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    env.stop_container(&graceful, 10).await;
    let status = env.status(&graceful).await;
    assert_eq!(status.state, EXITED);
    assert_eq!(status.exit_code, 0);
    assert_eq!(status.reason, "Completed");
    env.stop_container(&stubborn, 1).await;
    let status = env.status(&stubborn).await;
    assert_eq!(status.state, EXITED);
    assert_eq!(status.exit_code, 137);
    // Stopping again is fine.
    env.stop_container(&stubborn, 1).await;
    env.remove_pod(&pod_id).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn containers_of_a_pod_share_network_ipc_and_hostname() {
    let mut env = PodEnv::start().await;
    let pod = env.pod_config("shared");
    let pod_id = env.run_pod(&pod).await;
    let server = env
        .run(
            &pod_id,
            &pod,
            &env.container_config(
                "server",
                &["sh", "-c", "mkdir /www && echo hi-from-server > /www/index.html && exec httpd -f -p 18080 -h /www"],
            ),
        )
        .await;
    let client = env
        .run(
            &pod_id,
            &pod,
            &env.container_config("client", &["sleep", "1000"]),
        )
        .await;
    let mut body = String::new();
    for _ in 0..100 {
        let out = env
            .exec(
                &client,
                &["wget", "-qO-", "http://127.0.0.1:18080/index.html"],
                10,
            )
            .await
            .expect("exec wget");
        if out.exit_code == 0 {
            body = String::from_utf8_lossy(&out.stdout).trim().to_string();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(body, "hi-from-server");
    for ns in ["net", "ipc", "uts"] {
        let path = format!("/proc/self/ns/{ns}");
        let a = env.exec_ok(&server, &["readlink", &path]).await;
        let b = env.exec_ok(&client, &["readlink", &path]).await;
        assert_eq!(a, b, "{ns} namespace differs between the pod's containers");
        let host = std::fs::read_link(&path).unwrap().display().to_string();
        assert_ne!(a, host, "{ns} namespace is the host's");
    }
    // One /dev/shm per pod, shared by its containers.
    env.exec_ok(&server, &["sh", "-c", "echo shared > /dev/shm/marker"])
        .await;
    assert_eq!(
        env.exec_ok(&client, &["cat", "/dev/shm/marker"]).await,
        "shared"
    );
    let hostname = pod.hostname.clone();
    assert_eq!(env.exec_ok(&client, &["hostname"]).await, hostname);
    assert_eq!(
        env.exec_ok(&server, &["cat", "/etc/hostname"]).await,
        hostname
    );
    // CONTAINER pid mode: each container has its own PID namespace.
    let a = env
        .exec_ok(&server, &["readlink", "/proc/self/ns/pid"])
        .await;
    let b = env
        .exec_ok(&client, &["readlink", "/proc/self/ns/pid"])
        .await;
    assert_ne!(a, b);
    let ps = env.exec_ok(&client, &["ps", "-o", "args"]).await;
    assert!(!ps.contains("httpd"), "{ps}");
    env.remove_pod(&pod_id).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pod_pid_namespace_is_shared() {
    let mut env = PodEnv::start().await;
    let mut pod = env.pod_config("pidns");
    let options = pod_namespaces(&mut pod);
    options.pid = cri::NamespaceMode::Pod as i32;
    let pod_id = env.run_pod(&pod).await;
    let mut first = env.container_config("first", &["sleep", "1001"]);
    set_security_context(
        &mut first,
        cri::LinuxContainerSecurityContext {
            namespace_options: Some(cri::NamespaceOption {
                pid: cri::NamespaceMode::Pod as i32,
                ..Default::default()
            }),
            ..Default::default()
        },
    );
    let mut second = first.clone();
    second.metadata.as_mut().unwrap().name = "second".into();
    second.command = vec!["sleep".into(), "1002".into()];
    second.log_path = "second.log".into();
    let a = env.run(&pod_id, &pod, &first).await;
    let b = env.run(&pod_id, &pod, &second).await;
    let ps = env.exec_ok(&b, &["ps", "-o", "args"]).await;
    assert!(
        ps.contains("sleep 1001") && ps.contains("sleep 1002"),
        "{ps}"
    );
    // The first container stopping does not take the second with it.
    env.stop_container(&a, 0).await;
    assert_eq!(env.status(&b).await.state, RUNNING);
    env.exec_ok(&b, &["true"]).await;
    env.remove_pod(&pod_id).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn host_network_pod_uses_the_host_namespace() {
    let mut env = PodEnv::start().await;
    let mut pod = env.pod_config("hostnet");
    pod_namespaces(&mut pod).network = cri::NamespaceMode::Node as i32;
    let pod_id = env.run_pod(&pod).await;
    let id = env
        .run(
            &pod_id,
            &pod,
            &env.container_config("c", &["sleep", "1000"]),
        )
        .await;
    let inside = env.exec_ok(&id, &["readlink", "/proc/self/ns/net"]).await;
    let host = std::fs::read_link("/proc/self/ns/net").unwrap();
    assert_eq!(inside, host.display().to_string());
    env.remove_pod(&pod_id).await;

    // Host PID and IPC as well.
    let mut pod = env.pod_config("hostpid");
    let options = pod_namespaces(&mut pod);
    options.pid = cri::NamespaceMode::Node as i32;
    options.ipc = cri::NamespaceMode::Node as i32;
    let pod_id = env.run_pod(&pod).await;
    let mut config = env.container_config("c", &["sleep", "1000"]);
    set_security_context(
        &mut config,
        cri::LinuxContainerSecurityContext {
            namespace_options: Some(cri::NamespaceOption {
                pid: cri::NamespaceMode::Node as i32,
                ipc: cri::NamespaceMode::Node as i32,
                ..Default::default()
            }),
            ..Default::default()
        },
    );
    let id = env.run(&pod_id, &pod, &config).await;
    for ns in ["pid", "ipc"] {
        let path = format!("/proc/self/ns/{ns}");
        let inside = env.exec_ok(&id, &["readlink", &path]).await;
        let host = std::fs::read_link(&path).unwrap();
        assert_eq!(inside, host.display().to_string(), "{ns}");
    }
    env.remove_pod(&pod_id).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_limit_is_reported_as_oom_killed() {
    let mut env = PodEnv::start().await;
    let pod = env.pod_config("oom");
    let pod_id = env.run_pod(&pod).await;
    let mut config = env.container_config(
        "hog",
        &[
            "sh",
            "-c",
            "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived",
        ],
    );
    config.linux.get_or_insert_with(Default::default).resources =
        Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: 32 << 20,
            ..Default::default()
        });
    let id = env.run(&pod_id, &pod, &config).await;
    let status = env.wait_exited(&id).await;
    assert_eq!(status.reason, "OOMKilled", "{status:?}");
    assert_eq!(status.exit_code, 137);
    env.remove_pod(&pod_id).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn security_context_user_readonly_caps_seccomp() {
    let mut env = PodEnv::start().await;
    let pod = env.pod_config("secctx");
    let pod_id = env.run_pod(&pod).await;

    let mut user = env.container_config("user", &["sleep", "1000"]);
    set_security_context(
        &mut user,
        cri::LinuxContainerSecurityContext {
            run_as_user: Some(cri::Int64Value { value: 1000 }),
            readonly_rootfs: true,
            ..Default::default()
        },
    );
    let id = env.run(&pod_id, &pod, &user).await;
    assert_eq!(env.exec_ok(&id, &["id", "-u"]).await, "1000");
    let write = env.exec(&id, &["touch", "/newfile"], 10).await.unwrap();
    assert_ne!(write.exit_code, 0);
    assert!(
        String::from_utf8_lossy(&write.stderr).contains("Read-only file system"),
        "{:?}",
        String::from_utf8_lossy(&write.stderr)
    );

    let mut dropped = env.container_config(
        "nochown",
        &[
            "sh",
            "-c",
            "grep Seccomp: /proc/self/status; unshare -U true; echo unshare=$?; exec sleep 1000",
        ],
    );
    set_security_context(
        &mut dropped,
        cri::LinuxContainerSecurityContext {
            capabilities: Some(cri::Capability {
                drop_capabilities: vec!["CHOWN".into()],
                ..Default::default()
            }),
            seccomp: Some(cri::SecurityProfile {
                profile_type: cri::security_profile::ProfileType::RuntimeDefault as i32,
                ..Default::default()
            }),
            ..Default::default()
        },
    );
    let id = env.run(&pod_id, &pod, &dropped).await;
    let chown = env.exec(&id, &["chown", "1:1", "/tmp"], 10).await.unwrap();
    assert_ne!(chown.exit_code, 0, "chown succeeded without CAP_CHOWN");
    env.exec_ok(&id, &["chown", "0:0", "/tmp"]).await;
    // The default seccomp profile filters the container and denies new user namespaces,
    // in its main process and in exec'd ones.
    let log = wait_for_file(&env.log_path(&pod, "nochown"), |t| t.contains("unshare=")).await;
    assert!(log.contains("Seccomp:\t2"), "{log}");
    assert!(!log.contains("unshare=0"), "{log}");
    let status = env
        .exec_ok(&id, &["grep", "Seccomp:", "/proc/self/status"])
        .await;
    assert_eq!(status, "Seccomp:\t2");
    let userns = env.exec(&id, &["unshare", "-U", "true"], 10).await.unwrap();
    assert_ne!(
        userns.exit_code, 0,
        "unshare -U was allowed under RuntimeDefault"
    );

    let mut privileged = env.container_config("priv", &["sleep", "1000"]);
    set_security_context(
        &mut privileged,
        cri::LinuxContainerSecurityContext {
            privileged: true,
            ..Default::default()
        },
    );
    // Only a privileged pod may hold a privileged container (as containerd).
    let refused = env
        .create(&pod_id, &pod, &privileged)
        .await
        .expect_err("a privileged container in an unprivileged pod");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused
            .message()
            .contains("no privileged container allowed in sandbox"),
        "{}",
        refused.message()
    );
    let mut privileged_pod = env.pod_config("secctx-priv");
    privileged_pod
        .linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
        .expect("security context")
        .privileged = true;
    let privileged_pod_id = env.run_pod(&privileged_pod).await;
    let id = env
        .run(&privileged_pod_id, &privileged_pod, &privileged)
        .await;
    env.exec_ok(&id, &["test", "-c", "/dev/kmsg"]).await;
    let unprivileged = env.exec(&id, &["true"], 10).await.unwrap();
    assert_eq!(unprivileged.exit_code, 0);
    env.remove_pod(&privileged_pod_id).await;
    env.remove_pod(&pod_id).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bind_mounts_readonly_and_created_when_missing() {
    let mut env = PodEnv::start().await;
    let pod = env.pod_config("mounts");
    let pod_id = env.run_pod(&pod).await;
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("data"), "from-host").unwrap();
    let missing = host.path().join("created/by/wharf");
    let mut config = env.container_config("m", &["sleep", "1000"]);
    config.mounts = vec![
        cri::Mount {
            container_path: "/ro".into(),
            host_path: host.path().display().to_string(),
            readonly: true,
            ..Default::default()
        },
        cri::Mount {
            container_path: "/rw".into(),
            host_path: missing.display().to_string(),
            ..Default::default()
        },
    ];
    let id = env.run(&pod_id, &pod, &config).await;
    assert_eq!(env.exec_ok(&id, &["cat", "/ro/data"]).await, "from-host");
    let write = env.exec(&id, &["touch", "/ro/x"], 10).await.unwrap();
    assert_ne!(write.exit_code, 0);
    assert!(missing.is_dir());
    env.exec_ok(&id, &["touch", "/rw/made-inside"]).await;
    assert!(missing.join("made-inside").exists());
    env.remove_pod(&pod_id).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn runtime_handler_runc_runs_a_pod() {
    support::require_installed("/usr/sbin/runc", "runc");
    let mut env = PodEnv::start().await;
    let pod = env.pod_config("runc");
    let pod_id = env.run_pod_with(&pod, "runc").await.expect("runc pod");
    let id = env
        .run(
            &pod_id,
            &pod,
            &env.container_config("c", &["sh", "-c", "sleep 1000"]),
        )
        .await;
    assert_eq!(env.exec_ok(&id, &["echo", "via-runc"]).await, "via-runc");
    let runc_state = std::process::Command::new("/usr/sbin/runc")
        .arg("--root")
        .arg(env.daemon.paths.state.join("runtime/runc"))
        .args(["state", &id])
        .output()
        .unwrap();
    assert!(runc_state.status.success(), "runc does not know {id}");
    env.stop_container(&id, 0).await;
    assert_eq!(env.status(&id).await.exit_code, 137);
    env.remove_pod(&pod_id).await;

    let unknown = env
        .run_pod_with(&env.pod_config("nohandler"), "no-such-handler")
        .await
        .expect_err("unknown handler");
    assert_eq!(unknown.code(), Code::InvalidArgument);
    assert!(unknown.message().contains("no-such-handler"));
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_name_the_field_and_leave_nothing() {
    let mut env = PodEnv::start().await;
    let pod = env.pod_config("errors");
    let pod_id = env.run_pod(&pod).await;

    let mut no_image = env.container_config("c", &["true"]);
    no_image.image = None;
    let err = env.create(&pod_id, &pod, &no_image).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("image"), "{}", err.message());

    let mut unknown_image = env.container_config("c", &["true"]);
    unknown_image.image.as_mut().unwrap().image = "localhost:1/not/pulled:v1".into();
    let err = env.create(&pod_id, &pod, &unknown_image).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    let err = env
        .create("no-such-pod", &pod, &env.container_config("c", &["true"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    let mut bad_user = env.container_config("c", &["true"]);
    set_security_context(
        &mut bad_user,
        cri::LinuxContainerSecurityContext {
            run_as_username: "nobody-such".into(),
            ..Default::default()
        },
    );
    let err = env.create(&pod_id, &pod, &bad_user).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("run_as_username"),
        "{}",
        err.message()
    );

    let mut bad_mount = env.container_config("c", &["true"]);
    bad_mount.mounts = vec![cri::Mount {
        container_path: "/x".into(),
        host_path: "relative/path".into(),
        ..Default::default()
    }];
    let err = env.create(&pod_id, &pod, &bad_mount).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("mounts[0]"), "{}", err.message());

    // Nothing was left by the failures: the name is free and nothing is listed.
    assert!(env
        .list_containers(cri::ContainerFilter::default())
        .await
        .is_empty());
    let good = env.container_config("c", &["sleep", "100"]);
    let id = env
        .create(&pod_id, &pod, &good)
        .await
        .expect("name reusable");
    let dup = env.create(&pod_id, &pod, &good).await.unwrap_err();
    assert_eq!(dup.code(), Code::AlreadyExists);
    let left: Vec<_> = std::fs::read_dir(env.daemon.paths.state.join("containers"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(left, vec![id.clone()]);

    let dup_pod = env.run_pod_with(&pod, "").await.unwrap_err();
    assert_eq!(dup_pod.code(), Code::AlreadyExists);
    env.remove_pod(&pod_id).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn update_resources_and_reopen_log() {
    let mut env = PodEnv::start().await;
    let pod = env.pod_config("update");
    let pod_id = env.run_pod(&pod).await;
    let mut config = env.container_config(
        "ticker",
        &[
            "sh",
            "-c",
            "i=0; while true; do echo tick$i; i=$((i+1)); sleep 0.05; done",
        ],
    );
    config.linux.get_or_insert_with(Default::default).resources =
        Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: 64 << 20,
            ..Default::default()
        });
    let id = env.run(&pod_id, &pod, &config).await;
    let cgroup = std::path::PathBuf::from("/sys/fs/cgroup/memory")
        .join(env.daemon.cgroup_parent.trim_start_matches('/'))
        .join(format!("wharf-{id}"))
        .join("memory.limit_in_bytes");
    let read_limit = || {
        std::fs::read_to_string(&cgroup)
            .unwrap_or_else(|e| panic!("{}: {e}", cgroup.display()))
            .trim()
            .to_string()
    };
    assert_eq!(read_limit(), (64u64 << 20).to_string());
    // The init joined the container's cgroup in every v1 hierarchy (wharf's
    // libcgroups patch joins by writing 0 to `tasks` from the runtime's process).
    let procs = cgroup.with_file_name("cgroup.procs");
    let init = std::fs::read_to_string(&procs).unwrap_or_else(|e| panic!("{procs:?}: {e}"));
    let init = init
        .lines()
        .next()
        .expect("a process in the container's cgroup");
    let memberships = std::fs::read_to_string(format!("/proc/{init}/cgroup")).unwrap();
    let own = format!(
        "{}/wharf-{id}",
        env.daemon.cgroup_parent.trim_end_matches('/')
    );
    let v1: Vec<&str> = memberships
        .lines()
        .filter(|l| !l.starts_with("0::") && !l.contains(":name="))
        .collect();
    assert!(v1.len() >= 5, "v1 hierarchies of {init}: {memberships}");
    for line in v1 {
        assert!(line.ends_with(&own), "{line} is not {own}: {memberships}");
    }
    env.rt
        .update_container_resources(cri::UpdateContainerResourcesRequest {
            container_id: id.clone(),
            linux: Some(cri::LinuxContainerResources {
                memory_limit_in_bytes: 128 << 20,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("UpdateContainerResources");
    assert_eq!(read_limit(), (128u64 << 20).to_string());

    let log = env.log_path(&pod, "ticker");
    wait_for_file(&log, |t| t.contains("tick3")).await;
    let rotated = log.with_extension("log.1");
    std::fs::rename(&log, &rotated).unwrap();
    env.rt
        .reopen_container_log(cri::ReopenContainerLogRequest {
            container_id: id.clone(),
        })
        .await
        .expect("ReopenContainerLog");
    let fresh = wait_for_file(&log, |t| t.lines().count() >= 2).await;
    for (stream, tag, text) in parse_log(&fresh) {
        assert_eq!((stream.as_str(), tag.as_str()), ("stdout", "F"));
        assert!(text.starts_with("tick"));
    }
    env.stop_container(&id, 0).await;
    let err = env
        .rt
        .reopen_container_log(cri::ReopenContainerLogRequest {
            container_id: id.clone(),
        })
        .await
        .expect_err("reopen on a stopped container");
    assert_eq!(err.code(), Code::FailedPrecondition);
    env.remove_pod(&pod_id).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pids_limit_of_the_pod_cgroup_is_enforced() {
    let mut env = PodEnv::start().await;
    let parent = format!("{}/{}", env.daemon.cgroup_parent, unique("pids"));
    let pids_dir =
        std::path::PathBuf::from("/sys/fs/cgroup/pids").join(parent.trim_start_matches('/'));
    std::fs::create_dir_all(&pids_dir).expect("create pod pids cgroup");
    std::fs::write(pids_dir.join("pids.max"), "8").expect("set pids.max");
    let mut pod = env.pod_config("pids");
    pod.linux.as_mut().unwrap().cgroup_parent = parent;
    let pod_id = env.run_pod(&pod).await;
    let id = env
        .run(
            &pod_id,
            &pod,
            &env.container_config("c", &["sleep", "1000"]),
        )
        .await;
    let out = env
        .exec(
            &id,
            &["sh", "-c", "for i in $(seq 20); do sleep 5 & done; wait"],
            20,
        )
        .await
        .expect("exec");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("can't fork") || stderr.contains("Resource temporarily unavailable"),
        "20 processes were allowed under pids.max 8: {stderr:?}"
    );
    env.remove_pod(&pod_id).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn containers_survive_a_daemon_kill_and_are_recovered() {
    let mut env = PodEnv::start().await;
    let mut running = Vec::new();
    for i in 0..10 {
        let pod = env.pod_config(&format!("survivor{i}"));
        let pod_id = env.run_pod(&pod).await;
        let id = env
            .run(
                &pod_id,
                &pod,
                &env.container_config("c", &["sleep", "1000"]),
            )
            .await;
        running.push((pod_id, id));
    }
    let pod = env.pod_config("exiter");
    let exiter_pod = env.run_pod(&pod).await;
    let exiter = env
        .run(
            &exiter_pod,
            &pod,
            &env.container_config("c", &["sh", "-c", "sleep 2; exit 5"]),
        )
        .await;
    let pids: Vec<i64> = {
        let mut pids = Vec::new();
        for (_, id) in &running {
            let info = env
                .rt
                .container_status(cri::ContainerStatusRequest {
                    container_id: id.clone(),
                    verbose: true,
                })
                .await
                .unwrap()
                .into_inner()
                .info;
            let info: serde_json::Value = serde_json::from_str(&info["info"]).unwrap();
            pids.push(info["pid"].as_i64().expect("pid in verbose info"));
        }
        pids
    };
    env.daemon.kill9();
    // The exiter exits while wharfd is down.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for pid in &pids {
        assert!(
            std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "container process {pid} died with wharfd"
        );
    }
    env.daemon.restart().await;
    env.rt = env.daemon.runtime_client().await;
    for (pod_id, id) in &running {
        let status = env.status(id).await;
        assert_eq!(status.state, RUNNING, "{id} after restart: {status:?}");
        env.exec_ok(id, &["true"]).await;
        let pods = env
            .list_pods(cri::PodSandboxFilter {
                id: pod_id.clone(),
                ..Default::default()
            })
            .await;
        assert_eq!(pods[0].state, cri::PodSandboxState::SandboxReady as i32);
    }
    let status = env.status(&exiter).await;
    assert_eq!(status.state, EXITED);
    assert_eq!(status.exit_code, 5);
    assert!(status.finished_at > status.started_at);
    // Containers still stop and go away after the restart.
    for (pod_id, _) in &running {
        env.remove_pod(pod_id).await;
    }
    env.remove_pod(&exiter_pod).await;
    for pid in &pids {
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    }
}

/// Mount points under `dir` (other tests mount and unmount in parallel elsewhere).
fn mounts_under(dir: &std::path::Path) -> Vec<String> {
    let mut points: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string))
        .filter(|p| std::path::Path::new(p).starts_with(dir))
        .collect();
    points.sort();
    points
}

fn dir_entries(path: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(path)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn cgroup_children(parent: &str) -> Vec<String> {
    dir_entries(&std::path::Path::new("/sys/fs/cgroup/memory").join(parent.trim_start_matches('/')))
        .into_iter()
        .filter(|n| !n.contains('.'))
        .collect()
}

/// Processes whose command line names `path` (monitors name their bundle).
fn processes_mentioning(path: &std::path::Path) -> usize {
    let needle = path.display().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(&needle))
                .unwrap_or(false)
        })
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn hundred_cycles_leave_nothing_behind() {
    let mut env = PodEnv::start().await;
    let pod = env.pod_config("cycles");
    let pod_id = env.run_pod(&pod).await;
    // One warm-up cycle creates the shared parents (log dir, cgroup parent).
    let warm = env
        .run(&pod_id, &pod, &env.container_config("warm", &["true"]))
        .await;
    env.wait_exited(&warm).await;
    env.remove_container(&warm).await;
    let mounts = mounts_under(env.daemon.dir());
    let state = env.daemon.paths.state.clone();
    let state_before = (
        dir_entries(&state.join("containers")),
        dir_entries(&state.join("pods")),
    );
    let cgroups = cgroup_children(&env.daemon.cgroup_parent);
    let procs = processes_mentioning(&state);
    for i in 0..100 {
        let config = env.container_config(&format!("cycle{i}"), &["sleep", "1000"]);
        let id = env.run(&pod_id, &pod, &config).await;
        env.stop_container(&id, 0).await;
        env.remove_container(&id).await;
    }
    assert_eq!(mounts_under(env.daemon.dir()), mounts, "mounts leaked");
    assert_eq!(
        (
            dir_entries(&state.join("containers")),
            dir_entries(&state.join("pods"))
        ),
        state_before,
        "state dirs leaked"
    );
    assert_eq!(
        cgroup_children(&env.daemon.cgroup_parent),
        cgroups,
        "cgroups leaked"
    );
    assert_eq!(processes_mentioning(&state), procs, "monitors leaked");
    env.remove_pod(&pod_id).await;
    assert_eq!(dir_entries(&state.join("pods")), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn removing_an_image_keeps_the_layers_its_containers_use() {
    let mut env = PodEnv::start().await;
    let pod = env.pod_config("imagegc");
    let pod_id = env.run_pod(&pod).await;
    let id = env
        .run(
            &pod_id,
            &pod,
            &env.container_config("c", &["sleep", "1000"]),
        )
        .await;
    let layers = env.daemon.paths.root.join("snapshots/layers");
    let before = dir_entries(&layers);
    assert!(!before.is_empty());
    let mut images = env.daemon.image_client().await;
    images
        .remove_image(cri::RemoveImageRequest {
            image: Some(cri::ImageSpec {
                image: env.image.clone(),
                ..Default::default()
            }),
        })
        .await
        .expect("RemoveImage while a container uses it");
    let listed = images
        .list_images(cri::ListImagesRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .images;
    assert!(listed.is_empty());
    // The container's lower layers stay while it exists.
    assert_eq!(dir_entries(&layers), before);
    assert_eq!(
        env.exec_ok(&id, &["cat", "/etc/hostname"]).await,
        pod.hostname
    );
    env.remove_pod(&pod_id).await;
    assert!(
        dir_entries(&layers).is_empty(),
        "layers of the removed image outlived its last container"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn restart_cleans_up_what_no_record_owns() {
    let mut env = PodEnv::start().await;
    let pod = env.pod_config("orphan");
    let pod_id = env.run_pod(&pod).await;
    let id = env
        .run(
            &pod_id,
            &pod,
            &env.container_config("c", &["sleep", "1000"]),
        )
        .await;
    let info = env
        .rt
        .container_status(cri::ContainerStatusRequest {
            container_id: id.clone(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner()
        .info;
    let info: serde_json::Value = serde_json::from_str(&info["info"]).unwrap();
    let pid = info["pid"].as_i64().expect("pid");
    env.daemon.kill9();
    // As if wharfd crashed after deleting the records but before the cleanup ran.
    {
        let store = wharf::store::Store::open(&env.daemon.paths.root).expect("open store");
        store
            .update(|tx| {
                tx.delete(
                    wharf::store::CRI_NAMESPACE,
                    wharf::store::Kind::Container,
                    &id,
                )?;
                tx.delete(
                    wharf::store::CRI_NAMESPACE,
                    wharf::store::Kind::Pod,
                    &pod_id,
                )
            })
            .expect("delete records");
    }
    env.daemon.restart().await;
    let state = env.daemon.paths.state.clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        assert!(
            Instant::now() < deadline,
            "the unowned container still runs"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(dir_entries(&state.join("containers")), Vec::<String>::new());
    assert_eq!(dir_entries(&state.join("pods")), Vec::<String>::new());
    assert_eq!(
        dir_entries(&state.join("runtime/builtin")),
        Vec::<String>::new()
    );
    assert_eq!(
        dir_entries(&env.daemon.paths.root.join("containers")),
        Vec::<String>::new()
    );
    assert_eq!(mounts_under(env.daemon.dir()), Vec::<String>::new());
    assert!(env
        .daemon
        .log()
        .contains("removing state no pod or container owns"));
}

#[tokio::test(flavor = "multi_thread")]
async fn stop_uses_the_image_stop_signal() {
    let mut env = PodEnv::start().await;
    let image = support::images::ImageBuilder::busybox()
        .with_config(|c| {
            c.set_stop_signal(Some("SIGUSR1".into()));
        })
        .build();
    env.registry.push("test/stopsignal", "v1", &image).await;
    let reference = format!("{}/test/stopsignal:v1", env.registry.host());
    env.daemon
        .image_client()
        .await
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: reference.clone(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("pull");
    let pod = env.pod_config("stopsig");
    let pod_id = env.run_pod(&pod).await;
    let mut config = env.container_config(
        "c",
        &[
            "sh",
            "-c",
            "trap 'exit 42' USR1; trap 'exit 1' TERM; while true; do sleep 0.1; done",
        ],
    );
    config.image.as_mut().unwrap().image = reference;
    let id = env.run(&pod_id, &pod, &config).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    env.stop_container(&id, 10).await;
    let status = env.status(&id).await;
    assert_eq!(status.exit_code, 42, "{status:?}");
    env.remove_pod(&pod_id).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn target_pid_namespace_dns_and_sysctls() {
    let mut env = PodEnv::start().await;
    let mut pod = env.pod_config("target");
    pod.dns_config = Some(cri::DnsConfig {
        servers: vec!["10.96.0.10".into()],
        searches: vec!["default.svc.cluster.local".into()],
        options: vec!["ndots:5".into()],
    });
    pod.linux.as_mut().unwrap().sysctls = [(
        "net.ipv4.ip_unprivileged_port_start".to_string(),
        "80".to_string(),
    )]
    .into();
    let pod_id = env.run_pod(&pod).await;
    let main = env
        .run(
            &pod_id,
            &pod,
            &env.container_config("main", &["sleep", "1003"]),
        )
        .await;
    let mut debug = env.container_config("debug", &["sleep", "1000"]);
    set_security_context(
        &mut debug,
        cri::LinuxContainerSecurityContext {
            namespace_options: Some(cri::NamespaceOption {
                pid: cri::NamespaceMode::Target as i32,
                target_id: main.clone(),
                ..Default::default()
            }),
            ..Default::default()
        },
    );
    let debug = env.run(&pod_id, &pod, &debug).await;
    let ps = env.exec_ok(&debug, &["ps", "-o", "args"]).await;
    assert!(
        ps.contains("sleep 1003"),
        "TARGET pid namespace does not show the target: {ps}"
    );
    let resolv = env.exec_ok(&main, &["cat", "/etc/resolv.conf"]).await;
    assert_eq!(
        resolv,
        "search default.svc.cluster.local\nnameserver 10.96.0.10\noptions ndots:5"
    );
    let sysctl = env
        .exec_ok(
            &main,
            &["cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start"],
        )
        .await;
    assert_eq!(sysctl, "80");
    let verbose = env
        .rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod_id.clone(),
            verbose: true,
        })
        .await
        .expect("PodSandboxStatus")
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&verbose.info["info"]).unwrap();
    assert_eq!(info["id"], pod_id.as_str());
    assert!(info["namespaces"]["network"].as_str().is_some(), "{info}");
    let status = verbose.status.unwrap();
    assert_eq!(status.state, cri::PodSandboxState::SandboxReady as i32);
    assert_eq!(status.metadata.unwrap().name, pod.metadata.unwrap().name);
    env.remove_pod(&pod_id).await;
}
