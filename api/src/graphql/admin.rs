//! Operations for admins (role ADMIN); everyone else gets `FORBIDDEN`.

use async_graphql::connection::{Connection, Edge};
use async_graphql::{Context, ID, Object, SimpleObject};
use chrono::{DateTime, Utc};
use mage_domain::credits::{self as ledger, GrantSource, NewGrant};
use mage_domain::queue::Queue;
use uuid::Uuid;

use super::context::{AdminOnly, ContextExt};
use super::credits::CreditAccount;
use super::generations::Generation;
use super::orders::StripeEvent;
use super::pagination::{decode_cursor, encode_cursor, list_complexity, page, page_size};
use super::users::User;
use crate::error::{ApiError, ApiResult};

const USER_CURSOR: &str = "user";

const MAX_GRANT: i64 = 1_000_000;

const EVENT_STATUSES: &[&str] = &["received", "processed", "ignored", "failed"];

/// A job that ran out of attempts; its generation was failed and its
/// credits released.
#[derive(SimpleObject)]
pub struct DeadJob {
    /// `render` or `transcode`.
    queue: String,
    /// Pass to `retryDeadJob`.
    task_id: ID,
    generation_id: Option<ID>,
    attempts: i32,
    /// The last error, for operators.
    error: Option<String>,
    died_at: Option<DateTime<Utc>>,
}

fn job_queue(queue: &str) -> ApiResult<Queue> {
    Queue::find(&Queue::JOBS, queue).ok_or_else(|| {
        ApiError::bad_input("queue", format!("queue must be one of: {}", Queue::names(&Queue::JOBS)))
    })
}

#[derive(Default)]
pub struct AdminQuery;

#[Object]
impl AdminQuery {
    /// Users whose email contains `search`, by email, with their balances
    /// (admins only).
    #[graphql(guard = "AdminOnly", complexity = "list_complexity(first, child_complexity)")]
    async fn users(
        &self,
        ctx: &Context<'_>,
        search: Option<String>,
        first: Option<i32>,
        after: Option<String>,
    ) -> ApiResult<Connection<String, User>> {
        let limit = page_size(first)?;
        let after = decode_cursor::<String>(USER_CURSOR, after.as_deref())?;
        let mut conn = ctx.conn().await?;
        let rows =
            mage_domain::users::search(&mut conn, search.as_deref(), after.as_deref(), limit + 1).await?;
        Ok(page(rows, limit, after.is_some(), |u| Edge::new(encode_cursor(USER_CURSOR, &u.email), u.into())))
    }

    /// Stored Stripe events, newest first (admins only); `status` narrows
    /// them to `received`, `processed`, `ignored` or `failed` (those an
    /// admin may want to `replayStripeEvent`).
    #[graphql(guard = "AdminOnly", complexity = "list_complexity(Some(first), child_complexity)")]
    async fn stripe_events(
        &self,
        ctx: &Context<'_>,
        status: Option<String>,
        #[graphql(default = 50)] first: i32,
    ) -> ApiResult<Vec<StripeEvent>> {
        list_size(first)?;
        if let Some(s) = status.as_deref()
            && !EVENT_STATUSES.contains(&s)
        {
            return Err(ApiError::bad_input(
                "status",
                format!("status must be one of: {}", EVENT_STATUSES.join(", ")),
            ));
        }
        let mut conn = ctx.conn().await?;
        let rows = mage_domain::payments::intake::list(&mut conn, status.as_deref(), first.into()).await?;
        Ok(rows.into_iter().map(StripeEvent::from).collect())
    }

