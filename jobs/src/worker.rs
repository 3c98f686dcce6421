//! The wiring: which apalis worker runs which queue, registered from one
//! list through one generic function (after crates.io's `BackgroundJob` and
//! `Runner::register_job_type`). Every worker's name starts with this
//! replica's unique `MAGE_WORKER_NAME`: apalis-redis hands a dead worker's
//! tasks on by name (apalis #504).

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use apalis::layers::WorkerBuilderExt;
use apalis::prelude::{
    AbortError, Attempt, BoxDynError, Data, Monitor, ParallelizeExt, PollWith, Strategy, WorkerBuilder,
};
use apalis_redis::RedisStorage;
use mage_domain::core::Core;
use mage_domain::kv::Redis;
use mage_domain::queue::{DeliverJob, IngestJob, MailJob, Queue, Queues, RenderJob, SettleJob, TranscodeJob};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use crate::backend::RenderBackend;
use crate::ctx::{Ctx, JobError, note_failed};
use crate::outcome::{self, Retry};
use crate::settings::WorkerSettings;
use crate::slot::Slot;
use crate::wake::{self, Cancels, Signal};
use crate::{backend, ingest, mail, render, settle, stats, sweep, transcode, webhooks};
use mage_domain::catalog::BackendKind;

/// How often an idle worker looks for work that no push announced (retries
/// apalis-redis scheduled for later). Announced pushes start at once.
pub const IDLE_POLL: Duration = Duration::from_secs(1);

pub const RESTARTS_PER_WINDOW: usize = 20;
pub const RESTART_WINDOW: Duration = Duration::from_secs(300);

/// Settling Stripe events: short transactions; a few at once keep a burst
/// of webhooks moving without crowding the database.
const SETTLE_CONCURRENCY: usize = 4;

/// Credit expiry rides with the stats cron: hourly, on the hour.
const EXPIRY_CRON: &str = "0 0 * * * *";

