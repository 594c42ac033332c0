//! Disk usage and reclaiming it: `GET /system/df` (`docker system df`),
//! `POST /containers/prune` and `POST /images/prune` (`docker container prune`,
//! `docker image prune [-a]`), in dockerd 20.10's shapes and with its filters (`until`,
//! `label`, `label!`; `dangling` for images).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::containers::{container_dir, label_matches, parse_filters};
use super::error::ApiError;
use super::images::familiar;
use super::list::{size_rw, sizes};
use super::{DockerServer, NAMESPACE};
use crate::events::{Event, EventKind};
use crate::runtime::{ContainerRecord, ContainerState};

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub(super) struct PruneQuery {
    filters: Option<String>,
}

/// The image config's `created` and `config.Labels`.
fn image_facts(
    server: &DockerServer,
    image: &crate::image::Image,
) -> (i64, HashMap<String, String>) {
    let config: Value = server
        .images
        .config_json(image)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or(Value::Null);
    let created = config
        .get("created")
        .and_then(Value::as_str)
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .and_then(|t| t.timestamp_nanos_opt())
        .unwrap_or(0);
    let labels = config
        .pointer("/config/Labels")
        .cloned()
        .and_then(|l| serde_json::from_value(l).ok())
        .unwrap_or_default();
    (created, labels)
}

/// GET `/system/df`: images (with their sizes, shared sizes and how many containers use
/// them), containers (with `SizeRw`), volumes (with `UsageData`), no build cache.
pub(super) async fn df(State(server): State<Arc<DockerServer>>) -> Result<Json<Value>, ApiError> {
    let all: super::images::ListQuery = serde_json::from_value(json!({"all": "1"}))
        .map_err(|err| ApiError::internal(err.to_string()))?;
    let Json(mut images) = super::images::list(State(server.clone()), Query(all)).await?;
    let records = server.images.list(NAMESPACE);
    let mut users: HashMap<String, i64> = HashMap::new();
    server.runtime.for_each_container(NAMESPACE, |c| {
        if c.state != ContainerState::Creating {
            *users.entry(c.image_id.clone()).or_default() += 1;
        }
    });
    // A layer shared by images counts once in LayersSize, and as shared in each.
    let mut layer_images: HashMap<&str, usize> = HashMap::new();
    for image in &records {
        let unique: HashSet<&str> = image.layers.iter().map(|l| l.digest.as_str()).collect();
        for digest in unique {
            *layer_images.entry(digest).or_default() += 1;
        }
    }
    let mut layers_size: u64 = 0;
    let mut counted: HashSet<&str> = HashSet::new();
    let mut shared: HashMap<&str, u64> = HashMap::new();
    for image in &records {
        let layer_bytes: u64 = image.layers.iter().map(|l| l.size).sum();
        layers_size += image.size.saturating_sub(layer_bytes);
        let mut seen: HashSet<&str> = HashSet::new();
        for layer in &image.layers {
            if counted.insert(&layer.digest) {
                layers_size += layer.size;
            }
            if layer_images
                .get(layer.digest.as_str())
                .copied()
                .unwrap_or(0)
                > 1
                && seen.insert(&layer.digest)
            {
                *shared.entry(image.id.as_str()).or_default() += layer.size;
            }
        }
    }
    for item in &mut images {
        let id = item["Id"].as_str().unwrap_or_default().to_string();
        item["SharedSize"] = json!(shared.get(id.as_str()).copied().unwrap_or(0));
        item["Containers"] = json!(users.get(&id).copied().unwrap_or(0));
    }
    let all: super::list::ListQuery = serde_json::from_value(json!({"all": "1"}))
        .map_err(|err| ApiError::internal(err.to_string()))?;
    let listed = super::list::list_json(&server, &all).await?;
    let mut containers: Vec<Value> = serde_json::from_slice(&listed)
        .map_err(|err| ApiError::internal(format!("reading the container list: {err}")))?;
    for item in &mut containers {
        let id = item["Id"].as_str().unwrap_or_default().to_string();
        let (size_rw, size_root) = match server.runtime.container(&id) {
            Some(c) => sizes(&server, &c).await,
            None => (0, 0),
        };
        item["SizeRw"] = json!(size_rw);
        item["SizeRootFs"] = json!(size_root);
    }
    Ok(Json(json!({
        "LayersSize": layers_size,
        "Images": images,
        "Containers": containers,
        "Volumes": super::volumes::df_volumes(&server).await,
        "BuildCache": super::build::cache_usage(&server),
    })))
}

