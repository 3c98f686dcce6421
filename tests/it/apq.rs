//! Automatic Persisted Queries (the Apollo convention) over HTTP and
//! WebSocket, shared by every instance through Redis.

use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::support::{TestApp, code, ws};

fn sha(query: &str) -> String {
    format!("{:x}", Sha256::digest(query.as_bytes()))
}

fn persisted(hash: &str) -> Value {
    json!({ "persistedQuery": { "version": 1, "sha256Hash": hash } })
}

async fn post(app: &TestApp, body: Value, token: Option<&str>) -> (u16, Value) {
    let mut req =
        app.http.post(app.url("/graphql")).header("Accept", "application/graphql-response+json").json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let res = req.send().await.expect("POST");
    (res.status().as_u16(), res.json().await.expect("json"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hash_is_unknown_then_registered_with_its_text_then_enough_alone() {
    let app = TestApp::start().await;
    let (token, _) = app.register("apq@example.com").await;
    // Unique per run: the text's hash must be unknown to this Redis prefix.
    let query = "query ApqMe { me { email credits { balance } } }";
    let hash = sha(query);

    let (status, res) = post(&app, json!({ "extensions": persisted(&hash) }), Some(&token)).await;
    assert_eq!(status, 200, "Apollo's clients read PersistedQueryNotFound from a 200: {res}");
    assert_eq!(res["errors"][0]["message"], "PersistedQueryNotFound", "{res}");
    assert_eq!(code(&res), "PERSISTED_QUERY_NOT_FOUND");

    let (status, res) =
        post(&app, json!({ "query": query, "extensions": persisted(&hash) }), Some(&token)).await;
    assert_eq!(status, 200);
    assert_eq!(res["data"]["me"]["email"], "apq@example.com", "{res}");

    // The hash alone now runs the query, with the variables and caller of
    // this request; upper-case hex is the same hash.
    let (status, res) =
        post(&app, json!({ "extensions": persisted(&hash.to_uppercase()) }), Some(&token)).await;
    assert_eq!(status, 200);
    assert_eq!(res["data"]["me"]["credits"]["balance"], 100, "{res}");
    let (_, res) = post(&app, json!({ "extensions": persisted(&hash) }), None).await;
    assert_eq!(res["data"]["me"], Value::Null, "the hash carries the text, not the caller: {res}");

    // GET too (Apollo's useGETForHashedQueries), and it is still no way to
    // run a mutation over GET.
    let url = format!("{}?extensions={}", app.url("/graphql"), percent(&persisted(&hash).to_string()));
    let res: Value =
        app.http.get(&url).bearer_auth(&token).send().await.expect("GET").json().await.expect("json");
    assert_eq!(res["data"]["me"]["email"], "apq@example.com", "{res}");
    let mutation = "mutation ApqLogout { logout }";
    post(&app, json!({ "query": mutation, "extensions": persisted(&sha(mutation)) }), None).await;
    let url =
        format!("{}?extensions={}", app.url("/graphql"), percent(&persisted(&sha(mutation)).to_string()));
    let res = app.http.get(&url).bearer_auth(&token).send().await.expect("GET");
    assert_eq!(res.status(), 405, "a persisted mutation over GET");

    // The text is in Redis under its hash, so every instance knows it.
    let redis = app.redis.redis();
    let mut conn = redis.conn().await.expect("redis");
    let stored: Option<String> =
        redis::cmd("GET").arg(redis.key(&format!("apq:{hash}"))).query_async(&mut conn).await.expect("GET");
    assert_eq!(stored.as_deref(), Some(query));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_hash_is_refused_and_registers_nothing() {
    let app = TestApp::start().await;
    let query = "query ApqWrong { models { id } }";
    let wrong = sha("query Other { models { id } }");
    let (status, res) = post(&app, json!({ "query": query, "extensions": persisted(&wrong) }), None).await;
    assert_eq!(status, 400, "{res}");
    assert_eq!(res["errors"][0]["message"], "provided sha does not match query");
    assert_eq!(code(&res), "BAD_USER_INPUT");
    assert!(res.get("data").is_none());
    // The wrong hash did not become a name for this text.
    let (_, res) = post(&app, json!({ "extensions": persisted(&wrong) }), None).await;
    assert_eq!(code(&res), "PERSISTED_QUERY_NOT_FOUND", "{res}");

    let (status, res) = post(
        &app,
        json!({ "query": query, "extensions": { "persistedQuery": { "version": 2, "sha256Hash": sha(query) } } }),
        None,
    )
    .await;
    assert_eq!((status, code(&res)), (400, "BAD_USER_INPUT"), "{res}");
    // A text that does not validate is run (and refused) but not kept.
    let invalid = "query ApqInvalid { noSuchField }";
    let (status, res) =
        post(&app, json!({ "query": invalid, "extensions": persisted(&sha(invalid)) }), None).await;
    assert_eq!((status, code(&res)), (400, "BAD_USER_INPUT"), "{res}");
    let (_, res) = post(&app, json!({ "extensions": persisted(&sha(invalid)) }), None).await;
    assert_eq!(code(&res), "PERSISTED_QUERY_NOT_FOUND", "{res}");
    // Without the extension a request still needs its text.
    let (status, res) = post(&app, json!({ "variables": {} }), None).await;
    assert_eq!(status, 400, "{res}");
}

#[tokio::test(flavor = "multi_thread")]
async fn over_websocket_a_subscription_goes_by_its_hash() {
    let app = TestApp::start().await;
    let (token, _) = app.register("apq-ws@example.com").await;
    let query = "subscription ApqCredits { creditsChanged { balance } }";
    let hash = sha(query);
    let mut socket = ws::connect_signed_in(app.addr, Some(&token)).await;

    ws::send(
        &mut socket,
        json!({ "id": "1", "type": "subscribe", "payload": { "extensions": persisted(&hash) } }),
    )
    .await;
    let msg = ws::recv_within(&mut socket, Duration::from_secs(10)).await.expect("an answer");
    let errors = if msg["type"] == "error" { &msg["payload"] } else { &msg["payload"]["errors"] };
    assert_eq!(errors[0]["extensions"]["code"], "PERSISTED_QUERY_NOT_FOUND", "{msg}");

    ws::send(
        &mut socket,
        json!({ "id": "2", "type": "subscribe", "payload": { "query": query, "extensions": persisted(&hash) } }),
    )
    .await;
    let msg = next_for(&mut socket, "2").await;
    assert_eq!(msg["payload"]["data"]["creditsChanged"]["balance"], 100, "{msg}");

    ws::send(
        &mut socket,
        json!({ "id": "3", "type": "subscribe", "payload": { "extensions": persisted(&hash) } }),
    )
    .await;
    let msg = next_for(&mut socket, "3").await;
    assert_eq!(msg["payload"]["data"]["creditsChanged"]["balance"], 100, "{msg}");
}

async fn next_for(socket: &mut ws::Ws, id: &str) -> Value {
    loop {
        let msg = ws::recv_within(socket, Duration::from_secs(10)).await.expect("an answer");
        if msg["id"] == id && msg["type"] == "next" {
            return msg;
        }
        assert!(msg["id"] != id || msg["type"] != "error", "{msg}");
    }
}

fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}
