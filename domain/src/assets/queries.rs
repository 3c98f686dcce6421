//! Reading assets.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use crate::db::Connection;
use crate::enums::MediaKind;
use crate::rows::Asset;
use crate::schema::assets;
use crate::{Error, Result};

pub async fn find(conn: &mut Connection, id: Uuid) -> Result<Option<Asset>> {
    Ok(assets::table.find(id).select(Asset::as_select()).first(conn).await.optional()?)
}

/// The user's asset, unless deleted; another user's is `NotFound` too.
pub async fn find_own(conn: &mut Connection, user_id: Uuid, id: Uuid) -> Result<Asset> {
    assets::table
        .find(id)
        .filter(assets::user_id.eq(user_id))
        .filter(assets::deleted_at.is_null())
        .select(Asset::as_select())
        .first(conn)
        .await
        .optional()?
        .ok_or(Error::NotFound("asset"))
}

/// The user's assets, newest first, after the `(created_at, id)` cursor;
/// `limit` rows at most.
pub async fn list_own(
    conn: &mut Connection,
    user_id: Uuid,
    kind: Option<MediaKind>,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<Asset>> {
    let mut q = assets::table
        .filter(assets::user_id.eq(user_id))
        .filter(assets::deleted_at.is_null())
        .select(Asset::as_select())
        .order((assets::created_at.desc(), assets::id.desc()))
        .limit(limit)
        .into_boxed();
    if let Some(kind) = kind {
        q = q.filter(assets::kind.eq(kind));
    }
    if let Some((at, id)) = after {
        q = q.filter(assets::created_at.lt(at).or(assets::created_at.eq(at).and(assets::id.lt(id))));
    }
    Ok(q.load(conn).await?)
}
