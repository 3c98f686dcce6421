//! Accounts: registration (with the signup bonus), sign-in, roles.

use std::str::FromStr;

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use uuid::Uuid;

use crate::credits::{self, GrantSource, NewGrant};
use crate::db::{Connection, DbPool};
pub use crate::enums::Role;
use crate::rows::{CreditAccount, User};
use crate::schema::{credit_accounts, users};
use crate::{Error, Result};

pub const MIN_PASSWORD_CHARS: usize = 8;
pub const MAX_PASSWORD_CHARS: usize = 128;
const EMAIL_INDEX: &str = "users_email_key";

impl User {
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "user" => Ok(Self::User),
            "admin" => Ok(Self::Admin),
            other => Err(format!("unknown role {other:?} (expected user or admin)")),
        }
    }
}

/// Trims and lower-cases an email address and checks its syntax: a local part,
/// one `@`, and a domain name with at least one dot (no display names, no IP
/// literals).
pub fn normalize_email(raw: &str) -> Result<String> {
    let email = raw.trim().to_lowercase();
    let bad = |m: &str| Err(Error::invalid("email", m));
    if email.is_empty() {
        return bad("is required");
    }
    if email.len() > 254 {
        return bad("is longer than 254 characters");
    }
    let parsed = match email_address::EmailAddress::from_str(&email) {
        Ok(p) => p,
        Err(e) => return bad(&format!("is not a valid email address ({e})")),
    };
    let domain = parsed.domain();
    let domain_ok = domain.contains('.')
        && domain.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_alphanumeric() || c == '-')
        });
    // `email()` drops a display name ("Name <a@b.c>"): only a bare address is one.
    if parsed.email() != email || !domain_ok {
        return bad("is not a valid email address");
    }
    Ok(email)
}

pub fn check_password(password: &str) -> Result<()> {
    let n = password.chars().count();
    if n < MIN_PASSWORD_CHARS {
        return Err(Error::invalid("password", format!("must be at least {MIN_PASSWORD_CHARS} characters")));
    }
    if n > MAX_PASSWORD_CHARS {
        return Err(Error::invalid("password", format!("must be at most {MAX_PASSWORD_CHARS} characters")));
    }
    Ok(())
}

/// Argon2 needs 19 MiB and tens of milliseconds of CPU per hash: without a
/// bound, a burst of sign-ups or logins would take hundreds of blocking
/// threads and gigabytes. Twice the cores keeps the CPU busy and memory small.
fn hashing_permits() -> &'static tokio::sync::Semaphore {
    static PERMITS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    PERMITS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
        tokio::sync::Semaphore::new(cores * 2)
    })
}

/// Runs CPU-heavy password work on the blocking pool, a bounded number at once.
async fn with_hashing_permit<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let _permit = hashing_permits().acquire().await.map_err(|e| Error::Internal(e.to_string()))?;
    tokio::task::spawn_blocking(work).await.map_err(|e| Error::Internal(e.to_string()))?
}

/// Argon2id with the crate's defaults (OWASP's m=19 MiB, t=2, p=1).
pub async fn hash_password(password: String) -> Result<String> {
    with_hashing_permit(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| Error::Internal(format!("password hashing failed: {e}")))
    })
    .await
}

