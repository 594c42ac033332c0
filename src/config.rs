//! Daemon configuration: embedded defaults, an optional TOML file, and command-line
//! overrides, validated once at start so a bad value stops the daemon before it touches
//! anything.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where the config file is looked for when `--config` is not given. Its absence is fine.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/wharf/wharf.toml";

/// The kernel's limit on a UNIX socket path (`sun_path` is 108 bytes, NUL included).
const MAX_SOCKET_PATH_LEN: usize = 107;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid value for {key}: {message}")]
    Invalid { key: &'static str, message: String },
}

/// The whole daemon configuration. Every field has a default, so an empty file (or no
/// file at all) is a valid configuration. Unknown keys are rejected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Persistent data: metadata database, content store, snapshots, volumes.
    pub root: PathBuf,
    /// Runtime state on tmpfs: sockets, monitor state, namespace pins.
    pub state: PathBuf,
    pub cri: CriConfig,
    pub docker: DockerConfig,
    pub log: LogConfig,
    pub registry: RegistryConfig,
    /// How pod and container cgroups are managed.
    pub cgroup_driver: CgroupDriver,
    pub runtime: RuntimeConfig,
    pub cni: CniSection,
    pub network: NetworkSection,
    pub metrics: MetricsConfig,
    pub cdi: CdiConfig,
}

/// Where CDI (Container Device Interface) specs are found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CdiConfig {
    /// Scanned in order; a device defined in a later dir overrides an earlier one (the
    /// CDI spec's rule). Dirs that do not exist are skipped.
    pub spec_dirs: Vec<PathBuf>,
}

impl Default for CdiConfig {
    fn default() -> Self {
        CdiConfig {
            spec_dirs: vec![PathBuf::from("/etc/cdi"), PathBuf::from("/var/run/cdi")],
        }
    }
}

impl CdiConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        for dir in &self.spec_dirs {
            require_absolute("cdi.spec_dirs", dir)?;
        }
        Ok(())
    }
}

/// The Prometheus listener (`GET /metrics`, plain HTTP).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// `IP:PORT`; empty disables it. Unset: [`DEFAULT_METRICS_ADDRESS`], where a port
    /// already taken is only a warning (a second wharfd on the host still starts); an
    /// address set here that cannot be bound stops the start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

/// Loopback only by default: the metrics name pods and images.
pub const DEFAULT_METRICS_ADDRESS: &str = "127.0.0.1:1338";

impl MetricsConfig {
    /// The address to listen on and whether it was configured; None when disabled.
    pub fn listen_address(&self) -> Result<Option<(std::net::SocketAddr, bool)>, ConfigError> {
        let (text, configured) = match self.address.as_deref() {
            None => (DEFAULT_METRICS_ADDRESS, false),
            Some("") => return Ok(None),
            Some(address) => (address, true),
        };
        text.parse()
            .map(|address| Some((address, configured)))
            .map_err(|_| ConfigError::Invalid {
                key: "metrics.address",
                message: format!("{text:?} is not IP:PORT (or empty to disable the listener)"),
            })
    }
}

/// Which network pods (other than host-network ones) are attached to.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkSection {
    pub mode: NetworkMode,
    pub bridge: BridgeSection,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// The CNI network when the conf dir has one, else the built-in bridge: a fresh
    /// machine works with no setup, and a cluster's CNI config takes over when written.
    #[default]
    Auto,
    /// Only the CNI network; without a config pods are refused and NetworkReady is false.
    Cni,
    /// Always the built-in bridge network.
    Bridge,
    /// No network: pods get a network namespace with loopback only (Docker's
    /// `--network none`).
    None,
}

/// The built-in bridge network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BridgeSection {
    /// The bridge link (at most 15 bytes); also the network's name.
    pub name: String,
    /// IPv4 subnet in CIDR notation. Empty: the first of 10.88.0.0/16 ... 10.127.0.0/16
    /// that no host route or address overlaps, chosen once and kept in the store.
    pub subnet: String,
    /// Masquerade traffic from pods that leaves through other interfaces.
    pub masquerade: bool,
    /// Turn on `net.ipv4.ip_forward` (as Docker does), so pods reach beyond the host.
    pub ip_forward: bool,
    /// MTU of the bridge and pod interfaces; 0 keeps the kernel's default.
    pub mtu: u32,
}

impl Default for BridgeSection {
    fn default() -> Self {
        BridgeSection {
            name: "wharf0".to_string(),
            subnet: String::new(),
            masquerade: true,
            ip_forward: true,
            mtu: 0,
        }
    }
}

