//! Webhook endpoints and their delivery log, for the account holder.
//! Reading needs a `READ` key at least; changing endpoints (and seeing a
//! secret) is for the account holder only.

use async_graphql::connection::{Connection, Edge};
use async_graphql::{Context, Enum, ID, Object, SimpleObject};
use chrono::{DateTime, Utc};
use mage_domain::queue::DeliverJob;
use mage_domain::rows;
use mage_domain::webhooks::deliveries::{self, Listed};
use mage_domain::webhooks::endpoints::{self, Change};
use mage_domain::webhooks::{DeliveryStatus, EventType, events, objects, truncate_body};
use uuid::Uuid;

use super::context::ContextExt;
use super::pagination::{decode_created_cursor, encode_created_cursor, page, page_size};
use crate::error::{ApiError, ApiResult};

/// What an endpoint listens for; the payload's `type` is the lower-case
/// dotted name (`GENERATION_SUCCEEDED` → `generation.succeeded`).
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
#[graphql(remote = "EventType")]
pub enum WebhookEventType {
    /// A generation started rendering (once per run).
    GenerationStarted,
    GenerationSucceeded,
    GenerationFailed,
    GenerationCanceled,
    /// An upload was checked and is ready to use.
    AssetReady,
    AssetRejected,
    OrderPaid,
    /// The spendable balance fell below the price of the cheapest
    /// generation on offer (once per crossing).
    CreditsLow,
    /// `webhook.test`: sent by `sendTestWebhook` only; not subscribable.
    Test,
}

#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
#[graphql(remote = "DeliveryStatus")]
pub enum WebhookDeliveryStatus {
    /// Not delivered yet: an attempt is due or running.
    Pending,
    /// The endpoint answered 2xx.
    Succeeded,
    /// No attempt left (or the endpoint was disabled or its schedule ran out).
    Failed,
}

pub struct WebhookEndpoint(rows::WebhookEndpoint);

#[Object]
impl WebhookEndpoint {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn url(&self) -> &str {
        &self.0.url
    }
    async fn events(&self) -> Vec<WebhookEventType> {
        self.0.event_types().into_iter().map(Into::into).collect()
    }
    async fn enabled(&self) -> bool {
        self.0.enabled
    }
    async fn description(&self) -> Option<&str> {
        self.0.description.as_deref()
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
    /// Why it is disabled (by its owner, or after failing every delivery
    /// for 5 days).
    async fn disabled_reason(&self) -> Option<&str> {
        if self.0.enabled { None } else { self.0.disabled_reason.as_deref() }
    }
    /// Until then the secret before the last rotation also signs.
    async fn previous_secret_expires_at(&self) -> Option<DateTime<Utc>> {
        self.0.previous_secret_expires_at.filter(|t| *t > Utc::now())
    }
}

/// An endpoint with its signing secret, shown this once.
#[derive(SimpleObject)]
pub struct CreatedWebhookEndpoint {
    endpoint: WebhookEndpoint,
    /// `whsec_...`: verify deliveries with any Standard Webhooks library.
    secret: String,
}

pub struct WebhookDelivery {
    row: rows::WebhookDelivery,
    event_type: String,
}

#[Object]
impl WebhookDelivery {
    async fn id(&self) -> ID {
        ID(self.row.id.to_string())
    }
    /// The `webhook-id` header of every attempt (receivers deduplicate on it).
    async fn event_id(&self) -> ID {
        ID(self.row.event_id.to_string())
    }
    async fn event_type(&self) -> ApiResult<WebhookEventType> {
        EventType::parse(&self.event_type)
            .map(Into::into)
            .ok_or_else(|| ApiError::internal(format!("unknown event type {:?}", self.event_type)))
    }
    async fn endpoint_id(&self) -> ID {
        ID(self.row.endpoint_id.to_string())
    }
    async fn status(&self) -> ApiResult<WebhookDeliveryStatus> {
        DeliveryStatus::parse(&self.row.status)
            .map(Into::into)
            .ok_or_else(|| ApiError::internal(format!("unknown delivery status {:?}", self.row.status)))
    }
    /// Attempts made so far.
    async fn attempts(&self) -> i32 {
        self.row.attempts
    }
    async fn last_status_code(&self) -> Option<i32> {
        self.row.last_status_code
    }
    async fn last_error(&self) -> Option<&str> {
        self.row.last_error.as_deref()
    }
    /// When the next attempt is due (PENDING only).
    async fn next_attempt_at(&self) -> Option<DateTime<Utc>> {
        self.row.next_attempt_at.filter(|_| self.row.status == DeliveryStatus::Pending.as_str())
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.row.created_at
    }
    /// The payload sent (its first 4 KiB), the same bytes on every attempt.
    async fn request_body(&self, ctx: &Context<'_>) -> ApiResult<Option<String>> {
        let user_id = ctx.viewer().require()?;
        let mut conn = ctx.conn().await?;
        let (_, event) = deliveries::find_own(&mut conn, user_id, self.row.id).await?;
        Ok(event.body.as_deref().map(|b| truncate_body(b).to_owned()))
    }
    /// Every attempt, oldest first, with what the endpoint answered.
    async fn attempt_log(&self, ctx: &Context<'_>) -> ApiResult<Vec<WebhookAttempt>> {
        let mut conn = ctx.conn().await?;
        Ok(deliveries::attempts(&mut conn, self.row.id).await?.into_iter().map(WebhookAttempt).collect())
    }
}

pub struct WebhookAttempt(rows::WebhookAttempt);

#[Object]
impl WebhookAttempt {
    /// 1 for the first.
    async fn attempt(&self) -> i32 {
        self.0.attempt
    }
    async fn started_at(&self) -> DateTime<Utc> {
        self.0.started_at
    }
    async fn duration_ms(&self) -> i32 {
        self.0.duration_ms
    }
    /// The endpoint's HTTP status; null when it did not answer.
    async fn status_code(&self) -> Option<i32> {
        self.0.status_code
    }
    async fn error(&self) -> Option<&str> {
        self.0.error.as_deref()
    }
    /// The first 4 KiB of the endpoint's answer.
    async fn response_body(&self) -> Option<&str> {
        self.0.response_body.as_deref()
    }
}

const DELIVERY_CURSOR: &str = "webhook-delivery";

fn parse_id(id: &ID, what: &str) -> ApiResult<Uuid> {
    // A malformed id names nothing of the caller's: the same answer as a missing one.
    id.parse().map_err(|_| ApiError::NotFound(what.into()))
}

fn delivery(l: Listed) -> WebhookDelivery {
    WebhookDelivery { row: l.delivery, event_type: l.event_type }
}

#[derive(Default)]
pub struct WebhooksQuery;

#[Object]
impl WebhooksQuery {
    /// The account's webhook endpoints, oldest first.
    async fn webhook_endpoints(&self, ctx: &Context<'_>) -> ApiResult<Vec<WebhookEndpoint>> {
        let user_id = ctx.viewer().require()?;
        let mut conn = ctx.conn().await?;
        Ok(endpoints::list(&mut conn, user_id).await?.into_iter().map(WebhookEndpoint).collect())
    }

