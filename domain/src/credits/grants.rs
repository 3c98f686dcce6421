//! Credits in and out of the balance: grants (sign-up, purchases, admins),
//! clawbacks after refunds and disputes, expiry and revocation.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use uuid::Uuid;

use super::ledger::{Refs, apply, entry_by_key, lock_account, same_operation, take_from_buckets};
use super::{EntryKind, NewGrant};
use crate::db::Connection;
use crate::rows::{CreditEntry, CreditGrant};
use crate::schema::{credit_accounts, credit_grants};
use crate::{Error, Result};

/// Creates the account row of a new user (inside the registration transaction).
pub async fn open_account(conn: &mut Connection, user_id: Uuid) -> Result<()> {
    diesel::insert_into(credit_accounts::table)
        .values(credit_accounts::user_id.eq(user_id))
        .on_conflict_do_nothing()
        .execute(conn)
        .await?;
    Ok(())
}

/// Adds credits: a new grant bucket and a GRANT (or PURCHASE) entry.
pub async fn grant(conn: &mut Connection, g: NewGrant) -> Result<CreditEntry> {
    if g.amount <= 0 {
        return Err(Error::invalid("amount", "must be a positive number of credits"));
    }
    conn.transaction::<_, Error, _>(async |conn| {
        let acc = lock_account(conn, g.user_id).await?;
        if let Some(done) = entry_by_key(conn, g.user_id, &g.idempotency_key).await? {
            return same_operation(done, g.source.entry_kind(), g.amount, 0);
        }
        let grant_id: Uuid = diesel::insert_into(credit_grants::table)
            .values((
                credit_grants::user_id.eq(g.user_id),
                credit_grants::source.eq(g.source.as_str()),
                credit_grants::amount.eq(g.amount),
                credit_grants::remaining.eq(g.amount),
                credit_grants::expires_at.eq(g.expires_at),
                credit_grants::order_id.eq(g.order_id),
                credit_grants::stripe_event_id.eq(&g.stripe_event_id),
                credit_grants::memo.eq(&g.memo),
            ))
            .returning(credit_grants::id)
            .get_result(conn)
            .await?;
        let refs = Refs {
            grant_id: Some(grant_id),
            order_id: g.order_id,
            stripe_event_id: g.stripe_event_id.clone(),
            memo: g.memo.clone(),
            ..Refs::default()
        };
        apply(conn, acc, g.source.entry_kind(), g.amount, 0, &g.idempotency_key, refs).await
    })
    .await
}

/// A credit taken back after a refund or a lost dispute.
#[derive(Debug, Clone)]
pub struct Clawback {
    pub user_id: Uuid,
    pub amount: i64,
    /// The purchase being reversed: its bucket is emptied first and carries
    /// any debt.
    pub grant_id: Option<Uuid>,
    pub order_id: Option<Uuid>,
    pub stripe_event_id: Option<String>,
    pub memo: Option<String>,
    pub idempotency_key: String,
}

/// Takes credits back. Unlike spending, a clawback may leave the balance
/// negative, which blocks spending until it is positive again.
pub async fn clawback(conn: &mut Connection, c: Clawback) -> Result<CreditEntry> {
    if c.amount <= 0 {
        return Err(Error::invalid("amount", "must be a positive number of credits"));
    }
    conn.transaction::<_, Error, _>(async |conn| {
        let acc = lock_account(conn, c.user_id).await?;
        if let Some(done) = entry_by_key(conn, c.user_id, &c.idempotency_key).await? {
            return same_operation(done, EntryKind::Clawback, -c.amount, 0);
        }
        take_from_buckets(conn, c.user_id, c.amount, c.grant_id).await?;
        let refs = Refs {
            grant_id: c.grant_id,
            order_id: c.order_id,
            stripe_event_id: c.stripe_event_id.clone(),
            memo: c.memo.clone(),
            ..Refs::default()
        };
        apply(conn, acc, EntryKind::Clawback, -c.amount, 0, &c.idempotency_key, refs).await
    })
    .await
}

