//! The transitions a worker and a cancelling user make, each one guarded
//! `UPDATE`; a final state closes the generation's holds in the same
//! transaction.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use uuid::Uuid;

use super::{Services, Status, find, find_own, sources};
use crate::core::Core;
use crate::db::Connection;
use crate::kv::Redis;
use crate::output::Output;
use crate::rows::Generation;
use crate::schema::generations;
use crate::{Error, Result, credits, events, limits};

/// QUEUED → RENDERING, by `worker`. A generation already RENDERING is taken
/// over only when its worker went silent (no heartbeat for `stale`), handed
/// it back (shutdown), or is this same worker: that is a job redelivered
/// after a crash, and the render it recorded (`backend_url`,
/// `backend_job_id`) is kept so the new attempt attaches to it. Returns
/// `None` when someone else has it or it has moved on (see [`why_not_started`]).
pub async fn start_render(
    conn: &mut Connection,
    id: Uuid,
    worker: &str,
    stale: std::time::Duration,
) -> Result<Option<Generation>> {
    let stale_before = Utc::now() - chrono::Duration::from_std(stale).unwrap_or(chrono::Duration::MAX);
    let now = Utc::now();
    Ok(diesel::update(generations::table)
        .filter(generations::id.eq(id))
        .filter(
            generations::status.eq(Status::Queued.as_str()).or(generations::status
                .eq(Status::Rendering.as_str())
                .and(
                    generations::worker
                        .eq(worker)
                        .or(generations::worker.is_null())
                        .or(generations::heartbeat_at.lt(stale_before)),
                )),
        )
        .filter(generations::cancel_requested_at.is_null())
        .set((
            generations::status.eq(Status::Rendering.as_str()),
            generations::started_at.eq(now),
            generations::heartbeat_at.eq(now),
            generations::updated_at.eq(now),
            generations::progress.eq(0),
            generations::stage.eq("starting"),
            generations::attempts.eq(generations::attempts + 1),
            generations::worker.eq(worker),
        ))
        .returning(Generation::as_returning())
        .get_result(conn)
        .await
        .optional()?)
}

/// Why [`start_render`] found nothing to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotStarted {
    /// Final, cancelled or gone: the job is done.
    Over,
    /// Another worker renders it and is alive: try again once its heartbeat
    /// could have gone stale.
    Busy { retry_in: std::time::Duration },
    /// Past the render (transcoding): the job is done.
    Moved,
}

pub async fn why_not_started(
    conn: &mut Connection,
    id: Uuid,
    stale: std::time::Duration,
) -> Result<NotStarted> {
    let Some(g) = find(conn, id).await? else { return Ok(NotStarted::Over) };
    Ok(match g.status() {
        Status::Rendering => {
            let age =
                g.heartbeat_at.map(|h| (Utc::now() - h).to_std().unwrap_or_default()).unwrap_or_default();
            NotStarted::Busy { retry_in: stale.saturating_sub(age) + std::time::Duration::from_secs(1) }
        }
        Status::Transcoding => NotStarted::Moved,
        _ => NotStarted::Over,
    })
}

/// Records, before submitting, which render on which backend this attempt
/// runs. `false`: the generation left this worker (cancelled, taken over).
pub async fn record_backend_job(
    conn: &mut Connection,
    id: Uuid,
    worker: &str,
    backend_url: Option<&str>,
    backend_job_id: Option<&str>,
) -> Result<bool> {
    let n = diesel::update(generations::table)
        .filter(generations::id.eq(id))
        .filter(generations::status.eq(Status::Rendering.as_str()))
        .filter(generations::worker.eq(worker))
        .set((
            generations::backend_url.eq(backend_url),
            generations::backend_job_id.eq(backend_job_id),
            generations::updated_at.eq(Utc::now()),
        ))
        .execute(conn)
        .await?;
    Ok(n == 1)
}

/// RENDERING → QUEUED after a failed attempt that may work later; the
/// recorded backend render is kept, so the next attempt collects it if it
/// finished after all. `false`: it already moved on.
pub async fn requeue(
    conn: &mut Connection,
    id: Uuid,
    worker: &str,
    stage: &str,
) -> Result<Option<Generation>> {
    back_to_queue(conn, id, worker, stage, 0).await
}

