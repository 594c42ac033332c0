//! A Docker `POST /containers/create` body to the core's types: the pod (the
//! container's own network, IPC and UTS namespaces, hostname, DNS) and the container
//! (process, user, mounts, resources, security), with Docker's defaults where the CRI's
//! differ (seccomp: Docker's default profile; hostname: the short ID). Refused here,
//! with dockerd's wording where clients know it: what Docker would refuse, and what
//! wharf does not do yet (other log drivers). Mounts are read in `mounts.rs`.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::error::ApiError;
use crate::runtime::model::{
    Capabilities, ContainerSpec, Device, DnsConfig, NamespaceMode, NamespaceModes, NetworkRequest,
    PodSpec, Resources, RestartPolicy as CoreRestartPolicy, Seccomp, SecurityOptions,
};

/// `Cmd` and `Entrypoint`: a list, or (older clients) one string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StringOrList {
    One(String),
    List(Vec<String>),
}

impl StringOrList {
    fn into_list(self) -> Vec<String> {
        match self {
            StringOrList::One(one) if one.is_empty() => Vec::new(),
            StringOrList::One(one) => vec![one],
            StringOrList::List(list) => list,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct RestartPolicy {
    pub name: String,
    pub maximum_retry_count: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct LogConfig {
    #[serde(rename = "Type")]
    pub kind: String,
    pub config: HashMap<String, String>,
}

/// The fields of `HostConfig` wharf reads; the whole object is kept as sent (inspect
/// answers it back).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct HostConfig {
    pub binds: Option<Vec<String>>,
    pub mounts: Option<Vec<super::mounts::ApiMount>>,
    pub volumes_from: Option<Vec<String>>,
    /// `--tmpfs /path[:options]`.
    pub tmpfs: Option<HashMap<String, String>>,
    #[serde(deserialize_with = "super::mounts::null_default")]
    pub volume_driver: String,
    pub network_mode: String,
    pub privileged: bool,
    pub cap_add: Option<Vec<String>>,
    pub cap_drop: Option<Vec<String>>,
    pub readonly_rootfs: bool,
    pub memory: i64,
    pub memory_swap: i64,
    pub nano_cpus: i64,
    pub cpu_shares: i64,
    pub cpu_quota: i64,
    pub cpu_period: i64,
    pub cpuset_cpus: String,
    pub cpuset_mems: String,
    pub pids_limit: Option<i64>,
    pub oom_score_adj: i64,
    pub sysctls: Option<HashMap<String, String>>,
    pub security_opt: Option<Vec<String>>,
    pub dns: Option<Vec<String>>,
    pub dns_search: Option<Vec<String>>,
    pub dns_options: Option<Vec<String>>,
    pub auto_remove: bool,
    pub restart_policy: Option<RestartPolicy>,
    pub log_config: Option<LogConfig>,
    /// Checked and read by `ports.rs` (dockerd's shapes and messages).
    pub port_bindings: Option<serde_json::Value>,
    pub publish_all_ports: bool,
    /// `--device /dev/x[:/dev/y[:rwm]]`.
    pub devices: Option<Vec<DeviceMapping>>,
    /// `--gpus ...`, and `--device vendor.com/class=name` (Driver "cdi").
    pub device_requests: Option<Vec<DeviceRequest>>,
    /// `--link NAME[:ALIAS]` (see `links.rs`).
    pub links: Option<Vec<String>>,
    /// `--add-host HOST:IP`.
    pub extra_hosts: Option<Vec<String>>,
}

/// A host device node given to the container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct DeviceMapping {
    pub path_on_host: String,
    pub path_in_container: String,
    pub cgroup_permissions: String,
}

/// Devices asked by driver and capability (`--gpus`) or by CDI name (Driver "cdi").
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct DeviceRequest {
    pub driver: String,
    /// -1: all.
    pub count: i64,
    #[serde(rename = "DeviceIDs")]
    pub device_ids: Option<Vec<String>>,
    pub capabilities: Option<Vec<Vec<String>>>,
    pub options: Option<HashMap<String, String>>,
}

/// The CDI kind `--gpus` selects from.
pub const GPU_KIND: &str = "nvidia.com/gpu";

/// The CDI devices `DeviceRequests` name, and how many GPUs `--gpus N` asks for (picked
/// from the CDI specs by the create). `--gpus all` is `nvidia.com/gpu=all`;
/// `--gpus device=0,GPU-uuid` is one CDI device per ID; Driver "cdi" takes the IDs as
/// CDI names (Docker 25+).
pub fn device_requests(
    requests: &[DeviceRequest],
) -> Result<(Vec<String>, Option<usize>), ApiError> {
    let mut names: Vec<String> = Vec::new();
    let mut count = None;
    let mut add = |name: String| -> Result<(), ApiError> {
        crate::device::check_name(&name).map_err(|err| ApiError::bad_request(err.to_string()))?;
        if !names.contains(&name) {
            names.push(name);
        }
        Ok(())
    };
    for request in requests {
        let ids = request.device_ids.clone().unwrap_or_default();
        let capabilities = request.capabilities.clone().unwrap_or_default();
        let gpu = capabilities
            .iter()
            .any(|set| set.iter().any(|c| c == "gpu"));
        match request.driver.as_str() {
            "cdi" => {
                for id in ids {
                    add(id)?;
                }
            }
            "nvidia" | "" if gpu || request.driver == "nvidia" => {
                if !ids.is_empty() {
                    for id in ids {
                        add(format!("{GPU_KIND}={id}"))?;
                    }
                } else if request.count < 0 {
                    add(format!("{GPU_KIND}=all"))?;
                } else if request.count > 0 {
                    count = Some(count.unwrap_or(0usize).max(request.count as usize));
                }
            }
            driver => {
                let sets: Vec<String> = capabilities
                    .iter()
                    .map(|set| format!("[{}]", set.join(" ")))
                    .collect();
                return Err(ApiError::bad_request(format!(
                    "could not select device driver {:?} with capabilities: [{}]",
                    bounded(driver),
                    sets.join(" ")
                )));
            }
        }
    }
    Ok((names, count))
}

/// `HostConfig.Devices` as the core's devices (permissions: a subset of "rwm").
fn device_mappings(mappings: &[DeviceMapping]) -> Result<Vec<Device>, ApiError> {
    let mut devices = Vec::new();
    for mapping in mappings {
        let permissions = if mapping.cgroup_permissions.is_empty() {
            "rwm".to_string()
        } else {
            mapping.cgroup_permissions.clone()
        };
        if !permissions.chars().all(|c| "rwm".contains(c)) {
            return Err(ApiError::bad_request(format!(
                "invalid device mode: {}",
                bounded(&permissions)
            )));
        }
        if !mapping.path_on_host.starts_with('/') {
            return Err(ApiError::bad_request(format!(
                "invalid device path {:?}: the host path must be absolute (or a CDI name vendor.com/class=name)",
                bounded(&mapping.path_on_host)
            )));
        }
        let container_path = if mapping.path_in_container.is_empty() {
            mapping.path_on_host.clone()
        } else {
            mapping.path_in_container.clone()
        };
        devices.push(Device {
            container_path,
            host_path: mapping.path_on_host.clone(),
            permissions,
        });
    }
    Ok(devices)
}

/// The create body: `Config` fields at the top, plus `HostConfig`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct CreateRequest {
    pub hostname: String,
    pub domainname: String,
    pub user: String,
    pub attach_stdin: bool,
    pub attach_stdout: bool,
    pub attach_stderr: bool,
    pub tty: bool,
    pub open_stdin: bool,
    pub stdin_once: bool,
    pub env: Option<Vec<String>>,
    pub cmd: Option<StringOrList>,
    pub entrypoint: Option<StringOrList>,
    pub image: String,
    pub labels: Option<HashMap<String, String>>,
    pub working_dir: String,
    /// `-v /ctr` (anonymous volumes), as a set of paths.
    pub volumes: Option<HashMap<String, serde_json::Value>>,
    pub stop_signal: Option<String>,
    pub stop_timeout: Option<i64>,
    pub healthcheck: Option<HealthConfig>,
    /// `--mac-address` (API < 1.44; later clients put it in the endpoint's settings).
    pub mac_address: String,
    pub host_config: Option<HostConfig>,
    pub networking_config: Option<NetworkingConfig>,
    /// With the image's merged in by the create (as dockerd merges them).
    pub exposed_ports: Option<serde_json::Value>,
}

/// `NetworkingConfig` of a create: per network, the endpoint's settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct NetworkingConfig {
    pub endpoints_config: Option<HashMap<String, EndpointSettings>>,
}

