//! Mage's background workers. The queues (render, transcode, settle, stats,
//! sweep) arrive with the issues that need them; until then `mage work`
//! checks its connections and idles until it is told to stop.

use mage_domain::db::DbPool;
use mage_domain::kv::Redis;

/// Every queue this build knows. Empty until the first queue lands.
pub const QUEUES: &[&str] = &[];

#[derive(Debug, thiserror::Error)]
pub enum WorkError {
    #[error("unknown queue {0:?} (this build has: {known})", known = if QUEUES.is_empty() { "none yet".to_owned() } else { QUEUES.join(", ") })]
    UnknownQueue(String),
    #[error(transparent)]
    Domain(#[from] mage_domain::Error),
}

pub struct Workers {
    pub pool: DbPool,
    pub redis: Redis,
    /// Queues to run; empty means all of them.
    pub queues: Vec<String>,
}

impl Workers {
    /// Runs until `shutdown` resolves.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) -> Result<(), WorkError> {
        for q in &self.queues {
            if !QUEUES.contains(&q.as_str()) {
                return Err(WorkError::UnknownQueue(q.clone()));
            }
        }
        mage_domain::db::ping(&self.pool).await?;
        self.redis.ping().await?;
        if QUEUES.is_empty() {
            tracing::info!("no queues yet: the worker has nothing to run");
        }
        shutdown.await;
        Ok(())
    }
}
