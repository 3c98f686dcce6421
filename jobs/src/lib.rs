//! Mage's background workers: apalis workers on Redis queues, one module per
//! job. `render` and `transcode` carry a generation from QUEUED to
//! SUCCEEDED; `sweep` finds what fell through the cracks.
//!
//! Render retries do not use apalis-redis' own (its Lua ignores
//! `max_attempts` and retries in place, holding a GPU slot for the
//! backoff): a render that may work later puts its generation back to
//! QUEUED and enqueues a new task after `MAGE_RETRY_BACKOFF_SECONDS`
//! (doubling per attempt), and the attempt count lives on the generation,
//! so a worker that crashed mid-render counts too. At the limit the
//! generation fails (its hold released) and the task returns `AbortError`,
//! which puts it in `{queue}:dead` for admins (`deadJobs`, `retryDeadJob`).
//! Transcodes are local and short, so they keep apalis-redis' in-place
//! retries, counted with `Attempt`. A failure that will not go away by
//! retrying (the render itself failed) fails the generation at once.

pub mod backend;
pub mod media;
mod progress;
mod render;
mod settle;
mod slot;
mod stats;
mod sweep;
mod transcode;
pub mod wake;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use apalis::layers::WorkerBuilderExt;
use apalis::prelude::{
    AbortError, Attempt, BoxDynError, Data, Monitor, ParallelizeExt, PollWith, Strategy, WorkerBuilder,
};
use apalis_redis::RedisStorage;
use mage_domain::config::{RenderBackendKind, WorkerSettings};
use mage_domain::db::DbPool;
use mage_domain::generations;
use mage_domain::kv::Redis;
use mage_domain::queue::{self, Queues, RenderJob, SettleJob, TranscodeJob};
use mage_domain::storage::Storage;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::backend::RenderBackend;
use crate::slot::Slot;
use crate::wake::{Cancels, Signal};

