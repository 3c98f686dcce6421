//! GraphQL over WebSocket on `/graphql`: both subprotocols, authentication
//! by the `connection_init` payload, and what async-graphql leaves out: the
//! server's own keep-alive (`ping` on graphql-transport-ws, `ka` on the
//! legacy graphql-ws, plus a WebSocket ping frame that every client answers)
//! so idle sockets survive mobile networks and proxies, a deadline for
//! `connection_init`, closing sockets whose peer went silent, and closing
//! every socket when the server stops.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use async_graphql::Data;
use async_graphql::http::{WebSocketProtocols, WsMessage};
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use axum::http::HeaderMap;
use futures_util::{SinkExt, StreamExt};
use tokio::time::Instant;

use crate::AppState;
use crate::auth::Viewer;
use crate::http::viewer_from;

/// Largest message a client may send (an operation with its variables).
pub(crate) const MAX_MESSAGE_BYTES: usize = 256 * 1024;

/// Keep-alive periods a peer may stay silent (not even answering a ping
/// frame) before its socket is considered dead.
const SILENT_PERIODS: u32 = 3;

/// The subprotocol the client asked for, first acceptable one first.
pub(crate) fn protocol(headers: &HeaderMap) -> Option<WebSocketProtocols> {
    headers
        .get_all(axum::http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| WebSocketProtocols::from_str(p.trim()).ok())
}

static OPEN: AtomicUsize = AtomicUsize::new(0);

/// Counts the process's open GraphQL sockets while alive.
struct Open;

impl Open {
    fn new() -> Self {
        crate::metrics::websockets(OPEN.fetch_add(1, Ordering::Relaxed) + 1);
        Self
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        let open = OPEN.fetch_sub(1, Ordering::Relaxed) - 1;
        crate::metrics::websockets(open);
        if open == 0 {
            give_back_memory();
        }
    }
}

/// glibc keeps what thousands of sockets freed in its arenas, so the
/// process would stay at its high-water mark after a wave of clients left;
/// once the last socket closes, hand the free pages back to the system.
fn give_back_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    tokio::task::spawn_blocking(|| {
        // SAFETY: malloc_trim only releases free memory of the allocator;
        // it takes no pointers and is thread-safe.
        unsafe { libc::malloc_trim(0) };
    });
}

/// GraphQL sockets open in this process.
pub fn open_sockets() -> usize {
    OPEN.load(Ordering::Relaxed)
}

pub(crate) async fn serve(socket: WebSocket, state: AppState, protocol: WebSocketProtocols) {
    let _open = Open::new();
    let (mut sink, source) = socket.split();
    let started = Instant::now();
    // Milliseconds after `started` when the peer last sent anything.
    let heard = Arc::new(AtomicU64::new(0));
    let input = {
        let heard = heard.clone();
        source
            .take_while(|m| std::future::ready(matches!(m, Ok(m) if !matches!(m, Message::Close(_)))))
            .filter_map(move |m| {
                heard.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
                std::future::ready(match m {
                    Ok(m @ (Message::Text(_) | Message::Binary(_))) => Some(m.into_data()),
                    _ => None,
                })
            })
    };
    let init_state = state.clone();
    let graphql = async_graphql::http::WebSocket::new(state.schema.clone(), input, protocol)
        .on_connection_init(move |payload| async move { connection_init(&init_state, payload) });
    futures_util::pin_mut!(graphql);

    let every = state.settings.ws_keepalive;
    let mut keepalive = tokio::time::interval_at(started + every, every);
    keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let init_deadline = tokio::time::sleep(state.settings.ws_init_timeout);
    futures_util::pin_mut!(init_deadline);
    let mut acknowledged = false;
    let close = |code: u16, reason: &str| Message::Close(Some(CloseFrame { code, reason: reason.into() }));

    loop {
        tokio::select! {
            out = graphql.next() => match out {
                None => break,
                Some(WsMessage::Text(text)) => {
                    acknowledged |= text.starts_with(r#"{"type":"connection_ack""#);
                    if sink.send(Message::Text(text.into())).await.is_err() {
                        break;
                    }
                }
                Some(WsMessage::Close(code, reason)) => {
                    let _ = sink.send(close(code, &reason)).await;
                    break;
                }
            },
            _ = &mut init_deadline, if !acknowledged => {
                // The graphql-transport-ws code for this; legacy clients
                // just see the socket close.
                let _ = sink.send(close(4408, "Connection initialisation timeout")).await;
                break;
            }
            _ = keepalive.tick() => {
                let silent = started.elapsed().as_millis() as u64 - heard.load(Ordering::Relaxed);
                if silent > (every * SILENT_PERIODS).as_millis() as u64 {
                    tracing::debug!(silent_ms = silent, "closing a silent WebSocket");
                    let _ = sink.send(close(1001, "no answer to keep-alive pings")).await;
                    break;
                }
                if acknowledged {
                    let ka = match protocol {
                        WebSocketProtocols::GraphQLWS => r#"{"type":"ping"}"#,
                        WebSocketProtocols::SubscriptionsTransportWS => r#"{"type":"ka"}"#,
                    };
                    if sink.send(Message::Text(ka.into())).await.is_err() {
                        break;
                    }
                }
                if sink.send(Message::Ping(Default::default())).await.is_err() {
                    break;
                }
            }
            _ = state.stopping.cancelled() => {
                let _ = sink.send(close(1001, "server shutting down: reconnect")).await;
                break;
            }
        }
    }
    let _ = sink.close().await;
}

/// Reads the caller from the `connection_init` payload:
/// `{"Authorization": "Bearer <token>"}` (also `authorization` or `token`).
/// Bad credentials do not refuse the socket: every operation that needs the
/// caller then fails with `UNAUTHENTICATED` and the reason, on its own, as
/// over HTTP; public operations still run.
fn connection_init(state: &AppState, payload: serde_json::Value) -> async_graphql::Result<Data> {
    let credential = ["Authorization", "authorization", "token"]
        .iter()
        .find_map(|k| payload.get(*k).and_then(|v| v.as_str()));
    let viewer: Viewer = viewer_from(state, credential);
    let mut data = Data::default();
    data.insert(viewer);
    data.insert(crate::graphql::Loaders::new(state.pool.clone()));
    Ok(data)
}
