//! Progress of a running generation: every change is published on Redis at
//! once (subscribers see a smooth bar), PostgreSQL is written at most once
//! per [`DB_EVERY`] (plus a heartbeat when nothing moves), so a busy worker
//! does not turn into a write load.

use std::time::{Duration, Instant};

use mage_domain::db::DbPool;
use mage_domain::generations::{self, Status};
use mage_domain::kv::Redis;
use mage_domain::rows::Generation;
use mage_domain::{Error, events};

pub const DB_EVERY: Duration = Duration::from_secs(1);
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(10);

pub struct Progress {
    pool: DbPool,
    redis: Redis,
    generation: Generation,
    expected: Status,
    last_db_write: Instant,
    dirty: bool,
}

/// The generation left the state this job works on (cancelled, or failed by
/// the sweeper): the job must stop.
#[derive(Debug)]
pub struct Moved;

impl Progress {
    pub fn new(pool: DbPool, redis: Redis, generation: Generation) -> Self {
        let expected = generation.status();
        Self { pool, redis, generation, expected, last_db_write: Instant::now(), dirty: false }
    }

    /// Records a step. Publishing happens only when something changed.
    pub async fn update(&mut self, percent: u8, stage: &str) -> Result<Result<(), Moved>, Error> {
        let percent = i32::from(percent.min(100));
        let changed = percent != self.generation.progress || self.generation.stage.as_deref() != Some(stage);
        if changed {
            self.generation.progress = percent;
            self.generation.stage = Some(stage.to_owned());
            self.generation.updated_at = chrono::Utc::now();
            self.dirty = true;
            events::publish_generation_logged(&self.redis, &self.generation, false).await;
        }
        if self.dirty && self.last_db_write.elapsed() >= DB_EVERY {
            return self.write().await;
        }
        Ok(Ok(()))
    }

    /// Called on a timer: flushes a pending write and keeps the heartbeat
    /// fresh while the backend is silent.
    pub async fn tick(&mut self) -> Result<Result<(), Moved>, Error> {
        let due = if self.dirty { DB_EVERY } else { HEARTBEAT_EVERY };
        if self.last_db_write.elapsed() >= due {
            return self.write().await;
        }
        Ok(Ok(()))
    }

    async fn write(&mut self) -> Result<Result<(), Moved>, Error> {
        let mut conn = self.pool.get().await?;
        let stage = self.generation.stage.clone().unwrap_or_default();
        let still = generations::record_progress(
            &mut conn,
            self.generation.id,
            self.expected,
            self.generation.progress,
            &stage,
        )
        .await?;
        self.last_db_write = Instant::now();
        self.dirty = false;
        Ok(if still { Ok(()) } else { Err(Moved) })
    }
}
