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
                // The resizes travel on their own stream, beside stdin: wait (up to
                // 5 s) for the last one rather than race it.
                "[ -t 0 ] && echo tty; stty size; read x; i=0; \
                 while [ \"$(stty size)\" != '40 120' ] && [ $i -lt 50 ]; do \
                 sleep 0.1; i=$((i+1)); done; stty size; exit 5",
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

/// A pod serving HTTP on 127.0.0.1:8080 and on [::1]:8081 (busybox httpd).
async fn web_pod(env: &mut PodEnv, name: &str) -> String {
    let pod = env.pod_config(name);
    let pod_id = env.run_pod(&pod).await;
    let config = env.container_config(
        "web",
        &[
            "sh",
            "-c",
            "mkdir -p /www && echo hello-from-the-pod > /www/index.html && \
             httpd -p 127.0.0.1:8080 -h /www && httpd -f -p [::1]:8081 -h /www",
        ],
    );
    env.run(&pod_id, &pod, &config).await;
    // httpd listens once the container runs; give it a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    pod_id
}

async fn port_forward_url(env: &mut PodEnv, pod_id: &str) -> String {
    env.rt
        .port_forward(cri::PortForwardRequest {
            pod_sandbox_id: pod_id.to_string(),
            port: vec![],
        })
        .await
        .expect("PortForward")
        .into_inner()
        .url
}

/// An HTTP GET of / on 127.0.0.1:port, the body.
async fn http_get(port: u16) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to the forwarded port");
    stream
        .write_all(b"GET /index.html HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .expect("send");
    let mut response = String::new();
    tokio::time::timeout(
        Duration::from_secs(20),
        stream.read_to_string(&mut response),
    )
    .await
    .expect("the response within 20 s")
    .expect("read");
    response
}

/// kubectl's port-forward code (client-go over SPDY): two ports of one session, one
/// served on IPv4 and one on IPv6 loopback, many connections in parallel.
#[tokio::test(flavor = "multi_thread")]
async fn port_forward_with_client_go() {
    use std::io::BufRead;
    let mut env = PodEnv::start().await;
    let pod_id = web_pod(&mut env, "stream-pf").await;
    let url = port_forward_url(&mut env, &pod_id).await;
    let mut child = Command::new(go_tool("stream-client"))
        .args(["portforward", "--url", &url, "--ports", "0:8080,0:8081"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("stream-client portforward");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let mut local = std::collections::HashMap::new();
    while local.len() < 2 {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("stream-client reports its ports");
        let words: Vec<&str> = line.split_whitespace().collect();
        if let ["ready", l, r] = words[..] {
            local.insert(r.to_string(), l.parse::<u16>().expect("local port"));
        }
    }
    let mut gets = Vec::new();
    for round in 0..8 {
        let port = local[if round % 2 == 0 { "8080" } else { "8081" }];
        gets.push(tokio::spawn(http_get(port)));
    }
    for get in gets {
        let response = get.await.expect("task");
        assert!(response.contains("hello-from-the-pod"), "{response}");
    }
    drop(child.stdin.take());
    let status = child.wait().expect("wait");
    assert!(status.success(), "{status}");
    env.remove_pod(&pod_id).await;
}

/// Port-forward over WebSocket (kubelet's v4 channel protocol), two ports on one
/// session: each channel opens with its port; the one with nothing listening reports
/// its error on its own error channel while the other connection still works.
#[tokio::test(flavor = "multi_thread")]
async fn port_forward_over_websocket() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;
    let mut env = PodEnv::start().await;
    let pod_id = web_pod(&mut env, "stream-pfws").await;
    let url = port_forward_url(&mut env, &pod_id).await;
    let ws_url = format!("{}?port=8080&port=9", url.replacen("http://", "ws://", 1));
    let mut request = ws_url.into_client_request().expect("request");
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "v4.channel.k8s.io".parse().expect("header"),
    );
    let (mut socket, response) = tokio_tungstenite::connect_async(request)
        .await
        .expect("WebSocket upgrade");
    assert_eq!(
        response
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok()),
        Some("v4.channel.k8s.io")
    );
    let mut first = std::collections::HashMap::new();
    let mut data = Vec::new();
    let mut port9_error = String::new();
    let mut sent = false;
    let deadline = Instant::now() + Duration::from_secs(20);
    let served = |data: &[u8]| data.windows(18).any(|w| w == b"hello-from-the-pod");
    while !served(&data) || port9_error.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        let message = tokio::time::timeout(left, socket.next())
            .await
            .expect("messages within 20 s")
            .expect("the socket stays open")
            .expect("a message");
        let Message::Binary(bytes) = message else {
            continue;
        };
        let (channel, payload) = (bytes[0], &bytes[1..]);
        if let std::collections::hash_map::Entry::Vacant(entry) = first.entry(channel) {
            // Each channel's first message: its port, little endian.
            entry.insert(u16::from_le_bytes([payload[0], payload[1]]));
            if first.len() == 4 && !sent {
                sent = true;
                let mut get = vec![0u8];
                get.extend_from_slice(b"GET /index.html HTTP/1.0\r\nHost: x\r\n\r\n");
                socket
                    .send(Message::Binary(get.into()))
                    .await
                    .expect("send");
            }
            continue;
        }
        match channel {
            0 => data.extend_from_slice(payload),
            3 => port9_error.push_str(&String::from_utf8_lossy(payload)),
            other => panic!("data on channel {other}: {payload:?}"),
        }
    }
    assert_eq!(first[&0], 8080);
    assert_eq!(first[&1], 8080);
    assert_eq!(first[&2], 9);
    assert_eq!(first[&3], 9);
    assert!(port9_error.contains("port 9"), "{port9_error}");
    let _ = socket.close(None).await;
    env.remove_pod(&pod_id).await;
}