/// Go's `time.ParseDuration`: `300ms`, `-1.5h`, `2h45m`.
fn parse_go_duration(text: &str) -> Option<f64> {
    let (sign, mut rest) = match text.strip_prefix('-') {
        Some(rest) => (-1.0, rest),
        None => (1.0, text.strip_prefix('+').unwrap_or(text)),
    };
    if rest == "0" {
        return Some(0.0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total = 0.0;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..number_end].parse().ok()?;
        rest = &rest[number_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_end..];
        total += number * seconds;
    }
    Some(sign * total)
}

/// An `until` value as dockerd's `timetypes.GetTimestamp` reads it: a Go duration
/// before now, Unix seconds (with a fraction), or an RFC 3339 time or date (UTC when
/// without zone). Nanoseconds since the epoch.
fn parse_until(text: &str, now: i64) -> Result<i64, ApiError> {
    let invalid = || {
        ApiError::bad_request(format!(
            "failed to parse value as time or duration: \"{}\"",
            crate::image::bounded(text, crate::image::MAX_ECHO)
        ))
    };
    if let Some(seconds) = parse_go_duration(text) {
        return Ok(now - (seconds * 1e9) as i64);
    }
    if let Ok(time) = chrono::DateTime::parse_from_rfc3339(text) {
        return time.timestamp_nanos_opt().ok_or_else(invalid);
    }
    for format in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%dT%H:%M",
    ] {
        if let Ok(time) = chrono::NaiveDateTime::parse_from_str(text, format) {
            return time.and_utc().timestamp_nanos_opt().ok_or_else(invalid);
        }
    }
    if let Ok(date) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return date
            .and_hms_opt(0, 0, 0)
            .and_then(|t| t.and_utc().timestamp_nanos_opt())
            .ok_or_else(invalid);
    }
    let (secs, frac) = text.split_once('.').unwrap_or((text, ""));
    let secs: i64 = secs.parse().map_err(|_| invalid())?;
    let nanos: i64 = if frac.is_empty() {
        0
    } else {
        if !frac.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid());
        }
        format!("{:0<9}", &frac[..frac.len().min(9)])
            .parse()
            .map_err(|_| invalid())?
    };
    secs.checked_mul(1_000_000_000)
        .and_then(|n| n.checked_add(nanos))
        .ok_or_else(invalid)
}

/// The filters a prune takes: `until` (created before), `label` (all match), `label!`
/// (excluded when all match: moby's `MatchKVList`).
#[derive(Debug)]
pub(super) struct PruneFilters {
    until: Option<i64>,
    labels: Vec<String>,
    not_labels: Vec<String>,
    dangling: Option<bool>,
}

