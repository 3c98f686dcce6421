//! The `render` queue: one job per generation (idempotent by its id). It
//! moves the generation QUEUED → RENDERING, drives the backend, stores the
//! rendered source and hands it to the `transcode` queue.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use mage_domain::catalog::{self, MediaKind};
use mage_domain::generations;
use mage_domain::queue::{RenderJob, TranscodeJob};
use tracing::Instrument;

use crate::backend::{MediaKind as BackendKind, RenderError, RenderEvent, RenderRequest};
use crate::progress::Progress;
use crate::{Ctx, JobError, source_key};

/// A RENDERING generation whose worker has not written a heartbeat for this
/// long is taken over by whichever worker gets its job again.
pub const STALE_AFTER: Duration = Duration::from_secs(60);

pub(crate) async fn run(ctx: Arc<Ctx>, job: RenderJob) -> Result<(), JobError> {
    let id = job.generation_id;
    let span = tracing::info_span!("render", generation_id = %id);
    async move {
        let mut conn = ctx.pool.get().await?;
        let Some(g) =
            generations::start_render(&mut conn, id, &ctx.worker_name, ctx.backend.name(), STALE_AFTER)
                .await?
        else {
            // Already done, cancelled, or running on a live worker: running
            // this job again must not render twice.
            tracing::info!("nothing to render: the generation is not waiting for a render");
            return Ok(());
        };
        drop(conn);
        tracing::info!(attempt = g.attempts, "render started");
        mage_domain::events::publish_generation_logged(&ctx.redis, &g, true).await;

        let guard = ctx.cancels.register(id);
        let mut progress = Progress::new(ctx.pool.clone(), ctx.redis.clone(), g.clone());
        let (w, h) =
            catalog::Resolution::parse(&g.resolution).unwrap_or(catalog::Resolution::R480p).dimensions();
        let model = {
            let mut conn = ctx.pool.get().await?;
            catalog::model(&mut conn, &g.model).await?
        };
        let Some(model) = model else {
            return Err(JobError::Fail {
                user_message: "This model is no longer available.".into(),
                detail: format!("model {} is gone from the catalogue", g.model),
            });
        };
        let work = tempfile::Builder::new().prefix("mage-render-").tempdir()?;
        let req = RenderRequest {
            generation_id: id,
            model: model.id.clone(),
            workflow: model.workflow.clone(),
            kind: match g.media_kind() {
                MediaKind::Image => BackendKind::Image,
                MediaKind::Video => BackendKind::Video,
            },
            prompt: g.prompt.clone(),
            negative_prompt: g.negative_prompt.clone(),
            width: w,
            height: h,
            duration_seconds: g.duration_seconds.map(|d| d.max(1) as u32),
            fps: model.fps.max(1) as u32,
            seed: g.seed.unwrap_or(0),
            work_dir: work.path().to_path_buf(),
        };
        let submitted = ctx.backend.submit(req).await.map_err(render_error)?;
        let mut events = ctx.backend.events(&submitted);
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let output = loop {
            let step = tokio::select! {
                _ = guard.token.cancelled() => None,
                _ = tick.tick() => Some(progress.tick().await?),
                ev = events.next() => match ev {
                    Some(Ok(RenderEvent::Progress { stage, percent })) => {
                        Some(progress.update(percent, &stage).await?)
                    }
                    Some(Ok(RenderEvent::Finished(out))) => break out,
                    Some(Err(e)) => return Err(render_error(e)),
                    None => return Err(JobError::Retry("the backend ended the job without a result".into())),
                },
            };
            if !matches!(step, Some(Ok(()))) {
                // Cancelled by the user (signal or state change): stop the
                // backend; the API already released the credits.
                if let Err(e) = ctx.backend.cancel(&submitted).await {
                    tracing::warn!(error = %e, "backend did not confirm the cancel");
                }
                return Err(JobError::Stop);
            }
        };
        let Some(primary) = output.files.first() else {
            return Err(JobError::Fail {
                user_message: "The renderer produced nothing.".into(),
                detail: "backend finished without output files".into(),
            });
        };
        let ext = primary.extension().and_then(|e| e.to_str()).unwrap_or("bin");
        let key = source_key(id, ext);
        ctx.storage.put_file(&key, primary).await?;
        progress.update(100, "rendered").await?.map_err(|_| JobError::Stop)?;
        ctx.queues.push_transcode(&TranscodeJob { generation_id: id, source_key: key }).await?;
        tracing::info!("render finished; transcode queued");
        Ok(())
    }
    .instrument(span)
    .await
}

fn render_error(e: RenderError) -> JobError {
    match e {
        RenderError::Failed { user_message, detail } => JobError::Fail { user_message, detail },
        RenderError::Unavailable(m) => JobError::Retry(m),
        RenderError::Canceled => JobError::Stop,
        RenderError::Io(e) => JobError::Retry(e.to_string()),
    }
}
