//! Calls to Stripe Billing: ending a subscription at the end of the period
//! already paid for (`POST /v1/subscriptions/{id}` with
//! `cancel_at_period_end=true`). Stripe then sends the usual
//! `customer.subscription.updated` and, at the period's end,
//! `customer.subscription.deleted`, which settlement applies as for any
//! cancellation.

use stripe::{ClientBuilder, IdempotencyKey, RequestStrategy, StripeError};
use stripe_client_core::{RequestBuilder, StripeMethod};

use crate::config::PaymentSettings;
use crate::{Error, Result};

/// The fields of Stripe's answer Mage reads (miniserde skips the rest).
#[derive(miniserde::Deserialize)]
struct Updated {
    id: String,
    cancel_at_period_end: bool,
}

#[derive(serde::Serialize)]
struct CancelAtPeriodEnd {
    cancel_at_period_end: bool,
}

/// What became of the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Stripe will not renew it.
    AtPeriodEnd,
    /// Stripe does not know the subscription (deleted there): nothing renews.
    Unknown,
    /// No Stripe keys (`mage dev`): nothing was sent.
    NotConfigured,
}

/// Asks Stripe not to renew subscription `id`. Idempotent (and sent with an
/// idempotency key), so a retried account deletion asks again harmlessly.
pub async fn cancel_at_period_end(settings: &PaymentSettings, id: &str) -> Result<Ended> {
    let Some(key) = settings.stripe_secret_key.as_deref() else {
        tracing::warn!(subscription_id = id, "no Stripe keys: the subscription was not cancelled at Stripe");
        return Ok(Ended::NotConfigured);
    };
    let mut builder = ClientBuilder::new(key).timeout(settings.stripe_timeout);
    if let Some(base) = &settings.stripe_api_base {
        builder = builder.url(base.clone());
    }
    let sent = async {
        let client = builder.build()?;
        let idempotency = IdempotencyKey::new(format!("mage-cancel-at-period-end-{id}"))
            .map_err(|e| StripeError::ConfigError(e.to_string()))?;
        RequestBuilder::new(StripeMethod::Post, format!("/subscriptions/{id}"))
            .form(&CancelAtPeriodEnd { cancel_at_period_end: true })
            .customize::<Updated>()
            .request_strategy(RequestStrategy::Idempotent(idempotency))
            .timeout(settings.stripe_timeout)
            .send(&client)
            .await
    };
    match sent.await {
        Ok(u) if u.cancel_at_period_end => {
            tracing::info!(subscription_id = u.id, "subscription set to end with its period");
            Ok(Ended::AtPeriodEnd)
        }
        Ok(u) => Err(Error::PaymentProvider(format!(
            "Stripe did not set subscription {} to end with its period",
            u.id
        ))),
        Err(StripeError::Stripe(e, 404))
            if matches!(e.code, Some(stripe::ApiErrorsCode::ResourceMissing)) =>
        {
            tracing::warn!(subscription_id = id, "Stripe does not know this subscription; nothing to cancel");
            Ok(Ended::Unknown)
        }
        Err(e) => {
            tracing::warn!(subscription_id = id, error = %e, "could not cancel a subscription at Stripe");
            Err(Error::PaymentProvider(
                "The payment provider could not be reached to end your subscription; nothing was deleted. \
                 Try again later."
                    .into(),
            ))
        }
    }
}
