//! Prometheus metrics (issue 22): the exposition on `[metrics] address` after CRI and
//! Docker API calls, a pull and a running pod, checked for the figures those calls
//! must have moved, validated by `promtool check metrics` (Debian's `prometheus`
//! package, which fails on a missing HELP, a counter without `_total`, or OpenMetrics
//! output), and scraped by a real Prometheus server that the test starts on loopback.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use support::docker::DockerEnv;

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

fn tool(name: &str) -> String {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .output()
        .expect("run sh");
    let path = String::from_utf8_lossy(&found.stdout).trim().to_string();
    assert!(
        !path.is_empty(),
        "{name} is missing: install the Debian package prometheus (scripts/setup test does)"
    );
    path
}

async fn scrape(port: u16) -> String {
    let response = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .expect("GET /metrics");
    assert_eq!(response.status(), 200);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    response.text().await.expect("the exposition")
}

/// The value of the sample whose name and labels start as `prefix` (labels in the
/// order the text encoder writes them: sorted by name).
fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A Prometheus server, stopped (by its PID) when dropped.
struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_are_exposed_valid_and_scraped() {
    let promtool = tool("promtool");
    let prometheus_bin = tool("prometheus");
    let port = free_port();
    let mut docker =
        DockerEnv::start_with_config(&format!("[metrics]\naddress = \"127.0.0.1:{port}\"\n")).await;
    let env = &mut docker.env;
    // A CRI error, a running pod and container, and Docker API calls.
    let missing = env
        .rt
        .container_status(cri::ContainerStatusRequest {
            container_id: "no-such-container".into(),
            verbose: false,
        })
        .await
        .expect_err("an unknown container");
    assert_eq!(missing.code(), tonic::Code::NotFound);
    let pod = env.pod_config("metrics");
    let pod_id = env.run_pod(&pod).await;
    let config = env.container_config("sleeper", &["sleep", "600"]);
    let container_id = env.run(&pod_id, &pod, &config).await;
    docker.ok(&["ps", "-a"]);
    let err = docker.fails(&["inspect", "no-such-container-either"]);
    assert!(err.contains("No such"), "{err}");

    let text = scrape(port).await;
    let value = |prefix: &str| {
        sample(&text, prefix).unwrap_or_else(|| panic!("no sample {prefix} in:\n{text}"))
    };
    assert!(value(r#"wharf_api_requests_total{api="cri",code="OK",method="Version"}"#) >= 1.0);
    assert_eq!(
        value(r#"wharf_api_requests_total{api="cri",code="NotFound",method="ContainerStatus"}"#),
        1.0
    );
    assert!(
        value(r#"wharf_api_request_duration_seconds_count{api="cri",method="RunPodSandbox"}"#)
            >= 1.0
    );
    assert!(
        value(r#"wharf_api_requests_total{api="docker",code="200",method="GET /containers/json"}"#)
            >= 1.0
    );
    assert!(
        value(
            r#"wharf_api_requests_total{api="docker",code="404",method="GET /containers/{id}/json"}"#
        ) >= 1.0
    );
    assert_eq!(value(r#"wharf_image_pulls_total{result="success"}"#), 1.0);
    assert!(value("wharf_image_pull_bytes_total") > 100_000.0);
    assert!(value("wharf_image_layer_unpack_duration_seconds_count") >= 1.0);
    assert_eq!(
        value(r#"wharf_pods{namespace="k8s.io",state="ready"}"#),
        1.0
    );
    assert_eq!(
        value(r#"wharf_containers{namespace="k8s.io",state="running"}"#),
        1.0
    );
    assert_eq!(value(r#"wharf_monitor_processes{namespace="k8s.io"}"#), 1.0);
    assert_eq!(
        value(r#"wharf_container_starts_total{namespace="k8s.io"}"#),
        1.0
    );
    assert!(value(r#"wharf_store_operation_duration_seconds_count{operation="update"}"#) >= 1.0);
    assert!(value("process_resident_memory_bytes") > 1_000_000.0);
    assert!(value("process_open_fds") > 3.0);
    // No label value holds an ID or a name (bounded series).
    assert!(!text.contains(&container_id) && !text.contains("no-such-container"));

    // The container's exit is counted.
    docker.env.stop_container(&container_id, 0).await;
    let text = scrape(port).await;
    assert_eq!(
        sample(&text, r#"wharf_container_exits_total{namespace="k8s.io"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"wharf_containers{namespace="k8s.io",state="exited"}"#
        ),
        Some(1.0)
    );

    // promtool's lint: no problem at all.
    let mut check = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    {
        use std::io::Write;
        let mut stdin = check.stdin.take().expect("promtool's stdin");
        stdin.write_all(text.as_bytes()).expect("feed promtool");
    }
    let checked = check.wait_with_output().expect("promtool's result");
    assert!(
        checked.status.success() && checked.stdout.is_empty() && checked.stderr.is_empty(),
        "promtool check metrics: {:?}\n{}{}",
        checked.status,
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    // A real Prometheus scrapes it: up == 1, and a wharf metric has a value.
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: wharf\n    \
             static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
        ),
    )
    .expect("write prometheus.yml");
    let web_port = free_port();
    let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
    let _prometheus = Prometheus(
        Command::new(&prometheus_bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{web_port}"))
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("start prometheus"),
    );
    let query = |q: &'static str| async move {
        let url = format!("http://127.0.0.1:{web_port}/api/v1/query");
        let response = reqwest::Client::new()
            .get(url)
            .query(&[("query", q)])
            .send()
            .await
            .ok()?;
        let body: serde_json::Value = response.json().await.ok()?;
        let value = body["data"]["result"][0]["value"][1].as_str()?.to_string();
        Some(value)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if query(r#"up{job="wharf"}"#).await.as_deref() == Some("1") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never scraped wharfd: {}",
            std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let pulls = query(r#"wharf_image_pulls_total{result="success"}"#).await;
    assert_eq!(pulls.as_deref(), Some("1"));
}
