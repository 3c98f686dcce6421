//! Process metrics through the `metrics` facade, rendered in the
//! Prometheus text format by `/metrics` of `serve` (and of `work` with
//! `MAGE_METRICS_ADDR`). One recorder per process, installed on first use;
//! the names are listed in `docs/operations.md`.
//!
//! Counters are per process (Prometheus sums them across replicas);
//! queue sizes and backend health live in Redis and are read at scrape
//! time, so any process shows the whole deployment's.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::kv::Redis;
use crate::queue::{Queue, Queues};

/// Histogram buckets (seconds) for every `*_seconds` histogram: requests in
/// milliseconds up to jobs of an hour.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
    3600.0,
];

fn handle() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = match PrometheusBuilder::new().set_buckets(BUCKETS) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "bad histogram buckets; metrics are off");
                    return None;
                }
            };
            match builder.install_recorder() {
                Ok(h) => Some(h),
                Err(e) => {
                    // Another recorder (an embedding program's) already owns
                    // the facade: metrics go there, and /metrics shows nothing.
                    tracing::warn!(error = %e, "could not install the Prometheus recorder");
                    None
                }
            }
        })
        .as_ref()
}

/// Installs the recorder, so what is counted before the first scrape is
/// kept.
pub fn init() {
    let _ = handle();
}

/// The scrape: queue sizes and backend health read from Redis now, then
/// everything this process counted.
pub async fn render(redis: &Redis, queues: &Queues) -> String {
    let Some(handle) = handle() else { return String::new() };
    queue_sizes(queues).await;
    backends(redis).await;
    handle.run_upkeep();
    handle.render()
}

/// One ledger entry written. Holds and releases move held credits, the
/// rest the balance; either way the credits it concerns are counted.
/// Counted when written: a transaction rolled back afterwards (rare: an
/// error) still counts, so the books are `dailyStats`, not this.
pub(crate) fn credits_moved(kind: &'static str, amount: i64, held_delta: i64) {
    let credits = amount.unsigned_abs().max(held_delta.unsigned_abs());
    metrics::counter!("mage_credits_moved_total", "kind" => kind).increment(credits);
    metrics::counter!("mage_credit_entries_total", "kind" => kind).increment(1);
}

/// A generation reached a final state.
pub(crate) fn generation_finished(model: &str, status: &str) {
    metrics::counter!("mage_generations_finished_total", "model" => model.to_owned(), "status" => status.to_owned())
        .increment(1);
}

/// A generation was created (its credits held, its job enqueued).
pub(crate) fn generation_created(model: &str) {
    metrics::counter!("mage_generations_created_total", "model" => model.to_owned()).increment(1);
}

/// How one run of a job ended, as its queue sees it: `ok`, `retry` (the
/// queue runs it again), `dead` (out of attempts). Failed render attempts,
/// which Mage retries itself through a new job, also count in
/// `mage_job_attempts_failed_total`.
pub fn job_finished(queue: &str, outcome: &'static str, took: Duration) {
    metrics::counter!("mage_jobs_total", "queue" => queue.to_owned(), "outcome" => outcome).increment(1);
    metrics::histogram!("mage_job_duration_seconds", "queue" => queue.to_owned(), "outcome" => outcome)
        .record(took.as_secs_f64());
}

/// One failed attempt of a job (it will be retried, or it is dead).
pub fn job_attempt_failed(queue: &str) {
    metrics::counter!("mage_job_attempts_failed_total", "queue" => queue.to_owned()).increment(1);
}

/// A Stripe webhook delivery: `accepted`, `duplicate`, `bad_signature`,
/// `bad_request`, `error`. The type is `unknown` until the signature holds,
/// so unsigned traffic cannot mint label values.
pub fn webhook_received(event_type: &str, outcome: &'static str) {
    metrics::counter!("mage_stripe_webhooks_total", "type" => label(event_type), "outcome" => outcome)
        .increment(1);
}

/// A stored Stripe event settled: `processed`, `ignored`, `failed`,
/// `waiting` (depends on an event not settled yet), `error` (retried).
pub fn event_settled(event_type: &str, outcome: &'static str) {
    metrics::counter!("mage_stripe_events_settled_total", "type" => label(event_type), "outcome" => outcome)
        .increment(1);
}

/// Stripe event types are short dotted names; anything else is folded.
fn label(event_type: &str) -> String {
    if event_type.len() <= 64 && event_type.bytes().all(|b| b.is_ascii_lowercase() || b == b'.' || b == b'_')
    {
        event_type.to_owned()
    } else {
        "other".to_owned()
    }
}

async fn queue_sizes(queues: &Queues) {
    for q in Queue::STORED {
        match queues.counts(q).await {
            Ok(c) => {
                let l = [("queue", q.name().to_owned())];
                metrics::gauge!("mage_queue_waiting", &l).set(c.waiting as f64);
                metrics::gauge!("mage_queue_running", &l).set(c.running as f64);
                metrics::gauge!("mage_queue_failed_24h", &l).set(c.failed as f64);
                metrics::gauge!("mage_queue_dead", &l).set(c.dead as f64);
            }
            Err(e) => tracing::debug!(queue = q.name(), error = %e, "could not read the queue's counts"),
        }
    }
}

/// Render backends' health as the workers last reported it to Redis (the
/// workers run in other processes).
async fn backends(redis: &Redis) {
    match crate::workers::backends(redis).await {
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

/// One attempt to deliver a webhook: `delivered`, `retry`, `failed`
/// (no attempt left), `disabled` (its endpoint too), timed from the
/// request to the end of the answer.
pub fn webhook_attempted(event_type: &str, outcome: &'static str, took: Duration) {
    metrics::counter!("mage_webhook_attempts_total", "type" => label(event_type), "outcome" => outcome)
        .increment(1);
    metrics::histogram!("mage_webhook_attempt_seconds", "outcome" => outcome).record(took.as_secs_f64());
}
