//! User-defined networks with the real `docker` CLI (issue 19): create, list, inspect,
//! connect and disconnect with static addresses, name resolution by the embedded DNS
//! (127.0.0.11), isolation between networks, persistence across a wharfd `kill -9`,
//! dockerd's errors for bad input, and nothing left on the host after many cycles.
//!
//! Traffic stays inside each test's own bridges and namespaces. Subnets are picked per
//! test and per process (tests of several binaries run at once): 172.(20+n).(pid).0/24.

mod support;

use std::process::Command;

use support::docker::DockerEnv;
use support::pods::unique;

/// A /24 of this test process for test `n` (0..12).
fn subnet(n: u32) -> String {
    format!("172.{}.{}.0/24", 20 + n, std::process::id() % 250 + 1)
}

/// `subnet(n)` with the last octet `host`.
fn address(n: u32, host: u8) -> String {
    format!("172.{}.{}.{host}", 20 + n, std::process::id() % 250 + 1)
}

/// Removes the test's containers and networks even when an assertion failed.
struct Cleanup<'a> {
    docker: &'a DockerEnv,
    networks: Vec<String>,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let ids = self.docker.run(&["ps", "-aq"]).stdout;
        for id in ids.split_whitespace() {
            self.docker.run(&["rm", "-f", id]);
        }
        for network in &self.networks {
            self.docker.run(&["network", "rm", network]);
        }
    }
}

fn host(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|err| {
            panic!("{program} is missing ({err}): install iproute2 and iptables")
        });
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The bridge link of a network.
fn bridge_of(docker: &DockerEnv, network: &str) -> String {
    let options = docker.ok(&["network", "inspect", "-f", "{{.Id}}", network]);
    format!("wh-{}", &options[..12])
}

/// An HTTP GET of `/` on `ip`:80 from `container` (busybox's static wget crashes on
/// non-loopback addresses here; nc does the GET).
fn get(docker: &DockerEnv, container: &str, ip: &str) -> support::docker::Run {
    docker.run(&[
        "exec",
        container,
        "sh",
        "-c",
        &format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {ip} 80"),
    ])
}

