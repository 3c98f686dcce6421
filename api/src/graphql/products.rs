//! The catalogue: credit packs and plans on sale, and the admins' editor
//! (`catalogProducts`, `createProduct`, `updateProduct`).

use async_graphql::{Context, Enum, ID, InputObject, Object};
use mage_domain::products::{self, ProductDefinition};
use mage_domain::rows;

use super::context::{AdminOnly, ContextExt};
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

    /// The Stripe recurring price a plan is sold at (admins only).
    #[graphql(guard = "AdminOnly")]
    async fn stripe_price_id(&self) -> Option<&str> {
        self.0.stripe_price_id.as_deref()
    }

    /// On sale; an inactive product is hidden from `products` (admins only).
    #[graphql(guard = "AdminOnly")]
    async fn active(&self) -> bool {
        self.0.active
    }

    /// Display order, ascending (admins only).
    #[graphql(guard = "AdminOnly")]
    async fn sort_order(&self) -> i32 {
        self.0.sort_order
    }
}

/// A product's whole definition. Orders already made keep the price and
/// credits they were sold at.
#[derive(InputObject)]
pub struct ProductInput {
    /// Shown to buyers; 1 to 100 characters.
    name: String,
    kind: ProductKind,
    /// Credits granted per pack, or per period of a plan.
    credits: i64,
    /// Per pack or period, in the currency's smallest unit.
    price_cents: i64,
    /// ISO 4217 (`USD`).
    currency: String,
    /// Required for a PLAN (its Stripe recurring price, `price_...`); none
    /// for a PACK, which is charged `priceCents` at checkout.
    stripe_price_id: Option<String>,
    #[graphql(default = true)]
    active: bool,
    /// Display order; omitted, the product keeps its place (0 for a new
    /// one).
    sort_order: Option<i32>,
}

impl From<ProductInput> for ProductDefinition {
    fn from(i: ProductInput) -> Self {
        Self {
            name: i.name,
            kind: i.kind.into(),
            credits: i.credits,
            price_cents: i.price_cents,
            currency: i.currency,
            stripe_price_id: i.stripe_price_id,
            active: i.active,
            sort_order: i.sort_order,
        }
    }
}

#[derive(Default)]
pub struct ProductsMutation;

#[Object]
impl ProductsMutation {
    /// Adds a product (admins only), under an id made from its name
    /// (`Pro plan (monthly)` → `pro-plan-monthly`, `-2` added if taken).
    /// `CONFLICT` when another product has its `stripePriceId`.
    #[graphql(guard = "AdminOnly")]
    async fn create_product(&self, ctx: &Context<'_>, input: ProductInput) -> ApiResult<Product> {
        let admin_id = ctx.viewer().require()?;
        let mut conn = ctx.conn().await?;
        Ok(Product(products::create(&mut conn, admin_id, input.into()).await?))
    }

    /// Replaces a product's definition (admins only); `NOT_FOUND` for an
    /// unknown id. Applies at once everywhere. `CONFLICT` when another
    /// product has its `stripePriceId`, or when it would change the kind or
    /// Stripe price of a plan that subscriptions still renew.
    #[graphql(guard = "AdminOnly")]
    async fn update_product(&self, ctx: &Context<'_>, id: ID, input: ProductInput) -> ApiResult<Product> {
        let admin_id = ctx.viewer().require()?;
        let mut conn = ctx.conn().await?;
        Ok(Product(products::update(&mut conn, admin_id, &id, input.into()).await?))
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

    /// Every product, on sale or not, in display order (admins only).
    #[graphql(guard = "AdminOnly", complexity = "unpaged_complexity(child_complexity)")]
    async fn catalog_products(&self, ctx: &Context<'_>) -> ApiResult<Vec<Product>> {
        let mut conn = ctx.conn().await?;
        Ok(products::list_all(&mut conn).await?.into_iter().map(Product).collect())
    }
}
