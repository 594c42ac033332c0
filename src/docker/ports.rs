//! Published and exposed ports as the Docker API has them: `HostConfig.PortBindings`,
//! `PublishAllPorts` and `Config.ExposedPorts` (merged with the image's) to the core's
//! published ports, checked with dockerd's messages; and back, from what the runtime
//! published at the last start, to inspect's `NetworkSettings.Ports`, the list's
//! `Ports` and the `publish` / `expose` filters of `docker ps`.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Map, Value};

use super::error::ApiError;
use crate::runtime::model::{Protocol, PublishedPort};
use crate::runtime::{ContainerRecord, ContainerState};

/// A container port: number and protocol (`80/tcp`), ordered as dockerd sorts them.
pub type Port = (u16, Protocol);

fn bounded(text: &str) -> String {
    crate::image::bounded(text, crate::image::MAX_ECHO)
}

fn invalid_spec(text: &str) -> ApiError {
    ApiError::bad_request(format!("invalid port specification: {:?}", bounded(text)))
}

fn protocol(text: &str) -> Result<Protocol, ApiError> {
    match text.to_ascii_lowercase().as_str() {
        "" | "tcp" => Ok(Protocol::Tcp),
        "udp" => Ok(Protocol::Udp),
        "sctp" => Ok(Protocol::Sctp),
        _ => Err(ApiError::bad_request(format!(
            "invalid proto: {}",
            bounded(text)
        ))),
    }
}

/// A port number 1-65535 (dockerd takes 0 in a key as no port at all: refused).
fn port_number(text: &str) -> Option<u16> {
    let text = text.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<u16>().ok().filter(|p| *p > 0)
}

/// `first[-last]`, first <= last.
fn port_range(text: &str) -> Option<(u16, u16)> {
    let (first, last) = text.split_once('-').unwrap_or((text, text));
    let (first, last) = (port_number(first)?, port_number(last)?);
    (first <= last).then_some((first, last))
}

/// A `port[/proto]` key of `ExposedPorts` (a range is each of its ports).
fn exposed_key(key: &str) -> Result<Vec<Port>, ApiError> {
    let (port, proto) = key.split_once('/').unwrap_or((key, "tcp"));
    let proto = protocol(proto)?;
    let (first, last) = port_range(port).ok_or_else(|| invalid_spec(port))?;
    Ok((first..=last).map(|p| (p, proto)).collect())
}

/// A `port[/proto]` key of `PortBindings`: one port.
fn binding_key(key: &str) -> Result<Port, ApiError> {
    let (port, proto) = key.split_once('/').unwrap_or((key, "tcp"));
    let proto = protocol(proto)?;
    let port = port_number(port).ok_or_else(|| invalid_spec(port))?;
    Ok((port, proto))
}

/// The ports of an `ExposedPorts` object (null or absent: none).
pub fn exposed_ports(value: Option<&Value>) -> Result<BTreeSet<Port>, ApiError> {
    let mut ports = BTreeSet::new();
    match value {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            for key in map.keys() {
                ports.extend(exposed_key(key)?);
            }
        }
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid container config: ExposedPorts is not an object",
            ))
        }
    }
    Ok(ports)
}

/// One binding of `PortBindings`: host address and host port (or range) as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub host_ip: String,
    pub host_port: String,
}

/// `PortBindings`: each container port with its bindings (null: none), checked.
pub fn port_bindings(value: Option<&Value>) -> Result<BTreeMap<Port, Vec<Binding>>, ApiError> {
    let mut bindings = BTreeMap::new();
    let map = match value {
        None | Some(Value::Null) => return Ok(bindings),
        Some(Value::Object(map)) => map,
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid container config: HostConfig.PortBindings is not an object",
            ))
        }
    };
    for (key, list) in map {
        let port = binding_key(key)?;
        let entry: &mut Vec<Binding> = bindings.entry(port).or_default();
        let items = match list {
            Value::Null => continue,
            Value::Array(items) => items,
            _ => {
                return Err(ApiError::bad_request(format!(
                    "invalid container config: HostConfig.PortBindings[{:?}] is not a list",
                    bounded(key)
                )))
            }
        };
        for item in items {
            let text = |field: &str| match item.get(field) {
                Some(Value::String(s)) => s.trim().to_string(),
                Some(Value::Number(n)) => n.to_string(),
                _ => String::new(),
            };
            let binding = Binding {
                host_ip: text("HostIp"),
                host_port: text("HostPort"),
            };
            check_binding(&binding)?;
            entry.push(binding);
        }
    }
    Ok(bindings)
}

