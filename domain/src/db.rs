//! PostgreSQL: the connection pool and the embedded migrations.

use std::time::Duration;

use deadpool::managed::{Hook, HookError, Metrics};
use diesel::sql_types::BigInt;
use diesel_async::pooled_connection::deadpool::{Object, Pool};
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod};
use diesel_async::{AsyncConnection, AsyncMigrationHarness, AsyncPgConnection, RunQueryDsl};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use crate::config::DatabaseSettings;
use crate::{Error, Result};

pub use diesel_async::AsyncPgConnection as Connection;

pub type DbPool = Pool<AsyncPgConnection>;
pub type PooledConnection = Object<AsyncPgConnection>;
pub type PoolError = diesel_async::pooled_connection::deadpool::PoolError;

pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations");

/// Any fixed number works; it only has to be the same in every Mage process so
/// that two processes starting together do not migrate at the same time.
const MIGRATION_LOCK_KEY: i64 = 0x6d61_6765_6d69_6772;

/// Settings of every pooled session. A request that is cancelled mid-way
/// cannot leave a transaction open (and its row locks held) for long, and no
/// statement waits on a lock for ever.
const SESSION_OPTIONS: &str =
    "options=-c%20idle_in_transaction_session_timeout%3D60000%20-c%20lock_timeout%3D15000";

/// A pooled connection unused for longer than this is checked with `SELECT 1`
/// before it is handed out.
const VERIFY_AFTER_IDLE: Duration = Duration::from_secs(10);

pub fn pool(settings: &DatabaseSettings) -> Result<DbPool> {
    let url = if settings.url.contains("options=") {
        settings.url.clone()
    } else {
        let sep = if settings.url.contains('?') { '&' } else { '?' };
        format!("{}{sep}{SESSION_OPTIONS}", settings.url)
    };
    // diesel-async's default (`Verified`) sends `SELECT 1` on every checkout:
    // one more round trip for every request. A connection that was used in
    // the last few seconds is as good as verified; only one idle for longer
    // (where a restarted server or a dropped NAT entry is likely) is pinged.
    let mut config = ManagerConfig::default();
    config.recycling_method = RecyclingMethod::Fast;
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(url, config);
    Pool::builder(manager)
        .pre_recycle(Hook::async_fn(|conn: &mut AsyncPgConnection, metrics: &Metrics| {
            let idle = metrics.last_used() > VERIFY_AFTER_IDLE;
            Box::pin(async move {
                if idle {
                    diesel::sql_query("SELECT 1").execute(conn).await.map_err(|e| {
                        HookError::Backend(diesel_async::pooled_connection::PoolError::QueryError(e))
                    })?;
                }
                Ok(())
            })
        }))
        .max_size(settings.pool_size)
        .runtime(deadpool::Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(10)))
        .create_timeout(Some(Duration::from_secs(5)))
        .build()
        .map_err(|e| Error::Pool(e.to_string()))
}

pub async fn connect(url: &str) -> Result<AsyncPgConnection> {
    AsyncPgConnection::establish(url)
        .await
        .map_err(|e| Error::Pool(format!("cannot connect to PostgreSQL: {e}")))
}

/// Applies pending migrations and returns the versions applied. Needs a
/// multi-threaded tokio runtime: the harness uses `block_in_place`.
pub async fn run_migrations(url: &str) -> Result<Vec<String>> {
    let mut conn = connect(url).await?;
    diesel::sql_query("SELECT pg_advisory_lock($1)")
        .bind::<BigInt, _>(MIGRATION_LOCK_KEY)
        .execute(&mut conn)
        .await?;
    let mut harness = AsyncMigrationHarness::new(conn);
    let applied = harness
        .run_pending_migrations(MIGRATIONS)
        .map(|versions| versions.iter().map(ToString::to_string).collect())
        .map_err(|e| Error::Internal(format!("migration failed: {e}")));
    let mut conn = harness.into_inner();
    diesel::sql_query("SELECT pg_advisory_unlock($1)")
        .bind::<BigInt, _>(MIGRATION_LOCK_KEY)
        .execute(&mut conn)
        .await?;
    applied
}

/// `SELECT 1`, for readiness checks.
pub async fn ping(pool: &DbPool) -> Result<()> {
    let mut conn = pool.get().await?;
    diesel::sql_query("SELECT 1").execute(&mut conn).await?;
    Ok(())
}
