//! Deliveries: claiming one for an attempt, recording how the attempt went
//! (and what comes next), the log users read, redelivery, and the
//! sweeper's view of lost ones.
//!
//! An attempt holds its delivery with a lease (`locked_until`): two jobs
//! for one delivery never send it at once, and a worker that dies mid-send
//! leaves a lease that runs out, after which the sweeper sends it again.
//! A success is recorded only after the endpoint answered 2xx, so a
//! receiver may see an event again after a crash (the same `webhook-id`:
//! receivers deduplicate on it), never a success that was not one.

use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use uuid::Uuid;

use super::{DeliveryStatus, truncate_body};
use crate::db::Connection;
use crate::mail::{self, NewMail};
use crate::rows::{WebhookAttempt, WebhookDelivery, WebhookEndpoint, WebhookEvent};
use crate::schema::{users, webhook_attempts, webhook_deliveries, webhook_endpoints, webhook_events};
use crate::{Error, Result};

/// What one attempt needs.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub delivery: WebhookDelivery,
    pub endpoint: WebhookEndpoint,
    pub event_id: Uuid,
    pub event_type: String,
    pub body: String,
}

/// Why a job found nothing to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotClaimed {
    /// Delivered, failed for good, or deleted with its endpoint.
    Over,
    /// Another attempt holds it (its lease ends then).
    Busy(DateTime<Utc>),
    /// Its next attempt is not due yet.
    NotDue(DateTime<Utc>),
}

/// The endpoint of a delivery (to take its per-endpoint permit before
/// claiming it).
pub async fn endpoint_of(conn: &mut Connection, id: Uuid) -> Result<Option<Uuid>> {
    Ok(webhook_deliveries::table
        .find(id)
        .select(webhook_deliveries::endpoint_id)
        .first(conn)
        .await
        .optional()?)
}

/// Takes a due PENDING delivery for one attempt, counted now (so a crash
/// mid-send still counts), held for `lease`. A delivery whose endpoint
/// was disabled fails here, unsent.
pub async fn claim(conn: &mut Connection, id: Uuid, lease: Duration) -> Result<Result<Claimed, NotClaimed>> {
    conn.transaction::<_, Error, _>(async |conn| {
        let d: Option<WebhookDelivery> = webhook_deliveries::table
            .find(id)
            .for_update()
            .select(WebhookDelivery::as_select())
            .first(conn)
            .await
            .optional()?;
        let Some(d) = d else { return Ok(Err(NotClaimed::Over)) };
        let Some(endpoint) = super::endpoints::find(conn, d.endpoint_id).await? else {
            return Ok(Err(NotClaimed::Over));
        };
        let now = Utc::now();
        if d.status != DeliveryStatus::Pending.as_str() {
            return Ok(Err(NotClaimed::Over));
        }
        if let Some(until) = d.locked_until.filter(|u| *u > now) {
            return Ok(Err(NotClaimed::Busy(until)));
        }
        // A job may run a little early (timers, clocks of other hosts).
        if let Some(due) = d.next_attempt_at.filter(|due| *due > now + chrono::Duration::seconds(1)) {
            return Ok(Err(NotClaimed::NotDue(due)));
        }
        if !endpoint.enabled {
            let why = format!(
                "endpoint disabled: {}",
                endpoint.disabled_reason.as_deref().unwrap_or("disabled by its owner")
            );
            diesel::update(webhook_deliveries::table.find(id))
                .set((
                    webhook_deliveries::status.eq(DeliveryStatus::Failed.as_str()),
                    webhook_deliveries::next_attempt_at.eq(None::<DateTime<Utc>>),
                    webhook_deliveries::last_error.eq(why),
                    webhook_deliveries::updated_at.eq(now),
                ))
                .execute(conn)
                .await?;
            return Ok(Err(NotClaimed::Over));
        }
        let lease = chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::seconds(60));
        let delivery: WebhookDelivery = diesel::update(webhook_deliveries::table.find(id))
            .set((
                webhook_deliveries::attempts.eq(webhook_deliveries::attempts + 1),
                webhook_deliveries::locked_until.eq(now + lease),
                webhook_deliveries::updated_at.eq(now),
            ))
            .returning(WebhookDelivery::as_returning())
            .get_result(conn)
            .await?;
        let (event_type, body): (String, Option<String>) = webhook_events::table
            .find(d.event_id)
            .select((webhook_events::event_type, webhook_events::body))
            .first(conn)
            .await?;
        let body = body.ok_or_else(|| Error::Internal(format!("event {} has no body", d.event_id)))?;
        Ok(Ok(Claimed { event_id: d.event_id, delivery, endpoint, event_type, body }))
    })
    .await
}