/// dockerd's checks (`validatePortBindings`) and go-connections' address check.
fn check_binding(binding: &Binding) -> Result<(), ApiError> {
    if !binding.host_port.is_empty() && binding.host_port != "0" {
        let port = binding
            .host_port
            .split_once('/')
            .map_or(binding.host_port.as_str(), |(port, _)| port);
        port_range(port).ok_or_else(|| invalid_spec(&binding.host_port))?;
    }
    let ip = binding
        .host_ip
        .strip_prefix('[')
        .and_then(|ip| ip.strip_suffix(']'))
        .unwrap_or(&binding.host_ip);
    match ip.parse::<std::net::IpAddr>() {
        _ if ip.is_empty() => Ok(()),
        Ok(std::net::IpAddr::V4(_)) => Ok(()),
        Ok(std::net::IpAddr::V6(_)) => Err(ApiError::bad_request(format!(
            "invalid IP address {}: ports are published on IPv4 addresses only \
             (wharf's bridge network is IPv4 only)",
            bounded(&binding.host_ip)
        ))),
        Err(_) => Err(ApiError::bad_request(format!(
            "invalid IP address: {}",
            bounded(&binding.host_ip)
        ))),
    }
}

/// What the runtime publishes: each binding of each port (dockerd's order: by port),
/// plus, with `PublishAllPorts`, each exposed port without a binding on a random host
/// port.
pub fn published_ports(
    exposed: &BTreeSet<Port>,
    bindings: &BTreeMap<Port, Vec<Binding>>,
    publish_all: bool,
) -> Vec<PublishedPort> {
    let mut ports: BTreeSet<Port> = exposed.clone();
    ports.extend(bindings.keys().copied());
    let mut published = Vec::new();
    for port in ports {
        let list = bindings.get(&port).map(Vec::as_slice).unwrap_or_default();
        for binding in list {
            let host = binding
                .host_port
                .split_once('/')
                .map_or(binding.host_port.as_str(), |(port, _)| port);
            let (first, last) = port_range(host).unwrap_or((0, 0));
            let ip = binding
                .host_ip
                .trim_start_matches('[')
                .trim_end_matches(']');
            published.push(PublishedPort {
                protocol: port.1,
                container_port: port.0,
                host_port_first: first,
                host_port_last: last,
                host_ip: if ip == "0.0.0.0" {
                    String::new()
                } else {
                    ip.to_string()
                },
            });
        }
        if publish_all && list.is_empty() {
            published.push(PublishedPort {
                protocol: port.1,
                container_port: port.0,
                ..Default::default()
            });
        }
    }
    published
}

/// The container's exposed ports and bound ports as its create body (with the image's
/// ports merged in) has them; what cannot be read counts as absent.
fn declared_ports(create: &Value) -> BTreeSet<Port> {
    let mut ports = exposed_ports(create.get("ExposedPorts")).unwrap_or_default();
    if let Ok(bindings) = port_bindings(create.pointer("/HostConfig/PortBindings")) {
        ports.extend(bindings.keys().copied());
    }
    ports
}

fn key_of(port: &Port) -> String {
    format!("{}/{}", port.0, port.1.as_str())
}

fn running(c: &ContainerRecord) -> bool {
    c.state == ContainerState::Running
}

/// One row of the port table: a container port and, when published, host address and
/// port.
type Row = (Port, Option<(String, u16)>);

