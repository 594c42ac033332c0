//! wharf: a container runtime for Linux nodes. `wharfd` serves the Kubernetes CRI and the
//! Docker Engine API over UNIX sockets; see docs/architecture.md for the layers.

// serde_json's json! of dockerd's larger objects (/info, inspect) nests deeply.
#![recursion_limit = "256"]

pub mod cli;
pub mod cni;
pub mod config;
pub mod crash_point;
pub mod cri;
pub mod daemon;
pub mod device;
pub mod docker;
pub mod engine;
pub mod error;
pub mod events;
pub mod image;
pub mod metrics;
pub mod monitor;
pub mod network;
pub mod runtime;
pub mod state_file;
pub mod store;
pub mod streaming;
pub mod tls;
pub mod volume;

/// The git commit the binaries were built from: HEAD's short hash, `-dirty` when the
/// sources differed from it, or `unknown` (build.rs).
pub const GIT_COMMIT: &str = env!("WHARF_GIT_COMMIT");

/// What `--version` prints after a binary's name: `0.1.0 (commit abc1234)`.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("WHARF_GIT_COMMIT"),
    ")"
);