/// [`get`], retried while the server starts; the response.
fn fetch(docker: &DockerEnv, container: &str, ip: &str) -> String {
    let mut last = None;
    for _ in 0..20 {
        let run = get(docker, container, ip);
        if run.status == 0 && run.stdout.contains("200") {
            return run.stdout;
        }
        last = Some(run);
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    panic!("GET http://{ip}/ in {container} failed: {last:?}");
}

/// Each `(what, body, status, words)`: `POST /networks/create` with the body answers
/// the status with the words.
fn refused_network_creates(docker: &DockerEnv, cases: Vec<(&str, String, u16, &str)>) {
    for (what, body, status, message) in cases {
        let (got, _, text) = docker.http("POST", "/networks/create", Some(&body));
        assert_eq!(got, status, "{what}: {text}");
        assert!(text.contains(message), "{what}: {text}");
    }
}

fn run_httpd(docker: &DockerEnv, name: &str, network: &str, alias: &str) {
    docker.ok(&[
        "run",
        "-d",
        "--name",
        name,
        "--network",
        network,
        "--network-alias",
        alias,
        &docker.image,
        "sh",
        "-c",
        "mkdir -p /www && echo hello-from-wharf > /www/index.html && exec httpd -f -p 80 -h /www",
    ]);
}

#[tokio::test]
async fn containers_on_a_network_resolve_and_reach_each_other_and_no_one_else() {
    let docker = DockerEnv::start_pulled().await;
    let front = unique("front");
    let back = unique("back");
    let mut cleanup = Cleanup {
        docker: &docker,
        networks: vec![front.clone(), back.clone()],
    };
    docker.ok(&["network", "create", "--subnet", &subnet(0), &front]);
    docker.ok(&[
        "network",
        "create",
        "--subnet",
        &subnet(1),
        "--label",
        "tier=back",
        &back,
    ]);
    let web = unique("web");
    run_httpd(&docker, &web, &front, "www");

    let client = unique("client");
    docker.ok(&[
        "run",
        "-d",
        "--name",
        &client,
        "--network",
        &front,
        &docker.image,
        "sleep",
        "300",
    ]);
    let resolv = docker.ok(&["exec", &client, "cat", "/etc/resolv.conf"]);
    assert!(resolv.contains("nameserver 127.0.0.11"), "{resolv}");
    assert!(resolv.contains("ndots:0"), "{resolv}");

    let web_ip = docker.ok(&[
        "inspect",
        "-f",
        &format!("{{{{(index .NetworkSettings.Networks \"{front}\").IPAddress}}}}"),
        &web,
    ]);
    assert!(
        web_ip.starts_with(address(0, 0).trim_end_matches('0')),
        "{web_ip}"
    );
    let web_id = docker.ok(&["inspect", "-f", "{{.Id}}", &web]);
    for name in [web.as_str(), "www", &web_id[..12]] {
        let found = docker.ok(&["exec", &client, "nslookup", name]);
        assert!(found.contains(&web_ip), "nslookup {name}: {found}");
    }
    // From the address nslookup gave for the alias.
    let resolved = docker.ok(&["exec", &client, "nslookup", "www"]);
    let www_ip = resolved
        .lines()
        .rev()
        .find_map(|line| line.strip_prefix("Address:"))
        .map(|a| a.trim().to_string())
        .unwrap_or_default();
    assert_eq!(www_ip, web_ip, "{resolved}");
    let page = fetch(&docker, &client, &www_ip);
    assert!(page.contains("hello-from-wharf"), "{page}");

    // Another network: its container neither resolves nor reaches them.
    let outsider = unique("outsider");
    docker.ok(&[
        "run",
        "-d",
        "--name",
        &outsider,
        "--network",
        &back,
        &docker.image,
        "sleep",
        "300",
    ]);
    let lookup = docker.run(&["exec", &outsider, "nslookup", "www"]);
    assert!(!lookup.stdout.contains(&web_ip), "{lookup:?}");
    let reach = get(&docker, &outsider, &web_ip);
    assert!(
        !reach.stdout.contains("hello-from-wharf"),
        "reached across networks: {reach:?}"
    );

    // Inspect and list as dockerd shows them.
    let inspected = docker.ok(&[
        "network",
        "inspect",
        "-f",
        "{{.Driver}} {{range .IPAM.Config}}{{.Subnet}} {{.Gateway}}{{end}} {{len .Containers}}",
        &front,
    ]);
    assert_eq!(
        inspected,
        format!("bridge {} {} 2", subnet(0), address(0, 1))
    );
    let endpoint = docker.ok(&[
        "inspect",
        "-f",
        &format!(
            "{{{{with index .NetworkSettings.Networks \"{front}\"}}}}{{{{.Gateway}}}} {{{{.MacAddress}}}} {{{{len .EndpointID}}}} {{{{.Aliases}}}}{{{{end}}}}"
        ),
        &web,
    ]);
    assert!(
        endpoint.starts_with(&format!("{} 02:42:", address(0, 1))),
        "{endpoint}"
    );
    assert!(
        endpoint.contains(" 64 ") && endpoint.contains("www"),
        "{endpoint}"
    );
    let listed = docker.ok(&["network", "ls", "--format", "{{.Name}} {{.Driver}}"]);
    for line in ["bridge bridge", "host host", "none null"] {
        assert!(listed.contains(line), "{listed}");
    }
    let labelled = docker.ok(&["network", "ls", "-q", "--filter", "label=tier=back"]);
    assert_eq!(labelled.lines().count(), 1, "{labelled}");
    let custom = docker.ok(&[
        "network",
        "ls",
        "--filter",
        "type=custom",
        "--format",
        "{{.Name}}",
    ]);
    assert!(
        custom.contains(&front) && !custom.contains("bridge"),
        "{custom}"
    );

    // Removal withdraws the name at once.
    docker.ok(&["rm", "-f", &web]);
    let gone = docker.run(&["exec", &client, "nslookup", "www"]);
    assert!(!gone.stdout.contains(&web_ip), "{gone:?}");
    cleanup.networks.clear();
    drop(cleanup);
    docker.ok(&["network", "rm", &front, &back]);
}

#[tokio::test]
async fn connect_disconnect_with_static_ip_survive_kill9() {
    let mut docker = DockerEnv::start_pulled().await;
    let net = unique("static");
    let other = unique("other");
    docker.ok(&["network", "create", "--subnet", &subnet(2), &net]);
    docker.ok(&[
        "network",
        "create",
        "--subnet",
        &subnet(3),
        "--internal",
        &other,
    ]);
    let a = unique("a");
    let b = unique("b");
    docker.ok(&["run", "-d", "--name", &a, &docker.image, "sleep", "600"]);
    docker.ok(&[
        "run",
        "-d",
        "--name",
        &b,
        "--network",
        &net,
        "--ip",
        &address(2, 40),
        &docker.image,
        "sleep",
        "600",
    ]);
    docker.ok(&[
        "network",
        "connect",
        "--ip",
        &address(2, 77),
        "--alias",
        "db",
        &net,
        &a,
    ]);
    docker.ok(&["network", "connect", &other, &b]);
    let ip_of = |docker: &DockerEnv, c: &str, n: &str| {
        docker.ok(&[
            "inspect",
            "-f",
            &format!("{{{{(index .NetworkSettings.Networks \"{n}\").IPAddress}}}}"),
            c,
        ])
    };
    assert_eq!(ip_of(&docker, &a, &net), address(2, 77));
    assert_eq!(ip_of(&docker, &b, &net), address(2, 40));
    let found = docker.ok(&["exec", &b, "nslookup", "db"]);
    assert!(found.contains(&address(2, 77)), "{found}");
    // The address is taken: a second static request for it is refused.
    let taken = docker.fails(&[
        "run",
        "-d",
        "--network",
        &net,
        "--ip",
        &address(2, 40),
        &docker.image,
        "true",
    ]);
    assert!(taken.contains(&address(2, 40)), "{taken}");

    docker.env.daemon.kill9();
    docker.env.daemon.restart().await;

    assert_eq!(ip_of(&docker, &a, &net), address(2, 77));
    let members = docker.ok(&[
        "network",
        "inspect",
        "-f",
        "{{range .Containers}}{{.Name}}={{.IPv4Address}} {{end}}",
        &net,
    ]);
    assert!(
        members.contains(&format!("{a}={}/24", address(2, 77))),
        "{members}"
    );
    assert!(
        members.contains(&format!("{b}={}/24", address(2, 40))),
        "{members}"
    );
    // DNS is served again after the restart.
    let found = docker.ok(&["exec", &b, "nslookup", &a]);
    assert!(found.contains(&address(2, 77)), "{found}");
    let ping = docker.run(&["exec", &b, "ping", "-c", "1", "-W", "3", &address(2, 77)]);
    assert_eq!(ping.status, 0, "{ping:?}");

    docker.ok(&["network", "disconnect", &net, &a]);
    let gone = docker.run(&["exec", &b, "nslookup", "db"]);
    assert!(!gone.stdout.contains(&address(2, 77)), "{gone:?}");
    let disconnected = docker.ok(&["inspect", "-f", "{{len .NetworkSettings.Networks}}", &a]);
    assert_eq!(disconnected, "1");
    let again = docker.fails(&["network", "disconnect", &net, &a]);
    assert!(again.contains("is not connected to network"), "{again}");
    docker.ok(&["rm", "-f", &a, &b]);
    docker.ok(&["network", "rm", &net, &other]);
}

#[tokio::test]
async fn bad_input_gets_dockerd_errors_and_changes_nothing() {
    let docker = DockerEnv::start_pulled().await;
    let net = unique("bad");
    let mut cleanup = Cleanup {
        docker: &docker,
        networks: vec![net.clone()],
    };
    docker.ok(&["network", "create", "--subnet", &subnet(4), &net]);
    let before = docker.ok(&["network", "ls", "-q"]);

    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "bad subnet",
            r#"{"Name":"x1","IPAM":{"Config":[{"Subnet":"10.300.0.0/16"}]}}"#.to_string(),
            400,
            "invalid CIDR address: 10.300.0.0/16",
        ),
        (
            "overlap",
            format!(
                r#"{{"Name":"x2","IPAM":{{"Config":[{{"Subnet":"{}"}}]}}}}"#,
                subnet(4)
            ),
            403,
            "Pool overlaps with other one on this address space",
        ),
        (
            "gateway outside",
            format!(
                r#"{{"Name":"x3","IPAM":{{"Config":[{{"Subnet":"{}","Gateway":"10.9.9.9"}}]}}}}"#,
                subnet(5)
            ),
            400,
            "no matching subnet for gateway 10.9.9.9",
        ),
        (
            "taken name",
            format!(r#"{{"Name":"{net}","CheckDuplicate":true}}"#),
            409,
            "already exists",
        ),
        (
            "predefined name",
            r#"{"Name":"host"}"#.to_string(),
            403,
            "pre-defined network",
        ),
        (
            "unknown driver",
            r#"{"Name":"x4","Driver":"overlay9"}"#.to_string(),
            404,
            "overlay9\\\" not found",
        ),
    ];
    refused_network_creates(&docker, cases);
    let holder = unique("holder");
    docker.ok(&[
        "run",
        "-d",
        "--name",
        &holder,
        "--network",
        &net,
        &docker.image,
        "sleep",
        "300",
    ]);
    let (status, _, text) = docker.http("DELETE", &format!("/networks/{net}"), None);
    assert_eq!(status, 409, "{text}");
    assert!(
        text.contains(&format!("error while removing network: network {net} id"))
            && text.contains("has active endpoints"),
        "{text}"
    );
    let (status, _, text) = docker.http("DELETE", "/networks/bridge", None);
    assert_eq!(status, 403, "{text}");
    let missing = unique("nonet");
    let err = docker.fails(&["run", "--network", &missing, &docker.image, "true"]);
    assert!(
        err.contains(&format!("network {missing} not found")),
        "{err}"
    );
    let (status, _, _) = docker.http("GET", &format!("/networks/{missing}"), None);
    assert_eq!(status, 404);
    let err = docker.fails(&["run", "--ip", "172.17.0.9", &docker.image, "true"]);
    assert!(err.contains("user defined networks only"), "{err}");
    // Nothing changed: same networks, no container left by the refused run.
    assert_eq!(docker.ok(&["network", "ls", "-q"]), before);
    assert_eq!(docker.ok(&["ps", "-aq"]).lines().count(), 1);
    cleanup.networks.clear();
    drop(cleanup);
    docker.ok(&["network", "rm", &net]);
}

