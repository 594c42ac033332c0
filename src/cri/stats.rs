//! ContainerStats, ListContainerStats, PodSandboxStats, ListPodSandboxStats: the
//! core's cgroup samples (`runtime::stats`) in the CRI's fields, as kubelet's summary
//! API reads them (containerd's `cri/server/container_stats_list.go` is the reference):
//! - CPU: the cumulative core nanoseconds, and nano-cores between this sample and the
//!   previous one of the same container (kept here; the first sample has none);
//! - memory: working set = usage − inactive_file (never below 0), available = limit −
//!   working set when a limit is set, usage, RSS, page faults;
//! - the writable layer: bytes and inodes of the container's overlay upper dir (measured
//!   at most every 10 s by the core);
//! - a pod: the sum of its running containers' CPU, memory and processes, and the
//!   interfaces of its network namespace (eth0 the default).
//!
//! Containers that are not running have no sample and are left out of lists (kubelet
//! asks for running ones); asking for one by ID is FailedPrecondition.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_cri::v1 as cri;
use tonic::Status;

use super::records::{container_list_fields, pod_list_fields};
use super::status::from_runtime;
use super::{CriServer, NAMESPACE};
use crate::runtime::stats::ContainerStats;
use crate::runtime::{ContainerRecord, ContainerState, PodRecord, PodState};

/// The previous CPU sample of each container: (read at, cumulative nanoseconds).
#[derive(Debug, Default)]
pub(super) struct CpuSamples(Mutex<HashMap<String, (i64, u64)>>);

impl CpuSamples {
    /// Nano-cores since the previous sample of `id`, and remembers this one.
    fn nano_cores(&self, id: &str, read_at: i64, total: u64) -> Option<u64> {
        let mut samples = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let previous = samples.insert(id.to_string(), (read_at, total));
        let (at, before) = previous?;
        let elapsed = read_at.checked_sub(at).filter(|ns| *ns > 0)?;
        let used = total.checked_sub(before)?;
        Some((used as u128 * 1_000_000_000 / elapsed as u128) as u64)
    }

    fn forget_missing(&self, alive: impl Fn(&str) -> bool) {
        let mut samples = self.0.lock().unwrap_or_else(|p| p.into_inner());
        samples.retain(|id, _| alive(id));
    }
}

fn value(v: u64) -> Option<cri::UInt64Value> {
    Some(cri::UInt64Value { value: v })
}

fn stat(stats: &ContainerStats, names: &[&str]) -> u64 {
    names
        .iter()
        .find_map(|name| stats.memory_stat.get(*name).copied())
        .unwrap_or(0)
}

/// The memory fields from one sample.
fn memory(stats: &ContainerStats, limited: bool) -> cri::MemoryUsage {
    let inactive = stat(stats, &["total_inactive_file", "inactive_file"]);
    let working_set = stats.memory_usage.saturating_sub(inactive);
    cri::MemoryUsage {
        timestamp: stats.read_at,
        working_set_bytes: value(working_set),
        available_bytes: limited
            .then(|| value(stats.memory_limit.saturating_sub(working_set)))
            .flatten(),
        usage_bytes: value(stats.memory_usage),
        rss_bytes: value(stat(stats, &["total_rss", "anon"])),
        page_faults: value(stat(stats, &["total_pgfault", "pgfault"])),
        major_page_faults: value(stat(stats, &["total_pgmajfault", "pgmajfault"])),
    }
}

/// Whether the container has a memory limit of its own (else `memory_limit` is the
/// host's memory).
fn memory_limited(c: &ContainerRecord) -> bool {
    c.spec
        .resources
        .as_ref()
        .is_some_and(|r| r.memory_limit_in_bytes > 0)
}

