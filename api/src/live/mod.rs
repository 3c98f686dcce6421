//! Live events for GraphQL subscriptions. Each `mage serve` process holds
//! one Redis pub/sub connection, subscribed to exactly the channels its
//! local subscribers need (a channel is joined with its first subscriber and
//! left with its last), and multiplexes every message to those subscribers'
//! mailboxes. Workers and other instances publish; this is how a client on
//! any instance sees changes made anywhere.
//!
//! Queue positions are not published per generation: one "queue advanced"
//! message per dequeue makes each instance recompute, in one query, the
//! positions of the QUEUED generations its own subscribers watch.

mod mailbox;
mod pubsub;
mod subscription;
mod topic;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use mage_domain::credits;
use mage_domain::db::DbPool;
use mage_domain::events;
use mage_domain::generations::{self, Status};
use mage_domain::kv::Redis;
use mage_domain::rows::Generation;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use mailbox::Mailbox;
pub use mailbox::{CAPACITY, Event, Lagged, Snapshot};
use pubsub::{Command, connection_task};
pub use subscription::Subscription;
use topic::{State, Topic, TopicKind, topic_snapshot};

use crate::error::ApiError;

/// How long a dequeue burst is gathered before positions are recomputed:
/// ten workers taking jobs at once cost one query, not ten.
const REPOSITION_DEBOUNCE: Duration = Duration::from_millis(20);
/// Longest a new subscription waits for Redis to confirm its channel.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The process's fan-out hub; cheap to clone.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

struct Inner {
    redis: Redis,
    /// `events::queue_advanced_channel`, named once.
    queue_channel: String,
    /// What every asset channel starts with (`events::asset_channel`).
    asset_prefix: String,
    pool: DbPool,
    state: Mutex<State>,
    commands: mpsc::UnboundedSender<Command>,
    reposition: Arc<Notify>,
    stop: CancellationToken,
    next_id: AtomicU64,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// What the hub is doing, for `/metrics` and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HubStats {
    pub subscriptions: usize,
    pub channels: usize,
}

