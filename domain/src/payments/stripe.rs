//! The parts of Stripe's event objects that settlement reads, in one place.
//!
//! Every field is optional and lenient: a field that is missing, `null` or
//! of an unexpected type reads as `None` instead of failing the whole
//! event, because Stripe adds and reshapes fields across API versions and a
//! stored event must stay settleable (a refusal is decided by settlement,
//! with a reason for admins, never by a parse error).

use chrono::{DateTime, TimeZone, Utc};
use serde::Deserialize;
use serde::de::{DeserializeOwned, Deserializer};
use serde_json::Value;

/// The envelope of an event: what it is, when Stripe created it and its
/// object.
#[derive(Debug, Default, Deserialize)]
pub struct Event {
    #[serde(default, deserialize_with = "lenient")]
    pub id: Option<String>,
    /// `"event"` for an event.
    #[serde(default, deserialize_with = "lenient")]
    pub object: Option<String>,
    #[serde(default, rename = "type", deserialize_with = "lenient")]
    pub type_: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub livemode: Option<bool>,
    #[serde(default, deserialize_with = "lenient")]
    pub created: Option<i64>,
    #[serde(default, deserialize_with = "object")]
    pub data: Option<Data>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Data {
    #[serde(default)]
    pub object: Value,
}

impl Event {
    /// The event as settlement sees it; a payload of another shape is an
    /// event with no fields.
    pub fn read(payload: &Value) -> Self {
        parse(payload.clone())
    }

    pub fn created_at(&self) -> Option<DateTime<Utc>> {
        timestamp(self.created)
    }

    /// `data.object` as the type its event type says it is.
    pub fn data_object<T: DeserializeOwned + Default>(&self) -> T {
        self.data.as_ref().map(|d| parse(d.object.clone())).unwrap_or_default()
    }
}

/// `checkout.session.*`
#[derive(Debug, Default, Deserialize)]
pub struct CheckoutSession {
    #[serde(default, deserialize_with = "id")]
    pub id: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub client_reference_id: Option<String>,
    #[serde(default, deserialize_with = "object")]
    pub metadata: Option<Metadata>,
    #[serde(default, deserialize_with = "id")]
    pub payment_intent: Option<String>,
    #[serde(default, deserialize_with = "id")]
    pub customer: Option<String>,
    #[serde(default, deserialize_with = "id")]
    pub subscription: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub payment_status: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub amount_total: Option<i64>,
    #[serde(default, deserialize_with = "lenient")]
    pub currency: Option<String>,
}

impl CheckoutSession {
    /// The order Mage named when it created the session.
    pub fn order_reference(&self) -> Option<&str> {
        self.client_reference_id.as_deref().or_else(|| Metadata::order_id(&self.metadata))
    }
}

/// The `metadata` Mage sets on sessions and subscriptions.
#[derive(Debug, Default, Deserialize)]
pub struct Metadata {
    #[serde(default, deserialize_with = "lenient")]
    pub order_id: Option<String>,
}

impl Metadata {
    pub fn order_id(m: &Option<Metadata>) -> Option<&str> {
        m.as_ref().and_then(|m| m.order_id.as_deref())
    }
}

/// `invoice.paid` / `invoice.payment_succeeded`
#[derive(Debug, Default, Deserialize)]
pub struct Invoice {
    #[serde(default, deserialize_with = "lenient")]
    pub id: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub billing_reason: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub amount_paid: Option<i64>,
    #[serde(default, deserialize_with = "lenient")]
    pub total: Option<i64>,
    #[serde(default, deserialize_with = "lenient")]
    pub currency: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub period_end: Option<i64>,
    /// Before API version 2025-03-31 (basil).
    #[serde(default, deserialize_with = "id")]
    pub subscription: Option<String>,
    /// Before basil.
    #[serde(default, deserialize_with = "object")]
    pub subscription_details: Option<SubscriptionDetails>,
    #[serde(default, deserialize_with = "object")]
    pub parent: Option<InvoiceParent>,
    #[serde(default, deserialize_with = "object")]
    pub lines: Option<List<InvoiceLine>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct InvoiceParent {
    #[serde(default, deserialize_with = "object")]
    pub subscription_details: Option<SubscriptionDetails>,
}

#[derive(Debug, Default, Deserialize)]
pub struct SubscriptionDetails {
    #[serde(default, deserialize_with = "id")]
    pub subscription: Option<String>,
    #[serde(default, deserialize_with = "object")]
    pub metadata: Option<Metadata>,
}

#[derive(Debug, Default, Deserialize)]
pub struct InvoiceLine {
    #[serde(default, deserialize_with = "object")]
    pub pricing: Option<Pricing>,
    #[serde(default, deserialize_with = "object")]
    pub price: Option<Named>,
    #[serde(default, deserialize_with = "object")]
    pub plan: Option<Named>,
    #[serde(default, deserialize_with = "object")]
    pub period: Option<Period>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Pricing {
    #[serde(default, deserialize_with = "object")]
    pub price_details: Option<PriceDetails>,
}

#[derive(Debug, Default, Deserialize)]
pub struct PriceDetails {
    #[serde(default, deserialize_with = "lenient")]
    pub price: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Period {
    #[serde(default, deserialize_with = "lenient")]
    pub end: Option<i64>,
}

/// A price or a plan: only its id matters.
#[derive(Debug, Default, Deserialize)]
pub struct Named {
    #[serde(default, deserialize_with = "lenient")]
    pub id: Option<String>,
}

/// A Stripe list, of which settlement reads the first element.
#[derive(Debug, Default, Deserialize)]
#[serde(bound = "T: DeserializeOwned + Default")]
pub struct List<T> {
    #[serde(default = "Option::default", deserialize_with = "first")]
    pub data: Option<T>,
}

impl Invoice {
    pub fn subscription_id(&self) -> Option<&str> {
        self.details().and_then(|d| d.subscription.as_deref()).or(self.subscription.as_deref())
    }

