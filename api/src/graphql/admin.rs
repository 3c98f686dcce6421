//! Operations for admins (role ADMIN); everyone else gets `FORBIDDEN`.

use async_graphql::{Context, ID, Object, SimpleObject};
use chrono::{DateTime, Utc};
use mage_domain::credits::{self as ledger, GrantSource, NewGrant};
use mage_domain::queue::Queue;
use uuid::Uuid;

use super::credits::CreditAccount;
use super::generations::Generation;
use super::orders::StripeEvent;
use super::pagination::{decode_cursor, encode_cursor, page_size};
use super::services;
use super::users::User;
use async_graphql::connection::{Connection, Edge};

const USER_CURSOR: &str = "user";
use super::users::current_user;
use crate::error::{ApiError, ApiResult};

const MAX_GRANT: i64 = 1_000_000;

const EVENT_STATUSES: &[&str] = &["received", "processed", "ignored", "failed"];

/// The signed-in user if they are an admin. The role is read from the
/// database on every call, so a demotion takes effect at once.
pub(crate) async fn require_admin(ctx: &Context<'_>) -> ApiResult<mage_domain::rows::User> {
    let user = current_user(ctx).await?;
    if !user.is_admin() {
        return Err(ApiError::Forbidden("this operation is for admins".into()));
    }
    Ok(user)
}

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
    #[graphql(complexity = "super::pagination::list_complexity(first, child_complexity)")]
    async fn users(
        &self,
        ctx: &Context<'_>,
        search: Option<String>,
        first: Option<i32>,
        after: Option<String>,
    ) -> ApiResult<Connection<String, User>> {
        require_admin(ctx).await?;
        let limit = page_size(first)?;
        let after = decode_cursor::<String>(USER_CURSOR, after.as_deref())?;
        let mut conn = services(ctx).pool.get().await.map_err(ApiError::internal)?;
        let mut rows =
            mage_domain::users::search(&mut conn, search.as_deref(), after.as_deref(), limit + 1).await?;
        let has_next = rows.len() as i64 > limit;
        rows.truncate(limit as usize);
        let mut page = Connection::new(after.is_some(), has_next);
        page.edges
            .extend(rows.into_iter().map(|u| Edge::new(encode_cursor(USER_CURSOR, &u.email), u.into())));
        Ok(page)
    }

    /// Stored Stripe events, newest first (admins only); `status` narrows
    /// them to `received`, `processed`, `ignored` or `failed` (those an
    /// admin may want to `replayStripeEvent`).
    #[graphql(complexity = "super::pagination::list_complexity(Some(first), child_complexity)")]
    async fn stripe_events(
        &self,
        ctx: &Context<'_>,
        status: Option<String>,
        #[graphql(default = 50)] first: i32,
    ) -> ApiResult<Vec<StripeEvent>> {
        require_admin(ctx).await?;
        if !(1..=500).contains(&first) {
            return Err(ApiError::bad_input("first", "first must be between 1 and 500"));
        }
        if let Some(s) = status.as_deref()
            && !EVENT_STATUSES.contains(&s)
        {
            return Err(ApiError::bad_input(
                "status",
                format!("status must be one of: {}", EVENT_STATUSES.join(", ")),
            ));
        }
        let mut conn = services(ctx).pool.get().await.map_err(ApiError::internal)?;
        let rows = mage_domain::payments::intake::list(&mut conn, status.as_deref(), first.into()).await?;
        Ok(rows.into_iter().map(StripeEvent::from).collect())
    }

    /// Jobs that ran out of attempts, newest first (admins only). Without
    /// `queue`, those of every queue.
    #[graphql(complexity = "super::pagination::list_complexity(Some(first), child_complexity)")]
    async fn dead_jobs(
        &self,
        ctx: &Context<'_>,
        queue: Option<String>,
        #[graphql(default = 50)] first: i32,
    ) -> ApiResult<Vec<DeadJob>> {
        require_admin(ctx).await?;
        if !(1..=500).contains(&first) {
            return Err(ApiError::bad_input("first", "first must be between 1 and 500"));
        }
        let queues = match queue.as_deref() {
            Some(q) => vec![job_queue(q)?],
            None => Queue::JOBS.to_vec(),
        };
        let mut all = Vec::new();
        for q in queues {
            all.extend(
                services(ctx)
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
    async fn replay_stripe_event(&self, ctx: &Context<'_>, id: ID) -> ApiResult<StripeEvent> {
        let admin = require_admin(ctx).await?;
        let svc = services(ctx);
        let mut conn = svc.pool.get().await.map_err(ApiError::internal)?;
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
        tracing::info!(admin_id = %admin.id, event_id = %ev.id, reopened = settle, "Stripe event replayed");
        Ok(StripeEvent::from(ev))
    }

    /// Runs a dead job's generation again for its owner (admins only): a
    /// fresh hold of the same price, back in the queue. `NOT_FOUND` when the
    /// job is not dead (already retried); `INSUFFICIENT_CREDITS` when the
    /// owner can no longer afford it.
    async fn retry_dead_job(&self, ctx: &Context<'_>, queue: String, task_id: ID) -> ApiResult<Generation> {
        let admin = require_admin(ctx).await?;
        let queue = job_queue(&queue)?;
        let g = mage_domain::generations::retry_dead_job(&services(ctx).generations, queue, &task_id).await?;
        tracing::info!(admin_id = %admin.id, generation_id = %g.id, %queue, task_id = %task_id.as_str(), "dead job retried");
        Ok(Generation::from(g))
    }

    /// Grants credits to a user, recorded in their ledger with the reason.
    /// Pass an `idempotencyKey` to make retries safe: the same key grants once.
    async fn grant_credits(
        &self,
        ctx: &Context<'_>,
        user_id: ID,
        amount: i64,
        reason: String,
        expires_at: Option<DateTime<Utc>>,
        idempotency_key: Option<String>,
    ) -> ApiResult<CreditAccount> {
        let admin = require_admin(ctx).await?;
        let user_id = user_id_of(&user_id)?;
        amount_of(amount)?;
        let reason = reason_of(&reason)?;
        if expires_at.is_some_and(|t| t <= Utc::now()) {
            return Err(ApiError::bad_input("expiresAt", "expiresAt must be in the future"));
        }
        let key = admin_key("admin-grant", admin.id, idempotency_key.as_deref())?;
        let mut conn = services(ctx).pool.get().await.map_err(ApiError::internal)?;
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
        tracing::info!(admin_id = %admin.id, %user_id, amount, entry_id = entry.id, "credits granted by an admin");
        mage_domain::events::publish_credits_changed_logged(&services(ctx).redis, user_id).await;
        Ok(CreditAccount(ledger::account(&mut conn, user_id).await?))
    }

    /// Takes credits away from a user (a correction), recorded in their
    /// ledger with the reason. At most their available balance (`CONFLICT`
    /// above); an `idempotencyKey` makes retries safe.
    async fn revoke_credits(
        &self,
        ctx: &Context<'_>,
        user_id: ID,
        amount: i64,
        reason: String,
        idempotency_key: Option<String>,
    ) -> ApiResult<CreditAccount> {
        let admin = require_admin(ctx).await?;
        let user_id = user_id_of(&user_id)?;
        amount_of(amount)?;
        let reason = reason_of(&reason)?;
        let key = admin_key("admin-revoke", admin.id, idempotency_key.as_deref())?;
        let mut conn = services(ctx).pool.get().await.map_err(ApiError::internal)?;
        let entry = ledger::revoke(&mut conn, user_id, amount, reason, &key).await.map_err(user_not_found)?;
        tracing::info!(admin_id = %admin.id, %user_id, amount, entry_id = entry.id, "credits revoked by an admin");
        mage_domain::events::publish_credits_changed_logged(&services(ctx).redis, user_id).await;
        Ok(CreditAccount(ledger::account(&mut conn, user_id).await?))
    }
}
