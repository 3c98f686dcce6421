//! The ledger's invariants, checked from the entries: what tests assert and
//! the admin audit reports.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use super::ledger::sum_of;
use super::{HoldStatus, account};
use crate::Result;
use crate::db::Connection;
use crate::schema::{credit_entries, credit_grants, credit_holds};

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
        .filter(credit_holds::status.eq(HoldStatus::Open))
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
