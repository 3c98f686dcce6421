//! Webhook deliveries, from the API's intake to the follower of each
//! prediction: one Redis pub/sub connection per backend, subscribed to the
//! pattern of every prediction's channel, hands each message to the
//! followers registered for that prediction in this process.
//!
//! Each (re)connection bumps an epoch; followers poll Replicate once when it
//! changes, since deliveries published while nobody listened are gone.
//! Redis being away costs only latency: followers poll when no delivery
//! comes for a while anyway.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use mage_domain::kv::Redis;
use mage_domain::replicate;
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// Deliveries a slow follower may have waiting; more are dropped (the next
/// delivery or poll carries the state anyway).
const BUFFER: usize = 32;

type Followers = HashMap<String, Vec<(u64, mpsc::Sender<Value>)>>;

pub struct Hub {
    redis: Redis,
    followers: Arc<Mutex<Followers>>,
    /// 0 while not subscribed; otherwise the number of the connection.
    epoch: watch::Sender<u64>,
    next_id: std::sync::atomic::AtomicU64,
    started: std::sync::Once,
    stop: CancellationToken,
}

/// One follower's deliveries, until it is dropped.
pub struct Subscription {
    pub deliveries: mpsc::Receiver<Value>,
    pub epoch: watch::Receiver<u64>,
    key: (String, u64),
    followers: Weak<Mutex<Followers>>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let Some(followers) = self.followers.upgrade() else { return };
        let Ok(mut map) = followers.lock() else { return };
        if let Some(list) = map.get_mut(&self.key.0) {
            list.retain(|(id, _)| *id != self.key.1);
            if list.is_empty() {
                map.remove(&self.key.0);
            }
        }
    }
}

impl Subscription {
    /// Waits (at most `wait`) until the hub listens, so that a poll made
    /// after this misses no delivery.
    pub async fn ready(&mut self, wait: Duration) {
        let _ = tokio::time::timeout(wait, self.epoch.wait_for(|e| *e > 0)).await;
        self.epoch.mark_unchanged();
    }
}

impl Hub {
    pub fn new(redis: Redis) -> Self {
        Self {
            redis,
            followers: Arc::default(),
            epoch: watch::Sender::new(0),
            next_id: Default::default(),
            started: std::sync::Once::new(),
            stop: CancellationToken::new(),
        }
    }

    /// Deliveries for `prediction_id` from now on.
    pub fn subscribe(&self, prediction_id: &str) -> Subscription {
        // Started on first use, inside the runtime.
        self.started.call_once(|| {
            tokio::spawn(listen(
                self.redis.clone(),
                Arc::downgrade(&self.followers),
                self.epoch.clone(),
                self.stop.clone(),
            ));
        });
        let (tx, rx) = mpsc::channel(BUFFER);
        let id = self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut map) = self.followers.lock() {
            map.entry(prediction_id.to_owned()).or_default().push((id, tx));
        }
        Subscription {
            deliveries: rx,
            epoch: self.epoch.subscribe(),
            key: (prediction_id.to_owned(), id),
            followers: Arc::downgrade(&self.followers),
        }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn listen(
    redis: Redis,
    followers: Weak<Mutex<Followers>>,
    epoch: watch::Sender<u64>,
    stop: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    let mut connection = 0u64;
    while !stop.is_cancelled() {
        connection += 1;
        match run(&redis, &followers, &epoch, connection, &stop).await {
            Ok(()) => break,
            Err(e) => {
                epoch.send_replace(0);
                tracing::warn!(error = %e, "Replicate webhook pub/sub connection lost; reconnecting");
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn run(
    redis: &Redis,
    followers: &Weak<Mutex<Followers>>,
    epoch: &watch::Sender<u64>,
    connection: u64,
    stop: &CancellationToken,
) -> Result<(), redis::RedisError> {
    let client = redis::Client::open(redis.url())?;
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.psubscribe(replicate::channel_pattern(redis)).await?;
    epoch.send_replace(connection);
    let mut messages = pubsub.on_message();
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            msg = messages.next() => msg,
        };
        let Some(msg) = msg else {
            return Err(redis::RedisError::from(std::io::Error::other("pub/sub stream ended")));
        };
        let Some(prediction_id) = replicate::prediction_of(redis, msg.get_channel_name()) else { continue };
        let Some(followers) = followers.upgrade() else { return Ok(()) };
        let senders: Vec<mpsc::Sender<Value>> = match followers.lock() {
            Ok(map) => map.get(prediction_id).map(|l| l.iter().map(|(_, tx)| tx.clone()).collect()),
            Err(_) => None,
        }
        .unwrap_or_default();
        if senders.is_empty() {
            continue;
        }
        let payload: String = msg.get_payload().unwrap_or_default();
        let Ok(prediction) = serde_json::from_str::<Value>(&payload) else { continue };
        for tx in senders {
            let _ = tx.try_send(prediction.clone());
        }
    }
}