#[derive(Debug, thiserror::Error)]
pub enum WorkError {
    #[error("unknown queue {0:?} (this build has: {known})", known = Queue::names(&Queue::ALL))]
    UnknownQueue(String),
    #[error(transparent)]
    Domain(#[from] mage_domain::Error),
    #[error(transparent)]
    Template(#[from] backend::comfyui::workflow::TemplateError),
    #[error("render backend: {0}")]
    Backend(#[from] backend::RenderError),
    #[error("queue render:{0} selected, but {0} is not in MAGE_RENDER_BACKENDS")]
    NotOffered(BackendKind),
    #[error("worker stopped: {0}")]
    Stopped(String),
}

/// A render backend and the queue it takes jobs from.
pub type Backend = (BackendKind, Arc<dyn RenderBackend>);

/// The render backends of these settings whose queues are `selected`: the
/// synthetic one, one per ComfyUI server, Replicate.
pub fn render_backends(
    settings: &WorkerSettings,
    selected: &[Queue],
    redis: &Redis,
) -> Result<Vec<Backend>, WorkError> {
    let mut v: Vec<Backend> = Vec::new();
    let backends = &settings.backends;
    for kind in backends.offered.iter().copied().filter(|k| selected.contains(&Queue::Render(*k))) {
        match kind {
            BackendKind::Synthetic => {
                v.push((kind, Arc::new(backend::synthetic::SyntheticBackend::from_env())));
            }
            BackendKind::ComfyUi => {
                let Some(comfy) = &backends.comfyui else { continue };
                let templates = Arc::new(backend::comfyui::workflow::Templates::load(&comfy.workflows)?);
                tracing::info!(dir = %comfy.workflows.display(), templates = ?templates.names(), "ComfyUI workflow templates loaded");
                for url in &comfy.urls {
                    v.push((kind, Arc::new(backend::comfyui::ComfyBackend::new(url, templates.clone())?)));
                }
            }
            BackendKind::Replicate => {
                let Some(r) = &backends.replicate else { continue };
                v.push((kind, Arc::new(replicate_backend(settings, r, redis)?)));
            }
        }
    }
    Ok(v)
}

fn replicate_backend(
    settings: &WorkerSettings,
    r: &mage_domain::backends::ReplicateSettings,
    redis: &Redis,
) -> Result<backend::replicate::ReplicateBackend, WorkError> {
    let token =
        r.token.clone().ok_or_else(|| WorkError::Stopped("MAGE_REPLICATE_API_TOKEN: is not set".into()))?;
    let webhook_url = match (r.webhooks, settings.public_url.as_deref()) {
        (false, _) => None,
        (true, Some(public)) => Some(format!("{public}/webhooks/replicate")),
        (true, None) => {
            return Err(WorkError::Stopped(
                "MAGE_PUBLIC_URL: is required for Replicate's webhooks (or set MAGE_REPLICATE_WEBHOOKS=false)"
                    .into(),
            ));
        }
    };
    let config = backend::replicate::ReplicateConfig {
        api_base: r.api_base.clone(),
        token,
        workflows: r.workflows.clone(),
        webhook_url,
        quiet_poll_after: settings.replicate_quiet_poll,
    };
    let backend = backend::replicate::ReplicateBackend::new(config, redis.clone())
        .map_err(|e| WorkError::Stopped(e.to_string()))?;
    tracing::info!(api = %r.api_base, webhooks = r.webhooks, "Replicate backend ready");
    Ok(backend)
}

/// A job stored in a Redis queue: what its worker needs to know to run it.
pub(crate) trait Job: Serialize + DeserializeOwned + Send + Sync + Unpin + 'static {
    /// The queue of this job for the worker of `ctx` (render jobs wait in
    /// their backend's).
    fn queue(ctx: &Ctx) -> Queue;
    /// Jobs of this queue one worker runs at once.
    fn concurrency(ctx: &Ctx) -> usize;
    /// How many jobs one fetch takes (apalis-redis' default unless said).
    fn fetch(config: apalis_redis::Config, _concurrency: usize) -> apalis_redis::Config {
        config
    }
    /// Runs one attempt (`attempt` as apalis counts, from 0).
    fn run(
        self,
        ctx: Arc<Ctx>,
        attempt: usize,
    ) -> impl Future<Output = Result<(), BoxDynError>> + Send + 'static;
}

impl Job for RenderJob {
    fn queue(ctx: &Ctx) -> Queue {
        Queue::Render(ctx.kind)
    }
    /// Per backend server: a ComfyUI worker runs its share on each server.
    fn concurrency(ctx: &Ctx) -> usize {
        match ctx.kind {
            BackendKind::ComfyUi => ctx.settings.comfy_concurrency(),
            kind => ctx.settings.render_slots(kind),
        }
    }
    /// A fetch takes no more than the worker can start, so a backlog
    /// spreads over every GPU instead of piling into the buffer of
    /// whichever worker fetched first.
    fn fetch(config: apalis_redis::Config, concurrency: usize) -> apalis_redis::Config {
        config.batch_size(concurrency)
    }
    fn run(
        self,
        ctx: Arc<Ctx>,
        _attempt: usize,
    ) -> impl Future<Output = Result<(), BoxDynError>> + Send + 'static {
        // Render retries are new tasks; the attempts live on the generation.
        render::handle(ctx, self)
    }
}

impl Job for TranscodeJob {
    fn queue(_: &Ctx) -> Queue {
        Queue::Transcode
    }
    fn concurrency(ctx: &Ctx) -> usize {
        ctx.settings.transcode_concurrency
    }
    async fn run(self, ctx: Arc<Ctx>, attempt: usize) -> Result<(), BoxDynError> {
        let id = self.generation_id;
        // Spawned: rustc cannot prove this future Send for every lifetime,
        // which apalis' handler bound asks for; a task of its own sidesteps
        // that, and a panic in it is one more failed attempt.
        let outcome = tokio::spawn(transcode::run(ctx.clone(), self))
            .await
            .unwrap_or_else(|e| Err(JobError::Retry(format!("transcode task: {e}"))));
        let attempt = outcome::Attempt {
            queue: Queue::Transcode,
            generation_id: id,
            number: attempt + 1,
            max: ctx.settings.job_attempts,
        };
        outcome::conclude(&ctx, attempt, Retry::InPlace, outcome).await
    }
}

impl Job for IngestJob {
    fn queue(_: &Ctx) -> Queue {
        Queue::Ingest
    }
    fn concurrency(ctx: &Ctx) -> usize {
        // Ingest is a transcode of the user's video, or an image decode:
        // it shares the transcode budget.
        ctx.settings.transcode_concurrency
    }
    fn run(
        self,
        ctx: Arc<Ctx>,
        attempt: usize,
    ) -> impl Future<Output = Result<(), BoxDynError>> + Send + 'static {
        ingest::run(ctx, self, attempt)
    }
}

