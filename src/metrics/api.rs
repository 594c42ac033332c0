//! Per-call metrics of the two front ends: a count by API, method and result code and a
//! latency histogram by API and method. The CRI's calls are counted by a tower layer
//! on the gRPC server ([`ApiLayer`]); the Docker API's by a middleware that knows the
//! matched route (src/docker/mod.rs), so IDs and names never become label values.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::http::{Request, Response};
use prometheus::core::Collector;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts};

/// Latency buckets (seconds): a List call takes tens of microseconds, a pull minutes.
const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0, 120.0,
];

pub struct ApiMetrics {
    requests: IntCounterVec,
    duration: HistogramVec,
}

impl Default for ApiMetrics {
    fn default() -> Self {
        ApiMetrics::new()
    }
}

impl ApiMetrics {
    pub fn new() -> ApiMetrics {
        // Fixed names and label sets: creating them cannot fail.
        let requests = super::fixed(IntCounterVec::new(
            Opts::new(
                "wharf_api_requests_total",
                "Calls handled, by API (cri, docker), method (the RPC, or the HTTP method \
                 and route) and code (the gRPC status code name, or the HTTP status).",
            ),
            &["api", "method", "code"],
        ));
        let duration = super::fixed(HistogramVec::new(
            HistogramOpts::new(
                "wharf_api_request_duration_seconds",
                "Time to answer a call (to the response headers for streams), by API and \
                 method.",
            )
            .buckets(BUCKETS.to_vec()),
            &["api", "method"],
        ));
        ApiMetrics { requests, duration }
    }

    pub(super) fn collectors(&self) -> Vec<Box<dyn Collector>> {
        vec![
            Box::new(self.requests.clone()),
            Box::new(self.duration.clone()),
        ]
    }

    /// Records one call.
    pub fn observe(&self, api: &str, method: &str, code: &str, started: Instant) {
        self.requests.with_label_values(&[api, method, code]).inc();
        self.duration
            .with_label_values(&[api, method])
            .observe(started.elapsed().as_secs_f64());
    }
}

/// gRPC status code names as Prometheus' grpc exporters label them.
fn grpc_code_name(code: &str) -> &'static str {
    match code {
        "0" => "OK",
        "1" => "Canceled",
        "2" => "Unknown",
        "3" => "InvalidArgument",
        "4" => "DeadlineExceeded",
        "5" => "NotFound",
        "6" => "AlreadyExists",
        "7" => "PermissionDenied",
        "8" => "ResourceExhausted",
        "9" => "FailedPrecondition",
        "10" => "Aborted",
        "11" => "OutOfRange",
        "12" => "Unimplemented",
        "13" => "Internal",
        "14" => "Unavailable",
        "15" => "DataLoss",
        "16" => "Unauthenticated",
        _ => "Unknown",
    }
}

/// Counts the CRI's calls on the gRPC server.
#[derive(Clone)]
pub struct ApiLayer {
    metrics: Arc<ApiMetrics>,
}

impl ApiLayer {
    pub fn cri(metrics: Arc<ApiMetrics>) -> ApiLayer {
        ApiLayer { metrics }
    }
}

impl<S> tower::Layer<S> for ApiLayer {
    type Service = CountCalls<S>;

    fn layer(&self, inner: S) -> CountCalls<S> {
        CountCalls {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct CountCalls<S> {
    inner: S,
    metrics: Arc<ApiMetrics>,
}

impl<S, B, R> tower::Service<Request<B>> for CountCalls<S>
where
    S: tower::Service<Request<B>, Response = Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // `/runtime.v1.RuntimeService/RunPodSandbox` → `RunPodSandbox`: a fixed set
        // of names (an unknown one is counted as what the client sent, bounded).
        let path = request.uri().path();
        let method = path
            .rsplit('/')
            .next()
            .filter(|m| !m.is_empty() && m.len() <= 64)
            .unwrap_or("unknown")
            .to_string();
        let started = Instant::now();
        let metrics = self.metrics.clone();
        let call = self.inner.call(request);
        Box::pin(async move {
            let response = call.await;
            // A unary call's error comes as trailers-only, with grpc-status in the
            // headers; success (and a stream's end) puts it in the trailers: OK here.
            let code = match &response {
                Ok(response) => response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .map_or("OK", grpc_code_name),
                Err(_) => "Unavailable",
            };
            metrics.observe("cri", &method, code, started);
            response
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_counted_by_method_and_code() {
        let metrics = ApiMetrics::new();
        let started = Instant::now();
        metrics.observe("cri", "Version", "OK", started);
        metrics.observe("cri", "Version", "OK", started);
        metrics.observe("cri", "RunPodSandbox", "InvalidArgument", started);
        assert_eq!(
            metrics
                .requests
                .with_label_values(&["cri", "Version", "OK"])
                .get(),
            2
        );
        assert_eq!(
            metrics
                .duration
                .with_label_values(&["cri", "Version"])
                .get_sample_count(),
            2
        );
        assert_eq!(grpc_code_name("3"), "InvalidArgument");
        assert_eq!(grpc_code_name("99"), "Unknown");
    }
}
