//! Redis: the shared connection pool and the key prefix every key goes through.

use deadpool_redis::{Config, Pool, Runtime};

use crate::config::RedisSettings;
use crate::{Error, Result};

#[derive(Clone)]
pub struct Redis {
    pool: Pool,
    prefix: String,
    url: String,
}

impl Redis {
    pub fn new(settings: &RedisSettings) -> Result<Self> {
        let pool = Config::from_url(settings.url.clone())
            .builder()
            .map_err(|e| Error::Pool(e.to_string()))?
            .max_size(32)
            .wait_timeout(Some(std::time::Duration::from_secs(5)))
            .create_timeout(Some(std::time::Duration::from_secs(5)))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| Error::Pool(e.to_string()))?;
        Ok(Self { pool, prefix: settings.prefix.clone(), url: settings.url.clone() })
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

    pub async fn conn(&self) -> Result<deadpool_redis::Connection> {
        Ok(self.pool.get().await?)
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
