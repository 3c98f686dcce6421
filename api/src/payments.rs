//! Stripe over HTTP: the webhook endpoint, and the development checkout
//! page that stands in for Stripe Checkout under `mage dev`.

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use chrono::Utc;
use mage_domain::enums::{OrderMode, OrderStatus};
use mage_domain::metrics::webhook_received;
use mage_domain::orders;
use mage_domain::payments::intake::{self, Intake};
use mage_domain::payments::signature;
use mage_domain::queue::SettleJob;
use mage_domain::rows::{Order, OrderItem};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/webhooks/stripe", post(stripe_webhook))
        .route("/dev/checkout/{order}", get(dev_checkout))
        .route("/dev/checkout/{order}/pay", post(dev_pay))
        .route("/dev/checkout/{order}/cancel", post(dev_cancel))
}

fn answer(status: StatusCode, body: Value) -> Response {
    (status, Json(body)).into_response()
}

/// Verify, store, enqueue, answer: settlement runs on the `settle` queue.
/// A failure to store or enqueue answers 503 so that Stripe delivers again
/// (a redelivered event that is stored but unsettled is enqueued again).
async fn stripe_webhook(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(secret) = state.settings.payments.webhook_secret.as_deref() else {
        tracing::error!("a Stripe webhook arrived but STRIPE_WEBHOOK_SECRET is not set");
        return answer(StatusCode::SERVICE_UNAVAILABLE, json!({"error": "webhooks are not configured"}));
    };
    let header = headers.get("stripe-signature").and_then(|v| v.to_str().ok());
    if let Err(e) = signature::verify(&body, header, secret, Utc::now().timestamp()) {
        tracing::warn!(error = %e, "Stripe webhook refused: bad signature");
        webhook_received("unknown", "bad_signature");
        return answer(StatusCode::BAD_REQUEST, json!({"error": e.to_string()}));
    }
    let mut conn = match state.pool.get().await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "Stripe webhook: no database connection");
            webhook_received("unknown", "error");
            return answer(StatusCode::SERVICE_UNAVAILABLE, json!({"error": "try again"}));
        }
    };
    let (event_id, kind, intake) = match intake::store(&mut conn, &body).await {
        Ok(r) => r,
        Err(e @ mage_domain::Error::InvalidInput { .. }) => {
            webhook_received("unknown", "bad_request");
            return answer(StatusCode::BAD_REQUEST, json!({"error": e.to_string()}));
        }
        Err(e) => {
            tracing::error!(error = %e, "Stripe webhook: could not store the event");
            webhook_received("unknown", "error");
            return answer(StatusCode::SERVICE_UNAVAILABLE, json!({"error": "try again"}));
        }
    };
    drop(conn);
    let duplicate = intake != Intake::New;
    if intake != (Intake::Duplicate { settled: true })
        && let Err(e) = state.queues.push_settle(&SettleJob { event_id: event_id.clone() }).await
    {
        tracing::error!(%event_id, error = %e, "Stripe webhook: could not enqueue settlement");
        webhook_received(&kind, "error");
        return answer(StatusCode::SERVICE_UNAVAILABLE, json!({"error": "try again"}));
    }
    tracing::info!(%event_id, duplicate, "Stripe event received");
    webhook_received(&kind, if duplicate { "duplicate" } else { "accepted" });
    answer(StatusCode::OK, json!({"received": true, "duplicate": duplicate}))
}