/// How an attempt went.
#[derive(Debug, Clone)]
pub struct Attempted {
    pub started_at: DateTime<Utc>,
    pub duration: Duration,
    /// The endpoint's answer, if it answered.
    pub status_code: Option<u16>,
    /// Why it failed (also for a non-2xx answer).
    pub error: Option<String>,
    /// The first 4 KiB of the answer.
    pub response_body: Option<String>,
}

impl Attempted {
    pub fn succeeded(&self) -> bool {
        self.status_code.is_some_and(|c| (200..300).contains(&c))
    }
}

/// What follows a recorded attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    Delivered,
    /// Try again at this time (per the schedule).
    RetryAt(DateTime<Utc>),
    /// No attempt left.
    GaveUp,
    /// The endpoint has now failed every delivery for `disable_after`: it
    /// was disabled (this delivery failed with it) and its owner mailed
    /// (this outbox mail is to be sent).
    Disabled {
        mail_id: Option<Uuid>,
    },
}

/// Records the attempt in the log and moves the delivery on, in one
/// transaction: SUCCEEDED; or PENDING again after the next wait of
/// `schedule` (a manual redelivery has none); or FAILED. An endpoint with
/// no success for `disable_after` is disabled and its owner mailed.
pub async fn record(
    conn: &mut Connection,
    claimed: &Claimed,
    attempt: &Attempted,
    schedule: &[Duration],
    disable_after: Duration,
) -> Result<Next> {
    let d = &claimed.delivery;
    conn.transaction::<_, Error, _>(async |conn| {
        let now = Utc::now();
        diesel::insert_into(webhook_attempts::table)
            .values((
                webhook_attempts::delivery_id.eq(d.id),
                webhook_attempts::attempt.eq(d.attempts),
                webhook_attempts::started_at.eq(attempt.started_at),
                webhook_attempts::duration_ms.eq(attempt.duration.as_millis().min(i32::MAX as u128) as i32),
                webhook_attempts::status_code.eq(attempt.status_code.map(i32::from)),
                webhook_attempts::error.eq(attempt.error.as_deref()),
                webhook_attempts::response_body.eq(attempt.response_body.as_deref().map(truncate_body)),
            ))
            .on_conflict_do_nothing()
            .execute(conn)
            .await?;
        let endpoints = webhook_endpoints::table.find(claimed.endpoint.id);
        let (status, next_at, next) = if attempt.succeeded() {
            // Written only when it changes: a busy endpoint's row is not
            // rewritten by every delivery.
            diesel::update(endpoints.filter(webhook_endpoints::failing_since.is_not_null()))
                .set(webhook_endpoints::failing_since.eq(None::<DateTime<Utc>>))
                .execute(conn)
                .await?;
            (DeliveryStatus::Succeeded, None, Next::Delivered)
        } else {
            let failing_since: Option<DateTime<Utc>> = diesel::update(endpoints)
                .set(webhook_endpoints::failing_since.eq(diesel::dsl::sql::<
                    diesel::sql_types::Nullable<diesel::sql_types::Timestamptz>,
                >("COALESCE(failing_since, now())")))
                .returning(webhook_endpoints::failing_since)
                .get_result(conn)
                .await
                .optional()?
                .flatten();
            let streak = failing_since.map(|s| (now - s).to_std().unwrap_or_default());
            // The attempt just made is number `attempts`; the wait before
            // the next is the schedule's entry of that number.
            let wait = (!d.manual).then(|| schedule.get(d.attempts.max(1) as usize - 1)).flatten();
            if streak.is_some_and(|s| s >= disable_after) {
                let mail_id = disable(conn, &claimed.endpoint, disable_after).await?;
                (DeliveryStatus::Failed, None, Next::Disabled { mail_id })
            } else if let Some(wait) = wait {
                let at = now + chrono::Duration::from_std(*wait).unwrap_or(chrono::Duration::days(1));
                (DeliveryStatus::Pending, Some(at), Next::RetryAt(at))
            } else {
                (DeliveryStatus::Failed, None, Next::GaveUp)
            }
        };
        diesel::update(webhook_deliveries::table.find(d.id))
            .set((
                webhook_deliveries::status.eq(status.as_str()),
                webhook_deliveries::next_attempt_at.eq(next_at),
                webhook_deliveries::locked_until.eq(None::<DateTime<Utc>>),
                webhook_deliveries::manual.eq(false),
                webhook_deliveries::last_status_code.eq(attempt.status_code.map(i32::from)),
                webhook_deliveries::last_error.eq(attempt.error.as_deref()),
                webhook_deliveries::updated_at.eq(now),
            ))
            .execute(conn)
            .await?;
        Ok(next)
    })
    .await
}