/// An endpoint's settings (create, `network connect`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct EndpointSettings {
    #[serde(rename = "IPAMConfig")]
    pub ipam_config: Option<EndpointIpamConfig>,
    pub aliases: Option<Vec<String>>,
    /// `--mac-address` from API 1.44 on.
    pub mac_address: String,
    /// `--link` on a user-defined network: aliases only this container resolves.
    pub links: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EndpointIpamConfig {
    #[serde(rename = "IPv4Address", deserialize_with = "super::networks::nullable")]
    pub ipv4_address: String,
    #[serde(rename = "IPv6Address", deserialize_with = "super::networks::nullable")]
    pub ipv6_address: String,
}

/// `--mac-address` as the network wants it (`aa:bb:cc:dd:ee:ff`): six hex pairs, with
/// `:` or `-` (Go's `net.ParseMAC` of 48-bit addresses), and one an interface may have.
fn checked_mac(text: &str) -> Result<String, ApiError> {
    let invalid = || ApiError::bad_request(format!("{} is not a valid mac address", bounded(text)));
    let separator = if text.contains('-') { '-' } else { ':' };
    let bytes: Vec<u8> = text
        .split(separator)
        .map(|pair| {
            (pair.len() == 2)
                .then(|| u8::from_str_radix(pair, 16).ok())
                .flatten()
        })
        .collect::<Option<_>>()
        .ok_or_else(invalid)?;
    if bytes.len() != 6 {
        return Err(invalid());
    }
    if bytes[0] & 1 == 1 {
        return Err(ApiError::bad_request(format!(
            "{} is not a valid mac address: it is a multicast address, which no interface may have",
            bounded(text)
        )));
    }
    Ok(bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":"))
}

