//! A running container's resource usage, read from its cgroup (v1 controllers or the
//! v2 unified hierarchy, found through its init's /proc/PID/cgroup) and from its
//! network namespace (/proc/PID/net/dev): the figures Docker's stats and the CRI's
//! ContainerStats report. Reading is a few small files per call, never a tree walk.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::service::{Result, Runtime, RuntimeError};
use super::ContainerState;

/// One sample of a container's usage.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerStats {
    /// When it was read (nanoseconds since the epoch).
    pub read_at: i64,
    /// CPU time of the container's processes, nanoseconds: total, per CPU, kernel, user.
    pub cpu_total: u64,
    pub cpu_per_cpu: Vec<u64>,
    pub cpu_kernel: u64,
    pub cpu_user: u64,
    /// The host's CPU time, nanoseconds (all CPUs, /proc/stat), for percentages.
    pub system_cpu: u64,
    pub online_cpus: u32,
    pub throttled_periods: u64,
    pub throttled_time: u64,
    pub periods: u64,
    pub memory_usage: u64,
    pub memory_max_usage: u64,
    /// The limit (the host's memory when none is set).
    pub memory_limit: u64,
    pub memory_failcnt: u64,
    /// memory.stat, as the kernel names the fields.
    pub memory_stat: BTreeMap<String, u64>,
    pub pids_current: u64,
    /// 0: no limit.
    pub pids_limit: u64,
    /// (major, minor, operation, bytes) of block I/O.
    pub io_service_bytes: Vec<(u64, u64, String, u64)>,
    /// Per interface: (rx bytes, rx packets, rx errors, rx dropped, tx bytes, tx packets,
    /// tx errors, tx dropped).
    pub networks: BTreeMap<String, [u64; 8]>,
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

fn read_u64(path: &Path) -> Option<u64> {
    read(path)?.trim().parse().ok()
}

/// `key value` lines (memory.stat, cpu.stat).
fn key_values(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let (key, value) = line.split_once(' ')?;
            Some((key.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

/// The host's total CPU time in nanoseconds and its online CPUs, from /proc/stat.
fn system_cpu() -> (u64, u32) {
    let text = read(Path::new("/proc/stat")).unwrap_or_default();
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { nix::libc::sysconf(nix::libc::_SC_CLK_TCK) }.max(1) as u64;
    let mut total = 0;
    let mut cpus = 0;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("cpu ") {
            total = rest
                .split_whitespace()
                .take(8)
                .filter_map(|v| v.parse::<u64>().ok())
                .sum::<u64>()
                * (1_000_000_000 / ticks);
        } else if line.starts_with("cpu") {
            cpus += 1;
        }
    }
    (total, cpus)
}

fn host_memory() -> u64 {
    read(Path::new("/proc/meminfo"))
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

/// Interfaces of /proc/PID/net/dev (the container's network namespace), loopback left
/// out as Docker does.
fn networks(pid: i32) -> BTreeMap<String, [u64; 8]> {
    let text = read(&PathBuf::from(format!("/proc/{pid}/net/dev"))).unwrap_or_default();
    text.lines()
        .skip(2)
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let name = name.trim();
            if name == "lo" {
                return None;
            }
            let v: Vec<u64> = rest
                .split_whitespace()
                .filter_map(|f| f.parse().ok())
                .collect();
            (v.len() >= 12).then(|| {
                (
                    name.to_string(),
                    [v[0], v[1], v[2], v[3], v[8], v[9], v[10], v[11]],
                )
            })
        })
        .collect()
}

/// The cgroup directories of a process: v1 controller -> dir, or the v2 dir.
enum Cgroups {
    V1(BTreeMap<String, PathBuf>),
    V2(PathBuf),
}

fn cgroups_of(pid: i32) -> Option<Cgroups> {
    let text = read(&PathBuf::from(format!("/proc/{pid}/cgroup")))?;
    let mut v1 = BTreeMap::new();
    let mut v2 = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        if controllers.is_empty() {
            v2 = Some(path.to_string());
            continue;
        }
        for controller in controllers.split(',') {
            v1.insert(
                controller.to_string(),
                PathBuf::from(format!("/sys/fs/cgroup/{controllers}{path}")),
            );
        }
    }
    if v1.contains_key("memory") {
        return Some(Cgroups::V1(v1));
    }
    v2.map(|path| Cgroups::V2(PathBuf::from(format!("/sys/fs/cgroup{path}"))))
}