/// Disables an endpoint that failed every delivery for `after`, writing a
/// mail to its owner into the outbox (in the caller's transaction).
async fn disable(conn: &mut Connection, endpoint: &WebhookEndpoint, after: Duration) -> Result<Option<Uuid>> {
    let days = after.as_secs_f64() / 86_400.0;
    let reason = format!("every delivery failed for {days:.1} days");
    let n = diesel::update(webhook_endpoints::table.find(endpoint.id))
        .filter(webhook_endpoints::enabled.eq(true))
        .set((
            webhook_endpoints::enabled.eq(false),
            webhook_endpoints::disabled_reason.eq(&reason),
            webhook_endpoints::updated_at.eq(Utc::now()),
        ))
        .execute(conn)
        .await?;
    if n == 0 {
        return Ok(None);
    }
    tracing::warn!(endpoint_id = %endpoint.id, %reason, "webhook endpoint disabled");
    let email: Option<String> = users::table
        .find(endpoint.user_id)
        .filter(users::deleted_at.is_null())
        .select(users::email)
        .first(conn)
        .await
        .optional()?;
    let Some(email) = email else { return Ok(None) };
    let body = format!(
        "Mage stopped sending webhooks to {url}: {reason}.\n\n\
         Nothing more is sent there until you enable the endpoint again \
         (updateWebhookEndpoint with enabled: true); its delivery log shows \
         what the endpoint answered, and redeliverWebhook sends a delivery again.\n",
        url = endpoint.url,
    );
    let key = format!("webhook-disabled:{}:{}", endpoint.id, Utc::now().timestamp());
    let mail = mail::write(
        conn,
        NewMail {
            user_id: Some(endpoint.user_id),
            to: &email,
            subject: "Your Mage webhook endpoint was disabled",
            body: &body,
            idempotency_key: Some(&key),
        },
    )
    .await?;
    Ok(Some(mail.id))
}

/// A delivery as the log lists it.
#[derive(Debug, Clone)]
pub struct Listed {
    pub delivery: WebhookDelivery,
    pub event_type: String,
}

/// A user's deliveries to one endpoint, newest first, after `after`
/// (`created_at`, `id`) when given.
pub async fn list(
    conn: &mut Connection,
    user_id: Uuid,
    endpoint_id: Uuid,
    first: i64,
    after: Option<(DateTime<Utc>, Uuid)>,
) -> Result<Vec<Listed>> {
    super::endpoints::find_own(conn, user_id, endpoint_id).await?;
    let mut q = webhook_deliveries::table
        .inner_join(webhook_events::table)
        .filter(webhook_deliveries::endpoint_id.eq(endpoint_id))
        .into_boxed();
    if let Some((at, id)) = after {
        q = q.filter(
            webhook_deliveries::created_at
                .lt(at)
                .or(webhook_deliveries::created_at.eq(at).and(webhook_deliveries::id.lt(id))),
        );
    }
    let rows: Vec<(WebhookDelivery, String)> = q
        .order((webhook_deliveries::created_at.desc(), webhook_deliveries::id.desc()))
        .limit(first)
        .select((WebhookDelivery::as_select(), webhook_events::event_type))
        .load(conn)
        .await?;
    Ok(rows.into_iter().map(|(delivery, event_type)| Listed { delivery, event_type }).collect())
}

