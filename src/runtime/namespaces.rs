//! Pod namespaces: network, IPC and UTS namespaces created once per pod and pinned by
//! bind-mounting their nsfs files under the pod's state dir, so they outlive every
//! process in them (and a wharfd restart) until the pod is removed.
//!
//! Why bind mounts rather than an infra ("pause") process: nothing has to run, be
//! monitored or be reaped per pod, a pin survives the daemon's death as a mount, and the
//! paths are what CNI plugins and OCI runtimes take (`/run/wharf/pods/<id>/ns/net`).
//!
//! The namespaces are made by `unshare` on a short-lived thread: network, IPC and UTS
//! namespaces belong to the thread that unshares, so the daemon's other threads are
//! untouched and nothing forks (the CNI `ns` package does the same with a locked OS
//! thread).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};

#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    #[error("cannot create {kind} namespace for pod: {source}")]
    Create {
        kind: &'static str,
        source: nix::Error,
    },
    #[error("cannot pin {kind} namespace at {path}: {source}")]
    Pin {
        kind: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot set the pod hostname to {hostname:?}: {source}")]
    Hostname {
        hostname: String,
        source: nix::Error,
    },
    #[error("cannot bring up loopback in the pod network namespace: {0}")]
    Loopback(std::io::Error),
    #[error("cannot remove namespace pin {path}: {source}")]
    Unpin {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("namespace thread failed: {0}")]
    Thread(String),
}

impl crate::error::HasKind for NamespaceError {
    fn kind(&self) -> crate::error::ErrorKind {
        crate::error::ErrorKind::Internal
    }
}

/// Which namespaces a pod gets of its own (false: it shares the host's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NamespaceRequest {
    pub network: bool,
    pub ipc: bool,
    pub uts: bool,
}

/// Paths of a pod's pinned namespaces; `None` where the pod uses the host's.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PodNamespaces {
    pub network: Option<PathBuf>,
    pub ipc: Option<PathBuf>,
    pub uts: Option<PathBuf>,
}

const KINDS: [(&str, CloneFlags); 3] = [
    ("net", CloneFlags::CLONE_NEWNET),
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("uts", CloneFlags::CLONE_NEWUTS),
];

