//! GET `/containers/json` (`docker ps`): newest first, running ones unless `all` (or a
//! `limit`), dockerd 20.10's filters (`id`, `name` as a regex, `label`, `status`,
//! `exited`, `ancestor`, `before`, `since`, `volume`, `network`, `health`, `isolation`,
//! `is-task`, `publish`, `expose`) and, with `size`, the sizes of `docker ps -s`; also
//! the sizes and built-in networks inspect shows.

use std::sync::Arc;

use axum::extract::{Query, State};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::containers::{
    command_of, find, health_word, label_matches, network_mode, parse_filters, state_name,
    status_text, truthy,
};
use super::convert::Extension;
use super::error::ApiError;
use super::{DockerServer, NAMESPACE};
use crate::image::rwlayer::{self, RUNTIME_MOUNTPOINTS};
use crate::runtime::{ContainerRecord, ContainerState};

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub(super) struct ListQuery {
    all: Option<String>,
    limit: Option<i64>,
    size: Option<String>,
    filters: Option<String>,
}

/// The filters dockerd 20.10 takes (`acceptedPsFilterTags`); any other is a 400.
const FILTERS: &[&str] = &[
    "ancestor",
    "before",
    "exited",
    "id",
    "isolation",
    "label",
    "name",
    "status",
    "health",
    "since",
    "volume",
    "network",
    "is-task",
    "publish",
    "expose",
];

/// dockerd's container state words (`IsValidStateString`).
const STATES: &[&str] = &[
    "paused",
    "restarting",
    "removing",
    "running",
    "dead",
    "created",
    "exited",
];

/// dockerd's health words (`IsValidHealthString`).
const HEALTHS: &[&str] = &["starting", "healthy", "unhealthy", "none"];

/// The built-in network a container is on (`bridge` or `host`), and its ID: wharf has
/// no network objects yet, so the ID is derived from the name (stable, 64 hex digits,
/// as dockerd's network IDs look).
pub(super) fn network_of(ext: &Extension) -> (&'static str, String) {
    let name = match network_mode(ext).as_str() {
        "host" => "host",
        "none" => "none",
        _ => "bridge",
    };
    (name, network_id(name))
}

pub(super) fn network_id(name: &str) -> String {
    // The predefined networks' IDs are asked for each container of every list.
    static PREDEFINED: std::sync::OnceLock<[(&str, String); 3]> = std::sync::OnceLock::new();
    let compute =
        |name: &str| hex::encode(Sha256::digest(format!("wharf built-in network {name}")));
    let predefined =
        PREDEFINED.get_or_init(|| ["bridge", "host", "none"].map(|name| (name, compute(name))));
    match predefined.iter().find(|(known, _)| *known == name) {
        Some((_, id)) => id.clone(),
        None => compute(name),
    }
}

/// Whether the container's network mode is a predefined network.
fn is_builtin_mode(ext: &Extension) -> bool {
    matches!(
        network_mode(ext).as_str(),
        "default" | "bridge" | "host" | "none"
    )
}

/// `networks` (a predefined network's entry) with the container's user-defined
/// networks added.
pub(super) fn with_user_networks(
    mut networks: Value,
    server: &DockerServer,
    pod_id: &str,
) -> Value {
    if let Some(object) = networks.as_object_mut() {
        object.extend(super::networks::endpoints_json(server, pod_id));
    }
    networks
}

/// `NetworkSettings.Networks` of list and inspect: the container's predefined network
/// (none for a container made on a user-defined network: see [`with_user_networks`]).
pub(super) fn networks_json(ext: &Extension, ip: &str, mac: &str) -> Value {
    if !is_builtin_mode(ext) {
        return json!({});
    }
    let (name, id) = network_of(ext);
    let (ip, mac) = if name == "bridge" {
        (ip, mac)
    } else {
        ("", "")
    };
    json!({
        name: {
            "IPAMConfig": null,
            "Links": null,
            "Aliases": null,
            "NetworkID": id,
            "EndpointID": "",
            "Gateway": "",
            "IPAddress": ip,
            "IPPrefixLen": 0,
            "IPv6Gateway": "",
            "GlobalIPv6Address": "",
            "GlobalIPv6PrefixLen": 0,
            "MacAddress": mac,
            "DriverOpts": null,
        }
    })
}

/// Bytes of a container's read-write layer (dockerd's `SizeRw`: the sizes of its files,
/// each inode once); 0 when it cannot be read.
pub(super) async fn size_rw(server: &DockerServer, id: &str) -> u64 {
    let Ok(layer) = server.runtime.container_layer(NAMESPACE, id) else {
        return 0;
    };
    tokio::task::spawn_blocking(move || rwlayer::size(&layer.upper, RUNTIME_MOUNTPOINTS))
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or(0)
}

