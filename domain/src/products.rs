//! The catalogue of credit packs and plans. Nothing keeps a copy of it:
//! `products` and `createCheckout` read the table, so an admin's change
//! (`createProduct`, `updateProduct`) applies at once on every instance.
//! Orders copy the price and credits they were sold at.

use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use uuid::Uuid;

use crate::db::Connection;
use crate::enums::ProductKind;
use crate::rows::Product;
use crate::schema::{products, subscriptions};
use crate::{Error, Result};

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

/// Every product, on sale or not, in display order (the catalogue editor).
pub async fn list_all(conn: &mut Connection) -> Result<Vec<Product>> {
    Ok(products::table
        .order((products::sort_order.asc(), products::id.asc()))
        .select(Product::as_select())
        .load(conn)
        .await?)
}

/// Stripe's largest amount (8 digits in the smallest unit).
pub const MAX_PRICE_CENTS: i64 = 99_999_999;
pub const MAX_CREDITS: i64 = 1_000_000_000;

/// A product's whole definition as an admin gives it; an omitted sort
/// order keeps the product's place (0 for a new one).
#[derive(Debug, Clone)]
pub struct ProductDefinition {
    pub name: String,
    pub kind: ProductKind,
    pub credits: i64,
    pub price_cents: i64,
    /// ISO 4217, any case; stored lower case as Stripe spells it.
    pub currency: String,
    /// The Stripe recurring price a plan is sold at.
    pub stripe_price_id: Option<String>,
    pub active: bool,
    pub sort_order: Option<i32>,
}

pub fn check(def: &mut ProductDefinition) -> Result<()> {
    def.name = crate::catalog::display_name(&def.name)?;
    if !(1..=MAX_CREDITS).contains(&def.credits) {
        return Err(Error::invalid("credits", format!("must be between 1 and {MAX_CREDITS}")));
    }
    if !(1..=MAX_PRICE_CENTS).contains(&def.price_cents) {
        return Err(Error::invalid("priceCents", format!("must be between 1 and {MAX_PRICE_CENTS}")));
    }
    def.currency = def.currency.trim().to_ascii_lowercase();
    let known = def.currency.len() == 3
        && def.currency.bytes().all(|b| b.is_ascii_lowercase())
        && !matches!(def.currency.parse::<stripe_types::Currency>(), Ok(stripe_types::Currency::Unknown(_)));
    if !known {
        return Err(Error::invalid(
            "currency",
            "must be a three-letter ISO 4217 code Stripe knows (e.g. USD)",
        ));
    }
    def.stripe_price_id =
        def.stripe_price_id.as_deref().map(str::trim).filter(|p| !p.is_empty()).map(str::to_owned);
    match (def.kind, def.stripe_price_id.as_deref()) {
        (ProductKind::Plan, None) => {
            return Err(Error::invalid(
                "stripePriceId",
                "is required for a plan: its Stripe recurring price",
            ));
        }
        (ProductKind::Pack, Some(_)) => {
            return Err(Error::invalid(
                "stripePriceId",
                "is for plans only: a pack is charged priceCents at checkout",
            ));
        }
        (ProductKind::Plan, Some(p))
            if !p.starts_with("price_") || p.len() > 255 || p.chars().any(char::is_whitespace) =>
        {
            return Err(Error::invalid("stripePriceId", "must be a Stripe price id (price_...)"));
        }
        _ => {}
    }
    Ok(())
}

/// A product's row as written (its id is set once, at creation).
#[derive(Insertable, AsChangeset)]
#[diesel(table_name = products, treat_none_as_null = true)]
struct Row<'a> {
    kind: ProductKind,
    name: &'a str,
    credits: i64,
    price_cents: i64,
    currency: &'a str,
    stripe_price_id: Option<&'a str>,
    active: bool,
    sort_order: i32,
}

fn row(def: &ProductDefinition) -> Row<'_> {
    Row {
        kind: def.kind,
        name: &def.name,
        credits: def.credits,
        price_cents: def.price_cents,
        currency: &def.currency,
        stripe_price_id: def.stripe_price_id.as_deref(),
        active: def.active,
        sort_order: def.sort_order.unwrap_or(0),
    }
}

fn price_taken(e: Error) -> Error {
    if e.is_unique_violation("products_stripe_price_idx") {
        Error::Conflict("another product is sold at that stripePriceId".into())
    } else {
        e
    }
}

/// The id of a new product: its name in dashed lowercase words (`Pro plan
/// (monthly)` → `pro-plan-monthly`), with a number added when taken.
fn slug(name: &str) -> String {
    let mut s = String::new();
    for c in name.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() {
            s.push(c);
        } else if !s.is_empty() && !s.ends_with('-') {
            s.push('-');
        }
        if s.len() >= 48 {
            break;
        }
    }
    let s = s.trim_end_matches('-');
    if s.is_empty() { "product".to_owned() } else { s.to_owned() }
}

