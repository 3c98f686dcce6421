//! Settings. Every option is a clap argument that is also read from the
//! environment; `resolve` turns the raw arguments into checked settings and
//! reports a missing or malformed one as a single line naming it.

use std::net::SocketAddr;
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
    fn new(name: &'static str, problem: impl Into<String>) -> Self {
        Self { name, problem: problem.into() }
    }
}

#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL URL, e.g. postgres://postgres@127.0.0.1:5432/mage
    #[arg(long, env = "DATABASE_URL", value_name = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Connections in this process's PostgreSQL pool
    #[arg(long, env = "MAGE_DB_POOL_SIZE", value_name = "MAGE_DB_POOL_SIZE", default_value_t = 16)]
    pub db_pool_size: usize,
}

impl DatabaseArgs {
    pub fn resolve(&self) -> Result<DatabaseSettings, ConfigError> {
        let url = required("DATABASE_URL", &self.database_url)?;
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(ConfigError::new("DATABASE_URL", "must start with postgres:// or postgresql://"));
        }
        if self.db_pool_size == 0 {
            return Err(ConfigError::new("MAGE_DB_POOL_SIZE", "must be at least 1"));
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
    #[arg(long, env = "REDIS_URL", value_name = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Prefix of every Redis key and channel Mage uses, so deployments (and
    /// tests) can share one Redis
    #[arg(long, env = "MAGE_REDIS_PREFIX", value_name = "MAGE_REDIS_PREFIX", default_value = "mage:")]
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

#[derive(Debug, Clone, Args)]
pub struct MigrateArgs {
    /// Do not apply pending database migrations at start
    #[arg(long, env = "MAGE_SKIP_MIGRATIONS", value_name = "MAGE_SKIP_MIGRATIONS")]
    pub skip_migrations: bool,
}

#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// Address the HTTP server listens on
    #[arg(long, env = "MAGE_ADDR", value_name = "MAGE_ADDR", default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// Public base URL of this deployment (links, checkout return URLs);
    /// defaults to http://MAGE_ADDR
    #[arg(long, env = "MAGE_PUBLIC_URL", value_name = "MAGE_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Secret that signs access tokens (HS256), at least 32 bytes; `mage dev`
    /// falls back to a development secret with a warning
    #[arg(long, env = "MAGE_JWT_SECRET", value_name = "MAGE_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Lifetime of an access token, in seconds
    #[arg(long, env = "MAGE_TOKEN_TTL_SECONDS", value_name = "MAGE_TOKEN_TTL_SECONDS", default_value_t = 7 * 24 * 3600)]
    pub token_ttl_seconds: u64,
    /// Credits granted to every new account
    #[arg(long, env = "MAGE_SIGNUP_CREDITS", value_name = "MAGE_SIGNUP_CREDITS", default_value_t = 100)]
    pub signup_credits: u32,
    /// Longest a GraphQL HTTP request may take, in seconds
    #[arg(
        long,
        env = "MAGE_REQUEST_TIMEOUT_SECONDS",
        value_name = "MAGE_REQUEST_TIMEOUT_SECONDS",
        default_value_t = 30
    )]
    pub request_timeout_seconds: u64,
    /// Largest accepted request body, in bytes
    #[arg(long, env = "MAGE_MAX_BODY_BYTES", value_name = "MAGE_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Deepest selection nesting a GraphQL operation may have
    #[arg(long, env = "MAGE_GRAPHQL_MAX_DEPTH", value_name = "MAGE_GRAPHQL_MAX_DEPTH", default_value_t = 16)]
    pub graphql_max_depth: usize,
    /// Origins allowed to call the API from a browser, comma-separated
    /// (default: any origin; tokens, not cookies, carry the identity)
    #[arg(long, env = "MAGE_CORS_ORIGINS", value_name = "MAGE_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,
    /// Highest complexity (fields, multiplied by page sizes) of one operation
    #[arg(
        long,
        env = "MAGE_GRAPHQL_MAX_COMPLEXITY",
        value_name = "MAGE_GRAPHQL_MAX_COMPLEXITY",
        default_value_t = 5000
    )]
    pub graphql_max_complexity: usize,
    /// Generations one user may create per minute (sliding window, shared
    /// by every API instance through Redis)
    #[arg(
        long,
        env = "MAGE_GENERATIONS_PER_MINUTE",
        value_name = "MAGE_GENERATIONS_PER_MINUTE",
        default_value_t = 20
    )]
    pub generations_per_minute: u32,
    /// Generations one user may have queued or running at once
    #[arg(
        long,
        env = "MAGE_ACTIVE_GENERATIONS",
        value_name = "MAGE_ACTIVE_GENERATIONS",
        default_value_t = 4
    )]
    pub active_generations: u32,
    /// Seconds between the server's keep-alive messages on an idle WebSocket
    /// (`ping` or `ka` per subprotocol, plus a WebSocket ping frame); a
    /// socket silent for three of these is closed
    #[arg(
        long,
        env = "MAGE_WS_KEEPALIVE_SECONDS",
        value_name = "MAGE_WS_KEEPALIVE_SECONDS",
        default_value_t = 15
    )]
    pub ws_keepalive_seconds: u64,
    /// Seconds a new WebSocket may take to send `connection_init`
    #[arg(
        long,
        env = "MAGE_WS_INIT_TIMEOUT_SECONDS",
        value_name = "MAGE_WS_INIT_TIMEOUT_SECONDS",
        default_value_t = 10
    )]
    pub ws_init_timeout_seconds: u64,
    /// Stripe secret key (`sk_live_...` / `sk_test_...`); without it
    /// checkout is only available under `mage dev`, as a local page
    #[arg(long, env = "STRIPE_SECRET_KEY", value_name = "STRIPE_SECRET_KEY", hide_env_values = true)]
    pub stripe_secret_key: Option<String>,
    /// Signing secret of the Stripe webhook endpoint (`whsec_...`); `mage
    /// dev` falls back to a development secret
    #[arg(long, env = "STRIPE_WEBHOOK_SECRET", value_name = "STRIPE_WEBHOOK_SECRET", hide_env_values = true)]
    pub stripe_webhook_secret: Option<String>,
    /// Base URL of the Stripe API (default https://api.stripe.com; tests
    /// point it at a fake)
    #[arg(long, env = "STRIPE_API_BASE", value_name = "STRIPE_API_BASE")]
    pub stripe_api_base: Option<String>,
    /// Checkouts one user may start per minute
    #[arg(
        long,
        env = "MAGE_CHECKOUTS_PER_MINUTE",
        value_name = "MAGE_CHECKOUTS_PER_MINUTE",
        default_value_t = 5
    )]
    pub checkouts_per_minute: u32,
    /// Root fields one mutation may have (each alias counts)
    #[arg(
        long,
        env = "MAGE_GRAPHQL_MAX_ROOT_MUTATIONS",
        value_name = "MAGE_GRAPHQL_MAX_ROOT_MUTATIONS",
        default_value_t = 10
    )]
    pub graphql_max_root_mutations: usize,
    /// Failed logins for one email per 15 minutes (shared through Redis)
    #[arg(
        long,
        env = "MAGE_LOGIN_FAILURES_PER_EMAIL",
        value_name = "MAGE_LOGIN_FAILURES_PER_EMAIL",
        default_value_t = 10
    )]
    pub login_failures_per_email: u32,
    /// Failed logins from one client IP per 15 minutes (shared through Redis)
    #[arg(
        long,
        env = "MAGE_LOGIN_FAILURES_PER_IP",
        value_name = "MAGE_LOGIN_FAILURES_PER_IP",
        default_value_t = 100
    )]
    pub login_failures_per_ip: u32,
    /// Accounts one client IP may register per hour (shared through Redis)
    #[arg(
        long,
        env = "MAGE_SIGNUPS_PER_IP_PER_HOUR",
        value_name = "MAGE_SIGNUPS_PER_IP_PER_HOUR",
        default_value_t = 10
    )]
    pub signups_per_ip_per_hour: u32,
    /// Proxies (CIDRs, comma-separated) whose X-Forwarded-For entry names
    /// the client; without them the client is the connection's peer
    #[arg(long, env = "MAGE_TRUSTED_PROXIES", value_name = "MAGE_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<String>,
    /// Seconds a client may take to send a request's headers (also how long
    /// a new connection may stay silent)
    #[arg(
        long,
        env = "MAGE_HEADER_READ_TIMEOUT_SECONDS",
        value_name = "MAGE_HEADER_READ_TIMEOUT_SECONDS",
        default_value_t = 10
    )]
    pub header_read_timeout_seconds: u64,
    /// Seconds an idle keep-alive connection stays open
    #[arg(
        long,
        env = "MAGE_KEEPALIVE_TIMEOUT_SECONDS",
        value_name = "MAGE_KEEPALIVE_TIMEOUT_SECONDS",
        default_value_t = 60
    )]
    pub keepalive_timeout_seconds: u64,
    /// HTTP connections open at once; more wait to be accepted
    #[arg(long, env = "MAGE_MAX_CONNECTIONS", value_name = "MAGE_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,
    /// HTTP connections one client address may hold open at once (trusted
    /// proxies excepted); more are closed
    #[arg(
        long,
        env = "MAGE_MAX_CONNECTIONS_PER_IP",
        value_name = "MAGE_MAX_CONNECTIONS_PER_IP",
        default_value_t = 256
    )]
    pub max_connections_per_ip: usize,
    /// Seconds a response may make no progress (the client stopped reading)
    /// before its connection is closed
    #[arg(
        long,
        env = "MAGE_SEND_TIMEOUT_SECONDS",
        value_name = "MAGE_SEND_TIMEOUT_SECONDS",
        default_value_t = 60
    )]
    pub send_timeout_seconds: u64,
    /// Operations (subscriptions, queries) one WebSocket may run at once
    #[arg(
        long,
        env = "MAGE_WS_MAX_OPERATIONS",
        value_name = "MAGE_WS_MAX_OPERATIONS",
        default_value_t = 100
    )]
    pub ws_max_operations: usize,
    /// WebSockets one client IP may hold open on one `serve` process
    #[arg(
        long,
        env = "MAGE_WS_MAX_SOCKETS_PER_IP",
        value_name = "MAGE_WS_MAX_SOCKETS_PER_IP",
        default_value_t = 100
    )]
    pub ws_max_sockets_per_ip: usize,
    /// Serve Prometheus metrics on a listener of their own, at
    /// http://ADDR/metrics (`work` and `serve`)
    #[arg(long, env = "MAGE_METRICS_ADDR", value_name = "MAGE_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Bearer token that opens /metrics on the public port (without it,
    /// /metrics is not served there, except under `mage dev`)
    #[arg(long, env = "MAGE_METRICS_TOKEN", value_name = "MAGE_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,
}

