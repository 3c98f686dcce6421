//! `checkout.session.*`: the session Mage created for an order completed
//! (paid now, or later by an asynchronous method), failed or expired.

use crate::Result;
use crate::credits::{self, GrantSource, NewGrant};
use crate::db::Connection;
use crate::orders::{self, Status, StripeIds};
use crate::payments::stripe::CheckoutSession;
use crate::rows::{Order, StripeEvent};

use super::subscription;
use super::verdict::{Verdict, order_named};

/// What a completed session means for its order.
#[derive(Debug, PartialEq, Eq)]
enum Completed {
    /// It says another amount than the order: nothing is granted.
    Mismatch(String),
    /// Completed with a method that pays later (a bank debit, say).
    AwaitingPayment,
    Paid,
}

fn completed_step(order: &Order, s: &CheckoutSession) -> Completed {
    if let Some(why) = amount_mismatch(order, s) {
        return Completed::Mismatch(why);
    }
    match s.payment_status.as_deref() {
        Some("paid" | "no_payment_required") => Completed::Paid,
        _ => Completed::AwaitingPayment,
    }
}

fn amount_mismatch(order: &Order, s: &CheckoutSession) -> Option<String> {
    let currency = s.currency.as_deref().map(str::to_lowercase);
    if s.amount_total == Some(order.total_cents) && currency.as_deref() == Some(order.currency.as_str()) {
        return None;
    }
    Some(format!(
        "amount mismatch: the session says {} {}, the order is {} {}",
        s.amount_total.map_or("no amount".into(), |a| a.to_string()),
        currency.unwrap_or_default(),
        order.total_cents,
        order.currency
    ))
}

/// How a session that brought no money ends its order: the status, the
/// order's failure reason and the event's note.
fn unpaid_end(event_type: &str) -> (Status, &'static str, &'static str) {
    if event_type == "checkout.session.async_payment_failed" {
        (Status::Failed, "the payment failed", "payment failed; order FAILED")
    } else {
        (Status::Canceled, "checkout expired", "checkout expired; order CANCELED")
    }
}

/// The order a session is about, locked, with the session's Stripe ids kept.
async fn session_order(
    conn: &mut Connection,
    s: &CheckoutSession,
) -> Result<std::result::Result<Order, Verdict>> {
    let order = match order_named(conn, s.order_reference()).await? {
        Ok(o) => o,
        Err(v) => return Ok(Err(v)),
    };
    let ids = StripeIds {
        checkout_session: s.id.clone(),
        payment_intent: s.payment_intent.clone(),
        customer: s.customer.clone(),
        subscription: s.subscription.clone(),
    };
    Ok(Ok(orders::remember_stripe_ids(conn, &order, ids).await?))
}

/// `checkout.session.completed` / `async_payment_succeeded`.
pub async fn completed(conn: &mut Connection, ev: &StripeEvent, s: &CheckoutSession) -> Result<Verdict> {
    let order = match session_order(conn, s).await? {
        Ok(o) => o,
        Err(v) => return Ok(v),
    };
    match completed_step(&order, s) {
        Completed::Mismatch(why) => Ok(Verdict::failed(why).about(&order)),
        Completed::AwaitingPayment => {
            Ok(Verdict::done(&order, 0, "checkout completed; waiting for the asynchronous payment"))
        }
        Completed::Paid => pay(conn, ev, &order, s).await,
    }
}

/// `checkout.session.async_payment_failed` / `expired`.
pub async fn unpaid(conn: &mut Connection, ev: &StripeEvent, s: &CheckoutSession) -> Result<Verdict> {
    let order = match session_order(conn, s).await? {
        Ok(o) => o,
        Err(v) => return Ok(v),
    };
    let (to, reason, note) = unpaid_end(&ev.type_);
    Ok(match orders::end_unpaid(conn, &order, to, reason).await? {
        true => Verdict::done(&order, 0, note),
        false => Verdict::ignored(format!("order is already {}", order.status)).about(&order),
    })
}

/// The money arrived: PAID, and the credits granted once.
async fn pay(conn: &mut Connection, ev: &StripeEvent, order: &Order, s: &CheckoutSession) -> Result<Verdict> {
    let status = order.status();
    if !status.was_paid() {
        if status != Status::Pending {
            tracing::warn!(order_id = %order.id, status = %order.status, "payment for an order that was not pending");
        }
        orders::mark_paid(conn, order).await?;
    }
    if order.is_subscription() {
        let Some(sub_id) = s.subscription.clone().or_else(|| order.stripe_subscription_id.clone()) else {
            return Ok(Verdict::failed("a subscription checkout without a subscription id").about(order));
        };
        let sub = subscription::of_order(conn, &sub_id, order).await?;
        let granted = subscription::first_period(conn, ev, &sub, order.credits, None).await?;
        return Ok(Verdict::done(order, granted, format!("plan order paid; subscription {sub_id}")));
    }
    let entry = credits::grant(
        conn,
        NewGrant {
            user_id: order.user_id,
            amount: order.credits,
            source: GrantSource::Purchase,
            expires_at: None,
            order_id: Some(order.id),
            stripe_event_id: Some(ev.id.clone()),
            memo: Some(format!("order {}", order.id)),
            idempotency_key: format!("order:{}", order.id),
        },
    )
    .await?;
    // Granted by this event, or by an earlier one under the same key.
    let granted = if entry.stripe_event_id.as_deref() == Some(ev.id.as_str()) { order.credits } else { 0 };
    Ok(Verdict::done(order, granted, "order paid; credits granted"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orders::fixture;

    fn session(amount: Option<i64>, currency: &str, payment_status: &str) -> CheckoutSession {
        CheckoutSession {
            amount_total: amount,
            currency: Some(currency.to_owned()),
            payment_status: Some(payment_status.to_owned()),
            ..CheckoutSession::default()
        }
    }

    #[test]
    fn a_paid_session_of_the_order_amount_pays_it() {
        let order = fixture(Status::Pending, 500, 50);
        assert_eq!(completed_step(&order, &session(Some(500), "USD", "paid")), Completed::Paid);
        assert_eq!(
            completed_step(&order, &session(Some(500), "usd", "no_payment_required")),
            Completed::Paid
        );
    }

    #[test]
    fn an_unpaid_session_waits_for_its_asynchronous_payment() {
        let order = fixture(Status::Pending, 500, 50);
        assert_eq!(completed_step(&order, &session(Some(500), "usd", "unpaid")), Completed::AwaitingPayment);
    }

    #[test]
    fn another_amount_or_currency_grants_nothing() {
        let order = fixture(Status::Pending, 500, 50);
        assert_eq!(
            completed_step(&order, &session(Some(499), "usd", "paid")),
            Completed::Mismatch("amount mismatch: the session says 499 usd, the order is 500 usd".into())
        );
        assert!(matches!(completed_step(&order, &session(Some(500), "eur", "paid")), Completed::Mismatch(_)));
        assert_eq!(
            completed_step(&order, &CheckoutSession::default()),
            Completed::Mismatch("amount mismatch: the session says no amount , the order is 500 usd".into())
        );
    }

    #[test]
    fn a_failed_payment_fails_the_order_and_an_expired_session_cancels_it() {
        assert_eq!(unpaid_end("checkout.session.async_payment_failed").0, Status::Failed);
        assert_eq!(unpaid_end("checkout.session.expired").0, Status::Canceled);
        for (to, _, _) in
            [unpaid_end("checkout.session.async_payment_failed"), unpaid_end("checkout.session.expired")]
        {
            assert!(Status::Pending.can_become(to));
        }
    }
}
