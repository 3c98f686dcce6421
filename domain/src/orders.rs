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

pub use crate::enums::OrderStatus as Status;
use crate::enums::{OrderMode, ProductKind};

impl Status {
    /// The one table of allowed moves. Money that arrives for a FAILED or
    /// CANCELED order still pays it: the customer gets what they paid for.
    /// A won dispute goes back to what the refunds made of the order.
    pub fn can_become(self, next: Self) -> bool {
        use Status::*;
        matches!(
            (self, next),
            (Pending, Failed | Canceled)
                | (Pending | Failed | Canceled, Paid)
                | (Paid, PartiallyRefunded)
                | (Paid | PartiallyRefunded, Refunded)
                | (Paid | PartiallyRefunded | Refunded, Disputed)
                | (Disputed, Paid | PartiallyRefunded | Refunded)
        )
    }

    /// Whether the money was taken (and so credits were granted).
    pub fn was_paid(self) -> bool {
        matches!(self, Self::Paid | Self::Refunded | Self::PartiallyRefunded | Self::Disputed)
    }
}

impl Order {
    pub fn status(&self) -> Status {
        self.status
    }

    pub fn is_subscription(&self) -> bool {
        self.mode == OrderMode::Subscription
    }

    /// Credits that `cents` of the order stand for (rounded, and computed on
    /// running totals so that partial refunds add up exactly).
    pub fn credits_for(&self, cents: i64) -> i64 {
        if self.total_cents <= 0 {
            return 0;
        }
        let c = i128::from(self.credits) * i128::from(cents);
        let t = i128::from(self.total_cents);
        ((c + t / 2) / t) as i64
    }

    /// Credits granted for the order and not taken back yet.
    pub fn credits_left(&self) -> i64 {
        self.credits - self.credits_clawed_back
    }
}

/// The states a transition into `to` may start from, as stored.
fn sources(to: Status) -> Vec<&'static str> {
    Status::ALL.iter().copied().filter(|s| s.can_become(to)).map(Status::as_str).collect()
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
    let plan = product.kind == ProductKind::Plan;
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
                    orders::mode.eq(if plan { OrderMode::Subscription } else { OrderMode::Payment }),
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
        .filter(orders::status.eq_any(sources(Status::Failed)))
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

/// The product a plan order bought (plans are bought one at a time).
pub async fn plan_product(conn: &mut Connection, order_id: Uuid) -> Result<String> {
    Ok(order_items::table
        .filter(order_items::order_id.eq(order_id))
        .select(order_items::product_id)
        .first(conn)
        .await?)
}

/// The Stripe ids a checkout session carries about its order.
#[derive(Debug, Default, Clone)]
pub struct StripeIds {
    pub checkout_session: Option<String>,
    pub payment_intent: Option<String>,
    pub customer: Option<String>,
    pub subscription: Option<String>,
}

/// Keeps the Stripe ids of a locked order; the first one seen wins, as they
/// never change for an order.
pub async fn remember_stripe_ids(conn: &mut Connection, order: &Order, ids: StripeIds) -> Result<Order> {
    Ok(diesel::update(orders::table.find(order.id))
        .set((
            orders::stripe_payment_intent_id
                .eq(order.stripe_payment_intent_id.clone().or(ids.payment_intent)),
            orders::stripe_customer_id.eq(order.stripe_customer_id.clone().or(ids.customer)),
            orders::stripe_subscription_id.eq(order.stripe_subscription_id.clone().or(ids.subscription)),
            orders::stripe_checkout_session_id
                .eq(order.stripe_checkout_session_id.clone().or(ids.checkout_session)),
            orders::updated_at.eq(Utc::now()),
        ))
        .returning(Order::as_returning())
        .get_result(conn)
        .await?)
}

/// Records the subscription a plan order started.
pub async fn set_subscription(conn: &mut Connection, order_id: Uuid, subscription_id: &str) -> Result<()> {
    diesel::update(orders::table.find(order_id))
        .set(orders::stripe_subscription_id.eq(subscription_id))
        .execute(conn)
        .await?;
    Ok(())
}

/// Refuses a move the table does not allow. Settlement decides on the
/// locked row before it writes, so a refusal here is a settlement bug,
/// kept on the event for admins rather than retried.
fn check_move(order: &Order, to: Status) -> Result<()> {
    if order.status().can_become(to) {
        return Ok(());
    }
    Err(Error::Conflict(format!("order {} cannot go from {} to {}", order.id, order.status, to.as_str())))
}

