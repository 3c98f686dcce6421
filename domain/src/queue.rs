//! Job payloads and enqueueing. The API enqueues and the workers consume;
//! both meet here, so neither crate imports the other.
//!
//! Queues are apalis-redis storages named `{MAGE_REDIS_PREFIX}{queue}`. apalis-redis
//! puts every pushed task in its scheduled set and a worker only sees it on
//! its next fetch, so a worker waiting for work would otherwise find a new
//! job only when it next polls. After every push we PUBLISH on the queue's
//! wake channel; idle workers subscribe to it and fetch at once (see
//! `mage_jobs::wake` and `mage_jobs::worker`), so a job starts within a few milliseconds without
//! anyone spinning on Redis.

use std::time::Duration;

use apalis_core::task::builder::TaskBuilder;
use apalis_core::task::task_id::TaskId;
use apalis_redis::{Config, ConnectionManager};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::enums::BackendKind;
use crate::{Error, Result};

/// A queue of this build, named once: its name keys Redis, the
/// `MAGE_QUEUES` selection and the `queue` label of metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Queue {
    /// One render queue per backend (`render:synthetic`, ...): a host runs
    /// the queues of the backends it can reach.
    Render(BackendKind),
    Transcode,
    /// Uploaded media to check and clean (`IngestJob`).
    Ingest,
    /// Stripe events to apply to orders and credits.
    Settle,
    /// Mails of the outbox to send (`MailJob`).
    Mail,
    /// Webhook deliveries to send (`DeliverJob`).
    Deliver,
    /// The daily statistics cron (apalis-cron; nothing is stored in Redis).
    Stats,
    /// Not an apalis queue: the sweeper's timer, selectable like one with
    /// `mage work --queues`.
    Sweep,
}

impl Queue {
    /// Every queue of this build, in the order `mage work` starts them.
    pub const ALL: [Queue; 10] = [
        Queue::Render(BackendKind::Synthetic),
        Queue::Render(BackendKind::ComfyUi),
        Queue::Render(BackendKind::Replicate),
        Queue::Transcode,
        Queue::Ingest,
        Queue::Settle,
        Queue::Mail,
        Queue::Deliver,
        Queue::Stats,
        Queue::Sweep,
    ];
    /// The queues whose jobs are generations' (listed for admins).
    pub const JOBS: [Queue; 4] = [
        Queue::Render(BackendKind::Synthetic),
        Queue::Render(BackendKind::ComfyUi),
        Queue::Render(BackendKind::Replicate),
        Queue::Transcode,
    ];
    /// The queues whose jobs wait in Redis (counted for admins and metrics).
    pub const STORED: [Queue; 8] = [
        Queue::Render(BackendKind::Synthetic),
        Queue::Render(BackendKind::ComfyUi),
        Queue::Render(BackendKind::Replicate),
        Queue::Transcode,
        Queue::Ingest,
        Queue::Settle,
        Queue::Mail,
        Queue::Deliver,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Queue::Render(BackendKind::Synthetic) => "render:synthetic",
            Queue::Render(BackendKind::ComfyUi) => "render:comfyui",
            Queue::Render(BackendKind::Replicate) => "render:replicate",
            Queue::Transcode => "transcode",
            Queue::Ingest => "ingest",
            Queue::Settle => "settle",
            Queue::Mail => "mail",
            Queue::Deliver => "deliver",
            Queue::Stats => "stats",
            Queue::Sweep => "sweep",
        }
    }

    /// The queue of `name` among `among`, if it is one of them.
    pub fn find(among: &[Queue], name: &str) -> Option<Queue> {
        among.iter().copied().find(|q| q.name() == name)
    }

    /// `among`'s names, comma-separated (for error messages).
    pub fn names(among: &[Queue]) -> String {
        among.iter().map(|q| q.name()).collect::<Vec<_>>().join(", ")
    }
}

impl std::fmt::Display for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Failed attempts are counted per hour; `failed` counts show the last day.
const FAILED_WINDOW_HOURS: i64 = 24;

/// A task's state as apalis-redis records it (`{queue}:meta:{id}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskState {
    pub status: Option<String>,
    pub attempts: u32,
    pub result: Option<String>,
    pub done_at: Option<i64>,
}

