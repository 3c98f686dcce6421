//! Automatic Persisted Queries, the Apollo convention mobile clients speak
//! (Apollo Kotlin, Apollo iOS, Apollo Client's persisted-query link): a
//! request carries `extensions.persistedQuery { version: 1, sha256Hash }`
//! and no query text; an unknown hash is answered `PersistedQueryNotFound`
//! (`PERSISTED_QUERY_NOT_FOUND`), the client sends the text with the hash
//! once, and from then on the hash alone is enough, on every instance.
//!
//! Done around execution, like `documents`, rather than with async-graphql's
//! `ApolloPersistedQueries` extension: that one keeps the texts per process
//! (a client that registered on one instance would miss on the next) and
//! its errors carry no `extensions.code`.
//!
//! Texts live in Redis under their hash for `TTL` (so memory is bounded by
//! what clients sent lately, not by all time), with the instance's most used
//! ones in memory. A text is stored only when its hash is right, so nobody
//! can make a hash answer a query that is not its own, and only once it
//! validated and ran, so what is kept is operations of this schema.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use async_graphql::{Response, ServerError};
use sha2::{Digest, Sha256};

use mage_domain::kv::Redis;

/// How long a registered text is kept in Redis after it was last sent.
const TTL_SECONDS: u64 = 7 * 24 * 3600;
/// Texts kept in memory per instance; past this the map starts over.
const MAX_LOCAL: usize = 512;
/// Longer texts are run but not registered (they are not what APQ is for,
/// and they would cost Redis memory).
const MAX_QUERY_BYTES: usize = 64 * 1024;

pub const NOT_FOUND: &str = "PERSISTED_QUERY_NOT_FOUND";

#[derive(Clone)]
pub struct PersistedQueries {
    redis: Option<Redis>,
    local: Arc<RwLock<HashMap<String, Arc<str>>>>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Extension {
    version: i64,
    sha256_hash: String,
}

fn refusal(message: &str, code: &str) -> Response {
    let mut e = ServerError::new(message, None);
    e.extensions.get_or_insert_with(Default::default).set("code", code);
    Response::from_errors(vec![e])
}

impl PersistedQueries {
    /// `None` keeps the texts in memory only (the printed schema, tests of
    /// one instance).
    pub fn new(redis: Option<Redis>) -> Self {
        Self { redis, local: Arc::default() }
    }

    fn key(redis: &Redis, hash: &str) -> String {
        redis.key(&format!("apq:{hash}"))
    }

    /// Gives a hash-only request its text; `Err` is the answer to send
    /// instead. A request that brings its text with the hash has the hash
    /// checked, and gets `Ok(Some(hash))`: `register` it once the
    /// operation was found valid, so only documents that validate are
    /// kept. Requests without the extension pass untouched (`Ok(None)`).
    pub async fn resolve(&self, request: &mut async_graphql::Request) -> Result<Option<String>, Response> {
        let Some(value) = request.extensions.remove("persistedQuery") else { return Ok(None) };
        let ext: Extension =
            value.into_json().ok().and_then(|v| serde_json::from_value(v).ok()).ok_or_else(|| {
                refusal("persistedQuery must be { version: 1, sha256Hash }", "BAD_USER_INPUT")
            })?;
        if ext.version != 1 {
            return Err(refusal("PersistedQueryNotSupported: only version 1 is supported", "BAD_USER_INPUT"));
        }
        let hash = ext.sha256_hash.to_ascii_lowercase();
        if request.query.is_empty() {
            return match self.get(&hash).await {
                Some(text) => {
                    request.query = text.to_string();
                    Ok(None)
                }
                None => Err(refusal("PersistedQueryNotFound", NOT_FOUND)),
            };
        }
        let actual = hex::encode(Sha256::digest(request.query.as_bytes()));
        if actual != hash {
            return Err(refusal("provided sha does not match query", "BAD_USER_INPUT"));
        }
        Ok((request.query.len() <= MAX_QUERY_BYTES).then_some(hash))
    }

    /// Keeps `text` under `hash` when `response` shows the operation ran:
    /// a document refused before execution (parse, validation, limits) is
    /// not kept, so the store holds only operations this schema runs.
    pub async fn register(&self, hash: String, text: &str, response: &Response) {
        if !super::refused_before_running(response) {
            self.put(hash, text).await;
        }
    }

    async fn get(&self, hash: &str) -> Option<Arc<str>> {
        if let Some(t) = self.local.read().unwrap_or_else(PoisonError::into_inner).get(hash) {
            return Some(t.clone());
        }
        let redis = self.redis.as_ref()?;
        // Read and kept another TTL: a query apps still send never expires.
        let text: Option<String> = async {
            let mut conn = redis.conn().await.ok()?;
            redis::cmd("GETEX")
                .arg(Self::key(redis, hash))
                .arg("EX")
                .arg(TTL_SECONDS)
                .query_async(&mut conn)
                .await
                .inspect_err(|e| tracing::warn!(error = %e, "persisted query lookup failed"))
                .ok()?
        }
        .await;
        let text: Arc<str> = text?.into();
        self.remember(hash.to_owned(), text.clone());
        Some(text)
    }

    async fn put(&self, hash: String, text: &str) {
        if self.local.read().unwrap_or_else(PoisonError::into_inner).contains_key(&hash) {
            return;
        }
        if let Some(redis) = &self.redis {
            let stored: Result<(), String> = async {
                let mut conn = redis.conn().await.map_err(|e| e.to_string())?;
                redis::cmd("SET")
                    .arg(Self::key(redis, &hash))
                    .arg(text)
                    .arg("EX")
                    .arg(TTL_SECONDS)
                    .query_async::<()>(&mut conn)
                    .await
                    .map_err(|e| e.to_string())
            }
            .await;
            // The client sent the text, so this request runs anyway; the
            // next hash-only one is answered NotFound and resends it.
            if let Err(e) = stored {
                tracing::warn!(error = %e, "persisted query not stored");
            }
        }
        self.remember(hash, text.into());
    }

    fn remember(&self, hash: String, text: Arc<str>) {
        let mut map = self.local.write().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= MAX_LOCAL {
            map.clear();
        }
        map.insert(hash, text);
    }
}
