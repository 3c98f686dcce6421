//! The `transcode` queue: RENDERING → TRANSCODING → SUCCEEDED. One ffmpeg
//! pass writes the HLS ladder, the poster and a faststart MP4; the outputs
//! go to storage under `generations/<id>/`, and success captures the hold.

use std::sync::Arc;
use std::time::Duration;

use mage_domain::catalog::MediaKind;
use mage_domain::generations::{self, Output, Rendition, Status};
use mage_domain::queue::TranscodeJob;
use tracing::Instrument;

use crate::ctx::{Ctx, JobError, output_prefix};
use crate::media::{self, MediaError};
use crate::progress::Progress;

pub(crate) async fn run(ctx: Arc<Ctx>, job: TranscodeJob) -> Result<(), JobError> {
    let id = job.generation_id;
    let span = tracing::info_span!("transcode", generation_id = %id);
    async move {
        let mut conn = ctx.core.pool.get().await?;
        let Some(current) = generations::find(&mut conn, id).await? else {
            return Ok(());
        };
        let g = match current.status() {
            Status::Rendering => match generations::start_transcode(&mut conn, id).await? {
                Some(g) => g,
                None => return Ok(()),
            },
            // Redelivered after a crash mid-transcode: do it again, the
            // outputs are overwritten in place.
            Status::Transcoding => current,
            status => {
                if status == Status::Canceled {
                    ctx.core.storage.delete_prefix(&output_prefix(id)).await?;
                }
                tracing::info!(status = status.as_str(), "nothing to transcode");
                return Ok(());
            }
        };
        drop(conn);
        mage_domain::events::publish_generation_logged(&ctx.core.redis, &g, false).await;
        let guard = ctx.cancels.register(id);
        let mut progress = Progress::new(ctx.core.pool.clone(), ctx.core.redis.clone(), g.clone());

        let work = tempfile::Builder::new().prefix("mage-transcode-").tempdir()?;
        let ext = job.source_key.rsplit('.').next().unwrap_or("bin").to_owned();
        let source = work.path().join(format!("source.{ext}"));
        ctx.core.storage.get_to_file(&job.source_key, &source).await?;
        let out_dir = work.path().join("out");
        tokio::fs::create_dir_all(&out_dir).await?;

        let output = match g.media_kind() {
            MediaKind::Image => {
                let out = media::transcode_image(&source, &out_dir).await.map_err(media_error)?;
                let prefix = output_prefix(id);
                Output {
                    kind: MediaKind::Image,
                    hls: None,
                    video: None,
                    image: Some(format!("{prefix}{}", out.image)),
                    poster: format!("{prefix}{}", out.poster),
                    width: out.width,
                    height: out.height,
                    duration_seconds: None,
                    renditions: Vec::new(),
                }
            }
            MediaKind::Video => {
                let (tx, mut rx) = tokio::sync::watch::channel(0u8);
                // Its own task, owning its inputs: a future that borrows
                // across this select trips rustc's Send inference (apalis
                // needs the handler future Send for every lifetime).
                let (src, dst, token) = (source.clone(), out_dir.clone(), guard.token.clone());
                let mut transcoding = tokio::spawn(async move {
                    media::transcode_video(
                        &src,
                        &dst,
                        move |p| {
                            let _ = tx.send(p);
                        },
                        token,
                    )
                    .await
                });
                // If this job ends early, ffmpeg (kill_on_drop) goes with the task.
                let _abort = AbortOnDrop(transcoding.abort_handle());
                let mut tick = tokio::time::interval(Duration::from_millis(500));
                let out = loop {
                    let step = tokio::select! {
                        res = &mut transcoding => {
                            break res.map_err(|e| JobError::Retry(format!("transcode task: {e}")))?.map_err(media_error)?
                        }
                        _ = tick.tick() => progress.tick().await?,
                        changed = rx.changed() => {
                            if changed.is_err() {
                                continue;
                            }
                            let p = *rx.borrow_and_update();
                            progress.update(p, "transcoding").await?
                        }
                    };
                    if step.is_err() {
                        // Left TRANSCODING (cancelled): stop ffmpeg.
                        guard.token.cancel();
                    }
                };
                let prefix = output_prefix(id);
                Output {
                    kind: MediaKind::Video,
                    hls: Some(format!("{prefix}{}", out.master_playlist)),
                    video: Some(format!("{prefix}{}", out.mp4)),
                    image: None,
                    poster: format!("{prefix}{}", out.poster),
                    width: out.width,
                    height: out.height,
                    duration_seconds: Some(out.duration_seconds),
                    renditions: out
                        .renditions
                        .iter()
                        .map(|r| Rendition { playlist: format!("{prefix}{}", r.playlist), ..r.clone() })
                        .collect(),
                }
            }
        };
        ctx.core.storage.put_dir(&output_prefix(id), &out_dir).await?;
        let mut conn = ctx.core.pool.get().await?;
        match generations::succeed(&mut conn, id, &output).await? {
            Some(done) => {
                drop(conn);
                if let Err(e) = ctx.core.storage.delete_prefix(&job.source_key).await {
                    tracing::warn!(error = %e, "could not delete the rendered source");
                }
                tracing::info!(cost = done.cost, "generation succeeded; hold captured");
                generations::finished_with(&ctx.core.redis, &done).await;
                Ok(())
            }
            None => {
                // Cancelled between the last progress write and now: the
                // user was not charged, so nothing of it stays either.
                ctx.core.storage.delete_prefix(&output_prefix(id)).await?;
                Err(JobError::Stop)
            }
        }
    }
    .instrument(span)
    .await
}

fn media_error(e: MediaError) -> JobError {
    match e {
        MediaError::Broken(user_message) => JobError::Fail { detail: user_message.clone(), user_message },
        MediaError::Failed { user_message, detail } => JobError::Fail { user_message, detail },
        MediaError::Canceled => JobError::Stop,
        MediaError::Io(e) => JobError::Retry(e.to_string()),
    }
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
