//! Buying credits: checkout, and the user's orders.

use async_graphql::connection::{Connection, Edge};
use async_graphql::{Context, Enum, ID, Object, SimpleObject};
use chrono::{DateTime, Utc};
use mage_domain::orders::{self as domain, Status};
use mage_domain::payments::checkout;
use mage_domain::rows;
use uuid::Uuid;

use super::context::{AdminOnly, ContextExt};
use super::pagination::{decode_created_cursor, encode_created_cursor, page, page_size, unpaged_complexity};
use crate::error::ApiResult;

const ORDER_CURSOR: &str = "order";

#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
#[graphql(remote = "Status")]
pub enum OrderStatus {
    Pending,
    Paid,
    Failed,
    Canceled,
    Refunded,
    PartiallyRefunded,
    Disputed,
}

pub struct Order(rows::Order);

#[Object]
impl Order {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }

    async fn status(&self) -> OrderStatus {
        self.0.status().into()
    }

    async fn total_cents(&self) -> i64 {
        self.0.total_cents
    }

    /// ISO 4217 code, upper case.
    async fn currency(&self) -> String {
        self.0.currency.to_uppercase()
    }

    /// Credits the order grants when paid (per month for a plan).
    async fn credits(&self) -> i64 {
        self.0.credits
    }

    async fn refunded_cents(&self) -> i64 {
        self.0.refunded_cents
    }

    /// Why the checkout could not start or the payment failed.
    async fn failure_reason(&self) -> Option<&str> {
        self.0.failure_reason.as_deref()
    }

    #[graphql(complexity = "unpaged_complexity(child_complexity)")]
    async fn items(&self, ctx: &Context<'_>) -> ApiResult<Vec<OrderItem>> {
        Ok(ctx.loaders().order_items(self.0.id).await?.into_iter().map(OrderItem::from).collect())
    }

    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }

    async fn paid_at(&self) -> Option<DateTime<Utc>> {
        self.0.paid_at
    }

    /// The Stripe events about this order and how they were settled
    /// (admins only).
    #[graphql(guard = "AdminOnly", complexity = "unpaged_complexity(child_complexity)")]
    async fn stripe_events(&self, ctx: &Context<'_>) -> ApiResult<Vec<StripeEvent>> {
        let mut conn = ctx.conn().await?;
        Ok(domain::events(&mut conn, self.0.id).await?.into_iter().map(StripeEvent::from).collect())
    }
}

#[derive(SimpleObject)]
pub struct OrderItem {
    product_id: ID,
    product_name: String,
    quantity: i32,
    unit_price_cents: i64,
    unit_credits: i64,
}

impl From<rows::OrderItem> for OrderItem {
    fn from(i: rows::OrderItem) -> Self {
        Self {
            product_id: ID(i.product_id),
            product_name: i.product_name,
            quantity: i.quantity,
            unit_price_cents: i.unit_price_cents,
            unit_credits: i.unit_credits,
        }
    }
}

/// A Stripe event as Mage received and settled it.
#[derive(SimpleObject)]
pub struct StripeEvent {
    id: ID,
    #[graphql(name = "type")]
    kind: String,
    /// `received`, `processed`, `ignored` or `failed`.
    status: String,
    /// Why it failed or was ignored.
    error: Option<String>,
    received_at: DateTime<Utc>,
    processed_at: Option<DateTime<Utc>>,
}

impl From<rows::StripeEvent> for StripeEvent {
    fn from(e: rows::StripeEvent) -> Self {
        Self {
            id: ID(e.id),
            kind: e.type_,
            status: e.status.as_str().to_owned(),
            error: e.last_error,
            received_at: e.received_at,
            processed_at: e.processed_at,
        }
    }
}

#[derive(SimpleObject)]
pub struct Checkout {
    order: Order,
    /// Where to send the user to pay.
    url: String,
}

#[derive(Default)]
pub struct OrdersQuery;

#[Object]
impl OrdersQuery {
    /// Your orders, newest first.
    #[graphql(complexity = "super::pagination::list_complexity(first, child_complexity)")]
    async fn orders(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> ApiResult<Connection<String, Order>> {
        let user_id = ctx.viewer().require()?;
        let limit = page_size(first)?;
        let after = decode_created_cursor(ORDER_CURSOR, after.as_deref())?;
        let mut conn = ctx.conn().await?;
        let rows = domain::list(&mut conn, user_id, after, limit + 1).await?;
        Ok(page(rows, limit, after.is_some(), |o| {
            Edge::new(encode_created_cursor(ORDER_CURSOR, o.created_at, o.id), Order(o))
        }))
    }

    /// One of your orders (admins: anyone's).
    async fn order(&self, ctx: &Context<'_>, id: ID) -> ApiResult<Option<Order>> {
        let user = ctx.current_user().await?;
        let Ok(id) = id.parse::<Uuid>() else { return Ok(None) };
        let mut conn = ctx.conn().await?;
        let order = if user.is_admin() {
            domain::find(&mut conn, id).await?
        } else {
            match domain::find_own(&mut conn, user.id, id).await {
                Ok(o) => Some(o),
                Err(mage_domain::Error::NotFound(_)) => None,
                Err(e) => return Err(e.into()),
            }
        };
        Ok(order.map(Order))
    }
}

#[derive(Default)]
pub struct OrdersMutation;

#[Object]
impl OrdersMutation {
    /// Starts buying a product: a PENDING order at today's price and the
    /// checkout page to send the user to. Credits arrive when the payment
    /// is confirmed (a Stripe webhook), never on return from the page.
    async fn create_checkout(
        &self,
        ctx: &Context<'_>,
        product_id: ID,
        #[graphql(default = 1)] quantity: i32,
    ) -> ApiResult<Checkout> {
        let user_id = ctx.viewer().require()?;
        let c = checkout::create(&ctx.services().payments, user_id, &product_id, quantity).await?;
        Ok(Checkout { order: Order(c.order), url: c.url })
    }
}