/// Limits on signing in and up, counted in Redis so every instance shares
/// them.
#[derive(Debug, Clone, Copy)]
pub struct AuthLimits {
    pub login_failures_per_email: u32,
    pub login_failures_per_ip: u32,
    pub signups_per_ip_per_hour: u32,
}

/// How the HTTP server treats connections.
#[derive(Debug, Clone)]
pub struct ConnectionSettings {
    pub header_read_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub send_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// Peers whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub ws_max_operations: usize,
    pub ws_max_sockets_per_ip: usize,
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

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub addr: SocketAddr,
    pub public_url: String,
    pub jwt_secret: String,
    pub token_ttl: Duration,
    pub signup_credits: i64,
    pub request_timeout: Duration,
    pub max_body_bytes: usize,
    pub graphql_max_depth: usize,
    pub graphql_max_complexity: usize,
    pub cors_origins: Vec<String>,
    pub generation_limits: crate::limits::GenerationLimits,
    pub ws_keepalive: Duration,
    pub ws_init_timeout: Duration,
    /// `mage dev`: development conveniences are allowed.
    pub dev_mode: bool,
    pub payments: PaymentSettings,
    pub graphql_max_root_mutations: usize,
    pub auth_limits: AuthLimits,
    pub connections: ConnectionSettings,
    /// Where /metrics has a listener of its own.
    pub metrics_addr: Option<SocketAddr>,
    /// Opens /metrics on the public port.
    pub metrics_token: Option<String>,
    /// On SIGTERM, how long requests in flight may go on before the process
    /// exits anyway.
    pub shutdown_grace: Duration,
}

