//! `/volumes`: create, list, inspect, remove and prune (`docker volume ...`), in
//! dockerd 20.10's shapes, filters and messages. The behaviour (names, drivers,
//! references, mounts) is the core's `crate::volume`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::containers::{label_matches, parse_filters, truthy};
use super::error::{decode_json, parse_json, ApiError};
use super::{DockerServer, NAMESPACE};
use crate::events::{Event, EventKind};
use crate::volume::{CreateVolume, Volume, VolumeError};

impl From<VolumeError> for ApiError {
    fn from(err: VolumeError) -> ApiError {
        ApiError::from_error(&err)
    }
}

/// Runs a volume call off the async threads (it reads the store and the disk).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, VolumeError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|err| ApiError::internal(format!("volume task failed: {err}")))?
        .map_err(ApiError::from)
}

/// dockerd's `Volume` JSON; `usage`: `UsageData` (`system df`).
fn volume_json(server: &DockerServer, v: &Volume, usage: bool) -> Value {
    let created = chrono::DateTime::from_timestamp_nanos(v.created_at)
        .with_timezone(&chrono::Local)
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut value = json!({
        "CreatedAt": created,
        "Driver": v.driver,
        "Labels": v.labels,
        "Mountpoint": server.volumes.mountpoint(&v.name).display().to_string(),
        "Name": v.name,
        "Options": v.options,
        "Scope": "local",
    });
    if usage {
        let data = server.volumes.usage(v);
        value["UsageData"] = json!({ "Size": data.size, "RefCount": data.ref_count });
    }
    value
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct CreateBody {
    #[serde(deserialize_with = "super::mounts::null_default")]
    name: String,
    #[serde(deserialize_with = "super::mounts::null_default")]
    driver: String,
    driver_opts: Option<HashMap<String, String>>,
    labels: Option<HashMap<String, String>>,
}

/// POST `/volumes/create`: 201 and the volume (the existing one for a name taken
/// with the same driver, as dockerd).
pub(super) async fn create(
    State(server): State<Arc<DockerServer>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let raw: Value = if body.is_empty() {
        json!({})
    } else {
        parse_json(&body)?
    };
    let body: CreateBody = decode_json(raw, "volume create request")?;
    let request = CreateVolume {
        name: Some(body.name).filter(|n| !n.is_empty()),
        driver: body.driver,
        labels: body.labels,
        options: body.driver_opts,
    };
    let volumes = server.volumes.clone();
    let volume = blocking(move || volumes.create(request)).await?;
    Ok((
        StatusCode::CREATED,
        Json(volume_json(&server, &volume, false)),
    )
        .into_response())
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub(super) struct ListQuery {
    filters: Option<String>,
}

/// A filter's one boolean (moby's `GetBoolOrDefault`).
fn bool_filter(key: &str, values: &[String]) -> Result<bool, ApiError> {
    let truth = values.iter().any(|v| matches!(v.as_str(), "1" | "true"));
    let falsity = values.iter().any(|v| matches!(v.as_str(), "0" | "false"));
    if truth == falsity {
        return Err(ApiError::bad_request(format!(
            "invalid filter '{key}={}'",
            crate::image::bounded(&values.join(","), crate::image::MAX_ECHO)
        )));
    }
    Ok(truth)
}

/// The volumes `filters` select (moby's `filtersToBy` with `accepted` keys).
fn select(
    server: &DockerServer,
    filters: &HashMap<String, Vec<String>>,
    accepted: &[&str],
) -> Result<Vec<Volume>, ApiError> {
    for key in filters.keys() {
        if !accepted.contains(&key.as_str()) {
            return Err(ApiError::bad_request(format!(
                "invalid filter '{}'",
                crate::image::bounded(key, crate::image::MAX_ECHO)
            )));
        }
    }
    let dangling = match filters.get("dangling") {
        Some(values) => Some(bool_filter("dangling", values)?),
        None => None,
    };
    // `name` values are regular expressions (moby's `Match`); one that does not
    // compile matches only itself.
    let names: Vec<(String, Option<regex::Regex>)> = filters
        .get("name")
        .map(|values| {
            values
                .iter()
                .map(|v| (v.clone(), regex::Regex::new(v).ok()))
                .collect()
        })
        .unwrap_or_default();
    let empty = HashMap::new();
    let mut out = Vec::new();
    for volume in server.volumes.list()? {
        if let Some(drivers) = filters.get("driver") {
            if !drivers.contains(&volume.driver) {
                continue;
            }
        }
        if filters.contains_key("name")
            && !names.iter().any(|(text, re)| {
                *text == volume.name || re.as_ref().is_some_and(|re| re.is_match(&volume.name))
            })
        {
            continue;
        }
        let labels = volume.labels.as_ref().unwrap_or(&empty);
        if let Some(wanted) = filters.get("label") {
            if !wanted.iter().all(|l| label_matches(labels, l)) {
                continue;
            }
        }
        if let Some(unwanted) = filters.get("label!") {
            if !unwanted.is_empty() && unwanted.iter().all(|l| label_matches(labels, l)) {
                continue;
            }
        }
        if let Some(dangling) = dangling {
            let used = !server.volumes.users(&volume.name).is_empty();
            if used == dangling {
                continue;
            }
        }
        out.push(volume);
    }
    Ok(out)
}

/// GET `/volumes?filters=`: `{"Volumes": [...], "Warnings": null}`.
pub(super) async fn list(
    State(server): State<Arc<DockerServer>>,
    Query(query): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let filters = parse_filters(query.filters.as_deref())?;
    let list_server = server.clone();
    let volumes = tokio::task::spawn_blocking(move || {
        select(
            &list_server,
            &filters,
            &["dangling", "name", "driver", "label"],
        )
    })
    .await
    .map_err(|err| ApiError::internal(format!("volume task failed: {err}")))??;
    let items: Vec<Value> = volumes
        .iter()
        .map(|v| volume_json(&server, v, false))
        .collect();
    Ok(Json(json!({ "Volumes": items, "Warnings": null })))
}

/// GET `/volumes/{name}`.
pub(super) async fn inspect(
    State(server): State<Arc<DockerServer>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let volumes = server.volumes.clone();
    let volume = blocking(move || volumes.get(&name)).await?;
    Ok(Json(volume_json(&server, &volume, false)))
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub(super) struct RemoveQuery {
    force: Option<String>,
}

/// DELETE `/volumes/{name}?force=`: 204; 409 while a container uses it (`force`
/// only makes a missing volume no error, as dockerd).
pub(super) async fn remove(
    State(server): State<Arc<DockerServer>>,
    Path(name): Path<String>,
    Query(query): Query<RemoveQuery>,
) -> Result<StatusCode, ApiError> {
    let force = truthy(query.force.as_deref());
    let volumes = server.volumes.clone();
    blocking(move || volumes.remove(&name, force)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// POST `/volumes/prune?filters=`: removes every volume no container uses (API 1.41:
/// anonymous and named alike; `all` is taken as newer clients send it), local and
/// without driver options, matching `label`/`label!`;
/// `{"VolumesDeleted": [...], "SpaceReclaimed"}`.
pub(super) async fn prune(
    State(server): State<Arc<DockerServer>>,
    Query(query): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let filters = parse_filters(query.filters.as_deref())?;
    if let Some(all) = filters.get("all") {
        if all.len() > 1 {
            return Err(ApiError::bad_request(format!(
                "invalid filter 'all={}': only one value is expected",
                crate::image::bounded(&all.join(","), crate::image::MAX_ECHO)
            )));
        }
        bool_filter("all", all)?;
    }
    let prune_server = server.clone();
    let (deleted, reclaimed) = tokio::task::spawn_blocking(move || {
        let chosen = select(&prune_server, &filters, &["label", "label!", "all"])?;
        let names: std::collections::HashSet<String> = chosen.into_iter().map(|v| v.name).collect();
        prune_server
            .volumes
            .prune(|v| !names.contains(&v.name))
            .map_err(ApiError::from)
    })
    .await
    .map_err(|err| ApiError::internal(format!("volume task failed: {err}")))??;
    server.events.publish(
        Event::new(NAMESPACE, EventKind::Volume, "prune", "")
            .with("reclaimed", reclaimed.to_string()),
    );
    Ok(Json(json!({
        "VolumesDeleted": deleted,
        "SpaceReclaimed": reclaimed,
    })))
}

/// `system df`'s volumes: local ones without driver options, with `UsageData`.
pub(super) async fn df_volumes(server: &Arc<DockerServer>) -> Vec<Value> {
    let df_server = server.clone();
    tokio::task::spawn_blocking(move || {
        df_server
            .volumes
            .list()
            .unwrap_or_default()
            .iter()
            .filter(|v| !v.has_options())
            .map(|v| volume_json(&df_server, v, true))
            .collect()
    })
    .await
    .unwrap_or_default()
}
