//! `/networks`: user-defined bridge networks (the engine's registry,
//! [`crate::network`]) and the predefined `bridge`, `host` and `none`, in dockerd's
//! shapes: create, list (filters), inspect, remove, prune, connect, disconnect.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::containers::{extension, find, network_mode, parse_filters, rfc3339};
use super::convert::EndpointSettings;
use super::error::{parse_json, ApiError};
use super::{DockerServer, NAMESPACE};
use crate::network::{NetworkSpec, NetworkView, OPTION_BRIDGE_NAME, PREDEFINED};
use crate::runtime::ContainerState;

/// A field that clients (docker-py) may send as `null`: its default then.
pub(super) fn nullable<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

fn api(err: impl crate::error::HasKind) -> ApiError {
    ApiError::from_error(&err)
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct IpamConfig {
    #[serde(deserialize_with = "nullable")]
    subnet: String,
    #[serde(rename = "IPRange")]
    #[serde(deserialize_with = "nullable")]
    ip_range: String,
    #[serde(deserialize_with = "nullable")]
    gateway: String,
    auxiliary_addresses: Option<HashMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct Ipam {
    #[serde(deserialize_with = "nullable")]
    driver: String,
    config: Option<Vec<IpamConfig>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct CreateRequest {
    #[serde(deserialize_with = "nullable")]
    name: String,
    #[serde(deserialize_with = "nullable")]
    driver: String,
    #[serde(deserialize_with = "nullable")]
    internal: bool,
    #[serde(deserialize_with = "nullable")]
    attachable: bool,
    #[serde(deserialize_with = "nullable")]
    ingress: bool,
    #[serde(rename = "IPAM")]
    ipam: Option<Ipam>,
    #[serde(rename = "EnableIPv6")]
    #[serde(deserialize_with = "nullable")]
    enable_ipv6: bool,
    options: Option<BTreeMap<String, String>>,
    labels: Option<BTreeMap<String, String>>,
}

/// POST `/networks/create`: 201 `{"Id", "Warning"}`.
pub(super) async fn create(
    State(server): State<Arc<DockerServer>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request: CreateRequest = parse_json(&body)?;
    if request.ingress {
        return Err(ApiError::bad_request(
            "ingress networks need swarm mode, which wharf does not have",
        ));
    }
    let ipam = request.ipam.unwrap_or_default();
    if !matches!(ipam.driver.as_str(), "" | "default") {
        return Err(ApiError::not_found(format!(
            "plugin \"{}\" not found",
            crate::image::bounded(&ipam.driver, crate::image::MAX_ECHO)
        )));
    }
    // One IPv4 and one IPv6 entry at most, told apart by their addresses.
    let (configs6, configs): (Vec<IpamConfig>, Vec<IpamConfig>) =
        ipam.config.unwrap_or_default().into_iter().partition(|c| {
            c.subnet.contains(':') || (c.subnet.is_empty() && c.gateway.contains(':'))
        });
    if configs.len() > 1 || configs6.len() > 1 {
        return Err(ApiError::bad_request(
            "wharf's bridge networks take one IPv4 and one IPv6 subnet (IPAM.Config has more)",
        ));
    }
    let config = configs.into_iter().next().unwrap_or_default();
    let config6 = configs6.into_iter().next().unwrap_or_default();
    if config.auxiliary_addresses.is_some_and(|a| !a.is_empty())
        || config6.auxiliary_addresses.is_some_and(|a| !a.is_empty())
    {
        return Err(ApiError::bad_request(
            "auxiliary addresses are not supported by wharf's bridge networks",
        ));
    }
    if !config6.ip_range.is_empty() {
        return Err(ApiError::bad_request(format!(
            "IPv6 ip-range {} is not supported by wharf's bridge networks: give a smaller subnet",
            crate::image::bounded(&config6.ip_range, crate::image::MAX_ECHO)
        )));
    }
    let given = |text: String| Some(text).filter(|t| !t.is_empty());
    let spec = NetworkSpec {
        name: request.name,
        driver: request.driver,
        subnet: given(config.subnet),
        gateway: given(config.gateway),
        ip_range: given(config.ip_range),
        internal: request.internal,
        attachable: request.attachable,
        enable_ipv6: request.enable_ipv6,
        subnet6: given(config6.subnet),
        gateway6: given(config6.gateway),
        labels: request.labels.unwrap_or_default(),
        options: request.options.unwrap_or_default(),
    };
    let record = server
        .runtime
        .networks()
        .create(NAMESPACE, spec)
        .await
        .map_err(api)?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"Id": record.id, "Warning": ""})),
    )
        .into_response())
}