impl EndpointSettings {
    /// The core's request for attaching container `id` named `name` to `network`.
    pub fn request(&self, network: &str, id: &str, name: &str) -> Result<NetworkRequest, ApiError> {
        let ipam = self.ipam_config.clone().unwrap_or_default();
        if !ipam.ipv6_address.is_empty() && ipam.ipv6_address.parse::<std::net::Ipv6Addr>().is_err()
        {
            return Err(ApiError::bad_request(format!(
                "invalid IPv6 address: {}",
                bounded(&ipam.ipv6_address)
            )));
        }
        if !ipam.ipv4_address.is_empty() && ipam.ipv4_address.parse::<std::net::Ipv4Addr>().is_err()
        {
            return Err(ApiError::bad_request(format!(
                "invalid IPv4 address: {}",
                bounded(&ipam.ipv4_address)
            )));
        }
        let short = id.get(..12).unwrap_or(id).to_string();
        let links = self
            .links
            .iter()
            .flatten()
            .map(|entry| super::links::parse_link(entry).map(|l| (l.name, l.alias)))
            .collect::<Result<_, _>>()?;
        Ok(NetworkRequest {
            network: network.to_string(),
            owner_id: id.to_string(),
            aliases: self.aliases.clone().unwrap_or_default(),
            dns_names: vec![name.to_string(), short],
            ipv4: ipam.ipv4_address,
            ipv6: ipam.ipv6_address,
            links,
        })
    }
}

/// `Config.Healthcheck` (durations in nanoseconds; 0 means dockerd's default).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct HealthConfig {
    pub test: Option<Vec<String>>,
    pub interval: i64,
    pub timeout: i64,
    pub start_period: i64,
    pub start_interval: i64,
    pub retries: i64,
}

/// dockerd's merge of a create's `Healthcheck` with the image's: no test in the
/// request takes the image's test, and each unset (zero) setting the image's.
pub fn merge_healthcheck(
    request: Option<HealthConfig>,
    image: Option<HealthConfig>,
) -> Option<HealthConfig> {
    let Some(image) = image else {
        return request;
    };
    let Some(mut merged) = request else {
        return Some(image);
    };
    if merged.test.as_ref().is_none_or(Vec::is_empty) {
        merged.test = image.test;
    }
    let fields = [
        (&mut merged.interval, image.interval),
        (&mut merged.timeout, image.timeout),
        (&mut merged.start_period, image.start_period),
        (&mut merged.start_interval, image.start_interval),
        (&mut merged.retries, image.retries),
    ];
    for (field, from_image) in fields {
        if *field == 0 {
            *field = from_image;
        }
    }
    Some(merged)
}

/// The core's check for a create's `Healthcheck` (merged with the image's); None for
/// none (`NONE`, or no test).
fn healthcheck(
    config: &HealthConfig,
) -> Result<Option<crate::runtime::model::Healthcheck>, ApiError> {
    use crate::runtime::health::{DEFAULT_INTERVAL, DEFAULT_RETRIES, DEFAULT_TIMEOUT};
    let test = config.test.clone().unwrap_or_default();
    let command = match test.split_first() {
        None => return Ok(None),
        Some((kind, _)) if kind == "NONE" => return Ok(None),
        Some((kind, rest)) if kind == "CMD" => rest.to_vec(),
        Some((kind, rest)) if kind == "CMD-SHELL" => {
            vec!["/bin/sh".to_string(), "-c".to_string(), rest.join(" ")]
        }
        Some((kind, _)) => {
            return Err(ApiError::bad_request(format!(
                "unknown Healthcheck type {kind:?} (CMD, CMD-SHELL or NONE)"
            )))
        }
    };
    if command.is_empty() {
        return Err(ApiError::bad_request("Healthcheck test has no command"));
    }
    let duration = |field: &str, nanos: i64, default: std::time::Duration| {
        if nanos == 0 {
            return Ok(default);
        }
        if nanos < 1_000_000 {
            return Err(ApiError::bad_request(format!(
                "{field} in Healthcheck cannot be less than 1ms"
            )));
        }
        Ok(std::time::Duration::from_nanos(nanos as u64))
    };
    if config.retries < 0 {
        return Err(ApiError::bad_request(
            "Retries in Healthcheck cannot be negative",
        ));
    }
    Ok(Some(crate::runtime::model::Healthcheck {
        command,
        interval: duration("Interval", config.interval, DEFAULT_INTERVAL)?,
        timeout: duration("Timeout", config.timeout, DEFAULT_TIMEOUT)?,
        start_period: duration(
            "StartPeriod",
            config.start_period,
            std::time::Duration::ZERO,
        )?,
        start_interval: duration(
            "StartInterval",
            config.start_interval,
            std::time::Duration::ZERO,
        )?,
        retries: if config.retries == 0 {
            DEFAULT_RETRIES
        } else {
            u32::try_from(config.retries).unwrap_or(u32::MAX)
        },
    }))
}

