//! Settlement: one stored Stripe event applied in one PostgreSQL
//! transaction. The event row is locked first and marked processed in the
//! same transaction, so an event is applied once however often its job
//! runs; every credit movement is also keyed (`order:<id>`,
//! `refund:<order>:<cents>`, `dispute:<id>` ...) so two different events
//! meaning the same thing (the checkout and the first invoice of one
//! subscription) grant once. The order's state machine decides what a late
//! or out-of-order event may still change.
//!
//! A business refusal (no order, unknown price, amount mismatch) marks the
//! event FAILED with its reason for admins and grants nothing; only
//! infrastructure errors are returned, to be retried by the job.

use chrono::{DateTime, Duration, TimeZone, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use serde_json::Value;
use uuid::Uuid;

use crate::credits::{self, Clawback, GrantSource, NewGrant};
use crate::db::Connection;
use crate::orders::{self as order_rows, Status};
use crate::rows::{Order, Product, StripeEvent, Subscription};
use crate::schema::{credit_grants, order_items, orders, products, stripe_events, subscriptions};
use crate::{Error, Result};

/// What settling an event did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Processed(String),
    Ignored(String),
    Failed(String),
    /// Settled by an earlier run.
    AlreadySettled,
}

/// Why an event cannot be settled yet (it depends on one not settled yet,
/// e.g. a refund that arrived before its checkout): the transaction is
/// rolled back and the job retried later.
#[derive(Debug, Clone)]
struct NotYet(String);

/// What a handler decided, with the order and user it concerned.
struct Verdict {
    outcome: Outcome,
    order_id: Option<Uuid>,
    user_id: Option<Uuid>,
    /// Credits moved (positive granted, negative taken).
    credits: i64,
    /// Set: settle later, nothing of this run is kept.
    wait: Option<NotYet>,
}

impl Verdict {
    fn done(order: &Order, credits: i64, note: impl Into<String>) -> Self {
        Self {
            outcome: Outcome::Processed(note.into()),
            order_id: Some(order.id),
            user_id: Some(order.user_id),
            credits,
            wait: None,
        }
    }

    fn ignored(note: impl Into<String>) -> Self {
        Self { outcome: Outcome::Ignored(note.into()), order_id: None, user_id: None, credits: 0, wait: None }
    }

    fn failed(reason: impl Into<String>) -> Self {
        Self {
            outcome: Outcome::Failed(reason.into()),
            order_id: None,
            user_id: None,
            credits: 0,
            wait: None,
        }
    }

    /// Settle later: what it waits for is not settled yet.
    fn not_yet(reason: impl Into<String>) -> Self {
        let mut v = Self::ignored("");
        v.wait = Some(NotYet(reason.into()));
        v
    }

    fn about(mut self, order: &Order) -> Self {
        self.order_id = Some(order.id);
        self.user_id = Some(order.user_id);
        self
    }
}

pub async fn settle(conn: &mut Connection, event_id: &str) -> Result<Outcome> {
    let (ev, verdict) = conn
        .transaction::<_, Error, _>(async |conn| {
            let ev: StripeEvent = stripe_events::table
                .find(event_id)
                .for_update()
                .select(StripeEvent::as_select())
                .first(conn)
                .await
                .optional()?
                .ok_or(Error::NotFound("stripe event"))?;
            if ev.processed_at.is_some() {
                return Ok((ev, None));
            }
            let verdict = match apply(conn, &ev).await {
                Ok(v) => v,
                // A ledger key reused with another amount: a real
                // inconsistency that no retry fixes; kept for admins.
                Err(Error::Conflict(m)) => Verdict::failed(m),
                Err(e) => return Err(e),
            };
            if let Some(NotYet(why)) = &verdict.wait {
                return Err(Error::NotYet(why.clone()));
            }
            let (status, error) = match &verdict.outcome {
                Outcome::Processed(_) | Outcome::AlreadySettled => ("processed", None),
                Outcome::Ignored(_) => ("ignored", None),
                Outcome::Failed(reason) => ("failed", Some(reason.clone())),
            };
            diesel::update(stripe_events::table.find(event_id))
                .set((
                    stripe_events::status.eq(status),
                    stripe_events::processed_at.eq(Utc::now()),
                    stripe_events::attempts.eq(stripe_events::attempts + 1),
                    stripe_events::last_error.eq(error),
                    stripe_events::order_id.eq(verdict.order_id),
                    stripe_events::user_id.eq(verdict.user_id),
                ))
                .execute(conn)
                .await?;
            Ok((ev, Some(verdict)))
        })
        .await?;
    let Some(v) = verdict else { return Ok(Outcome::AlreadySettled) };
    crate::metrics::event_settled(
        &ev.type_,
        match &v.outcome {
            Outcome::Processed(_) | Outcome::AlreadySettled => "processed",
            Outcome::Ignored(_) => "ignored",
            Outcome::Failed(_) => "failed",
        },
    );
    audit(conn, &ev, &v).await;
    Ok(v.outcome)
}

