//! Pub/sub on Redis: every change of a generation is published on its own
//! channel and on its owner's, so any `mage serve` instance can push it to
//! subscribers. Messages are the JSON of the generation row: a subscriber
//! never has to read PostgreSQL to show a change.

use uuid::Uuid;

use crate::Result;
use crate::kv::Redis;
use crate::rows::{Asset, Generation};

pub fn generation_channel(redis: &Redis, id: Uuid) -> String {
    redis.key(&format!("events:generation:{id}"))
}

pub fn user_generations_channel(redis: &Redis, user_id: Uuid) -> String {
    redis.key(&format!("events:user:{user_id}:generations"))
}

/// "This user's credits changed": sent after every committed ledger entry.
/// The message carries no figures; each API instance reads the account once
/// for all its subscribers of that user, so they always see a committed,
/// current state, whatever order messages arrive in.
pub fn credits_channel(redis: &Redis, user_id: Uuid) -> String {
    redis.key(&format!("events:user:{user_id}:credits"))
}

/// One message per dequeue from the render queue: subscribers of QUEUED
/// generations recompute their positions from it.
pub fn queue_advanced_channel(redis: &Redis) -> String {
    redis.key("events:queue:render:advanced")
}

/// Cancellation requests for running generations; every worker process
/// listens and stops the one it runs. Cancels are rare, so one channel for
/// all of them costs nothing.
pub fn cancel_channel(redis: &Redis) -> String {
    redis.key("control:cancel")
}

/// `left_queue`: this change took the generation out of the QUEUED state,
/// which moves every generation behind it one place up.
pub async fn publish_generation(redis: &Redis, g: &Generation, left_queue: bool) -> Result<()> {
    let mut pipe = redis::pipe();
    add_generation(&mut pipe, redis, g, left_queue)?;
    let () = pipe.query_async(&mut redis.conn().await?).await?;
    Ok(())
}

fn add_generation(pipe: &mut redis::Pipeline, redis: &Redis, g: &Generation, left_queue: bool) -> Result<()> {
    let payload =
        serde_json::to_string(g).map_err(|e| crate::Error::Internal(format!("generation event: {e}")))?;
    pipe.publish(generation_channel(redis, g.id), &payload).ignore();
    pipe.publish(user_generations_channel(redis, g.user_id), &payload).ignore();
    if left_queue {
        pipe.publish(queue_advanced_channel(redis), g.id.to_string()).ignore();
    }
    Ok(())
}

/// Publishing is best effort: PostgreSQL already holds the change, and a
/// subscriber that misses one sees the next. A failure is logged, never
/// allowed to fail the transition that caused it.
pub async fn publish_generation_logged(redis: &Redis, g: &Generation, left_queue: bool) {
    if let Err(e) = publish_generation(redis, g, left_queue).await {
        tracing::warn!(generation_id = %g.id, error = %e, "could not publish a generation change");
    }
}

/// A new generation and its hold: the generation's change and its owner's
/// credits change in one round trip. Best effort, like
/// [`publish_generation_logged`].
pub async fn publish_created_logged(redis: &Redis, g: &Generation) {
    let sent = async {
        let mut pipe = redis::pipe();
        add_generation(&mut pipe, redis, g, false)?;
        pipe.publish(credits_channel(redis, g.user_id), g.user_id.to_string()).ignore();
        let () = pipe.query_async(&mut redis.conn().await?).await?;
        Ok::<_, crate::Error>(())
    };
    if let Err(e) = sent.await {
        tracing::warn!(generation_id = %g.id, error = %e, "could not publish a new generation");
    }
}

/// One PUBLISH of `payload` on `channel`.
async fn publish(redis: &Redis, channel: String, payload: String) -> Result<()> {
    let mut conn = redis.conn().await?;
    let _: i64 = redis::cmd("PUBLISH").arg(channel).arg(payload).query_async(&mut conn).await?;
    Ok(())
}

pub async fn publish_credits_changed(redis: &Redis, user_id: Uuid) -> Result<()> {
    publish(redis, credits_channel(redis, user_id), user_id.to_string()).await
}

/// Best effort, like [`publish_generation_logged`]: the ledger already holds
/// the change.
pub async fn publish_credits_changed_logged(redis: &Redis, user_id: Uuid) {
    if let Err(e) = publish_credits_changed(redis, user_id).await {
        tracing::warn!(%user_id, error = %e, "could not publish a credits change");
    }
}

/// The render queue moved without a generation starting (one was
/// cancelled or failed while QUEUED).
pub async fn publish_queue_advanced_logged(redis: &Redis) {
    if let Err(e) = publish(redis, queue_advanced_channel(redis), String::new()).await {
        tracing::warn!(error = %e, "could not publish a queue move");
    }
}

pub async fn publish_cancel(redis: &Redis, id: Uuid) -> Result<()> {
    publish(redis, cancel_channel(redis), id.to_string()).await
}

/// Every change of an asset's state, as the JSON of its row.
pub fn asset_channel(redis: &Redis, id: Uuid) -> String {
    format!("{}{id}", asset_channel_prefix(redis))
}

/// What every asset channel starts with: how a subscriber tells them apart.
pub fn asset_channel_prefix(redis: &Redis) -> String {
    redis.key("events:asset:")
}

pub async fn publish_asset(redis: &Redis, asset: &Asset) -> Result<()> {
    let payload =
        serde_json::to_string(asset).map_err(|e| crate::Error::Internal(format!("asset event: {e}")))?;
    let _: i64 = redis::cmd("PUBLISH")
        .arg(asset_channel(redis, asset.id))
        .arg(payload)
        .query_async(&mut redis.conn().await?)
        .await?;
    Ok(())
}

/// A lost message only delays a subscriber until it reads the asset again;
/// the change itself is committed.
pub async fn publish_asset_logged(redis: &Redis, asset: &Asset) {
    if let Err(e) = publish_asset(redis, asset).await {
        tracing::warn!(asset_id = %asset.id, error = %e, "could not publish an asset change");
    }
}