impl Hub {
    /// Starts the pub/sub connection task and the position task; both stop
    /// when the last clone of the hub is dropped.
    pub fn start(redis: Redis, pool: DbPool) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            queue_channel: events::queue_advanced_channel(&redis),
            asset_prefix: events::asset_channel_prefix(&redis),
            redis,
            pool,
            state: Mutex::new(State::default()),
            commands: tx,
            reposition: Arc::new(Notify::new()),
            stop: CancellationToken::new(),
            next_id: AtomicU64::new(1),
        });
        let weak = Arc::downgrade(&inner);
        tokio::spawn(connection_task(weak.clone(), inner.redis.url().to_owned(), inner.stop.clone(), rx));
        tokio::spawn(reposition_task(weak, inner.reposition.clone(), inner.stop.clone()));
        Self { inner }
    }

    pub fn stats(&self) -> HubStats {
        let state = self.inner.lock();
        HubStats { subscriptions: state.subscriptions, channels: state.topics.len() }
    }

    /// `generationUpdated`: the generation's current state first, then every
    /// change; the stream ends after a final state. Another user's
    /// generation is `NOT_FOUND`.
    pub async fn generation(&self, user_id: Uuid, id: Uuid) -> Result<Subscription, ApiError> {
        let channel = events::generation_channel(&self.inner.redis, id);
        let mut sub = self.register(channel, || TopicKind::Generation { last: None }).await?;
        let mut conn = self.inner.pool.get().await.map_err(ApiError::internal)?;
        let row = generations::find_own(&mut conn, user_id, id).await?;
        let position = generations::queue_position(&mut conn, &row).await?;
        drop(conn);
        let first = Arc::new(Snapshot { row, position });
        {
            let mut state = self.inner.lock();
            if let Some(t) = state.topics.get_mut(&sub.channel) {
                t.remember(&first);
            }
        }
        sub.mailbox.start_with(Event::Generation(first));
        sub.end_after_final = true;
        Ok(sub)
    }

    /// `myGenerations`: every change of any of the user's generations.
    pub async fn user_generations(&self, user_id: Uuid) -> Result<Subscription, ApiError> {
        let channel = events::user_generations_channel(&self.inner.redis, user_id);
        let sub = self
            .register(channel, || TopicKind::UserGenerations { last: HashMap::new(), loaded: false })
            .await?;
        let needs_load = matches!(
            self.inner.lock().topics.get(&sub.channel).map(|t| &t.kind),
            Some(TopicKind::UserGenerations { loaded: false, .. })
        );
        if needs_load {
            // The QUEUED generations the user has now: their positions move
            // without any message on the user's channel.
            let mut conn = self.inner.pool.get().await.map_err(ApiError::internal)?;
            let queued = generations::queued_of(&mut conn, user_id).await?;
            let mut state = self.inner.lock();
            if let Some(t) = state.topics.get_mut(&sub.channel) {
                for row in queued {
                    t.remember(&Arc::new(Snapshot { row, position: None }));
                }
                if let TopicKind::UserGenerations { loaded, .. } = &mut t.kind {
                    *loaded = true;
                }
            }
            self.inner.reposition.notify_one();
        }
        Ok(sub)
    }

    /// `assetUpdated`: the asset's current state first, then every change;
    /// the stream ends once it is READY or REJECTED. Another user's asset
    /// is `NOT_FOUND`.
    pub async fn asset(&self, user_id: Uuid, id: Uuid) -> Result<Subscription, ApiError> {
        let channel = events::asset_channel(&self.inner.redis, id);
        let mut sub = self.register(channel, || TopicKind::Asset { id }).await?;
        let mut conn = self.inner.pool.get().await.map_err(ApiError::internal)?;
        let now = mage_domain::assets::find_own(&mut conn, user_id, id).await?;
        drop(conn);
        sub.mailbox.start_with(Event::Asset(Arc::new(now)));
        sub.end_after_final = true;
        Ok(sub)
    }

    /// `creditsChanged`: the account now, then after every ledger entry.
    pub async fn credits(&self, user_id: Uuid) -> Result<Subscription, ApiError> {
        let channel = events::credits_channel(&self.inner.redis, user_id);
        let sub = self
            .register(channel, || TopicKind::Credits { user_id, version: 0, reading: false, again: false })
            .await?;
        let mut conn = self.inner.pool.get().await.map_err(ApiError::internal)?;
        let now = credits::account_states(&mut conn, &[user_id])
            .await?
            .pop()
            .ok_or_else(|| ApiError::NotFound("credit account".into()))?;
        drop(conn);
        sub.mailbox.start_with(Event::Credits(Arc::new(now)));
        Ok(sub)
    }

    /// Adds a mailbox to the channel's topic (creating it), and waits until
    /// Redis has confirmed the subscription, so that no change published
    /// after this returns can be missed.
    async fn register(
        &self,
        channel: String,
        kind: impl FnOnce() -> TopicKind,
    ) -> Result<Subscription, ApiError> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let mailbox = Arc::new(Mailbox::default());
        // None: confirmed already. Some((answer, Some(tx))): this newcomer
        // sends the SUBSCRIBE; Some((answer, None)): one is under way.
        let wait = {
            let mut state = self.inner.lock();
            let topic = state.topics.entry(channel.clone()).or_insert_with(|| Topic {
                confirmed: false,
                waiting: None,
                subscribers: Vec::new(),
                kind: kind(),
            });
            topic.subscribers.push((id, mailbox.clone()));
            let wait = (!topic.confirmed).then(|| {
                let (tx, rx) = oneshot::channel();
                match &mut topic.waiting {
                    Some(waiters) => {
                        waiters.push(tx);
                        (rx, None)
                    }
                    None => {
                        topic.waiting = Some(Vec::new());
                        (rx, Some(tx))
                    }
                }
            });
            state.subscriptions += 1;
            crate::metrics::subscriptions(state.subscriptions, state.topics.len());
            wait
        };
        // From here on, dropping `sub` unregisters (also on error).
        let sub = Subscription {
            hub: Arc::downgrade(&self.inner),
            channel: channel.clone(),
            id,
            mailbox,
            end_after_final: false,
            done: false,
        };
        if let Some((rx, send)) = wait {
            let unavailable =
                || ApiError::internal("live events are unavailable: Redis did not confirm in time");
            if let Some(tx) = send {
                self.inner.commands.send(Command::Subscribe(channel, tx)).map_err(|_| unavailable())?;
            }
            match tokio::time::timeout(SUBSCRIBE_TIMEOUT, rx).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => return Err(ApiError::internal(format!("could not subscribe: {e}"))),
                Ok(Err(_)) | Err(_) => return Err(unavailable()),
            }
        }
        Ok(sub)
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; carry on.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn unregister(&self, channel: &str, id: u64) {
        let mut state = self.lock();
        let Some(topic) = state.topics.get_mut(channel) else { return };
        let before = topic.subscribers.len();
        topic.subscribers.retain(|(i, _)| *i != id);
        let removed = before - topic.subscribers.len();
        let empty = topic.subscribers.is_empty();
        if empty {
            state.topics.remove(channel);
            let _ = self.commands.send(Command::Unsubscribe(channel.to_owned()));
        }
        state.subscriptions -= removed;
        crate::metrics::subscriptions(state.subscriptions, state.topics.len());
    }

    /// A message from Redis.
    fn dispatch(self: &Arc<Self>, channel: &str, payload: &[u8]) {
        if channel == self.queue_channel {
            self.reposition.notify_one();
            return;
        }
        if channel.ends_with(":credits") {
            self.read_credits(channel);
            return;
        }
        if channel.starts_with(&self.asset_prefix) {
            match serde_json::from_slice::<mage_domain::rows::Asset>(payload) {
                Ok(asset) => {
                    let event = Event::Asset(Arc::new(asset));
                    if let Some(t) = self.lock().topics.get(channel) {
                        t.push(&event);
                    }
                }
                Err(e) => tracing::warn!(%channel, error = %e, "unreadable asset event"),
            }
            return;
        }
        match serde_json::from_slice(payload) {
            Ok(row) => self.offer_generation(channel, row),
            Err(e) => tracing::warn!(%channel, error = %e, "unreadable generation event"),
        }
    }

    /// A generation's new state for the topic of `channel`.
    fn offer_generation(&self, channel: &str, row: Generation) {
        let span = tracing::debug_span!("generation", generation_id = %row.id);
        let _enter = span.enter();
        let mut state = self.lock();
        let Some(topic) = state.topics.get_mut(channel) else { return };
        // A QUEUED state keeps the position already known for it (a change
        // of progress or stage does not move it); a new one gets computed.
        let known = topic_snapshot(topic, row.id);
        let queued = row.status() == Status::Queued;
        let position = known
            .filter(|k| queued && k.status() == Status::Queued && k.row.queued_at == row.queued_at)
            .and_then(|k| k.position);
        let snapshot = Arc::new(Snapshot { row, position });
        if topic.remember(&snapshot) {
            topic.push(&Event::Generation(snapshot));
        }
        drop(state);
        if queued && position.is_none() {
            self.reposition.notify_one();
        }
    }

    /// Reads the account behind a credits topic and pushes it when it is
    /// newer than what the topic delivered; at most one read per topic at a
    /// time, repeated when more changes arrived meanwhile.
    fn read_credits(self: &Arc<Self>, channel: &str) {
        let user_id = {
            let mut state = self.lock();
            let Some(Topic { kind: TopicKind::Credits { user_id, reading, again, .. }, .. }) =
                state.topics.get_mut(channel)
            else {
                return;
            };
            if *reading {
                *again = true;
                return;
            }
            *reading = true;
            *user_id
        };
        let inner = Arc::downgrade(self);
        let channel = channel.to_owned();
        tokio::spawn(
            async move {
                loop {
                    let Some(hub) = inner.upgrade() else { return };
                    let read = match hub.pool.get().await {
                        Ok(mut conn) => credits::account_states(&mut conn, &[user_id]).await,
                        Err(e) => Err(e.into()),
                    };
                    let mut state = hub.lock();
                    let Some(topic) = state.topics.get_mut(&channel) else { return };
                    let TopicKind::Credits { version, .. } = &mut topic.kind else { return };
                    match read.map(|mut v| v.pop()) {
                        Ok(Some(now)) if now.version > *version => {
                            *version = now.version;
                            topic.push(&Event::Credits(Arc::new(now)));
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "could not read a changed credit account"),
                    }
                    let TopicKind::Credits { reading, again, .. } = &mut topic.kind else { return };
                    if std::mem::take(again) {
                        continue;
                    }
                    *reading = false;
                    return;
                }
            }
            .instrument(tracing::debug_span!("credits", %user_id)),
        );
    }

    /// Recomputes the positions of every QUEUED generation local subscribers
    /// watch, in one query, and pushes those that moved.
    async fn reposition(&self) -> Result<(), mage_domain::Error> {
        let ids: Vec<Uuid> = {
            let state = self.lock();
            let mut ids: Vec<Uuid> =
                state.topics.values().flat_map(|t| t.queued()).map(|s| s.row.id).collect();
            ids.sort_unstable();
            ids.dedup();
            ids
        };
        if ids.is_empty() {
            return Ok(());
        }
        let mut conn = self.pool.get().await?;
        let positions: HashMap<Uuid, i64> =
            generations::queue_positions(&mut conn, &ids).await?.into_iter().collect();
        drop(conn);
        let mut state = self.lock();
        for topic in state.topics.values_mut() {
            for old in topic.queued() {
                let Some(&position) = positions.get(&old.row.id) else { continue };
                if old.position == Some(position) {
                    continue;
                }
                let moved = Arc::new(Snapshot { row: old.row.clone(), position: Some(position) });
                if topic.remember(&moved) {
                    topic.push(&Event::Generation(moved));
                }
            }
        }
        Ok(())
    }

    /// After a reconnection: messages may have been lost while the
    /// connection was down, so read again what every topic shows.
    async fn resync(self: &Arc<Self>) -> Result<(), mage_domain::Error> {
        let (generation_ids, credit_channels, asset_ids) = {
            let state = self.lock();
            let mut ids = Vec::new();
            let mut credit_channels = Vec::new();
            let mut asset_ids = Vec::new();
            for (channel, t) in &state.topics {
                match &t.kind {
                    TopicKind::Generation { last: Some(s) } => ids.push(s.row.id),
                    TopicKind::UserGenerations { last, .. } => ids.extend(last.keys().copied()),
                    TopicKind::Credits { .. } => credit_channels.push(channel.clone()),
                    TopicKind::Asset { id } => asset_ids.push(*id),
                    TopicKind::Generation { last: None } => {}
                }
            }
            (ids, credit_channels, asset_ids)
        };
        let mut conn = self.pool.get().await?;
        let rows = generations::find_many(&mut conn, &generation_ids).await?;
        let mut assets = Vec::with_capacity(asset_ids.len());
        for id in asset_ids {
            assets.extend(mage_domain::assets::find(&mut conn, id).await?);
        }
        drop(conn);
        for asset in assets {
            let payload =
                serde_json::to_vec(&asset).map_err(|e| mage_domain::Error::Internal(e.to_string()))?;
            self.dispatch(&events::asset_channel(&self.redis, asset.id), &payload);
        }
        for row in rows {
            let payload =
                serde_json::to_vec(&row).map_err(|e| mage_domain::Error::Internal(e.to_string()))?;
            for channel in [
                events::generation_channel(&self.redis, row.id),
                events::user_generations_channel(&self.redis, row.user_id),
            ] {
                self.dispatch(&channel, &payload);
            }
        }
        for channel in credit_channels {
            self.read_credits(&channel);
        }
        self.reposition.notify_one();
        Ok(())
    }
}

async fn reposition_task(hub: Weak<Inner>, wanted: Arc<Notify>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = wanted.notified() => {}
        }
        tokio::time::sleep(REPOSITION_DEBOUNCE).await;
        let Some(inner) = hub.upgrade() else { return };
        if let Err(e) = inner.reposition().await {
            tracing::warn!(error = %e, "live events: could not recompute queue positions");
        }
    }
}
