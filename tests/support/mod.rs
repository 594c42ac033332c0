//! Fixtures shared by the integration tests: a real wharfd, a real registry, real OCI
//! test images. Each test binary uses a subset, hence the allow.
#![allow(dead_code)]

pub mod cleanup;
pub mod daemon;
pub mod images;
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