/// The ports dockerd reports for a container: none unless it runs; then each declared
/// port, with each host binding it got.
fn rows(c: &ContainerRecord, create: &Value) -> Vec<Row> {
    if !running(c) {
        return Vec::new();
    }
    let mut ports = declared_ports(create);
    for p in &c.published_ports {
        if let Ok(number) = u16::try_from(p.container_port) {
            ports.insert((number, p.protocol));
        }
    }
    let mut rows = Vec::new();
    for port in ports {
        let mut bound = false;
        for p in &c.published_ports {
            if i32::from(port.0) == p.container_port && p.protocol == port.1 {
                let ip = if p.host_ip.is_empty() {
                    "0.0.0.0".to_string()
                } else {
                    p.host_ip.clone()
                };
                rows.push((port, Some((ip, u16::try_from(p.host_port).unwrap_or(0)))));
                bound = true;
            }
        }
        if !bound {
            rows.push((port, None));
        }
    }
    rows
}

/// Inspect's `NetworkSettings.Ports`: `{"80/tcp": [{"HostIp", "HostPort"}], "443/tcp":
/// null}` while it runs, `{}` otherwise.
pub fn network_settings_ports(c: &ContainerRecord, create: &Value) -> Value {
    let mut map = Map::new();
    for (port, binding) in rows(c, create) {
        let entry = map.entry(key_of(&port)).or_insert(Value::Null);
        if let Some((ip, host_port)) = binding {
            if !entry.is_array() {
                *entry = Value::Array(Vec::new());
            }
            if let Value::Array(list) = entry {
                list.push(json!({"HostIp": ip, "HostPort": host_port.to_string()}));
            }
        }
    }
    Value::Object(map)
}

/// The list's `Ports`: `{"IP", "PrivatePort", "PublicPort", "Type"}` per binding,
/// `{"PrivatePort", "Type"}` per port exposed only.
pub fn list_ports(c: &ContainerRecord, create: &Value) -> Value {
    Value::Array(
        rows(c, create)
            .into_iter()
            .map(|(port, binding)| match binding {
                Some((ip, host_port)) => json!({
                    "IP": ip,
                    "PrivatePort": port.0,
                    "PublicPort": host_port,
                    "Type": port.1.as_str(),
                }),
                None => json!({"PrivatePort": port.0, "Type": port.1.as_str()}),
            })
            .collect(),
    )
}

/// A `publish` / `expose` filter value as a set: `port[/proto]` or `first-last[/proto]`
/// (already checked by the list).
fn filter_ports(value: &str) -> Vec<Port> {
    let (port, proto) = value.split_once('/').unwrap_or((value, "tcp"));
    let Ok(proto) = protocol(proto) else {
        return Vec::new();
    };
    let (first, last) = port.split_once('-').unwrap_or((port, port));
    match (first.parse::<u16>(), last.parse::<u16>()) {
        (Ok(first), Ok(last)) => (first..=last).map(|p| (p, proto)).collect(),
        _ => Vec::new(),
    }
}

