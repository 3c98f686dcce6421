//! The settings of `mage serve` (and of the server inside `mage dev`):
//! listening, tokens, GraphQL and HTTP limits, WebSocket timings, Stripe.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
use mage_domain::config::{ConfigError, DEV_JWT_SECRET, DEV_WEBHOOK_SECRET, MetricsArgs, PaymentSettings};
use mage_domain::limits::AuthLimits;

#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    #[command(flatten)]
    pub backends: mage_domain::backends::BackendArgs,
    #[command(flatten)]
    pub webhooks: mage_domain::webhooks::WebhookArgs,
    #[command(flatten)]
    pub stats: mage_domain::stats::StatsArgs,
    /// Address the HTTP server listens on
    #[arg(long, env = "MAGE_ADDR", default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// Public base URL of this deployment (links, checkout return URLs);
    /// defaults to http://MAGE_ADDR
    #[arg(long, env = "MAGE_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Secret that signs access tokens (HS256), at least 32 bytes; `mage dev`
    /// falls back to a development secret with a warning
    #[arg(long, env = "MAGE_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Lifetime of an access token, in seconds; a client refreshes its
    /// session (`refreshSession`) for a new one
    #[arg(
        long,
        env = "MAGE_ACCESS_TOKEN_TTL_SECONDS",
        value_parser = clap::value_parser!(u64).range(1..),
        default_value_t = 900,
    )]
    pub token_ttl_seconds: u64,
    /// Days a session may go without a refresh before it ends
    #[arg(
        long,
        env = "MAGE_SESSION_IDLE_DAYS",
        value_parser = clap::value_parser!(u32).range(1..),
        default_value_t = 30,
    )]
    pub session_idle_days: u32,
    /// Credits granted to every new account
    #[arg(long, env = "MAGE_SIGNUP_CREDITS", default_value_t = 100)]
    pub signup_credits: u32,
    /// Grant the signup credits when the account's email address is
    /// verified instead of at registration
    #[arg(long, env = "MAGE_SIGNUP_BONUS_REQUIRES_VERIFIED_EMAIL")]
    pub signup_bonus_requires_verified_email: bool,
    /// Longest a GraphQL HTTP request may take, in seconds
    #[arg(
        long,
        env = "MAGE_REQUEST_TIMEOUT_SECONDS",
        value_parser = clap::value_parser!(u64).range(1..),
        default_value_t = 30,
    )]
    pub request_timeout_seconds: u64,
    /// Largest accepted request body, in bytes
    #[arg(
        long,
        env = "MAGE_MAX_BODY_BYTES",
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..),
        default_value_t = 1024 * 1024,
    )]
    pub max_body_bytes: usize,
    /// Deepest selection nesting a GraphQL operation may have
    #[arg(
        long,
        env = "MAGE_GRAPHQL_MAX_DEPTH",
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..),
        default_value_t = 16,
    )]
    pub graphql_max_depth: usize,
    /// Origins allowed to call the API from a browser, comma-separated
    /// (default: any origin; tokens, not cookies, carry the identity)
    #[arg(long, env = "MAGE_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,
    /// Highest complexity (fields, multiplied by page sizes) of one operation
    #[arg(
        long,
        env = "MAGE_GRAPHQL_MAX_COMPLEXITY",
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..),
        default_value_t = 5000,
    )]
    pub graphql_max_complexity: usize,
    /// Generations one user may create per minute (sliding window, shared
    /// by every API instance through Redis)
    #[arg(
        long,
        env = "MAGE_GENERATIONS_PER_MINUTE",
        value_parser = clap::value_parser!(u32).range(1..),
        default_value_t = 20,
    )]
    pub generations_per_minute: u32,
    /// Generations one user may have queued or running at once
    #[arg(
        long,
        env = "MAGE_ACTIVE_GENERATIONS",
        value_parser = clap::value_parser!(u32).range(1..),
        default_value_t = 4,
    )]
    pub active_generations: u32,
    /// Seconds between the server's keep-alive messages on an idle WebSocket
    /// (`ping` or `ka` per subprotocol, plus a WebSocket ping frame); a
    /// socket silent for three of these is closed
    #[arg(
        long,
        env = "MAGE_WS_KEEPALIVE_SECONDS",
        value_parser = clap::value_parser!(u64).range(1..),
        default_value_t = 15,
    )]
    pub ws_keepalive_seconds: u64,
    /// Seconds a new WebSocket may take to send `connection_init`
    #[arg(
        long,
        env = "MAGE_WS_INIT_TIMEOUT_SECONDS",
        value_parser = clap::value_parser!(u64).range(1..),
        default_value_t = 10,
    )]
    pub ws_init_timeout_seconds: u64,
    /// Stripe secret key (`sk_live_...` / `sk_test_...`); without it
    /// checkout is only available under `mage dev`, as a local page
    #[arg(long, env = "STRIPE_SECRET_KEY", hide_env_values = true)]
    pub stripe_secret_key: Option<String>,
    /// Signing secret of the Stripe webhook endpoint (`whsec_...`); `mage
    /// dev` falls back to a development secret
    #[arg(long, env = "STRIPE_WEBHOOK_SECRET", hide_env_values = true)]
    pub stripe_webhook_secret: Option<String>,
    /// Base URL of the Stripe API (default https://api.stripe.com; tests
    /// point it at a fake)
    #[arg(long, env = "STRIPE_API_BASE")]
    pub stripe_api_base: Option<String>,
    /// Checkouts one user may start per minute
    #[arg(
        long,
        env = "MAGE_CHECKOUTS_PER_MINUTE",
        value_parser = clap::value_parser!(u32).range(1..),
        default_value_t = 5,
    )]
    pub checkouts_per_minute: u32,
    /// Largest image a user may upload, in bytes
    #[arg(long, env = "MAGE_MAX_IMAGE_BYTES", default_value_t = 20 * 1024 * 1024)]
    pub max_image_bytes: i64,
    /// Largest video a user may upload, in bytes
    #[arg(long, env = "MAGE_MAX_VIDEO_BYTES", default_value_t = 500 * 1024 * 1024)]
    pub max_video_bytes: i64,
    /// Bytes of uploads one user may keep stored
    #[arg(long, env = "MAGE_STORAGE_QUOTA_BYTES", default_value_t = 5 * 1024 * 1024 * 1024)]
    pub storage_quota_bytes: i64,
    /// Uploads one user may start per minute
    #[arg(
        long,
        env = "MAGE_UPLOADS_PER_MINUTE",
        value_parser = clap::value_parser!(u32).range(1..),
        default_value_t = 20,
    )]
    pub uploads_per_minute: u32,
    /// Root fields one mutation may have (each alias counts)
    #[arg(
        long,
        env = "MAGE_GRAPHQL_MAX_ROOT_MUTATIONS",
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..),
        default_value_t = 10,
    )]
    pub graphql_max_root_mutations: usize,
    /// Failed logins for one email per 15 minutes (shared through Redis)
    #[arg(
        long,
        env = "MAGE_LOGIN_FAILURES_PER_EMAIL",
        value_parser = clap::value_parser!(u32).range(1..),
        default_value_t = 10,
    )]
    pub login_failures_per_email: u32,
    /// Failed logins from one client IP per 15 minutes (shared through Redis)
    #[arg(
        long,
        env = "MAGE_LOGIN_FAILURES_PER_IP",
        value_parser = clap::value_parser!(u32).range(1..),
        default_value_t = 100,
    )]
    pub login_failures_per_ip: u32,
    /// Accounts one client IP may register per hour (shared through Redis)
    #[arg(
        long,
        env = "MAGE_SIGNUPS_PER_IP_PER_HOUR",
        value_parser = clap::value_parser!(u32).range(1..),
        default_value_t = 10,
    )]
    pub signups_per_ip_per_hour: u32,
    /// Proxies (CIDRs, comma-separated) whose X-Forwarded-For entry names
    /// the client; without them the client is the connection's peer
    #[arg(long, env = "MAGE_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<String>,
    /// Seconds a client may take to send a request's headers (also how long
    /// a new connection may stay silent)
    #[arg(
        long,
        env = "MAGE_HEADER_READ_TIMEOUT_SECONDS",
        value_parser = clap::value_parser!(u64).range(1..),
        default_value_t = 10,
    )]
    pub header_read_timeout_seconds: u64,
    /// Seconds an idle keep-alive connection stays open
    #[arg(
        long,
        env = "MAGE_KEEPALIVE_TIMEOUT_SECONDS",
        value_parser = clap::value_parser!(u64).range(1..),
        default_value_t = 60,
    )]
    pub keepalive_timeout_seconds: u64,
    /// HTTP connections open at once; more wait to be accepted
    #[arg(
        long,
        env = "MAGE_MAX_CONNECTIONS",
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..),
        default_value_t = 10_000,
    )]
    pub max_connections: usize,
    /// HTTP connections one client address may hold open at once (trusted
    /// proxies excepted); more are closed
    #[arg(
        long,
        env = "MAGE_MAX_CONNECTIONS_PER_IP",
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..),
        default_value_t = 256,
    )]
    pub max_connections_per_ip: usize,
    /// Seconds a response may make no progress (the client stopped reading)
    /// before its connection is closed
    #[arg(
        long,
        env = "MAGE_SEND_TIMEOUT_SECONDS",
        value_parser = clap::value_parser!(u64).range(1..),
        default_value_t = 60,
    )]
    pub send_timeout_seconds: u64,
    /// Operations (subscriptions, queries) one WebSocket may run at once
    #[arg(
        long,
        env = "MAGE_WS_MAX_OPERATIONS",
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..),
        default_value_t = 100,
    )]
    pub ws_max_operations: usize,
    /// WebSockets one client IP may hold open on one `serve` process
    #[arg(
        long,
        env = "MAGE_WS_MAX_SOCKETS_PER_IP",
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..),
        default_value_t = 100,
    )]
    pub ws_max_sockets_per_ip: usize,
    #[command(flatten)]
    pub metrics: MetricsArgs,
    /// Bearer token that opens /metrics on the public port (without it,
    /// /metrics is not served there, except under `mage dev`)
    #[arg(long, env = "MAGE_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,
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

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub addr: SocketAddr,
    /// The render backends of the deployment: models on others are not
    /// offered (MAGE_RENDER_BACKENDS and its companions).
    pub backends: mage_domain::backends::Backends,
    /// Upload limits and the storage quota.
    pub assets: mage_domain::assets::AssetLimits,
    pub public_url: String,
    pub jwt_secret: String,
    pub token_ttl: Duration,
    pub session_idle_days: u32,
    pub signup_credits: i64,
    /// The signup credits wait for a verified email address.
    pub signup_bonus_requires_verified_email: bool,
    pub request_timeout: Duration,
    pub max_body_bytes: usize,
    pub graphql_max_depth: usize,
    pub graphql_max_complexity: usize,
    pub cors_origins: Vec<String>,
    pub generation_limits: mage_domain::limits::GenerationLimits,
    pub ws_keepalive: Duration,
    pub ws_init_timeout: Duration,
    /// `mage dev`: development conveniences are allowed.
    pub dev_mode: bool,
    pub payments: PaymentSettings,
    /// Verifies `/webhooks/replicate` deliveries; `None` refuses them.
    pub replicate_webhook_secret: Option<String>,
    /// What webhook endpoints may point at, and the delivery settings
    /// (shared with the workers).
    pub webhooks: mage_domain::webhooks::WebhookSettings,
    /// The time zone of the daily statistics (today's figures).
    pub stats_tz: String,
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
        for (name, v) in [
            ("MAGE_MAX_IMAGE_BYTES", self.max_image_bytes),
            ("MAGE_MAX_VIDEO_BYTES", self.max_video_bytes),
            ("MAGE_STORAGE_QUOTA_BYTES", self.storage_quota_bytes),
        ] {
            if v <= 0 {
                return Err(ConfigError::new(name, "must be a positive number of bytes"));
            }
        }
        Ok(ServerSettings {
            backends: self.backends.resolve(mage_domain::backends::Role::Api)?,
            assets: mage_domain::assets::AssetLimits {
                max_image_bytes: self.max_image_bytes,
                max_video_bytes: self.max_video_bytes,
                quota_bytes: self.storage_quota_bytes,
                uploads_per_minute: self.uploads_per_minute,
            },
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
            metrics_addr: self.metrics.metrics_addr,
            metrics_token,
            shutdown_grace: Duration::from_secs(30),
            addr: self.addr,
            public_url,
            jwt_secret,
            token_ttl: Duration::from_secs(self.token_ttl_seconds),
            session_idle_days: self.session_idle_days,
            signup_credits: i64::from(self.signup_credits),
            signup_bonus_requires_verified_email: self.signup_bonus_requires_verified_email,
            request_timeout: Duration::from_secs(self.request_timeout_seconds),
            max_body_bytes: self.max_body_bytes,
            graphql_max_depth: self.graphql_max_depth,
            graphql_max_complexity: self.graphql_max_complexity,
            cors_origins: self.cors_origins.clone(),
            generation_limits: mage_domain::limits::GenerationLimits {
                per_minute: self.generations_per_minute,
                active: self.active_generations,
            },
            ws_keepalive: Duration::from_secs(self.ws_keepalive_seconds),
            ws_init_timeout: Duration::from_secs(self.ws_init_timeout_seconds),
            dev_mode,
            payments: self.payments(dev_mode)?,
            replicate_webhook_secret: self.backends.webhook_secret()?,
            webhooks: self.webhooks.resolve(dev_mode)?,
            stats_tz: self.stats.time_zone(),
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
