//! Job payloads and enqueueing. The API enqueues and the workers consume;
//! both meet here, so neither crate imports the other.
//!
//! Queues are apalis-redis storages named `{MAGE_REDIS_PREFIX}{queue}`. apalis-redis
//! puts every pushed task in its scheduled set and a worker only sees it on
//! its next fetch, so a worker waiting for work would otherwise find a new
//! job only when it next polls. After every push we PUBLISH on the queue's
//! wake channel; idle workers subscribe to it and fetch at once (see
//! `mage_jobs::queues`), so a job starts within a few milliseconds without
//! anyone spinning on Redis.

use std::time::Duration;

use apalis_core::task::builder::TaskBuilder;
use apalis_redis::{Config, ConnectionManager};
use redis::aio::ConnectionManagerConfig;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{Error, Result};

pub const RENDER: &str = "render";
pub const TRANSCODE: &str = "transcode";

/// Every queue of this build, in the order `mage work` starts them.
pub const ALL: &[&str] = &[RENDER, TRANSCODE];

/// How often a worker proves it is alive, and how many beats it may miss
/// before another worker takes its tasks back (apalis-redis defaults to 10
/// missed beats of 30 s: five minutes of a paid job going nowhere).
/// Also bounds a delay seen right after a worker starts: its first jobs may
/// wait until its first heartbeat (see the issue-3 note).
pub const HEARTBEAT: Duration = Duration::from_secs(5);
pub const MISSED_HEARTBEATS: usize = 12;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RenderJob {
    pub generation_id: Uuid,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TranscodeJob {
    pub generation_id: Uuid,
    /// Storage key of the rendered source.
    pub source_key: String,
}

/// Producer side of the queues.
#[derive(Clone)]
pub struct Queues {
    conn: ConnectionManager,
    prefix: String,
}

impl Queues {
    pub async fn connect(url: &str, prefix: &str) -> Result<Self> {
        Ok(Self { conn: connection_manager(url).await?, prefix: prefix.to_owned() })
    }

    /// The apalis-redis configuration of `queue`, shared by producers and
    /// workers so both address the same keys.
    pub fn config(&self, queue: &str) -> Config {
        config(&self.prefix, queue)
    }

    pub fn wake_channel(&self, queue: &str) -> String {
        wake_channel(&self.prefix, queue)
    }

    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    pub async fn push_render(&self, job: &RenderJob) -> Result<()> {
        self.push(RENDER, job).await
    }

    pub async fn push_transcode(&self, job: &TranscodeJob) -> Result<()> {
        self.push(TRANSCODE, job).await
    }

    async fn push<T: Serialize>(&self, queue: &str, job: &T) -> Result<()> {
        let bytes = serde_json::to_vec(job).map_err(|e| Error::Internal(format!("job payload: {e}")))?;
        let task = TaskBuilder::new(bytes).build();
        let config = self.config(queue);
        let mut conn = self.conn.clone();
        apalis_redis::queries::push_tasks(&mut conn, &config, &[task])
            .await
            .map_err(|e| Error::Internal(format!("enqueue on {queue}: {e}")))?;
        let _: i64 =
            redis::cmd("PUBLISH").arg(self.wake_channel(queue)).arg(1).query_async(&mut conn).await?;
        Ok(())
    }

    /// Jobs waiting in `queue` (pending and scheduled).
    pub async fn depth(&self, queue: &str) -> Result<u64> {
        let config = self.config(queue);
        let mut conn = self.conn.clone();
        let (active, scheduled): (u64, u64) = redis::pipe()
            .llen(config.active_jobs_list())
            .zcard(config.scheduled_jobs_set())
            .query_async(&mut conn)
            .await?;
        Ok(active + scheduled)
    }
}

pub fn config(prefix: &str, queue: &str) -> Config {
    Config::default()
        .queue(format!("{prefix}{queue}"))
        .heartbeat_interval(HEARTBEAT)
        .missed_heartbeats(MISSED_HEARTBEATS)
}

pub fn wake_channel(prefix: &str, queue: &str) -> String {
    format!("{prefix}{queue}:wake")
}

/// A connection manager with a response timeout long enough for a busy
/// Redis: redis 1.x's 500 ms default turns a slow reply into a fatal stream
/// error that silently stops an apalis worker (apalis-redis #76).
pub async fn connection_manager(url: &str) -> Result<ConnectionManager> {
    let client = redis::Client::open(url)?;
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(Duration::from_secs(10)))
        .set_connection_timeout(Some(Duration::from_secs(5)));
    Ok(client.get_connection_manager_with_config(config).await?)
}
