//! `GET /metrics` in the Prometheus text format, through the `metrics`
//! facade (one recorder per process, installed on first use).

use std::sync::OnceLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

fn handle() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| match PrometheusBuilder::new().install_recorder() {
            Ok(h) => {
                // Shown from the first scrape, not from the first change.
                subscriptions(0, 0);
                websockets(0);
                Some(h)
            }
            Err(e) => {
                // Another recorder (an embedding program's) already owns the
                // facade: metrics go there, and /metrics shows nothing.
                tracing::warn!(error = %e, "could not install the Prometheus recorder");
                None
            }
        })
        .as_ref()
}

/// Installs the recorder, so gauges set before the first scrape are kept.
pub fn init() {
    let _ = handle();
}

pub async fn render(axum::extract::State(state): axum::extract::State<crate::AppState>) -> Response {
    backends(&state.redis).await;
    let body = handle().map(PrometheusHandle::render).unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
}

/// Live subscriptions of this process and the Redis channels they need.
pub fn subscriptions(subscriptions: usize, channels: usize) {
    metrics::gauge!("mage_subscriptions").set(subscriptions as f64);
    metrics::gauge!("mage_pubsub_channels").set(channels as f64);
}

/// Open GraphQL WebSocket connections of this process.
pub fn websockets(open: usize) {
    metrics::gauge!("mage_websocket_connections").set(open as f64);
}

/// A subscriber fell too far behind and its subscription was ended.
pub fn lagged() {
    metrics::counter!("mage_subscriptions_lagged_total").increment(1);
}

/// Render backends' health as the workers last reported it to Redis, read
/// at scrape time (the workers run in other processes).
async fn backends(redis: &mage_domain::kv::Redis) {
    match mage_domain::workers::backends(redis).await {
        Ok(all) => {
            for b in all {
                let labels = [("backend", b.location.clone()), ("kind", b.kind.clone())];
                metrics::gauge!("mage_render_backend_healthy", &labels).set(if b.healthy {
                    1.0
                } else {
                    0.0
                });
                if let Some(free) = b.vram_free_bytes {
                    metrics::gauge!("mage_render_backend_vram_free_bytes", &labels).set(free as f64);
                }
                if let Some(total) = b.vram_total_bytes {
                    metrics::gauge!("mage_render_backend_vram_total_bytes", &labels).set(total as f64);
                }
            }
        }
        Err(e) => tracing::debug!(error = %e, "could not read render backend health"),
    }
}
