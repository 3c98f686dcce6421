//! Sessions (refresh rotation, theft detection, logout everywhere), password
//! changes, and API keys with their scopes, against real PostgreSQL and
//! Redis; the cross-instance tests run real `mage serve` processes.

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::process::{Child, free_port, serve_on, wait_ready};
use crate::support::{PASSWORD, REGISTER, TestApp, code, post_graphql, ws};
use mage_domain::testing::{TestDb, TestRedis};

const REFRESH: &str =
    "mutation($t: String!) { refreshSession(refreshToken: $t) { token refreshToken expiresAt } }";
const ME: &str = "{ me { id email } }";
const LOGOUT: &str = "mutation { logout }";

async fn register(app: &TestApp, email: &str) -> Value {
    let register = "mutation($e: String!, $p: String!) { register(email: $e, password: $p) { token expiresAt refreshToken } }";
    let res = app.gql(register, json!({ "e": email, "p": PASSWORD }), None).await;
    assert!(res.get("errors").is_none(), "{res}");
    res["data"]["register"].clone()
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refresh_token_works_once_and_a_second_use_ends_the_session_for_everyone() {
    let app = TestApp::start_with(|s| s.token_ttl = Duration::from_secs(900)).await;
    let auth = register(&app, "refresh@example.com").await;
    let first = s(&auth["refreshToken"]).to_owned();
    assert!(first.starts_with("mage_rt_"), "{first}");
    let exp: chrono::DateTime<chrono::Utc> = s(&auth["expiresAt"]).parse().expect("expiresAt");
    let left = exp - chrono::Utc::now();
    assert!(left <= chrono::Duration::seconds(900) && left > chrono::Duration::seconds(800), "{left}");

    // The owner refreshes: a new pair, the old refresh token is spent.
    let res = app.gql(REFRESH, json!({ "t": first }), None).await;
    assert!(res.get("errors").is_none(), "{res}");
    let owner = res["data"]["refreshSession"].clone();
    assert_ne!(owner["refreshToken"], json!(first));
    assert_eq!(
        app.gql(ME, json!({}), Some(s(&owner["token"]))).await["data"]["me"]["email"],
        "refresh@example.com"
    );

    // A thief replays the first one: refused, and the session is over...
    let res = app.gql(REFRESH, json!({ "t": first }), None).await;
    assert_eq!(code(&res), "UNAUTHENTICATED", "{res}");
    // ...for the owner too: their access token and their refresh token.
    let res = app.gql(ME, json!({}), Some(s(&owner["token"]))).await;
    assert_eq!(code(&res), "UNAUTHENTICATED", "{res}");
    let res = app.gql(REFRESH, json!({ "t": owner["refreshToken"] }), None).await;
    assert_eq!(code(&res), "UNAUTHENTICATED", "{res}");
    // Nothing stored holds a token in the clear.
    let mut conn = app.conn().await;
    let clear = crate::support::scalar_i64(
        &mut conn,
        &format!(
            "SELECT count(*) AS n FROM refresh_tokens WHERE encode(token_hash, 'escape') LIKE '%{}%'",
            &first[8..20]
        ),
    )
    .await;
    assert_eq!(clear, 0);

    // Garbage is refused the same way, and changes nothing.
    let res = app.gql(REFRESH, json!({ "t": "mage_rt_nonsense" }), None).await;
    assert_eq!(code(&res), "UNAUTHENTICATED", "{res}");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_refreshes_at_once_with_one_token_rotate_once_and_end_the_session() {
    let app = TestApp::start().await;
    let auth = register(&app, "race@example.com").await;
    let token = s(&auth["refreshToken"]).to_owned();
    let results = app.gql_concurrently(8, REFRESH, |_| json!({ "t": token }), None).await;
    let rotated = results.iter().filter(|r| r.get("errors").is_none()).count();
    assert_eq!(rotated, 1, "{results:?}");
    // The winner's new token is dead too: the others were reuses.
    let winner = results.iter().find(|r| r.get("errors").is_none()).expect("winner");
    let res = app.gql(ME, json!({}), Some(s(&winner["data"]["refreshSession"]["token"]))).await;
    assert_eq!(code(&res), "UNAUTHENTICATED", "{res}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sessions_are_listed_and_one_can_be_revoked_and_a_password_change_ends_the_others() {
    let app = TestApp::start().await;
    let phone = register(&app, "devices@example.com").await;
    let login =
        "mutation($e: String!, $p: String!) { login(email: $e, password: $p) { token refreshToken } }";
    let laptop: Value = app
        .http
        .post(app.url("/graphql"))
        .header("User-Agent", "MageTest/1.0 (laptop)")
        .json(&json!({ "query": login, "variables": { "e": "devices@example.com", "p": PASSWORD } }))
        .send()
        .await
        .expect("login")
        .json()
        .await
        .expect("JSON");
    let laptop = laptop["data"]["login"].clone();
    let tablet = app.gql(login, json!({ "e": "devices@example.com", "p": PASSWORD }), None).await;
    let tablet = tablet["data"]["login"].clone();

    let list =
        app.gql("{ sessions { id current userAgent ipAddress } }", json!({}), Some(s(&phone["token"]))).await;
    let list = list["data"]["sessions"].as_array().expect("sessions").clone();
    assert_eq!(list.len(), 3, "{list:?}");
    assert_eq!(list.iter().filter(|x| x["current"] == true).count(), 1);
    assert_eq!(list[0]["ipAddress"], "127.0.0.1");
    assert_eq!(list.iter().filter(|x| x["userAgent"] == "MageTest/1.0 (laptop)").count(), 1, "{list:?}");

    // The tablet is lost: revoked from the laptop.
    let tablet_id = {
        let mine = app.gql("{ sessions { id current } }", json!({}), Some(s(&tablet["token"]))).await;
        mine["data"]["sessions"]
            .as_array()
            .expect("list")
            .iter()
            .find(|x| x["current"] == true)
            .expect("current")["id"]
            .clone()
    };
    let res = app
        .gql(
            "mutation($id: ID!) { revokeSession(id: $id) }",
            json!({ "id": tablet_id }),
            Some(s(&laptop["token"])),
        )
        .await;
    assert_eq!(res["data"]["revokeSession"], true, "{res}");
    assert_eq!(code(&app.gql(ME, json!({}), Some(s(&tablet["token"]))).await), "UNAUTHENTICATED");
    // Another account's session is not found.
    let other = register(&app, "other-devices@example.com").await;
    let res = app
        .gql(
            "mutation($id: ID!) { revokeSession(id: $id) }",
            json!({ "id": tablet_id }),
            Some(s(&other["token"])),
        )
        .await;
    assert_eq!(code(&res), "NOT_FOUND", "{res}");

    // A password change from the laptop: the laptop stays signed in with new
    // credentials, the phone is signed out.
    let change = "mutation($c: String!, $n: String!) { changePassword(currentPassword: $c, newPassword: $n) { token refreshToken } }";
    let res = app
        .gql(change, json!({ "c": "wrong password!", "n": "a new password 1" }), Some(s(&laptop["token"])))
        .await;
    assert_eq!(code(&res), "BAD_USER_INPUT", "{res}");
    let res = app.gql(change, json!({ "c": PASSWORD, "n": "short" }), Some(s(&laptop["token"]))).await;
    assert_eq!(code(&res), "BAD_USER_INPUT", "{res}");
    let res =
        app.gql(change, json!({ "c": PASSWORD, "n": "a new password 1" }), Some(s(&laptop["token"]))).await;
    assert!(res.get("errors").is_none(), "{res}");
    let fresh = res["data"]["changePassword"].clone();
    assert_eq!(
        app.gql(ME, json!({}), Some(s(&fresh["token"]))).await["data"]["me"]["email"],
        "devices@example.com"
    );
    assert_eq!(code(&app.gql(ME, json!({}), Some(s(&phone["token"]))).await), "UNAUTHENTICATED");
    assert_eq!(code(&app.gql(REFRESH, json!({ "t": phone["refreshToken"] }), None).await), "UNAUTHENTICATED");
    // The laptop's earlier refresh token was replaced; the new one works.
    let res = app.gql(REFRESH, json!({ "t": fresh["refreshToken"] }), None).await;
    assert!(res.get("errors").is_none(), "{res}");
    let res = app.gql(login, json!({ "e": "devices@example.com", "p": "a new password 1" }), None).await;
    assert!(res.get("errors").is_none(), "{res}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_session_cannot_be_refreshed() {
    let app = TestApp::start().await;
    let auth = register(&app, "idle@example.com").await;
    app.sql("UPDATE sessions SET last_used_at = now() - interval '31 days'").await;
    let res = app.gql(REFRESH, json!({ "t": auth["refreshToken"] }), None).await;
    assert_eq!(code(&res), "UNAUTHENTICATED", "{res}");
    assert!(res["errors"][0]["message"].as_str().expect("message").contains("idle"), "{res}");
}

/// `mage serve` on `db`, its log (at debug level) kept in `log`.
async fn serve_logged(db: &TestDb, redis: &TestRedis, log: &std::path::Path) -> (Child, u16) {
    let port = free_port();
    let mut cmd = serve_on(db, redis);
    let out = std::fs::File::create(log).expect("log file");
    cmd.env("MAGE_ADDR", format!("127.0.0.1:{port}"))
        .env("MAGE_LOG", "debug")
        .stdout(Stdio::from(out.try_clone().expect("log")))
        .stderr(Stdio::from(out));
    let child = Child::spawn(&mut cmd);
    wait_ready(&reqwest::Client::new(), port, Duration::from_secs(30)).await;
    (child, port)
}

#[tokio::test(flavor = "multi_thread")]
async fn logout_on_one_instance_stops_the_token_on_another_within_a_second_and_closes_its_socket() {
    let (db, redis) = (TestDb::new().await, TestRedis::new());
    let logs = tempfile::tempdir().expect("logs");
    let (_a, a) = serve_logged(&db, &redis, &logs.path().join("a.log")).await;
    let (_b, b) = serve_logged(&db, &redis, &logs.path().join("b.log")).await;
    let http = reqwest::Client::new();
    let (gql_a, gql_b) = (format!("http://127.0.0.1:{a}/graphql"), format!("http://127.0.0.1:{b}/graphql"));
    let res =
        post_graphql(&http, &gql_a, REGISTER, json!({ "e": "everywhere@example.com", "p": PASSWORD }), None)
            .await;
    let token = s(&res["data"]["register"]["token"]).to_owned();

    // In use on B, over HTTP and a socket.
    assert!(post_graphql(&http, &gql_b, ME, json!({}), Some(&token)).await["data"]["me"].is_object());
    let mut socket = ws::connect_signed_in(([127, 0, 0, 1], b).into(), Some(&token)).await;
    ws::subscribe(&mut socket, "1", "subscription { creditsChanged { balance } }", json!({})).await;
    assert_eq!(ws::recv(&mut socket).await.expect("first state")["type"], "next");

    let res = post_graphql(&http, &gql_a, LOGOUT, json!({}), Some(&token)).await;
    assert_eq!(res["data"]["logout"], true, "{res}");
    let logged_out = Instant::now();
    let refused_at = loop {
        let res = post_graphql(&http, &gql_b, ME, json!({}), Some(&token)).await;
        if res.get("errors").is_some() {
            assert_eq!(code(&res), "UNAUTHENTICATED", "{res}");
            break logged_out.elapsed();
        }
        assert!(logged_out.elapsed() < Duration::from_secs(5), "still accepted after 5 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!("logout on A refused on B after {refused_at:?}");
    assert!(refused_at < Duration::from_secs(1), "the other instance took {refused_at:?}");
    assert_eq!(ws::close_code(&mut socket, Duration::from_secs(1)).await, 4403);
}

#[tokio::test(flavor = "multi_thread")]
async fn api_keys_are_scoped_revocable_shown_once_and_never_logged() {
    let (db, redis) = (TestDb::new().await, TestRedis::new());
    let logs = tempfile::tempdir().expect("logs");
    let log = logs.path().join("serve.log");
    let (_serve, port) = serve_logged(&db, &redis, &log).await;
    let http = reqwest::Client::new();
    let gql = format!("http://127.0.0.1:{port}/graphql");
    let res =
        post_graphql(&http, &gql, REGISTER, json!({ "e": "integrator@example.com", "p": PASSWORD }), None)
            .await;
    let token = s(&res["data"]["register"]["token"]).to_owned();
    let create = "mutation($n: String!, $s: [ApiKeyScope!]!) { createApiKey(name: $n, scopes: $s) { secret apiKey { id name prefix scopes lastUsedAt } } }";

    let res = post_graphql(&http, &gql, create, json!({ "n": "reader", "s": ["READ"] }), Some(&token)).await;
    assert!(res.get("errors").is_none(), "{res}");
    let reader = s(&res["data"]["createApiKey"]["secret"]).to_owned();
    let reader_id = res["data"]["createApiKey"]["apiKey"]["id"].clone();
    assert!(reader.starts_with("mage_sk_") && reader.len() >= 8 + 43 + 6, "{reader}");
    assert!(reader.starts_with(s(&res["data"]["createApiKey"]["apiKey"]["prefix"])));

    // READ: queries and subscriptions.
    let res = post_graphql(&http, &gql, ME, json!({}), Some(&reader)).await;
    assert_eq!(res["data"]["me"]["email"], "integrator@example.com", "{res}");
    let mut socket = ws::connect_signed_in(([127, 0, 0, 1], port).into(), Some(&reader)).await;
    ws::subscribe(&mut socket, "1", "subscription { creditsChanged { balance } }", json!({})).await;
    let first = ws::recv(&mut socket).await.expect("first state");
    assert_eq!(first["type"], "next", "{first}");
    // ...but not generating: FORBIDDEN naming the scope, and nothing ran.
    let generate = r#"mutation { createGeneration(input: { model: "synth-video", prompt: "a fox",
        resolution: R480P, durationSeconds: 2 }) { id } }"#;
    let res = post_graphql(&http, &gql, generate, json!({}), Some(&reader)).await;
    assert_eq!(code(&res), "FORBIDDEN", "{res}");
    assert!(res["errors"][0]["message"].as_str().expect("message").contains("GENERATE"), "{res}");
    // A key never manages keys, sessions or the account, whatever its scopes.
    for op in [
        r#"mutation { createApiKey(name: "x", scopes: [READ]) { secret } }"#,
        "{ apiKeys { id } }",
        "{ sessions { id } }",
        LOGOUT,
    ] {
        let res = post_graphql(&http, &gql, op, json!({}), Some(&reader)).await;
        assert_eq!(code(&res), "FORBIDDEN", "{op}: {res}");
    }

    // GENERATE can create.
    let res =
        post_graphql(&http, &gql, create, json!({ "n": "maker", "s": ["READ", "GENERATE"] }), Some(&token))
            .await;
    let maker = s(&res["data"]["createApiKey"]["secret"]).to_owned();
    let res = post_graphql(&http, &gql, generate, json!({}), Some(&maker)).await;
    assert!(res.get("errors").is_none(), "{res}");

    // Listed without their secrets, with when they were used.
    let res = post_graphql(
        &http,
        &gql,
        "{ apiKeys { id name prefix scopes lastUsedAt } }",
        json!({}),
        Some(&token),
    )
    .await;
    let keys = res["data"]["apiKeys"].as_array().expect("keys").clone();
    assert_eq!(keys.len(), 2, "{res}");
    assert!(keys.iter().all(|k| k["lastUsedAt"].is_string()), "{res}");
    assert!(!res.to_string().contains(&reader[12..]), "a secret in the list: {res}");

    // Revoked: UNAUTHENTICATED at once, and its socket closes.
    let res = post_graphql(
        &http,
        &gql,
        "mutation($id: ID!) { revokeApiKey(id: $id) { id } }",
        json!({ "id": reader_id }),
        Some(&token),
    )
    .await;
    assert!(res.get("errors").is_none(), "{res}");
    let res = post_graphql(&http, &gql, ME, json!({}), Some(&reader)).await;
    assert_eq!(code(&res), "UNAUTHENTICATED", "{res}");
    assert_eq!(ws::close_code(&mut socket, Duration::from_secs(2)).await, 4403);
    // A mistyped key (bad checksum) is refused without a lookup.
    let mut typo = maker.clone();
    typo.pop();
    typo.push(if maker.ends_with('a') { 'b' } else { 'a' });
    assert_eq!(code(&post_graphql(&http, &gql, ME, json!({}), Some(&typo)).await), "UNAUTHENTICATED");

    // At most 20 live keys: `maker` and 19 more (the revoked one counts no
    // more).
    for i in 0..20 {
        let res =
            post_graphql(&http, &gql, create, json!({ "n": format!("k{i}"), "s": ["READ"] }), Some(&token))
                .await;
        if i < 19 {
            assert!(res.get("errors").is_none(), "{i}: {res}");
        } else {
            assert_eq!(code(&res), "CONFLICT", "{res}");
        }
    }

    let logged = std::fs::read_to_string(&log).expect("log");
    assert!(logged.contains("API key created"), "the log is not the server's: {logged}");
    for secret in [&reader, &maker] {
        assert!(!logged.contains(&secret[8..]), "a key's secret is in the log");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn spent_refresh_tokens_are_pruned_after_their_keeping_period_only() {
    let app = TestApp::start().await;
    let auth = register(&app, "prune@example.com").await;
    let res = app.gql(REFRESH, json!({ "t": auth["refreshToken"] }), None).await;
    assert!(res.get("errors").is_none(), "{res}");
    let mut conn = app.conn().await;
    // One spent, one live: nothing is old enough yet.
    assert_eq!(mage_domain::sessions::prune(&mut conn, 100).await.expect("prune"), 0);
    app.sql("UPDATE refresh_tokens SET used_at = now() - interval '91 days' WHERE used_at IS NOT NULL").await;
    assert_eq!(mage_domain::sessions::prune(&mut conn, 100).await.expect("prune"), 1);
    // The live one still works.
    let res = app.gql(REFRESH, json!({ "t": res["data"]["refreshSession"]["refreshToken"] }), None).await;
    assert!(res.get("errors").is_none(), "{res}");
}
