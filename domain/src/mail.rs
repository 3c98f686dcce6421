//! Mail: the outbox (`mails`) and the single-use links it carries
//! (`email_tokens`).
//!
//! A mail is a row first, written in the transaction that decides to send
//! it, and a `mail` job second, pushed after the commit. The worker sends
//! the row and marks it sent; a push lost between the two is found by the
//! sweeper ([`unsent`]). A link's token is 256 random bits; only its
//! SHA-256 is stored, so the table alone opens nothing.
//!
//! Password resets are different: the API must not learn whether an
//! account exists (by answer or by timing), so it only pushes a
//! [`crate::queue::MailJob::PasswordReset`] and the worker looks the
//! address up ([`queue_reset`]).

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use uuid::Uuid;

use crate::credits::{self, GrantSource, NewGrant};
use crate::db::{Connection, DbPool};
use crate::rows::{Mail, User};
use crate::schema::{email_tokens, mails, users};
use crate::sessions::{self, Ended};
use crate::{Error, Result};

/// How long a password-reset link works.
pub const RESET_TTL: chrono::Duration = chrono::Duration::minutes(30);
/// How long an email-verification link works: long enough for a mail
/// read after a weekend.
pub const VERIFY_TTL: chrono::Duration = chrono::Duration::days(7);
/// Reset and verification mails one address may be sent per hour (each
/// kind counted apart).
pub const MAILS_PER_EMAIL_PER_HOUR: u32 = 3;
/// What a link's token starts with, so a leaked one is recognisable.
pub const TOKEN_PREFIX: &str = "mage_et_";

/// What a link in a mail is for (`email_tokens.purpose`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    VerifyEmail,
    ResetPassword,
}

impl Purpose {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::VerifyEmail => "verify_email",
            Self::ResetPassword => "reset_password",
        }
    }
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = email_tokens, check_for_backend(diesel::pg::Pg))]
struct EmailToken {
    user_id: Uuid,
    email: String,
    expires_at: DateTime<Utc>,
    used_at: Option<DateTime<Utc>>,
}

/// A mail to write into the outbox.
#[derive(Debug, Clone)]
pub struct NewMail<'a> {
    pub user_id: Option<Uuid>,
    pub to: &'a str,
    pub subject: &'a str,
    pub body: &'a str,
    /// A second mail with the same key is not written: the first is
    /// returned instead (a retried job sends one mail).
    pub idempotency_key: Option<&'a str>,
}

/// Writes a mail into the outbox (unless one with its idempotency key is
/// there already); returns the row, new or earlier.
pub async fn write(conn: &mut Connection, m: NewMail<'_>) -> Result<Mail> {
    let inserted: Option<Mail> = diesel::insert_into(mails::table)
        .values((
            mails::user_id.eq(m.user_id),
            mails::to_address.eq(m.to),
            mails::subject.eq(m.subject),
            mails::body_text.eq(m.body),
            mails::idempotency_key.eq(m.idempotency_key),
        ))
        .on_conflict_do_nothing()
        .returning(Mail::as_returning())
        .get_result(conn)
        .await
        .optional()?;
    match (inserted, m.idempotency_key) {
        (Some(mail), _) => Ok(mail),
        (None, Some(key)) => by_key(conn, key).await?.ok_or(Error::NotFound("mail")),
        (None, None) => Err(Error::Internal("a mail without a key conflicted".into())),
    }
}

async fn by_key(conn: &mut Connection, key: &str) -> Result<Option<Mail>> {
    Ok(mails::table
        .filter(mails::idempotency_key.eq(key))
        .select(Mail::as_select())
        .first(conn)
        .await
        .optional()?)
}

pub async fn find(conn: &mut Connection, id: Uuid) -> Result<Option<Mail>> {
    Ok(mails::table.find(id).select(Mail::as_select()).first(conn).await.optional()?)
}

/// A new single-use link token for `user_id` at `email`; only its SHA-256
/// is stored.
pub async fn create_token(
    conn: &mut Connection,
    user_id: Uuid,
    email: &str,
    purpose: Purpose,
    ttl: chrono::Duration,
) -> Result<String> {
    let token = sessions::random_secret(TOKEN_PREFIX);
    diesel::insert_into(email_tokens::table)
        .values((
            email_tokens::token_hash.eq(sessions::sha256(&token)),
            email_tokens::user_id.eq(user_id),
            email_tokens::purpose.eq(purpose.as_str()),
            email_tokens::email.eq(email),
            email_tokens::expires_at.eq(Utc::now() + ttl),
        ))
        .execute(conn)
        .await?;
    Ok(token)
}

