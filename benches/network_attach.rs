//! Network attach latency per pod (issue 5, "Benchmark"): the built-in bridge network
//! against the CNI plugins doing the same job (Debian's `bridge` + `host-local`, plus
//! `portmap` when pods have a host port), driven through wharf's own network layer
//! (`wharf::cni`) exactly as RunPodSandbox drives it.
//!
//! For each network and each scenario (no host port; one host port per pod) the bench
//! attaches `--pods` pods (default 100) one after another, each to its own fresh network
//! namespace, timing each attach; then detaches them all, timing each detach. Rounds
//! alternate built-in and CNI (`--rounds`, default 2). Prints p50 / p90 / p99 / max.
//!
//! Run with `scripts/bench-network` (root; installs the CNI plugins, builds in release).
//! Network rule: only namespaces and bridges the bench creates (test-unique names
//! `whb<pid>` / `wtb<pid>`, subnets 10.190.x.0/24 and 10.191.x.0/24); everything is
//! removed at the end, also when a step fails.

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::net::BridgeCleanup;
use wharf::cni::bridge::{BridgeNetwork, BridgeSpec};
use wharf::cni::{Attachment, Cni, CniConfig, PortMapping, RuntimeConfig};

struct Options {
    pods: usize,
    rounds: usize,
}

fn options() -> Options {
    let mut options = Options {
        pods: 100,
        rounds: 2,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut number = |name: &str| -> usize {
            args.next()
                .and_then(|v| v.parse().ok())
                .filter(|n| *n > 0)
                .unwrap_or_else(|| panic!("{name} needs a positive number"))
        };
        match arg.as_str() {
            "--pods" => options.pods = number("--pods"),
            "--rounds" => options.rounds = number("--rounds"),
            // cargo bench passes --bench.
            "--bench" => {}
            other => panic!("unknown argument {other:?} (known: --pods N, --rounds N)"),
        }
    }
    options
}

/// Network namespaces named `wharf-bench-<pid>-<n>`, deleted on drop.
struct Namespaces(Vec<String>);

impl Namespaces {
    fn create(count: usize, tag: &str) -> Namespaces {
        let mut made = Namespaces(Vec::new());
        for i in 0..count {
            let name = format!("wharf-bench-{}-{tag}{i}", std::process::id());
            let status = Command::new("ip")
                .args(["netns", "add", &name])
                .status()
                .expect("ip (Debian package iproute2)");
            assert!(status.success(), "ip netns add {name}");
            made.0.push(name);
        }
        made
    }

    fn path(&self, i: usize) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.0[i])
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

fn attachment(netns: PathBuf, i: usize, tag: &str, host_port: Option<u16>) -> Attachment {
    Attachment {
        container_id: format!("bench{}{tag}{i:04}", std::process::id()),
        netns,
        ifname: "eth0".into(),
        args: vec![("IgnoreUnknown".into(), "1".into())],
        capability_args: RuntimeConfig {
            port_mappings: host_port
                .map(|port| {
                    vec![PortMapping {
                        host_port: port,
                        container_port: 80,
                        protocol: "tcp".into(),
                        host_ip: String::new(),
                    }]
                })
                .unwrap_or_default(),
            ..Default::default()
        },
    }
}

#[derive(Default)]
struct Samples {
    attach: Vec<Duration>,
    detach: Vec<Duration>,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn row(label: &str, samples: &[Duration]) -> String {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!(
        "{label:<34} {:>5} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
        sorted.len(),
        ms(percentile(&sorted, 50.0)),
        ms(percentile(&sorted, 90.0)),
        ms(percentile(&sorted, 99.0)),
        ms(sorted.last().copied().unwrap_or_default()),
    )
}

enum Network {
    Builtin(Box<BridgeNetwork>),
    Cni(Cni),
}

impl Network {
    async fn add(&self, attachment: &Attachment) {
        match self {
            Network::Builtin(bridge) => {
                bridge.add(attachment).await.expect("built-in attach");
            }
            Network::Cni(cni) => {
                cni.add(attachment).await.expect("CNI ADD");
            }
        }
    }