    /// The subscription's metadata, where the API version puts it.
    pub fn subscription_metadata(&self) -> &Option<Metadata> {
        match self.details() {
            Some(d) if d.metadata.is_some() => &d.metadata,
            _ => self.subscription_details.as_ref().map_or(&None, |d| &d.metadata),
        }
    }

    fn details(&self) -> Option<&SubscriptionDetails> {
        self.parent.as_ref().and_then(|p| p.subscription_details.as_ref())
    }

    fn line(&self) -> Option<&InvoiceLine> {
        self.lines.as_ref().and_then(|l| l.data.as_ref())
    }

    pub fn price(&self) -> Option<&str> {
        let line = self.line()?;
        let priced =
            line.pricing.as_ref().and_then(|p| p.price_details.as_ref()).and_then(|d| d.price.as_deref());
        priced.or_else(|| named(&line.price)).or_else(|| named(&line.plan))
    }

    pub fn period_end(&self) -> Option<DateTime<Utc>> {
        let line = self.line().and_then(|l| l.period.as_ref()).and_then(|p| p.end);
        timestamp(line).or_else(|| timestamp(self.period_end))
    }
}

/// `customer.subscription.*`
#[derive(Debug, Default, Deserialize)]
pub struct Subscription {
    #[serde(default, deserialize_with = "id")]
    pub id: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub status: Option<String>,
    #[serde(default, deserialize_with = "object")]
    pub metadata: Option<Metadata>,
    #[serde(default, deserialize_with = "lenient")]
    pub current_period_end: Option<i64>,
    #[serde(default, deserialize_with = "object")]
    pub items: Option<List<SubscriptionItem>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct SubscriptionItem {
    #[serde(default, deserialize_with = "object")]
    pub price: Option<Named>,
    #[serde(default, deserialize_with = "object")]
    pub plan: Option<Named>,
    #[serde(default, deserialize_with = "lenient")]
    pub current_period_end: Option<i64>,
}

impl Subscription {
    fn item(&self) -> Option<&SubscriptionItem> {
        self.items.as_ref().and_then(|i| i.data.as_ref())
    }

    pub fn price(&self) -> Option<&str> {
        self.item().and_then(|i| named(&i.price).or_else(|| named(&i.plan)))
    }

