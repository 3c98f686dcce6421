//! `charge.dispute.*`: a chargeback withdraws the money until it is won, so
//! the credits it bought go while it is open and come back if it is won.

use crate::Result;
use crate::credits::{self, GrantSource, NewGrant};
use crate::db::Connection;
use crate::orders::{self, Status};
use crate::payments::stripe::Dispute;
use crate::rows::{Order, StripeEvent};

use super::refund::claw_back;
use super::verdict::Verdict;

/// What an opened dispute does to its order.
#[derive(Debug, PartialEq, Eq)]
enum Opening {
    /// An inquiry (`warning_*`) withdraws no money.
    Inquiry,
    NotPaidYet(String),
    AlreadyDisputed(String),
    /// The disputed money's credits go (all that is left of them for a
    /// whole-amount dispute).
    Take(i64),
}

fn opening(order: &Order, d: &Dispute) -> Opening {
    if d.is_inquiry() {
        return Opening::Inquiry;
    }
    if !order.status().was_paid() {
        return Opening::NotPaidYet(format!("order {} is {}, not paid yet", order.id, order.status));
    }
    if !order.status().can_become(Status::Disputed) {
        return Opening::AlreadyDisputed(format!("order is already {}", order.status));
    }
    let disputed = d.amount.unwrap_or(order.total_cents).clamp(0, order.total_cents);
    Opening::Take(order.credits_for(disputed).min(order.credits_left()).max(0))
}

/// What a closed dispute does to its order.
#[derive(Debug, PartialEq, Eq)]
enum Closing {
    Inquiry,
    NotDisputed(String),
    /// Lost (or another final status): the credits taken stay taken.
    Lost(String),
    /// Won: `restore` credits come back, and the order is what its refunds
    /// made of it.
    Won {
        restore: i64,
        status: Status,
    },
}

/// Refunds stand whatever the dispute's outcome: a won dispute gives back
/// only what the unrefunded part of the payment is worth (a refund made
/// during the dispute took nothing, the dispute had taken it already).
fn closing(order: &Order, d: &Dispute) -> Closing {
    if d.is_inquiry() {
        return Closing::Inquiry;
    }
    if order.status() != Status::Disputed {
        return Closing::NotDisputed(format!("order is {}, not disputed", order.status));
    }
    let outcome = d.status.as_deref().unwrap_or("unknown");
    if outcome != "won" {
        return Closing::Lost(outcome.to_owned());
    }
    let kept_by_refunds = order.credits_for(order.refunded_cents);
    let restore = (order.credits_clawed_back - kept_by_refunds).clamp(0, order.disputed_credits.max(0));
    let status = match order.refunded_cents {
        0 => Status::Paid,
        r if r >= order.total_cents => Status::Refunded,
        _ => Status::PartiallyRefunded,
    };
    Closing::Won { restore, status }
}

/// The disputed order and the dispute's id, or the verdict if either is
/// missing.
async fn disputed_order(
    conn: &mut Connection,
    d: &Dispute,
) -> Result<std::result::Result<(Order, String), Verdict>> {
    let Some(pi) = d.payment_intent.as_deref() else {
        return Ok(Err(Verdict::failed("a dispute without a payment intent")));
    };
    let Some(order) = orders::lock_by_payment_intent(conn, pi).await? else {
        return Ok(Err(Verdict::not_yet(format!("no order paid with payment intent {pi} yet"))));
    };
    match &d.id {
        Some(id) => Ok(Ok((order, id.clone()))),
        None => Ok(Err(Verdict::failed("a dispute without an id"))),
    }
}

pub async fn created(conn: &mut Connection, ev: &StripeEvent, d: &Dispute) -> Result<Verdict> {
    let (order, dispute_id) = match disputed_order(conn, d).await? {
        Ok(found) => found,
        Err(v) => return Ok(v),
    };
    match opening(&order, d) {
        Opening::Inquiry => {
            Ok(Verdict::ignored("an inquiry (warning_*): no money is withdrawn").about(&order))
        }
        Opening::NotPaidYet(why) => Ok(Verdict::not_yet(why)),
        Opening::AlreadyDisputed(note) => Ok(Verdict::ignored(note).about(&order)),
        Opening::Take(take) => {
            claw_back(conn, ev, &order, take, format!("dispute:{dispute_id}")).await?;
            orders::open_dispute(conn, &order, take).await?;
            Ok(Verdict::done(&order, -take, format!("dispute {dispute_id} opened")))
        }
    }
}

