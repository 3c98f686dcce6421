//! Mage's background workers: apalis workers on Redis queues, one module per
//! job. `render` and `transcode` carry a generation from QUEUED to
//! SUCCEEDED; later issues add `settle`, `stats` and `sweep`.
//!
//! Retries: apalis-redis reschedules a failed task by itself (its Lua
//! ignores `max_attempts`), so each handler counts attempts with `Attempt`
//! and, at the limit, fails the generation (releasing its hold) and returns
//! `AbortError`, which sends the task to `{queue}:dead`. A failure the user
//! caused or that will not go away by retrying (the render itself failed)
//! fails the generation at once. Between attempts the handler waits
//! 2^attempt seconds (capped), on top of apalis-redis' own linear delay, so
//! a struggling dependency is not hammered.

pub mod backend;
pub mod media;
mod progress;
mod render;
mod transcode;
pub mod wake;

use std::sync::Arc;
use std::time::Duration;

use apalis::layers::WorkerBuilderExt;
use apalis::prelude::{
    AbortError, Attempt, BoxDynError, Data, Monitor, ParallelizeExt, PollWith, Strategy, WorkerBuilder,
};
use apalis_redis::RedisStorage;
use mage_domain::config::WorkerSettings;
use mage_domain::db::DbPool;
use mage_domain::generations;
use mage_domain::kv::Redis;
use mage_domain::queue::{self, Queues, RenderJob, TranscodeJob};
use mage_domain::storage::Storage;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::backend::RenderBackend;
use crate::wake::{Cancels, Signal};

/// Every queue this build knows.
pub const QUEUES: &[&str] = queue::ALL;

/// How often an idle worker looks for work that no push announced (retries
/// apalis-redis scheduled for later). Announced pushes start at once.
pub const IDLE_POLL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum WorkError {
    #[error("unknown queue {0:?} (this build has: {known})", known = QUEUES.join(", "))]
    UnknownQueue(String),
    #[error(transparent)]
    Domain(#[from] mage_domain::Error),
    #[error("worker stopped: {0}")]
    Stopped(String),
}

/// Why a job did not finish normally.
#[derive(Debug)]
pub(crate) enum JobError {
    /// Might work next time (a dependency was down): retried until the
    /// attempts run out.
    Retry(String),
    /// Will not work however often it runs: the generation fails now.
    Fail { user_message: String, detail: String },
    /// The generation moved on without us (cancelled): stop quietly.
    Stop,
}

impl From<mage_domain::Error> for JobError {
    fn from(e: mage_domain::Error) -> Self {
        Self::Retry(e.to_string())
    }
}

impl From<mage_domain::db::PoolError> for JobError {
    fn from(e: mage_domain::db::PoolError) -> Self {
        Self::Retry(e.to_string())
    }
}

impl From<std::io::Error> for JobError {
    fn from(e: std::io::Error) -> Self {
        Self::Retry(e.to_string())
    }
}

/// Everything a job handler needs.
pub(crate) struct Ctx {
    pub pool: DbPool,
    pub redis: Redis,
    pub queues: Queues,
    pub storage: Storage,
    pub backend: Arc<dyn RenderBackend>,
    pub cancels: Cancels,
    pub worker_name: String,
    pub attempts: usize,
}

/// Storage key of a generation's rendered source.
pub(crate) fn source_key(id: Uuid, ext: &str) -> String {
    format!("generations/{id}/source.{ext}")
}

/// Storage prefix of everything a generation owns.
pub(crate) fn output_prefix(id: Uuid) -> String {
    format!("generations/{id}/")
}

pub struct Workers {
    pub pool: DbPool,
    pub redis: Redis,
    pub queues: Queues,
    pub storage: Storage,
    pub settings: WorkerSettings,
    /// Queues to run; empty means all of them.
    pub run_queues: Vec<String>,
}

impl Workers {
    /// Runs until `shutdown` resolves, then lets running jobs finish (up to
    /// a grace period). A worker that stops on its own (Redis gone for good)
    /// ends this with an error, so the process exits and is restarted.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), WorkError> {
        let selected: Vec<&'static str> = if self.run_queues.is_empty() {
            QUEUES.to_vec()
        } else {
            let mut v = Vec::new();
            for q in &self.run_queues {
                let known = QUEUES
                    .iter()
                    .find(|k| **k == q.trim())
                    .ok_or_else(|| WorkError::UnknownQueue(q.clone()))?;
                if !v.contains(known) {
                    v.push(*known);
                }
            }
            v
        };
        mage_domain::db::ping(&self.pool).await?;
        self.redis.ping().await?;

        let backend: Arc<dyn RenderBackend> = Arc::new(backend::synthetic::SyntheticBackend::from_env());
        let cancels = Cancels::default();
        let ctx = Arc::new(Ctx {
            pool: self.pool.clone(),
            redis: self.redis.clone(),
            queues: self.queues.clone(),
            storage: self.storage.clone(),
            backend,
            cancels: cancels.clone(),
            worker_name: self.settings.worker_name.clone(),
            attempts: self.settings.job_attempts,
        });

        let stop = CancellationToken::new();
        let signals: Vec<(String, Signal)> =
            selected.iter().map(|q| (self.queues.wake_channel(q), Signal::default())).collect();
        let listener = tokio::spawn(wake::listen(
            self.redis.url().to_owned(),
            signals.clone(),
            mage_domain::events::cancel_channel(&self.redis),
            cancels,
            IDLE_POLL,
            stop.clone(),
        ));

        let mut monitor = Monitor::new().shutdown_timeout(Duration::from_secs(30));
        for (queue_name, (_, signal)) in selected.iter().zip(signals) {
            let conn = self.queues.connection();
            let config = self.queues.config(queue_name);
            let name = format!("{}-{queue_name}", self.settings.worker_name);
            let ctx = ctx.clone();
            monitor = match *queue_name {
                queue::RENDER => {
                    let concurrency = self.settings.render_concurrency;
                    monitor.register(move |_restarts| {
                        WorkerBuilder::new(name.clone())
                            .backend(woken_storage::<RenderJob>(&conn, &config, &signal))
                            .concurrency(concurrency)
                            .data(ctx.clone())
                            .parallelize(tokio::spawn)
                            .build(render_handler)
                    })
                }
                _ => {
                    let concurrency = self.settings.transcode_concurrency;
                    monitor.register(move |_restarts| {
                        WorkerBuilder::new(name.clone())
                            .backend(woken_storage::<TranscodeJob>(&conn, &config, &signal))
                            .concurrency(concurrency)
                            .data(ctx.clone())
                            .parallelize(tokio::spawn)
                            .build(transcode_handler)
                    })
                }
            };
        }

        let announcer = {
            let redis = self.redis.clone();
            let name = self.settings.worker_name.clone();
            let slots = self.settings.render_concurrency;
            let runs_render = selected.contains(&queue::RENDER);
            let stop = stop.clone();
            tokio::spawn(async move {
                if !runs_render {
                    return;
                }
                let mut every = tokio::time::interval(mage_domain::workers::REFRESH_EVERY);
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = every.tick() => {
                            if let Err(e) = mage_domain::workers::announce(&redis, queue::RENDER, &name, slots).await {
                                tracing::warn!(error = %e, "could not announce the render worker");
                            }
                        }
                    }
                }
                let _ = mage_domain::workers::withdraw(&redis, queue::RENDER, &name, slots).await;
            })
        };

        tracing::info!(worker = %self.settings.worker_name, queues = ?selected, "workers started");
        let result = monitor
            .run_with_signal(async move {
                shutdown.await;
                Ok(())
            })
            .await;
        stop.cancel();
        let _ = announcer.await;
        let _ = listener.await;
        result.map_err(|e| WorkError::Stopped(e.to_string()))
    }
}