fn children_of(parent: i32) -> Vec<(i32, String, bool)> {
    let mut children = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(rest) = stat.rfind(')').map(|at| stat[at + 1..].to_string()) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.get(1).and_then(|p| p.parse::<i32>().ok()) != Some(parent) {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .unwrap_or_default();
        children.push((pid, cmdline.trim().to_string(), fields[0] == "Z"));
    }
    children
}

fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn monitor_pid(env: &PodEnv, id: &str) -> i32 {
    let path = env
        .daemon
        .paths
        .state
        .join("containers")
        .join(id)
        .join("monitor.json");
    let value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("monitor.json"))
            .expect("monitor.json is JSON");
    value["monitor_pid"].as_i64().expect("monitor_pid") as i32
}

/// A client killed mid-exec (SIGKILL, over each transport): the exec'd process is
/// killed and reaped, and neither the monitor nor wharfd keeps an fd for it.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_killed_mid_stream_leaks_nothing() {
    let mut env = PodEnv::start().await;
    let (pod_id, id) = sleeper(&mut env, "stream-kill").await;
    let monitor = monitor_pid(&env, &id);
    let daemon = env.daemon.pid() as i32;
    // Warm up: the first session makes lazily opened things (a connection pool).
    let url = exec_url(&mut env, &id, &["true"], false, false).await;
    assert_eq!(stream_client(&["exec", "--url", &url], b"").0, 0);
    let monitor_fds = fd_count(monitor);
    let daemon_fds = fd_count(daemon);
    for (transport, marker) in [("spdy", "601"), ("websocket", "602")] {
        let url = exec_url(&mut env, &id, &["sleep", marker], true, false).await;
        let mut child = Command::new(go_tool("stream-client"))
            .args(["exec", "--url", &url, "--stdin", "--transport", transport])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("stream-client");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !children_of(monitor)
            .iter()
            .any(|(_, cmd, _)| cmd == &format!("sleep {marker}"))
        {
            assert!(Instant::now() < deadline, "{transport}: the exec never ran");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        child.kill().expect("SIGKILL the client");
        let _ = child.wait();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let children = children_of(monitor);
            let left = children
                .iter()
                .any(|(_, cmd, _)| cmd == &format!("sleep {marker}"));
            let zombies = children.iter().any(|(_, _, zombie)| *zombie);
            if !left && !zombies {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{transport}: the exec outlived its client: {children:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while fd_count(monitor) != monitor_fds || fd_count(daemon) > daemon_fds {
        assert!(
            Instant::now() < deadline,
            "fds left: monitor {} (was {monitor_fds}), wharfd {} (was {daemon_fds})",
            fd_count(monitor),
            fd_count(daemon)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    env.remove_pod(&pod_id).await;
}

/// `idle_timeout_secs`: a session that moves nothing is closed; one that has not
/// even opened its streams too.
#[tokio::test(flavor = "multi_thread")]
async fn idle_sessions_are_closed() {
    let mut env = PodEnv::start_with_config("[cri.streaming]\nidle_timeout_secs = 2\n").await;
    let (pod_id, id) = sleeper(&mut env, "stream-idle").await;
    for transport in ["spdy", "websocket"] {
        let url = exec_url(&mut env, &id, &["sleep", "60"], false, false).await;
        let started = Instant::now();
        let (code, _, stderr) =
            stream_client(&["exec", "--url", &url, "--transport", transport], b"");
        assert_ne!(code, 0, "{transport}: {stderr}");
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{transport}: the idle session lasted {:?}",
            started.elapsed()
        );
        assert!(stderr.contains("idle"), "{transport}: {stderr}");
    }
    env.remove_pod(&pod_id).await;
}

/// With `tls_cert_file` and `tls_key_file` the URLs are https and the server speaks
/// TLS (here on loopback; the same lets it listen on other addresses).
#[tokio::test(flavor = "multi_thread")]
async fn streaming_over_tls() {
    let certs = tempfile::tempdir().expect("tempdir");
    let (cert, key) = (certs.path().join("cert.pem"), certs.path().join("key.pem"));
    let status = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl (install the openssl package)");
    assert!(status.success());
    let config = format!(
        "[cri.streaming]\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
        cert.display(),
        key.display()
    );
    let mut env = PodEnv::start_with_config(&config).await;
    let (pod_id, id) = sleeper(&mut env, "stream-tls").await;
    let url = exec_url(
        &mut env,
        &id,
        &["sh", "-c", "echo secret; exit 4"],
        false,
        false,
    )
    .await;
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let (code, stdout, stderr) = stream_client(&["exec", "--url", &url], b"");
    assert_eq!((code, stdout.as_str()), (4, "secret\n"), "{stderr}");
    env.remove_pod(&pod_id).await;
}

/// Attach to a TTY container with client-go: its output, input through the terminal,
/// a resize, and the end when the container exits.
#[tokio::test(flavor = "multi_thread")]
async fn attach_with_a_tty() {
    let mut env = PodEnv::start().await;
    let pod = env.pod_config("stream-attach-tty");
    let pod_id = env.run_pod(&pod).await;
    // The resize travels on its own stream, unordered with stdin: the shell waits
    // (5 s at most) for the size to arrive before printing it.
    let mut config = env.container_config(
        "term",
        &[
            "sh",
            "-c",
            "read x; for i in $(seq 50); do s=$(stty size 2>/dev/null); \
             [ \"$s\" = \"22 77\" ] && break; sleep 0.1; done; echo \"$s\"; echo got:$x; exit 0",
        ],
    );
    config.stdin = true;
    config.stdin_once = true;
    config.tty = true;
    let id = env.run(&pod_id, &pod, &config).await;
    let url = env
        .rt
        .attach(cri::AttachRequest {
            container_id: id.clone(),
            stdin: true,
            tty: true,
            stdout: true,
            stderr: false,
        })
        .await
        .expect("Attach")
        .into_inner()
        .url;
    let (code, stdout, stderr) = stream_client(
        &[
            "attach", "--url", &url, "--stdin", "--tty", "--resize", "77x22",
        ],
        b"hi\n",
    );
    assert_eq!(code, 0, "{stdout:?} {stderr:?}");
    assert!(stdout.contains("22 77"), "{stdout:?}");
    assert!(stdout.contains("got:hi"), "{stdout:?}");
    env.remove_pod(&pod_id).await;
}

/// crictl port-forward (SPDY, client-go underneath) to the pod's HTTP server.
#[tokio::test(flavor = "multi_thread")]
async fn crictl_port_forward() {
    let mut env = PodEnv::start().await;
    let pod_id = web_pod(&mut env, "stream-crictl-pf").await;
    let local = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let socket = env.daemon.paths.cri_socket.clone();
    let endpoint = format!("unix://{}", socket.display());
    let mut child = Command::new(go_tool("crictl"))
        .args(["--runtime-endpoint", &endpoint, "--config", "/dev/null"])
        .args(["port-forward", &pod_id, &format!("{local}:8080")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("crictl port-forward");
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", local))
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "crictl never listened on {local}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..3 {
        let response = http_get(local).await;
        assert!(response.contains("hello-from-the-pod"), "{response}");
    }
    child.kill().expect("stop crictl");
    let _ = child.wait();
    env.remove_pod(&pod_id).await;
}

/// WebSocket remote commands in the base64 framing (`v4.base64.channel.k8s.io`, what
/// browsers and older clients use): text messages, the channel a digit.
#[tokio::test(flavor = "multi_thread")]
async fn exec_over_base64_websocket() {
    use base64::Engine as _;
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;
    let mut env = PodEnv::start().await;
    let (pod_id, id) = sleeper(&mut env, "stream-b64").await;
    let url = exec_url(
        &mut env,
        &id,
        &["sh", "-c", "echo hi; echo oops >&2; exit 2"],
        false,
        false,
    )
    .await;
    let mut request = url
        .replacen("http://", "ws://", 1)
        .into_client_request()
        .expect("request");
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "v4.base64.channel.k8s.io".parse().expect("header"),
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("WebSocket upgrade");
    let mut channels: std::collections::BTreeMap<char, Vec<u8>> = Default::default();
    while let Some(message) = tokio::time::timeout(Duration::from_secs(20), socket.next())
        .await
        .expect("messages within 20 s")
    {
        match message.expect("a message") {
            Message::Text(text) => {
                let mut chars = text.as_str().chars();
                let channel = chars.next().expect("a channel digit");
                let data = base64::engine::general_purpose::STANDARD
                    .decode(chars.as_str())
                    .expect("base64");
                channels.entry(channel).or_default().extend(data);
            }
            Message::Close(_) => break,
            other => panic!("not a text message: {other:?}"),
        }
    }
    assert_eq!(channels.get(&'1').map(Vec::as_slice), Some(&b"hi\n"[..]));
    assert_eq!(channels.get(&'2').map(Vec::as_slice), Some(&b"oops\n"[..]));
    let status: serde_json::Value =
        serde_json::from_slice(channels.get(&'3').expect("a status")).expect("JSON status");
    assert_eq!(status["reason"], "NonZeroExitCode", "{status}");
    assert_eq!(status["details"]["causes"][0]["message"], "2", "{status}");
    env.remove_pod(&pod_id).await;
}

/// Over SPDY, a connection that fails (nothing listens on its port) answers on its own
/// error stream and ends its own pair only: the session keeps serving the next pairs
/// (client-go's own forwarder would close the session itself on the error, so this
/// drives the streams directly with the same libraries).
#[tokio::test(flavor = "multi_thread")]
async fn spdy_port_forward_failure_is_per_connection() {
    let mut env = PodEnv::start().await;
    let pod_id = web_pod(&mut env, "stream-pf-pairs").await;
    let url = port_forward_url(&mut env, &pod_id).await;
    let (code, stdout, stderr) =
        stream_client(&["pf-pairs", "--url", &url, "--ports", "8080,9,8081"], b"");
    assert_eq!(code, 0, "{stdout} {stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    assert!(
        lines[0].starts_with("port 8080 ok HTTP/1.1 200"),
        "{stdout}"
    );
    assert!(lines[1].starts_with("port 9 error "), "{stdout}");
    assert!(
        lines[1].contains("127.0.0.1:9") && lines[1].contains("[::1]:9"),
        "{stdout}"
    );
    assert!(
        lines[2].starts_with("port 8081 ok HTTP/1.1 200"),
        "{stdout}"
    );
    assert!(
        lines[3].starts_with("again 8080 ok HTTP/1.1 200"),
        "{stdout}"
    );
    env.remove_pod(&pod_id).await;
}
