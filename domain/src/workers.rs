//! Which worker processes are alive, and how many jobs of each queue they
//! can run at once: the ETA of a queued generation depends on it. Each
//! worker process refreshes its entry every few seconds; an entry not
//! refreshed for [`LIVE_FOR`] is not counted.

use std::time::Duration;

use crate::Result;
use crate::kv::Redis;

pub const REFRESH_EVERY: Duration = Duration::from_secs(10);
pub const LIVE_FOR: Duration = Duration::from_secs(30);

fn key(redis: &Redis, queue: crate::queue::Queue) -> String {
    redis.key(&format!("workers:{queue}"))
}

/// Members are `<slots>|<worker name>`, scored by the last refresh (ms).
pub async fn announce(redis: &Redis, queue: crate::queue::Queue, worker: &str, slots: usize) -> Result<()> {
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

pub async fn withdraw(redis: &Redis, queue: crate::queue::Queue, worker: &str, slots: usize) -> Result<()> {
    let mut conn = redis.conn().await?;
    let _: i64 = redis::cmd("ZREM")
        .arg(key(redis, queue))
        .arg(format!("{slots}|{worker}"))
        .query_async(&mut conn)
        .await?;
    Ok(())
}

/// Jobs of `queue` the live workers can run at once.
pub async fn live_slots(redis: &Redis, queue: crate::queue::Queue) -> Result<u32> {
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

/// A render backend's health as the last worker that checked it saw it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BackendStatus {
    /// `synthetic`, `comfyui`.
    pub kind: String,
    /// Where it renders (a ComfyUI URL; `local` plus the worker for the
    /// synthetic backend).
    pub location: String,
    pub healthy: bool,
    pub detail: String,
    pub vram_free_bytes: Option<u64>,
    pub vram_total_bytes: Option<u64>,
    pub checked_by: String,
    pub checked_at: chrono::DateTime<chrono::Utc>,
}

/// A backend nobody has checked for this long is reported as unknown.
pub const BACKEND_STATUS_FRESH_FOR: Duration = Duration::from_secs(120);

fn backends_key(redis: &Redis) -> String {
    redis.key("backends")
}

pub async fn record_backend(redis: &Redis, status: &BackendStatus) -> Result<()> {
    let mut conn = redis.conn().await?;
    let json = serde_json::to_string(status).map_err(|e| crate::Error::Internal(e.to_string()))?;
    let () = redis::cmd("HSET")
        .arg(backends_key(redis))
        .arg(&status.location)
        .arg(json)
        .query_async(&mut conn)
        .await?;
    Ok(())
}

/// Every backend a worker reported, by location. One not reported for
/// [`BACKEND_STATUS_FRESH_FOR`] is shown unhealthy ("no recent check");
/// one not reported for a day is forgotten.
pub async fn backends(redis: &Redis) -> Result<Vec<BackendStatus>> {
    let mut conn = redis.conn().await?;
    let all: Vec<(String, String)> =
        redis::cmd("HGETALL").arg(backends_key(redis)).query_async(&mut conn).await?;
    let now = chrono::Utc::now();
    let mut out = Vec::new();
    for (location, json) in all {
        let Ok(mut s) = serde_json::from_str::<BackendStatus>(&json) else { continue };
        let age = (now - s.checked_at).to_std().unwrap_or_default();
        if age > Duration::from_secs(86_400) {
            let _: i64 =
                redis::cmd("HDEL").arg(backends_key(redis)).arg(&location).query_async(&mut conn).await?;
            continue;
        }
        if age > BACKEND_STATUS_FRESH_FOR {
            s.healthy = false;
            s.detail = format!("no recent check (last: {})", s.detail);
        }
        out.push(s);
    }
    out.sort_by(|a, b| a.location.cmp(&b.location));
    Ok(out)
}