#[tokio::test]
async fn many_create_remove_cycles_leave_nothing_behind() {
    let docker = DockerEnv::start_pulled().await;
    let mut bridges = Vec::new();
    for round in 0..20 {
        let net = unique(&format!("cycle{round}"));
        let _cleanup = Cleanup {
            docker: &docker,
            networks: vec![net.clone()],
        };
        docker.ok(&["network", "create", "--subnet", &subnet(6), &net]);
        bridges.push(bridge_of(&docker, &net));
        let named = unique("self");
        docker.ok(&[
            "run",
            "--rm",
            "--name",
            &named,
            "--network",
            &net,
            &docker.image,
            "nslookup",
            &named,
        ]);
        let id = docker.ok(&[
            "run",
            "-d",
            "--network",
            &net,
            "--network-alias",
            "x",
            &docker.image,
            "sleep",
            "60",
        ]);
        docker.ok(&["rm", "-f", &id]);
        docker.ok(&["network", "rm", &net]);
    }
    let links = host("ip", &["-o", "link"]);
    let rules = host("iptables-save", &[]);
    for bridge in &bridges {
        assert!(
            !links.contains(bridge.as_str()),
            "bridge {bridge} left:\n{links}"
        );
        assert!(
            !rules.contains(bridge.as_str()),
            "rules of {bridge} left:\n{rules}"
        );
    }
    let pruned = docker.ok(&["network", "prune", "-f"]);
    assert!(pruned.is_empty(), "{pruned}");
    assert_eq!(
        docker.ok(&["network", "ls", "-q", "--filter", "type=custom"]),
        ""
    );
}

