//! GraphQL over WebSocket on `/graphql`: both subprotocols, authentication
//! by the `connection_init` payload, and what async-graphql leaves out: the
//! server's own keep-alive (`ping` on graphql-transport-ws, `ka` on the
//! legacy graphql-ws, plus a WebSocket ping frame that every client answers)
//! so idle sockets survive mobile networks and proxies, a deadline for
//! `connection_init`, closing sockets whose peer went silent, closing a
//! socket whose session ends or whose API key is revoked (4403), and
//! closing every socket when the server stops.
//!
//! A socket is bound to its session, not to the access token it opened
//! with: a short token expiring does not close it, only the session ending.

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};

use async_graphql::Data;
use async_graphql::http::{WebSocketProtocols, WsMessage};
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use axum::http::HeaderMap;
use futures_util::{SinkExt, StreamExt};
use tokio::time::Instant;

use crate::AppState;
use crate::auth::{Principal, Viewer, viewer_from};
use crate::client::ClientIp;

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
/// socket is open. Counted by [`ClientIp::limit_key`]: an IPv6 client
/// cannot multiply its share by rotating addresses within its /64.
pub(crate) type SocketSlot = crate::slots::Slot<String>;

/// A socket's slot for `client`; `None` when it already holds `max`.
pub(crate) fn socket_slot(client: ClientIp, max: usize) -> Option<SocketSlot> {
    static SOCKETS: std::sync::LazyLock<Arc<crate::slots::PerKey<String>>> =
        std::sync::LazyLock::new(Arc::default);
    SOCKETS.take(client.limit_key(), max)
}

/// What a client message is, as far as this layer cares.
#[derive(serde::Deserialize)]
struct Envelope {
    #[serde(rename = "type")]
    kind: String,
    id: Option<String>,
}