/// RENDERING → QUEUED with the attempt [`start_render`] counted taken back:
/// the attempt ended before any render began, for a reason of the backend's
/// (it refused our credentials), not of the generation's.
pub async fn give_back(conn: &mut Connection, id: Uuid, worker: &str) -> Result<Option<Generation>> {
    back_to_queue(conn, id, worker, "waiting for the render backend", 1).await
}

/// RENDERING by `worker` → QUEUED, with `returned` attempts taken back.
async fn back_to_queue(
    conn: &mut Connection,
    id: Uuid,
    worker: &str,
    stage: &str,
    returned: i32,
) -> Result<Option<Generation>> {
    use diesel::sql_types::Integer;
    let attempts =
        diesel::dsl::sql::<Integer>("greatest(attempts - ").bind::<Integer, _>(returned).sql(", 0)");
    Ok(diesel::update(generations::table)
        .filter(generations::id.eq(id))
        .filter(generations::status.eq(Status::Rendering.as_str()))
        .filter(generations::worker.eq(worker))
        .set((
            generations::status.eq(Status::Queued.as_str()),
            generations::stage.eq(stage),
            generations::progress.eq(0),
            generations::attempts.eq(attempts),
            generations::worker.eq(None::<String>),
            generations::heartbeat_at.eq(None::<DateTime<Utc>>),
            generations::updated_at.eq(Utc::now()),
        ))
        .returning(Generation::as_returning())
        .get_result(conn)
        .await
        .optional()?)
}

/// A stopping worker gives a render back without waiting for it: the
/// generation stays RENDERING (its backend render keeps going) and any
/// worker may take it over at once.
pub async fn hand_back(conn: &mut Connection, id: Uuid, worker: &str) -> Result<bool> {
    let n = diesel::update(generations::table)
        .filter(generations::id.eq(id))
        .filter(generations::status.eq(Status::Rendering.as_str()))
        .filter(generations::worker.eq(worker))
        .set((generations::worker.eq(None::<String>), generations::updated_at.eq(Utc::now())))
        .execute(conn)
        .await?;
    Ok(n == 1)
}

/// Records progress and proves the worker alive. `false`: the generation is
/// no longer `expected` (cancelled, failed by the sweeper): stop working.
pub async fn record_progress(
    conn: &mut Connection,
    id: Uuid,
    expected: Status,
    progress: i32,
    stage: &str,
) -> Result<bool> {
    let now = Utc::now();
    let n = diesel::update(generations::table)
        .filter(generations::id.eq(id))
        .filter(generations::status.eq(expected.as_str()))
        .set((
            generations::progress.eq(progress.clamp(0, 100)),
            generations::stage.eq(stage),
            generations::heartbeat_at.eq(now),
            generations::updated_at.eq(now),
        ))
        .execute(conn)
        .await?;
    Ok(n == 1)
}

/// RENDERING → TRANSCODING.
pub async fn start_transcode(conn: &mut Connection, id: Uuid) -> Result<Option<Generation>> {
    let now = Utc::now();
    Ok(diesel::update(generations::table)
        .filter(generations::id.eq(id))
        .filter(generations::status.eq_any(sources(Status::Transcoding)))
        .set((
            generations::status.eq(Status::Transcoding.as_str()),
            generations::progress.eq(0),
            generations::stage.eq("transcoding"),
            generations::heartbeat_at.eq(now),
            generations::updated_at.eq(now),
        ))
        .returning(Generation::as_returning())
        .get_result(conn)
        .await
        .optional()?)
}

/// TRANSCODING → SUCCEEDED with its output, capturing the hold in the same
/// transaction. `None`: it had already left TRANSCODING (cancelled).
pub async fn succeed(conn: &mut Connection, id: Uuid, output: &Output) -> Result<Option<Generation>> {
    conn.transaction::<_, Error, _>(async |conn| {
        let now = Utc::now();
        let g: Option<Generation> = diesel::update(generations::table)
            .filter(generations::id.eq(id))
            .filter(generations::status.eq_any(sources(Status::Succeeded)))
            .set((
                generations::status.eq(Status::Succeeded.as_str()),
                generations::progress.eq(100),
                generations::stage.eq(None::<String>),
                generations::output.eq(output),
                generations::finished_at.eq(now),
                generations::updated_at.eq(now),
            ))
            .returning(Generation::as_returning())
            .get_result(conn)
            .await
            .optional()?;
        if g.is_some() {
            credits::close_generation_holds(conn, id, true).await?;
        }
        Ok(g)
    })
    .await
}