/// `--mac-address`: the first interface's address, on wharf's bridge network and on a
/// user-defined one, seen inside the container and in inspect (which shows the
/// generated one otherwise); a malformed or multicast address is a 400 that makes
/// nothing (the CLI checks the form itself, so raw requests send them).
#[tokio::test]
async fn mac_address_of_the_first_interface() {
    let bridge = support::net::TestBridge::new(8);
    let docker = DockerEnv::start_with_config(&bridge.config()).await;
    let image = docker.image.clone();
    docker.ok(&["pull", "-q", &image]);
    let net = unique("macnet");
    let _cleanup = Cleanup {
        docker: &docker,
        networks: vec![net.clone()],
    };
    docker.ok(&["network", "create", "--subnet", &subnet(7), &net]);
    let show = |name: &str, network: &str| {
        docker.ok(&[
            "inspect",
            "-f",
            &format!(
                "{{{{.NetworkSettings.MacAddress}}}} \
                 {{{{(index .NetworkSettings.Networks \"{network}\").MacAddress}}}}"
            ),
            name,
        ])
    };
    // The docker CLI 28 sends --mac-address per network, which it refuses below API
    // 1.44: raw creates, as API 1.41 clients (docker-py) and newer ones send it.
    let create = |name: &str, body: String| {
        let path = format!("/v1.41/containers/create?name={name}");
        let (status, _, answer) = docker.http("POST", &path, Some(&body));
        assert_eq!(status, 201, "{body}: {answer}");
        docker.ok(&["start", name]);
    };
    for (network, mac) in [
        ("bridge", "02:42:ac:11:00:99"),
        (net.as_str(), "02:00:5e:0a:be:ef"),
    ] {
        let name = unique("mac");
        let body = if network == "bridge" {
            format!(
                r#"{{"Image": "{image}", "Cmd": ["sleep", "1000"], "MacAddress": "{mac}",
                    "HostConfig": {{"NetworkMode": "bridge"}}}}"#
            )
        } else {
            format!(
                r#"{{"Image": "{image}", "Cmd": ["sleep", "1000"],
                    "HostConfig": {{"NetworkMode": "{network}"}},
                    "NetworkingConfig": {{"EndpointsConfig": {{"{network}": {{"MacAddress": "{mac}"}}}}}}}}"#
            )
        };
        create(&name, body);
        let inside = docker.ok(&["exec", &name, "cat", "/sys/class/net/eth0/address"]);
        assert_eq!(inside, mac, "on {network}");
        assert_eq!(show(&name, network), format!("{mac} {mac}"), "on {network}");
        // Kept across a stop and start.
        docker.ok(&["restart", "-t", "0", &name]);
        let inside = docker.ok(&["exec", &name, "cat", "/sys/class/net/eth0/address"]);
        assert_eq!(inside, mac, "on {network} after a restart");
    }
    let plain = unique("mac");
    docker.ok(&["run", "-d", "--name", &plain, &image, "sleep", "1000"]);
    let inside = docker.ok(&["exec", &plain, "cat", "/sys/class/net/eth0/address"]);
    assert_eq!(show(&plain, "bridge"), format!("{inside} {inside}"));

    let before = docker.ok(&["ps", "-aq"]);
    for (mac, message) in [
        (
            "02:42:zz:11:00:99",
            "02:42:zz:11:00:99 is not a valid mac address",
        ),
        (
            "02:42:ac:11:00",
            "02:42:ac:11:00 is not a valid mac address",
        ),
        ("01:00:5e:00:00:01", "it is a multicast address"),
    ] {
        let body = format!(r#"{{"Image": "{image}", "MacAddress": "{mac}"}}"#);
        let (status, _, answer) = docker.http("POST", "/v1.41/containers/create", Some(&body));
        assert_eq!(status, 400, "{mac}: {answer}");
        assert!(answer.contains(message), "{mac}: {answer}");
    }
    assert_eq!(docker.ok(&["ps", "-aq"]), before);
}