impl NetworkSection {
    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, message: String| Err(ConfigError::Invalid { key, message });
        let name = &self.bridge.name;
        if name.is_empty()
            || name.len() > 15
            || name == "."
            || name == ".."
            || name.contains(|c: char| c == '/' || c == ':' || c.is_whitespace())
        {
            return invalid(
                "network.bridge.name",
                format!("{name:?} is not a link name (1 to 15 bytes, no '/', ':' or spaces)"),
            );
        }
        if !self.bridge.subnet.is_empty() {
            let subnet: ipnet::Ipv4Net = match self.bridge.subnet.parse() {
                Ok(subnet) => subnet,
                Err(_) => {
                    return invalid(
                        "network.bridge.subnet",
                        format!(
                            "{:?} is not an IPv4 subnet in CIDR notation",
                            self.bridge.subnet
                        ),
                    )
                }
            };
            if subnet.prefix_len() > 30 {
                return invalid(
                    "network.bridge.subnet",
                    format!("{subnet} is too small: pods need at least a /30"),
                );
            }
        }
        if self.bridge.mtu != 0 && !(68..=65535).contains(&self.bridge.mtu) {
            return invalid(
                "network.bridge.mtu",
                format!("{} is outside 68..=65535", self.bridge.mtu),
            );
        }
        Ok(())
    }
}

/// Pod networking through CNI plugins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CniSection {
    /// Network configs: the lexically first valid `.conflist` / `.conf` / `.json` is used.
    pub conf_dir: PathBuf,
    /// Where plugin binaries are looked up, in order.
    pub plugin_dirs: Vec<PathBuf>,
    /// Seconds one plugin call may take before it is killed.
    pub plugin_timeout_secs: u64,
}

impl Default for CniSection {
    fn default() -> Self {
        CniSection {
            conf_dir: PathBuf::from("/etc/cni/net.d"),
            plugin_dirs: vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")],
            plugin_timeout_secs: 60,
        }
    }
}

impl CniSection {
    fn validate(&self) -> Result<(), ConfigError> {
        require_absolute("cni.conf_dir", &self.conf_dir)?;
        for dir in &self.plugin_dirs {
            require_absolute("cni.plugin_dirs", dir)?;
        }
        if self.plugin_timeout_secs == 0 {
            return Err(ConfigError::Invalid {
                key: "cni.plugin_timeout_secs",
                message: "must be at least 1".to_string(),
            });
        }
        Ok(())
    }
}

/// How containers are run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// External OCI runtimes selectable per pod by CRI `runtime_handler` (Kubernetes
    /// RuntimeClass): handler name -> runtime binary (runc-compatible CLI). The empty
    /// handler and `builtin` always mean wharf's own libcontainer runtime.
    pub handlers: BTreeMap<String, PathBuf>,
    /// Never give a container an oom_score_adj lower than wharfd's own (containerd's
    /// `restrict_oom_score_adj`). Unset: on when wharfd lacks CAP_SYS_RESOURCE, which
    /// lowering needs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restrict_oom_score_adj: Option<bool>,
    /// Where relative `Localhost` seccomp profiles are looked up.
    pub seccomp_profile_root: PathBuf,
    /// The cgroup parent of pods created without one (kubelet always gives one).
    pub default_cgroup_parent: String,
    /// Seconds a container create (the monitor and the OCI runtime) may take.
    pub create_timeout_secs: u64,
    /// `wharf-monitor`; unset: the one installed next to `wharfd`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub monitor_path: Option<PathBuf>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            handlers: BTreeMap::from([
                ("runc".to_string(), PathBuf::from("/usr/sbin/runc")),
                ("crun".to_string(), PathBuf::from("/usr/bin/crun")),
            ]),
            restrict_oom_score_adj: None,
            seccomp_profile_root: PathBuf::from("/var/lib/wharf/seccomp"),
            default_cgroup_parent: "/wharf".to_string(),
            create_timeout_secs: 60,
            monitor_path: None,
        }
    }
}

impl RuntimeConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        for (name, path) in &self.handlers {
            if name.is_empty() || name == "builtin" {
                return Err(ConfigError::Invalid {
                    key: "runtime.handlers",
                    message: format!("{name:?} is reserved for the built-in runtime"),
                });
            }
            require_absolute("runtime.handlers", path)?;
        }
        require_absolute("runtime.seccomp_profile_root", &self.seccomp_profile_root)?;
        if !self.default_cgroup_parent.starts_with('/') {
            return Err(ConfigError::Invalid {
                key: "runtime.default_cgroup_parent",
                message: format!(
                    "{:?} is not an absolute cgroup path",
                    self.default_cgroup_parent
                ),
            });
        }
        if self.create_timeout_secs == 0 {
            return Err(ConfigError::Invalid {
                key: "runtime.create_timeout_secs",
                message: "must be at least 1".to_string(),
            });
        }
        if let Some(path) = &self.monitor_path {
            require_absolute("runtime.monitor_path", path)?;
        }
        Ok(())
    }
}