pub use crate::stats::expire_once;
pub use crate::sweep::{STALE_MESSAGE, SweepReport, expire_media_once, sweep_once};

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
    #[error(transparent)]
    Template(#[from] backend::comfyui::workflow::TemplateError),
    #[error("render backend: {0}")]
    Backend(#[from] backend::RenderError),
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
    /// The worker is stopping and gave the job back to the queue.
    HandedBack,
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

/// Everything a job handler needs. Each render slot set (one per backend
/// server) has its own, differing only in `backend` and `slot`.
pub(crate) struct Ctx {
    pub pool: DbPool,
    pub redis: Redis,
    pub queues: Queues,
    pub storage: Storage,
    pub backend: Arc<dyn RenderBackend>,
    pub slot: Arc<Slot>,
    pub cancels: Cancels,
    pub worker_name: String,
    pub settings: WorkerSettings,
    /// SIGTERM arrived: take nothing new, cut waits short.
    pub stopping: CancellationToken,
    /// The shutdown grace period is over: give running renders back.
    pub hand_back: CancellationToken,
}

/// Storage key of a generation's rendered source.
pub(crate) fn source_key(id: Uuid, ext: &str) -> String {
    format!("generations/{id}/source.{ext}")
}

/// Storage prefix of everything a generation owns.
pub(crate) fn output_prefix(id: Uuid) -> String {
    format!("generations/{id}/")
}

/// The render backends of these settings: one per ComfyUI server, or the
/// one synthetic backend.
pub fn render_backends(settings: &WorkerSettings) -> Result<Vec<Arc<dyn RenderBackend>>, WorkError> {
    Ok(match &settings.render_backend {
        RenderBackendKind::Synthetic => {
            vec![Arc::new(backend::synthetic::SyntheticBackend::from_env()) as Arc<dyn RenderBackend>]
        }
        RenderBackendKind::ComfyUi { urls, workflows } => {
            let templates = Arc::new(backend::comfyui::workflow::Templates::load(workflows)?);
            tracing::info!(dir = %workflows.display(), templates = ?templates.names(), "ComfyUI workflow templates loaded");
            let mut v: Vec<Arc<dyn RenderBackend>> = Vec::new();
            for url in urls {
                v.push(Arc::new(backend::comfyui::ComfyBackend::new(url, templates.clone())?));
            }
            v
        }
    })
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
    /// Runs until `shutdown` resolves. Then no job is taken any more;
    /// running ones may finish within `MAGE_SHUTDOWN_GRACE_SECONDS`, after
    /// which renders are handed back to the queue (their backend renders go
    /// on, and the next worker attaches to them). A worker that stops on its
    /// own (Redis gone for good) ends this with an error, so the process
    /// exits and is restarted.
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
        if selected.contains(&queue::STATS) {
            let mut conn = self.pool.get().await.map_err(mage_domain::Error::from)?;
            if !mage_domain::stats::valid_time_zone(&mut conn, &self.settings.stats_tz).await? {
                return Err(WorkError::Stopped(format!(
                    "MAGE_STATS_TZ: {:?} is not a time zone PostgreSQL knows",
                    self.settings.stats_tz
                )));
            }
        }

        let backends = render_backends(&self.settings)?;
        let cancels = Cancels::default();
        let stopping = CancellationToken::new();
        let hand_back = CancellationToken::new();
        let ctx_for = |backend: Arc<dyn RenderBackend>| {
            Arc::new(Ctx {
                pool: self.pool.clone(),
                redis: self.redis.clone(),
                queues: self.queues.clone(),
                storage: self.storage.clone(),
                slot: Arc::new(Slot::new(&*backend, &self.settings.worker_name)),
                backend,
                cancels: cancels.clone(),
                worker_name: self.settings.worker_name.clone(),
                settings: self.settings.clone(),
                stopping: stopping.clone(),
                hand_back: hand_back.clone(),
            })
        };
        let render_ctxs: Vec<Arc<Ctx>> = backends.iter().cloned().map(ctx_for).collect();
        let Some(first) = render_ctxs.first().cloned() else {
            return Err(WorkError::Stopped("no render backend configured".into()));
        };

        let stop = CancellationToken::new();
        // One apalis worker (and wake-up signal) per render backend, one for
        // transcode; the sweeper is a timer of its own.
        let mut signals: Vec<(String, Signal)> = Vec::new();
        let mut monitor = Monitor::new()
            .shutdown_timeout(self.settings.shutdown_grace + Duration::from_secs(15))
            .should_restart(restart_policy());
        for queue_name in &selected {
            let conn = self.queues.connection();
            let config = self.queues.config(queue_name);
            match *queue_name {
                queue::RENDER => {
                    for (i, ctx) in render_ctxs.iter().enumerate() {
                        let signal = Signal::default();
                        signals.push((self.queues.wake_channel(queue_name), signal.clone()));
                        let name = format!("{}-render-{i}", self.settings.worker_name);
                        let concurrency = self.settings.render_concurrency;
                        let ctx = ctx.clone();
                        let (conn, config) = (conn.clone(), config.clone());
                        tracing::info!(worker = %name, backend = %ctx.backend.location(), slots = concurrency, "render worker");
                        // A fetch takes no more than the worker can start, so
                        // a backlog spreads over every GPU instead of piling
                        // into the buffer of whichever worker fetched first.
                        let config = config.batch_size(concurrency);
                        monitor = monitor.register(move |_restarts| {
                            WorkerBuilder::new(name.clone())
                                .backend(woken_storage::<RenderJob>(&conn, &config, &signal))
                                .concurrency(concurrency)
                                .data(ctx.clone())
                                .parallelize(tokio::spawn)
                                .build(render_handler)
                        });
                    }
                }
                queue::TRANSCODE => {
                    let signal = Signal::default();
                    signals.push((self.queues.wake_channel(queue_name), signal.clone()));
                    let name = format!("{}-transcode", self.settings.worker_name);
                    let concurrency = self.settings.transcode_concurrency;
                    let ctx = first.clone();
                    monitor = monitor.register(move |_restarts| {
                        WorkerBuilder::new(name.clone())
                            .backend(woken_storage::<TranscodeJob>(&conn, &config, &signal))
                            .concurrency(concurrency)
                            .data(ctx.clone())
                            .parallelize(tokio::spawn)
                            .build(transcode_handler)
                    });
                }
                queue::STATS => {
                    let schedule = cron::Schedule::from_str(&self.settings.stats_cron)
                        .map_err(|e| WorkError::Stopped(format!("MAGE_STATS_CRON: {e}")))?;
                    let name = format!("{}-stats", self.settings.worker_name);
                    let ctx = first.clone();
                    monitor = monitor.register(move |_restarts| {
                        WorkerBuilder::new(name.clone())
                            .backend(apalis_cron::CronScheduler::new(schedule.clone()))
                            .data(ctx.clone())
                            .build(stats_tick)
                    });
                    // Credit expiry rides with the stats cron: hourly, on the
                    // hour.
                    let hourly = cron::Schedule::from_str(EXPIRY_CRON)
                        .map_err(|e| WorkError::Stopped(format!("credit expiry schedule: {e}")))?;
                    let name = format!("{}-expiry", self.settings.worker_name);
                    let ctx = first.clone();
                    monitor = monitor.register(move |_restarts| {
                        WorkerBuilder::new(name.clone())
                            .backend(apalis_cron::CronScheduler::new(hourly.clone()))
                            .data(ctx.clone())
                            .build(expiry_tick)
                    });
                }
                queue::SETTLE => {
                    let signal = Signal::default();
                    signals.push((self.queues.wake_channel(queue_name), signal.clone()));
                    let name = format!("{}-settle", self.settings.worker_name);
                    let ctx = first.clone();
                    monitor = monitor.register(move |_restarts| {
                        WorkerBuilder::new(name.clone())
                            .backend(woken_storage::<SettleJob>(&conn, &config, &signal))
                            .concurrency(SETTLE_CONCURRENCY)
                            .data(ctx.clone())
                            .parallelize(tokio::spawn)
                            .build(settle_handler)
                    });
                }
                _ => {}
            }
        }
        let listener = tokio::spawn(wake::listen(
            self.redis.url().to_owned(),
            signals,
            mage_domain::events::cancel_channel(&self.redis),
            cancels,
            IDLE_POLL,
            stop.clone(),
        ));
        let sweeper =
            selected.contains(&queue::SWEEP).then(|| tokio::spawn(sweep::run(first.clone(), stop.clone())));

        let announcer = {
            let redis = self.redis.clone();
            let name = self.settings.worker_name.clone();
            let slots = self.settings.render_slots();
            let runs_render = selected.contains(&queue::RENDER);
            let stop = stop.clone();
            let ctxs = render_ctxs.clone();
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
                            // Admins see every backend's health, busy or idle.
                            for ctx in &ctxs {
                                ctx.slot.refresh(ctx).await;
                            }
                        }
                    }
                }
                let _ = mage_domain::workers::withdraw(&redis, queue::RENDER, &name, slots).await;
            })
        };

        tracing::info!(worker = %self.settings.worker_name, queues = ?selected, "workers started");
        let grace = self.settings.shutdown_grace;
        let signal = {
            let stopping = stopping.clone();
            let hand_back = hand_back.clone();
            async move {
                shutdown.await;
                tracing::info!(
                    grace_seconds = grace.as_secs(),
                    "stopping: taking no new jobs; running ones have the grace period"
                );
                stopping.cancel();
                tokio::spawn(async move {
                    tokio::time::sleep(grace).await;
                    hand_back.cancel();
                });
                Ok(())
            }
        };
        let result = monitor.run_with_signal(signal).await;
        stop.cancel();
        let _ = announcer.await;
        let _ = listener.await;
        if let Some(s) = sweeper {
            let _ = s.await;
        }
        result.map_err(|e| WorkError::Stopped(e.to_string()))
    }
}

