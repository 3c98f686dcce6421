//! `Stripe-Signature` verification: HMAC-SHA256 of `"{t}.{raw body}"` under
//! the endpoint secret, any `v1` entry may match (Stripe sends one per
//! active secret while a secret is rolled), and `t` within 300 s of now.
//!
//! Written against `hmac` and `sha2` rather than through
//! `async-stripe-webhook`: its `construct_event` verifies *and* parses the
//! payload into typed objects, refusing an event whose object misses a
//! field the SDK's API version expects — a correctly signed event would be
//! answered 400 and its payment never credited. Mage verifies, then reads
//! the few fields it needs from the JSON.

use hmac::{Hmac, Mac};
use sha2::Sha256;

pub const TOLERANCE_SECONDS: i64 = 300;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("no Stripe-Signature header")]
    Missing,
    #[error("the Stripe-Signature header has no timestamp or no v1 signature")]
    Malformed,
    #[error("no v1 signature matches the payload")]
    Mismatch,
    #[error("the signature timestamp is {0} s away from now (tolerance {TOLERANCE_SECONDS} s)")]
    Stale(i64),
}

fn mac(secret: &str, timestamp: i64, payload: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length.
    #[allow(clippy::expect_used)]
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC key");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(payload);
    mac
}

/// Checks `header` against the raw `payload` at time `now` (unix seconds).
pub fn verify(payload: &[u8], header: Option<&str>, secret: &str, now: i64) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let mut timestamp = None;
    let mut candidates = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => timestamp = t.parse::<i64>().ok(),
            Some(("v1", v)) => candidates.push(v),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
    if candidates.is_empty() {
        return Err(SignatureError::Malformed);
    }
    let expected = mac(secret, timestamp, payload);
    // Constant-time comparison per candidate (`verify_slice`).
    let matches = candidates
        .iter()
        .any(|c| hex::decode(c).is_ok_and(|sig| expected.clone().verify_slice(&sig).is_ok()));
    if !matches {
        return Err(SignatureError::Mismatch);
    }
    let skew = now - timestamp;
    if skew.abs() > TOLERANCE_SECONDS {
        return Err(SignatureError::Stale(skew));
    }
    Ok(())
}

/// A `Stripe-Signature` header for `payload`, as Stripe computes it (the
/// development checkout page and tests sign their events with it).
pub fn sign(payload: &[u8], secret: &str, timestamp: i64) -> String {
    let sig = hex::encode(mac(secret, timestamp, payload).finalize().into_bytes());
    format!("t={timestamp},v1={sig}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_test";

    #[test]
    fn a_signed_payload_verifies_within_the_tolerance_only() {
        let body = br#"{"id":"evt_1"}"#;
        let header = sign(body, SECRET, 1_000);
        assert_eq!(verify(body, Some(&header), SECRET, 1_000), Ok(()));
        assert_eq!(verify(body, Some(&header), SECRET, 1_300), Ok(()));
        assert_eq!(verify(body, Some(&header), SECRET, 1_301), Err(SignatureError::Stale(301)));
        assert_eq!(verify(body, Some(&header), "whsec_other", 1_000), Err(SignatureError::Mismatch));
        assert_eq!(verify(b"{}", Some(&header), SECRET, 1_000), Err(SignatureError::Mismatch));
        assert_eq!(verify(body, None, SECRET, 1_000), Err(SignatureError::Missing));
        assert_eq!(verify(body, Some("v1=00"), SECRET, 1_000), Err(SignatureError::Malformed));
    }

    #[test]
    fn any_v1_signature_may_match_while_secrets_roll() {
        let body = br#"{"id":"evt_2"}"#;
        let old = sign(body, "whsec_old", 50);
        let new = sign(body, SECRET, 50);
        let v1 = |h: &str| h.split_once(",v1=").map(|(_, s)| s.to_owned()).unwrap_or_default();
        let header = format!("t=50,v1={},v1={},v0=deadbeef", v1(&old), v1(&new));
        assert_eq!(verify(body, Some(&header), SECRET, 60), Ok(()));
        assert_eq!(verify(body, Some(&header), "whsec_old", 60), Ok(()));
        assert_eq!(verify(body, Some(&header), "whsec_third", 60), Err(SignatureError::Mismatch));
    }

    /// A vector computed independently (Python's `hmac` module).
    #[test]
    fn matches_an_independent_computation() {
        let header = sign(br#"{"id":"evt_test"}"#, "whsec_test_secret", 1_492_774_577);
        assert_eq!(
            header,
            "t=1492774577,v1=22f7d74836ddad3284a2b80853dd2fe731655c1bfddcff3c3666a500cf3abd80"
        );
    }
}
