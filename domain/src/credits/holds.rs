//! Credits reserved for a generation: held, then captured when it
//! succeeds or released when it does not. This module alone writes
//! `credit_holds`.

use chrono::Utc;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use uuid::Uuid;

use super::ledger::{Refs, apply, entry_by_key, find_hold, lock_account, same_operation, take_from_buckets};
use super::{EntryKind, HoldStatus};
use crate::db::Connection;
use crate::rows::{CreditEntry, CreditHold};
use crate::schema::credit_holds;
use crate::{Error, Result};

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
        let new_status = if kind == EntryKind::Capture { HoldStatus::Captured } else { HoldStatus::Released };
        let closed = diesel::update(credit_holds::table)
            .filter(credit_holds::id.eq(hold_id))
            .filter(credit_holds::status.eq(HoldStatus::Open))
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

/// Captures (success) or releases (failure) every open hold of a
/// generation, normally exactly one, in the caller's transaction.
pub async fn close_generation_holds(conn: &mut Connection, generation_id: Uuid, capture: bool) -> Result<()> {
    let open: Vec<CreditHold> = credit_holds::table
        .filter(credit_holds::generation_id.eq(generation_id))
        .filter(credit_holds::status.eq(HoldStatus::Open))
        .select(CreditHold::as_select())
        .load(conn)
        .await?;
    for h in open {
        close_hold(conn, h.id, if capture { EntryKind::Capture } else { EntryKind::Release }).await?;
    }
    Ok(())
}

/// How many holds a generation has had: one per run.
pub async fn holds_of(conn: &mut Connection, generation_id: Uuid) -> Result<i64> {
    Ok(credit_holds::table
        .filter(credit_holds::generation_id.eq(generation_id))
        .count()
        .get_result(conn)
        .await?)
}

/// A row that pays for itself: one statement inserts `row` only when the
/// account can hold `amount`, with its hold and the HOLD ledger entry.
///
/// The guarded `UPDATE` of the account (`balance - held >= amount`) takes
/// the row lock and checks the balance; everything else is inserted from its
/// result, so nothing is inserted when the guard fails. Sent as one prepared
/// statement in its own implicit transaction, it holds the account's row
/// lock only while PostgreSQL runs it, never across a client round trip:
/// the ceiling for one busy account is the database's, not the network's.
/// The ledger figures come from the updated row, as [`apply`] computes them
/// under its lock; `hold_key` must be new (a fresh generation id), so no
/// earlier entry can answer for it.
///
/// `row` is written by the module that owns its table, as an
/// `INSERT ... SELECT ... FROM acc` (`acc` has the account's `user_id`);
/// the statement returns what `row` returns.
pub struct HoldFor<R> {
    pub user_id: Uuid,
    pub amount: i64,
    pub generation_id: Uuid,
    pub hold_key: String,
    pub row: R,
}

impl<R: diesel::query_builder::QueryId> diesel::query_builder::QueryId for HoldFor<R> {
    type QueryId = HoldFor<R::QueryId>;
    // The SQL text never changes, so PostgreSQL prepares it once per connection.
    const HAS_STATIC_QUERY_ID: bool = R::HAS_STATIC_QUERY_ID;
}

impl<R: diesel::query_builder::Query> diesel::query_builder::Query for HoldFor<R> {
    type SqlType = R::SqlType;
}

impl<R: diesel::query_builder::QueryFragment<diesel::pg::Pg>>
    diesel::query_builder::QueryFragment<diesel::pg::Pg> for HoldFor<R>
{
    fn walk_ast<'b>(
        &'b self,
        mut out: diesel::query_builder::AstPass<'_, 'b, diesel::pg::Pg>,
    ) -> QueryResult<()> {
        use diesel::sql_types::{BigInt, Text, Uuid as SqlUuid};
        out.push_sql("WITH acc AS (UPDATE credit_accounts SET held = held + ");
        out.push_bind_param::<BigInt, _>(&self.amount)?;
        out.push_sql(", updated_at = now() WHERE user_id = ");
        out.push_bind_param::<SqlUuid, _>(&self.user_id)?;
        out.push_sql(" AND balance - held >= ");
        out.push_bind_param::<BigInt, _>(&self.amount)?;
        out.push_sql(" RETURNING user_id, balance, held), new_row AS (");
        self.row.walk_ast(out.reborrow())?;
        out.push_sql(
            " RETURNING *), \
             hold AS (INSERT INTO credit_holds (user_id, generation_id, amount) SELECT user_id, ",
        );
        out.push_bind_param::<SqlUuid, _>(&self.generation_id)?;
        out.push_sql(", ");
        out.push_bind_param::<BigInt, _>(&self.amount)?;
        out.push_sql(
            " FROM acc RETURNING id), \
             entry AS (INSERT INTO credit_entries (user_id, kind, amount, held_delta, balance_after, \
             held_after, idempotency_key, hold_id, generation_id) SELECT acc.user_id, ",
        );
        out.push_bind_param::<Text, _>(&HOLD_KIND)?;
        out.push_sql(", 0, ");
        out.push_bind_param::<BigInt, _>(&self.amount)?;
        out.push_sql(", acc.balance, acc.held, ");
        out.push_bind_param::<Text, _>(&self.hold_key)?;
        out.push_sql(", hold.id, ");
        out.push_bind_param::<SqlUuid, _>(&self.generation_id)?;
        out.push_sql(" FROM acc, hold) SELECT * FROM new_row");
        Ok(())
    }
}

const HOLD_KIND: &str = EntryKind::Hold.as_str();

/// Counts a hold a [`HoldFor`] statement took (it bypasses [`apply`]).
pub fn hold_taken(amount: i64) {
    crate::metrics::credits_moved(HOLD_KIND, 0, amount);
}
