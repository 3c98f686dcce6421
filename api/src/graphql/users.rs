//! Accounts: register, login, me.

use async_graphql::{Context, Enum, ID, Object, SimpleObject};
use chrono::{DateTime, Utc};
use mage_domain::users as domain;
use mage_domain::{limits, rows};

use super::context::ContextExt;
use super::credits::CreditAccount;
use crate::error::ApiResult;

#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
#[graphql(remote = "domain::Role")]
pub enum Role {
    User,
    Admin,
}

pub struct User(pub rows::User, pub Option<rows::CreditAccount>);

impl From<rows::User> for User {
    fn from(u: rows::User) -> Self {
        Self(u, None)
    }
}

#[Object]
impl User {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }

    async fn email(&self) -> &str {
        &self.0.email
    }

    async fn role(&self) -> Role {
        self.0.role.into()
    }

    async fn credits(&self, ctx: &Context<'_>) -> ApiResult<CreditAccount> {
        match self.1 {
            Some(account) => Ok(CreditAccount(account)),
            None => Ok(CreditAccount(ctx.loaders().account(self.0.id).await?)),
        }
    }

    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }

    /// Whether the account's address was confirmed with the link of a
    /// verification mail (`verifyEmail`).
    async fn email_verified(&self) -> bool {
        self.0.email_verified_at.is_some()
    }

    /// When the account was deleted (`deleteAccount`); its email is then
    /// `deleted+<id>@deleted.invalid`.
    async fn deleted_at(&self) -> Option<DateTime<Utc>> {
        self.0.deleted_at
    }

    /// Whether the account was deleted (see `deletedAt`).
    async fn deleted(&self) -> bool {
        self.0.deleted_at.is_some()
    }
}

/// A signed-in session's credentials.
#[derive(SimpleObject)]
pub struct AuthPayload {
    /// The access token: send as `Authorization: Bearer <token>`. Short
    /// lived (MAGE_ACCESS_TOKEN_TTL_SECONDS); get the next one with
    /// `refreshSession` before `expiresAt`.
    token: String,
    expires_at: DateTime<Utc>,
    /// Opaque and single use: `refreshSession` trades it for a new one.
    /// Presenting one a second time ends the session. Keep it only in
    /// secure storage.
    refresh_token: String,
    user: User,
}

/// Signs `user` in on a new session (this device).
pub(crate) async fn auth_payload(ctx: &Context<'_>, user: rows::User) -> ApiResult<AuthPayload> {
    let mut conn = ctx.conn().await?;
    let (session, refresh_token) = mage_domain::sessions::start(&mut conn, user.id, &ctx.origin()).await?;
    session_payload(ctx, user, session.id, refresh_token)
}

/// The credentials of session `session_id`, just given `refresh_token`.
pub(crate) fn session_payload(
    ctx: &Context<'_>,
    user: rows::User,
    session_id: uuid::Uuid,
    refresh_token: String,
) -> ApiResult<AuthPayload> {
    let (token, expires_at) = ctx.services().tokens.issue(user.id, session_id)?;
    Ok(AuthPayload { token, expires_at, refresh_token, user: user.into() })
}

#[derive(Default)]
pub struct UsersQuery;

#[Object]
impl UsersQuery {
    /// The signed-in user; null when not signed in.
    async fn me(&self, ctx: &Context<'_>) -> ApiResult<Option<User>> {
        let Some(id) = ctx.viewer().optional()? else { return Ok(None) };
        // The account comes along (one round trip instead of two): nearly
        // every `me` asks for the balance.
        let mut conn = ctx.conn().await?;
        Ok(domain::find_with_account(&mut conn, id).await?.map(|(user, account)| User(user, account)))
    }
}

#[derive(Default)]
pub struct UsersMutation;

#[Object]
impl UsersMutation {
    /// Creates an account, grants the signup bonus (or, with
    /// MAGE_SIGNUP_BONUS_REQUIRES_VERIFIED_EMAIL, at verification), sends
    /// a verification mail and signs in. At most
    /// MAGE_SIGNUPS_PER_IP_PER_HOUR per client address (`RATE_LIMITED`).
    async fn register(&self, ctx: &Context<'_>, email: String, password: String) -> ApiResult<AuthPayload> {
        let s = ctx.services();
        let attempt = limits::signup_attempt(&s.redis, s.auth_limits, &ctx.client().limit_key()).await?;
        let user = match super::email::register(ctx, &email, &password).await {
            Ok(user) => user,
            Err(e) => {
                // Input a sign-up refuses (checked before any hashing)
                // costs no slot.
                if matches!(e, mage_domain::Error::InvalidInput { .. }) {
                    attempt.give_back(&s.redis).await;
                }
                return Err(e.into());
            }
        };
        tracing::info!(user_id = %user.id, "user registered");
        auth_payload(ctx, user).await
    }

    /// Signs in. Failed attempts are limited per email
    /// (MAGE_LOGIN_FAILURES_PER_EMAIL) and per client address
    /// (MAGE_LOGIN_FAILURES_PER_IP), both per 15 minutes: past them every
    /// attempt, right password or not, is `RATE_LIMITED` with
    /// `retryAfterSeconds`, before the password is looked at.
    async fn login(&self, ctx: &Context<'_>, email: String, password: String) -> ApiResult<AuthPayload> {
        let s = ctx.services();
        let attempt =
            limits::login_attempt(&s.redis, s.auth_limits, &email, &ctx.client().limit_key()).await?;
        match domain::authenticate(&s.pool, &email, &password).await {
            Ok(user) => {
                attempt.give_back(&s.redis).await;
                auth_payload(ctx, user).await
            }
            Err(e @ mage_domain::Error::InvalidCredentials) => Err(e.into()),
            // A password over the length limit (refused before hashing) or
            // a failure of ours: not a guess.
            Err(e) => {
                attempt.give_back(&s.redis).await;
                Err(e.into())
            }
        }
    }
}