/// Checks `password` against `hash`, or against a dummy hash when there is
/// no user, on the blocking pool (where the dummy is also made, once).
async fn verify_password(password: String, hash: Option<String>) -> Result<bool> {
    with_hashing_permit(move || {
        let hash = hash.as_deref().unwrap_or_else(|| dummy_hash());
        let parsed = PasswordHash::new(hash)
            .map_err(|e| Error::Internal(format!("stored password hash is unreadable: {e}")))?;
        Ok(Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
    })
    .await
}

/// Creates a user, their credit account and the signup grant, all in one
/// transaction: either the user exists with their bonus or nothing was written.
pub async fn register(pool: &DbPool, email: &str, password: &str, signup_credits: i64) -> Result<User> {
    let signup = Signup { credits: signup_credits, ..Signup::default() };
    Ok(register_with(pool, email, password, &signup).await?.user)
}

/// What a sign-up grants and sends.
#[derive(Debug, Clone, Default)]
pub struct Signup {
    /// The signup bonus.
    pub credits: i64,
    /// The bonus waits for the address to be verified
    /// (MAGE_SIGNUP_BONUS_REQUIRES_VERIFIED_EMAIL; see `mail::verify_email`).
    pub bonus_at_verification: bool,
    /// The public URL the verification link starts with; `None` writes no
    /// verification mail.
    pub verification_url: Option<String>,
}

/// A new account, and its verification mail in the outbox (to enqueue
/// once committed).
#[derive(Debug, Clone)]
pub struct Registered {
    pub user: User,
    pub verification_mail: Option<Uuid>,
}

/// [`register`], with the verification mail written in the same
/// transaction as the user (the outbox), and the bonus granted now or at
/// verification.
pub async fn register_with(
    pool: &DbPool,
    email: &str,
    password: &str,
    signup: &Signup,
) -> Result<Registered> {
    let signup_credits = if signup.bonus_at_verification { 0 } else { signup.credits };
    let email = normalize_email(email)?;
    check_password(password)?;
    // Saves the hashing work for the common duplicate; the unique index below
    // is what actually decides a race.
    if find_by_email(&mut *pool.get().await?, &email).await?.is_some() {
        return Err(email_taken());
    }
    // No pooled connection is held while hashing: it takes tens of ms.
    let hash = hash_password(password.to_owned()).await?;
    let mut conn = pool.get().await?;
    let result = conn
        .transaction::<_, Error, _>(async |conn| {
            let user: User = diesel::insert_into(users::table)
                .values((users::email.eq(&email), users::password_hash.eq(&hash)))
                .returning(User::as_returning())
                .get_result(conn)
                .await?;
            credits::open_account(conn, user.id).await?;
            if signup_credits > 0 {
                credits::grant(
                    conn,
                    NewGrant {
                        user_id: user.id,
                        amount: signup_credits,
                        source: GrantSource::Signup,
                        expires_at: None,
                        order_id: None,
                        stripe_event_id: None,
                        memo: Some("Signup bonus".into()),
                        idempotency_key: format!("signup:{}", user.id),
                    },
                )
                .await?;
            }
            let verification_mail = match &signup.verification_url {
                Some(url) => Some(crate::mail::write_verification(conn, &user, url).await?.id),
                None => None,
            };
            Ok(Registered { user, verification_mail })
        })
        .await;
    match result {
        Err(e) if e.is_unique_violation(EMAIL_INDEX) => Err(email_taken()),
        other => other,
    }
}

fn email_taken() -> Error {
    Error::Conflict("an account with this email already exists".into())
}

/// The user with this email and password. An unknown email costs the same
/// hashing work as a wrong password, so timing does not tell them apart.
pub async fn authenticate(pool: &DbPool, email: &str, password: &str) -> Result<User> {
    // Hashing costs the server far more than sending costs the client: a
    // password no account can have is refused before any of that work.
    if password.chars().count() > MAX_PASSWORD_CHARS {
        return Err(Error::invalid("password", format!("must be at most {MAX_PASSWORD_CHARS} characters")));
    }
    let user = find_by_email(&mut *pool.get().await?, email).await?;
    let hash = user.as_ref().map(|u| u.password_hash.clone());
    let ok = verify_password(password.to_owned(), hash).await?;
    match user {
        // A deleted account's email is scrubbed, so this only guards the
        // scrubbed address itself.
        Some(u) if ok && u.deleted_at.is_none() => Ok(u),
        _ => Err(Error::InvalidCredentials),
    }
}

/// The user `id` if `password` is theirs (`InvalidCredentials` otherwise):
/// what changing the password or deleting the account asks first.
pub async fn confirm_password(pool: &DbPool, id: Uuid, password: &str) -> Result<User> {
    if password.chars().count() > MAX_PASSWORD_CHARS {
        return Err(Error::InvalidCredentials);
    }
    let user = find(&mut *pool.get().await?, id).await?.filter(|u| u.deleted_at.is_none());
    let hash = user.as_ref().map(|u| u.password_hash.clone());
    match (verify_password(password.to_owned(), hash).await?, user) {
        (true, Some(u)) => Ok(u),
        _ => Err(Error::InvalidCredentials),
    }
}

/// Sets a new password (checked, then hashed off the pool); the caller
/// ends whichever sessions the change should end.
pub async fn set_password(conn: &mut Connection, id: Uuid, hash: &str) -> Result<()> {
    diesel::update(users::table.find(id))
        .set((users::password_hash.eq(hash), users::updated_at.eq(chrono::Utc::now())))
        .execute(conn)
        .await?;
    Ok(())
}

fn dummy_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(b"not a password anyone has", &salt)
            .map(|h| h.to_string())
            .unwrap_or_default()
    })
}

