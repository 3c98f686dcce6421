//! The user's assets a generation renders from (`generation_inputs`).

use std::collections::HashMap;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use super::Status;
use crate::db::Connection;
use crate::enums::MediaKind;
use crate::rows::Asset;
use crate::schema::{assets, generation_inputs};
use crate::{Error, Result};

fn kind_name(kind: MediaKind) -> &'static str {
    match kind {
        MediaKind::Image => "IMAGE",
        MediaKind::Video => "VIDEO",
    }
}

/// The assets `ids` name, checked against what the model takes (`wanted`,
/// in order): each must be the user's own (another user's is `NotFound`,
/// as if it did not exist), READY, not deleted, and of the kind the model
/// expects at its place.
pub async fn check_inputs(
    conn: &mut Connection,
    user_id: Uuid,
    wanted: &[MediaKind],
    ids: &[Uuid],
) -> Result<Vec<Asset>> {
    if ids.len() != wanted.len() {
        let expected = if wanted.is_empty() {
            "no inputs".to_owned()
        } else {
            wanted.iter().map(|k| kind_name(*k)).collect::<Vec<_>>().join(", ")
        };
        return Err(Error::invalid("inputs", format!("this model takes {expected}; {} given", ids.len())));
    }
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let found: Vec<Asset> = assets::table
        .filter(assets::id.eq_any(ids))
        .filter(assets::user_id.eq(user_id))
        .filter(assets::deleted_at.is_null())
        .select(Asset::as_select())
        // Inside createGeneration's transaction: a concurrent deleteAsset
        // waits for it, then sees the generation and keeps the bytes.
        .for_share()
        .load(conn)
        .await?;
    let by_id: HashMap<Uuid, Asset> = found.into_iter().map(|a| (a.id, a)).collect();
    let mut out = Vec::with_capacity(ids.len());
    for (i, (id, kind)) in ids.iter().zip(wanted).enumerate() {
        let asset = by_id.get(id).cloned().ok_or(Error::NotFound("asset"))?;
        if asset.kind != *kind {
            return Err(Error::invalid(
                "inputs",
                format!("input {} must be an {} asset", i + 1, kind_name(*kind)),
            ));
        }
        if asset.status != Status::Ready {
            return Err(Error::invalid("inputs", format!("input {} is not READY yet", i + 1)));
        }
        out.push(asset);
    }
    Ok(out)
}

/// Records the inputs of a generation being created (same transaction).
pub async fn record_inputs(conn: &mut Connection, generation_id: Uuid, ids: &[Uuid]) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let rows: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            (
                generation_inputs::generation_id.eq(generation_id),
                generation_inputs::position.eq(i as i16),
                generation_inputs::asset_id.eq(*id),
            )
        })
        .collect();
    diesel::insert_into(generation_inputs::table).values(rows).on_conflict_do_nothing().execute(conn).await?;
    Ok(())
}

/// The inputs of each of `generation_ids`, in order (deleted assets too:
/// a generation keeps showing what it was made from).
pub async fn inputs_of(conn: &mut Connection, generation_ids: &[Uuid]) -> Result<Vec<(Uuid, Asset)>> {
    Ok(generation_inputs::table
        .inner_join(assets::table)
        .filter(generation_inputs::generation_id.eq_any(generation_ids))
        .order((generation_inputs::generation_id, generation_inputs::position))
        .select((generation_inputs::generation_id, Asset::as_select()))
        .load(conn)
        .await?)
}
