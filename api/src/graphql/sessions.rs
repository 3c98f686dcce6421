//! Sessions: refresh, logout, the account's devices, changing the password.

use async_graphql::{Context, ID, Object};
use chrono::{DateTime, Utc};
use mage_domain::sessions::{self as domain, Ended, Refreshed};
use mage_domain::{limits, rows, users};

use super::context::ContextExt;
use super::users::{AuthPayload, session_payload};
use crate::error::{ApiError, ApiResult};

/// A signed-in device.
pub struct Session {
    row: rows::Session,
    current: bool,
}

#[Object]
impl Session {
    async fn id(&self) -> ID {
        ID(self.row.id.to_string())
    }

    async fn created_at(&self) -> DateTime<Utc> {
        self.row.created_at
    }

    /// The last sign-in or refresh (an access token is used without one
    /// for up to MAGE_ACCESS_TOKEN_TTL_SECONDS).
    async fn last_used_at(&self) -> DateTime<Utc> {
        self.row.last_used_at
    }

    async fn user_agent(&self) -> Option<&str> {
        self.row.user_agent.as_deref()
    }

    async fn ip_address(&self) -> Option<&str> {
        self.row.ip_address.as_deref()
    }

    /// Whether this is the session making the request.
    async fn current(&self) -> bool {
        self.current
    }
}

fn session_id(id: &ID) -> ApiResult<uuid::Uuid> {
    id.parse().map_err(|_| ApiError::NotFound("session".into()))
}

#[derive(Default)]
pub struct SessionsQuery;

#[Object]
impl SessionsQuery {
    /// The account's live sessions, newest first (not for API keys).
    async fn sessions(&self, ctx: &Context<'_>) -> ApiResult<Vec<Session>> {
        let (user_id, current) = ctx.viewer().require_session()?;
        let mut conn = ctx.conn().await?;
        let rows = domain::list(&mut conn, user_id, ctx.services().session_idle_days).await?;
        Ok(rows.into_iter().map(|row| Session { current: row.id == current, row }).collect())
    }
}

#[derive(Default)]
pub struct SessionsMutation;

#[Object]
impl SessionsMutation {
    /// Trades a refresh token for a new access token and a new refresh
    /// token. Each refresh token works once: one shown again ends its whole
    /// session (someone else has a copy), and so does a session not
    /// refreshed for MAGE_SESSION_IDLE_DAYS. Needs no access token.
    async fn refresh_session(&self, ctx: &Context<'_>, refresh_token: String) -> ApiResult<AuthPayload> {
        let s = ctx.services();
        match domain::refresh(&s.pool, refresh_token.trim(), &ctx.origin(), s.session_idle_days).await? {
            Refreshed::Rotated(session, refresh_token) => {
                let mut conn = ctx.conn().await?;
                let user = users::find(&mut conn, session.user_id)
                    .await?
                    .filter(|u| u.deleted_at.is_none())
                    .ok_or_else(|| ApiError::Unauthenticated("this account no longer exists".into()))?;
                session_payload(ctx, user, session.id, refresh_token)
            }
            Refreshed::Refused(why) => Err(ApiError::Unauthenticated(why.into())),
            Refreshed::Reused(session_id) => {
                s.revocations.add(&[session_id]);
                tracing::warn!(%session_id, "a used refresh token came back: session ended");
                Err(ApiError::Unauthenticated(
                    "this refresh token was already used, so the session was ended to protect the \
                     account: sign in again"
                        .into(),
                ))
            }
        }
    }

    /// Ends the current session: its access and refresh tokens stop
    /// working on every server within a second, its WebSockets close (4403).
    async fn logout(&self, ctx: &Context<'_>) -> ApiResult<bool> {
        let (_, session_id) = ctx.viewer().require_session()?;
        let mut conn = ctx.conn().await?;
        domain::end(&mut conn, session_id, Ended::Logout).await?;
        ctx.services().revocations.add(&[session_id]);
        Ok(true)
    }

    /// Ends one of the account's sessions (another device, or this one).
    async fn revoke_session(&self, ctx: &Context<'_>, id: ID) -> ApiResult<bool> {
        let (user_id, _) = ctx.viewer().require_session()?;
        let id = session_id(&id)?;
        let mut conn = ctx.conn().await?;
        if !domain::end_own(&mut conn, user_id, id, Ended::Revoked).await? {
            return Err(ApiError::NotFound("session".into()));
        }
        ctx.services().revocations.add(&[id]);
        Ok(true)
    }

    /// Changes the password, ends every other session, and gives this one
    /// fresh credentials. A wrong `currentPassword` counts as a failed
    /// sign-in (`RATE_LIMITED` past the limits).
    async fn change_password(
        &self,
        ctx: &Context<'_>,
        current_password: String,
        new_password: String,
    ) -> ApiResult<AuthPayload> {
        let (user_id, session_id) = ctx.viewer().require_session()?;
        let s = ctx.services();
        users::check_password(&new_password)
            .map_err(|_| mage_domain::Error::invalid("newPassword", password_rule()))?;
        let email = ctx.current_user().await?.email;
        let attempt =
            limits::login_attempt(&s.redis, s.auth_limits, &email, &ctx.client().limit_key()).await?;
        let user = match users::confirm_password(&s.pool, user_id, &current_password).await {
            Ok(user) => user,
            Err(mage_domain::Error::InvalidCredentials) => {
                return Err(
                    mage_domain::Error::invalid("currentPassword", "is not this account's password").into()
                );
            }
            Err(e) => {
                attempt.give_back(&s.redis).await;
                return Err(e.into());
            }
        };
        attempt.give_back(&s.redis).await;
        let hash = users::hash_password(new_password).await?;
        let (ended, refresh_token) =
            domain::new_password(&s.pool, user_id, &hash, Some(session_id), Ended::PasswordChanged).await?;
        s.revocations.add(&ended);
        let refresh_token =
            refresh_token.ok_or_else(|| ApiError::Unauthenticated("this session has ended".into()))?;
        session_payload(ctx, user, session_id, refresh_token)
    }
}

fn password_rule() -> String {
    format!("must be {} to {} characters", users::MIN_PASSWORD_CHARS, users::MAX_PASSWORD_CHARS)
}