/// dockerd's `publish` (a host port) and `expose` (a container port) filters, matched
/// against the list's `Ports` of the container.
pub fn matches_filter(c: &ContainerRecord, create: &Value, key: &str, values: &[String]) -> bool {
    let wanted: Vec<Port> = values.iter().flat_map(|v| filter_ports(v)).collect();
    rows(c, create).iter().any(|(port, binding)| match key {
        "publish" => binding
            .as_ref()
            .is_some_and(|(_, host)| wanted.contains(&(*host, port.1))),
        _ => wanted.contains(port),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bindings_are_checked_with_dockerds_words() {
        let bad = |value: Value| port_bindings(Some(&value)).unwrap_err().message;
        assert_eq!(
            bad(json!({"0/tcp": null})),
            "invalid port specification: \"0\""
        );
        assert_eq!(
            bad(json!({"70000/tcp": null})),
            "invalid port specification: \"70000\""
        );
        assert_eq!(bad(json!({"80/icmp": null})), "invalid proto: icmp");
        assert_eq!(
            bad(json!({"80/tcp": [{"HostIp": "", "HostPort": "70000"}]})),
            "invalid port specification: \"70000\""
        );
        assert_eq!(
            bad(json!({"80/tcp": [{"HostIp": "", "HostPort": "9-8"}]})),
            "invalid port specification: \"9-8\""
        );
        assert_eq!(
            bad(json!({"80/tcp": [{"HostIp": "1.2.3", "HostPort": "8080"}]})),
            "invalid IP address: 1.2.3"
        );
        assert!(bad(json!({"80/tcp": [{"HostIp": "::1", "HostPort": "1"}]})).contains("IPv4"));
        let ok = port_bindings(Some(&json!({
            "80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8080"}, {"HostIp": "", "HostPort": ""}],
            "53/udp": [{"HostIp": "0.0.0.0", "HostPort": "5300-5310"}],
            "81": null,
        })))
        .unwrap();
        assert_eq!(ok.len(), 3);
        let published = published_ports(&BTreeSet::from([(443, Protocol::Tcp)]), &ok, true);
        assert_eq!(published.len(), 5, "{published:?}");
        assert_eq!(
            published[0],
            PublishedPort {
                protocol: Protocol::Udp,
                container_port: 53,
                host_port_first: 5300,
                host_port_last: 5310,
                host_ip: String::new(),
            }
        );
        assert_eq!(published[1].host_ip, "127.0.0.1");
        assert_eq!(
            (published[2].host_port_first, published[2].host_port_last),
            (0, 0)
        );
        // 81 has no binding and 443 is only exposed: -P publishes both.
        assert_eq!(published[3].container_port, 81);
        assert_eq!(published[4].container_port, 443);
        assert_eq!(
            published_ports(&BTreeSet::from([(443, Protocol::Tcp)]), &ok, false).len(),
            3
        );
    }

    #[test]
    fn exposed_ranges_expand() {
        let ports = exposed_ports(Some(&json!({"8000-8002/udp": {}, "80": {}}))).unwrap();
        assert_eq!(ports.len(), 4);
        assert!(ports.contains(&(8001, Protocol::Udp)));
        assert!(ports.contains(&(80, Protocol::Tcp)));
        assert!(exposed_ports(Some(&json!({"x/tcp": {}}))).is_err());
    }

    #[test]
    fn running_containers_report_their_bindings() {
        let mut c: ContainerRecord = serde_json::from_value(json!({
            "id": "c", "pod_id": "p", "state": "running",
            "spec": serde_json::to_value(crate::runtime::model::ContainerSpec::default()).unwrap(),
            "image": "", "image_id": "", "image_ref": "", "chain_ids": [],
            "runtime_handler": "", "stop_signal": null, "log_path": "", "bundle": "/",
            "created_at": 0, "started_at": 0, "finished_at": 0, "exit_code": 0,
            "reason": "", "message": "", "monitor": null,
        }))
        .unwrap();
        c.published_ports = vec![crate::runtime::model::PortMapping {
            protocol: Protocol::Tcp,
            container_port: 80,
            host_port: 49200,
            host_ip: String::new(),
        }];
        let create = json!({"ExposedPorts": {"80/tcp": {}, "443/tcp": {}}});
        assert_eq!(
            network_settings_ports(&c, &create),
            json!({"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "49200"}], "443/tcp": null})
        );
        assert_eq!(
            list_ports(&c, &create),
            json!([
                {"IP": "0.0.0.0", "PrivatePort": 80, "PublicPort": 49200, "Type": "tcp"},
                {"PrivatePort": 443, "Type": "tcp"},
            ])
        );
        assert!(matches_filter(&c, &create, "publish", &["49200".into()]));
        assert!(matches_filter(
            &c,
            &create,
            "expose",
            &["400-500/tcp".into()]
        ));
        assert!(!matches_filter(&c, &create, "publish", &["80".into()]));
        c.state = ContainerState::Exited;
        assert_eq!(network_settings_ports(&c, &create), json!({}));
        assert_eq!(list_ports(&c, &create), json!([]));
    }
}