/// The server's `complete` (or `error`) for an operation: async-graphql
/// writes `type` first, so `next` messages, the bulk, are never parsed.
fn completed_id(text: &str) -> Option<String> {
    if !(text.starts_with(r#"{"type":"complete""#) || text.starts_with(r#"{"type":"error""#)) {
        return None;
    }
    serde_json::from_str::<Envelope>(text).ok()?.id
}

/// State a socket's input filter shares with its loop: client messages are
/// looked at on their way into async-graphql (operations counted, ids
/// checked), and what must be answered outside async-graphql is left here
/// for the loop, woken through `wake`. One allocation per socket.
struct Shared {
    started: Instant,
    /// Milliseconds after `started` when the peer last sent anything.
    heard_ms: AtomicU64,
    /// Who `connection_init` signed in as, and with which session or key.
    principal: OnceLock<Principal>,
    guard: Mutex<Guard>,
    wake: tokio::sync::Notify,
}

#[derive(Default)]
struct Guard {
    /// Operations running, by id.
    running: HashSet<String>,
    /// Operations refused for the limit, to answer with an error.
    refused: Vec<String>,
    /// An id subscribed twice: the socket closes with 4409.
    duplicate: Option<String>,
}

impl Shared {
    /// The peer just sent something.
    fn heard(&self) {
        self.heard_ms.store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, Guard> {
        self.guard.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether a client message goes on to async-graphql.
    fn admit(&self, data: &[u8], max_operations: usize) -> bool {
        self.heard();
        let Ok(Envelope { kind, id: Some(id) }) = serde_json::from_slice::<Envelope>(data) else {
            return true;
        };
        let mut guard = self.guard();
        match kind.as_str() {
            "subscribe" | "start" if guard.running.contains(&id) => guard.duplicate = Some(id),
            "subscribe" | "start" if guard.running.len() >= max_operations => guard.refused.push(id),
            "subscribe" | "start" => {
                guard.running.insert(id);
                return true;
            }
            "complete" | "stop" => {
                guard.running.remove(&id);
                return true;
            }
            _ => return true,
        }
        drop(guard);
        self.wake.notify_one();
        false
    }
}

/// What the one deadline timer of a socket is waiting for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Deadline {
    /// `connection_init` (4408 when it passes).
    Init,
    None,
}

pub(crate) async fn serve(
    socket: WebSocket,
    state: AppState,
    protocol: WebSocketProtocols,
    client: ClientIp,
    _slot: SocketSlot,
) {
    let _open = Open::new();
    let (mut sink, source) = socket.split();
    let started = Instant::now();
    let max_operations = state.settings.connections.ws_max_operations;
    let shared = Arc::new(Shared {
        started,
        heard_ms: AtomicU64::new(0),
        principal: OnceLock::new(),
        guard: Mutex::default(),
        wake: tokio::sync::Notify::new(),
    });
    let input = {
        let shared = shared.clone();
        source
            .take_while(|m| std::future::ready(matches!(m, Ok(m) if !matches!(m, Message::Close(_)))))
            .filter_map(move |m| {
                std::future::ready(match m {
                    Ok(m @ (Message::Text(_) | Message::Binary(_))) => {
                        let data = m.into_data();
                        shared.admit(&data, max_operations).then_some(data)
                    }
                    _ => {
                        shared.heard();
                        None
                    }
                })
            })
    };
    let init = (state.clone(), shared.clone());
    let graphql = async_graphql::http::WebSocket::new(state.schema.clone(), input, protocol)
        .on_connection_init(move |payload| async move {
            let (state, shared) = init;
            connection_init(&state, client, payload, &shared).await
        });
    futures_util::pin_mut!(graphql);

    let every = state.settings.ws_keepalive;
    let mut keepalive = tokio::time::interval_at(started + every, every);
    keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let deadline = tokio::time::sleep(state.settings.ws_init_timeout);
    futures_util::pin_mut!(deadline);
    let mut waiting_for = Deadline::Init;
    let mut acknowledged = false;
    // Taken before `connection_init` is read: a revocation between its
    // check and the acknowledgement still wakes this socket.
    let mut revocations = state.revocations.subscribe();
    let ended = |shared: &Shared| {
        shared.principal.get().is_some_and(|p| state.revocations.is_revoked(p.credential_id()))
    };
    const ENDED: &str = "Forbidden: the session has ended or the API key was revoked";
    let close = |code: u16, reason: &str| Message::Close(Some(CloseFrame { code, reason: reason.into() }));

    loop {
        tokio::select! {
            out = graphql.next() => match out {
                None => break,
                Some(WsMessage::Text(text)) => {
                    if !acknowledged && text.starts_with(r#"{"type":"connection_ack""#) {
                        acknowledged = true;
                        waiting_for = Deadline::None;
                        if ended(&shared) {
                            let _ = sink.send(close(4403, ENDED)).await;
                            break;
                        }
                    }
                    if let Some(id) = completed_id(&text) {
                        shared.guard().running.remove(&id);
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
            _ = shared.wake.notified() => {
                let (refused, duplicate) = {
                    let mut guard = shared.guard();
                    (std::mem::take(&mut guard.refused), guard.duplicate.take())
                };
                if let Some(id) = duplicate {
                    // graphql-transport-ws: "Subscriber for <id> already exists".
                    let _ = sink.send(close(4409, &format!("Subscriber for {id} already exists"))).await;
                    break;
                }
                let mut gone = false;
                for id in refused {
                    let error = operation_limit_error(protocol, &id, max_operations);
                    if sink.send(Message::Text(error.into())).await.is_err() {
                        gone = true;
                        break;
                    }
                }
                if gone {
                    break;
                }
            }
            _ = &mut deadline, if waiting_for != Deadline::None => {
                // The graphql-transport-ws code for this; legacy clients
                // just see the socket close.
                let _ = sink.send(close(4408, "Connection initialisation timeout")).await;
                break;
            }
            Ok(()) = revocations.changed() => {
                if ended(&shared) {
                    let _ = sink.send(close(4403, ENDED)).await;
                    break;
                }
            }
            _ = keepalive.tick() => {
                let silent = started.elapsed().as_millis() as u64 - shared.heard_ms.load(Ordering::Relaxed);
                if silent > (every * SILENT_PERIODS).as_millis() as u64 {
                    tracing::debug!(silent_ms = silent, "closing a silent WebSocket");
                    let _ = sink.send(close(1001, "no answer to keep-alive pings")).await;
                    break;
                }
                // While the revocation poll is failing, the database is
                // asked instead, once a keep-alive period. Boxed: inline,
                // the query's future would sit in every idle socket's state
                // (~2 KiB at 10,000 sockets).
                if let Some(p) = shared.principal.get()
                    && let crate::auth::Credential::Session(session) = p.credential
                    && !state.revocations.is_fresh()
                    && !Box::pin(crate::auth::session_live(&state, session)).await
                {
                    let _ = sink.send(close(4403, ENDED)).await;
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
/// over HTTP; public operations still run. A good one's session or key is
/// left in `shared` for the socket, which closes when it is revoked.
async fn connection_init(
    state: &AppState,
    client: ClientIp,
    payload: serde_json::Value,
    shared: &Shared,
) -> async_graphql::Result<Data> {
    let credential = ["Authorization", "authorization", "token"]
        .iter()
        .find_map(|k| payload.get(*k).and_then(|v| v.as_str()));
    let viewer = viewer_from(state, credential).await;
    if let Viewer::User(p) = viewer {
        let _ = shared.principal.set(p);
    }
    let mut data = Data::default();
    data.insert(viewer);
    data.insert(client);
    data.insert(crate::graphql::Loaders::new(state.pool.clone()));
    Ok(data)
}