/// Adds a product under an id made from its name.
pub async fn create(conn: &mut Connection, admin_id: Uuid, mut def: ProductDefinition) -> Result<Product> {
    check(&mut def)?;
    let base = slug(&def.name);
    let mut created = None;
    for n in 1..=100 {
        let id = if n == 1 { base.clone() } else { format!("{base}-{n}") };
        let inserted = diesel::insert_into(products::table)
            .values((products::id.eq(&id), row(&def)))
            .on_conflict(products::id)
            .do_nothing()
            .returning(Product::as_returning())
            .get_result(conn)
            .await
            .optional()
            .map_err(|e| price_taken(e.into()))?;
        if inserted.is_some() {
            created = inserted;
            break;
        }
    }
    let p =
        created.ok_or_else(|| Error::Conflict(format!("too many products are named like {:?}", def.name)))?;
    tracing::info!(target: "mage::audit", %admin_id, product_id = %p.id, action = "product.create",
        definition = %crate::catalog::Fields(&summary(&p)), "catalogue changed");
    Ok(p)
}

/// Replaces a product's definition; `NOT_FOUND` for an unknown id. A plan
/// that subscriptions still renew keeps its kind and Stripe price (their
/// renewals find it by that price): `CONFLICT` otherwise.
pub async fn update(
    conn: &mut Connection,
    admin_id: Uuid,
    id: &str,
    mut def: ProductDefinition,
) -> Result<Product> {
    check(&mut def)?;
    let (before, after) = conn
        .transaction::<_, Error, _>(async |conn| {
            let before: Product = products::table
                .find(id)
                .for_update()
                .select(Product::as_select())
                .first(conn)
                .await
                .optional()?
                .ok_or(Error::NotFound("product"))?;
            def.sort_order = def.sort_order.or(Some(before.sort_order));
            let moves = before.kind != def.kind || before.stripe_price_id != def.stripe_price_id;
            if before.kind == ProductKind::Plan && moves {
                let renewing: i64 = subscriptions::table
                    .filter(subscriptions::product_id.eq(id))
                    .filter(
                        subscriptions::status.ne_all([crate::subscriptions::CANCELED, "incomplete_expired"]),
                    )
                    .count()
                    .get_result(conn)
                    .await?;
                if renewing > 0 {
                    return Err(Error::Conflict(format!(
                        "{renewing} subscription(s) renew this plan at its Stripe price: keep its kind and \
                         stripePriceId, or make a new plan and take this one off sale (active: false)"
                    )));
                }
            }
            let after = diesel::update(products::table.find(id))
                .set(row(&def))
                .returning(Product::as_returning())
                .get_result(conn)
                .await
                .map_err(|e| price_taken(e.into()))?;
            Ok((before, after))
        })
        .await?;
    let (was, now) = (summary(&before), summary(&after));
    let changed: Vec<&str> = was.iter().zip(&now).filter(|(a, b)| a != b).map(|((k, _), _)| *k).collect();
    tracing::info!(target: "mage::audit", %admin_id, product_id = id, action = "product.update",
        changed = %changed.join(","), before = %crate::catalog::Fields(&was), after = %crate::catalog::Fields(&now),
        "catalogue changed");
    Ok(after)
}

fn summary(p: &Product) -> Vec<(&'static str, String)> {
    vec![
        ("name", format!("{:?}", p.name)),
        ("kind", p.kind.to_string()),
        ("credits", p.credits.to_string()),
        ("priceCents", p.price_cents.to_string()),
        ("currency", p.currency.clone()),
        ("stripePriceId", p.stripe_price_id.clone().unwrap_or_else(|| "-".into())),
        ("active", p.active.to_string()),
        ("sortOrder", p.sort_order.to_string()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pack() -> ProductDefinition {
        ProductDefinition {
            name: "Mega pack".into(),
            kind: ProductKind::Pack,
            credits: 100,
            price_cents: 500,
            currency: "USD".into(),
            stripe_price_id: None,
            active: true,
            sort_order: None,
        }
    }

    fn field(def: ProductDefinition) -> &'static str {
        match check(&mut def.clone()) {
            Err(Error::InvalidInput { field, .. }) => field,
            other => panic!("expected invalid input, got {other:?}"),
        }
    }

    #[test]
    fn slugs_are_model_style_ids() {
        assert_eq!(slug("Pro plan (monthly)"), "pro-plan-monthly");
        assert_eq!(slug("  ¡Ñ!  "), "product");
        assert_eq!(slug("Été 2027"), "t-2027");
        assert!(slug(&"word ".repeat(40)).len() <= 48);
    }

    #[test]
    fn checks_name_amounts_currency_and_plan_prices() {
        let mut ok = pack();
        check(&mut ok).expect("valid");
        assert_eq!(ok.currency, "usd");
        assert_eq!(field(ProductDefinition { name: " ".into(), ..pack() }), "name");
        assert_eq!(field(ProductDefinition { credits: 0, ..pack() }), "credits");
        assert_eq!(field(ProductDefinition { price_cents: 0, ..pack() }), "priceCents");
        assert_eq!(field(ProductDefinition { currency: "dollars".into(), ..pack() }), "currency");
        assert_eq!(field(ProductDefinition { currency: "xyz".into(), ..pack() }), "currency");
        let plan = ProductDefinition { kind: ProductKind::Plan, ..pack() };
        assert_eq!(field(plan.clone()), "stripePriceId");
        assert_eq!(
            field(ProductDefinition { stripe_price_id: Some("p1".into()), ..plan.clone() }),
            "stripePriceId"
        );
        assert!(check(&mut ProductDefinition { stripe_price_id: Some("price_1".into()), ..plan }).is_ok());
        assert_eq!(
            field(ProductDefinition { stripe_price_id: Some("price_1".into()), ..pack() }),
            "stripePriceId"
        );
    }
}
