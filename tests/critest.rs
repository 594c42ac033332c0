//! The CRI conformance suite's streaming specs (`critest` of sigs.k8s.io/cri-tools, the
//! version pinned in tests/go/go.mod, built by tests/go/build.sh) against a real wharfd:
//! exec with and without a TTY, attach, and port-forward in a pod network and in the
//! host network, over SPDY as kubelet speaks it, then exec and attach again over
//! WebSocket.
//!
//! critest pulls its images from the internet (registry.k8s.io, gcr.io); here they come
//! from a local registry instead: the busybox test image as the default container image
//! and a busybox httpd image as the web server (`-test-images-file`), and the host
//! network web server, whose name critest does not let a flag change
//! (`gcr.io/k8s-staging-cri-tools/hostnet-nginx-<arch>`), through a registry mirror
//! for gcr.io in wharfd's config. Pods get the built-in bridge network so the host
//! reaches the web server on its pod IP, as critest checks before it port-forwards.
//!
//! critest binds the fixed host ports 12001 (port-forward), 12002 (host network
//! port-forward) and 12003 (the host network web server): the runs of this file take
//! turns, and the ports must be free.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::daemon::Daemon;
use support::go_tools::go_tool;
use support::images::{ImageBuilder, LayerBuilder, OciImage};
use support::net::TestBridge;
use support::pods::unique;
use support::registry::Registry;

/// The bridge indexes of this file's tests (subnets 10.230.x.0/24 and 10.231.x.0/24).
const SPDY_BRIDGE: u32 = 70;
const WEBSOCKET_BRIDGE: u32 = 71;
/// The host ports critest uses (pkg/validate/consts.go, consts_linux.go).
const CRITEST_PORTS: [u16; 3] = [12001, 12002, 12003];
/// The port of critest's host network web server image (images/hostnet-nginx).
const HOST_NET_WEB_PORT: u16 = 12003;
/// How long one critest run may take (it takes well under a minute).
const CRITEST_TIMEOUT: Duration = Duration::from_secs(600);

/// The streaming specs of critest v1.37 (pkg/validate/streaming.go and
/// streaming_linux.go), by their leaf text.
const EXEC_SPECS: [&str; 2] = [
    "runtime should support exec with tty=false and stdin=false [Conformance]",
    "runtime should support exec with tty=true and stdin=true [Conformance]",
];
const ATTACH_SPEC: &str = "runtime should support attach [Conformance]";
const PORT_FORWARD_SPECS: [&str; 2] = [
    "runtime should support portforward [Conformance]",
    "runtime should support portforward in host network",
];

