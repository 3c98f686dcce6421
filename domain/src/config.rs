//! Settings every process shares (database, Redis, migrations, media
//! storage, Stripe as the domain calls it). Each crate keeps its own beside
//! its code (`mage_api::settings`, `mage_jobs::settings`); the binary
//! flattens the groups it needs. Every option is a clap argument that is
//! also read from the environment; `resolve` turns the raw arguments into
//! checked settings and reports a missing or malformed one as a single line
//! naming it; ranges are clap's to check.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use thiserror::Error;

/// Used by `mage dev` only, and loudly: a token signed with it is worthless.
pub const DEV_JWT_SECRET: &str = "mage-development-secret-do-not-use-in-production";
/// Signs the events of the development checkout page under `mage dev`.
pub const DEV_WEBHOOK_SECRET: &str = "whsec_mage_development_do_not_use_in_production";

#[derive(Debug, Error)]
#[error("{name}: {problem}")]
pub struct ConfigError {
    pub name: &'static str,
    pub problem: String,
}

impl ConfigError {
    pub fn new(name: &'static str, problem: impl Into<String>) -> Self {
        Self { name, problem: problem.into() }
    }
}

#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL URL, e.g. postgres://postgres@127.0.0.1:5432/mage
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Connections in this process's PostgreSQL pool
    #[arg(
        long,
        env = "MAGE_DB_POOL_SIZE",
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..),
        default_value_t = 16,
    )]
    pub db_pool_size: usize,
}

impl DatabaseArgs {
    pub fn resolve(&self) -> Result<DatabaseSettings, ConfigError> {
        let url = required("DATABASE_URL", &self.database_url)?;
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(ConfigError::new("DATABASE_URL", "must start with postgres:// or postgresql://"));
        }
        Ok(DatabaseSettings { url, pool_size: self.db_pool_size })
    }
}

#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    pub url: String,
    pub pool_size: usize,
}

#[derive(Debug, Clone, Args)]
pub struct RedisArgs {
    /// Redis URL, e.g. redis://127.0.0.1:6379
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Prefix of every Redis key and channel Mage uses, so deployments (and
    /// tests) can share one Redis
    #[arg(long, env = "MAGE_REDIS_PREFIX", default_value = "mage:")]
    pub redis_prefix: String,
}

impl RedisArgs {
    pub fn resolve(&self) -> Result<RedisSettings, ConfigError> {
        let url = required("REDIS_URL", &self.redis_url)?;
        redis::Client::open(url.as_str())
            .map_err(|e| ConfigError::new("REDIS_URL", format!("not a Redis URL ({e})")))?;
        Ok(RedisSettings { url, prefix: self.redis_prefix.clone() })
    }
}

#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub url: String,
    pub prefix: String,
}

/// Shared by `serve` and `work`, so `dev` reads it once.
#[derive(Debug, Clone, Args)]
pub struct ShutdownArgs {
    /// On SIGTERM, how long requests in flight (`serve`) and running jobs
    /// (`work`; renders are then handed back to the queue) may go on before
    /// the process exits anyway
    #[arg(long, env = "MAGE_SHUTDOWN_GRACE_SECONDS", default_value_t = 30)]
    pub shutdown_grace_seconds: u64,
}

impl ShutdownArgs {
    pub fn grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_seconds)
    }
}

/// Shared by `serve` and `work`, so `dev` reads it once.
#[derive(Debug, Clone, Args)]
pub struct MetricsArgs {
    /// Serve Prometheus metrics on a listener of their own, at
    /// http://ADDR/metrics (`work` and `serve`; default: none)
    #[arg(long, env = "MAGE_METRICS_ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
}

#[derive(Debug, Clone, Args)]
pub struct MigrateArgs {
    /// Do not apply pending database migrations at start
    #[arg(long, env = "MAGE_SKIP_MIGRATIONS")]
    pub skip_migrations: bool,
}

/// Stripe, as the API server uses it.
#[derive(Debug, Clone)]
pub struct PaymentSettings {
    pub stripe_secret_key: Option<String>,
    /// `None`: webhooks are refused (503) until it is set.
    pub webhook_secret: Option<String>,
    pub stripe_api_base: Option<String>,
    pub checkouts_per_minute: u32,
    /// Longest a call to the Stripe API may take.
    pub stripe_timeout: Duration,
}

impl PaymentSettings {
    /// No Stripe account: checkout goes through the development page.
    pub fn development() -> Self {
        Self {
            stripe_secret_key: None,
            webhook_secret: Some(DEV_WEBHOOK_SECRET.to_owned()),
            stripe_api_base: None,
            checkouts_per_minute: 5,
            stripe_timeout: Duration::from_secs(10),
        }
    }
}