/// `SizeRw` and `SizeRootFs` (the read-write layer and the image's unpacked layers
/// beneath it), as `docker ps -s` and `docker inspect --size` show them.
pub(super) async fn sizes(server: &DockerServer, c: &ContainerRecord) -> (u64, u64) {
    let rw = size_rw(server, &c.id).await;
    let snapshots = server.images.snapshots();
    let image: u64 = c
        .chain_ids
        .iter()
        .filter_map(|chain| snapshots.layer_usage(chain))
        .sum();
    (rw, rw + image)
}

/// The pod's first IP, if it has one.
pub(super) fn ip_of(server: &DockerServer, c: &ContainerRecord) -> String {
    server.runtime.pod_ip(&c.pod_id).unwrap_or_default()
}

/// The MAC address of the container's first interface ("" without one).
pub(super) fn mac_of(server: &DockerServer, c: &ContainerRecord) -> String {
    server.runtime.pod_mac(&c.pod_id).unwrap_or_default()
}

/// The parts of a container's [`Extension`] a list shows (the image as sent, the network
/// mode, the declared and bound ports, the args), read from the stored create body
/// without building all of it: that parse was most of a list's cost per container.
/// The other fields of the returned `create` are left out.
pub(super) fn listed_extension(c: &ContainerRecord) -> Extension {
    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct Listed {
        create: ListedCreate,
        name: String,
        args: Vec<String>,
    }
    #[derive(Deserialize, Default)]
    #[serde(default, rename_all = "PascalCase")]
    struct ListedCreate {
        image: Option<Value>,
        exposed_ports: Option<Value>,
        host_config: Option<ListedHostConfig>,
    }
    #[derive(Deserialize, Default)]
    #[serde(default, rename_all = "PascalCase")]
    struct ListedHostConfig {
        network_mode: Option<Value>,
        port_bindings: Option<Value>,
    }
    let listed: Listed = serde_json::from_slice(&c.extension).unwrap_or_default();
    let mut create = serde_json::Map::new();
    let create_fields = [
        ("Image", listed.create.image),
        ("ExposedPorts", listed.create.exposed_ports),
    ];
    for (key, value) in create_fields {
        if let Some(value) = value {
            create.insert(key.to_string(), value);
        }
    }
    if let Some(host) = listed.create.host_config {
        let mut host_config = serde_json::Map::new();
        for (key, value) in [
            ("NetworkMode", host.network_mode),
            ("PortBindings", host.port_bindings),
        ] {
            if let Some(value) = value {
                host_config.insert(key.to_string(), value);
            }
        }
        create.insert("HostConfig".to_string(), Value::Object(host_config));
    }
    Extension {
        create: Value::Object(create),
        name: listed.name,
        log_path: String::new(),
        args: listed.args,
    }
}

/// dockerd's `invalidFilter` message.
fn invalid_filter(key: &str, value: &str) -> ApiError {
    ApiError::bad_request(format!(
        "invalid filter '{key}={}'",
        crate::image::bounded(value, crate::image::MAX_ECHO)
    ))
}

/// `publish` / `expose` values: `port[/proto]` or `start-end[/proto]`.
fn check_port_filter(key: &str, value: &str) -> Result<(), ApiError> {
    if value.contains(':') {
        return Err(ApiError::bad_request(format!(
            "filter for '{key}' should not contain ':': {}",
            crate::image::bounded(value, crate::image::MAX_ECHO)
        )));
    }
    let port = value.split_once('/').map_or(value, |(port, _)| port);
    let (start, end) = port.split_once('-').unwrap_or((port, port));
    match (start.parse::<u16>(), end.parse::<u16>()) {
        (Ok(start), Ok(end)) if start <= end => Ok(()),
        _ => Err(ApiError::bad_request(format!(
            "error while looking up for {key} {}: invalid port range",
            crate::image::bounded(value, crate::image::MAX_ECHO)
        ))),
    }
}

/// GET `/containers/json`.
pub(super) async fn list(
    State(server): State<Arc<DockerServer>>,
    Query(query): Query<ListQuery>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let body = list_json(&server, &query).await?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response())
}

