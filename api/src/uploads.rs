//! `PUT /uploads/{id}?expires=…&signature=…`: where a client sends an
//! asset's bytes when storage is local (with a bucket, `createUpload` hands
//! out a presigned bucket URL instead and no byte passes through Mage).
//!
//! The signed URL is the credential (the client needs no token, as with a
//! presigned S3 URL). The body streams to storage and is cut off at the
//! declared size: a bigger file is refused (413), the asset REJECTED, and
//! nothing stays stored. Outside the router's body limit and request
//! timeout, which are sized for GraphQL requests, not 500 MB videos.

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::put;
use mage_domain::assets::{self, Status};
use mage_domain::storage::Streamed;
use tracing::Instrument;
use uuid::Uuid;

use crate::AppState;

pub fn routes() -> Router<AppState> {
    Router::new().route("/uploads/{id}", put(upload))
}

#[derive(serde::Deserialize)]
struct Signed {
    expires: i64,
    signature: String,
}

/// Answers as S3 does, with a short reason in the body.
fn refuse(status: StatusCode, reason: &str) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], format!("{reason}\n")).into_response()
}

async fn upload(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(signed): Query<Signed>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Ok(id) = id.parse::<Uuid>() else { return refuse(StatusCode::NOT_FOUND, "no such upload") };
    if !state.tokens.upload_signed(id, signed.expires, &signed.signature) {
        return refuse(StatusCode::FORBIDDEN, "the upload URL's signature is not valid");
    }
    if signed.expires < chrono::Utc::now().timestamp() {
        return refuse(StatusCode::FORBIDDEN, "the upload URL has expired: ask createUpload for a new one");
    }
    let span = tracing::info_span!("upload", asset_id = %id);
    receive(state, id, headers, body).instrument(span).await
}

async fn receive(state: AppState, id: Uuid, headers: HeaderMap, body: Body) -> Response {
    let mut conn = match state.core.pool.get().await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "no database connection for an upload");
            return refuse(StatusCode::SERVICE_UNAVAILABLE, "try again shortly");
        }
    };
    let asset = match assets::find(&mut conn, id).await {
        Ok(Some(a)) if a.deleted_at.is_none() => a,
        Ok(_) => return refuse(StatusCode::NOT_FOUND, "no such upload"),
        Err(e) => {
            tracing::error!(error = %e, "could not read an asset");
            return refuse(StatusCode::SERVICE_UNAVAILABLE, "try again shortly");
        }
    };
    if asset.status != Status::AwaitingUpload {
        return refuse(StatusCode::CONFLICT, "this upload is already complete");
    }
    let declared = asset.byte_size as u64;
    let length =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    let too_large = format!("The file is larger than the {declared} bytes declared.");
    if length.is_some_and(|n| n > declared) {
        reject(&state, &mut conn, &asset, &too_large).await;
        return refuse(StatusCode::PAYLOAD_TOO_LARGE, &too_large);
    }
    // No database connection is held while the bytes arrive.
    drop(conn);
    let stream = body.into_data_stream();
    let stored = state.core.storage.put_stream(&assets::upload_key(id), stream, declared).await;
    match stored {
        Ok(Streamed::Stored(n)) => {
            tracing::info!(bytes = n, "upload stored");
            StatusCode::OK.into_response()
        }
        Ok(Streamed::TooLarge) => {
            if let Ok(mut conn) = state.core.pool.get().await {
                reject(&state, &mut conn, &asset, &too_large).await;
            }
            refuse(StatusCode::PAYLOAD_TOO_LARGE, &too_large)
        }
        Ok(Streamed::Interrupted(e)) => {
            tracing::info!(error = %e, "upload interrupted; nothing stored");
            refuse(StatusCode::BAD_REQUEST, "the upload was interrupted: send the file again")
        }
        Err(e) => {
            tracing::error!(error = %e, "could not store an upload");
            refuse(StatusCode::SERVICE_UNAVAILABLE, "the file could not be stored: try again")
        }
    }
}

async fn reject(
    state: &AppState,
    conn: &mut mage_domain::db::Connection,
    asset: &assets::Asset,
    reason: &str,
) {
    if let Err(e) = assets::reject(&state.core, conn, asset, reason).await {
        tracing::error!(error = %e, "could not reject an oversized upload");
    }
}
