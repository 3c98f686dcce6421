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

mod audit;
mod grants;
mod holds;
mod ledger;

pub use audit::{Audit, audit};
pub use grants::{
    Clawback, clawback, expire_due, expire_grant, grant, open_account, revoke, set_grant_expiry,
};
pub use holds::{HoldFor, capture, close_generation_holds, hold, hold_taken, holds_of, release};

use chrono::{DateTime, Duration, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use crate::db::Connection;
pub use crate::enums::{EntryKind, GrantSource, HoldStatus};
use crate::rows::{CreditAccount, CreditEntry};
use crate::schema::{credit_accounts, credit_entries, credit_grants};
use crate::{Error, Result};
use ledger::{entry_by_key, sum_of};

impl GrantSource {
    /// Bought credits show as PURCHASE in the ledger, everything else as GRANT.
    fn entry_kind(self) -> EntryKind {
        match self {
            Self::Purchase | Self::Subscription => EntryKind::Purchase,
            Self::Signup | Self::Admin | Self::Promo => EntryKind::Grant,
        }
    }
}

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

pub async fn account(conn: &mut Connection, user_id: Uuid) -> Result<CreditAccount> {
    credit_accounts::table
        .find(user_id)
        .select(CreditAccount::as_select())
        .first(conn)
        .await
        .optional()?
        .ok_or(Error::NotFound("credit account"))
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
