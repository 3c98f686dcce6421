//! The catalogue: credit packs and plans on sale.

use async_graphql::{Context, Enum, ID, Object};
use mage_domain::{products, rows};

use super::context::ContextExt;
use super::pagination::unpaged_complexity;
use crate::error::ApiResult;

#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
#[graphql(remote = "mage_domain::enums::ProductKind")]
pub enum ProductKind {
    Pack,
    Plan,
}

pub struct Product(rows::Product);

#[Object]
impl Product {
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }

    async fn kind(&self) -> ProductKind {
        self.0.kind.into()
    }

    async fn name(&self) -> &str {
        &self.0.name
    }

    async fn credits(&self) -> i64 {
        self.0.credits
    }

    async fn price_cents(&self) -> i64 {
        self.0.price_cents
    }

    /// ISO 4217 code, upper case.
    async fn currency(&self) -> String {
        self.0.currency.to_uppercase()
    }
}

#[derive(Default)]
pub struct ProductsQuery;

#[Object]
impl ProductsQuery {
    /// Credit packs and plans on sale, in display order.
    #[graphql(complexity = "unpaged_complexity(child_complexity)")]
    async fn products(&self, ctx: &Context<'_>) -> ApiResult<Vec<Product>> {
        let mut conn = ctx.conn().await?;
        Ok(products::list_active(&mut conn).await?.into_iter().map(Product).collect())
    }
}
