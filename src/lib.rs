//! wharf: a container runtime for Linux nodes. `wharfd` serves the Kubernetes CRI over a
//! UNIX socket; see docs/architecture.md for the layers.

pub mod cni;
pub mod config;
pub mod crash_point;
pub mod cri;
pub mod daemon;
pub mod engine;
pub mod error;
pub mod image;
pub mod monitor;
pub mod runtime;
pub mod state_file;
pub mod store;
