//! Privilege (issue 24): the daemon's sockets refuse a user who is not root, and a
//! Docker container gets Docker's defaults: its default capability set (none with
//! `--cap-drop ALL`), no_new_privs with `--security-opt no-new-privileges`, the
//! default seccomp filter (none when `--privileged`), masked and read-only /proc and
//! /sys paths, and nothing of the daemon's sockets or state.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use support::docker::DockerEnv;

/// Docker's default capabilities (moby's `DefaultCapabilities`: CHOWN, DAC_OVERRIDE,
/// FSETID, FOWNER, MKNOD, NET_RAW, SETGID, SETUID, SETFCAP, SETPCAP,
/// NET_BIND_SERVICE, SYS_CHROOT, KILL, AUDIT_WRITE), as /proc/PID/status prints them.
const DOCKER_DEFAULT_CAPS: &str = "00000000a80425fb";

/// What `nobody` (uid and gid 65534, no groups) gets from stat() then connect() on a
/// UNIX socket: the errno of each (0: it worked). A forked child does the calls, so
/// the test process keeps its ids.
fn as_nobody(path: &Path) -> (i32, i32) {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    use nix::unistd::{fork, setgid, setgroups, setuid, ForkResult, Gid, Uid};
    let address = UnixAddr::new(path).expect("socket path");
    let path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: the child calls only async-signal-safe system calls, then _exit.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            let code = (|| -> i32 {
                if setgroups(&[]).is_err()
                    || setgid(Gid::from_raw(65534)).is_err()
                    || setuid(Uid::from_raw(65534)).is_err()
                {
                    return 99;
                }
                // SAFETY: a stat buffer on the stack for one call.
                let mut buf: nix::libc::stat = unsafe { std::mem::zeroed() };
                let stat = unsafe { nix::libc::stat(path.as_ptr(), &mut buf) };
                let stat_errno = if stat == 0 {
                    0
                } else {
                    nix::errno::Errno::last_raw()
                };
                let connect_errno = match socket(
                    AddressFamily::Unix,
                    SockType::Stream,
                    SockFlag::empty(),
                    None,
                ) {
                    Ok(fd) => match connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &address) {
                        Ok(()) => 0,
                        Err(errno) => errno as i32,
                    },
                    Err(_) => 98,
                };
                stat_errno * 256 + connect_errno
            })();
            // SAFETY: leave without running the test harness's destructors.
            unsafe { nix::libc::_exit(code.min(255 * 256)) }
        }
        ForkResult::Parent { child } => {
            let status = nix::sys::wait::waitpid(child, None).expect("waitpid");
            let nix::sys::wait::WaitStatus::Exited(_, code) = status else {
                panic!("the child did not exit: {status:?}");
            };
            // The exit code holds 8 bits: stat's errno is only told apart as 0 or not.
            assert_ne!(code, 99, "cannot become nobody");
            ((code >> 8) & 0xff, code & 0xff)
        }
    }
}

/// Makes the directories above `path`, up to `/`, traversable by others (the test's
/// temporary dirs are 0700), so that what a refusal shows is the socket's own mode.
fn open_the_way_to(path: &Path) -> Vec<(PathBuf, u32)> {
    let mut changed = Vec::new();
    for dir in path.ancestors().skip(1) {
        let Ok(meta) = std::fs::metadata(dir) else {
            continue;
        };
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o001 == 0 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o001))
                .expect("chmod o+x");
            changed.push((dir.to_path_buf(), mode));
        }
    }
    changed
}

#[tokio::test]
async fn sockets_refuse_a_user_who_is_not_root() {
    let docker = DockerEnv::start().await;
    for socket in [docker.socket(), docker.env.daemon.paths.cri_socket.clone()] {
        let changed = open_the_way_to(&socket);
        let (stat, connect) = as_nobody(&socket);
        for (dir, mode) in changed {
            let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode));
        }
        assert_eq!(stat, 0, "nobody cannot even see {}", socket.display());
        assert_eq!(
            connect,
            nix::libc::EACCES,
            "nobody's connect to {}",
            socket.display()
        );
    }
    // Root connects (the control).
    assert_eq!(
        docker.ok(&["version", "--format", "{{.Server.Os}}"]),
        "linux"
    );
}

