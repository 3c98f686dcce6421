//! Webhook intake: a verified event is stored under its Stripe id (the
//! primary key makes a duplicate delivery a no-op) and its settlement
//! enqueued. Nothing else happens on the request path, so Stripe gets its
//! 200 in milliseconds.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde_json::Value;

use super::stripe::Event;
use crate::db::Connection;
use crate::enums::StripeEventStatus;
use crate::schema::stripe_events;
use crate::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Intake {
    /// First delivery: settle it.
    New,
    /// Seen before; `settled` says whether settlement already finished (a
    /// redelivery of an unsettled event enqueues it again, which repairs a
    /// lost enqueue).
    Duplicate { settled: bool },
}

/// The id, type and livemode of a raw event.
pub fn parse(payload: &[u8]) -> Result<(String, String, bool, Value)> {
    let v: Value = serde_json::from_slice(payload)
        .map_err(|e| Error::invalid("body", format!("not a JSON event: {e}")))?;
    let event = Event::read(&v);
    let id = event.id.filter(|id| id.starts_with("evt_"));
    match (id, event.type_) {
        (Some(id), Some(kind)) if event.object.as_deref() == Some("event") => {
            Ok((id, kind, event.livemode.unwrap_or(false), v))
        }
        _ => Err(Error::invalid("body", "not a Stripe event (id evt_..., type, object \"event\")")),
    }
}

/// Stores a verified event: its id, its type and whether it is new.
pub async fn store(conn: &mut Connection, payload: &[u8]) -> Result<(String, String, Intake)> {
    let (id, kind, live, v) = parse(payload)?;
    let inserted = diesel::insert_into(stripe_events::table)
        .values((
            stripe_events::id.eq(&id),
            stripe_events::type_.eq(&kind),
            stripe_events::livemode.eq(live),
            stripe_events::payload.eq(&v),
        ))
        .on_conflict_do_nothing()
        .execute(conn)
        .await?;
    if inserted == 1 {
        return Ok((id, kind, Intake::New));
    }
    let processed: Option<chrono::DateTime<chrono::Utc>> =
        stripe_events::table.find(&id).select(stripe_events::processed_at).first(conn).await?;
    Ok((id, kind, Intake::Duplicate { settled: processed.is_some() }))
}

/// Counts a failed settlement attempt and keeps its error for admins.
pub async fn record_failure(conn: &mut Connection, event_id: &str, error: &str) -> Result<()> {
    diesel::update(stripe_events::table.find(event_id))
        .filter(stripe_events::processed_at.is_null())
        .set((stripe_events::attempts.eq(stripe_events::attempts + 1), stripe_events::last_error.eq(error)))
        .execute(conn)
        .await?;
    Ok(())
}

/// Events stored before `before` and still unsettled (a lost enqueue, or
/// settlement jobs that died), oldest first, for the sweeper.
pub async fn unsettled(
    conn: &mut Connection,
    before: chrono::DateTime<chrono::Utc>,
    max_attempts: i32,
    limit: i64,
) -> Result<Vec<String>> {
    Ok(stripe_events::table
        .filter(stripe_events::processed_at.is_null())
        .filter(stripe_events::received_at.lt(before))
        .filter(stripe_events::attempts.lt(max_attempts))
        .order(stripe_events::received_at.asc())
        .limit(limit)
        .select(stripe_events::id)
        .load(conn)
        .await?)
}

/// Stored events, newest first, optionally only those of one status
/// (`received`, `processed`, `ignored`, `failed`), for admins.
pub async fn list(
    conn: &mut Connection,
    status: Option<&str>,
    limit: i64,
) -> Result<Vec<crate::rows::StripeEvent>> {
    let mut q = stripe_events::table
        .order((stripe_events::received_at.desc(), stripe_events::id.desc()))
        .limit(limit)
        .select(crate::rows::StripeEvent::as_select())
        .into_boxed();
    if let Some(s) = status {
        q = q.filter(stripe_events::status.eq(s));
    }
    Ok(q.load(conn).await?)
}

/// Makes a stored event settleable again, for an admin's replay after the
/// cause of its failure was fixed (a plan price configured, say). A FAILED
/// event is reopened; an unsettled one gets its attempts back (so the
/// sweeper retries it too); a processed or ignored one is left as it is:
/// applying an event twice is what settlement exists to prevent. Returns
/// the event as it now stands and whether it needs a settlement job.
/// Settling a reopened event is still exactly-once: the event row is
/// locked and marked in the settling transaction, and every credit movement
/// is keyed.
pub async fn reopen(conn: &mut Connection, event_id: &str) -> Result<(crate::rows::StripeEvent, bool)> {
    use diesel_async::AsyncConnection;
    conn.transaction::<_, Error, _>(async |conn| {
        let ev: crate::rows::StripeEvent = stripe_events::table
            .find(event_id)
            .for_update()
            .select(crate::rows::StripeEvent::as_select())
            .first(conn)
            .await
            .optional()?
            .ok_or(Error::NotFound("stripe event"))?;
        let reopen = ev.status == StripeEventStatus::Failed || ev.processed_at.is_none();
        if !reopen {
            return Ok((ev, false));
        }
        let ev = diesel::update(stripe_events::table.find(event_id))
            .set((
                stripe_events::status.eq(StripeEventStatus::Received),
                stripe_events::processed_at.eq(None::<chrono::DateTime<chrono::Utc>>),
                stripe_events::attempts.eq(0),
            ))
            .returning(crate::rows::StripeEvent::as_returning())
            .get_result(conn)
            .await?;
        Ok((ev, true))
    })
    .await
}