/// Where generated media is kept: a local folder that `mage serve` serves
/// at /media (the default), or an S3-compatible bucket.
#[derive(Debug, Clone, Args)]
pub struct StorageArgs {
    /// Folder of the local media store, served at /media (used unless
    /// MAGE_STORAGE_URL is set)
    #[arg(long, env = "MAGE_MEDIA_DIR", default_value = ".mage/media")]
    pub media_dir: PathBuf,
    /// Bucket for media instead of the local folder, s3://bucket[/prefix]
    /// (credentials, region and endpoint from the usual AWS_* variables;
    /// /media is then not served)
    #[arg(long, env = "MAGE_STORAGE_URL")]
    pub storage_url: Option<String>,
    /// Public base URL of the media (a CDN, or the bucket's URL); required
    /// with MAGE_STORAGE_URL, and MAGE_PUBLIC_URL/media by default otherwise
    #[arg(long, env = "MAGE_MEDIA_BASE_URL")]
    pub media_base_url: Option<String>,
}

#[derive(Debug, Clone)]
pub struct StorageSettings {
    /// The local store's folder (unused with `url`).
    pub media_dir: PathBuf,
    /// `s3://bucket[/prefix]`: the bucket, instead of the folder.
    pub url: Option<String>,
    /// Public base URL of the media, without a trailing `/`.
    pub base_url: Option<String>,
}

impl StorageArgs {
    pub fn resolve(&self) -> Result<StorageSettings, ConfigError> {
        let url = self.storage_url.as_deref().map(str::trim).filter(|u| !u.is_empty()).map(str::to_owned);
        let base_url = self.media_base_url.as_deref().map(str::trim).filter(|u| !u.is_empty());
        if let Some(u) = &url {
            let bucket = u.strip_prefix("s3://").map(|rest| rest.split('/').next().unwrap_or_default());
            if bucket.is_none_or(str::is_empty) {
                return Err(ConfigError::new(
                    "MAGE_STORAGE_URL",
                    "must be s3://bucket or s3://bucket/prefix",
                ));
            }
        }
        if url.is_none() && self.media_dir.as_os_str().is_empty() {
            return Err(ConfigError::new("MAGE_MEDIA_DIR", "must not be empty"));
        }
        let base_url = match (&url, base_url) {
            (Some(_), None) => {
                return Err(ConfigError::new("MAGE_MEDIA_BASE_URL", "is required with MAGE_STORAGE_URL"));
            }
            (_, Some(b)) if !(b.starts_with("http://") || b.starts_with("https://")) => {
                return Err(ConfigError::new("MAGE_MEDIA_BASE_URL", "must start with http:// or https://"));
            }
            (_, b) => b.map(|b| b.trim_end_matches('/').to_owned()),
        };
        Ok(StorageSettings { media_dir: self.media_dir.clone(), url, base_url })
    }
}

fn required(name: &'static str, value: &Option<String>) -> Result<String, ConfigError> {
    match value.as_deref().map(str::trim) {
        Some(v) if !v.is_empty() => Ok(v.to_owned()),
        _ => Err(ConfigError::new(name, "is not set")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn storage(url: Option<&str>, base: Option<&str>) -> Result<StorageSettings, ConfigError> {
        StorageArgs {
            media_dir: PathBuf::from(".mage/media"),
            storage_url: url.map(str::to_owned),
            media_base_url: base.map(str::to_owned),
        }
        .resolve()
    }

    #[test]
    fn storage_is_a_local_folder_by_default() {
        let s = storage(None, None).unwrap();
        assert_eq!((s.media_dir, s.url, s.base_url), (PathBuf::from(".mage/media"), None, None));
        // A CDN in front of the local store.
        let s = storage(None, Some("https://cdn.example.com/m/")).unwrap();
        assert_eq!(s.base_url.as_deref(), Some("https://cdn.example.com/m"));
        // Empty means unset.
        assert!(storage(Some(" "), None).unwrap().url.is_none());
    }

    #[test]
    fn a_bucket_needs_an_s3_url_and_a_public_base() {
        let s = storage(Some("s3://bucket/prefix"), Some("https://cdn.example.com")).unwrap();
        assert_eq!(s.url.as_deref(), Some("s3://bucket/prefix"));
        for (url, base, name) in [
            (Some("s3://bucket"), None, "MAGE_MEDIA_BASE_URL"),
            (Some("s3://bucket"), Some("cdn.example.com"), "MAGE_MEDIA_BASE_URL"),
            (Some("https://bucket.example.com"), Some("https://cdn.example.com"), "MAGE_STORAGE_URL"),
            (Some("s3://"), Some("https://cdn.example.com"), "MAGE_STORAGE_URL"),
            (Some("s3:///prefix"), Some("https://cdn.example.com"), "MAGE_STORAGE_URL"),
        ] {
            let e = storage(url, base).unwrap_err();
            assert_eq!(e.name, name, "{url:?} {base:?}: {e}");
        }
    }
}
