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
