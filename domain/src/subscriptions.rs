//! Subscriptions: a plan bought through Stripe, renewed each period. This
//! module alone writes the `subscriptions` table; settlement decides what
//! a Stripe event changes (`payments::settle`), and every write here is to a
//! row the settling transaction has locked.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use crate::Result;
use crate::db::Connection;
use crate::rows::{Order, Subscription};
use crate::schema::subscriptions;

pub const CANCELED: &str = "canceled";
pub const ACTIVE: &str = "active";

/// The order a known subscription was bought with: `None` if the
/// subscription is unknown, `Some(None)` if it has no order.
pub async fn order_of(conn: &mut Connection, id: &str) -> Result<Option<Option<Uuid>>> {
    Ok(subscriptions::table.find(id).select(subscriptions::order_id).first(conn).await.optional()?)
}

/// The ids of the user's subscriptions Stripe may still renew (every one
/// not ended): what deleting the account cancels.
pub async fn renewing_of(conn: &mut Connection, user_id: Uuid) -> Result<Vec<String>> {
    Ok(subscriptions::table
        .filter(subscriptions::user_id.eq(user_id))
        .filter(subscriptions::status.ne_all([CANCELED, "incomplete_expired"]))
        .order(subscriptions::created_at.asc())
        .select(subscriptions::id)
        .load(conn)
        .await?)
}

/// The subscription row, locked for the rest of the transaction.
pub async fn lock(conn: &mut Connection, id: &str) -> Result<Option<Subscription>> {
    Ok(subscriptions::table
        .find(id)
        .for_update()
        .select(Subscription::as_select())
        .first(conn)
        .await
        .optional()?)
}

/// The subscription a plan order started, created on first sight, locked.
pub async fn open(conn: &mut Connection, id: &str, order: &Order, product_id: &str) -> Result<Subscription> {
    diesel::insert_into(subscriptions::table)
        .values((
            subscriptions::id.eq(id),
            subscriptions::user_id.eq(order.user_id),
            subscriptions::order_id.eq(order.id),
            subscriptions::product_id.eq(product_id),
        ))
        .on_conflict_do_nothing()
        .execute(conn)
        .await?;
    Ok(subscriptions::table.find(id).for_update().select(Subscription::as_select()).first(conn).await?)
}

/// A period paid for: its grant and end, and the plan and status it was
/// paid at (a renewal makes the subscription ACTIVE on the renewed plan).
pub async fn set_period(
    conn: &mut Connection,
    sub: &Subscription,
    product_id: &str,
    status: &str,
    grant_id: Option<Uuid>,
    period_end: Option<DateTime<Utc>>,
) -> Result<()> {
    diesel::update(subscriptions::table.find(&sub.id))
        .set((
            subscriptions::grant_id.eq(grant_id),
            subscriptions::product_id.eq(product_id),
            subscriptions::current_period_end.eq(period_end),
            subscriptions::status.eq(status),
            subscriptions::updated_at.eq(Utc::now()),
        ))
        .execute(conn)
        .await?;
    Ok(())
}

/// What a `customer.subscription.updated` event changes.
#[derive(Debug, Clone)]
pub struct Update<'a> {
    /// When Stripe created the event (later events win).
    pub event_at: Option<DateTime<Utc>>,
    pub status: &'a str,
    pub period_end: Option<DateTime<Utc>>,
    /// A plan change paid for: the new plan and its grant.
    pub plan: Option<(&'a str, Option<Uuid>)>,
}

/// Applies an update; what the event does not say stays as it was.
pub async fn update(conn: &mut Connection, sub: &Subscription, u: Update<'_>) -> Result<()> {
    let (product_id, grant_id) = match u.plan {
        Some((product, grant)) => (product, grant),
        None => (sub.product_id.as_str(), sub.grant_id),
    };
    diesel::update(subscriptions::table.find(&sub.id))
        .set((
            subscriptions::event_at.eq(u.event_at.or(sub.event_at)),
            subscriptions::product_id.eq(product_id),
            subscriptions::grant_id.eq(grant_id),
            subscriptions::status.eq(u.status),
            subscriptions::current_period_end.eq(u.period_end.or(sub.current_period_end)),
            subscriptions::updated_at.eq(Utc::now()),
        ))
        .execute(conn)
        .await?;
    Ok(())
}

/// Renewals end; credits already granted stay until they expire.
pub async fn cancel(
    conn: &mut Connection,
    sub: &Subscription,
    event_at: Option<DateTime<Utc>>,
) -> Result<()> {
    diesel::update(subscriptions::table.find(&sub.id))
        .set((
            subscriptions::event_at.eq(event_at.or(sub.event_at)),
            subscriptions::status.eq(CANCELED),
            subscriptions::canceled_at.eq(Utc::now()),
            subscriptions::updated_at.eq(Utc::now()),
        ))
        .execute(conn)
        .await?;
    Ok(())
}