/// What the Docker front end keeps with a container (its record's extension): the
/// create body as sent, and what it decided (the name, the log file).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Extension {
    /// The create body, as JSON.
    pub create: serde_json::Value,
    /// The container's name, without the leading '/'.
    pub name: String,
    /// The log file (empty with the `none` log driver).
    pub log_path: String,
    /// The process's args (entrypoint and command resolved against the image).
    pub args: Vec<String>,
}

/// The options of the json-file and local log drivers (dockerd's `ValidateLogOpt`).
const LOG_OPTS: [&str; 8] = [
    "max-size",
    "max-file",
    "compress",
    "labels",
    "labels-regex",
    "env",
    "env-regex",
    "tag",
];

/// The log's rotation from `--log-opt max-size/max-file` (json-file: none unless
/// max-size is set; local: 20 MiB and 5 files unless set), with dockerd's errors.
/// `compress`, `labels`, `env` and `tag` are accepted and have no effect: rotated
/// files stay uncompressed and lines carry no attributes.
fn log_rotation(
    config: Option<&LogConfig>,
) -> Result<Option<crate::monitor::rotate::LogRotation>, ApiError> {
    let Some(config) = config else {
        return Ok(None);
    };
    let driver = if config.kind.is_empty() {
        "json-file"
    } else {
        config.kind.as_str()
    };
    if !matches!(driver, "json-file" | "local") {
        if let Some(key) = config.config.keys().min() {
            return Err(ApiError::bad_request(format!(
                "unknown log opt '{}' for {} log driver",
                bounded(key),
                bounded(driver)
            )));
        }
        return Ok(None);
    }
    let mut keys: Vec<&String> = config.config.keys().collect();
    keys.sort();
    if let Some(key) = keys.iter().find(|k| !LOG_OPTS.contains(&k.as_str())) {
        return Err(ApiError::bad_request(format!(
            "unknown log opt '{}' for {driver} log driver",
            bounded(key)
        )));
    }
    let (default_size, default_files) = if driver == "local" {
        (Some(20 << 20), 5)
    } else {
        (None, 1)
    };
    let max_size = match config.config.get("max-size").map(String::as_str) {
        None | Some("") => default_size,
        Some("-1") => None,
        Some(text) => Some(human_size(text).filter(|n| *n > 0).ok_or_else(|| {
            ApiError::bad_request(format!(
                "invalid value for log opt max-size: {:?} (a size such as 10m, 512k or 1g)",
                bounded(text)
            ))
        })?),
    };
    let max_files = match config.config.get("max-file").map(String::as_str) {
        None | Some("") => default_files,
        Some(text) => match text.parse::<i64>() {
            Ok(n) if n < 1 => return Err(ApiError::bad_request("max-file cannot be less than 1")),
            Ok(n) => u32::try_from(n).unwrap_or(u32::MAX),
            Err(_) => {
                return Err(ApiError::bad_request(format!(
                    "invalid value for log opt max-file: {:?}",
                    bounded(text)
                )))
            }
        },
    };
    match max_size {
        Some(max_size) => Ok(Some(crate::monitor::rotate::LogRotation {
            max_size,
            max_files,
        })),
        None if max_files > 1 => Err(ApiError::bad_request(
            "max-file can only be set when max-size is set",
        )),
        None => Ok(None),
    }
}

/// A size as dockerd's `units.RAMInBytes` reads it: a number, then an optional
/// binary unit (k, m, g, t, p; case and a trailing `b`/`ib` ignored).
fn human_size(text: &str) -> Option<u64> {
    let lower = text.trim().to_ascii_lowercase();
    let lower = lower
        .strip_suffix("ib")
        .or_else(|| lower.strip_suffix('b'))
        .unwrap_or(&lower);
    let split = lower
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(lower.len());
    let (number, unit) = lower.split_at(split);
    let number: f64 = number.parse().ok()?;
    let multiplier: u64 = match unit.trim() {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        "p" => 1 << 50,
        _ => return None,
    };
    let bytes = number * multiplier as f64;
    (bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64).then_some(bytes as u64)
}

/// Docker's rule for container names: `[a-zA-Z0-9][a-zA-Z0-9_.-]+`.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() >= 2
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

pub(super) fn bounded(text: &str) -> String {
    crate::image::bounded(text, crate::image::MAX_ECHO)
}

