//! Credits: the caller's account and ledger.

use async_graphql::connection::{Connection, Edge};
use async_graphql::{Context, Enum, ID, Object, Subscription};
use chrono::{DateTime, Utc};
use futures_util::{Stream, StreamExt};
use mage_domain::credits::{self as ledger, EntryKind};
use mage_domain::rows;

use super::context::ContextExt;
use super::pagination::{decode_cursor, encode_cursor, page, page_size};
use crate::error::{ApiError, ApiResult};
use crate::live::Event;

/// Days ahead that `expiringSoon` looks.
const EXPIRING_SOON_DAYS: i64 = 7;

pub struct CreditAccount(pub rows::CreditAccount);

// `serial`: see `Generation`.
#[Object(serial)]
impl CreditAccount {
    /// Credits that can be spent now: held credits excluded.
    async fn balance(&self) -> i64 {
        self.0.available()
    }

    /// Credits reserved by generations still running.
    async fn held(&self) -> i64 {
        self.0.held
    }

    /// Credits that expire within the next 7 days unless spent.
    async fn expiring_soon(&self, ctx: &Context<'_>) -> ApiResult<i64> {
        let mut conn = ctx.conn().await?;
        Ok(ledger::expiring_soon(&mut conn, self.0.user_id, chrono::Duration::days(EXPIRING_SOON_DAYS))
            .await?)
    }
}

#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
#[graphql(remote = "mage_domain::credits::EntryKind")]
pub enum CreditEntryKind {
    Grant,
    Purchase,
    Hold,
    Capture,
    Release,
    Clawback,
    Expire,
    Adjustment,
}

pub struct CreditEntry(pub rows::CreditEntry);

// `serial`: see `Generation`.
#[Object(serial)]
impl CreditEntry {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }

    async fn kind(&self) -> CreditEntryKind {
        self.0.kind.into()
    }

    /// The change of the balance; for HOLD and RELEASE, the amount held or
    /// released.
    async fn amount(&self) -> i64 {
        match self.0.kind {
            EntryKind::Hold | EntryKind::Release => self.0.held_delta.abs(),
            _ => self.0.amount,
        }
    }

    /// The spendable balance (held credits excluded) after this entry, as
    /// `CreditAccount.balance` shows it.
    async fn balance_after(&self) -> i64 {
        self.0.balance_after - self.0.held_after
    }

    /// Credits held after this entry.
    async fn held_after(&self) -> i64 {
        self.0.held_after
    }

    async fn memo(&self) -> Option<&str> {
        self.0.memo.as_deref()
    }

    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
}

#[derive(Default)]
pub struct CreditsQuery;

#[Object]
impl CreditsQuery {
    /// The signed-in user's ledger, newest first.
    #[graphql(complexity = "super::pagination::list_complexity(first, child_complexity)")]
    async fn credit_entries(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> ApiResult<Connection<String, CreditEntry>> {
        let user_id = ctx.viewer().require()?;
        let limit = page_size(first)?;
        let after: Option<i64> = decode_cursor("ce", after.as_deref())?;
        let mut conn = ctx.conn().await?;
        let rows = ledger::entries(&mut conn, user_id, after, limit + 1).await?;
        Ok(page(rows, limit, after.is_some(), |e| Edge::new(encode_cursor("ce", e.id), CreditEntry(e))))
    }
}

#[derive(Default)]
pub struct CreditsSubscription;

#[Subscription]
impl CreditsSubscription {
    /// Your account now, then after every ledger entry (grant, hold,
    /// capture, release, purchase, clawback, expiry). A client that falls
    /// behind gets the latest state.
    async fn credits_changed(
        &self,
        ctx: &Context<'_>,
    ) -> Result<impl Stream<Item = ApiResult<CreditAccount>> + use<>, ApiError> {
        let user_id = ctx.viewer().require()?;
        let sub = ctx.services().live.credits(user_id).await?;
        Ok(sub.filter_map(|event| {
            std::future::ready(match event {
                Ok(Event::Credits(state)) => Some(Ok(CreditAccount(state.account))),
                Ok(Event::Generation(_) | Event::Asset(_)) => None,
                Err(lagged) => Some(Err(lagged.into())),
            })
        }))
    }
}
