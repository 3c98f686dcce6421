//! Fans outbox events out as they commit: a connection of its own LISTENs
//! on the triggers' channel; each event becomes its deliveries and a
//! `deliver` job for each. Every process running the `deliver` queue
//! listens; the event row's lock lets one of them fan it out. On
//! (re)connecting it first fans out what waited, and the sweeper catches
//! anything a dropped connection missed.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use mage_domain::queue::DeliverJob;
use mage_domain::webhooks::{events, objects};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::ctx::Ctx;

const RECONNECT_AFTER: Duration = Duration::from_secs(1);
/// Events fanned out per catch-up pass.
const CATCH_UP_BATCH: i64 = 500;

pub(crate) async fn run(ctx: Arc<Ctx>, stop: CancellationToken) {
    loop {
        let listening = async {
            let mut conn = events::listen(&ctx.core.pool).await?;
            catch_up(&ctx, chrono::Duration::zero()).await?;
            let mut stream = std::pin::pin!(conn.notifications_stream());
            while let Some(n) = stream.next().await {
                let n = n.map_err(mage_domain::Error::from)?;
                match n.payload.parse::<Uuid>() {
                    Ok(id) => {
                        let ctx = ctx.clone();
                        // Each on its own task: a slow fan-out never holds
                        // up the next notification.
                        tokio::spawn(async move {
                            if let Err(e) = fan_out(&ctx, id).await {
                                tracing::warn!(event_id = %id, error = %e, "could not fan out a webhook event; the sweeper will");
                            }
                        });
                    }
                    Err(_) => {
                        tracing::warn!(payload = %n.payload, "a webhook notification without an event id")
                    }
                }
            }
            Ok::<_, mage_domain::Error>(())
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            r = listening => {
                if let Err(e) = r {
                    tracing::warn!(error = %e, "webhook event listener lost its connection; reconnecting");
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(RECONNECT_AFTER) => {}
        }
    }
}

/// Fans out events written more than `grace` ago and still waiting.
pub(crate) async fn catch_up(ctx: &Ctx, grace: chrono::Duration) -> Result<usize, mage_domain::Error> {
    let ids = {
        let mut conn = ctx.core.pool.get().await?;
        events::unfanned(&mut conn, grace, CATCH_UP_BATCH).await?
    };
    for id in &ids {
        fan_out(ctx, *id).await?;
    }
    Ok(ids.len())
}

/// One event into its deliveries, each pushed to the `deliver` queue.
pub(crate) async fn fan_out(ctx: &Ctx, event_id: Uuid) -> Result<(), mage_domain::Error> {
    let storage = ctx.core.storage.clone();
    let base = ctx.webhooks.public_url.clone();
    let media = move |key: &str| storage.public_url(&base, key);
    let deliveries = {
        let mut conn = ctx.core.pool.get().await?;
        events::fan_out(&mut conn, event_id, |e| objects::payload(e, &media)).await?
    };
    for delivery_id in &deliveries {
        // A lost push is found by the sweeper (a PENDING delivery overdue).
        ctx.core.queues.push_deliver(&DeliverJob { delivery_id: *delivery_id }, Duration::ZERO).await?;
    }
    if !deliveries.is_empty() {
        tracing::debug!(%event_id, deliveries = deliveries.len(), "webhook event fanned out");
    }
    Ok(())
}