fn sample(pid: i32) -> Option<ContainerStats> {
    let (system_cpu, online_cpus) = system_cpu();
    let mut stats = ContainerStats {
        read_at: super::records::now_nanos(),
        system_cpu,
        online_cpus,
        networks: networks(pid),
        ..Default::default()
    };
    match cgroups_of(pid)? {
        Cgroups::V1(dirs) => {
            if let Some(cpu) = dirs.get("cpuacct") {
                stats.cpu_total = read_u64(&cpu.join("cpuacct.usage")).unwrap_or(0);
                stats.cpu_per_cpu = read(&cpu.join("cpuacct.usage_percpu"))
                    .map(|t| {
                        t.split_whitespace()
                            .filter_map(|v| v.parse().ok())
                            .collect()
                    })
                    .unwrap_or_default();
                stats.cpu_kernel = read_u64(&cpu.join("cpuacct.usage_sys")).unwrap_or(0);
                stats.cpu_user = read_u64(&cpu.join("cpuacct.usage_user")).unwrap_or(0);
            }
            if let Some(cpu) = dirs.get("cpu") {
                let stat = key_values(&read(&cpu.join("cpu.stat")).unwrap_or_default());
                stats.periods = stat.get("nr_periods").copied().unwrap_or(0);
                stats.throttled_periods = stat.get("nr_throttled").copied().unwrap_or(0);
                stats.throttled_time = stat.get("throttled_time").copied().unwrap_or(0);
            }
            if let Some(memory) = dirs.get("memory") {
                stats.memory_usage = read_u64(&memory.join("memory.usage_in_bytes")).unwrap_or(0);
                stats.memory_max_usage =
                    read_u64(&memory.join("memory.max_usage_in_bytes")).unwrap_or(0);
                stats.memory_limit = read_u64(&memory.join("memory.limit_in_bytes")).unwrap_or(0);
                stats.memory_failcnt = read_u64(&memory.join("memory.failcnt")).unwrap_or(0);
                stats.memory_stat =
                    key_values(&read(&memory.join("memory.stat")).unwrap_or_default());
            }
            if let Some(pids) = dirs.get("pids") {
                stats.pids_current = read_u64(&pids.join("pids.current")).unwrap_or(0);
                stats.pids_limit = read_u64(&pids.join("pids.max")).unwrap_or(0);
            }
            if let Some(blkio) = dirs.get("blkio") {
                let text = read(&blkio.join("blkio.throttle.io_service_bytes_recursive"))
                    .unwrap_or_default();
                for line in text.lines() {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    if let [device, op, value] = fields.as_slice() {
                        if let (Some((major, minor)), Ok(value)) =
                            (device.split_once(':'), value.parse())
                        {
                            stats.io_service_bytes.push((
                                major.parse().unwrap_or(0),
                                minor.parse().unwrap_or(0),
                                op.to_string(),
                                value,
                            ));
                        }
                    }
                }
            }
        }
        Cgroups::V2(dir) => {
            let cpu = key_values(&read(&dir.join("cpu.stat")).unwrap_or_default());
            stats.cpu_total = cpu.get("usage_usec").copied().unwrap_or(0) * 1000;
            stats.cpu_user = cpu.get("user_usec").copied().unwrap_or(0) * 1000;
            stats.cpu_kernel = cpu.get("system_usec").copied().unwrap_or(0) * 1000;
            stats.periods = cpu.get("nr_periods").copied().unwrap_or(0);
            stats.throttled_periods = cpu.get("nr_throttled").copied().unwrap_or(0);
            stats.throttled_time = cpu.get("throttled_usec").copied().unwrap_or(0) * 1000;
            stats.memory_usage = read_u64(&dir.join("memory.current")).unwrap_or(0);
            stats.memory_max_usage = read_u64(&dir.join("memory.peak")).unwrap_or(0);
            stats.memory_limit = read_u64(&dir.join("memory.max")).unwrap_or(0);
            stats.memory_stat = key_values(&read(&dir.join("memory.stat")).unwrap_or_default());
            stats.pids_current = read_u64(&dir.join("pids.current")).unwrap_or(0);
            stats.pids_limit = read_u64(&dir.join("pids.max")).unwrap_or(0);
            for line in read(&dir.join("io.stat")).unwrap_or_default().lines() {
                let mut fields = line.split_whitespace();
                let Some((major, minor)) = fields.next().and_then(|d| d.split_once(':')) else {
                    continue;
                };
                for field in fields {
                    let Some((key, value)) = field.split_once('=') else {
                        continue;
                    };
                    let op = match key {
                        "rbytes" => "read",
                        "wbytes" => "write",
                        _ => continue,
                    };
                    stats.io_service_bytes.push((
                        major.parse().unwrap_or(0),
                        minor.parse().unwrap_or(0),
                        op.to_string(),
                        value.parse().unwrap_or(0),
                    ));
                }
            }
        }
    }
    // "No limit" reads as a huge number (v1) or "max" (v2, parsed as 0): the host's
    // memory then, as Docker reports it.
    let host = host_memory();
    if stats.memory_limit == 0 || stats.memory_limit > host {
        stats.memory_limit = host;
    }
    Some(stats)
}

