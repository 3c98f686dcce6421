//! The catalogue of credit packs and plans.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use crate::Result;
use crate::db::Connection;
use crate::rows::Product;
use crate::schema::products;

/// Products on sale, in display order.
pub async fn list_active(conn: &mut Connection) -> Result<Vec<Product>> {
    Ok(products::table
        .filter(products::active.eq(true))
        .order((products::sort_order.asc(), products::id.asc()))
        .select(Product::as_select())
        .load(conn)
        .await?)
}

/// The plan sold at a Stripe price, active or not (a subscription keeps
/// renewing on a plan taken off sale).
pub async fn plan_by_price(conn: &mut Connection, price: &str) -> Result<Option<Product>> {
    Ok(products::table
        .filter(products::stripe_price_id.eq(price))
        .filter(products::kind.eq(crate::enums::ProductKind::Plan))
        .select(Product::as_select())
        .first(conn)
        .await
        .optional()?)
}
