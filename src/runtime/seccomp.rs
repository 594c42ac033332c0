//! Seccomp profiles of containers: wharf's default profile (an allowlist written here as
//! Rust data, in the spirit of Docker's default), capability-dependent additions, and
//! `Localhost` profiles loaded from JSON files.
//!
//! The default profile denies with `EPERM` every syscall it does not name. Syscall names
//! that do not exist on an architecture of the filter are skipped by the runtimes (runc,
//! youki), so 32-bit names (`fcntl64`, ...) sit in the same list as 64-bit ones.
//!
//! Decisions:
//! - `ptrace` is allowed on kernels >= 4.8, as Docker does: from 4.8 the kernel re-checks
//!   seccomp after a tracer changes a syscall, so ptrace can no longer bypass the filter.
//!   `process_vm_*`, `kcmp` and `pidfd_getfd` still need CAP_SYS_PTRACE.
//! - `io_uring_*` are not allowed (as Docker since 25.0): io_uring runs operations the
//!   filter never sees.
//! - `clone3` returns `ENOSYS` (unless CAP_SYS_ADMIN), so libc falls back to `clone`,
//!   whose flags the filter can inspect; `clone` with any `CLONE_NEW*` flag is denied.

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::{
    Arch, Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompArgBuilder,
    LinuxSeccompOperator, LinuxSyscall,
};

/// errno values used by the profile.
const EPERM: u32 = 1;
const ENOSYS: u32 = 38;

/// `CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER |
/// CLONE_NEWPID | CLONE_NEWNET`: the flags that create namespaces.
pub const CLONE_NAMESPACE_FLAGS: u64 =
    0x0002_0000 | 0x0200_0000 | 0x0400_0000 | 0x0800_0000 | 0x1000_0000 | 0x2000_0000 | 0x4000_0000;

/// Personalities a container may switch to: Linux, Linux32, UNAME26 variants, and the
/// 0xffffffff query.
const SAFE_PERSONAS: &[u64] = &[0x0, 0x8, 0x2_0000, 0x2_0008, 0xffff_ffff];

