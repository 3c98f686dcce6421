//! `customer.subscription.*`, and the subscription side of the checkout and
//! first invoice of a plan order: finding a subscription whichever event
//! comes first, its first period's credits, plan changes and cancellation.

use chrono::{DateTime, Duration, Utc};
use uuid::Uuid;

use crate::Result;
use crate::credits::{self, GrantSource, NewGrant};
use crate::db::Connection;
use crate::payments::stripe::{self, Event, Metadata};
use crate::rows::{Order, Product, StripeEvent, Subscription};
use crate::{orders, products, subscriptions};

use super::verdict::{Verdict, order_named};

/// The subscription row of a plan order, created on first sight.
pub async fn of_order(conn: &mut Connection, sub_id: &str, order: &Order) -> Result<Subscription> {
    let product_id = orders::plan_product(conn, order.id).await?;
    let sub = subscriptions::open(conn, sub_id, order, &product_id).await?;
    orders::set_subscription(conn, order.id, sub_id).await?;
    Ok(sub)
}

/// The first period's credits, granted once whether the checkout or the
/// first invoice comes first (one key); the invoice knows the period end,
/// the checkout only approximately. Returns the credits this call granted.
pub async fn first_period(
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
        credits::set_grant_expiry(conn, grant_id, end).await?;
    }
    let period_end = period_end.or(sub.current_period_end).or(Some(expires));
    subscriptions::set_period(conn, sub, &sub.product_id, &sub.status, entry.grant_id, period_end).await?;
    Ok(if existed { 0 } else { amount })
}

/// The subscription an invoice or subscription event is about, locked: by
/// the id recorded at checkout, else through the order id Mage put in the
/// subscription's metadata (an invoice may arrive before the checkout).
pub async fn locate(
    conn: &mut Connection,
    sub_id: &str,
    metadata: &Option<Metadata>,
) -> Result<std::result::Result<Subscription, Verdict>> {
    // The order first, then the subscription, as the checkout path takes
    // them: the other order could deadlock with a concurrent checkout event.
    let known = subscriptions::order_of(conn, sub_id).await?;
    let named = Metadata::order_id(metadata);
    let order_id = known.flatten().or_else(|| named.and_then(|o| o.parse().ok()));
    if let Some(order_id) = order_id {
        orders::lock(conn, order_id).await?;
    }
    if let Some(s) = subscriptions::lock(conn, sub_id).await? {
        return Ok(Ok(s));
    }
    match order_named(conn, named).await? {
        Ok(order) if order.is_subscription() => Ok(Ok(of_order(conn, sub_id, &order).await?)),
        Ok(order) => Ok(Err(Verdict::failed(format!("order {} is not a plan order", order.id)))),
        Err(_) => Ok(Err(Verdict::failed(format!("unknown subscription {sub_id}: no checkout recorded it")))),
    }
}

/// The plan a Stripe price sells; a failed verdict if none does.
pub async fn plan(
    conn: &mut Connection,
    price: Option<&str>,
    sub: &Subscription,
) -> Result<std::result::Result<Product, Verdict>> {
    let found = match price {
        Some(p) => products::plan_by_price(conn, p).await?,
        None => None,
    };
    Ok(found.ok_or_else(|| {
        Verdict::failed(format!("unknown plan price {}", price.unwrap_or("(none)"))).about_sub(sub)
    }))
}

/// Stripe does not deliver in order: an event created before the newest
/// one applied would undo a later change.
fn stale(sub: &Subscription, created: Option<DateTime<Utc>>) -> Option<String> {
    let (created, applied) = (created?, sub.event_at?);
    (created < applied)
        .then(|| format!("created {created}, before the subscription change applied at {applied}"))
}

/// What a `customer.subscription.updated` event does to a subscription.
#[derive(Debug, PartialEq, Eq)]
enum Change {
    Canceled,
    /// Status and period only; the note says why the plan stays.
    Track(String),
    /// A paid plan change: the old plan's credits end, the new plan's come.
    NewPlan,
}

/// A plan change counts once it is paid for: with the proration invoice
/// unpaid Stripe reports the new price with `past_due` / `incomplete`, and
/// the `active` update that follows payment applies it.
fn change(sub: &Subscription, plan_id: &str, status: &str) -> Change {
    if sub.status == subscriptions::CANCELED {
        return Change::Canceled;
    }
    if plan_id == sub.product_id {
        return Change::Track(format!("same plan; status {status}"));
    }
    if !matches!(status, "active" | "trialing") {
        return Change::Track(format!("plan change to {plan_id} waits for its payment (status {status})"));
    }
    Change::NewPlan
}

