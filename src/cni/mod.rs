//! Pod networking through CNI plugins: the runtime side of the CNI specification 1.0
//! (ADD, DEL, CHECK, plus STATUS from 1.1 for readiness), speaking every published
//! version from 0.1.0 to 1.1.0 with the plugins.
//!
//! Hand-written because there is no maintained Rust CNI runtime crate (the Go
//! `libcni`, used by containerd's go-cni and CRI-O's ocicni, has no Rust counterpart).
//! The behaviour follows libcni:
//!
//! - the network is the lexically first valid `.conflist` / `.conf` / `.json` file of
//!   the conf dir (a `.conf` is wrapped into a one-plugin list); broken files are skipped
//!   with a warning;
//! - each plugin gets its own configuration on stdin with the list's `name` and
//!   `cniVersion`, the previous plugin's result as `prevResult`, and a `runtimeConfig`
//!   holding only the capabilities it declares;
//! - ADD runs the chain in order, DEL in reverse with the ADD's result as `prevResult`
//!   (from 0.4.0 on), CHECK in order (0.4.0 and later);
//! - results of any version are exposed in the 1.0 shape ([`CniResult`]).
//!
//! Beyond libcni: a failed ADD is undone (DEL of the whole chain) before it returns;
//! each plugin call has a timeout after which the plugin's process group is killed;
//! plugin stdout is capped at 1 MiB.
//!
//! Result cache: `<cache_dir>/<network>-<container id>-<ifname>.json`, written
//! atomically (temp file, rename; see `crate::state_file`), holding `{kind,
//! networkName, containerId, ifName, netns, cniArgs, capabilityArgs, config, result}`:
//! the configuration list the ADD ran and its final result. An entry with
//! `result: null` is written before the ADD starts, so a DEL after a crash in the
//! middle of an ADD still releases what was made. DEL and CHECK use the cached list,
//! not the current file: they work after a restart and after the config changed or
//! vanished. DEL removes the entry.
//!
//! Calls for the same (container, interface) must not run concurrently; the runtime
//! serializes them per pod.

pub mod bridge;
mod cache;
pub mod config;
mod exec;
mod plugins;
pub mod result;
mod select;

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use config::{NetworkConfigList, PluginConfig, Version};
pub use plugins::Cni;
pub use result::{CniResult, Dns, Interface, IpConfig, Route};
pub use select::{Networks, Selected};

/// Where configs, plugins and cached results live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniConfig {
    pub conf_dir: PathBuf,
    /// Searched in order for plugin executables; also passed as CNI_PATH.
    pub plugin_dirs: Vec<PathBuf>,
    pub cache_dir: PathBuf,
    /// Per plugin call.
    pub timeout: Duration,
}

impl Default for CniConfig {
    fn default() -> Self {
        CniConfig {
            conf_dir: PathBuf::from("/etc/cni/net.d"),
            plugin_dirs: vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")],
            cache_dir: PathBuf::from("/var/lib/wharf/cni/results"),
            timeout: Duration::from_secs(60),
        }
    }
}

/// One interface of one sandbox on the network.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Attachment {
    /// CNI_CONTAINERID: the pod sandbox id.
    pub container_id: String,
    /// CNI_NETNS: the sandbox's network namespace path.
    pub netns: PathBuf,
    /// CNI_IFNAME, e.g. `eth0`.
    pub ifname: String,
    /// CNI_ARGS, e.g. `IgnoreUnknown=1`, `K8S_POD_NAMESPACE`, `K8S_POD_NAME`,
    /// `K8S_POD_INFRA_CONTAINER_ID`, `K8S_POD_UID`; passed as given.
    pub args: Vec<(String, String)>,
    /// Given as `runtimeConfig` to plugins that declare the matching capability.
    pub capability_args: RuntimeConfig,
}

