//! Fixtures shared by the integration tests: a real wharfd, a real registry, real OCI
//! test images. Each test binary uses a subset, hence the allow.
#![allow(dead_code)]

pub mod cleanup;
pub mod daemon;
pub mod images;
pub mod net;
pub mod pods;
pub mod registry;
pub mod token_server;

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

/// The bridge CNI plugin (`isGateway`) turns on `net.ipv4.ip_forward` host-wide. Each
/// test network holds one of these; when the last one in the process is dropped, the
/// value found before the first is put back.
pub struct IpForwardGuard(());

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// Live guards, and the setting found when the first of them was made.
static FORWARDING: std::sync::Mutex<(usize, Option<String>)> = std::sync::Mutex::new((0, None));

impl IpForwardGuard {
    pub fn new() -> IpForwardGuard {
        let mut forwarding = FORWARDING
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if forwarding.0 == 0 {
            forwarding.1 = std::fs::read_to_string(IP_FORWARD).ok();
        }
        forwarding.0 += 1;
        IpForwardGuard(())
    }
}

impl Drop for IpForwardGuard {
    fn drop(&mut self) {
        let mut forwarding = FORWARDING
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        forwarding.0 -= 1;
        if forwarding.0 == 0 {
            if let Some(found) = forwarding.1.take() {
                let _ = std::fs::write(IP_FORWARD, found);
            }
        }
    }
}

/// Like [`IpForwardGuard`] for IPv6: the bridge CNI plugin (`isGateway` with an IPv6
/// range) turns on `net.ipv6.conf.all.forwarding`, which also stops the host from
/// accepting router advertisements. The value found before the first guard is put back
/// when the last one in the process is dropped.
pub struct Ip6ForwardGuard(());

const IP6_FORWARD: &str = "/proc/sys/net/ipv6/conf/all/forwarding";

static FORWARDING6: std::sync::Mutex<(usize, Option<String>)> = std::sync::Mutex::new((0, None));

impl Ip6ForwardGuard {
    pub fn new() -> Ip6ForwardGuard {
        let mut forwarding = FORWARDING6
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if forwarding.0 == 0 {
            forwarding.1 = std::fs::read_to_string(IP6_FORWARD).ok();
        }
        forwarding.0 += 1;
        Ip6ForwardGuard(())
    }
}

impl Drop for Ip6ForwardGuard {
    fn drop(&mut self) {
        let mut forwarding = FORWARDING6
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        forwarding.0 -= 1;
        if forwarding.0 == 0 {
            if let Some(found) = forwarding.1.take() {
                let _ = std::fs::write(IP6_FORWARD, found);
            }
        }
    }
}
