//! ListMetricDescriptors and ListPodSandboxMetrics: the core's cgroup samples
//! (`runtime::stats`, the same ones ContainerStats reads) as the cAdvisor metric
//! families kubelet serves on `/metrics/cadvisor` when the runtime provides them
//! (`PodAndContainerStatsFromCRI`). Names, help texts, types and labels follow
//! cAdvisor and CRI-O's implementation (internal/lib/stats): label keys `id`, `name`,
//! `image` (plus `cpu` or `interface`), values in the CRI's unsigned integers (CPU in
//! whole seconds, as CRI-O). Network counters are the pod's: its sandbox's metrics,
//! labelled with the pod's ID and `POD`.

use k8s_cri::v1 as cri;
use tonic::Status;

use super::records::container_list_fields;
use super::{CriServer, NAMESPACE};
use crate::runtime::stats::ContainerStats;
use crate::runtime::{ContainerRecord, ContainerState, PodState};

const COUNTER: i32 = cri::MetricType::Counter as i32;
const GAUGE: i32 = cri::MetricType::Gauge as i32;
const NANOS: u64 = 1_000_000_000;

/// What one family is: its name, help, extra label key and type.
struct Family {
    name: &'static str,
    help: &'static str,
    extra_label: Option<&'static str>,
    metric_type: i32,
}

const fn family(
    name: &'static str,
    help: &'static str,
    extra_label: Option<&'static str>,
    metric_type: i32,
) -> Family {
    Family {
        name,
        help,
        extra_label,
        metric_type,
    }
}

/// Every family wharf reports, container ones first, then the pod's network ones.
const FAMILIES: &[Family] = &[
    family(
        "container_cpu_usage_seconds_total",
        "Cumulative cpu time consumed in seconds.",
        Some("cpu"),
        COUNTER,
    ),
    family(
        "container_cpu_user_seconds_total",
        "Cumulative user cpu time consumed in seconds.",
        None,
        COUNTER,
    ),
    family(
        "container_cpu_system_seconds_total",
        "Cumulative system cpu time consumed in seconds.",
        None,
        COUNTER,
    ),
    family(
        "container_cpu_cfs_periods_total",
        "Number of elapsed enforcement period intervals.",
        None,
        COUNTER,
    ),
    family(
        "container_cpu_cfs_throttled_periods_total",
        "Number of throttled period intervals.",
        None,
        COUNTER,
    ),
    family(
        "container_cpu_cfs_throttled_seconds_total",
        "Total time duration the container has been throttled.",
        None,
        COUNTER,
    ),
    family(
        "container_memory_usage_bytes",
        "Current memory usage in bytes, including all memory regardless of when it was \
         accessed",
        None,
        GAUGE,
    ),
    family(
        "container_memory_working_set_bytes",
        "Current working set in bytes.",
        None,
        GAUGE,
    ),
    family("container_memory_rss", "Size of RSS in bytes.", None, GAUGE),
    family(
        "container_memory_cache",
        "Number of bytes of page cache memory.",
        None,
        GAUGE,
    ),
    family(
        "container_memory_max_usage_bytes",
        "Maximum memory usage recorded in bytes",
        None,
        GAUGE,
    ),
    family(
        "container_memory_failcnt",
        "Number of memory usage hits limits",
        None,
        COUNTER,
    ),
    family(
        "container_spec_memory_limit_bytes",
        "Memory limit for the container.",
        None,
        GAUGE,
    ),
    family(
        "container_processes",
        "Number of processes running inside the container.",
        None,
        GAUGE,
    ),
    family(
        "container_fs_usage_bytes",
        "Number of bytes that are consumed by the container on this filesystem.",
        None,
        GAUGE,
    ),
    family("container_fs_inodes_total", "Number of Inodes", None, GAUGE),
    family(
        "container_network_receive_bytes_total",
        "Cumulative count of bytes received",
        Some("interface"),
        COUNTER,
    ),
    family(
        "container_network_receive_packets_total",
        "Cumulative count of packets received",
        Some("interface"),
        COUNTER,
    ),
    family(
        "container_network_receive_errors_total",
        "Cumulative count of errors encountered while receiving",
        Some("interface"),
        COUNTER,
    ),
    family(
        "container_network_receive_packets_dropped_total",
        "Cumulative count of packets dropped while receiving",
        Some("interface"),
        COUNTER,
    ),
    family(
        "container_network_transmit_bytes_total",
        "Cumulative count of bytes transmitted",
        Some("interface"),
        COUNTER,
    ),
    family(
        "container_network_transmit_packets_total",
        "Cumulative count of packets transmitted",
        Some("interface"),
        COUNTER,
    ),
    family(
        "container_network_transmit_errors_total",
        "Cumulative count of errors encountered while transmitting",
        Some("interface"),
        COUNTER,
    ),
    family(
        "container_network_transmit_packets_dropped_total",
        "Cumulative count of packets dropped while transmitting",
        Some("interface"),
        COUNTER,
    ),
];

