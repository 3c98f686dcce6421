//! A FAILED generation runs again with a fresh hold: retried by its owner,
//! or by an admin from the dead-job set.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use tracing::Instrument;
use uuid::Uuid;

use super::create::{enqueue_new, hold_key};
use super::{Services, Status, find, find_own};
use crate::db::Connection;
use crate::rows::Generation;
use crate::schema::generations;
use crate::{Error, Result, credits, limits};

/// FAILED → QUEUED with a fresh hold of the same price and its attempts
/// counted afresh. The caller enqueues.
pub async fn retry(conn: &mut Connection, user_id: Uuid, id: Uuid) -> Result<Generation> {
    conn.transaction::<_, Error, _>(async |conn| {
        let g = super::queries::lock_own(conn, user_id, id).await?;
        if g.status() != Status::Failed {
            return Err(Error::Conflict(format!(
                "only a failed generation can be retried, this one is {}",
                g.status
            )));
        }
        let runs = credits::holds_of(conn, id).await?;
        credits::hold(conn, user_id, g.cost, Some(id), &hold_key(id, runs + 1)).await?;
        let now = Utc::now();
        Ok(diesel::update(generations::table)
            .filter(generations::id.eq(id))
            .filter(generations::status.eq(Status::Failed.as_str()))
            .set((
                generations::status.eq(Status::Queued.as_str()),
                generations::progress.eq(0),
                generations::stage.eq(None::<String>),
                generations::error.eq(None::<String>),
                generations::output.eq(None::<crate::output::Output>),
                // A new run gets every attempt again.
                generations::attempts.eq(0),
                generations::queued_at.eq(now),
                generations::started_at.eq(None::<DateTime<Utc>>),
                generations::finished_at.eq(None::<DateTime<Utc>>),
                generations::heartbeat_at.eq(None::<DateTime<Utc>>),
                generations::cancel_requested_at.eq(None::<DateTime<Utc>>),
                generations::worker.eq(None::<String>),
                generations::backend_url.eq(None::<String>),
                generations::backend_job_id.eq(None::<String>),
                generations::updated_at.eq(now),
            ))
            .returning(Generation::as_returning())
            .get_result(conn)
            .await?)
    })
    .await
}

/// Retries a failed generation: new hold, back in the queue, job enqueued.
pub async fn retry_and_enqueue(svc: &Services, user_id: Uuid, id: Uuid) -> Result<Generation> {
    let mut conn = svc.pool.get().await?;
    let current = find_own(&mut conn, user_id, id).await?;
    if current.status() != Status::Failed {
        return Err(Error::Conflict(format!(
            "only a failed generation can be retried, this one is {}",
            current.status
        )));
    }
    let member = current.limit_member();
    limits::reserve(&svc.redis, svc.limits, user_id, &member).await?;
    let g = match retry(&mut conn, user_id, id).await {
        Ok(g) => g,
        Err(e) => {
            if let Err(undo) = limits::undo(&svc.redis, user_id, &member).await {
                tracing::warn!(error = %undo, "could not give back a rate-limit slot");
            }
            return Err(e);
        }
    };
    let span = tracing::info_span!("generation", generation_id = %g.id);
    enqueue_new(svc, g).instrument(span).await
}

/// An admin retries a dead job: its generation (FAILED when its job died)
/// runs again for its owner, with a fresh hold, skipping the owner's rate
/// limits. The dead job leaves the dead set first, so two admins retrying
/// at once retry once; it goes back if the retry is refused.
pub async fn retry_dead_job(svc: &Services, queue: crate::queue::Queue, task_id: &str) -> Result<Generation> {
    let Some(dead) = svc.queues.take_dead_job(queue, task_id).await? else {
        return Err(Error::NotFound("dead job"));
    };
    let put_back = async || {
        let mut conn = svc.queues.connection();
        let added: redis::RedisResult<i64> = redis::cmd("SADD")
            .arg(svc.queues.config(queue).dead_jobs_set())
            .arg(task_id)
            .query_async(&mut conn)
            .await;
        if let Err(e) = added {
            tracing::warn!(task_id, error = %e, "could not put a dead job back");
        }
    };
    let Some(id) = dead.generation_id else {
        put_back().await;
        return Err(Error::Conflict("this dead job names no generation".into()));
    };
    let mut conn = svc.pool.get().await?;
    let Some(g) = find(&mut conn, id).await? else {
        return Err(Error::NotFound("generation"));
    };
    let g = match retry(&mut conn, g.user_id, id).await {
        Ok(g) => g,
        Err(e) => {
            put_back().await;
            return Err(e);
        }
    };
    drop(conn);
    let span = tracing::info_span!("generation", generation_id = %g.id);
    async {
        tracing::info!(%queue, task_id, "dead job retried by an admin");
        enqueue_new(svc, g).await
    }
    .instrument(span)
    .await
}
