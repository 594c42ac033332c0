//! Published ports through the real docker CLI (issue 19): `-p` in its forms, `-P` with
//! the image's EXPOSE, reported by `docker port`, inspect and `docker ps`, reached
//! with TCP from the host (127.0.0.1 and the host's own address) and from another
//! container through the host's address (hairpin), withdrawn on stop and rm, kept
//! across a wharfd `kill -9`; clashes and bad input refused with dockerd's words,
//! leaving no rule or lease. Each test has its own bridge (`TestBridge`, removed with
//! its rules even when the test fails) and host ports below the ephemeral range.
//! Network rule: traffic only to loopback, the host's own address and the test's
//! containers.

mod support;

use std::collections::BTreeSet;
use std::process::Command;

use serde_json::Value;
use support::docker::DockerEnv;
use support::net::{host_fetch, iptables_save, stored_leases, try_host_fetch, TestBridge};
use support::pods::unique;

/// A host port for this test process, below the ephemeral range (offset < 10).
fn test_port(offset: u16) -> u16 {
    20000 + (std::process::id() % 1000) as u16 * 10 + offset
}

/// The host's own non-loopback IPv4 address (not a bridge's).
fn host_address() -> String {
    let output = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .expect("run ip (Debian package iproute2)");
    let text = String::from_utf8_lossy(&output.stdout);
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(link), Some(addr)) = (fields.get(1), fields.get(3)) else {
            continue;
        };
        let bridge = ["wh", "wt", "docker", "br-", "cni", "veth", "wharf"]
            .iter()
            .any(|p| link.starts_with(p));
        if !bridge {
            return addr.split('/').next().unwrap_or_default().to_string();
        }
    }
    panic!("the host has no global IPv4 address outside bridges (`ip -4 addr`): {text}");
}

/// busybox httpd serving `body` on port 8080.
fn httpd(body: &str) -> String {
    format!("mkdir -p /www && echo {body} > /www/index.html && exec httpd -f -p 8080 -h /www")
}

/// The GET a container sends with nc (busybox's static wget crashes on non-loopback
/// addresses on these machines).
fn get_from(ip: &str, port: u16) -> String {
    format!("printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {ip} {port}")
}

/// `docker port NAME`: (container port, host ip, host port) per line.
fn ports_of(docker: &DockerEnv, name: &str) -> Vec<(String, String, u16)> {
    docker
        .ok(&["port", name])
        .lines()
        .filter_map(|line| {
            let (container, host) = line.split_once(" -> ")?;
            let (ip, port) = host.rsplit_once(':')?;
            Some((container.to_string(), ip.to_string(), port.parse().ok()?))
        })
        .collect()
}

fn inspect(docker: &DockerEnv, name: &str) -> Value {
    let text = docker.ok(&["inspect", name]);
    let list: Value = serde_json::from_str(&text).expect("inspect JSON");
    list[0].clone()
}

fn ip_of(docker: &DockerEnv, name: &str) -> String {
    docker.ok(&[
        "inspect",
        "-f",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        name,
    ])
}

/// nat rules that DNAT to `ip`.
fn rules_to(ip: &str) -> Vec<String> {
    let needle = format!("--to-destination {ip}:");
    iptables_save("nat")
        .lines()
        .filter(|l| l.contains(&needle))
        .map(str::to_string)
        .collect()
}

/// nat rules that DNAT into the test's bridge subnet.
fn dnat_rules_into(net: &TestBridge) -> Vec<String> {
    let needle = format!("--to-destination {}.", net.prefix);
    iptables_save("nat")
        .lines()
        .filter(|l| l.contains(&needle))
        .map(str::to_string)
        .collect()
}

fn ephemeral_range() -> (u16, u16) {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .expect("ip_local_port_range");
    let mut words = text.split_whitespace().map(|w| w.parse::<u16>().unwrap());
    (words.next().unwrap(), words.next().unwrap())
}

async fn env(index: u32) -> (TestBridge, DockerEnv) {
    let net = TestBridge::new(index);
    let docker = DockerEnv::start_with_config(&net.config()).await;
    let image = docker.image.clone();
    docker.ok(&["pull", "-q", &image]);
    (net, docker)
}