impl TaskState {
    /// Waiting, running or scheduled for a retry: it will still run.
    pub fn alive(&self) -> bool {
        !matches!(self.status.as_deref(), None | Some("Done" | "Killed"))
    }
}

/// A job in a queue's dead set.
#[derive(Debug, Clone)]
pub struct DeadJob {
    pub queue: String,
    pub task_id: String,
    pub generation_id: Option<Uuid>,
    pub attempts: u32,
    pub error: Option<String>,
    pub died_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// How often a worker proves it is alive, and how many beats it may miss
/// before another worker takes its tasks back (apalis-redis defaults to 10
/// missed beats of 30 s: five minutes of a paid job going nowhere).
pub const HEARTBEAT: Duration = Duration::from_secs(5);
pub const MISSED_HEARTBEATS: usize = 12;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RenderJob {
    pub generation_id: Uuid,
}

/// One stored Stripe event to settle (idempotent by the event id).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SettleJob {
    pub event_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TranscodeJob {
    pub generation_id: Uuid,
    /// Storage key of the rendered source.
    pub source_key: String,
}

/// One uploaded asset to check and clean (idempotent: it acts only on a
/// PROCESSING asset).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct IngestJob {
    pub asset_id: Uuid,
}

/// A job of the `mail` queue.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MailJob {
    /// Send one mail of the outbox (idempotent: a sent mail is skipped).
    Send { mail_id: Uuid },
    /// Someone asked to reset the password of `email` (normalised): the
    /// worker looks the account up and, when there is one, writes the
    /// reset link's mail (once per `request_id`) and sends it. The API
    /// never looks, so its answer and its timing say nothing about the
    /// account.
    PasswordReset {
        email: String,
        request_id: Uuid,
        /// Where the link points (the API's MAGE_PUBLIC_URL).
        public_url: String,
    },
}

