//! The built-in bridge network through a real wharfd: real bridges, veths, iptables
//! rules and network namespaces. Each test uses its own bridge name (`wh<pid><n>`) and
//! subnet (`10.<160+n>.<pid%250>.0/24`), so tests run in parallel; `BridgeCleanup`
//! removes the bridge and its rules even when a test fails. Network rule: traffic goes
//! only to loopback, to the test's bridges and pod namespaces, and to a namespace the
//! isolation test creates itself.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use support::net::{
    bridge_ports, client_pod, host_fetch, iptables_save, links, network_ready, pod_get_command,
    pod_ip, stored_leases, try_host_fetch, web_server, BridgeCleanup, TestBridge,
};
use support::pods::PodEnv;

fn host_port(config: &mut cri::PodSandboxConfig, host_port: i32, host_ip: &str) {
    config.port_mappings.push(cri::PortMapping {
        protocol: cri::Protocol::Tcp as i32,
        container_port: 8080,
        host_port,
        host_ip: host_ip.to_string(),
    });
}

/// A unique host port for this test process.
fn free_port(offset: u32) -> i32 {
    (21000 + (std::process::id() % 15000) + offset) as i32
}

#[tokio::test(flavor = "multi_thread")]
async fn pods_on_the_bridge_reach_each_other_the_host_and_host_ports() {
    let net = TestBridge::new(1);
    let mut env = PodEnv::start_with_config(&net.config()).await;
    let ready = network_ready(&mut env).await;
    assert!(ready.status, "NetworkReady: {ready:?}");
    // The bridge has the gateway address.
    let addr = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "dev", net.name()])
        .output()
        .unwrap();
    let addr = String::from_utf8_lossy(&addr.stdout);
    assert!(addr.contains(&format!("{}.1/24", net.prefix)), "{addr}");

    let mut server_pod = env.pod_config("server");
    let port_any = free_port(0);
    let port_local = free_port(1);
    host_port(&mut server_pod, port_any, "");
    host_port(&mut server_pod, port_local, "127.0.0.1");
    let server_id = env.run_pod(&server_pod).await;
    let server_ip = pod_ip(&mut env, &server_id).await;
    assert!(
        server_ip.starts_with(&format!("{}.", net.prefix))
            && server_ip != format!("{}.1", net.prefix),
        "pod IP {server_ip:?} is not a pod address of {}.0/24",
        net.prefix
    );
    env.run(&server_id, &server_pod, &web_server(&env, "hello-bridge"))
        .await;

    // The host reaches the pod on its IP, and through both host ports from 127.0.0.1.
    assert_eq!(
        host_fetch(&format!("{server_ip}:8080"), "/index.html"),
        "hello-bridge"
    );
    assert_eq!(
        host_fetch(&format!("127.0.0.1:{port_any}"), "/index.html"),
        "hello-bridge"
    );
    assert_eq!(
        host_fetch(&format!("127.0.0.1:{port_local}"), "/index.html"),
        "hello-bridge"
    );

    // Another pod reaches it directly, and through a host port on the gateway address
    // (hairpin: DNAT back into the same bridge, answered through the host).
    let (client_id, client_ip, client) = client_pod(&mut env).await;
    assert_ne!(client_ip, server_ip);
    let direct = env
        .exec_ok(&client, &["sh", "-c", &pod_get_command(&server_ip, 8080)])
        .await;
    assert!(direct.contains("hello-bridge"), "{direct}");
    let gateway = format!("{}.1", net.prefix);
    let hairpin = env
        .exec_ok(
            &client,
            &["sh", "-c", &pod_get_command(&gateway, port_any as u16)],
        )
        .await;
    assert!(hairpin.contains("hello-bridge"), "{hairpin}");
    // Inside: eth0 has the address, the default route goes through the gateway.
    let eth0 = env
        .exec_ok(&client, &["ip", "-4", "-o", "addr", "show", "eth0"])
        .await;
    assert!(eth0.contains(&format!("{client_ip}/24")), "{eth0}");
    let route = env
        .exec_ok(&client, &["ip", "route", "show", "default"])
        .await;
    assert!(route.contains(&format!("via {gateway}")), "{route}");

    // A host port another pod holds is refused by name, and nothing is left of the pod.
    let mut clash = env.pod_config("clash");
    host_port(&mut clash, port_any, "127.0.0.1");
    let err = env.run_pod_with(&clash, "").await.expect_err("port in use");
    assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err:?}");
    assert!(
        err.message().contains(&port_any.to_string()) && err.message().contains(&server_id),
        "{err:?}"
    );
    assert_eq!(stored_leases(&env.daemon.paths.root).len(), 2);
    assert_eq!(
        bridge_ports(net.name()).len(),
        2,
        "{:?}",
        bridge_ports(net.name())
    );

    for pod in [&server_id, &client_id] {
        env.stop_pod(pod).await;
        env.stop_pod(pod).await;
        env.remove_pod(pod).await;
    }
    assert_eq!(stored_leases(&env.daemon.paths.root), Vec::<String>::new());
    assert_eq!(bridge_ports(net.name()), Vec::<String>::new(), "veths left");
    assert_eq!(
        net.nat_rules_of(&server_id),
        Vec::<String>::new(),
        "host-port rules left"
    );
    assert!(try_host_fetch(&format!("127.0.0.1:{port_any}"), "/").is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn leases_survive_a_restart_and_release_runs_after_it() {
    let net = TestBridge::new(2);
    let mut env = PodEnv::start_with_config(&net.config()).await;
    let mut first = env.pod_config("before");
    host_port(&mut first, free_port(2), "");
    let first_id = env.run_pod(&first).await;
    let first_ip = pod_ip(&mut env, &first_id).await;
    assert_eq!(
        stored_leases(&env.daemon.paths.root),
        vec![format!("{}/{first_ip}", net.name())]
    );

    env.daemon.kill9();
    env.daemon.restart().await;
    env.rt = env.daemon.runtime_client().await;

    // The lease is still held: a new pod gets another address.
    let second = env.pod_config("after");
    let second_id = env.run_pod(&second).await;
    let second_ip = pod_ip(&mut env, &second_id).await;
    assert_ne!(first_ip, second_ip);
    assert_eq!(pod_ip(&mut env, &first_id).await, first_ip);

    env.remove_pod(&first_id).await;
    assert_eq!(
        stored_leases(&env.daemon.paths.root),
        vec![format!("{}/{second_ip}", net.name())]
    );
    assert_eq!(net.nat_rules_of(&first_id), Vec::<String>::new());
    assert_eq!(bridge_ports(net.name()).len(), 1);
    env.remove_pod(&second_id).await;
    assert_eq!(stored_leases(&env.daemon.paths.root), Vec::<String>::new());
    assert_eq!(bridge_ports(net.name()), Vec::<String>::new());
}

/// Found by tests/deploy_systemd.rs: the subnet the bridge chose for itself is
/// remembered in the store, and the next start read that record as a user network
/// ("record is corrupt: missing field id") and exited.
#[tokio::test(flavor = "multi_thread")]
async fn a_subnet_the_bridge_chose_survives_a_restart() {
    let net = TestBridge::new(85);
    // No subnet: the bridge picks one of the default candidates and remembers it.
    let config = format!(
        "[network]\nmode = \"bridge\"\n[network.bridge]\nname = {:?}\n",
        net.name()
    );
    let mut env = PodEnv::start_with_config(&config).await;
    let first = env.pod_config("chosen");
    let first_id = env.run_pod(&first).await;
    let first_ip = pod_ip(&mut env, &first_id).await;
    for restart in ["stop", "kill -9"] {
        if restart == "stop" {
            env.daemon.stop();
        } else {
            env.daemon.kill9();
        }
        env.daemon.restart().await;
        env.rt = env.daemon.runtime_client().await;
        assert_eq!(
            pod_ip(&mut env, &first_id).await,
            first_ip,
            "the pod keeps its address after a {restart}"
        );
    }
    let second = env.pod_config("again");
    let second_id = env.run_pod(&second).await;
    let second_ip = pod_ip(&mut env, &second_id).await;
    let prefix = |ip: &str| ip.rsplit_once('.').map(|(p, _)| p.to_string());
    assert_eq!(prefix(&second_ip), prefix(&first_ip), "the same subnet");
    env.remove_pod(&first_id).await;
    env.remove_pod(&second_id).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_pods_on_the_bridge_leave_no_link_lease_rule_or_mount() {
    let net = TestBridge::new(3);
    let mut env = PodEnv::start_with_config(&net.config()).await;
    // The first pod sets the bridge up; links are compared from then on.
    let warmup = env.pod_config("warmup");
    let warmup = env.run_pod(&warmup).await;
    env.remove_pod(&warmup).await;
    let links_before = links();
    let mut pods = Vec::new();
    for i in 0..50 {
        let mut config = env.pod_config(&format!("many{i}"));
        host_port(&mut config, free_port(100 + i), "");
        pods.push(env.run_pod(&config).await);
    }
    assert_eq!(stored_leases(&env.daemon.paths.root).len(), 50);
    assert_eq!(bridge_ports(net.name()).len(), 50);
    for pod in &pods {
        env.remove_pod(pod).await;
    }
    assert_eq!(stored_leases(&env.daemon.paths.root), Vec::<String>::new());
    assert_eq!(bridge_ports(net.name()), Vec::<String>::new());
    assert_eq!(links(), links_before, "links left");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let state = env.daemon.paths.state.display().to_string();
    assert!(
        !mounts
            .lines()
            .any(|l| l.contains(&format!("{state}/pods/"))),
        "pod mounts left"
    );
    let nat = iptables_save("nat");
    for pod in &pods {
        assert!(!nat.contains(pod.as_str()), "NAT rules of {pod} left");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn with_no_cni_config_the_bridge_is_the_default_and_a_cni_config_takes_over() {
    support::require_installed("/usr/lib/cni/bridge", "containernetworking-plugins");
    let pid = std::process::id();
    let bridge = format!("wh{}d", pid % 100_000);
    let _cleanup = BridgeCleanup {
        bridge: bridge.clone(),
        subnet_prefix: String::new(),
    };
    let cni_bridge = format!("wt{}d", pid % 100_000);
    let _cni_cleanup = BridgeCleanup {
        bridge: cni_bridge.clone(),
        subnet_prefix: String::new(),
    };
    let _forwarding = support::IpForwardGuard::new();
    // Only the bridge's name is set: mode and subnet are the defaults.
    let mut env =
        PodEnv::start_with_config(&format!("[network.bridge]\nname = {bridge:?}\n")).await;
    let ready = network_ready(&mut env).await;
    assert!(ready.status, "NetworkReady with no CNI config: {ready:?}");
    let pod = env.pod_config("default");
    let pod_id = env.run_pod(&pod).await;
    let ip: std::net::Ipv4Addr = pod_ip(&mut env, &pod_id)
        .await
        .parse()
        .expect("an IPv4 pod IP");
    // The subnet was chosen among 10.88.0.0/16 .. 10.127.0.0/16 and the bridge has its
    // gateway.
    let [a, b, _, _] = ip.octets();
    assert!(a == 10 && (88..=127).contains(&b), "{ip}");
    let addr = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "dev", &bridge])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&addr.stdout).contains(&format!("10.{b}.0.1/16")),
        "{}",
        String::from_utf8_lossy(&addr.stdout)
    );
    env.run(&pod_id, &pod, &web_server(&env, "default-net"))
        .await;
    assert_eq!(
        host_fetch(&format!("{ip}:8080"), "/index.html"),
        "default-net"
    );

    // A CNI config appears: new pods use it, the running pod stays where it is.
    let ipam = tempfile::tempdir().unwrap();
    let prefix = format!("10.{}.{}", 175, pid % 250);
    let conf_dir = env.daemon.dir().join("cni/net.d");
    std::fs::write(
        conf_dir.join("10-test.conflist"),
        serde_json::json!({
            "cniVersion": "1.0.0",
            "name": format!("net-{pid}"),
            "plugins": [{
                "type": "bridge", "bridge": cni_bridge, "isGateway": true,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": format!("{prefix}.0/24")}]],
                         "dataDir": ipam.path()}
            }]
        })
        .to_string(),
    )
    .unwrap();
    let cni_pod = env.pod_config("cni");
    let cni_pod_id = env.run_pod(&cni_pod).await;
    let cni_ip = pod_ip(&mut env, &cni_pod_id).await;
    assert!(cni_ip.starts_with(&format!("{prefix}.")), "{cni_ip}");
    assert_eq!(pod_ip(&mut env, &pod_id).await, ip.to_string());
    env.remove_pod(&cni_pod_id).await;
    env.remove_pod(&pod_id).await;
    assert_eq!(stored_leases(&env.daemon.paths.root), Vec::<String>::new());
    assert_eq!(bridge_ports(&bridge), Vec::<String>::new());
}

