//! A subscription's mailbox: a small bounded queue between the hub (which
//! never waits for a client) and the subscription's stream (which the
//! WebSocket drains at the client's pace).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use futures_util::task::AtomicWaker;
use mage_domain::credits::AccountState;
use mage_domain::enums::AssetStatus;
use mage_domain::generations::Status;
use mage_domain::rows::{Asset, Generation};
use std::sync::Arc;
use uuid::Uuid;

/// Events one subscription may have waiting. Coalescing (below) keeps a
/// generation's subscription to at most one waiting event per status, so
/// only a `myGenerations` subscriber far behind on many generations reaches
/// it; it is then told it lagged and must subscribe again.
pub const CAPACITY: usize = 32;

/// Finished generations remembered per subscription before the oldest are
/// forgotten (they only guard against late duplicates).
const SEEN_LIMIT: usize = 256;

/// A generation as a subscriber sees it: the row, and its queue position
/// when the hub knows it (`None` while QUEUED means "not computed yet").
#[derive(Debug)]
pub struct Snapshot {
    pub row: Generation,
    pub position: Option<i64>,
}

impl Snapshot {
    pub fn status(&self) -> Status {
        self.row.status()
    }

    /// Orders the states of one generation: a retry re-queues it later, and
    /// within one run the status only moves forward and progress only grows.
    /// Anything older than what a subscriber saw is stale (a message that
    /// crossed a newer one, or one already covered by the first snapshot).
    pub fn order_key(&self) -> (DateTime<Utc>, u8, i32) {
        let rank = match self.status() {
            Status::Queued => 0,
            Status::Rendering => 1,
            Status::Transcoding => 2,
            Status::Succeeded | Status::Failed | Status::Canceled => 3,
        };
        (self.row.queued_at, rank, self.row.progress)
    }

    fn same_as(&self, other: &Snapshot) -> bool {
        self.order_key() == other.order_key()
            && self.row.status == other.row.status
            && self.row.stage == other.row.stage
            && self.position == other.position
    }
}

#[derive(Debug, Clone)]
pub enum Event {
    Generation(Arc<Snapshot>),
    Credits(Arc<AccountState>),
    Asset(Arc<Asset>),
}

/// Orders the states of one asset: its status only moves forward.
pub fn asset_key(a: &Asset) -> (u8, DateTime<Utc>) {
    let rank = match a.status {
        AssetStatus::AwaitingUpload => 0,
        AssetStatus::Processing => 1,
        AssetStatus::Ready | AssetStatus::Rejected => 2,
    };
    (rank, a.updated_at)
}

impl Event {
    /// Two waiting events with the same key: the newer replaces the older in
    /// place, so a slow client gets the latest progress instead of every
    /// step, but never misses a status.
    fn coalesces_with(&self, newer: &Event) -> bool {
        match (self, newer) {
            (Event::Generation(a), Event::Generation(b)) => a.row.id == b.row.id && a.status() == b.status(),
            (Event::Credits(_), Event::Credits(_)) => true,
            (Event::Asset(a), Event::Asset(b)) => a.id == b.id,
            _ => false,
        }
    }
}

#[derive(Default)]
struct Inner {
    queue: VecDeque<Event>,
    /// The newest state accepted per generation (or account version).
    seen: HashMap<Uuid, Arc<Snapshot>>,
    credits_version: i64,
    /// The newest asset state accepted (a subscription follows one asset).
    asset_key: Option<(u8, DateTime<Utc>)>,
    lagged: bool,
}

#[derive(Default)]
pub struct Mailbox {
    inner: Mutex<Inner>,
    pub(super) waker: AtomicWaker,
}

impl Mailbox {
    /// Queues `event` unless the subscriber has already seen it or something
    /// newer. Never blocks.
    pub fn push(&self, event: Event) {
        {
            let Ok(mut inner) = self.inner.lock() else { return };
            if !inner.accept(&event) {
                return;
            }
            if let Some(slot) = inner.queue.iter_mut().find(|e| e.coalesces_with(&event)) {
                *slot = event;
            } else if inner.queue.len() >= CAPACITY {
                inner.lagged = true;
            } else {
                inner.queue.push_back(event);
            }
        }
        self.waker.wake();
    }

    /// The subscriber's first event (the current state read from the
    /// database): it goes first, and whatever arrived meanwhile that it
    /// already covers is dropped.
    pub fn start_with(&self, event: Event) {
        {
            let Ok(mut inner) = self.inner.lock() else { return };
            match &event {
                Event::Generation(first) => {
                    inner.queue.retain(|e| match e {
                        Event::Generation(s) => s.row.id != first.row.id || s.order_key() > first.order_key(),
                        Event::Credits(_) | Event::Asset(_) => true,
                    });
                    let newest = inner.seen.get(&first.row.id).cloned();
                    if newest.is_none_or(|n| n.order_key() < first.order_key()) {
                        inner.seen.insert(first.row.id, first.clone());
                    }
                }
                Event::Asset(first) => {
                    let key = asset_key(first);
                    inner.queue.retain(|e| !matches!(e, Event::Asset(a) if asset_key(a) <= key));
                    inner.asset_key = inner.asset_key.max(Some(key));
                }
                Event::Credits(first) => {
                    let v = first.version;
                    inner.queue.retain(|e| !matches!(e, Event::Credits(c) if c.version <= v));
                    inner.credits_version = inner.credits_version.max(v);
                }
            }
            inner.queue.push_front(event);
        }
        self.waker.wake();
    }

