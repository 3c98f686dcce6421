//! Access tokens (JWT, HS256) and the caller of a request.

use std::time::Duration;

use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::ApiError;

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: Uuid,
    iat: i64,
    exp: i64,
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

    pub fn issue(&self, user_id: Uuid) -> Result<(String, DateTime<Utc>), ApiError> {
        let now = Utc::now();
        let expires = now + chrono::Duration::from_std(self.ttl).map_err(ApiError::internal)?;
        let claims = Claims { sub: user_id, iat: now.timestamp(), exp: expires.timestamp() };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(ApiError::internal)?;
        Ok((token, expires))
    }

    /// The user id a token was issued to and when it expires (Unix
    /// seconds); an expired, forged or malformed token is `UNAUTHENTICATED`.
    pub fn verify(&self, token: &str) -> Result<(Uuid, i64), ApiError> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|data| (data.claims.sub, data.claims.exp))
            .map_err(|e| {
                let why = match e.kind() {
                    jsonwebtoken::errors::ErrorKind::ExpiredSignature => "the access token has expired",
                    _ => "the access token is not valid",
                };
                ApiError::Unauthenticated(format!("{why}: sign in again"))
            })
    }

    /// Reads `Bearer <token>` (the scheme is case-insensitive; a bare token is
    /// accepted too, as WebSocket clients often send one).
    pub fn verify_header(&self, value: &str) -> Result<(Uuid, i64), ApiError> {
        let value = value.trim();
        let token = match value.split_once(' ') {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
            Some(_) => {
                return Err(ApiError::Unauthenticated(
                    "unsupported Authorization scheme: use Bearer <token>".into(),
                ));
            }
            None => value,
        };
        self.verify(token)
    }
}

/// Who is calling: put into every request's data.
#[derive(Debug, Clone, Default)]
pub enum Viewer {
    #[default]
    Anonymous,
    User(Uuid),
    /// Credentials were sent but are no good (expired, forged). Public
    /// operations such as `login` still run; anything that needs the caller
    /// is `UNAUTHENTICATED` with the reason, so a client knows to sign in again.
    Invalid(String),
}

impl Viewer {
    pub fn require(&self) -> Result<Uuid, ApiError> {
        self.optional()?.ok_or_else(ApiError::unauthenticated)
    }

    /// The caller if signed in, `None` if anonymous, an error if the
    /// credentials are bad.
    pub fn optional(&self) -> Result<Option<Uuid>, ApiError> {
        match self {
            Self::Anonymous => Ok(None),
            Self::User(id) => Ok(Some(*id)),
            Self::Invalid(why) => Err(ApiError::Unauthenticated(why.clone())),
        }
    }
}

/// The caller named by an `Authorization` header (HTTP) or a
/// `connection_init` payload (WebSocket), with when its token expires (Unix
/// seconds); no credentials is an anonymous caller. A valid token of an
/// account that no longer exists is no credential.
pub(crate) async fn viewer_from(state: &crate::AppState, credential: Option<&str>) -> (Viewer, Option<i64>) {
    match credential.map(str::trim).filter(|c| !c.is_empty()) {
        None => (Viewer::Anonymous, None),
        Some(c) => match state.tokens.verify_header(c) {
            Ok((id, expires)) => match state.known_users.exists(&state.pool, id).await {
                Ok(false) => (Viewer::Invalid("this account no longer exists: sign in again".into()), None),
                // The token itself is good: a database hiccup must not sign
                // anyone out (the operation meets the database again anyway).
                Ok(true) | Err(_) => (Viewer::User(id), Some(expires)),
            },
            Err(e) => (Viewer::Invalid(e.message()), None),
        },
    }
}

/// Users seen to exist in the last [`KnownUsers::FOR`], so that a valid
/// token of a deleted account is `UNAUTHENTICATED` everywhere (not `null`,
/// empty lists or `NOT_FOUND`) without a database read on every request.
#[derive(Default)]
pub struct KnownUsers(std::sync::Mutex<std::collections::HashMap<Uuid, std::time::Instant>>);

impl KnownUsers {
    /// How long a user's existence is taken as known: a deleted account's
    /// tokens stop working within this.
    pub const FOR: Duration = Duration::from_secs(10);
    /// Entries kept; past this the map starts over (bounded memory).
    const MAX: usize = 100_000;

    /// Whether `user_id` names an account, from memory when known recently.
    pub async fn exists(&self, pool: &mage_domain::db::DbPool, user_id: Uuid) -> Result<bool, ApiError> {
        let now = std::time::Instant::now();
        let known = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&user_id)
            .is_some_and(|seen| now.duration_since(*seen) < Self::FOR);
        if known {
            return Ok(true);
        }
        let mut conn = pool.get().await.map_err(ApiError::internal)?;
        let exists = mage_domain::users::exists(&mut conn, user_id).await?;
        if exists {
            let mut map = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if map.len() >= Self::MAX {
                map.clear();
            }
            map.insert(user_id, now);
        }
        Ok(exists)
    }
}
