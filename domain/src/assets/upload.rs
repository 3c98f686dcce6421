//! `createUpload` and `completeUpload`.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use uuid::Uuid;

use super::{AssetLimits, Status, UPLOAD_TTL, lifecycle, upload_key};
use crate::core::Core;
use crate::db::Connection;
use crate::enums::MediaKind;
use crate::queue::IngestJob;
use crate::rows::Asset;
use crate::schema::{assets, users};
use crate::{Error, Result};

pub const FILENAME_MAX: usize = 255;

/// What the client declares before sending the bytes.
#[derive(Debug, Clone)]
pub struct NewUpload {
    pub filename: String,
    pub content_type: String,
    pub byte_size: i64,
}

/// The content types an upload may declare, images then videos.
pub const CONTENT_TYPES: &[(&str, MediaKind)] = &[
    ("image/jpeg", MediaKind::Image),
    ("image/png", MediaKind::Image),
    ("image/webp", MediaKind::Image),
    ("video/mp4", MediaKind::Video),
    ("video/quicktime", MediaKind::Video),
    ("video/webm", MediaKind::Video),
    ("video/x-matroska", MediaKind::Video),
];

/// The kind a declared content type promises (ingest later checks the
/// bytes agree), and the type as stored: lowercase, without parameters.
pub fn declared_kind(content_type: &str) -> Result<(MediaKind, String)> {
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match CONTENT_TYPES.iter().find(|(t, _)| *t == essence) {
        Some((_, kind)) => Ok((*kind, essence)),
        None => Err(Error::invalid(
            "contentType",
            format!(
                "must be one of {}",
                CONTENT_TYPES.iter().map(|(t, _)| *t).collect::<Vec<_>>().join(", ")
            ),
        )),
    }
}

/// Only the last path segment, trimmed: a name to show, never a path.
fn clean_filename(name: &str) -> Result<String> {
    let base = name.rsplit(['/', '\\']).next().unwrap_or("").trim();
    if base.is_empty() || base == "." || base == ".." {
        return Err(Error::invalid("filename", "must name a file"));
    }
    if base.len() > FILENAME_MAX || base.chars().any(char::is_control) {
        return Err(Error::invalid(
            "filename",
            format!("at most {FILENAME_MAX} bytes without control characters"),
        ));
    }
    Ok(base.to_owned())
}

/// Creates an AWAITING_UPLOAD asset, counting its declared size against the
/// user's quota in the same transaction. The caller takes the rate-limit
/// slot first.
pub async fn create_upload(
    conn: &mut Connection,
    user_id: Uuid,
    input: &NewUpload,
    limits: &AssetLimits,
    now: DateTime<Utc>,
) -> Result<Asset> {
    let (kind, content_type) = declared_kind(&input.content_type)?;
    let filename = clean_filename(&input.filename)?;
    let max = limits.max_bytes(kind);
    if input.byte_size <= 0 || input.byte_size > max {
        let what = match kind {
            MediaKind::Image => "an image",
            MediaKind::Video => "a video",
        };
        return Err(Error::invalid("byteSize", format!("must be between 1 and {max} bytes for {what}")));
    }
    let size = input.byte_size;
    let quota = limits.quota_bytes;
    let expires = now + chrono::Duration::from_std(UPLOAD_TTL).unwrap_or_default();
    conn.transaction::<_, Error, _>(async |conn| {
        // One conditional UPDATE: the row lock orders concurrent
        // uploads, and each sees the total the previous one left.
        let taken: Option<i64> = diesel::update(users::table.find(user_id))
            .filter((users::storage_used_bytes + size).le(quota))
            .set(users::storage_used_bytes.eq(users::storage_used_bytes + size))
            .returning(users::storage_used_bytes)
            .get_result(conn)
            .await
            .optional()?;
        if taken.is_none() {
            let used: i64 = users::table
                .find(user_id)
                .select(users::storage_used_bytes)
                .first(conn)
                .await
                .optional()?
                .ok_or(Error::NotFound("user"))?;
            return Err(Error::QuotaExceeded { limit_bytes: quota, used_bytes: used, requested_bytes: size });
        }
        Ok(diesel::insert_into(assets::table)
            .values((
                assets::user_id.eq(user_id),
                assets::kind.eq(kind),
                assets::filename.eq(&filename),
                assets::content_type.eq(&content_type),
                assets::byte_size.eq(size),
                assets::upload_expires_at.eq(expires),
            ))
            .returning(Asset::as_returning())
            .get_result(conn)
            .await?)
    })
    .await
}

/// After the client PUT the bytes: checks they are there with the declared
/// size and hands them to ingest. Idempotent: a PROCESSING asset gets its
/// ingest job pushed again (the job acts only once), a READY or REJECTED
/// one is returned as it is.
pub async fn complete(
    core: &Core,
    conn: &mut Connection,
    user_id: Uuid,
    id: Uuid,
    now: DateTime<Utc>,
) -> Result<Asset> {
    let asset = super::find_own(conn, user_id, id).await?;
    match asset.status {
        Status::Ready | Status::Rejected => return Ok(asset),
        Status::Processing => {
            core.queues.push_ingest(&IngestJob { asset_id: id }).await?;
            return Ok(asset);
        }
        Status::AwaitingUpload => {}
    }
    if asset.upload_expires_at <= now {
        return lifecycle::reject(core, conn, &asset, "The upload was not completed within an hour.").await;
    }
    let Some(size) = core.storage.head(&upload_key(id)).await? else {
        return Err(Error::invalid(
            "id",
            "no bytes were uploaded for this asset yet: PUT them to its upload URL first",
        ));
    };
    if size != asset.byte_size as u64 {
        let reason = format!("The file has {size} bytes, but {} were declared.", asset.byte_size);
        return lifecycle::reject(core, conn, &asset, &reason).await;
    }
    let moved: Option<Asset> = diesel::update(assets::table.find(id))
        .filter(assets::status.eq(Status::AwaitingUpload))
        .set((assets::status.eq(Status::Processing), assets::updated_at.eq(now)))
        .returning(Asset::as_returning())
        .get_result(conn)
        .await
        .optional()?;
    let asset = match moved {
        Some(a) => a,
        // A concurrent completeUpload moved it first; it pushed the job.
        None => return super::find_own(conn, user_id, id).await,
    };
    core.queues.push_ingest(&IngestJob { asset_id: id }).await?;
    crate::events::publish_asset_logged(&core.redis, &asset).await;
    Ok(asset)
}
