//! Legacy links (`--link NAME[:ALIAS]`) and extra hosts (`--add-host HOST:IP`), as
//! dockerd 20.10 gives them:
//! - on the default bridge, a link names a container that must exist at create (400
//!   otherwise) and run at each start; the linked container's address is written into
//!   /etc/hosts under the alias, its hostname and its name, and the `ALIAS_PORT_...`,
//!   `ALIAS_NAME`, `ALIAS_ENV_...` variables (moby's `links.Link.ToEnv`) are set at
//!   create;
//! - on a user-defined network, a link is an alias only the linking container resolves
//!   (the embedded DNS answers it with the linked container's address there);
//! - extra hosts are written into /etc/hosts, `host-gateway` being the address of the
//!   host on the container's network.
//!
//! /etc/hosts is rewritten at each start, so a linked container's address is the one
//! it has when the linking container starts.

use std::collections::HashSet;
use std::net::IpAddr;

use serde_json::Value;

use super::containers::{extension, find};
use super::convert::bounded;
use super::convert::Extension;
use super::error::ApiError;
use super::DockerServer;
use crate::runtime::{ContainerRecord, ContainerState};

/// One `--link`: the linked container's name and the alias the linking one uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    pub alias: String,
}

/// Parses `NAME[:ALIAS]` (a leading `/` on either is dropped, as moby's ParseLink).
pub fn parse_link(text: &str) -> Result<Link, ApiError> {
    let bad = || ApiError::bad_request(format!("bad format for links: {}", bounded(text)));
    let mut parts = text.split(':');
    let name = parts.next().unwrap_or_default().trim_start_matches('/');
    let alias = parts.next().map(|a| a.trim_start_matches('/'));
    if parts.next().is_some() || name.is_empty() || alias == Some("") {
        return Err(bad());
    }
    // dockerd stores `/parent/alias`; a client sending that back gives the last part.
    let alias = alias.map(|a| a.rsplit('/').next().unwrap_or(a));
    Ok(Link {
        name: name.to_string(),
        alias: alias.unwrap_or(name).to_string(),
    })
}

/// Where an extra host points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostAddress {
    Ip(IpAddr),
    /// `host-gateway`: the host's address on the container's network.
    Gateway,
}

/// Parses `HOST:IP` (or `HOST=IP`; the IP may be IPv6, with colons, or `host-gateway`).
pub fn parse_extra_host(text: &str) -> Result<(String, HostAddress), ApiError> {
    let split = match (text.find('='), text.find(':')) {
        (Some(eq), Some(colon)) => Some(eq.min(colon)),
        (Some(at), None) | (None, Some(at)) => Some(at),
        (None, None) => None,
    };
    let (host, address) = match split.map(|at| (&text[..at], &text[at + 1..])) {
        Some((host, address)) if !host.is_empty() => (host, address),
        _ => {
            return Err(ApiError::bad_request(format!(
                "invalid extra host {}: expected HOST:IP",
                bounded(text)
            )))
        }
    };
    if host.chars().any(|c| c.is_whitespace() || c == '#') {
        return Err(ApiError::bad_request(format!(
            "invalid extra host {}: {} is not a host name",
            bounded(text),
            bounded(host)
        )));
    }
    let address = if address == "host-gateway" {
        HostAddress::Gateway
    } else {
        let ip = address
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .map_err(|_| {
                ApiError::bad_request(format!(
                    "invalid IP address in add-host: {:?}",
                    bounded(address)
                ))
            })?;
        HostAddress::Ip(ip)
    };
    Ok((host.to_string(), address))
}

