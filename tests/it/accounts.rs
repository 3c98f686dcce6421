//! Accounts end to end: register, login, me, and what bad input leaves behind.

use crate::support::{LOGIN, PASSWORD, REGISTER, TestApp, code};
use serde_json::json;

const ME: &str = "{ me { id email role credits { balance held expiringSoon } } }";

#[tokio::test(flavor = "multi_thread")]
async fn register_then_me_shows_the_signup_bonus() {
    let app = TestApp::start().await;
    let (token, _) = app.register("Ada@Example.com").await;
    let res = app.gql(ME, json!({}), Some(&token)).await;
    assert!(res.get("errors").is_none(), "{res}");
    let me = &res["data"]["me"];
    assert_eq!(me["email"], "ada@example.com");
    assert_eq!(me["role"], "USER");
    assert_eq!(me["credits"], json!({ "balance": 100, "held": 0, "expiringSoon": 0 }));

    let entries = app
        .gql("{ creditEntries(first: 10) { edges { node { kind amount balanceAfter memo } } pageInfo { hasNextPage } } }", json!({}), Some(&token))
        .await;
    assert_eq!(
        entries["data"]["creditEntries"]["edges"],
        json!([{ "node": { "kind": "GRANT", "amount": 100, "balanceAfter": 100, "memo": "Signup bonus" } }])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn me_is_null_when_signed_out_and_a_bad_token_is_unauthenticated() {
    let app = TestApp::start().await;
    let res = app.gql(ME, json!({}), None).await;
    assert_eq!(res["data"]["me"], json!(null));
    let res = app.gql(ME, json!({}), Some("not-a-token")).await;
    assert_eq!(code(&res), "UNAUTHENTICATED");
    // A token signed with another secret is as bad as none.
    let other = mage_api::auth::Tokens::new(
        "another-secret-another-secret-another",
        std::time::Duration::from_secs(60),
    );
    let (forged, _) = other.issue(uuid::Uuid::new_v4(), uuid::Uuid::new_v4()).expect("token");
    assert_eq!(code(&app.gql(ME, json!({}), Some(&forged)).await), "UNAUTHENTICATED");
    let res = app.gql("{ creditEntries { edges { cursor } } }", json!({}), None).await;
    assert_eq!(code(&res), "UNAUTHENTICATED");
    // A stale token does not stand in the way of public operations, signing
    // in again included.
    let res = app.gql("{ products { id } }", json!({}), Some(&forged)).await;
    assert!(res.get("errors").is_none(), "{res}");
    app.register("stale@example.com").await;
    let res = app.gql(LOGIN, json!({ "e": "stale@example.com", "p": PASSWORD }), Some(&forged)).await;
    assert!(res["data"]["login"]["token"].is_string(), "{res}");
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_input_is_bad_user_input_and_writes_nothing() {
    let app = TestApp::start().await;
    for (email, password, field) in [
        ("not-an-email", PASSWORD, "email"),
        ("a@b", PASSWORD, "email"),
        ("Name <a@example.com>", PASSWORD, "email"),
        ("", PASSWORD, "email"),
        ("ok@example.com", "short", "password"),
        ("ok@example.com", &"x".repeat(129), "password"),
    ] {
        let res = app.gql(REGISTER, json!({ "e": email, "p": password }), None).await;
        assert_eq!(code(&res), "BAD_USER_INPUT", "{email:?}: {res}");
        assert_eq!(res["errors"][0]["extensions"]["field"], field, "{res}");
    }
    assert_eq!(app.count("users").await, 0);
    assert_eq!(app.count("credit_entries").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_existing_email_is_a_conflict_whatever_its_case() {
    let app = TestApp::start().await;
    app.register("grace@example.com").await;
    let res = app.gql(REGISTER, json!({ "e": " GRACE@example.com ", "p": PASSWORD }), None).await;
    assert_eq!(code(&res), "CONFLICT", "{res}");
    assert_eq!(app.count("users").await, 1);
    assert_eq!(app.count("credit_grants").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn login_checks_the_password() {
    let app = TestApp::start().await;
    app.register("linus@example.com").await;
    let res = app.gql(LOGIN, json!({ "e": "linus@example.com", "p": "wrong password" }), None).await;
    assert_eq!(code(&res), "UNAUTHENTICATED");
    let res = app.gql(LOGIN, json!({ "e": "nobody@example.com", "p": PASSWORD }), None).await;
    assert_eq!(code(&res), "UNAUTHENTICATED");
    let res = app.gql(LOGIN, json!({ "e": "LINUS@example.com", "p": PASSWORD }), None).await;
    let token = res["data"]["login"]["token"].as_str().expect("token");
    let me = app.gql(ME, json!({}), Some(token)).await;
    assert_eq!(me["data"]["me"]["email"], "linus@example.com");
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_registrations_of_one_email_make_exactly_one_user() {
    let app = TestApp::start().await;
    // Vary the case: the uniqueness is case-insensitive.
    let responses = app
        .gql_concurrently(
            200,
            REGISTER,
            |i| json!({ "e": if i % 2 == 0 { "race@example.com" } else { "RACE@example.com" }, "p": PASSWORD }),
            None,
        )
        .await;
    let mut ok = 0;
    for res in responses {
        if res.get("errors").is_none() {
            ok += 1;
        } else {
            assert_eq!(code(&res), "CONFLICT", "{res}");
        }
    }
    assert_eq!(ok, 1);
    assert_eq!(app.count("users").await, 1);
    assert_eq!(app.count("credit_accounts").await, 1);
    assert_eq!(app.count("credit_entries").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn products_lists_the_seeded_packs_and_plans() {
    let app = TestApp::start().await;
    let res = app.gql("{ products { id kind name credits priceCents currency } }", json!({}), None).await;
    let products = res["data"]["products"].as_array().expect("products");
    assert_eq!(products.len(), 5, "three packs and two monthly plans: {res}");
    assert_eq!(
        products[3],
        json!({ "id": "basic", "kind": "PLAN", "name": "Basic plan (monthly)", "credits": 1000, "priceCents": 1000, "currency": "USD" })
    );
    assert_eq!(
        products[0],
        json!({ "id": "starter", "kind": "PACK", "name": "Starter pack", "credits": 100, "priceCents": 500, "currency": "USD" })
    );
}
