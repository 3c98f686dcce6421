//! Per-user limits on generations, counted in Redis so every `mage serve`
//! process shares them: how many were created in the last minute (a sliding
//! window, not a fixed one that lets twice the limit through at a minute's
//! edge) and how many are active at once.
//!
//! Both are sorted sets of *members*: `k:<idempotency key>` when the client
//! sent one, else `g:<generation id>`. A retried request with the same key
//! therefore takes one slot however often it arrives. The worker frees the
//! active slot when the generation ends ([`release_active`]); an entry older
//! than [`ACTIVE_TTL_SECONDS`] is dropped, so a slot lost to a crash heals.

use uuid::Uuid;

use crate::kv::Redis;
use crate::{Error, Result};

pub const ACTIVE_TTL_SECONDS: i64 = 6 * 3600;

#[derive(Debug, Clone, Copy)]
pub struct GenerationLimits {
    pub per_minute: u32,
    pub active: u32,
}

/// The member a generation occupies in both sets.
pub fn member(generation_id: Uuid, idempotency_key: Option<&str>) -> String {
    match idempotency_key {
        Some(k) => format!("k:{k}"),
        None => format!("g:{generation_id}"),
    }
}

// KEYS: minute set, active set. ARGV: now ms, member, per-minute limit,
// active limit, active ttl ms. Returns {0, 0} when admitted, else
// {1 = per minute | 2 = active, retry after in seconds}.
const RESERVE: &str = r#"
local now = tonumber(ARGV[1])
local member = ARGV[2]
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 60000)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[5]))
local in_minute = redis.call('ZSCORE', KEYS[1], member)
local in_active = redis.call('ZSCORE', KEYS[2], member)
if not in_minute and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {1, math.max(1, math.ceil((tonumber(oldest[2]) + 60000 - now) / 1000))}
end
if not in_active and redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[4]) then
  return {2, 5}
end
if not in_minute then redis.call('ZADD', KEYS[1], now, member) end
if not in_active then redis.call('ZADD', KEYS[2], now, member) end
redis.call('PEXPIRE', KEYS[1], 61000)
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[5]))
return {0, 0}
"#;

fn minute_key(redis: &Redis, user_id: Uuid) -> String {
    redis.key(&format!("limits:gen-minute:{user_id}"))
}

fn active_key(redis: &Redis, user_id: Uuid) -> String {
    redis.key(&format!("limits:gen-active:{user_id}"))
}

/// Takes a slot in both windows or fails with `RateLimited`.
pub async fn reserve(redis: &Redis, limits: GenerationLimits, user_id: Uuid, member: &str) -> Result<()> {
    let mut conn = redis.conn().await?;
    let now = chrono::Utc::now().timestamp_millis();
    static SCRIPT: std::sync::LazyLock<redis::Script> =
        std::sync::LazyLock::new(|| redis::Script::new(RESERVE));
    let (code, retry_after): (i64, i64) = SCRIPT
        .key(minute_key(redis, user_id))
        .key(active_key(redis, user_id))
        .arg(now)
        .arg(member)
        .arg(limits.per_minute)
        .arg(limits.active)
        .arg(ACTIVE_TTL_SECONDS * 1000)
        .invoke_async(&mut conn)
        .await?;
    match code {
        0 => Ok(()),
        1 => Err(Error::RateLimited {
            message: format!("at most {} generations per minute", limits.per_minute),
            retry_after_seconds: retry_after as u64,
        }),
        _ => Err(Error::RateLimited {
            message: format!("at most {} generations at once; wait for one to finish", limits.active),
            retry_after_seconds: retry_after as u64,
        }),
    }
}

/// Gives back both slots of a request that did not create a generation.
pub async fn undo(redis: &Redis, user_id: Uuid, member: &str) -> Result<()> {
    let mut conn = redis.conn().await?;
    let () = redis::pipe()
        .zrem(minute_key(redis, user_id), member)
        .ignore()
        .zrem(active_key(redis, user_id), member)
        .ignore()
        .query_async(&mut conn)
        .await?;
    Ok(())
}

/// Frees the active slot of a generation that reached a final state.
pub async fn release_active(redis: &Redis, user_id: Uuid, member: &str) -> Result<()> {
    let mut conn = redis.conn().await?;
    let _: i64 =
        redis::cmd("ZREM").arg(active_key(redis, user_id)).arg(member).query_async(&mut conn).await?;
    Ok(())
}

const CHECKOUT_WINDOW: &str = r"
local now = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 60000)
local n = redis.call('ZCARD', KEYS[1])
if n >= tonumber(ARGV[3]) then
    local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    return math.max(1, math.ceil((tonumber(oldest[2]) + 60000 - now) / 1000))
end
redis.call('ZADD', KEYS[1], now, ARGV[2])
redis.call('PEXPIRE', KEYS[1], 60000)
return 0
";

/// Takes one of the user's checkouts of the last minute (a sliding window
/// shared by every API instance), or fails with `RateLimited`.
pub async fn reserve_checkout(redis: &Redis, per_minute: u32, user_id: Uuid) -> Result<()> {
    let mut conn = redis.conn().await?;
    let retry_after: i64 = redis::Script::new(CHECKOUT_WINDOW)
        .key(redis.key(&format!("limits:checkouts:{user_id}")))
        .arg(chrono::Utc::now().timestamp_millis())
        .arg(Uuid::new_v4().to_string())
        .arg(per_minute)
        .invoke_async(&mut conn)
        .await?;
    if retry_after > 0 {
        return Err(Error::RateLimited {
            message: format!("at most {per_minute} checkouts per minute"),
            retry_after_seconds: retry_after as u64,
        });
    }
    Ok(())
}