/// One webhook delivery to attempt (idempotent: an attempt claims the
/// delivery's row, so a duplicate job finds it taken, sent or not due).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeliverJob {
    pub delivery_id: Uuid,
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
    pub fn config(&self, queue: Queue) -> Config {
        config(&self.prefix, queue)
    }

    pub fn wake_channel(&self, queue: Queue) -> String {
        wake_channel(&self.prefix, queue)
    }

    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// Enqueues a render on its backend's queue (the generation's
    /// `backend`).
    pub async fn push_render(&self, backend: BackendKind, job: &RenderJob) -> Result<()> {
        self.push_render_after(backend, job, Duration::ZERO).await
    }

    /// Enqueues a render to start after `delay` (a retry's backoff, a busy
    /// or unhealthy backend). The generation's newest render task is
    /// indexed, so the sweeper can tell when Redis lost it.
    pub async fn push_render_after(
        &self,
        backend: BackendKind,
        job: &RenderJob,
        delay: Duration,
    ) -> Result<()> {
        let index = (self.render_index(backend), job.generation_id.to_string());
        self.push_indexed(Queue::Render(backend), job, delay, Some(index)).await?;
        Ok(())
    }

    /// Forgets a generation's render task (it has left the queue for good).
    pub async fn forget_render(&self, backend: BackendKind, generation_id: Uuid) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: i64 = redis::cmd("HDEL")
            .arg(self.render_index(backend))
            .arg(generation_id.to_string())
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Whether the generation's newest render task will still run.
    pub async fn render_alive(&self, backend: BackendKind, generation_id: Uuid) -> Result<bool> {
        let mut conn = self.conn.clone();
        let task: Option<String> = redis::cmd("HGET")
            .arg(self.render_index(backend))
            .arg(generation_id.to_string())
            .query_async(&mut conn)
            .await?;
        Ok(match task {
            Some(t) => self.task_state(Queue::Render(backend), &t).await?.alive(),
            None => false,
        })
    }

    fn render_index(&self, backend: BackendKind) -> String {
        format!("{}{}:by-generation", self.prefix, Queue::Render(backend))
    }

    pub async fn push_settle(&self, job: &SettleJob) -> Result<()> {
        self.push(Queue::Settle, job, Duration::ZERO).await.map(|_| ())
    }

    pub async fn push_transcode(&self, job: &TranscodeJob) -> Result<()> {
        self.push(Queue::Transcode, job, Duration::ZERO).await.map(|_| ())
    }

    pub async fn push_ingest(&self, job: &IngestJob) -> Result<()> {
        self.push(Queue::Ingest, job, Duration::ZERO).await.map(|_| ())
    }

    pub async fn push_mail(&self, job: &MailJob) -> Result<()> {
        self.push(Queue::Mail, job, Duration::ZERO).await.map(|_| ())
    }

    /// Enqueues a mail job to run after `delay` (a send's backoff).
    pub async fn push_mail_after(&self, job: &MailJob, delay: Duration) -> Result<()> {
        self.push(Queue::Mail, job, delay).await.map(|_| ())
    }

    /// Enqueues a webhook delivery attempt to run after `delay` (its next
    /// retry, or a moment when its endpoint is busy).
    pub async fn push_deliver(&self, job: &DeliverJob, delay: Duration) -> Result<()> {
        self.push(Queue::Deliver, job, delay).await.map(|_| ())
    }

    async fn push<T: Serialize>(&self, queue: Queue, job: &T, delay: Duration) -> Result<String> {
        self.push_indexed(queue, job, delay, None).await
    }

    /// Pushes one task; `index` (hash, field) also records its id there.
    /// A task due now goes in one round trip (see [`push_now`]); a delayed
    /// one through apalis-redis' own push, into the scheduled set.
    async fn push_indexed<T: Serialize>(
        &self,
        queue: Queue,
        job: &T,
        delay: Duration,
        index: Option<(String, String)>,
    ) -> Result<String> {
        let bytes = serde_json::to_vec(job).map_err(|e| Error::Internal(format!("job payload: {e}")))?;
        let task_id = Uuid::new_v4().to_string();
        let config = self.config(queue);
        let mut conn = self.conn.clone();
        if delay.is_zero() {
            let mut call = push_now().prepare_invoke();
            call.key(config.job_data_hash())
                .key(config.job_meta_hash())
                .key(config.active_jobs_list())
                .key(config.signal_list())
                .key(config.scheduled_jobs_set());
            if let Some((hash, _)) = &index {
                call.key(hash);
            }
            call.arg(&task_id)
                .arg(bytes)
                .arg(DEFAULT_MAX_ATTEMPTS)
                .arg(u8::from(config.emit_events))
                .arg(chrono::Utc::now().timestamp())
                .arg(self.wake_channel(queue));
            if let Some((_, field)) = &index {
                call.arg(field);
            }
            let _: i64 = call.invoke_async(&mut conn).await?;
        } else {
            let task = TaskBuilder::new(bytes).task_id(TaskId::from_string(task_id.clone())).run_after(delay);
            apalis_redis::queries::push_tasks(&mut conn, &config, &[task.build()])
                .await
                .map_err(|e| Error::Internal(format!("enqueue on {queue}: {e}")))?;
            if let Some((hash, field)) = index {
                let () = redis::cmd("HSET").arg(hash).arg(field).arg(&task_id).query_async(&mut conn).await?;
            }
        }
        Ok(task_id)
    }

    pub async fn task_state(&self, queue: Queue, task_id: &str) -> Result<TaskState> {
        let meta = format!("{}:{task_id}", self.config(queue).job_meta_hash());
        let mut conn = self.conn.clone();
        let (status, attempts, result, done_at): (Option<String>, Option<u32>, Option<String>, Option<i64>) =
            redis::cmd("HMGET")
                .arg(meta)
                .arg("status")
                .arg("attempts")
                .arg("result")
                .arg("done_at")
                .query_async(&mut conn)
                .await?;
        Ok(TaskState { status, attempts: attempts.unwrap_or(0), result, done_at })
    }

    /// Jobs of `queue` that ran out of attempts, newest first.
    pub async fn dead_jobs(&self, queue: Queue, limit: usize) -> Result<Vec<DeadJob>> {
        let config = self.config(queue);
        let mut conn = self.conn.clone();
        let ids: Vec<String> =
            redis::cmd("SMEMBERS").arg(config.dead_jobs_set()).query_async(&mut conn).await?;
        let mut jobs = Vec::with_capacity(ids.len());
        for id in ids {
            jobs.push(self.dead_job(queue, &id).await?);
        }
        jobs.sort_by(|a, b| b.died_at.cmp(&a.died_at).then_with(|| a.task_id.cmp(&b.task_id)));
        jobs.truncate(limit);
        Ok(jobs)
    }

    async fn dead_job(&self, queue: Queue, task_id: &str) -> Result<DeadJob> {
        let config = self.config(queue);
        let mut conn = self.conn.clone();
        let payload: Option<Vec<u8>> =
            redis::cmd("HGET").arg(config.job_data_hash()).arg(task_id).query_async(&mut conn).await?;
        let generation_id = payload
            .and_then(|p| serde_json::from_slice::<serde_json::Value>(&p).ok())
            .and_then(|v| v.get("generation_id")?.as_str()?.parse().ok());
        let state = self.task_state(queue, task_id).await?;
        // apalis-redis stores the handler's error as JSON ({"Err": "..."}).
        let error = state.result.as_deref().map(|r| {
            serde_json::from_str::<serde_json::Value>(r)
                .ok()
                .and_then(|v| v.get("Err").and_then(|e| e.as_str().map(str::to_owned)))
                .unwrap_or_else(|| r.to_owned())
        });
        // done_at is in seconds.
        let died_at = state.done_at.and_then(|s| chrono::DateTime::from_timestamp(s, 0));
        Ok(DeadJob {
            queue: queue.name().to_owned(),
            task_id: task_id.to_owned(),
            generation_id,
            attempts: state.attempts,
            error,
            died_at,
        })
    }

    /// Takes a job out of the dead set (before it is retried); `None` when
    /// it is not there (already retried, or never died).
    pub async fn take_dead_job(&self, queue: Queue, task_id: &str) -> Result<Option<DeadJob>> {
        let job = self.dead_job(queue, task_id).await?;
        let mut conn = self.conn.clone();
        let removed: i64 = redis::cmd("SREM")
            .arg(self.config(queue).dead_jobs_set())
            .arg(task_id)
            .query_async(&mut conn)
            .await?;
        Ok((removed == 1).then_some(job))
    }

    /// Counts for the admin queue view: waiting (pending + scheduled),
    /// running (in flight on some worker), failed (attempts that failed in
    /// the last 24 hours, retried or not) and dead.
    pub async fn counts(&self, queue: Queue) -> Result<QueueCounts> {
        let config = self.config(queue);
        let mut conn = self.conn.clone();
        let hour = chrono::Utc::now().timestamp() / 3600;
        let failed_keys: Vec<String> =
            (0..FAILED_WINDOW_HOURS).map(|h| self.failed_key(queue, hour - h)).collect();
        let (waiting, scheduled, dead, workers, failed): (u64, u64, u64, Vec<String>, Vec<Option<u64>>) =
            redis::pipe()
                .llen(config.active_jobs_list())
                .zcard(config.scheduled_jobs_set())
                .scard(config.dead_jobs_set())
                .zrange(config.workers_set(), 0, -1)
                .mget(&failed_keys)
                .query_async(&mut conn)
                .await?;
        let mut running = 0;
        for w in workers {
            let n: u64 = redis::cmd("SCARD")
                .arg(format!("{}:{w}", config.inflight_jobs_set()))
                .query_async(&mut conn)
                .await?;
            running += n;
        }
        let failed = failed.into_iter().flatten().sum();
        Ok(QueueCounts { waiting: waiting + scheduled, running, failed, dead })
    }

    /// Counts one failed attempt of a `queue` job (retried or dead), for
    /// the `failed` count. Best effort: a Redis hiccup loses one count,
    /// never a job.
    pub async fn note_failed(&self, queue: Queue) {
        let key = self.failed_key(queue, chrono::Utc::now().timestamp() / 3600);
        let mut conn = self.conn.clone();
        let r: redis::RedisResult<()> = redis::pipe()
            .incr(&key, 1)
            .ignore()
            .expire(&key, (FAILED_WINDOW_HOURS + 1) * 3600)
            .ignore()
            .query_async(&mut conn)
            .await;
        if let Err(e) = r {
            tracing::debug!(queue = queue.name(), error = %e, "could not count a failed job");
        }
    }

    fn failed_key(&self, queue: Queue, hour: i64) -> String {
        format!("{}{queue}:failed-per-hour:{hour}", self.prefix)
    }

    /// Jobs waiting in `queue` (pending and scheduled).
    pub async fn depth(&self, queue: Queue) -> Result<u64> {
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

#[derive(Debug, Clone, Copy, Default)]
pub struct QueueCounts {
    pub waiting: u64,
    pub running: u64,
    pub failed: u64,
    pub dead: u64,
}

/// What apalis-redis records for a task pushed without a limit of its own
/// (`push_tasks`: `max_attempts().unwrap_or(25)`); the worker's retry layer
/// decides the real number.
const DEFAULT_MAX_ATTEMPTS: u32 = 25;

/// A task due now, in one round trip: what apalis-redis' `batch_push.lua`
/// writes for it (the payload, its meta hash, the active list, the signal
/// list, the optional `available` event), then what `promote_and_wake`
/// did as a second call (due retries moved to the active list, 1,000 at a
/// time: apalis' fetch moves them with one `unpack`, which Lua refuses
/// above about 8,000 values, and would then fail every fetch), the wake-up
/// PUBLISH idle workers wait on, and the optional index entry. It was three
/// round trips (push, promote, index); on an idle system each cost about a
/// quarter of a millisecond, most of a job's enqueue-to-start time.
/// `tests/it/queue.rs` checks that the task reads back exactly as one
/// apalis-redis pushed itself.
///
/// KEYS: data hash, meta prefix, active list, signal list, scheduled set,
/// [index hash]. ARGV: task id, payload, max attempts, emit events (1/0),
/// now (s), wake channel, [index field].
fn push_now() -> &'static redis::Script {
    static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
    SCRIPT.get_or_init(|| {
        redis::Script::new(
            r"local id = ARGV[1]
              if redis.call('hsetnx', KEYS[1], id, ARGV[2]) == 1 then
                redis.call('hmset', KEYS[2] .. ':' .. id, 'attempts', 0, 'max_attempts', tonumber(ARGV[3]),
                           'status', 'Pending', 'idempotency_key', '')
                redis.call('rpush', KEYS[3], id)
                if ARGV[4] == '1' then
                  redis.call('publish', 'tasks:' .. KEYS[3] .. ':available', id)
                end
              end
              repeat
                local ids = redis.call('zrangebyscore', KEYS[5], 0, ARGV[5], 'LIMIT', 0, 1000)
                if #ids > 0 then
                  redis.call('rpush', KEYS[3], unpack(ids))
                  redis.call('zrem', KEYS[5], unpack(ids))
                end
              until #ids < 1000
              redis.call('del', KEYS[4])
              redis.call('lpush', KEYS[4], 1)
              redis.call('publish', ARGV[6], 1)
              if KEYS[6] then
                redis.call('hset', KEYS[6], ARGV[7], id)
              end
              return 1",
        )
    })
}

pub fn config(prefix: &str, queue: Queue) -> Config {
    Config::default()
        .queue(format!("{prefix}{queue}"))
        .heartbeat_interval(HEARTBEAT)
        .missed_heartbeats(MISSED_HEARTBEATS)
        // apalis-redis' per-task lease runs LREM over the whole waiting
        // list for every job it starts, so draining a backlog slows as the
        // backlog grows (a 20,000-job drain spent 6.3 s of 8.5 s in it).
        // Taking over a dead worker's jobs rests on its in-flight set and
        // heartbeat, not on the lease; a running task's meta status then
        // stays Pending, which `TaskState::alive` already counts as alive.
        .lock_tasks(false)
}

pub fn wake_channel(prefix: &str, queue: Queue) -> String {
    format!("{prefix}{queue}:wake")
}

/// A connection manager for the queues (see [`crate::kv::connection_config`]
/// for its timeouts).
pub async fn connection_manager(url: &str) -> Result<ConnectionManager> {
    let client = redis::Client::open(url)?;
    Ok(client.get_connection_manager_with_config(crate::kv::connection_config()).await?)
}
