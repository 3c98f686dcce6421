//! The `ingest` queue: PROCESSING → READY or REJECTED. Reads the raw upload
//! (`uploads/<id>`), checks and cleans it (`media::ingest`), stores the
//! clean files under `assets/<id>/`, then marks the asset READY; a refused
//! file is REJECTED with the reason and its bytes deleted. Idempotent by the
//! asset: only a PROCESSING asset is acted on, and the move to READY is
//! conditional, so a duplicate job or a second worker changes nothing.

use std::sync::Arc;

use apalis::prelude::BoxDynError;
use mage_domain::assets::{self, AssetFiles, Ready, Status};
use mage_domain::enums::MediaKind as AssetKind;
use mage_domain::queue::IngestJob;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::backend::MediaKind;
use crate::ctx::Ctx;
use crate::media::{self, IngestError};

/// Attempts before a file that keeps failing on our side (not refused for
/// what it is) is given up: REJECTED, asking the user to upload it again.
pub const ATTEMPTS: usize = 5;

const GAVE_UP: &str = "We could not process this file. Please upload it again.";

pub(crate) async fn run(ctx: Arc<Ctx>, job: IngestJob, attempt: usize) -> Result<(), BoxDynError> {
    let span = tracing::info_span!("ingest", asset_id = %job.asset_id);
    async move {
        match ingest(&ctx, job.clone()).await {
            Ok(()) => Ok(()),
            Err(e) if attempt + 1 >= ATTEMPTS => {
                tracing::error!(attempt, error = %e, "ingest failed for the last time; the upload is rejected");
                let mut conn = ctx.core.pool.get().await?;
                if let Some(asset) = assets::find(&mut conn, job.asset_id).await? {
                    assets::reject(&ctx.core, &mut conn, &asset, GAVE_UP).await?;
                }
                Ok(())
            }
            Err(e) => {
                tracing::warn!(attempt, error = %e, "ingest failed; it will be retried");
                Err(e)
            }
        }
    }
    .instrument(span)
    .await
}

async fn ingest(ctx: &Ctx, job: IngestJob) -> Result<(), BoxDynError> {
    let id = job.asset_id;
    let mut conn = ctx.core.pool.get().await?;
    let Some(asset) = assets::find(&mut conn, id).await? else { return Ok(()) };
    if asset.status != Status::Processing || asset.purged_at.is_some() {
        tracing::info!(status = asset.status.as_str(), "nothing to ingest");
        return Ok(());
    }
    drop(conn);
    let work = tempfile::Builder::new().prefix("mage-ingest-").tempdir()?;
    let input = work.path().join("upload");
    ctx.core.storage.get_to_file(&assets::upload_key(id), &input).await?;
    let out_dir = work.path().join("out");
    let declared = match asset.kind {
        AssetKind::Image => MediaKind::Image,
        AssetKind::Video => MediaKind::Video,
    };
    let limits = ctx.settings.ingest.clone();
    // A task of its own, owning its inputs (see transcode.rs: apalis needs
    // the handler future Send for every lifetime).
    let (src, dst, cancel) = (input.clone(), out_dir.clone(), CancellationToken::new());
    let checked =
        tokio::spawn(async move { media::ingest(&src, declared, &limits, &dst, |_| {}, cancel).await })
            .await
            .map_err(|e| format!("ingest task: {e}"))?;
    let got = match checked {
        Ok(got) => got,
        Err(IngestError::Rejected(reason)) => {
            let mut conn = ctx.core.pool.get().await?;
            assets::reject(&ctx.core, &mut conn, &asset, &reason).await?;
            return Ok(());
        }
        Err(e) => return Err(e.to_string().into()),
    };
    let prefix = assets::files_prefix(id);
    ctx.core.storage.put_dir(&prefix, &out_dir).await?;
    let key = |rel: &str| format!("{prefix}{rel}");
    let files = match &got.video {
        Some(v) => AssetFiles {
            original: key(&v.mp4),
            thumbnail: key(&got.thumbnail),
            poster: Some(key(&v.poster)),
            hls: Some(key(&v.master_playlist)),
            renditions: v
                .renditions
                .iter()
                .map(|r| media::Rendition { playlist: key(&r.playlist), ..r.clone() })
                .collect(),
        },
        None => AssetFiles {
            original: key(got.image.as_deref().ok_or("an ingested image names no file")?),
            thumbnail: key(&got.thumbnail),
            poster: None,
            hls: None,
            renditions: Vec::new(),
        },
    };
    let ready = Ready {
        content_type: got.content_type.to_owned(),
        width: got.width,
        height: got.height,
        duration_seconds: got.duration_seconds,
        files,
    };
    let mut conn = ctx.core.pool.get().await?;
    match assets::mark_ready(&ctx.core, &mut conn, id, ready).await? {
        Some(a) => {
            tracing::info!(content_type = %a.content_type, width = ?a.width, height = ?a.height, "upload ready")
        }
        None => {
            // Deleted (or finished by another worker) meanwhile: what this
            // run stored goes, unless another run made it READY.
            let now = assets::find(&mut conn, id).await?;
            if now.is_none_or(|a| a.status != Status::Ready || a.deleted_at.is_some()) {
                ctx.core.storage.delete_prefix(&prefix).await?;
            }
        }
    }
    Ok(())
}