/// `customer.subscription.updated`.
pub async fn updated(conn: &mut Connection, ev: &StripeEvent, event: &Event) -> Result<Verdict> {
    let s: stripe::Subscription = event.data_object();
    let Some(sub_id) = s.id.as_deref() else { return Ok(Verdict::failed("a subscription without an id")) };
    let sub = match locate(conn, sub_id, &s.metadata).await? {
        Ok(sub) => sub,
        Err(v) => return Ok(v),
    };
    let created = event.created_at();
    // A stale event is ignored whatever price it names.
    if let Some(note) = stale(&sub, created) {
        return Ok(Verdict::ignored(note).about_sub(&sub));
    }
    let plan = match plan(conn, s.price(), &sub).await? {
        Ok(p) => p,
        Err(v) => return Ok(v),
    };
    let status = s.status.as_deref().unwrap_or("active");
    let period_end = s.period_end();
    let mut update = subscriptions::Update { event_at: created, status, period_end, plan: None };
    match change(&sub, &plan.id, status) {
        Change::Canceled => Ok(Verdict::ignored("the subscription is canceled").about_sub(&sub)),
        Change::Track(note) => {
            subscriptions::update(conn, &sub, update).await?;
            Ok(Verdict::ignored(note).about_sub(&sub))
        }
        Change::NewPlan => {
            // A plan change takes effect at once, up or down.
            let (grant_id, moved) = replace_grant(
                conn,
                ev,
                &sub,
                PlanGrant {
                    plan: &plan,
                    expires_at: period_end.or(sub.current_period_end),
                    memo: format!(
                        "subscription {}: plan changed from {} to {}",
                        sub.id, sub.product_id, plan.id
                    ),
                    key: format!("plan-change:{}", ev.id),
                    expire_key: |g: Uuid| format!("expire:{g}:{}", ev.id),
                },
            )
            .await?;
            update.plan = Some((&plan.id, grant_id));
            subscriptions::update(conn, &sub, update).await?;
            let note = format!("plan changed from {} to {}", sub.product_id, plan.id);
            Ok(Verdict::done_sub(&sub, moved, note))
        }
    }
}

/// A plan's credits for a new period or plan.
pub struct PlanGrant<'a, K: Fn(Uuid) -> String> {
    pub plan: &'a Product,
    pub expires_at: Option<DateTime<Utc>>,
    pub memo: String,
    pub key: String,
    /// The key of ending the grant it replaces.
    pub expire_key: K,
}

/// Unused plan credits do not carry over: what is left of the current
/// grant ends, and the plan's credits are granted in its place. Returns the
/// new grant and the credits moved.
pub async fn replace_grant<K: Fn(Uuid) -> String>(
    conn: &mut Connection,
    ev: &StripeEvent,
    sub: &Subscription,
    g: PlanGrant<'_, K>,
) -> Result<(Option<Uuid>, i64)> {
    let expired = match sub.grant_id {
        Some(id) => credits::expire_grant(conn, id, &(g.expire_key)(id), Some(&ev.id)).await?,
        None => None,
    };
    let entry = credits::grant(
        conn,
        NewGrant {
            user_id: sub.user_id,
            amount: g.plan.credits,
            source: GrantSource::Subscription,
            expires_at: g.expires_at,
            order_id: sub.order_id,
            stripe_event_id: Some(ev.id.clone()),
            memo: Some(g.memo),
            idempotency_key: g.key,
        },
    )
    .await?;
    Ok((entry.grant_id, g.plan.credits + expired.map_or(0, |e| e.amount)))
}

/// `customer.subscription.deleted`: renewals end; credits already granted
/// stay until they expire.
pub async fn deleted(conn: &mut Connection, event: &Event) -> Result<Verdict> {
    let s: stripe::Subscription = event.data_object();
    let Some(sub_id) = s.id.as_deref() else { return Ok(Verdict::failed("a subscription without an id")) };
    let sub = match locate(conn, sub_id, &s.metadata).await? {
        Ok(sub) => sub,
        Err(v) => return Ok(v),
    };
    subscriptions::cancel(conn, &sub, event.created_at()).await?;
    Ok(Verdict::ignored("subscription canceled; granted credits stay until they expire").about_sub(&sub))
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn sub(status: &str, product_id: &str, event_at: Option<i64>) -> Subscription {
        let now = Utc::now();
        Subscription {
            id: "sub_1".into(),
            user_id: Uuid::nil(),
            order_id: None,
            product_id: product_id.into(),
            status: status.into(),
            current_period_end: None,
            grant_id: None,
            canceled_at: None,
            event_at: event_at.map(at),
            created_at: now,
            updated_at: now,
        }
    }

    fn at(t: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(t, 0).unwrap()
    }

    #[test]
    fn an_event_older_than_the_last_applied_is_stale() {
        let s = sub("active", "basic", Some(100));
        assert!(stale(&s, Some(at(99))).is_some());
        assert_eq!(stale(&s, Some(at(100))), None);
        assert_eq!(stale(&s, None), None);
        assert_eq!(stale(&sub("active", "basic", None), Some(at(1))), None);
    }

    #[test]
    fn a_paid_plan_change_takes_effect() {
        let s = sub("active", "basic", None);
        assert_eq!(change(&s, "pro", "active"), Change::NewPlan);
        assert_eq!(change(&s, "pro", "trialing"), Change::NewPlan);
    }

    #[test]
    fn a_canceled_subscription_changes_no_more() {
        assert_eq!(change(&sub("canceled", "basic", None), "pro", "active"), Change::Canceled);
        assert_eq!(change(&sub("canceled", "basic", None), "basic", "active"), Change::Canceled);
    }

    #[test]
    fn the_same_plan_only_tracks_status_and_period() {
        let s = sub("active", "basic", None);
        assert_eq!(change(&s, "basic", "past_due"), Change::Track("same plan; status past_due".into()));
    }

    #[test]
    fn a_plan_change_waits_until_it_is_paid() {
        let s = sub("active", "basic", None);
        for status in ["past_due", "incomplete", "unpaid"] {
            assert_eq!(
                change(&s, "pro", status),
                Change::Track(format!("plan change to pro waits for its payment (status {status})"))
            );
        }
    }
}