/// Syscalls allowed to every container, grouped by what they serve.
const ALLOWED: &[&[&str]] = &[
    // files: data
    &[
        "read",
        "write",
        "readv",
        "writev",
        "pread64",
        "pwrite64",
        "preadv",
        "pwritev",
        "preadv2",
        "pwritev2",
        "open",
        "openat",
        "openat2",
        "creat",
        "close",
        "close_range",
        "lseek",
        "_llseek",
        "dup",
        "dup2",
        "dup3",
        "fcntl",
        "fcntl64",
        "flock",
        "fsync",
        "fdatasync",
        "sync",
        "syncfs",
        "sync_file_range",
        "truncate",
        "truncate64",
        "ftruncate",
        "ftruncate64",
        "fallocate",
        "fadvise64",
        "fadvise64_64",
        "readahead",
        "sendfile",
        "sendfile64",
        "splice",
        "tee",
        "vmsplice",
        "copy_file_range",
        "ioctl",
        "pipe",
        "pipe2",
    ],
    // files: metadata and directories
    &[
        "stat",
        "stat64",
        "lstat",
        "lstat64",
        "fstat",
        "fstat64",
        "fstatat64",
        "newfstatat",
        "statx",
        "statfs",
        "statfs64",
        "fstatfs",
        "fstatfs64",
        "access",
        "faccessat",
        "faccessat2",
        "chmod",
        "fchmod",
        "fchmodat",
        "fchmodat2",
        "chown",
        "chown32",
        "fchown",
        "fchown32",
        "fchownat",
        "lchown",
        "lchown32",
        "utime",
        "utimes",
        "utimensat",
        "utimensat_time64",
        "futimesat",
        "getdents",
        "getdents64",
        "readdir",
        "readlink",
        "readlinkat",
        "link",
        "linkat",
        "symlink",
        "symlinkat",
        "unlink",
        "unlinkat",
        "rename",
        "renameat",
        "renameat2",
        "mkdir",
        "mkdirat",
        "rmdir",
        "mknod",
        "mknodat",
        "chdir",
        "fchdir",
        "getcwd",
        "umask",
        "getxattr",
        "lgetxattr",
        "fgetxattr",
        "setxattr",
        "lsetxattr",
        "fsetxattr",
        "listxattr",
        "llistxattr",
        "flistxattr",
        "removexattr",
        "lremovexattr",
        "fremovexattr",
        "getxattrat",
        "setxattrat",
        "listxattrat",
        "removexattrat",
        "inotify_init",
        "inotify_init1",
        "inotify_add_watch",
        "inotify_rm_watch",
        "fanotify_mark",
    ],
    // memory
    &[
        "brk",
        "mmap",
        "mmap2",
        "munmap",
        "mremap",
        "mprotect",
        "pkey_mprotect",
        "pkey_alloc",
        "pkey_free",
        "madvise",
        "mlock",
        "mlock2",
        "munlock",
        "mlockall",
        "munlockall",
        "mincore",
        "msync",
        "remap_file_pages",
        "memfd_create",
        "memfd_secret",
        "membarrier",
        "map_shadow_stack",
        "cachestat",
        "mseal",
        "process_mrelease",
    ],
    // processes, credentials, scheduling
    &[
        "fork",
        "vfork",
        "execve",
        "execveat",
        "exit",
        "exit_group",
        "wait4",
        "waitid",
        "waitpid",
        "kill",
        "tkill",
        "tgkill",
        "rt_sigqueueinfo",
        "rt_tgsigqueueinfo",
        "getpid",
        "getppid",
        "gettid",
        "getpgid",
        "setpgid",
        "getpgrp",
        "getsid",
        "setsid",
        "getuid",
        "getuid32",
        "geteuid",
        "geteuid32",
        "getgid",
        "getgid32",
        "getegid",
        "getegid32",
        "setuid",
        "setuid32",
        "setgid",
        "setgid32",
        "setreuid",
        "setreuid32",
        "setregid",
        "setregid32",
        "setresuid",
        "setresuid32",
        "setresgid",
        "setresgid32",
        "getresuid",
        "getresuid32",
        "getresgid",
        "getresgid32",
        "getgroups",
        "getgroups32",
        "setgroups",
        "setgroups32",
        "setfsuid",
        "setfsuid32",
        "setfsgid",
        "setfsgid32",
        "capget",
        "capset",
        "prctl",
        "getpriority",
        "setpriority",
        "sched_yield",
        "sched_getaffinity",
        "sched_setaffinity",
        "sched_getparam",
        "sched_setparam",
        "sched_getscheduler",
        "sched_setscheduler",
        "sched_get_priority_max",
        "sched_get_priority_min",
        "sched_rr_get_interval",
        "sched_rr_get_interval_time64",
        "sched_getattr",
        "sched_setattr",
        "getrlimit",
        "setrlimit",
        "ugetrlimit",
        "prlimit64",
        "getrusage",
        "times",
        "set_tid_address",
        "set_robust_list",
        "get_robust_list",
        "rseq",
        "restart_syscall",
        "pidfd_open",
        "pidfd_send_signal",
        "ioprio_get",
        "ioprio_set",
        "nice",
        "uname",
        "olduname",
        "oldolduname",
        "sysinfo",
        "getrandom",
        "getcpu",
        "seccomp",
        "landlock_create_ruleset",
        "landlock_add_rule",
        "landlock_restrict_self",
    ],
    // signals
    &[
        "rt_sigaction",
        "rt_sigprocmask",
        "rt_sigreturn",
        "rt_sigsuspend",
        "rt_sigpending",
        "rt_sigtimedwait",
        "rt_sigtimedwait_time64",
        "sigaction",
        "sigprocmask",
        "sigreturn",
        "sigsuspend",
        "sigpending",
        "sigaltstack",
        "signal",
        "signalfd",
        "signalfd4",
        "pause",
        "alarm",
    ],
    // time and timers (adjtimex only reads without CAP_SYS_TIME)
    &[
        "time",
        "gettimeofday",
        "clock_gettime",
        "clock_gettime64",
        "clock_getres",
        "clock_getres_time64",
        "clock_nanosleep",
        "clock_nanosleep_time64",
        "nanosleep",
        "adjtimex",
        "getitimer",
        "setitimer",
        "timer_create",
        "timer_delete",
        "timer_settime",
        "timer_settime64",
        "timer_gettime",
        "timer_gettime64",
        "timer_getoverrun",
        "timerfd_create",
        "timerfd_settime",
        "timerfd_settime64",
        "timerfd_gettime",
        "timerfd_gettime64",
    ],
    // waiting: poll, epoll, futex, eventfd, aio
    &[
        "select",
        "_newselect",
        "pselect6",
        "pselect6_time64",
        "poll",
        "ppoll",
        "ppoll_time64",
        "epoll_create",
        "epoll_create1",
        "epoll_ctl",
        "epoll_ctl_old",
        "epoll_wait",
        "epoll_wait_old",
        "epoll_pwait",
        "epoll_pwait2",
        "eventfd",
        "eventfd2",
        "futex",
        "futex_time64",
        "futex_waitv",
        "futex_wake",
        "futex_wait",
        "futex_requeue",
        "io_setup",
        "io_destroy",
        "io_submit",
        "io_cancel",
        "io_getevents",
        "io_pgetevents",
        "io_pgetevents_time64",
    ],
    // sockets
    &[
        "socket",
        "socketpair",
        "socketcall",
        "bind",
        "connect",
        "listen",
        "accept",
        "accept4",
        "getsockname",
        "getpeername",
        "getsockopt",
        "setsockopt",
        "sendto",
        "recvfrom",
        "sendmsg",
        "recvmsg",
        "sendmmsg",
        "recvmmsg",
        "recvmmsg_time64",
        "send",
        "recv",
        "shutdown",
    ],
    // System V and POSIX IPC
    &[
        "shmget",
        "shmat",
        "shmdt",
        "shmctl",
        "msgget",
        "msgsnd",
        "msgrcv",
        "msgctl",
        "semget",
        "semop",
        "semtimedop",
        "semtimedop_time64",
        "semctl",
        "ipc",
        "mq_open",
        "mq_unlink",
        "mq_timedsend",
        "mq_timedsend_time64",
        "mq_timedreceive",
        "mq_timedreceive_time64",
        "mq_notify",
        "mq_getsetattr",
    ],
];