/// How images are fetched from registries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// Mirrors per registry host (`docker.io`, `quay.io:443`, ...): endpoint URLs tried
    /// in order before the registry itself, as containerd's `hosts.toml` mirrors are.
    pub mirrors: BTreeMap<String, Vec<String>>,
    /// Registry hosts reached over plain HTTP. Loopback hosts (`localhost`,
    /// `127.0.0.0/8`, `[::1]`) are always allowed plain HTTP, as Docker does.
    pub insecure: Vec<String>,
    /// Layers of one pull downloaded at the same time.
    pub max_concurrent_downloads: usize,
    /// Attempts per request on a transient error (connection failure, 5xx, 429),
    /// with exponential backoff between them.
    pub max_attempts: u32,
    /// The platform picked from multi-platform images, `os/arch[/variant]`
    /// (e.g. `linux/arm64/v8`); this machine's when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// Hosts (`name`, `name:port`, an IP address or a CIDR) a registry may redirect to
    /// even when they lie in another address class than the registry (loopback,
    /// private, public): e.g. a registry on a private address whose blobs are served
    /// from a public object store. Redirects from HTTPS to plain HTTP, to schemes other
    /// than http(s) and chains longer than 5 hops are refused regardless.
    pub redirect_allow: Vec<String>,
    /// Pulls of images with more layers are refused: overlayfs cannot stack many more
    /// lower directories (containerd and Docker stop at 128 too). At most 500, the
    /// kernel's own limit.
    pub max_layers_per_image: usize,
    /// Tar entries one layer may hold (refused beyond: each costs an inode).
    pub max_entries_per_layer: u64,
    /// Bytes one layer may unpack to (file contents as written).
    pub max_unpacked_bytes_per_layer: u64,
    /// Bytes all layers of one image together may unpack to.
    pub max_unpacked_bytes_per_image: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CriConfig {
    /// The UNIX socket serving runtime.v1.RuntimeService and ImageService.
    pub socket: PathBuf,
    /// How long a SIGTERM waits for in-flight calls before the daemon exits anyway.
    pub shutdown_timeout_secs: u64,
    /// Connections the socket holds open at most; the calls of one more fail with
    /// gRPC UNAVAILABLE naming this setting (clients that connect and stay cannot spend
    /// the daemon's descriptors).
    pub max_connections: usize,
    /// The streaming server of Exec, Attach and PortForward (src/streaming/).
    pub streaming: StreamingConfig,
}

/// `[cri.streaming]`: where the one-time URLs of Exec, Attach and PortForward point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamingConfig {
    /// The address to listen on (kubelet reaches it, or redirects clients to it). Not
    /// loopback: TLS is required (`tls_cert_file`, `tls_key_file`), as containerd's
    /// `enable_tls_streaming`.
    pub address: String,
    /// The TCP port; 0 picks a free one at start.
    pub port: u16,
    /// A session with no traffic this long is closed (kubelet's
    /// `streamingConnectionIdleTimeout`, 4 h).
    pub idle_timeout_secs: u64,
    /// An unused URL expires after this long (kubelet's streaming cache: 1 minute);
    /// every URL is single use.
    pub token_ttl_secs: u64,
    /// PEM certificate chain and private key of the TLS listener.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key_file: Option<PathBuf>,
}

impl Default for StreamingConfig {
    fn default() -> Self {
        StreamingConfig {
            address: "127.0.0.1".into(),
            port: 0,
            idle_timeout_secs: 4 * 60 * 60,
            token_ttl_secs: 60,
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}

impl StreamingConfig {
    /// The listen address, checked.
    pub fn ip(&self) -> Result<std::net::IpAddr, ConfigError> {
        self.address.parse().map_err(|_| ConfigError::Invalid {
            key: "cri.streaming.address",
            message: format!("{:?} is not an IP address", self.address),
        })
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, message: String| Err(ConfigError::Invalid { key, message });
        let ip = self.ip()?;
        if self.idle_timeout_secs == 0 {
            return invalid(
                "cri.streaming.idle_timeout_secs",
                "must be at least 1".into(),
            );
        }
        if self.token_ttl_secs == 0 {
            return invalid("cri.streaming.token_ttl_secs", "must be at least 1".into());
        }
        match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(cert), Some(key)) => {
                require_absolute("cri.streaming.tls_cert_file", cert)?;
                require_absolute("cri.streaming.tls_key_file", key)?;
            }
            (Some(_), None) => {
                return invalid(
                    "cri.streaming.tls_key_file",
                    "is needed with tls_cert_file".into(),
                )
            }
            (None, Some(_)) => {
                return invalid(
                    "cri.streaming.tls_cert_file",
                    "is needed with tls_key_file".into(),
                )
            }
            (None, None) if !ip.is_loopback() => {
                return invalid(
                    "cri.streaming.address",
                    format!(
                        "{ip} is not a loopback address: exec and port-forward streams \
                         would cross the network in clear; set tls_cert_file and \
                         tls_key_file, or listen on 127.0.0.1"
                    ),
                )
            }
            (None, None) => {}
        }
        Ok(())
    }
}

