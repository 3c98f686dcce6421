//! Starting a purchase: a PENDING order, then a Stripe Checkout Session for
//! it (or, without Stripe keys under `mage dev`, the local development
//! checkout page).

use std::collections::HashMap;

use stripe::{ClientBuilder, IdempotencyKey, RequestStrategy, StripeError, StripeRequest};
use stripe_checkout::CheckoutSessionMode;
use stripe_checkout::checkout_session::{
    CreateCheckoutSession, CreateCheckoutSessionLineItems, CreateCheckoutSessionLineItemsPriceData,
    CreateCheckoutSessionSubscriptionData, ProductData,
};
use uuid::Uuid;

use crate::config::PaymentSettings;
use crate::core::Core;
use crate::rows::{Order, Product};
use crate::{Error, Result, limits, orders};

/// What checkout needs from the server.
#[derive(Clone)]
pub struct PaymentServices {
    pub core: Core,
    pub settings: PaymentSettings,
    pub public_url: String,
    pub dev_mode: bool,
}

pub struct Checkout {
    pub order: Order,
    pub url: String,
}

/// The development checkout page of an order.
pub fn dev_checkout_path(order_id: Uuid) -> String {
    format!("/dev/checkout/{order_id}")
}

/// Creates the order and its checkout. When Stripe cannot be reached or
/// refuses, the order ends FAILED with the reason and the caller gets
/// `PaymentProvider` — never a half-made checkout.
pub async fn create(
    svc: &PaymentServices,
    user_id: Uuid,
    product_id: &str,
    quantity: i32,
) -> Result<Checkout> {
    if svc.settings.stripe_secret_key.is_none() && !svc.dev_mode {
        return Err(Error::PaymentProvider("payments are not configured on this server".into()));
    }
    limits::reserve_checkout(&svc.core.redis, svc.settings.checkouts_per_minute, user_id).await?;
    let mut conn = svc.core.pool.get().await?;
    let (order, product) = orders::create(&mut conn, user_id, product_id, quantity).await?;
    let span = tracing::info_span!("checkout", order_id = %order.id, %user_id);
    let _enter = span.enter();
    let Some(key) = svc.settings.stripe_secret_key.as_deref() else {
        let url = format!("{}{}", svc.public_url, dev_checkout_path(order.id));
        let order = orders::attach_checkout(&mut conn, order.id, None, &url).await?;
        tracing::info!("development checkout created");
        return Ok(Checkout { order, url });
    };
    drop(conn);
    match stripe_session(svc, key, &order, &product, quantity).await {
        Ok((session_id, url)) => {
            let mut conn = svc.core.pool.get().await?;
            let order = orders::attach_checkout(&mut conn, order.id, Some(&session_id), &url).await?;
            tracing::info!(%session_id, "Stripe checkout session created");
            Ok(Checkout { order, url })
        }
        Err(e) => {
            let (reason, user) = describe(&e);
            tracing::warn!(error = %reason, "Stripe refused or could not be reached; order failed");
            let mut conn = svc.core.pool.get().await?;
            orders::fail_pending(&mut conn, order.id, &reason).await?;
            Err(Error::PaymentProvider(user))
        }
    }
}

async fn stripe_session(
    svc: &PaymentServices,
    key: &str,
    order: &Order,
    product: &Product,
    quantity: i32,
) -> std::result::Result<(String, String), StripeError> {
    let mut builder = ClientBuilder::new(key).timeout(svc.settings.stripe_timeout);
    if let Some(base) = &svc.settings.stripe_api_base {
        builder = builder.url(base.clone());
    }
    let client = builder.build()?;
    let metadata = HashMap::from([
        ("order_id".to_owned(), order.id.to_string()),
        ("user_id".to_owned(), order.user_id.to_string()),
    ]);
    let mut item = CreateCheckoutSessionLineItems::new();
    item.quantity = Some(quantity as u64);
    let plan = order.is_subscription();
    if plan {
        item.price = product.stripe_price_id.clone();
    } else {
        let currency = product
            .currency
            .parse::<stripe_types::Currency>()
            .map_err(|_| StripeError::ConfigError(format!("unknown currency {}", product.currency)))?;
        let mut price = CreateCheckoutSessionLineItemsPriceData::new(currency);
        price.unit_amount = Some(product.price_cents);
        price.product_data = Some(ProductData::new(product.name.clone()));
        item.price_data = Some(price);
    }
    let base = &svc.public_url;
    let mut req = CreateCheckoutSession::new()
        .mode(if plan { CheckoutSessionMode::Subscription } else { CheckoutSessionMode::Payment })
        .line_items(vec![item])
        .client_reference_id(order.id.to_string())
        .metadata(metadata.clone())
        .success_url(format!("{base}/checkout/success?order={}", order.id))
        .cancel_url(format!("{base}/checkout/canceled?order={}", order.id));
    if plan {
        // Copied by Stripe onto the subscription and its invoices, so an
        // invoice that arrives before the checkout event still finds its
        // order.
        let mut sub = CreateCheckoutSessionSubscriptionData::new();
        sub.metadata = Some(metadata);
        req = req.subscription_data(sub);
    }
    let idempotency =
        IdempotencyKey::new(order.id.to_string()).map_err(|e| StripeError::ConfigError(e.to_string()))?;
    let session = req
        .customize()
        .request_strategy(RequestStrategy::Idempotent(idempotency))
        .timeout(svc.settings.stripe_timeout)
        .send(&client)
        .await?;
    let url =
        session.url.ok_or_else(|| StripeError::JSONDeserialize("the checkout session has no url".into()))?;
    Ok((session.id.as_str().to_owned(), url))
}

/// The reason kept on the order (for operators), and what the user is told.
fn describe(e: &StripeError) -> (String, String) {
    match e {
        StripeError::Stripe(errors, status) if *status >= 500 => (
            format!("Stripe answered {status}: {}", errors.message.as_deref().unwrap_or("no message")),
            "The payment provider is unavailable; no payment was taken. Try again later.".into(),
        ),
        StripeError::Stripe(errors, status) => (
            format!("Stripe answered {status}: {}", errors.message.as_deref().unwrap_or("no message")),
            "The payment provider refused to start this checkout; no payment was taken.".into(),
        ),
        StripeError::Timeout => (
            "Stripe did not answer in time".into(),
            "The payment provider did not answer in time; no payment was taken. Try again.".into(),
        ),
        other => (
            other.to_string(),
            "The payment provider is unavailable; no payment was taken. Try again later.".into(),
        ),
    }
}
