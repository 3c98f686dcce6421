//! Orders: what a user set out to buy, at the price of that moment, and
//! where its payment stands. Stripe events move an order through
//! [`Status`]; the state machine decides what a late, duplicate or
//! out-of-order event may still change.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use uuid::Uuid;

use crate::db::Connection;
use crate::rows::{Order, OrderItem, Product, StripeEvent};
use crate::schema::{order_items, orders, products, stripe_events};
use crate::{Error, Result};

pub const MAX_QUANTITY: i32 = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Pending,
    Paid,
    Failed,
    Canceled,
    Refunded,
    PartiallyRefunded,
    Disputed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Paid => "paid",
            Self::Failed => "failed",
            Self::Canceled => "canceled",
            Self::Refunded => "refunded",
            Self::PartiallyRefunded => "partially_refunded",
            Self::Disputed => "disputed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Self::Pending,
            "paid" => Self::Paid,
            "failed" => Self::Failed,
            "canceled" => Self::Canceled,
            "refunded" => Self::Refunded,
            "partially_refunded" => Self::PartiallyRefunded,
            "disputed" => Self::Disputed,
            _ => return None,
        })
    }

    /// Whether the money was taken (and so credits were granted).
    pub fn was_paid(self) -> bool {
        matches!(self, Self::Paid | Self::Refunded | Self::PartiallyRefunded | Self::Disputed)
    }
}

impl Order {
    pub fn status(&self) -> Status {
        Status::parse(&self.status).unwrap_or(Status::Failed)
    }

    pub fn is_subscription(&self) -> bool {
        self.mode == "subscription"
    }
}

/// Creates a PENDING order of `quantity` × the product, copying its price
/// and credits. Plans are bought one at a time.
pub async fn create(
    conn: &mut Connection,
    user_id: Uuid,
    product_id: &str,
    quantity: i32,
) -> Result<(Order, Product)> {
    if !(1..=MAX_QUANTITY).contains(&quantity) {
        return Err(Error::invalid("quantity", format!("must be between 1 and {MAX_QUANTITY}")));
    }
    let product: Product = products::table
        .find(product_id)
        .filter(products::active.eq(true))
        .select(Product::as_select())
        .first(conn)
        .await
        .optional()?
        .ok_or(Error::NotFound("product"))?;
    let plan = product.kind == "plan";
    if plan && quantity != 1 {
        return Err(Error::invalid("quantity", "a plan is bought one at a time"));
    }
    let order = conn
        .transaction::<_, Error, _>(async |conn| {
            let order: Order = diesel::insert_into(orders::table)
                .values((
                    orders::user_id.eq(user_id),
                    orders::total_cents.eq(product.price_cents * i64::from(quantity)),
                    orders::currency.eq(&product.currency),
                    orders::credits.eq(product.credits * i64::from(quantity)),
                    orders::mode.eq(if plan { "subscription" } else { "payment" }),
                ))
                .returning(Order::as_returning())
                .get_result(conn)
                .await?;
            diesel::insert_into(order_items::table)
                .values((
                    order_items::order_id.eq(order.id),
                    order_items::product_id.eq(&product.id),
                    order_items::product_name.eq(&product.name),
                    order_items::quantity.eq(quantity),
                    order_items::unit_price_cents.eq(product.price_cents),
                    order_items::unit_credits.eq(product.credits),
                    order_items::currency.eq(&product.currency),
                ))
                .execute(conn)
                .await?;
            Ok(order)
        })
        .await?;
    Ok((order, product))
}

/// Records the checkout page the user is sent to.
pub async fn attach_checkout(
    conn: &mut Connection,
    id: Uuid,
    session_id: Option<&str>,
    url: &str,
) -> Result<Order> {
    Ok(diesel::update(orders::table.find(id))
        .set((
            orders::stripe_checkout_session_id.eq(session_id),
            orders::checkout_url.eq(url),
            orders::updated_at.eq(Utc::now()),
        ))
        .returning(Order::as_returning())
        .get_result(conn)
        .await?)
}

/// PENDING → FAILED with the reason (checkout could not start).
pub async fn fail_pending(conn: &mut Connection, id: Uuid, reason: &str) -> Result<Option<Order>> {
    Ok(diesel::update(orders::table.find(id))
        .filter(orders::status.eq(Status::Pending.as_str()))
        .set((
            orders::status.eq(Status::Failed.as_str()),
            orders::failure_reason.eq(reason),
            orders::updated_at.eq(Utc::now()),
        ))
        .returning(Order::as_returning())
        .get_result(conn)
        .await
        .optional()?)
}

pub async fn find(conn: &mut Connection, id: Uuid) -> Result<Option<Order>> {
    Ok(orders::table.find(id).select(Order::as_select()).first(conn).await.optional()?)
}

/// The order row, locked for the rest of the transaction (settlement takes
/// the order before the account, as the ledger's lock order requires).
pub async fn lock(conn: &mut Connection, id: Uuid) -> Result<Option<Order>> {
    Ok(orders::table.find(id).for_update().select(Order::as_select()).first(conn).await.optional()?)
}

pub async fn lock_by_payment_intent(conn: &mut Connection, payment_intent: &str) -> Result<Option<Order>> {
    Ok(orders::table
        .filter(orders::stripe_payment_intent_id.eq(payment_intent))
        .order(orders::created_at.asc())
        .for_update()
        .select(Order::as_select())
        .first(conn)
        .await
        .optional()?)
}

/// The user's own order; someone else's is NOT_FOUND.
pub async fn find_own(conn: &mut Connection, user_id: Uuid, id: Uuid) -> Result<Order> {
    orders::table
        .find(id)
        .filter(orders::user_id.eq(user_id))
        .select(Order::as_select())
        .first(conn)
        .await
        .optional()?
        .ok_or(Error::NotFound("order"))
}

/// The user's orders, newest first, after the `(created_at, id)` cursor.
pub async fn list(
    conn: &mut Connection,
    user_id: Uuid,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<Order>> {
    let mut q = orders::table
        .filter(orders::user_id.eq(user_id))
        .select(Order::as_select())
        .order((orders::created_at.desc(), orders::id.desc()))
        .limit(limit)
        .into_boxed();
    if let Some((at, id)) = after {
        q = q.filter(orders::created_at.lt(at).or(orders::created_at.eq(at).and(orders::id.lt(id))));
    }
    Ok(q.load(conn).await?)
}

/// The items of these orders (for the API's DataLoader).
pub async fn items(conn: &mut Connection, order_ids: &[Uuid]) -> Result<Vec<OrderItem>> {
    Ok(order_items::table
        .filter(order_items::order_id.eq_any(order_ids))
        .order((order_items::order_id, order_items::id))
        .select(OrderItem::as_select())
        .load(conn)
        .await?)
}

/// The Stripe events about an order, oldest first (admins).
pub async fn events(conn: &mut Connection, order_id: Uuid) -> Result<Vec<StripeEvent>> {
    Ok(stripe_events::table
        .filter(stripe_events::order_id.eq(order_id))
        .order(stripe_events::received_at.asc())
        .select(StripeEvent::as_select())
        .load(conn)
        .await?)
}
