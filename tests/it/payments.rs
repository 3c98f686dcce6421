//! Payments end to end: checkout through a fake Stripe API (the real wire
//! protocol, `fakes/src/stripe.rs`), signed webhook events posted to Mage's
//! endpoint, settlement by the real `settle` workers, against real
//! PostgreSQL and Redis. Like every test's, each app audits the ledger
//! when it is dropped.

use std::time::{Duration, Instant};

use crate::support::{TestApp, code};
use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Nullable, Text};
use diesel_async::RunQueryDsl;
use mage_domain::config::PaymentSettings;
use mage_domain::payments::signature;
use mage_fakes::stripe::{FakeStripe, Mode};
use serde_json::{Value, json};

const SECRET: &str = "whsec_test_payments";
const CHECKOUT: &str = "mutation($p: ID!, $q: Int!) { createCheckout(productId: $p, quantity: $q) {
    url order { id status totalCents currency credits items { productId quantity unitPriceCents unitCredits } } } }";
const BALANCE: &str = "{ me { credits { balance } } }";
const ORDERS: &str = "{ orders(first: 20) { edges { node { id status refundedCents failureReason } } } }";

/// Keep every field bound (`_workers`, not `..`): a field left out of a
/// destructuring is dropped at once, stopping the workers or the fake.
struct Shop {
    app: TestApp,
    stripe: FakeStripe,
    _workers: crate::support::Workers,
}

async fn shop_with(per_minute: u32) -> Shop {
    let stripe = FakeStripe::start().await;
    stripe.set_price("price_mage_basic_monthly", 1000, "usd");
    stripe.set_price("price_mage_pro_monthly", 4000, "usd");
    let base = stripe.url();
    let app = TestApp::start_with(|s| {
        s.payments = PaymentSettings {
            stripe_secret_key: Some("sk_test_mage".into()),
            webhook_secret: Some(SECRET.into()),
            stripe_api_base: Some(base),
            checkouts_per_minute: per_minute,
            stripe_timeout: Duration::from_secs(2),
        };
    })
    .await;
    let workers = app.start_workers().await;
    Shop { app, stripe, _workers: workers }
}

async fn shop() -> Shop {
    shop_with(100).await
}

async fn balance(app: &TestApp, token: &str) -> i64 {
    let res = app.gql(BALANCE, json!({}), Some(token)).await;
    res["data"]["me"]["credits"]["balance"].as_i64().unwrap_or_else(|| panic!("balance: {res}"))
}

/// Starts a checkout; returns the order id.
async fn checkout(app: &TestApp, token: &str, product: &str, quantity: i64) -> String {
    let res = app.gql(CHECKOUT, json!({"p": product, "q": quantity}), Some(token)).await;
    assert!(res.get("errors").is_none(), "checkout failed: {res}");
    res["data"]["createCheckout"]["order"]["id"].as_str().expect("order id").to_owned()
}

fn event(kind: &str, object: Value) -> Value {
    json!({
        "id": format!("evt_{}", uuid::Uuid::new_v4().simple()),
        "object": "event",
        "api_version": "2025-09-30.clover",
        "created": chrono::Utc::now().timestamp(),
        "livemode": false,
        "type": kind,
        "data": {"object": object},
    })
}

fn session(order: &str, user: &str, amount: i64, payment_status: &str, extra: Value) -> Value {
    let mut s = json!({
        "id": format!("cs_test_{}", uuid::Uuid::new_v4().simple()),
        "object": "checkout.session",
        "mode": "payment",
        "status": "complete",
        "payment_status": payment_status,
        "client_reference_id": order,
        "metadata": {"order_id": order, "user_id": user},
        "amount_total": amount,
        "currency": "usd",
        "customer": "cus_test_1",
        "payment_intent": format!("pi_{}", order.replace('-', "")),
        "subscription": null,
    });
    if let (Some(s), Some(extra)) = (s.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            s.insert(k.clone(), v.clone());
        }
    }
    s
}

fn pi_of(order: &str) -> String {
    format!("pi_{}", order.replace('-', ""))
}

async fn post_signed(app: &TestApp, ev: &Value, secret: &str, at: i64) -> reqwest::StatusCode {
    let body = ev.to_string();
    let sig = signature::sign(body.as_bytes(), secret, at);
    app.http
        .post(app.url("/webhooks/stripe"))
        .header("Stripe-Signature", sig)
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .expect("POST /webhooks/stripe")
        .status()
}

#[derive(QueryableByName, Debug)]
struct EventRow {
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = Nullable<Text>)]
    last_error: Option<String>,
}

/// Posts a signed event and waits until the workers settled it; returns
/// its settlement status and error.
async fn deliver(app: &TestApp, ev: &Value) -> EventRow {
    assert_eq!(post_signed(app, ev, SECRET, chrono::Utc::now().timestamp()).await, 200, "{ev}");
    settled(app, ev["id"].as_str().expect("id")).await
}