    async fn del(&self, attachment: &Attachment) {
        match self {
            Network::Builtin(bridge) => bridge.del(attachment).await.expect("built-in detach"),
            Network::Cni(cni) => cni.del(attachment).await.expect("CNI DEL"),
        }
    }
}

async fn run_round(
    network: &Network,
    pods: usize,
    tag: &str,
    first_port: Option<u16>,
    samples: &mut Samples,
) {
    let namespaces = Namespaces::create(pods, tag);
    let attachments: Vec<Attachment> = (0..pods)
        .map(|i| {
            let port = first_port.map(|p| p + i as u16);
            attachment(namespaces.path(i), i, tag, port)
        })
        .collect();
    for attachment in &attachments {
        let start = Instant::now();
        network.add(attachment).await;
        samples.attach.push(start.elapsed());
    }
    for attachment in &attachments {
        let start = Instant::now();
        network.del(attachment).await;
        samples.detach.push(start.elapsed());
    }
}

#[tokio::main]
async fn main() {
    let options = options();
    support::require_installed("/usr/lib/cni/bridge", "containernetworking-plugins");
    support::require_installed("/usr/sbin/iptables", "iptables");
    let pid = std::process::id();
    let _forwarding = support::IpForwardGuard::new();
    let builtin_bridge = format!("whb{}", pid % 100_000);
    let cni_bridge = format!("wtb{}", pid % 100_000);
    let octet = pid % 250;
    let _builtin_cleanup = BridgeCleanup {
        bridge: builtin_bridge.clone(),
        subnet_prefix: format!("10.190.{octet}."),
    };
    let _cni_cleanup = BridgeCleanup {
        bridge: cni_bridge.clone(),
        subnet_prefix: format!("10.191.{octet}."),
    };
    let dir = tempfile::Builder::new()
        .prefix("wharf-bench-net-")
        .tempdir()
        .expect("temp dir");

    let store = Arc::new(wharf::store::Store::open(dir.path()).expect("open the store"));
    let builtin = Network::Builtin(Box::new(
        BridgeNetwork::new(
            BridgeSpec::basic(
                builtin_bridge.clone(),
                Some(format!("10.190.{octet}.0/24").parse().expect("subnet")),
                true,
                false,
                0,
            ),
            store,
        )
        .expect("built-in bridge network"),
    ));
    let conf_dir = dir.path().join("net.d");
    std::fs::create_dir_all(&conf_dir).expect("conf dir");
    std::fs::write(
        conf_dir.join("10-bench.conflist"),
        serde_json::json!({
            "cniVersion": "1.0.0",
            "name": format!("bench-{pid}"),
            "plugins": [
                {
                    "type": "bridge", "bridge": cni_bridge, "isGateway": true, "ipMasq": true,
                    "hairpinMode": true,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": format!("10.191.{octet}.0/24")}]],
                        "dataDir": dir.path().join("ipam"),
                    }
                },
                {"type": "portmap", "capabilities": {"portMappings": true}}
            ]
        })
        .to_string(),
    )
    .expect("write the CNI config");
    let cni = Network::Cni(Cni::new(CniConfig {
        conf_dir,
        plugin_dirs: vec![PathBuf::from("/usr/lib/cni")],
        cache_dir: dir.path().join("cache"),
        timeout: Duration::from_secs(60),
    }));

    let mut results: Vec<(&str, &str, Samples)> = vec![
        ("built-in", "no host port", Samples::default()),
        (
            "CNI bridge+host-local+portmap",
            "no host port",
            Samples::default(),
        ),
        ("built-in", "1 host port", Samples::default()),
        (
            "CNI bridge+host-local+portmap",
            "1 host port",
            Samples::default(),
        ),
    ];
    let port_base = 30000 + (pid % 20000) as u16;
    for round in 0..options.rounds {
        eprintln!("round {}/{}", round + 1, options.rounds);
        for (index, (network, ports)) in [
            (&builtin, None),
            (&cni, None),
            (&builtin, Some(port_base)),
            (&cni, Some(port_base + 1000)),
        ]
        .into_iter()
        .enumerate()
        {
            let tag = format!("r{round}s{index}n");
            run_round(network, options.pods, &tag, ports, &mut results[index].2).await;
        }
    }

    println!(
        "\nNetwork attach latency, {} pods per round, {} rounds (ms; sequential, one namespace per pod)\n",
        options.pods, options.rounds
    );
    println!(
        "{:<34} {:>5} {:>9} {:>9} {:>9} {:>9}",
        "", "n", "p50", "p90", "p99", "max"
    );
    for (network, scenario, samples) in &results {
        println!("{network} — {scenario}");
        println!("{}", row("  attach", &samples.attach));
        println!("{}", row("  detach", &samples.detach));
    }
}