/// The audit line every settlement writes: one per event, with what it
/// changed and the balance it left.
async fn audit(conn: &mut Connection, ev: &StripeEvent, v: &Verdict) {
    let balance_after = match v.user_id {
        Some(u) => credits::account(conn, u).await.ok().map(|a| a.balance),
        None => None,
    };
    let (outcome, note) = match &v.outcome {
        Outcome::Processed(n) => ("processed", n.as_str()),
        Outcome::Ignored(n) => ("ignored", n.as_str()),
        Outcome::Failed(n) => ("failed", n.as_str()),
        Outcome::AlreadySettled => ("already settled", ""),
    };
    let order = v.order_id.map(|o| o.to_string());
    let user = v.user_id.map(|u| u.to_string());
    if matches!(v.outcome, Outcome::Failed(_)) {
        tracing::warn!(target: "mage::audit", event_id = %ev.id, event_type = %ev.type_, order_id = ?order,
            user_id = ?user, credits = v.credits, balance_after = ?balance_after, outcome, note, "stripe event settled");
    } else {
        tracing::info!(target: "mage::audit", event_id = %ev.id, event_type = %ev.type_, order_id = ?order,
            user_id = ?user, credits = v.credits, balance_after = ?balance_after, outcome, note, "stripe event settled");
    }
}

async fn apply(conn: &mut Connection, ev: &StripeEvent) -> Result<Verdict> {
    let obj = &ev.payload["data"]["object"];
    match ev.type_.as_str() {
        "checkout.session.completed"
        | "checkout.session.async_payment_succeeded"
        | "checkout.session.async_payment_failed"
        | "checkout.session.expired" => checkout_session(conn, ev, obj).await,
        "invoice.paid" | "invoice.payment_succeeded" => invoice_paid(conn, ev, obj).await,
        "customer.subscription.updated" => subscription_updated(conn, ev, obj).await,
        "customer.subscription.deleted" => subscription_deleted(conn, ev, obj).await,
        "charge.refunded" => charge_refunded(conn, ev, obj).await,
        "charge.dispute.created" => dispute_created(conn, ev, obj).await,
        "charge.dispute.closed" => dispute_closed(conn, ev, obj).await,
        other => Ok(Verdict::ignored(format!("Mage does not act on {other}"))),
    }
}

/// An id field that Stripe sends as a string, or as the object when expanded.
fn id_of(v: &Value) -> Option<String> {
    v.as_str().map(str::to_owned).or_else(|| v["id"].as_str().map(str::to_owned)).filter(|s| !s.is_empty())
}

fn timestamp(v: &Value) -> Option<DateTime<Utc>> {
    v.as_i64().and_then(|t| Utc.timestamp_opt(t, 0).single())
}

async fn order_named(
    conn: &mut Connection,
    reference: Option<&str>,
) -> Result<std::result::Result<Order, Verdict>> {
    let Some(reference) = reference.filter(|r| !r.is_empty()) else {
        return Ok(Err(Verdict::failed(
            "the event names no order (client_reference_id / metadata.order_id)",
        )));
    };
    let Ok(id) = reference.parse::<Uuid>() else {
        return Ok(Err(Verdict::failed(format!("unknown order {reference:?}"))));
    };
    Ok(order_rows::lock(conn, id).await?.ok_or_else(|| Verdict::failed(format!("unknown order {id}"))))
}

async fn checkout_session(conn: &mut Connection, ev: &StripeEvent, s: &Value) -> Result<Verdict> {
    let reference = s["client_reference_id"].as_str().or_else(|| s["metadata"]["order_id"].as_str());
    let order = match order_named(conn, reference).await? {
        Ok(o) => o,
        Err(v) => return Ok(v),
    };
    let order = remember_stripe_ids(conn, &order, s).await?;
    match ev.type_.as_str() {
        "checkout.session.completed" | "checkout.session.async_payment_succeeded" => {
            if let Some(v) = amount_mismatch(&order, s) {
                return Ok(v.about(&order));
            }
            let paid = matches!(s["payment_status"].as_str(), Some("paid" | "no_payment_required"));
            if !paid {
                return Ok(Verdict::done(
                    &order,
                    0,
                    "checkout completed; waiting for the asynchronous payment",
                ));
            }
            pay(conn, ev, &order, s).await
        }
        "checkout.session.async_payment_failed" => Ok(
            match set_status(conn, &order, Status::Pending, Status::Failed, Some("the payment failed"))
                .await?
            {
                true => Verdict::done(&order, 0, "payment failed; order FAILED"),
                false => Verdict::ignored(format!("order is already {}", order.status)).about(&order),
            },
        ),
        _ => Ok(
            match set_status(conn, &order, Status::Pending, Status::Canceled, Some("checkout expired"))
                .await?
            {
                true => Verdict::done(&order, 0, "checkout expired; order CANCELED"),
                false => Verdict::ignored(format!("order is already {}", order.status)).about(&order),
            },
        ),
    }
}

