//! Deleting an account (`deleteAccount`): its owner proves the password,
//! then Stripe stops renewing their subscriptions, and one transaction
//! cancels their active generations (holds released through the cancel
//! path), marks every generation and asset deleted, ends every session,
//! revokes every API key, voids mailed links and scrubs the email and
//! password hash, so the address can sign up again. Orders, subscriptions
//! and the ledger stay, tied to the anonymised row.
//!
//! Nothing is half-done:
//! - Stripe is asked first (idempotently): if it cannot be reached nothing
//!   else happens and the user can try again; if the transaction then
//!   fails, a retry asks Stripe again harmlessly.
//! - The transaction is all or nothing; two deletions of one account take
//!   turns on an advisory lock, and the second finds it deleted.
//! - Storage goes after the commit and is idempotent; what a crash (or an
//!   outage) leaves, the sweeper finishes: media of deleted generations
//!   (`generations::deleted_media_due`), bytes of deleted assets
//!   (`assets::sweep`), and whatever a request racing the deletion created
//!   for the account ([`finish_deletions`]).

use chrono::Utc;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use uuid::Uuid;

use crate::config::PaymentSettings;
use crate::core::Core;
use crate::db::Connection;
use crate::generations::{self, Canceled, Status};
use crate::rows::{Asset, User};
use crate::schema::{api_keys, assets, email_tokens, generations as generations_t, sessions, users};
use crate::sessions::Ended;
use crate::{Error, Result, api_keys as keys, assets as asset_files, payments, subscriptions};

/// The address a deleted account is left with: unique, never deliverable
/// (`.invalid` is reserved), and no valid sign-up address.
pub fn scrubbed_email(user_id: Uuid) -> String {
    format!("deleted+{user_id}@deleted.invalid")
}

/// What a deletion ended, for the caller to refuse at once on this
/// instance (other instances learn it from `sessions::revoked_since`).
#[derive(Debug, Default, Clone)]
pub struct Deleted {
    pub sessions: Vec<Uuid>,
    pub api_keys: Vec<Uuid>,
    /// It had been deleted before (a retry, or a concurrent call): nothing
    /// was done this time.
    pub already: bool,
}

/// What the transaction decided; the rest happens after the commit.
struct Committed {
    canceled: Vec<Canceled>,
    /// Generations whose media go now, and whether they were final before
    /// (so nothing can be writing them and they can be marked purged).
    media: Vec<(Uuid, bool)>,
    assets: Vec<Asset>,
    sessions: Vec<Uuid>,
    api_keys: Vec<Uuid>,
}

/// Deletes `user_id`'s account once `password` is theirs (else
/// `InvalidCredentials`, rate limiting being the caller's). Deleting a
/// deleted account is `Ok` with `already`.
pub async fn delete(
    core: &Core,
    payments: &PaymentSettings,
    user_id: Uuid,
    password: &str,
) -> Result<Deleted> {
    let found = crate::users::find(&mut *core.pool.get().await?, user_id).await?;
    if found.ok_or(Error::NotFound("account"))?.deleted_at.is_some() {
        return Ok(Deleted { already: true, ..Deleted::default() });
    }
    let user = crate::users::confirm_password(&core.pool, user_id, password).await?;
    let renewing = subscriptions::renewing_of(&mut *core.pool.get().await?, user_id).await?;
    for id in &renewing {
        payments::billing::cancel_at_period_end(payments, id).await?;
    }
    // A hash of a secret nobody is told: the column keeps a valid format,
    // and no password matches it.
    let unusable = crate::users::hash_password(crate::sessions::random_secret("deleted_")).await?;
    let mut conn = core.pool.get().await?;
    let committed = conn
        .transaction::<_, Error, _>(async |conn| delete_in_transaction(conn, &user, &unusable).await)
        .await?;
    let Some(c) = committed else {
        return Ok(Deleted { already: true, ..Deleted::default() });
    };
    tracing::info!(
        %user_id,
        generations = c.media.len(),
        canceled = c.canceled.len(),
        assets = c.assets.len(),
        sessions = c.sessions.len(),
        api_keys = c.api_keys.len(),
        subscriptions = renewing.len(),
        "account deleted"
    );
    for canceled in &c.canceled {
        generations::after_cancel(core, canceled).await;
    }
    for (id, was_final) in &c.media {
        generations::purge_logged(core, &mut conn, *id, *was_final).await;
    }
    for a in &c.assets {
        if let Err(e) = asset_files::purge_if_unused(core, &mut conn, a).await {
            tracing::warn!(asset_id = %a.id, error = %e, "could not purge a deleted account's asset; the sweeper retries");
        }
    }
    Ok(Deleted { sessions: c.sessions, api_keys: c.api_keys, already: false })
}

