//! Churn (issue 24): pod + container create/start/stop/remove cycles beside 50 live
//! pods, on the built-in bridge and through CNI plugins, then a leak audit of
//! everything a cycle makes: mounts, veths, iptables rules, IPAM leases, cgroups,
//! monitor processes, wharfd's open fds, store rows, files under root and state, and
//! wharfd's RSS (within 10% of before).
//!
//! `./scripts/test` runs 100 cycles a mode; the long form is
//! `WHARF_CHURN_CYCLES=1000 cargo test --test churn -- --nocapture`.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use support::net::{bridge_ports, iptables_save, TestBridge};
use support::pods::PodEnv;

const LIVE_PODS: usize = 50;

fn cycles() -> usize {
    std::env::var("WHARF_CHURN_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100)
}

/// What one audit counts; two audits must be equal (RSS is compared apart).
#[derive(Debug, PartialEq)]
struct Audit {
    mounts: Vec<String>,
    bridge_ports: usize,
    rules: Vec<String>,
    leases: usize,
    cgroups: Vec<String>,
    monitors: usize,
    rows: BTreeMap<String, i64>,
    files: Vec<String>,
}

/// What is compared apart: wharfd's open fds move by one or two with its idle
/// connections and pools (a leak of one a cycle would be hundreds), and its RSS.
struct Sample {
    audit: Audit,
    open_fds: usize,
    rss_kib: u64,
}

/// Open fds wharfd may hold beyond its count before the cycles.
const FD_SLACK: usize = 4;

fn mounts_under(dir: &Path) -> Vec<String> {
    let mut points: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .expect("read mountinfo")
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string))
        .filter(|p| Path::new(p).starts_with(dir))
        .collect();
    points.sort();
    points
}

/// Every path under `dir` (relative), but the store's own files, whose journal
/// comes and goes with its checkpoints.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&current) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let relative = path
                .strip_prefix(dir)
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            if relative.starts_with("metadata.db") {
                continue;
            }
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(path);
            }
            out.push(relative);
        }
    }
    out.sort();
    out
}

/// The cgroups below `parent` in the memory hierarchy, whole tree.
fn cgroups_under(parent: &str) -> Vec<String> {
    let root = Path::new("/sys/fs/cgroup/memory").join(parent.trim_start_matches('/'));
    let mut out: Vec<String> = files_under(&root)
        .into_iter()
        .filter(|p| root.join(p).is_dir())
        .collect();
    out.sort();
    out
}

/// Processes but `daemon` whose command line names `path` (monitors name their
/// bundle; wharfd names its state dir).
fn processes_mentioning(path: &Path, daemon: u32) -> usize {
    let needle = path.display().to_string();
    std::fs::read_dir("/proc")
        .expect("read /proc")
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .parse::<u32>()
                .is_ok_and(|pid| pid != daemon)
        })
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(&needle))
                .unwrap_or(false)
        })
        .count()
}

fn store_rows(root: &Path) -> BTreeMap<String, i64> {
    let conn = support::net::open_store(root);
    let mut stmt = conn
        .prepare("SELECT kind, count(*) FROM objects GROUP BY kind ORDER BY kind")
        .expect("count the store's rows");
    stmt.query_map([], |row| {
        Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
    })
    .expect("count the store's rows")
    .map(|r| r.expect("a row count"))
    .collect()
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("read wharfd's status")
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS of wharfd")
}