fn amount_mismatch(order: &Order, s: &Value) -> Option<Verdict> {
    let amount = s["amount_total"].as_i64();
    let currency = s["currency"].as_str().map(str::to_lowercase);
    if amount == Some(order.total_cents) && currency.as_deref() == Some(order.currency.as_str()) {
        return None;
    }
    Some(Verdict::failed(format!(
        "amount mismatch: the session says {} {}, the order is {} {}",
        amount.map_or("no amount".into(), |a| a.to_string()),
        currency.unwrap_or_default(),
        order.total_cents,
        order.currency
    )))
}

/// Keeps the payment intent, customer and subscription ids of a session
/// (the first one seen wins: they never change for an order).
async fn remember_stripe_ids(conn: &mut Connection, order: &Order, s: &Value) -> Result<Order> {
    let pi = order.stripe_payment_intent_id.clone().or_else(|| id_of(&s["payment_intent"]));
    let customer = order.stripe_customer_id.clone().or_else(|| id_of(&s["customer"]));
    let sub = order.stripe_subscription_id.clone().or_else(|| id_of(&s["subscription"]));
    let session = order.stripe_checkout_session_id.clone().or_else(|| id_of(&s["id"]));
    Ok(diesel::update(orders::table.find(order.id))
        .set((
            orders::stripe_payment_intent_id.eq(pi),
            orders::stripe_customer_id.eq(customer),
            orders::stripe_subscription_id.eq(sub),
            orders::stripe_checkout_session_id.eq(session),
            orders::updated_at.eq(Utc::now()),
        ))
        .returning(Order::as_returning())
        .get_result(conn)
        .await?)
}

async fn set_status(
    conn: &mut Connection,
    order: &Order,
    from: Status,
    to: Status,
    reason: Option<&str>,
) -> Result<bool> {
    if order.status() != from {
        return Ok(false);
    }
    diesel::update(orders::table.find(order.id))
        .set((
            orders::status.eq(to.as_str()),
            orders::failure_reason.eq(reason),
            orders::updated_at.eq(Utc::now()),
        ))
        .execute(conn)
        .await?;
    Ok(true)
}

async fn mark_paid(conn: &mut Connection, order_id: Uuid) -> Result<()> {
    diesel::update(orders::table.find(order_id))
        .set((
            orders::status.eq(Status::Paid.as_str()),
            orders::paid_at.eq(Utc::now()),
            orders::failure_reason.eq(None::<String>),
            orders::updated_at.eq(Utc::now()),
        ))
        .execute(conn)
        .await?;
    Ok(())
}

/// The money arrived: PAID, and the credits granted once.
async fn pay(conn: &mut Connection, ev: &StripeEvent, order: &Order, s: &Value) -> Result<Verdict> {
    let status = order.status();
    if !status.was_paid() {
        if status != Status::Pending {
            // Money for an order that had failed or expired: the customer
            // paid, so they get what they paid for.
            tracing::warn!(order_id = %order.id, status = %order.status, "payment for an order that was not pending");
        }
        mark_paid(conn, order.id).await?;
    }
    if order.is_subscription() {
        let Some(sub_id) = id_of(&s["subscription"]).or_else(|| order.stripe_subscription_id.clone()) else {
            return Ok(Verdict::failed("a subscription checkout without a subscription id").about(order));
        };
        let sub = subscription_of_order(conn, &sub_id, order).await?;
        let granted = first_period(conn, ev, &sub, order.credits, None).await?;
        return Ok(Verdict::done(order, granted, format!("plan order paid; subscription {sub_id}")));
    }
    let entry = credits::grant(
        conn,
        NewGrant {
            user_id: order.user_id,
            amount: order.credits,
            source: GrantSource::Purchase,
            expires_at: None,
            order_id: Some(order.id),
            stripe_event_id: Some(ev.id.clone()),
            memo: Some(format!("order {}", order.id)),
            idempotency_key: format!("order:{}", order.id),
        },
    )
    .await?;
    let granted = if entry.stripe_event_id.as_deref() == Some(ev.id.as_str()) { order.credits } else { 0 };
    Ok(Verdict::done(order, granted, "order paid; credits granted"))
}

