//! Webhook intake: a verified event is stored under its Stripe id (the
//! primary key makes a duplicate delivery a no-op) and its settlement
//! enqueued. Nothing else happens on the request path, so Stripe gets its
//! 200 in milliseconds.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde_json::Value;

use crate::db::Connection;
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
    let id = v["id"].as_str().filter(|id| id.starts_with("evt_")).map(str::to_owned);
    let kind = v["type"].as_str().map(str::to_owned);
    match (id, kind) {
        (Some(id), Some(kind)) if v["object"] == "event" => {
            let live = v["livemode"].as_bool().unwrap_or(false);
            Ok((id, kind, live, v))
        }
        _ => Err(Error::invalid("body", "not a Stripe event (id evt_..., type, object \"event\")")),
    }
}

pub async fn store(conn: &mut Connection, payload: &[u8]) -> Result<(String, Intake)> {
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
        return Ok((id, Intake::New));
    }
    let processed: Option<chrono::DateTime<chrono::Utc>> =
        stripe_events::table.find(&id).select(stripe_events::processed_at).first(conn).await?;
    Ok((id, Intake::Duplicate { settled: processed.is_some() }))
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