fn container_stats_of(
    server: &CriServer,
    c: &ContainerRecord,
    stats: &ContainerStats,
) -> Result<cri::ContainerStats, Status> {
    let fields = container_list_fields(c).map_err(|err| super::status::from_error(&err))?;
    let writable_layer =
        server
            .runtime
            .writable_layer_usage(&c.id)
            .map(|usage| cri::FilesystemUsage {
                timestamp: stats.read_at,
                fs_id: Some(cri::FilesystemIdentifier {
                    mountpoint: usage.path.display().to_string(),
                }),
                used_bytes: value(usage.bytes),
                inodes_used: value(usage.inodes),
            });
    Ok(cri::ContainerStats {
        attributes: Some(cri::ContainerAttributes {
            id: c.id.clone(),
            metadata: fields.metadata,
            labels: fields.labels,
            annotations: fields.annotations,
        }),
        cpu: Some(cri::CpuUsage {
            timestamp: stats.read_at,
            usage_core_nano_seconds: value(stats.cpu_total),
            usage_nano_cores: server
                .cpu_samples
                .nano_cores(&c.id, stats.read_at, stats.cpu_total)
                .and_then(value),
        }),
        memory: Some(memory(stats, memory_limited(c))),
        writable_layer,
        swap: None,
    })
}

pub(super) fn container_stats(
    server: &CriServer,
    request: cri::ContainerStatsRequest,
) -> Result<cri::ContainerStatsResponse, Status> {
    let c = server
        .runtime
        .find_container(NAMESPACE, &request.container_id)
        .ok_or_else(|| {
            Status::not_found(format!("container {:?} not found", request.container_id))
        })?;
    let stats = server
        .runtime
        .container_stats(NAMESPACE, &c.id)
        .map_err(from_runtime)?;
    Ok(cri::ContainerStatsResponse {
        stats: Some(container_stats_of(server, &c, &stats)?),
    })
}

