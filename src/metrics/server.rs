//! The `/metrics` listener: Prometheus' text exposition over plain HTTP (TCP).

use std::sync::Arc;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::Metrics;

/// The content type of the text exposition format 0.0.4 (what promtool and Prometheus
/// read; not OpenMetrics).
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

async fn metrics(axum::extract::State(metrics): axum::extract::State<Arc<Metrics>>) -> Response {
    // Gathering reads /proc and the runtime's tables: off the async threads.
    let encoded = tokio::task::spawn_blocking(move || metrics.encode()).await;
    match encoded {
        Ok(Ok(body)) => ([(header::CONTENT_TYPE, TEXT_FORMAT)], body).into_response(),
        Ok(Err(err)) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding the metrics: {err}\n"),
        )
            .into_response(),
        Err(err) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the metrics task failed: {err}\n"),
        )
            .into_response(),
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(self::metrics))
        .with_state(metrics);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