/// A predefined network's JSON (`bridge`, `host`, `none`).
async fn predefined_json(server: &DockerServer, name: &str) -> Value {
    let id = super::list::network_id(name);
    let mut containers = serde_json::Map::new();
    let mut config = Vec::new();
    let mut options = json!({});
    let mut prefix = 0;
    let driver = match name {
        "bridge" => {
            let bridge = server.runtime.builtin_bridge();
            if let Some(subnet) = bridge.current_subnet().await {
                prefix = subnet.prefix_len();
                config.push(json!({
                    "Subnet": subnet.to_string(),
                    "Gateway": crate::cni::bridge::first_host(&subnet).to_string(),
                }));
            }
            options = json!({
                "com.docker.network.bridge.default_bridge": "true",
                "com.docker.network.bridge.enable_icc": "true",
                "com.docker.network.bridge.enable_ip_masquerade": "true",
                OPTION_BRIDGE_NAME: bridge.name(),
            });
            "bridge"
        }
        "host" => "host",
        _ => "null",
    };
    server.runtime.for_each_container(NAMESPACE, |c| {
        let ext = extension(c);
        let mode = network_mode(&ext);
        let on = match mode.as_str() {
            "default" | "bridge" => "bridge",
            other => other,
        };
        if on != name || c.state != ContainerState::Running {
            return;
        }
        let ip = if name == "bridge" {
            super::list::ip_of(server, c)
        } else {
            String::new()
        };
        containers.insert(
            c.id.clone(),
            json!({
                "Name": c.spec.name,
                "EndpointID": "",
                "MacAddress": "",
                "IPv4Address": if ip.is_empty() { String::new() } else { format!("{ip}/{prefix}") },
                "IPv6Address": "",
            }),
        );
    });
    json!({
        "Name": name,
        "Id": id,
        "Created": rfc3339(0),
        "Scope": "local",
        "Driver": driver,
        "EnableIPv6": false,
        "IPAM": {"Driver": "default", "Options": null, "Config": config},
        "Internal": false,
        "Attachable": false,
        "Ingress": false,
        "ConfigFrom": {"Network": ""},
        "ConfigOnly": false,
        "Containers": containers,
        "Options": options,
        "Labels": {},
    })
}

fn user_json(view: &NetworkView) -> Value {
    let record = &view.record;
    let mut ipam = json!({
        "Subnet": record.subnet.to_string(),
        "Gateway": record.gateway.to_string(),
    });
    if let Some(range) = record.ip_range {
        ipam["IPRange"] = json!(range.to_string());
    }
    let mut configs = vec![ipam];
    if let (Some(subnet6), Some(gateway6)) = (record.subnet6, record.gateway6) {
        configs.push(json!({"Subnet": subnet6.to_string(), "Gateway": gateway6.to_string()}));
    }
    let prefix6 = record.subnet6.map(|s| s.prefix_len()).unwrap_or_default();
    let containers: serde_json::Map<String, Value> = view
        .endpoints
        .iter()
        .map(|e| {
            (
                e.owner_id.clone(),
                json!({
                    "Name": e.name,
                    "EndpointID": e.id,
                    "MacAddress": e.mac,
                    "IPv4Address": e.ip.map(|ip| format!("{ip}/{}", record.subnet.prefix_len())).unwrap_or_default(),
                    "IPv6Address": e.ip6.map(|ip| format!("{ip}/{prefix6}")).unwrap_or_default(),
                }),
            )
        })
        .collect();
    json!({
        "Name": record.name,
        "Id": record.id,
        "Created": rfc3339(record.created),
        "Scope": "local",
        "Driver": record.driver,
        "EnableIPv6": record.subnet6.is_some(),
        "IPAM": {"Driver": "default", "Options": {}, "Config": configs},
        "Internal": record.internal,
        "Attachable": record.attachable,
        "Ingress": false,
        "ConfigFrom": {"Network": ""},
        "ConfigOnly": false,
        "Containers": containers,
        "Options": record.options,
        "Labels": record.labels,
    })
}

/// The predefined network `query` names (by name, or ID or its prefix).
fn predefined_name(query: &str) -> Option<&'static str> {
    PREDEFINED.iter().copied().find(|name| {
        *name == query || (query.len() >= 2 && super::list::network_id(name).starts_with(query))
    })
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct ListQuery {
    filters: Option<String>,
}