/// Creates the requested namespaces and pins them in `dir` (created if needed) as
/// `net`, `ipc` and `uts`. A new network namespace gets loopback up; a new UTS
/// namespace gets `hostname`. On error, whatever was pinned is unpinned again.
pub fn pin(
    dir: &Path,
    request: NamespaceRequest,
    hostname: &str,
) -> Result<PodNamespaces, NamespaceError> {
    let wanted: Vec<(&'static str, CloneFlags)> = KINDS
        .iter()
        .copied()
        .filter(|(kind, _)| match *kind {
            "net" => request.network,
            "ipc" => request.ipc,
            _ => request.uts,
        })
        .collect();
    let mut namespaces = PodNamespaces::default();
    if wanted.is_empty() {
        return Ok(namespaces);
    }
    std::fs::create_dir_all(dir).map_err(|source| NamespaceError::Pin {
        kind: "pod",
        path: dir.to_path_buf(),
        source,
    })?;
    // Pin targets must exist before the bind mount.
    for (kind, _) in &wanted {
        let path = dir.join(kind);
        File::create(&path).map_err(|source| NamespaceError::Pin {
            kind,
            path: path.clone(),
            source,
        })?;
    }
    let thread_dir = dir.to_path_buf();
    let thread_wanted = wanted.clone();
    let hostname = hostname.to_string();
    let result = std::thread::Builder::new()
        .name("wharf-netns".into())
        .spawn(move || enter_and_pin(&thread_dir, &thread_wanted, &hostname))
        .map_err(|err| NamespaceError::Thread(err.to_string()))?
        .join()
        .map_err(|_| NamespaceError::Thread("the namespace thread panicked".into()))?;
    if let Err(err) = result {
        let _ = unpin(dir);
        return Err(err);
    }
    for (kind, _) in &wanted {
        let path = Some(dir.join(kind));
        match *kind {
            "net" => namespaces.network = path,
            "ipc" => namespaces.ipc = path,
            _ => namespaces.uts = path,
        }
    }
    Ok(namespaces)
}

/// Runs on a dedicated thread: unshare, configure, bind-mount this thread's namespace
/// files onto the pins. The thread (and its namespace membership) ends afterwards.
fn enter_and_pin(
    dir: &Path,
    wanted: &[(&'static str, CloneFlags)],
    hostname: &str,
) -> Result<(), NamespaceError> {
    for (kind, flag) in wanted {
        unshare(*flag).map_err(|source| NamespaceError::Create { kind, source })?;
    }
    if wanted.iter().any(|(kind, _)| *kind == "uts") && !hostname.is_empty() {
        nix::unistd::sethostname(hostname).map_err(|source| NamespaceError::Hostname {
            hostname: hostname.to_string(),
            source,
        })?;
    }
    if wanted.iter().any(|(kind, _)| *kind == "net") {
        loopback_up().map_err(NamespaceError::Loopback)?;
    }
    let tid = nix::unistd::gettid();
    for (kind, _) in wanted {
        let source = PathBuf::from(format!("/proc/self/task/{tid}/ns/{kind}"));
        let target = dir.join(kind);
        mount(
            Some(&source),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|err| NamespaceError::Pin {
            kind,
            path: target.clone(),
            source: err.into(),
        })?;
    }
    Ok(())
}

/// Sets IFF_UP on `lo` of the calling thread's network namespace (SIOCSIFFLAGS).
fn loopback_up() -> std::io::Result<()> {
    let socket = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: ifreq is plain data; the name is NUL-terminated within IFNAMSIZ.
    let mut request: nix::libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in request.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as nix::libc::c_char;
    }
    // SAFETY: valid socket and ifreq for SIOCGIFFLAGS / SIOCSIFFLAGS.
    unsafe {
        if nix::libc::ioctl(socket.as_raw_fd(), nix::libc::SIOCGIFFLAGS, &mut request) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        request.ifr_ifru.ifru_flags |= nix::libc::IFF_UP as nix::libc::c_short;
        if nix::libc::ioctl(socket.as_raw_fd(), nix::libc::SIOCSIFFLAGS, &request) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Unmounts and removes every pin in `dir`, then `dir` itself if empty. Idempotent.
pub fn unpin(dir: &Path) -> Result<(), NamespaceError> {
    for (kind, _) in KINDS {
        let path = dir.join(kind);
        match umount2(&path, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
            Err(err) => {
                return Err(NamespaceError::Unpin {
                    path,
                    source: err.into(),
                })
            }
        }
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(NamespaceError::Unpin { path, source }),
        }
    }
    let _ = std::fs::remove_dir(dir);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// Runs `check` on a thread that has joined the namespace pinned at `pin`.
    fn inside<T: Send + 'static>(
        pin: &Path,
        flag: CloneFlags,
        check: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        let file = File::open(pin).unwrap();
        std::thread::spawn(move || {
            nix::sched::setns(&file, flag).unwrap();
            check()
        })
        .join()
        .unwrap()
    }

    fn mounted(path: &Path) -> bool {
        let path = path.display().to_string();
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .any(|line| line.split(' ').nth(4) == Some(path.as_str()))
    }

    #[test]
    fn pinned_namespaces_are_new_configured_and_removable() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "creating namespaces needs root: run the tests as root (./scripts/test)"
        );
        let dir = tempfile::tempdir().unwrap();
        let pod_dir = dir.path().join("pod/ns");
        let request = NamespaceRequest {
            network: true,
            ipc: true,
            uts: true,
        };
        let pinned = pin(&pod_dir, request, "wharf-pod-test").unwrap();
        for (kind, path) in [
            ("net", pinned.network.as_ref().unwrap()),
            ("ipc", pinned.ipc.as_ref().unwrap()),
            ("uts", pinned.uts.as_ref().unwrap()),
        ] {
            assert!(mounted(path), "{} is not a mount", path.display());
            let host = std::fs::metadata(format!("/proc/self/ns/{kind}")).unwrap();
            let pod = std::fs::metadata(path).unwrap();
            assert_ne!(host.ino(), pod.ino(), "{kind} namespace is the host's");
        }
        // This thread still lives in the host namespaces.
        let host_name = nix::unistd::gethostname().unwrap();
        assert_ne!(host_name.to_string_lossy(), "wharf-pod-test");

        let name = inside(
            pinned.uts.as_ref().unwrap(),
            CloneFlags::CLONE_NEWUTS,
            || {
                nix::unistd::gethostname()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            },
        );
        assert_eq!(name, "wharf-pod-test");
        let lo_is_up = inside(
            pinned.network.as_ref().unwrap(),
            CloneFlags::CLONE_NEWNET,
            || {
                let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                sock.send_to(b"ping", sock.local_addr().unwrap()).is_ok()
            },
        );
        assert!(lo_is_up, "loopback is up in the pod network namespace");
        let interfaces = inside(
            pinned.network.as_ref().unwrap(),
            CloneFlags::CLONE_NEWNET,
            || {
                nix::ifaddrs::getifaddrs()
                    .unwrap()
                    .map(|i| i.interface_name)
                    .collect::<std::collections::BTreeSet<_>>()
            },
        );
        assert_eq!(
            interfaces.into_iter().collect::<Vec<_>>(),
            vec!["lo".to_string()]
        );

        unpin(&pod_dir).unwrap();
        unpin(&pod_dir).unwrap();
        assert!(!pod_dir.exists());
        for path in [pinned.network, pinned.ipc, pinned.uts] {
            assert!(!mounted(&path.unwrap()));
        }
    }

    #[test]
    fn host_namespaces_pin_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let none = NamespaceRequest {
            network: false,
            ipc: false,
            uts: false,
        };
        assert_eq!(
            pin(&dir.path().join("ns"), none, "x").unwrap(),
            PodNamespaces::default()
        );
        assert!(!dir.path().join("ns").exists());
    }
}