/// The Docker Engine API (src/docker/).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DockerConfig {
    /// Serve the Docker Engine API at all.
    pub enabled: bool,
    /// Its UNIX socket (root:root 0660, as the CRI socket); unset: `<state>/docker.sock`,
    /// i.e. /run/wharf/docker.sock by default.
    pub socket: Option<PathBuf>,
    /// A group (name or gid) given the socket (root:<group> 0660), as dockerd's
    /// `--group`: its members may use the API, which is root's power on the host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// More listeners: `tcp://IP:PORT`. A non-loopback address needs mutual TLS
    /// (`tls_cert_file`, `tls_key_file` and `tls_ca_file`, dockerd's `--tlsverify`).
    pub hosts: Vec<String>,
    /// PEM server certificate chain and key of the TCP hosts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key_file: Option<PathBuf>,
    /// PEM CA whose client certificates are accepted (and required).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_ca_file: Option<PathBuf>,
    /// Connections each listener holds open at most; one more is answered 503 naming
    /// this setting.
    pub max_connections: usize,
}

/// Connections an API socket holds open at most, by default: far above what kubelet
/// or the docker CLI open, far below wharfd's descriptor limit.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;

impl Default for DockerConfig {
    fn default() -> Self {
        DockerConfig {
            enabled: true,
            socket: None,
            group: None,
            hosts: Vec::new(),
            tls_cert_file: None,
            tls_key_file: None,
            tls_ca_file: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

impl DockerConfig {
    /// The TCP addresses of `hosts`, checked.
    pub fn tcp_hosts(&self) -> Result<Vec<std::net::SocketAddr>, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            key: "docker.hosts",
            message,
        };
        let mut addresses = Vec::new();
        for host in &self.hosts {
            let Some(address) = host.strip_prefix("tcp://") else {
                return Err(invalid(format!(
                    "{host:?} is not tcp://IP:PORT (the UNIX socket is docker.socket)"
                )));
            };
            let address: std::net::SocketAddr = address.parse().map_err(|_| {
                invalid(format!(
                    "{host:?} is not tcp://IP:PORT (an IP address and a port)"
                ))
            })?;
            addresses.push(address);
        }
        Ok(addresses)
    }

    /// Whether the TCP hosts are served over TLS.
    pub fn tls(&self) -> bool {
        self.tls_cert_file.is_some()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, message: String| Err(ConfigError::Invalid { key, message });
        let hosts = self.tcp_hosts()?;
        for (key, file) in [
            ("docker.tls_cert_file", &self.tls_cert_file),
            ("docker.tls_key_file", &self.tls_key_file),
            ("docker.tls_ca_file", &self.tls_ca_file),
        ] {
            if let Some(file) = file {
                require_absolute(key, file)?;
            }
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return invalid(
                "docker.tls_key_file",
                "tls_cert_file and tls_key_file go together".into(),
            );
        }
        if self.tls_ca_file.is_some() && !self.tls() {
            return invalid(
                "docker.tls_ca_file",
                "needs tls_cert_file and tls_key_file".into(),
            );
        }
        let mutual = self.tls() && self.tls_ca_file.is_some();
        if let Some(open) = hosts.iter().find(|a| !a.ip().is_loopback()) {
            if !mutual {
                return invalid(
                    "docker.hosts",
                    format!(
                        "{open} is not a loopback address: the Docker API is root on this \
                         host, so it is served there only with mutual TLS (tls_cert_file, \
                         tls_key_file and tls_ca_file)"
                    ),
                );
            }
        }
        if let Some(group) = &self.group {
            if group.is_empty() {
                return invalid("docker.group", "is empty".into());
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A level (`error`, `warn`, `info`, `debug`, `trace`) or a tracing filter directive
    /// such as `info,wharf::store=debug`.
    pub level: String,
    pub format: LogFormat,
    /// Log every span when it closes, with its busy and idle time: a profile of where
    /// a call's time goes (the phases of CreateContainer and StartContainer are spans
    /// at level `debug`, so `level` must let them through).
    pub spans: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Only the cgroupfs driver exists today; `systemd` is rejected at parse time rather
/// than accepted and ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupDriver {
    Cgroupfs,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            root: PathBuf::from("/var/lib/wharf"),
            state: PathBuf::from("/run/wharf"),
            cri: CriConfig::default(),
            docker: DockerConfig::default(),
            log: LogConfig::default(),
            registry: RegistryConfig::default(),
            cgroup_driver: CgroupDriver::Cgroupfs,
            runtime: RuntimeConfig::default(),
            cni: CniSection::default(),
            network: NetworkSection::default(),
            metrics: MetricsConfig::default(),
            cdi: CdiConfig::default(),
        }
    }
}

/// An absolute socket path that fits in `sun_path`.
fn check_socket_path(key: &'static str, path: &Path) -> Result<(), ConfigError> {
    require_absolute(key, path)?;
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH_LEN {
        return Err(ConfigError::Invalid {
            key,
            message: format!(
                "{} is {len} bytes long; a UNIX socket path may be at most {MAX_SOCKET_PATH_LEN}",
                path.display()
            ),
        });
    }
    Ok(())
}

/// overlayfs' own limit on stacked lower directories (`OVL_MAX_STACK`).
pub const MAX_OVERLAY_LAYERS: usize = 500;
/// As containerd and Docker: images deeper than this are refused.
pub const DEFAULT_MAX_LAYERS_PER_IMAGE: usize = 128;

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            mirrors: BTreeMap::new(),
            insecure: Vec::new(),
            max_concurrent_downloads: 3,
            max_attempts: 3,
            platform: None,
            redirect_allow: Vec::new(),
            max_layers_per_image: DEFAULT_MAX_LAYERS_PER_IMAGE,
            max_entries_per_layer: 4_000_000,
            max_unpacked_bytes_per_layer: 64 << 30,
            max_unpacked_bytes_per_image: 256 << 30,
        }
    }
}