/// The subscription row of a plan order, created on first sight.
async fn subscription_of_order(conn: &mut Connection, sub_id: &str, order: &Order) -> Result<Subscription> {
    let product_id: String = order_items::table
        .filter(order_items::order_id.eq(order.id))
        .select(order_items::product_id)
        .first(conn)
        .await?;
    diesel::insert_into(subscriptions::table)
        .values((
            subscriptions::id.eq(sub_id),
            subscriptions::user_id.eq(order.user_id),
            subscriptions::order_id.eq(order.id),
            subscriptions::product_id.eq(&product_id),
        ))
        .on_conflict_do_nothing()
        .execute(conn)
        .await?;
    diesel::update(orders::table.find(order.id))
        .set(orders::stripe_subscription_id.eq(sub_id))
        .execute(conn)
        .await?;
    Ok(subscriptions::table.find(sub_id).for_update().select(Subscription::as_select()).first(conn).await?)
}

/// The first period's credits, granted once whether the checkout or the
/// first invoice comes first (one key); the invoice knows the period end,
/// the checkout only approximately.
async fn first_period(
    conn: &mut Connection,
    ev: &StripeEvent,
    sub: &Subscription,
    amount: i64,
    period_end: Option<DateTime<Utc>>,
) -> Result<i64> {
    let key = format!("subscription:{}:first", sub.id);
    let existed = credits::has_entry(conn, sub.user_id, &key).await?;
    if !existed && sub.grant_id.is_some() {
        // A renewal or a plan change was settled first: its grant is the
        // subscription's credits now.
        return Ok(0);
    }
    let expires = period_end.or(sub.current_period_end).unwrap_or_else(|| Utc::now() + Duration::days(31));
    let entry = credits::grant(
        conn,
        NewGrant {
            user_id: sub.user_id,
            amount,
            source: GrantSource::Subscription,
            expires_at: Some(expires),
            order_id: sub.order_id,
            stripe_event_id: Some(ev.id.clone()),
            memo: Some(format!("subscription {}: first period", sub.id)),
            idempotency_key: key,
        },
    )
    .await?;
    // Only while the first period's grant is still the current one (a plan
    // change may have replaced it) is it adjusted and recorded.
    if sub.grant_id.is_some() && sub.grant_id != entry.grant_id {
        return Ok(0);
    }
    if let Some(end) = period_end
        && let Some(grant_id) = entry.grant_id
    {
        diesel::update(credit_grants::table.find(grant_id))
            .set(credit_grants::expires_at.eq(end))
            .execute(conn)
            .await?;
    }
    diesel::update(subscriptions::table.find(&sub.id))
        .set((
            subscriptions::grant_id.eq(entry.grant_id),
            subscriptions::current_period_end.eq(period_end.or(sub.current_period_end).or(Some(expires))),
            subscriptions::updated_at.eq(Utc::now()),
        ))
        .execute(conn)
        .await?;
    Ok(if existed { 0 } else { amount })
}

/// The subscription an invoice or subscription event is about: by the id
/// recorded at checkout, else through the order id Mage put in the
/// subscription's metadata (an invoice may arrive before the checkout).
async fn locate_subscription(
    conn: &mut Connection,
    sub_id: &str,
    metadata: &Value,
) -> Result<std::result::Result<Subscription, Verdict>> {
    // The order first, then the subscription, as the checkout path takes
    // them: the other order could deadlock with a concurrent checkout event.
    let known: Option<Option<Uuid>> =
        subscriptions::table.find(sub_id).select(subscriptions::order_id).first(conn).await.optional()?;
    let order_id = known.flatten().or_else(|| metadata["order_id"].as_str().and_then(|o| o.parse().ok()));
    if let Some(order_id) = order_id {
        order_rows::lock(conn, order_id).await?;
    }
    let found = subscriptions::table
        .find(sub_id)
        .for_update()
        .select(Subscription::as_select())
        .first(conn)
        .await
        .optional()?;
    if let Some(s) = found {
        return Ok(Ok(s));
    }
    match order_named(conn, metadata["order_id"].as_str()).await? {
        Ok(order) if order.is_subscription() => Ok(Ok(subscription_of_order(conn, sub_id, &order).await?)),
        Ok(order) => Ok(Err(Verdict::failed(format!("order {} is not a plan order", order.id)))),
        Err(_) => Ok(Err(Verdict::failed(format!("unknown subscription {sub_id}: no checkout recorded it")))),
    }
}

