//! Redis: the shared connection and the key prefix every key goes through.
//!
//! Commands go over one multiplexed connection per process (redis-rs'
//! `ConnectionManager`: requests from every task are pipelined on it, and it
//! reconnects by itself). A pool would add nothing but a round trip: the
//! deadpool-redis pool sent `UNWATCH` + `PING` before every checkout, which
//! doubled the Redis round trips of each request. Nothing here may use
//! `WATCH` or a blocking command on this connection; pub/sub listeners open
//! their own connections from [`Redis::url`].

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::Result;
use crate::config::RedisSettings;

/// Timeouts of every Redis connection manager of Mage: redis 1.x's 500 ms
/// default response timeout turns a slow reply of a busy server into an
/// error, which also silently stops an apalis worker's stream
/// (apalis-redis #76).
pub(crate) fn connection_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_response_timeout(Some(Duration::from_secs(10)))
        .set_connection_timeout(Some(Duration::from_secs(5)))
}

#[derive(Clone)]
pub struct Redis {
    conn: ConnectionManager,
    prefix: String,
    url: String,
}

impl Redis {
    /// Connects lazily: the first command connects, so a process can start
    /// before Redis does (readiness reports it until then).
    pub fn new(settings: &RedisSettings) -> Result<Self> {
        let client = redis::Client::open(settings.url.as_str())?;
        let conn = ConnectionManager::new_lazy_with_config(client, connection_config())?;
        Ok(Self { conn, prefix: settings.prefix.clone(), url: settings.url.clone() })
    }

    /// The full name of a key or channel: the deployment's prefix + `name`.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// A handle on the shared connection (cheap to clone); async to keep
    /// call sites independent of how connections are managed.
    pub async fn conn(&self) -> Result<ConnectionManager> {
        Ok(self.conn.clone())
    }

    /// `SET key holder NX PX ttl`: true when this call took the key (a lock
    /// or a once-per-period marker that nobody else holds).
    pub async fn claim(&self, key: &str, holder: &str, ttl: std::time::Duration) -> Result<bool> {
        let mut conn = self.conn().await?;
        let set: Option<String> = redis::cmd("SET")
            .arg(key)
            .arg(holder)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64)
            .query_async(&mut conn)
            .await?;
        Ok(set.is_some())
    }

    pub async fn ping(&self) -> Result<()> {
        let mut conn = self.conn().await?;
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(())
    }
}