impl ServerArgs {
    /// `dev_mode` is true only under `mage dev`, the one place a missing JWT
    /// secret may fall back to the development default.
    pub fn resolve(&self, dev_mode: bool) -> Result<ServerSettings, ConfigError> {
        let jwt_secret = match (&self.jwt_secret, dev_mode) {
            (Some(s), false) if s == DEV_JWT_SECRET => {
                return Err(ConfigError::new(
                    "MAGE_JWT_SECRET",
                    "is the public development secret: anyone could sign tokens; set a secret of your own",
                ));
            }
            (Some(s), _) if s.len() >= 32 => s.clone(),
            (Some(_), _) => {
                return Err(ConfigError::new("MAGE_JWT_SECRET", "must be at least 32 bytes long"));
            }
            (None, true) => {
                tracing::warn!(
                    "MAGE_JWT_SECRET is not set: using the development secret; \
                     never run `mage dev` in production"
                );
                DEV_JWT_SECRET.to_owned()
            }
            (None, false) => return Err(ConfigError::new("MAGE_JWT_SECRET", "is not set")),
        };
        let public_url = match &self.public_url {
            Some(u) if u.starts_with("http://") || u.starts_with("https://") => {
                u.trim_end_matches('/').to_owned()
            }
            Some(_) => {
                return Err(ConfigError::new("MAGE_PUBLIC_URL", "must start with http:// or https://"));
            }
            None => format!("http://{}", self.addr),
        };
        for (name, value) in [
            ("MAGE_TOKEN_TTL_SECONDS", self.token_ttl_seconds),
            ("MAGE_REQUEST_TIMEOUT_SECONDS", self.request_timeout_seconds),
            ("MAGE_MAX_BODY_BYTES", self.max_body_bytes as u64),
            ("MAGE_GRAPHQL_MAX_DEPTH", self.graphql_max_depth as u64),
            ("MAGE_GRAPHQL_MAX_COMPLEXITY", self.graphql_max_complexity as u64),
            ("MAGE_GENERATIONS_PER_MINUTE", u64::from(self.generations_per_minute)),
            ("MAGE_ACTIVE_GENERATIONS", u64::from(self.active_generations)),
            ("MAGE_WS_KEEPALIVE_SECONDS", self.ws_keepalive_seconds),
            ("MAGE_WS_INIT_TIMEOUT_SECONDS", self.ws_init_timeout_seconds),
            ("MAGE_CHECKOUTS_PER_MINUTE", u64::from(self.checkouts_per_minute)),
            ("MAGE_GRAPHQL_MAX_ROOT_MUTATIONS", self.graphql_max_root_mutations as u64),
            ("MAGE_LOGIN_FAILURES_PER_EMAIL", u64::from(self.login_failures_per_email)),
            ("MAGE_LOGIN_FAILURES_PER_IP", u64::from(self.login_failures_per_ip)),
            ("MAGE_SIGNUPS_PER_IP_PER_HOUR", u64::from(self.signups_per_ip_per_hour)),
            ("MAGE_HEADER_READ_TIMEOUT_SECONDS", self.header_read_timeout_seconds),
            ("MAGE_KEEPALIVE_TIMEOUT_SECONDS", self.keepalive_timeout_seconds),
            ("MAGE_MAX_CONNECTIONS", self.max_connections as u64),
            ("MAGE_MAX_CONNECTIONS_PER_IP", self.max_connections_per_ip as u64),
            ("MAGE_SEND_TIMEOUT_SECONDS", self.send_timeout_seconds),
            ("MAGE_WS_MAX_OPERATIONS", self.ws_max_operations as u64),
            ("MAGE_WS_MAX_SOCKETS_PER_IP", self.ws_max_sockets_per_ip as u64),
        ] {
            if value == 0 {
                return Err(ConfigError::new(name, "must be greater than 0"));
            }
        }
        for origin in &self.cors_origins {
            if !(origin.starts_with("http://") || origin.starts_with("https://")) {
                return Err(ConfigError::new("MAGE_CORS_ORIGINS", format!("{origin:?} is not an origin")));
            }
        }
        let trusted_proxies = self
            .trusted_proxies
            .iter()
            .map(|p| p.trim())
            .filter(|p| !p.is_empty())
            .map(|p| {
                p.parse::<ipnet::IpNet>()
                    .or_else(|_| p.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| {
                        ConfigError::new("MAGE_TRUSTED_PROXIES", format!("{p:?} is not a CIDR or an IP"))
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let metrics_token = self.metrics_token.clone().filter(|t| !t.is_empty());
        if metrics_token.as_ref().is_some_and(|t| t.len() < 16) {
            return Err(ConfigError::new("MAGE_METRICS_TOKEN", "must be at least 16 characters"));
        }
        Ok(ServerSettings {
            graphql_max_root_mutations: self.graphql_max_root_mutations,
            auth_limits: AuthLimits {
                login_failures_per_email: self.login_failures_per_email,
                login_failures_per_ip: self.login_failures_per_ip,
                signups_per_ip_per_hour: self.signups_per_ip_per_hour,
            },
            connections: ConnectionSettings {
                header_read_timeout: Duration::from_secs(self.header_read_timeout_seconds),
                keepalive_timeout: Duration::from_secs(self.keepalive_timeout_seconds),
                send_timeout: Duration::from_secs(self.send_timeout_seconds),
                max_connections: self.max_connections,
                max_connections_per_ip: self.max_connections_per_ip,
                trusted_proxies,
                ws_max_operations: self.ws_max_operations,
                ws_max_sockets_per_ip: self.ws_max_sockets_per_ip,
            },
            metrics_addr: self.metrics_addr,
            metrics_token,
            shutdown_grace: Duration::from_secs(30),
            addr: self.addr,
            public_url,
            jwt_secret,
            token_ttl: Duration::from_secs(self.token_ttl_seconds),
            signup_credits: i64::from(self.signup_credits),
            request_timeout: Duration::from_secs(self.request_timeout_seconds),
            max_body_bytes: self.max_body_bytes,
            graphql_max_depth: self.graphql_max_depth,
            graphql_max_complexity: self.graphql_max_complexity,
            cors_origins: self.cors_origins.clone(),
            generation_limits: crate::limits::GenerationLimits {
                per_minute: self.generations_per_minute,
                active: self.active_generations,
            },
            ws_keepalive: Duration::from_secs(self.ws_keepalive_seconds),
            ws_init_timeout: Duration::from_secs(self.ws_init_timeout_seconds),
            dev_mode,
            payments: self.payments(dev_mode)?,
        })
    }

    fn payments(&self, dev_mode: bool) -> Result<PaymentSettings, ConfigError> {
        let key = self.stripe_secret_key.clone().filter(|k| !k.is_empty());
        if let Some(k) = &key
            && !(k.starts_with("sk_") || k.starts_with("rk_"))
        {
            return Err(ConfigError::new(
                "STRIPE_SECRET_KEY",
                "must be a secret key (sk_...) or a restricted key",
            ));
        }
        let webhook_secret = match (self.stripe_webhook_secret.clone().filter(|s| !s.is_empty()), dev_mode) {
            (Some(s), false) if s == DEV_WEBHOOK_SECRET => {
                return Err(ConfigError::new(
                    "STRIPE_WEBHOOK_SECRET",
                    "is the public development secret: anyone could sign payment events; use your endpoint's",
                ));
            }
            (Some(s), _) => Some(s),
            (None, true) => Some(DEV_WEBHOOK_SECRET.to_owned()),
            (None, false) if key.is_some() => {
                return Err(ConfigError::new(
                    "STRIPE_WEBHOOK_SECRET",
                    "is required with STRIPE_SECRET_KEY: without it no payment would ever be credited",
                ));
            }
            (None, false) => None,
        };
        let base = match &self.stripe_api_base {
            Some(u) if u.starts_with("http://") || u.starts_with("https://") => {
                Some(u.trim_end_matches('/').to_owned())
            }
            Some(_) => {
                return Err(ConfigError::new("STRIPE_API_BASE", "must start with http:// or https://"));
            }
            None => None,
        };
        Ok(PaymentSettings {
            stripe_secret_key: key,
            webhook_secret,
            stripe_api_base: base,
            checkouts_per_minute: self.checkouts_per_minute,
            stripe_timeout: Duration::from_secs(10),
        })
    }
}

/// Where generated media is kept: a local folder that `mage serve` serves
/// at /media (the default), or an S3-compatible bucket.
#[derive(Debug, Clone, Args)]
pub struct StorageArgs {
    /// Folder of the local media store, served at /media (used unless
    /// MAGE_STORAGE_URL is set)
    #[arg(long, env = "MAGE_MEDIA_DIR", value_name = "MAGE_MEDIA_DIR", default_value = ".mage/media")]
    pub media_dir: PathBuf,
    /// Bucket for media instead of the local folder, s3://bucket[/prefix]
    /// (credentials, region and endpoint from the usual AWS_* variables;
    /// /media is then not served)
    #[arg(long, env = "MAGE_STORAGE_URL", value_name = "MAGE_STORAGE_URL")]
    pub storage_url: Option<String>,
    /// Public base URL of the media (a CDN, or the bucket's URL); required
    /// with MAGE_STORAGE_URL, and MAGE_PUBLIC_URL/media by default otherwise
    #[arg(long, env = "MAGE_MEDIA_BASE_URL", value_name = "MAGE_MEDIA_BASE_URL")]
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

/// Settings of `mage work` (and of the workers inside `mage dev`).
#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    /// Render backend: `synthetic` (ffmpeg on the CPU, no GPU needed) or `comfyui` (GPU hosts)
    #[arg(
        long,
        env = "MAGE_RENDER_BACKEND",
        value_name = "MAGE_RENDER_BACKEND",
        default_value = "synthetic"
    )]
    pub render_backend: String,
    /// ComfyUI servers, comma-separated (e.g. http://gpu1:8188,http://gpu2:8188); required with comfyui
    #[arg(long, env = "MAGE_COMFYUI_URLS", value_name = "MAGE_COMFYUI_URLS")]
    pub comfyui_urls: Option<String>,
    /// Folder of the ComfyUI workflow templates, one `<workflow>.json` per model workflow
    #[arg(
        long,
        env = "MAGE_COMFYUI_WORKFLOWS",
        value_name = "MAGE_COMFYUI_WORKFLOWS",
        default_value = "workflows/comfyui"
    )]
    pub comfyui_workflows: PathBuf,
    /// Render jobs run at once: per process for synthetic (default 2), per ComfyUI URL for comfyui (default 1)
    #[arg(long, env = "MAGE_RENDER_CONCURRENCY", value_name = "MAGE_RENDER_CONCURRENCY")]
    pub render_concurrency: Option<usize>,
    /// Transcode jobs one worker process runs at once
    #[arg(
        long,
        env = "MAGE_TRANSCODE_CONCURRENCY",
        value_name = "MAGE_TRANSCODE_CONCURRENCY",
        default_value_t = 1
    )]
    pub transcode_concurrency: usize,
    /// Attempts a job gets before its generation fails and its credits are released (a model may override it)
    #[arg(long, env = "MAGE_JOB_ATTEMPTS", value_name = "MAGE_JOB_ATTEMPTS", default_value_t = 3)]
    pub job_attempts: usize,
    /// Longest one render attempt may take (a model may override it)
    #[arg(
        long,
        env = "MAGE_RENDER_TIMEOUT_SECONDS",
        value_name = "MAGE_RENDER_TIMEOUT_SECONDS",
        default_value_t = 7200
    )]
    pub render_timeout_seconds: u64,
    /// Wait before the second attempt of a render; doubles for each further one
    #[arg(
        long,
        env = "MAGE_RETRY_BACKOFF_SECONDS",
        value_name = "MAGE_RETRY_BACKOFF_SECONDS",
        default_value_t = 30
    )]
    pub retry_backoff_seconds: u64,
    /// How often the sweeper looks for lost jobs, dead renders and open holds
    #[arg(
        long,
        env = "MAGE_SWEEP_INTERVAL_SECONDS",
        value_name = "MAGE_SWEEP_INTERVAL_SECONDS",
        default_value_t = 60
    )]
    pub sweep_interval_seconds: u64,
    /// A rendering or transcoding generation silent this long is failed by the sweeper and its credits released
    #[arg(
        long,
        env = "MAGE_STALE_AFTER_SECONDS",
        value_name = "MAGE_STALE_AFTER_SECONDS",
        default_value_t = 900
    )]
    pub stale_after_seconds: u64,
    /// Days a finished generation's media are kept; older ones are deleted
    /// from storage and shown as expired (unset: kept forever)
    #[arg(long, env = "MAGE_MEDIA_RETENTION_DAYS", value_name = "MAGE_MEDIA_RETENTION_DAYS")]
    pub media_retention_days: Option<u32>,
    /// On SIGTERM, how long running jobs may go on before renders are handed back to the queue
    #[arg(
        long,
        env = "MAGE_SHUTDOWN_GRACE_SECONDS",
        value_name = "MAGE_SHUTDOWN_GRACE_SECONDS",
        default_value_t = 30
    )]
    pub shutdown_grace_seconds: u64,
    /// This worker process's name, unique among all workers (default: host-pid)
    #[arg(long, env = "MAGE_WORKER_NAME", value_name = "MAGE_WORKER_NAME")]
    pub worker_name: Option<String>,
    /// When the daily statistics of the previous day are computed (cron
    /// with seconds, in UTC)
    #[arg(long, env = "MAGE_STATS_CRON", value_name = "MAGE_STATS_CRON", default_value = "0 5 0 * * *")]
    pub stats_cron: String,
    /// Time zone the statistics' days are cut in (IANA name)
    #[arg(long, env = "MAGE_STATS_TZ", value_name = "MAGE_STATS_TZ", default_value = "UTC")]
    pub stats_tz: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenderBackendKind {
    Synthetic,
    /// One slot set per server URL.
    ComfyUi {
        urls: Vec<String>,
        workflows: PathBuf,
    },
}