/// The index in `networks` arrays (runtime::stats) of each network family, in the
/// order of [`FAMILIES`]' network part.
const NETWORK_FIELDS: [(&str, usize); 8] = [
    ("container_network_receive_bytes_total", 0),
    ("container_network_receive_packets_total", 1),
    ("container_network_receive_errors_total", 2),
    ("container_network_receive_packets_dropped_total", 3),
    ("container_network_transmit_bytes_total", 4),
    ("container_network_transmit_packets_total", 5),
    ("container_network_transmit_errors_total", 6),
    ("container_network_transmit_packets_dropped_total", 7),
];

pub(super) fn list_metric_descriptors() -> cri::ListMetricDescriptorsResponse {
    cri::ListMetricDescriptorsResponse {
        descriptors: FAMILIES
            .iter()
            .map(|f| cri::MetricDescriptor {
                name: f.name.to_string(),
                help: f.help.to_string(),
                label_keys: ["id", "name", "image"]
                    .into_iter()
                    .chain(f.extra_label)
                    .map(str::to_string)
                    .collect(),
            })
            .collect(),
    }
}

fn metric_type_of(name: &str) -> i32 {
    FAMILIES
        .iter()
        .find(|f| f.name == name)
        .map_or(GAUGE, |f| f.metric_type)
}

fn metric(name: &str, at: i64, labels: &[&str], value: u64) -> cri::Metric {
    cri::Metric {
        name: name.to_string(),
        timestamp: at,
        metric_type: metric_type_of(name),
        label_values: labels.iter().map(|l| l.to_string()).collect(),
        value: Some(cri::UInt64Value { value }),
    }
}

fn stat(stats: &ContainerStats, names: &[&str]) -> u64 {
    names
        .iter()
        .find_map(|name| stats.memory_stat.get(*name).copied())
        .unwrap_or(0)
}