/// Restarts a worker whose stream failed (Redis restarted or was flushed:
/// its registration and in-flight set are gone, and registering again is
/// what repairs them), unless it failed [`RESTARTS_PER_WINDOW`] times within
/// [`RESTART_WINDOW`]: then it stays down and the process exits once all
/// its workers have, so a supervisor restarts it.
fn restart_policy()
-> impl Fn(&apalis::prelude::WorkerContext, &apalis::prelude::WorkerError) -> bool + Send + Sync + 'static {
    let recent: std::sync::Mutex<
        std::collections::HashMap<String, std::collections::VecDeque<std::time::Instant>>,
    > = std::sync::Mutex::default();
    move |worker, error| {
        let now = std::time::Instant::now();
        let Ok(mut recent) = recent.lock() else { return false };
        let times = recent.entry(worker.name().to_owned()).or_default();
        times.retain(|t| now.duration_since(*t) < RESTART_WINDOW);
        let allowed = times.len() < RESTARTS_PER_WINDOW;
        if allowed {
            times.push_back(now);
            tracing::warn!(worker = %worker.name(), error = %error, "worker stopped; restarting it");
        } else {
            tracing::error!(worker = %worker.name(), error = %error, "worker keeps failing; leaving it stopped");
        }
        allowed
    }
}

pub const RESTARTS_PER_WINDOW: usize = 20;
pub const RESTART_WINDOW: Duration = Duration::from_secs(300);

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