/// The development pages exist only under `mage dev`.
async fn dev_order(state: &AppState, id: &str) -> Result<(Order, Vec<OrderItem>), Response> {
    // Only where no Stripe account is configured: with one, these pages
    // would let anyone sign a paid event with the real webhook secret.
    if !state.settings.dev_mode || state.settings.payments.stripe_secret_key.is_some() {
        return Err(StatusCode::NOT_FOUND.into_response());
    }
    let not_found = || (StatusCode::NOT_FOUND, Html("<h1>No such order</h1>".to_owned())).into_response();
    let id: Uuid = id.parse().map_err(|_| not_found())?;
    let mut conn = state.pool.get().await.map_err(|_| StatusCode::SERVICE_UNAVAILABLE.into_response())?;
    let order = orders::find(&mut conn, id).await.ok().flatten().ok_or_else(not_found)?;
    let items = orders::items(&mut conn, &[id]).await.unwrap_or_default();
    Ok((order, items))
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[derive(serde::Deserialize)]
struct PageQuery {
    /// Set after Pay or Cancel: the page waits for the settlement.
    #[serde(default)]
    sent: Option<String>,
}

async fn dev_checkout(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<PageQuery>,
) -> Response {
    let (order, items) = match dev_order(&state, &id).await {
        Ok(o) => o,
        Err(r) => return r,
    };
    let lines: String = items
        .iter()
        .map(|i| {
            format!("<li>{} × {} ({} credits each)</li>", i.quantity, escape(&i.product_name), i.unit_credits)
        })
        .collect();
    let amount = format!(
        "{}.{:02} {}",
        order.total_cents / 100,
        order.total_cents % 100,
        escape(&order.currency.to_uppercase())
    );
    let actions = if order.status == OrderStatus::Pending && q.sent.is_some() {
        // Sent, not yet settled by a worker: look again in a moment.
        r#"<p>Sent to Mage's webhook; waiting for the settlement…</p><meta http-equiv="refresh" content="1">"#
            .to_owned()
    } else if order.status == OrderStatus::Pending {
        format!(
            r#"<form method="post" action="/dev/checkout/{id}/pay"><button id="pay" type="submit">Pay {amount}</button></form>
<form method="post" action="/dev/checkout/{id}/cancel"><button id="cancel" type="submit">Cancel</button></form>"#,
            id = order.id
        )
    } else if q.sent.is_some() {
        // Settled: back to the app, where Stripe Checkout would send the
        // buyer (its success and cancel URLs).
        let back = match order.status {
            OrderStatus::Paid => "success",
            _ => "canceled",
        };
        format!(
            r#"<p><a id="back" href="/checkout/{back}?order={id}">Back to Mage</a></p><meta http-equiv="refresh" content="1;url=/checkout/{back}?order={id}">"#,
            id = order.id
        )
    } else {
        String::new()
    };
    Html(format!(
        r#"<!doctype html><html><head><meta charset="utf-8"><title>Mage development checkout</title></head>
<body><h1>Development checkout</h1>
<p>No Stripe account is configured: this page stands in for Stripe Checkout. Paying sends Mage the
signed <code>checkout.session.completed</code> event Stripe would send.</p>
<ul>{lines}</ul><p>Total: <strong>{amount}</strong> for <strong>{credits}</strong> credits.</p>
<p>Order status: <strong id="status">{status}</strong></p>{actions}</body></html>"#,
        credits = order.credits,
        status = order.status,
    ))
    .into_response()
}

async fn dev_pay(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    dev_event(state, id, true).await
}

async fn dev_cancel(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    dev_event(state, id, false).await
}

/// Builds the events Stripe would send, signs them with the webhook secret
/// and posts them to this server's own webhook endpoint, so the very
/// settlement of production runs.
async fn dev_event(state: AppState, id: String, pay: bool) -> Response {
    let (order, items) = match dev_order(&state, &id).await {
        Ok(o) => o,
        Err(r) => return r,
    };
    let Some(secret) = state.settings.payments.webhook_secret.clone() else {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    let mut events = vec![dev_session_event(&order, pay)];
    if pay && order.mode == OrderMode::Subscription {
        let price = first_price(&state, &items).await;
        events.push(dev_invoice_event(&order, price.as_deref()));
    }
    let mut addr = state.settings.addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let http = reqwest::Client::new();
    for ev in events {
        let body = ev.to_string();
        let sig = signature::sign(body.as_bytes(), &secret, Utc::now().timestamp());
        let sent = http
            .post(format!("http://{addr}/webhooks/stripe"))
            .header("Stripe-Signature", sig)
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .await;
        if !sent.as_ref().is_ok_and(|r| r.status().is_success()) {
            tracing::error!(order_id = %order.id, result = ?sent.map(|r| r.status()), "development checkout: webhook refused");
            return (StatusCode::BAD_GATEWAY, Html("<h1>The webhook refused the event</h1>".to_owned()))
                .into_response();
        }
    }
    Redirect::to(&format!("/dev/checkout/{}?sent=1", order.id)).into_response()
}

async fn first_price(state: &AppState, items: &[OrderItem]) -> Option<String> {
    let product = items.first()?.product_id.clone();
    let mut conn = state.pool.get().await.ok()?;
    let all = mage_domain::products::list_active(&mut conn).await.ok()?;
    all.into_iter().find(|p| p.id == product)?.stripe_price_id
}

fn dev_ids(order: &Order) -> (String, String, String) {
    let o = order.id.simple();
    (format!("pi_dev_{o}"), format!("cus_dev_{}", order.user_id.simple()), format!("sub_dev_{o}"))
}

fn envelope(kind: &str, object: Value) -> Value {
    json!({
        "id": format!("evt_dev_{}", Uuid::new_v4().simple()),
        "object": "event",
        "api_version": "2025-09-30.clover",
        "created": Utc::now().timestamp(),
        "livemode": false,
        "pending_webhooks": 1,
        "type": kind,
        "data": {"object": object},
    })
}

fn dev_session_event(order: &Order, pay: bool) -> Value {
    let (pi, customer, sub) = dev_ids(order);
    let plan = order.mode == OrderMode::Subscription;
    let session = json!({
        "id": format!("cs_dev_{}", order.id.simple()),
        "object": "checkout.session",
        "mode": order.mode,
        "status": if pay { "complete" } else { "expired" },
        "payment_status": if pay { "paid" } else { "unpaid" },
        "client_reference_id": order.id.to_string(),
        "metadata": {"order_id": order.id.to_string(), "user_id": order.user_id.to_string()},
        "amount_total": order.total_cents,
        "currency": order.currency,
        "customer": if pay { Value::from(customer) } else { Value::Null },
        "payment_intent": if pay && !plan { Value::from(pi) } else { Value::Null },
        "subscription": if pay && plan { Value::from(sub) } else { Value::Null },
    });
    envelope(if pay { "checkout.session.completed" } else { "checkout.session.expired" }, session)
}

fn dev_invoice_event(order: &Order, price: Option<&str>) -> Value {
    let (_, customer, sub) = dev_ids(order);
    let now = Utc::now().timestamp();
    let end = now + 30 * 86_400;
    let invoice = json!({
        "id": format!("in_dev_{}", order.id.simple()),
        "object": "invoice",
        "billing_reason": "subscription_create",
        "status": "paid",
        "customer": customer,
        "amount_paid": order.total_cents,
        "currency": order.currency,
        "parent": {"type": "subscription_details", "subscription_details": {
            "subscription": sub,
            "metadata": {"order_id": order.id.to_string(), "user_id": order.user_id.to_string()},
        }},
        "lines": {"object": "list", "data": [{
            "object": "line_item",
            "amount": order.total_cents,
            "period": {"start": now, "end": end},
            "pricing": {"type": "price_details", "price_details": {"price": price}},
        }]},
        "period_start": now,
        "period_end": end,
    });
    envelope("invoice.paid", invoice)
}
