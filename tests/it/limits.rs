//! Abuse at the edge: deep queries, huge bodies, malformed operations. Each
//! gets a clear error and writes nothing.

use crate::support::{TestApp, code};
use serde_json::json;

fn nested_introspection(levels: usize) -> String {
    // __type(name:) { fields { type { ofType { ofType ... } } } } nests as deep
    // as we like on any schema.
    let mut q = String::from("{ __schema { types { fields { type ");
    for _ in 0..levels {
        q.push_str("{ ofType ");
    }
    q.push_str("{ name }");
    for _ in 0..levels {
        q.push_str(" }");
    }
    q.push_str(" } } } }");
    q
}

#[tokio::test(flavor = "multi_thread")]
async fn a_query_fifty_levels_deep_is_refused() {
    let app = TestApp::start().await;
    let res = app.gql(&nested_introspection(50), json!({}), None).await;
    assert_eq!(code(&res), "BAD_USER_INPUT", "{res}");
    assert!(res.get("data").is_none_or(|d| d.is_null()), "{res}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_playground_introspection_query_fits_the_limits() {
    let app = TestApp::start().await;
    // GraphiQL's introspection nests `ofType` seven levels below `fields`.
    let res = app.gql(&nested_introspection(7), json!({}), None).await;
    assert!(res.get("errors").is_none(), "{res}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ten_megabyte_body_is_413_and_writes_nothing() {
    let app = TestApp::start().await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A valid registration padded to 10 MB by an unused variable: were the
    // limit missing, it would create the user.
    let body = json!({
        "query": "mutation($e: String!, $p: String!) { register(email: $e, password: $p) { token } }",
        "variables": { "e": "big@example.com", "p": "a fine password", "pad": "x".repeat(10 * 1024 * 1024) },
    })
    .to_string();
    // A raw socket: the server answers 413 from the Content-Length alone and
    // closes, which an HTTP client still writing the body reports as a broken
    // pipe instead of the response.
    let mut tcp = tokio::net::TcpStream::connect(app.addr).await.expect("connect");
    let head = format!(
        "POST /graphql HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        app.addr,
        body.len()
    );
    tcp.write_all(head.as_bytes()).await.expect("head");
    let _ = tcp.write_all(&body.as_bytes()[..64 * 1024]).await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), tcp.read_to_end(&mut response)).await;
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(response.contains("\"code\":\"BAD_USER_INPUT\""), "{response}");

    // Chunked, with no Content-Length: cut off at the limit while streaming.
    let res = app
        .http
        .post(app.url("/graphql"))
        .header("Content-Type", "application/json")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            body.into_bytes()
                .chunks(64 * 1024)
                .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
                .collect::<Vec<_>>(),
        )))
        .send()
        .await;
    // The server may close the connection while the client is still
    // sending; what it must never do is accept the request.
    if let Ok(res) = res {
        assert_eq!(res.status(), reqwest::StatusCode::PAYLOAD_TOO_LARGE);
    }
    assert_eq!(app.count("users").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_operations_carry_a_code() {
    let app = TestApp::start().await;
    for query in [
        "{ nope }",
        "{ me { ",
        "query($x: Int!) { products { id } }",
        "{ creditEntries(first: \"x\") { edges { cursor } } }",
    ] {
        let res = app.gql(query, json!({}), None).await;
        assert_eq!(code(&res), "BAD_USER_INPUT", "{query}: {res}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_that_is_not_a_graphql_request_is_bad_user_input() {
    let app = TestApp::start().await;
    for body in ["not json", "[1, 2]", "{\"query\": 5}"] {
        let res = app
            .http
            .post(app.url("/graphql"))
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .await
            .expect("send");
        assert_eq!(res.status(), 400, "{body}");
        let json: serde_json::Value = res.json().await.expect("json");
        assert_eq!(code(&json), "BAD_USER_INPUT", "{body}: {json}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_over_large_page_is_refused() {
    let app = TestApp::start().await;
    let (token, _) = app.register("pager@example.com").await;
    let res = app.gql("{ creditEntries(first: 1000) { edges { cursor } } }", json!({}), Some(&token)).await;
    assert_eq!(code(&res), "BAD_USER_INPUT", "{res}");
    let res =
        app.gql("{ creditEntries(after: \"garbage\") { edges { cursor } } }", json!({}), Some(&token)).await;
    assert_eq!(code(&res), "BAD_USER_INPUT", "{res}");
}

#[tokio::test(flavor = "multi_thread")]
async fn health_and_readiness() {
    let app = TestApp::start().await;
    let res = app.http.get(app.url("/healthz")).send().await.expect("healthz");
    assert_eq!(res.status(), 200);
    let res = app.http.get(app.url("/readyz")).send().await.expect("readyz");
    assert_eq!(res.status(), 200);
    let body: serde_json::Value = res.json().await.expect("json");
    assert_eq!(body, json!({ "status": "ok", "postgres": "ok", "redis": "ok" }));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_timed_out_request_is_answered_with_a_code_and_still_completes_whole() {
    // Registration hashes a password for tens of milliseconds: longer than
    // this server waits.
    let app = TestApp::start_with(|s| s.request_timeout = std::time::Duration::from_millis(1)).await;
    let res = app
        .http
        .post(app.url("/graphql"))
        .json(&json!({ "query": "mutation { register(email: \"slow@example.com\", password: \"a long password\") { token } }" }))
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 503);
    let body: serde_json::Value = res.json().await.expect("json");
    assert_eq!(code(&body), "INTERNAL", "{body}");
    // The operation was not cut off half-way: it finishes on its own task,
    // user, account and signup grant together.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while app.count("credit_entries").await == 0 {
        assert!(std::time::Instant::now() < deadline, "the registration never completed");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(app.count("users").await, 1);
}