/// Times one run of a job and counts how it ended (see
/// `mage_domain::metrics::job_finished`); a failed run also counts in the
/// queue's `failed` figure.
async fn observed(
    ctx: &Ctx,
    queue: &'static str,
    run: impl std::future::Future<Output = Result<(), BoxDynError>>,
) -> Result<(), BoxDynError> {
    let started = std::time::Instant::now();
    let result = run.await;
    let outcome = match &result {
        Ok(()) => "ok",
        Err(e) if e.downcast_ref::<AbortError>().is_some() => "dead",
        Err(_) => "retry",
    };
    if result.is_err() {
        note_failed(ctx, queue).await;
    }
    mage_domain::metrics::job_finished(queue, outcome, started.elapsed());
    result
}

/// One failed attempt of a `queue` job, for metrics and the admin count.
pub(crate) async fn note_failed(ctx: &Ctx, queue: &'static str) {
    mage_domain::metrics::job_attempt_failed(queue);
    ctx.queues.note_failed(queue).await;
}

async fn render_handler(job: RenderJob, ctx: Data<Arc<Ctx>>) -> Result<(), BoxDynError> {
    let ctx: Arc<Ctx> = (*ctx).clone();
    // Spawned for the same reason as the transcode handler.
    observed(&ctx, queue::RENDER, async {
        tokio::spawn(render::handle(ctx.clone(), job))
            .await
            .unwrap_or_else(|e| Err(format!("render task: {e}").into()))
    })
    .await
}

const EXPIRY_CRON: &str = "0 0 * * * *";

async fn expiry_tick(tick: apalis_cron::Tick, ctx: Data<Arc<Ctx>>) -> Result<(), BoxDynError> {
    let ctx: Arc<Ctx> = (*ctx).clone();
    observed(&ctx, "expiry", async {
        tokio::spawn(stats::expiry_tick(ctx.clone(), tick.get_timestamp()))
            .await
            .unwrap_or_else(|e| Err(format!("expiry task: {e}").into()))
    })
    .await
}

async fn stats_tick(tick: apalis_cron::Tick, ctx: Data<Arc<Ctx>>) -> Result<(), BoxDynError> {
    let ctx: Arc<Ctx> = (*ctx).clone();
    observed(&ctx, queue::STATS, async {
        tokio::spawn(stats::tick(ctx.clone(), tick.get_timestamp()))
            .await
            .unwrap_or_else(|e| Err(format!("stats task: {e}").into()))
    })
    .await
}

/// Settlements are short transactions; a few at once keep a burst of
/// webhooks moving without crowding the database.
const SETTLE_CONCURRENCY: usize = 4;

async fn settle_handler(job: SettleJob, attempt: Attempt, ctx: Data<Arc<Ctx>>) -> Result<(), BoxDynError> {
    let ctx: Arc<Ctx> = (*ctx).clone();
    observed(&ctx, queue::SETTLE, async {
        tokio::spawn(settle::run(ctx.clone(), job, attempt.current()))
            .await
            .unwrap_or_else(|e| Err(format!("settle task: {e}").into()))
    })
    .await
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
    observed(&ctx, queue::TRANSCODE, async {
        let outcome = tokio::spawn(transcode::run(ctx.clone(), job))
            .await
            .unwrap_or_else(|e| Err(JobError::Retry(format!("transcode task: {e}"))));
        settle_transcode(&ctx, id, attempt.current(), outcome).await
    })
    .await
}

/// Turns a transcode's outcome into the generation's fate and apalis'
/// verdict. Transcodes are local and short: apalis-redis retries them in
/// place (see the module note).
async fn settle_transcode(
    ctx: &Ctx,
    id: Uuid,
    attempt: usize,
    outcome: Result<(), JobError>,
) -> Result<(), BoxDynError> {
    match outcome {
        Ok(()) | Err(JobError::HandedBack) => Ok(()),
        Err(JobError::Stop) => {
            discard_outputs(ctx, id).await;
            Ok(())
        }
        Err(JobError::Fail { user_message, detail }) => {
            tracing::warn!(generation_id = %id, %detail, "generation failed");
            note_failed(ctx, queue::TRANSCODE).await;
            fail_generation(ctx, id, &user_message).await?;
            Ok(())
        }
        Err(JobError::Retry(detail)) if attempt + 1 >= ctx.settings.job_attempts => {
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

/// Cancelled: whatever this generation already stored goes too.
pub(crate) async fn discard_outputs(ctx: &Ctx, id: Uuid) {
    if let Err(e) = ctx.storage.delete_prefix(&output_prefix(id)).await {
        tracing::warn!(generation_id = %id, error = %e, "could not delete the outputs of a cancelled generation");
    }
}

pub(crate) async fn fail_generation(
    ctx: &Ctx,
    id: Uuid,
    user_message: &str,
) -> Result<(), mage_domain::Error> {
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
