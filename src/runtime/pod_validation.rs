//! What a pod spec may ask, checked before RunPodSandbox makes anything: the
//! log directory, the hostname, the DNS config, the port mappings and the sysctls.
//! Error messages echo request values bounded (`truncated`).

use std::path::Path;

use super::model::{DnsConfig, PodSpec};

use super::service::{Result, RuntimeError};
use crate::cni::PortMapping;

/// Checks everything in a pod spec that RunPodSandbox would otherwise find
/// wrong half-way (or never), before anything is made.
pub(super) fn validate_pod_config(
    config: &PodSpec,
    host_network: bool,
    host_ipc: bool,
) -> Result<()> {
    if !config.log_directory.is_empty() && !Path::new(&config.log_directory).is_absolute() {
        return Err(RuntimeError::invalid(
            "config.log_directory",
            format!(
                "{:?} is not an absolute path",
                truncated(&config.log_directory)
            ),
        ));
    }
    if !host_network && !config.hostname.is_empty() {
        check_hostname(&config.hostname)?;
    }
    if let Some(dns) = given_dns_config(config.dns.as_ref()) {
        check_dns_config(dns)?;
    }
    port_mappings(config)?;
    super::spec::check_sysctls(&config.sysctls, !host_network, !host_ipc)?;
    Ok(())
}

/// A pod hostname: at most 63 bytes (HOST_NAME_MAX is 64 with the NUL), letters,
/// digits, '-' and '.', starting and ending with a letter or digit (RFC 1123; dots as
/// kubelet keeps them from pod names). It goes into /etc/hostname and /etc/hosts.
fn check_hostname(hostname: &str) -> Result<()> {
    const MAX: usize = 63;
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    let valid = hostname.len() <= MAX
        && hostname
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        && alnum(hostname.chars().next())
        && alnum(hostname.chars().last());
    if valid {
        Ok(())
    } else {
        Err(RuntimeError::invalid(
            "config.hostname",
            format!(
                "{:?} is not a valid hostname (RFC 1123: at most {MAX} letters, digits, \
                 '-' and '.', starting and ending with a letter or digit)",
                truncated(hostname)
            ),
        ))
    }
}

/// DNS servers are IP addresses; servers, searches and options are single words.
pub(super) fn check_dns_config(dns: &DnsConfig) -> Result<()> {
    for (i, value) in dns
        .servers
        .iter()
        .chain(&dns.searches)
        .chain(&dns.options)
        .enumerate()
    {
        if value.is_empty() || value.contains(|c: char| c.is_whitespace() || c.is_control()) {
            return Err(RuntimeError::invalid(
                "config.dns_config",
                format!(
                    "entry {i} {:?} is empty or contains whitespace",
                    truncated(value)
                ),
            ));
        }
    }
    for (i, server) in dns.servers.iter().enumerate() {
        if server.parse::<std::net::IpAddr>().is_err() {
            return Err(RuntimeError::invalid(
                format!("config.dns_config.servers[{i}]"),
                format!("{:?} is not an IP address", truncated(server)),
            ));
        }
    }
    Ok(())
}

/// What error messages echo of a value taken from a request (256 bytes at most).
fn truncated(value: &str) -> String {
    crate::image::bounded(value, crate::image::MAX_ECHO)
}

/// The pod's DNS config when it says anything.
pub(super) fn given_dns_config(dns: Option<&DnsConfig>) -> Option<&DnsConfig> {
    dns.filter(|d| d.is_given())
}

/// The pod's host port mappings (those with a host port), checked: ports in 1..65535,
/// a host IP that is an address (or empty: every address).
pub(super) fn port_mappings(config: &PodSpec) -> Result<Vec<PortMapping>> {
    let mut port_mappings = Vec::new();
    for (i, m) in config.port_mappings.iter().enumerate() {
        let port = |v: i32, field: &str| {
            u16::try_from(v).ok().filter(|p| *p > 0).ok_or_else(|| {
                RuntimeError::invalid(
                    format!("config.port_mappings[{i}].{field}"),
                    format!("{v} is not a port number"),
                )
            })
        };
        let container_port = port(m.container_port, "container_port")?;
        if !m.host_ip.is_empty() && m.host_ip.parse::<std::net::IpAddr>().is_err() {
            return Err(RuntimeError::invalid(
                format!("config.port_mappings[{i}].host_ip"),
                format!("{:?} is not an IP address", truncated(&m.host_ip)),
            ));
        }
        if m.host_port == 0 {
            continue;
        }
        port_mappings.push(PortMapping {
            host_port: port(m.host_port, "host_port")?,
            container_port,
            protocol: m.protocol.as_str().to_string(),
            host_ip: m.host_ip.clone(),
        });
    }
    Ok(port_mappings)
}