    /// Jobs that ran out of attempts, newest first (admins only). Without
    /// `queue`, those of every queue; `render` means every backend's render
    /// queue (`render:synthetic`, `render:comfyui`, `render:replicate`).
    #[graphql(guard = "AdminOnly", complexity = "list_complexity(Some(first), child_complexity)")]
    async fn dead_jobs(
        &self,
        ctx: &Context<'_>,
        queue: Option<String>,
        #[graphql(default = 50)] first: i32,
    ) -> ApiResult<Vec<DeadJob>> {
        list_size(first)?;
        let queues = match queue.as_deref() {
            Some("render") => Queue::JOBS.into_iter().filter(|q| matches!(q, Queue::Render(_))).collect(),
            Some(q) => vec![job_queue(q)?],
            None => Queue::JOBS.to_vec(),
        };
        let mut all = Vec::new();
        for q in queues {
            all.extend(
                ctx.services()
                    .generations
                    .queues
                    .dead_jobs(q, first as usize)
                    .await
                    .map_err(ApiError::internal)?,
            );
        }
        all.sort_by_key(|j| std::cmp::Reverse(j.died_at));
        all.truncate(first as usize);
        Ok(all
            .into_iter()
            .map(|j| DeadJob {
                queue: j.queue,
                task_id: ID(j.task_id),
                generation_id: j.generation_id.map(|g| ID(g.to_string())),
                attempts: j.attempts as i32,
                error: j.error,
                died_at: j.died_at,
            })
            .collect())
    }
}

/// `first` of an admin's list: 1 to 500.
fn list_size(first: i32) -> ApiResult<()> {
    if !(1..=500).contains(&first) {
        return Err(ApiError::bad_input("first", "first must be between 1 and 500"));
    }
    Ok(())
}

/// A reason for a ledger entry written by an admin.
fn reason_of(reason: &str) -> ApiResult<&str> {
    let reason = reason.trim();
    if reason.is_empty() || reason.chars().count() > 500 {
        return Err(ApiError::bad_input("reason", "reason must be 1 to 500 characters"));
    }
    Ok(reason)
}

/// The ledger key of an admin's operation: theirs, or a fresh one.
fn admin_key(kind: &str, admin: Uuid, key: Option<&str>) -> ApiResult<String> {
    match key.map(str::trim) {
        Some(k) if !k.is_empty() && k.len() <= 200 => Ok(format!("{kind}:{admin}:{k}")),
        Some(_) => Err(ApiError::bad_input("idempotencyKey", "idempotencyKey must be 1 to 200 characters")),
        None => Ok(format!("{kind}:{admin}:{}", Uuid::new_v4())),
    }
}

fn amount_of(amount: i64) -> ApiResult<()> {
    if !(1..=MAX_GRANT).contains(&amount) {
        return Err(ApiError::bad_input("amount", format!("amount must be between 1 and {MAX_GRANT}")));
    }
    Ok(())
}

/// The ledger finds no account: the user does not exist.
fn user_not_found(e: mage_domain::Error) -> ApiError {
    match e {
        mage_domain::Error::NotFound(_) => ApiError::NotFound("user".into()),
        e => e.into(),
    }
}

fn user_id_of(id: &ID) -> ApiResult<Uuid> {
    id.parse().map_err(|_| ApiError::bad_input("userId", "userId is not a user id"))
}

#[derive(Default)]
pub struct AdminMutation;

#[Object]
impl AdminMutation {
    /// Settles a stored Stripe event again, after whatever made it fail was
    /// fixed (admins only). A `failed` or unsettled event goes back to the
    /// `settle` queue; a `processed` or `ignored` one is returned as it is,
    /// never applied twice. Calling it again, or at once from several
    /// places, settles the event once.
    #[graphql(guard = "AdminOnly")]
    async fn replay_stripe_event(&self, ctx: &Context<'_>, id: ID) -> ApiResult<StripeEvent> {
        let admin_id = ctx.viewer().require()?;
        let svc = ctx.services();
        let mut conn = ctx.conn().await?;
        let (ev, settle) = mage_domain::payments::intake::reopen(&mut conn, id.as_str()).await?;
        drop(conn);
        if settle {
            // Were this push lost, the sweeper re-enqueues unsettled events.
            svc.generations
                .queues
                .push_settle(&mage_domain::queue::SettleJob { event_id: ev.id.clone() })
                .await
                .map_err(ApiError::internal)?;
        }
        tracing::info!(%admin_id, event_id = %ev.id, reopened = settle, "Stripe event replayed");
        Ok(StripeEvent::from(ev))
    }

