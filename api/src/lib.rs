//! Mage's HTTP surface: GraphQL over HTTP and WebSocket, the playground,
//! health checks.

pub mod auth;
pub mod client;
mod dev_mail;
pub mod error;
pub mod graphql;
mod health;
mod http;
pub mod live;
mod media;
pub mod metrics;
mod payments;
mod playground;
mod replicate;
mod server;
pub mod settings;
mod slots;
mod uploads;
mod web;
mod ws;

use std::sync::Arc;

use crate::settings::ServerSettings;
use mage_domain::core::Core;

pub use graphql::{MageSchema, Operations, build_schema};
pub use http::router;
pub use ws::open_sockets;

/// Everything a request handler needs, shared by all of them.
/// Shared by every handler. Cheap to clone (axum clones the state for each
/// extraction, several times per request): one `Arc`.
#[derive(Clone)]
pub struct AppState(Arc<AppStateInner>);

impl std::ops::Deref for AppState {
    type Target = AppStateInner;
    fn deref(&self) -> &AppStateInner {
        &self.0
    }
}

pub struct AppStateInner {
    pub core: Core,
    pub settings: Arc<ServerSettings>,
    pub tokens: auth::Tokens,
    pub schema: Operations,
    pub live: live::Hub,
    /// Ended sessions and revoked keys, polled from the database.
    pub revocations: Arc<auth::Revocations>,
    /// API keys checked lately.
    pub keys: auth::KeyCache,
    /// Cancelled when the server begins to stop: open WebSockets are closed
    /// (clients reconnect to another instance) so the stop does not wait on
    /// them.
    pub stopping: tokio_util::sync::CancellationToken,
}

/// Handlers read the shared handles as `state.pool`, `state.redis`.
impl std::ops::Deref for AppStateInner {
    type Target = Core;
    fn deref(&self) -> &Core {
        &self.core
    }
}

impl AppState {
    pub fn new(core: Core, settings: ServerSettings) -> Self {
        let tokens = auth::Tokens::new(&settings.jwt_secret, settings.token_ttl);
        metrics::init();
        // Remembered while a credential naming them can still be good: an
        // access token's lifetime with its validation leeway, a cached key.
        let revocations = Arc::new(auth::Revocations::new(
            settings.token_ttl.max(auth::keys::RECHECK) + std::time::Duration::from_secs(60),
        ));
        let stopping = tokio_util::sync::CancellationToken::new();
        revocations.start(core.pool.clone(), stopping.clone());
        let live = live::Hub::start(core.redis.clone(), core.pool.clone());
        let services = Arc::new(graphql::Services {
            tokens: tokens.clone(),
            signup_credits: settings.signup_credits,
            signup_bonus_requires_verified_email: settings.signup_bonus_requires_verified_email,
            generations: mage_domain::generations::Services {
                core: core.clone(),
                limits: settings.generation_limits,
                backends: std::sync::Arc::new(settings.backends.clone()),
            },
            public_url: settings.public_url.clone(),
            live: live.clone(),
            payments: mage_domain::payments::checkout::PaymentServices {
                core: core.clone(),
                settings: settings.payments.clone(),
                public_url: settings.public_url.clone(),
                dev_mode: settings.dev_mode,
            },
            auth_limits: settings.auth_limits,
            assets: settings.assets,
            revocations: revocations.clone(),
            session_idle_days: settings.session_idle_days,
            webhook_guard: mage_domain::webhooks::guard::Guard::new(settings.webhooks.policy.clone()),
            stats_tz: settings.stats_tz.clone(),
        });
        let schema = graphql::schema(services, graphql::Limits::from_settings(&settings));
        Self(Arc::new(AppStateInner {
            core,
            settings: Arc::new(settings),
            tokens,
            schema,
            live,
            revocations,
            keys: Default::default(),
            stopping,
        }))
    }
}

/// Serves on `listener` until `shutdown` resolves, then finishes the
/// requests in flight within the shutdown grace period.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!(%addr, playground = %format!("{}/graphql", state.settings.public_url), "mage serve listening");
    let stopping = state.stopping.clone();
    tokio::spawn({
        let stopping = stopping.clone();
        async move {
            shutdown.await;
            stopping.cancel();
        }
    });
    let (connections, grace) = (state.settings.connections.clone(), state.settings.shutdown_grace);
    server::serve(listener, router(state), connections, stopping, grace).await;
    Ok(())
}
