//! Admin operations: role checks and exactly-once grants.

use crate::support::{TestApp, code, ws};
use serde_json::json;

const GRANT: &str = "mutation($u: ID!, $a: Int!, $k: String) { grantCredits(userId: $u, amount: $a, reason: \"support\", idempotencyKey: $k) { balance } }";

#[tokio::test(flavor = "multi_thread")]
async fn only_admins_grant_and_a_key_grants_once() {
    let app = TestApp::start().await;
    let (user_token, user_id) = app.register("user@example.com").await;
    let (admin_token, _) = app.register("admin@example.com").await;

    let res = app.gql(GRANT, json!({ "u": user_id, "a": 50, "k": "k1" }), Some(&user_token)).await;
    assert_eq!(code(&res), "FORBIDDEN", "{res}");
    let res = app.gql(GRANT, json!({ "u": user_id, "a": 50, "k": "k1" }), None).await;
    assert_eq!(code(&res), "UNAUTHENTICATED", "{res}");

    mage_domain::users::set_role(&app.pool, "admin@example.com", mage_domain::users::Role::Admin)
        .await
        .expect("promote");

    // The user watches their credits live.
    let mut ws = ws::connect_signed_in(app.addr, Some(&user_token)).await;
    ws::subscribe(&mut ws, "c", "subscription { creditsChanged { balance } }", json!({})).await;
    let balance = async |ws: &mut ws::Ws| {
        let msg = ws::recv(ws).await.expect("an event");
        assert_eq!(msg["type"], "next", "{msg}");
        msg["payload"]["data"]["creditsChanged"]["balance"].clone()
    };
    assert_eq!(balance(&mut ws).await, 100);

    // Twenty concurrent retries of one grant: credited once.
    let responses = app
        .gql_concurrently(20, GRANT, |_| json!({ "u": user_id, "a": 50, "k": "k1" }), Some(&admin_token))
        .await;
    for res in responses {
        assert_eq!(res["data"]["grantCredits"]["balance"], 150, "{res}");
    }
    let res = app.gql(GRANT, json!({ "u": user_id, "a": 0, "k": "k2" }), Some(&admin_token)).await;
    assert_eq!(code(&res), "BAD_USER_INPUT", "{res}");
    let res = app
        .gql(GRANT, json!({ "u": uuid::Uuid::new_v4().to_string(), "a": 5, "k": "k3" }), Some(&admin_token))
        .await;
    assert_eq!(code(&res), "NOT_FOUND", "{res}");
    // A new key is a new grant.
    let res = app.gql(GRANT, json!({ "u": user_id, "a": 5, "k": "k4" }), Some(&admin_token)).await;
    assert_eq!(res["data"]["grantCredits"]["balance"], 155, "{res}");
    // One event per ledger entry: the retries of k1 pushed nothing more.
    assert_eq!(balance(&mut ws).await, 150);
    assert_eq!(balance(&mut ws).await, 155);
}

