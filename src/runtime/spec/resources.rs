//! The container's cgroup: its path and `linux.resources` (CPU, memory and swap,
//! hugepages, pids, the cgroup v2 `unified` map), as containerd's `WithResources` and
//! `WithCgroup`. The device cgroup rules are built in [`super::devices`].

use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::{LinuxCpu, LinuxHugepageLimit, LinuxMemory, LinuxPids, LinuxResources};

use super::{SpecError, SpecOptions};

/// `{cgroup_parent}/wharf-{container_id}` (cgroupfs driver); an empty parent is `/wharf`.
pub(super) fn cgroups_path(parent: &str, id: &str) -> Result<PathBuf, SpecError> {
    let parent = if parent.is_empty() { "/wharf" } else { parent };
    if Path::new(parent)
        .components()
        .any(|c| c == Component::ParentDir)
    {
        return Err(SpecError::invalid(
            "linux.cgroup_parent",
            format!("{parent:?} contains '..'"),
        ));
    }
    let parent = parent.trim_end_matches('/');
    let parent = if parent.starts_with('/') {
        parent.to_string()
    } else {
        format!("/{parent}")
    };
    Ok(PathBuf::from(format!("{parent}/wharf-{id}")))
}

/// Whether the host's cgroups can limit swap, as containerd checks before setting it
/// (runc fails to write a swap limit the kernel does not account): cgroup v1 with
/// `memory.memsw.limit_in_bytes`, or cgroup v2 with `memory.swap.max` in a child cgroup.
pub fn host_swap_limit_supported() -> bool {
    let root = Path::new("/sys/fs/cgroup");
    if root.join("memory/memory.memsw.limit_in_bytes").exists() {
        return true;
    }
    if !root.join("cgroup.controllers").exists() {
        return false;
    }
    std::fs::read_dir(root)
        .map(|dirs| {
            dirs.flatten()
                .any(|d| d.path().join("memory.swap.max").exists())
        })
        .unwrap_or(false)
}

/// Whether the host's cgroups have the hugetlb controller: cgroup v1 with a hugetlb
/// hierarchy mounted, or cgroup v2 listing it in `cgroup.controllers`.
pub fn host_hugetlb_supported() -> bool {
    let root = Path::new("/sys/fs/cgroup");
    if root.join("hugetlb/cgroup.procs").exists() {
        return true;
    }
    std::fs::read_to_string(root.join("cgroup.controllers"))
        .is_ok_and(|c| c.split_whitespace().any(|name| name == "hugetlb"))
}

/// linux.resources from the container's resources: CPU shares/quota/period, cpuset, memory
/// limit (when the host can limit swap: swap = limit unless memory_swap_limit_in_bytes
/// is set, so the container cannot swap, as containerd), hugepage limits, the cgroup v2 `unified` map, pids limit from
/// the options.
const ONLINE_CPUS: &str = "/sys/devices/system/cpu/online";
const ONLINE_NODES: &str = "/sys/devices/system/node/online";

/// The numbers of a cpuset list (`0-3,5`); None when it is not one.
fn cpuset_numbers(text: &str) -> Option<std::collections::BTreeSet<u32>> {
    let mut numbers = std::collections::BTreeSet::new();
    for item in text.trim().split(',') {
        let (first, last) = match item.split_once('-') {
            Some((a, b)) => (a.parse::<u32>().ok()?, b.parse::<u32>().ok()?),
            None => {
                let n = item.parse::<u32>().ok()?;
                (n, n)
            }
        };
        if first > last || last - first > 65_536 {
            return None;
        }
        numbers.extend(first..=last);
    }
    Some(numbers)
}

/// A cpuset list checked as dockerd checks it: its syntax, and that the host has each
/// CPU (memory node) it names (`online`: the host's list; a host without it, as one
/// without NUMA nodes, has node 0).
fn cpuset(text: &str, field: &str, online: &str) -> Result<Option<String>, SpecError> {
    if text.is_empty() {
        return Ok(None);
    }
    let invalid = |reason: String| SpecError::invalid(format!("linux.resources.{field}"), reason);
    let asked = cpuset_numbers(text)
        .ok_or_else(|| invalid(format!("{text:?} is not a list like 0-3,5")))?;
    let online = std::fs::read_to_string(online).unwrap_or_else(|_| "0".into());
    let available = cpuset_numbers(&online).unwrap_or_default();
    if let Some(missing) = asked.iter().find(|n| !available.contains(n)) {
        return Err(invalid(format!(
            "{missing} is not available on this host (available: {})",
            online.trim()
        )));
    }
    Ok(Some(text.to_string()))
}