/// One of the user's deliveries, with its event.
pub async fn find_own(
    conn: &mut Connection,
    user_id: Uuid,
    id: Uuid,
) -> Result<(WebhookDelivery, WebhookEvent)> {
    webhook_deliveries::table
        .inner_join(webhook_events::table)
        .inner_join(webhook_endpoints::table)
        .filter(webhook_deliveries::id.eq(id))
        .filter(webhook_endpoints::user_id.eq(user_id))
        .select((WebhookDelivery::as_select(), WebhookEvent::as_select()))
        .first(conn)
        .await
        .optional()?
        .ok_or(Error::NotFound("webhook delivery"))
}

/// Every attempt of a delivery, in order.
pub async fn attempts(conn: &mut Connection, delivery_id: Uuid) -> Result<Vec<WebhookAttempt>> {
    Ok(webhook_attempts::table
        .filter(webhook_attempts::delivery_id.eq(delivery_id))
        .order(webhook_attempts::attempt.asc())
        .select(WebhookAttempt::as_select())
        .load(conn)
        .await?)
}

/// Sends a delivery again now: a finished one gets one more attempt (no
/// schedule); a pending one is simply due now. Its endpoint must be
/// enabled. Returns the delivery with its event.
pub async fn redeliver(
    conn: &mut Connection,
    user_id: Uuid,
    id: Uuid,
) -> Result<(WebhookDelivery, WebhookEvent)> {
    conn.transaction::<_, Error, _>(async |conn| {
        let (d, event) = find_own(conn, user_id, id).await?;
        let endpoint = super::endpoints::find_own(conn, user_id, d.endpoint_id).await?;
        if !endpoint.enabled {
            return Err(Error::Conflict("the endpoint is disabled: enable it first".into()));
        }
        if d.locked_until.is_some_and(|u| u > Utc::now()) {
            return Err(Error::Conflict("an attempt of this delivery is running".into()));
        }
        let finished = d.status != DeliveryStatus::Pending.as_str();
        let d = diesel::update(webhook_deliveries::table.find(id))
            .set((
                webhook_deliveries::status.eq(DeliveryStatus::Pending.as_str()),
                webhook_deliveries::manual.eq(finished || d.manual),
                webhook_deliveries::next_attempt_at.eq(Utc::now()),
                webhook_deliveries::updated_at.eq(Utc::now()),
            ))
            .returning(WebhookDelivery::as_returning())
            .get_result(conn)
            .await?;
        Ok((d, event))
    })
    .await
}

pub async fn find(conn: &mut Connection, id: Uuid) -> Result<Option<WebhookDelivery>> {
    Ok(webhook_deliveries::table
        .find(id)
        .select(WebhookDelivery::as_select())
        .first(conn)
        .await
        .optional()?)
}

/// Pending deliveries overdue by `grace` and not held by a live attempt:
/// their job was lost (Redis flushed) or their worker died mid-send.
pub async fn lost(conn: &mut Connection, grace: chrono::Duration, limit: i64) -> Result<Vec<Uuid>> {
    let now = Utc::now();
    Ok(webhook_deliveries::table
        .filter(webhook_deliveries::status.eq(DeliveryStatus::Pending.as_str()))
        .filter(webhook_deliveries::next_attempt_at.lt(now - grace))
        .filter(webhook_deliveries::locked_until.is_null().or(webhook_deliveries::locked_until.lt(now)))
        .order(webhook_deliveries::next_attempt_at.asc())
        .limit(limit)
        .select(webhook_deliveries::id)
        .load(conn)
        .await?)
}