/// The links and extra hosts of a create request, checked before anything is made:
/// legacy links (default bridge) must name existing containers on the default bridge.
pub fn check(
    server: &DockerServer,
    links: &[String],
    extra_hosts: &[String],
    on_default_bridge: bool,
) -> Result<Vec<(Link, Option<ContainerRecord>)>, ApiError> {
    for entry in extra_hosts {
        parse_extra_host(entry)?;
    }
    let mut checked = Vec::new();
    for entry in links {
        let link = parse_link(entry)?;
        if !on_default_bridge {
            checked.push((link, None));
            continue;
        }
        let child = find(server, &link.name).map_err(|err| {
            ApiError::bad_request(format!(
                "could not get container for {}: {}",
                bounded(&link.name),
                err.message
            ))
        })?;
        if !on_bridge(server, &child) {
            return Err(ApiError::bad_request(format!(
                "Cannot link to /{}, as it does not belong to the default network",
                child.spec.name
            )));
        }
        checked.push((link, Some(child)));
    }
    Ok(checked)
}

/// Whether a container is on the default bridge (its network mode default or bridge).
fn on_bridge(server: &DockerServer, c: &ContainerRecord) -> bool {
    on_bridge_with(server, &extension(c), c)
}

/// [`on_bridge`] with the container's extension already read.
fn on_bridge_with(server: &DockerServer, ext: &Extension, c: &ContainerRecord) -> bool {
    matches!(
        super::containers::network_mode(ext).as_str(),
        "" | "default" | "bridge"
    ) && server.runtime.pod_ip(&c.pod_id).is_some()
}

/// The variables a link sets in the linking container (moby's `Link.ToEnv`).
pub fn link_env(parent: &str, link: &Link, child: &ContainerRecord, ip: &str) -> Vec<String> {
    let alias = link.alias.to_uppercase().replace('-', "_");
    let create = &extension(child).create;
    let mut ports: Vec<(u16, String)> = create
        .get("ExposedPorts")
        .and_then(Value::as_object)
        .map(|ports| {
            ports
                .keys()
                .filter_map(|key| {
                    let (port, proto) = key.split_once('/').unwrap_or((key, "tcp"));
                    Some((port.parse().ok()?, proto.to_ascii_lowercase()))
                })
                .collect()
        })
        .unwrap_or_default();
    // By number, tcp first among equals: the first is the default port.
    ports.sort_by(|a, b| {
        a.0.cmp(&b.0)
            .then_with(|| (a.1 != "tcp").cmp(&(b.1 != "tcp")))
    });
    ports.dedup();
    let mut env = Vec::new();
    if let Some((port, proto)) = ports.first() {
        env.push(format!("{alias}_PORT={proto}://{ip}:{port}"));
    }
    for (port, proto) in &ports {
        let upper = proto.to_uppercase();
        env.push(format!("{alias}_PORT_{port}_{upper}={proto}://{ip}:{port}"));
        env.push(format!("{alias}_PORT_{port}_{upper}_ADDR={ip}"));
        env.push(format!("{alias}_PORT_{port}_{upper}_PORT={port}"));
        env.push(format!("{alias}_PORT_{port}_{upper}_PROTO={proto}"));
    }
    env.push(format!("{alias}_NAME=/{parent}/{}", link.alias));
    let child_env = create.get("Env").and_then(Value::as_array);
    for entry in child_env.into_iter().flatten().filter_map(Value::as_str) {
        if let Some((key, value)) = entry.split_once('=') {
            if key != "HOME" && key != "PATH" {
                env.push(format!("{alias}_ENV_{key}={value}"));
            }
        }
    }
    env
}