impl PruneFilters {
    pub(super) fn parse(text: Option<&str>, images: bool) -> Result<PruneFilters, ApiError> {
        let filters = parse_filters(text)?;
        for key in filters.keys() {
            let known = matches!(key.as_str(), "until" | "label" | "label!")
                || (images && key == "dangling");
            if !known {
                return Err(ApiError::bad_request(format!("invalid filter '{key}'")));
            }
        }
        let now = crate::runtime::records::now_nanos();
        let until = match filters.get("until").map(Vec::as_slice) {
            None | Some([]) => None,
            Some([one]) => Some(parse_until(one, now)?),
            Some(_) => {
                return Err(ApiError::bad_request(
                    "more than one until filter specified",
                ))
            }
        };
        let dangling = match filters.get("dangling").map(Vec::as_slice) {
            None | Some([]) => None,
            Some(values) => {
                let mut wanted = None;
                for value in values {
                    let this = match value.to_ascii_lowercase().as_str() {
                        "true" | "1" => true,
                        "false" | "0" => false,
                        _ => {
                            return Err(ApiError::bad_request(format!(
                                "invalid filter 'dangling={}'",
                                crate::image::bounded(value, crate::image::MAX_ECHO)
                            )))
                        }
                    };
                    wanted = Some(wanted.unwrap_or(false) || this);
                }
                wanted
            }
        };
        Ok(PruneFilters {
            until,
            labels: filters.get("label").cloned().unwrap_or_default(),
            not_labels: filters.get("label!").cloned().unwrap_or_default(),
            dangling,
        })
    }

    pub(super) fn matches(&self, created: i64, labels: &HashMap<String, String>) -> bool {
        if self.until.is_some_and(|until| created > until) {
            return false;
        }
        if !self.labels.iter().all(|l| label_matches(labels, l)) {
            return false;
        }
        self.not_labels.is_empty() || !self.not_labels.iter().all(|l| label_matches(labels, l))
    }
}

pub(super) fn prune_event(server: &DockerServer, kind: EventKind, reclaimed: u64) {
    server
        .events
        .publish(Event::new(NAMESPACE, kind, "prune", "").with("reclaimed", reclaimed.to_string()));
}

/// POST `/containers/prune?filters=`: removes every container that is not running;
/// `{"ContainersDeleted", "SpaceReclaimed"}` (null when none, as dockerd).
pub(super) async fn prune_containers(
    State(server): State<Arc<DockerServer>>,
    Query(query): Query<PruneQuery>,
) -> Result<Json<Value>, ApiError> {
    let filters = PruneFilters::parse(query.filters.as_deref(), false)?;
    let mut candidates: Vec<ContainerRecord> = Vec::new();
    server.runtime.for_each_container(NAMESPACE, |c| {
        if !matches!(c.state, ContainerState::Running | ContainerState::Creating)
            && filters.matches(c.created_at, &c.spec.labels)
        {
            candidates.push(c.clone());
        }
    });
    let mut deleted = Vec::new();
    let mut reclaimed: u64 = 0;
    for c in candidates {
        let size = size_rw(&server, &c.id).await;
        if let Err(err) = server.runtime.remove_pod(NAMESPACE, &c.pod_id).await {
            tracing::warn!(container = %c.id, "failed to prune container: {err}");
            continue;
        }
        let dir = container_dir(&server, &c.id);
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
        reclaimed += size;
        deleted.push(c.id);
    }
    prune_event(&server, EventKind::Container, reclaimed);
    Ok(Json(json!({
        "ContainersDeleted": if deleted.is_empty() { Value::Null } else { json!(deleted) },
        "SpaceReclaimed": reclaimed,
    })))
}