/// Capability arguments (CNI conventions: `portMappings`, `bandwidth`, `ips`, `mac`,
/// `dns`). Empty values are not passed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RuntimeConfig {
    pub port_mappings: Vec<PortMapping>,
    pub bandwidth: Option<Bandwidth>,
    /// Requested addresses in CIDR notation.
    pub ips: Vec<String>,
    pub mac: Option<String>,
    /// Passed as `{"servers", "searches", "options"}` (`domain` has no place there).
    pub dns: Option<Dns>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    /// `tcp`, `udp` or `sctp` (lower-cased when passed; empty means tcp).
    pub protocol: String,
    /// Empty: all host addresses.
    pub host_ip: String,
}

/// Traffic shaping for the `bandwidth` plugin: rates in bits per second, bursts in
/// bits; 0 leaves a value out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Bandwidth {
    pub ingress_rate: u64,
    pub ingress_burst: u64,
    pub egress_rate: u64,
    pub egress_burst: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("no network config found in {}", .dir.display())]
    NoNetwork { dir: PathBuf },
    #[error("invalid network config {}: {reason}", .file.display())]
    BadConfig { file: PathBuf, reason: String },
    #[error("network {network}: plugin {plugin} not found in {}", join_dirs(.dirs))]
    PluginNotFound {
        network: String,
        plugin: String,
        dirs: Vec<PathBuf>,
    },
    /// The plugin exited non-zero with a CNI error on stdout (its stderr is logged).
    #[error("network {network}: plugin {plugin} {command} failed: CNI error {code}: {msg}{}", details_suffix(.details))]
    Plugin {
        network: String,
        plugin: String,
        command: &'static str,
        code: u32,
        msg: String,
        details: String,
    },
    /// The plugin exited non-zero (or was killed) without a CNI error.
    #[error("network {network}: plugin {plugin} {command} failed with {status}: {output}")]
    PluginExit {
        network: String,
        plugin: String,
        command: &'static str,
        status: String,
        /// stderr, or stdout when stderr was empty.
        output: String,
    },
    #[error(
        "network {network}: plugin {plugin} {command} timed out after {timeout:?} and was killed"
    )]
    Timeout {
        network: String,
        plugin: String,
        command: &'static str,
        timeout: Duration,
    },
    #[error("network {network}: plugin {plugin} {command} returned invalid output: {reason}")]
    BadOutput {
        network: String,
        plugin: String,
        command: &'static str,
        reason: String,
    },
    #[error("network {network}: cannot run plugin {plugin} ({}): {source}", .path.display())]
    Spawn {
        network: String,
        plugin: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("network {network}: cniVersion {version} does not support {command}")]
    Unsupported {
        network: String,
        version: String,
        command: &'static str,
    },
    #[error("no CNI result cached for container {container_id} interface {ifname}: not added, or already deleted")]
    NotAttached {
        container_id: String,
        ifname: String,
    },
    #[error("invalid CNI attachment: {0}")]
    InvalidAttachment(String),
    #[error("CNI result cache {}: {reason}", .path.display())]
    Cache { path: PathBuf, reason: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    /// Boxed: the bridge's errors are larger than the rest.
    #[error(transparent)]
    Bridge(Box<bridge::BridgeError>),
}

/// Plugin failures are Unknown (the message carries the plugin's CNI code); what the
/// built-in bridge can tell apart gets its own kind.
impl crate::error::HasKind for CniError {
    fn kind(&self) -> crate::error::ErrorKind {
        match self {
            CniError::NoNetwork { .. } => crate::error::ErrorKind::FailedPrecondition,
            CniError::Bridge(bridge) => bridge.kind(),
            _ => crate::error::ErrorKind::Unknown,
        }
    }
}

impl From<bridge::BridgeError> for CniError {
    fn from(err: bridge::BridgeError) -> CniError {
        CniError::Bridge(Box::new(err))
    }
}

impl CniError {
    /// The CNI error code when a plugin reported one.
    pub fn code(&self) -> Option<u32> {
        match self {
            CniError::Plugin { code, .. } => Some(*code),
            _ => None,
        }
    }
}

fn join_dirs(dirs: &[PathBuf]) -> String {
    dirs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(":")
}

fn details_suffix(details: &str) -> String {
    if details.is_empty() {
        String::new()
    } else {
        format!(" ({details})")
    }
}
