//! Operations for admins (role ADMIN); everyone else gets `FORBIDDEN`.

use async_graphql::{Context, ID, Object};
use chrono::{DateTime, Utc};
use mage_domain::credits::{self as ledger, GrantSource, NewGrant};
use uuid::Uuid;

use super::credits::CreditAccount;
use super::services;
use super::users::current_user;
use crate::error::{ApiError, ApiResult};

const MAX_GRANT: i64 = 1_000_000;

/// The signed-in user if they are an admin. The role is read from the
/// database on every call, so a demotion takes effect at once.
async fn require_admin(ctx: &Context<'_>) -> ApiResult<mage_domain::models::User> {
    let user = current_user(ctx).await?;
    if !user.is_admin() {
        return Err(ApiError::Forbidden("this operation is for admins".into()));
    }
    Ok(user)
}

#[derive(Default)]
pub struct AdminMutation;

#[Object]
impl AdminMutation {
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
        let user_id: Uuid =
            user_id.parse().map_err(|_| ApiError::bad_input("userId", "userId is not a user id"))?;
        if !(1..=MAX_GRANT).contains(&amount) {
            return Err(ApiError::bad_input("amount", format!("amount must be between 1 and {MAX_GRANT}")));
        }
        let reason = reason.trim();
        if reason.is_empty() || reason.chars().count() > 500 {
            return Err(ApiError::bad_input("reason", "reason must be 1 to 500 characters"));
        }
        if expires_at.is_some_and(|t| t <= Utc::now()) {
            return Err(ApiError::bad_input("expiresAt", "expiresAt must be in the future"));
        }
        let key = match idempotency_key.as_deref().map(str::trim) {
            Some(k) if !k.is_empty() && k.len() <= 200 => format!("admin-grant:{}:{k}", admin.id),
            Some(_) => {
                return Err(ApiError::bad_input(
                    "idempotencyKey",
                    "idempotencyKey must be 1 to 200 characters",
                ));
            }
            None => format!("admin-grant:{}:{}", admin.id, Uuid::new_v4()),
        };
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
        .map_err(|e| match e {
            mage_domain::Error::NotFound(_) => ApiError::NotFound("user".into()),
            e => e.into(),
        })?;
        tracing::info!(admin_id = %admin.id, %user_id, amount, entry_id = entry.id, "credits granted by an admin");
        mage_domain::events::publish_credits_changed_logged(&services(ctx).redis, user_id).await;
        Ok(CreditAccount(ledger::account(&mut conn, user_id).await?))
    }
}
