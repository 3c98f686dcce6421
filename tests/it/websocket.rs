//! The WebSocket transport on /graphql: both subprotocols, authenticated by
//! the `connection_init` payload.

use std::time::Duration;

use crate::support::TestApp;
use crate::support::ws::{Ws, recv, send};
use serde_json::json;

async fn connect(app: &TestApp, protocol: &str) -> Ws {
    crate::support::ws::connect(app.addr, protocol).await
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
async fn anonymous_sockets_are_anonymous_and_bad_tokens_fail_each_operation() {
    let app = TestApp::start().await;
    let mut ws = connect(&app, "graphql-transport-ws").await;
    send(&mut ws, json!({ "type": "connection_init", "payload": {} })).await;
    assert_eq!(recv(&mut ws).await.expect("ack")["type"], "connection_ack");
    send(&mut ws, json!({ "id": "1", "type": "subscribe", "payload": { "query": "{ me { email } }" } }))
        .await;
    assert_eq!(recv(&mut ws).await.expect("next")["payload"]["data"]["me"], json!(null));

    // A bad token does not refuse the socket: each operation that needs the
    // caller says why it cannot run, with a code; public ones still run.
    let mut ws = connect(&app, "graphql-transport-ws").await;
    send(&mut ws, json!({ "type": "connection_init", "payload": { "Authorization": "Bearer forged" } }))
        .await;
    assert_eq!(recv(&mut ws).await.expect("ack")["type"], "connection_ack");
    send(&mut ws, json!({ "id": "1", "type": "subscribe", "payload": { "query": "{ me { email } }" } }))
        .await;
    let msg = recv(&mut ws).await.expect("an answer");
    assert_eq!(msg["payload"]["errors"][0]["extensions"]["code"], "UNAUTHENTICATED", "{msg}");
    assert!(
        msg["payload"]["errors"][0]["message"].as_str().unwrap_or_default().contains("not valid"),
        "{msg}"
    );
    assert_eq!(recv(&mut ws).await.expect("complete")["type"], "complete");
    send(&mut ws, json!({ "id": "2", "type": "subscribe", "payload": { "query": "{ models { id } }" } }))
        .await;
    let msg = recv(&mut ws).await.expect("an answer");
    assert!(msg["payload"]["data"]["models"].is_array(), "{msg}");
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

#[tokio::test(flavor = "multi_thread")]
async fn the_server_keeps_idle_sockets_alive_in_each_protocol() {
    let app = TestApp::start_with(|s| s.ws_keepalive = Duration::from_millis(300)).await;
    for (protocol, init, ka) in
        [("graphql-transport-ws", "connection_init", "ping"), ("graphql-ws", "connection_init", "ka")]
    {
        let mut ws = connect(&app, protocol).await;
        send(&mut ws, json!({ "type": init })).await;
        assert_eq!(recv(&mut ws).await.expect("ack")["type"], "connection_ack");
        let mut seen = 0;
        // Several periods pass; the client answers nothing itself but the
        // WebSocket pongs tungstenite sends, and stays open.
        while seen < 4 {
            let msg = tokio::time::timeout(Duration::from_secs(5), futures_util::StreamExt::next(&mut ws))
                .await
                .expect("a keep-alive in time")
                .expect("open")
                .expect("message");
            if let tokio_tungstenite::tungstenite::Message::Text(t) = msg {
                let v: serde_json::Value = serde_json::from_str(&t).expect("json");
                assert_eq!(v["type"], ka, "{protocol}: {v}");
                seen += 1;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_socket_that_never_initialises_is_closed() {
    let app = TestApp::start_with(|s| s.ws_init_timeout = Duration::from_millis(500)).await;
    let mut ws = connect(&app, "graphql-transport-ws").await;
    let started = std::time::Instant::now();
    let close = loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), futures_util::StreamExt::next(&mut ws))
            .await
            .expect("closed in time");
        match msg {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Close(frame))) => break frame,
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    let frame = close.expect("a close frame with a code");
    assert_eq!(u16::from(frame.code), 4408, "{frame:?}");
    assert!(started.elapsed() >= Duration::from_millis(400));
}
