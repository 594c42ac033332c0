//! GET `/containers/{id}/stats?stream=&one-shot=`: dockerd's stats JSON from the
//! core's samples (`runtime::stats`): every second while streaming, each with the
//! previous sample as `precpu_stats` (so clients compute a CPU percentage);
//! `stream=false` waits for a second sample as dockerd does, unless `one-shot`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::response::Response;
use serde::Deserialize;
use serde_json::{json, Value};

use super::containers::{find, rfc3339};
use super::error::ApiError;
use super::logs::async_stream;
use super::{DockerServer, NAMESPACE};
use crate::runtime::stats::ContainerStats;

const INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub(super) struct StatsQuery {
    stream: Option<String>,
    #[serde(rename = "one-shot")]
    one_shot: Option<String>,
}

fn cpu_json(stats: Option<&ContainerStats>) -> Value {
    let Some(s) = stats else {
        return json!({
            "cpu_usage": { "total_usage": 0, "usage_in_kernelmode": 0, "usage_in_usermode": 0 },
            "throttling_data": { "periods": 0, "throttled_periods": 0, "throttled_time": 0 },
        });
    };
    json!({
        "cpu_usage": {
            "total_usage": s.cpu_total,
            "percpu_usage": s.cpu_per_cpu,
            "usage_in_kernelmode": s.cpu_kernel,
            "usage_in_usermode": s.cpu_user,
        },
        "system_cpu_usage": s.system_cpu,
        "online_cpus": s.online_cpus,
        "throttling_data": {
            "periods": s.periods,
            "throttled_periods": s.throttled_periods,
            "throttled_time": s.throttled_time,
        },
    })
}

/// dockerd's stats object for `current` (None: not running) after `previous`.
fn stats_json(
    id: &str,
    name: &str,
    current: Option<&ContainerStats>,
    previous: Option<&ContainerStats>,
) -> Value {
    let networks: serde_json::Map<String, Value> = current
        .map(|s| {
            s.networks
                .iter()
                .map(|(name, n)| {
                    (
                        name.clone(),
                        json!({
                            "rx_bytes": n[0], "rx_packets": n[1], "rx_errors": n[2],
                            "rx_dropped": n[3], "tx_bytes": n[4], "tx_packets": n[5],
                            "tx_errors": n[6], "tx_dropped": n[7],
                        }),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    json!({
        "read": current.map_or_else(|| rfc3339(0), |s| rfc3339(s.read_at)),
        "preread": previous.map_or_else(|| rfc3339(0), |s| rfc3339(s.read_at)),
        "name": format!("/{name}"),
        "id": id,
        "pids_stats": current.map_or(json!({}), |s| {
            if s.pids_limit > 0 {
                json!({ "current": s.pids_current, "limit": s.pids_limit })
            } else {
                json!({ "current": s.pids_current })
            }
        }),
        "blkio_stats": {
            "io_service_bytes_recursive": current.map(|s| s.io_service_bytes.iter().map(|(major, minor, op, value)| json!({
                "major": major, "minor": minor, "op": op, "value": value,
            })).collect::<Vec<_>>()),
            "io_serviced_recursive": null, "io_queue_recursive": null,
            "io_service_time_recursive": null, "io_wait_time_recursive": null,
            "io_merged_recursive": null, "io_time_recursive": null, "sectors_recursive": null,
        },
        "num_procs": 0,
        "storage_stats": {},
        "cpu_stats": cpu_json(current),
        "precpu_stats": cpu_json(previous),
        "memory_stats": current.map_or(json!({}), |s| json!({
            "usage": s.memory_usage,
            "max_usage": s.memory_max_usage,
            "stats": s.memory_stat,
            "failcnt": s.memory_failcnt,
            "limit": s.memory_limit,
        })),
        "networks": networks,
    })
}

fn truthy(value: &Option<String>, default: bool) -> bool {
    match value.as_deref() {
        None | Some("") => default,
        Some(v) => matches!(v, "1" | "true" | "True"),
    }
}

/// GET `/containers/{id}/stats`.
pub(super) async fn stats(
    State(server): State<Arc<DockerServer>>,
    Path(query): Path<String>,
    Query(params): Query<StatsQuery>,
) -> Result<Response, ApiError> {
    let container = find(&server, &query)?;
    let stream = truthy(&params.stream, true);
    let one_shot = truthy(&params.one_shot, false);
    if one_shot && stream {
        return Err(ApiError::bad_request(
            "cannot have stream=true and one-shot=true",
        ));
    }
    let id = container.id.clone();
    let name = container.spec.name.clone();
    let runtime = server.runtime.clone();
    let body = async_stream(move |sender| async move {
        let sample = || runtime.container_stats(NAMESPACE, &id).ok();
        let mut previous = None;
        let mut current = sample();
        if !stream && !one_shot && current.is_some() {
            tokio::time::sleep(INTERVAL).await;
            previous = current;
            current = sample();
        }
        loop {
            let line = format!(
                "{}\n",
                stats_json(&id, &name, current.as_ref(), previous.as_ref())
            );
            if sender.send(Bytes::from(line)).await.is_err() || !stream {
                return;
            }
            // A stopped container's stream ends after a zero sample, as dockerd's.
            if current.is_none() {
                return;
            }
            tokio::time::sleep(INTERVAL).await;
            previous = current;
            current = sample();
        }
    });
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(Body::from_stream(body))
        .map_err(|err| ApiError::internal(err.to_string()))
}
