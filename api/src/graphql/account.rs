//! The caller's own account: deleting it.

use async_graphql::{Context, Object};
use mage_domain::limits;

use super::context::ContextExt;
use crate::error::ApiResult;

#[derive(Default)]
pub struct AccountMutation;

#[Object]
impl AccountMutation {
    /// Deletes your account, with your password (signed-in sessions only,
    /// never with an API key): active generations are cancelled and their
    /// credits given back, every generation's media and every upload are
    /// deleted from storage, every session and API key stops working, a
    /// subscription is not renewed after its current period, and the email
    /// address is freed (it can sign up again). Orders and the credit ledger
    /// are kept, tied to the anonymised account. A wrong password is
    /// `BAD_USER_INPUT` and counts as a failed sign-in for the account's
    /// email (`RATE_LIMITED` past MAGE_LOGIN_FAILURES_PER_EMAIL /
    /// MAGE_LOGIN_FAILURES_PER_IP). If the payment provider cannot be
    /// reached, nothing is deleted (`PAYMENT_PROVIDER_ERROR`). Deleting an
    /// account that is already deleted returns true.
    async fn delete_account(&self, ctx: &Context<'_>, password: String) -> ApiResult<bool> {
        let (user_id, _) = ctx.viewer().require_session()?;
        let s = ctx.services();
        let user = ctx.current_user().await?;
        // Same buckets as `login`: a stolen token cannot guess the password
        // faster here than at sign-in.
        let attempt =
            limits::login_attempt(&s.redis, s.auth_limits, &user.email, &ctx.client().limit_key()).await?;
        match mage_domain::accounts::delete(s, &s.payments.settings, user_id, &password).await {
            Ok(deleted) => {
                attempt.give_back(&s.redis).await;
                // This instance refuses them at once; the others learn them
                // from their poll of `sessions::revoked_since`.
                s.revocations.add(&deleted.sessions);
                s.revocations.add(&deleted.api_keys);
                Ok(true)
            }
            // Not UNAUTHENTICATED: the caller is signed in, and a client
            // must not take a mistyped password for a sign-out.
            Err(mage_domain::Error::InvalidCredentials) => {
                Err(mage_domain::Error::invalid("password", "is not this account's password").into())
            }
            // Not a guess: Stripe unreachable, or a failure of ours.
            Err(e) => {
                attempt.give_back(&s.redis).await;
                Err(e.into())
            }
        }
    }
}
