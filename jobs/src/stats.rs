//! The `stats` cron: at every tick of `MAGE_STATS_CRON` the previous day
//! (in `MAGE_STATS_TZ`) is computed into `daily_stats`. apalis-cron fires in
//! every process that runs it, so one replica per tick takes a Redis lock
//! named after the tick; the others skip it. A failed computation gives the
//! lock back so the retry (or another replica) can take it.

use std::sync::Arc;
use std::time::Duration;

use apalis::prelude::BoxDynError;
use chrono::{DateTime, Utc};

use crate::ctx::Ctx;

/// A tick's lock outlives any retry of it.
const TICK_LOCK: Duration = Duration::from_secs(6 * 3600);

/// Takes the lock of one cron tick; false when another replica has it.
async fn claim_tick(ctx: &Ctx, lock: &str) -> Result<bool, mage_domain::Error> {
    ctx.core.redis.claim(lock, &ctx.worker_name, TICK_LOCK).await
}

pub(crate) async fn tick(ctx: Arc<Ctx>, at: u64) -> Result<(), BoxDynError> {
    let lock = ctx.core.redis.key(&format!("stats:tick:{at}"));
    if !claim_tick(&ctx, &lock).await? {
        tracing::debug!(tick = at, "stats tick taken by another worker");
        return Ok(());
    }
    let mut r = ctx.core.redis.conn().await?;
    let at_time = DateTime::<Utc>::from_timestamp(at as i64, 0).unwrap_or_else(Utc::now);
    let tz = &ctx.settings.stats_tz;
    let result = async {
        let mut conn = ctx.core.pool.get().await?;
        let day = mage_domain::stats::previous_day(&mut conn, at_time, tz).await?;
        let s = mage_domain::stats::recompute(&mut conn, &ctx.core.redis, day, tz).await?;
        Ok::<_, mage_domain::Error>(s)
    }
    .await;
    match result {
        Ok(s) => {
            // Which replica computed which tick, for operators (and the
            // test that two replicas compute each tick once).
            let _: () = redis::pipe()
                .cmd("HSET")
                .arg(ctx.core.redis.key("stats:ticks"))
                .arg(at)
                .arg(&ctx.worker_name)
                .ignore()
                .cmd("INCR")
                .arg(ctx.core.redis.key("stats:computations"))
                .ignore()
                .query_async(&mut r)
                .await?;
            tracing::info!(tick = at, day = %s.day, time_zone = %tz, new_users = s.new_users,
                orders_paid = s.orders_paid, generations_created = s.generations_created, "daily stats computed");
            Ok(())
        }
        Err(e) => {
            let _: i64 = redis::cmd("DEL").arg(&lock).query_async(&mut r).await.unwrap_or(0);
            tracing::warn!(tick = at, error = %e, "daily stats failed; the lock is given back");
            Err(e.into())
        }
    }
}

/// Every hour: grants past their `expires_at` lose what is left of them
/// (never what open holds reserve), each once; their owners' clients hear
/// `creditsChanged`.
pub(crate) async fn expiry_tick(ctx: Arc<Ctx>, at: u64) -> Result<(), BoxDynError> {
    if !claim_tick(&ctx, &ctx.core.redis.key(&format!("expiry:tick:{at}"))).await? {
        return Ok(());
    }
    let n = expire_once(&ctx.core.pool, &ctx.core.redis).await?;
    tracing::info!(tick = at, expired_grants = n, "credit expiry done");
    Ok(())
}

/// One pass of credit expiry (all grants due now, in batches).
pub async fn expire_once(
    pool: &mage_domain::db::DbPool,
    redis: &mage_domain::kv::Redis,
) -> Result<usize, mage_domain::Error> {
    let mut conn = pool.get().await?;
    let mut total = 0;
    loop {
        let entries = mage_domain::credits::expire_due(&mut conn, Utc::now(), 500).await?;
        for e in &entries {
            tracing::info!(user_id = %e.user_id, grant_id = ?e.grant_id, credits = -e.amount, "credits expired");
            mage_domain::events::publish_credits_changed_logged(redis, e.user_id).await;
        }
        total += entries.len();
        if entries.len() < 500 {
            return Ok(total);
        }
    }
}
