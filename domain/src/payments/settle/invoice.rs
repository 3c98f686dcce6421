//! `invoice.paid` / `invoice.payment_succeeded`: a subscription's first
//! invoice (the same payment as its checkout) or a renewal.

use uuid::Uuid;

use crate::Result;
use crate::credits;
use crate::db::Connection;
use crate::payments::stripe::Invoice;
use crate::rows::{Order, StripeEvent};
use crate::{orders, subscriptions};

use super::subscription::{self, PlanGrant};
use super::verdict::Verdict;

/// What an invoice pays for, by its billing reason.
#[derive(Debug, PartialEq, Eq)]
enum Paid {
    /// The first period, which the checkout event may have settled already.
    First,
    Renewal,
    /// Plan changes are settled from `customer.subscription.updated`.
    Other(String),
}

fn paid_for(billing_reason: Option<&str>) -> Paid {
    match billing_reason {
        Some("subscription_create") => Paid::First,
        Some("subscription_cycle") => Paid::Renewal,
        other => Paid::Other(format!(
            "invoice for {}: plan changes are settled from customer.subscription.updated",
            other.unwrap_or("no billing reason")
        )),
    }
}

/// The checks of the checkout event, on the first invoice: what was paid
/// is what the order says (what the invoice leaves out is not checked).
fn first_invoice_mismatch(order: &Order, inv: &Invoice, invoice_id: &str) -> Option<String> {
    let paid = inv.amount_paid.or(inv.total);
    let currency = inv.currency.as_deref().map(str::to_lowercase);
    let same =
        paid.is_none_or(|p| p == order.total_cents) && currency.as_ref().is_none_or(|c| *c == order.currency);
    (!same).then(|| {
        format!(
            "amount mismatch: invoice {invoice_id} paid {} {}, the order is {} {}",
            paid.unwrap_or_default(),
            currency.unwrap_or_default(),
            order.total_cents,
            order.currency
        )
    })
}

pub async fn paid(conn: &mut Connection, ev: &StripeEvent, inv: &Invoice) -> Result<Verdict> {
    let Some(sub_id) = inv.subscription_id() else {
        return Ok(Verdict::ignored("not a subscription invoice"));
    };
    let sub = match subscription::locate(conn, sub_id, inv.subscription_metadata()).await? {
        Ok(s) => s,
        Err(v) => return Ok(v),
    };
    let plan = match subscription::plan(conn, inv.price(), &sub).await? {
        Ok(p) => p,
        Err(v) => return Ok(v),
    };
    let period_end = inv.period_end();
    let invoice_id = inv.id.as_deref().unwrap_or(&ev.id);
    let granted = match paid_for(inv.billing_reason.as_deref()) {
        Paid::First => {
            let order = match sub.order_id {
                Some(id) => orders::lock(conn, id).await?,
                None => None,
            };
            let mut amount = plan.credits;
            if let Some(order) = &order {
                if let Some(why) = first_invoice_mismatch(order, inv, invoice_id) {
                    return Ok(Verdict::failed(why).about_sub(&sub));
                }
                // The first invoice proves the payment as well as the
                // checkout event does.
                if !order.status().was_paid() {
                    orders::mark_paid(conn, order).await?;
                }
                // What the order was sold for, as the checkout grants it.
                amount = order.credits;
            }
            subscription::first_period(conn, ev, &sub, amount, period_end).await?
        }
        Paid::Renewal => {
            let key = format!("invoice:{invoice_id}");
            if credits::has_entry(conn, sub.user_id, &key).await? {
                let note = format!("invoice {invoice_id} already applied");
                return Ok(Verdict::ignored(note).about_sub(&sub));
            }
            let (grant_id, moved) = subscription::replace_grant(
                conn,
                ev,
                &sub,
                PlanGrant {
                    plan: &plan,
                    expires_at: period_end,
                    memo: format!("subscription {}: invoice {invoice_id}", sub.id),
                    key,
                    expire_key: |g: Uuid| format!("expire:{g}"),
                },
            )
            .await?;
            subscriptions::set_period(conn, &sub, &plan.id, subscriptions::ACTIVE, grant_id, period_end)
                .await?;
            moved
        }
        Paid::Other(note) => return Ok(Verdict::ignored(note).about_sub(&sub)),
    };
    Ok(Verdict::done_sub(&sub, granted, format!("subscription {} invoice {invoice_id} paid", sub.id)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orders::{Status, fixture};

    #[test]
    fn the_billing_reason_says_what_is_paid() {
        assert_eq!(paid_for(Some("subscription_create")), Paid::First);
        assert_eq!(paid_for(Some("subscription_cycle")), Paid::Renewal);
        assert_eq!(
            paid_for(Some("subscription_update")),
            Paid::Other(
                "invoice for subscription_update: plan changes are settled from customer.subscription.updated"
                    .into()
            )
        );
        assert!(matches!(paid_for(None), Paid::Other(n) if n.starts_with("invoice for no billing reason")));
    }

    #[test]
    fn a_first_invoice_must_pay_what_the_order_says() {
        let order = fixture(Status::Pending, 900, 90);
        let inv = |paid, total, currency: Option<&str>| Invoice {
            amount_paid: paid,
            total,
            currency: currency.map(str::to_owned),
            ..Invoice::default()
        };
        assert_eq!(first_invoice_mismatch(&order, &inv(Some(900), None, Some("USD")), "in_1"), None);
        assert_eq!(first_invoice_mismatch(&order, &inv(None, Some(900), None), "in_1"), None);
        // Nothing said, nothing contradicted.
        assert_eq!(first_invoice_mismatch(&order, &inv(None, None, None), "in_1"), None);
        assert_eq!(
            first_invoice_mismatch(&order, &inv(Some(100), Some(900), Some("usd")), "in_1"),
            Some("amount mismatch: invoice in_1 paid 100 usd, the order is 900 usd".into())
        );
        assert!(first_invoice_mismatch(&order, &inv(Some(900), None, Some("eur")), "in_1").is_some());
    }
}