impl Job for SettleJob {
    fn queue(_: &Ctx) -> Queue {
        Queue::Settle
    }
    fn concurrency(_: &Ctx) -> usize {
        SETTLE_CONCURRENCY
    }
    fn run(
        self,
        ctx: Arc<Ctx>,
        attempt: usize,
    ) -> impl Future<Output = Result<(), BoxDynError>> + Send + 'static {
        settle::run(ctx, self, attempt)
    }
}

impl Job for MailJob {
    fn queue(_: &Ctx) -> Queue {
        Queue::Mail
    }
    fn concurrency(_: &Ctx) -> usize {
        mail::CONCURRENCY
    }
    fn run(
        self,
        ctx: Arc<Ctx>,
        attempt: usize,
    ) -> impl Future<Output = Result<(), BoxDynError>> + Send + 'static {
        mail::run(ctx, self, attempt)
    }
}

impl Job for DeliverJob {
    fn queue(_: &Ctx) -> Queue {
        Queue::Deliver
    }
    fn concurrency(ctx: &Ctx) -> usize {
        ctx.settings.webhooks.concurrency
    }
    fn run(
        self,
        ctx: Arc<Ctx>,
        attempt: usize,
    ) -> impl Future<Output = Result<(), BoxDynError>> + Send + 'static {
        webhooks::deliver::run(ctx, self, attempt)
    }
}

/// The one handler of every stored queue.
async fn handle<J: Job>(job: J, attempt: Attempt, ctx: Data<Arc<Ctx>>) -> Result<(), BoxDynError> {
    let ctx: Arc<Ctx> = (*ctx).clone();
    let queue = J::queue(&ctx);
    observed(&ctx, queue.name(), Some(queue), async {
        tokio::spawn(job.run(ctx.clone(), attempt.current()))
            .await
            .unwrap_or_else(|e| Err(format!("{queue} task: {e}").into()))
    })
    .await
}

/// Registers one worker of `J`'s queue, woken by pushes to it.
fn register<J: Job>(
    monitor: Monitor,
    queues: &Queues,
    signals: &mut Vec<(String, Signal)>,
    name: String,
    ctx: Arc<Ctx>,
) -> Monitor {
    let signal = Signal::default();
    let queue = J::queue(&ctx);
    signals.push((queues.wake_channel(queue), signal.clone()));
    let concurrency = J::concurrency(&ctx);
    let (conn, config) = (queues.connection(), J::fetch(queues.config(queue), concurrency));
    tracing::info!(worker = %name, backend = %ctx.backend.location(), slots = concurrency, "{queue} worker");
    monitor.register(move |_restarts| {
        WorkerBuilder::new(name.clone())
            .backend(woken_storage::<J>(&conn, &config, &signal))
            .concurrency(concurrency)
            .data(ctx.clone())
            .parallelize(tokio::spawn)
            .build(handle::<J>)
    })
}

/// The crons of the `stats` selection.
#[derive(Debug, Clone, Copy)]
enum Cron {
    /// The daily statistics, at `MAGE_STATS_CRON`.
    Stats,
    /// Credit expiry, hourly.
    Expiry,
}

impl Cron {
    fn label(self) -> &'static str {
        match self {
            Cron::Stats => Queue::Stats.name(),
            Cron::Expiry => "expiry",
        }
    }

    /// The queue whose failed count a failed run adds to.
    fn queue(self) -> Option<Queue> {
        match self {
            Cron::Stats => Some(Queue::Stats),
            Cron::Expiry => None,
        }
    }
}

async fn tick(tick: apalis_cron::Tick, cron: Data<Cron>, ctx: Data<Arc<Ctx>>) -> Result<(), BoxDynError> {
    let (ctx, cron, at): (Arc<Ctx>, Cron, u64) = ((*ctx).clone(), *cron, tick.get_timestamp());
    observed(&ctx, cron.label(), cron.queue(), async {
        let run = match cron {
            Cron::Stats => tokio::spawn(stats::tick(ctx.clone(), at)),
            Cron::Expiry => tokio::spawn(stats::expiry_tick(ctx.clone(), at)),
        };
        run.await.unwrap_or_else(|e| Err(format!("{} task: {e}", cron.label()).into()))
    })
    .await
}

fn register_cron(
    monitor: Monitor,
    name: String,
    schedule: cron::Schedule,
    cron: Cron,
    ctx: Arc<Ctx>,
) -> Monitor {
    monitor.register(move |_restarts| {
        WorkerBuilder::new(name.clone())
            .backend(apalis_cron::CronScheduler::new(schedule.clone()))
            .data(cron)
            .data(ctx.clone())
            .build(tick)
    })
}