/// `{public_url}/{page}?token=...` (tokens are base64url: nothing to escape).
pub fn link(public_url: &str, page: &str, token: &str) -> String {
    format!("{}/{page}?token={token}", public_url.trim_end_matches('/'))
}

fn spoken(d: chrono::Duration) -> String {
    match d.num_hours() {
        h if h >= 48 => format!("{} days", h / 24),
        h if h >= 1 => format!("{h} hours"),
        _ => format!("{} minutes", d.num_minutes()),
    }
}

/// Writes the verification mail of `user` (a link to `/verify-email`)
/// into the outbox, in the caller's transaction.
pub async fn write_verification(conn: &mut Connection, user: &User, public_url: &str) -> Result<Mail> {
    let token = create_token(conn, user.id, &user.email, Purpose::VerifyEmail, VERIFY_TTL).await?;
    let body = format!(
        "Hello,\n\nplease confirm that {email} is your email address by opening this link:\n\n{link}\n\n\
         The link works once, for {ttl}. If you did not create an account, ignore this mail.\n",
        email = user.email,
        link = link(public_url, "verify-email", &token),
        ttl = spoken(VERIFY_TTL),
    );
    write(
        conn,
        NewMail {
            user_id: Some(user.id),
            to: &user.email,
            subject: "Confirm your email address",
            body: &body,
            idempotency_key: None,
        },
    )
    .await
}

/// The worker's half of a password reset request: when an account has
/// `email`, a reset token and its mail (keyed by `request_id`, so a
/// retried job writes neither twice); `None` when there is no account.
pub async fn queue_reset(
    pool: &DbPool,
    email: &str,
    request_id: Uuid,
    public_url: &str,
) -> Result<Option<Mail>> {
    let key = format!("reset:{request_id}");
    let mut conn = pool.get().await?;
    conn.transaction::<_, Error, _>(async |conn| {
        if let Some(done) = by_key(conn, &key).await? {
            return Ok(Some(done));
        }
        let user: Option<User> = users::table
            .filter(users::email.eq(email))
            .filter(users::deleted_at.is_null())
            .select(User::as_select())
            .first(conn)
            .await
            .optional()?;
        let Some(user) = user else { return Ok(None) };
        let token = create_token(conn, user.id, &user.email, Purpose::ResetPassword, RESET_TTL).await?;
        let body = format!(
            "Hello,\n\nsomeone (we hope you) asked to reset the password of the account {email}.\n\
             Choose a new password here:\n\n{link}\n\n\
             The link works once, for {ttl}. Resetting signs the account out everywhere.\n\
             If you did not ask for this, ignore this mail: your password stays as it is.\n",
            email = user.email,
            link = link(public_url, "reset-password", &token),
            ttl = spoken(RESET_TTL),
        );
        let mail = write(
            conn,
            NewMail {
                user_id: Some(user.id),
                to: &user.email,
                subject: "Reset your password",
                body: &body,
                idempotency_key: Some(&key),
            },
        )
        .await?;
        Ok(Some(mail))
    })
    .await
}

fn bad_token(message: &str) -> Error {
    Error::invalid("token", message)
}

/// The token's row, locked for this transaction, if it is one of
/// `purpose`'s.
async fn lock_token(conn: &mut Connection, token: &str, purpose: Purpose) -> Result<Option<EmailToken>> {
    if !token.starts_with(TOKEN_PREFIX) || token.len() > 128 {
        return Ok(None);
    }
    Ok(email_tokens::table
        .find(sessions::sha256(token))
        .filter(email_tokens::purpose.eq(purpose.as_str()))
        .select(EmailToken::as_select())
        .for_update()
        .first(conn)
        .await
        .optional()?)
}

async fn mark_used(conn: &mut Connection, token: &str) -> Result<()> {
    diesel::update(email_tokens::table.find(sessions::sha256(token)))
        .set(email_tokens::used_at.eq(diesel::dsl::now))
        .execute(conn)
        .await?;
    Ok(())
}

async fn lock_user(conn: &mut Connection, id: Uuid) -> Result<Option<User>> {
    Ok(users::table
        .find(id)
        .filter(users::deleted_at.is_null())
        .select(User::as_select())
        .for_update()
        .first(conn)
        .await
        .optional()?)
}

const RESET_UNKNOWN: &str = "this password reset link is not valid: ask for a new one";
const RESET_USED: &str = "this password reset link has already been used: ask for a new one";
const RESET_EXPIRED: &str = "this password reset link has expired: ask for a new one";