pub fn resources(
    res: Option<&crate::runtime::model::Resources>,
    opts: &SpecOptions,
) -> Result<LinuxResources, SpecError> {
    let mut out = LinuxResources::default();
    let asked = res.map(|r| r.pids_limit).filter(|l| *l > 0);
    if let Some(limit) = asked.or(opts.pids_limit).filter(|l| *l > 0) {
        let mut pids = LinuxPids::default();
        pids.set_limit(limit);
        out.set_pids(Some(pids));
    }
    let Some(r) = res else {
        return Ok(out);
    };
    let nonneg = |v: i64, field: &str| -> Result<Option<u64>, SpecError> {
        match v {
            0 => Ok(None),
            v if v > 0 => Ok(Some(v as u64)),
            v => Err(SpecError::invalid(
                format!("linux.resources.{field}"),
                format!("{v} is negative"),
            )),
        }
    };
    let mut cpu = LinuxCpu::default();
    cpu.set_shares(nonneg(r.cpu_shares, "cpu_shares")?);
    // The kernel's CFS bounds: a period of 1 ms to 1 s, a quota of at least 1 ms (or
    // -1, no limit). Outside them the cgroup write fails in the runtime.
    let period = nonneg(r.cpu_period, "cpu_period")?;
    if let Some(period) = period.filter(|p| !(1_000..=1_000_000).contains(p)) {
        return Err(SpecError::invalid(
            "linux.resources.cpu_period",
            format!("{period} µs is outside 1000 to 1000000 (1 ms to 1 s)"),
        ));
    }
    if r.cpu_quota != 0 && r.cpu_quota != -1 && r.cpu_quota < 1_000 {
        return Err(SpecError::invalid(
            "linux.resources.cpu_quota",
            format!("{} µs is below 1000 (1 ms; -1 for no limit)", r.cpu_quota),
        ));
    }
    cpu.set_period(period);
    cpu.set_quota((r.cpu_quota != 0).then_some(r.cpu_quota));
    cpu.set_cpus(cpuset(&r.cpuset_cpus, "cpuset_cpus", ONLINE_CPUS)?);
    cpu.set_mems(cpuset(&r.cpuset_mems, "cpuset_mems", ONLINE_NODES)?);
    if cpu != LinuxCpu::default() {
        out.set_cpu(Some(cpu));
    }
    if let Some(limit) = nonneg(r.memory_limit_in_bytes, "memory_limit_in_bytes")? {
        let limit = limit as i64;
        let mut mem = LinuxMemory::default();
        mem.set_limit(Some(limit));
        if opts.swap_limit {
            let swap = if r.memory_swap_limit_in_bytes != 0 {
                r.memory_swap_limit_in_bytes
            } else {
                limit
            };
            mem.set_swap(Some(swap));
        }
        out.set_memory(Some(mem));
    }
    if !r.hugepage_limits.is_empty() {
        let mut pages = Vec::new();
        for (i, h) in r.hugepage_limits.iter().enumerate() {
            if h.page_size.is_empty() {
                return Err(SpecError::invalid(
                    format!("linux.resources.hugepage_limits[{i}].page_size"),
                    "empty page size",
                ));
            }
            let limit = i64::try_from(h.limit).map_err(|_| {
                SpecError::invalid(
                    format!("linux.resources.hugepage_limits[{i}].limit"),
                    format!("{} is too large", h.limit),
                )
            })?;
            if !opts.hugetlb {
                if limit != 0 {
                    return Err(SpecError::invalid(
                        format!("linux.resources.hugepage_limits[{i}]"),
                        format!(
                            "a {} limit of {limit} bytes needs the hugetlb cgroup controller, \
                             which this host does not have",
                            h.page_size
                        ),
                    ));
                }
                continue;
            }
            let mut p = LinuxHugepageLimit::default();
            p.set_page_size(h.page_size.clone());
            p.set_limit(limit);
            pages.push(p);
        }
        if !pages.is_empty() {
            out.set_hugepage_limits(Some(pages));
        }
    }
    if !r.unified.is_empty() {
        out.set_unified(Some(r.unified.clone()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::spec::container_spec;
    use crate::runtime::spec::test_support::*;

    #[test]
    fn zero_hugepage_limits_are_dropped_without_a_hugetlb_controller() {
        let pages = |limit: u64| Resources {
            hugepage_limits: vec![
                HugepageLimit {
                    page_size: "2MB".into(),
                    limit: 0,
                },
                HugepageLimit {
                    page_size: "1GB".into(),
                    limit,
                },
            ],
            ..Default::default()
        };
        let without = SpecOptions {
            hugetlb: false,
            ..Default::default()
        };
        let r = resources(Some(&pages(0)), &without).unwrap();
        assert!(
            r.hugepage_limits().is_none(),
            "kubelet's zero limits: {r:?}"
        );
        let err = resources(Some(&pages(1 << 30)), &without).unwrap_err();
        assert!(
            err.to_string().contains("hugepage_limits[1]") && err.to_string().contains("hugetlb"),
            "{err}"
        );
        let with = SpecOptions {
            hugetlb: true,
            ..Default::default()
        };
        let r = resources(Some(&pages(1 << 30)), &with).unwrap();
        assert_eq!(r.hugepage_limits().as_ref().map(Vec::len), Some(2));
    }

    #[test]
    fn cpusets_and_cfs_bounds_are_checked_before_the_runtime() {
        let refused = |r: Resources, words: &str| {
            let mut cfg = config();
            cfg.resources = Some(r);
            let err = build(&cfg).expect_err(words).to_string();
            assert!(err.contains(words), "{err}");
        };
        for bad in ["\\", "1-0", "0,,1", "a", "0-", "4294967295"] {
            refused(
                Resources {
                    cpuset_cpus: bad.into(),
                    ..Default::default()
                },
                "cpuset_cpus",
            );
        }
        refused(
            Resources {
                cpuset_mems: "99".into(),
                ..Default::default()
            },
            "not available on this host",
        );
        refused(
            Resources {
                cpu_period: 999,
                ..Default::default()
            },
            "cpu_period",
        );
        refused(
            Resources {
                cpu_quota: 5,
                ..Default::default()
            },
            "cpu_quota",
        );
        assert_eq!(cpuset_numbers("0-2,5").unwrap().len(), 4);
    }

    #[test]
    fn resources_in_spec() {
        let mut cfg = config();
        cfg.resources = Some(Resources {
            cpu_period: 100_000,
            cpu_quota: 50_000,
            cpu_shares: 512,
            memory_limit_in_bytes: 64 << 20,
            cpuset_cpus: "0".into(),
            hugepage_limits: vec![HugepageLimit {
                page_size: "2MB".into(),
                limit: 4 << 20,
            }],
            unified: [("memory.high".to_string(), "50M".to_string())].into(),
            ..Default::default()
        });
        let spec = build(&cfg).unwrap();
        let l = spec.linux().as_ref().unwrap();
        let r = l.resources().as_ref().unwrap();
        let cpu = r.cpu().as_ref().unwrap();
        assert_eq!(
            (cpu.shares(), cpu.quota(), cpu.period()),
            (Some(512), Some(50_000), Some(100_000))
        );
        assert_eq!(cpu.cpus().as_deref(), Some("0"));
        let mem = r.memory().unwrap();
        assert_eq!(mem.limit(), Some(64 << 20));
        assert_eq!(mem.swap(), Some(64 << 20));
        assert_eq!(r.hugepage_limits().as_ref().unwrap()[0].limit(), 4 << 20);
        assert_eq!(r.unified().as_ref().unwrap()["memory.high"], "50M");
        assert!(r.pids().is_none());
        assert_eq!(
            l.cgroups_path().as_deref(),
            Some(Path::new("/kubepods/pod1/wharf-c1"))
        );
        assert_eq!(spec.process().as_ref().unwrap().oom_score_adj(), Some(0));

        let root = rootfs();
        let mut o = opts(root.path());
        o.swap_limit = false;
        let spec = container_spec(&cfg, &pod(), &image(), &o).unwrap();
        let r = spec.linux().as_ref().unwrap().resources().clone().unwrap();
        assert_eq!(r.memory().unwrap().swap(), None);
        let _ = host_swap_limit_supported();

        cfg.resources.as_mut().unwrap().memory_limit_in_bytes = -5;
        assert_eq!(
            field(build(&cfg).unwrap_err()),
            "linux.resources.memory_limit_in_bytes"
        );

        let root = rootfs();
        let mut o = opts(root.path());
        o.pids_limit = Some(64);
        let spec = container_spec(&config(), &pod(), &image(), &o).unwrap();
        let pids = spec
            .linux()
            .as_ref()
            .unwrap()
            .resources()
            .as_ref()
            .unwrap()
            .pids()
            .unwrap();
        assert_eq!(pids.limit(), 64);
    }
}
