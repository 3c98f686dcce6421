//! Ended sessions and revoked API keys, known to every `mage serve` within
//! a poll period, so that a request is checked in memory instead of by a
//! database read.
//!
//! Each instance polls the database (`sessions::revoked_since`, two indexed
//! range scans) every [`POLL`], re-reading an overlap so that a revocation
//! whose transaction commits late is still seen. An id is remembered for
//! as long as a credential it names can still be good: an access token's
//! lifetime (plus the validation leeway), or an API key's cache period.
//! While the poll is failing, the check falls back to the database so a
//! revocation is never missed for long.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use mage_domain::db::DbPool;
use uuid::Uuid;

/// How often the database is asked for new revocations.
pub const POLL: Duration = Duration::from_millis(250);
/// Re-read on every poll: a revocation stamped before a poll but committed
/// after it still shows up in the next ones.
const OVERLAP: Duration = Duration::from_secs(10);
/// Without a good poll for this long, the memory is not trusted.
const STALE_AFTER: Duration = Duration::from_secs(2);

pub struct Revocations {
    /// Revoked session and key ids, with when they may be forgotten.
    ids: Mutex<HashMap<Uuid, Instant>>,
    /// How long an id is remembered.
    keep: Duration,
    started: Instant,
    /// Milliseconds after `started` of the last good poll (0: none yet).
    polled_ms: AtomicU64,
    /// Bumped on every new revocation: open sockets look whether theirs is
    /// among them.
    changed: tokio::sync::watch::Sender<u64>,
}

impl Revocations {
    /// Remembers ids for `keep`; starts no poll (see [`Self::start`]).
    pub fn new(keep: Duration) -> Self {
        Self {
            ids: Mutex::default(),
            keep,
            started: Instant::now(),
            polled_ms: AtomicU64::new(0),
            changed: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Polls `pool` until `stop`; the first poll reaches back `keep`, so an
    /// instance started after a revocation knows it too.
    pub fn start(self: &Arc<Self>, pool: DbPool, stop: tokio_util::sync::CancellationToken) {
        let this = Arc::downgrade(self);
        let keep = self.keep;
        tokio::spawn(async move {
            let mut since: Option<DateTime<Utc>> = None;
            let mut tick = tokio::time::interval(POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.cancelled() => return,
                }
                let Some(this) = this.upgrade() else { return };
                let from = match since {
                    Some(at) => at - OVERLAP,
                    None => Utc::now() - keep,
                };
                let polled = async {
                    let mut conn = pool.get().await?;
                    mage_domain::sessions::revoked_since(&mut conn, from).await
                };
                match polled.await {
                    Ok((ids, now)) => {
                        this.add(&ids);
                        this.polled_ms
                            .store(this.started.elapsed().as_millis().max(1) as u64, Ordering::Relaxed);
                        since = Some(now);
                    }
                    Err(e) => tracing::warn!(error = %e, "could not poll revoked sessions and keys"),
                }
            }
        });
    }

    fn ids(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Instant>> {
        self.ids.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes note of revoked sessions or keys (from the poll, or at once
    /// from the mutation that revoked them on this instance).
    pub fn add(&self, ids: &[Uuid]) {
        if ids.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut new = false;
        {
            let mut map = self.ids();
            map.retain(|_, forget_at| *forget_at > now);
            for id in ids {
                new |= map.insert(*id, now + self.keep).is_none();
            }
        }
        if new {
            self.changed.send_modify(|n| *n += 1);
        }
    }

    pub fn is_revoked(&self, id: Uuid) -> bool {
        self.ids().contains_key(&id)
    }

    /// Whether the memory can be trusted: a poll succeeded lately.
    pub fn is_fresh(&self) -> bool {
        let at = self.polled_ms.load(Ordering::Relaxed);
        at != 0 && self.started.elapsed().saturating_sub(Duration::from_millis(at)) < STALE_AFTER
    }

    /// Changes on every new revocation.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_is_untrusted_until_a_poll_succeeds_and_forgets_after_keep() {
        let r = Revocations::new(Duration::from_millis(200));
        assert!(!r.is_fresh(), "no poll yet: the database must be asked");
        let mut changed = r.subscribe();
        let id = Uuid::new_v4();
        r.add(&[id]);
        assert!(r.is_revoked(id));
        assert!(changed.has_changed().unwrap_or(false), "sockets are woken");
        changed.mark_unchanged();
        // Seen again (the poll's overlap): no new wake-up.
        r.add(&[id]);
        assert!(!changed.has_changed().unwrap_or(true));
        tokio::time::sleep(Duration::from_millis(250)).await;
        r.add(&[Uuid::new_v4()]);
        assert!(!r.is_revoked(id), "kept past every credential naming it");
    }
}