/// One critest run at a time: its host ports are fixed.
static CRITEST_PORTS_HELD: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Go's name of this machine's architecture (critest's `runtime.GOARCH`).
fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// busybox httpd serving an index page on `port` from /www, as the image's Cmd (the
/// nginx images critest uses by default serve their welcome page on the same port;
/// critest checks only for a 200 answer to `GET /`).
fn web_server_image(port: u16) -> OciImage {
    let page = format!("<html><body>wharf critest web server on port {port}</body></html>\n");
    ImageBuilder::busybox()
        .layer(LayerBuilder::new().dir("www").file("www/index.html", page))
        .with_config(|config| {
            config.set_cmd(Some(
                ["httpd", "-f", "-p", &port.to_string(), "-h", "/www"]
                    .map(String::from)
                    .to_vec(),
            ));
        })
        .build()
}

/// A wharfd on a test bridge network whose images all come from a local registry.
struct Suite {
    // Dropped in reverse order: the daemon first, then the registry, then the bridge.
    _net: TestBridge,
    _registry: Registry,
    daemon: Daemon,
    dir: tempfile::TempDir,
    images_file: String,
}

impl Suite {
    /// On the test bridge `bridge` (a [`TestBridge`] index no other test uses).
    async fn start(bridge: u32) -> Suite {
        let net = TestBridge::new(bridge);
        let registry = Registry::start().await;
        let repo = unique("critest");
        let busybox = format!("{repo}/busybox");
        let web = format!("{repo}/web-server");
        let host_net_web = format!("k8s-staging-cri-tools/hostnet-nginx-{}", go_arch());
        registry
            .push(&busybox, "latest", &ImageBuilder::busybox().build())
            .await;
        registry.push(&web, "latest", &web_server_image(80)).await;
        registry
            .push(
                &host_net_web,
                "latest",
                &web_server_image(HOST_NET_WEB_PORT),
            )
            .await;
        let config = format!(
            "{}\n[registry.mirrors]\n\"gcr.io\" = [{:?}]\n",
            net.config(),
            registry.url()
        );
        let daemon = Daemon::start_with_config(&config).await;
        let dir = tempfile::Builder::new()
            .prefix("wharf-critest-")
            .tempdir()
            .expect("critest dir");
        let images_file = dir.path().join("test-images.yaml");
        std::fs::write(
            &images_file,
            format!(
                "defaultTestContainerImage: {host}/{busybox}:latest\n\
                 webServerTestImage: {host}/{web}:latest\n",
                host = registry.host()
            ),
        )
        .expect("write the test images file");
        Suite {
            _net: net,
            _registry: registry,
            daemon,
            images_file: images_file.display().to_string(),
            dir,
        }
    }

    /// Runs critest on the specs matching `focus` (and not `skip`) with `flags`;
    /// asserts that exactly `expected` ran and passed. Prints what ran.
    async fn run(&self, focus: &str, skip: Option<&str>, flags: &[&str], expected: &[&str]) {
        let critest = go_tool("critest");
        let _ports = CRITEST_PORTS_HELD.lock().await;
        for port in CRITEST_PORTS {
            assert!(
                std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
                "critest needs host port {port}, which something else holds"
            );
        }
        let endpoint = format!("unix://{}", self.daemon.paths.cri_socket.display());
        let report = self.dir.path().join(format!("{}.json", unique("report")));
        let mut command = tokio::process::Command::new(&critest);
        command
            .current_dir(self.dir.path())
            .args(["-runtime-endpoint", &endpoint, "-image-endpoint", &endpoint])
            .args(["-test-images-file", &self.images_file, "-parallel", "1"])
            .args(["-ginkgo.focus", focus])
            .args(["-ginkgo.no-color", "-ginkgo.timeout", "10m"])
            .arg(format!("-ginkgo.json-report={}", report.display()))
            .args(flags)
            .kill_on_drop(true);
        if let Some(skip) = skip {
            // critest sets ginkgo.skip to "benchmark" itself; ginkgo's flag appends.
            command.args(["-ginkgo.skip", skip]);
        }
        let started = Instant::now();
        let output = tokio::time::timeout(CRITEST_TIMEOUT, command.output())
            .await
            .unwrap_or_else(|_| panic!("critest {flags:?} ran past {CRITEST_TIMEOUT:?}"))
            .expect("run critest");
        let elapsed = started.elapsed();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        let specs = ran_specs(&report);
        let summary: Vec<String> = specs
            .iter()
            .map(|(name, state, secs, _)| format!("  {state:<8} {secs:>6.2}s  {name}"))
            .collect();
        eprintln!(
            "critest {flags:?} (focus {focus:?}, skip {skip:?}): {} in {elapsed:.1?}\n{}",
            output.status,
            summary.join("\n")
        );
        let failures: Vec<String> = specs
            .iter()
            .filter(|(_, state, _, _)| state != "passed")
            .map(|(name, state, _, failure)| format!("{state}: {name}\n{failure}"))
            .collect();
        assert!(
            output.status.success() && failures.is_empty(),
            "critest {flags:?} failed ({}):\n{}\n---- critest stdout ----\n{stdout}\n\
             ---- critest stderr ----\n{stderr}",
            output.status,
            failures.join("\n")
        );
        let mut ran: Vec<&str> = specs.iter().map(|(name, ..)| name.as_str()).collect();
        let mut want = expected.to_vec();
        ran.sort_unstable();
        want.sort_unstable();
        assert_eq!(
            ran, want,
            "critest ran other specs than expected:\n{stdout}"
        );
    }
}

/// The specs of a ginkgo JSON report that ran: (leaf text, state, seconds, failure).
fn ran_specs(report: &Path) -> Vec<(String, String, f64, String)> {
    let text = std::fs::read_to_string(report)
        .unwrap_or_else(|err| panic!("critest wrote no report {}: {err}", report.display()));
    let suites: Value = serde_json::from_str(&text).expect("the report is JSON");
    let mut specs = Vec::new();
    for suite in suites.as_array().expect("a list of suite reports") {
        for spec in suite["SpecReports"].as_array().into_iter().flatten() {
            let state = spec["State"].as_str().unwrap_or_default().to_string();
            let leaf = spec["LeafNodeType"].as_str().unwrap_or_default();
            if state == "skipped" && leaf == "It" {
                continue;
            }
            if leaf != "It" && state == "passed" {
                // BeforeSuite and the like, when they pass.
                continue;
            }
            let failure = &spec["Failure"];
            specs.push((
                spec["LeafNodeText"]
                    .as_str()
                    .filter(|t| !t.is_empty())
                    .unwrap_or(leaf)
                    .to_string(),
                state,
                spec["RunTime"].as_f64().unwrap_or_default() / 1e9,
                format!(
                    "{} at {}:{}",
                    failure["Message"].as_str().unwrap_or_default(),
                    failure["Location"]["FileName"].as_str().unwrap_or_default(),
                    failure["Location"]["LineNumber"]
                ),
            ));
        }
    }
    specs
}

/// Every streaming spec over SPDY (critest's default transport, kubelet's).
#[tokio::test(flavor = "multi_thread")]
async fn critest_streaming_over_spdy() {
    go_tool("critest");
    let suite = Suite::start(SPDY_BRIDGE).await;
    let all: Vec<&str> = EXEC_SPECS
        .iter()
        .chain(&[ATTACH_SPEC])
        .chain(&PORT_FORWARD_SPECS)
        .copied()
        .collect();
    suite.run("Streaming", None, &[], &all).await;
}

/// Exec and attach over WebSocket (`-websocket-exec`, `-websocket-attach`: client-go's
/// WebSocket executor, v5 with v4 fallback). Port-forward over WebSocket is left out:
/// critest's `-websocket-portforward` dials SPDY tunneled in WebSocket
/// (`SPDY/3.1+portforward.k8s.io`), which the API server speaks to kubectl but
/// kubelet's streaming server (k8s.io/cri-streaming) does not serve either.
#[tokio::test(flavor = "multi_thread")]
async fn critest_exec_and_attach_over_websocket() {
    go_tool("critest");
    let suite = Suite::start(WEBSOCKET_BRIDGE).await;
    let specs: Vec<&str> = EXEC_SPECS.iter().chain(&[ATTACH_SPEC]).copied().collect();
    suite
        .run(
            "Streaming",
            Some("portforward"),
            &["-websocket-exec", "-websocket-attach"],
            &specs,
        )
        .await;
}
