//! The credits ledger.
//!
//! Every change of a balance or a hold is one `credit_entries` row with a
//! unique idempotency key, written in the same transaction as the change of
//! the cached `credit_accounts` row and of the grant buckets. Each operation:
//! 1. locks the account row (`SELECT ... FOR UPDATE`), which serialises every
//!    change of that account;
//! 2. looks the idempotency key up *after* taking the lock, so a concurrent
//!    duplicate waits for the first and then finds its entry;
//! 3. applies the change, or returns the entry the first attempt wrote.
//!
//! Each function opens its own transaction, which becomes a savepoint when the
//! caller already has one open, so an order or a generation can change in the
//! same transaction as its credits.
//!
//! Idempotency keys are per account and namespaced by their caller
//! (`signup:<user>`, `hold:gen:<generation>`, `capture:<hold>` ...). A key that
//! comes back with a different operation or amount is a `Conflict`, never a
//! silent success.
//!
//! Lock order, for every job that touches credits: the order or generation row
//! first (if any), then the account row, then its grant rows. Taking them in
//! another order can deadlock with capture and release.
//!
//! Expiry (a later job) must never expire credits that open holds reserve:
//! it may take at most `balance - held`, so a capture always finds buckets
//! to take from.

use chrono::{DateTime, Duration, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use uuid::Uuid;

use crate::db::Connection;
use crate::models::{CreditAccount, CreditEntry, CreditGrant, CreditHold};
use crate::schema::{credit_accounts, credit_entries, credit_grants, credit_holds};
use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    Grant,
    Purchase,
    Hold,
    Capture,
    Release,
    Clawback,
    Expire,
    Adjustment,
}

impl EntryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Grant => "grant",
            Self::Purchase => "purchase",
            Self::Hold => "hold",
            Self::Capture => "capture",
            Self::Release => "release",
            Self::Clawback => "clawback",
            Self::Expire => "expire",
            Self::Adjustment => "adjustment",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "grant" => Self::Grant,
            "purchase" => Self::Purchase,
            "hold" => Self::Hold,
            "capture" => Self::Capture,
            "release" => Self::Release,
            "clawback" => Self::Clawback,
            "expire" => Self::Expire,
            "adjustment" => Self::Adjustment,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantSource {
    Signup,
    Purchase,
    Subscription,
    Admin,
    Promo,
}

impl GrantSource {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Signup => "signup",
            Self::Purchase => "purchase",
            Self::Subscription => "subscription",
            Self::Admin => "admin",
            Self::Promo => "promo",
        }
    }

    /// Bought credits show as PURCHASE in the ledger, everything else as GRANT.
    fn entry_kind(self) -> EntryKind {
        match self {
            Self::Purchase | Self::Subscription => EntryKind::Purchase,
            Self::Signup | Self::Admin | Self::Promo => EntryKind::Grant,
        }
    }
}

pub const HOLD_OPEN: &str = "open";
const HOLD_CAPTURED: &str = "captured";
const HOLD_RELEASED: &str = "released";

/// A credit grant to make: a new bucket and its ledger entry.
#[derive(Debug, Clone)]
pub struct NewGrant {
    pub user_id: Uuid,
    pub amount: i64,
    pub source: GrantSource,
    pub expires_at: Option<DateTime<Utc>>,
    pub order_id: Option<Uuid>,
    pub stripe_event_id: Option<String>,
    pub memo: Option<String>,
    pub idempotency_key: String,
}

/// What an entry is about, beside its kind and amounts.
#[derive(Debug, Default, Clone)]
struct Refs {
    grant_id: Option<Uuid>,
    hold_id: Option<Uuid>,
    order_id: Option<Uuid>,
    generation_id: Option<Uuid>,
    stripe_event_id: Option<String>,
    memo: Option<String>,
}