impl Default for CriConfig {
    fn default() -> Self {
        CriConfig {
            socket: PathBuf::from("/run/wharf/wharf.sock"),
            shutdown_timeout_secs: 30,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            streaming: StreamingConfig::default(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".to_string(),
            format: LogFormat::Text,
            spans: false,
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        })
    }
}

/// Values given on the command line; each one that is set wins over the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub root: Option<PathBuf>,
    pub state: Option<PathBuf>,
    pub cri_socket: Option<PathBuf>,
    pub log_level: Option<String>,
    pub log_format: Option<LogFormat>,
}

impl Config {
    /// Loads the effective configuration: defaults, then the file, then `overrides`.
    /// `explicit_path` is the `--config` flag: a file named there must exist, while the
    /// default path is read only if present.
    pub fn load(
        explicit_path: Option<&Path>,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        let mut config = match explicit_path {
            Some(path) => Config::from_file(path)?,
            None => {
                let default_path = Path::new(DEFAULT_CONFIG_PATH);
                if default_path.exists() {
                    Config::from_file(default_path)?
                } else {
                    Config::default()
                }
            }
        };
        config.apply(overrides);
        config.validate()?;
        Ok(config)
    }

    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml(&text).map_err(|message| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Parses TOML text; the error message names the offending key and line.
    pub fn from_toml(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|err| err.to_string().trim_end().to_string())
    }

    fn apply(&mut self, overrides: &Overrides) {
        if let Some(root) = &overrides.root {
            self.root = root.clone();
        }
        if let Some(state) = &overrides.state {
            self.state = state.clone();
        }
        if let Some(socket) = &overrides.cri_socket {
            self.cri.socket = socket.clone();
        }
        if let Some(level) = &overrides.log_level {
            self.log.level = level.clone();
        }
        if let Some(format) = overrides.log_format {
            self.log.format = format;
        }
    }

    /// The Docker API socket: configured, or `docker.sock` in the state dir.
    pub fn docker_socket(&self) -> PathBuf {
        self.docker
            .socket
            .clone()
            .unwrap_or_else(|| self.state.join("docker.sock"))
    }

