//! The outbox side: fanning an event out into deliveries, finding events
//! a listener missed, test events, pruning.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Text, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, RunQueryDsl};
use uuid::Uuid;

use super::EventType;
use crate::db::Connection;
use crate::rows::{WebhookEndpoint, WebhookEvent};
use crate::schema::{webhook_deliveries, webhook_events};
use crate::{Error, Result};

/// The NOTIFY channel the outbox triggers signal on (payload: the event id).
pub const CHANNEL: &str = "mage_webhook_events";

/// Events and their delivery log are kept this long.
pub const RETENTION: chrono::Duration = chrono::Duration::days(30);

#[derive(QueryableByName)]
struct Id {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
}

/// Fans one event out, once: renders its body (`render`: the payload as
/// sent, the same bytes on every attempt), then one PENDING delivery per
/// enabled endpoint of its user listening for its type, due now. Returns
/// the new deliveries; none when another worker fanned it out already (the
/// event row is locked, so two listeners never both do).
pub async fn fan_out(
    conn: &mut Connection,
    event_id: Uuid,
    render: impl FnOnce(&WebhookEvent) -> Result<String> + Send,
) -> Result<Vec<Uuid>> {
    conn.transaction::<_, Error, _>(async |conn| {
        let event: Option<WebhookEvent> = webhook_events::table
            .find(event_id)
            .filter(webhook_events::fanned_out_at.is_null())
            .for_update()
            .skip_locked()
            .select(WebhookEvent::as_select())
            .first(conn)
            .await
            .optional()?;
        let Some(event) = event else { return Ok(Vec::new()) };
        let body = render(&event)?;
        diesel::update(webhook_events::table.find(event_id))
            .set((webhook_events::body.eq(&body), webhook_events::fanned_out_at.eq(Utc::now())))
            .execute(conn)
            .await?;
        let ids: Vec<Id> = diesel::sql_query(
            "INSERT INTO webhook_deliveries (id, event_id, endpoint_id, next_attempt_at)
             SELECT gen_random_uuid(), $1, e.id, now() FROM webhook_endpoints e
              WHERE e.user_id = $2 AND e.enabled AND $3 = ANY (e.events)
             ON CONFLICT (event_id, endpoint_id) DO NOTHING
             RETURNING id",
        )
        .bind::<SqlUuid, _>(event.id)
        .bind::<SqlUuid, _>(event.user_id)
        .bind::<Text, _>(&event.event_type)
        .load(conn)
        .await?;
        Ok(ids.into_iter().map(|i| i.id).collect())
    })
    .await
}

/// Events not fanned out `grace` after they were written: their listener
/// missed them (it was down, or its connection dropped).
pub async fn unfanned(conn: &mut Connection, grace: chrono::Duration, limit: i64) -> Result<Vec<Uuid>> {
    Ok(webhook_events::table
        .filter(webhook_events::fanned_out_at.is_null())
        .filter(webhook_events::created_at.lt(Utc::now() - grace))
        .order(webhook_events::created_at.asc())
        .limit(limit)
        .select(webhook_events::id)
        .load(conn)
        .await?)
}

/// A `webhook.test` event for one endpoint, fanned out to it alone; returns
/// the delivery's id. `render` makes the body from the event.
pub async fn test_event(
    conn: &mut Connection,
    endpoint: &WebhookEndpoint,
    render: impl FnOnce(&WebhookEvent) -> Result<String> + Send,
) -> Result<Uuid> {
    conn.transaction::<_, Error, _>(async |conn| {
        let data = serde_json::json!({ "endpointId": endpoint.id.to_string(), "url": endpoint.url });
        let event: WebhookEvent = diesel::insert_into(webhook_events::table)
            .values((
                webhook_events::id.eq(Uuid::now_v7()),
                webhook_events::user_id.eq(endpoint.user_id),
                webhook_events::event_type.eq(EventType::Test.as_str()),
                webhook_events::data.eq(data),
                webhook_events::fanned_out_at.eq(Utc::now()),
            ))
            .returning(WebhookEvent::as_returning())
            .get_result(conn)
            .await?;
        let body = render(&event)?;
        diesel::update(webhook_events::table.find(event.id))
            .set(webhook_events::body.eq(&body))
            .execute(conn)
            .await?;
        Ok(diesel::insert_into(webhook_deliveries::table)
            .values((
                webhook_deliveries::id.eq(Uuid::now_v7()),
                webhook_deliveries::event_id.eq(event.id),
                webhook_deliveries::endpoint_id.eq(endpoint.id),
                webhook_deliveries::next_attempt_at.eq(Utc::now()),
            ))
            .returning(webhook_deliveries::id)
            .get_result(conn)
            .await?)
    })
    .await
}

/// Deletes events older than [`RETENTION`] that nothing is still trying to
/// deliver, with their deliveries and attempts (bodies included).
pub async fn prune(conn: &mut Connection, now: DateTime<Utc>, limit: i64) -> Result<usize> {
    Ok(diesel::sql_query(
        "DELETE FROM webhook_events WHERE id IN (
           SELECT e.id FROM webhook_events e
            WHERE e.created_at < $1
              AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d
                               WHERE d.event_id = e.id AND d.status = 'pending')
            ORDER BY e.created_at LIMIT $2)",
    )
    .bind::<diesel::sql_types::Timestamptz, _>(now - RETENTION)
    .bind::<diesel::sql_types::BigInt, _>(limit)
    .execute(conn)
    .await?)
}

/// A connection of its own (taken out of the pool for good) listening on
/// [`CHANNEL`]: read its `notifications_stream()`; each payload is an event
/// id. A dropped connection ends the stream; listen again then.
pub async fn listen(pool: &crate::db::DbPool) -> Result<diesel_async::AsyncPgConnection> {
    let conn = pool.get().await?;
    let mut conn = crate::db::PooledConnection::take(conn);
    diesel::sql_query(format!("LISTEN {CHANNEL}")).execute(&mut conn).await?;
    Ok(conn)
}