    /// Per item since basil, on the subscription before.
    pub fn period_end(&self) -> Option<DateTime<Utc>> {
        timestamp(self.item().and_then(|i| i.current_period_end))
            .or_else(|| timestamp(self.current_period_end))
    }
}

/// `charge.refunded`
#[derive(Debug, Default, Deserialize)]
pub struct Charge {
    #[serde(default, deserialize_with = "id")]
    pub payment_intent: Option<String>,
    /// The running total of the charge's refunds.
    #[serde(default, deserialize_with = "lenient")]
    pub amount_refunded: Option<i64>,
}

/// `charge.dispute.*`
#[derive(Debug, Default, Deserialize)]
pub struct Dispute {
    #[serde(default, deserialize_with = "id")]
    pub id: Option<String>,
    #[serde(default, deserialize_with = "id")]
    pub payment_intent: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub status: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub amount: Option<i64>,
}

impl Dispute {
    /// Inquiries (`warning_needs_response`, `warning_under_review`,
    /// `warning_closed`) withdraw no money.
    pub fn is_inquiry(&self) -> bool {
        self.status.as_deref().is_some_and(|s| s.starts_with("warning_"))
    }
}

fn named(n: &Option<Named>) -> Option<&str> {
    n.as_ref().and_then(|n| n.id.as_deref())
}

fn timestamp(t: Option<i64>) -> Option<DateTime<Utc>> {
    t.and_then(|t| Utc.timestamp_opt(t, 0).single())
}

/// A struct from an object; anything else is the struct with no fields.
fn parse<T: DeserializeOwned + Default>(v: Value) -> T {
    if v.is_object() { serde_json::from_value(v).unwrap_or_default() } else { T::default() }
}

/// A value of the expected type, else `None`.
fn lenient<'de, D: Deserializer<'de>, T: DeserializeOwned>(d: D) -> Result<Option<T>, D::Error> {
    Ok(serde_json::from_value(Value::deserialize(d)?).ok())
}

/// A nested object, else `None`.
fn object<'de, D: Deserializer<'de>, T: DeserializeOwned + Default>(d: D) -> Result<Option<T>, D::Error> {
    let v = Value::deserialize(d)?;
    Ok(v.is_object().then(|| parse(v)))
}

/// An id that Stripe sends as a string, or as the object when expanded.
fn id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let v = Value::deserialize(d)?;
    let id = match v {
        Value::String(s) => Some(s),
        Value::Object(mut o) => match o.remove("id") {
            Some(Value::String(s)) => Some(s),
            _ => None,
        },
        _ => None,
    };
    Ok(id.filter(|s| !s.is_empty()))
}

/// The first element of an array, when it is an object.
fn first<'de, D: Deserializer<'de>, T: DeserializeOwned + Default>(d: D) -> Result<Option<T>, D::Error> {
    let v = Value::deserialize(d)?;
    Ok(match v {
        Value::Array(mut items) if !items.is_empty() => Some(parse(items.swap_remove(0))),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn event<T: DeserializeOwned + Default>(object: Value) -> T {
        Event::read(&json!({ "created": 1_700_000_000, "data": { "object": object } })).data_object()
    }

    #[test]
    fn the_envelope() {
        let e = Event::read(
            &json!({ "id": "evt_1", "object": "event", "type": "charge.refunded", "livemode": 1 }),
        );
        assert_eq!(e.id.as_deref(), Some("evt_1"));
        assert_eq!(e.object.as_deref(), Some("event"));
        assert_eq!(e.type_.as_deref(), Some("charge.refunded"));
        assert_eq!(e.livemode, None);
    }

    #[test]
    fn wrong_types_read_as_absent() {
        let s: CheckoutSession =
            event(json!({ "amount_total": "500", "currency": 5, "payment_intent": 7, "metadata": "x" }));
        assert_eq!((s.amount_total, s.currency, s.payment_intent), (None, None, None));
        assert!(s.metadata.is_none());
        let none: Charge = Event::read(&json!({ "data": "not an object" })).data_object();
        assert_eq!(none.amount_refunded, None);
        assert_eq!(Event::read(&json!([1, 2])).created, None);
    }

    #[test]
    fn ids_are_strings_or_expanded_objects_and_never_empty() {
        let s: CheckoutSession = event(
            json!({ "id": "cs_1", "payment_intent": { "id": "pi_1" }, "customer": "", "subscription": {} }),
        );
        assert_eq!(s.id.as_deref(), Some("cs_1"));
        assert_eq!(s.payment_intent.as_deref(), Some("pi_1"));
        assert_eq!((s.customer, s.subscription), (None, None));
    }

    #[test]
    fn the_order_is_the_client_reference_else_the_metadata() {
        let s: CheckoutSession =
            event(json!({ "client_reference_id": "a", "metadata": { "order_id": "b" } }));
        assert_eq!(s.order_reference(), Some("a"));
        let s: CheckoutSession = event(json!({ "metadata": { "order_id": "b" } }));
        assert_eq!(s.order_reference(), Some("b"));
    }

    #[test]
    fn invoices_of_both_api_versions() {
        let new: Invoice = event(json!({
            "parent": { "subscription_details": { "subscription": "sub_1", "metadata": { "order_id": "o" } } },
            "lines": { "data": [{ "pricing": { "price_details": { "price": "price_1" } }, "period": { "end": 10 } }] },
        }));
        assert_eq!(new.subscription_id(), Some("sub_1"));
        assert_eq!(Metadata::order_id(new.subscription_metadata()), Some("o"));
        assert_eq!(new.price(), Some("price_1"));
        assert_eq!(new.period_end().map(|t| t.timestamp()), Some(10));
        let old: Invoice = event(json!({
            "subscription": { "id": "sub_2" },
            "subscription_details": { "metadata": { "order_id": "p" } },
            "period_end": 20,
            "lines": { "data": [{ "plan": { "id": "plan_2" } }, 5] },
        }));
        assert_eq!(old.subscription_id(), Some("sub_2"));
        assert_eq!(Metadata::order_id(old.subscription_metadata()), Some("p"));
        assert_eq!(old.price(), Some("plan_2"));
        assert_eq!(old.period_end().map(|t| t.timestamp()), Some(20));
    }

    #[test]
    fn subscription_period_end_per_item_first() {
        let s: Subscription = event(json!({
            "current_period_end": 20,
            "items": { "data": [{ "price": { "id": "price_1" }, "current_period_end": 10 }] },
        }));
        assert_eq!((s.price(), s.period_end().map(|t| t.timestamp())), (Some("price_1"), Some(10)));
        let s: Subscription = event(json!({ "current_period_end": 20, "items": { "data": [] } }));
        assert_eq!((s.price(), s.period_end().map(|t| t.timestamp())), (None, Some(20)));
    }

    #[test]
    fn inquiries_are_warning_statuses() {
        let d: Dispute = event(json!({ "status": "warning_closed" }));
        assert!(d.is_inquiry());
        let d: Dispute = event(json!({ "status": "won" }));
        assert!(!d.is_inquiry());
    }
}
