//! GraphQL over WebSocket on `/graphql`: both subprotocols, authentication
//! by the `connection_init` payload, and what async-graphql leaves out: the
//! server's own keep-alive (`ping` on graphql-transport-ws, `ka` on the
//! legacy graphql-ws, plus a WebSocket ping frame that every client answers)
//! so idle sockets survive mobile networks and proxies, a deadline for
//! `connection_init`, closing sockets whose peer went silent, and closing
//! every socket when the server stops.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};

use async_graphql::Data;
use async_graphql::http::{WebSocketProtocols, WsMessage};
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use axum::http::HeaderMap;
use futures_util::{SinkExt, StreamExt};
use tokio::time::Instant;

use crate::AppState;
use crate::auth::Viewer;
use crate::client::ClientIp;
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

/// A client's share of the WebSockets of this process, held while its
/// socket is open.
pub(crate) struct SocketSlot(IpAddr);

fn sockets_per_ip() -> &'static Mutex<HashMap<IpAddr, usize>> {
    static MAP: OnceLock<Mutex<HashMap<IpAddr, usize>>> = OnceLock::new();
    MAP.get_or_init(Mutex::default)
}

impl SocketSlot {
    /// `None` when the client already holds `max` sockets.
    pub(crate) fn take(client: ClientIp, max: usize) -> Option<Self> {
        let mut map = sockets_per_ip().lock().unwrap_or_else(PoisonError::into_inner);
        let n = map.entry(client.0).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Self(client.0))
    }
}

impl Drop for SocketSlot {
    fn drop(&mut self) {
        let mut map = sockets_per_ip().lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = map.get_mut(&self.0) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.0);
            }
        }
    }
}

/// What a client message is, as far as this layer cares.
#[derive(serde::Deserialize)]
struct Envelope {
    #[serde(rename = "type")]
    kind: String,
    id: Option<String>,
}

