//! Facts about the host kernel that the runtime depends on, read from /proc and statfs.

use std::path::{Path, PathBuf};

use nix::sys::statfs::{statfs, CGROUP2_SUPER_MAGIC, TMPFS_MAGIC};
use serde::Serialize;

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The mount that holds a host path, and how it propagates, as mountinfo shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostMount {
    pub mount_point: PathBuf,
    /// In a shared peer group (`shared:N`).
    pub shared: bool,
    /// A slave of a peer group (`master:N`).
    pub slave: bool,
}

/// The mount of `path` in wharfd's mount namespace: the last-mounted of the mounts with
/// the longest mount point above the path with symlinks resolved (containerd's
/// `getSourceMount`). A path that does not exist yet is looked up by its nearest
/// existing ancestor, where it will be created.
pub fn mount_of(path: &Path) -> std::io::Result<HostMount> {
    let mut existing = path;
    let resolved = loop {
        match std::fs::canonicalize(existing) {
            Ok(resolved) => break resolved,
            Err(err) => match existing.parent() {
                Some(parent) if err.kind() == std::io::ErrorKind::NotFound => existing = parent,
                _ => return Err(err),
            },
        }
    };
    let mounts = procfs::process::Process::myself()
        .and_then(|me| me.mountinfo())
        .map_err(|err| std::io::Error::other(format!("reading /proc/self/mountinfo: {err}")))?;
    let mut best: Option<&procfs::process::MountInfo> = None;
    for mount in mounts.iter() {
        let longer = best.is_none_or(|b| {
            mount.mount_point.components().count() >= b.mount_point.components().count()
        });
        if resolved.starts_with(&mount.mount_point) && longer {
            best = Some(mount);
        }
    }
    let mount = best
        .ok_or_else(|| std::io::Error::other(format!("no mount holds {}", resolved.display())))?;
    use procfs::process::MountOptFields;
    Ok(HostMount {
        mount_point: mount.mount_point.clone(),
        shared: mount
            .opt_fields
            .iter()
            .any(|f| matches!(f, MountOptFields::Shared(_))),
        slave: mount
            .opt_fields
            .iter()
            .any(|f| matches!(f, MountOptFields::Master(_))),
    })
}

/// wharfd's capability bounding set (`CapBnd` of /proc/self/status, bit N =
/// capability N): the most it can grant a container. Read once; it never grows.
pub fn bounding_capabilities() -> u64 {
    static BOUNDING: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *BOUNDING.get_or_init(|| {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|status| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix("CapBnd:"))
                    .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
            })
            // Unreadable /proc: let the runtime's capset be the judge, as before.
            .unwrap_or(u64::MAX)
    })
}

/// How cgroups are mounted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "mode")]
pub enum CgroupLayout {
    /// cgroup v2 only, at /sys/fs/cgroup.
    Unified,
    /// cgroup v1 controllers under /sys/fs/cgroup/<controller>; `unified` is the cgroup2
    /// mount beside them if there is one (systemd's "hybrid" layout).
    Legacy { unified: Option<PathBuf> },
    /// No usable cgroup mount was found.
    Missing,
}

#[derive(Debug, Clone, Serialize)]
pub struct HostInfo {
    pub kernel: String,
    pub overlayfs: bool,
    pub cgroup: CgroupLayout,
}

impl HostInfo {
    pub fn probe() -> HostInfo {
        HostInfo {
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            overlayfs: filesystem_supported("overlay"),
            cgroup: cgroup_layout(Path::new(CGROUP_ROOT)),
        }
    }

    /// What is missing for running containers, one sentence each.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !self.overlayfs {
            problems.push(
                "the kernel does not support overlayfs (no \"overlay\" in /proc/filesystems; try `modprobe overlay`)"
                    .to_string(),
            );
        }
        if self.cgroup == CgroupLayout::Missing {
            problems.push(format!("no cgroup filesystem is mounted at {CGROUP_ROOT}"));
        }
        problems
    }
}

/// Whether the running kernel lists `name` in /proc/filesystems. overlay may be a module
/// that is loaded on first mount, so an absent entry is reported, not fatal at start.
fn filesystem_supported(name: &str) -> bool {
    std::fs::read_to_string("/proc/filesystems")
        .map(|list| {
            list.lines()
                .any(|line| line.split_whitespace().last() == Some(name))
        })
        .unwrap_or(false)
}

fn cgroup_layout(root: &Path) -> CgroupLayout {
    let Ok(fs) = statfs(root) else {
        return CgroupLayout::Missing;
    };
    if fs.filesystem_type() == CGROUP2_SUPER_MAGIC {
        return CgroupLayout::Unified;
    }
    if fs.filesystem_type() == TMPFS_MAGIC && root.join("memory").is_dir() {
        let unified = root.join("unified");
        let unified = statfs(&unified)
            .ok()
            .filter(|fs| fs.filesystem_type() == CGROUP2_SUPER_MAGIC)
            .map(|_| unified);
        return CgroupLayout::Legacy { unified };
    }
    CgroupLayout::Missing
}

/// A directory wharf writes to must exist and be writable by this process.
pub fn check_writable_dir(dir: &Path) -> Result<(), String> {
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK)
            .map_err(|err| format!("directory {} is not writable: {err}", dir.display())),
        Ok(_) => Err(format!("{} is not a directory", dir.display())),
        Err(err) => Err(format!("directory {} is unusable: {err}", dir.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_reads_this_host() {
        let host = HostInfo::probe();
        assert!(!host.kernel.is_empty());
        // The machines wharf runs on (and CI) have overlayfs and cgroups.
        assert!(host.problems().is_empty(), "{:?}", host.problems());
    }

    #[test]
    fn a_plain_directory_is_not_a_cgroup_mount() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(cgroup_layout(dir.path()), CgroupLayout::Missing);
    }

    #[test]
    fn writable_dir_checks() {
        let dir = tempfile::tempdir().unwrap();
        assert!(check_writable_dir(dir.path()).is_ok());
        let file = dir.path().join("f");
        std::fs::write(&file, b"").unwrap();
        assert!(check_writable_dir(&file)
            .unwrap_err()
            .contains("not a directory"));
        assert!(check_writable_dir(&dir.path().join("missing")).is_err());
    }
}