    pub fn pop(&self) -> Option<Result<Event, Lagged>> {
        let mut inner = self.inner.lock().ok()?;
        match inner.queue.pop_front() {
            Some(e) => Some(Ok(e)),
            None if inner.lagged => Some(Err(Lagged)),
            None => None,
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.inner.lock().map(|i| i.queue.len()).unwrap_or(0)
    }
}

impl Inner {
    fn accept(&mut self, event: &Event) -> bool {
        match event {
            Event::Generation(s) => {
                if let Some(seen) = self.seen.get(&s.row.id)
                    && (s.order_key() < seen.order_key() || s.same_as(seen))
                {
                    return false;
                }
                if self.seen.len() >= SEEN_LIMIT {
                    self.seen.retain(|_, s| !s.status().is_final());
                }
                self.seen.insert(s.row.id, s.clone());
                true
            }
            Event::Credits(c) => {
                if c.version <= self.credits_version {
                    return false;
                }
                self.credits_version = c.version;
                true
            }
            Event::Asset(a) => {
                let key = Some(asset_key(a));
                if key <= self.asset_key {
                    return false;
                }
                self.asset_key = key;
                true
            }
        }
    }
}

/// The subscriber fell more than [`CAPACITY`] events behind.
#[derive(Debug)]
pub struct Lagged;

/// A subscriber told it lagged can only start over.
impl From<Lagged> for crate::error::ApiError {
    fn from(_: Lagged) -> Self {
        Self::RateLimited {
            message: format!(
                "this subscription fell more than {CAPACITY} events behind and was ended; subscribe again for the current state"
            ),
            retry_after_seconds: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(status: Status, progress: i32) -> Generation {
        let now = Utc::now();
        Generation {
            id: Uuid::nil(),
            user_id: Uuid::nil(),
            model: "m".into(),
            kind: mage_domain::catalog::MediaKind::Video,
            prompt: "p".into(),
            negative_prompt: None,
            resolution: mage_domain::catalog::Resolution::R720p,
            duration_seconds: Some(5),
            seed: Some(1),
            status,
            progress,
            stage: None,
            priority: 0,
            cost: 10,
            idempotency_key: None,
            attempts: 0,
            backend: mage_domain::catalog::BackendKind::Synthetic,
            output: None,
            error: None,
            created_at: now,
            updated_at: now,
            queued_at: DateTime::<Utc>::from_timestamp(1_000_000, 0).unwrap_or(now),
            started_at: None,
            finished_at: None,
            heartbeat_at: None,
            cancel_requested_at: None,
            worker: None,
            backend_url: None,
            backend_job_id: None,
            media_expired_at: None,
            deleted_at: None,
        }
    }

    fn event(status: Status, progress: i32) -> Event {
        Event::Generation(Arc::new(Snapshot { row: row(status, progress), position: None }))
    }

    fn progresses(m: &Mailbox) -> Vec<(&'static str, i32)> {
        std::iter::from_fn(|| m.pop())
            .map(|e| match e {
                Ok(Event::Generation(s)) => (s.row.status.as_str(), s.row.progress),
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_slow_reader_gets_the_latest_progress_and_every_status() {
        let m = Mailbox::default();
        for p in 0..=100 {
            m.push(event(Status::Rendering, p));
        }
        m.push(event(Status::Transcoding, 0));
        m.push(event(Status::Transcoding, 50));
        m.push(event(Status::Succeeded, 100));
        assert_eq!(progresses(&m), vec![("rendering", 100), ("transcoding", 50), ("succeeded", 100)]);
    }

    #[test]
    fn stale_and_duplicate_states_are_dropped() {
        let m = Mailbox::default();
        m.push(event(Status::Rendering, 40));
        m.push(event(Status::Rendering, 40));
        m.push(event(Status::Rendering, 30));
        m.push(event(Status::Canceled, 30));
        m.push(event(Status::Rendering, 55));
        assert_eq!(progresses(&m), vec![("rendering", 40), ("canceled", 30)]);
    }

    #[test]
    fn the_first_snapshot_goes_first_and_hides_what_it_covers() {
        let m = Mailbox::default();
        m.push(event(Status::Rendering, 10));
        m.push(event(Status::Rendering, 60));
        m.start_with(event(Status::Rendering, 30));
        // 10 is older than the snapshot; 60 was queued as the newer state.
        assert_eq!(progresses(&m), vec![("rendering", 30), ("rendering", 60)]);
    }

    #[test]
    fn a_reader_too_far_behind_is_told_it_lagged() {
        let m = Mailbox::default();
        for i in 0..(CAPACITY + 1) {
            let mut r = row(Status::Queued, 0);
            r.id = Uuid::from_u128(i as u128 + 1);
            m.push(Event::Generation(Arc::new(Snapshot { row: r, position: None })));
        }
        assert_eq!(m.len(), CAPACITY);
        for _ in 0..CAPACITY {
            assert!(matches!(m.pop(), Some(Ok(_))));
        }
        assert!(matches!(m.pop(), Some(Err(Lagged))));
    }
}
