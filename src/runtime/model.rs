//! The core's own types: what a front end asks of a pod or a container. The CRI front
//! end (src/cri/convert.rs) builds them from CRI messages, the Docker API front end
//! from its JSON; the runtime, the spec builders and the stored records use only these.
//!
//! Field names follow the CRI's where the CRI has the concept (so an error names
//! `mounts[2].host_path` for either front end); Kubernetes-only details (metadata,
//! annotation-borne settings such as bandwidth) are parsed by the CRI front end and
//! never reach here. Records store these types as JSON, beside an opaque extension per
//! front end (its original request, as containerd's container extensions).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// Which namespace a pod or container uses (the CRI's `NamespaceMode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NamespaceMode {
    /// The pod's own (for a container: shared with the pod).
    #[default]
    Pod,
    /// The container's own.
    Container,
    /// The host's.
    Node,
    /// Another container's (`target_id`; PID only).
    Target,
}

/// A pod's namespaces. A container has only `pid` (and `target_id`): it always joins
/// the pod's network, IPC and UTS namespaces.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceModes {
    pub network: NamespaceMode,
    pub ipc: NamespaceMode,
    pub pid: NamespaceMode,
    /// For `pid: Target`: the container whose PID namespace to join.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub target_id: String,
}

/// DNS settings for the pod's /etc/resolv.conf.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsConfig {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

impl DnsConfig {
    /// Whether it says anything (an empty one means: the host's resolv.conf).
    pub fn is_given(&self) -> bool {
        !(self.servers.is_empty() && self.searches.is_empty() && self.options.is_empty())
    }
}

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// A port of the pod published on the host (`host_port` 0: none, only declared).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    pub protocol: Protocol,
    pub container_port: i32,
    pub host_port: i32,
    /// Empty: every host address.
    pub host_ip: String,
}

/// A container port published on the host while the container runs (Docker's `-p`):
/// the runtime picks the host port at each start, from `host_port_first..=
/// host_port_last` (0, 0: the host's ephemeral port range), one not published by
/// another pod and with no host socket on it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedPort {
    pub protocol: Protocol,
    pub container_port: u16,
    pub host_port_first: u16,
    pub host_port_last: u16,
    /// Empty: every host address (IPv4).
    pub host_ip: String,
}

/// What a pod is made of.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodSpec {
    /// Unique in its object namespace (the CRI: name_namespace_uid_attempt).
    pub name: String,
    /// Empty: the host's hostname.
    pub hostname: String,
    /// Where the pod's container logs go (their `log_path` is relative to it).
    pub log_directory: String,
    pub dns: Option<DnsConfig>,
    pub port_mappings: Vec<PortMapping>,
    pub labels: HashMap<String, String>,
    pub annotations: HashMap<String, String>,
    /// Empty: the configured default.
    pub cgroup_parent: String,
    pub sysctls: HashMap<String, String>,
    pub namespaces: NamespaceModes,
    /// May the pod's containers be privileged.
    pub privileged: bool,
    /// CNI_ARGS for the pod's network (the CRI: `K8S_POD_NAMESPACE`, `K8S_POD_NAME`,
    /// `K8S_POD_UID`), after `IgnoreUnknown=1`; the runtime adds the pod's ID as
    /// `K8S_POD_INFRA_CONTAINER_ID`, as containerd does.
    pub network_args: Vec<(String, String)>,
    /// User-defined networks to attach (in order: eth0, eth1, ...) instead of the
    /// configured pod network; empty: the configured one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<NetworkRequest>,
    /// A network namespace of its own with loopback only, whatever the configured pod
    /// network (Docker's `--network none`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub loopback_only: bool,
    /// The MAC address of the pod's first interface (`aa:bb:cc:dd:ee:ff`, Docker's
    /// `--mac-address`); empty: the network picks one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac_address: String,
}