/// Ends a grant now: what is left of it leaves the balance as one EXPIRE
/// entry (keyed by `idempotency_key`). Credits that open holds reserve are
/// never expired (at most `balance - held` goes), so a capture always finds
/// buckets to take from; the rest of such a grant stays until spent.
/// `None`: nothing was left to expire.
pub async fn expire_grant(
    conn: &mut Connection,
    grant_id: Uuid,
    idempotency_key: &str,
    stripe_event_id: Option<&str>,
) -> Result<Option<CreditEntry>> {
    conn.transaction::<_, Error, _>(async |conn| {
        let user_id: Uuid =
            credit_grants::table.find(grant_id).select(credit_grants::user_id).first(conn).await?;
        let acc = lock_account(conn, user_id).await?;
        if let Some(done) = entry_by_key(conn, user_id, idempotency_key).await? {
            return Ok(Some(done));
        }
        let g: CreditGrant = credit_grants::table
            .find(grant_id)
            .for_update()
            .select(CreditGrant::as_select())
            .first(conn)
            .await?;
        if g.expired_at.is_some() || g.remaining <= 0 {
            return Ok(None);
        }
        let take = g.remaining.min((acc.balance - acc.held).max(0));
        let left = g.remaining - take;
        diesel::update(credit_grants::table.find(grant_id))
            .set((
                credit_grants::remaining.eq(left),
                credit_grants::expired_at.eq(if left == 0 { Some(Utc::now()) } else { None }),
            ))
            .execute(conn)
            .await?;
        if take == 0 {
            return Ok(None);
        }
        let refs = Refs {
            grant_id: Some(grant_id),
            order_id: g.order_id,
            stripe_event_id: stripe_event_id.map(str::to_owned),
            ..Refs::default()
        };
        apply(conn, acc, EntryKind::Expire, -take, 0, idempotency_key, refs).await.map(Some)
    })
    .await
}

/// Expires what is left of every grant whose `expires_at` has passed, as of
/// `now`, at most `limit` grants a call. Keyed by the grant and what was left
/// of it, so a run repeated on the same state expires nothing twice, and a
/// grant kept partly alive by open holds is expired further by a later run.
/// Returns the EXPIRE entries written.
pub async fn expire_due(conn: &mut Connection, now: DateTime<Utc>, limit: i64) -> Result<Vec<CreditEntry>> {
    let due: Vec<(Uuid, i64)> = credit_grants::table
        .filter(credit_grants::expired_at.is_null())
        .filter(credit_grants::expires_at.le(now))
        .filter(credit_grants::remaining.gt(0))
        .order(credit_grants::expires_at.asc())
        .limit(limit)
        .select((credit_grants::id, credit_grants::remaining))
        .load(conn)
        .await?;
    let mut written = Vec::new();
    for (grant_id, remaining) in due {
        if let Some(e) = expire_grant(conn, grant_id, &format!("expire:{grant_id}:{remaining}"), None).await?
        {
            written.push(e);
        }
    }
    Ok(written)
}

/// Takes credits away (an admin's correction): an ADJUSTMENT entry, from the
/// buckets that expire first. Never more than the available balance (held
/// credits stay for their generations): `Conflict` otherwise.
pub async fn revoke(
    conn: &mut Connection,
    user_id: Uuid,
    amount: i64,
    memo: &str,
    idempotency_key: &str,
) -> Result<CreditEntry> {
    if amount <= 0 {
        return Err(Error::invalid("amount", "must be a positive number of credits"));
    }
    conn.transaction::<_, Error, _>(async |conn| {
        let acc = lock_account(conn, user_id).await?;
        if let Some(done) = entry_by_key(conn, user_id, idempotency_key).await? {
            return same_operation(done, EntryKind::Adjustment, -amount, 0);
        }
        if acc.available() < amount {
            return Err(Error::Conflict(format!(
                "only {} credits are available to revoke",
                acc.available().max(0)
            )));
        }
        take_from_buckets(conn, user_id, amount, None).await?;
        let refs = Refs { memo: Some(memo.to_owned()), ..Refs::default() };
        apply(conn, acc, EntryKind::Adjustment, -amount, 0, idempotency_key, refs).await
    })
    .await
}

/// Moves the end of a grant (a subscription's first period, granted at
/// checkout with an estimate, ends when its first invoice says).
pub async fn set_grant_expiry(
    conn: &mut Connection,
    grant_id: Uuid,
    expires_at: DateTime<Utc>,
) -> Result<()> {
    diesel::update(credit_grants::table.find(grant_id))
        .set(credit_grants::expires_at.eq(expires_at))
        .execute(conn)
        .await?;
    Ok(())
}
