//! The process's one Redis pub/sub connection: it joins and leaves channels
//! in the order the hub asks, hands every message to the hub, and after a
//! reconnection has the hub read again what it may have missed.

use std::sync::Weak;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::Inner;

pub(super) enum Command {
    Subscribe(String, oneshot::Sender<Result<(), String>>),
    Unsubscribe(String),
}

/// Holds the process's one pub/sub connection: (re)subscribes, applies
/// subscribe / unsubscribe commands in order, dispatches messages.
pub(super) async fn connection_task(
    hub: Weak<Inner>,
    url: String,
    stop: CancellationToken,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    let mut backoff = Duration::from_millis(100);
    let mut first = true;
    while !stop.is_cancelled() {
        match run_connection(&hub, &url, &stop, &mut commands, first).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, "live events: Redis pub/sub connection lost; reconnecting");
                first = false;
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn run_connection(
    hub: &Weak<Inner>,
    url: &str,
    stop: &CancellationToken,
    commands: &mut mpsc::UnboundedReceiver<Command>,
    first: bool,
) -> Result<(), redis::RedisError> {
    let client = redis::Client::open(url)?;
    let (mut sink, mut messages) = client.get_async_pubsub().await?.split();
    let (queue_channel, channels) = {
        let Some(inner) = hub.upgrade() else { return Ok(()) };
        let state = inner.lock();
        (inner.queue_channel.clone(), state.topics.keys().cloned().collect::<Vec<_>>())
    };
    sink.subscribe(&queue_channel).await?;
    for channel in &channels {
        sink.subscribe(channel).await?;
    }
    if let Some(inner) = hub.upgrade() {
        {
            let mut state = inner.lock();
            for channel in &channels {
                if let Some(t) = state.topics.get_mut(channel) {
                    t.confirmed = true;
                }
            }
        }
        if !first && let Err(e) = inner.resync().await {
            tracing::warn!(error = %e, "live events: could not resynchronise after reconnecting");
        }
    }
    tracing::debug!(channels = channels.len(), "live events: pub/sub connected");
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            cmd = commands.recv() => match cmd {
                None => return Ok(()),
                Some(Command::Subscribe(channel, reply)) => {
                    let result = sink.subscribe(&channel).await.map_err(|e| e.to_string());
                    let waiters = hub
                        .upgrade()
                        .and_then(|inner| {
                            let mut state = inner.lock();
                            let t = state.topics.get_mut(&channel)?;
                            t.confirmed |= result.is_ok();
                            t.waiting.take()
                        })
                        .unwrap_or_default();
                    for waiter in waiters {
                        let _ = waiter.send(result.clone());
                    }
                    let _ = reply.send(result.clone());
                    if let Err(e) = result {
                        return Err(redis::RedisError::from(std::io::Error::other(e)));
                    }
                }
                Some(Command::Unsubscribe(channel)) => {
                    // A newcomer may have re-created the topic since.
                    let wanted = hub.upgrade().is_some_and(|i| i.lock().topics.contains_key(&channel));
                    if !wanted {
                        sink.unsubscribe(&channel).await?;
                    }
                }
            },
            msg = messages.next() => {
                let Some(msg) = msg else {
                    return Err(redis::RedisError::from(std::io::Error::other("pub/sub stream ended")));
                };
                let Some(inner) = hub.upgrade() else { return Ok(()) };
                inner.dispatch(msg.get_channel_name(), msg.get_payload_bytes());
            }
        }
    }
}