/// A network namespace standing for "outside the host": connected to the host by a
/// veth with a /30 in 198.18.0.0/15 (the benchmarking range, checked to be unused on
/// this host) and no route back to any pod subnet, serving HTTP on its side.
struct Outside {
    /// The server's address in the namespace.
    ip: String,
    netns: String,
    host_link: String,
    server: Option<Child>,
    _www: tempfile::TempDir,
}

impl Outside {
    fn start() -> Outside {
        let pid = std::process::id() % 100_000;
        let netns = format!("wharf-outside-{pid}");
        let host_link = format!("wto{pid}");
        let www = tempfile::tempdir().unwrap();
        std::fs::write(www.path().join("index.html"), "outside\n").unwrap();
        let net = format!("198.18.{}", pid % 250);
        let routes = Command::new("ip")
            .args(["-4", "route", "show", "table", "all"])
            .output()
            .unwrap();
        let routes = String::from_utf8_lossy(&routes.stdout);
        assert!(
            !routes.contains("198.18.") && !routes.contains("198.19."),
            "the host already uses 198.18.0.0/15; the test needs an unused range:\n{routes}"
        );
        let (host_ip, ip) = (format!("{net}.1"), format!("{net}.2"));
        let mut outside = Outside {
            ip: ip.clone(),
            netns: netns.clone(),
            host_link: host_link.clone(),
            server: None,
            _www: www,
        };
        let sh = |cmd: String| {
            let status = Command::new("sh").args(["-c", &cmd]).status().unwrap();
            assert!(status.success(), "{cmd}");
        };
        sh(format!("ip netns add {netns}"));
        sh(format!(
            "ip link add {host_link} type veth peer name eth0 netns {netns} && \
             ip addr add {host_ip}/30 dev {host_link} && ip link set {host_link} up && \
             ip -n {netns} addr add {ip}/30 dev eth0 && ip -n {netns} link set eth0 up && \
             ip -n {netns} link set lo up"
        ));
        outside.server = Some(
            Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &netns,
                    "/bin/busybox",
                    "httpd",
                    "-f",
                    "-p",
                    &format!("{ip}:8080"),
                    "-h",
                ])
                .arg(outside._www.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("busybox httpd in the outside namespace (Debian package busybox-static)"),
        );
        outside
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        if let Some(mut server) = self.server.take() {
            let _ = server.kill();
            let _ = server.wait();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_link])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
    }
}