/// `grep`'s lines of /proc/self/status in a container run with `args`.
fn status_lines(docker: &DockerEnv, args: &[&str]) -> Vec<String> {
    let mut command = vec!["run", "--rm"];
    command.extend_from_slice(args);
    command.extend_from_slice(&[
        docker.image.as_str(),
        "grep",
        "-E",
        "^(CapEff|CapBnd|NoNewPrivs|Seccomp):",
        "/proc/self/status",
    ]);
    docker
        .ok(&command)
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

#[tokio::test]
async fn containers_get_dockers_capabilities_seccomp_and_masks() {
    let docker = DockerEnv::start_pulled().await;
    let image = docker.image.clone();

    let default = status_lines(&docker, &[]);
    assert!(
        default.contains(&format!("CapEff: {DOCKER_DEFAULT_CAPS}")),
        "{default:?}"
    );
    assert!(
        default.contains(&format!("CapBnd: {DOCKER_DEFAULT_CAPS}")),
        "{default:?}"
    );
    assert!(
        default.contains(&"NoNewPrivs: 0".to_string()),
        "{default:?}"
    );
    assert!(default.contains(&"Seccomp: 2".to_string()), "{default:?}");

    let none = status_lines(&docker, &["--cap-drop", "ALL"]);
    assert!(
        none.contains(&"CapEff: 0000000000000000".to_string()),
        "{none:?}"
    );
    let added = status_lines(&docker, &["--cap-add", "NET_ADMIN"]);
    // NET_ADMIN is bit 12.
    let expected = u64::from_str_radix(DOCKER_DEFAULT_CAPS, 16).unwrap() | (1 << 12);
    assert!(
        added.contains(&format!("CapEff: {expected:016x}")),
        "{added:?}"
    );
    let nnp = status_lines(&docker, &["--security-opt", "no-new-privileges"]);
    assert!(nnp.contains(&"NoNewPrivs: 1".to_string()), "{nnp:?}");
    let privileged = status_lines(&docker, &["--privileged"]);
    assert!(
        privileged.contains(&"Seccomp: 0".to_string()),
        "{privileged:?}"
    );
    let host_bounding = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:").map(|v| v.trim().to_string()))
        .unwrap();
    assert!(
        privileged.contains(&format!("CapEff: {host_bounding}")),
        "{privileged:?} (the host's bounding set is {host_bounding})"
    );

    // What Docker's default seccomp profile and capabilities refuse, in a table:
    // (what, shell command, the words of its refusal).
    let refused: &[(&str, &str, &str)] = &[
        (
            "a user namespace (seccomp)",
            "unshare -U true",
            "Operation not permitted",
        ),
        (
            "a mount (no CAP_SYS_ADMIN)",
            "mount -t tmpfs none /mnt",
            "Permission denied",
        ),
        ("swapon", "swapon /dev/null", "Operation not permitted"),
        (
            "setting the clock",
            "date -s 2000-01-01",
            "Operation not permitted",
        ),
        (
            "setting the hostname (no CAP_SYS_ADMIN)",
            "hostname other",
            "Operation not permitted",
        ),
        (
            "a raw socket with NET_RAW dropped",
            "ping -c 1 127.0.0.1",
            "permission denied",
        ),
    ];
    for (what, shell, words) in refused {
        let mut args = vec!["run", "--rm"];
        if what.contains("NET_RAW") {
            args.extend(["--cap-drop", "NET_RAW"]);
        }
        args.extend([image.as_str(), "sh", "-c", shell]);
        let run = docker.run(&args);
        // (busybox's date exits 0 when it cannot set the clock: the words tell.)
        let output = format!("{}{}", run.stdout, run.stderr);
        assert!(
            output.to_lowercase().contains(&words.to_lowercase()),
            "{what}: {output}"
        );
    }
    // What the defaults allow (so the refusals above are the profile's, not a broken
    // container): chroot (SYS_CHROOT), chown (CHOWN), a ping (NET_RAW).
    let allowed = docker.ok(&[
        "run",
        "--rm",
        &image,
        "sh",
        "-c",
        "chroot / true && touch /f && chown 1:1 /f && ping -c 1 -W 2 127.0.0.1 >/dev/null && echo ok",
    ]);
    assert_eq!(allowed, "ok");

    // Masked paths read as empty (those this kernel has); read-only ones refuse
    // writes (Docker's lists).
    for path in [
        "/proc/kcore",
        "/proc/keys",
        "/proc/timer_list",
        "/proc/sched_debug",
    ] {
        if !Path::new(path).exists() {
            continue;
        }
        let size = docker.ok(&[
            "run",
            "--rm",
            &image,
            "sh",
            "-c",
            &format!("wc -c < {path}"),
        ]);
        assert_eq!(size, "0", "{path} is not masked");
    }
    let firmware = docker.ok(&[
        "run",
        "--rm",
        &image,
        "sh",
        "-c",
        "ls -A /sys/firmware | wc -l",
    ]);
    assert_eq!(firmware, "0", "/sys/firmware is not masked");
    for path in [
        "/proc/sys/kernel/hostname",
        "/proc/sys/vm/overcommit_memory",
        "/proc/sysrq-trigger",
    ] {
        if !Path::new(path).exists() {
            continue;
        }
        let run = docker.run(&[
            "run",
            "--rm",
            &image,
            "sh",
            "-c",
            &format!("echo x > {path}"),
        ]);
        assert_ne!(run.status, 0, "{path} was writable");
        assert!(
            run.stderr.contains("Read-only file system"),
            "{path}: {}",
            run.stderr
        );
    }

    // The daemon's sockets and state are not in a container.
    let state = docker.env.daemon.paths.state.display().to_string();
    let socket = docker.socket().display().to_string();
    let seen = docker.run(&["run", "--rm", &image, "ls", &state, &socket]);
    assert_ne!(seen.status, 0, "{seen:?}");
}

/// The default seccomp profile, syscall by syscall: each call runs in a container with
/// Docker's default capabilities, once under wharf's default profile and once with
/// `seccomp=unconfined`. The profile's refusal is EPERM (ENOSYS for clone3, so libc
/// falls back to clone, whose flags the filter sees); unconfined the same call answers
/// otherwise, which shows the filter refused it, not a missing capability. Calls the
/// profile allows answer alike both ways.
#[tokio::test]
async fn the_default_seccomp_profile_refuses_what_dockers_refuses() {
    const EPERM: i32 = 1;
    const ENOSYS: i32 = 38;
    // Docker's default profile refuses these to a container without extra capabilities
    // (dockerd 20.10's profile; later ones allow name_to_handle_at, and 25.0 and later
    // refuse io_uring too).
    let refused: &[(&str, i32)] = &[
        ("keyctl", EPERM),
        ("add_key", EPERM),
        ("request_key", EPERM),
        ("perf_event_open", EPERM),
        ("get_mempolicy", EPERM),
        ("set_mempolicy", EPERM),
        ("mbind", EPERM),
        ("move_pages", EPERM),
        ("userfaultfd", EPERM),
        ("uselib", EPERM),
        ("name_to_handle_at", EPERM),
        ("kcmp", EPERM),
        ("process_vm_readv", EPERM),
        ("process_vm_writev", EPERM),
        ("unshare", EPERM),
        ("setns", EPERM),
        ("clock_adjtime", EPERM),
        ("sysfs", EPERM),
        ("ustat", EPERM),
        ("quotactl", EPERM),
        ("io_uring_setup", EPERM),
        ("open_tree", EPERM),
        ("clone3", ENOSYS),
    ];
    let allowed = ["getpid", "uname"];
    let probe = support::go_tools::go_tool("syscall-probe");
    let docker = DockerEnv::start_pulled().await;
    let names: Vec<&str> = refused
        .iter()
        .map(|(name, _)| *name)
        .chain(allowed)
        .collect();
    let run = |seccomp: Option<&str>| -> std::collections::BTreeMap<String, i32> {
        let mount = format!("{}:/probe:ro", probe.display());
        let mut args = vec!["run", "--rm", "-v", mount.as_str()];
        if let Some(option) = seccomp {
            args.extend(["--security-opt", option]);
        }
        args.push(docker.image.as_str());
        args.push("/probe");
        args.extend(names.iter().copied());
        docker
            .ok(&args)
            .lines()
            .filter_map(|line| line.split_once(' '))
            .map(|(name, errno)| (name.to_string(), errno.parse().unwrap_or(-1)))
            .collect()
    };
    let confined = run(None);
    let unconfined = run(Some("seccomp=unconfined"));
    let mut table = String::from("syscall            default  unconfined\n");
    for name in &names {
        table.push_str(&format!(
            "{name:<18} {:>7}  {:>10}\n",
            confined.get(*name).copied().unwrap_or(-1),
            unconfined.get(*name).copied().unwrap_or(-1)
        ));
    }
    eprintln!("{table}");
    for (name, errno) in refused {
        assert_eq!(
            confined.get(*name),
            Some(errno),
            "{name} is refused by the default profile:\n{table}"
        );
        assert_ne!(
            unconfined.get(*name),
            Some(errno),
            "{name}: unconfined it answers otherwise (the profile, not a capability, \
             refused it):\n{table}"
        );
    }
    for name in allowed {
        assert_eq!(
            confined.get(name),
            unconfined.get(name),
            "{name} is allowed:\n{table}"
        );
    }
}
