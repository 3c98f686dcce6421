//! The render queue: its depth and wait, and for admins the job counts and
//! render backends behind it.

use async_graphql::{ComplexObject, Context, Object, SimpleObject};
use chrono::{DateTime, Utc};
use mage_domain::generations as domain;

use super::context::{AdminOnly, ContextExt};
use super::pagination::unpaged_complexity;
use crate::error::{ApiError, ApiResult};

#[derive(Default)]
pub struct QueueQuery;

#[Object]
impl QueueQuery {
    /// The render queue right now.
    async fn queue(&self, ctx: &Context<'_>) -> ApiResult<QueueStats> {
        let mut conn = ctx.conn().await?;
        let s = domain::queue_stats(&mut conn).await?;
        Ok(QueueStats { depth: s.depth, running: s.running, average_wait_seconds: s.average_wait_seconds })
    }
}

#[derive(SimpleObject)]
#[graphql(complex)]
pub struct QueueStats {
    /// Generations waiting to start.
    depth: i64,
    /// Generations rendering or transcoding.
    running: i64,
    /// Mean time from queued to started over the last hour.
    average_wait_seconds: Option<f64>,
}

#[ComplexObject]
impl QueueStats {
    /// Render jobs the live workers can run at once, over every backend
    /// of the deployment.
    async fn render_slots(&self, ctx: &Context<'_>) -> ApiResult<i32> {
        let svc = ctx.services();
        let mut slots = 0;
        for kind in &svc.generations.backends.offered {
            let queue = mage_domain::queue::Queue::Render(*kind);
            slots += mage_domain::workers::live_slots(&svc.redis, queue).await.map_err(ApiError::internal)?;
        }
        Ok(slots as i32)
    }

    /// Every render backend's health as the workers last saw it (admins
    /// only).
    #[graphql(guard = "AdminOnly", complexity = "unpaged_complexity(child_complexity)")]
    async fn backends(&self, ctx: &Context<'_>) -> ApiResult<Vec<RenderBackendStatus>> {
        let all = mage_domain::workers::backends(&ctx.services().redis).await.map_err(ApiError::internal)?;
        Ok(all.into_iter().map(RenderBackendStatus).collect())
    }

    /// Job counts per queue (admins only).
    #[graphql(guard = "AdminOnly", complexity = "unpaged_complexity(child_complexity)")]
    async fn jobs(&self, ctx: &Context<'_>) -> ApiResult<Vec<JobQueueCounts>> {
        let queues = &ctx.services().generations.queues;
        let mut out = Vec::new();
        for q in mage_domain::queue::Queue::STORED {
            let c = queues.counts(q).await.map_err(ApiError::internal)?;
            out.push(JobQueueCounts {
                queue: q.name().to_owned(),
                waiting: c.waiting as i32,
                running: c.running as i32,
                failed: c.failed as i32,
                dead: c.dead as i32,
            });
        }
        Ok(out)
    }
}

/// One queue's jobs in Redis.
#[derive(SimpleObject)]
pub struct JobQueueCounts {
    queue: String,
    /// Waiting or scheduled (retries, delayed starts).
    waiting: i32,
    /// Taken by a worker.
    running: i32,
    /// Attempts that failed in the last 24 hours (retried, or dead).
    failed: i32,
    /// Out of attempts (see `deadJobs`).
    dead: i32,
}

/// A render backend (a ComfyUI server, or a worker's synthetic renderer).
pub struct RenderBackendStatus(mage_domain::workers::BackendStatus);

#[Object]
impl RenderBackendStatus {
    /// `synthetic`, `comfyui` or `replicate`.
    async fn kind(&self) -> &str {
        &self.0.kind
    }
    /// Its URL (`local:<worker>` for a synthetic one).
    async fn location(&self) -> &str {
        &self.0.location
    }
    /// Reachable and reporting a GPU with VRAM, checked within the last
    /// two minutes.
    async fn healthy(&self) -> bool {
        self.0.healthy
    }
    async fn detail(&self) -> &str {
        &self.0.detail
    }
    /// Float: VRAM sizes exceed GraphQL's 32-bit Int.
    async fn vram_free_bytes(&self) -> Option<f64> {
        self.0.vram_free_bytes.map(|b| b as f64)
    }
    async fn vram_total_bytes(&self) -> Option<f64> {
        self.0.vram_total_bytes.map(|b| b as f64)
    }
    async fn checked_by(&self) -> &str {
        &self.0.checked_by
    }
    async fn checked_at(&self) -> DateTime<Utc> {
        self.0.checked_at
    }
}