    /// Checks what can be checked without touching the filesystem: paths are absolute,
    /// the socket paths fit in `sun_path`, the log filter parses.
    pub fn validate(&self) -> Result<(), ConfigError> {
        require_absolute("root", &self.root)?;
        require_absolute("state", &self.state)?;
        check_socket_path("cri.socket", &self.cri.socket)?;
        if self.docker.enabled {
            self.docker.validate()?;
            check_socket_path("docker.socket", &self.docker_socket())?;
            if self.docker_socket() == self.cri.socket {
                return Err(ConfigError::Invalid {
                    key: "docker.socket",
                    message: format!(
                        "{} is also cri.socket; each API needs its own socket",
                        self.cri.socket.display()
                    ),
                });
            }
        }
        if self.root == self.state {
            return Err(ConfigError::Invalid {
                key: "state",
                message: format!(
                    "{} is also the root directory; state must be a separate (tmpfs) directory",
                    self.state.display()
                ),
            });
        }
        parse_log_filter(&self.log.level).map_err(|message| ConfigError::Invalid {
            key: "log.level",
            message,
        })?;
        self.cri.streaming.validate()?;
        self.registry.validate()?;
        self.runtime.validate()?;
        self.cni.validate()?;
        self.cdi.validate()?;
        self.metrics.listen_address()?;
        self.network.validate()
    }

    /// The configuration as JSON, for `Status(verbose)` and `wharfd --print-config`.
    pub fn to_json(&self) -> serde_json::Value {
        // Serializing plain structs of strings and numbers cannot fail.
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

impl RegistryConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        for (host, endpoints) in &self.mirrors {
            for endpoint in endpoints {
                if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                    return Err(ConfigError::Invalid {
                        key: "registry.mirrors",
                        message: format!(
                            "mirror {endpoint:?} of {host:?} is not an http:// or https:// URL"
                        ),
                    });
                }
            }
        }
        if self.max_concurrent_downloads == 0 {
            return Err(ConfigError::Invalid {
                key: "registry.max_concurrent_downloads",
                message: "must be at least 1".to_string(),
            });
        }
        if let Some(platform) = &self.platform {
            crate::image::platform::Platform::parse(platform).map_err(|err| {
                ConfigError::Invalid {
                    key: "registry.platform",
                    message: err.to_string(),
                }
            })?;
        }
        if self.max_attempts == 0 {
            return Err(ConfigError::Invalid {
                key: "registry.max_attempts",
                message: "must be at least 1".to_string(),
            });
        }
        if self.max_layers_per_image == 0 || self.max_layers_per_image > MAX_OVERLAY_LAYERS {
            return Err(ConfigError::Invalid {
                key: "registry.max_layers_per_image",
                message: format!(
                    "must be between 1 and {MAX_OVERLAY_LAYERS} (what overlayfs can stack)"
                ),
            });
        }
        for (key, value) in [
            ("registry.max_entries_per_layer", self.max_entries_per_layer),
            (
                "registry.max_unpacked_bytes_per_layer",
                self.max_unpacked_bytes_per_layer,
            ),
            (
                "registry.max_unpacked_bytes_per_image",
                self.max_unpacked_bytes_per_image,
            ),
        ] {
            if value == 0 {
                return Err(ConfigError::Invalid {
                    key,
                    message: "must be at least 1".to_string(),
                });
            }
        }
        for entry in &self.redirect_allow {
            let cidr_ok = match entry.split_once('/') {
                Some((addr, prefix)) => {
                    addr.parse::<std::net::IpAddr>().is_ok() && prefix.parse::<u8>().is_ok()
                }
                None => true,
            };
            if entry.is_empty() || entry.chars().any(char::is_whitespace) || !cidr_ok {
                return Err(ConfigError::Invalid {
                    key: "registry.redirect_allow",
                    message: format!("{entry:?} is not a host, address or CIDR"),
                });
            }
        }
        Ok(())
    }
}

fn require_absolute(key: &'static str, path: &Path) -> Result<(), ConfigError> {
    if path.is_absolute() {
        Ok(())
    } else {
        Err(ConfigError::Invalid {
            key,
            message: format!("{} is not an absolute path", path.display()),
        })
    }
}

