//! The `deliver` queue: one attempt of one webhook delivery per job.
//!
//! A job takes one of its endpoint's permits first (a slow endpoint holds
//! at most `MAGE_WEBHOOK_ENDPOINT_CONCURRENCY` attempts; a job finding
//! them taken comes back shortly without waiting in a slot), then claims
//! the delivery's row (a duplicate job finds it taken, sent or not due),
//! sends it signed, and records the attempt and what follows in one
//! transaction. A retry is a new task pushed for when it is due.

use std::sync::Arc;
use std::time::{Duration, Instant};

use apalis::prelude::{AbortError, BoxDynError};
use chrono::Utc;
use mage_domain::queue::{DeliverJob, MailJob};
use mage_domain::standard_webhooks::sign;
use mage_domain::webhooks::deliveries::{self, Attempted, Claimed, Next, NotClaimed};
use mage_domain::webhooks::permits;
use tracing::Instrument;
use uuid::Uuid;

use super::client;
use crate::ctx::Ctx;

/// A job whose endpoint is at its bound comes back after this.
const BUSY_RETRY: Duration = Duration::from_millis(250);
/// Failures of our own (database, Redis) before a job is dead; the
/// delivery itself stays PENDING for the sweeper.
const JOB_ATTEMPTS: usize = 10;

pub(crate) async fn run(ctx: Arc<Ctx>, job: DeliverJob, attempt: usize) -> Result<(), BoxDynError> {
    let span = tracing::info_span!("deliver", delivery_id = %job.delivery_id);
    async move {
        match attempt_once(&ctx, job.delivery_id).await {
            Ok(()) => Ok(()),
            Err(e) if attempt + 1 >= JOB_ATTEMPTS => {
                tracing::error!(attempt, error = %e, "deliver job failed for the last time");
                Err(AbortError::new(format!("attempt {attempt}: {e}")).into())
            }
            Err(e) => {
                tracing::warn!(attempt, error = %e, "deliver job failed; it will be retried");
                Err(e.into())
            }
        }
    }
    .instrument(span)
    .await
}

async fn attempt_once(ctx: &Ctx, id: Uuid) -> Result<(), mage_domain::Error> {
    let hooks = &ctx.webhooks;
    let lease = hooks.settings.timeout + Duration::from_secs(5);
    let endpoint_id = {
        let mut conn = ctx.core.pool.get().await?;
        match deliveries::endpoint_of(&mut conn, id).await? {
            Some(e) => e,
            None => return Ok(()),
        }
    };
    let redis = &ctx.core.redis;
    if !permits::acquire(redis, endpoint_id, id, hooks.settings.per_endpoint, lease).await? {
        tracing::debug!(%endpoint_id, "endpoint at its bound; the delivery waits its turn");
        return ctx.core.queues.push_deliver(&DeliverJob { delivery_id: id }, BUSY_RETRY).await;
    }
    let result = claim_and_send(ctx, id, lease).await;
    if let Err(e) = permits::release(redis, endpoint_id, id).await {
        // The permit lapses with its lease.
        tracing::warn!(%endpoint_id, error = %e, "could not release an endpoint permit");
    }
    result
}

async fn claim_and_send(ctx: &Ctx, id: Uuid, lease: Duration) -> Result<(), mage_domain::Error> {
    let claimed = {
        let mut conn = ctx.core.pool.get().await?;
        deliveries::claim(&mut conn, id, lease).await?
    };
    let claimed = match claimed {
        Ok(c) => c,
        Err(NotClaimed::NotDue(at)) => {
            // An early duplicate: the delivery's own job comes at `at`;
            // this one makes sure something does.
            let wait = (at - Utc::now()).to_std().unwrap_or_default();
            return ctx.core.queues.push_deliver(&DeliverJob { delivery_id: id }, wait).await;
        }
        Err(NotClaimed::Busy(_) | NotClaimed::Over) => return Ok(()),
    };
    let span = tracing::info_span!(
        "attempt",
        event_id = %claimed.event_id,
        endpoint_id = %claimed.endpoint.id,
        attempt = claimed.delivery.attempts,
    );
    async move {
        let attempted = send(ctx, &claimed).await;
        let next = {
            let mut conn = ctx.core.pool.get().await?;
            let s = &ctx.webhooks.settings;
            deliveries::record(&mut conn, &claimed, &attempted, &s.schedule, s.disable_after).await?
        };
        let outcome = match &next {
            Next::Delivered => "delivered",
            Next::RetryAt(_) => "retry",
            Next::GaveUp => "failed",
            Next::Disabled { .. } => "disabled",
        };
        mage_domain::metrics::webhook_attempted(&claimed.event_type, outcome, attempted.duration);
        match next {
            Next::Delivered => {
                tracing::info!(status = ?attempted.status_code, ms = attempted.duration.as_millis() as u64, "webhook delivered")
            }
            Next::RetryAt(at) => {
                let wait = (at - Utc::now()).to_std().unwrap_or_default();
                tracing::info!(status = ?attempted.status_code, error = ?attempted.error, retry_in_seconds = wait.as_secs(), "webhook attempt failed; retrying later");
                ctx.core.queues.push_deliver(&DeliverJob { delivery_id: claimed.delivery.id }, wait).await?;
            }
            Next::GaveUp => {
                tracing::warn!(status = ?attempted.status_code, error = ?attempted.error, "webhook delivery failed: no attempt left")
            }
            Next::Disabled { mail_id } => {
                tracing::warn!("webhook endpoint disabled after failing every delivery");
                if let Some(mail_id) = mail_id {
                    // The outbox has the mail; the sweeper sends it if this push is lost.
                    if let Err(e) = ctx.core.queues.push_mail(&MailJob::Send { mail_id }).await {
                        tracing::warn!(error = %e, "could not enqueue the endpoint-disabled mail");
                    }
                }
            }
        }
        Ok(())
    }
    .instrument(span)
    .await
}

/// One signed POST; never fails: what went wrong is the attempt's error.
async fn send(ctx: &Ctx, c: &Claimed) -> Attempted {
    let started_at = Utc::now();
    let started = Instant::now();
    let id = c.event_id.to_string();
    let timestamp = started_at.timestamp();
    let mut signatures = Vec::new();
    for secret in c.endpoint.signing_secrets() {
        match sign(secret, &id, timestamp, c.body.as_bytes()) {
            Ok(s) => signatures.push(s),
            Err(e) => tracing::error!(error = %e, "an endpoint secret cannot sign"),
        }
    }
    let headers = [
        ("content-type", "application/json".to_owned()),
        ("webhook-id", id),
        ("webhook-timestamp", timestamp.to_string()),
        ("webhook-signature", signatures.join(" ")),
    ];
    let hooks = &ctx.webhooks;
    match client::post(&hooks.client, &hooks.guard, &c.endpoint.url, &headers, c.body.clone()).await {
        Ok(answer) => Attempted {
            started_at,
            duration: answer.duration,
            status_code: Some(answer.status),
            error: (!answer.is_success()).then(|| format!("the endpoint answered HTTP {}", answer.status)),
            response_body: Some(answer.body),
        },
        Err(e) => Attempted {
            started_at,
            duration: started.elapsed(),
            status_code: None,
            error: Some(e.to_string()),
            response_body: None,
        },
    }
}