async fn plan_by_price(conn: &mut Connection, price: Option<&str>) -> Result<Option<Product>> {
    let Some(price) = price else { return Ok(None) };
    Ok(products::table
        .filter(products::stripe_price_id.eq(price))
        .filter(products::kind.eq("plan"))
        .select(Product::as_select())
        .first(conn)
        .await
        .optional()?)
}

async fn invoice_paid(conn: &mut Connection, ev: &StripeEvent, inv: &Value) -> Result<Verdict> {
    let details = &inv["parent"]["subscription_details"];
    let Some(sub_id) = id_of(&details["subscription"]).or_else(|| id_of(&inv["subscription"])) else {
        return Ok(Verdict::ignored("not a subscription invoice"));
    };
    let metadata = if details["metadata"].is_object() {
        &details["metadata"]
    } else {
        &inv["subscription_details"]["metadata"]
    };
    let sub = match locate_subscription(conn, &sub_id, metadata).await? {
        Ok(s) => s,
        Err(v) => return Ok(v),
    };
    let line = &inv["lines"]["data"][0];
    let price = line["pricing"]["price_details"]["price"]
        .as_str()
        .or_else(|| line["price"]["id"].as_str())
        .or_else(|| line["plan"]["id"].as_str());
    let Some(plan) = plan_by_price(conn, price).await? else {
        return Ok(about_sub(
            Verdict::failed(format!("unknown plan price {}", price.unwrap_or("(none)"))),
            &sub,
        ));
    };
    let period_end = timestamp(&line["period"]["end"]).or_else(|| timestamp(&inv["period_end"]));
    let invoice_id = inv["id"].as_str().unwrap_or(&ev.id);
    let granted = match inv["billing_reason"].as_str() {
        Some("subscription_create") => {
            let order = match sub.order_id {
                Some(id) => order_rows::lock(conn, id).await?,
                None => None,
            };
            let mut amount = plan.credits;
            if let Some(order) = &order {
                // The same checks as the checkout event's: what was paid is
                // what the order says.
                let paid = inv["amount_paid"].as_i64().or_else(|| inv["total"].as_i64());
                let currency = inv["currency"].as_str().map(str::to_lowercase);
                if paid.is_some_and(|p| p != order.total_cents)
                    || currency.as_ref().is_some_and(|c| *c != order.currency)
                {
                    let why = format!(
                        "amount mismatch: invoice {invoice_id} paid {} {}, the order is {} {}",
                        paid.unwrap_or_default(),
                        currency.unwrap_or_default(),
                        order.total_cents,
                        order.currency
                    );
                    return Ok(about_sub(Verdict::failed(why), &sub));
                }
                // The first invoice proves the payment as well as the
                // checkout event does.
                if !order.status().was_paid() {
                    mark_paid(conn, order.id).await?;
                }
                // What the order was sold for, as the checkout grants it.
                amount = order.credits;
            }
            first_period(conn, ev, &sub, amount, period_end).await?
        }
        Some("subscription_cycle") => {
            if credits::has_entry(conn, sub.user_id, &format!("invoice:{invoice_id}")).await? {
                return Ok(about_sub(
                    Verdict::ignored(format!("invoice {invoice_id} already applied")),
                    &sub,
                ));
            }
            // Unused plan credits do not carry over: the last period's
            // grant ends before the new one starts.
            let expired = match sub.grant_id {
                Some(g) => credits::expire_grant(conn, g, &format!("expire:{g}"), Some(&ev.id)).await?,
                None => None,
            };
            let entry = credits::grant(
                conn,
                NewGrant {
                    user_id: sub.user_id,
                    amount: plan.credits,
                    source: GrantSource::Subscription,
                    expires_at: period_end,
                    order_id: sub.order_id,
                    stripe_event_id: Some(ev.id.clone()),
                    memo: Some(format!("subscription {}: invoice {invoice_id}", sub.id)),
                    idempotency_key: format!("invoice:{invoice_id}"),
                },
            )
            .await?;
            diesel::update(subscriptions::table.find(&sub.id))
                .set((
                    subscriptions::grant_id.eq(entry.grant_id),
                    subscriptions::product_id.eq(&plan.id),
                    subscriptions::current_period_end.eq(period_end),
                    subscriptions::status.eq("active"),
                    subscriptions::updated_at.eq(Utc::now()),
                ))
                .execute(conn)
                .await?;
            plan.credits + expired.map_or(0, |e| e.amount)
        }
        other => {
            return Ok(about_sub(
                Verdict::ignored(format!(
                    "invoice for {}: plan changes are settled from customer.subscription.updated",
                    other.unwrap_or("no billing reason")
                )),
                &sub,
            ));
        }
    };
    Ok(Verdict {
        outcome: Outcome::Processed(format!("subscription {} invoice {invoice_id} paid", sub.id)),
        order_id: sub.order_id,
        user_id: Some(sub.user_id),
        credits: granted,
        wait: None,
    })
}