/// Sets a new password with a reset token, once: the token is locked and
/// marked used in the transaction that changes the password and ends every
/// session of the account. Returns the user and the ended sessions.
pub async fn reset_password(pool: &DbPool, token: &str, new_password: &str) -> Result<(User, Vec<Uuid>)> {
    crate::users::check_password(new_password)?;
    // A token that cannot work costs no hashing.
    {
        let mut conn = pool.get().await?;
        let found: Option<(Option<DateTime<Utc>>, DateTime<Utc>)> =
            if token.starts_with(TOKEN_PREFIX) && token.len() <= 128 {
                email_tokens::table
                    .find(sessions::sha256(token))
                    .filter(email_tokens::purpose.eq(Purpose::ResetPassword.as_str()))
                    .select((email_tokens::used_at, email_tokens::expires_at))
                    .first(&mut conn)
                    .await
                    .optional()?
            } else {
                None
            };
        match found {
            None => return Err(bad_token(RESET_UNKNOWN)),
            Some((Some(_), _)) => return Err(bad_token(RESET_USED)),
            Some((None, expires)) if expires <= Utc::now() => return Err(bad_token(RESET_EXPIRED)),
            Some(_) => {}
        }
    }
    // No pooled connection is held while hashing: it takes tens of ms.
    let hash = crate::users::hash_password(new_password.to_owned()).await?;
    let mut conn = pool.get().await?;
    conn.transaction::<_, Error, _>(async |conn| {
        let t = lock_token(conn, token, Purpose::ResetPassword).await?.ok_or(bad_token(RESET_UNKNOWN))?;
        if t.used_at.is_some() {
            return Err(bad_token(RESET_USED));
        }
        if t.expires_at <= Utc::now() {
            return Err(bad_token(RESET_EXPIRED));
        }
        let user = lock_user(conn, t.user_id).await?.ok_or(bad_token(RESET_UNKNOWN))?;
        // A link sent before the address changed resets nothing.
        if user.email != t.email {
            return Err(bad_token(RESET_UNKNOWN));
        }
        mark_used(conn, token).await?;
        let user: User = diesel::update(users::table.find(user.id))
            .set((users::password_hash.eq(&hash), users::updated_at.eq(Utc::now())))
            .returning(User::as_returning())
            .get_result(conn)
            .await?;
        let ended = sessions::end_all(conn, user.id, None, Ended::PasswordReset).await?;
        Ok((user, ended))
    })
    .await
}

/// The signup bonus granted when the address is verified
/// (MAGE_SIGNUP_BONUS_REQUIRES_VERIFIED_EMAIL).
#[derive(Debug, Clone, Copy)]
pub struct BonusAtVerification {
    pub credits: i64,
}

const VERIFY_UNKNOWN: &str = "this verification link is not valid: ask for a new one";
const VERIFY_EXPIRED: &str = "this verification link has expired: ask for a new one";
const VERIFY_OTHER_ADDRESS: &str =
    "this verification link was sent to an address that is no longer this account's";

/// Verifies the address a verification token was sent to, and grants the
/// signup bonus when it waits for that (once: its idempotency key is the
/// same `signup:{user_id}` registration uses). A link opened again
/// answers the verified user. Returns the user and whether credits were
/// granted.
pub async fn verify_email(
    pool: &DbPool,
    token: &str,
    bonus: Option<BonusAtVerification>,
) -> Result<(User, bool)> {
    let mut conn = pool.get().await?;
    conn.transaction::<_, Error, _>(async |conn| {
        let t = lock_token(conn, token, Purpose::VerifyEmail).await?.ok_or(bad_token(VERIFY_UNKNOWN))?;
        // The user row is locked too: two links verified at once are one
        // after the other.
        let user = lock_user(conn, t.user_id).await?.ok_or(bad_token(VERIFY_UNKNOWN))?;
        if user.email != t.email {
            return Err(bad_token(VERIFY_OTHER_ADDRESS));
        }
        if t.used_at.is_some() && user.email_verified_at.is_some() {
            return Ok((user, false));
        }
        if t.used_at.is_some() {
            return Err(bad_token(VERIFY_UNKNOWN));
        }
        if t.expires_at <= Utc::now() {
            return Err(bad_token(VERIFY_EXPIRED));
        }
        mark_used(conn, token).await?;
        let user: User = if user.email_verified_at.is_none() {
            diesel::update(users::table.find(user.id))
                .set((users::email_verified_at.eq(Utc::now()), users::updated_at.eq(Utc::now())))
                .returning(User::as_returning())
                .get_result(conn)
                .await?
        } else {
            user
        };
        let granted = match bonus {
            Some(b) if b.credits > 0 => grant_signup_bonus(conn, user.id, b.credits).await?,
            _ => false,
        };
        Ok((user, granted))
    })
    .await
}

