//! The steps every ledger operation shares: lock the account, find an
//! earlier attempt by its key, write the entry, take from the buckets.

use chrono::Utc;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use super::EntryKind;
use crate::db::Connection;
use crate::rows::{CreditAccount, CreditEntry, CreditGrant, CreditHold};
use crate::schema::{credit_accounts, credit_entries, credit_grants, credit_holds};
use crate::{Error, Result};

/// What an entry is about, beside its kind and amounts.
#[derive(Debug, Default, Clone)]
pub(super) struct Refs {
    pub(super) grant_id: Option<Uuid>,
    pub(super) hold_id: Option<Uuid>,
    pub(super) order_id: Option<Uuid>,
    pub(super) generation_id: Option<Uuid>,
    pub(super) stripe_event_id: Option<String>,
    pub(super) memo: Option<String>,
}

pub(super) async fn lock_account(conn: &mut Connection, user_id: Uuid) -> Result<CreditAccount> {
    credit_accounts::table
        .find(user_id)
        .for_update()
        .select(CreditAccount::as_select())
        .first(conn)
        .await
        .optional()?
        .ok_or(Error::NotFound("credit account"))
}

pub(super) async fn entry_by_key(
    conn: &mut Connection,
    user_id: Uuid,
    key: &str,
) -> Result<Option<CreditEntry>> {
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
pub(super) fn same_operation(
    done: CreditEntry,
    kind: EntryKind,
    amount: i64,
    held_delta: i64,
) -> Result<CreditEntry> {
    if done.kind == kind && done.amount == amount && done.held_delta == held_delta {
        Ok(done)
    } else {
        Err(Error::Conflict(format!(
            "idempotency key {:?} was already used for another credit operation",
            done.idempotency_key
        )))
    }
}

pub(super) async fn find_hold(conn: &mut Connection, hold_id: Uuid) -> Result<CreditHold> {
    credit_holds::table
        .find(hold_id)
        .select(CreditHold::as_select())
        .first(conn)
        .await
        .optional()?
        .ok_or(Error::NotFound("credit hold"))
}

/// Moves the cached account by (`amount`, `held_delta`) and appends the entry.
pub(super) async fn apply(
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
    crate::metrics::credits_moved(kind.as_str(), amount, held_delta);
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
pub(super) async fn take_from_buckets(
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

pub(super) async fn set_remaining(conn: &mut Connection, grant_id: Uuid, remaining: i64) -> Result<()> {
    diesel::update(credit_grants::table.find(grant_id))
        .set(credit_grants::remaining.eq(remaining))
        .execute(conn)
        .await?;
    Ok(())
}

/// `COALESCE(SUM(column), 0)` read as `bigint`: PostgreSQL's `sum(bigint)` is
/// `numeric`, which diesel reads only with the bigdecimal feature, and credits
/// never approach 2^63.
pub(super) fn sum_of(column: &'static str) -> diesel::expression::SqlLiteral<diesel::sql_types::BigInt> {
    diesel::dsl::sql::<diesel::sql_types::BigInt>(&format!("COALESCE(SUM({column}), 0)::bigint"))
}