/// Whether an account with this id exists (one index lookup).
pub async fn exists(conn: &mut Connection, id: Uuid) -> Result<bool> {
    Ok(diesel::select(diesel::dsl::exists(users::table.find(id))).get_result(conn).await?)
}

pub async fn find(conn: &mut Connection, id: Uuid) -> Result<Option<User>> {
    Ok(users::table.find(id).select(User::as_select()).first(conn).await.optional()?)
}

/// A user and their credit account in one query: what an app's `me` shows
/// on every screen.
pub async fn find_with_account(
    conn: &mut Connection,
    id: Uuid,
) -> Result<Option<(User, Option<CreditAccount>)>> {
    Ok(users::table
        .left_join(credit_accounts::table)
        .filter(users::id.eq(id))
        .select((User::as_select(), Option::<CreditAccount>::as_select()))
        .first(conn)
        .await
        .optional()?)
}

pub async fn find_many(conn: &mut Connection, ids: &[Uuid]) -> Result<Vec<User>> {
    Ok(users::table.filter(users::id.eq_any(ids)).select(User::as_select()).load(conn).await?)
}

pub async fn find_by_email(conn: &mut Connection, email: &str) -> Result<Option<User>> {
    Ok(users::table
        .filter(users::email.eq(email.trim().to_lowercase()))
        .select(User::as_select())
        .first(conn)
        .await
        .optional()?)
}

/// Sets a user's role (`mage user promote`).
pub async fn set_role(pool: &DbPool, email: &str, role: Role) -> Result<User> {
    let mut conn = pool.get().await?;
    diesel::update(users::table)
        .filter(users::email.eq(email.trim().to_lowercase()))
        .set((users::role.eq(role.as_str()), users::updated_at.eq(chrono::Utc::now())))
        .returning(User::as_returning())
        .get_result(&mut conn)
        .await
        .optional()?
        .ok_or(Error::NotFound("user"))
}

/// Users whose email contains `search` (any case), by email, after the
/// email `after`, at most `limit` (admins' user list).
pub async fn search(
    conn: &mut Connection,
    search: Option<&str>,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<User>> {
    let mut q = users::table.select(User::as_select()).order(users::email.asc()).limit(limit).into_boxed();
    if let Some(s) = search.map(str::trim).filter(|s| !s.is_empty()) {
        // Emails are stored lower-cased; LIKE's wildcards in the search are
        // literal characters.
        let escaped = s.to_lowercase().replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
        q = q.filter(users::email.like(format!("%{escaped}%")));
    }
    if let Some(a) = after {
        q = q.filter(users::email.gt(a.to_owned()));
    }
    Ok(q.load(conn).await?)
}