/// The links and extra hosts of a container's stored create body.
fn stored(create: &Value) -> (Vec<String>, Vec<String>) {
    let list = |pointer: &str| -> Vec<String> {
        create
            .pointer(pointer)
            .and_then(Value::as_array)
            .map(|items| {
                items
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    };
    (list("/HostConfig/Links"), list("/HostConfig/ExtraHosts"))
}

/// `HostConfig.Links` as dockerd's inspect shows them: `/child:/parent/alias`.
pub fn inspect_links(c: &ContainerRecord, create: &Value) -> Value {
    let (links, _) = stored(create);
    if links.is_empty() {
        return Value::Null;
    }
    Value::Array(
        links
            .iter()
            .filter_map(|entry| parse_link(entry).ok())
            .map(|l| Value::String(format!("/{}:/{}/{}", l.name, c.spec.name, l.alias)))
            .collect(),
    )
}

/// Before a start: every linked container (default bridge) must run (dockerd's words,
/// a 500 as dockerd's plain error), and /etc/hosts is written with the extra hosts,
/// the links' addresses as they are now and the container's own address.
pub async fn prepare_start(server: &DockerServer, c: &ContainerRecord) -> Result<(), ApiError> {
    let Some(pod) = server.runtime.pod(&c.pod_id) else {
        return Ok(());
    };
    let ext = extension(c);
    let (links, extra_hosts) = stored(&ext.create);
    let own_ip = first_ip(server, c);
    let mut entries: Vec<(String, String)> = Vec::new();
    for entry in &extra_hosts {
        let Ok((host, address)) = parse_extra_host(entry) else {
            continue;
        };
        let ip = match address {
            HostAddress::Ip(ip) => ip.to_string(),
            HostAddress::Gateway => host_gateway(server, own_ip.as_deref()).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "add-host {}: no host-gateway address for container {}: it has no network address",
                    bounded(entry),
                    c.spec.name
                ))
            })?,
        };
        entries.push((ip, host));
    }
    if on_bridge_with(server, &ext, c) {
        let mut seen = HashSet::new();
        for link in links.iter().filter_map(|l| parse_link(l).ok()) {
            if !seen.insert(link.alias.clone()) {
                continue;
            }
            // By name first, as dockerd's links are kept (not by an ID prefix).
            let child = find(server, &link.name).ok();
            let running = child
                .as_ref()
                .filter(|child| child.state == ContainerState::Running);
            let Some(child) = running else {
                return Err(ApiError::internal(format!(
                    "Cannot link to a non running container: /{} AS /{}/{}",
                    link.name, c.spec.name, link.alias
                )));
            };
            let Some(ip) = server.runtime.pod_ip(&child.pod_id) else {
                continue;
            };
            let child_hostname = server
                .runtime
                .pod(&child.pod_id)
                .map(|p| p.spec.hostname)
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| child.id[..12].to_string());
            let mut names = format!("{} {child_hostname}", link.alias);
            if link.alias != child.spec.name {
                names.push(' ');
                names.push_str(&child.spec.name);
            }
            entries.push((ip, names));
        }
    }
    let hostname = if pod.spec.hostname.is_empty() {
        c.id[..12].to_string()
    } else {
        pod.spec.hostname.clone()
    };
    server
        .runtime
        .write_pod_hosts(&c.pod_id, &entries, own_ip.as_deref(), &hostname)
        .await
        .map_err(ApiError::from)
}

/// The container's first address: the default bridge's, else its first user network's.
fn first_ip(server: &DockerServer, c: &ContainerRecord) -> Option<String> {
    server.runtime.pod_ip(&c.pod_id).or_else(|| {
        server
            .runtime
            .networks()
            .endpoints_of_pod(&c.pod_id)
            .into_iter()
            .find_map(|(_, e)| e.ip.map(|ip| ip.to_string()))
    })
}

/// The host's address on the network of `ip` (its bridge's), else on the built-in
/// bridge (a container without a network of its own).
fn host_gateway(server: &DockerServer, ip: Option<&str>) -> Option<String> {
    let ip: Option<std::net::Ipv4Addr> = ip.and_then(|ip| ip.parse().ok());
    let bridge = server.config.network.bridge.name.clone();
    let mut fallback = None;
    for interface in nix::ifaddrs::getifaddrs().ok()? {
        let (Some(address), Some(mask)) = (interface.address, interface.netmask) else {
            continue;
        };
        let (Some(address), Some(mask)) = (address.as_sockaddr_in(), mask.as_sockaddr_in()) else {
            continue;
        };
        let (address, mask) = (address.ip(), u32::from(mask.ip()));
        if let Some(ip) = ip {
            if u32::from(ip) & mask == u32::from(address) & mask && ip != address {
                return Some(address.to_string());
            }
        }
        if interface.interface_name == bridge {
            fallback = Some(address.to_string());
        }
    }
    fallback
}
