//! The sweeper's share of assets: uploads never completed, bytes nothing
//! needs any more, retention, and ingest jobs Redis lost.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::{Status, lifecycle};
use crate::Result;
use crate::core::Core;
use crate::db::Connection;
use crate::queue::IngestJob;
use crate::rows::Asset;
use crate::schema::assets;

/// Assets handled per pass, so one pass stays short.
const BATCH: i64 = 100;
/// A PROCESSING asset untouched this long has lost its ingest job.
const STALE_PROCESSING_MINUTES: i64 = 15;

/// One pass; returns how many assets it acted on. `retention` (days): the
/// bytes of READY assets older than that are purged too.
pub async fn sweep(
    core: &Core,
    conn: &mut Connection,
    now: DateTime<Utc>,
    retention_days: Option<u32>,
) -> Result<usize> {
    let mut n = 0;
    let expired: Vec<Asset> = assets::table
        .filter(assets::status.eq(Status::AwaitingUpload))
        .filter(assets::upload_expires_at.le(now))
        .select(Asset::as_select())
        .limit(BATCH)
        .load(conn)
        .await?;
    for a in &expired {
        lifecycle::reject(core, conn, a, "The upload was not completed within an hour.").await?;
        n += 1;
    }
    // Rejected or deleted ones, and READY ones past retention.
    let mut done = assets::table.filter(assets::purged_at.is_null()).into_boxed();
    done = match retention_days {
        None => done.filter(assets::status.eq(Status::Rejected).or(assets::deleted_at.is_not_null())),
        Some(days) => {
            let before = now - chrono::Duration::days(i64::from(days));
            done.filter(
                assets::status
                    .eq(Status::Rejected)
                    .or(assets::deleted_at.is_not_null())
                    .or(assets::status.eq(Status::Ready).and(assets::ready_at.le(before))),
            )
        }
    };
    let done: Vec<Asset> = done.select(Asset::as_select()).limit(BATCH).load(conn).await?;
    for a in &done {
        if a.status == Status::Rejected || !lifecycle::in_use(conn, a.id).await? {
            lifecycle::purge(core, conn, a).await?;
            n += 1;
        }
    }
    let stale: Vec<uuid::Uuid> = assets::table
        .filter(assets::status.eq(Status::Processing))
        .filter(assets::updated_at.le(now - chrono::Duration::minutes(STALE_PROCESSING_MINUTES)))
        .select(assets::id)
        .limit(BATCH)
        .load(conn)
        .await?;
    for id in stale {
        core.queues.push_ingest(&IngestJob { asset_id: id }).await?;
        diesel::update(assets::table.find(id)).set(assets::updated_at.eq(now)).execute(conn).await?;
        n += 1;
    }
    Ok(n)
}