fn about_sub(mut v: Verdict, sub: &Subscription) -> Verdict {
    v.order_id = sub.order_id;
    v.user_id = Some(sub.user_id);
    v
}

async fn subscription_updated(conn: &mut Connection, ev: &StripeEvent, s: &Value) -> Result<Verdict> {
    let Some(sub_id) = id_of(&s["id"]) else { return Ok(Verdict::failed("a subscription without an id")) };
    let sub = match locate_subscription(conn, &sub_id, &s["metadata"]).await? {
        Ok(sub) => sub,
        Err(v) => return Ok(v),
    };
    if let Some(stale) = older_than_applied(ev, &sub) {
        return Ok(about_sub(stale, &sub));
    }
    let item = &s["items"]["data"][0];
    let price = item["price"]["id"].as_str().or_else(|| item["plan"]["id"].as_str());
    let Some(plan) = plan_by_price(conn, price).await? else {
        return Ok(about_sub(
            Verdict::failed(format!("unknown plan price {}", price.unwrap_or("(none)"))),
            &sub,
        ));
    };
    let period_end = timestamp(&item["current_period_end"]).or_else(|| timestamp(&s["current_period_end"]));
    let status = s["status"].as_str().unwrap_or("active");
    let event_at = timestamp(&ev.payload["created"]);
    if sub.status == "canceled" {
        return Ok(about_sub(Verdict::ignored("the subscription is canceled"), &sub));
    }
    // A plan change counts once it is paid for: with the proration invoice
    // unpaid Stripe reports the new price with `past_due` / `incomplete`,
    // and the `active` update that follows payment applies it.
    let paid_up = matches!(status, "active" | "trialing");
    if plan.id == sub.product_id || !paid_up {
        diesel::update(subscriptions::table.find(&sub.id))
            .set((
                subscriptions::event_at.eq(event_at.or(sub.event_at)),
                subscriptions::status.eq(status),
                subscriptions::current_period_end.eq(period_end.or(sub.current_period_end)),
                subscriptions::updated_at.eq(Utc::now()),
            ))
            .execute(conn)
            .await?;
        let note = if plan.id == sub.product_id {
            format!("same plan; status {status}")
        } else {
            format!("plan change to {} waits for its payment (status {status})", plan.id)
        };
        return Ok(about_sub(Verdict::ignored(note), &sub));
    }
    // A plan change takes effect at once, up or down: what is left of the
    // old plan's credits ends and the new plan's amount is granted.
    let expired = match sub.grant_id {
        Some(g) => credits::expire_grant(conn, g, &format!("expire:{g}:{}", ev.id), Some(&ev.id)).await?,
        None => None,
    };
    let entry = credits::grant(
        conn,
        NewGrant {
            user_id: sub.user_id,
            amount: plan.credits,
            source: GrantSource::Subscription,
            expires_at: period_end.or(sub.current_period_end),
            order_id: sub.order_id,
            stripe_event_id: Some(ev.id.clone()),
            memo: Some(format!(
                "subscription {}: plan changed from {} to {}",
                sub.id, sub.product_id, plan.id
            )),
            idempotency_key: format!("plan-change:{}", ev.id),
        },
    )
    .await?;
    diesel::update(subscriptions::table.find(&sub.id))
        .set((
            subscriptions::event_at.eq(event_at.or(sub.event_at)),
            subscriptions::product_id.eq(&plan.id),
            subscriptions::grant_id.eq(entry.grant_id),
            subscriptions::status.eq(status),
            subscriptions::current_period_end.eq(period_end.or(sub.current_period_end)),
            subscriptions::updated_at.eq(Utc::now()),
        ))
        .execute(conn)
        .await?;
    Ok(Verdict {
        outcome: Outcome::Processed(format!("plan changed from {} to {}", sub.product_id, plan.id)),
        order_id: sub.order_id,
        user_id: Some(sub.user_id),
        credits: plan.credits + expired.map_or(0, |e| e.amount),
        wait: None,
    })
}

/// A subscription event created before the newest one applied: Stripe
/// does not deliver in order, and applying it would undo a later change.
fn older_than_applied(ev: &StripeEvent, sub: &Subscription) -> Option<Verdict> {
    let created = timestamp(&ev.payload["created"])?;
    let applied = sub.event_at?;
    (created < applied).then(|| {
        Verdict::ignored(format!("created {created}, before the subscription change applied at {applied}"))
    })
}

