//! Deleting a generation: it leaves its owner's queries at once and its
//! media leave storage; its ledger entries stay and statistics keep
//! counting it.
//!
//! An active generation is cancelled first, through the cancel path, so its
//! hold is released (and its worker told) exactly as `cancelGeneration`
//! does. Then one guarded `UPDATE` sets `deleted_at` on the final, locked
//! row (so a concurrent retry and a deletion take turns). The media go
//! after the commit: a crash in between leaves `deleted_at` set with
//! `media_expired_at` empty, and the sweeper finishes it
//! ([`deleted_media_due`], [`purge_media`]). Deleting storage is idempotent,
//! so doing it twice is harmless.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use uuid::Uuid;

use super::{Status, after_cancel, cancel, find_own, mark_media_expired};
use crate::core::Core;
use crate::db::Connection;
use crate::rows::Generation;
use crate::schema::generations;
use crate::{Error, Result};

/// The storage prefix of everything a generation owns: its rendered source,
/// outputs, poster and HLS renditions.
pub fn media_prefix(id: Uuid) -> String {
    format!("generations/{id}/")
}

/// Rounds of cancel-then-mark before giving up: a generation goes back to
/// QUEUED between them only if its owner retries it at that very moment.
const ROUNDS: usize = 3;

/// `deleteGeneration`: the owner's generation, cancelled if active, marked
/// deleted, its media deleted. A deleted (or another user's) generation is
/// `NotFound`, so a second call is `NotFound` too.
pub async fn delete(core: &Core, user_id: Uuid, id: Uuid) -> Result<Generation> {
    let mut conn = core.pool.get().await?;
    // Final from the start: no worker can be writing its media any more, so
    // once deleted they are gone for good. Otherwise the sweeper deletes
    // them again after the grace it gives workers (see `deleted_media_due`).
    let mut was_final = true;
    for _ in 0..ROUNDS {
        let g = find_own(&mut conn, user_id, id).await?;
        if !g.status().is_final() {
            was_final = false;
            match cancel(&mut conn, user_id, id).await {
                Ok(c) => after_cancel(core, &c).await,
                // It reached a final state meanwhile: deleted as it is.
                Err(Error::Conflict(_)) => {}
                Err(e) => return Err(e),
            }
        }
        if let Some(deleted) = mark_deleted(&mut conn, user_id, id).await? {
            tracing::info!(generation_id = %id, status = %deleted.status, "generation deleted");
            purge_logged(core, &mut conn, id, was_final).await;
            return Ok(deleted);
        }
    }
    Err(Error::Conflict("the generation kept changing while being deleted; try again".into()))
}

/// Sets `deleted_at` on the user's final, undeleted generation. `None`:
/// it is active (again); `NotFound`: gone or already deleted.
async fn mark_deleted(conn: &mut Connection, user_id: Uuid, id: Uuid) -> Result<Option<Generation>> {
    conn.transaction::<_, Error, _>(async |conn| {
        let g = super::queries::lock_own(conn, user_id, id).await?;
        if !g.status().is_final() {
            return Ok(None);
        }
        let now = Utc::now();
        Ok(Some(
            diesel::update(generations::table.find(id))
                .set((generations::deleted_at.eq(now), generations::updated_at.eq(now)))
                .returning(Generation::as_returning())
                .get_result(conn)
                .await?,
        ))
    })
    .await
}

/// Deletes every stored file of the generation and, with `mark`, records
/// them gone (`media_expired_at`), which takes it off the sweeper's list.
/// Returns how many files went.
pub async fn purge_media(core: &Core, conn: &mut Connection, id: Uuid, mark: bool) -> Result<usize> {
    // Deleted first, marked after: a crash in between deletes again.
    let files = core.storage.delete_prefix(&media_prefix(id)).await?;
    if mark {
        mark_media_expired(conn, id).await?;
    }
    Ok(files)
}

/// [`purge_media`] after a committed deletion: a failure is the sweeper's
/// to finish, not the caller's error.
pub(crate) async fn purge_logged(core: &Core, conn: &mut Connection, id: Uuid, mark: bool) {
    match purge_media(core, conn, id, mark).await {
        Ok(files) => tracing::debug!(generation_id = %id, files, "media of a deleted generation deleted"),
        Err(e) => {
            tracing::warn!(generation_id = %id, error = %e, "could not delete a deleted generation's media; the sweeper retries");
        }
    }
}

/// Deleted generations whose media may still be stored, finished before
/// `before`: the sweeper deletes them (again) and marks them. The grace up
/// to `before` lets a worker that was running one when it was cancelled
/// notice and stop writing.
pub async fn deleted_media_due(
    conn: &mut Connection,
    before: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<Uuid>> {
    Ok(generations::table
        .filter(generations::deleted_at.is_not_null())
        .filter(generations::media_expired_at.is_null())
        .filter(generations::finished_at.lt(before).or(generations::finished_at.is_null()))
        .filter(
            generations::status
                .eq_any([Status::Succeeded, Status::Failed, Status::Canceled].map(Status::as_str)),
        )
        .order(generations::deleted_at.asc())
        .limit(limit)
        .select(generations::id)
        .load(conn)
        .await?)
}