/// Whether `user_id` got the bonus now (false: it had it already). The
/// grant is idempotent by its key whatever this check says; the check
/// tells the caller whether to announce a change.
async fn grant_signup_bonus(conn: &mut Connection, user_id: Uuid, credits: i64) -> Result<bool> {
    let key = signup_grant(user_id, credits).idempotency_key;
    if credits::has_entry(conn, user_id, &key).await? {
        return Ok(false);
    }
    credits::grant(conn, signup_grant(user_id, credits)).await?;
    Ok(true)
}

/// The signup grant of `user_id`: one per account, by its key.
pub fn signup_grant(user_id: Uuid, credits: i64) -> NewGrant {
    NewGrant {
        user_id,
        amount: credits,
        source: GrantSource::Signup,
        expires_at: None,
        order_id: None,
        stripe_event_id: None,
        memo: Some("Signup bonus".into()),
        idempotency_key: format!("signup:{user_id}"),
    }
}

/// A new verification mail for `user_id`; `None` when the address is
/// verified already.
pub async fn resend_verification(pool: &DbPool, user_id: Uuid, public_url: &str) -> Result<Option<Mail>> {
    let mut conn = pool.get().await?;
    conn.transaction::<_, Error, _>(async |conn| {
        let user = lock_user(conn, user_id).await?.ok_or(Error::NotFound("user"))?;
        if user.email_verified_at.is_some() {
            return Ok(None);
        }
        Ok(Some(write_verification(conn, &user, public_url).await?))
    })
    .await
}

/// What became of one send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    /// Sent now.
    Sent,
    /// Sent before, or being sent by another worker right now.
    Skipped,
    /// The transport failed; the mail stays unsent.
    Failed { attempts: i32, error: String },
}

/// How a transport delivered a mail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Over SMTP: the body (with its live link) is cleared.
    Smtp,
    /// Into the development mailbox: the body is kept for `/dev/mail`.
    Kept,
}

/// Sends mail `id` with `deliver`, at most once: the row is locked (a
/// second worker skips it) and marked sent in the same transaction. A
/// failure is counted on the row with its error.
pub async fn send_with<F, Fut>(pool: &DbPool, id: Uuid, deliver: F) -> Result<Sent>
where
    F: FnOnce(Mail) -> Fut + Send,
    Fut: std::future::Future<Output = std::result::Result<Delivery, String>> + Send,
{
    let mut conn = pool.get().await?;
    conn.transaction::<_, Error, _>(async |conn| {
        let mail: Option<Mail> = mails::table
            .find(id)
            .filter(mails::sent_at.is_null())
            .select(Mail::as_select())
            .for_update()
            .skip_locked()
            .first(conn)
            .await
            .optional()?;
        let Some(mail) = mail else { return Ok(Sent::Skipped) };
        let body = mail.body_text.clone();
        match deliver(mail).await {
            Ok(how) => {
                // Over SMTP the live link now lives only in the mailbox.
                let body = if how == Delivery::Kept { body } else { None };
                diesel::update(mails::table.find(id))
                    .set((
                        mails::sent_at.eq(diesel::dsl::now),
                        mails::body_text.eq(body),
                        mails::last_error.eq(None::<String>),
                    ))
                    .execute(conn)
                    .await?;
                Ok(Sent::Sent)
            }
            Err(error) => {
                let attempts: i32 = diesel::update(mails::table.find(id))
                    .set((mails::attempts.eq(mails::attempts + 1), mails::last_error.eq(&error)))
                    .returning(mails::attempts)
                    .get_result(conn)
                    .await?;
                Ok(Sent::Failed { attempts, error })
            }
        }
    })
    .await
}

/// Unsent mails written before `before` that have attempts left: their
/// job may have been lost (the sweeper enqueues them again).
pub async fn unsent(
    conn: &mut Connection,
    before: DateTime<Utc>,
    max_attempts: i32,
    limit: i64,
) -> Result<Vec<Uuid>> {
    Ok(mails::table
        .filter(mails::sent_at.is_null())
        .filter(mails::created_at.lt(before))
        .filter(mails::attempts.lt(max_attempts))
        .order(mails::created_at.asc())
        .limit(limit)
        .select(mails::id)
        .load(conn)
        .await?)
}

/// The newest mails, newest first (the development mailbox).
pub async fn recent(conn: &mut Connection, limit: i64) -> Result<Vec<Mail>> {
    Ok(mails::table.order(mails::created_at.desc()).limit(limit).select(Mail::as_select()).load(conn).await?)
}