async fn settled(app: &TestApp, id: &str) -> EventRow {
    let start = Instant::now();
    loop {
        let row: Option<EventRow> = diesel::sql_query(
            "SELECT status, last_error FROM stripe_events WHERE id = $1 AND processed_at IS NOT NULL",
        )
        .bind::<Text, _>(id)
        .get_result(&mut *app.conn().await)
        .await
        .ok();
        if let Some(r) = row {
            return r;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "event {id} was not settled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn order_status(app: &TestApp, order: &str) -> String {
    #[derive(QueryableByName)]
    struct S {
        #[diesel(sql_type = Text)]
        status: String,
    }
    let s: S = diesel::sql_query("SELECT status FROM orders WHERE id = $1::uuid")
        .bind::<Text, _>(order)
        .get_result(&mut *app.conn().await)
        .await
        .expect("order");
    s.status
}

async fn ledger_sum(app: &TestApp, user: &str, kind: &str) -> i64 {
    #[derive(QueryableByName)]
    struct N {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let n: N = diesel::sql_query(
        "SELECT COALESCE(SUM(amount), 0)::bigint AS n FROM credit_entries WHERE user_id = $1::uuid AND kind = $2",
    )
    .bind::<Text, _>(user)
    .bind::<Text, _>(kind)
    .get_result(&mut *app.conn().await)
    .await
    .expect("sum");
    n.n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credit_pack_purchase_grants_its_credits_once_paid() {
    let Shop { app, stripe, _workers } = shop().await;
    let (token, user) = app.register("pack@example.com").await;
    let res = app.gql(CHECKOUT, json!({"p": "starter", "q": 2}), Some(&token)).await;
    let c = &res["data"]["createCheckout"];
    assert!(c["url"].as_str().is_some_and(|u| u.starts_with("https://checkout.stripe.com/")), "{res}");
    assert_eq!(c["order"]["status"], "PENDING");
    assert_eq!(c["order"]["totalCents"], 1000);
    assert_eq!(c["order"]["credits"], 200);
    assert_eq!(c["order"]["items"][0]["unitPriceCents"], 500);
    let order = c["order"]["id"].as_str().expect("id").to_owned();
    // What Stripe was asked: the order as reference and idempotency key.
    let req = stripe.requests().pop().expect("a Stripe request");
    assert_eq!(req.idempotency_key.as_deref(), Some(order.as_str()));
    assert_eq!(req.params.get("client_reference_id"), Some(&order));
    assert_eq!(req.params.get("metadata[order_id]"), Some(&order));
    assert_eq!(req.params.get("metadata[user_id]"), Some(&user));
    assert_eq!(req.params.get("mode").map(String::as_str), Some("payment"));
    assert_eq!(req.params.get("line_items[0][quantity]").map(String::as_str), Some("2"));

    assert_eq!(balance(&app, &token).await, 100);
    let r =
        deliver(&app, &event("checkout.session.completed", session(&order, &user, 1000, "paid", json!({}))))
            .await;
    assert_eq!(r.status, "processed", "{r:?}");
    assert_eq!(balance(&app, &token).await, 300);
    assert_eq!(order_status(&app, &order).await, "paid");
    let res = app.gql(ORDERS, json!({}), Some(&token)).await;
    assert_eq!(res["data"]["orders"]["edges"][0]["node"]["status"], "PAID", "{res}");

    const ORDER: &str = "query($id: ID!) { order(id: $id) { status paidAt } }";
    const EVENTS: &str = "query($id: ID!) { order(id: $id) { stripeEvents { type status error } } }";
    let res = app.gql(ORDER, json!({"id": order}), Some(&token)).await;
    assert_eq!(res["data"]["order"]["status"], "PAID", "{res}");
    assert!(res["data"]["order"]["paidAt"].is_string(), "{res}");
    let (other, _) = app.register("someone-else@example.com").await;
    let res = app.gql(ORDER, json!({"id": order}), Some(&other)).await;
    assert!(res["data"]["order"].is_null(), "another user's order is not theirs to see: {res}");
    let res = app.gql(EVENTS, json!({"id": order}), Some(&token)).await;
    assert_eq!(code(&res), "FORBIDDEN", "{res}");
    // The role is read on every call: the token from before the promotion works.
    let (admin, _) = app.register("admin@example.com").await;
    mage_domain::users::set_role(&app.pool, "admin@example.com", mage_domain::users::Role::Admin)
        .await
        .expect("promote");
    let res = app.gql(EVENTS, json!({"id": order}), Some(&admin)).await;
    let events = &res["data"]["order"]["stripeEvents"];
    assert_eq!(events[0]["type"], "checkout.session.completed", "{res}");
    assert_eq!(events[0]["status"], "processed", "{res}");
}

/// An app open on the balance sees a purchase land without asking.
#[tokio::test(flavor = "multi_thread")]
async fn a_settled_purchase_is_pushed_to_credits_changed_subscribers() {
    use crate::support::ws;
    let Shop { app, stripe: _stripe, _workers } = shop().await;
    let (token, user) = app.register("live-balance@example.com").await;
    let order = checkout(&app, &token, "starter", 1).await;
    let mut socket = ws::connect_signed_in(app.addr, Some(&token)).await;
    ws::subscribe(&mut socket, "b", "subscription { creditsChanged { balance } }", json!({})).await;
    let first = ws::recv(&mut socket).await.expect("first state");
    assert_eq!(first["payload"]["data"]["creditsChanged"]["balance"], 100, "{first}");

    let r =
        deliver(&app, &event("checkout.session.completed", session(&order, &user, 500, "paid", json!({}))))
            .await;
    assert_eq!(r.status, "processed", "{r:?}");
    let next = ws::recv_within(&mut socket, Duration::from_secs(10)).await.expect("the new balance");
    assert_eq!(next["payload"]["data"]["creditsChanged"]["balance"], 200, "{next}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_event_delivered_ten_times_at_once_grants_once() {
    let Shop { app, stripe: _stripe, _workers } = shop().await;
    let (token, user) = app.register("dup@example.com").await;
    let order = checkout(&app, &token, "creator", 1).await;
    let ev = event("checkout.session.completed", session(&order, &user, 2000, "paid", json!({})));
    let now = chrono::Utc::now().timestamp();
    let posts: Vec<_> = (0..10)
        .map(|_| {
            let (http, url, body) = (app.http.clone(), app.url("/webhooks/stripe"), ev.to_string());
            tokio::spawn(async move {
                let sig = signature::sign(body.as_bytes(), SECRET, now);
                http.post(url).header("Stripe-Signature", sig).body(body).send().await.expect("post").status()
            })
        })
        .collect();
    for p in posts {
        assert_eq!(p.await.expect("task"), 200);
    }
    settled(&app, ev["id"].as_str().expect("id")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(balance(&app, &token).await, 600);
    assert_eq!(ledger_sum(&app, &user, "purchase").await, 500);
    assert_eq!(app.count("stripe_events").await, 1);
    #[derive(QueryableByName)]
    struct Applied {
        #[diesel(sql_type = BigInt)]
        attempts: i64,
        #[diesel(sql_type = BigInt)]
        entries: i64,
    }
    let a: Applied = diesel::sql_query(
        "SELECT e.attempts::bigint AS attempts,
                (SELECT count(*) FROM credit_entries c WHERE c.stripe_event_id = e.id) AS entries
         FROM stripe_events e WHERE e.id = $1",
    )
    .bind::<Text, _>(ev["id"].as_str().expect("id"))
    .get_result(&mut *app.conn().await)
    .await
    .expect("event");
    assert_eq!((a.attempts, a.entries), (1, 1), "settled once, by one run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_payment_grants_nothing_and_a_late_async_success_grants_once() {
    let Shop { app, stripe: _stripe, _workers } = shop().await;
    let (token, user) = app.register("async@example.com").await;
    let failed = checkout(&app, &token, "starter", 1).await;
    let r = deliver(
        &app,
        &event("checkout.session.completed", session(&failed, &user, 500, "unpaid", json!({}))),
    )
    .await;
    assert_eq!(r.status, "processed");
    assert_eq!(order_status(&app, &failed).await, "pending");
    let s = session(&failed, &user, 500, "unpaid", json!({}));
    deliver(&app, &event("checkout.session.async_payment_failed", s)).await;
    assert_eq!(order_status(&app, &failed).await, "failed");
    assert_eq!(balance(&app, &token).await, 100);

    let later = checkout(&app, &token, "starter", 1).await;
    deliver(&app, &event("checkout.session.completed", session(&later, &user, 500, "unpaid", json!({}))))
        .await;
    let paid = session(&later, &user, 500, "paid", json!({}));
    deliver(&app, &event("checkout.session.async_payment_succeeded", paid.clone())).await;
    // The completed event with a paid status as well (Stripe may send both).
    deliver(&app, &event("checkout.session.completed", paid)).await;
    assert_eq!(order_status(&app, &later).await, "paid");
    assert_eq!(balance(&app, &token).await, 200);
    let expired = checkout(&app, &token, "starter", 1).await;
    deliver(&app, &event("checkout.session.expired", session(&expired, &user, 500, "unpaid", json!({}))))
        .await;
    assert_eq!(order_status(&app, &expired).await, "canceled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_unknown_order_or_a_different_amount_grants_nothing_and_says_why() {
    let Shop { app, stripe: _stripe, _workers } = shop().await;
    let (token, user) = app.register("refs@example.com").await;
    let order = checkout(&app, &token, "starter", 1).await;
    let mut s = session(&order, &user, 500, "paid", json!({}));
    s["client_reference_id"] = Value::Null;
    s["metadata"] = json!({});
    let r = deliver(&app, &event("checkout.session.completed", s)).await;
    assert_eq!(r.status, "failed");
    assert!(r.last_error.as_deref().is_some_and(|e| e.contains("names no order")), "{r:?}");

    let unknown = uuid::Uuid::new_v4().to_string();
    let r =
        deliver(&app, &event("checkout.session.completed", session(&unknown, &user, 500, "paid", json!({}))))
            .await;
    assert_eq!(r.status, "failed");
    assert!(r.last_error.as_deref().is_some_and(|e| e.contains("unknown order")), "{r:?}");

    let r = deliver(&app, &event("checkout.session.completed", session(&order, &user, 1, "paid", json!({}))))
        .await;
    assert_eq!(r.status, "failed");
    assert!(r.last_error.as_deref().is_some_and(|e| e.contains("amount mismatch")), "{r:?}");
    let eur = session(&order, &user, 500, "paid", json!({"currency": "eur"}));
    let r = deliver(&app, &event("checkout.session.completed", eur)).await;
    assert_eq!(r.status, "failed");
    assert_eq!(order_status(&app, &order).await, "pending");
    assert_eq!(balance(&app, &token).await, 100);

    let r = deliver(&app, &event("payout.paid", json!({"id": "po_1", "object": "payout"}))).await;
    assert_eq!(r.status, "ignored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_purchases_by_one_user_all_count() {
    let Shop { app, stripe: _stripe, _workers } = shop().await;
    let (token, user) = app.register("many@example.com").await;
    let mut orders = Vec::new();
    for _ in 0..8 {
        orders.push(checkout(&app, &token, "starter", 1).await);
    }
    let now = chrono::Utc::now().timestamp();
    let posts: Vec<_> = orders
        .iter()
        .map(|o| {
            let ev = event("checkout.session.completed", session(o, &user, 500, "paid", json!({})));
            let (http, url) = (app.http.clone(), app.url("/webhooks/stripe"));
            tokio::spawn(async move {
                let body = ev.to_string();
                let sig = signature::sign(body.as_bytes(), SECRET, now);
                http.post(url)
                    .header("Stripe-Signature", sig)
                    .body(body)
                    .send()
                    .await
                    .expect("post")
                    .status();
                ev["id"].as_str().unwrap_or_default().to_owned()
            })
        })
        .collect();
    for p in posts {
        let id = p.await.expect("task");
        settled(&app, &id).await;
    }
    assert_eq!(balance(&app, &token).await, 100 + 8 * 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_and_full_refunds_take_back_credits_in_proportion_each_once() {
    let Shop { app, stripe: _stripe, _workers } = shop().await;
    let (token, user) = app.register("refund@example.com").await;
    let order = checkout(&app, &token, "starter", 1).await;
    deliver(&app, &event("checkout.session.completed", session(&order, &user, 500, "paid", json!({})))).await;
    assert_eq!(balance(&app, &token).await, 200);
    let charge = |refunded: i64| {
        json!({"id": "ch_1", "object": "charge", "amount": 500, "amount_refunded": refunded,
               "payment_intent": pi_of(&order), "currency": "usd", "refunded": refunded == 500})
    };
    let first = event("charge.refunded", charge(200));
    deliver(&app, &first).await;
    assert_eq!(balance(&app, &token).await, 160);
    assert_eq!(order_status(&app, &order).await, "partially_refunded");
    // The same refund again (a new event id for the same state) and the
    // first event again change nothing.
    let r = deliver(&app, &event("charge.refunded", charge(200))).await;
    assert_eq!(r.status, "ignored");
    assert_eq!(post_signed(&app, &first, SECRET, chrono::Utc::now().timestamp()).await, 200);
    deliver(&app, &event("charge.refunded", charge(500))).await;
    assert_eq!(balance(&app, &token).await, 100);
    assert_eq!(order_status(&app, &order).await, "refunded");
    assert_eq!(ledger_sum(&app, &user, "clawback").await, -100);
    let res = app.gql(ORDERS, json!({}), Some(&token)).await;
    assert_eq!(res["data"]["orders"]["edges"][0]["node"]["refundedCents"], 500, "{res}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_delivered_before_its_checkout_waits_for_it() {
    let Shop { app, stripe: _stripe, _workers } = shop().await;
    let (token, user) = app.register("early@example.com").await;
    let order = checkout(&app, &token, "starter", 1).await;
    let refund = event(
        "charge.refunded",
        json!({"id": "ch_e", "object": "charge", "amount": 500, "amount_refunded": 250, "payment_intent": pi_of(&order)}),
    );
    assert_eq!(post_signed(&app, &refund, SECRET, chrono::Utc::now().timestamp()).await, 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    deliver(&app, &event("checkout.session.completed", session(&order, &user, 500, "paid", json!({})))).await;
    let r = settled(&app, refund["id"].as_str().expect("id")).await;
    assert_eq!(r.status, "processed", "{r:?}");
    assert_eq!(balance(&app, &token).await, 100 + 100 - 50);
    assert_eq!(order_status(&app, &order).await, "partially_refunded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_dispute_keeps_the_credits_taken_and_a_won_one_gives_them_back() {
    let Shop { app, stripe: _stripe, _workers } = shop().await;
    let (token, user) = app.register("dispute@example.com").await;
    let lost = checkout(&app, &token, "starter", 1).await;
    let won = checkout(&app, &token, "creator", 1).await;
    deliver(&app, &event("checkout.session.completed", session(&lost, &user, 500, "paid", json!({})))).await;
    deliver(&app, &event("checkout.session.completed", session(&won, &user, 2000, "paid", json!({})))).await;
    assert_eq!(balance(&app, &token).await, 700);
    // Disputes of the whole payment.
    let dispute = |id: &str, order: &str, status: &str| {
        let amount = if order == won { 2000 } else { 500 };
        json!({"id": id, "object": "dispute", "amount": amount, "payment_intent": pi_of(order), "status": status})
    };
    deliver(&app, &event("charge.dispute.created", dispute("dp_lost", &lost, "needs_response"))).await;
    assert_eq!(order_status(&app, &lost).await, "disputed");
    assert_eq!(balance(&app, &token).await, 600);
    deliver(&app, &event("charge.dispute.closed", dispute("dp_lost", &lost, "lost"))).await;
    assert_eq!(balance(&app, &token).await, 600);

    deliver(&app, &event("charge.dispute.created", dispute("dp_won", &won, "needs_response"))).await;
    assert_eq!(balance(&app, &token).await, 100);
    deliver(&app, &event("charge.dispute.closed", dispute("dp_won", &won, "won"))).await;
    assert_eq!(balance(&app, &token).await, 600);
    assert_eq!(order_status(&app, &won).await, "paid");
    // A repeated close changes nothing.
    let r = deliver(&app, &event("charge.dispute.closed", dispute("dp_won", &won, "won"))).await;
    assert_eq!(r.status, "ignored");
    assert_eq!(balance(&app, &token).await, 600);

    // An inquiry withdraws no money: no credits move.
    deliver(&app, &event("charge.dispute.created", dispute("du_inq", &won, "warning_needs_response"))).await;
    assert_eq!(balance(&app, &token).await, 600);
    deliver(&app, &event("charge.dispute.closed", dispute("du_inq", &won, "warning_closed"))).await;
    assert_eq!(balance(&app, &token).await, 600);

    // Refunded in full while disputed, then won: the refund stands, nothing
    // comes back.
    let refunded = checkout(&app, &token, "starter", 1).await;
    deliver(&app, &event("checkout.session.completed", session(&refunded, &user, 500, "paid", json!({}))))
        .await;
    assert_eq!(balance(&app, &token).await, 700);
    deliver(&app, &event("charge.dispute.created", dispute("dp_ref", &refunded, "needs_response"))).await;
    assert_eq!(balance(&app, &token).await, 600);
    let charge = json!({"id": "ch_r", "object": "charge", "amount": 500, "amount_refunded": 500,
                        "payment_intent": pi_of(&refunded)});
    deliver(&app, &event("charge.refunded", charge)).await;
    assert_eq!(balance(&app, &token).await, 600);
    deliver(&app, &event("charge.dispute.closed", dispute("dp_ref", &refunded, "won"))).await;
    assert_eq!(balance(&app, &token).await, 600);
    assert_eq!(order_status(&app, &refunded).await, "refunded");
}

fn plan_session(order: &str, user: &str, sub: &str, amount: i64) -> Value {
    session(
        order,
        user,
        amount,
        "paid",
        json!({"mode": "subscription", "payment_intent": null, "subscription": sub}),
    )
}

fn invoice(id: &str, sub: &str, reason: &str, price: &str, period_end: i64, order: Option<&str>) -> Value {
    json!({
        "id": id, "object": "invoice", "billing_reason": reason, "status": "paid",
        "amount_paid": 1000, "currency": "usd",
        "parent": {"type": "subscription_details", "subscription_details": {
            "subscription": sub, "metadata": order.map(|o| json!({"order_id": o})).unwrap_or(json!({})),
        }},
        "lines": {"object": "list", "data": [{
            "object": "line_item", "amount": 1000,
            "period": {"start": period_end - 30 * 86_400, "end": period_end},
            "pricing": {"type": "price_details", "price_details": {"price": price}},
        }]},
    })
}

/// The older invoice shape: `subscription` at the top level, price under
/// `lines.data[].price`.
fn old_invoice(id: &str, sub: &str, reason: &str, price: &str, period_end: i64) -> Value {
    json!({
        "id": id, "object": "invoice", "billing_reason": reason, "status": "paid", "subscription": sub,
        "lines": {"object": "list", "data": [{
            "object": "line_item", "period": {"start": period_end - 30 * 86_400, "end": period_end},
            "price": {"id": price, "object": "price"},
        }]},
    })
}

fn subscription(sub: &str, price: &str, status: &str, period_end: i64) -> Value {
    json!({"id": sub, "object": "subscription", "status": status, "metadata": {},
           "items": {"object": "list", "data": [{"price": {"id": price}, "current_period_end": period_end}]}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_checkout_and_its_first_invoice_grant_once_in_either_order() {
    let Shop { app, stripe, _workers } = shop().await;
    let end = chrono::Utc::now().timestamp() + 30 * 86_400;
    // Checkout first, then the invoice.
    let (token, user) = app.register("sub1@example.com").await;
    let order = checkout(&app, &token, "basic", 1).await;
    let req = stripe.requests().pop().expect("request");
    assert_eq!(req.params.get("mode").map(String::as_str), Some("subscription"));
    assert_eq!(req.params.get("line_items[0][price]").map(String::as_str), Some("price_mage_basic_monthly"));
    assert_eq!(req.params.get("subscription_data[metadata][order_id]"), Some(&order));
    deliver(&app, &event("checkout.session.completed", plan_session(&order, &user, "sub_a", 1000))).await;
    assert_eq!(balance(&app, &token).await, 1100);
    let inv = invoice("in_a1", "sub_a", "subscription_create", "price_mage_basic_monthly", end, None);
    let r = deliver(&app, &event("invoice.paid", inv)).await;
    assert_eq!(r.status, "processed", "{r:?}");
    assert_eq!(balance(&app, &token).await, 1100);
    assert_eq!(order_status(&app, &order).await, "paid");

    // The invoice first (found through the subscription's metadata), then
    // the checkout.
    let (token2, user2) = app.register("sub2@example.com").await;
    let order2 = checkout(&app, &token2, "basic", 1).await;
    let inv =
        invoice("in_b1", "sub_b", "subscription_create", "price_mage_basic_monthly", end, Some(&order2));
    deliver(&app, &event("invoice.paid", inv)).await;
    assert_eq!(balance(&app, &token2).await, 1100);
    deliver(&app, &event("checkout.session.completed", plan_session(&order2, &user2, "sub_b", 1000))).await;
    assert_eq!(balance(&app, &token2).await, 1100);
    assert_eq!(ledger_sum(&app, &user2, "purchase").await, 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_replace_unused_plan_credits_and_never_touch_purchased_packs() {
    let Shop { app, stripe: _stripe, _workers } = shop().await;
    let (token, user) = app.register("renew@example.com").await;
    let end = chrono::Utc::now().timestamp() + 30 * 86_400;
    let plan = checkout(&app, &token, "basic", 1).await;
    deliver(&app, &event("checkout.session.completed", plan_session(&plan, &user, "sub_r", 1000))).await;
    // An add-on pack on top of the plan.
    let pack = checkout(&app, &token, "starter", 1).await;
    deliver(&app, &event("checkout.session.completed", session(&pack, &user, 500, "paid", json!({})))).await;
    assert_eq!(balance(&app, &token).await, 100 + 1000 + 100);
    // Spend some: plan credits (expiring first) go first.
    app.sql(&format!(
        "UPDATE credit_grants SET remaining = remaining - 300 WHERE user_id = '{user}' AND source = 'subscription';
         UPDATE credit_accounts SET balance = balance - 300 WHERE user_id = '{user}';
         INSERT INTO credit_entries (user_id, kind, amount, balance_after, held_after, idempotency_key)
             SELECT '{user}', 'adjustment', -300, balance, held, 'test-spend' FROM credit_accounts WHERE user_id = '{user}';"
    ))
    .await;
    assert_eq!(balance(&app, &token).await, 900);

    let renewal =
        old_invoice("in_r2", "sub_r", "subscription_cycle", "price_mage_basic_monthly", end + 30 * 86_400);
    let r = deliver(&app, &event("invoice.paid", renewal.clone())).await;
    assert_eq!(r.status, "processed", "{r:?}");
    // 700 unused plan credits expired, 1000 new; signup and pack untouched.
    assert_eq!(balance(&app, &token).await, 100 + 100 + 1000);
    assert_eq!(ledger_sum(&app, &user, "expire").await, -700);
    // The renewal delivered again as another event: granted once.
    deliver(&app, &event("invoice.paid", renewal)).await;
    assert_eq!(balance(&app, &token).await, 1200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_and_downgrades_reset_plan_credits_at_once_and_cancellation_keeps_them() {
    let Shop { app, stripe: _stripe, _workers } = shop().await;
    let (token, user) = app.register("change@example.com").await;
    let end = chrono::Utc::now().timestamp() + 30 * 86_400;
    let plan = checkout(&app, &token, "basic", 1).await;
    deliver(&app, &event("checkout.session.completed", plan_session(&plan, &user, "sub_c", 1000))).await;
    assert_eq!(balance(&app, &token).await, 1100);
    let up = deliver(
        &app,
        &event(
            "customer.subscription.updated",
            subscription("sub_c", "price_mage_pro_monthly", "active", end),
        ),
    )
    .await;
    assert_eq!(up.status, "processed", "{up:?}");
    assert_eq!(balance(&app, &token).await, 100 + 5000);
    let down = deliver(
        &app,
        &event(
            "customer.subscription.updated",
            subscription("sub_c", "price_mage_basic_monthly", "active", end),
        ),
    )
    .await;
    assert_eq!(down.status, "processed");
    assert_eq!(balance(&app, &token).await, 100 + 1000);
    // An upgrade whose proration is unpaid waits; the paid one applies.
    let unpaid = deliver(
        &app,
        &event(
            "customer.subscription.updated",
            subscription("sub_c", "price_mage_pro_monthly", "past_due", end),
        ),
    )
    .await;
    assert_eq!(unpaid.status, "ignored", "{unpaid:?}");
    assert_eq!(balance(&app, &token).await, 100 + 1000);
    let paid = deliver(
        &app,
        &event(
            "customer.subscription.updated",
            subscription("sub_c", "price_mage_pro_monthly", "active", end),
        ),
    )
    .await;
    assert_eq!(paid.status, "processed", "{paid:?}");
    assert_eq!(balance(&app, &token).await, 100 + 5000);
    deliver(
        &app,
        &event(
            "customer.subscription.updated",
            subscription("sub_c", "price_mage_basic_monthly", "active", end),
        ),
    )
    .await;
    assert_eq!(balance(&app, &token).await, 100 + 1000);
    // An upgrade created before the downgrade, delivered late: ignored.
    let mut late = event(
        "customer.subscription.updated",
        subscription("sub_c", "price_mage_pro_monthly", "active", end),
    );
    late["created"] = json!(chrono::Utc::now().timestamp() - 3600);
    assert_eq!(deliver(&app, &late).await.status, "ignored");
    assert_eq!(balance(&app, &token).await, 100 + 1000);
    // Same plan again (a status change only): no credit moves.
    let same = deliver(
        &app,
        &event(
            "customer.subscription.updated",
            subscription("sub_c", "price_mage_basic_monthly", "past_due", end),
        ),
    )
    .await;
    assert_eq!(same.status, "ignored");
    let unknown = deliver(
        &app,
        &event("customer.subscription.updated", subscription("sub_c", "price_unknown", "active", end)),
    )
    .await;
    assert_eq!(unknown.status, "failed");
    assert!(unknown.last_error.as_deref().is_some_and(|e| e.contains("unknown plan price")), "{unknown:?}");
    let bad_invoice = invoice("in_x", "sub_c", "subscription_cycle", "price_unknown", end, None);
    assert_eq!(deliver(&app, &event("invoice.paid", bad_invoice)).await.status, "failed");
    deliver(
        &app,
        &event(
            "customer.subscription.deleted",
            subscription("sub_c", "price_mage_basic_monthly", "canceled", end),
        ),
    )
    .await;
    assert_eq!(balance(&app, &token).await, 1100);
    #[derive(QueryableByName)]
    struct S {
        #[diesel(sql_type = Text)]
        status: String,
    }
    let s: S = diesel::sql_query("SELECT status FROM subscriptions WHERE id = 'sub_c'")
        .get_result(&mut *app.conn().await)
        .await
        .expect("subscription");
    assert_eq!(s.status, "canceled");
    // An update after the cancellation does not bring it back.
    let after = deliver(
        &app,
        &event(
            "customer.subscription.updated",
            subscription("sub_c", "price_mage_pro_monthly", "active", end),
        ),
    )
    .await;
    assert_eq!(after.status, "ignored");
    assert_eq!(balance(&app, &token).await, 1100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stripe_down_refusing_or_hanging_fails_the_order_with_a_clear_error() {
    let Shop { app, stripe, _workers } = shop().await;
    let (token, _) = app.register("down@example.com").await;
    for (mode, within) in [(Mode::Down, 5), (Mode::Refuse, 5), (Mode::Hang, 10)] {
        stripe.set_mode(mode);
        let start = Instant::now();
        let res = app.gql(CHECKOUT, json!({"p": "starter", "q": 1}), Some(&token)).await;
        assert_eq!(code(&res), "PAYMENT_PROVIDER_ERROR", "{mode:?}: {res}");
        assert!(start.elapsed() < Duration::from_secs(within), "{mode:?} took {:?}", start.elapsed());
    }
    let res = app.gql(ORDERS, json!({}), Some(&token)).await;
    let edges = res["data"]["orders"]["edges"].as_array().cloned().unwrap_or_default();
    assert_eq!(edges.len(), 3, "{res}");
    for e in edges {
        assert_eq!(e["node"]["status"], "FAILED", "{res}");
        assert!(e["node"]["failureReason"].as_str().is_some_and(|r| !r.is_empty()), "{res}");
    }
    stripe.set_mode(Mode::Normal);
    let res = app.gql(CHECKOUT, json!({"p": "nope", "q": 1}), Some(&token)).await;
    assert_eq!(code(&res), "NOT_FOUND", "{res}");
    let res = app.gql(CHECKOUT, json!({"p": "starter", "q": 0}), Some(&token)).await;
    assert_eq!(code(&res), "BAD_USER_INPUT", "{res}");
    let res = app.gql(CHECKOUT, json!({"p": "basic", "q": 2}), Some(&token)).await;
    assert_eq!(code(&res), "BAD_USER_INPUT", "{res}");
    let res = app.gql(CHECKOUT, json!({"p": "starter", "q": 1}), None).await;
    assert_eq!(code(&res), "UNAUTHENTICATED", "{res}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkouts_are_rate_limited_per_user() {
    let Shop { app, stripe: _stripe, _workers } = shop_with(2).await;
    let (token, _) = app.register("rate@example.com").await;
    checkout(&app, &token, "starter", 1).await;
    checkout(&app, &token, "starter", 1).await;
    let res = app.gql(CHECKOUT, json!({"p": "starter", "q": 1}), Some(&token)).await;
    assert_eq!(code(&res), "RATE_LIMITED", "{res}");
    assert!(res["errors"][0]["extensions"]["retryAfterSeconds"].as_u64().is_some_and(|s| s > 0), "{res}");
    let (other, _) = app.register("rate2@example.com").await;
    checkout(&app, &other, "starter", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_and_stale_signatures_are_refused_with_no_side_effect() {
    let Shop { app, stripe: _stripe, _workers } = shop().await;
    let (token, user) = app.register("sig@example.com").await;
    let order = checkout(&app, &token, "starter", 1).await;
    let ev = event("checkout.session.completed", session(&order, &user, 500, "paid", json!({})));
    let now = chrono::Utc::now().timestamp();
    assert_eq!(post_signed(&app, &ev, "whsec_wrong", now).await, 400);
    assert_eq!(post_signed(&app, &ev, SECRET, now - 301).await, 400);
    assert_eq!(post_signed(&app, &ev, SECRET, now + 301).await, 400);
    let unsigned =
        app.http.post(app.url("/webhooks/stripe")).body(ev.to_string()).send().await.expect("post");
    assert_eq!(unsigned.status(), 400);
    // Signed, then altered.
    let body = ev.to_string();
    let sig = signature::sign(body.as_bytes(), SECRET, now);
    let altered = body.replace("\"paid\"", "\"paid\" ");
    let res =
        app.http.post(app.url("/webhooks/stripe")).header("Stripe-Signature", sig).body(altered).send().await;
    assert_eq!(res.expect("post").status(), 400);
    assert_eq!(app.count("stripe_events").await, 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(balance(&app, &token).await, 100);
    assert_eq!(order_status(&app, &order).await, "pending");
    // The development checkout exists only under `mage dev`.
    let page = app.http.get(app.url(&format!("/dev/checkout/{order}"))).send().await.expect("get");
    assert_eq!(page.status(), 404);
    // Within the tolerance it is accepted.
    assert_eq!(post_signed(&app, &ev, SECRET, now - 290).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_replays_a_failed_event_once_its_cause_is_fixed_and_it_applies_once() {
    const FAILED: &str = r#"{ stripeEvents(status: "failed") { id type status error } }"#;
    const REPLAY: &str = "mutation($id: ID!) { replayStripeEvent(id: $id) { id status error } }";
    let Shop { app, stripe: _stripe, _workers } = shop().await;
    let (admin, _) = app.register("payments-admin@example.com").await;
    mage_domain::users::set_role(&app.pool, "payments-admin@example.com", mage_domain::users::Role::Admin)
        .await
        .expect("promote");
    let (token, user) = app.register("replay@example.com").await;
    let end = chrono::Utc::now().timestamp() + 30 * 86_400;
    let plan = checkout(&app, &token, "basic", 1).await;
    deliver(&app, &event("checkout.session.completed", plan_session(&plan, &user, "sub_x", 1000))).await;
    assert_eq!(balance(&app, &token).await, 1100);

    // The plan's price was changed in Stripe before Mage was told.
    let renewal = event(
        "invoice.paid",
        old_invoice("in_x2", "sub_x", "subscription_cycle", "price_mage_basic_v2", end + 30 * 86_400),
    );
    let id = renewal["id"].as_str().expect("id").to_owned();
    let r = deliver(&app, &renewal).await;
    assert_eq!(r.status, "failed");
    let listed = app.gql(FAILED, json!({}), Some(&admin)).await;
    let events = listed["data"]["stripeEvents"].as_array().unwrap_or_else(|| panic!("{listed}"));
    assert!(events.iter().any(|e| e["id"] == id.as_str() && e["status"] == "failed"), "{listed}");

    // Not for users, and nothing moves.
    let res = app.gql(REPLAY, json!({ "id": id }), Some(&token)).await;
    assert_eq!(code(&res), "FORBIDDEN", "{res}");
    assert!(res["data"].is_null(), "{res}");
    let res = app.gql(FAILED, json!({}), Some(&token)).await;
    assert_eq!(code(&res), "FORBIDDEN", "{res}");

    // Replaying before the fix fails again, with the same reason.
    let res = app.gql(REPLAY, json!({ "id": id }), Some(&admin)).await;
    assert_eq!(res["data"]["replayStripeEvent"]["status"], "received", "{res}");
    let r = settled(&app, &id).await;
    assert_eq!(r.status, "failed");
    assert!(r.last_error.as_deref().is_some_and(|e| e.contains("unknown plan price")), "{r:?}");

    // The operator maps the new price to the plan; five admins replay at once.
    app.sql("UPDATE products SET stripe_price_id = 'price_mage_basic_v2' WHERE id = 'basic'").await;
    let replies = app.gql_concurrently(5, REPLAY, |_| json!({ "id": id }), Some(&admin)).await;
    for r in &replies {
        assert!(r.get("errors").is_none(), "{r}");
    }
    let r = settled(&app, &id).await;
    assert_eq!(r.status, "processed", "{r:?}");
    // The renewal granted its 1,000 credits once, replacing the unused ones.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(ledger_sum(&app, &user, "purchase").await, 2000);
    assert_eq!(ledger_sum(&app, &user, "expire").await, -1000);
    assert_eq!(balance(&app, &token).await, 1100);

    // A processed event is never applied again.
    let res = app.gql(REPLAY, json!({ "id": id }), Some(&admin)).await;
    assert_eq!(res["data"]["replayStripeEvent"]["status"], "processed", "{res}");
    let res = app.gql(REPLAY, json!({ "id": "evt_missing" }), Some(&admin)).await;
    assert_eq!(code(&res), "NOT_FOUND", "{res}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(ledger_sum(&app, &user, "purchase").await, 2000);
}