#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub render_backend: RenderBackendKind,
    /// Per process (synthetic) or per ComfyUI URL.
    pub render_concurrency: usize,
    pub transcode_concurrency: usize,
    pub job_attempts: usize,
    pub render_timeout: Duration,
    pub retry_backoff: Duration,
    pub sweep_interval: Duration,
    pub stale_after: Duration,
    pub shutdown_grace: Duration,
    pub worker_name: String,
    pub stats_cron: String,
    pub stats_tz: String,
    pub media_retention: Option<Duration>,
}

impl WorkerSettings {
    /// Settings for tests and tools: the synthetic backend and the defaults.
    pub fn synthetic(worker_name: &str) -> Self {
        Self {
            render_backend: RenderBackendKind::Synthetic,
            render_concurrency: 2,
            transcode_concurrency: 1,
            job_attempts: 3,
            render_timeout: Duration::from_secs(7200),
            retry_backoff: Duration::from_secs(30),
            sweep_interval: Duration::from_secs(60),
            stale_after: Duration::from_secs(900),
            shutdown_grace: Duration::from_secs(30),
            worker_name: worker_name.to_owned(),
            stats_cron: "0 5 0 * * *".to_owned(),
            stats_tz: "UTC".to_owned(),
            media_retention: None,
        }
    }