#[tokio::test(flavor = "multi_thread")]
async fn published_ports_reach_the_container_from_the_host_and_other_containers() {
    let (_net, docker) = env(31).await;
    let image = docker.image.clone();
    let host_ip = host_address();
    let (port_any, port_local) = (test_port(0), test_port(1));
    let web = unique("web");
    let any_binding = format!("{port_any}:8080");
    let local_binding = format!("127.0.0.1:{port_local}:8080");
    docker.ok(&[
        "run",
        "-d",
        "--name",
        &web,
        "-p",
        &any_binding,
        "-p",
        &local_binding,
        "-p",
        "8080",
        "--expose",
        "9999",
        &image,
        "sh",
        "-c",
        &httpd("hello-ports"),
    ]);

    // From the host: every address for the 0.0.0.0 binding, loopback only for the other.
    for addr in [
        format!("127.0.0.1:{port_any}"),
        format!("{host_ip}:{port_any}"),
        format!("127.0.0.1:{port_local}"),
    ] {
        assert_eq!(host_fetch(&addr, "/index.html"), "hello-ports", "{addr}");
    }
    let other = try_host_fetch(&format!("{host_ip}:{port_local}"), "/index.html");
    assert!(
        other.is_err(),
        "a 127.0.0.1 binding answered on {host_ip}: {other:?}"
    );

    // The random port: from the ephemeral range, reported, reachable.
    let ports = ports_of(&docker, &web);
    assert_eq!(ports.len(), 3, "{ports:?}");
    assert!(ports.contains(&("8080/tcp".into(), "0.0.0.0".into(), port_any)));
    assert!(ports.contains(&("8080/tcp".into(), "127.0.0.1".into(), port_local)));
    let random = ports
        .iter()
        .map(|(_, _, port)| *port)
        .find(|p| *p != port_any && *p != port_local)
        .expect("a random host port");
    let (first, last) = ephemeral_range();
    assert!(
        (first..=last).contains(&random),
        "{random} not in {first}-{last}"
    );
    assert_eq!(
        host_fetch(&format!("127.0.0.1:{random}"), "/index.html"),
        "hello-ports"
    );

    // Inspect: the bindings got and the bindings sent; ps: the PORTS column and filters.
    let inspected = inspect(&docker, &web);
    let settings = &inspected["NetworkSettings"]["Ports"];
    let local_text = port_local.to_string();
    assert_eq!(
        settings["8080/tcp"].as_array().map(Vec::len),
        Some(3),
        "{settings}"
    );
    assert!(settings["9999/tcp"].is_null(), "{settings}");
    assert!(
        settings["8080/tcp"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["HostIp"] == "127.0.0.1" && b["HostPort"] == local_text.as_str()),
        "{settings}"
    );
    let sent = &inspected["HostConfig"]["PortBindings"]["8080/tcp"];
    assert_eq!(sent.as_array().map(Vec::len), Some(3), "{sent}");
    assert!(
        inspected["Config"]["ExposedPorts"]
            .get("9999/tcp")
            .is_some(),
        "{}",
        inspected["Config"]
    );
    let column = docker.ok(&[
        "ps",
        "--filter",
        &format!("name={web}"),
        "--format",
        "{{.Ports}}",
    ]);
    for part in [
        format!("0.0.0.0:{port_any}->8080/tcp"),
        format!("127.0.0.1:{port_local}->8080/tcp"),
        format!("0.0.0.0:{random}->8080/tcp"),
        "9999/tcp".to_string(),
    ] {
        assert!(column.contains(&part), "{part} not in {column}");
    }
    let by = |filter: String| docker.ok(&["ps", "--filter", &filter, "--format", "{{.Names}}"]);
    assert_eq!(by(format!("publish={port_any}")), web);
    assert_eq!(by(format!("publish={port_local}/tcp")), web);
    assert_eq!(by("expose=9990-9999".into()), web);
    assert_eq!(by(format!("publish={port_any}/udp")), "");
    assert_eq!(by("publish=1".into()), "");

    // Hairpin: another container reaches it through the host's address.
    let client = unique("client");
    docker.ok(&["run", "-d", "--name", &client, &image, "sleep", "600"]);
    let hairpin = docker.ok(&["exec", &client, "sh", "-c", &get_from(&host_ip, port_any)]);
    assert!(hairpin.contains("hello-ports"), "{hairpin}");

    // Stop withdraws the ports; a start publishes them again (a new random pick).
    let web_ip = ip_of(&docker, &web);
    assert_eq!(rules_to(&web_ip).len(), 3, "{:?}", rules_to(&web_ip));
    docker.ok(&["stop", "-t", "1", &web]);
    assert_eq!(rules_to(&web_ip), Vec::<String>::new());
    assert_eq!(docker.ok(&["port", &web]), "");
    assert_eq!(
        inspect(&docker, &web)["NetworkSettings"]["Ports"],
        serde_json::json!({})
    );
    assert!(try_host_fetch(&format!("127.0.0.1:{port_any}"), "/index.html").is_err());
    docker.ok(&["start", &web]);
    assert_eq!(ports_of(&docker, &web).len(), 3);
    assert_eq!(
        host_fetch(&format!("127.0.0.1:{port_any}"), "/index.html"),
        "hello-ports"
    );
    // A container whose process ends (not through stop) loses its ports too.
    docker.ok(&["kill", &web]);
    docker.ok(&["wait", &web]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !rules_to(&web_ip).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(rules_to(&web_ip), Vec::<String>::new());

    docker.ok(&["rm", "-f", &web, &client]);
    assert_eq!(rules_to(&web_ip), Vec::<String>::new());
    assert_eq!(
        stored_leases(&docker.env.daemon.paths.root),
        Vec::<String>::new()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn publish_all_takes_the_images_expose_and_ranges_map_port_by_port() {
    let (_net, docker) = env(32).await;
    let image = docker.image.clone();
    // An image with EXPOSE 8080 (committed with a --change, as a Dockerfile would).
    let base = unique("base");
    docker.ok(&["create", "--name", &base, &image, "true"]);
    let exposing = format!("{}:latest", unique("exposing"));
    docker.ok(&["commit", "--change", "EXPOSE 8080", &base, &exposing]);
    docker.ok(&["rm", &base]);

    let web = unique("all");
    docker.ok(&[
        "run",
        "-d",
        "--name",
        &web,
        "-P",
        "--expose",
        "7000/udp",
        &exposing,
        "sh",
        "-c",
        &httpd("hello-all"),
    ]);
    let ports = ports_of(&docker, &web);
    let protocols: BTreeSet<&str> = ports.iter().map(|(c, _, _)| c.as_str()).collect();
    assert_eq!(
        protocols,
        BTreeSet::from(["7000/udp", "8080/tcp"]),
        "{ports:?}"
    );
    let tcp = ports
        .iter()
        .find(|(c, _, _)| c == "8080/tcp")
        .map(|(_, _, p)| *p)
        .unwrap();
    assert_eq!(
        host_fetch(&format!("127.0.0.1:{tcp}"), "/index.html"),
        "hello-all"
    );
    let exposed = inspect(&docker, &web)["Config"]["ExposedPorts"].clone();
    assert!(
        exposed.get("8080/tcp").is_some() && exposed.get("7000/udp").is_some(),
        "{exposed}"
    );

    // A range: 8080 and 8081 on two consecutive host ports.
    let ranged = unique("range");
    let (first, second) = (test_port(2), test_port(3));
    let spec = format!("127.0.0.1:{first}-{second}:8080-8081");
    docker.ok(&[
        "run",
        "-d",
        "--name",
        &ranged,
        "-p",
        &spec,
        &image,
        "sh",
        "-c",
        &httpd("hello-range"),
    ]);
    let ports = ports_of(&docker, &ranged);
    assert!(
        ports.contains(&("8080/tcp".into(), "127.0.0.1".into(), first)),
        "{ports:?}"
    );
    assert!(
        ports.contains(&("8081/tcp".into(), "127.0.0.1".into(), second)),
        "{ports:?}"
    );
    assert_eq!(
        host_fetch(&format!("127.0.0.1:{first}"), "/index.html"),
        "hello-range"
    );
    // Mismatched ranges: refused before anything is made (the CLI's own parse).
    let before = docker.ok(&["ps", "-aq"]);
    let err = docker.fails(&["run", "-d", "-p", "8000-8002:80-81", &image, "true"]);
    assert!(
        err.contains("invalid ranges specified for container and host Ports"),
        "{err}"
    );
    assert_eq!(docker.ok(&["ps", "-aq"]), before);

    docker.ok(&["rm", "-f", &web, &ranged]);
    docker.ok(&["rmi", &exposing]);
    assert_eq!(
        stored_leases(&docker.env.daemon.paths.root),
        Vec::<String>::new()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn clashes_and_bad_input_are_refused_and_leave_nothing() {
    let (net, docker) = env(33).await;
    let image = docker.image.clone();
    let port = test_port(4);
    let holder = unique("holder");
    docker.ok(&[
        "run",
        "-d",
        "--name",
        &holder,
        "-p",
        &format!("{port}:8080"),
        &image,
        "sleep",
        "600",
    ]);

    // Another container on the same host port: dockerd's words; it stays created (as
    // dockerd leaves it) with no rule, and its removal leaves no lease.
    let second = unique("second");
    let err = docker.fails(&[
        "run",
        "-d",
        "--name",
        &second,
        "-p",
        &format!("127.0.0.1:{port}:80"),
        &image,
        "sleep",
        "600",
    ]);
    assert!(
        err.contains(&format!(
            "Bind for 127.0.0.1:{port} failed: port is already allocated"
        )),
        "{err}"
    );
    assert_eq!(
        docker.ok(&[
            "ps",
            "-a",
            "--filter",
            &format!("name={second}"),
            "--format",
            "{{.State}}"
        ]),
        "created"
    );
    // dockerd answers a clash as a system error: 500, not 409.
    let (status, _, body) = docker.http("POST", &format!("/containers/{second}/start"), None);
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("port is already allocated"), "{body}");
    let second_ip = ip_of(&docker, &second);
    assert_eq!(rules_to(&second_ip), Vec::<String>::new());
    docker.ok(&["rm", &second]);
    assert_eq!(stored_leases(&docker.env.daemon.paths.root).len(), 1);

    // A listening host socket holds its port too.
    let socket_port = test_port(5);
    let listener = std::net::TcpListener::bind(("0.0.0.0", socket_port)).expect("bind a host port");
    let third = unique("third");
    let err = docker.fails(&[
        "run",
        "-d",
        "--name",
        &third,
        "-p",
        &format!("{socket_port}:8080"),
        &image,
        "sleep",
        "600",
    ]);
    assert!(
        err.contains(&format!(
            "Bind for 0.0.0.0:{socket_port} failed: port is already allocated"
        )),
        "{err}"
    );
    let third_ip = ip_of(&docker, &third);
    assert_eq!(rules_to(&third_ip), Vec::<String>::new());
    docker.ok(&["rm", &third]);
    drop(listener);

    // Bad bindings through the API: dockerd's 400s, and nothing is made.
    let before = docker.ok(&["ps", "-aq"]);
    let create = |bindings: &str| {
        let body = format!(
            r#"{{"Image": "{image}", "Cmd": ["true"], "HostConfig": {{"PortBindings": {bindings}}}}}"#
        );
        docker.http("POST", "/v1.41/containers/create", Some(&body))
    };
    for (bindings, message) in [
        (
            r#"{"0/tcp": [{"HostPort": "80"}]}"#,
            r#"invalid port specification: \"0\""#,
        ),
        (
            r#"{"70000/tcp": null}"#,
            r#"invalid port specification: \"70000\""#,
        ),
        (
            r#"{"80/tcp": [{"HostPort": "70000"}]}"#,
            r#"invalid port specification: \"70000\""#,
        ),
        (
            r#"{"80/icmp": [{"HostPort": "80"}]}"#,
            "invalid proto: icmp",
        ),
        (
            r#"{"80/tcp": [{"HostIp": "1.2.3.999", "HostPort": "80"}]}"#,
            "invalid IP address: 1.2.3.999",
        ),
    ] {
        let (status, _, body) = create(bindings);
        assert_eq!(status, 400, "{bindings}: {body}");
        assert!(body.contains(message), "{bindings}: {body}");
    }
    for spec in ["8080:0", "70000:80", "80/icmp", "1.2.3.999:80:80"] {
        let err = docker.fails(&["run", "-d", "-p", spec, &image, "true"]);
        assert!(err.contains("invalid"), "{spec}: {err}");
    }
    assert_eq!(docker.ok(&["ps", "-aq"]), before);

    let holder_ip = ip_of(&docker, &holder);
    docker.ok(&["rm", "-f", &holder]);
    assert_eq!(rules_to(&holder_ip), Vec::<String>::new());
    assert_eq!(
        stored_leases(&docker.env.daemon.paths.root),
        Vec::<String>::new()
    );
    assert_eq!(dnat_rules_into(&net), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn published_ports_outlive_a_wharfd_kill_and_go_with_rm() {
    let (net, mut docker) = env(34).await;
    let image = docker.image.clone();
    let port = test_port(6);
    let web = unique("live");
    docker.ok(&[
        "run",
        "-d",
        "--name",
        &web,
        "-p",
        &format!("{port}:8080"),
        "-p",
        "8080",
        &image,
        "sh",
        "-c",
        &httpd("hello-live"),
    ]);
    let before = ports_of(&docker, &web);
    assert_eq!(
        host_fetch(&format!("127.0.0.1:{port}"), "/index.html"),
        "hello-live"
    );
    let ip = ip_of(&docker, &web);

    docker.env.daemon.kill9();
    assert_eq!(
        host_fetch(&format!("127.0.0.1:{port}"), "/index.html"),
        "hello-live"
    );
    docker.env.daemon.restart().await;
    assert_eq!(ports_of(&docker, &web), before);
    assert_eq!(
        host_fetch(&format!("127.0.0.1:{port}"), "/index.html"),
        "hello-live"
    );

    docker.ok(&["rm", "-f", &web]);
    assert_eq!(rules_to(&ip), Vec::<String>::new());
    assert!(try_host_fetch(&format!("127.0.0.1:{port}"), "/index.html").is_err());
    assert_eq!(
        stored_leases(&docker.env.daemon.paths.root),
        Vec::<String>::new()
    );

    // 20 run/rm cycles with published ports leave no rule and no lease.
    for i in 0..20 {
        let name = format!("{web}-{i}");
        docker.ok(&[
            "run",
            "-d",
            "--name",
            &name,
            "-p",
            "8080",
            "-p",
            &format!("127.0.0.1:{port}:80/udp"),
            &image,
            "sleep",
            "600",
        ]);
        docker.ok(&["rm", "-f", &name]);
    }
    assert_eq!(
        stored_leases(&docker.env.daemon.paths.root),
        Vec::<String>::new()
    );
    assert_eq!(dnat_rules_into(&net), Vec::<String>::new());
}

/// docker-py: `ports={'8080/tcp': None}` publishes on a random port that
/// `container.ports` reports and that answers (tests/docker-py/test_ports.py).
#[tokio::test(flavor = "multi_thread")]
async fn docker_py_publishes_a_random_port() {
    let python =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/docker-py-venv/bin/python");
    assert!(
        python.is_file(),
        "docker-py is missing: run tests/docker-py/setup.sh (scripts/test does), which \
         makes target/docker-py-venv with python3 -m venv and pip"
    );
    let (_net, docker) = env(35).await;
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/docker-py/test_ports.py");
    let output = Command::new(&python)
        .arg(&script)
        .env(
            "DOCKER_HOST",
            format!("unix://{}", docker.socket().display()),
        )
        .env("WHARF_TEST_IMAGE", &docker.image)
        .env("WHARF_TEST_NAME", unique("dpy"))
        .env_remove("DOCKER_TLS_VERIFY")
        .env_remove("DOCKER_CERT_PATH")
        .output()
        .expect("run docker-py");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("docker-py ports: all checks passed"),
        "docker-py failed:\n{stdout}\n{stderr}\n--- wharfd log:\n{}",
        docker.env.daemon.log()
    );
    assert_eq!(
        stored_leases(&docker.env.daemon.paths.root),
        Vec::<String>::new()
    );
}

/// `--network none` on a daemon whose default network is the bridge: loopback only, no
/// lease taken, listed and inspected as dockerd shows the `none` network.
#[tokio::test]
async fn network_none_gives_loopback_only() {
    let (_net, docker) = env(36).await;
    let name = unique("none");
    let interfaces = docker.ok(&[
        "run",
        "--name",
        &name,
        "--network",
        "none",
        &docker.image,
        "sh",
        "-c",
        "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '",
    ]);
    assert_eq!(interfaces, "lo");
    let bridged = docker.ok(&[
        "run",
        "--rm",
        &docker.image,
        "sh",
        "-c",
        "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | sort",
    ]);
    assert_eq!(
        bridged, "eth0\nlo",
        "the default network is the bridge here"
    );
    let shown = docker.ok(&[
        "inspect", "-f",
        "{{.HostConfig.NetworkMode}} {{range $k, $v := .NetworkSettings.Networks}}{{$k}}:{{$v.IPAddress}};{{end}}",
        &name,
    ]);
    assert_eq!(shown, "none none:;");
    let listed = docker.ok(&[
        "ps",
        "-a",
        "--filter",
        "network=none",
        "--format",
        "{{.Names}} {{.Networks}}",
    ]);
    assert_eq!(listed, format!("{name} none"));
    docker.ok(&["rm", &name]);
    assert_eq!(
        stored_leases(&docker.env.daemon.paths.root),
        Vec::<String>::new()
    );
}

/// Removes the test's containers and its network even when an assertion failed.
struct NetworkCleanup<'a> {
    docker: &'a DockerEnv,
    network: String,
}

impl Drop for NetworkCleanup<'_> {
    fn drop(&mut self) {
        for id in self.docker.run(&["ps", "-aq"]).stdout.split_whitespace() {
            self.docker.run(&["rm", "-f", id]);
        }
        self.docker.run(&["network", "rm", &self.network]);
    }
}

/// Ports published by a container on a user-defined network: reachable from the host
/// and gone at stop; a host port is one network's only (either way round), with
/// dockerd's message, and the refused container stays created.
#[tokio::test(flavor = "multi_thread")]
async fn published_ports_on_a_user_defined_network() {
    let (_net, docker) = env(37).await;
    let image = docker.image.clone();
    let network = unique("pubnet");
    let subnet = format!("172.30.{}.0/24", std::process::id() % 250 + 1);
    docker.ok(&["network", "create", "--subnet", &subnet, &network]);
    let _cleanup = NetworkCleanup {
        docker: &docker,
        network: network.clone(),
    };
    let (port, other_port) = (test_port(7), test_port(8));
    let web = unique("web");
    let binding = format!("127.0.0.1:{port}:8080");
    docker.ok(&[
        "run",
        "-d",
        "--name",
        &web,
        "--network",
        &network,
        "-p",
        &binding,
        "-p",
        "8080",
        &image,
        "sh",
        "-c",
        &httpd("hello-user-network"),
    ]);
    assert_eq!(
        host_fetch(&format!("127.0.0.1:{port}"), "/index.html"),
        "hello-user-network"
    );
    let ports = ports_of(&docker, &web);
    assert_eq!(ports.len(), 2, "{ports:?}");
    let random = ports
        .iter()
        .map(|(_, _, p)| *p)
        .find(|p| *p != port)
        .expect("a random host port");
    assert_eq!(
        host_fetch(&format!("127.0.0.1:{random}"), "/index.html"),
        "hello-user-network"
    );

    // The same host port on the built-in bridge: taken.
    let clash = unique("clash");
    let err = docker.fails(&[
        "run", "-d", "--name", &clash, "-p", &binding, &image, "sleep", "60",
    ]);
    assert!(
        err.contains(&format!(
            "Bind for 127.0.0.1:{port} failed: port is already allocated"
        )),
        "{err}"
    );
    assert_eq!(
        docker.ok(&["inspect", "-f", "{{.State.Status}}", &clash]),
        "created"
    );
    // A port the bridge holds, asked on the user network: taken too.
    let bridged = unique("bridged");
    let bridged_binding = format!("127.0.0.1:{other_port}:8080");
    docker.ok(&[
        "run",
        "-d",
        "--name",
        &bridged,
        "-p",
        &bridged_binding,
        &image,
        "sh",
        "-c",
        &httpd("hello-bridge"),
    ]);
    let second = unique("second");
    let err = docker.fails(&[
        "run",
        "-d",
        "--name",
        &second,
        "--network",
        &network,
        "-p",
        &bridged_binding,
        &image,
        "sleep",
        "60",
    ]);
    assert!(err.contains("port is already allocated"), "{err}");
    assert_eq!(
        host_fetch(&format!("127.0.0.1:{other_port}"), "/index.html"),
        "hello-bridge"
    );

    // Stop withdraws them; the port is free for the other network then.
    docker.ok(&["stop", "-t", "0", &web]);
    assert!(try_host_fetch(&format!("127.0.0.1:{port}"), "/index.html").is_err());
    docker.ok(&["start", &clash]);
    docker.ok(&["rm", "-f", &web, &clash, &bridged, &second]);
    assert_eq!(
        stored_leases(&docker.env.daemon.paths.root),
        Vec::<String>::new()
    );
}