    /// An endpoint's deliveries, newest first (kept 30 days).
    #[graphql(complexity = "super::pagination::list_complexity(first, child_complexity)")]
    async fn webhook_deliveries(
        &self,
        ctx: &Context<'_>,
        endpoint_id: ID,
        first: Option<i32>,
        after: Option<String>,
    ) -> ApiResult<Connection<String, WebhookDelivery>> {
        let user_id = ctx.viewer().require()?;
        let endpoint_id = parse_id(&endpoint_id, "webhook endpoint")?;
        let limit = page_size(first)?;
        let after = decode_created_cursor(DELIVERY_CURSOR, after.as_deref())?;
        let mut conn = ctx.conn().await?;
        let rows = deliveries::list(&mut conn, user_id, endpoint_id, limit + 1, after).await?;
        Ok(page(rows, limit, after.is_some(), |l| {
            Edge::new(
                encode_created_cursor(DELIVERY_CURSOR, l.delivery.created_at, l.delivery.id),
                delivery(l),
            )
        }))
    }
}

#[derive(Default)]
pub struct WebhooksMutation;

/// Checks an endpoint URL (scheme, and every address its host resolves
/// to) before anything is written.
async fn checked_url(ctx: &Context<'_>, url: &str) -> ApiResult<String> {
    if url.len() > endpoints::MAX_URL_LEN {
        return Err(ApiError::bad_input("url", format!("must be at most {} bytes", endpoints::MAX_URL_LEN)));
    }
    let guard = &ctx.services().webhook_guard;
    let checked = guard.check(url.trim()).await.map_err(|e| ApiError::bad_input("url", e.to_string()))?;
    Ok(checked.to_string())
}

fn event_types(events: Vec<WebhookEventType>) -> Vec<EventType> {
    events.into_iter().map(Into::into).collect()
}

#[Object]
impl WebhooksMutation {
    /// Registers an endpoint (at most 10 per account, `CONFLICT` past
    /// that). `url` must be https and must not resolve to a private,
    /// loopback, link-local or metadata address. The signing secret is in
    /// the answer and, for you, nowhere else.
    async fn create_webhook_endpoint(
        &self,
        ctx: &Context<'_>,
        url: String,
        events: Vec<WebhookEventType>,
        description: Option<String>,
    ) -> ApiResult<CreatedWebhookEndpoint> {
        let (user_id, _) = ctx.viewer().require_session()?;
        let url = checked_url(ctx, &url).await?;
        let mut conn = ctx.conn().await?;
        let (endpoint, secret) =
            endpoints::create(&mut conn, user_id, &url, &event_types(events), description.as_deref()).await?;
        Ok(CreatedWebhookEndpoint { endpoint: WebhookEndpoint(endpoint), secret })
    }

