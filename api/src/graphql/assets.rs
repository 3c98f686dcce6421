//! Media users bring in: staged uploads (`createUpload` → PUT the bytes →
//! `completeUpload`), their assets, and deleting them.

use async_graphql::connection::{Connection, Edge};
use async_graphql::{Context, Enum, ID, InputObject, Object, SimpleObject, Subscription};
use chrono::{DateTime, Utc};
use futures_util::{Stream, StreamExt};
use mage_domain::assets::{self as domain, NewUpload};
use mage_domain::enums::{AssetStatus as DomainStatus, MediaKind};
use mage_domain::rows::Asset as AssetRow;
use uuid::Uuid;

use super::context::ContextExt;
use super::pagination::{decode_created_cursor, encode_created_cursor, page, page_size};
use crate::error::{ApiError, ApiResult};
use crate::live::Event;

#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
#[graphql(remote = "MediaKind")]
pub enum AssetKind {
    Image,
    Video,
}

#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
#[graphql(remote = "DomainStatus")]
pub enum AssetStatus {
    /// Created; waiting for its bytes and `completeUpload`.
    AwaitingUpload,
    /// Being checked and cleaned.
    Processing,
    Ready,
    /// Refused: `error` says why; nothing of it is kept.
    Rejected,
}

#[derive(InputObject)]
pub struct CreateUploadInput {
    /// A name to show; only its last path segment is kept.
    filename: String,
    /// image/jpeg, image/png, image/webp, video/mp4, video/quicktime,
    /// video/webm or video/x-matroska. The file's content decides in the end.
    content_type: String,
    /// Exactly the number of bytes that will be sent.
    byte_size: i64,
}

#[derive(SimpleObject)]
pub struct HttpHeader {
    name: String,
    value: String,
}

/// What `createUpload` accepts, so a client can check a file before
/// sending it.
#[derive(SimpleObject)]
pub struct UploadLimits {
    /// Content types an upload may declare.
    content_types: Vec<String>,
    max_image_bytes: i64,
    max_video_bytes: i64,
}

/// Where and how to send an asset's bytes: one `method` request to `url`
/// with `headers` and the file as the body, before `expiresAt`.
#[derive(SimpleObject)]
pub struct UploadTarget {
    asset: Asset,
    url: String,
    method: String,
    headers: Vec<HttpHeader>,
    expires_at: DateTime<Utc>,
}

pub struct Asset(pub AssetRow);

#[Object(serial)]
impl Asset {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn kind(&self) -> AssetKind {
        self.0.kind.into()
    }
    async fn status(&self) -> AssetStatus {
        self.0.status.into()
    }
    async fn filename(&self) -> &str {
        &self.0.filename
    }
    /// As declared until the asset is READY; then the type its content is.
    async fn content_type(&self) -> &str {
        &self.0.content_type
    }
    async fn byte_size(&self) -> i64 {
        self.0.byte_size
    }
    async fn width(&self) -> Option<i32> {
        self.0.width
    }
    async fn height(&self) -> Option<i32> {
        self.0.height
    }
    async fn duration_seconds(&self) -> Option<f64> {
        self.0.duration_seconds
    }
    /// Why the asset was REJECTED.
    async fn error(&self) -> Option<&str> {
        self.0.error.as_deref()
    }
    /// The clean file (re-encoded image, or the video as MP4); null until
    /// READY and once its bytes are gone.
    async fn url(&self, ctx: &Context<'_>) -> Option<String> {
        self.file(ctx, |f| Some(&f.original))
    }
    async fn thumbnail_url(&self, ctx: &Context<'_>) -> Option<String> {
        self.file(ctx, |f| Some(&f.thumbnail))
    }
    async fn poster_url(&self, ctx: &Context<'_>) -> Option<String> {
        self.file(ctx, |f| f.poster.as_ref())
    }
    /// Videos: the HLS master playlist.
    async fn hls_url(&self, ctx: &Context<'_>) -> Option<String> {
        self.file(ctx, |f| f.hls.as_ref())
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
}

impl Asset {
    fn file(
        &self,
        ctx: &Context<'_>,
        pick: impl Fn(&domain::AssetFiles) -> Option<&String>,
    ) -> Option<String> {
        if self.0.status != DomainStatus::Ready || self.0.purged_at.is_some() {
            return None;
        }
        let key = pick(self.0.output.as_ref()?)?;
        Some(ctx.services().media_url(key))
    }
}

const ASSET_CURSOR: &str = "asset";

pub fn parse_asset_id(id: &ID) -> ApiResult<Uuid> {
    // A malformed id cannot name anyone's asset: same answer as a missing one.
    id.parse().map_err(|_| ApiError::NotFound("asset".into()))
}

#[derive(Default)]
pub struct AssetsQuery;

#[Object]
impl AssetsQuery {
    /// The types and sizes an upload may have (this deployment's limits).
    async fn upload_limits(&self, ctx: &Context<'_>) -> UploadLimits {
        let limits = &ctx.services().assets;
        UploadLimits {
            content_types: domain::upload::CONTENT_TYPES.iter().map(|(t, _)| (*t).to_owned()).collect(),
            max_image_bytes: limits.max_image_bytes,
            max_video_bytes: limits.max_video_bytes,
        }
    }

