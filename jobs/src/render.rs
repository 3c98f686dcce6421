//! The `render` queue: one job per generation (idempotent by its id). It
//! checks the backend's health, moves the generation QUEUED → RENDERING,
//! attaches to the render an earlier attempt recorded (or submits a new
//! one, recorded first), stores every output and hands the primary one to
//! the `transcode` queue.

use std::sync::Arc;
use std::time::Duration;

use apalis::prelude::BoxDynError;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use mage_domain::catalog::{self, MediaKind, RenderModel};
use mage_domain::generations::{self, NotStarted};
use mage_domain::queue::{Queue, RenderJob, TranscodeJob};
use mage_domain::rows::Generation;
use tracing::Instrument;
use uuid::Uuid;

use crate::backend::{self, MediaKind as BackendKind, RenderError, RenderEvent, RenderOutput, RenderRequest};
use crate::ctx::{Ctx, JobError, output_prefix, source_key};
use crate::outcome::{self, Attempt, Retry};
use crate::progress::Progress;
use crate::slot;
use crate::wake::CancelGuard;

/// A RENDERING generation whose worker has not written a heartbeat for this
/// long is taken over by whichever worker gets its job again; it matches
/// how long apalis-redis waits before handing a dead worker's tasks on
/// (`queue::HEARTBEAT` × `queue::MISSED_HEARTBEATS`).
pub const TAKEOVER_AFTER: Duration = Duration::from_secs(60);

pub(crate) async fn handle(ctx: Arc<Ctx>, job: RenderJob) -> Result<(), BoxDynError> {
    let id = job.generation_id;
    let span = tracing::info_span!("render", generation_id = %id, backend = %ctx.backend.location());
    async move {
        if ctx.stopping.is_cancelled() {
            // Fetched just as the worker began to stop: give it straight back.
            ctx.core.queues.push_render(ctx.kind, &job).await?;
            return Ok(());
        }
        if let Err(why) = ctx.slot.check(&ctx.probe()).await {
            // Put back before backing off, so the job is never only in a
            // sleeping worker's hands. The generation is untouched: no
            // attempt is used.
            ctx.core.queues.push_render_after(ctx.kind, &job, slot::UNHEALTHY_RETRY).await?;
            tracing::warn!(%why, "render backend unhealthy: job put back");
            ctx.slot.back_off(&ctx.probe()).await;
            return Ok(());
        }
        let mut conn = ctx.core.pool.get().await?;
        let started =
            generations::start_render(&mut conn, id, &ctx.worker_name, TAKEOVER_AFTER)
                .await?;
        let Some(g) = started else {
            match generations::why_not_started(&mut conn, id, TAKEOVER_AFTER).await? {
                NotStarted::Busy { retry_in } => {
                    // Another worker has it and was alive a moment ago. If it
                    // died, this job takes over once its heartbeat is stale.
                    tracing::info!(retry_in = ?retry_in, "another worker renders this generation; checking again later");
                    ctx.core.queues.push_render_after(ctx.kind, &job, retry_in).await?;
                }
                NotStarted::Over | NotStarted::Moved => {
                    tracing::info!("nothing to render: the generation is not waiting for a render");
                }
            }
            return Ok(());
        };
        drop(conn);
        tracing::info!(attempt = g.attempts, "render started");
        mage_domain::events::publish_generation_logged(&ctx.core.redis, &g, true).await;

        let model = {
            let mut conn = ctx.core.pool.get().await?;
            catalog::model(&mut conn, &g.model).await?
        };
        let max_attempts =
            model.as_ref().and_then(|m| m.max_attempts).map_or(ctx.settings.job_attempts, |a| a.max(1) as usize);
        let outcome = match (&model, g.attempts as usize > max_attempts) {
            (None, _) => Err(JobError::Fail {
                user_message: "This model is no longer available.".into(),
                detail: format!("model {} is gone from the catalogue", g.model),
            }),
            // Every earlier attempt died with its worker (a crash loop).
            (Some(_), true) => Err(JobError::Retry(format!("{} attempts started, none finished", g.attempts - 1))),
            (Some(model), false) => run(&ctx, &g, model).await,
        };
        let outcome = match outcome {
            // A token can be revoked between two health checks; if the
            // backend's own probe now agrees it is unfit, the job waits for
            // it like any job of an unhealthy backend. A refusal the probe
            // does not confirm is the job's and counts.
            Err(JobError::Refused(why)) => match ctx.slot.refresh(&ctx.probe()).await {
                Err(_) => return give_back(&ctx, &job, &why).await,
                Ok(()) => Err(JobError::Retry(why)),
            },
            outcome => outcome,
        };
        let attempt =
            Attempt { queue: Queue::Render(ctx.kind), generation_id: id, number: g.attempts as usize, max: max_attempts };
        outcome::conclude(&ctx, attempt, Retry::Requeue { job: &job, generation: &g }, outcome).await
    }
    .instrument(span)
    .await
}