async fn subscription_deleted(conn: &mut Connection, ev: &StripeEvent, s: &Value) -> Result<Verdict> {
    let Some(sub_id) = id_of(&s["id"]) else { return Ok(Verdict::failed("a subscription without an id")) };
    let sub = match locate_subscription(conn, &sub_id, &s["metadata"]).await? {
        Ok(sub) => sub,
        Err(v) => return Ok(v),
    };
    // Renewals end; credits already granted stay until they expire.
    diesel::update(subscriptions::table.find(&sub.id))
        .set((
            subscriptions::event_at.eq(timestamp(&ev.payload["created"]).or(sub.event_at)),
            subscriptions::status.eq("canceled"),
            subscriptions::canceled_at.eq(Utc::now()),
            subscriptions::updated_at.eq(Utc::now()),
        ))
        .execute(conn)
        .await?;
    Ok(about_sub(Verdict::ignored("subscription canceled; granted credits stay until they expire"), &sub))
}

/// The purchase grant of an order (a clawback empties it first).
async fn purchase_grant(conn: &mut Connection, order_id: Uuid) -> Result<Option<Uuid>> {
    Ok(credit_grants::table
        .filter(credit_grants::order_id.eq(order_id))
        .order(credit_grants::created_at.asc())
        .select(credit_grants::id)
        .first(conn)
        .await
        .optional()?)
}

async fn claw_back(
    conn: &mut Connection,
    ev: &StripeEvent,
    order: &Order,
    amount: i64,
    key: String,
) -> Result<()> {
    if amount <= 0 {
        return Ok(());
    }
    let grant_id = purchase_grant(conn, order.id).await?;
    credits::clawback(
        conn,
        Clawback {
            user_id: order.user_id,
            amount,
            grant_id,
            order_id: Some(order.id),
            stripe_event_id: Some(ev.id.clone()),
            memo: Some(format!("{} on order {}", ev.type_, order.id)),
            idempotency_key: key,
        },
    )
    .await?;
    Ok(())
}

/// Credits that `refunded` cents of the order stand for (rounded, and
/// computed on the running total so partial refunds add up exactly).
fn credits_for(order: &Order, refunded: i64) -> i64 {
    if order.total_cents <= 0 {
        return 0;
    }
    let c = i128::from(order.credits) * i128::from(refunded);
    let t = i128::from(order.total_cents);
    ((c + t / 2) / t) as i64
}

async fn charge_refunded(conn: &mut Connection, ev: &StripeEvent, charge: &Value) -> Result<Verdict> {
    let Some(pi) = id_of(&charge["payment_intent"]) else {
        return Ok(Verdict::failed("a refunded charge without a payment intent"));
    };
    let Some(order) = order_rows::lock_by_payment_intent(conn, &pi).await? else {
        // Its checkout event may not be settled yet.
        return Ok(Verdict::not_yet(format!("no order paid with payment intent {pi} yet")));
    };
    if !order.status().was_paid() {
        return Ok(Verdict::not_yet(format!("order {} is {}, not paid yet", order.id, order.status)));
    }
    // `amount_refunded` is the charge's running total: each refund is
    // applied once, in whatever order the events come.
    let refunded = charge["amount_refunded"].as_i64().unwrap_or(0).clamp(0, order.total_cents);
    if refunded <= order.refunded_cents {
        return Ok(Verdict::ignored(format!("refunds up to {refunded} cents already applied")).about(&order));
    }
    let owed = credits_for(&order, refunded) - credits_for(&order, order.refunded_cents);
    let left = order.credits - order.credits_clawed_back;
    let take = owed.clamp(0, left.max(0));
    claw_back(conn, ev, &order, take, format!("refund:{}:{refunded}", order.id)).await?;
    let status = if order.status() == Status::Disputed {
        Status::Disputed
    } else if refunded == order.total_cents {
        Status::Refunded
    } else {
        Status::PartiallyRefunded
    };
    diesel::update(orders::table.find(order.id))
        .set((
            orders::refunded_cents.eq(refunded),
            orders::credits_clawed_back.eq(order.credits_clawed_back + take),
            orders::status.eq(status.as_str()),
            orders::updated_at.eq(Utc::now()),
        ))
        .execute(conn)
        .await?;
    Ok(Verdict::done(&order, -take, format!("refunded {refunded} of {} cents", order.total_cents)))
}

