//! The `settle` queue: applies one stored Stripe event (see
//! `mage_domain::payments::settle`). Idempotent by the event id: the event
//! row is locked and marked processed in the transaction that applies it,
//! so a duplicate job, a retry or a second worker finds it done.

use std::sync::Arc;

use apalis::prelude::{AbortError, BoxDynError};
use mage_domain::payments::settle::{self, Outcome};
use mage_domain::queue::SettleJob;
use tracing::Instrument;

use crate::ctx::Ctx;

/// Infrastructure failures (database, pool) are retried this many times by
/// apalis-redis, then the job is dead (listed for admins) and the event
/// stays unsettled for the sweeper and for Stripe's own redelivery.
pub const ATTEMPTS: usize = 10;

pub(crate) async fn run(ctx: Arc<Ctx>, job: SettleJob, attempt: usize) -> Result<(), BoxDynError> {
    let span = tracing::info_span!("settle", event_id = %job.event_id);
    async move {
        let mut conn = ctx.core.pool.get().await?;
        match settle::settle(&mut conn, &job.event_id).await {
            Ok(settle::Settled { outcome: Outcome::AlreadySettled, .. }) => {
                tracing::debug!("already settled");
                Ok(())
            }
            Ok(settle::Settled { credited, .. }) => {
                // A purchase, refund or renewal moved the balance: open
                // apps show it at once (a lost publish is only a late
                // refresh: the ledger is already right).
                if let Some(user_id) = credited {
                    mage_domain::events::publish_credits_changed_logged(&ctx.core.redis, user_id).await;
                }
                Ok(())
            }
            Err(mage_domain::Error::NotFound("stripe event")) => {
                tracing::warn!("no such stored event; nothing to settle");
                Ok(())
            }
            Err(e) => {
                let _ =
                    mage_domain::payments::intake::record_failure(&mut conn, &job.event_id, &e.to_string())
                        .await;
                if attempt >= ATTEMPTS {
                    tracing::error!(attempt, error = %e, "settlement failed for the last time");
                    return Err(AbortError::new(format!("attempt {attempt}: {e}")).into());
                }
                if matches!(e, mage_domain::Error::NotYet(_)) {
                    tracing::info!(attempt, reason = %e, "settlement waits for another event; it will be retried");
                } else {
                    tracing::warn!(attempt, error = %e, "settlement failed; it will be retried");
                }
                Err(e.into())
            }
        }
    }
    .instrument(span)
    .await
}
