//! The image service's metrics: pulls by result, bytes downloaded, pull and layer
//! unpack durations (registered by the engine's registry: src/metrics).

use prometheus::core::Collector;

use crate::metrics::fixed;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts};

/// Pull and unpack buckets (seconds): a cached layer takes milliseconds, a large image
/// minutes.
const BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

#[derive(Clone)]
pub(crate) struct ImageMetrics {
    /// By result: `success`, or the failure's error kind (`unauthenticated`,
    /// `not_found`, `unavailable`, `data_loss`, ...).
    pub(crate) pulls: IntCounterVec,
    pub(crate) pull_bytes: IntCounter,
    pub(crate) pull_seconds: Histogram,
    pub(crate) unpack_seconds: Histogram,
}

impl ImageMetrics {
    pub(crate) fn new() -> ImageMetrics {
        ImageMetrics {
            pulls: fixed(IntCounterVec::new(
                Opts::new(
                    "wharf_image_pulls_total",
                    "Image pulls (CRI and Docker API), by result: success or the failure's \
                     kind.",
                ),
                &["result"],
            )),
            pull_bytes: fixed(IntCounter::new(
                "wharf_image_pull_bytes_total",
                "Compressed layer bytes downloaded from registries.",
            )),
            pull_seconds: fixed(Histogram::with_opts(
                HistogramOpts::new(
                    "wharf_image_pull_duration_seconds",
                    "Time of a successful pull, resolving the reference to recording the \
                     image.",
                )
                .buckets(BUCKETS.to_vec()),
            )),
            unpack_seconds: fixed(Histogram::with_opts(
                HistogramOpts::new(
                    "wharf_image_layer_unpack_duration_seconds",
                    "Time to unpack one layer into its snapshot (while it downloads, for a \
                     layer fetched from a registry).",
                )
                .buckets(BUCKETS.to_vec()),
            )),
        }
    }

    pub(crate) fn collectors(&self) -> Vec<Box<dyn Collector>> {
        vec![
            Box::new(self.pulls.clone()),
            Box::new(self.pull_bytes.clone()),
            Box::new(self.pull_seconds.clone()),
            Box::new(self.unpack_seconds.clone()),
        ]
    }
}
