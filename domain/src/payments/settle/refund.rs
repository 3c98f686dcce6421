//! `charge.refunded`: money given back takes back the credits it bought;
//! also the clawback that disputes use.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use crate::Result;
use crate::credits::{self, Clawback};
use crate::db::Connection;
use crate::orders::{self, Status};
use crate::payments::stripe::Charge;
use crate::rows::{Order, StripeEvent};
use crate::schema::credit_grants;

use super::verdict::Verdict;

/// What a refund event does to its (paid) order.
#[derive(Debug, PartialEq, Eq)]
enum Refund {
    /// Its checkout is not settled yet: settle it later.
    NotPaidYet(String),
    AlreadyApplied(String),
    /// Refunds now total `refunded` cents; `take` credits go back.
    Apply {
        refunded: i64,
        take: i64,
        status: Status,
    },
}

/// `amount_refunded` is the charge's running total: each refund is applied
/// once, in whatever order the events come. A refund during a dispute
/// leaves the order DISPUTED (and takes only what the dispute left).
fn refund(order: &Order, amount_refunded: Option<i64>) -> Refund {
    if !order.status().was_paid() {
        return Refund::NotPaidYet(format!("order {} is {}, not paid yet", order.id, order.status));
    }
    let refunded = amount_refunded.unwrap_or(0).clamp(0, order.total_cents);
    if refunded <= order.refunded_cents {
        return Refund::AlreadyApplied(format!("refunds up to {refunded} cents already applied"));
    }
    let owed = order.credits_for(refunded) - order.credits_for(order.refunded_cents);
    let take = owed.clamp(0, order.credits_left().max(0));
    let status = if order.status() == Status::Disputed {
        Status::Disputed
    } else if refunded == order.total_cents {
        Status::Refunded
    } else {
        Status::PartiallyRefunded
    };
    Refund::Apply { refunded, take, status }
}

pub async fn charge_refunded(conn: &mut Connection, ev: &StripeEvent, charge: &Charge) -> Result<Verdict> {
    let Some(pi) = charge.payment_intent.as_deref() else {
        return Ok(Verdict::failed("a refunded charge without a payment intent"));
    };
    let Some(order) = orders::lock_by_payment_intent(conn, pi).await? else {
        // Its checkout event may not be settled yet.
        return Ok(Verdict::not_yet(format!("no order paid with payment intent {pi} yet")));
    };
    match refund(&order, charge.amount_refunded) {
        Refund::NotPaidYet(why) => Ok(Verdict::not_yet(why)),
        Refund::AlreadyApplied(note) => Ok(Verdict::ignored(note).about(&order)),
        Refund::Apply { refunded, take, status } => {
            claw_back(conn, ev, &order, take, format!("refund:{}:{refunded}", order.id)).await?;
            orders::record_refund(conn, &order, refunded, take, status).await?;
            Ok(Verdict::done(&order, -take, format!("refunded {refunded} of {} cents", order.total_cents)))
        }
    }
}

/// The purchase grant of an order (a clawback empties it first).
async fn purchase_grant(conn: &mut Connection, order_id: Uuid) -> Result<Option<Uuid>> {
    Ok(credit_grants::table
        .filter(credit_grants::order_id.eq(order_id))
        .order(credit_grants::created_at.asc())
        .select(credit_grants::id)
        .first(conn)
        .await
        .optional()?)
}

/// Takes back `amount` credits of an order, once per `key`.
pub async fn claw_back(
    conn: &mut Connection,
    ev: &StripeEvent,
    order: &Order,
    amount: i64,
    key: String,
) -> Result<()> {
    if amount <= 0 {
        return Ok(());
    }
    let grant_id = purchase_grant(conn, order.id).await?;
    credits::clawback(
        conn,
        Clawback {
            user_id: order.user_id,
            amount,
            grant_id,
            order_id: Some(order.id),
            stripe_event_id: Some(ev.id.clone()),
            memo: Some(format!("{} on order {}", ev.type_, order.id)),
            idempotency_key: key,
        },
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orders::fixture;

    #[test]
    fn a_refund_before_its_payment_waits() {
        for s in [Status::Pending, Status::Failed, Status::Canceled] {
            assert!(matches!(refund(&fixture(s, 1000, 100), Some(500)), Refund::NotPaidYet(_)));
        }
    }

    #[test]
    fn refunds_apply_their_running_total_once() {
        let mut order = fixture(Status::Paid, 1000, 100);
        assert_eq!(
            refund(&order, Some(300)),
            Refund::Apply { refunded: 300, take: 30, status: Status::PartiallyRefunded }
        );
        order.refunded_cents = 300;
        order.credits_clawed_back = 30;
        order.status = Status::PartiallyRefunded;
        assert_eq!(
            refund(&order, Some(300)),
            Refund::AlreadyApplied("refunds up to 300 cents already applied".into())
        );
        assert!(matches!(refund(&order, Some(200)), Refund::AlreadyApplied(_)));
        assert_eq!(
            refund(&order, Some(5000)),
            Refund::Apply { refunded: 1000, take: 70, status: Status::Refunded }
        );
        assert!(matches!(refund(&order, None), Refund::AlreadyApplied(_)));
    }

    #[test]
    fn a_refund_takes_no_more_than_is_left() {
        let mut order = fixture(Status::Paid, 1000, 100);
        order.credits_clawed_back = 95;
        assert_eq!(
            refund(&order, Some(1000)),
            Refund::Apply { refunded: 1000, take: 5, status: Status::Refunded }
        );
        order.credits_clawed_back = 120;
        assert_eq!(
            refund(&order, Some(1000)),
            Refund::Apply { refunded: 1000, take: 0, status: Status::Refunded }
        );
    }

    #[test]
    fn a_disputed_order_stays_disputed() {
        let mut order = fixture(Status::Disputed, 1000, 100);
        order.credits_clawed_back = 100;
        assert_eq!(
            refund(&order, Some(400)),
            Refund::Apply { refunded: 400, take: 0, status: Status::Disputed }
        );
    }
}