/// Syscalls only x86 (64 and 32 bit) has.
const ALLOWED_X86: &[&str] = &[
    "arch_prctl",
    "modify_ldt",
    "set_thread_area",
    "get_thread_area",
    "uretprobe",
];

/// Syscalls only arm (64 and 32 bit) has.
const ALLOWED_ARM: &[&str] = &[
    "arm_fadvise64_64",
    "arm_sync_file_range",
    "sync_file_range2",
    "breakpoint",
    "cacheflush",
    "set_tls",
];

/// Syscalls a capability unlocks (as Docker's profile does for the same capabilities).
const BY_CAPABILITY: &[(Capability, &[&str])] = &[
    (
        Capability::SysAdmin,
        &[
            "bpf",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "name_to_handle_at",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    (Capability::SysBoot, &["reboot"]),
    (Capability::SysChroot, &["chroot"]),
    (
        Capability::SysModule,
        &["delete_module", "init_module", "finit_module"],
    ),
    (Capability::SysPacct, &["acct"]),
    (
        Capability::SysPtrace,
        &[
            "kcmp",
            "pidfd_getfd",
            "process_madvise",
            "process_vm_readv",
            "process_vm_writev",
            "ptrace",
        ],
    ),
    (Capability::SysRawio, &["iopl", "ioperm"]),
    (
        Capability::SysTime,
        &[
            "settimeofday",
            "stime",
            "clock_settime",
            "clock_settime64",
            "clock_adjtime",
            "clock_adjtime64",
        ],
    ),
    (Capability::SysTtyConfig, &["vhangup"]),
    (
        Capability::SysNice,
        &[
            "get_mempolicy",
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node",
        ],
    ),
    (Capability::Syslog, &["syslog"]),
    (Capability::Bpf, &["bpf"]),
    (Capability::Perfmon, &["perf_event_open"]),
    (Capability::DacReadSearch, &["open_by_handle_at"]),
];

/// The machine architecture wharf runs on, as Rust names it (`x86_64`, `aarch64`, ...).
pub fn host_arch() -> &'static str {
    std::env::consts::ARCH
}

/// The running kernel's (major, minor) version, from /proc/sys/kernel/osrelease.
pub fn host_kernel() -> Option<(u32, u32)> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    parse_kernel(&release)
}

