//! Settlement: one stored Stripe event applied in one PostgreSQL
//! transaction. The event row is locked first and marked processed in the
//! same transaction, so an event is applied once however often its job
//! runs; every credit movement is also keyed (`order:<id>`,
//! `refund:<order>:<cents>`, `dispute:<id>` ...) so two different events
//! meaning the same thing (the checkout and the first invoice of one
//! subscription) grant once. The order's state machine
//! ([`crate::orders::Status::can_become`]) decides what a late or
//! out-of-order event may still change.
//!
//! A business refusal (no order, unknown price, amount mismatch) marks the
//! event FAILED with its reason for admins and grants nothing; only
//! infrastructure errors are returned, to be retried by the job.
//!
//! One file an event family; each handler reads its event through
//! [`super::stripe`], takes its pure decision (unit-tested there) and
//! writes through the module that owns each table: `orders`,
//! `subscriptions`, `credits`.

mod checkout;
mod dispute;
mod invoice;
mod refund;
mod subscription;
mod verdict;

use chrono::Utc;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};

pub use self::verdict::Outcome;
use self::verdict::Verdict;
use super::stripe::Event;
use crate::credits;
use crate::db::Connection;
use crate::rows::StripeEvent;
use crate::schema::stripe_events;
use crate::{Error, Result};

/// What settling an event did.
#[derive(Debug)]
pub struct Settled {
    pub outcome: Outcome,
    /// The user whose balance it moved (for `creditsChanged`), if any.
    pub credited: Option<uuid::Uuid>,
}

pub async fn settle(conn: &mut Connection, event_id: &str) -> Result<Settled> {
    let (ev, verdict) = conn
        .transaction::<_, Error, _>(async |conn| {
            let ev: StripeEvent = stripe_events::table
                .find(event_id)
                .for_update()
                .select(StripeEvent::as_select())
                .first(conn)
                .await
                .optional()?
                .ok_or(Error::NotFound("stripe event"))?;
            if ev.processed_at.is_some() {
                return Ok((ev, None));
            }
            let verdict = match apply(conn, &ev).await {
                Ok(v) => v,
                // A ledger key reused with another amount: a real
                // inconsistency that no retry fixes; kept for admins.
                Err(Error::Conflict(m)) => Verdict::failed(m),
                Err(e) => return Err(e),
            };
            if let Some(why) = &verdict.wait {
                return Err(Error::NotYet(why.clone()));
            }
            let error = match &verdict.outcome {
                Outcome::Failed(reason) => Some(reason.clone()),
                _ => None,
            };
            diesel::update(stripe_events::table.find(event_id))
                .set((
                    stripe_events::status.eq(verdict.outcome.status()),
                    stripe_events::processed_at.eq(Utc::now()),
                    stripe_events::attempts.eq(stripe_events::attempts + 1),
                    stripe_events::last_error.eq(error),
                    stripe_events::order_id.eq(verdict.order_id),
                    stripe_events::user_id.eq(verdict.user_id),
                ))
                .execute(conn)
                .await?;
            Ok((ev, Some(verdict)))
        })
        .await?;
    let Some(v) = verdict else { return Ok(Settled { outcome: Outcome::AlreadySettled, credited: None }) };
    crate::metrics::event_settled(&ev.type_, v.outcome.status());
    audit(conn, &ev, &v).await;
    let credited = v.user_id.filter(|_| v.credits != 0);
    Ok(Settled { outcome: v.outcome, credited })
}

/// The audit line every settlement writes: one per event, with what it
/// changed and the balance it left.
async fn audit(conn: &mut Connection, ev: &StripeEvent, v: &Verdict) {
    let balance_after = match v.user_id {
        Some(u) => credits::account(conn, u).await.ok().map(|a| a.balance),
        None => None,
    };
    let (outcome, note) = match &v.outcome {
        Outcome::Processed(n) => ("processed", n.as_str()),
        Outcome::Ignored(n) => ("ignored", n.as_str()),
        Outcome::Failed(n) => ("failed", n.as_str()),
        Outcome::AlreadySettled => ("already settled", ""),
    };
    let order = v.order_id.map(|o| o.to_string());
    let user = v.user_id.map(|u| u.to_string());
    if matches!(v.outcome, Outcome::Failed(_)) {
        tracing::warn!(target: "mage::audit", event_id = %ev.id, event_type = %ev.type_, order_id = ?order,
            user_id = ?user, credits = v.credits, balance_after = ?balance_after, outcome, note, "stripe event settled");
    } else {
        tracing::info!(target: "mage::audit", event_id = %ev.id, event_type = %ev.type_, order_id = ?order,
            user_id = ?user, credits = v.credits, balance_after = ?balance_after, outcome, note, "stripe event settled");
    }
}

async fn apply(conn: &mut Connection, ev: &StripeEvent) -> Result<Verdict> {
    let event = Event::read(&ev.payload);
    match ev.type_.as_str() {
        "checkout.session.completed" | "checkout.session.async_payment_succeeded" => {
            checkout::completed(conn, ev, &event.data_object()).await
        }
        "checkout.session.async_payment_failed" | "checkout.session.expired" => {
            checkout::unpaid(conn, ev, &event.data_object()).await
        }
        "invoice.paid" | "invoice.payment_succeeded" => invoice::paid(conn, ev, &event.data_object()).await,
        "customer.subscription.updated" => subscription::updated(conn, ev, &event).await,
        "customer.subscription.deleted" => subscription::deleted(conn, &event).await,
        "charge.refunded" => refund::charge_refunded(conn, ev, &event.data_object()).await,
        "charge.dispute.created" => dispute::created(conn, ev, &event.data_object()).await,
        "charge.dispute.closed" => dispute::closed(conn, ev, &event.data_object()).await,
        other => Ok(Verdict::ignored(format!("Mage does not act on {other}"))),
    }
}
