//! Pod networking through real CNI plugins (Debian's containernetworking-plugins:
//! bridge + host-local + portmap) driven by a real wharfd. Network rule: traffic goes
//! only to the bridge and pod namespaces each test creates, and to loopback.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use support::net::{
    bridge_ports, client_pod, host_fetch, links, network_ready, pod_ip, pod_ips, web_server,
};
use support::pods::{unique, PodEnv};

/// Pods are attached to the CNI network only (no built-in bridge fallback).
const CNI_ONLY: &str = "[network]\nmode = \"cni\"\n";

/// A test-owned CNI network: a bridge name and subnet no other test uses, host-local
/// leases in a temp dir. The bridge link is deleted on drop.
struct TestNetwork {
    _forwarding: support::IpForwardGuard,
    _forwarding6: Option<support::Ip6ForwardGuard>,
    name: String,
    bridge: String,
    subnet_prefix: String,
    /// The IPv6 range's /64 prefix (`fd77:...:<index>:`), for dual-stack networks.
    subnet6_prefix: Option<String>,
    /// The plugins after the bridge.
    chain: Vec<serde_json::Value>,
    ipam_dir: tempfile::TempDir,
}

impl TestNetwork {
    fn new(index: u32) -> TestNetwork {
        let mut network = TestNetwork::with_chain(
            index,
            vec![serde_json::json!({"type": "portmap", "capabilities": {"portMappings": true}})],
        );
        network.subnet_prefix = format!("10.{}.{}", 150 + index, std::process::id() % 250);
        network
    }

    /// A network in 10.(170 + index).x (apart from `new`'s 10.(150 + index).x): the
    /// bridge followed by `chain`.
    fn with_chain(index: u32, chain: Vec<serde_json::Value>) -> TestNetwork {
        let pid = std::process::id();
        TestNetwork {
            _forwarding: support::IpForwardGuard::new(),
            _forwarding6: None,
            name: unique("wharf-net"),
            bridge: format!("wt{}n{index}", pid % 100_000),
            subnet_prefix: format!("10.{}.{}", 170 + index, pid % 250),
            subnet6_prefix: None,
            chain,
            ipam_dir: tempfile::Builder::new()
                .prefix("wharf-ipam-")
                .tempdir()
                .expect("ipam dir"),
        }
    }

    /// `with_chain` plus an IPv6 range: the ULA /64 `fd77:<pid>:<index>::/64`.
    fn dual_stack(index: u32, chain: Vec<serde_json::Value>) -> TestNetwork {
        let mut network = TestNetwork::with_chain(index, chain);
        network._forwarding6 = Some(support::Ip6ForwardGuard::new());
        network.subnet6_prefix = Some(format!("fd77:{:x}:{index:x}:", std::process::id() % 0xffff));
        network
    }

    fn conflist(&self) -> String {
        let mut ranges =
            vec![serde_json::json!([{"subnet": format!("{}.0/24", self.subnet_prefix)}])];
        if let Some(prefix) = &self.subnet6_prefix {
            ranges.push(serde_json::json!([{"subnet": format!("{prefix}:/64")}]));
        }
        let mut plugins = vec![serde_json::json!({
            "type": "bridge",
            "bridge": self.bridge,
            "isGateway": true,
            "ipMasq": false,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "ranges": ranges,
                "dataDir": self.ipam_dir.path(),
            }
        })];
        plugins.extend(self.chain.iter().cloned());
        serde_json::json!({
            "cniVersion": "1.0.0",
            "name": self.name,
            "plugins": plugins,
        })
        .to_string()
    }

    /// Writes the network into the daemon's CNI conf dir.
    fn install(&self, env: &PodEnv) {
        self.install_in(&env.daemon.dir().join("cni/net.d"));
    }

    fn install_in(&self, conf_dir: &Path) {
        std::fs::create_dir_all(conf_dir).unwrap();
        std::fs::write(conf_dir.join("10-test.conflist"), self.conflist()).unwrap();
    }

    /// host-local lease files (one per allocated address).
    fn leases(&self) -> Vec<String> {
        let mut leases = Vec::new();
        if let Ok(networks) = std::fs::read_dir(self.ipam_dir.path()) {
            for network in networks.flatten() {
                if let Ok(files) = std::fs::read_dir(network.path()) {
                    leases.extend(
                        files
                            .flatten()
                            .map(|f| f.file_name().to_string_lossy().to_string())
                            .filter(|n| {
                                n.starts_with(&self.subnet_prefix)
                                    || self
                                        .subnet6_prefix
                                        .as_ref()
                                        .is_some_and(|p| n.starts_with(p.as_str()))
                            }),
                    );
                }
            }
        }
        leases
    }

    /// veth ports attached to the bridge.
    fn ports(&self) -> Vec<String> {
        bridge_ports(&self.bridge)
    }
}

