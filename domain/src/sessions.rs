//! Sessions: one per signed-in device. A session hands out short access
//! tokens (signed by the API, naming the session) and rotates an opaque
//! refresh token, kept here only as its SHA-256. A refresh token shown twice
//! means someone else has a copy: the whole session ends.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use uuid::Uuid;

use crate::db::{Connection, DbPool};
use crate::rows::Session;
use crate::schema::{refresh_tokens, sessions};
use crate::{Error, Result};

/// What a refresh token starts with, so a leaked one is recognisable (and
/// secret scanners can match it).
pub const REFRESH_PREFIX: &str = "mage_rt_";

/// Why a session ended (`sessions.revoked_reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Logout,
    Revoked,
    /// A refresh token was presented a second time.
    RefreshReuse,
    /// No refresh for MAGE_SESSION_IDLE_DAYS.
    Idle,
    PasswordChanged,
    PasswordReset,
    AccountDeleted,
}

impl Ended {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Logout => "logout",
            Self::Revoked => "revoked",
            Self::RefreshReuse => "refresh_token_reused",
            Self::Idle => "idle",
            Self::PasswordChanged => "password_changed",
            Self::PasswordReset => "password_reset",
            Self::AccountDeleted => "account_deleted",
        }
    }
}

/// Where a session was started from (shown in `sessions`).
#[derive(Debug, Clone, Default)]
pub struct Origin {
    pub user_agent: Option<String>,
    pub ip_address: Option<String>,
}

impl Origin {
    fn user_agent(&self) -> Option<String> {
        // A header is the client's to fill: a bounded, printable excerpt.
        self.user_agent.as_deref().map(|ua| ua.chars().filter(|c| !c.is_control()).take(256).collect())
    }
}