fn parse_kernel(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.trim().split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// The seccomp architectures a filter for `arch` covers (the native one and the ABIs
/// its kernel also runs).
pub fn architectures(arch: &str) -> Vec<Arch> {
    match arch {
        "x86_64" => vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32],
        "x86" => vec![Arch::ScmpArchX86],
        "aarch64" => vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm],
        "arm" => vec![Arch::ScmpArchArm],
        "riscv64" => vec![Arch::ScmpArchRiscv64],
        "s390x" => vec![Arch::ScmpArchS390x, Arch::ScmpArchS390],
        "powerpc64" => vec![Arch::ScmpArchPpc64le],
        _ => Vec::new(),
    }
}

fn allow(names: Vec<String>) -> LinuxSyscall {
    let mut rule = LinuxSyscall::default();
    rule.set_names(names);
    rule.set_action(LinuxSeccompAction::ScmpActAllow);
    rule
}

fn arg(
    index: usize,
    value: u64,
    value_two: Option<u64>,
    op: LinuxSeccompOperator,
) -> LinuxSeccompArg {
    let mut b = LinuxSeccompArgBuilder::default()
        .index(index)
        .value(value)
        .op(op);
    if let Some(two) = value_two {
        b = b.value_two(two);
    }
    // Every field has a default, so building cannot fail.
    b.build().expect("LinuxSeccompArg fields all have defaults")
}

/// wharf's default profile for the host (architecture and kernel), given the container's
/// final capability set.
pub fn default_profile(caps: &HashSet<Capability>) -> LinuxSeccomp {
    default_profile_for(host_arch(), host_kernel(), caps)
}

/// wharf's default profile for architecture `arch` (Rust's name), kernel version
/// `kernel` (None = unknown: treated as old) and capability set `caps`.
pub fn default_profile_for(
    arch: &str,
    kernel: Option<(u32, u32)>,
    caps: &HashSet<Capability>,
) -> LinuxSeccomp {
    let mut names: Vec<String> = ALLOWED
        .iter()
        .flat_map(|group| group.iter())
        .map(|s| s.to_string())
        .collect();
    match arch {
        "x86_64" | "x86" => names.extend(ALLOWED_X86.iter().map(|s| s.to_string())),
        "aarch64" | "arm" => names.extend(ALLOWED_ARM.iter().map(|s| s.to_string())),
        _ => {}
    }
    if kernel.is_some_and(|k| k >= (4, 8)) {
        names.push("ptrace".to_string());
    }
    for (cap, extra) in BY_CAPABILITY {
        if caps.contains(cap) {
            names.extend(extra.iter().map(|s| s.to_string()));
        }
    }
    let mut seen = HashSet::new();
    names.retain(|n| seen.insert(n.clone()));

    let mut rules = vec![allow(names.clone())];
    let sys_admin = caps.contains(&Capability::SysAdmin);
    if sys_admin {
        rules.push(allow(vec!["clone".to_string()]));
    } else {
        // clone: flags are argument 0 (argument 1 on s390), allowed without CLONE_NEW*.
        let index = if arch.starts_with("s390") { 1 } else { 0 };
        let mut rule = allow(vec!["clone".to_string()]);
        rule.set_args(Some(vec![arg(
            index,
            CLONE_NAMESPACE_FLAGS,
            Some(0),
            LinuxSeccompOperator::ScmpCmpMaskedEq,
        )]));
        rules.push(rule);
        let mut clone3 = LinuxSyscall::default();
        clone3.set_names(vec!["clone3".to_string()]);
        clone3.set_action(LinuxSeccompAction::ScmpActErrno);
        clone3.set_errno_ret(Some(ENOSYS));
        rules.push(clone3);
    }
    for persona in SAFE_PERSONAS {
        let mut rule = allow(vec!["personality".to_string()]);
        rule.set_args(Some(vec![arg(
            0,
            *persona,
            None,
            LinuxSeccompOperator::ScmpCmpEq,
        )]));
        rules.push(rule);
    }

    let mut profile = LinuxSeccomp::default();
    profile.set_default_action(LinuxSeccompAction::ScmpActErrno);
    profile.set_default_errno_ret(Some(EPERM));
    profile.set_architectures(Some(architectures(arch)));
    profile.set_syscalls(Some(rules));
    profile
}