/// Docker's restart policy names, with dockerd's errors.
pub fn restart_policy(policy: Option<&RestartPolicy>) -> Result<CoreRestartPolicy, ApiError> {
    let Some(policy) = policy else {
        return Ok(CoreRestartPolicy::No);
    };
    let retries = policy.maximum_retry_count;
    if retries < 0 {
        return Err(ApiError::bad_request(
            "invalid restart policy: maximum retry count cannot be negative",
        ));
    }
    let core = match policy.name.as_str() {
        "" | "no" => CoreRestartPolicy::No,
        "always" => CoreRestartPolicy::Always,
        "unless-stopped" => CoreRestartPolicy::UnlessStopped,
        "on-failure" => {
            return Ok(CoreRestartPolicy::OnFailure {
                max_retries: u32::try_from(retries).unwrap_or(u32::MAX),
            })
        }
        other => {
            return Err(ApiError::bad_request(format!(
                "invalid restart policy '{}'",
                bounded(other)
            )))
        }
    };
    if retries != 0 {
        return Err(ApiError::bad_request(format!(
            "invalid restart policy: maximum retry count can only be used with 'on-failure' \
             (got '{}')",
            bounded(&policy.name)
        )));
    }
    Ok(core)
}

/// An update's resource fields over `resources` (a 0 or absent field keeps the current
/// value, as dockerd's update); whether anything changed.
pub fn merge_resources(resources: &mut Resources, update: &HostConfig) -> Result<bool, ApiError> {
    let before = resources.clone();
    if update.nano_cpus > 0 {
        if update.cpu_quota > 0 || update.cpu_period > 0 {
            return Err(ApiError::bad_request(
                "Conflicting options: Nano CPUs and CPU Period cannot both be set",
            ));
        }
        resources.cpu_period = 100_000;
        resources.cpu_quota = update.nano_cpus * 100_000 / 1_000_000_000;
    }
    let set = |field: &mut i64, value: i64| {
        if value != 0 {
            *field = value;
        }
    };
    set(&mut resources.cpu_quota, update.cpu_quota);
    set(&mut resources.cpu_period, update.cpu_period);
    set(&mut resources.cpu_shares, update.cpu_shares);
    set(&mut resources.memory_limit_in_bytes, update.memory);
    set(
        &mut resources.memory_swap_limit_in_bytes,
        update.memory_swap.max(0),
    );
    if let Some(limit) = update.pids_limit.filter(|l| *l != 0) {
        resources.pids_limit = limit.max(0);
    }
    if !update.cpuset_cpus.is_empty() {
        resources.cpuset_cpus = update.cpuset_cpus.clone();
    }
    if !update.cpuset_mems.is_empty() {
        resources.cpuset_mems = update.cpuset_mems.clone();
    }
    if resources.memory_swap_limit_in_bytes > 0
        && resources.memory_limit_in_bytes > resources.memory_swap_limit_in_bytes
    {
        return Err(ApiError::bad_request(
            "Memory limit should be smaller than already set memoryswap limit, update the memoryswap at the same time",
        ));
    }
    Ok(*resources != before)
}

/// `--security-opt` values: seccomp (unconfined, or a profile the CLI read from a file
/// and sent as JSON: `seccomp_file` gets it written), no-new-privileges.
fn security_opts(
    options: &[String],
    security: &mut SecurityOptions,
    seccomp_file: &std::path::Path,
) -> Result<Option<String>, ApiError> {
    let mut profile_json = None;
    for option in options {
        let (key, value) = option
            .split_once('=')
            .or_else(|| option.split_once(':'))
            .unwrap_or((option.as_str(), ""));
        match key {
            "seccomp" if value == "unconfined" => security.seccomp = Seccomp::Unconfined,
            "seccomp" if value.trim_start().starts_with('{') => {
                security.seccomp = Seccomp::Localhost(seccomp_file.display().to_string());
                profile_json = Some(value.to_string());
            }
            "no-new-privileges" if matches!(value, "" | "true") => security.no_new_privs = true,
            "no-new-privileges" if value == "false" => security.no_new_privs = false,
            "apparmor" | "label" => {} // no AppArmor or SELinux on wharf's hosts
            _ => {
                return Err(ApiError::bad_request(format!(
                    "invalid --security-opt: {:?}",
                    bounded(option)
                )))
            }
        }
    }
    Ok(profile_json)
}