    /// Runs a dead job's generation again for its owner (admins only): a
    /// fresh hold of the same price, back in the queue. `NOT_FOUND` when the
    /// job is not dead (already retried); `INSUFFICIENT_CREDITS` when the
    /// owner can no longer afford it.
    #[graphql(guard = "AdminOnly")]
    async fn retry_dead_job(&self, ctx: &Context<'_>, queue: String, task_id: ID) -> ApiResult<Generation> {
        let admin_id = ctx.viewer().require()?;
        let queue = job_queue(&queue)?;
        let g =
            mage_domain::generations::retry_dead_job(&ctx.services().generations, queue, &task_id).await?;
        tracing::info!(%admin_id, generation_id = %g.id, %queue, task_id = %task_id.as_str(), "dead job retried");
        Ok(Generation::from(g))
    }

    /// Grants credits to a user, recorded in their ledger with the reason.
    /// Pass an `idempotencyKey` to make retries safe: the same key grants once.
    #[graphql(guard = "AdminOnly")]
    async fn grant_credits(
        &self,
        ctx: &Context<'_>,
        user_id: ID,
        amount: i64,
        reason: String,
        expires_at: Option<DateTime<Utc>>,
        idempotency_key: Option<String>,
    ) -> ApiResult<CreditAccount> {
        let admin_id = ctx.viewer().require()?;
        let user_id = user_id_of(&user_id)?;
        amount_of(amount)?;
        let reason = reason_of(&reason)?;
        if expires_at.is_some_and(|t| t <= Utc::now()) {
            return Err(ApiError::bad_input("expiresAt", "expiresAt must be in the future"));
        }
        let key = admin_key("admin-grant", admin_id, idempotency_key.as_deref())?;
        let mut conn = ctx.conn().await?;
        let entry = ledger::grant(
            &mut conn,
            NewGrant {
                user_id,
                amount,
                source: if expires_at.is_some() { GrantSource::Promo } else { GrantSource::Admin },
                expires_at,
                order_id: None,
                stripe_event_id: None,
                memo: Some(reason.to_owned()),
                idempotency_key: key,
            },
        )
        .await
        .map_err(user_not_found)?;
        tracing::info!(%admin_id, %user_id, amount, entry_id = entry.id, "credits granted by an admin");
        mage_domain::events::publish_credits_changed_logged(&ctx.services().redis, user_id).await;
        Ok(CreditAccount(ledger::account(&mut conn, user_id).await?))
    }

    /// Takes credits away from a user (a correction), recorded in their
    /// ledger with the reason. At most their available balance (`CONFLICT`
    /// above); an `idempotencyKey` makes retries safe.
    #[graphql(guard = "AdminOnly")]
    async fn revoke_credits(
        &self,
        ctx: &Context<'_>,
        user_id: ID,
        amount: i64,
        reason: String,
        idempotency_key: Option<String>,
    ) -> ApiResult<CreditAccount> {
        let admin_id = ctx.viewer().require()?;
        let user_id = user_id_of(&user_id)?;
        amount_of(amount)?;
        let reason = reason_of(&reason)?;
        let key = admin_key("admin-revoke", admin_id, idempotency_key.as_deref())?;
        let mut conn = ctx.conn().await?;
        let entry = ledger::revoke(&mut conn, user_id, amount, reason, &key).await.map_err(user_not_found)?;
        tracing::info!(%admin_id, %user_id, amount, entry_id = entry.id, "credits revoked by an admin");
        mage_domain::events::publish_credits_changed_logged(&ctx.services().redis, user_id).await;
        Ok(CreditAccount(ledger::account(&mut conn, user_id).await?))
    }
}