async fn dispute_order(conn: &mut Connection, d: &Value) -> Result<std::result::Result<Order, Verdict>> {
    let Some(pi) = id_of(&d["payment_intent"]) else {
        return Ok(Err(Verdict::failed("a dispute without a payment intent")));
    };
    Ok(order_rows::lock_by_payment_intent(conn, &pi)
        .await?
        .ok_or_else(|| Verdict::not_yet(format!("no order paid with payment intent {pi} yet"))))
}

async fn dispute_created(conn: &mut Connection, ev: &StripeEvent, d: &Value) -> Result<Verdict> {
    let order = match dispute_order(conn, d).await? {
        Ok(o) => o,
        Err(v) => return Ok(v),
    };
    let Some(dispute_id) = id_of(&d["id"]) else { return Ok(Verdict::failed("a dispute without an id")) };
    if is_inquiry(d) {
        return Ok(Verdict::ignored("an inquiry (warning_*): no money is withdrawn").about(&order));
    }
    if !order.status().was_paid() {
        return Ok(Verdict::not_yet(format!("order {} is {}, not paid yet", order.id, order.status)));
    }
    if order.status() == Status::Disputed {
        return Ok(Verdict::ignored(format!("order is already {}", order.status)).about(&order));
    }
    // The disputed money is withdrawn until the dispute is won: the credits
    // it bought go (all that is left of them for a whole-amount dispute).
    let disputed = d["amount"].as_i64().unwrap_or(order.total_cents).clamp(0, order.total_cents);
    let take = credits_for(&order, disputed).min(order.credits - order.credits_clawed_back).max(0);
    claw_back(conn, ev, &order, take, format!("dispute:{dispute_id}")).await?;
    diesel::update(orders::table.find(order.id))
        .set((
            orders::status.eq(Status::Disputed.as_str()),
            orders::disputed_credits.eq(take),
            orders::credits_clawed_back.eq(order.credits_clawed_back + take),
            orders::updated_at.eq(Utc::now()),
        ))
        .execute(conn)
        .await?;
    Ok(Verdict::done(&order, -take, format!("dispute {dispute_id} opened")))
}

/// Inquiries (`warning_needs_response`, `warning_under_review`,
/// `warning_closed`) withdraw no money.
fn is_inquiry(d: &Value) -> bool {
    d["status"].as_str().is_some_and(|s| s.starts_with("warning_"))
}

async fn dispute_closed(conn: &mut Connection, ev: &StripeEvent, d: &Value) -> Result<Verdict> {
    let order = match dispute_order(conn, d).await? {
        Ok(o) => o,
        Err(v) => return Ok(v),
    };
    let Some(dispute_id) = id_of(&d["id"]) else { return Ok(Verdict::failed("a dispute without an id")) };
    if is_inquiry(d) {
        return Ok(Verdict::ignored("an inquiry closed: no money was withdrawn").about(&order));
    }
    if order.status() != Status::Disputed {
        return Ok(Verdict::ignored(format!("order is {}, not disputed", order.status)).about(&order));
    }
    let outcome = d["status"].as_str().unwrap_or("unknown");
    if outcome != "won" {
        // Lost: the credits taken when it opened stay taken.
        return Ok(Verdict::done(&order, 0, format!("dispute {dispute_id} closed: {outcome}")));
    }
    // Refunds stand whatever the dispute's outcome: give back only what the
    // unrefunded part of the payment is worth (a refund made during the
    // dispute took nothing, the dispute had taken it already).
    let kept_by_refunds = credits_for(&order, order.refunded_cents);
    let restore = (order.credits_clawed_back - kept_by_refunds).clamp(0, order.disputed_credits.max(0));
    if restore > 0 {
        credits::grant(
            conn,
            NewGrant {
                user_id: order.user_id,
                amount: restore,
                source: GrantSource::Purchase,
                expires_at: None,
                order_id: Some(order.id),
                stripe_event_id: Some(ev.id.clone()),
                memo: Some(format!("dispute {dispute_id} won")),
                idempotency_key: format!("dispute:{dispute_id}:won"),
            },
        )
        .await?;
    }
    let status = match order.refunded_cents {
        0 => Status::Paid,
        r if r >= order.total_cents => Status::Refunded,
        _ => Status::PartiallyRefunded,
    };
    diesel::update(orders::table.find(order.id))
        .set((
            orders::status.eq(status.as_str()),
            orders::disputed_credits.eq(0),
            orders::credits_clawed_back.eq(order.credits_clawed_back - restore),
            orders::updated_at.eq(Utc::now()),
        ))
        .execute(conn)
        .await?;
    Ok(Verdict::done(&order, restore, format!("dispute {dispute_id} won: credits restored")))
}