/// POST `/images/prune?filters=`: removes images no container uses: dangling ones
/// (untagged; the default, `dangling=true`) or all (`dangling=false`, `docker image
/// prune -a`); `{"ImagesDeleted": [{"Untagged"}, {"Deleted"}], "SpaceReclaimed"}`.
pub(super) async fn prune_images(
    State(server): State<Arc<DockerServer>>,
    Query(query): Query<PruneQuery>,
) -> Result<Json<Value>, ApiError> {
    let filters = PruneFilters::parse(query.filters.as_deref(), true)?;
    let dangling_only = filters.dangling.unwrap_or(true);
    let mut used: HashSet<String> = HashSet::new();
    server.runtime.for_each_container(NAMESPACE, |c| {
        used.insert(c.image_id.clone());
    });
    let before = server.images.usage().map(|(bytes, _)| bytes).unwrap_or(0);
    let mut answer: Vec<Value> = Vec::new();
    // dockerd prunes the heads (images no other image is built on), each with the
    // chain of untagged parents it leaves unused (a build's steps).
    for image in server.images.list(NAMESPACE) {
        if used.contains(&image.id)
            || (dangling_only && !image.repo_tags.is_empty())
            || !server.images.children(NAMESPACE, &image.id).is_empty()
        {
            continue;
        }
        let (created, labels) = image_facts(&server, &image);
        if !filters.matches(created, &labels) {
            continue;
        }
        // Checked again: a container may have been made from it meanwhile.
        let mut in_use = false;
        server.runtime.for_each_container(NAMESPACE, |c| {
            in_use |= c.image_id == image.id;
        });
        if in_use {
            continue;
        }
        if server.images.get(NAMESPACE, &image.id).is_none() {
            // Pruned already, as a parent of an image removed before it.
            continue;
        }
        match super::images::remove_image(&server, &image.id, true).await {
            Ok(parents) => {
                for reference in image.repo_tags.iter().chain(&image.repo_digests) {
                    answer.push(json!({ "Untagged": familiar(reference) }));
                }
                answer.push(json!({ "Deleted": image.id }));
                for parent in parents {
                    answer.push(json!({ "Deleted": parent }));
                }
            }
            Err(err) => tracing::warn!(image = %image.id, "failed to prune image: {}", err.message),
        }
    }
    let after = server.images.usage().map(|(bytes, _)| bytes).unwrap_or(0);
    let reclaimed = before.saturating_sub(after);
    prune_event(&server, EventKind::Image, reclaimed);
    Ok(Json(json!({
        "ImagesDeleted": if answer.is_empty() { Value::Null } else { json!(answer) },
        "SpaceReclaimed": reclaimed,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn until_as_dockerd_reads_it() {
        let now = 1_700_000_000 * 1_000_000_000;
        assert_eq!(parse_until("1h", now).unwrap(), now - 3600 * 1_000_000_000);
        assert_eq!(
            parse_until("1h30m", now).unwrap(),
            now - 5400 * 1_000_000_000
        );
        assert_eq!(parse_until("1500ms", now).unwrap(), now - 1_500_000_000);
        assert_eq!(
            parse_until("1600000000", now).unwrap(),
            1_600_000_000 * 1_000_000_000
        );
        assert_eq!(
            parse_until("1600000000.5", now).unwrap(),
            1_600_000_000 * 1_000_000_000 + 500_000_000
        );
        assert_eq!(
            parse_until("2020-09-13T12:26:40Z", now).unwrap(),
            1_600_000_000 * 1_000_000_000
        );
        assert_eq!(
            parse_until("2020-09-13", now).unwrap(),
            1_599_955_200 * 1_000_000_000
        );
        assert!(parse_until("yesterday", now).is_err());
        assert!(parse_until("1x", now).is_err());
    }

    #[test]
    fn prune_filters() {
        let f = PruneFilters::parse(Some(r#"{"label":["a=1"],"label!":["b"]}"#), false).unwrap();
        let labels = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<HashMap<_, _>>()
        };
        assert!(f.matches(0, &labels(&[("a", "1")])));
        assert!(!f.matches(0, &labels(&[("a", "1"), ("b", "x")])));
        assert!(!f.matches(0, &labels(&[("a", "2")])));
        assert!(PruneFilters::parse(Some(r#"{"dangling":["true"]}"#), false).is_err());
        let f = PruneFilters::parse(Some(r#"{"dangling":["false"]}"#), true).unwrap();
        assert_eq!(f.dangling, Some(false));
        assert!(PruneFilters::parse(Some(r#"{"dangling":["maybe"]}"#), true).is_err());
        let err = PruneFilters::parse(Some(r#"{"name":["x"]}"#), true).unwrap_err();
        assert_eq!(err.message, "invalid filter 'name'");
    }
}