/// GET `/networks?filters=`: predefined then user-defined networks.
pub(super) async fn list(
    State(server): State<Arc<DockerServer>>,
    Query(query): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let filters = parse_filters(query.filters.as_deref())?;
    for (key, values) in &filters {
        match key.as_str() {
            "name" | "id" | "label" | "driver" | "scope" => {}
            "type" => {
                if let Some(bad) = values
                    .iter()
                    .find(|v| !matches!(v.as_str(), "custom" | "builtin"))
                {
                    return Err(ApiError::bad_request(format!(
                        "invalid filter: 'type'='{}'",
                        crate::image::bounded(bad, crate::image::MAX_ECHO)
                    )));
                }
            }
            "dangling" => {
                if let Some(bad) = values
                    .iter()
                    .find(|v| !matches!(v.as_str(), "true" | "false" | "1" | "0"))
                {
                    return Err(ApiError::bad_request(format!(
                        "invalid filter 'dangling={}'",
                        crate::image::bounded(bad, crate::image::MAX_ECHO)
                    )));
                }
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "invalid filter '{}'",
                    crate::image::bounded(other, crate::image::MAX_ECHO)
                )))
            }
        }
    }
    let mut all = Vec::new();
    for name in PREDEFINED {
        all.push((true, predefined_json(&server, name).await));
    }
    for view in server.runtime.networks().list(NAMESPACE) {
        all.push((false, user_json(&view)));
    }
    let text = |value: &Value, key: &str| value[key].as_str().unwrap_or_default().to_string();
    let kept: Vec<Value> = all
        .into_iter()
        .filter(|(builtin, network)| {
            filters.iter().all(|(key, values)| match key.as_str() {
                "name" => values
                    .iter()
                    .any(|v| text(network, "Name").contains(v.as_str())),
                "id" => values
                    .iter()
                    .any(|v| text(network, "Id").starts_with(v.as_str())),
                "driver" => values.iter().any(|v| text(network, "Driver") == *v),
                "scope" => values.iter().any(|v| v == "local"),
                "type" => values.iter().any(|v| (v == "builtin") == *builtin),
                "dangling" => {
                    let want = values.iter().any(|v| v == "true" || v == "1");
                    let empty = network["Containers"]
                        .as_object()
                        .is_none_or(|c| c.is_empty());
                    want == (!*builtin && empty)
                }
                "label" => {
                    let labels: HashMap<String, String> =
                        serde_json::from_value(network["Labels"].clone()).unwrap_or_default();
                    values
                        .iter()
                        .all(|v| super::containers::label_matches(&labels, v))
                }
                _ => true,
            })
        })
        .map(|(_, network)| network)
        .collect();
    Ok(Json(Value::Array(kept)))
}

/// GET `/networks/{id}`.
pub(super) async fn inspect(
    State(server): State<Arc<DockerServer>>,
    Path(query): Path<String>,
) -> Result<Json<Value>, ApiError> {
    match server.runtime.networks().get(NAMESPACE, &query) {
        Ok(view) => Ok(Json(user_json(&view))),
        Err(err) => match predefined_name(&query) {
            Some(name) => Ok(Json(predefined_json(&server, name).await)),
            None => Err(api(err)),
        },
    }
}