/// How long a writable layer's measured usage is reused: kubelet polls every 10 s, and
/// walking a large upper dir on every poll would cost more than the rest of the stats.
const LAYER_USAGE_TTL: std::time::Duration = std::time::Duration::from_secs(10);
/// Entries walked per measure at most (a layer with more is reported as far as counted).
const LAYER_WALK_LIMIT: u64 = 1_000_000;

/// A container's writable layer: where it is and what it uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerUsage {
    /// The upper dir of the container's overlay.
    pub path: PathBuf,
    /// Bytes of disk its files take (allocated blocks).
    pub bytes: u64,
    pub inodes: u64,
}

/// The last measure of each container's writable layer.
#[derive(Debug, Default)]
pub struct LayerUsageCache(
    std::sync::Mutex<std::collections::HashMap<String, (std::time::Instant, LayerUsage)>>,
);

/// Counts the blocks and inodes under `dir` without following symlinks.
fn walk_usage(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let (mut bytes, mut inodes) = (0u64, 0u64);
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        bytes += meta.blocks() * 512;
        inodes += 1;
        if inodes >= LAYER_WALK_LIMIT {
            break;
        }
        if meta.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&path) {
                pending.extend(entries.flatten().map(|e| e.path()));
            }
        }
    }
    (bytes, inodes)
}

impl Runtime {
    /// The writable layer's usage of container `id` (measured at most every 10 s).
    pub fn writable_layer_usage(&self, id: &str) -> Option<LayerUsage> {
        let path = self.config.root.join("containers").join(id).join("upper");
        {
            let cache = self.layer_usage.0.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((at, usage)) = cache.get(id) {
                if at.elapsed() < LAYER_USAGE_TTL {
                    return Some(usage.clone());
                }
            }
        }
        if !path.is_dir() {
            return None;
        }
        let (bytes, inodes) = walk_usage(&path);
        let usage = LayerUsage {
            path,
            bytes,
            inodes,
        };
        let mut cache = self.layer_usage.0.lock().unwrap_or_else(|p| p.into_inner());
        // Forget the containers that are gone.
        cache.retain(|id, _| self.container(id).is_some());
        cache.insert(id.to_string(), (std::time::Instant::now(), usage.clone()));
        Some(usage)
    }

    /// One sample of a running container's usage.
    pub fn container_stats(&self, namespace: &str, query: &str) -> Result<ContainerStats> {
        let container = self
            .find_container(namespace, query)
            .ok_or_else(|| RuntimeError::NotFound(format!("container {query:?}")))?;
        let info = container
            .monitor
            .filter(|_| container.state == ContainerState::Running)
            .ok_or_else(|| {
                RuntimeError::FailedPrecondition(format!(
                    "container {} is not running",
                    container.id
                ))
            })?;
        sample(info.pid).ok_or_else(|| {
            RuntimeError::FailedPrecondition(format!(
                "container {} is not running (its cgroup is gone)",
                container.id
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_can_be_sampled() {
        let stats = sample(std::process::id() as i32).expect("a sample of this process");
        assert!(stats.system_cpu > 0);
        assert!(stats.online_cpus >= 1);
        assert!(stats.memory_limit > 0);
        assert!(!stats.memory_stat.is_empty());
    }
}
