//! Abuse at the edge: deep queries, huge bodies, malformed operations. Each
//! gets a clear error and writes nothing.

mod common;

use common::{TestApp, code};
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
    let password = "x".repeat(10 * 1024 * 1024);
    let body = json!({
        "query": "mutation($e: String!, $p: String!) { register(email: $e, password: $p) { token } }",
        "variables": { "e": "big@example.com", "p": password },
    });
    let res = app.http.post(app.url("/graphql")).json(&body).send().await.expect("send");
    assert_eq!(res.status(), reqwest::StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(app.count("users").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_operations_carry_a_code() {
    let app = TestApp::start().await;
    for query in ["{ nope }", "{ me { ", "query($x: Int!) { products { id } }", "{ creditEntries(first: \"x\") { edges { cursor } } }"] {
        let res = app.gql(query, json!({}), None).await;
        assert_eq!(code(&res), "BAD_USER_INPUT", "{query}: {res}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_over_large_page_is_refused() {
    let app = TestApp::start().await;
    let (token, _) = app.register("pager@example.com").await;
    let res = app.gql("{ creditEntries(first: 1000) { edges { cursor } } }", json!({}), Some(&token)).await;
    assert_eq!(code(&res), "BAD_USER_INPUT", "{res}");
    let res = app.gql("{ creditEntries(after: \"garbage\") { edges { cursor } } }", json!({}), Some(&token)).await;
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
