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

    // The user watches their credits live.
    let mut ws = common::ws::connect_signed_in(app.addr, Some(&user_token)).await;
    common::ws::subscribe(&mut ws, "c", "subscription { creditsChanged { balance } }", json!({})).await;
    let balance = async |ws: &mut common::ws::Ws| {
        let msg = common::ws::recv(ws).await.expect("an event");
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
    app.assert_ledger_invariants().await;
}
