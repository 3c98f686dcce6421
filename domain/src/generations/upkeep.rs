//! What the sweeper and the retention job ask of generations: silent
//! workers, jobs that went missing, holds left open, media past retention.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use super::{Status, find};
use crate::Result;
use crate::credits;
use crate::db::Connection;
use crate::rows::{CreditHold, Generation};
use crate::schema::{credit_holds, generations};

/// Generations in `statuses` whose worker has been silent since `before`
/// (the sweeper fails them).
pub async fn stale(conn: &mut Connection, before: DateTime<Utc>, limit: i64) -> Result<Vec<Generation>> {
    Ok(generations::table
        .filter(generations::status.eq_any([Status::Rendering.as_str(), Status::Transcoding.as_str()]))
        .filter(generations::heartbeat_at.lt(before).or(generations::heartbeat_at.is_null()))
        .filter(generations::updated_at.lt(before))
        .order(generations::heartbeat_at.asc())
        .limit(limit)
        .select(Generation::as_select())
        .load(conn)
        .await?)
}

/// QUEUED generations waiting since before `before`, oldest first (the
/// sweeper checks that each still has a job).
pub async fn queued_since(
    conn: &mut Connection,
    before: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<Generation>> {
    Ok(generations::table
        .filter(generations::status.eq(Status::Queued.as_str()))
        .filter(generations::updated_at.lt(before))
        .order((generations::queued_at.asc(), generations::id.asc()))
        .limit(limit)
        .select(Generation::as_select())
        .load(conn)
        .await?)
}

/// Open holds whose generation is final or missing: what crashed between
/// a final state and its settlement, or anything else that left one open.
/// Released through the ledger (idempotent by hold).
pub async fn release_orphaned_holds(conn: &mut Connection, limit: i64) -> Result<Vec<CreditHold>> {
    let orphans: Vec<CreditHold> = credit_holds::table
        .left_join(generations::table)
        .filter(credit_holds::status.eq(credits::HoldStatus::Open))
        .filter(credit_holds::generation_id.is_null().or(generations::status.eq_any([
            Status::Succeeded.as_str(),
            Status::Failed.as_str(),
            Status::Canceled.as_str(),
        ])))
        .filter(credit_holds::created_at.lt(Utc::now() - chrono::Duration::minutes(1)))
        .limit(limit)
        .select(CreditHold::as_select())
        .load(conn)
        .await?;
    let mut released = Vec::new();
    for h in orphans {
        let succeeded = match h.generation_id {
            Some(g) => find(conn, g).await?.is_some_and(|g| g.status() == Status::Succeeded),
            None => false,
        };
        // A SUCCEEDED generation's work was delivered: its hold is captured.
        if succeeded {
            credits::capture(conn, h.id).await?;
        } else {
            credits::release(conn, h.id).await?;
        }
        released.push(h);
    }
    Ok(released)
}

/// Final generations with stored media that finished before `before`
/// (the media retention policy), oldest first.
pub async fn media_due(conn: &mut Connection, before: DateTime<Utc>, limit: i64) -> Result<Vec<Uuid>> {
    Ok(generations::table
        .filter(generations::media_expired_at.is_null())
        .filter(generations::output.is_not_null())
        .filter(generations::finished_at.lt(before))
        .filter(generations::status.eq_any([
            Status::Succeeded.as_str(),
            Status::Failed.as_str(),
            Status::Canceled.as_str(),
        ]))
        .order(generations::finished_at.asc())
        .limit(limit)
        .select(generations::id)
        .load(conn)
        .await?)
}

/// Records that a generation's media were deleted.
pub async fn mark_media_expired(conn: &mut Connection, id: Uuid) -> Result<()> {
    diesel::update(generations::table.find(id))
        .filter(generations::media_expired_at.is_null())
        .set(generations::media_expired_at.eq(Utc::now()))
        .execute(conn)
        .await?;
    Ok(())
}