/// What a profile does with syscall `name` called with `args`, following the rules in
/// order (first match wins; a rule with several argument conditions needs all of them).
/// For tests and diagnostics: the kernel filter is built by the OCI runtime.
pub fn evaluate(
    profile: &LinuxSeccomp,
    name: &str,
    args: &[u64],
) -> (LinuxSeccompAction, Option<u32>) {
    for rule in profile.syscalls().iter().flatten() {
        if !rule.names().iter().any(|n| n == name) {
            continue;
        }
        let matches = rule.args().iter().flatten().all(|c| {
            let v = args.get(c.index()).copied().unwrap_or(0);
            match c.op() {
                LinuxSeccompOperator::ScmpCmpNe => v != c.value(),
                LinuxSeccompOperator::ScmpCmpLt => v < c.value(),
                LinuxSeccompOperator::ScmpCmpLe => v <= c.value(),
                LinuxSeccompOperator::ScmpCmpEq => v == c.value(),
                LinuxSeccompOperator::ScmpCmpGe => v >= c.value(),
                LinuxSeccompOperator::ScmpCmpGt => v > c.value(),
                LinuxSeccompOperator::ScmpCmpMaskedEq => {
                    v & c.value() == c.value_two().unwrap_or(0)
                }
            }
        });
        if matches {
            return (rule.action(), rule.errno_ret());
        }
    }
    (profile.default_action(), profile.default_errno_ret())
}

/// Why a seccomp profile could not be used. Each names the profile file.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("seccomp profile {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("seccomp profile {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Profile files larger than this are refused.
const MAX_PROFILE_BYTES: u64 = 8 << 20;

/// The file a `Localhost` reference names: an absolute path as kubelet passes it, or a
/// path relative to `root`. Paths with `..` are refused.
pub fn localhost_path(reference: &str, root: &Path) -> Result<PathBuf, SeccompError> {
    let reference = reference.strip_prefix("localhost/").unwrap_or(reference);
    let p = Path::new(reference);
    let invalid = |reason: &str| SeccompError::Invalid {
        path: p.to_path_buf(),
        reason: reason.to_string(),
    };
    if reference.is_empty() {
        return Err(invalid("empty localhost_ref"));
    }
    if p.components().any(|c| c == Component::ParentDir) {
        return Err(invalid("path must not contain '..'"));
    }
    Ok(if p.is_absolute() {
        p.to_path_buf()
    } else {
        root.join(p)
    })
}

/// Loads a `Localhost` profile file. OCI-format profiles are read as they are; the
/// Docker format's extras are understood too: `archMap` (the native architecture's
/// entry with its sub-architectures), `name` for `names`, and `includes` / `excludes`
/// by capabilities, architectures and minimum kernel, judged against `caps`.
pub fn load_profile(
    path: &Path,
    arch: &str,
    kernel: Option<(u32, u32)>,
    caps: &HashSet<Capability>,
) -> Result<LinuxSeccomp, SeccompError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    // O_NONBLOCK: opening a FIFO must not wait for a writer (it would hang the create
    // forever); anything but a regular file is then refused before it is read.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)
        .map_err(|source| SeccompError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    let file_type = file
        .metadata()
        .map_err(|source| SeccompError::Read {
            path: path.to_path_buf(),
            source,
        })?
        .file_type();
    if !file_type.is_file() {
        return Err(SeccompError::Invalid {
            path: path.to_path_buf(),
            reason: "not a regular file".into(),
        });
    }
    let mut bytes = Vec::new();
    file.take(MAX_PROFILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| SeccompError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    let invalid = |reason: String| SeccompError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    if bytes.len() as u64 > MAX_PROFILE_BYTES {
        return Err(invalid(format!("larger than {MAX_PROFILE_BYTES} bytes")));
    }
    let mut value: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| invalid(format!("not JSON: {e}")))?;
    normalize_docker_format(&mut value, arch, kernel, caps);
    let profile: LinuxSeccomp = serde_json::from_value(value)
        .map_err(|e| invalid(format!("not a seccomp profile: {e}")))?;
    Ok(profile)
}