fn schedule(expr: &str, what: &str) -> Result<cron::Schedule, WorkError> {
    cron::Schedule::from_str(expr).map_err(|e| WorkError::Stopped(format!("{what}: {e}")))
}

pub struct Workers {
    pub core: Core,
    pub settings: WorkerSettings,
    /// Queues to run; empty means all of them.
    pub run_queues: Vec<String>,
}

impl Workers {
    /// The queues of `MAGE_QUEUES`, each once, in the order given; `render`
    /// stands for the render queue of every backend of the deployment.
    /// Without a selection, every queue (render queues of the deployment's
    /// backends only).
    fn selected(&self) -> Result<Vec<Queue>, WorkError> {
        let offered = &self.settings.backends.offered;
        let all_render = || offered.iter().map(|k| Queue::Render(*k));
        if self.run_queues.is_empty() {
            return Ok(Queue::ALL
                .into_iter()
                .filter(|q| !matches!(q, Queue::Render(k) if !offered.contains(k)))
                .collect());
        }
        let mut v = Vec::new();
        for q in &self.run_queues {
            let named: Vec<Queue> = match q.trim() {
                "render" => all_render().collect(),
                name => {
                    let known =
                        Queue::find(&Queue::ALL, name).ok_or_else(|| WorkError::UnknownQueue(q.clone()))?;
                    if let Queue::Render(kind) = known
                        && !offered.contains(&kind)
                    {
                        return Err(WorkError::NotOffered(kind));
                    }
                    vec![known]
                }
            };
            for known in named {
                if !v.contains(&known) {
                    v.push(known);
                }
            }
        }
        Ok(v)
    }

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
        let selected = self.selected()?;
        mage_domain::db::ping(&self.core.pool).await?;
        self.core.redis.ping().await?;
        if selected.contains(&Queue::Stats) {
            let mut conn = self.core.pool.get().await.map_err(mage_domain::Error::from)?;
            if !mage_domain::stats::valid_time_zone(&mut conn, &self.settings.stats_tz).await? {
                return Err(WorkError::Stopped(format!(
                    "MAGE_STATS_TZ: {:?} is not a time zone PostgreSQL knows",
                    self.settings.stats_tz
                )));
            }
        }

        let backends = render_backends(&self.settings, &selected, &self.core.redis)?;
        let mailer = Arc::new(
            mail::Mailer::new(&self.settings.mail)
                .map_err(|e| WorkError::Stopped(format!("MAGE_SMTP_URL: {e}")))?,
        );
        if selected.contains(&Queue::Mail) {
            mailer.announce(&self.settings.mail);
        }
        let hooks = Arc::new(
            webhooks::Webhooks::new(self.settings.webhooks.clone(), self.settings.public_url.as_deref())
                .map_err(|e| WorkError::Stopped(format!("webhook client: {e}")))?,
        );
        let cancels = Cancels::default();
        let stopping = CancellationToken::new();
        let hand_back = CancellationToken::new();
        let ctx_for = |(kind, backend): Backend| {
            Arc::new(Ctx {
                kind,
                core: self.core.clone(),
                slot: Arc::new(Slot::new(&*backend, &self.settings.worker_name)),
                backend,
                cancels: cancels.clone(),
                worker_name: self.settings.worker_name.clone(),
                settings: self.settings.clone(),
                stopping: stopping.clone(),
                hand_back: hand_back.clone(),
                mailer: mailer.clone(),
                webhooks: hooks.clone(),
            })
        };
        let render_ctxs: Vec<Arc<Ctx>> = backends.iter().cloned().map(ctx_for).collect();
        // The other queues need no backend of their own; a process that
        // runs no render queue still has a context for them.
        let first = match render_ctxs.first() {
            Some(ctx) => ctx.clone(),
            None => {
                ctx_for((BackendKind::Synthetic, Arc::new(backend::synthetic::SyntheticBackend::from_env())))
            }
        };

