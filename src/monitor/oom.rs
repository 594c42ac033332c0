//! OOM-kill detection from the cgroup's own counters.
//!
//! Events (eventfd on v1, inotify on memory.events) can be missed while nobody listens;
//! the counters cannot. A container was OOM-killed when its own cgroup counted an OOM
//! kill, or when its init died of SIGKILL while the parent (pod) cgroup's counter grew
//! since the container was created (the pod limit was hit and the kernel picked the
//! victim by the parent's accounting).
//!
//! Counter of a cgroup path P (absolute, relative to the hierarchy root):
//! - pure cgroup v2 (`<root>/cgroup.controllers` exists): `<root>/P/memory.events`;
//! - v1 or hybrid (libcontainer and runc use v1 there): `<root>/memory/P/memory.oom_control`.
//!
//! Both files have an `oom_kill N` line. A missing file or line counts as 0.

use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;

/// Where cgroup filesystems are mounted.
pub const DEFAULT_CGROUP_ROOT: &str = "/sys/fs/cgroup";

#[derive(Debug, thiserror::Error)]
pub enum OomError {
    #[error("failed to load OCI spec {path}")]
    LoadSpec {
        path: PathBuf,
        #[source]
        source: oci_spec::OciSpecError,
    },
}

/// Value of the `oom_kill` line of `memory.events` (v2) or `memory.oom_control` (v1).
pub fn parse_oom_kill_count(text: &str) -> u64 {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            match (fields.next(), fields.next()) {
                (Some("oom_kill"), Some(value)) => value.parse().ok(),
                _ => None,
            }
        })
        .next()
        .unwrap_or(0)
}

/// `linux.cgroupsPath` of the bundle's config.json, made absolute (a relative path is
/// taken from the hierarchy root, as cgroupfs drivers do). `None` when unset.
pub fn cgroups_path_from_bundle(bundle: &Path) -> Result<Option<PathBuf>, OomError> {
    let path = bundle.join("config.json");
    let spec = Spec::load(&path).map_err(|source| OomError::LoadSpec { path, source })?;
    Ok(spec
        .linux()
        .as_ref()
        .and_then(|linux| linux.cgroups_path().clone())
        .map(|p| Path::new("/").join(p)))
}

/// Reads OOM-kill counters under one cgroup mount root.
#[derive(Debug, Clone)]
pub struct OomCounters {
    root: PathBuf,
}

impl Default for OomCounters {
    fn default() -> Self {
        Self::new(DEFAULT_CGROUP_ROOT)
    }
}

impl OomCounters {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The file holding the counter of `cgroup_path`.
    pub fn counter_file(&self, cgroup_path: &Path) -> PathBuf {
        let relative = cgroup_path.strip_prefix("/").unwrap_or(cgroup_path);
        if self.root.join("cgroup.controllers").exists() {
            self.root.join(relative).join("memory.events")
        } else {
            self.root
                .join("memory")
                .join(relative)
                .join("memory.oom_control")
        }
    }

    /// OOM kills counted in `cgroup_path`; 0 when the file or line is missing.
    pub fn oom_kill_count(&self, cgroup_path: &Path) -> u64 {
        std::fs::read_to_string(self.counter_file(cgroup_path))
            .map(|text| parse_oom_kill_count(&text))
            .unwrap_or(0)
    }
}

/// The parent of a cgroup path, if it is not the root.
pub fn parent_cgroup(cgroup_path: &Path) -> Option<PathBuf> {
    cgroup_path
        .parent()
        .filter(|parent| *parent != Path::new("/") && !parent.as_os_str().is_empty())
        .map(Path::to_path_buf)
}

/// The verdict: see the module documentation.
pub fn was_oom_killed(
    container_count: u64,
    killed_by_sigkill: bool,
    parent_baseline: u64,
    parent_count: u64,
) -> bool {
    container_count > 0 || (killed_by_sigkill && parent_count > parent_baseline)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_v1_oom_control() {
        let text = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(parse_oom_kill_count(text), 3);
    }

    #[test]
    fn parses_v2_memory_events_without_confusing_group_kills() {
        let text = "low 0\nhigh 0\nmax 12\noom 2\noom_group_kill 7\noom_kill 1\n";
        assert_eq!(parse_oom_kill_count(text), 1);
    }

    #[test]
    fn missing_line_or_garbage_counts_zero() {
        assert_eq!(parse_oom_kill_count("oom_kill_disable 0\nunder_oom 0\n"), 0);
        assert_eq!(parse_oom_kill_count(""), 0);
        assert_eq!(parse_oom_kill_count("oom_kill x\n"), 0);
    }

    #[test]
    fn counter_file_follows_the_hierarchy_layout() {
        let v1 = tempfile::tempdir().expect("tempdir");
        let counters = OomCounters::new(v1.path());
        assert_eq!(
            counters.counter_file(Path::new("/kubepods/pod1/c1")),
            v1.path().join("memory/kubepods/pod1/c1/memory.oom_control")
        );
        let dir = v1.path().join("memory/kubepods/pod1/c1");
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("memory.oom_control"), "under_oom 0\noom_kill 2\n").expect("write");
        assert_eq!(counters.oom_kill_count(Path::new("/kubepods/pod1/c1")), 2);
        assert_eq!(counters.oom_kill_count(Path::new("/missing")), 0);

        let v2 = tempfile::tempdir().expect("tempdir");
        std::fs::write(v2.path().join("cgroup.controllers"), "memory pids\n").expect("write");
        assert_eq!(
            OomCounters::new(v2.path()).counter_file(Path::new("/kubepods/pod1/c1")),
            v2.path().join("kubepods/pod1/c1/memory.events")
        );
    }

    #[test]
    fn verdict_uses_parent_only_for_sigkill() {
        assert!(was_oom_killed(1, false, 0, 0));
        assert!(was_oom_killed(0, true, 1, 2));
        assert!(!was_oom_killed(0, false, 1, 2));
        assert!(!was_oom_killed(0, true, 2, 2));
        assert_eq!(
            parent_cgroup(Path::new("/kubepods/pod1/c1")),
            Some(PathBuf::from("/kubepods/pod1"))
        );
        assert_eq!(parent_cgroup(Path::new("/c1")), None);
    }
}