async fn delete_in_transaction(
    conn: &mut Connection,
    seen: &User,
    unusable: &str,
) -> Result<Option<Committed>> {
    let user_id = seen.id;
    // Deletions of one account take turns; everything else locks rows in
    // its usual order (generation, then account; assets, then user).
    diesel::sql_query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind::<diesel::sql_types::Text, _>(format!("delete-account:{user_id}"))
        .execute(conn)
        .await?;
    let now: User = crate::users::find(conn, user_id).await?.ok_or(Error::NotFound("account"))?;
    if now.deleted_at.is_some() {
        return Ok(None);
    }
    if now.password_hash != seen.password_hash {
        // Changed since it was checked: the password shown may be the old one.
        return Err(Error::InvalidCredentials);
    }
    let active: Vec<Uuid> = generations_t::table
        .filter(generations_t::user_id.eq(user_id))
        .filter(generations_t::status.eq_any(Status::ACTIVE.map(Status::as_str)))
        .order(generations_t::id.asc())
        .select(generations_t::id)
        .load(conn)
        .await?;
    let mut canceled = Vec::new();
    for id in active {
        match generations::cancel(conn, user_id, id).await {
            Ok(c) => canceled.push(c),
            // Finished meanwhile: deleted as it is.
            Err(Error::Conflict(_)) => {}
            Err(e) => return Err(e),
        }
    }
    let at = Utc::now();
    let marked: Vec<(Uuid, Option<chrono::DateTime<Utc>>)> = diesel::update(
        generations_t::table
            .filter(generations_t::user_id.eq(user_id))
            .filter(generations_t::deleted_at.is_null()),
    )
    .set((generations_t::deleted_at.eq(at), generations_t::updated_at.eq(at)))
    .returning((generations_t::id, generations_t::media_expired_at))
    .get_results(conn)
    .await?;
    let media = marked
        .into_iter()
        .filter(|(_, expired)| expired.is_none())
        .map(|(id, _)| (id, !canceled.iter().any(|c| c.generation.id == id)))
        .collect();
    diesel::update(assets::table.filter(assets::user_id.eq(user_id)).filter(assets::deleted_at.is_null()))
        .set(assets::deleted_at.eq(at))
        .execute(conn)
        .await?;
    let assets: Vec<Asset> = assets::table
        .filter(assets::user_id.eq(user_id))
        .filter(assets::purged_at.is_null())
        .select(Asset::as_select())
        .load(conn)
        .await?;
    let sessions = crate::sessions::end_all(conn, user_id, None, Ended::AccountDeleted).await?;
    let api_keys = keys::revoke_all(conn, user_id).await?;
    // Nothing more is sent to its webhook endpoints: they go with their log.
    crate::webhooks::endpoints::delete_all(conn, user_id).await?;
    // Links already mailed (password reset, verification) die with it.
    diesel::update(
        email_tokens::table.filter(email_tokens::user_id.eq(user_id)).filter(email_tokens::used_at.is_null()),
    )
    .set(email_tokens::used_at.eq(at))
    .execute(conn)
    .await?;
    let scrubbed = diesel::update(users::table.find(user_id).filter(users::deleted_at.is_null()))
        .set((
            users::email.eq(scrubbed_email(user_id)),
            users::password_hash.eq(unusable),
            users::email_verified_at.eq(None::<chrono::DateTime<Utc>>),
            users::deleted_at.eq(at),
            users::updated_at.eq(at),
        ))
        .execute(conn)
        .await?;
    if scrubbed != 1 {
        return Err(Error::Internal("a locked account changed while being deleted".into()));
    }
    Ok(Some(Committed { canceled, media, assets, sessions, api_keys }))
}

/// The sweeper's share: what a request racing a deletion created for the
/// deleted account after its transaction (a generation, an upload, a
/// session, an API key) is deleted, purged or ended too. Returns how many
/// things it acted on.
pub async fn finish_deletions(core: &Core, conn: &mut Connection, limit: i64) -> Result<usize> {
    let deleted_users = users::table.filter(users::deleted_at.is_not_null()).select(users::id);
    let strays: Vec<(Uuid, Uuid)> = generations_t::table
        .filter(generations_t::deleted_at.is_null())
        .filter(generations_t::user_id.eq_any(deleted_users))
        .limit(limit)
        .select((generations_t::id, generations_t::user_id))
        .load(conn)
        .await?;
    let mut n = 0;
    for (id, user_id) in strays {
        match generations::delete(core, user_id, id).await {
            Ok(_) | Err(Error::NotFound(_)) => n += 1,
            Err(e) => {
                tracing::warn!(generation_id = %id, error = %e, "sweeper: could not delete a deleted account's generation");
            }
        }
    }
    let at = Utc::now();
    n += diesel::update(
        assets::table.filter(assets::deleted_at.is_null()).filter(assets::user_id.eq_any(deleted_users)),
    )
    .set(assets::deleted_at.eq(at))
    .execute(conn)
    .await?;
    n += diesel::update(
        sessions::table
            .filter(sessions::revoked_at.is_null())
            .filter(sessions::user_id.eq_any(deleted_users)),
    )
    .set((
        sessions::revoked_at.eq(diesel::dsl::now),
        sessions::revoked_reason.eq(Ended::AccountDeleted.as_str()),
    ))
    .execute(conn)
    .await?;
    n += diesel::update(
        api_keys::table
            .filter(api_keys::revoked_at.is_null())
            .filter(api_keys::user_id.eq_any(deleted_users)),
    )
    .set(api_keys::revoked_at.eq(diesel::dsl::now))
    .execute(conn)
    .await?;
    Ok(n)
}