    /// Changes what is given. Enabling a disabled endpoint clears its
    /// reason; deliveries that failed meanwhile can be sent again with
    /// `redeliverWebhook`.
    async fn update_webhook_endpoint(
        &self,
        ctx: &Context<'_>,
        id: ID,
        url: Option<String>,
        events: Option<Vec<WebhookEventType>>,
        enabled: Option<bool>,
        description: Option<String>,
    ) -> ApiResult<WebhookEndpoint> {
        let (user_id, _) = ctx.viewer().require_session()?;
        let id = parse_id(&id, "webhook endpoint")?;
        let url = match url {
            Some(u) => Some(checked_url(ctx, &u).await?),
            None => None,
        };
        let change = Change { url, events: events.map(event_types), enabled, description };
        let mut conn = ctx.conn().await?;
        Ok(WebhookEndpoint(endpoints::update(&mut conn, user_id, id, change).await?))
    }

    /// Deletes an endpoint with its delivery log; `false` when there was none.
    async fn delete_webhook_endpoint(&self, ctx: &Context<'_>, id: ID) -> ApiResult<bool> {
        let (user_id, _) = ctx.viewer().require_session()?;
        let id = parse_id(&id, "webhook endpoint")?;
        let mut conn = ctx.conn().await?;
        Ok(endpoints::delete(&mut conn, user_id, id).await?)
    }

    /// A new signing secret; the old one keeps signing beside it (a second
    /// `v1,` entry in `webhook-signature`) for 24 hours.
    async fn rotate_webhook_secret(&self, ctx: &Context<'_>, id: ID) -> ApiResult<CreatedWebhookEndpoint> {
        let (user_id, _) = ctx.viewer().require_session()?;
        let id = parse_id(&id, "webhook endpoint")?;
        let mut conn = ctx.conn().await?;
        let (endpoint, secret) = endpoints::rotate(&mut conn, user_id, id).await?;
        Ok(CreatedWebhookEndpoint { endpoint: WebhookEndpoint(endpoint), secret })
    }

    /// Sends a delivery again now, signed anew with the same `webhook-id`:
    /// one more attempt for a finished one, or the next attempt brought
    /// forward for a pending one. `CONFLICT` while its endpoint is
    /// disabled or an attempt is running.
    async fn redeliver_webhook(&self, ctx: &Context<'_>, delivery_id: ID) -> ApiResult<WebhookDelivery> {
        let (user_id, _) = ctx.viewer().require_session()?;
        let id = parse_id(&delivery_id, "webhook delivery")?;
        let mut conn = ctx.conn().await?;
        let (row, event) = deliveries::redeliver(&mut conn, user_id, id).await?;
        drop(conn);
        push(ctx, id).await;
        tracing::info!(delivery_id = %id, event_id = %event.id, %user_id, "webhook redelivery requested");
        Ok(WebhookDelivery { row, event_type: event.event_type })
    }

    /// Sends a `webhook.test` event to the endpoint (whatever it listens
    /// for); returns its delivery, to follow in `webhookDeliveries`.
    async fn send_test_webhook(&self, ctx: &Context<'_>, endpoint_id: ID) -> ApiResult<WebhookDelivery> {
        let (user_id, _) = ctx.viewer().require_session()?;
        let endpoint_id = parse_id(&endpoint_id, "webhook endpoint")?;
        let mut conn = ctx.conn().await?;
        let endpoint = endpoints::find_own(&mut conn, user_id, endpoint_id).await?;
        if !endpoint.enabled {
            return Err(ApiError::Conflict("the endpoint is disabled: enable it first".into()));
        }
        // A test event's data needs no media.
        let id = events::test_event(&mut conn, &endpoint, |e| objects::payload(e, &|k: &str| k.to_owned()))
            .await?;
        let (row, event) = deliveries::find_own(&mut conn, user_id, id).await?;
        drop(conn);
        push(ctx, id).await;
        Ok(WebhookDelivery { row, event_type: event.event_type })
    }
}

/// Enqueues an attempt; should the push fail, the sweeper sends the
/// PENDING delivery once it is overdue.
async fn push(ctx: &Context<'_>, delivery_id: Uuid) {
    let job = DeliverJob { delivery_id };
    if let Err(e) = ctx.services().queues.push_deliver(&job, std::time::Duration::ZERO).await {
        tracing::warn!(%delivery_id, error = %e, "could not enqueue a webhook delivery; the sweeper will");
    }
}
