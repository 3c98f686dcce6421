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
}

impl Tokens {
    pub fn new(secret: &str, ttl: Duration) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 30;
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

    /// The user and session a token was issued to; an expired, forged or
    /// malformed token (or one from before sessions, without `sid`) is
    /// `UNAUTHENTICATED`.
    pub fn verify(&self, token: &str) -> Result<Access, ApiError> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|data| Access { user_id: data.claims.sub, session_id: data.claims.sid })
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
