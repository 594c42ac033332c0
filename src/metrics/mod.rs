//! Prometheus metrics (issue 22): one `Registry` owned by the engine (never the
//! `prometheus` crate's global default), the text exposition on `[metrics] address`.
//!
//! Each core service creates its own metric handles (unregistered) where the work is
//! done: the store times its operations, the image service its pulls and unpacks, the
//! runtime its network attach/detach. [`Metrics::new`] registers them all with the
//! engine's registry, with the per-call metrics of both front ends ([`ApiMetrics`]),
//! the process collector (RSS, fds, threads, CPU) and a collector that reads pods,
//! containers, monitors and container event counts from the runtime and the event bus
//! at scrape time (cheaper than keeping gauges in step on every change).

mod api;
mod server;

use std::sync::Arc;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Encoder, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

pub use api::{ApiLayer, ApiMetrics};
pub use server::serve;

use crate::events::EventBus;
use crate::runtime::{ContainerState, PodState, Runtime};

/// A metric made from a fixed name, help and label set: `prometheus` refuses only
/// malformed ones, which would be a bug here, never input.
pub(crate) fn fixed<T>(result: Result<T, prometheus::Error>) -> T {
    match result {
        Ok(metric) => metric,
        Err(err) => unreachable!("a metric with a fixed definition was refused: {err}"),
    }
}

/// The engine's registry and the front ends' metrics.
pub struct Metrics {
    registry: Registry,
    /// Calls to the CRI and the Docker API.
    pub api: Arc<ApiMetrics>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Why a metric could not be registered (a duplicate name: a programming error).
#[derive(Debug, thiserror::Error)]
#[error("registering the Prometheus metrics: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

impl Metrics {
    /// Registers `collectors` (the core services'), the front ends' call metrics, the
    /// process collector and the runtime's scrape-time state.
    pub fn new(
        collectors: Vec<Box<dyn Collector>>,
        runtime: Arc<Runtime>,
        events: Arc<EventBus>,
    ) -> Result<Metrics, MetricsError> {
        let registry = Registry::new();
        for collector in collectors {
            registry.register(collector)?;
        }
        let api = Arc::new(ApiMetrics::new());
        for collector in api.collectors() {
            registry.register(collector)?;
        }
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        registry.register(Box::new(StateCollector::new(runtime, events)?))?;
        Ok(Metrics { registry, api })
    }

    /// The text exposition (format 0.0.4) of every metric.
    pub fn encode(&self) -> Result<Vec<u8>, prometheus::Error> {
        let mut out = Vec::with_capacity(16 * 1024);
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        Ok(out)
    }
}

/// Pods and containers by state, live monitors and container event counts, read at
/// scrape time.
struct StateCollector {
    runtime: Arc<Runtime>,
    events: Arc<EventBus>,
    pods: IntGaugeVec,
    containers: IntGaugeVec,
    monitors: IntGaugeVec,
    starts: IntCounterVec,
    exits: IntCounterVec,
    oom_kills: IntCounterVec,
    descs: Vec<Desc>,
}

impl StateCollector {
    fn new(runtime: Arc<Runtime>, events: Arc<EventBus>) -> Result<Self, prometheus::Error> {
        let pods = IntGaugeVec::new(
            Opts::new("wharf_pods", "Pod sandboxes by object namespace and state."),
            &["namespace", "state"],
        )?;
        let containers = IntGaugeVec::new(
            Opts::new(
                "wharf_containers",
                "Containers by object namespace and state.",
            ),
            &["namespace", "state"],
        )?;
        let monitors = IntGaugeVec::new(
            Opts::new(
                "wharf_monitor_processes",
                "Container monitor processes alive (one per created or running container).",
            ),
            &["namespace"],
        )?;
        let starts = IntCounterVec::new(
            Opts::new(
                "wharf_container_starts_total",
                "Container starts since wharfd started.",
            ),
            &["namespace"],
        )?;
        let exits = IntCounterVec::new(
            Opts::new(
                "wharf_container_exits_total",
                "Container exits seen since wharfd started.",
            ),
            &["namespace"],
        )?;
        let oom_kills = IntCounterVec::new(
            Opts::new(
                "wharf_container_oom_kills_total",
                "Containers killed by the out-of-memory killer since wharfd started.",
            ),
            &["namespace"],
        )?;
        let descs = [
            pods.desc(),
            containers.desc(),
            monitors.desc(),
            starts.desc(),
            exits.desc(),
            oom_kills.desc(),
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
        Ok(StateCollector {
            runtime,
            events,
            pods,
            containers,
            monitors,
            starts,
            exits,
            oom_kills,
            descs,
        })
    }
}

fn pod_state_name(state: PodState) -> &'static str {
    match state {
        PodState::Creating => "creating",
        PodState::Ready => "ready",
        PodState::NotReady => "not_ready",
    }
}

fn container_state_name(state: ContainerState) -> &'static str {
    match state {
        ContainerState::Creating => "creating",
        ContainerState::Created => "created",
        ContainerState::Running => "running",
        ContainerState::Exited => "exited",
        ContainerState::Unknown => "unknown",
    }
}

impl Collector for StateCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        // Fresh values each scrape: a namespace or state with nothing left disappears.
        self.pods.reset();
        self.containers.reset();
        self.monitors.reset();
        for pod in self.runtime.pods() {
            self.pods
                .with_label_values(&[pod.namespace.as_str(), pod_state_name(pod.state)])
                .inc();
        }
        self.runtime.for_each_container_everywhere(|c| {
            self.containers
                .with_label_values(&[c.namespace.as_str(), container_state_name(c.state)])
                .inc();
            if c.monitor.is_some()
                && matches!(c.state, ContainerState::Created | ContainerState::Running)
            {
                self.monitors
                    .with_label_values(&[c.namespace.as_str()])
                    .inc();
            }
        });
        for ((namespace, kind, action), count) in self.events.counts() {
            if kind != crate::events::EventKind::Container {
                continue;
            }
            let counter = match action.as_str() {
                "start" => &self.starts,
                "die" => &self.exits,
                "oom" => &self.oom_kills,
                _ => continue,
            };
            let counter = counter.with_label_values(&[namespace.as_str()]);
            // Counters only go up: the bus's count is the total.
            counter.inc_by(count.saturating_sub(counter.get()));
        }
        let mut families = Vec::new();
        for metric in [&self.pods, &self.containers, &self.monitors] {
            families.extend(metric.collect());
        }
        for metric in [&self.starts, &self.exits, &self.oom_kills] {
            families.extend(metric.collect());
        }
        families
    }
}
