//! What settling one event decided, and the lookups every handler starts
//! with.

use uuid::Uuid;

use crate::Result;
use crate::db::Connection;
use crate::orders;
use crate::rows::{Order, Subscription};

/// What settling an event did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Processed(String),
    Ignored(String),
    Failed(String),
    /// Settled by an earlier run.
    AlreadySettled,
}

impl Outcome {
    /// The event's stored status (and the metric's label).
    pub fn status(&self) -> &'static str {
        match self {
            Self::Processed(_) | Self::AlreadySettled => "processed",
            Self::Ignored(_) => "ignored",
            Self::Failed(_) => "failed",
        }
    }
}

/// What a handler decided, with the order and user it concerned.
#[derive(Debug)]
pub struct Verdict {
    pub outcome: Outcome,
    pub order_id: Option<Uuid>,
    pub user_id: Option<Uuid>,
    /// Credits moved (positive granted, negative taken).
    pub credits: i64,
    /// Set: the event depends on one not settled yet (a refund that arrived
    /// before its checkout), so nothing of this run is kept and the job is
    /// retried later.
    pub wait: Option<String>,
}

impl Verdict {
    pub fn done(order: &Order, credits: i64, note: impl Into<String>) -> Self {
        Self {
            outcome: Outcome::Processed(note.into()),
            order_id: Some(order.id),
            user_id: Some(order.user_id),
            credits,
            wait: None,
        }
    }

    pub fn ignored(note: impl Into<String>) -> Self {
        Self { outcome: Outcome::Ignored(note.into()), order_id: None, user_id: None, credits: 0, wait: None }
    }

    pub fn failed(reason: impl Into<String>) -> Self {
        Self {
            outcome: Outcome::Failed(reason.into()),
            order_id: None,
            user_id: None,
            credits: 0,
            wait: None,
        }
    }

    /// Settle later: what it waits for is not settled yet.
    pub fn not_yet(reason: impl Into<String>) -> Self {
        let mut v = Self::ignored("");
        v.wait = Some(reason.into());
        v
    }

    pub fn about(mut self, order: &Order) -> Self {
        self.order_id = Some(order.id);
        self.user_id = Some(order.user_id);
        self
    }

    pub fn about_sub(mut self, sub: &Subscription) -> Self {
        self.order_id = sub.order_id;
        self.user_id = Some(sub.user_id);
        self
    }

    /// Processed, about a subscription.
    pub fn done_sub(sub: &Subscription, credits: i64, note: impl Into<String>) -> Self {
        let mut v = Self::ignored("").about_sub(sub);
        v.outcome = Outcome::Processed(note.into());
        v.credits = credits;
        v
    }
}

/// The order an event names, locked; a verdict if it names none that exists.
pub async fn order_named(
    conn: &mut Connection,
    reference: Option<&str>,
) -> Result<std::result::Result<Order, Verdict>> {
    let Some(reference) = reference.filter(|r| !r.is_empty()) else {
        return Ok(Err(Verdict::failed(
            "the event names no order (client_reference_id / metadata.order_id)",
        )));
    };
    let Ok(id) = reference.parse::<Uuid>() else {
        return Ok(Err(Verdict::failed(format!("unknown order {reference:?}"))));
    };
    Ok(orders::lock(conn, id).await?.ok_or_else(|| Verdict::failed(format!("unknown order {id}"))))
}