/// DELETE `/networks/{id}`: 204; 409 while containers are attached.
pub(super) async fn remove(
    State(server): State<Arc<DockerServer>>,
    Path(query): Path<String>,
) -> Result<StatusCode, ApiError> {
    if let (Some(name), Err(_)) = (
        predefined_name(&query),
        server.runtime.networks().get(NAMESPACE, &query),
    ) {
        return Err(api(crate::network::NetworkError::Predefined(
            name.to_string(),
            "removed",
        )));
    }
    server
        .runtime
        .networks()
        .remove(NAMESPACE, &query)
        .await
        .map_err(api)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct PruneQuery {
    filters: Option<String>,
}

/// POST `/networks/prune?filters=`: removes the user networks without containers.
pub(super) async fn prune(
    State(server): State<Arc<DockerServer>>,
    Query(query): Query<PruneQuery>,
) -> Result<Json<Value>, ApiError> {
    let filters = super::prune::PruneFilters::parse(query.filters.as_deref(), false)?;
    let removed = server
        .runtime
        .networks()
        .prune(NAMESPACE, |record| {
            let labels: HashMap<String, String> = record
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            filters.matches(record.created, &labels)
        })
        .await;
    super::prune::prune_event(&server, crate::events::EventKind::Network, 0);
    Ok(Json(json!({
        "NetworksDeleted": if removed.is_empty() { Value::Null } else { json!(removed) },
    })))
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct ConnectRequest {
    #[serde(deserialize_with = "nullable")]
    container: String,
    endpoint_config: Option<EndpointSettings>,
}

/// POST `/networks/{id}/connect`: 200.
pub(super) async fn connect(
    State(server): State<Arc<DockerServer>>,
    Path(query): Path<String>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let request: ConnectRequest = parse_json(&body)?;
    let registry = server.runtime.networks();
    let network = match registry.get(NAMESPACE, &query) {
        Ok(view) => view.record,
        Err(err) => {
            if predefined_name(&query).is_some() {
                return Err(api(crate::network::NetworkError::Invalid(format!(
                    "wharf cannot connect a container to the predefined network {query} after its creation"
                ))));
            }
            return Err(api(err));
        }
    };
    let c = find(&server, &request.container)?;
    let wanted =
        request
            .endpoint_config
            .unwrap_or_default()
            .request(&network.id, &c.id, &c.spec.name)?;
    server
        .runtime
        .connect_network(NAMESPACE, &c.pod_id, wanted)
        .await?;
    Ok(StatusCode::OK)
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct DisconnectRequest {
    #[serde(deserialize_with = "nullable")]
    container: String,
    #[serde(deserialize_with = "nullable")]
    force: bool,
}

/// POST `/networks/{id}/disconnect`: 200.
pub(super) async fn disconnect(
    State(server): State<Arc<DockerServer>>,
    Path(query): Path<String>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let request: DisconnectRequest = parse_json(&body)?;
    let registry = server.runtime.networks();
    let network = match registry.get(NAMESPACE, &query) {
        Ok(view) => view,
        Err(err) => {
            if predefined_name(&query).is_some() {
                return Err(api(crate::network::NetworkError::Invalid(format!(
                    "wharf cannot disconnect a container from the predefined network {query}"
                ))));
            }
            return Err(api(err));
        }
    };
    let c = match find(&server, &request.container) {
        Ok(c) => c,
        // Force: an endpoint whose container is gone (by ID or name) goes anyway.
        Err(err) if request.force => {
            let Some(endpoint) = network.endpoints.iter().find(|e| {
                e.owner_id.starts_with(&request.container) || e.name == request.container
            }) else {
                return Err(err);
            };
            registry
                .disconnect(
                    NAMESPACE,
                    &network.record.id,
                    &endpoint.pod_id,
                    &request.container,
                )
                .await
                .map_err(api)?;
            return Ok(StatusCode::OK);
        }
        Err(err) => return Err(err),
    };
    server
        .runtime
        .disconnect_network(NAMESPACE, &c.pod_id, &network.record.id, &c.spec.name)
        .await?;
    Ok(StatusCode::OK)
}

/// `NetworkSettings.Networks` entries of a container's user-defined networks.
pub(super) fn endpoints_json(
    server: &DockerServer,
    pod_id: &str,
) -> serde_json::Map<String, Value> {
    server
        .runtime
        .networks()
        .endpoints_of_pod(pod_id)
        .into_iter()
        .map(|(network, e)| {
            let ipam = if e.requested_ip.is_some() || e.requested_ip6.is_some() {
                let text = |ip: Option<String>| ip.unwrap_or_default();
                json!({
                    "IPv4Address": text(e.requested_ip.map(|ip| ip.to_string())),
                    "IPv6Address": text(e.requested_ip6.map(|ip| ip.to_string())),
                })
            } else {
                Value::Null
            };
            (
                network.name.clone(),
                json!({
                    "IPAMConfig": ipam,
                    "Links": null,
                    "Aliases": e.aliases.iter().chain(e.dns_names.iter().skip(1)).collect::<Vec<_>>(),
                    "NetworkID": network.id,
                    "EndpointID": e.id,
                    "Gateway": if network.internal { String::new() } else { network.gateway.to_string() },
                    "IPAddress": e.ip.map(|ip| ip.to_string()).unwrap_or_default(),
                    "IPPrefixLen": network.subnet.prefix_len(),
                    "IPv6Gateway": match (network.internal, network.gateway6) {
                        (false, Some(gateway6)) => gateway6.to_string(),
                        _ => String::new(),
                    },
                    "GlobalIPv6Address": e.ip6.map(|ip| ip.to_string()).unwrap_or_default(),
                    "GlobalIPv6PrefixLen": if e.ip6.is_some() {
                        network.subnet6.map(|s| s.prefix_len()).unwrap_or_default()
                    } else {
                        0
                    },
                    "MacAddress": e.mac,
                    "DriverOpts": null,
                }),
            )
        })
        .collect()
}
