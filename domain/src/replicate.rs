//! Replicate's webhooks, as the API's intake and the render worker share
//! them: the Standard Webhooks signature, the `replicate_webhooks` table
//! that makes each delivery count once, and the Redis channel on which a
//! delivered prediction reaches the worker that follows it.
//!
//! Replicate signs every webhook the Standard Webhooks way: HMAC-SHA256
//! over `{webhook-id}.{webhook-timestamp}.{raw body}` under the base64 key
//! after `whsec_`, sent as space-separated `v1,<base64>` entries (one per
//! active secret while a secret is rolled).

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use crate::Result;
use crate::db::Connection;
use crate::kv::Redis;
use crate::schema::replicate_webhooks;

/// Delivery records are kept this long: far beyond Replicate's retries
/// (the last one about a minute after the prediction ends), so a
/// redelivery is always recognised.
pub const RETENTION: chrono::Duration = chrono::Duration::days(7);

/// Longest `webhook-id` and prediction id accepted; Replicate's are a few
/// tens of characters.
pub const MAX_ID_LEN: usize = 128;

pub use crate::standard_webhooks::{SignatureError, Signed, TOLERANCE_SECONDS, sign, verify};

/// Whether `id` can name a prediction (or a delivery) in a key or a
/// channel: Replicate's ids are short and alphanumeric.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The channel on which deliveries for one prediction are published.
pub fn channel(redis: &Redis, prediction_id: &str) -> String {
    redis.key(&format!("{CHANNEL_PREFIX}{prediction_id}"))
}

const CHANNEL_PREFIX: &str = "replicate:";

/// The prediction id a message on [`channel`] is for.
pub fn prediction_of<'a>(redis: &Redis, channel: &'a str) -> Option<&'a str> {
    channel.strip_prefix(redis.prefix())?.strip_prefix(CHANNEL_PREFIX)
}

/// A `PSUBSCRIBE` pattern matching every prediction's channel (and no
/// other deployment's, whatever its prefix contains).
pub fn channel_pattern(redis: &Redis) -> String {
    let mut pattern = String::new();
    for c in redis.prefix().chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push_str(CHANNEL_PREFIX);
    pattern.push('*');
    pattern
}

/// A verified delivery.
#[derive(Debug, Clone)]
pub struct Delivery<'a> {
    pub webhook_id: &'a str,
    pub prediction_id: &'a str,
    pub generation_id: Option<Uuid>,
    pub status: &'a str,
}

/// Records a delivery once: `true` for a `webhook-id` not seen before,
/// `false` for a redelivery (which must do nothing more).
pub async fn record(conn: &mut Connection, d: &Delivery<'_>) -> Result<bool> {
    let n = diesel::insert_into(replicate_webhooks::table)
        .values((
            replicate_webhooks::id.eq(d.webhook_id),
            replicate_webhooks::prediction_id.eq(d.prediction_id),
            replicate_webhooks::generation_id.eq(d.generation_id),
            replicate_webhooks::status.eq(d.status),
        ))
        .on_conflict_do_nothing()
        .execute(conn)
        .await?;
    Ok(n == 1)
}

/// Undoes [`record`] when the delivery could not be passed on, so that
/// Replicate's redelivery is acted upon.
pub async fn forget(conn: &mut Connection, webhook_id: &str) -> Result<()> {
    diesel::delete(replicate_webhooks::table.find(webhook_id)).execute(conn).await?;
    Ok(())
}

/// Passes a delivered prediction (its JSON, as received) to whichever
/// worker follows it.
pub async fn publish(redis: &Redis, prediction_id: &str, prediction: &str) -> Result<()> {
    let mut conn = redis.conn().await?;
    let _receivers: i64 = redis::cmd("PUBLISH")
        .arg(channel(redis, prediction_id))
        .arg(prediction)
        .query_async(&mut conn)
        .await?;
    Ok(())
}

/// Deletes delivery records older than [`RETENTION`] before `now`; the
/// sweeper calls it. Returns how many went.
pub async fn prune(conn: &mut Connection, now: DateTime<Utc>) -> Result<usize> {
    Ok(diesel::delete(replicate_webhooks::table.filter(replicate_webhooks::received_at.lt(now - RETENTION)))
        .execute(conn)
        .await?)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    // The test vector of the Standard Webhooks specification.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: i64 = 1614265330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn headers<'a>(sig: &'a str, ts: &'a str) -> Signed<'a> {
        Signed { id: Some(ID), timestamp: Some(ts), signature: Some(sig) }
    }

    #[test]
    fn the_specification_vector_signs_and_verifies() {
        assert_eq!(sign(SECRET, ID, TS, BODY).unwrap(), SIG);
        let ts = TS.to_string();
        assert_eq!(verify(SECRET, headers(SIG, &ts), BODY, TS + 10), Ok(()));
    }

    #[test]
    fn any_v1_entry_may_match() {
        let ts = TS.to_string();
        let rolled = format!("v1,bm90IHRoaXMgb25l v2,abc {SIG}");
        assert_eq!(verify(SECRET, headers(&rolled, &ts), BODY, TS), Ok(()));
        // The right bytes under another version tag do not count.
        let v2 = SIG.replacen("v1,", "v2,", 1);
        assert_eq!(verify(SECRET, headers(&v2, &ts), BODY, TS), Err(SignatureError::Mismatch));
    }

    #[test]
    fn tampered_stale_and_incomplete_deliveries_are_refused() {
        let ts = TS.to_string();
        assert_eq!(
            verify(SECRET, headers(SIG, &ts), br#"{"test": 2432232315}"#, TS),
            Err(SignatureError::Mismatch)
        );
        let other = Signed { id: Some("msg_other"), ..headers(SIG, &ts) };
        assert_eq!(verify(SECRET, other, BODY, TS), Err(SignatureError::Mismatch));
        assert_eq!(verify(SECRET, headers(SIG, &ts), BODY, TS + 301), Err(SignatureError::Stale(301)));
        assert_eq!(verify(SECRET, headers(SIG, &ts), BODY, TS - 301), Err(SignatureError::Stale(-301)));
        assert_eq!(verify(SECRET, headers(SIG, &ts), BODY, TS - 300), Ok(()));
        assert_eq!(verify(SECRET, headers(SIG, "soon"), BODY, TS), Err(SignatureError::Malformed));
        let none = Signed { signature: None, ..headers(SIG, &ts) };
        assert_eq!(verify(SECRET, none, BODY, TS), Err(SignatureError::Missing));
        assert_eq!(verify("whsec_!!!", headers(SIG, &ts), BODY, TS), Err(SignatureError::Secret));
    }

    #[test]
    fn ids_fit_a_channel_name() {
        assert!(valid_id("gm3qorzdhgbfurvjtvhg6dckhu"));
        assert!(!valid_id(""));
        assert!(!valid_id("a b"));
        assert!(!valid_id("x*"));
        assert!(!valid_id(&"a".repeat(MAX_ID_LEN + 1)));
    }
}