/// `--link` and `--add-host` as dockerd 20.10 gives them. On the default bridge: the
/// linked container in /etc/hosts under the alias, its hostname and name, moby's link
/// variables, the extra hosts (`host-gateway` too) and the container's own address
/// last; a link to a missing container is a 400 at create, one to a stopped container
/// fails the start. On a user-defined network: an alias only the linking container
/// resolves.
#[tokio::test]
async fn links_and_extra_hosts() {
    let bridge = support::net::TestBridge::new(9);
    let docker = DockerEnv::start_with_config(&bridge.config()).await;
    docker.ok(&["pull", "-q", &docker.image]);
    let net = unique("linknet");
    let mut cleanup = Cleanup {
        docker: &docker,
        networks: vec![net.clone()],
    };
    let image = docker.image.clone();
    let server = unique("srv");
    docker.ok(&[
        "run",
        "-d",
        "--name",
        &server,
        "-e",
        "SECRET=s3",
        "--expose",
        "80",
        "--expose",
        "53/udp",
        &image,
        "sh",
        "-c",
        "mkdir -p /www && echo linked > /www/index.html && exec httpd -f -p 80 -h /www",
    ]);
    let server_ip = docker.ok(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", &server]);
    let server_host = docker.ok(&["inspect", "-f", "{{.Config.Hostname}}", &server]);
    assert!(!server_ip.is_empty());

    let client = unique("cli");
    docker.ok(&[
        "run",
        "-d",
        "--name",
        &client,
        "--link",
        &format!("{server}:db"),
        "--add-host",
        "extra.example:10.1.2.3",
        "--add-host",
        "gw.example:host-gateway",
        &image,
        "sleep",
        "600",
    ]);
    let client_ip = docker.ok(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", &client]);
    let hosts = docker.ok(&["exec", &client, "cat", "/etc/hosts"]);
    let lines: Vec<&str> = hosts.lines().collect();
    assert!(lines.contains(&"10.1.2.3\textra.example"), "{hosts}");
    assert!(
        lines.contains(&format!("{server_ip}\tdb {server_host} {server}").as_str()),
        "{hosts}"
    );
    let gateway = lines
        .iter()
        .find_map(|l| l.strip_suffix("\tgw.example"))
        .unwrap_or_else(|| panic!("no host-gateway entry: {hosts}"));
    let gateway: std::net::Ipv4Addr = gateway.parse().expect("an IPv4 gateway");
    // The host-gateway address is the host's on the container's bridge: it answers.
    let ping = docker.run(&[
        "exec",
        &client,
        "ping",
        "-c",
        "1",
        "-W",
        "3",
        &gateway.to_string(),
    ]);
    assert_eq!(ping.status, 0, "{ping:?}");
    let client_host = docker.ok(&["inspect", "-f", "{{.Config.Hostname}}", &client]);
    assert_eq!(
        lines.last().copied(),
        Some(format!("{client_ip}\t{client_host}").as_str()),
        "{hosts}"
    );
    // Reached by the alias and by the name.
    for name in ["db", server.as_str()] {
        let got = fetch(&docker, &client, name);
        assert!(got.contains("linked"), "{got}");
    }
    let env = docker.ok(&["exec", &client, "env"]);
    for expected in [
        // The lowest exposed port is the default one, whatever its protocol.
        format!("DB_PORT=udp://{server_ip}:53"),
        format!("DB_PORT_80_TCP=tcp://{server_ip}:80"),
        format!("DB_PORT_80_TCP_ADDR={server_ip}"),
        "DB_PORT_80_TCP_PORT=80".to_string(),
        "DB_PORT_80_TCP_PROTO=tcp".to_string(),
        format!("DB_PORT_53_UDP=udp://{server_ip}:53"),
        format!("DB_NAME=/{client}/db"),
        "DB_ENV_SECRET=s3".to_string(),
    ] {
        assert!(
            env.lines().any(|l| l == expected),
            "no {expected} in:\n{env}"
        );
    }
    assert!(!env.contains("DB_ENV_PATH="), "{env}");
    assert_eq!(
        docker.ok(&["inspect", "-f", "{{json .HostConfig.Links}}", &client]),
        format!("[\"/{server}:/{client}/db\"]")
    );

    // A missing container: 400 at create, nothing made.
    let before = docker.ok(&["ps", "-aq"]);
    let err = docker.fails(&["create", "--link", "no-such-container:x", &image, "true"]);
    assert!(
        err.contains("could not get container for no-such-container"),
        "{err}"
    );
    assert_eq!(docker.ok(&["ps", "-aq"]), before);
    // A bad extra host from a raw client: 400, nothing made.
    let (status, _, body) = docker.http(
        "POST",
        "/containers/create",
        Some(&format!(
            r#"{{"Image":"{image}","HostConfig":{{"ExtraHosts":["no-address"]}}}}"#
        )),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("no-address"), "{body}");
    let (status, _, body) = docker.http(
        "POST",
        "/containers/create",
        Some(&format!(
            r#"{{"Image":"{image}","HostConfig":{{"ExtraHosts":["h:not-an-ip"]}}}}"#
        )),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("invalid IP address in add-host"), "{body}");
    assert_eq!(docker.ok(&["ps", "-aq"]), before);
    // A stopped one: the start fails, in dockerd's words.
    let stopped = unique("stopped");
    docker.ok(&["create", "--name", &stopped, &image, "true"]);
    let err = docker.fails(&[
        "run",
        "--rm",
        "--link",
        &format!("{stopped}:s"),
        &image,
        "true",
    ]);
    assert!(
        err.contains(&format!(
            "Cannot link to a non running container: /{stopped} AS"
        )),
        "{err}"
    );
    // `--rm`: the container whose start failed is gone, as dockerd removes it.
    let all = docker.ok(&["ps", "-aq"]);
    assert_eq!(all.lines().count(), before.lines().count() + 1, "{all}");

    // A user-defined network: the alias resolves for the linking container only.
    docker.ok(&["network", "create", "--subnet", &subnet(8), &net]);
    let target = unique("target");
    docker.ok(&[
        "run",
        "-d",
        "--name",
        &target,
        "--network",
        &net,
        &image,
        "sleep",
        "600",
    ]);
    let target_ip = docker.ok(&[
        "inspect",
        "-f",
        &format!("{{{{(index .NetworkSettings.Networks \"{net}\").IPAddress}}}}"),
        &target,
    ]);
    let linking = unique("linking");
    docker.ok(&[
        "run",
        "-d",
        "--name",
        &linking,
        "--network",
        &net,
        "--link",
        &format!("{target}:backend"),
        &image,
        "sleep",
        "600",
    ]);
    let found = docker.ok(&["exec", &linking, "nslookup", "backend"]);
    assert!(found.contains(&target_ip), "{found}");
    let other = unique("other");
    docker.ok(&[
        "run",
        "-d",
        "--name",
        &other,
        "--network",
        &net,
        &image,
        "sleep",
        "600",
    ]);
    let lookup = docker.run(&["exec", &other, "nslookup", "backend"]);
    assert!(!lookup.stdout.contains(&target_ip), "{lookup:?}");
    // The name itself still resolves for everyone.
    let found = docker.ok(&["exec", &other, "nslookup", &target]);
    assert!(found.contains(&target_ip), "{found}");

    cleanup.networks.clear();
    drop(cleanup);
    docker.ok(&["network", "rm", &net]);
}

/// IPv6 on a user-defined network (`--ipv6` with an IPv6 `--subnet`), as dockerd 20.10
/// gives it without ip6tables: addresses in order from `::2` (the bridge has `::1`),
/// `--ip6` static ones, both shown by inspect; containers reach each other and the
/// gateway over IPv6 and resolve each other's AAAA (and A) records; it all survives a
/// wharfd kill -9; bad input is a 4xx that makes nothing.
#[tokio::test]
async fn ipv6_networks() {
    let mut docker = DockerEnv::start_pulled().await;
    let net = unique("v6net");
    let v4_only = unique("v4only");
    let prefix = format!("fd42:{:x}:a", std::process::id() % 65536);
    let subnet6 = format!("{prefix}::/64");
    docker.ok(&[
        "network",
        "create",
        "--ipv6",
        "--subnet",
        &subnet(9),
        "--subnet",
        &subnet6,
        &net,
    ]);
    let guard = Cleanup {
        docker: &docker,
        networks: vec![net.clone()],
    };
    let inspect = |docker: &DockerEnv, format: &str, object: &str| {
        docker.ok(&["inspect", "-f", format, object])
    };
    assert_eq!(inspect(&docker, "{{.EnableIPv6}}", &net), "true");
    assert_eq!(
        inspect(
            &docker,
            "{{range .IPAM.Config}}{{.Subnet}},{{.Gateway}} {{end}}",
            &net
        ),
        format!("{},{} {subnet6},{prefix}::1", subnet(9), address(9, 1))
    );

    let a = unique("a6");
    let b = unique("b6");
    let image = docker.image.clone();
    docker.ok(&[
        "run",
        "-d",
        "--name",
        &a,
        "--network",
        &net,
        &image,
        "sleep",
        "600",
    ]);
    docker.ok(&[
        "run",
        "-d",
        "--name",
        &b,
        "--network",
        &net,
        "--ip6",
        &format!("{prefix}::99"),
        &image,
        "sleep",
        "600",
    ]);
    let endpoint = |docker: &DockerEnv, c: &str, field: &str| {
        inspect(
            docker,
            &format!("{{{{(index .NetworkSettings.Networks \"{net}\").{field}}}}}"),
            c,
        )
    };
    assert_eq!(
        endpoint(&docker, &a, "GlobalIPv6Address"),
        format!("{prefix}::2")
    );
    assert_eq!(endpoint(&docker, &a, "GlobalIPv6PrefixLen"), "64");
    assert_eq!(endpoint(&docker, &a, "IPv6Gateway"), format!("{prefix}::1"));
    assert_eq!(
        endpoint(&docker, &b, "GlobalIPv6Address"),
        format!("{prefix}::99")
    );
    assert_eq!(
        endpoint(&docker, &b, "IPAMConfig.IPv6Address"),
        format!("{prefix}::99")
    );
    let members = inspect(
        &docker,
        "{{range .Containers}}{{.Name}}={{.IPv6Address}} {{end}}",
        &net,
    );
    assert!(
        members.contains(&format!("{a}={prefix}::2/64")),
        "{members}"
    );
    assert!(
        members.contains(&format!("{b}={prefix}::99/64")),
        "{members}"
    );
    let addresses = docker.ok(&["exec", &b, "ip", "-6", "addr", "show", "eth0"]);
    assert!(
        addresses.contains(&format!("{prefix}::99/64")),
        "{addresses}"
    );

    let reach = |docker: &DockerEnv| {
        for target in [format!("{prefix}::2"), format!("{prefix}::1")] {
            let ping = docker.run(&["exec", &b, "ping", "-6", "-c", "1", "-W", "3", &target]);
            assert_eq!(ping.status, 0, "ping {target}: {ping:?}");
        }
        let found = docker.ok(&["exec", &b, "nslookup", "-type=AAAA", &a]);
        assert!(found.contains(&format!("{prefix}::2")), "{found}");
        let both = docker.ok(&["exec", &b, "nslookup", &a]);
        assert!(
            both.contains(&format!("{prefix}::2")) && both.contains(&address(9, 2)),
            "{both}"
        );
    };
    reach(&docker);
    // Up to here a failed check removes what the test made; the guard is handed on
    // over the restart (it borrows the environment the restart changes).
    std::mem::forget(guard);
    docker.env.daemon.kill9();
    docker.env.daemon.restart().await;
    let _guard = Cleanup {
        docker: &docker,
        networks: vec![net.clone(), v4_only.clone()],
    };
    assert_eq!(
        endpoint(&docker, &a, "GlobalIPv6Address"),
        format!("{prefix}::2")
    );
    reach(&docker);

    // Bad input: a clear 4xx, nothing made.
    let before_networks = docker.ok(&["network", "ls", "-q"]);
    let before_containers = docker.ok(&["ps", "-aq"]);
    let other = format!("fd42:{:x}:b::/64", std::process::id() % 65536);
    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "IPv6 without an IPv6 subnet",
            r#"{"Name":"v6x1","EnableIPv6":true}"#.to_string(),
            400,
            "IPv6 needs an IPv6 subnet",
        ),
        (
            "an IPv6 subnet without IPv6",
            format!(r#"{{"Name":"v6x2","IPAM":{{"Config":[{{"Subnet":"{other}"}}]}}}}"#),
            400,
            "without IPv6 enabled",
        ),
        (
            "overlap",
            format!(
                r#"{{"Name":"v6x3","EnableIPv6":true,"IPAM":{{"Config":[{{"Subnet":"{prefix}::/80"}}]}}}}"#
            ),
            403,
            "Pool overlaps with other one on this address space",
        ),
        (
            "gateway outside",
            format!(
                r#"{{"Name":"v6x4","EnableIPv6":true,"IPAM":{{"Config":[{{"Subnet":"{other}","Gateway":"fd99::1"}}]}}}}"#
            ),
            400,
            "no matching subnet for gateway fd99::1",
        ),
        (
            "bad subnet",
            r#"{"Name":"v6x5","EnableIPv6":true,"IPAM":{"Config":[{"Subnet":"fd00::zz/64"}]}}"#
                .to_string(),
            400,
            "invalid CIDR address: fd00::zz/64",
        ),
    ];
    refused_network_creates(&docker, cases);
    let taken = docker.fails(&[
        "run",
        "-d",
        "--network",
        &net,
        "--ip6",
        &format!("{prefix}::99"),
        &image,
        "true",
    ]);
    assert!(taken.contains("already in use"), "{taken}");
    let outside = docker.fails(&[
        "run",
        "-d",
        "--network",
        &net,
        "--ip6",
        "fd99::5",
        &image,
        "true",
    ]);
    assert!(outside.contains("fd99::5"), "{outside}");
    docker.ok(&["network", "create", "--subnet", &subnet(10), &v4_only]);
    let refused = docker.fails(&[
        "run",
        "-d",
        "--network",
        &v4_only,
        "--ip6",
        "fd42::5",
        &image,
        "true",
    ]);
    assert!(refused.contains("fd42::5"), "{refused}");
    assert_eq!(docker.ok(&["ps", "-aq"]), before_containers);
    docker.ok(&["network", "rm", &v4_only]);
    assert_eq!(docker.ok(&["network", "ls", "-q"]), before_networks);
}