/// The attempt that found its backend unfit is not counted: the generation
/// goes back to QUEUED and the job waits, as it would have had the health
/// check before it seen the backend as it is now.
async fn give_back(ctx: &Ctx, job: &RenderJob, why: &str) -> Result<(), BoxDynError> {
    let mut conn = ctx.core.pool.get().await?;
    let queued = generations::give_back(&mut conn, job.generation_id, &ctx.worker_name).await?;
    drop(conn);
    if let Some(queued) = queued {
        ctx.core.queues.push_render_after(ctx.kind, job, slot::UNHEALTHY_RETRY).await?;
        tracing::warn!(%why, "render backend refused us: job put back without using an attempt");
        mage_domain::events::publish_generation_logged(&ctx.core.redis, &queued, false).await;
    }
    ctx.slot.back_off(&ctx.probe()).await;
    Ok(())
}

/// How one pass over a backend job ended.
enum Driven {
    Done(RenderOutput),
    /// The backend does not know the job: submit it again.
    Lost(String),
    Job(JobError),
    Canceled,
    TimedOut,
    HandBack,
}

impl From<mage_domain::Error> for Driven {
    fn from(e: mage_domain::Error) -> Self {
        Self::Job(e.into())
    }
}

async fn run(ctx: &Ctx, g: &Generation, model: &RenderModel) -> Result<(), JobError> {
    let id = g.id;
    let guard = ctx.cancels.register(id);
    let mut progress = Progress::new(ctx.core.pool.clone(), ctx.core.redis.clone(), g.clone());
    let (w, h) = g.resolution.dimensions();
    let work = tempfile::Builder::new().prefix("mage-render-").tempdir()?;
    // Beside the work dir, which the backend must find empty.
    let inputs_dir = tempfile::Builder::new().prefix("mage-inputs-").tempdir()?;
    let inputs = fetch_inputs(ctx, id, inputs_dir.path()).await?;
    let kind = match g.media_kind() {
        MediaKind::Image => BackendKind::Image,
        MediaKind::Video => BackendKind::Video,
    };
    let timeout = model
        .render_timeout_seconds
        .map_or(ctx.settings.render_timeout, |s| Duration::from_secs(s.max(1) as u64));
    let request = |job_id: String| RenderRequest {
        generation_id: id,
        job_id,
        model: model.id.clone(),
        workflow: model.workflow.clone(),
        kind,
        prompt: g.prompt.clone(),
        negative_prompt: g.negative_prompt.clone(),
        width: w,
        height: h,
        duration_seconds: g.duration_seconds.map(|d| d.max(1) as u32),
        fps: model.fps.max(1) as u32,
        // Without a seed of the user's, one fixed by the generation: every
        // attempt renders the same picture.
        seed: g.seed.unwrap_or_else(|| (id.as_u64_pair().0 >> 1) as i64),
        work_dir: work.path().to_path_buf(),
        inputs: inputs.clone(),
        timeout,
    };
    let deadline = tokio::time::Instant::now() + timeout;

    let mut job = match (&g.backend_url, &g.backend_job_id) {
        (Some(location), Some(job_id)) => {
            tracing::info!(%location, %job_id, "attaching to the render an earlier attempt started");
            backend::RenderJob {
                id: job_id.clone(),
                location: location.clone(),
                kind,
                work_dir: work.path().to_path_buf(),
            }
        }
        _ => submit(ctx, id, request(Uuid::new_v4().to_string())).await?,
    };
    let mut resubmitted = false;
    let output = loop {
        let events = ctx.backend.events(&job);
        match drive(ctx, &guard, &mut progress, events, deadline, (id, &job.location)).await {
            Driven::Done(output) => break output,
            Driven::Lost(why) if !resubmitted => {
                tracing::warn!(%why, "the backend lost the render; submitting it again");
                resubmitted = true;
                job = submit(ctx, id, request(Uuid::new_v4().to_string())).await?;
            }
            Driven::Lost(why) => return Err(JobError::Retry(why)),
            Driven::Job(e) => return Err(e),
            Driven::Canceled => {
                // Cancelled by the user (signal or state change): stop the
                // backend; the API already released the credits.
                if let Err(e) = ctx.backend.cancel(&job).await {
                    tracing::warn!(error = %e, "backend did not confirm the cancel");
                }
                return Err(JobError::Stop);
            }
            Driven::TimedOut => {
                if let Err(e) = ctx.backend.cancel(&job).await {
                    tracing::warn!(error = %e, "backend did not confirm the cancel of a timed-out render");
                }
                let mut conn = ctx.core.pool.get().await?;
                generations::record_backend_job(&mut conn, id, &ctx.worker_name, None, None).await?;
                return Err(JobError::Retry(format!("the render took longer than {}s", timeout.as_secs())));
            }
            Driven::HandBack => {
                let mut conn = ctx.core.pool.get().await?;
                if generations::hand_back(&mut conn, id, &ctx.worker_name).await? {
                    ctx.core.queues.push_render(ctx.kind, &RenderJob { generation_id: id }).await?;
                    tracing::info!(
                        "worker stopping: render handed back to the queue (the backend keeps rendering)"
                    );
                }
                return Err(JobError::HandedBack);
            }
        }
    };
    store_outputs(ctx, id, &output).await?;
    progress.update(100, "rendered").await?.map_err(|_| JobError::Stop)?;
    let Some(primary) = output.files.first() else {
        return Err(JobError::Fail {
            user_message: "The renderer produced nothing.".into(),
            detail: "backend finished without output files".into(),
        });
    };
    let ext = primary.extension().and_then(|e| e.to_str()).unwrap_or("bin");
    ctx.core
        .queues
        .push_transcode(&TranscodeJob { generation_id: id, source_key: source_key(id, ext) })
        .await?;
    tracing::info!(files = output.files.len(), "render finished; transcode queued");
    Ok(())
}