pub async fn closed(conn: &mut Connection, ev: &StripeEvent, d: &Dispute) -> Result<Verdict> {
    let (order, dispute_id) = match disputed_order(conn, d).await? {
        Ok(found) => found,
        Err(v) => return Ok(v),
    };
    match closing(&order, d) {
        Closing::Inquiry => Ok(Verdict::ignored("an inquiry closed: no money was withdrawn").about(&order)),
        Closing::NotDisputed(note) => Ok(Verdict::ignored(note).about(&order)),
        Closing::Lost(outcome) => {
            Ok(Verdict::done(&order, 0, format!("dispute {dispute_id} closed: {outcome}")))
        }
        Closing::Won { restore, status } => {
            if restore > 0 {
                credits::grant(
                    conn,
                    NewGrant {
                        user_id: order.user_id,
                        amount: restore,
                        source: GrantSource::Purchase,
                        expires_at: None,
                        order_id: Some(order.id),
                        stripe_event_id: Some(ev.id.clone()),
                        memo: Some(format!("dispute {dispute_id} won")),
                        idempotency_key: format!("dispute:{dispute_id}:won"),
                    },
                )
                .await?;
            }
            orders::close_dispute(conn, &order, restore, status).await?;
            Ok(Verdict::done(&order, restore, format!("dispute {dispute_id} won: credits restored")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orders::fixture;

    fn dispute(status: &str, amount: Option<i64>) -> Dispute {
        Dispute { status: Some(status.into()), amount, ..Dispute::default() }
    }

    #[test]
    fn an_inquiry_withdraws_nothing() {
        let order = fixture(Status::Paid, 1000, 100);
        assert_eq!(opening(&order, &dispute("warning_needs_response", None)), Opening::Inquiry);
        assert_eq!(closing(&order, &dispute("warning_closed", None)), Closing::Inquiry);
    }

    #[test]
    fn a_dispute_before_its_payment_waits() {
        let order = fixture(Status::Pending, 1000, 100);
        assert!(matches!(opening(&order, &dispute("needs_response", None)), Opening::NotPaidYet(_)));
    }

    #[test]
    fn a_dispute_takes_what_the_disputed_money_bought_and_opens_once() {
        let mut order = fixture(Status::Paid, 1000, 100);
        assert_eq!(opening(&order, &dispute("needs_response", None)), Opening::Take(100));
        assert_eq!(opening(&order, &dispute("needs_response", Some(250))), Opening::Take(25));
        order.credits_clawed_back = 90;
        order.status = Status::PartiallyRefunded;
        assert_eq!(opening(&order, &dispute("needs_response", None)), Opening::Take(10));
        order.status = Status::Disputed;
        assert_eq!(
            opening(&order, &dispute("needs_response", None)),
            Opening::AlreadyDisputed("order is already disputed".into())
        );
    }

    #[test]
    fn only_a_disputed_order_closes_a_dispute() {
        let order = fixture(Status::Paid, 1000, 100);
        assert_eq!(
            closing(&order, &dispute("won", None)),
            Closing::NotDisputed("order is paid, not disputed".into())
        );
    }

    #[test]
    fn a_lost_dispute_keeps_the_credits_taken() {
        let order = fixture(Status::Disputed, 1000, 100);
        assert_eq!(closing(&order, &dispute("lost", None)), Closing::Lost("lost".into()));
        assert_eq!(closing(&order, &Dispute::default()), Closing::Lost("unknown".into()));
    }

    #[test]
    fn a_won_dispute_restores_what_refunds_did_not_take() {
        let mut order = fixture(Status::Disputed, 1000, 100);
        order.credits_clawed_back = 100;
        order.disputed_credits = 100;
        assert_eq!(
            closing(&order, &dispute("won", None)),
            Closing::Won { restore: 100, status: Status::Paid }
        );
        order.refunded_cents = 400;
        assert_eq!(
            closing(&order, &dispute("won", None)),
            Closing::Won { restore: 60, status: Status::PartiallyRefunded }
        );
        order.refunded_cents = 1000;
        assert_eq!(
            closing(&order, &dispute("won", None)),
            Closing::Won { restore: 0, status: Status::Refunded }
        );
    }
}
