//! The payload of an event: `{"type", "id", "timestamp", "data"}`, where
//! `data` is the object as the GraphQL API shows it (field names and enum
//! values as in `schema.graphql`), rendered from the row the trigger
//! saved. Fields that need a request (a generation's queue position, an
//! order's items) are left out.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};

use super::EventType;
use crate::rows::{Asset, Generation, WebhookEvent};
use crate::{Error, Result};

/// Turns a storage key into its public URL (as the API's `media_url`).
pub type MediaUrl<'a> = &'a (dyn Fn(&str) -> String + Sync);

/// The JSON body sent for `event`.
pub fn payload(event: &WebhookEvent, media: MediaUrl<'_>) -> Result<String> {
    let ty = EventType::parse(&event.event_type)
        .ok_or_else(|| Error::Internal(format!("unknown webhook event type {:?}", event.event_type)))?;
    let data = data(ty, &event.data, media)?;
    let body = json!({
        "type": ty.as_str(),
        "id": event.id.to_string(),
        "timestamp": rfc3339(event.created_at),
        "data": data,
    });
    Ok(body.to_string())
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The database spelling of an enum value as GraphQL spells it
/// (`partially_refunded` → `PARTIALLY_REFUNDED`).
fn graphql_enum(stored: &str) -> String {
    stored.to_uppercase()
}

fn bad(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("webhook event data is not a {what} row: {e}"))
}

fn data(ty: EventType, row: &Value, media: MediaUrl<'_>) -> Result<Value> {
    Ok(match ty {
        EventType::GenerationStarted
        | EventType::GenerationSucceeded
        | EventType::GenerationFailed
        | EventType::GenerationCanceled => {
            let g: Generation = serde_json::from_value(row.clone()).map_err(|e| bad("generation", e))?;
            generation(&g, media)
        }
        EventType::AssetReady | EventType::AssetRejected => {
            let a: Asset = serde_json::from_value(row.clone()).map_err(|e| bad("asset", e))?;
            asset(&a, media)
        }
        EventType::OrderPaid => order(row)?,
        EventType::CreditsLow | EventType::Test => row.clone(),
    })
}

/// A generation as `Generation` shows it.
pub fn generation(g: &Generation, media: MediaUrl<'_>) -> Value {
    let output = (g.status.as_str() == "succeeded" && g.media_expired_at.is_none())
        .then_some(g.output.as_ref())
        .flatten()
        .map(|out| {
            let url = |key: &Option<String>| key.as_deref().map(media);
            json!({
                "hlsUrl": url(&out.hls),
                "videoUrl": url(&out.video),
                "imageUrl": url(&out.image),
                "posterUrl": media(&out.poster),
                "width": out.width,
                "height": out.height,
                "durationSeconds": out.duration_seconds,
                "renditions": out.renditions.iter().map(|r| json!({
                    "name": r.name, "width": r.width, "height": r.height, "bandwidth": r.bandwidth,
                })).collect::<Vec<_>>(),
            })
        });
    json!({
        "id": g.id.to_string(),
        "status": graphql_enum(g.status.as_str()),
        "progress": g.progress,
        "stage": g.stage,
        "model": g.model,
        "kind": graphql_enum(g.kind.as_str()),
        "prompt": g.prompt,
        "negativePrompt": g.negative_prompt,
        "resolution": format!("R{}", graphql_enum(g.resolution.as_str())),
        "durationSeconds": g.duration_seconds,
        "seed": g.seed,
        "cost": g.cost,
        "error": g.error,
        "mediaExpiredAt": g.media_expired_at.map(rfc3339),
        "output": output,
        "attempts": g.attempts,
        "createdAt": rfc3339(g.created_at),
        "queuedAt": rfc3339(g.queued_at),
        "startedAt": g.started_at.map(rfc3339),
        "finishedAt": g.finished_at.map(rfc3339),
    })
}

/// An asset as `Asset` shows it.
pub fn asset(a: &Asset, media: MediaUrl<'_>) -> Value {
    let files =
        (a.status.as_str() == "ready" && a.purged_at.is_none()).then_some(a.output.as_ref()).flatten();
    let file =
        |pick: &dyn Fn(&crate::assets::AssetFiles) -> Option<String>| files.and_then(pick).map(|k| media(&k));
    json!({
        "id": a.id.to_string(),
        "kind": graphql_enum(a.kind.as_str()),
        "status": graphql_enum(a.status.as_str()),
        "filename": a.filename,
        "contentType": a.content_type,
        "byteSize": a.byte_size,
        "width": a.width,
        "height": a.height,
        "durationSeconds": a.duration_seconds,
        "error": a.error,
        "url": file(&|f| Some(f.original.clone())),
        "thumbnailUrl": file(&|f| Some(f.thumbnail.clone())),
        "posterUrl": file(&|f| f.poster.clone()),
        "hlsUrl": file(&|f| f.hls.clone()),
        "createdAt": rfc3339(a.created_at),
    })
}

/// The parts of an order row `Order` shows.
#[derive(serde::Deserialize)]
struct OrderRow {
    id: uuid::Uuid,
    status: String,
    total_cents: i64,
    currency: String,
    credits: i64,
    refunded_cents: i64,
    failure_reason: Option<String>,
    created_at: DateTime<Utc>,
    paid_at: Option<DateTime<Utc>>,
}

fn order(row: &Value) -> Result<Value> {
    let o: OrderRow = serde_json::from_value(row.clone()).map_err(|e| bad("order", e))?;
    Ok(json!({
        "id": o.id.to_string(),
        "status": graphql_enum(&o.status),
        "totalCents": o.total_cents,
        "currency": o.currency.to_uppercase(),
        "credits": o.credits,
        "refundedCents": o.refunded_cents,
        "failureReason": o.failure_reason,
        "createdAt": rfc3339(o.created_at),
        "paidAt": o.paid_at.map(rfc3339),
    }))
}