/// The server's `complete` for an operation (async-graphql writes `type`
/// first; `next` messages, the bulk, are never parsed).
fn completed_id(text: &str) -> Option<String> {
    if !(text.starts_with(r#"{"type":"complete""#) || text.starts_with(r#"{"type":"error""#)) {
        return None;
    }
    serde_json::from_str::<Envelope>(text).ok()?.id
}

pub(crate) async fn serve(
    socket: WebSocket,
    state: AppState,
    protocol: WebSocketProtocols,
    client: ClientIp,
    _slot: SocketSlot,
) {
    let _open = Open::new();
    let (mut sink, mut source) = socket.split();
    let started = Instant::now();
    // Client messages pass through here (to count operations and see
    // their ids) on their way to async-graphql.
    // async-graphql drains its input at once except while `connection_init`
    // is being answered; a client that sends more than this meanwhile is
    // flooding (an await here would stop async-graphql being polled).
    let (to_graphql, input) =
        tokio::sync::mpsc::channel::<Vec<u8>>(2 * state.settings.connections.ws_max_operations + 32);
    let input = futures_util::stream::unfold(input, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let mut to_graphql = Some(to_graphql);
    // When the credential of `connection_init` expires (Unix seconds).
    let (expiry_tx, mut expiry_rx) = tokio::sync::oneshot::channel::<Option<i64>>();
    let init_state = state.clone();
    let graphql = async_graphql::http::WebSocket::new(state.schema.clone(), input, protocol)
        .on_connection_init(move |payload| async move {
            connection_init(&init_state, client, payload, expiry_tx).await
        });
    futures_util::pin_mut!(graphql);

    let limits = &state.settings.connections;
    let every = state.settings.ws_keepalive;
    let mut keepalive = tokio::time::interval_at(started + every, every);
    keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let init_deadline = tokio::time::sleep(state.settings.ws_init_timeout);
    futures_util::pin_mut!(init_deadline);
    // Far away until the credential's expiry is known.
    let expiry = tokio::time::sleep(std::time::Duration::from_secs(365 * 24 * 3600));
    futures_util::pin_mut!(expiry);
    let mut acknowledged = false;
    let mut expiry_known = false;
    let mut heard = started;
    // Operations running, by id.
    let mut running: HashSet<String> = HashSet::new();
    let close = |code: u16, reason: &str| Message::Close(Some(CloseFrame { code, reason: reason.into() }));

    loop {
        tokio::select! {
            incoming = source.next(), if to_graphql.is_some() => {
                heard = Instant::now();
                let data = match incoming {
                    Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => m.into_data(),
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                        // async-graphql ends its stream when its input does.
                        to_graphql = None;
                        continue;
                    }
                    Some(Ok(_)) => continue,
                };
                let envelope = serde_json::from_slice::<Envelope>(&data).ok();
                match envelope {
                    Some(Envelope { kind, id: Some(id) }) if kind == "subscribe" || kind == "start" => {
                        if running.contains(&id) {
                            // graphql-transport-ws: "Subscriber for <id> already exists".
                            let _ = sink.send(close(4409, &format!("Subscriber for {id} already exists"))).await;
                            break;
                        }
                        if running.len() >= limits.ws_max_operations {
                            let error = operation_limit_error(protocol, &id, limits.ws_max_operations);
                            if sink.send(Message::Text(error.into())).await.is_err() {
                                break;
                            }
                            continue;
                        }
                        running.insert(id);
                    }
                    Some(Envelope { kind, id: Some(id) }) if kind == "complete" || kind == "stop" => {
                        running.remove(&id);
                    }
                    _ => {}
                }
                if let Some(tx) = to_graphql.as_ref()
                    && tx.try_send(data.to_vec()).is_err()
                {
                    let _ = sink.send(close(1008, "too many messages at once")).await;
                    break;
                }
            }
            out = graphql.next() => match out {
                None => break,
                Some(WsMessage::Text(text)) => {
                    acknowledged |= text.starts_with(r#"{"type":"connection_ack""#);
                    if let Some(id) = completed_id(&text) {
                        running.remove(&id);
                    }
                    if sink.send(Message::Text(text.into())).await.is_err() {
                        break;
                    }
                }
                Some(WsMessage::Close(code, reason)) => {
                    let _ = sink.send(close(code, &reason)).await;
                    break;
                }
            },
            expires = &mut expiry_rx, if !expiry_known => {
                expiry_known = true;
                if let Ok(Some(at)) = expires {
                    let left = (at - chrono::Utc::now().timestamp()).max(0) as u64;
                    expiry.as_mut().reset(Instant::now() + std::time::Duration::from_secs(left));
                }
            }
            _ = &mut expiry => {
                // The socket never outlives its credential: the client
                // reconnects with a fresh token (graphql-ws calls a lazy
                // `connectionParams` again on reconnect).
                let _ = sink.send(close(4401, "Unauthorized: the access token has expired")).await;
                break;
            }
            _ = &mut init_deadline, if !acknowledged => {
                // The graphql-transport-ws code for this; legacy clients
                // just see the socket close.
                let _ = sink.send(close(4408, "Connection initialisation timeout")).await;
                break;
            }
            _ = keepalive.tick() => {
                if heard.elapsed() > every * SILENT_PERIODS {
                    tracing::debug!(silent_ms = heard.elapsed().as_millis() as u64, "closing a silent WebSocket");
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

/// The error an operation past MAGE_WS_MAX_OPERATIONS gets (it does not
/// run; the others go on).
fn operation_limit_error(protocol: WebSocketProtocols, id: &str, max: usize) -> String {
    let error = serde_json::json!({
        "message": format!("at most {max} operations at once on one WebSocket: complete one first"),
        "extensions": { "code": "RATE_LIMITED", "retryAfterSeconds": 0 },
    });
    let payload = match protocol {
        WebSocketProtocols::GraphQLWS => serde_json::json!([error]),
        WebSocketProtocols::SubscriptionsTransportWS => error,
    };
    serde_json::json!({ "type": "error", "id": id, "payload": payload }).to_string()
}

/// Reads the caller from the `connection_init` payload:
/// `{"Authorization": "Bearer <token>"}` (also `authorization` or `token`).
/// Bad credentials do not refuse the socket: every operation that needs the
/// caller then fails with `UNAUTHENTICATED` and the reason, on its own, as
/// over HTTP; public operations still run. A good one's expiry goes to the
/// socket, which closes then.
async fn connection_init(
    state: &AppState,
    client: ClientIp,
    payload: serde_json::Value,
    expiry: tokio::sync::oneshot::Sender<Option<i64>>,
) -> async_graphql::Result<Data> {
    let credential = ["Authorization", "authorization", "token"]
        .iter()
        .find_map(|k| payload.get(*k).and_then(|v| v.as_str()));
    let (viewer, expires): (Viewer, Option<i64>) = viewer_from(state, credential).await;
    let _ = expiry.send(expires);
    let mut data = Data::default();
    data.insert(viewer);
    data.insert(client);
    data.insert(crate::graphql::Loaders::new(state.pool.clone()));
    Ok(data)
}