/// Tries a GET from inside a container; the answer, or None when it fails.
async fn pod_try_get(env: &mut PodEnv, container: &str, ip: &str, port: u16) -> Option<String> {
    let out = env
        .exec(container, &["sh", "-c", &pod_get_command(ip, port)], 20)
        .await
        .expect("ExecSync");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    (out.exit_code == 0 && stdout.contains("200")).then_some(stdout)
}

#[tokio::test(flavor = "multi_thread")]
async fn bridge_networks_are_isolated_from_each_other_and_masquerade_outbound() {
    support::require_installed("/bin/busybox", "busybox-static");
    let one = TestBridge::new(4);
    let two = TestBridge::new(5);
    let outside = Outside::start();
    let mut env_one = PodEnv::start_with_config(&one.config()).await;
    let mut env_two = PodEnv::start_with_config(&two.config()).await;

    let pod_one = env_one.pod_config("one");
    let pod_one_id = env_one.run_pod(&pod_one).await;
    let ip_one = pod_ip(&mut env_one, &pod_one_id).await;
    let web_one = web_server(&env_one, "net-one");
    let c_one = env_one.run(&pod_one_id, &pod_one, &web_one).await;

    let pod_two = env_two.pod_config("two");
    let pod_two_id = env_two.run_pod(&pod_two).await;
    let ip_two = pod_ip(&mut env_two, &pod_two_id).await;
    let web_two = web_server(&env_two, "net-two");
    let c_two = env_two.run(&pod_two_id, &pod_two, &web_two).await;

    // The host reaches both.
    assert_eq!(
        host_fetch(&format!("{ip_one}:8080"), "/index.html"),
        "net-one"
    );
    assert_eq!(
        host_fetch(&format!("{ip_two}:8080"), "/index.html"),
        "net-two"
    );

    // Forwarding works: a pod reaches the outside namespace, which has no route to the
    // pod subnets, so the answer only comes back because the pod's traffic was
    // masqueraded to the host's address.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(answer) = pod_try_get(&mut env_one, &c_one, &outside.ip, 8080).await {
            assert!(answer.contains("outside"), "{answer}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pod on {} cannot reach the outside namespace",
            one.name()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(pod_try_get(&mut env_two, &c_two, &outside.ip, 8080)
        .await
        .is_some());

    // ... but not the other bridge network, in either direction.
    assert_eq!(pod_try_get(&mut env_one, &c_one, &ip_two, 8080).await, None);
    assert_eq!(pod_try_get(&mut env_two, &c_two, &ip_one, 8080).await, None);

    env_one.remove_pod(&pod_one_id).await;
    env_two.remove_pod(&pod_two_id).await;
    drop(outside);
}