fn labels_match(labels: &HashMap<String, String>, selector: &HashMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The running containers of the namespace that `keep` accepts, with a sample each.
fn running_samples(
    server: &CriServer,
    keep: impl Fn(&ContainerRecord) -> bool,
) -> Vec<(ContainerRecord, ContainerStats)> {
    let mut running = Vec::new();
    server.runtime.for_each_container(NAMESPACE, |c| {
        if c.state == ContainerState::Running && keep(c) {
            running.push(c.clone());
        }
    });
    running
        .into_iter()
        .filter_map(|c| {
            let stats = server.runtime.container_stats(NAMESPACE, &c.id).ok()?;
            Some((c, stats))
        })
        .collect()
}

pub(super) fn list_container_stats(
    server: &CriServer,
    request: cri::ListContainerStatsRequest,
) -> Result<cri::ListContainerStatsResponse, Status> {
    let filter = request.filter.unwrap_or_default();
    let samples = running_samples(server, |c| {
        (filter.id.is_empty() || c.id.starts_with(&filter.id))
            && (filter.pod_sandbox_id.is_empty() || c.pod_id.starts_with(&filter.pod_sandbox_id))
            && (filter.label_selector.is_empty()
                || container_list_fields(c)
                    .is_ok_and(|f| labels_match(&f.labels, &filter.label_selector)))
    });
    let mut stats = Vec::with_capacity(samples.len());
    for (c, sample) in &samples {
        match container_stats_of(server, c, sample) {
            Ok(s) => stats.push(s),
            Err(err) => {
                tracing::error!(container = %c.id, "ListContainerStats skips it: {}", err.message())
            }
        }
    }
    server.cpu_samples.forget_missing(|id| {
        server.runtime.container(id).is_some() || server.runtime.pod(id).is_some()
    });
    Ok(cri::ListContainerStatsResponse { stats })
}

/// A pod's stats from its containers' samples.
fn pod_stats_of(
    server: &CriServer,
    pod: &PodRecord,
    samples: &[(ContainerRecord, ContainerStats)],
) -> Result<cri::PodSandboxStats, Status> {
    let fields = pod_list_fields(pod).map_err(|err| super::status::from_error(&err))?;
    let read_at = samples
        .iter()
        .map(|(_, s)| s.read_at)
        .max()
        .unwrap_or_else(crate::runtime::records::now_nanos);
    let cpu_total: u64 = samples.iter().map(|(_, s)| s.cpu_total).sum();
    let mut containers = Vec::with_capacity(samples.len());
    for (c, sample) in samples {
        containers.push(container_stats_of(server, c, sample)?);
    }
    let sum = |f: fn(&cri::MemoryUsage) -> Option<u64>| -> u64 {
        containers
            .iter()
            .filter_map(|c| c.memory.as_ref().and_then(f))
            .sum()
    };
    let memory = cri::MemoryUsage {
        timestamp: read_at,
        working_set_bytes: value(sum(|m| m.working_set_bytes.map(|v| v.value))),
        available_bytes: None,
        usage_bytes: value(sum(|m| m.usage_bytes.map(|v| v.value))),
        rss_bytes: value(sum(|m| m.rss_bytes.map(|v| v.value))),
        page_faults: value(sum(|m| m.page_faults.map(|v| v.value))),
        major_page_faults: value(sum(|m| m.major_page_faults.map(|v| v.value))),
    };
    // The pod's network namespace, as any of its containers sees it.
    let interfaces: Vec<cri::NetworkInterfaceUsage> = samples
        .first()
        .map(|(_, s)| {
            s.networks
                .iter()
                .filter(|(name, _)| name.as_str() != "lo")
                .map(|(name, n)| cri::NetworkInterfaceUsage {
                    name: name.clone(),
                    rx_bytes: value(n[0]),
                    rx_errors: value(n[2]),
                    tx_bytes: value(n[4]),
                    tx_errors: value(n[6]),
                })
                .collect()
        })
        .unwrap_or_default();
    let default_interface = interfaces
        .iter()
        .find(|i| i.name == "eth0")
        .or(interfaces.first())
        .cloned();
    Ok(cri::PodSandboxStats {
        attributes: Some(cri::PodSandboxAttributes {
            id: pod.id.clone(),
            metadata: fields.metadata,
            labels: fields.labels,
            annotations: fields.annotations,
        }),
        linux: Some(cri::LinuxPodSandboxStats {
            cpu: Some(cri::CpuUsage {
                timestamp: read_at,
                usage_core_nano_seconds: value(cpu_total),
                usage_nano_cores: server
                    .cpu_samples
                    .nano_cores(&pod.id, read_at, cpu_total)
                    .and_then(value),
            }),
            memory: Some(memory),
            network: (!interfaces.is_empty()).then_some(cri::NetworkUsage {
                timestamp: read_at,
                default_interface,
                interfaces,
            }),
            process: Some(cri::ProcessUsage {
                timestamp: read_at,
                process_count: value(samples.iter().map(|(_, s)| s.pids_current).sum()),
            }),
            containers,
        }),
        windows: None,
    })
}

pub(super) fn pod_sandbox_stats(
    server: &CriServer,
    request: cri::PodSandboxStatsRequest,
) -> Result<cri::PodSandboxStatsResponse, Status> {
    let pod = server
        .runtime
        .find_pod(NAMESPACE, &request.pod_sandbox_id)
        .ok_or_else(|| {
            Status::not_found(format!(
                "pod sandbox {:?} not found",
                request.pod_sandbox_id
            ))
        })?;
    if pod.state != PodState::Ready {
        return Err(Status::failed_precondition(format!(
            "pod sandbox {} is not ready",
            pod.id
        )));
    }
    let samples = running_samples(server, |c| c.pod_id == pod.id);
    Ok(cri::PodSandboxStatsResponse {
        stats: Some(pod_stats_of(server, &pod, &samples)?),
    })
}

pub(super) fn list_pod_sandbox_stats(
    server: &CriServer,
    request: cri::ListPodSandboxStatsRequest,
) -> Result<cri::ListPodSandboxStatsResponse, Status> {
    let filter = request.filter.unwrap_or_default();
    let mut pods = Vec::new();
    server.runtime.for_each_pod(NAMESPACE, |p| {
        if p.state == PodState::Ready
            && (filter.id.is_empty() || p.id.starts_with(&filter.id))
            && (filter.label_selector.is_empty()
                || pod_list_fields(p)
                    .is_ok_and(|f| labels_match(&f.labels, &filter.label_selector)))
        {
            pods.push(p.clone());
        }
    });
    let mut samples = running_samples(server, |c| pods.iter().any(|p| p.id == c.pod_id));
    let mut stats = Vec::with_capacity(pods.len());
    for pod in &pods {
        let (mine, rest): (Vec<_>, Vec<_>) =
            samples.into_iter().partition(|(c, _)| c.pod_id == pod.id);
        samples = rest;
        match pod_stats_of(server, pod, &mine) {
            Ok(s) => stats.push(s),
            Err(err) => {
                tracing::error!(pod = %pod.id, "ListPodSandboxStats skips it: {}", err.message())
            }
        }
    }
    Ok(cri::ListPodSandboxStatsResponse { stats })
}