/// Records the new backend job on the generation, then submits it: a crash
/// in between leaves a recorded job the backend does not know, which the
/// next attempt submits again (or, for a backend that names its jobs itself,
/// finds by Mage's name). Such a backend's own name is recorded once known.
async fn submit(ctx: &Ctx, id: Uuid, req: RenderRequest) -> Result<backend::RenderJob, JobError> {
    let mut conn = ctx.core.pool.get().await?;
    let location = ctx.backend.location();
    if !generations::record_backend_job(&mut conn, id, &ctx.worker_name, Some(&location), Some(&req.job_id))
        .await?
    {
        return Err(JobError::Stop);
    }
    drop(conn);
    let ours = req.job_id.clone();
    let job = match ctx.backend.submit(req).await {
        Ok(job) => job,
        Err(RenderError::Refused(why)) => {
            // Nothing was created: the next attempt submits afresh rather
            // than searching for a render that does not exist.
            let mut conn = ctx.core.pool.get().await?;
            generations::record_backend_job(&mut conn, id, &ctx.worker_name, None, None).await?;
            return Err(JobError::Refused(why));
        }
        Err(e) => return Err(render_error(e)),
    };
    if job.id != ours {
        let mut conn = ctx.core.pool.get().await?;
        let recorded = generations::record_backend_job(
            &mut conn,
            id,
            &ctx.worker_name,
            Some(&job.location),
            Some(&job.id),
        )
        .await?;
        if !recorded {
            // The generation moved on (cancelled) while it was submitted.
            if let Err(e) = ctx.backend.cancel(&job).await {
                tracing::warn!(error = %e, "backend did not confirm the cancel of an unwanted render");
            }
            return Err(JobError::Stop);
        }
        tracing::info!(job_id = %ours, backend_job_id = %job.id, "the backend named the render itself");
    }
    Ok(job)
}

