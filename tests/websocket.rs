//! The WebSocket transport on /graphql: both subprotocols, authenticated by
//! the `connection_init` payload.

mod common;

use std::time::Duration;

use common::TestApp;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(app: &TestApp, protocol: &str) -> Ws {
    let mut req = format!("ws://{}/graphql", app.addr).into_client_request().expect("request");
    req.headers_mut().insert("Sec-WebSocket-Protocol", protocol.parse().expect("header"));
    let (ws, res) = tokio_tungstenite::connect_async(req).await.expect("connect");
    assert_eq!(res.headers().get("sec-websocket-protocol").and_then(|v| v.to_str().ok()), Some(protocol));
    ws
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).await.expect("send");
}

/// The next JSON message that is not a keep-alive, or None once closed.
async fn recv(ws: &mut Ws) -> Option<Value> {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("no message within 10 s")?;
        match msg {
            Ok(Message::Text(t)) => {
                let v: Value = serde_json::from_str(&t).expect("json");
                if v["type"] != "ka" && v["type"] != "ping" {
                    return Some(v);
                }
            }
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn graphql_transport_ws_runs_an_operation_as_the_signed_in_user() {
    let app = TestApp::start().await;
    let (token, _) = app.register("ws@example.com").await;
    let mut ws = connect(&app, "graphql-transport-ws").await;
    send(
        &mut ws,
        json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {token}") } }),
    )
    .await;
    assert_eq!(recv(&mut ws).await.expect("ack")["type"], "connection_ack");
    send(&mut ws, json!({ "id": "1", "type": "subscribe", "payload": { "query": "{ me { email credits { balance } } }" } })).await;
    let next = recv(&mut ws).await.expect("next");
    assert_eq!(next["type"], "next", "{next}");
    assert_eq!(
        next["payload"]["data"]["me"],
        json!({ "email": "ws@example.com", "credits": { "balance": 100 } })
    );
    assert_eq!(recv(&mut ws).await.expect("complete"), json!({ "type": "complete", "id": "1" }));
}

#[tokio::test(flavor = "multi_thread")]
async fn legacy_graphql_ws_accepts_the_token_key() {
    let app = TestApp::start().await;
    let (token, _) = app.register("legacy@example.com").await;
    let mut ws = connect(&app, "graphql-ws").await;
    send(&mut ws, json!({ "type": "connection_init", "payload": { "token": token } })).await;
    assert_eq!(recv(&mut ws).await.expect("ack")["type"], "connection_ack");
    send(&mut ws, json!({ "id": "7", "type": "start", "payload": { "query": "{ me { email } }" } })).await;
    let data = recv(&mut ws).await.expect("data");
    assert_eq!(data["type"], "data", "{data}");
    assert_eq!(data["payload"]["data"]["me"]["email"], "legacy@example.com");
}

#[tokio::test(flavor = "multi_thread")]
async fn anonymous_sockets_are_anonymous_and_bad_tokens_are_rejected() {
    let app = TestApp::start().await;
    let mut ws = connect(&app, "graphql-transport-ws").await;
    send(&mut ws, json!({ "type": "connection_init", "payload": {} })).await;
    assert_eq!(recv(&mut ws).await.expect("ack")["type"], "connection_ack");
    send(&mut ws, json!({ "id": "1", "type": "subscribe", "payload": { "query": "{ me { email } }" } }))
        .await;
    assert_eq!(recv(&mut ws).await.expect("next")["payload"]["data"]["me"], json!(null));

    let mut ws = connect(&app, "graphql-transport-ws").await;
    send(&mut ws, json!({ "type": "connection_init", "payload": { "Authorization": "Bearer forged" } }))
        .await;
    match recv(&mut ws).await {
        None => {}
        Some(v) => assert_ne!(v["type"], "connection_ack", "a forged token was accepted: {v}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_over_the_socket_carry_a_code() {
    let app = TestApp::start().await;
    let mut ws = connect(&app, "graphql-transport-ws").await;
    send(&mut ws, json!({ "type": "connection_init" })).await;
    assert_eq!(recv(&mut ws).await.expect("ack")["type"], "connection_ack");
    send(&mut ws, json!({ "id": "1", "type": "subscribe", "payload": { "query": "{ nope }" } })).await;
    let msg = recv(&mut ws).await.expect("an answer");
    let errors = if msg["type"] == "error" { &msg["payload"] } else { &msg["payload"]["errors"] };
    assert_eq!(errors[0]["extensions"]["code"], "BAD_USER_INPUT", "{msg}");
    send(&mut ws, json!({ "id": "2", "type": "subscribe", "payload": { "query": "{ creditEntries { edges { cursor } } }" } }))
        .await;
    let msg = loop {
        let msg = recv(&mut ws).await.expect("an answer");
        if msg["id"] == "2" {
            break msg;
        }
    };
    assert_eq!(msg["payload"]["errors"][0]["extensions"]["code"], "UNAUTHENTICATED", "{msg}");
}
