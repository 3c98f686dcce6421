//! Passwords and email: reset a forgotten password, verify the address.
//! The mails themselves are written to the outbox and sent by the `mail`
//! queue (`mage_domain::mail`, `mage_jobs::mail`).

use async_graphql::{Context, Object};
use mage_domain::mail::{self, BonusAtVerification};
use mage_domain::queue::MailJob;
use mage_domain::{limits, rows, users};
use uuid::Uuid;

use super::context::ContextExt;
use super::users::{AuthPayload, User};
use crate::error::ApiResult;

/// Registration as the `register` mutation runs it: the verification mail
/// is written with the account (one transaction) and enqueued once it is
/// committed; the signup bonus waits for verification when
/// MAGE_SIGNUP_BONUS_REQUIRES_VERIFIED_EMAIL says so.
pub(crate) async fn register(
    ctx: &Context<'_>,
    email: &str,
    password: &str,
) -> mage_domain::Result<rows::User> {
    let s = ctx.services();
    let signup = users::Signup {
        credits: s.signup_credits,
        bonus_at_verification: s.signup_bonus_requires_verified_email,
        verification_url: Some(s.public_url.clone()),
    };
    let registered = users::register_with(&s.pool, email, password, &signup).await?;
    if let Some(mail_id) = registered.verification_mail {
        enqueue(ctx, mail_id).await;
    }
    Ok(registered.user)
}

/// Enqueues a mail already in the outbox. A failure is logged, not
/// returned: the mail is written, and the sweeper enqueues it again.
async fn enqueue(ctx: &Context<'_>, mail_id: Uuid) {
    if let Err(e) = ctx.services().queues.push_mail(&MailJob::Send { mail_id }).await {
        tracing::warn!(%mail_id, error = %e, "could not enqueue a mail; the sweeper will");
    }
}

#[derive(Default)]
pub struct EmailMutation;

#[Object]
impl EmailMutation {
    /// Mails a password reset link (valid 30 minutes, single use) to
    /// `email` if an account has it. Always `true`, answered the same way
    /// and after the same work whether or not the account exists, so it
    /// tells nobody which addresses have accounts. At most 3 mails per
    /// address per hour: past that, still `true`, and nothing is sent. A
    /// malformed address is `BAD_USER_INPUT`.
    async fn request_password_reset(&self, ctx: &Context<'_>, email: String) -> ApiResult<bool> {
        let s = ctx.services();
        let email = users::normalize_email(&email)?;
        // The same two Redis round trips for every address: the account is
        // looked up by the worker, never here.
        match limits::reset_mail_attempt(&s.redis, &email).await {
            Ok(_) => {
                let job = MailJob::PasswordReset {
                    email,
                    request_id: Uuid::new_v4(),
                    public_url: s.public_url.clone(),
                };
                s.queues.push_mail(&job).await?;
            }
            Err(mage_domain::Error::RateLimited { .. }) => {
                tracing::info!("password reset asked too often for one address; no mail sent");
            }
            Err(e) => return Err(e.into()),
        }
        Ok(true)
    }

    /// Sets a new password with the token of a reset link, once. Every
    /// session of the account ends (all devices are signed out) and a new
    /// one starts here. A token that is unknown, used or expired is
    /// `BAD_USER_INPUT` saying which; the password must be 8 to 128
    /// characters.
    async fn reset_password(
        &self,
        ctx: &Context<'_>,
        token: String,
        new_password: String,
    ) -> ApiResult<AuthPayload> {
        let s = ctx.services();
        let (user, ended) = mail::reset_password(&s.pool, &token, &new_password).await?;
        // This instance refuses their tokens at once; the others within a
        // poll (`auth::Revocations`).
        s.revocations.add(&ended);
        tracing::info!(user_id = %user.id, sessions_ended = ended.len(), "password reset");
        super::users::auth_payload(ctx, user).await
    }

    /// Confirms the address a verification link was sent to; no sign-in
    /// needed. Opening the same link again answers the verified user. With
    /// MAGE_SIGNUP_BONUS_REQUIRES_VERIFIED_EMAIL the signup credits are
    /// granted now (once per account). A link sent to an address the
    /// account no longer has, or unknown or expired (7 days), is
    /// `BAD_USER_INPUT`.
    async fn verify_email(&self, ctx: &Context<'_>, token: String) -> ApiResult<User> {
        let s = ctx.services();
        let bonus = s
            .signup_bonus_requires_verified_email
            .then_some(BonusAtVerification { credits: s.signup_credits });
        let (user, granted) = mail::verify_email(&s.pool, &token, bonus).await?;
        if granted {
            mage_domain::events::publish_credits_changed_logged(&s.redis, user.id).await;
        }
        tracing::info!(user_id = %user.id, bonus_granted = granted, "email verified");
        Ok(user.into())
    }

    /// Sends the signed-in user a new verification link. `false` when the
    /// address is verified already (nothing sent). At most 3 per address
    /// per hour (`RATE_LIMITED`).
    async fn resend_verification(&self, ctx: &Context<'_>) -> ApiResult<bool> {
        let s = ctx.services();
        let user = ctx.current_user().await?;
        if user.email_verified_at.is_some() {
            return Ok(false);
        }
        let attempt = limits::verification_mail_attempt(&s.redis, &user.email).await?;
        match mail::resend_verification(&s.pool, user.id, &s.public_url).await {
            Ok(Some(m)) => {
                enqueue(ctx, m.id).await;
                Ok(true)
            }
            Ok(None) => {
                attempt.give_back(&s.redis).await;
                Ok(false)
            }
            Err(e) => {
                attempt.give_back(&s.redis).await;
                Err(e.into())
            }
        }
    }
}