    /// One of your assets.
    async fn asset(&self, ctx: &Context<'_>, id: ID) -> ApiResult<Option<Asset>> {
        let user_id = ctx.viewer().require()?;
        let id = parse_asset_id(&id)?;
        let mut conn = ctx.conn().await?;
        match domain::find_own(&mut conn, user_id, id).await {
            Ok(a) => Ok(Some(Asset(a))),
            Err(mage_domain::Error::NotFound(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Your assets, newest first.
    #[graphql(complexity = "super::pagination::list_complexity(first, child_complexity)")]
    async fn assets(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        kind: Option<AssetKind>,
    ) -> ApiResult<Connection<String, Asset>> {
        let user_id = ctx.viewer().require()?;
        let limit = page_size(first)?;
        let after = decode_created_cursor(ASSET_CURSOR, after.as_deref())?;
        let mut conn = ctx.conn().await?;
        let rows = domain::list_own(&mut conn, user_id, kind.map(Into::into), after, limit + 1).await?;
        Ok(page(rows, limit, after.is_some(), |a| {
            Edge::new(encode_created_cursor(ASSET_CURSOR, a.created_at, a.id), Asset(a))
        }))
    }
}

#[derive(Default)]
pub struct AssetsMutation;

#[Object]
impl AssetsMutation {
    /// Starts an upload: an AWAITING_UPLOAD asset and where to send its
    /// bytes. Counts `byteSize` against your storage quota at once
    /// (`QUOTA_EXCEEDED`); at most MAGE_UPLOADS_PER_MINUTE a minute.
    async fn create_upload(&self, ctx: &Context<'_>, input: CreateUploadInput) -> ApiResult<UploadTarget> {
        let user_id = ctx.viewer().require()?;
        let svc = ctx.services();
        let limits = svc.assets;
        let new = NewUpload {
            filename: input.filename,
            content_type: input.content_type,
            byte_size: input.byte_size,
        };
        // Input errors first: a malformed request spends no rate-limit slot.
        domain::declared_kind(&new.content_type)?;
        mage_domain::limits::reserve_upload(&svc.redis, limits.uploads_per_minute, user_id).await?;
        let now = Utc::now();
        let mut conn = ctx.conn().await?;
        let asset = domain::create_upload(&mut conn, user_id, &new, &limits, now).await?;
        drop(conn);
        let expires_at = asset.upload_expires_at;
        let key = domain::upload_key(asset.id);
        let ttl = (expires_at - now).to_std().unwrap_or_default();
        let url = match svc.storage.signed_put_url(&key, ttl).await? {
            Some(url) => url,
            None => {
                let expires = expires_at.timestamp();
                let signature = svc.tokens.sign_upload(asset.id, expires);
                format!(
                    "{}/uploads/{}?expires={expires}&signature={signature}",
                    svc.public_url.trim_end_matches('/'),
                    asset.id
                )
            }
        };
        let headers = vec![HttpHeader { name: "Content-Type".into(), value: asset.content_type.clone() }];
        Ok(UploadTarget { asset: Asset(asset), url, method: "PUT".into(), headers, expires_at })
    }

    /// After the bytes are sent: checks them and starts processing. The
    /// asset becomes READY or REJECTED; follow it with `assetUpdated`.
    async fn complete_upload(&self, ctx: &Context<'_>, id: ID) -> ApiResult<Asset> {
        let user_id = ctx.viewer().require()?;
        let id = parse_asset_id(&id)?;
        let svc = ctx.services();
        let mut conn = ctx.conn().await?;
        Ok(Asset(domain::complete(svc, &mut conn, user_id, id, Utc::now()).await?))
    }

    /// Deletes an asset: gone from your lists at once; its bytes are
    /// deleted now, or when the last unfinished generation using it ends.
    async fn delete_asset(&self, ctx: &Context<'_>, id: ID) -> ApiResult<Asset> {
        let user_id = ctx.viewer().require()?;
        let id = parse_asset_id(&id)?;
        let svc = ctx.services();
        let mut conn = ctx.conn().await?;
        Ok(Asset(domain::delete(svc, &mut conn, user_id, id).await?))
    }
}

#[derive(Default)]
pub struct AssetsSubscription;

#[Subscription]
impl AssetsSubscription {
    /// One of your assets: its current state first, then every change; the
    /// stream completes once it is READY or REJECTED.
    async fn asset_updated(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> Result<impl Stream<Item = ApiResult<Asset>> + use<>, ApiError> {
        let user_id = ctx.viewer().require()?;
        let id = parse_asset_id(&id)?;
        let sub = ctx.services().live.asset(user_id, id).await?;
        Ok(sub.filter_map(|event| {
            std::future::ready(match event {
                Ok(Event::Asset(a)) => Some(Ok(Asset((*a).clone()))),
                Ok(Event::Generation(_) | Event::Credits(_)) => None,
                Err(lagged) => Some(Err(lagged.into())),
            })
        }))
    }
}
