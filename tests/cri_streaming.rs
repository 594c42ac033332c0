//! CRI streaming (issue 17): Exec, Attach and PortForward URLs served by wharfd's
//! streaming server, driven by clients wharf did not write: client-go's own
//! remotecommand and portforward code (`stream-client`, tests/go/stream-client, as
//! kubectl uses it, over SPDY and over WebSocket) and crictl.

mod support;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use support::go_tools::{crictl, go_tool};
use support::pods::PodEnv;

/// Runs stream-client with `args`, feeding `input` to its stdin (then EOF); returns
/// its exit code, stdout and stderr.
fn stream_client(args: &[&str], input: &[u8]) -> (i32, String, String) {
    let mut child = Command::new(go_tool("stream-client"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run stream-client");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(input).expect("feed stdin");
    drop(stdin);
    let output = child.wait_with_output().expect("wait for stream-client");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

async fn exec_url(env: &mut PodEnv, id: &str, cmd: &[&str], stdin: bool, tty: bool) -> String {
    env.rt
        .exec(cri::ExecRequest {
            container_id: id.to_string(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            tty,
            stdin,
            stdout: true,
            stderr: !tty,
        })
        .await
        .unwrap_or_else(|e| panic!("Exec {cmd:?}: {e:?}"))
        .into_inner()
        .url
}

/// A pod with one running `sleep` container; returns (pod id, container id).
async fn sleeper(env: &mut PodEnv, name: &str) -> (String, String) {
    let pod = env.pod_config(name);
    let pod_id = env.run_pod(&pod).await;
    let config = env.container_config("main", &["sleep", "3600"]);
    let id = env.run(&pod_id, &pod, &config).await;
    (pod_id, id)
}

/// Exec over both transports with client-go: both streams apart, stdin to its EOF,
/// exit codes 0, 3 and 137 come back as the client's exit code; with a TTY the first
/// size and a resize reach the process.
#[tokio::test(flavor = "multi_thread")]
async fn exec_with_client_go() {
    let mut env = PodEnv::start().await;
    let (pod_id, id) = sleeper(&mut env, "stream-exec").await;
    for transport in ["websocket", "spdy"] {
        let t = ["--transport", transport];
        let url = exec_url(
            &mut env,
            &id,
            &["sh", "-c", "echo out:$(cat); echo err >&2; exit 3"],
            true,
            false,
        )
        .await;
        let (code, stdout, stderr) = stream_client(
            &[&["exec", "--url", &url, "--stdin"][..], &t].concat(),
            b"fed-in",
        );
        assert_eq!(code, 3, "{transport}: stdout {stdout:?} stderr {stderr:?}");
        assert_eq!(stdout, "out:fed-in\n", "{transport}");
        assert!(stderr.starts_with("err\n"), "{transport}: {stderr:?}");

        for (cmd, expected) in [("true", 0), ("kill -9 $$", 137)] {
            let url = exec_url(&mut env, &id, &["sh", "-c", cmd], false, false).await;
            let (code, stdout, stderr) =
                stream_client(&[&["exec", "--url", &url][..], &t].concat(), b"");
            assert_eq!(code, expected, "{transport} {cmd}: {stdout:?} {stderr:?}");
        }

        let url = exec_url(
            &mut env,
            &id,
            &[
                "sh",
                "-c",
                "[ -t 0 ] && echo tty; stty size; read x; stty size; exit 5",
            ],
            true,
            true,
        )
        .await;
        let (code, stdout, stderr) = stream_client(
            &[
                &[
                    "exec",
                    "--url",
                    &url,
                    "--stdin",
                    "--tty",
                    "--resize",
                    "100x30,120x40",
                ][..],
                &t,
            ]
            .concat(),
            b"go\n",
        );
        assert_eq!(code, 5, "{transport}: {stdout:?} {stderr:?}");
        assert!(stdout.contains("tty"), "{transport}: {stdout:?}");
        assert!(stdout.contains("40 120"), "{transport}: {stdout:?}");
    }
    env.remove_pod(&pod_id).await;
}

/// URLs are single use and expire; a wrong ID fails the RPC itself; bad requests name
/// what is wrong.
#[tokio::test(flavor = "multi_thread")]
async fn tokens_are_single_use_and_expire() {
    let mut env = PodEnv::start_with_config("[cri.streaming]\ntoken_ttl_secs = 1\n").await;
    let (pod_id, id) = sleeper(&mut env, "stream-token").await;
    let url = exec_url(&mut env, &id, &["true"], false, false).await;
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let (code, out, err) = stream_client(&["probe", "--url", &url], b"");
    assert_eq!(
        (code, out.trim()),
        (0, "status 101 protocol v4.channel.k8s.io"),
        "{err}"
    );
    let (_, out, _) = stream_client(&["probe", "--url", &url], b"");
    assert!(out.starts_with("status 404"), "a used token: {out}");
    let url = exec_url(&mut env, &id, &["true"], false, false).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, out, _) = stream_client(&["probe", "--url", &url], b"");
    assert!(out.starts_with("status 404"), "an expired token: {out}");
    // Old clients get the version they offer; one offering only v5 over SPDY, none.
    let url = exec_url(&mut env, &id, &["true"], false, false).await;
    let (_, out, _) = stream_client(
        &[
            "probe",
            "--url",
            &url,
            "--protocols",
            "v3.channel.k8s.io,v2.channel.k8s.io",
        ],
        b"",
    );
    assert_eq!(out.trim(), "status 101 protocol v3.channel.k8s.io");
    let url = exec_url(&mut env, &id, &["true"], false, false).await;
    let (_, out, _) = stream_client(
        &["probe", "--url", &url, "--protocols", "v5.channel.k8s.io"],
        b"",
    );
    assert!(out.starts_with("status 403"), "{out}");

    let err = env
        .rt
        .exec(cri::ExecRequest {
            container_id: "no-such-container".into(),
            cmd: vec!["true".into()],
            stdout: true,
            ..Default::default()
        })
        .await
        .expect_err("unknown container");
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    let err = env
        .rt
        .exec(cri::ExecRequest {
            container_id: id.clone(),
            cmd: vec!["true".into()],
            tty: true,
            stdout: true,
            stderr: true,
            ..Default::default()
        })
        .await
        .expect_err("tty and stderr");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("tty and stderr"), "{err:?}");
    let err = env
        .rt
        .port_forward(cri::PortForwardRequest {
            pod_sandbox_id: "no-such-pod".into(),
            port: vec![80],
        })
        .await
        .expect_err("unknown pod");
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    env.remove_pod(&pod_id).await;
}

/// Attach by two clients at once: both see the container's output, input from one
/// reaches it, and the CRI log still has everything.
#[tokio::test(flavor = "multi_thread")]
async fn attach_two_clients() {
    let mut env = PodEnv::start().await;
    let pod = env.pod_config("stream-attach");
    let pod_id = env.run_pod(&pod).await;
    let mut config = env.container_config(
        "echo",
        &["sh", "-c", "while read line; do echo got:$line; done"],
    );
    config.stdin = true;
    let id = env.run(&pod_id, &pod, &config).await;
    let attach_url = |env: &mut PodEnv, stdin: bool| {
        let request = cri::AttachRequest {
            container_id: id.clone(),
            stdin,
            tty: false,
            stdout: true,
            stderr: true,
        };
        let mut rt = env.rt.clone();
        async move { rt.attach(request).await.expect("Attach").into_inner().url }
    };
    // A reader that stays (its stdin held open) and a writer.
    let reader_url = attach_url(&mut env, false).await;
    let mut reader = Command::new(go_tool("stream-client"))
        .args(["attach", "--url", &reader_url, "--transport", "websocket"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("attach reader");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let writer_url = attach_url(&mut env, true).await;
    let mut writer = Command::new(go_tool("stream-client"))
        .args(["attach", "--url", &writer_url, "--stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("attach writer");
    writer
        .stdin
        .as_mut()
        .expect("stdin")
        .write_all(b"one\ntwo\n")
        .expect("write");
    let deadline = Instant::now() + Duration::from_secs(20);
    let log = env.log_path(&pod, "echo");
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("got:two")
    {
        assert!(
            Instant::now() < deadline,
            "the input never reached the container"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Both clients end when the container does.
    env.stop_container(&id, 5).await;
    for (name, child) in [("reader", &mut reader), ("writer", &mut writer)] {
        let deadline = Instant::now() + Duration::from_secs(20);
        while child.try_wait().expect("try_wait").is_none() {
            assert!(
                Instant::now() < deadline,
                "the {name} did not end with the container"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut out = String::new();
        child
            .stdout
            .take()
            .expect("stdout")
            .read_to_string(&mut out)
            .expect("read");
        assert!(out.contains("got:one\ngot:two\n"), "{name}: {out:?}");
    }
    env.remove_pod(&pod_id).await;
}

/// crictl exec (SPDY), with and without a TTY, and its exit code.
#[tokio::test(flavor = "multi_thread")]
async fn crictl_exec() {
    let mut env = PodEnv::start().await;
    let (pod_id, id) = sleeper(&mut env, "stream-crictl").await;
    let socket = env.daemon.paths.cri_socket.clone();
    let out = crictl(&socket, &["exec", &id, "sh", "-c", "echo hello; exit 7"]);
    // crictl exits 1 and names the command's code, as against containerd.
    assert!(!out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("exit code 7"), "{stderr}");
    let out = crictl(&socket, &["exec", &id, "sh", "-c", "echo fine"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "fine\n");
    // -it: crictl's own terminal handling, on the pty `script` gives it; what we
    // write to script goes to that terminal.
    let command = format!(
        "{} --runtime-endpoint unix://{} --config /dev/null exec -it {id} sh",
        go_tool("crictl").display(),
        socket.display()
    );
    let mut child = Command::new("script")
        .args(["-qefc", &command, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run script");
    let mut input = child.stdin.take().expect("stdin");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    input
        .write_all(b"echo typed-$((6*7))\n")
        .expect("type a command");
    tokio::time::sleep(Duration::from_millis(500)).await;
    input.write_all(b"exit\n").expect("type exit");
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("try_wait").is_none() {
        assert!(Instant::now() < deadline, "crictl exec -it did not end");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(input);
    let out = child.wait_with_output().expect("output");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("typed-42"), "{out:?}");
    env.remove_pod(&pod_id).await;
}