/// An attachment to a user-defined network ([`crate::network`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRequest {
    /// The network's name or ID.
    pub network: String,
    /// The front end's ID of what is attached (Docker: the container's).
    #[serde(default)]
    pub owner_id: String,
    /// Network-scoped aliases.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// More names that resolve to the pod on the network (name, short ID).
    #[serde(default)]
    pub dns_names: Vec<String>,
    /// A static IPv4 address; empty: one from the network's pool.
    #[serde(default)]
    pub ipv4: String,
    /// A static IPv6 address (a network with IPv6); empty: one from its subnet.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ipv6: String,
    /// Container-scoped aliases (Docker's `--link NAME:ALIAS` on a user-defined
    /// network): (the linked name, the alias) only this pod resolves.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<(String, String)>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Propagation {
    #[default]
    Private,
    HostToContainer,
    Bidirectional,
}

/// A bind mount of a host path.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    pub container_path: String,
    pub host_path: String,
    pub readonly: bool,
    pub recursive_read_only: bool,
    pub propagation: Propagation,
    pub selinux_relabel: bool,
    /// An image to mount instead of a host path (not supported yet).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub image: String,
    /// Whether uid/gid mappings were asked (id-mapped mounts: not supported yet).
    #[serde(default)]
    pub id_mapped: bool,
    /// A volume mounted instead of a host path: the runtime makes or finds it, takes a
    /// reference for the container and sets `host_path` to its data directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<VolumeSource>,
    /// A tmpfs mounted instead of a host path (`host_path` empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tmpfs: Option<TmpfsOptions>,
    /// The mode text the request gave (Docker's `Mode`, shown by inspect); the
    /// runtime reads the fields above, never this.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mode: String,
}

/// What kind of mount a [`Mount`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountKind {
    Bind,
    Volume,
    Tmpfs,
}

impl Mount {
    pub fn kind(&self) -> MountKind {
        if self.volume.is_some() {
            MountKind::Volume
        } else if self.tmpfs.is_some() {
            MountKind::Tmpfs
        } else {
            MountKind::Bind
        }
    }
}

/// The volume of a volume mount (Docker's named and anonymous volumes).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeSource {
    /// Empty: a new anonymous volume, named by the runtime.
    pub name: String,
    /// For a volume the mount creates: its driver (empty: local), labels and options.
    #[serde(default)]
    pub driver: String,
    #[serde(default)]
    pub labels: Option<HashMap<String, String>>,
    #[serde(default)]
    pub options: Option<HashMap<String, String>>,
    /// Made for this container alone (Docker's `rm -v` and auto-remove remove it).
    #[serde(default)]
    pub anonymous: bool,
    /// Do not copy the image's content at the mount point into a new empty volume.
    #[serde(default)]
    pub no_copy: bool,
    /// The container's create made this (named) volume: a create that fails, or is
    /// cut by a crash, removes it again.
    #[serde(default)]
    pub made: bool,
}

/// A tmpfs mount's size (bytes, 0: the kernel's default) and mode (0: 1777).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TmpfsOptions {
    pub size_bytes: i64,
    pub mode: u32,
    /// Mount options as given (Docker's `--tmpfs /path:opts`), after the defaults.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
    /// From `--tmpfs` (HostConfig.Tmpfs): not one of inspect's `Mounts`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub flag: bool,
}

/// A host device node given to the container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    pub container_path: String,
    pub host_path: String,
    /// A subset of "rwm"; empty: "rwm".
    pub permissions: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HugepageLimit {
    pub page_size: String,
    pub limit: u64,
}

/// A container's cgroup limits (0 / empty: not set).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    pub cpu_period: i64,
    pub cpu_quota: i64,
    pub cpu_shares: i64,
    pub memory_limit_in_bytes: i64,
    pub oom_score_adj: i64,
    pub cpuset_cpus: String,
    pub cpuset_mems: String,
    pub hugepage_limits: Vec<HugepageLimit>,
    /// cgroup v2 files and values.
    pub unified: HashMap<String, String>,
    pub memory_swap_limit_in_bytes: i64,
    /// The most processes the container may have (0: no limit).
    #[serde(default)]
    pub pids_limit: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    pub add: Vec<String>,
    pub drop: Vec<String>,
    pub add_ambient: Vec<String>,
}

/// The seccomp profile of a container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Seccomp {
    #[default]
    Unconfined,
    /// wharf's default profile for the container's capabilities.
    RuntimeDefault,
    /// A profile file: absolute, or relative to the seccomp profile root (a
    /// `localhost/` prefix is allowed).
    Localhost(String),
}