/// A promotional grant with an expiry: shown in `expiringSoon`, then
/// expired once by the hourly job, leaving the rest of the balance alone.
#[tokio::test(flavor = "multi_thread")]
async fn promotional_credits_expire_once_when_due() {
    let app = TestApp::start().await;
    let (user_token, user_id) = app.register("promo@example.com").await;
    let (admin_token, _) = app.register("promo-admin@example.com").await;
    mage_domain::users::set_role(&app.pool, "promo-admin@example.com", mage_domain::users::Role::Admin)
        .await
        .expect("promote");
    let expires = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let res = app
        .gql(
            "mutation($u: ID!, $e: DateTime) { grantCredits(userId: $u, amount: 50, reason: \"weekly bonus\", expiresAt: $e) { balance expiringSoon } }",
            json!({ "u": user_id, "e": expires }),
            Some(&admin_token),
        )
        .await;
    assert_eq!(res["data"]["grantCredits"], json!({"balance": 150, "expiringSoon": 50}), "{res}");
    let (pool, redis) = (&app.pool, &app.redis.redis());
    assert_eq!(mage_jobs::expire_once(pool, redis).await.expect("expire"), 0, "not due yet");
    app.sql(&format!(
        "UPDATE credit_grants SET expires_at = now() - interval '1 minute' WHERE user_id = '{user_id}' AND source = 'promo'"
    ))
    .await;
    assert_eq!(mage_jobs::expire_once(pool, redis).await.expect("expire"), 1);
    assert_eq!(mage_jobs::expire_once(pool, redis).await.expect("expire"), 0, "expired once");
    let me = app.gql("{ me { credits { balance expiringSoon } } }", json!({}), Some(&user_token)).await;
    assert_eq!(me["data"]["me"]["credits"], json!({"balance": 100, "expiringSoon": 0}), "{me}");
    let entries =
        app.gql("{ creditEntries(first: 5) { nodes { kind amount } } }", json!({}), Some(&user_token)).await;
    assert_eq!(
        entries["data"]["creditEntries"]["nodes"][0],
        json!({"kind": "EXPIRE", "amount": -50}),
        "{entries}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn admins_find_users_with_balances_and_revoke_credits_once() {
    let app = TestApp::start().await;
    let (admin, _) = app.register("boss@example.com").await;
    mage_domain::users::set_role(&app.pool, "boss@example.com", mage_domain::users::Role::Admin)
        .await
        .expect("promote");
    let (user_token, user_id) = app.register("ann_1@example.com").await;
    app.register("bob@example.com").await;
    app.register("annx1@example.com").await;
    const USERS: &str = "query($s: String, $f: Int, $a: String) { users(search: $s, first: $f, after: $a) {
        edges { cursor node { email credits { balance } } } pageInfo { hasNextPage } } }";
    let res = app.gql(USERS, json!({"s": "ANN", "f": 1}), Some(&admin)).await;
    let page = &res["data"]["users"];
    assert_eq!(
        page["edges"][0]["node"],
        json!({"email": "ann_1@example.com", "credits": {"balance": 100}}),
        "{res}"
    );
    assert_eq!(page["pageInfo"]["hasNextPage"], true, "{res}");
    let cursor = page["edges"][0]["cursor"].as_str().expect("cursor").to_owned();
    let res = app.gql(USERS, json!({"s": "ann", "f": 1, "a": cursor}), Some(&admin)).await;
    assert_eq!(res["data"]["users"]["edges"][0]["node"]["email"], "annx1@example.com", "{res}");
    // `_` is a literal character, not LIKE's wildcard.
    let res = app.gql(USERS, json!({"s": "ann_"}), Some(&admin)).await;
    assert_eq!(res["data"]["users"]["edges"].as_array().map(Vec::len), Some(1), "{res}");
    let res = app.gql(USERS, json!({}), Some(&user_token)).await;
    assert_eq!(code(&res), "FORBIDDEN", "{res}");
    assert!(res["data"].is_null(), "{res}");

    const REVOKE: &str = "mutation($u: ID!, $a: Int!, $k: String) {
        revokeCredits(userId: $u, amount: $a, reason: \"duplicate bonus\", idempotencyKey: $k) { balance } }";
    for _ in 0..2 {
        let res = app.gql(REVOKE, json!({"u": user_id, "a": 30, "k": "r1"}), Some(&admin)).await;
        assert_eq!(res["data"]["revokeCredits"]["balance"], 70, "{res}");
    }
    let res = app.gql(REVOKE, json!({"u": user_id, "a": 71}), Some(&admin)).await;
    assert_eq!(code(&res), "CONFLICT", "{res}");
    let res = app.gql(REVOKE, json!({"u": user_id, "a": 1}), Some(&user_token)).await;
    assert_eq!(code(&res), "FORBIDDEN", "{res}");
    let entries = app
        .gql("{ creditEntries(first: 5) { nodes { kind amount memo } } }", json!({}), Some(&user_token))
        .await;
    let nodes = entries["data"]["creditEntries"]["nodes"].as_array().cloned().unwrap_or_default();
    assert_eq!(
        nodes[0],
        json!({"kind": "ADJUSTMENT", "amount": -30, "memo": "duplicate bonus"}),
        "{entries}"
    );
    assert_eq!(nodes.iter().filter(|n| n["kind"] == "ADJUSTMENT").count(), 1, "revoked once: {entries}");
}
