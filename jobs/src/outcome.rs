//! What a generation job's ending means: the generation's fate (succeeded,
//! failed with its hold released, or tried again) and apalis' verdict on
//! the task. Render and transcode differ only in how they try again (see
//! [`Retry`] and the crate note).

use std::time::Duration;

use apalis::prelude::{AbortError, BoxDynError};
use mage_domain::generations;
use mage_domain::queue::{Queue, RenderJob};
use mage_domain::rows::Generation;
use uuid::Uuid;

use crate::ctx::{Ctx, JobError, discard_outputs, fail_generation, note_failed};

/// Which attempt of which generation's job just ended.
pub(crate) struct Attempt {
    pub queue: Queue,
    pub generation_id: Uuid,
    /// 1 for the first.
    pub number: usize,
    pub max: usize,
}

/// How a job that may work later runs again.
pub(crate) enum Retry<'a> {
    /// A new task after a backoff that doubles per attempt, the generation
    /// back to QUEUED meanwhile (renders: no GPU slot is held while waiting).
    Requeue { job: &'a RenderJob, generation: &'a Generation },
    /// apalis-redis runs the same task again after a short sleep
    /// (transcodes: local and short).
    InPlace,
}

pub(crate) async fn conclude(
    ctx: &Ctx,
    attempt: Attempt,
    retry: Retry<'_>,
    outcome: Result<(), JobError>,
) -> Result<(), BoxDynError> {
    let Attempt { queue, generation_id: id, number, max } = attempt;
    match outcome {
        Ok(()) | Err(JobError::HandedBack) => Ok(()),
        Err(JobError::Stop) => {
            discard_outputs(ctx, id).await;
            Ok(())
        }
        Err(JobError::Fail { user_message, detail }) => {
            tracing::warn!(generation_id = %id, %detail, "generation failed");
            note_failed(ctx, queue).await;
            fail_generation(ctx, id, &user_message).await?;
            Ok(())
        }
        Err(JobError::Retry(detail) | JobError::Refused(detail)) if number >= max => {
            tracing::error!(generation_id = %id, attempt = number, %detail, "{queue} failed for the last time");
            fail_generation(ctx, id, generations::INTERNAL_FAILURE).await?;
            let why = match retry {
                Retry::Requeue { .. } => format!("attempt {number} of {max}: {detail}"),
                Retry::InPlace => detail,
            };
            Err(AbortError::new(why).into())
        }
        Err(JobError::Retry(detail) | JobError::Refused(detail)) => match retry {
            Retry::Requeue { job, generation: g } => {
                // Retried through a new job, so the queue sees this run as ok.
                note_failed(ctx, queue).await;
                let exponent = (g.attempts.max(1) - 1).min(10) as u32;
                let backoff = ctx.settings.retry_backoff.saturating_mul(1 << exponent);
                let stage = format!("retrying (attempt {number} of {max} failed)");
                let mut conn = ctx.core.pool.get().await?;
                if let Some(queued) = generations::requeue(&mut conn, id, &ctx.worker_name, &stage).await? {
                    drop(conn);
                    ctx.core.queues.push_render_after(g.backend, job, backoff).await?;
                    tracing::warn!(attempt = number, retry_in = ?backoff, %detail, "render failed; it will be retried");
                    mage_domain::events::publish_generation_logged(&ctx.core.redis, &queued, false).await;
                }
                Ok(())
            }
            Retry::InPlace => {
                tracing::warn!(generation_id = %id, attempt = number, %detail, "job failed; it will be retried");
                // `number` counts from 1; the sleep doubles from 1 s.
                tokio::time::sleep(Duration::from_secs(1 << (number - 1).min(5))).await;
                Err(detail.into())
            }
        },
    }
}