/// Any active state → FAILED with a message for the user, releasing the
/// hold. `None`: it was already final.
pub async fn fail(conn: &mut Connection, id: Uuid, user_message: &str) -> Result<Option<Generation>> {
    end(conn, id, None, Status::Failed, Some(user_message)).await
}

async fn end(
    conn: &mut Connection,
    id: Uuid,
    user_id: Option<Uuid>,
    to: Status,
    error: Option<&str>,
) -> Result<Option<Generation>> {
    conn.transaction::<_, Error, _>(async |conn| {
        let now = Utc::now();
        let mut q = diesel::update(generations::table)
            .filter(generations::id.eq(id))
            .filter(generations::status.eq_any(sources(to)))
            .into_boxed();
        if let Some(u) = user_id {
            q = q.filter(generations::user_id.eq(u));
        }
        let g: Option<Generation> = q
            .set((
                generations::status.eq(to.as_str()),
                generations::stage.eq(None::<String>),
                generations::error.eq(error),
                generations::finished_at.eq(now),
                generations::updated_at.eq(now),
                generations::cancel_requested_at.eq(if to == Status::Canceled { Some(now) } else { None }),
            ))
            .returning(Generation::as_returning())
            .get_result(conn)
            .await
            .optional()?;
        if g.is_some() {
            credits::close_generation_holds(conn, id, false).await?;
        }
        Ok(g)
    })
    .await
}

#[derive(Debug)]
pub struct Canceled {
    pub generation: Generation,
    /// It was RENDERING or TRANSCODING: its worker must be told to stop.
    pub was_running: bool,
}

/// The user cancels: a QUEUED, RENDERING or TRANSCODING generation becomes
/// CANCELED at once and its hold is released; a running one's worker is
/// signalled by the caller. Any other state is a `Conflict`.
pub async fn cancel(conn: &mut Connection, user_id: Uuid, id: Uuid) -> Result<Canceled> {
    let before = find_own(conn, user_id, id).await?;
    match end(conn, id, Some(user_id), Status::Canceled, None).await? {
        Some(generation) => Ok(Canceled { generation, was_running: before.status() != Status::Queued }),
        None => {
            let now = find_own(conn, user_id, id).await?;
            Err(Error::Conflict(format!("a {} generation cannot be cancelled", now.status)))
        }
    }
}

/// Cancels and tells a running generation's worker to stop. Takes the
/// `Core` (a `&Services` coerces to it), so the sweeper can cancel too.
pub async fn cancel_and_signal(core: &Core, user_id: Uuid, id: Uuid) -> Result<Generation> {
    let mut conn = core.pool.get().await?;
    let c = cancel(&mut conn, user_id, id).await?;
    drop(conn);
    after_cancel(core, &c).await;
    Ok(c.generation)
}

/// What follows a committed [`cancel`]: the running generation's worker is
/// told to stop, its slot freed and the change published.
pub async fn after_cancel(core: &Core, c: &Canceled) {
    let id = c.generation.id;
    if c.was_running
        && let Err(e) = events::publish_cancel(&core.redis, id).await
    {
        // The worker also notices on its next progress write.
        tracing::warn!(generation_id = %id, error = %e, "could not signal the cancel to the worker");
    }
    tracing::info!(generation_id = %id, "generation cancelled");
    finished_with(&core.redis, &c.generation).await;
    if !c.was_running {
        // Everything queued behind it moved up one place.
        events::publish_queue_advanced_logged(&core.redis).await;
    }
}

/// After a generation reaches a final state: free its active slot and
/// publish the change (of the generation and of its owner's credits).
pub async fn finished(svc: &Services, g: &Generation) {
    finished_with(&svc.redis, g).await;
}

pub async fn finished_with(redis: &Redis, g: &Generation) {
    crate::metrics::generation_finished(&g.model, g.status.as_str());
    if let Err(e) = limits::release_active(redis, g.user_id, &g.limit_member()).await {
        tracing::warn!(generation_id = %g.id, error = %e, "could not free the active-generation slot");
    }
    events::publish_generation_logged(redis, g, false).await;
    // Reaching a final state captured or released the hold.
    events::publish_credits_changed_logged(redis, g.user_id).await;
}
