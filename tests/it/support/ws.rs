//! A GraphQL-over-WebSocket test client (tokio-tungstenite).

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

pub type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub async fn connect(addr: std::net::SocketAddr, protocol: &str) -> Ws {
    let mut req = format!("ws://{addr}/graphql").into_client_request().expect("request");
    req.headers_mut().insert("Sec-WebSocket-Protocol", protocol.parse().expect("header"));
    let (ws, res) = tokio_tungstenite::connect_async(req).await.expect("connect");
    assert_eq!(res.headers().get("sec-websocket-protocol").and_then(|v| v.to_str().ok()), Some(protocol));
    ws
}

/// A graphql-transport-ws socket past `connection_ack`, signed in with
/// `token` when given.
pub async fn connect_signed_in(addr: std::net::SocketAddr, token: Option<&str>) -> Ws {
    let mut ws = connect(addr, "graphql-transport-ws").await;
    let payload = match token {
        Some(t) => json!({ "Authorization": format!("Bearer {t}") }),
        None => json!({}),
    };
    send(&mut ws, json!({ "type": "connection_init", "payload": payload })).await;
    let ack = recv(&mut ws).await.expect("ack");
    assert_eq!(ack["type"], "connection_ack", "{ack}");
    ws
}

pub async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).await.expect("send");
}

pub async fn subscribe(ws: &mut Ws, id: &str, query: &str, variables: Value) {
    send(ws, json!({ "id": id, "type": "subscribe", "payload": { "query": query, "variables": variables } }))
        .await;
}

/// The next JSON message that is not a keep-alive, or None once closed.
pub async fn recv(ws: &mut Ws) -> Option<Value> {
    recv_within(ws, Duration::from_secs(30)).await
}

pub async fn recv_within(ws: &mut Ws, limit: Duration) -> Option<Value> {
    // One deadline for the whole wait: keep-alives must not extend it.
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next()).await.expect("no message in time")?;
        match msg {
            Ok(Message::Text(t)) => {
                let v: Value = serde_json::from_str(&t).expect("json");
                if v["type"] != "ka" && v["type"] != "ping" && v["type"] != "pong" {
                    return Some(v);
                }
            }
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// The close code of a socket, reading past other messages.
pub async fn close_code(ws: &mut Ws, limit: Duration) -> u16 {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await.expect("no close in time") {
            Some(Ok(Message::Close(Some(frame)))) => return frame.code.into(),
            Some(Ok(Message::Close(None))) | None | Some(Err(_)) => return 1005,
            Some(Ok(_)) => {}
        }
    }
}