/// Who the process runs as, what it may do and what it sees of the host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityOptions {
    pub privileged: bool,
    pub readonly_rootfs: bool,
    pub no_new_privs: bool,
    pub capabilities: Capabilities,
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    /// A name in the image's /etc/passwd (takes precedence over `run_as_user`).
    pub run_as_username: String,
    /// `user[:group]` by name or number, as Docker's `--user`, in place of the image's
    /// User (used when none of the run_as fields is set).
    #[serde(default)]
    pub user: String,
    pub supplemental_groups: Vec<i64>,
    /// Only `supplemental_groups`, not also the groups /etc/group lists the user in.
    pub supplemental_groups_strict: bool,
    pub namespaces: NamespaceModes,
    /// A user namespace was asked (not supported yet).
    #[serde(default)]
    pub user_namespace: bool,
    pub seccomp: Seccomp,
    /// Empty: Docker's defaults.
    pub masked_paths: Vec<String>,
    pub readonly_paths: Vec<String>,
}

/// When the daemon starts a container again after it exits (Docker's restart
/// policies). A container stopped through the API is not restarted by `always` or
/// `unless-stopped` until it is started again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    #[default]
    No,
    Always,
    UnlessStopped,
    /// After a non-zero exit, at most `max_retries` times (0: no limit).
    OnFailure {
        max_retries: u32,
    },
}

/// What a container is made of.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSpec {
    /// The ID to give it (64 lowercase hex digits), when the front end chose one before
    /// the pod existed (the Docker API: the pod's hostname is the container's short
    /// ID); None: a new random one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_id: Option<String>,
    /// Unique in its object namespace.
    pub name: String,
    /// The image as the request named it (a reference or an ID).
    pub image: String,
    /// Replaces the image's Entrypoint (then `args` replaces its Cmd).
    pub command: Vec<String>,
    pub args: Vec<String>,
    /// Empty: the image's WorkingDir.
    pub working_dir: String,
    /// Added to (or replacing) the image's Env.
    pub env: Vec<(String, String)>,
    pub mounts: Vec<Mount>,
    pub devices: Vec<Device>,
    /// CDI devices by qualified name (`vendor.com/class=name`), resolved in the
    /// configured spec dirs when the container is made (see `crate::device`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cdi_devices: Vec<String>,
    pub labels: HashMap<String, String>,
    /// Annotations of the OCI spec.
    pub annotations: HashMap<String, String>,
    /// The log file, relative to the pod's log directory; empty: no log.
    pub log_path: String,
    /// Size-based rotation of that log by its monitor (Docker's `max-size` and
    /// `max-file`); None: never (kubelet rotates CRI logs itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_rotation: Option<crate::monitor::rotate::LogRotation>,
    pub stdin: bool,
    pub stdin_once: bool,
    pub tty: bool,
    /// When it exits, its pod (and so the container) is removed: Docker's AutoRemove
    /// (`docker run --rm`), done by the daemon, so it happens with no client attached.
    #[serde(default)]
    pub auto_remove: bool,
    #[serde(default)]
    pub restart: RestartPolicy,
    /// The signal that stops it (a name or number), in place of the image's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    pub resources: Option<Resources>,
    pub security: SecurityOptions,
    /// Run by the daemon (`runtime::health`); the Docker API's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<Healthcheck>,
    /// Published on the host while it runs (see [`PublishedPort`]); the ports chosen
    /// are in its record's `published_ports`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub published_ports: Vec<PublishedPort>,
}

/// A container's health check (Docker's `HEALTHCHECK`), as the front end gave it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Healthcheck {
    /// The command: run as is (Docker's `CMD`), or `/bin/sh -c` of one string
    /// (`CMD-SHELL`, already expanded by the front end).
    pub command: Vec<String>,
    pub interval: std::time::Duration,
    pub timeout: std::time::Duration,
    /// Failures in this time after the start do not count.
    pub start_period: std::time::Duration,
    /// The interval during the start period (0: `interval`).
    #[serde(default)]
    pub start_interval: std::time::Duration,
    /// Consecutive failures that make it unhealthy.
    pub retries: u32,
}
