//! GET `/events`: the engine's events of the `docker` namespace as dockerd streams them
//! (one JSON object per message, flushed as it happens), with `since` replay from the
//! bus's bounded buffer, `until`, and the filters `type`, `event`, `container`,
//! `image`, `label`. Also the front end's housekeeping on events: a destroyed
//! container's files go, whoever removed it (an auto-remove included).

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::response::Response;
use serde::Deserialize;
use serde_json::json;

use super::containers::{container_dir, parse_filters};
use super::error::ApiError;
use super::logs::async_stream;
use super::{DockerServer, NAMESPACE};
use crate::events::{Event, EventKind};

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub(super) struct EventsQuery {
    since: Option<String>,
    until: Option<String>,
    filters: Option<String>,
}

/// `since`/`until`: Unix seconds (with a fraction) or an RFC 3339 time.
fn parse_time(text: Option<&str>, key: &str) -> Result<Option<i64>, ApiError> {
    let Some(text) = text.filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    if let Ok(time) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(time.timestamp_nanos_opt());
    }
    let (secs, frac) = text.split_once('.').unwrap_or((text, ""));
    let secs: i64 = secs
        .parse()
        .map_err(|_| ApiError::bad_request(format!("invalid value for {key}: {text:?}")))?;
    let frac: i64 = if frac.is_empty() {
        0
    } else {
        format!("{:0<9}", &frac[..frac.len().min(9)])
            .parse()
            .map_err(|_| ApiError::bad_request(format!("invalid value for {key}: {text:?}")))?
    };
    Ok(Some(secs * 1_000_000_000 + frac))
}

/// dockerd's JSON for an event.
fn message(event: &Event) -> serde_json::Value {
    let mut value = json!({
        "Type": event.kind.as_str(),
        "Action": event.action,
        "Actor": { "ID": event.id, "Attributes": event.attributes },
        "scope": "local",
        "time": event.time / 1_000_000_000,
        "timeNano": event.time,
    });
    // The old fields some clients still read.
    if event.kind == EventKind::Container {
        value["status"] = json!(event.action);
        value["id"] = json!(event.id);
        if let Some(image) = event.attributes.get("image") {
            value["from"] = json!(image);
        }
    }
    value
}

struct Filter {
    filters: std::collections::HashMap<String, Vec<String>>,
}

impl Filter {
    fn matches(&self, event: &Event) -> bool {
        self.filters.iter().all(|(key, values)| match key.as_str() {
            "type" => values.iter().any(|v| v == event.kind.as_str()),
            "event" => values.iter().any(|v| v == &event.action),
            "container" => {
                event.kind == EventKind::Container
                    && values.iter().any(|v| {
                        event.id.starts_with(v.as_str()) || event.attributes.get("name") == Some(v)
                    })
            }
            "image" => values.iter().any(|v| {
                event.attributes.get("image") == Some(v)
                    || (event.kind == EventKind::Image
                        && (event.id == *v || event.attributes.get("name") == Some(v)))
            }),
            // A volume's name (its events), or a container's mount of it.
            "volume" => event.kind == EventKind::Volume && values.contains(&event.id),
            "label" => values.iter().all(|v| match v.split_once('=') {
                Some((key, value)) => event.attributes.get(key).is_some_and(|x| x == value),
                None => event.attributes.contains_key(v),
            }),
            _ => true,
        })
    }
}

/// GET `/events`.
pub(super) async fn events(
    State(server): State<Arc<DockerServer>>,
    Query(query): Query<EventsQuery>,
) -> Result<Response, ApiError> {
    let since = parse_time(query.since.as_deref(), "since")?;
    let until = parse_time(query.until.as_deref(), "until")?;
    let filters = parse_filters(query.filters.as_deref())?;
    for key in filters.keys() {
        if !matches!(
            key.as_str(),
            "type" | "event" | "container" | "image" | "volume" | "label"
        ) {
            return Err(ApiError::bad_request(format!("invalid filter '{key}'")));
        }
    }
    let filter = Filter { filters };
    let (past, mut live) = server.events.subscribe();
    let stream = async_stream(move |sender| async move {
        let wanted = |event: &Event| event.namespace == NAMESPACE && filter.matches(event);
        let mut last = 0;
        if let Some(since) = since {
            for event in past.iter().filter(|e| e.time >= since) {
                if until.is_some_and(|u| event.time > u) {
                    return;
                }
                last = event.time;
                if wanted(event) {
                    let line = Bytes::from(format!("{}\n", message(event)));
                    if sender.send(line).await.is_err() {
                        return;
                    }
                }
            }
        }
        let now = crate::runtime::records::now_nanos();
        if until.is_some_and(|u| u <= now) {
            return;
        }
        loop {
            let next = match until {
                Some(u) => {
                    let wait = std::time::Duration::from_nanos(
                        (u - crate::runtime::records::now_nanos()).max(0) as u64,
                    );
                    match tokio::time::timeout(wait, live.recv()).await {
                        Ok(next) => next,
                        Err(_) => return,
                    }
                }
                None => live.recv().await,
            };
            let event = match next {
                Ok(event) => event,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "an /events client fell behind and lost events");
                    continue;
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            };
            // Replayed already (published between the snapshot and the subscription).
            if event.time <= last {
                continue;
            }
            if !wanted(&event) {
                continue;
            }
            let line = Bytes::from(format!("{}\n", message(&event)));
            if sender.send(line).await.is_err() {
                return;
            }
        }
    });
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .map_err(|err| ApiError::internal(err.to_string()))
}

/// Removes a Docker container's files when the engine destroys it (by `docker rm`, an
/// auto-remove, or anything else), for as long as the engine runs.
pub(super) fn start_housekeeping(server: Arc<DockerServer>) {
    let mut receiver = server.events.receiver();
    tokio::spawn(async move {
        loop {
            match receiver.recv().await {
                Ok(event)
                    if event.namespace == NAMESPACE
                        && event.kind == EventKind::Container
                        && event.action == "destroy" =>
                {
                    let dir = container_dir(&server, &event.id);
                    let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
                }
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_in_dockerd_shape_and_filters() {
        let event = Event::new(NAMESPACE, EventKind::Container, "die", "abc123")
            .with("name", "web")
            .with("image", "busybox")
            .with("exitCode", "3");
        let value = message(&event);
        assert_eq!(value["Type"], "container");
        assert_eq!(value["status"], "die");
        assert_eq!(value["Actor"]["Attributes"]["exitCode"], "3");
        let filter = |json: &str| Filter {
            filters: parse_filters(Some(json)).unwrap(),
        };
        assert!(filter(r#"{"container":["web"]}"#).matches(&event));
        assert!(filter(r#"{"container":["abc"],"event":["die"]}"#).matches(&event));
        assert!(!filter(r#"{"event":["start"]}"#).matches(&event));
        assert!(!filter(r#"{"type":["image"]}"#).matches(&event));
        assert_eq!(
            parse_time(Some("1.5"), "since").unwrap(),
            Some(1_500_000_000)
        );
        assert!(parse_time(Some("yesterday"), "since").is_err());
    }
}
