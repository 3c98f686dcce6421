//! `POST /webhooks/replicate`: Replicate's prediction webhooks.
//!
//! A delivery is verified against its raw body (Standard Webhooks), counted
//! once by its `webhook-id` (Replicate redelivers a final webhook until it
//! is answered 2xx, and may send any of them twice), and its prediction
//! JSON is published on the prediction's Redis channel, where the worker
//! following that prediction reads it. Nothing here changes a generation:
//! the worker alone decides what a prediction's state means, and it polls
//! Replicate when no webhook comes, so a lost delivery strands nothing.

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use mage_domain::replicate::{self, Delivery, Signed};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::AppState;

pub fn routes() -> Router<AppState> {
    Router::new().route("/webhooks/replicate", post(webhook))
}

fn answer(status: StatusCode, body: Value) -> Response {
    (status, Json(body)).into_response()
}

/// `outcome`: `accepted`, `duplicate`, `bad_signature`, `bad_request`,
/// `error`, `not_configured`.
fn count(outcome: &'static str) {
    metrics::counter!("mage_replicate_webhooks_total", "outcome" => outcome).increment(1);
}

async fn webhook(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(secret) = state.settings.replicate_webhook_secret.as_deref() else {
        tracing::error!(
            "a Replicate webhook arrived but MAGE_REPLICATE_WEBHOOK_SECRET is not set: refused \
             (set it to the secret of `GET /v1/webhooks/default/secret`)"
        );
        count("not_configured");
        return answer(StatusCode::NOT_FOUND, json!({"error": "Replicate webhooks are not configured"}));
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let signed = Signed {
        id: header("webhook-id"),
        timestamp: header("webhook-timestamp"),
        signature: header("webhook-signature"),
    };
    if let Err(e) = replicate::verify(secret, signed, &body, chrono::Utc::now().timestamp()) {
        tracing::warn!(error = %e, "Replicate webhook refused");
        count("bad_signature");
        return answer(StatusCode::BAD_REQUEST, json!({"error": e.to_string()}));
    }
    // Signed, so only Replicate (or whoever holds the secret) gets here.
    let webhook_id = signed.id.unwrap_or_default();
    let prediction = serde_json::from_slice::<Value>(&body).ok();
    let fields = prediction.as_ref().and_then(|p| Some((p["id"].as_str()?, p["status"].as_str()?)));
    let Some((prediction_id, status)) = fields.filter(|(id, _)| replicate::valid_id(id)) else {
        tracing::warn!(webhook_id, "Replicate webhook refused: not a prediction");
        count("bad_request");
        return answer(StatusCode::BAD_REQUEST, json!({"error": "the body is not a prediction"}));
    };
    if webhook_id.is_empty() || webhook_id.len() > replicate::MAX_ID_LEN {
        count("bad_request");
        return answer(StatusCode::BAD_REQUEST, json!({"error": "bad webhook-id"}));
    }
    let generation_id = query.as_deref().and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "generation")
            .and_then(|(_, v)| v.parse::<Uuid>().ok())
    });
    let span =
        tracing::info_span!("replicate_webhook", generation_id = ?generation_id, prediction_id, status);
    let _entered = span.enter();
    let delivery = Delivery { webhook_id, prediction_id, generation_id, status };

    let mut conn = match state.pool.get().await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "Replicate webhook: no database connection");
            count("error");
            return answer(StatusCode::SERVICE_UNAVAILABLE, json!({"error": "try again"}));
        }
    };
    match replicate::record(&mut conn, &delivery).await {
        Ok(true) => {}
        Ok(false) => {
            tracing::debug!(webhook_id, "Replicate webhook delivered again: ignored");
            count("duplicate");
            return answer(StatusCode::OK, json!({"received": true, "duplicate": true}));
        }
        Err(e) => {
            tracing::error!(error = %e, "Replicate webhook: could not record the delivery");
            count("error");
            return answer(StatusCode::SERVICE_UNAVAILABLE, json!({"error": "try again"}));
        }
    }
    // The body was parsed as JSON, so it is UTF-8.
    let text = String::from_utf8_lossy(&body);
    if let Err(e) = replicate::publish(&state.redis, prediction_id, &text).await {
        // Forgotten, so that Replicate's redelivery is acted upon (the
        // worker's own polling finds the state meanwhile).
        tracing::error!(error = %e, "Replicate webhook: could not publish the prediction");
        if let Err(e) = replicate::forget(&mut conn, webhook_id).await {
            tracing::error!(error = %e, "Replicate webhook: could not forget the unpublished delivery");
        }
        count("error");
        return answer(StatusCode::SERVICE_UNAVAILABLE, json!({"error": "try again"}));
    }
    tracing::debug!(webhook_id, "Replicate webhook passed on");
    count("accepted");
    answer(StatusCode::OK, json!({"received": true, "duplicate": false}))
}
