//! API keys: long-lived, scoped credentials for integrators. A key is
//! `mage_sk_` + 43 characters of randomness (256 bits, base64url) + a 6
//! character checksum; only its SHA-256 is kept, and its first characters
//! (the prefix) find it.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use crate::db::Connection;
use crate::rows::ApiKey;
use crate::schema::api_keys;
use crate::sessions::{random_secret, sha256};
use crate::{Error, Result};

pub const KEY_PREFIX: &str = "mage_sk_";
/// Keys one user may hold (live ones).
pub const MAX_PER_USER: i64 = 20;
/// Characters of the key kept in the clear: enough to find it and to tell
/// keys apart in a list, far too few to guess the rest.
const PREFIX_CHARS: usize = KEY_PREFIX.len() + 8;
const CHECKSUM_CHARS: usize = 6;

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Queries and subscriptions.
    Read,
    /// Generations and uploads.
    Generate,
    /// Checkout.
    Billing,
}

impl Scope {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Generate => "generate",
            Self::Billing => "billing",
        }
    }
}

impl FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "read" => Ok(Self::Read),
            "generate" => Ok(Self::Generate),
            "billing" => Ok(Self::Billing),
            other => Err(format!("unknown scope {other:?}")),
        }
    }
}

impl ApiKey {
    pub fn scopes(&self) -> Vec<Scope> {
        self.scopes.iter().flatten().filter_map(|s| s.parse().ok()).collect()
    }
}

/// The 6 checksum characters of a key's random part: a typo or a
/// truncated copy is told apart from a wrong key without a database read,
/// and scanners can tell a real key from look-alike text.
fn checksum(random: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::new().chain_update(b"mage key checksum\0").chain_update(random).finalize();
    hex::encode(&digest[..CHECKSUM_CHARS / 2])
}

/// Whether `secret` has a key's shape and a good checksum.
pub fn well_formed(secret: &str) -> bool {
    let Some(body) = secret.strip_prefix(KEY_PREFIX) else { return false };
    if body.len() <= CHECKSUM_CHARS || !body.is_ascii() {
        return false;
    }
    let (random, sum) = body.split_at(body.len() - CHECKSUM_CHARS);
    checksum(random) == sum
}

/// The part of a key kept in the clear.
pub fn prefix_of(secret: &str) -> &str {
    &secret[..PREFIX_CHARS.min(secret.len())]
}

fn new_secret() -> String {
    let random = random_secret("");
    format!("{KEY_PREFIX}{random}{}", checksum(&random))
}

/// Creates a key; returns it with its secret, which exists nowhere else.
pub async fn create(
    conn: &mut Connection,
    user_id: Uuid,
    name: &str,
    scopes: &[Scope],
) -> Result<(ApiKey, String)> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(Error::invalid("name", "must be 1 to 100 characters"));
    }
    if scopes.is_empty() {
        return Err(Error::invalid("scopes", "name at least one scope"));
    }
    let live: i64 = api_keys::table
        .filter(api_keys::user_id.eq(user_id))
        .filter(api_keys::revoked_at.is_null())
        .count()
        .get_result(conn)
        .await?;
    if live >= MAX_PER_USER {
        return Err(Error::Conflict(format!(
            "at most {MAX_PER_USER} API keys per account: revoke one first"
        )));
    }
    let mut scopes: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
    scopes.sort_unstable();
    scopes.dedup();
    let secret = new_secret();
    let key = diesel::insert_into(api_keys::table)
        .values((
            api_keys::user_id.eq(user_id),
            api_keys::name.eq(name),
            api_keys::prefix.eq(prefix_of(&secret)),
            api_keys::secret_hash.eq(sha256(&secret)),
            api_keys::scopes.eq(scopes.iter().map(|s| Some(*s)).collect::<Vec<_>>()),
        ))
        .returning(ApiKey::as_returning())
        .get_result(conn)
        .await?;
    Ok((key, secret))
}

/// The live key `secret` is, if any; compared by hash in constant time.
pub async fn find_by_secret(conn: &mut Connection, secret: &str) -> Result<Option<ApiKey>> {
    if !well_formed(secret) {
        return Ok(None);
    }
    let key: Option<ApiKey> = api_keys::table
        .filter(api_keys::prefix.eq(prefix_of(secret)))
        .filter(api_keys::revoked_at.is_null())
        .select(ApiKey::as_select())
        .first(conn)
        .await
        .optional()?;
    let hash = sha256(secret);
    Ok(key.filter(|k| {
        use subtle::ConstantTimeEq;
        bool::from(k.secret_hash.as_slice().ct_eq(hash.as_slice()))
    }))
}

/// Records a use, at most once a minute per key (a busy integration must
/// not write on every request).
pub async fn touch(conn: &mut Connection, id: Uuid) -> Result<()> {
    let minute_ago: DateTime<Utc> = Utc::now() - chrono::Duration::minutes(1);
    diesel::update(api_keys::table.find(id))
        .filter(api_keys::last_used_at.is_null().or(api_keys::last_used_at.lt(minute_ago)))
        .set(api_keys::last_used_at.eq(diesel::dsl::now))
        .execute(conn)
        .await?;
    Ok(())
}

/// `user_id`'s keys, live ones first, newest first.
pub async fn list(conn: &mut Connection, user_id: Uuid) -> Result<Vec<ApiKey>> {
    Ok(api_keys::table
        .filter(api_keys::user_id.eq(user_id))
        .filter(api_keys::revoked_at.is_null())
        .order(api_keys::created_at.desc())
        .select(ApiKey::as_select())
        .load(conn)
        .await?)
}

/// Revokes `user_id`'s key `id` (again: no change); `NOT_FOUND` when it is
/// not theirs.
pub async fn revoke(conn: &mut Connection, user_id: Uuid, id: Uuid) -> Result<ApiKey> {
    diesel::update(api_keys::table.find(id).filter(api_keys::user_id.eq(user_id)))
        .set(api_keys::revoked_at.eq(diesel::dsl::sql::<
            diesel::sql_types::Nullable<diesel::sql_types::Timestamptz>,
        >("coalesce(revoked_at, now())")))
        .returning(ApiKey::as_returning())
        .get_result(conn)
        .await
        .optional()?
        .ok_or(Error::NotFound("API key"))
}

/// Revokes every key of `user_id` (account deletion); returns their ids.
pub async fn revoke_all(conn: &mut Connection, user_id: Uuid) -> Result<Vec<Uuid>> {
    Ok(diesel::update(
        api_keys::table.filter(api_keys::user_id.eq(user_id)).filter(api_keys::revoked_at.is_null()),
    )
    .set(api_keys::revoked_at.eq(diesel::dsl::now))
    .returning(api_keys::id)
    .get_results(conn)
    .await?)
}
