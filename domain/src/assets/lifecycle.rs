//! What happens to an asset after its upload: READY or REJECTED by ingest,
//! deleted by its owner, and its bytes purged (once) when nothing needs
//! them any more.

use chrono::Utc;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use uuid::Uuid;

use super::{AssetFiles, Status, files_prefix, upload_key};
use crate::core::Core;
use crate::db::Connection;
use crate::enums::GenerationStatus;
use crate::rows::Asset;
use crate::schema::{assets, generation_inputs, generations, users};
use crate::{Error, Result, events};

/// What ingest found and stored.
#[derive(Debug, Clone)]
pub struct Ready {
    /// The type the content's bytes show.
    pub content_type: String,
    pub width: u32,
    pub height: u32,
    pub duration_seconds: Option<f64>,
    pub files: AssetFiles,
}

/// PROCESSING → READY. `None` when the asset is no longer PROCESSING or was
/// deleted meanwhile: the caller then removes what it stored.
pub async fn mark_ready(core: &Core, conn: &mut Connection, id: Uuid, ready: Ready) -> Result<Option<Asset>> {
    let now = Utc::now();
    let asset: Option<Asset> = diesel::update(assets::table.find(id))
        .filter(assets::status.eq(Status::Processing))
        .filter(assets::deleted_at.is_null())
        .filter(assets::purged_at.is_null())
        .set((
            assets::status.eq(Status::Ready),
            assets::content_type.eq(&ready.content_type),
            assets::width.eq(ready.width as i32),
            assets::height.eq(ready.height as i32),
            assets::duration_seconds.eq(ready.duration_seconds),
            assets::output.eq(&ready.files),
            assets::updated_at.eq(now),
            assets::ready_at.eq(now),
        ))
        .returning(Asset::as_returning())
        .get_result(conn)
        .await
        .optional()?;
    if let Some(a) = &asset {
        // The clean copy replaces the raw upload.
        if let Err(e) = core.storage.delete(&upload_key(id)).await {
            tracing::warn!(asset_id = %id, error = %e, "could not delete a raw upload; the sweeper retries");
        }
        events::publish_asset_logged(&core.redis, a).await;
    }
    Ok(asset)
}

/// → REJECTED with `reason` (shown to the user), its bytes deleted and its
/// quota given back. The bytes go first; the status, the purge mark and the
/// quota then change in one transaction, so whoever sees REJECTED also sees
/// the quota free. An asset already READY or REJECTED is returned unchanged.
pub async fn reject(core: &Core, conn: &mut Connection, asset: &Asset, reason: &str) -> Result<Asset> {
    if !matches!(asset.status, Status::AwaitingUpload | Status::Processing) {
        return Ok(asset.clone());
    }
    delete_bytes(core, asset.id).await?;
    let id = asset.id;
    let rejected = conn
        .transaction::<_, Error, _>(async |conn| {
            let now: Asset =
                assets::table.find(id).select(Asset::as_select()).for_update().first(conn).await?;
            if !matches!(now.status, Status::AwaitingUpload | Status::Processing) {
                return Ok(None);
            }
            let rejected: Asset = diesel::update(assets::table.find(id))
                .set((
                    assets::status.eq(Status::Rejected),
                    assets::error.eq(reason),
                    assets::updated_at.eq(Utc::now()),
                    assets::purged_at.eq(now.purged_at.unwrap_or_else(Utc::now)),
                ))
                .returning(Asset::as_returning())
                .get_result(conn)
                .await?;
            if now.purged_at.is_none() {
                release_quota(conn, now.user_id, now.byte_size).await?;
            }
            Ok(Some(rejected))
        })
        .await?;
    let Some(rejected) = rejected else {
        return super::find(conn, id).await?.ok_or(Error::NotFound("asset"));
    };
    tracing::info!(asset_id = %id, reason, "upload rejected");
    events::publish_asset_logged(&core.redis, &rejected).await;
    Ok(rejected)
}

async fn delete_bytes(core: &Core, id: Uuid) -> Result<()> {
    core.storage.delete(&upload_key(id)).await?;
    core.storage.delete_prefix(&files_prefix(id)).await?;
    Ok(())
}

async fn release_quota(conn: &mut Connection, user_id: Uuid, size: i64) -> Result<()> {
    diesel::update(users::table.find(user_id))
        .set(users::storage_used_bytes.eq(users::storage_used_bytes - size))
        .execute(conn)
        .await?;
    Ok(())
}

/// Whether a generation that has not finished renders from the asset.
pub(super) async fn in_use(conn: &mut Connection, id: Uuid) -> Result<bool> {
    let finished = [GenerationStatus::Succeeded, GenerationStatus::Failed, GenerationStatus::Canceled];
    Ok(diesel::select(diesel::dsl::exists(
        generation_inputs::table
            .inner_join(generations::table)
            .filter(generation_inputs::asset_id.eq(id))
            .filter(generations::status.ne_all(finished)),
    ))
    .get_result(conn)
    .await?)
}

/// Deletes the asset's stored bytes and gives their size back to the
/// owner's quota, exactly once however often it runs (the bytes go first,
/// so a crash in between leaves the sweeper something to finish).
pub async fn purge(core: &Core, conn: &mut Connection, asset: &Asset) -> Result<()> {
    if asset.purged_at.is_some() {
        return Ok(());
    }
    delete_bytes(core, asset.id).await?;
    let (id, user_id) = (asset.id, asset.user_id);
    conn.transaction::<_, Error, _>(async |conn| {
        let size: Option<i64> = diesel::update(assets::table.find(id))
            .filter(assets::purged_at.is_null())
            .set(assets::purged_at.eq(Utc::now()))
            .returning(assets::byte_size)
            .get_result(conn)
            .await
            .optional()?;
        if let Some(size) = size {
            diesel::update(users::table.find(user_id))
                .set(users::storage_used_bytes.eq(users::storage_used_bytes - size))
                .execute(conn)
                .await?;
        }
        Ok(())
    })
    .await
}

/// `deleteAsset`: hidden from its owner at once; the bytes go now, or when
/// the last unfinished generation using it is done (the sweeper).
pub async fn delete(core: &Core, conn: &mut Connection, user_id: Uuid, id: Uuid) -> Result<Asset> {
    let asset = super::find_own(conn, user_id, id).await?;
    let deleted: Option<Asset> = diesel::update(assets::table.find(id))
        .filter(assets::deleted_at.is_null())
        .set(assets::deleted_at.eq(Utc::now()))
        .returning(Asset::as_returning())
        .get_result(conn)
        .await
        .optional()?;
    let asset = deleted.unwrap_or(asset);
    if !in_use(conn, id).await? {
        purge(core, conn, &asset).await?;
    }
    Ok(asset)
}

/// Purges a deleted asset's bytes unless an unfinished generation still
/// renders from it (the sweeper purges it once that one is done); whether
/// they went.
pub async fn purge_if_unused(core: &Core, conn: &mut Connection, asset: &Asset) -> Result<bool> {
    if asset.purged_at.is_some() || in_use(conn, asset.id).await? {
        return Ok(false);
    }
    purge(core, conn, asset).await?;
    Ok(true)
}
