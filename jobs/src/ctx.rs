//! What every job handler holds, and the few steps every generation job
//! shares (storage keys, failing a generation, counting a failed attempt).

use std::sync::Arc;

use mage_domain::catalog::BackendKind;
use mage_domain::core::Core;
use mage_domain::generations;
use mage_domain::queue::Queue;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::backend::RenderBackend;
use crate::settings::WorkerSettings;
use crate::slot::{Probe, Slot};
use crate::wake::Cancels;

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
    /// The backend refused Mage (a revoked API token): a fault of the
    /// backend, not of the job, so a render job gives the attempt back once
    /// a health probe agrees (see `render::give_back`); otherwise a `Retry`.
    Refused(String),
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
    /// Whose render queue this context's workers take (the other queues
    /// ignore it).
    pub kind: BackendKind,
    pub core: Core,
    pub backend: Arc<dyn RenderBackend>,
    pub slot: Arc<Slot>,
    pub cancels: Cancels,
    pub worker_name: String,
    pub settings: WorkerSettings,
    /// SIGTERM arrived: take nothing new, cut waits short.
    pub stopping: CancellationToken,
    /// The shutdown grace period is over: give running renders back.
    pub hand_back: CancellationToken,
    /// Where the `mail` queue sends (SMTP, the development mailbox, nowhere).
    pub mailer: Arc<crate::mail::Mailer>,
    /// The webhook client and settings of the `deliver` queue.
    pub webhooks: Arc<crate::webhooks::Webhooks>,
}

impl Ctx {
    /// What the render slot needs to check its backend and wait.
    pub(crate) fn probe(&self) -> Probe<'_> {
        Probe {
            backend: &*self.backend,
            worker: &self.worker_name,
            redis: &self.core.redis,
            stopping: &self.stopping,
        }
    }
}

/// Storage key of a generation's rendered source.
pub(crate) fn source_key(id: Uuid, ext: &str) -> String {
    format!("generations/{id}/source.{ext}")
}

/// Storage prefix of everything a generation owns.
pub(crate) fn output_prefix(id: Uuid) -> String {
    generations::media_prefix(id)
}

/// One failed attempt of a `queue` job, for metrics and the admin count.
pub(crate) async fn note_failed(ctx: &Ctx, queue: Queue) {
    mage_domain::metrics::job_attempt_failed(queue.name());
    ctx.core.queues.note_failed(queue).await;
}

/// Cancelled: whatever this generation already stored goes too.
pub(crate) async fn discard_outputs(ctx: &Ctx, id: Uuid) {
    if let Err(e) = ctx.core.storage.delete_prefix(&output_prefix(id)).await {
        tracing::warn!(generation_id = %id, error = %e, "could not delete the outputs of a cancelled generation");
    }
}

pub(crate) async fn fail_generation(
    ctx: &Ctx,
    id: Uuid,
    user_message: &str,
) -> Result<(), mage_domain::Error> {
    let mut conn = ctx.core.pool.get().await?;
    if let Some(g) = generations::fail(&mut conn, id, user_message).await? {
        drop(conn);
        if let Err(e) = ctx.core.storage.delete_prefix(&output_prefix(id)).await {
            tracing::warn!(generation_id = %id, error = %e, "could not delete the outputs of a failed generation");
        }
        generations::finished_with(&ctx.core.redis, &g).await;
    }
    Ok(())
}
