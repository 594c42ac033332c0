//! The runtime's own metrics: pod network attach and detach (CNI ADD/DEL or the
//! built-in bridge), registered by the engine's registry (src/metrics).

use prometheus::core::Collector;

use crate::metrics::fixed;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts};

const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

pub(crate) struct RuntimeMetrics {
    /// By operation (`attach`, `detach`) and network (the CNI network's or bridge's name).
    network_seconds: HistogramVec,
    network_failures: IntCounterVec,
}

impl Default for RuntimeMetrics {
    fn default() -> Self {
        RuntimeMetrics {
            network_seconds: fixed(HistogramVec::new(
                HistogramOpts::new(
                    "wharf_network_operation_duration_seconds",
                    "Time to attach a pod to its network (CNI ADD or the built-in bridge) \
                     or to detach it (DEL), successful or not.",
                )
                .buckets(BUCKETS.to_vec()),
                &["operation", "network"],
            )),
            network_failures: fixed(IntCounterVec::new(
                Opts::new(
                    "wharf_network_operation_failures_total",
                    "Pod network attaches and detaches that failed.",
                ),
                &["operation", "network"],
            )),
        }
    }
}

impl RuntimeMetrics {
    pub(crate) fn collectors(&self) -> Vec<Box<dyn Collector>> {
        vec![
            Box::new(self.network_seconds.clone()),
            Box::new(self.network_failures.clone()),
        ]
    }

    /// Records one network operation that started at `started`.
    pub(crate) fn network_operation(
        &self,
        operation: &str,
        network: &str,
        started: std::time::Instant,
        ok: bool,
    ) {
        self.network_seconds
            .with_label_values(&[operation, network])
            .observe(started.elapsed().as_secs_f64());
        if !ok {
            self.network_failures
                .with_label_values(&[operation, network])
                .inc();
        }
    }
}
