//! One Redis pub/sub connection per worker process: it wakes idle queue
//! workers when a job is pushed (so a job starts within milliseconds instead
//! of at the next poll) and delivers cancellation requests to the job that
//! runs the cancelled generation.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use futures_util::StreamExt;
use futures_util::task::AtomicWaker;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// A wake-up flag a queue worker polls through apalis' `StreamStrategy`:
/// ready once per burst of signals, pending (no CPU) otherwise.
#[derive(Clone, Default)]
pub struct Signal(Arc<SignalInner>);

#[derive(Default)]
struct SignalInner {
    set: AtomicBool,
    waker: AtomicWaker,
}

impl Signal {
    pub fn notify(&self) {
        self.0.set.store(true, Ordering::Release);
        self.0.waker.wake();
    }
}

impl Stream for Signal {
    type Item = ();

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<()>> {
        // Registered on every poll, also one answered Ready: apalis may take
        // the signal and fetch nothing, and a waker left from an older poll
        // would then miss the next push (a new worker slept through wake-ups
        // until its next heartbeat, up to 5 s).
        self.0.waker.register(cx.waker());
        if self.0.set.swap(false, Ordering::AcqRel) { Poll::Ready(Some(())) } else { Poll::Pending }
    }
}

/// Cancellation tokens of the generations this process is working on.
#[derive(Clone, Default)]
pub struct Cancels(Arc<Mutex<HashMap<Uuid, CancellationToken>>>);

impl Cancels {
    /// The token of a job; dropping the guard unregisters it.
    pub fn register(&self, id: Uuid) -> CancelGuard {
        let token = CancellationToken::new();
        if let Ok(mut map) = self.0.lock() {
            map.insert(id, token.clone());
        }
        CancelGuard { cancels: self.clone(), id, token }
    }

    pub fn cancel(&self, id: Uuid) -> bool {
        let token = self.0.lock().ok().and_then(|map| map.get(&id).cloned());
        match token {
            Some(t) => {
                t.cancel();
                true
            }
            None => false,
        }
    }
}

pub struct CancelGuard {
    cancels: Cancels,
    id: Uuid,
    pub token: CancellationToken,
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if let Ok(mut map) = self.cancels.0.lock() {
            map.remove(&self.id);
        }
    }
}

/// Listens on the wake channels of `queues` (channel → signal) and on the
/// cancel channel until `stop` is cancelled, reconnecting after errors. Each
/// queue's signal also fires every `tick`, which picks up retries that
/// apalis-redis scheduled for later (it does not announce those).
pub async fn listen(
    redis_url: String,
    queues: Vec<(String, Signal)>,
    cancel_channel: String,
    cancels: Cancels,
    tick: Duration,
    stop: CancellationToken,
) {
    let ticker = {
        let signals: Vec<Signal> = queues.iter().map(|(_, s)| s.clone()).collect();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(tick);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = every.tick() => signals.iter().for_each(Signal::notify),
                }
            }
        })
    };
    let by_channel: HashMap<String, Signal> = queues.into_iter().collect();
    let mut backoff = Duration::from_millis(100);
    while !stop.is_cancelled() {
        match subscribe_and_dispatch(&redis_url, &by_channel, &cancel_channel, &cancels, &stop).await {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(error = %e, "worker pub/sub connection lost; reconnecting");
                // Jobs pushed while disconnected are found by the tick.
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
    ticker.abort();
}

async fn subscribe_and_dispatch(
    redis_url: &str,
    by_channel: &HashMap<String, Signal>,
    cancel_channel: &str,
    cancels: &Cancels,
    stop: &CancellationToken,
) -> Result<(), redis::RedisError> {
    let client = redis::Client::open(redis_url)?;
    let mut pubsub = client.get_async_pubsub().await?;
    for channel in by_channel.keys() {
        pubsub.subscribe(channel).await?;
    }
    pubsub.subscribe(cancel_channel).await?;
    // A push may have happened while we were (re)connecting.
    by_channel.values().for_each(Signal::notify);
    let mut messages = pubsub.on_message();
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            msg = messages.next() => msg,
        };
        let Some(msg) = msg else {
            return Err(redis::RedisError::from(std::io::Error::other("pub/sub stream ended")));
        };
        let channel = msg.get_channel_name();
        if channel == cancel_channel {
            let payload: String = msg.get_payload().unwrap_or_default();
            if let Ok(id) = payload.parse::<Uuid>()
                && cancels.cancel(id)
            {
                tracing::info!(generation_id = %id, "cancel requested: stopping the job");
            }
        } else if let Some(signal) = by_channel.get(channel) {
            signal.notify();
        }
    }
}
