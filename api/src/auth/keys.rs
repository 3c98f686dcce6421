//! API keys as the edge sees them: a key checked once is remembered for a
//! minute by its hash, so a busy integration costs one database read a
//! minute (which also stamps `lastUsedAt`), not one per request. A
//! revocation reaches the cache through [`Revocations`].

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use mage_domain::db::DbPool;

use super::{Credential, Principal, Revocations, Scopes};
use crate::error::ApiError;

/// How long a checked key is trusted without the database.
pub const RECHECK: Duration = Duration::from_secs(60);
/// Keys remembered; past this the cache starts over (bounded memory).
const MAX: usize = 10_000;

#[derive(Default)]
pub struct KeyCache(Mutex<HashMap<[u8; 32], (Principal, Instant)>>);

impl KeyCache {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], (Principal, Instant)>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The caller a key secret stands for; `None` for a revoked, unknown or
    /// mistyped key.
    pub async fn find(
        &self,
        pool: &DbPool,
        revocations: &Revocations,
        secret: &str,
    ) -> Result<Option<Principal>, ApiError> {
        let hash: [u8; 32] = {
            use sha2::Digest;
            sha2::Sha256::digest(secret.as_bytes()).into()
        };
        let now = Instant::now();
        if let Some((p, checked)) = self.map().get(&hash).copied()
            && now.duration_since(checked) < RECHECK
        {
            return Ok((!revocations.is_revoked(p.credential_id())).then_some(p));
        }
        // Refused before the database: a typo or a look-alike costs nothing.
        if !mage_domain::api_keys::well_formed(secret) {
            return Ok(None);
        }
        let mut conn = pool.get().await.map_err(ApiError::internal)?;
        let Some(key) = mage_domain::api_keys::find_by_secret(&mut conn, secret).await? else {
            self.map().remove(&hash);
            return Ok(None);
        };
        mage_domain::api_keys::touch(&mut conn, key.id).await?;
        let p = Principal {
            user_id: key.user_id,
            credential: Credential::Key { id: key.id, scopes: Scopes::of(&key.scopes()) },
        };
        if revocations.is_revoked(key.id) {
            return Ok(None);
        }
        let mut map = self.map();
        if map.len() >= MAX {
            map.clear();
        }
        map.insert(hash, (p, now));
        Ok(Some(p))
    }
}
