//! Churn (issue 24): pod + container create/start/stop/remove cycles beside 50 live
//! pods, on the built-in bridge and through CNI plugins, then a leak audit of
//! everything a cycle makes: mounts, veths, iptables rules, IPAM leases, cgroups,
//! monitor processes, wharfd's open fds, store rows, files under root and state, and
//! wharfd's RSS (within 10% of before).
//!
//! `./scripts/test` runs 100 cycles a mode; the long form is
//! `WHARF_CHURN_CYCLES=1000 cargo test --test churn -- --nocapture`.

mod support;

use std::time::Instant;

use support::audit::{sample, FD_SLACK};
use support::net::{CniBridgeNet, TestBridge};
use support::pods::PodEnv;

const LIVE_PODS: usize = 50;

fn cycles() -> usize {
    std::env::var("WHARF_CHURN_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100)
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

#[tokio::test(flavor = "multi_thread")]
async fn churn_through_cni_leaves_nothing_behind() {
    let net = CniBridgeNet::new(84, "churn");
    let mut env = PodEnv::start_with_config(&net.config()).await;
    let leases = net.leases();
    let prefix = format!("{}.", net.prefix);
    churn(&mut env, "cni", &net.bridge, &prefix, &leases).await;
}