/// The list `query` asks for, as JSON.
pub(super) async fn list_json(
    server: &Arc<DockerServer>,
    query: &ListQuery,
) -> Result<Vec<u8>, ApiError> {
    let filters = parse_filters(query.filters.as_deref())?;
    if let Some(key) = filters.keys().find(|k| !FILTERS.contains(&k.as_str())) {
        return Err(ApiError::bad_request(format!(
            "invalid filter '{}'",
            crate::image::bounded(key, crate::image::MAX_ECHO)
        )));
    }
    let values = |key: &str| filters.get(key).map(Vec::as_slice).unwrap_or_default();
    let mut exited: Vec<i32> = Vec::new();
    for value in values("exited") {
        exited.push(value.parse().map_err(|_| {
            ApiError::bad_request(format!(
                "strconv.Atoi: parsing {:?}: invalid syntax",
                crate::image::bounded(value, crate::image::MAX_ECHO)
            ))
        })?);
    }
    if let Some(value) = values("status")
        .iter()
        .find(|v| !STATES.contains(&v.as_str()))
    {
        return Err(invalid_filter("status", value));
    }
    let is_task = match values("is-task") {
        [] => None,
        values if values.iter().all(|v| v == "true") => Some(true),
        values if values.iter().all(|v| v == "false") => Some(false),
        values => {
            return Err(invalid_filter(
                "is-task",
                &format!("[{}]", values.join(" ")),
            ))
        }
    };
    if let Some(value) = values("health")
        .iter()
        .find(|v| !HEALTHS.contains(&v.as_str()))
    {
        return Err(ApiError::bad_request(format!(
            "Unrecognised filter value for health: {}",
            crate::image::bounded(value, crate::image::MAX_ECHO)
        )));
    }
    for key in ["publish", "expose"] {
        for value in values(key) {
            check_port_filter(key, value)?;
        }
    }
    // before / since: a container by ID or name (the last one given counts, as
    // dockerd's); one that is not there is dockerd's 404.
    let mut before = None;
    for value in values("before") {
        before = Some(find(server, value)?.created_at);
    }
    let mut since = None;
    for value in values("since") {
        since = Some(find(server, value)?.created_at);
    }
    let regexes = |key: &str| -> Result<Vec<regex::Regex>, ApiError> {
        values(key)
            .iter()
            .map(|n| {
                regex::Regex::new(n).map_err(|err| {
                    ApiError::bad_request(format!("invalid filter '{key}={n}': {err}"))
                })
            })
            .collect()
    };
    let names = regexes("name")?;
    // dockerd matches IDs as it matches names: each value an unanchored regex.
    let ids = regexes("id")?;
    let isolations = regexes("isolation")?;
    // A status filter, or a limit, shows stopped containers too (dockerd's).
    let all = truthy(query.all.as_deref())
        || query.limit.is_some_and(|l| l > 0)
        || filters.contains_key("status");
    let mut found = Vec::new();
    {
        let mut listed = server.listed.lock().unwrap_or_else(|p| p.into_inner());
        let mut seen = std::collections::HashSet::new();
        server.runtime.for_each_container(NAMESPACE, |c| {
            seen.insert(c.id.clone());
            if c.state == ContainerState::Creating || (!all && c.state != ContainerState::Running) {
                return;
            }
            if before.is_some_and(|t| c.created_at >= t) || since.is_some_and(|t| c.created_at <= t)
            {
                return;
            }
            let name = format!("/{}", c.spec.name);
            let ext = listed
                .entry(c.id.clone())
                .or_insert_with(|| Arc::new(listed_extension(c)))
                .clone();
            let keep = filters.iter().all(|(key, values)| match key.as_str() {
                "id" => ids.iter().any(|re| re.is_match(&c.id)),
                "name" => names.iter().any(|re| re.is_match(&name)),
                "label" => values.iter().all(|v| label_matches(&c.spec.labels, v)),
                "status" => values.iter().any(|v| v == state_name(c)),
                "health" => {
                    let health = match (&c.spec.healthcheck, server.runtime.health(&c.id)) {
                        (None, _) => "none",
                        (Some(_), Some(health)) => health.status.as_str(),
                        (Some(_), None) => "starting",
                    };
                    values.iter().any(|v| v == health)
                }
                "exited" => {
                    c.state == ContainerState::Exited
                        && c.started_at > 0
                        && exited.contains(&c.exit_code)
                }
                "ancestor" => values.iter().any(|v| {
                    server
                        .images
                        .get(NAMESPACE, v)
                        .is_some_and(|image| image.id == c.image_id)
                }),
                // A volume's name, or a mount's destination (or a bind's source).
                "volume" => values.iter().any(|v| {
                    let trimmed = v.trim_end_matches('/');
                    c.spec.mounts.iter().any(|m| {
                        m.volume.as_ref().is_some_and(|vol| vol.name == *v)
                            || m.container_path.trim_end_matches('/') == trimmed
                            || (m.volume.is_none() && m.host_path.trim_end_matches('/') == trimmed)
                    })
                }),
                // The network's name, or a prefix of its ID.
                "network" => {
                    let (network, id) = network_of(&ext);
                    let user = server.runtime.networks().endpoints_of_pod(&c.pod_id);
                    values.iter().any(|v| {
                        let by_id = |id: &str| !v.is_empty() && id.starts_with(v.as_str());
                        (is_builtin_mode(&ext) && (v == network || by_id(&id)))
                            || user.iter().any(|(n, _)| n.name == *v || by_id(&n.id))
                    })
                }
                "isolation" => isolations.iter().any(|re| re.is_match("default")),
                // No swarm tasks here.
                "is-task" => is_task == Some(false),
                "publish" | "expose" => super::ports::matches_filter(c, &ext.create, key, values),
                "before" | "since" => true,
                _ => false,
            });
            if keep {
                found.push((c.created_at, list_item(server, c, &ext)));
            }
        });
        // Containers removed since: their entries go.
        listed.retain(|id, _| seen.contains(id));
    }
    found.sort_by_key(|(created, _)| std::cmp::Reverse(*created));
    if let Some(limit) = query.limit.filter(|l| *l > 0) {
        found.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    }
    let mut items: Vec<ListItem> = found.into_iter().map(|(_, item)| item).collect();
    if truthy(query.size.as_deref()) {
        for item in &mut items {
            if let Some(c) = server.runtime.container(&item.id) {
                (item.size_rw, item.size_root_fs) = sizes(server, &c).await;
            }
        }
    }
    // Serialized here: no Value tree per container.
    serde_json::to_vec(&items)
        .map_err(|err| ApiError::internal(format!("encoding the container list: {err}")))
}