async fn drive(
    ctx: &Ctx,
    guard: &CancelGuard,
    progress: &mut Progress,
    mut events: BoxStream<'static, Result<RenderEvent, RenderError>>,
    deadline: tokio::time::Instant,
    (id, location): (Uuid, &str),
) -> Driven {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        let step = tokio::select! {
            _ = guard.token.cancelled() => return Driven::Canceled,
            _ = ctx.hand_back.cancelled() => return Driven::HandBack,
            _ = tokio::time::sleep_until(deadline) => return Driven::TimedOut,
            _ = tick.tick() => progress.tick().await,
            ev = events.next() => match ev {
                Some(Ok(RenderEvent::Progress { stage, percent })) => progress.update(percent, &stage).await,
                Some(Ok(RenderEvent::Finished(out))) => return Driven::Done(out),
                Some(Ok(RenderEvent::Located(backend_id))) => {
                    // Best effort: unrecorded, the next takeover searches again.
                    let recorded = match ctx.core.pool.get().await {
                        Ok(mut conn) => generations::record_backend_job(
                            &mut conn,
                            id,
                            &ctx.worker_name,
                            Some(location),
                            Some(&backend_id),
                        )
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    };
                    if let Err(e) = recorded {
                        tracing::warn!(error = %e, %backend_id, "could not record the backend's job id");
                    }
                    Ok(Ok(()))
                }
                Some(Err(RenderError::Lost(why))) => return Driven::Lost(why),
                Some(Err(e)) => return Driven::Job(render_error(e)),
                None => return Driven::Job(JobError::Retry("the backend ended the job without a result".into())),
            },
        };
        match step {
            Ok(Ok(())) => {}
            // The generation moved on (cancelled, or failed by the sweeper).
            Ok(Err(_moved)) => return Driven::Canceled,
            Err(e) => return e.into(),
        }
    }
}

/// The primary output becomes the transcode's source; every other output
/// is kept beside it (a workflow may save several).
async fn store_outputs(ctx: &Ctx, id: Uuid, output: &RenderOutput) -> Result<(), JobError> {
    for (i, file) in output.files.iter().enumerate() {
        let key = if i == 0 {
            source_key(id, file.extension().and_then(|e| e.to_str()).unwrap_or("bin"))
        } else {
            let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            format!("{}extra/{}", output_prefix(id), safe_name(&name, i))
        };
        ctx.core.storage.put_file(&key, file).await?;
    }
    Ok(())
}

fn safe_name(name: &str, i: usize) -> String {
    let cleaned: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect();
    let cleaned = cleaned.trim_start_matches('.');
    if cleaned.is_empty() { format!("output-{i}") } else { cleaned.to_owned() }
}

fn render_error(e: RenderError) -> JobError {
    match e {
        RenderError::Failed { user_message, detail } => JobError::Fail { user_message, detail },
        RenderError::Unavailable(m) | RenderError::Lost(m) => JobError::Retry(m),
        RenderError::Canceled => JobError::Stop,
        RenderError::Io(e) => JobError::Retry(e.to_string()),
        RenderError::Refused(m) => JobError::Refused(m),
    }
}

/// The clean files of the generation's input assets, downloaded into `dir`
/// in the model's order. An asset keeps its bytes while an unfinished
/// generation uses it, so a missing one is a fault of ours: the generation
/// fails with its credits released rather than rendering without it.
async fn fetch_inputs(
    ctx: &Ctx,
    id: Uuid,
    dir: &std::path::Path,
) -> Result<Vec<std::path::PathBuf>, JobError> {
    let mut conn = ctx.core.pool.get().await?;
    let inputs = mage_domain::assets::inputs_of(&mut conn, &[id]).await?;
    drop(conn);
    let mut files = Vec::with_capacity(inputs.len());
    for (n, (_, asset)) in inputs.into_iter().enumerate() {
        let Some(files_of) = asset.output.as_ref().filter(|_| asset.purged_at.is_none()) else {
            return Err(JobError::Fail {
                user_message: "An input of this generation is no longer available.".into(),
                detail: format!("input asset {} has no stored file", asset.id),
            });
        };
        let ext = files_of.original.rsplit('.').next().unwrap_or("bin");
        let path = dir.join(format!("input-{n}.{ext}"));
        ctx.core.storage.get_to_file(&files_of.original, &path).await?;
        files.push(path);
    }
    Ok(files)
}