/// Creates the account row of a new user (inside the registration transaction).
pub async fn open_account(conn: &mut Connection, user_id: Uuid) -> Result<()> {
    diesel::insert_into(credit_accounts::table)
        .values(credit_accounts::user_id.eq(user_id))
        .on_conflict_do_nothing()
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn account(conn: &mut Connection, user_id: Uuid) -> Result<CreditAccount> {
    credit_accounts::table
        .find(user_id)
        .select(CreditAccount::as_select())
        .first(conn)
        .await
        .optional()?
        .ok_or(Error::NotFound("credit account"))
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

/// Reserves `amount` credits, typically for a generation. Fails with
/// `InsufficientCredits` when the available balance is short. Repeating the
/// call with the same key returns the first hold.
pub async fn hold(
    conn: &mut Connection,
    user_id: Uuid,
    amount: i64,
    generation_id: Option<Uuid>,
    idempotency_key: &str,
) -> Result<CreditHold> {
    if amount <= 0 {
        return Err(Error::invalid("amount", "must be a positive number of credits"));
    }
    conn.transaction::<_, Error, _>(async |conn| {
        let acc = lock_account(conn, user_id).await?;
        if let Some(done) = entry_by_key(conn, user_id, idempotency_key).await? {
            let done = same_operation(done, EntryKind::Hold, 0, amount)?;
            let hold_id =
                done.hold_id.ok_or_else(|| Error::Internal("a HOLD entry without its hold".into()))?;
            return find_hold(conn, hold_id).await;
        }
        if acc.available() < amount {
            return Err(Error::InsufficientCredits { required: amount, available: acc.available() });
        }
        let hold: CreditHold = diesel::insert_into(credit_holds::table)
            .values((
                credit_holds::user_id.eq(user_id),
                credit_holds::generation_id.eq(generation_id),
                credit_holds::amount.eq(amount),
            ))
            .returning(CreditHold::as_returning())
            .get_result(conn)
            .await?;
        let refs = Refs { hold_id: Some(hold.id), generation_id, ..Refs::default() };
        apply(conn, acc, EntryKind::Hold, 0, amount, idempotency_key, refs).await?;
        Ok(hold)
    })
    .await
}

/// Charges an open hold: the balance drops by its amount, taken from the
/// grant buckets that expire first. Capturing twice returns the first entry;
/// capturing a released hold is a `Conflict`.
pub async fn capture(conn: &mut Connection, hold_id: Uuid) -> Result<CreditEntry> {
    close_hold(conn, hold_id, EntryKind::Capture).await
}

/// Gives the credits of an open hold back to the available balance.
/// Releasing twice returns the first entry; releasing a captured hold is a
/// `Conflict`.
pub async fn release(conn: &mut Connection, hold_id: Uuid) -> Result<CreditEntry> {
    close_hold(conn, hold_id, EntryKind::Release).await
}

async fn close_hold(conn: &mut Connection, hold_id: Uuid, kind: EntryKind) -> Result<CreditEntry> {
    conn.transaction::<_, Error, _>(async |conn| {
        let hold = find_hold(conn, hold_id).await?;
        let acc = lock_account(conn, hold.user_id).await?;
        let key = format!("{}:{hold_id}", kind.as_str());
        if let Some(done) = entry_by_key(conn, hold.user_id, &key).await? {
            let balance_change = if kind == EntryKind::Capture { -hold.amount } else { 0 };
            return same_operation(done, kind, balance_change, -hold.amount);
        }
        let new_status = if kind == EntryKind::Capture { HOLD_CAPTURED } else { HOLD_RELEASED };
        let closed = diesel::update(credit_holds::table)
            .filter(credit_holds::id.eq(hold_id))
            .filter(credit_holds::status.eq(HOLD_OPEN))
            .set((credit_holds::status.eq(new_status), credit_holds::closed_at.eq(Utc::now())))
            .execute(conn)
            .await?;
        if closed == 0 {
            // Locked account + missing entry for this kind: the hold was
            // closed the other way.
            return Err(Error::Conflict(format!("hold {hold_id} is already closed")));
        }
        let refs = Refs { hold_id: Some(hold_id), generation_id: hold.generation_id, ..Refs::default() };
        let amount = if kind == EntryKind::Capture {
            take_from_buckets(conn, hold.user_id, hold.amount, None).await?;
            -hold.amount
        } else {
            0
        };
        apply(conn, acc, kind, amount, -hold.amount, &key, refs).await
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

/// Whether the account has an entry under this idempotency key (an
/// operation that must not be prepared twice checks this first).
pub async fn has_entry(conn: &mut Connection, user_id: Uuid, idempotency_key: &str) -> Result<bool> {
    Ok(entry_by_key(conn, user_id, idempotency_key).await?.is_some())
}

/// Credits of unexpired grants that expire within `within` from now.
pub async fn expiring_soon(conn: &mut Connection, user_id: Uuid, within: Duration) -> Result<i64> {
    let now = Utc::now();
    Ok(credit_grants::table
        .filter(credit_grants::user_id.eq(user_id))
        .filter(credit_grants::expired_at.is_null())
        .filter(credit_grants::remaining.gt(0))
        .filter(credit_grants::expires_at.gt(now))
        .filter(credit_grants::expires_at.le(now + within))
        .select(sum_of("remaining"))
        .first(conn)
        .await?)
}

/// A page of the account's ledger, newest first; `after` is the id of the
/// last entry of the previous page.
pub async fn entries(
    conn: &mut Connection,
    user_id: Uuid,
    after: Option<i64>,
    limit: i64,
) -> Result<Vec<CreditEntry>> {
    let mut q = credit_entries::table
        .filter(credit_entries::user_id.eq(user_id))
        .order(credit_entries::id.desc())
        .limit(limit)
        .select(CreditEntry::as_select())
        .into_boxed();
    if let Some(after) = after {
        q = q.filter(credit_entries::id.lt(after));
    }
    Ok(q.load(conn).await?)
}

/// The ledger's invariants for one account, as found in the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audit {
    pub balance: i64,
    pub held: i64,
    pub sum_of_entry_amounts: i64,
    pub sum_of_entry_held_deltas: i64,
    pub sum_of_grant_remaining: i64,
    pub sum_of_open_holds: i64,
}

impl Audit {
    /// balance = sum of unexpired grants' remaining = sum of ledger amounts;
    /// held = sum of open holds = sum of ledger held deltas; held >= 0.
    pub fn holds(&self) -> bool {
        self.balance == self.sum_of_entry_amounts
            && self.balance == self.sum_of_grant_remaining
            && self.held == self.sum_of_entry_held_deltas
            && self.held == self.sum_of_open_holds
            && self.held >= 0
    }
}

/// Reads everything in one REPEATABLE READ snapshot, so it never reports a
/// violation that is only a change landing between two of its queries.
pub async fn audit(conn: &mut Connection, user_id: Uuid) -> Result<Audit> {
    conn.build_transaction()
        .repeatable_read()
        .read_only()
        .run(async |conn| audit_in(conn, user_id).await)
        .await
}

async fn audit_in(conn: &mut Connection, user_id: Uuid) -> Result<Audit> {
    let acc = account(conn, user_id).await?;
    let amounts: i64 = credit_entries::table
        .filter(credit_entries::user_id.eq(user_id))
        .select(sum_of("amount"))
        .first(conn)
        .await?;
    let held_deltas: i64 = credit_entries::table
        .filter(credit_entries::user_id.eq(user_id))
        .select(sum_of("held_delta"))
        .first(conn)
        .await?;
    let remaining: i64 = credit_grants::table
        .filter(credit_grants::user_id.eq(user_id))
        .filter(credit_grants::expired_at.is_null())
        .select(sum_of("remaining"))
        .first(conn)
        .await?;
    let open_holds: i64 = credit_holds::table
        .filter(credit_holds::user_id.eq(user_id))
        .filter(credit_holds::status.eq(HOLD_OPEN))
        .select(sum_of("amount"))
        .first(conn)
        .await?;
    Ok(Audit {
        balance: acc.balance,
        held: acc.held,
        sum_of_entry_amounts: amounts,
        sum_of_entry_held_deltas: held_deltas,
        sum_of_grant_remaining: remaining,
        sum_of_open_holds: open_holds,
    })
}

async fn lock_account(conn: &mut Connection, user_id: Uuid) -> Result<CreditAccount> {
    credit_accounts::table
        .find(user_id)
        .for_update()
        .select(CreditAccount::as_select())
        .first(conn)
        .await
        .optional()?
        .ok_or(Error::NotFound("credit account"))
}

async fn entry_by_key(conn: &mut Connection, user_id: Uuid, key: &str) -> Result<Option<CreditEntry>> {
    Ok(credit_entries::table
        .filter(credit_entries::user_id.eq(user_id))
        .filter(credit_entries::idempotency_key.eq(key))
        .select(CreditEntry::as_select())
        .first(conn)
        .await
        .optional()?)
}

/// The entry a repeated call found under its key, if it is the same
/// operation; a key reused for something else is a conflict.
fn same_operation(done: CreditEntry, kind: EntryKind, amount: i64, held_delta: i64) -> Result<CreditEntry> {
    if done.kind == kind.as_str() && done.amount == amount && done.held_delta == held_delta {
        Ok(done)
    } else {
        Err(Error::Conflict(format!(
            "idempotency key {:?} was already used for another credit operation",
            done.idempotency_key
        )))
    }
}

async fn find_hold(conn: &mut Connection, hold_id: Uuid) -> Result<CreditHold> {
    credit_holds::table
        .find(hold_id)
        .select(CreditHold::as_select())
        .first(conn)
        .await
        .optional()?
        .ok_or(Error::NotFound("credit hold"))
}

/// Moves the cached account by (`amount`, `held_delta`) and appends the entry.
async fn apply(
    conn: &mut Connection,
    acc: CreditAccount,
    kind: EntryKind,
    amount: i64,
    held_delta: i64,
    key: &str,
    refs: Refs,
) -> Result<CreditEntry> {
    let balance_after = acc.balance + amount;
    let held_after = acc.held + held_delta;
    diesel::update(credit_accounts::table.find(acc.user_id))
        .set((
            credit_accounts::balance.eq(balance_after),
            credit_accounts::held.eq(held_after),
            credit_accounts::updated_at.eq(Utc::now()),
        ))
        .execute(conn)
        .await?;
    crate::metrics::credits_moved(kind, amount, held_delta);
    Ok(diesel::insert_into(credit_entries::table)
        .values((
            credit_entries::user_id.eq(acc.user_id),
            credit_entries::kind.eq(kind.as_str()),
            credit_entries::amount.eq(amount),
            credit_entries::held_delta.eq(held_delta),
            credit_entries::balance_after.eq(balance_after),
            credit_entries::held_after.eq(held_after),
            credit_entries::idempotency_key.eq(key),
            credit_entries::grant_id.eq(refs.grant_id),
            credit_entries::hold_id.eq(refs.hold_id),
            credit_entries::order_id.eq(refs.order_id),
            credit_entries::generation_id.eq(refs.generation_id),
            credit_entries::stripe_event_id.eq(refs.stripe_event_id),
            credit_entries::memo.eq(refs.memo),
        ))
        .returning(CreditEntry::as_returning())
        .get_result(conn)
        .await?)
}

/// Lowers the remaining credits of the account's buckets by `amount`:
/// `first` (if given) first, then the buckets that expire soonest. Whatever
/// the buckets cannot cover (only a clawback can get there) becomes a debt on
/// `first`, or else on a bucket that never expires, so that the sum of
/// remaining stays equal to the balance.
async fn take_from_buckets(
    conn: &mut Connection,
    user_id: Uuid,
    amount: i64,
    first: Option<Uuid>,
) -> Result<()> {
    let mut buckets: Vec<CreditGrant> = credit_grants::table
        .filter(credit_grants::user_id.eq(user_id))
        .filter(credit_grants::expired_at.is_null())
        .filter(credit_grants::remaining.gt(0))
        .order((
            credit_grants::expires_at.asc().nulls_last(),
            credit_grants::created_at.asc(),
            credit_grants::id.asc(),
        ))
        .for_update()
        .select(CreditGrant::as_select())
        .load(conn)
        .await?;
    if let Some(first) = first
        && let Some(pos) = buckets.iter().position(|b| b.id == first)
    {
        let b = buckets.remove(pos);
        buckets.insert(0, b);
    }
    let mut left = amount;
    for b in &buckets {
        if left == 0 {
            break;
        }
        let take = left.min(b.remaining);
        set_remaining(conn, b.id, b.remaining - take).await?;
        left -= take;
    }
    if left > 0 {
        let open = credit_grants::table
            .filter(credit_grants::user_id.eq(user_id))
            .filter(credit_grants::expired_at.is_null())
            .select((credit_grants::id, credit_grants::remaining));
        let debtor: Option<(Uuid, i64)> = match first {
            Some(first) => open.filter(credit_grants::id.eq(first)).for_update().first(conn).await,
            // Prefer a bucket that never expires: a debt on an expiring one
            // would vanish with it.
            None => {
                open.order((credit_grants::expires_at.is_not_null(), credit_grants::created_at.desc()))
                    .for_update()
                    .first(conn)
                    .await
            }
        }
        .optional()?;
        let (debtor, remaining) = debtor.ok_or_else(|| {
            Error::Internal(format!("account {user_id} has no grant to carry a debt of {left}"))
        })?;
        tracing::warn!(%user_id, grant_id = %debtor, debt = left, "grant buckets could not cover a debit");
        set_remaining(conn, debtor, remaining - left).await?;
    }
    Ok(())
}

async fn set_remaining(conn: &mut Connection, grant_id: Uuid, remaining: i64) -> Result<()> {
    diesel::update(credit_grants::table.find(grant_id))
        .set(credit_grants::remaining.eq(remaining))
        .execute(conn)
        .await?;
    Ok(())
}

/// `COALESCE(SUM(column), 0)` read as `bigint`: PostgreSQL's `sum(bigint)` is
/// `numeric`, which diesel reads only with the bigdecimal feature, and credits
/// never approach 2^63.
fn sum_of(column: &'static str) -> diesel::expression::SqlLiteral<diesel::sql_types::BigInt> {
    diesel::dsl::sql::<diesel::sql_types::BigInt>(&format!("COALESCE(SUM({column}), 0)::bigint"))
}

/// The accounts of these users (for the API's per-request DataLoader).
pub async fn accounts(conn: &mut Connection, user_ids: &[Uuid]) -> Result<Vec<CreditAccount>> {
    Ok(credit_accounts::table
        .filter(credit_accounts::user_id.eq_any(user_ids))
        .select(CreditAccount::as_select())
        .load(conn)
        .await?)
}

/// An account as of its latest ledger entry: `version` is that entry's id,
/// which grows with every change of the account (entries are written under
/// the account's row lock), so a reader can tell a newer state from an older.
#[derive(Debug, Clone)]
pub struct AccountState {
    pub account: CreditAccount,
    pub version: i64,
}

/// The current state of these users' accounts, with their versions. One
/// statement, so one snapshot: read apart, a change committed between the
/// two reads would pair an older balance with the newer version, and the
/// newer balance would then never be delivered.
pub async fn account_states(conn: &mut Connection, user_ids: &[Uuid]) -> Result<Vec<AccountState>> {
    let rows: Vec<(CreditAccount, Option<i64>)> = credit_accounts::table
        .left_join(credit_entries::table)
        .filter(credit_accounts::user_id.eq_any(user_ids))
        .group_by(credit_accounts::user_id)
        .select((CreditAccount::as_select(), diesel::dsl::max(credit_entries::id.nullable())))
        .load(conn)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(account, version)| AccountState { version: version.unwrap_or(0), account })
        .collect())
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