/// Go's names of `arch` (as Docker profiles' `includes.arches` use them).
fn go_arch(arch: &str) -> &'static [&'static str] {
    match arch {
        "x86_64" => &["amd64", "x32", "386"],
        "x86" => &["386"],
        "aarch64" => &["arm64", "arm"],
        "arm" => &["arm"],
        "riscv64" => &["riscv64"],
        "s390x" => &["s390x", "s390"],
        "powerpc64" => &["ppc64le"],
        _ => &[],
    }
}

fn normalize_docker_format(
    value: &mut serde_json::Value,
    arch: &str,
    kernel: Option<(u32, u32)>,
    caps: &HashSet<Capability>,
) {
    use serde_json::Value;
    let Some(obj) = value.as_object_mut() else {
        return;
    };
    if let Some(Value::Array(map)) = obj.remove("archMap") {
        if !obj.contains_key("architectures") {
            let native: Vec<String> = architectures(arch)
                .iter()
                .filter_map(|a| serde_json::to_value(a).ok())
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect();
            let mut arches: Vec<Value> = Vec::new();
            for entry in &map {
                let main = entry.get("architecture").and_then(Value::as_str);
                if main.is_some_and(|m| native.first().is_some_and(|n| n == m)) {
                    arches.push(Value::String(main.unwrap_or_default().to_string()));
                    if let Some(Value::Array(subs)) = entry.get("subArchitectures") {
                        arches.extend(subs.iter().cloned());
                    }
                }
            }
            obj.insert("architectures".into(), Value::Array(arches));
        }
    }
    let Some(Value::Array(rules)) = obj.get_mut("syscalls") else {
        return;
    };
    let cap_names: HashSet<String> = caps.iter().map(|c| super::caps::name(*c)).collect();
    let my_arches = go_arch(arch);
    let kernel_ok = |v: &Value| -> bool {
        match v.as_str().and_then(parse_kernel) {
            Some(min) => kernel.is_some_and(|k| k >= min),
            None => true,
        }
    };
    rules.retain_mut(|rule| {
        let Some(r) = rule.as_object_mut() else {
            return true;
        };
        if let Some(name) = r.remove("name") {
            if !r.contains_key("names") {
                r.insert("names".into(), Value::Array(vec![name]));
            }
        }
        r.remove("comment");
        let strs = |v: Option<&Value>| -> Vec<String> {
            v.and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut keep = true;
        if let Some(inc) = r.remove("includes") {
            let need_caps = strs(inc.get("caps"));
            let need_arches = strs(inc.get("arches"));
            keep &= need_caps.iter().all(|c| cap_names.contains(c));
            keep &= need_arches.is_empty()
                || need_arches.iter().any(|a| my_arches.contains(&a.as_str()));
            keep &= inc.get("minKernel").is_none_or(kernel_ok);
        }
        if let Some(exc) = r.remove("excludes") {
            keep &= !strs(exc.get("caps")).iter().any(|c| cap_names.contains(c));
            keep &= !strs(exc.get("arches"))
                .iter()
                .any(|a| my_arches.contains(&a.as_str()));
            keep &= exc.get("minKernel").is_none_or(|v| !kernel_ok(v));
        }
        keep
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::caps;

    fn default_caps() -> HashSet<Capability> {
        caps::compute(false, &[], &[], &caps::from_mask(u64::MAX)).unwrap()
    }

    fn allowed(p: &LinuxSeccomp, name: &str, args: &[u64]) -> bool {
        evaluate(p, name, args).0 == LinuxSeccompAction::ScmpActAllow
    }

    const FORBIDDEN: &[&str] = &[
        "acct",
        "add_key",
        "bpf",
        "clock_adjtime",
        "clock_settime",
        "create_module",
        "delete_module",
        "finit_module",
        "init_module",
        "get_kernel_syms",
        "kexec_load",
        "kexec_file_load",
        "keyctl",
        "lookup_dcookie",
        "mount",
        "umount2",
        "umount",
        "pivot_root",
        "move_pages",
        "mbind",
        "set_mempolicy",
        "name_to_handle_at",
        "open_by_handle_at",
        "perf_event_open",
        "quotactl",
        "reboot",
        "request_key",
        "setns",
        "unshare",
        "swapon",
        "swapoff",
        "sysfs",
        "_sysctl",
        "settimeofday",
        "stime",
        "uselib",
        "userfaultfd",
        "ustat",
        "vm86",
        "vm86old",
        "iopl",
        "ioperm",
        "io_uring_setup",
        "fsopen",
        "open_tree",
    ];

    #[test]
    fn default_denies_dangerous_syscalls() {
        let p = default_profile_for("x86_64", Some((6, 8)), &default_caps());
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(p.default_errno_ret(), Some(EPERM));
        for name in FORBIDDEN {
            assert!(!allowed(&p, name, &[]), "{name} must be denied");
        }
        assert_eq!(
            evaluate(&p, "mount", &[]),
            (LinuxSeccompAction::ScmpActErrno, Some(EPERM))
        );
    }

    #[test]
    fn default_allows_ordinary_syscalls() {
        let p = default_profile_for("x86_64", Some((6, 8)), &default_caps());
        for name in [
            "read",
            "write",
            "openat",
            "mmap",
            "futex",
            "epoll_wait",
            "socket",
            "execve",
            "chroot",
            "arch_prctl",
        ] {
            assert!(allowed(&p, name, &[]), "{name} must be allowed");
        }
        let names: usize = p.syscalls().iter().flatten().map(|r| r.names().len()).sum();
        assert!(names > 300, "only {names} syscalls named");
        assert_eq!(
            p.architectures().clone().unwrap(),
            vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]
        );
    }

    #[test]
    fn clone_namespace_flags_and_clone3() {
        let p = default_profile_for("x86_64", Some((6, 8)), &default_caps());
        // fork-like clone (SIGCHLD | CLONE_CHILD_SETTID | CLONE_CHILD_CLEARTID)
        assert!(allowed(&p, "clone", &[0x0120_0011]));
        // a thread
        assert!(allowed(&p, "clone", &[0x003d_0f00]));
        assert!(!allowed(&p, "clone", &[0x1000_0000 | 0x11])); // CLONE_NEWUSER
        assert!(!allowed(&p, "clone", &[0x2000_0000])); // CLONE_NEWPID
        assert_eq!(
            evaluate(&p, "clone3", &[]),
            (LinuxSeccompAction::ScmpActErrno, Some(ENOSYS))
        );
    }

    #[test]
    fn personality_and_ptrace() {
        let p = default_profile_for("x86_64", Some((6, 8)), &default_caps());
        assert!(allowed(&p, "personality", &[0x8]));
        assert!(allowed(&p, "personality", &[0xffff_ffff]));
        assert!(!allowed(&p, "personality", &[0x0040_0000])); // READ_IMPLIES_EXEC
        assert!(allowed(&p, "ptrace", &[]));
        assert!(!allowed(&p, "process_vm_readv", &[]));
        let old = default_profile_for("x86_64", Some((4, 4)), &default_caps());
        assert!(!allowed(&old, "ptrace", &[]));
    }

    #[test]
    fn capabilities_unlock_syscalls() {
        let mut set = default_caps();
        set.insert(Capability::SysAdmin);
        let p = default_profile_for("x86_64", Some((6, 8)), &set);
        for name in ["mount", "umount2", "setns", "unshare", "clone3"] {
            assert!(allowed(&p, name, &[]), "{name} with CAP_SYS_ADMIN");
        }
        assert!(allowed(&p, "clone", &[0x1000_0000]));
        assert!(!allowed(&p, "kexec_load", &[]));

        let mut set = default_caps();
        set.insert(Capability::SysTime);
        set.insert(Capability::SysModule);
        let p = default_profile_for("x86_64", Some((6, 8)), &set);
        assert!(allowed(&p, "settimeofday", &[]));
        assert!(allowed(&p, "init_module", &[]));
        assert!(!allowed(&p, "mount", &[]));

        let mut set = default_caps();
        set.remove(&Capability::SysChroot);
        let p = default_profile_for("x86_64", Some((6, 8)), &set);
        assert!(!allowed(&p, "chroot", &[]));
    }

    #[test]
    fn arm_architectures() {
        let p = default_profile_for("aarch64", Some((6, 1)), &default_caps());
        assert_eq!(
            p.architectures().clone().unwrap(),
            vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm]
        );
        assert!(allowed(&p, "set_tls", &[]));
        assert!(!allowed(&p, "arch_prctl", &[]));
    }

    #[test]
    fn kernel_version_parsing() {
        assert_eq!(parse_kernel("6.8.0-41-generic\n"), Some((6, 8)));
        assert_eq!(parse_kernel("4.19.0"), Some((4, 19)));
        assert_eq!(parse_kernel("junk"), None);
    }

    #[test]
    fn localhost_paths() {
        let root = Path::new("/var/lib/kubelet/seccomp");
        assert_eq!(
            localhost_path("profiles/a.json", root).unwrap(),
            root.join("profiles/a.json")
        );
        assert_eq!(
            localhost_path("/etc/p.json", root).unwrap(),
            PathBuf::from("/etc/p.json")
        );
        assert_eq!(
            localhost_path("localhost/p.json", root).unwrap(),
            root.join("p.json")
        );
        assert!(localhost_path("../x.json", root).is_err());
        assert!(localhost_path("", root).is_err());
    }

    #[test]
    fn load_oci_and_docker_profiles() {
        let dir = tempfile::tempdir().unwrap();
        let oci = dir.path().join("oci.json");
        std::fs::write(
            &oci,
            r#"{"defaultAction":"SCMP_ACT_ERRNO","architectures":["SCMP_ARCH_X86_64"],
                "syscalls":[{"names":["read","write"],"action":"SCMP_ACT_ALLOW"}]}"#,
        )
        .unwrap();
        let p = load_profile(&oci, "x86_64", Some((6, 8)), &default_caps()).unwrap();
        assert!(allowed(&p, "read", &[]));
        assert!(!allowed(&p, "open", &[]));

        let docker = dir.path().join("docker.json");
        std::fs::write(
            &docker,
            r#"{"defaultAction":"SCMP_ACT_ERRNO",
                "archMap":[{"architecture":"SCMP_ARCH_X86_64","subArchitectures":["SCMP_ARCH_X86"]},
                           {"architecture":"SCMP_ARCH_AARCH64","subArchitectures":["SCMP_ARCH_ARM"]}],
                "syscalls":[
                  {"name":"read","action":"SCMP_ACT_ALLOW","comment":"x"},
                  {"names":["mount"],"action":"SCMP_ACT_ALLOW","includes":{"caps":["CAP_SYS_ADMIN"]}},
                  {"names":["getpid"],"action":"SCMP_ACT_ALLOW","excludes":{"caps":["CAP_CHOWN"]}},
                  {"names":["arch_prctl"],"action":"SCMP_ACT_ALLOW","includes":{"arches":["amd64"]}}
                ]}"#,
        )
        .unwrap();
        let p = load_profile(&docker, "x86_64", Some((6, 8)), &default_caps()).unwrap();
        assert_eq!(
            p.architectures().clone().unwrap(),
            vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86]
        );
        assert!(allowed(&p, "read", &[]));
        assert!(!allowed(&p, "mount", &[]));
        assert!(!allowed(&p, "getpid", &[]));
        assert!(allowed(&p, "arch_prctl", &[]));
    }

    #[test]
    fn load_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.json");
        let err = load_profile(&missing, "x86_64", None, &default_caps()).unwrap_err();
        assert!(err.to_string().contains("missing.json"), "{err}");
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, "{\"defaultAction\": 5}").unwrap();
        let err = load_profile(&bad, "x86_64", None, &default_caps()).unwrap_err();
        assert!(err.to_string().contains("bad.json"), "{err}");
    }
}