/// Parses a log level or filter directive. Plain levels are checked strictly, so a typo
/// such as `inf` is an error instead of a filter that silently matches nothing.
pub fn parse_log_filter(level: &str) -> Result<tracing_subscriber::EnvFilter, String> {
    let looks_like_directive = level.contains(['=', ',', ':', '[']);
    if !looks_like_directive {
        tracing::level_filters::LevelFilter::from_str(level).map_err(|_| {
            format!("{level:?} is not a log level (error, warn, info, debug, trace, off) or filter directive")
        })?;
    }
    tracing_subscriber::EnvFilter::try_new(level)
        .map_err(|err| format!("{level:?} is not a valid log filter: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        assert_eq!(Config::from_toml("").unwrap(), Config::default());
        Config::default().validate().unwrap();
    }

    #[test]
    fn file_values_are_read() {
        let config = Config::from_toml(
            r#"
            root = "/srv/wharf"
            state = "/run/wharf-test"
            [cri]
            socket = "/run/wharf-test/cri.sock"
            [log]
            level = "debug"
            format = "json"
            "#,
        )
        .unwrap();
        assert_eq!(config.root, PathBuf::from("/srv/wharf"));
        assert_eq!(config.cri.socket, PathBuf::from("/run/wharf-test/cri.sock"));
        assert_eq!(config.cri.shutdown_timeout_secs, 30);
        assert_eq!(config.log.format, LogFormat::Json);
    }

    #[test]
    fn streaming_settings_are_checked_by_name() {
        for (toml, key) in [
            (
                "[cri.streaming]\naddress = \"localhost\"\n",
                "cri.streaming.address",
            ),
            (
                "[cri.streaming]\naddress = \"0.0.0.0\"\n",
                "cri.streaming.address",
            ),
            (
                "[cri.streaming]\nidle_timeout_secs = 0\n",
                "cri.streaming.idle_timeout_secs",
            ),
            (
                "[cri.streaming]\ntoken_ttl_secs = 0\n",
                "cri.streaming.token_ttl_secs",
            ),
            (
                "[cri.streaming]\ntls_cert_file = \"/c.pem\"\n",
                "cri.streaming.tls_key_file",
            ),
            (
                "[cri.streaming]\ntls_cert_file = \"c.pem\"\ntls_key_file = \"/k.pem\"\n",
                "cri.streaming.tls_cert_file",
            ),
        ] {
            let checked = |text: &str| {
                let config = Config::from_toml(text)?;
                config.validate().map_err(|e| e.to_string())?;
                Ok::<Config, String>(config)
            };
            let err = checked(toml).expect_err(toml);
            assert!(err.contains(key), "{toml}: {err}");
        }
        let config = Config::from_toml(
            "[cri.streaming]\naddress = \"::1\"\nport = 10010\nidle_timeout_secs = 5\n",
        )
        .expect("valid");
        config.validate().expect("valid");
        assert_eq!(config.cri.streaming.port, 10010);
        Config::from_toml(
            "[cri.streaming]\naddress = \"0.0.0.0\"\ntls_cert_file = \"/c.pem\"\n\
             tls_key_file = \"/k.pem\"\n",
        )
        .expect("parses")
        .validate()
        .expect("TLS on any address");
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::from_toml("[cri]\nsokcet = \"/x\"\n").unwrap_err();
        assert!(err.contains("sokcet"), "{err}");
    }

    #[test]
    fn bad_enum_value_is_named() {
        let err = Config::from_toml("cgroup_driver = \"systemd\"\n").unwrap_err();
        assert!(err.contains("systemd") && err.contains("cgroupfs"), "{err}");
    }

    #[test]
    fn overrides_win_over_file() {
        let mut config = Config::from_toml("root = \"/a\"\n[log]\nlevel = \"warn\"\n").unwrap();
        config.apply(&Overrides {
            root: Some("/b".into()),
            log_level: Some("trace".into()),
            ..Overrides::default()
        });
        assert_eq!(config.root, PathBuf::from("/b"));
        assert_eq!(config.log.level, "trace");
    }

    #[test]
    fn relative_paths_are_rejected() {
        let config = Config {
            root: "var/lib/wharf".into(),
            ..Config::default()
        };
        let err = config.validate().unwrap_err().to_string();
        assert!(
            err.contains("root") && err.contains("not an absolute path"),
            "{err}"
        );
    }

    #[test]
    fn overlong_socket_path_is_rejected() {
        let mut config = Config::default();
        config.cri.socket = PathBuf::from(format!("/run/{}.sock", "x".repeat(120)));
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("cri.socket"), "{err}");
    }

    #[test]
    fn registry_section() {
        let config = Config::from_toml(
            "[registry]\ninsecure = [\"reg.local:5000\"]\n\
             [registry.mirrors]\n\"docker.io\" = [\"http://127.0.0.1:5001\"]\n",
        )
        .unwrap();
        assert_eq!(
            config.registry.mirrors["docker.io"],
            ["http://127.0.0.1:5001"]
        );
        config.validate().unwrap();
        let mut bad = config.clone();
        bad.registry
            .mirrors
            .insert("quay.io".into(), vec!["quay-mirror:5000".into()]);
        let err = bad.validate().unwrap_err().to_string();
        assert!(
            err.contains("registry.mirrors") && err.contains("quay-mirror"),
            "{err}"
        );
    }

    #[test]
    fn registry_limits() {
        let defaults = RegistryConfig::default();
        assert_eq!(defaults.max_layers_per_image, 128);
        assert_eq!(defaults.max_unpacked_bytes_per_layer, 64 << 30);
        assert_eq!(defaults.max_unpacked_bytes_per_image, 256 << 30);
        let config = Config::from_toml(
            "[registry]
max_layers_per_image = 200
max_entries_per_layer = 10
             redirect_allow = [\"10.0.0.0/8\", \"minio.lan:9000\"]
",
        )
        .unwrap();
        config.validate().unwrap();
        assert_eq!(config.registry.max_layers_per_image, 200);
        for (toml, key) in [
            (
                "max_layers_per_image = 501",
                "registry.max_layers_per_image",
            ),
            ("max_layers_per_image = 0", "registry.max_layers_per_image"),
            (
                "max_entries_per_layer = 0",
                "registry.max_entries_per_layer",
            ),
            (
                "max_unpacked_bytes_per_layer = 0",
                "registry.max_unpacked_bytes_per_layer",
            ),
            (
                "max_unpacked_bytes_per_image = 0",
                "registry.max_unpacked_bytes_per_image",
            ),
            (
                "redirect_allow = [\"10.0.0.0/x\"]",
                "registry.redirect_allow",
            ),
            ("redirect_allow = [\"a b\"]", "registry.redirect_allow"),
        ] {
            let config = Config::from_toml(&format!("[registry]\n{toml}\n")).unwrap();
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(key), "{toml}: {err}");
        }
    }

    #[test]
    fn runtime_section() {
        let config = Config::from_toml(
            "[runtime]\ndefault_cgroup_parent = \"/kubepods\"\n\
             [runtime.handlers]\nkata = \"/opt/kata/bin/kata-runtime\"\n",
        )
        .unwrap();
        config.validate().unwrap();
        assert_eq!(
            config.runtime.handlers["kata"],
            PathBuf::from("/opt/kata/bin/kata-runtime")
        );
        for (toml, key) in [
            (
                "[runtime.handlers]\nbuiltin = \"/usr/sbin/runc\"\n",
                "runtime.handlers",
            ),
            ("[runtime.handlers]\nrunc = \"runc\"\n", "runtime.handlers"),
            (
                "[runtime]\ndefault_cgroup_parent = \"wharf\"\n",
                "runtime.default_cgroup_parent",
            ),
            (
                "[runtime]\ncreate_timeout_secs = 0\n",
                "runtime.create_timeout_secs",
            ),
        ] {
            let err = Config::from_toml(toml)
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{toml}: {err}");
        }
    }

    #[test]
    fn network_section() {
        let config = Config::from_toml(
            "[network]\nmode = \"bridge\"\n[network.bridge]\nname = \"br-test\"\n\
             subnet = \"10.200.0.0/24\"\nmtu = 1400\n",
        )
        .unwrap();
        config.validate().unwrap();
        assert_eq!(config.network.mode, NetworkMode::Bridge);
        assert_eq!(Config::default().network.mode, NetworkMode::Auto);
        assert_eq!(Config::default().network.bridge.name, "wharf0");
        assert!(Config::from_toml("[network]\nmode = \"flannel\"\n").is_err());
        for (toml, key, shown) in [
            (
                "[network.bridge]\nname = \"a-very-long-bridge\"\n",
                "network.bridge.name",
                "a-very-long-bridge",
            ),
            (
                "[network.bridge]\nname = \"\"\n",
                "network.bridge.name",
                "\"\"",
            ),
            (
                "[network.bridge]\nname = \"a/b\"\n",
                "network.bridge.name",
                "a/b",
            ),
            (
                "[network.bridge]\nsubnet = \"10.1.0.0\"\n",
                "network.bridge.subnet",
                "10.1.0.0",
            ),
            (
                "[network.bridge]\nsubnet = \"fd00::/64\"\n",
                "network.bridge.subnet",
                "fd00::/64",
            ),
            (
                "[network.bridge]\nsubnet = \"10.1.0.0/31\"\n",
                "network.bridge.subnet",
                "10.1.0.0/31",
            ),
            ("[network.bridge]\nmtu = 20\n", "network.bridge.mtu", "20"),
        ] {
            let err = Config::from_toml(toml)
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string();
            assert!(err.contains(key) && err.contains(shown), "{toml}: {err}");
        }
    }

    #[test]
    fn log_levels() {
        assert!(parse_log_filter("info").is_ok());
        assert!(parse_log_filter("info,wharf::store=trace").is_ok());
        assert!(parse_log_filter("inf").is_err());
    }
}