/// Counts what the test's network leaves: `leases` says how (store rows of the
/// built-in bridge, or host-local's files).
fn sample(env: &PodEnv, bridge: &str, subnet_prefix: &str, leases: &dyn Fn() -> usize) -> Sample {
    let pid = env.daemon.pid();
    let mut rules: Vec<String> = ["nat", "filter"]
        .iter()
        .flat_map(|table| {
            iptables_save(table)
                .lines()
                .filter(|l| l.contains(bridge) || l.contains(subnet_prefix))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    rules.sort();
    let state = &env.daemon.paths.state;
    Sample {
        audit: Audit {
            mounts: mounts_under(env.daemon.dir()),
            bridge_ports: bridge_ports(bridge).len(),
            rules,
            leases: leases(),
            cgroups: cgroups_under(&env.daemon.cgroup_parent),
            monitors: processes_mentioning(state, pid),
            rows: store_rows(&env.daemon.paths.root),
            files: [files_under(&env.daemon.paths.root), files_under(state)].concat(),
        },
        open_fds: std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count())
            .unwrap_or(0),
        rss_kib: rss_kib(pid),
    }
}

/// One pod with one running container.
async fn live_pod(env: &mut PodEnv, name: &str) -> String {
    let pod = env.pod_config(name);
    let pod_id = env.run_pod(&pod).await;
    let config = env.container_config("main", &["sleep", "100000"]);
    env.run(&pod_id, &pod, &config).await;
    pod_id
}

async fn cycle(env: &mut PodEnv, name: &str) {
    let pod = env.pod_config(name);
    let pod_id = env.run_pod(&pod).await;
    let config = env.container_config("main", &["sleep", "100000"]);
    let id = env.run(&pod_id, &pod, &config).await;
    env.stop_container(&id, 0).await;
    env.remove_container(&id).await;
    env.stop_pod(&pod_id).await;
    env.remove_pod(&pod_id).await;
}

/// The churn itself: live pods, warm-up, a sample, the cycles, a sample, then the
/// live pods removed. Returns (before, after, seconds a cycle).
async fn churn(
    env: &mut PodEnv,
    mode: &str,
    bridge: &str,
    subnet_prefix: &str,
    leases: &dyn Fn() -> usize,
) {
    let mut live = Vec::new();
    for i in 0..LIVE_PODS {
        live.push(live_pod(env, &format!("live{i}")).await);
    }
    // Warm-up: the first cycles fill caches and pools a steady daemon keeps.
    for i in 0..10 {
        cycle(env, &format!("warm{i}")).await;
    }
    let before = sample(env, bridge, subnet_prefix, leases);
    assert_eq!(before.audit.leases, LIVE_PODS, "a lease per live pod");
    let cycles = cycles();
    let started = Instant::now();
    for i in 0..cycles {
        cycle(env, &format!("churn{i}")).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let after = sample(env, bridge, subnet_prefix, leases);
    eprintln!(
        "{mode}: {cycles} cycles beside {LIVE_PODS} live pods in {elapsed:.1} s \
         ({:.0} ms a cycle); wharfd RSS {} KiB before, {} KiB after ({:+.1}%); \
         {} open fds before, {} after; {} mounts; {} rules",
        elapsed * 1000.0 / cycles.max(1) as f64,
        before.rss_kib,
        after.rss_kib,
        (after.rss_kib as f64 / before.rss_kib as f64 - 1.0) * 100.0,
        before.open_fds,
        after.open_fds,
        after.audit.mounts.len(),
        after.audit.rules.len(),
    );
    assert_eq!(
        after.audit, before.audit,
        "{mode}: what {cycles} cycles left behind"
    );
    assert!(
        after.open_fds <= before.open_fds + FD_SLACK,
        "{mode}: wharfd's open fds grew from {} to {} over {cycles} cycles",
        before.open_fds,
        after.open_fds
    );
    assert!(
        after.rss_kib as f64 <= before.rss_kib as f64 * 1.10,
        "{mode}: wharfd's RSS grew from {} KiB to {} KiB over {cycles} cycles",
        before.rss_kib,
        after.rss_kib
    );
    for pod in live {
        env.stop_pod(&pod).await;
        env.remove_pod(&pod).await;
    }
    let empty = sample(env, bridge, subnet_prefix, leases);
    assert_eq!(
        empty.audit.leases, 0,
        "{mode}: leases after the live pods went"
    );
    assert_eq!(
        empty.audit.bridge_ports, 0,
        "{mode}: veths after the live pods went"
    );
    assert_eq!(
        empty.audit.monitors, 0,
        "{mode}: monitors after the live pods went"
    );
    assert!(
        empty.audit.mounts.is_empty() || empty.audit.mounts.iter().all(|m| !m.contains("/pods/")),
        "{mode}: pod mounts after the live pods went: {:?}",
        empty.audit.mounts
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn churn_on_the_bridge_leaves_nothing_behind() {
    let bridge = TestBridge::new(83);
    let mut env = PodEnv::start_with_config(&bridge.config()).await;
    let root = env.daemon.paths.root.clone();
    let leases = move || support::net::stored_leases(&root).len();
    let name = bridge.name().to_string();
    let prefix = format!("{}.", bridge.prefix);
    churn(&mut env, "bridge", &name, &prefix, &leases).await;
}

struct CniRules(String);

impl Drop for CniRules {
    fn drop(&mut self) {
        support::net::remove_cni_rules(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn churn_through_cni_leaves_nothing_behind() {
    support::require_installed("/usr/lib/cni/bridge", "containernetworking-plugins");
    let _forwarding = support::IpForwardGuard::new();
    let pid = std::process::id();
    let bridge = format!("wt{}n84", pid % 100_000);
    let prefix = format!("10.{}.{}", 160 + 84, pid % 250);
    let _bridge_cleanup = support::net::BridgeCleanup {
        bridge: bridge.clone(),
        subnet_prefix: format!("{prefix}."),
    };
    // The plugins' masquerade rules of pods a failed run did not remove.
    let _rules_cleanup = CniRules(format!("wharf-churn-{pid}"));
    let dir = tempfile::Builder::new()
        .prefix("wharf-churn-cni-")
        .tempdir()
        .expect("the CNI dirs");
    let (conf, ipam) = (dir.path().join("net.d"), dir.path().join("ipam"));
    std::fs::create_dir_all(&conf).expect("create the CNI conf dir");
    std::fs::write(
        conf.join("10-churn.conflist"),
        serde_json::json!({
            "cniVersion": "1.0.0",
            "name": format!("wharf-churn-{pid}"),
            "plugins": [{
                "type": "bridge",
                "bridge": bridge,
                "isGateway": true,
                "ipMasq": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": format!("{prefix}.0/24")}]],
                    "dataDir": ipam,
                }
            }, {"type": "portmap", "capabilities": {"portMappings": true}}]
        })
        .to_string(),
    )
    .expect("write the conflist");
    let config = format!(
        "[network]\nmode = \"cni\"\n[cni]\nconf_dir = {:?}\n",
        conf.display().to_string()
    );
    let mut env = PodEnv::start_with_config(&config).await;
    // host-local keeps a file per address (and last_reserved_ip, a lock) per network.
    let prefix_dot = format!("{prefix}.");
    let lease_prefix = prefix_dot.clone();
    let leases = move || {
        support::entries(&ipam.join(format!("wharf-churn-{pid}")))
            .iter()
            .filter(|f| f.starts_with(&lease_prefix))
            .count()
    };
    churn(&mut env, "cni", &bridge, &prefix_dot, &leases).await;
}