impl Drop for TestNetwork {
    fn drop(&mut self) {
        // Host-port rules of pods a failed test did not remove.
        support::net::remove_cni_rules(&self.name);
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn network_ready_follows_the_cni_config() {
    support::require_installed("/usr/lib/cni/bridge", "containernetworking-plugins");
    let mut env = PodEnv::start_with_config(CNI_ONLY).await;
    let ready = network_ready(&mut env).await;
    assert!(!ready.status);
    assert_eq!(ready.reason, "NetworkPluginNotReady");
    assert!(ready.message.contains("net.d"), "{}", ready.message);
    let network = TestNetwork::new(1);
    network.install(&env);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ready = network_ready(&mut env).await;
        if ready.status {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "NetworkReady stayed false after the config was written: {}",
            ready.message
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pods_get_addresses_and_reach_each_other_the_host_and_host_ports() {
    support::require_installed("/usr/lib/cni/bridge", "containernetworking-plugins");
    let mut env = PodEnv::start_with_config(CNI_ONLY).await;
    let network = TestNetwork::new(2);
    network.install(&env);

    let mut server_pod = env.pod_config("server");
    let host_port = 20000 + (std::process::id() % 20000) as i32;
    server_pod.port_mappings = vec![cri::PortMapping {
        protocol: cri::Protocol::Tcp as i32,
        container_port: 8080,
        host_port,
        host_ip: String::new(),
    }];
    let server_id = env.run_pod(&server_pod).await;
    let server_ip = pod_ip(&mut env, &server_id).await;
    assert!(
        server_ip.starts_with(&format!("{}.", network.subnet_prefix)),
        "pod IP {server_ip:?} is not in {}.0/24",
        network.subnet_prefix
    );
    env.run(&server_id, &server_pod, &web_server(&env, "hello-pod"))
        .await;

    // The host reaches the pod on its IP (through the bridge).
    assert_eq!(
        host_fetch(&format!("{server_ip}:8080"), "/index.html"),
        "hello-pod"
    );

    // Another pod reaches it; the two have different addresses.
    let (client_id, client_ip, client) = client_pod(&mut env).await;
    assert_ne!(client_ip, server_ip);
    // busybox's static wget crashes on non-loopback addresses here; nc does the GET.
    let response = env
        .exec_ok(
            &client,
            &[
                "sh",
                "-c",
                &format!(
                    "printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {server_ip} 8080"
                ),
            ],
        )
        .await;
    assert!(response.contains("hello-pod"), "{response}");
    let eth0 = env
        .exec_ok(&client, &["ip", "-4", "-o", "addr", "show", "eth0"])
        .await;
    assert!(eth0.contains(&client_ip), "{eth0}");

    // The host port reaches the pod from 127.0.0.1.
    assert_eq!(
        host_fetch(&format!("127.0.0.1:{host_port}"), "/index.html"),
        "hello-pod"
    );

    assert_eq!(network.leases().len(), 2, "{:?}", network.leases());
    assert_eq!(network.ports().len(), 2, "{:?}", network.ports());
    for pod in [&server_id, &client_id] {
        env.stop_pod(pod).await;
        env.stop_pod(pod).await;
        env.remove_pod(pod).await;
    }
    assert_eq!(network.leases(), Vec::<String>::new(), "leases left");
    assert_eq!(network.ports(), Vec::<String>::new(), "veths left");
    let nat = Command::new("iptables-save")
        .args(["-t", "nat"])
        .output()
        .unwrap();
    let nat = String::from_utf8_lossy(&nat.stdout);
    assert!(
        !nat.contains(&format!("--dport {host_port} ")),
        "host port rule left:\n{nat}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn del_runs_after_a_daemon_restart() {
    support::require_installed("/usr/lib/cni/bridge", "containernetworking-plugins");
    let mut env = PodEnv::start_with_config(CNI_ONLY).await;
    let network = TestNetwork::new(3);
    network.install(&env);
    let pod = env.pod_config("restart");
    let pod_id = env.run_pod(&pod).await;
    assert_eq!(network.leases().len(), 1);
    env.daemon.kill9();
    // The config changing meanwhile does not matter: DEL uses what ADD used.
    std::fs::remove_file(env.daemon.dir().join("cni/net.d/10-test.conflist")).unwrap();
    env.daemon.restart().await;
    env.rt = env.daemon.runtime_client().await;
    env.remove_pod(&pod_id).await;
    assert_eq!(
        network.leases(),
        Vec::<String>::new(),
        "DEL did not run after restart"
    );
    assert_eq!(network.ports(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_pods_leave_no_link_lease_rule_or_mount() {
    support::require_installed("/usr/lib/cni/bridge", "containernetworking-plugins");
    let mut env = PodEnv::start_with_config(CNI_ONLY).await;
    let network = TestNetwork::new(4);
    network.install(&env);
    let links_before = links();
    let mut pods = Vec::new();
    for i in 0..50 {
        let mut config = env.pod_config(&format!("many{i}"));
        config.port_mappings = vec![cri::PortMapping {
            protocol: cri::Protocol::Tcp as i32,
            container_port: 80,
            host_port: 40000 + (std::process::id() % 10000) as i32 + i,
            host_ip: String::new(),
        }];
        pods.push(env.run_pod(&config).await);
    }
    assert_eq!(network.leases().len(), 50);
    for pod in &pods {
        env.remove_pod(pod).await;
    }
    assert_eq!(network.leases(), Vec::<String>::new());
    assert_eq!(network.ports(), Vec::<String>::new());
    let mut after = links();
    after.retain(|l| l != &network.bridge);
    let mut before = links_before;
    before.retain(|l| l != &network.bridge);
    assert_eq!(after, before, "links left");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let state = env.daemon.paths.state.display().to_string();
    assert!(
        !mounts
            .lines()
            .any(|l| l.contains(&format!("{state}/pods/"))),
        "pod mounts left"
    );
    let nat = Command::new("iptables-save")
        .args(["-t", "nat"])
        .output()
        .unwrap();
    let nat = String::from_utf8_lossy(&nat.stdout);
    for pod in &pods {
        assert!(!nat.contains(pod.as_str()), "NAT rules of {pod} left");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_plugin_fails_the_pod_and_leaves_nothing() {
    let dir = tempfile::Builder::new()
        .prefix("wharf-cni-fail-")
        .tempdir()
        .unwrap();
    let plugins = dir.path().join("bin");
    let conf = dir.path().join("net.d");
    std::fs::create_dir_all(&plugins).unwrap();
    std::fs::create_dir_all(&conf).unwrap();
    let plugin = plugins.join("wharf-fail");
    std::fs::write(
        &plugin,
        "#!/bin/sh\ncat >/dev/null\nif [ \"$CNI_COMMAND\" = ADD ]; then\n  \
         echo '{\"cniVersion\":\"1.0.0\",\"code\":7,\"msg\":\"boom\",\"details\":\"no addresses left\"}'\n  exit 1\nfi\nexit 0\n",
    )
    .unwrap();
    std::fs::set_permissions(&plugin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::write(
        conf.join("10-fail.conflist"),
        serde_json::json!({
            "cniVersion": "1.0.0",
            "name": unique("wharf-fail"),
            "plugins": [{"type": "wharf-fail"}]
        })
        .to_string(),
    )
    .unwrap();
    let config = format!(
        "{CNI_ONLY}[cni]\nconf_dir = {:?}\nplugin_dirs = [{:?}]\n",
        conf.display().to_string(),
        plugins.display().to_string()
    );
    let mut env = PodEnv::start_with_config(&config).await;
    let pod = env.pod_config("failing");
    let err = env.run_pod_with(&pod, "").await.expect_err("ADD fails");
    assert!(
        err.message().contains("7") && err.message().contains("boom"),
        "{err:?}"
    );
    env.assert_no_pods_left().await;
    // The name was released: the retry fails the same way, not with "name in use".
    let again = env
        .run_pod_with(&pod, "")
        .await
        .expect_err("ADD fails again");
    assert!(again.message().contains("boom"), "{again:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn dual_stack_pods_get_both_addresses_and_serve_the_host_over_ipv6() {
    support::require_installed("/usr/lib/cni/bridge", "containernetworking-plugins");
    let disabled = std::fs::read_to_string("/proc/sys/net/ipv6/conf/all/disable_ipv6")
        .expect("IPv6 sysctls (is IPv6 compiled in?)");
    assert_eq!(
        disabled.trim(),
        "0",
        "IPv6 is disabled on this host (net.ipv6.conf.all.disable_ipv6)"
    );
    let mut env = PodEnv::start_with_config(CNI_ONLY).await;
    let network = TestNetwork::dual_stack(5, vec![]);
    network.install(&env);
    let v6_prefix = network.subnet6_prefix.clone().unwrap_or_default();

    let pod = env.pod_config("dual");
    let pod_id = env.run_pod(&pod).await;
    let mut additional = pod_ips(&mut env, &pod_id).await;
    let ip = additional.remove(0);
    let v4: std::net::Ipv4Addr = ip
        .parse()
        .unwrap_or_else(|_| panic!("network.ip {ip:?} is not IPv4"));
    assert!(
        ip.starts_with(&format!("{}.", network.subnet_prefix)),
        "{v4} is not in {}.0/24",
        network.subnet_prefix
    );
    assert_eq!(additional.len(), 1, "additional_ips: {additional:?}");
    let v6: std::net::Ipv6Addr = additional[0]
        .parse()
        .unwrap_or_else(|_| panic!("additional_ips[0] {:?} is not IPv6", additional[0]));
    assert!(
        additional[0].starts_with(&v6_prefix),
        "{v6} is not in {v6_prefix}:/64"
    );

    let web = env.run(&pod_id, &pod, &web_server(&env, "hello-v6")).await;
    let addrs = env
        .exec_ok(&web, &["ip", "-6", "-o", "addr", "show", "eth0"])
        .await;
    assert!(addrs.contains(&format!("{v6}/64")), "{addrs}");
    // host_fetch retries while the bridge's own address finishes DAD.
    assert_eq!(
        host_fetch(&format!("[{v6}]:8080"), "/index.html"),
        "hello-v6"
    );
    assert_eq!(host_fetch(&format!("{v4}:8080"), "/index.html"), "hello-v6");

    assert_eq!(network.leases().len(), 2, "{:?}", network.leases());
    env.remove_pod(&pod_id).await;
    assert_eq!(network.leases(), Vec::<String>::new(), "leases left");
    assert_eq!(network.ports(), Vec::<String>::new(), "veths left");
}

/// A chained test plugin (a shell script, jq for the JSON) that records what ADD got on
/// stdin in `dir/stdin-<container id>.json` and passes the previous result through with
/// `dns` added.
fn dns_plugin(dir: &Path) -> PathBuf {
    let plugins = dir.join("bin");
    std::fs::create_dir_all(&plugins).unwrap();
    let plugin = plugins.join("wharf-dns-test");
    std::fs::write(
        &plugin,
        format!(
            "#!/bin/sh\nset -e\nin=$(cat)\nif [ \"$CNI_COMMAND\" = ADD ]; then\n  \
             printf '%s' \"$in\" > '{}/stdin-'\"$CNI_CONTAINERID\"'.json'\n  \
             printf '%s' \"$in\" | jq -c '.prevResult + {{dns: {{nameservers: [\"10.77.0.53\", \"fd77::53\"], \
             domain: \"ignored.wharf.test\", search: [\"net.wharf.test\"], options: [\"ndots:2\"]}}}}'\nfi\nexit 0\n",
            dir.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&plugin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    plugins
}

/// The nameserver addresses of a resolv.conf, in order.
fn nameservers(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("nameserver"))
        .map(|s| s.trim().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn result_dns_fills_resolv_conf_unless_the_pod_has_a_dns_config() {
    support::require_installed("/usr/lib/cni/bridge", "containernetworking-plugins");
    support::require_installed("/usr/bin/jq", "jq");
    let dir = tempfile::Builder::new()
        .prefix("wharf-cni-dns-")
        .tempdir()
        .unwrap();
    let plugins = dns_plugin(dir.path());
    let conf = dir.path().join("net.d");
    let network = TestNetwork::with_chain(
        6,
        vec![serde_json::json!({"type": "wharf-dns-test", "capabilities": {"dns": true}})],
    );
    network.install_in(&conf);
    let config = format!(
        "{CNI_ONLY}[cni]\nconf_dir = {:?}\nplugin_dirs = [{:?}, \"/usr/lib/cni\"]\n",
        conf.display().to_string(),
        plugins.display().to_string()
    );
    let mut env = PodEnv::start_with_config(&config).await;

    // No DNSConfig: the network's nameservers come first, then the host's; its search
    // domains replace the host's; its domain and options are not used.
    let plain = env.pod_config("dns-plain");
    let plain_id = env.run_pod(&plain).await;
    let c = env
        .run(
            &plain_id,
            &plain,
            &env.container_config("c", &["sleep", "1000"]),
        )
        .await;
    let resolv = env.exec_ok(&c, &["cat", "/etc/resolv.conf"]).await;
    let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let mut want_servers = vec!["10.77.0.53".to_string(), "fd77::53".to_string()];
    for server in nameservers(&host) {
        if !want_servers.contains(&server) {
            want_servers.push(server);
        }
    }
    assert_eq!(nameservers(&resolv), want_servers, "{resolv}");
    let search: Vec<&str> = resolv
        .lines()
        .filter(|l| l.starts_with("search") || l.starts_with("domain"))
        .collect();
    assert_eq!(search, vec!["search net.wharf.test"], "{resolv}");
    assert!(
        !resolv.contains("ndots:2") && !resolv.contains("ignored.wharf.test"),
        "{resolv}"
    );
    for line in host.lines().filter(|l| l.starts_with("options")) {
        assert!(resolv.contains(line), "host line {line:?} lost: {resolv}");
    }
    let stdin: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join(format!("stdin-{plain_id}.json"))).unwrap(),
    )
    .unwrap();
    assert!(
        stdin.pointer("/runtimeConfig/dns").is_none(),
        "no DNSConfig, no dns capability arg: {stdin}"
    );

    // A DNSConfig wins, as in containerd and CRI-O, and reaches the plugin as the `dns`
    // capability arg.
    let mut cluster = env.pod_config("dns-cluster");
    cluster.dns_config = Some(cri::DnsConfig {
        servers: vec!["10.96.0.10".into()],
        searches: vec![
            "default.svc.cluster.local".into(),
            "svc.cluster.local".into(),
        ],
        options: vec!["ndots:5".into()],
    });
    let cluster_id = env.run_pod(&cluster).await;
    let c = env
        .run(
            &cluster_id,
            &cluster,
            &env.container_config("c", &["sleep", "1000"]),
        )
        .await;
    let resolv = env.exec_ok(&c, &["cat", "/etc/resolv.conf"]).await;
    assert_eq!(
        resolv,
        "search default.svc.cluster.local svc.cluster.local\nnameserver 10.96.0.10\noptions ndots:5"
    );
    let stdin: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join(format!("stdin-{cluster_id}.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(
        stdin.pointer("/runtimeConfig/dns"),
        Some(&serde_json::json!({
            "servers": ["10.96.0.10"],
            "searches": ["default.svc.cluster.local", "svc.cluster.local"],
            "options": ["ndots:5"]
        })),
        "{stdin}"
    );

    for pod in [&plain_id, &cluster_id] {
        env.remove_pod(pod).await;
    }
    assert_eq!(network.leases(), Vec::<String>::new(), "leases left");
    assert_eq!(network.ports(), Vec::<String>::new(), "veths left");
}

/// The ifb device the bandwidth plugin makes for a pod's egress: "bwp" and the start of
/// the SHA-512 of network name + container id (plugins' `MustFormatHashWithPrefix`).
fn ifb_name(network: &str, container_id: &str) -> String {
    use sha2::Digest;
    let hash = sha2::Sha512::digest(format!("{network}{container_id}").as_bytes());
    format!("bwp{}", hex::encode(hash))[..15].to_string()
}

/// Deletes the named links on drop (a failed test leaves no ifb device behind).
struct LinkGuard(Vec<String>);

impl Drop for LinkGuard {
    fn drop(&mut self) {
        for link in &self.0 {
            if Path::new("/sys/class/net").join(link).exists() {
                let _ = Command::new("ip").args(["link", "del", link]).status();
            }
        }
    }
}

fn qdiscs(dev: &str) -> String {
    let out = Command::new("tc")
        .args(["qdisc", "show", "dev", dev])
        .output()
        .expect("run tc");
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn bandwidth_chain() -> Vec<serde_json::Value> {
    vec![serde_json::json!({"type": "bandwidth", "capabilities": {"bandwidth": true}})]
}

#[tokio::test(flavor = "multi_thread")]
async fn bandwidth_annotations_shape_the_pod_and_leave_nothing() {
    support::require_installed("/usr/lib/cni/bridge", "containernetworking-plugins");
    support::require_installed("/usr/lib/cni/bandwidth", "containernetworking-plugins");
    support::require_installed("/usr/sbin/tc", "iproute2");
    let mut env = PodEnv::start_with_config(CNI_ONLY).await;
    let network = TestNetwork::with_chain(7, bandwidth_chain());
    network.install(&env);
    let mut pod = env.pod_config("shaped");
    pod.annotations
        .insert("kubernetes.io/ingress-bandwidth".into(), "1M".into());
    pod.annotations
        .insert("kubernetes.io/egress-bandwidth".into(), "2M".into());
    let pod_id = env.run_pod(&pod).await;
    let ifb = ifb_name(&network.name, &pod_id);
    let _ifb = LinkGuard(vec![ifb.clone()]);

    // Ingress (to the pod) is shaped on the host side of its veth, egress on the ifb
    // device the veth's ingress is redirected to.
    let ports = network.ports();
    assert_eq!(ports.len(), 1, "{ports:?}");
    let veth = qdiscs(&ports[0]);
    assert!(
        veth.contains("qdisc tbf") && veth.contains("rate 1Mbit"),
        "{}: {veth}",
        ports[0]
    );
    assert!(
        Path::new("/sys/class/net").join(&ifb).exists(),
        "no ifb device {ifb}"
    );
    let egress = qdiscs(&ifb);
    assert!(
        egress.contains("qdisc tbf") && egress.contains("rate 2Mbit"),
        "{ifb}: {egress}"
    );

    env.remove_pod(&pod_id).await;
    assert!(
        !Path::new("/sys/class/net").join(&ifb).exists(),
        "ifb device {ifb} left"
    );
    assert_eq!(network.leases(), Vec::<String>::new(), "leases left");
    assert_eq!(network.ports(), Vec::<String>::new(), "veths left");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_bandwidth_annotation_fails_the_pod_and_leaves_nothing() {
    support::require_installed("/usr/lib/cni/bridge", "containernetworking-plugins");
    let mut env = PodEnv::start_with_config(CNI_ONLY).await;
    let network = TestNetwork::with_chain(8, bandwidth_chain());
    network.install(&env);
    for (key, value, says) in [
        (
            "kubernetes.io/ingress-bandwidth",
            "10X",
            "not a Kubernetes quantity",
        ),
        (
            "kubernetes.io/egress-bandwidth",
            "1K",
            "not a Kubernetes quantity",
        ),
        (
            "kubernetes.io/egress-bandwidth",
            "500",
            "unreasonably small",
        ),
    ] {
        let mut pod = env.pod_config("badbw");
        pod.annotations.insert(key.into(), value.into());
        let err = env
            .run_pod_with(&pod, "")
            .await
            .expect_err("RunPodSandbox fails");
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        assert!(
            err.message().contains(key)
                && err.message().contains(&format!("{value:?}"))
                && err.message().contains(says),
            "{err:?}"
        );
    }
    env.assert_no_pods_left().await;
    assert_eq!(network.leases(), Vec::<String>::new(), "leases left");
    assert!(
        !Path::new("/sys/class/net").join(&network.bridge).exists(),
        "the network was attached"
    );
}
