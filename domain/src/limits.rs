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

/// Takes one of the user's checkouts of the last minute (a sliding window
/// shared by every API instance), or fails with `RateLimited`.
pub async fn reserve_checkout(redis: &Redis, per_minute: u32, user_id: Uuid) -> Result<()> {
    Attempt::take(
        redis,
        &[(
            redis.key(&format!("limits:checkouts:{user_id}")),
            per_minute,
            "at most {limit} checkouts per minute",
        )],
        60_000,
    )
    .await
    .map(drop)
}

/// Takes one of the user's uploads of the last minute, or fails with
/// `RateLimited`.
pub async fn reserve_upload(redis: &Redis, per_minute: u32, user_id: Uuid) -> Result<()> {
    Attempt::take(
        redis,
        &[(
            redis.key(&format!("limits:uploads:{user_id}")),
            per_minute,
            "at most {limit} uploads per minute",
        )],
        60_000,
    )
    .await
    .map(drop)
}

// KEYS: sliding windows (sorted sets of attempts). ARGV: now ms, member,
// window ms, then each key's limit. Returns {0, 0} when the attempt was
// added to every window, else {index of the full window, retry after in
// seconds} and adds it to none.
const WINDOWS: &str = r"
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[3])
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  if redis.call('ZCARD', key) >= tonumber(ARGV[3 + i]) then
    local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    return {i, math.max(1, math.ceil((tonumber(oldest[2]) + window - now) / 1000))}
  end
end
for _, key in ipairs(KEYS) do
  redis.call('ZADD', key, now, ARGV[2])
  redis.call('PEXPIRE', key, window)
end
return {0, 0}
";

/// An attempt counted in one or more sliding windows, until it is given
/// back ([`Attempt::give_back`]) or ages out of them.
#[derive(Debug)]
pub struct Attempt {
    keys: Vec<String>,
    member: String,
}

impl Attempt {
    /// Counts an attempt in every window at once, or in none when one of
    /// them is full: then `RateLimited` with that window's `message`.
    /// Counted before the work it guards, so concurrent attempts cannot all
    /// pass a check none of them has counted in yet.
    async fn take(redis: &Redis, windows: &[(String, u32, &str)], window_ms: i64) -> Result<Self> {
        let mut conn = redis.conn().await?;
        static SCRIPT: std::sync::LazyLock<redis::Script> =
            std::sync::LazyLock::new(|| redis::Script::new(WINDOWS));
        let member = Uuid::new_v4().to_string();
        let mut call = SCRIPT.prepare_invoke();
        call.arg(chrono::Utc::now().timestamp_millis()).arg(&member).arg(window_ms);
        for (key, limit, _) in windows {
            call.key(key).arg(*limit);
        }
        let (full, retry_after): (usize, u64) = call.invoke_async(&mut conn).await?;
        match full.checked_sub(1).and_then(|i| windows.get(i)) {
            None => Ok(Self { keys: windows.iter().map(|w| w.0.clone()).collect(), member }),
            Some((_, limit, message)) => Err(Error::RateLimited {
                message: message.replace("{limit}", &limit.to_string()),
                retry_after_seconds: retry_after,
            }),
        }
    }

    /// Takes the attempt out of its windows: it did not count (a login
    /// that succeeded, a sign-up refused for its input).
    pub async fn give_back(self, redis: &Redis) {
        let result = async {
            let mut conn = redis.conn().await?;
            let mut pipe = redis::pipe();
            for key in &self.keys {
                pipe.zrem(key, &self.member).ignore();
            }
            let () = pipe.query_async(&mut conn).await?;
            Ok::<_, Error>(())
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "could not give back a rate-limit slot");
        }
    }
}

/// Limits on signing in and up (MAGE_LOGIN_FAILURES_PER_EMAIL,
/// MAGE_LOGIN_FAILURES_PER_IP, MAGE_SIGNUPS_PER_IP_PER_HOUR), counted in
/// Redis so every instance shares them.
#[derive(Debug, Clone, Copy)]
pub struct AuthLimits {
    pub login_failures_per_email: u32,
    pub login_failures_per_ip: u32,
    pub signups_per_ip_per_hour: u32,
}

const LOGIN_WINDOW_MS: i64 = 15 * 60 * 1000;
const SIGNUP_WINDOW_MS: i64 = 60 * 60 * 1000;

/// A login attempt for `email` from the client counted under `client`
/// (an IP, or its /64). Give it back when the password was right: only
/// failures count.
pub async fn login_attempt(redis: &Redis, limits: AuthLimits, email: &str, client: &str) -> Result<Attempt> {
    use sha2::Digest;
    // Emails are not written into Redis keys, only their digest.
    let email = hex::encode(sha2::Sha256::digest(email.trim().to_lowercase().as_bytes()));
    Attempt::take(
        redis,
        &[
            (
                redis.key(&format!("limits:login-email:{email}")),
                limits.login_failures_per_email,
                "too many failed sign-ins for this email ({limit} per 15 minutes)",
            ),
            (
                redis.key(&format!("limits:login-ip:{client}")),
                limits.login_failures_per_ip,
                "too many failed sign-ins from your address ({limit} per 15 minutes)",
            ),
        ],
        LOGIN_WINDOW_MS,
    )
    .await
}

/// A sign-up from the client counted under `client`.
pub async fn signup_attempt(redis: &Redis, limits: AuthLimits, client: &str) -> Result<Attempt> {
    Attempt::take(
        redis,
        &[(
            redis.key(&format!("limits:signup-ip:{client}")),
            limits.signups_per_ip_per_hour,
            "too many accounts created from your address ({limit} per hour)",
        )],
        SIGNUP_WINDOW_MS,
    )
    .await
}

/// A password-reset mail for `email` (normalised), at most
/// [`crate::mail::MAILS_PER_EMAIL_PER_HOUR`] an hour whether or not an
/// account has the address.
pub async fn reset_mail_attempt(redis: &Redis, email: &str) -> Result<Attempt> {
    email_mail_attempt(redis, "reset", email).await
}

/// A verification mail asked again for `email`, at most
/// [`crate::mail::MAILS_PER_EMAIL_PER_HOUR`] an hour.
pub async fn verification_mail_attempt(redis: &Redis, email: &str) -> Result<Attempt> {
    email_mail_attempt(redis, "verify", email).await
}

async fn email_mail_attempt(redis: &Redis, kind: &str, email: &str) -> Result<Attempt> {
    use sha2::Digest;
    let email = hex::encode(sha2::Sha256::digest(email.trim().to_lowercase().as_bytes()));
    Attempt::take(
        redis,
        &[(
            redis.key(&format!("limits:mail-{kind}:{email}")),
            crate::mail::MAILS_PER_EMAIL_PER_HOUR,
            "at most {limit} such mails per address per hour: look for the last one, or try again later",
        )],
        SIGNUP_WINDOW_MS,
    )
    .await
}
