//! Killing everything an ExecSync started: at its timeout and when the client cancels.
//!
//! How the processes are found, and why this way. The runtime (`wharf-monitor oci exec`
//! or `runc exec`) is spawned by wharfd in a process group of its own (its pgid is its
//! pid). The exec'd process is the runtime's child, and both runtimes make it a session
//! leader (libcontainer's init and runc's nsexec call `setsid`), so its pid (from the
//! pid file, a host pid) is also its session and process group. What the command starts
//! stays in that session and group unless it calls setsid/setpgid itself, and stays a
//! descendant of it unless its parent exits first (orphans are reparented to the
//! container's PID 1, or the pod's holder in a shared PID namespace). So the processes
//! to kill are, from one scan of /proc:
//! - the members of the runtime's process group (the runtime and its helpers),
//! - the members of the exec'd process's session and process group (background
//!   children, orphaned or not, and job-control groups of a shell),
//! - and every descendant of any of these (children that left with setsid while their
//!   parent lives), and the members of a group or session that one of them leads.
//!
//! Only a process that both left the session and lost its parent escapes (a daemon that
//! double-forks and setsids on purpose); it is still killed with the container (it is
//! in the container's cgroup), and the timeout answers without waiting for the output
//! pipes it may hold. containerd kills only the exec'd process itself. A cgroup per exec would catch even that, but cgroup v2 forbids a
//! child cgroup with processes next to the container's own once controllers are
//! delegated, and neither runtime's exec takes one with libcontainer.
//!
//! Pid reuse: a process group or session id stays allocated while any member lives, so
//! the ids cannot name someone else's group while the exec's processes exist; and every
//! process started before the runtime was spawned is skipped, so a stale pid never names
//! an older process. The kill is repeated until a scan finds nothing alive (SIGKILL of a
//! whole group is atomic against fork; a child forked between a scan and its parent's
//! kill is found by the next scan).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// One process as /proc/<pid>/stat describes it.
#[derive(Debug, Clone, Copy)]
struct ProcStat {
    ppid: i32,
    pgrp: i32,
    session: i32,
    start_time: u64,
    zombie: bool,
}

fn proc_stat(pid: i32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// Parses `pid (comm) state ppid pgrp session ... starttime ...`; comm may hold spaces
/// and parentheses, so the fields are counted from the last `)`.
fn parse_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(ProcStat {
        zombie: matches!(*fields.first()?, "Z" | "X"),
        ppid: fields.get(1)?.parse().ok()?,
        pgrp: fields.get(2)?.parse().ok()?,
        session: fields.get(3)?.parse().ok()?,
        // Field 22 of stat; `fields` starts at field 3.
        start_time: fields.get(19)?.parse().ok()?,
    })
}

fn all_processes() -> HashMap<i32, ProcStat> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return HashMap::new();
    };
    dir.flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| Some((pid, proc_stat(pid)?)))
        .collect()
}

/// The processes of one exec: its runtime's pid (leader of its own process group) and
/// the pid file where the runtime writes the exec'd process's pid.
#[derive(Debug)]
pub struct ExecTree {
    runtime_pid: i32,
    /// The runtime's start time (clock ticks since boot): older processes are never ours.
    runtime_start: u64,
    pid_file: PathBuf,
}

impl ExecTree {
    /// `runtime_pid` must be a child of this process not yet waited for (so the pid is
    /// still the runtime's) and the leader of its own process group.
    pub fn new(runtime_pid: i32, pid_file: &Path) -> ExecTree {
        let runtime_start = proc_stat(runtime_pid).map_or(0, |s| s.start_time);
        ExecTree {
            runtime_pid,
            runtime_start,
            pid_file: pid_file.to_path_buf(),
        }
    }

    fn exec_pid(&self) -> Option<i32> {
        std::fs::read_to_string(&self.pid_file)
            .ok()?
            .trim()
            .parse()
            .ok()
            .filter(|pid: &i32| *pid > 1)
    }

    /// The live processes of this exec (see the module doc).
    fn members(&self, procs: &HashMap<i32, ProcStat>) -> HashSet<i32> {
        let exec_pid = self.exec_pid();
        let ours = |s: &ProcStat| s.start_time >= self.runtime_start;
        let mut found: HashSet<i32> = procs
            .iter()
            .filter(|(pid, s)| {
                ours(s)
                    && (**pid == self.runtime_pid
                        || s.pgrp == self.runtime_pid
                        || exec_pid.is_some_and(|e| **pid == e || s.pgrp == e || s.session == e))
            })
            .map(|(pid, _)| *pid)
            .collect();
        // Descendants, and the members of a group or session one of them leads (the
        // exec'd process is the runtime's child and a session leader, so it is found
        // even without the pid file), to a fixed point.
        loop {
            let before = found.len();
            for (pid, s) in procs {
                if ours(s)
                    && (found.contains(&s.ppid)
                        || found.contains(&s.pgrp)
                        || found.contains(&s.session))
                {
                    found.insert(*pid);
                }
            }
            if found.len() == before {
                break;
            }
        }
        found.retain(|pid| {
            *pid != std::process::id() as i32 && procs.get(pid).is_some_and(|s| !s.zombie)
        });
        found
    }

    /// SIGKILLs every process of the exec, until none is left alive (at most ~0.5 s).
    /// Returns how many distinct processes were signalled.
    pub fn kill(&self) -> usize {
        let mut killed = HashSet::new();
        let exec_pid = self.exec_pid();
        for round in 0..50 {
            let procs = all_processes();
            let members = self.members(&procs);
            if members.is_empty() {
                break;
            }
            // Whole groups first (atomic against a fork in progress), but only groups
            // known to be the exec's: its two, or one whose leader is a member.
            let groups: HashSet<i32> = members
                .iter()
                .filter_map(|pid| procs.get(pid).map(|s| s.pgrp))
                .filter(|g| *g == self.runtime_pid || Some(*g) == exec_pid || members.contains(g))
                .collect();
            for group in groups {
                let _ = nix::sys::signal::killpg(Pid::from_raw(group), Signal::SIGKILL);
            }
            for pid in &members {
                let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
                killed.insert(*pid);
            }
            if round > 0 {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        killed.len()
    }
}

/// Kills the exec's processes when dropped while armed: a handler future that tonic
/// drops (the client cancelled the call or its deadline passed) takes them with it.
#[derive(Debug)]
pub struct KillOnDrop {
    tree: Option<ExecTree>,
}

impl KillOnDrop {
    pub fn new(tree: ExecTree) -> KillOnDrop {
        KillOnDrop { tree: Some(tree) }
    }

    /// Kills the processes now; returns how many were signalled.
    pub fn kill_now(&mut self) -> usize {
        self.tree.take().map_or(0, |tree| tree.kill())
    }

    /// The exec ended normally: what it left running on purpose stays.
    pub fn disarm(&mut self) {
        self.tree = None;
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(tree) = self.tree.take() {
            let killed = tree.kill();
            tracing::info!(
                runtime_pid = tree.runtime_pid,
                killed,
                "exec abandoned by its caller: its processes were killed"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_comm() {
        let line = "4242 (a) b (c) S 7 4242 4242 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 \
                    987654 1 2 3";
        let s = parse_stat(line).expect("parses");
        assert_eq!((s.ppid, s.pgrp, s.session), (7, 4242, 4242));
        assert_eq!(s.start_time, 987654);
        assert!(!s.zombie);
        assert!(parse_stat("1 (x) Z 0").is_none());
    }
}
