//! Admin operations: role checks and exactly-once grants.

mod common;

use common::{TestApp, code};
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
    app.assert_ledger_invariants().await;
}
