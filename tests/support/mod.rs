//! Fixtures shared by the integration tests: a real wharfd, a real registry, real OCI
//! test images. Each test binary uses a subset, hence the allow.
#![allow(dead_code)]

pub mod audit;
pub mod cleanup;
pub mod compose;
pub mod daemon;
pub mod docker;
pub mod go_tools;
pub mod hostile;
pub mod images;
pub mod kube;
pub mod net;
pub mod pods;
pub mod registry;
pub mod tmux;
pub mod token_server;

/// `len` bytes that gzip cannot shrink (xorshift), so a layer's blob is as big.
pub fn incompressible(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// The names of the entries directly inside `dir`, sorted (empty if it does not exist).
pub fn entries(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// `path` from the Debian `package`; panics naming the package when it is absent.
pub fn require_installed(path: &'static str, package: &str) -> &'static std::path::Path {
    let path = std::path::Path::new(path);
    assert!(
        path.exists(),
        "{} is missing: install the Debian package `{package}` (scripts/test installs it)",
        path.display()
    );
    path
}

/// Puts a host-wide sysctl back when the last guard of it in the process is dropped:
/// the value found when the first guard was made.
pub struct SysctlGuard {
    path: &'static str,
    /// Live guards, and the setting found when the first of them was made.
    state: &'static std::sync::Mutex<(usize, Option<String>)>,
}

impl SysctlGuard {
    fn hold(
        path: &'static str,
        state: &'static std::sync::Mutex<(usize, Option<String>)>,
    ) -> SysctlGuard {
        let mut held = state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if held.0 == 0 {
            held.1 = std::fs::read_to_string(path).ok();
        }
        held.0 += 1;
        SysctlGuard { path, state }
    }
}

impl Drop for SysctlGuard {
    fn drop(&mut self) {
        let mut held = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        held.0 -= 1;
        if held.0 == 0 {
            if let Some(found) = held.1.take() {
                let _ = std::fs::write(self.path, found);
            }
        }
    }
}

/// The bridge CNI plugin (`isGateway`) and the built-in bridge network turn on
/// `net.ipv4.ip_forward` host-wide; each test network holds one of these.
pub struct IpForwardGuard(SysctlGuard);

static FORWARDING: std::sync::Mutex<(usize, Option<String>)> = std::sync::Mutex::new((0, None));

impl IpForwardGuard {
    pub fn new() -> IpForwardGuard {
        IpForwardGuard(SysctlGuard::hold(
            "/proc/sys/net/ipv4/ip_forward",
            &FORWARDING,
        ))
    }
}

/// Like [`IpForwardGuard`] for IPv6: the bridge CNI plugin (`isGateway` with an IPv6
/// range) turns on `net.ipv6.conf.all.forwarding`, which also stops the host from
/// accepting router advertisements.
pub struct Ip6ForwardGuard(SysctlGuard);

static FORWARDING6: std::sync::Mutex<(usize, Option<String>)> = std::sync::Mutex::new((0, None));

impl Ip6ForwardGuard {
    pub fn new() -> Ip6ForwardGuard {
        Ip6ForwardGuard(SysctlGuard::hold(
            "/proc/sys/net/ipv6/conf/all/forwarding",
            &FORWARDING6,
        ))
    }
}
