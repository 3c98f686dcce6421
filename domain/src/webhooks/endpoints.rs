//! Webhook endpoints: at most [`MAX_PER_USER`] per user, each with its
//! signing secret. The caller checks the URL with [`super::guard::Guard`]
//! first (it resolves the host, which must not happen inside a
//! transaction).

use chrono::Utc;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use super::EventType;
use crate::db::Connection;
use crate::rows::WebhookEndpoint;
use crate::schema::webhook_endpoints;
use crate::standard_webhooks::new_secret;
use crate::{Error, Result};

pub const MAX_PER_USER: i64 = 10;
/// After a rotation the old secret keeps signing beside the new one this
/// long, so receivers can switch without losing a delivery.
pub const ROTATION_OVERLAP: chrono::Duration = chrono::Duration::hours(24);
pub const MAX_URL_LEN: usize = 2048;
pub const MAX_DESCRIPTION_CHARS: usize = 200;

impl WebhookEndpoint {
    /// The types it listens for (unknown names, if any, are skipped).
    pub fn event_types(&self) -> Vec<EventType> {
        self.events.iter().flatten().filter_map(|e| EventType::parse(e)).collect()
    }

    /// The secrets that sign a delivery now: the current one, and the one
    /// before it during its overlap.
    pub fn signing_secrets(&self) -> Vec<&str> {
        let mut v = vec![self.secret.as_str()];
        if let (Some(old), Some(until)) = (&self.previous_secret, self.previous_secret_expires_at)
            && until > Utc::now()
        {
            v.push(old);
        }
        v
    }
}