    /// Render jobs this process runs at once, over all its backends.
    pub fn render_slots(&self) -> usize {
        match &self.render_backend {
            RenderBackendKind::Synthetic => self.render_concurrency,
            RenderBackendKind::ComfyUi { urls, .. } => urls.len() * self.render_concurrency,
        }
    }
}

impl WorkerArgs {
    pub fn resolve(&self) -> Result<WorkerSettings, ConfigError> {
        for (name, value) in [
            ("MAGE_RENDER_CONCURRENCY", self.render_concurrency.unwrap_or(1)),
            ("MAGE_TRANSCODE_CONCURRENCY", self.transcode_concurrency),
            ("MAGE_JOB_ATTEMPTS", self.job_attempts),
        ] {
            if value == 0 {
                return Err(ConfigError::new(name, "must be greater than 0"));
            }
        }
        for (name, value) in [
            ("MAGE_RENDER_TIMEOUT_SECONDS", self.render_timeout_seconds),
            ("MAGE_SWEEP_INTERVAL_SECONDS", self.sweep_interval_seconds),
            ("MAGE_STALE_AFTER_SECONDS", self.stale_after_seconds),
        ] {
            if value == 0 {
                return Err(ConfigError::new(name, "must be greater than 0"));
            }
        }
        let render_backend = match self.render_backend.trim() {
            "synthetic" => RenderBackendKind::Synthetic,
            "comfyui" => {
                let urls: Vec<String> = self
                    .comfyui_urls
                    .as_deref()
                    .unwrap_or_default()
                    .split(',')
                    .map(|u| u.trim().trim_end_matches('/').to_owned())
                    .filter(|u| !u.is_empty())
                    .collect();
                if urls.is_empty() {
                    return Err(ConfigError::new(
                        "MAGE_COMFYUI_URLS",
                        "is required with MAGE_RENDER_BACKEND=comfyui",
                    ));
                }
                if let Some(bad) =
                    urls.iter().find(|u| !(u.starts_with("http://") || u.starts_with("https://")))
                {
                    return Err(ConfigError::new(
                        "MAGE_COMFYUI_URLS",
                        format!("{bad:?} must start with http:// or https://"),
                    ));
                }
                let mut seen = std::collections::HashSet::new();
                if let Some(dup) = urls.iter().find(|u| !seen.insert(*u)) {
                    return Err(ConfigError::new("MAGE_COMFYUI_URLS", format!("{dup} is listed twice")));
                }
                RenderBackendKind::ComfyUi { urls, workflows: self.comfyui_workflows.clone() }
            }
            other => {
                return Err(ConfigError::new(
                    "MAGE_RENDER_BACKEND",
                    format!("unknown backend {other:?} (this build has: synthetic, comfyui)"),
                ));
            }
        };
        let default_concurrency = match render_backend {
            RenderBackendKind::Synthetic => 2,
            // ComfyUI runs one prompt at a time; more would only wait in its
            // in-memory queue, which a restart loses.
            RenderBackendKind::ComfyUi { .. } => 1,
        };
        let worker_name = match self.worker_name.as_deref().map(str::trim) {
            Some(n) if !n.is_empty() => n.to_owned(),
            _ => default_worker_name(),
        };
        Ok(WorkerSettings {
            render_backend,
            render_concurrency: self.render_concurrency.unwrap_or(default_concurrency),
            transcode_concurrency: self.transcode_concurrency,
            job_attempts: self.job_attempts,
            render_timeout: Duration::from_secs(self.render_timeout_seconds),
            retry_backoff: Duration::from_secs(self.retry_backoff_seconds),
            sweep_interval: Duration::from_secs(self.sweep_interval_seconds),
            stale_after: Duration::from_secs(self.stale_after_seconds),
            shutdown_grace: Duration::from_secs(self.shutdown_grace_seconds),
            worker_name,
            stats_cron: self.stats_cron.trim().to_owned(),
            stats_tz: self.stats_tz.trim().to_owned(),
            media_retention: match self.media_retention_days {
                Some(0) => {
                    return Err(ConfigError::new("MAGE_MEDIA_RETENTION_DAYS", "must be greater than 0"));
                }
                d => d.map(|d| Duration::from_secs(u64::from(d) * 86_400)),
            },
        })
    }
}

/// Host name + pid: unique per process, and stable for its life, which
/// apalis-redis needs to hand a dead worker's tasks to another (apalis #504).
pub fn default_worker_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "mage".to_owned());
    format!("{host}-{}", std::process::id())
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