        let stop = CancellationToken::new();
        // One apalis worker (and wake-up signal) per render backend and per
        // other stored queue; the sweeper is a timer of its own.
        let mut signals: Vec<(String, Signal)> = Vec::new();
        let mut monitor = Monitor::new()
            .shutdown_timeout(self.settings.shutdown_grace + Duration::from_secs(15))
            .should_restart(restart_policy());
        let me = &self.settings.worker_name;
        for queue in &selected {
            let q = &self.core.queues;
            monitor = match queue {
                Queue::Render(kind) => {
                    render_ctxs.iter().filter(|c| c.kind == *kind).enumerate().fold(monitor, |m, (i, ctx)| {
                        register::<RenderJob>(
                            m,
                            q,
                            &mut signals,
                            format!("{me}-render-{kind}-{i}"),
                            ctx.clone(),
                        )
                    })
                }
                Queue::Transcode => register::<TranscodeJob>(
                    monitor,
                    q,
                    &mut signals,
                    format!("{me}-transcode"),
                    first.clone(),
                ),
                Queue::Settle => {
                    register::<SettleJob>(monitor, q, &mut signals, format!("{me}-settle"), first.clone())
                }
                Queue::Stats => {
                    let daily = schedule(&self.settings.stats_cron, "MAGE_STATS_CRON")?;
                    let hourly = schedule(EXPIRY_CRON, "credit expiry schedule")?;
                    let m = register_cron(monitor, format!("{me}-stats"), daily, Cron::Stats, first.clone());
                    register_cron(m, format!("{me}-expiry"), hourly, Cron::Expiry, first.clone())
                }
                Queue::Ingest => {
                    register::<IngestJob>(monitor, q, &mut signals, format!("{me}-ingest"), first.clone())
                }
                Queue::Mail => {
                    register::<MailJob>(monitor, q, &mut signals, format!("{me}-mail"), first.clone())
                }
                Queue::Deliver => {
                    register::<DeliverJob>(monitor, q, &mut signals, format!("{me}-deliver"), first.clone())
                }
                Queue::Sweep => monitor,
            };
        }
        let listener = tokio::spawn(wake::listen(
            self.core.redis.url().to_owned(),
            signals,
            mage_domain::events::cancel_channel(&self.core.redis),
            cancels,
            IDLE_POLL,
            stop.clone(),
        ));
        let sweeper =
            selected.contains(&Queue::Sweep).then(|| tokio::spawn(sweep::run(first.clone(), stop.clone())));
        let fan_out = selected
            .contains(&Queue::Deliver)
            .then(|| tokio::spawn(webhooks::listen::run(first.clone(), stop.clone())));
        let announcer = (!render_ctxs.is_empty()).then(|| {
            tokio::spawn(announce(
                self.core.redis.clone(),
                self.settings.clone(),
                render_ctxs.clone(),
                stop.clone(),
            ))
        });

        tracing::info!(worker = %self.settings.worker_name, queues = ?selected, "workers started");
        let grace = self.settings.shutdown_grace;
        let signal = async move {
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
        };
        let result = monitor.run_with_signal(signal).await;
        stop.cancel();
        for task in [announcer, Some(listener), sweeper, fan_out].into_iter().flatten() {
            let _ = task.await;
        }
        result.map_err(|e| WorkError::Stopped(e.to_string()))
    }
}

/// Keeps this process's render slots counted among the live workers (the
/// ETA of queued generations rests on them) and every backend's health
/// fresh for admins, busy or idle; withdraws the slots when stopping.
async fn announce(redis: Redis, settings: WorkerSettings, ctxs: Vec<Arc<Ctx>>, stop: CancellationToken) {
    let name = &settings.worker_name;
    let mut kinds: Vec<BackendKind> = ctxs.iter().map(|c| c.kind).collect();
    kinds.dedup();
    let mut every = tokio::time::interval(mage_domain::workers::REFRESH_EVERY);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = every.tick() => {
                for kind in &kinds {
                    let slots = settings.render_slots(*kind);
                    if let Err(e) = mage_domain::workers::announce(&redis, Queue::Render(*kind), name, slots).await {
                        tracing::warn!(error = %e, "could not announce the render worker");
                    }
                }
                for ctx in &ctxs {
                    let _ = ctx.slot.refresh(&ctx.probe()).await;
                }
            }
        }
    }
    for kind in kinds {
        let _ =
            mage_domain::workers::withdraw(&redis, Queue::Render(kind), name, settings.render_slots(kind))
                .await;
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
    label: &'static str,
    queue: Option<Queue>,
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
        match queue {
            Some(queue) => note_failed(ctx, queue).await,
            None => mage_domain::metrics::job_attempt_failed(label),
        }
    }
    mage_domain::metrics::job_finished(label, outcome, started.elapsed());
    result
}