/// A queue's apalis-redis storage that fetches when `signal` fires (a push
/// was announced, or the idle tick) instead of on a poll timer.
pub fn woken_storage<T>(
    conn: &apalis_redis::ConnectionManager,
    config: &apalis_redis::Config,
    signal: &Signal,
) -> PollWith<RedisStorage<T>, Strategy> {
    let storage = RedisStorage::<T>::new(conn.clone()).with_config(config.clone());
    PollWith::new(storage, Strategy::new().stream(signal.clone()))
}

async fn render_handler(job: RenderJob, attempt: Attempt, ctx: Data<Arc<Ctx>>) -> Result<(), BoxDynError> {
    let id = job.generation_id;
    let ctx: Arc<Ctx> = (*ctx).clone();
    settle(&ctx, id, attempt.current(), render::run(ctx.clone(), job).await).await
}

async fn transcode_handler(
    job: TranscodeJob,
    attempt: Attempt,
    ctx: Data<Arc<Ctx>>,
) -> Result<(), BoxDynError> {
    let id = job.generation_id;
    let ctx: Arc<Ctx> = (*ctx).clone();
    // Spawned: rustc cannot prove this future Send for every lifetime, which
    // apalis' handler bound asks for; a task of its own sidesteps that.
    let outcome = tokio::spawn(transcode::run(ctx.clone(), job))
        .await
        .unwrap_or_else(|e| Err(JobError::Retry(format!("transcode task: {e}"))));
    settle(&ctx, id, attempt.current(), outcome).await
}

/// Turns a job's outcome into the generation's fate and apalis' verdict.
async fn settle(
    ctx: &Ctx,
    id: Uuid,
    attempt: usize,
    outcome: Result<(), JobError>,
) -> Result<(), BoxDynError> {
    match outcome {
        Ok(()) => Ok(()),
        Err(JobError::Stop) => {
            // Cancelled: whatever this generation already stored goes too.
            if let Err(e) = ctx.storage.delete_prefix(&output_prefix(id)).await {
                tracing::warn!(generation_id = %id, error = %e, "could not delete the outputs of a cancelled generation");
            }
            Ok(())
        }
        Err(JobError::Fail { user_message, detail }) => {
            tracing::warn!(generation_id = %id, %detail, "generation failed");
            fail_generation(ctx, id, &user_message).await?;
            Ok(())
        }
        Err(JobError::Retry(detail)) if attempt + 1 >= ctx.attempts => {
            tracing::error!(generation_id = %id, attempt, %detail, "job failed for the last time");
            fail_generation(ctx, id, generations::INTERNAL_FAILURE).await?;
            Err(AbortError::new(detail).into())
        }
        Err(JobError::Retry(detail)) => {
            tracing::warn!(generation_id = %id, attempt, %detail, "job failed; it will be retried");
            tokio::time::sleep(Duration::from_secs(1 << attempt.min(5))).await;
            Err(detail.into())
        }
    }
}

async fn fail_generation(ctx: &Ctx, id: Uuid, user_message: &str) -> Result<(), mage_domain::Error> {
    let mut conn = ctx.pool.get().await?;
    if let Some(g) = generations::fail(&mut conn, id, user_message).await? {
        drop(conn);
        if let Err(e) = ctx.storage.delete_prefix(&output_prefix(id)).await {
            tracing::warn!(generation_id = %id, error = %e, "could not delete the outputs of a failed generation");
        }
        generations::finished_with(&ctx.redis, &g).await;
    }
    Ok(())
}
