//! Pods and containers: the core types front ends build (model.rs), lifecycle (pod.rs,
//! container.rs), a pod's files (pod_files.rs:
//! hostname, hosts, resolv.conf) and the checks of its config (pod_validation.rs),
//! in-memory state, locks and record helpers (service.rs), opening and recovery after a
//! restart (recovery.rs), OCI spec generation (spec/: one builder per concern), the OCI
//! runtime CLI (oci.rs), the
//! monitor's daemon side (monitor.rs; its control channel: monitor_control.rs), and the host prerequisites behind the CRI
//! `RuntimeReady` / `NetworkReady` conditions.

pub mod caps;
mod container;
pub mod exec_tree;
pub mod health;
mod host;
mod metrics;
pub mod model;
pub mod monitor;
pub mod monitor_control;
pub mod namespaces;
pub mod oci;
mod pod;
mod pod_files;
mod pod_validation;
pub mod port_forward;
mod ports;
pub mod records;
mod recovery;
pub mod seccomp;
mod service;
pub mod spec;
pub mod stats;
mod volumes;

pub use container::CopyHold;
pub use host::{CgroupLayout, HostInfo};
pub use records::{ContainerRecord, ContainerState, PodRecord, PodState};
pub use service::{new_id, Runtime, RuntimeError};

use std::path::Path;

use crate::store::Store;

/// A readiness condition as the CRI reports it: when not ready, `reason` is a CamelCase
/// word and `message` says what is wrong and what to do.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Condition {
    pub ready: bool,
    pub reason: String,
    pub message: String,
}

impl Condition {
    pub(crate) fn ready() -> Condition {
        Condition {
            ready: true,
            reason: String::new(),
            message: String::new(),
        }
    }

    pub(crate) fn not_ready(reason: &str, message: String) -> Condition {
        Condition {
            ready: false,
            reason: reason.to_string(),
            message,
        }
    }
}

/// Whether this node can run containers: the kernel features wharf builds on are there,
/// its directories are usable and its metadata store answers. Every failed check is
/// named in the message.
pub fn runtime_condition(root: &Path, state: &Path, store: &Store) -> Condition {
    let host = HostInfo::probe();
    let mut problems = host.problems();
    for dir in [root, state] {
        if let Err(err) = host::check_writable_dir(dir) {
            problems.push(err);
        }
    }
    if let Err(err) = store.check() {
        problems.push(format!("metadata store {}: {err}", store.path().display()));
    }
    if problems.is_empty() {
        Condition::ready()
    } else {
        Condition::not_ready("RuntimePrerequisitesMissing", problems.join("; "))
    }
}