/// One container's entry, made while the records are read (no copy of the record).
fn list_item(server: &DockerServer, c: &ContainerRecord, ext: &Extension) -> ListItem {
    ListItem {
        id: c.id.clone(),
        names: [format!("/{}", c.spec.name)],
        image: ext
            .create
            .get("Image")
            .cloned()
            .unwrap_or(Value::String(c.image.clone())),
        image_id: c.image_id.clone(),
        command: command_of(ext),
        created: c.created_at / 1_000_000_000,
        ports: super::ports::list_ports(c, &ext.create),
        labels: c.spec.labels.clone(),
        state: state_name(c),
        status: match server.runtime.health(&c.id) {
            Some(health) if c.state == ContainerState::Running && !c.paused => {
                format!("{} ({})", status_text(c), health_word(health.status))
            }
            _ => status_text(c),
        },
        host_config: ListHostConfig {
            network_mode: network_mode(ext),
        },
        network_settings: ListNetworkSettings {
            networks: with_user_networks(
                networks_json(ext, &ip_of(server, c), &mac_of(server, c)),
                server,
                &c.pod_id,
            ),
        },
        mounts: c
            .spec
            .mounts
            .iter()
            .filter_map(super::mounts::mount_point_json)
            .collect(),
        size_rw: 0,
        size_root_fs: 0,
    }
}

/// One entry of `GET /containers/json`, in dockerd's field order.
#[derive(serde::Serialize)]
#[serde(rename_all = "PascalCase")]
struct ListItem {
    id: String,
    names: [String; 1],
    image: Value,
    #[serde(rename = "ImageID")]
    image_id: String,
    command: String,
    created: i64,
    ports: Value,
    labels: std::collections::HashMap<String, String>,
    state: &'static str,
    status: String,
    host_config: ListHostConfig,
    network_settings: ListNetworkSettings,
    mounts: Vec<Value>,
    // dockerd leaves them out when 0 (`omitempty`).
    #[serde(skip_serializing_if = "is_zero")]
    size_rw: u64,
    #[serde(skip_serializing_if = "is_zero")]
    size_root_fs: u64,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "PascalCase")]
struct ListHostConfig {
    network_mode: String,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "PascalCase")]
struct ListNetworkSettings {
    networks: Value,
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_networks_have_stable_ids() {
        let bridge = network_id("bridge");
        assert_eq!(bridge.len(), 64);
        assert_eq!(bridge, network_id("bridge"));
        assert_ne!(bridge, network_id("host"));
    }

    #[test]
    fn port_filters_are_checked() {
        assert!(check_port_filter("publish", "80").is_ok());
        assert!(check_port_filter("expose", "8000-8080/tcp").is_ok());
        let err = check_port_filter("publish", "1:2").unwrap_err();
        assert_eq!(
            err.message,
            "filter for 'publish' should not contain ':': 1:2"
        );
        assert!(check_port_filter("expose", "x").is_err());
        assert!(check_port_filter("expose", "9-8").is_err());
    }
}
