//! Standard Webhooks (<https://www.standardwebhooks.com>), the signature
//! scheme Replicate signs its webhooks with and Mage signs its own with:
//! HMAC-SHA256 over `{webhook-id}.{webhook-timestamp}.{raw body}` under the
//! base64 key after `whsec_`, sent as space-separated `v1,<base64>` entries
//! (one per active secret while a secret is rolled).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How far a `webhook-timestamp` may be from now, either way.
pub const TOLERANCE_SECONDS: i64 = 300;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("no webhook-id, webhook-timestamp or webhook-signature header")]
    Missing,
    #[error("the webhook-timestamp is not a number of seconds")]
    Malformed,
    #[error("the webhook secret is not `whsec_` followed by base64")]
    Secret,
    #[error("no v1 signature matches the payload")]
    Mismatch,
    #[error("the webhook timestamp is {0} s away from now (tolerance {TOLERANCE_SECONDS} s)")]
    Stale(i64),
}

/// The headers of one delivery, as received.
#[derive(Debug, Clone, Copy)]
pub struct Signed<'a> {
    pub id: Option<&'a str>,
    pub timestamp: Option<&'a str>,
    pub signature: Option<&'a str>,
}

fn key(secret: &str) -> Result<Vec<u8>, SignatureError> {
    let b64 = secret.strip_prefix("whsec_").unwrap_or(secret);
    STANDARD
        .decode(b64.trim())
        .map_err(|_| SignatureError::Secret)
        .and_then(|k| if k.is_empty() { Err(SignatureError::Secret) } else { Ok(k) })
}

fn mac(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length.
    #[allow(clippy::expect_used)]
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC key");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// Checks a delivery's signature against its raw `body` at `now` (unix
/// seconds): accepted when any `v1` entry matches (compared in constant
/// time by `verify_slice`) and the timestamp is within the tolerance.
pub fn verify(secret: &str, headers: Signed<'_>, body: &[u8], now: i64) -> Result<(), SignatureError> {
    let (Some(id), Some(timestamp), Some(signature)) = (headers.id, headers.timestamp, headers.signature)
    else {
        return Err(SignatureError::Missing);
    };
    let timestamp = timestamp.trim().parse::<i64>().map_err(|_| SignatureError::Malformed)?;
    let expected = mac(&key(secret)?, id, timestamp, body);
    let matches = signature.split_whitespace().any(|entry| {
        entry
            .split_once(',')
            .filter(|(version, _)| *version == "v1")
            .and_then(|(_, sig)| STANDARD.decode(sig).ok())
            .is_some_and(|sig| expected.clone().verify_slice(&sig).is_ok())
    });
    if !matches {
        return Err(SignatureError::Mismatch);
    }
    let skew = now - timestamp;
    if skew.abs() > TOLERANCE_SECONDS {
        return Err(SignatureError::Stale(skew));
    }
    Ok(())
}

/// The `webhook-signature` entry for one secret: Mage signs its own
/// webhooks with it (one entry per active secret, space-separated), and
/// development tools and tests sign as Replicate would.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Result<String, SignatureError> {
    let sig = mac(&key(secret)?, id, timestamp, body).finalize().into_bytes();
    Ok(format!("v1,{}", STANDARD.encode(sig)))
}

/// A new secret: `whsec_` and 32 random bytes in base64, as the Standard
/// Webhooks libraries expect.
pub fn new_secret() -> String {
    use rand_core::RngCore;
    let mut bytes = [0u8; 32];
    rand_core::OsRng.fill_bytes(&mut bytes);
    format!("whsec_{}", STANDARD.encode(bytes))
}