fn check_events(events: &[EventType]) -> Result<Vec<Option<String>>> {
    if events.is_empty() {
        return Err(Error::invalid("events", "name at least one event type"));
    }
    if events.contains(&EventType::Test) {
        return Err(Error::invalid("events", "TEST events are only sent by sendTestWebhook"));
    }
    let mut names: Vec<&str> = events.iter().map(|e| e.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    Ok(names.into_iter().map(|n| Some(n.to_owned())).collect())
}

fn check_description(d: Option<&str>) -> Result<Option<String>> {
    match d.map(str::trim).filter(|d| !d.is_empty()) {
        Some(d) if d.chars().count() > MAX_DESCRIPTION_CHARS => {
            Err(Error::invalid("description", format!("must be at most {MAX_DESCRIPTION_CHARS} characters")))
        }
        d => Ok(d.map(str::to_owned)),
    }
}

/// A new endpoint for `url` (already checked); returns it with its secret.
pub async fn create(
    conn: &mut Connection,
    user_id: Uuid,
    url: &str,
    events: &[EventType],
    description: Option<&str>,
) -> Result<(WebhookEndpoint, String)> {
    let events = check_events(events)?;
    let description = check_description(description)?;
    let count: i64 = webhook_endpoints::table
        .filter(webhook_endpoints::user_id.eq(user_id))
        .count()
        .get_result(conn)
        .await?;
    if count >= MAX_PER_USER {
        return Err(Error::Conflict(format!(
            "at most {MAX_PER_USER} webhook endpoints per account: delete one first"
        )));
    }
    let secret = new_secret();
    let endpoint = diesel::insert_into(webhook_endpoints::table)
        .values((
            webhook_endpoints::id.eq(Uuid::now_v7()),
            webhook_endpoints::user_id.eq(user_id),
            webhook_endpoints::url.eq(url),
            webhook_endpoints::description.eq(description),
            webhook_endpoints::events.eq(events),
            webhook_endpoints::secret.eq(&secret),
        ))
        .returning(WebhookEndpoint::as_returning())
        .get_result(conn)
        .await?;
    tracing::info!(endpoint_id = %endpoint.id, %user_id, "webhook endpoint created");
    Ok((endpoint, secret))
}

pub async fn find_own(conn: &mut Connection, user_id: Uuid, id: Uuid) -> Result<WebhookEndpoint> {
    webhook_endpoints::table
        .find(id)
        .filter(webhook_endpoints::user_id.eq(user_id))
        .select(WebhookEndpoint::as_select())
        .first(conn)
        .await
        .optional()?
        .ok_or(Error::NotFound("webhook endpoint"))
}

pub async fn find(conn: &mut Connection, id: Uuid) -> Result<Option<WebhookEndpoint>> {
    Ok(webhook_endpoints::table.find(id).select(WebhookEndpoint::as_select()).first(conn).await.optional()?)
}

pub async fn list(conn: &mut Connection, user_id: Uuid) -> Result<Vec<WebhookEndpoint>> {
    Ok(webhook_endpoints::table
        .filter(webhook_endpoints::user_id.eq(user_id))
        .order((webhook_endpoints::created_at.asc(), webhook_endpoints::id.asc()))
        .select(WebhookEndpoint::as_select())
        .load(conn)
        .await?)
}

/// What `updateWebhookEndpoint` changes; `None` keeps the field.
#[derive(Debug, Default, Clone)]
pub struct Change {
    /// Already checked.
    pub url: Option<String>,
    pub events: Option<Vec<EventType>>,
    pub enabled: Option<bool>,
    pub description: Option<String>,
}

/// Enabling an endpoint clears its disabled reason and failure streak.
pub async fn update(
    conn: &mut Connection,
    user_id: Uuid,
    id: Uuid,
    change: Change,
) -> Result<WebhookEndpoint> {
    let current = find_own(conn, user_id, id).await?;
    let events = change.events.as_deref().map(check_events).transpose()?.unwrap_or(current.events);
    let description = match change.description.as_deref() {
        Some(d) => check_description(Some(d))?,
        None => current.description,
    };
    let enabled = change.enabled.unwrap_or(current.enabled);
    let reenabled = enabled && !current.enabled;
    let endpoint = diesel::update(webhook_endpoints::table.find(id))
        .filter(webhook_endpoints::user_id.eq(user_id))
        .set((
            webhook_endpoints::url.eq(change.url.unwrap_or(current.url)),
            webhook_endpoints::events.eq(events),
            webhook_endpoints::description.eq(description),
            webhook_endpoints::enabled.eq(enabled),
            webhook_endpoints::disabled_reason.eq(if enabled {
                None
            } else {
                current.disabled_reason.or(Some("disabled by its owner".to_owned()))
            }),
            webhook_endpoints::failing_since.eq(if reenabled { None } else { current.failing_since }),
            webhook_endpoints::updated_at.eq(Utc::now()),
        ))
        .returning(WebhookEndpoint::as_returning())
        .get_result(conn)
        .await?;
    tracing::info!(endpoint_id = %id, %user_id, enabled, "webhook endpoint updated");
    Ok(endpoint)
}

/// Deletes the endpoint with its deliveries and their log.
pub async fn delete(conn: &mut Connection, user_id: Uuid, id: Uuid) -> Result<bool> {
    let n = diesel::delete(webhook_endpoints::table.find(id))
        .filter(webhook_endpoints::user_id.eq(user_id))
        .execute(conn)
        .await?;
    if n == 1 {
        tracing::info!(endpoint_id = %id, %user_id, "webhook endpoint deleted");
    }
    Ok(n == 1)
}

/// Deletes every endpoint of a user (account deletion).
pub async fn delete_all(conn: &mut Connection, user_id: Uuid) -> Result<usize> {
    Ok(diesel::delete(webhook_endpoints::table.filter(webhook_endpoints::user_id.eq(user_id)))
        .execute(conn)
        .await?)
}

/// A new secret; the current one keeps signing beside it for
/// [`ROTATION_OVERLAP`].
pub async fn rotate(conn: &mut Connection, user_id: Uuid, id: Uuid) -> Result<(WebhookEndpoint, String)> {
    let secret = new_secret();
    let endpoint = diesel::update(webhook_endpoints::table.find(id))
        .filter(webhook_endpoints::user_id.eq(user_id))
        .set((
            webhook_endpoints::previous_secret.eq(webhook_endpoints::secret.nullable()),
            webhook_endpoints::previous_secret_expires_at.eq(Utc::now() + ROTATION_OVERLAP),
            webhook_endpoints::secret.eq(&secret),
            webhook_endpoints::updated_at.eq(Utc::now()),
        ))
        .returning(WebhookEndpoint::as_returning())
        .get_result(conn)
        .await
        .optional()?
        .ok_or(Error::NotFound("webhook endpoint"))?;
    tracing::info!(endpoint_id = %id, %user_id, "webhook secret rotated");
    Ok((endpoint, secret))
}