/// What a create asks, as the core's pod and container, for the container `id` named
/// `name` whose log goes to `log_dir`/container.log. Also returns a seccomp profile
/// (JSON) to write to `seccomp_file` before the create.
pub fn specs(
    request: &CreateRequest,
    id: &str,
    name: &str,
    log_dir: &std::path::Path,
    seccomp_file: &std::path::Path,
) -> Result<(PodSpec, ContainerSpec, Option<String>), ApiError> {
    if request.image.is_empty() {
        return Err(ApiError::bad_request("Config.Image: no image specified"));
    }
    let host = request.host_config.clone().unwrap_or_default();
    let endpoint = |network: &str| {
        request
            .networking_config
            .as_ref()
            .and_then(|c| c.endpoints_config.as_ref())
            .and_then(|e| e.get(network))
            .cloned()
            .unwrap_or_default()
    };
    let mut networks = Vec::new();
    // The first network's endpoint: where a newer client puts --mac-address.
    let first_endpoint = match host.network_mode.as_str() {
        "" | "default" => endpoint("default").mac_address,
        mode => endpoint(mode).mac_address,
    };
    let mac_address = match (request.mac_address.as_str(), first_endpoint.as_str()) {
        ("", "") => String::new(),
        ("", mac) | (mac, _) => checked_mac(mac)?,
    };
    let network = match host.network_mode.as_str() {
        mode @ ("" | "default" | "bridge" | "host") => {
            // The CLI names the endpoint after the mode (`default` too).
            let all = ["default", "bridge", "host", mode].map(endpoint);
            if all.iter().any(|settings| {
                settings
                    .ipam_config
                    .as_ref()
                    .is_some_and(|c| !c.ipv4_address.is_empty() || !c.ipv6_address.is_empty())
            }) {
                return Err(ApiError::bad_request(
                    "user specified IP address is supported on user defined networks only",
                ));
            }
            if all
                .iter()
                .any(|settings| settings.aliases.as_ref().is_some_and(|a| !a.is_empty()))
            {
                return Err(ApiError::bad_request(
                    "network-scoped alias is supported only for containers in user defined networks",
                ));
            }
            if mode == "host" {
                NamespaceMode::Node
            } else {
                NamespaceMode::Pod
            }
        }
        // Loopback only: no endpoint settings apply (dockerd refuses them too).
        "none" => NamespaceMode::Pod,
        user if !user.starts_with("container:") => {
            let mut settings = endpoint(user);
            // The CLI copies `--link` into the endpoint; a client that sends only
            // HostConfig.Links means the same.
            if settings.links.as_ref().is_none_or(Vec::is_empty) {
                settings.links = host.links.clone();
            }
            networks.push(settings.request(user, id, name)?);
            NamespaceMode::Pod
        }
        other => {
            return Err(ApiError::bad_request(format!(
                "network mode {}: joining another container's network is not supported yet",
                bounded(other)
            )))
        }
    };
    let exposed = super::ports::exposed_ports(request.exposed_ports.as_ref())?;
    let bindings = super::ports::port_bindings(host.port_bindings.as_ref())?;
    // dockerd discards published ports on the host network (with a warning).
    let published_ports = if network == NamespaceMode::Node {
        Vec::new()
    } else {
        super::ports::published_ports(&exposed, &bindings, host.publish_all_ports)
    };
    let restart = restart_policy(host.restart_policy.as_ref())?;
    if host.auto_remove && restart != CoreRestartPolicy::No {
        return Err(ApiError::bad_request(
            "conflicting options: cannot specify both --restart and --rm",
        ));
    }
    let log_path = match host.log_config.as_ref().map(|l| l.kind.as_str()) {
        None | Some("" | "json-file" | "local") => "container.log".to_string(),
        Some("none") => String::new(),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "failed to create task for container: failed to initialize logging driver: \
                 logger: no log driver named '{}' is registered",
                bounded(other)
            )))
        }
    };
    let log_rotation = log_rotation(host.log_config.as_ref())?;
    let dns = DnsConfig {
        servers: host.dns.clone().unwrap_or_default(),
        searches: host.dns_search.clone().unwrap_or_default(),
        options: host.dns_options.clone().unwrap_or_default(),
    };
    let hostname = if request.hostname.is_empty() {
        id[..12].to_string()
    } else {
        request.hostname.clone()
    };
    let pod = PodSpec {
        name: name.to_string(),
        hostname,
        log_directory: log_dir.display().to_string(),
        dns: dns.is_given().then_some(dns),
        port_mappings: Vec::new(),
        labels: HashMap::new(),
        annotations: HashMap::new(),
        cgroup_parent: String::new(),
        sysctls: host.sysctls.clone().unwrap_or_default(),
        namespaces: NamespaceModes {
            network,
            ipc: NamespaceMode::Pod,
            pid: NamespaceMode::Container,
            target_id: String::new(),
        },
        privileged: host.privileged,
        network_args: Vec::new(),
        networks,
        loopback_only: host.network_mode == "none",
        mac_address,
    };

    let (command, args) = match request.entrypoint.clone().map(StringOrList::into_list) {
        Some(entrypoint) if entrypoint.iter().any(|e| !e.is_empty()) => (
            entrypoint,
            request
                .cmd
                .clone()
                .map(StringOrList::into_list)
                .unwrap_or_default(),
        ),
        // `--entrypoint ""`: no entrypoint, the command alone.
        Some(_) => (
            request
                .cmd
                .clone()
                .map(StringOrList::into_list)
                .unwrap_or_default(),
            Vec::new(),
        ),
        None => (
            Vec::new(),
            request
                .cmd
                .clone()
                .map(StringOrList::into_list)
                .unwrap_or_default(),
        ),
    };
    let mut env = Vec::new();
    for entry in request.env.clone().unwrap_or_default() {
        match entry.split_once('=') {
            Some((key, value)) if !key.is_empty() => env.push((key.to_string(), value.to_string())),
            // `-e NAME` with NAME unset on the client: the CLI leaves it out; a bare
            // name here sets nothing, as dockerd.
            None if !entry.is_empty() => {}
            _ => {
                return Err(ApiError::bad_request(format!(
                    "invalid environment variable: {}",
                    bounded(&entry)
                )))
            }
        }
    }
    // Binds and Mounts; VolumesFrom and the anonymous volumes are added by the
    // create, which can look up containers and the image.
    let mut mounts = super::mounts::explicit_mounts(
        host.binds.as_deref().unwrap_or_default(),
        host.mounts.as_deref().unwrap_or_default(),
        &host.volume_driver,
    )?;
    super::mounts::add_tmpfs_flags(&mut mounts, host.tmpfs.as_ref())?;

    let cpu_period = if host.nano_cpus > 0 {
        if host.cpu_quota > 0 || host.cpu_period > 0 {
            return Err(ApiError::bad_request(
                "Conflicting options: Nano CPUs and CPU Period cannot both be set",
            ));
        }
        100_000
    } else {
        host.cpu_period
    };
    let cpu_quota = if host.nano_cpus > 0 {
        host.nano_cpus * cpu_period / 1_000_000_000
    } else {
        host.cpu_quota
    };
    if host.memory_swap > 0 && host.memory > 0 && host.memory_swap < host.memory {
        return Err(ApiError::bad_request(
            "Minimum memoryswap limit should be larger than memory limit, see usage",
        ));
    }
    let resources = Resources {
        cpu_period,
        cpu_quota,
        cpu_shares: host.cpu_shares,
        memory_limit_in_bytes: host.memory,
        oom_score_adj: host.oom_score_adj,
        cpuset_cpus: host.cpuset_cpus.clone(),
        cpuset_mems: host.cpuset_mems.clone(),
        hugepage_limits: Vec::new(),
        unified: HashMap::new(),
        // -1: unlimited swap; 0: as much as the memory limit.
        memory_swap_limit_in_bytes: if host.memory_swap < 0 {
            0
        } else {
            host.memory_swap
        },
        pids_limit: host.pids_limit.unwrap_or(0).max(0),
    };
    let mut security = SecurityOptions {
        privileged: host.privileged,
        readonly_rootfs: host.readonly_rootfs,
        no_new_privs: false,
        capabilities: Capabilities {
            add: host.cap_add.clone().unwrap_or_default(),
            drop: host.cap_drop.clone().unwrap_or_default(),
            add_ambient: Vec::new(),
        },
        user: request.user.clone(),
        namespaces: NamespaceModes {
            pid: NamespaceMode::Container,
            ..Default::default()
        },
        // Docker confines with its default profile unless told otherwise.
        seccomp: Seccomp::RuntimeDefault,
        ..Default::default()
    };
    let profile = security_opts(
        &host.security_opt.clone().unwrap_or_default(),
        &mut security,
        seccomp_file,
    )?;
    let healthcheck = match &request.healthcheck {
        Some(config) => healthcheck(config)?,
        None => None,
    };
    let devices = device_mappings(host.devices.as_deref().unwrap_or_default())?;
    let (cdi_devices, _) = device_requests(host.device_requests.as_deref().unwrap_or_default())?;
    let container = ContainerSpec {
        healthcheck,
        requested_id: Some(id.to_string()),
        name: name.to_string(),
        image: request.image.clone(),
        command,
        args,
        working_dir: request.working_dir.clone(),
        env,
        mounts,
        devices,
        cdi_devices,
        labels: request.labels.clone().unwrap_or_default(),
        annotations: HashMap::new(),
        log_path,
        log_rotation,
        stdin: request.open_stdin,
        // dockerd closes the stdin of a StdinOnce container when an attach's input
        // ends only without a TTY: a terminal's session outlives its client (and a
        // client that detaches leaves it as it was).
        stdin_once: request.stdin_once && !request.tty,
        tty: request.tty,
        auto_remove: host.auto_remove,
        restart,
        stop_signal: request.stop_signal.clone().filter(|s| !s.is_empty()),
        resources: Some(resources),
        security,
        published_ports,
    };
    Ok((pod, container, profile))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn log_opts_give_the_rotation_dockerd_would() {
        use crate::monitor::rotate::LogRotation;
        let rotation = |kind: &str, opts: &[(&str, &str)]| {
            log_rotation(Some(&LogConfig {
                kind: kind.into(),
                config: opts
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            }))
        };
        assert_eq!(rotation("json-file", &[]).unwrap(), None);
        assert_eq!(
            rotation("", &[("max-size", "10m"), ("max-file", "3")]).unwrap(),
            Some(LogRotation {
                max_size: 10 << 20,
                max_files: 3
            })
        );
        assert_eq!(
            rotation("json-file", &[("max-size", "1.5KiB")]).unwrap(),
            Some(LogRotation {
                max_size: 1536,
                max_files: 1
            })
        );
        assert_eq!(
            rotation("local", &[]).unwrap(),
            Some(LogRotation {
                max_size: 20 << 20,
                max_files: 5
            })
        );
        for (opts, words) in [
            (vec![("max-size", "ten")], "max-size"),
            (vec![("max-size", "0")], "max-size"),
            (vec![("max-file", "0")], "max-file cannot be less than 1"),
            (
                vec![("max-file", "3")],
                "max-file can only be set when max-size is set",
            ),
            (
                vec![("max-sise", "1m")],
                "unknown log opt 'max-sise' for json-file",
            ),
        ] {
            let err = rotation("json-file", &opts).unwrap_err().to_string();
            assert!(err.contains(words), "{opts:?}: {err}");
        }
        assert!(rotation("none", &[("max-size", "1m")]).is_err());
        assert_eq!(human_size("512k"), Some(512 << 10));
        assert_eq!(human_size("2g"), Some(2 << 30));
        assert_eq!(human_size("100"), Some(100));
        assert_eq!(human_size("1x"), None);
    }

    fn specs_of(json: serde_json::Value) -> Result<(PodSpec, ContainerSpec), ApiError> {
        let request: CreateRequest = serde_json::from_value(json).unwrap();
        specs(
            &request,
            ID,
            "web",
            std::path::Path::new("/logs"),
            std::path::Path::new("/seccomp.json"),
        )
        .map(|(p, c, _)| (p, c))
    }

    #[test]
    fn names() {
        assert!(valid_name("web-1"));
        assert!(valid_name("a.b_c"));
        assert!(!valid_name("a"));
        assert!(!valid_name("-web"));
        assert!(!valid_name("we/b"));
    }

    #[test]
    fn a_create_body_becomes_pod_and_container() {
        let (pod, c) = specs_of(serde_json::json!({
            "Image": "busybox",
            "Cmd": ["echo", "hi"],
            "Env": ["A=1", "B=x=y"],
            "User": "1000:1000",
            "Labels": {"app": "web"},
            "HostConfig": {
                "Binds": ["/srv:/data:ro"],
                "NanoCpus": 500000000,
                "Memory": 67108864,
                "PidsLimit": 64,
                "CapAdd": ["NET_ADMIN"],
                "SecurityOpt": ["no-new-privileges"],
                "Dns": ["10.0.0.53"]
            }
        }))
        .unwrap();
        assert_eq!(pod.hostname, "0123456789ab");
        assert_eq!(pod.dns.unwrap().servers, vec!["10.0.0.53"]);
        assert_eq!(pod.namespaces.network, NamespaceMode::Pod);
        assert_eq!(c.command, Vec::<String>::new());
        assert_eq!(c.args, vec!["echo", "hi"]);
        assert_eq!(c.env[1], ("B".to_string(), "x=y".to_string()));
        assert_eq!(c.security.user, "1000:1000");
        assert!(c.security.no_new_privs);
        assert_eq!(c.security.seccomp, Seccomp::RuntimeDefault);
        assert_eq!(c.mounts[0].host_path, "/srv");
        assert!(c.mounts[0].readonly);
        let r = c.resources.unwrap();
        assert_eq!((r.cpu_period, r.cpu_quota), (100_000, 50_000));
        assert_eq!(r.pids_limit, 64);
        assert_eq!(c.requested_id.as_deref(), Some(ID));

        let (_, c) = specs_of(
            serde_json::json!({"Image": "b", "Entrypoint": ["/bin/sh"], "Cmd": ["-c", "x"]}),
        )
        .unwrap();
        assert_eq!(
            (c.command, c.args),
            (vec!["/bin/sh".into()], vec!["-c".into(), "x".into()])
        );
        let (_, c) =
            specs_of(serde_json::json!({"Image": "b", "Entrypoint": "", "Cmd": "ls"})).unwrap();
        assert_eq!((c.command, c.args), (vec!["ls".to_string()], vec![]));
    }

    #[test]
    fn what_is_refused_says_why() {
        let err = |json| specs_of(json).unwrap_err().message;
        assert!(err(serde_json::json!({})).contains("no image"));
        assert!(
            err(serde_json::json!({"Image": "b", "HostConfig": {"Binds": ["/vol:ro"]}}))
                .contains("invalid volume specification")
        );
        assert!(err(
            serde_json::json!({"Image": "b", "HostConfig": {"LogConfig": {"Type": "syslog"}}})
        )
        .contains("no log driver named 'syslog'"));
        assert!(
            err(serde_json::json!({"Image": "b", "HostConfig": {"SecurityOpt": ["bogus"]}}))
                .contains("--security-opt")
        );
        assert!(err(
            serde_json::json!({"Image": "b", "HostConfig": {"NetworkMode": "container:x"}})
        )
        .contains("container:x"));
        assert!(err(serde_json::json!({
            "Image": "b",
            "NetworkingConfig": {"EndpointsConfig": {"bridge": {"IPAMConfig": {"IPv4Address": "10.0.0.9"}}}}
        }))
        .contains("user defined networks only"));
    }
}