/// A locked PENDING order ends without payment (FAILED or CANCELED);
/// `false` if it is no longer PENDING.
pub async fn end_unpaid(conn: &mut Connection, order: &Order, to: Status, reason: &str) -> Result<bool> {
    if order.status() != Status::Pending {
        return Ok(false);
    }
    check_move(order, to)?;
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

/// The money of a locked, unpaid order arrived: PAID.
pub async fn mark_paid(conn: &mut Connection, order: &Order) -> Result<()> {
    check_move(order, Status::Paid)?;
    diesel::update(orders::table.find(order.id))
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

/// Refunds of a locked order now total `refunded_cents`, and `clawed_back`
/// more credits were taken for them. A disputed order stays DISPUTED.
pub async fn record_refund(
    conn: &mut Connection,
    order: &Order,
    refunded_cents: i64,
    clawed_back: i64,
    status: Status,
) -> Result<()> {
    if status != order.status() {
        check_move(order, status)?;
    }
    diesel::update(orders::table.find(order.id))
        .set((
            orders::refunded_cents.eq(refunded_cents),
            orders::credits_clawed_back.eq(order.credits_clawed_back + clawed_back),
            orders::status.eq(status.as_str()),
            orders::updated_at.eq(Utc::now()),
        ))
        .execute(conn)
        .await?;
    Ok(())
}

/// A dispute opened on a locked order and took `taken` credits.
pub async fn open_dispute(conn: &mut Connection, order: &Order, taken: i64) -> Result<()> {
    check_move(order, Status::Disputed)?;
    diesel::update(orders::table.find(order.id))
        .set((
            orders::status.eq(Status::Disputed.as_str()),
            orders::disputed_credits.eq(taken),
            orders::credits_clawed_back.eq(order.credits_clawed_back + taken),
            orders::updated_at.eq(Utc::now()),
        ))
        .execute(conn)
        .await?;
    Ok(())
}

/// A won dispute of a locked order gave `restored` credits back.
pub async fn close_dispute(
    conn: &mut Connection,
    order: &Order,
    restored: i64,
    status: Status,
) -> Result<()> {
    check_move(order, status)?;
    diesel::update(orders::table.find(order.id))
        .set((
            orders::status.eq(status.as_str()),
            orders::disputed_credits.eq(0),
            orders::credits_clawed_back.eq(order.credits_clawed_back - restored),
            orders::updated_at.eq(Utc::now()),
        ))
        .execute(conn)
        .await?;
    Ok(())
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

/// An order as a settlement decision sees it, for unit tests.
#[cfg(test)]
pub(crate) fn fixture(status: Status, total_cents: i64, credits: i64) -> Order {
    let now = Utc::now();
    Order {
        id: Uuid::nil(),
        user_id: Uuid::nil(),
        status,
        total_cents,
        currency: "usd".to_owned(),
        credits,
        refunded_cents: 0,
        stripe_checkout_session_id: None,
        stripe_payment_intent_id: None,
        stripe_subscription_id: None,
        checkout_url: None,
        failure_reason: None,
        created_at: now,
        updated_at: now,
        paid_at: None,
        mode: OrderMode::Payment,
        stripe_customer_id: None,
        credits_clawed_back: 0,
        disputed_credits: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::Status::{self, *};

    #[test]
    fn the_moves_an_order_may_make() {
        let allowed = [
            (Pending, Failed),
            (Pending, Canceled),
            (Pending, Paid),
            (Failed, Paid),
            (Canceled, Paid),
            (Paid, PartiallyRefunded),
            (Paid, Refunded),
            (PartiallyRefunded, Refunded),
            (Paid, Disputed),
            (PartiallyRefunded, Disputed),
            (Refunded, Disputed),
            (Disputed, Paid),
            (Disputed, PartiallyRefunded),
            (Disputed, Refunded),
        ];
        for &from in Status::ALL {
            for &to in Status::ALL {
                assert_eq!(from.can_become(to), allowed.contains(&(from, to)), "{from:?} -> {to:?}");
            }
        }
    }

    #[test]
    fn every_status_reads_back() {
        for &s in Status::ALL {
            assert_eq!(Status::parse(s.as_str()), Some(s));
        }
        assert_eq!(Status::parse("paid "), None);
    }

    #[test]
    fn credits_of_partial_refunds_add_up_to_the_whole() {
        let order = super::fixture(Paid, 999, 100);
        assert_eq!(order.credits_for(0), 0);
        assert_eq!(order.credits_for(333) + (order.credits_for(666) - order.credits_for(333)), 67);
        assert_eq!(order.credits_for(999), 100);
        assert_eq!(super::fixture(Paid, 0, 100).credits_for(0), 0);
    }
}
