//! Access tokens (JWT, HS256): short-lived, each naming its session.

use std::time::Duration;

use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::ApiError;

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: Uuid,
    /// The session: revoking it ends the token before `exp`.
    sid: Uuid,
    iat: i64,
    exp: i64,
}

/// What a good access token says.
#[derive(Debug, Clone, Copy)]
pub struct Access {
    pub user_id: Uuid,
    pub session_id: Uuid,
}

/// Signs and checks access tokens.
#[derive(Clone)]
pub struct Tokens {
    /// Signs upload URLs; derived from the secret so that it can sign
    /// nothing a session token is.
    upload_key: [u8; 32],
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl: Duration,
    /// Tokens already verified, with their `exp`, so a client's next
    /// request costs a lookup rather than an HMAC and two JSON parses (an
    /// eighth of the CPU of an authenticated `{ __typename }`, per
    /// `bench/profile queries`). Only good tokens enter, and each is
    /// honoured no longer than its `exp` allows; revocation is checked
    /// after this, on every request, as before.
    verified: moka::sync::Cache<String, (Access, i64)>,
}

/// Seconds a token is still taken past its `exp` (clocks of other hosts).
const LEEWAY: u64 = 30;
/// Verified tokens kept per process: the clients active within one token
/// lifetime; one more costs a verification, not an error.
const VERIFIED_CAPACITY: u64 = 20_000;

impl Tokens {
    pub fn new(secret: &str, ttl: Duration) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY;
        validation.set_required_spec_claims(&["exp", "sub"]);
        let upload_key = {
            use sha2::Digest;
            sha2::Sha256::new()
                .chain_update(b"mage upload URLs\0")
                .chain_update(secret.as_bytes())
                .finalize()
                .into()
        };
        Self {
            upload_key,
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            validation,
            ttl,
            verified: moka::sync::Cache::builder()
                .max_capacity(VERIFIED_CAPACITY)
                .time_to_live(ttl + Duration::from_secs(LEEWAY))
                .build(),
        }
    }

    fn upload_mac(&self, asset_id: Uuid, expires: i64) -> hmac::Hmac<sha2::Sha256> {
        use hmac::Mac;
        let mut mac = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(&self.upload_key)
            .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
        mac.update(format!("{asset_id}:{expires}").as_bytes());
        mac
    }

    /// The signature of an upload URL for `asset_id` valid until `expires`
    /// (Unix seconds).
    pub fn sign_upload(&self, asset_id: Uuid, expires: i64) -> String {
        use hmac::Mac;
        hex::encode(self.upload_mac(asset_id, expires).finalize().into_bytes())
    }

    /// Whether `signature` signs this upload URL (in constant time).
    pub fn upload_signed(&self, asset_id: Uuid, expires: i64, signature: &str) -> bool {
        use hmac::Mac;
        hex::decode(signature).is_ok_and(|sig| self.upload_mac(asset_id, expires).verify_slice(&sig).is_ok())
    }

    /// The lifetime of an access token.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub fn issue(&self, user_id: Uuid, session_id: Uuid) -> Result<(String, DateTime<Utc>), ApiError> {
        let now = Utc::now();
        let expires = now + chrono::Duration::from_std(self.ttl).map_err(ApiError::internal)?;
        let claims = Claims { sub: user_id, sid: session_id, iat: now.timestamp(), exp: expires.timestamp() };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(ApiError::internal)?;
        Ok((token, expires))
    }

    /// A token verified before and, at `now`, still within its `exp` as
    /// jsonwebtoken judges it.
    fn already_verified(&self, token: &str, now: i64) -> Option<Access> {
        let (access, exp) = self.verified.get(token)?;
        (exp.saturating_add(LEEWAY as i64) >= now).then_some(access)
    }

    /// The user and session a token was issued to; an expired, forged or
    /// malformed token (or one from before sessions, without `sid`) is
    /// `UNAUTHENTICATED`.
    pub fn verify(&self, token: &str) -> Result<Access, ApiError> {
        if let Some(access) = self.already_verified(token, Utc::now().timestamp()) {
            return Ok(access);
        }
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|data| {
                let access = Access { user_id: data.claims.sub, session_id: data.claims.sid };
                self.verified.insert(token.to_owned(), (access, data.claims.exp));
                access
            })
            .map_err(|e| {
                let why = match e.kind() {
                    jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                        "the access token has expired: refresh the session (refreshSession)"
                    }
                    _ => "the access token is not valid: sign in again",
                };
                ApiError::Unauthenticated(why.to_owned())
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verified_token_is_remembered_only_until_it_expires() {
        let tokens = Tokens::new("a secret of the tests", Duration::from_secs(60));
        let (user, session) = (Uuid::new_v4(), Uuid::new_v4());
        let (token, expires) = tokens.issue(user, session).expect("issue");
        let now = Utc::now().timestamp();
        assert!(
            tokens.already_verified(&token, now).is_none(),
            "nothing is remembered before a verification"
        );
        let access = tokens.verify(&token).expect("a fresh token verifies");
        assert_eq!((access.user_id, access.session_id), (user, session));
        let exp = expires.timestamp();
        let last = exp + LEEWAY as i64;
        assert!(tokens.already_verified(&token, last).is_some(), "good until exp plus the leeway");
        assert!(tokens.already_verified(&token, last + 1).is_none(), "expired once past it");

        let at = token.rfind('.').expect("a JWT") + 5;
        let flipped = if &token[at..=at] == "A" { "B" } else { "A" };
        let forged = format!("{}{flipped}{}", &token[..at], &token[at + 1..]);
        assert!(tokens.verify(&forged).is_err(), "a forged token is refused");
        assert!(tokens.already_verified(&forged, now).is_none(), "and never remembered");
        let other = Tokens::new("another secret", Duration::from_secs(60));
        assert!(other.verify(&token).is_err(), "another key's cache does not vouch for it");
    }
}
