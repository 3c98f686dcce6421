//! Which worker processes are alive, and how many jobs of each queue they
//! can run at once: the ETA of a queued generation depends on it. Each
//! worker process refreshes its entry every few seconds; an entry not
//! refreshed for [`LIVE_FOR`] is not counted.

use std::time::Duration;

use crate::Result;
use crate::kv::Redis;

pub const REFRESH_EVERY: Duration = Duration::from_secs(10);
pub const LIVE_FOR: Duration = Duration::from_secs(30);

fn key(redis: &Redis, queue: &str) -> String {
    redis.key(&format!("workers:{queue}"))
}

/// Members are `<slots>|<worker name>`, scored by the last refresh (ms).
pub async fn announce(redis: &Redis, queue: &str, worker: &str, slots: usize) -> Result<()> {
    let mut conn = redis.conn().await?;
    let now = chrono::Utc::now().timestamp_millis();
    let stale = now - LIVE_FOR.as_millis() as i64;
    let () = redis::pipe()
        .zadd(key(redis, queue), format!("{slots}|{worker}"), now)
        .ignore()
        .zrembyscore(key(redis, queue), "-inf", stale)
        .ignore()
        .query_async(&mut conn)
        .await?;
    Ok(())
}

pub async fn withdraw(redis: &Redis, queue: &str, worker: &str, slots: usize) -> Result<()> {
    let mut conn = redis.conn().await?;
    let _: i64 = redis::cmd("ZREM")
        .arg(key(redis, queue))
        .arg(format!("{slots}|{worker}"))
        .query_async(&mut conn)
        .await?;
    Ok(())
}

/// Jobs of `queue` the live workers can run at once.
pub async fn live_slots(redis: &Redis, queue: &str) -> Result<u32> {
    let mut conn = redis.conn().await?;
    let since = chrono::Utc::now().timestamp_millis() - LIVE_FOR.as_millis() as i64;
    let members: Vec<String> = redis::cmd("ZRANGEBYSCORE")
        .arg(key(redis, queue))
        .arg(since)
        .arg("+inf")
        .query_async(&mut conn)
        .await?;
    Ok(members.iter().filter_map(|m| m.split_once('|')?.0.parse::<u32>().ok()).sum())
}