/// One container's metrics from its sample.
fn container_metrics(
    server: &CriServer,
    c: &ContainerRecord,
    s: &ContainerStats,
) -> cri::ContainerMetrics {
    let name = container_list_fields(c)
        .ok()
        .and_then(|f| f.metadata.map(|m| m.name))
        .unwrap_or_default();
    let image = c.spec.image.clone();
    let base = [c.id.as_str(), name.as_str(), image.as_str()];
    let at = s.read_at;
    let plain = |family: &str, value: u64| metric(family, at, &base, value);
    let inactive = stat(s, &["total_inactive_file", "inactive_file"]);
    let mut metrics = vec![
        metric(
            "container_cpu_usage_seconds_total",
            at,
            &[base[0], base[1], base[2], "total"],
            s.cpu_total / NANOS,
        ),
        plain("container_cpu_user_seconds_total", s.cpu_user / NANOS),
        plain("container_cpu_system_seconds_total", s.cpu_kernel / NANOS),
        plain("container_cpu_cfs_periods_total", s.periods),
        plain(
            "container_cpu_cfs_throttled_periods_total",
            s.throttled_periods,
        ),
        plain(
            "container_cpu_cfs_throttled_seconds_total",
            s.throttled_time / NANOS,
        ),
        plain("container_memory_usage_bytes", s.memory_usage),
        plain(
            "container_memory_working_set_bytes",
            s.memory_usage.saturating_sub(inactive),
        ),
        plain("container_memory_rss", stat(s, &["total_rss", "anon"])),
        plain("container_memory_cache", stat(s, &["total_cache", "file"])),
        plain("container_memory_max_usage_bytes", s.memory_max_usage),
        plain("container_memory_failcnt", s.memory_failcnt),
        plain("container_processes", s.pids_current),
    ];
    // cAdvisor reports 0 for no limit.
    let limited = c
        .spec
        .resources
        .as_ref()
        .is_some_and(|r| r.memory_limit_in_bytes > 0);
    metrics.push(plain(
        "container_spec_memory_limit_bytes",
        if limited { s.memory_limit } else { 0 },
    ));
    if let Some(layer) = server.runtime.writable_layer_usage(&c.id) {
        metrics.push(plain("container_fs_usage_bytes", layer.bytes));
        metrics.push(plain("container_fs_inodes_total", layer.inodes));
    }
    cri::ContainerMetrics {
        container_id: c.id.clone(),
        metrics,
    }
}

pub(super) fn list_pod_sandbox_metrics(
    server: &CriServer,
) -> Result<cri::ListPodSandboxMetricsResponse, Status> {
    let mut pods = Vec::new();
    server.runtime.for_each_pod(NAMESPACE, |p| {
        if p.state == PodState::Ready {
            pods.push(p.id.clone());
        }
    });
    let mut running = Vec::new();
    server.runtime.for_each_container(NAMESPACE, |c| {
        if c.state == ContainerState::Running {
            running.push(c.clone());
        }
    });
    let mut pod_metrics = Vec::with_capacity(pods.len());
    for pod_id in pods {
        let samples: Vec<(ContainerRecord, ContainerStats)> = running
            .iter()
            .filter(|c| c.pod_id == pod_id)
            .filter_map(|c| {
                let stats = server.runtime.container_stats(NAMESPACE, &c.id).ok()?;
                Some((c.clone(), stats))
            })
            .collect();
        // The pod's interfaces, as any of its containers sees its network namespace.
        let mut metrics = Vec::new();
        if let Some((_, s)) = samples.first() {
            for (interface, counters) in s.networks.iter().filter(|(n, _)| n.as_str() != "lo") {
                for (family, index) in NETWORK_FIELDS {
                    metrics.push(metric(
                        family,
                        s.read_at,
                        &[pod_id.as_str(), "POD", "", interface.as_str()],
                        counters[index],
                    ));
                }
            }
        }
        pod_metrics.push(cri::PodSandboxMetrics {
            container_metrics: samples
                .iter()
                .map(|(c, s)| container_metrics(server, c, s))
                .collect(),
            pod_sandbox_id: pod_id,
            metrics,
        });
    }
    Ok(cri::ListPodSandboxMetricsResponse { pod_metrics })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_name_every_family_once_with_its_labels() {
        let descriptors = list_metric_descriptors().descriptors;
        assert_eq!(descriptors.len(), FAMILIES.len());
        let mut names: Vec<&str> = descriptors.iter().map(|d| d.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), FAMILIES.len());
        let cpu = descriptors
            .iter()
            .find(|d| d.name == "container_cpu_usage_seconds_total")
            .unwrap();
        assert_eq!(cpu.label_keys, ["id", "name", "image", "cpu"]);
        for (family, _) in NETWORK_FIELDS {
            assert!(names.contains(&family), "{family}");
            assert_eq!(metric_type_of(family), COUNTER);
        }
        assert_eq!(metric_type_of("container_memory_working_set_bytes"), GAUGE);
    }
}