/// A fresh random secret with `prefix`: 256 bits, base64url.
pub fn random_secret(prefix: &str) -> String {
    use base64::Engine;
    use rand_core::RngCore;
    let mut bytes = [0u8; 32];
    rand_core::OsRng.fill_bytes(&mut bytes);
    format!("{prefix}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

pub fn sha256(secret: &str) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(secret.as_bytes()).to_vec()
}

/// Starts a session for `user_id`; returns it with its first refresh token.
pub async fn start(conn: &mut Connection, user_id: Uuid, origin: &Origin) -> Result<(Session, String)> {
    let session: Session = diesel::insert_into(sessions::table)
        .values((
            sessions::user_id.eq(user_id),
            sessions::user_agent.eq(origin.user_agent()),
            sessions::ip_address.eq(&origin.ip_address),
        ))
        .returning(Session::as_returning())
        .get_result(conn)
        .await?;
    let refresh = issue_refresh(conn, session.id).await?;
    Ok((session, refresh))
}

async fn issue_refresh(conn: &mut Connection, session_id: Uuid) -> Result<String> {
    let token = random_secret(REFRESH_PREFIX);
    diesel::insert_into(refresh_tokens::table)
        .values((refresh_tokens::token_hash.eq(sha256(&token)), refresh_tokens::session_id.eq(session_id)))
        .execute(conn)
        .await?;
    Ok(token)
}

/// What became of a refresh.
pub enum Refreshed {
    /// The session goes on with a new refresh token.
    Rotated(Session, String),
    /// The token is unknown, or its session has ended: sign in again.
    Refused(&'static str),
    /// The token had been used before: the session `0` is now ended, for
    /// the thief and the owner alike.
    Reused(Uuid),
}

/// Trades a refresh token for a new one (single use). The token's row is
/// locked, so of two refreshes with one token exactly one rotates and the
/// other ends the session.
pub async fn refresh(pool: &DbPool, token: &str, origin: &Origin, idle_days: u32) -> Result<Refreshed> {
    if !token.starts_with(REFRESH_PREFIX) || token.len() > 128 {
        return Ok(Refreshed::Refused("the refresh token is not valid: sign in again"));
    }
    let hash = sha256(token);
    let mut conn = pool.get().await?;
    conn.transaction::<_, Error, _>(async |conn| {
        let found: Option<(Option<DateTime<Utc>>, Session)> = refresh_tokens::table
            .inner_join(sessions::table)
            .filter(refresh_tokens::token_hash.eq(&hash))
            .select((refresh_tokens::used_at, Session::as_select()))
            .for_update()
            .first(conn)
            .await
            .optional()?;
        let Some((used_at, session)) = found else {
            return Ok(Refreshed::Refused("the refresh token is not valid: sign in again"));
        };
        if session.revoked_at.is_some() {
            return Ok(Refreshed::Refused("this session has ended: sign in again"));
        }
        if used_at.is_some() {
            end(conn, session.id, Ended::RefreshReuse).await?;
            return Ok(Refreshed::Reused(session.id));
        }
        if session.last_used_at < Utc::now() - chrono::Duration::days(i64::from(idle_days)) {
            end(conn, session.id, Ended::Idle).await?;
            return Ok(Refreshed::Refused("this session expired after being idle: sign in again"));
        }
        diesel::update(refresh_tokens::table.find(&hash))
            .set(refresh_tokens::used_at.eq(diesel::dsl::now))
            .execute(conn)
            .await?;
        let session: Session = diesel::update(sessions::table.find(session.id))
            .set((
                sessions::last_used_at.eq(diesel::dsl::now),
                sessions::user_agent.eq(origin.user_agent().or(session.user_agent)),
                sessions::ip_address.eq(origin.ip_address.clone().or(session.ip_address)),
            ))
            .returning(Session::as_returning())
            .get_result(conn)
            .await?;
        let refresh = issue_refresh(conn, session.id).await?;
        Ok(Refreshed::Rotated(session, refresh))
    })
    .await
}

/// Ends one session; false when it had already ended.
pub async fn end(conn: &mut Connection, id: Uuid, why: Ended) -> Result<bool> {
    let n = diesel::update(sessions::table.find(id).filter(sessions::revoked_at.is_null()))
        .set((sessions::revoked_at.eq(diesel::dsl::now), sessions::revoked_reason.eq(why.as_str())))
        .execute(conn)
        .await?;
    Ok(n > 0)
}

/// Ends `user_id`'s session `id` (a user revoking one of their devices);
/// false when it is not theirs or already ended.
pub async fn end_own(conn: &mut Connection, user_id: Uuid, id: Uuid, why: Ended) -> Result<bool> {
    let n = diesel::update(
        sessions::table.find(id).filter(sessions::user_id.eq(user_id)).filter(sessions::revoked_at.is_null()),
    )
    .set((sessions::revoked_at.eq(diesel::dsl::now), sessions::revoked_reason.eq(why.as_str())))
    .execute(conn)
    .await?;
    Ok(n > 0)
}

/// Ends every session of `user_id` but `keep`; returns the ended ones.
pub async fn end_all(
    conn: &mut Connection,
    user_id: Uuid,
    keep: Option<Uuid>,
    why: Ended,
) -> Result<Vec<Uuid>> {
    Ok(diesel::update(
        sessions::table
            .filter(sessions::user_id.eq(user_id))
            .filter(sessions::revoked_at.is_null())
            .filter(sessions::id.ne(keep.unwrap_or(Uuid::nil()))),
    )
    .set((sessions::revoked_at.eq(diesel::dsl::now), sessions::revoked_reason.eq(why.as_str())))
    .returning(sessions::id)
    .get_results(conn)
    .await?)
}

/// Gives a live session a new refresh token (after a password change, the
/// device that changed it stays signed in with fresh credentials); the
/// earlier ones stop working.
pub async fn reissue(conn: &mut Connection, id: Uuid) -> Result<Option<String>> {
    if ended(conn, id).await? {
        return Ok(None);
    }
    diesel::update(refresh_tokens::table.filter(refresh_tokens::session_id.eq(id)))
        .filter(refresh_tokens::used_at.is_null())
        .set(refresh_tokens::used_at.eq(diesel::dsl::now))
        .execute(conn)
        .await?;
    Ok(Some(issue_refresh(conn, id).await?))
}

/// Sets a new password hash and ends every session of `user_id` but
/// `keep`, which gets a fresh refresh token (earlier ones stop working), in
/// one transaction; returns the ended sessions and `keep`'s new token
/// (`None` if it had ended meanwhile).
pub async fn new_password(
    pool: &DbPool,
    user_id: Uuid,
    hash: &str,
    keep: Option<Uuid>,
    why: Ended,
) -> Result<(Vec<Uuid>, Option<String>)> {
    let mut conn = pool.get().await?;
    conn.transaction::<_, Error, _>(async |conn| {
        crate::users::set_password(conn, user_id, hash).await?;
        let ended = end_all(conn, user_id, keep, why).await?;
        let refresh = match keep {
            Some(id) => reissue(conn, id).await?,
            None => None,
        };
        Ok((ended, refresh))
    })
    .await
}

/// `user_id`'s live sessions, newest first; those idle for `idle_days` are
/// over and not shown.
pub async fn list(conn: &mut Connection, user_id: Uuid, idle_days: u32) -> Result<Vec<Session>> {
    Ok(sessions::table
        .filter(sessions::user_id.eq(user_id))
        .filter(sessions::revoked_at.is_null())
        .filter(sessions::last_used_at.gt(Utc::now() - chrono::Duration::days(i64::from(idle_days))))
        .order(sessions::created_at.desc())
        .limit(200)
        .select(Session::as_select())
        .load(conn)
        .await?)
}

/// Whether session `id` has ended (revoked, or not found at all).
pub async fn ended(conn: &mut Connection, id: Uuid) -> Result<bool> {
    let live: bool =
        diesel::select(diesel::dsl::exists(sessions::table.find(id).filter(sessions::revoked_at.is_null())))
            .get_result(conn)
            .await?;
    Ok(!live)
}

/// How long a spent refresh token is kept to recognise a replay: as long as
/// the longest idle period a session may have (past it, a replay is just
/// an unknown token).
const SPENT_KEPT_DAYS: i64 = 90;

/// Deletes up to `batch` refresh tokens nothing needs any more: spent ones
/// past [`SPENT_KEPT_DAYS`], and any of a session ended that long ago.
pub async fn prune(conn: &mut Connection, batch: i64) -> Result<usize> {
    let before = Utc::now() - chrono::Duration::days(SPENT_KEPT_DAYS);
    Ok(diesel::sql_query(
        "DELETE FROM refresh_tokens WHERE token_hash IN (
           SELECT t.token_hash FROM refresh_tokens t JOIN sessions s ON s.id = t.session_id
           WHERE t.used_at < $1 OR s.revoked_at < $1 LIMIT $2)",
    )
    .bind::<diesel::sql_types::Timestamptz, _>(before)
    .bind::<diesel::sql_types::BigInt, _>(batch)
    .execute(conn)
    .await?)
}

/// Sessions and API keys revoked after `since` (by the database's clock),
/// with the database's time now: what every API instance polls to refuse
/// their credentials without a query per request.
pub async fn revoked_since(
    conn: &mut Connection,
    since: DateTime<Utc>,
) -> Result<(Vec<Uuid>, DateTime<Utc>)> {
    use diesel::sql_types::{Array, Timestamptz, Uuid as SqlUuid};
    #[derive(QueryableByName)]
    struct Polled {
        #[diesel(sql_type = Timestamptz)]
        now: DateTime<Utc>,
        #[diesel(sql_type = Array<SqlUuid>)]
        ids: Vec<Uuid>,
    }
    // One round trip (every instance runs this four times a second), the
    // clock read in the same statement as the rows.
    let polled: Polled = diesel::sql_query(
        "SELECT now() AS now,
                ARRAY(SELECT id FROM sessions WHERE revoked_at > $1)
                  || ARRAY(SELECT id FROM api_keys WHERE revoked_at > $1) AS ids",
    )
    .bind::<Timestamptz, _>(since)
    .get_result(conn)
    .await?;
    Ok((polled.ids, polled.now))
}
