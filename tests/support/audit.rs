//! The leak audit of the churn and crash tests: what a daemon's pods and containers
//! leave on the machine (mounts, veths, iptables rules, leases, cgroups, monitor
//! processes, store rows, files under root and state), and wharfd's fds and RSS.

use std::collections::BTreeMap;
use std::path::Path;

use super::net::{bridge_ports, iptables_save};
use super::pods::PodEnv;

/// What one audit counts; two audits must be equal (RSS is compared apart).
#[derive(Debug, PartialEq)]
pub struct Audit {
    pub mounts: Vec<String>,
    pub bridge_ports: usize,
    pub rules: Vec<String>,
    pub leases: usize,
    pub cgroups: Vec<String>,
    pub monitors: usize,
    pub rows: BTreeMap<String, i64>,
    pub files: Vec<String>,
}

/// What is compared apart: wharfd's open fds move by one or two with its idle
/// connections and pools (a leak of one a cycle would be hundreds), and its RSS.
pub struct Sample {
    pub audit: Audit,
    pub open_fds: usize,
    pub rss_kib: u64,
}

/// Open fds wharfd may hold beyond its count before the cycles.
pub const FD_SLACK: usize = 4;

pub fn mounts_under(dir: &Path) -> Vec<String> {
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
pub fn files_under(dir: &Path) -> Vec<String> {
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
pub fn cgroups_under(parent: &str) -> Vec<String> {
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
pub fn processes_mentioning(path: &Path, daemon: u32) -> usize {
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

pub fn store_rows(root: &Path) -> BTreeMap<String, i64> {
    let conn = super::net::open_store(root);
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

pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("read wharfd's status")
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS of wharfd")
}

/// Counts what the test's network leaves: `leases` says how (store rows of the
/// built-in bridge, or host-local's files).
pub fn sample(
    env: &PodEnv,
    bridge: &str,
    subnet_prefix: &str,
    leases: &dyn Fn() -> usize,
) -> Sample {
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

/// What differs between two audits, as lines `field: +added -removed` (empty when
/// equal): the full lists are thousands of paths.
pub fn differences(before: &Audit, after: &Audit) -> String {
    fn lists(field: &str, before: &[String], after: &[String], out: &mut Vec<String>) {
        let added: Vec<&String> = after.iter().filter(|x| !before.contains(x)).collect();
        let removed: Vec<&String> = before.iter().filter(|x| !after.contains(x)).collect();
        if !added.is_empty() || !removed.is_empty() {
            out.push(format!("{field}: +{added:?} -{removed:?}"));
        }
    }
    fn counts<T: PartialEq + std::fmt::Debug>(
        field: &str,
        before: T,
        after: T,
        out: &mut Vec<String>,
    ) {
        if before != after {
            out.push(format!("{field}: {before:?} -> {after:?}"));
        }
    }
    let mut out = Vec::new();
    lists("mounts", &before.mounts, &after.mounts, &mut out);
    counts(
        "bridge ports",
        before.bridge_ports,
        after.bridge_ports,
        &mut out,
    );
    lists("rules", &before.rules, &after.rules, &mut out);
    counts("leases", before.leases, after.leases, &mut out);
    lists("cgroups", &before.cgroups, &after.cgroups, &mut out);
    counts("monitors", before.monitors, after.monitors, &mut out);
    counts("store rows", &before.rows, &after.rows, &mut out);
    // Files inside what was left are noise: the top of each added or removed tree.
    let top = |files: &[String], other: &[String]| -> Vec<String> {
        let mut tops: Vec<String> = Vec::new();
        for file in files.iter().filter(|f| !other.contains(f)) {
            if !tops.iter().any(|t| file.starts_with(&format!("{t}/"))) {
                tops.push(file.clone());
            }
        }
        tops
    };
    let (added, removed) = (
        top(&after.files, &before.files),
        top(&before.files, &after.files),
    );
    if !added.is_empty() || !removed.is_empty() {
        out.push(format!("files: +{added:?} -{removed:?}"));
    }
    out.join("\n")
}
