//! Removes whatever pods and containers a test's wharfd left running: containers are
//! meant to outlive wharfd, so a test that fails half-way would otherwise leak
//! processes, mounts and cgroups. Runs after the daemon has stopped.

use std::path::Path;
use std::process::{Command, Stdio};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Kills monitors, container processes and pod PID holders found in `state`, deletes
/// the runtimes' container state, unmounts everything under `dir` and removes the test's
/// cgroup parent in every hierarchy.
pub fn cleanup_runtime(dir: &Path, state: &Path, cgroup_parent: &str) {
    let containers = state.join("containers");
    if let Ok(entries) = std::fs::read_dir(&containers) {
        for entry in entries.flatten() {
            let info = std::fs::read(entry.path().join("monitor.json"))
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
            if let Some(info) = info {
                for key in ["pid", "monitor_pid"] {
                    if let Some(pid) = info.get(key).and_then(|p| p.as_i64()) {
                        kill_pid(pid as i32);
                    }
                }
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir(state.join("pods")) {
        for entry in entries.flatten() {
            if let Some(pid) = std::fs::read_to_string(entry.path().join("pause.pid"))
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok())
            {
                kill_pid(pid);
            }
        }
    }
    if let Ok(handlers) = std::fs::read_dir(state.join("runtime")) {
        for handler in handlers.flatten() {
            let root = handler.path();
            let (program, prefix): (String, Vec<&str>) = match handler.file_name().to_str() {
                Some("builtin") => (env!("CARGO_BIN_EXE_wharf-monitor").to_string(), vec!["oci"]),
                Some("runc") => ("/usr/sbin/runc".to_string(), vec![]),
                Some("crun") => ("/usr/bin/crun".to_string(), vec![]),
                _ => continue,
            };
            if let Ok(ids) = std::fs::read_dir(&root) {
                for id in ids.flatten() {
                    let _ = Command::new(&program)
                        .args(&prefix)
                        .arg("--root")
                        .arg(&root)
                        .args(["delete", "--force"])
                        .arg(id.file_name())
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status();
                }
            }
        }
    }
    unmount_under(dir);
    remove_cgroup(cgroup_parent);
}

fn kill_pid(pid: i32) {
    if pid > 1 {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// Every mount point under `dir`, deepest first, detached.
pub fn unmount_under(dir: &Path) {
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<String> = mountinfo
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .map(|p| p.replace("\\040", " "))
        .filter(|p| Path::new(p).starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for point in points {
        let _ = nix::mount::umount2(point.as_str(), nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Removes `/sys/fs/cgroup/<hierarchy><parent>` (and what is below) in every hierarchy.
pub fn remove_cgroup(parent: &str) {
    let parent = parent.trim_start_matches('/');
    if parent.is_empty() {
        return;
    }
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    let mut roots: Vec<std::path::PathBuf> = hierarchies.flatten().map(|e| e.path()).collect();
    roots.push("/sys/fs/cgroup".into());
    for root in roots {
        remove_cgroup_tree(&root.join(parent));
    }
}

fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&entry.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}
