//! How many deliveries to one endpoint are in flight, across every worker:
//! a sorted set of leases per endpoint (member: the delivery, score: when
//! its lease ends), so a crashed worker's permits lapse on their own. A
//! slow endpoint thus holds at most its bound of delivery slots, and other
//! users' deliveries keep moving.

use std::time::Duration;

use uuid::Uuid;

use crate::Result;
use crate::kv::Redis;

const ACQUIRE: &str = r"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZSCORE', KEYS[1], ARGV[4]) or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('ZADD', KEYS[1], ARGV[1] + ARGV[2], ARGV[4])
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0";

fn key(redis: &Redis, endpoint_id: Uuid) -> String {
    redis.key(&format!("webhooks:inflight:{endpoint_id}"))
}

/// Takes one of `max` permits of the endpoint for `delivery_id` for
/// `lease`; `false` when all are taken.
pub async fn acquire(
    redis: &Redis,
    endpoint_id: Uuid,
    delivery_id: Uuid,
    max: usize,
    lease: Duration,
) -> Result<bool> {
    static SCRIPT: std::sync::LazyLock<redis::Script> =
        std::sync::LazyLock::new(|| redis::Script::new(ACQUIRE));
    let mut conn = redis.conn().await?;
    let taken: i64 = SCRIPT
        .key(key(redis, endpoint_id))
        .arg(chrono::Utc::now().timestamp_millis())
        .arg(lease.as_millis() as i64)
        .arg(max)
        .arg(delivery_id.to_string())
        .invoke_async(&mut conn)
        .await?;
    Ok(taken == 1)
}

pub async fn release(redis: &Redis, endpoint_id: Uuid, delivery_id: Uuid) -> Result<()> {
    let mut conn = redis.conn().await?;
    let _: i64 = redis::cmd("ZREM")
        .arg(key(redis, endpoint_id))
        .arg(delivery_id.to_string())
        .query_async(&mut conn)
        .await?;
    Ok(())
}
