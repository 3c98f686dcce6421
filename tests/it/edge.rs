//! The API edge against hostile clients: each attack of the hardening
//! issue, reproduced, now meets a fast and clear refusal.

use std::time::{Duration, Instant};

use crate::support::process::{Child, JWT_SECRET, mage, serve_on, start_listening};
use crate::support::{LOGIN, PASSWORD, REGISTER, TestApp, code, post_graphql, ws};
use mage_domain::testing::{TestDb, TestRedis};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `levels` fragments, each spreading the next twice: 1.5 KB of text that
/// expands to 2^levels fields.
fn fan_out(levels: usize) -> String {
    let mut q = String::from("query{...F0}");
    for i in 0..levels {
        q += &format!(" fragment F{i} on Query{{products{{id}} ...F{} ...F{}}}", i + 1, i + 1);
    }
    q + &format!(" fragment F{levels} on Query{{products{{id}}}}")
}

/// A real `mage serve` on a fresh database; killed when dropped.
async fn mage_serve(envs: &[(&str, &str)]) -> (Child, u16, TestDb, TestRedis) {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    let mut cmd = serve_on(&db, &redis);
    cmd.envs(envs.iter().copied());
    let (child, port) = start_listening(cmd).await;
    (child, port, db, redis)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fragment_fan_out_is_refused_at_once_and_sigterm_ends_serve_within_its_grace() {
    let (mut child, port, _db, _redis) = mage_serve(&[("MAGE_SHUTDOWN_GRACE_SECONDS", "2")]).await;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().expect("client");
    let url = format!("http://127.0.0.1:{port}/graphql");
    let query = fan_out(30);
    assert!(query.len() < 2048, "{}", query.len());

    let started = Instant::now();
    let attacks: Vec<_> = (0..4)
        .map(|_| {
            let (http, url, query) = (http.clone(), url.clone(), query.clone());
            tokio::spawn(async move { post_graphql(&http, &url, &query, json!({}), None).await })
        })
        .collect();
    let health = Instant::now();
    let res = http.get(format!("http://127.0.0.1:{port}/healthz")).send().await.expect("healthz");
    assert!(res.status().is_success());
    let health = health.elapsed();
    for attack in attacks {
        let res = attack.await.expect("task");
        assert_eq!(code(&res), "BAD_USER_INPUT", "{res}");
        assert!(res["errors"][0]["message"].as_str().is_some_and(|m| m.contains("too large")), "{res}");
    }
    // Before: minutes of CPU per request. Generous bounds: this is a test of
    // the refusal, not a benchmark.
    let attacked = started.elapsed();
    assert!(attacked < Duration::from_secs(5), "refused after {attacked:?}");
    assert!(health < Duration::from_secs(2), "/healthz took {health:?} under attack");
    println!("4 fan-out queries refused in {attacked:?}; /healthz answered in {health:?} meanwhile");

    // A request that never finishes sending its body is in flight when
    // SIGTERM arrives: the process still exits within its grace period.
    let mut stuck = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
    stuck
        .write_all(b"POST /graphql HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, took) = child.terminate(Duration::from_secs(10)).await;
    assert!(status.success(), "{status:?}");
    println!("mage serve exited {took:?} after SIGTERM (grace 2 s)");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fragment_fan_out_over_websocket_is_refused_too() {
    let app = TestApp::start().await;
    let mut ws = ws::connect_signed_in(app.addr, None).await;
    ws::subscribe(&mut ws, "big", &fan_out(30), json!({})).await;
    let msg = ws::recv_within(&mut ws, Duration::from_secs(5)).await.expect("an answer");
    assert_eq!(msg["id"], "big", "{msg}");
    assert_eq!(msg["payload"]["errors"][0]["extensions"]["code"], "BAD_USER_INPUT", "{msg}");
    // The socket goes on serving.
    ws::subscribe(&mut ws, "small", "{ __typename }", json!({})).await;
    loop {
        let msg = ws::recv_within(&mut ws, Duration::from_secs(5)).await.expect("an answer");
        if msg["id"] == "small" && msg["type"] == "next" {
            assert_eq!(msg["payload"]["data"]["__typename"], "Query", "{msg}");
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_refuses_the_public_development_secrets() {
    for (var, value, names) in [
        ("MAGE_JWT_SECRET", mage_domain::config::DEV_JWT_SECRET, "MAGE_JWT_SECRET"),
        ("STRIPE_WEBHOOK_SECRET", mage_domain::config::DEV_WEBHOOK_SECRET, "STRIPE_WEBHOOK_SECRET"),
    ] {
        let out = mage()
            .arg("serve")
            .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/none")
            .env("REDIS_URL", "redis://127.0.0.1:1")
            .env("MAGE_JWT_SECRET", JWT_SECRET)
            .env(var, value)
            .output()
            .expect("run");
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.lines().next().is_some_and(|l| l.contains(names)), "{stderr}");
        assert!(stderr.contains("development secret"), "{stderr}");
    }
}

async fn login(app: &TestApp, email: &str, password: &str) -> Value {
    app.gql(LOGIN, json!({ "e": email, "p": password }), None).await
}

fn retry_after(res: &Value) -> u64 {
    res["errors"][0]["extensions"]["retryAfterSeconds"].as_u64().unwrap_or_else(|| panic!("{res}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_logins_are_limited_per_email_even_for_the_right_password() {
    let app = TestApp::start_with(|s| s.auth_limits.login_failures_per_email = 3).await;
    app.register("victim@example.com").await;
    app.register("bystander@example.com").await;
    // Right passwords do not count.
    for _ in 0..5 {
        assert!(login(&app, "victim@example.com", PASSWORD).await.get("errors").is_none());
    }
    for _ in 0..3 {
        assert_eq!(code(&login(&app, "Victim@example.com", "wrong password").await), "UNAUTHENTICATED");
    }
    let res = login(&app, "victim@example.com", PASSWORD).await;
    assert_eq!(code(&res), "RATE_LIMITED", "{res}");
    assert!((1..=900).contains(&retry_after(&res)), "{res}");
    // Another account is not locked with it.
    assert!(login(&app, "bystander@example.com", PASSWORD).await.get("errors").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_logins_are_limited_per_client_address_and_aliases_count_one_each() {
    let app = TestApp::start_with(|s| {
        s.auth_limits.login_failures_per_ip = 12;
        s.auth_limits.login_failures_per_email = 100;
    })
    .await;
    app.register("real@example.com").await;
    // Aliases count one each: ten guesses in one request are ten failures.
    let batch: String = (0..10)
        .map(|i| {
            format!("g{i}: login(email: \"nobody{i}@example.com\", password: \"guess {i}\") {{ token }} ")
        })
        .collect();
    let res = app.gql(&format!("mutation {{ {batch} }}"), json!({}), None).await;
    let errors = res["errors"].as_array().unwrap_or_else(|| panic!("{res}"));
    assert_eq!(errors.len(), 10, "{res}");
    assert!(errors.iter().all(|e| e["extensions"]["code"] == "UNAUTHENTICATED"), "{res}");
    for i in 0..2 {
        assert_eq!(code(&login(&app, &format!("other{i}@example.com"), "wrong").await), "UNAUTHENTICATED");
    }
    let res = login(&app, "real@example.com", PASSWORD).await;
    assert_eq!(code(&res), "RATE_LIMITED", "{res}");

    // More than MAGE_GRAPHQL_MAX_ROOT_MUTATIONS root fields: refused whole.
    let batch: String =
        (0..11).map(|i| format!("g{i}: login(email: \"a{i}@b.c\", password: \"x\") {{ token }} ")).collect();
    let res = app.gql(&format!("mutation {{ {batch} }}"), json!({}), None).await;
    assert_eq!(code(&res), "BAD_USER_INPUT", "{res}");
    assert!(res["errors"][0]["message"].as_str().is_some_and(|m| m.contains("root fields")), "{res}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_overlong_password_is_refused_before_it_is_hashed() {
    let app = TestApp::start().await;
    app.register("long@example.com").await;
    let res = login(&app, "long@example.com", &"x".repeat(129)).await;
    assert_eq!(code(&res), "BAD_USER_INPUT", "{res}");
}

async fn register_from(app: &TestApp, email: &str, forwarded_for: Option<&str>) -> Value {
    let mut req = app.http.post(app.url("/graphql")).json(&json!({
        "query": REGISTER, "variables": { "e": email, "p": PASSWORD }
    }));
    if let Some(f) = forwarded_for {
        req = req.header("X-Forwarded-For", f);
    }
    req.send().await.expect("POST").json().await.expect("JSON")
}

#[tokio::test(flavor = "multi_thread")]
async fn signups_are_limited_per_address_and_a_forged_forwarded_for_changes_nothing() {
    let app = TestApp::start_with(|s| s.auth_limits.signups_per_ip_per_hour = 2).await;
    // Refused input takes no slot.
    assert_eq!(code(&register_from(&app, "not an email", None).await), "BAD_USER_INPUT");
    for (i, forged) in ["203.0.113.1", "203.0.113.2"].iter().enumerate() {
        let res = register_from(&app, &format!("s{i}@example.com"), Some(forged)).await;
        assert!(res.get("errors").is_none(), "{res}");
    }
    let res = register_from(&app, "s3@example.com", Some("203.0.113.3")).await;
    assert_eq!(code(&res), "RATE_LIMITED", "{res}");
    assert!((1..=3600).contains(&retry_after(&res)), "{res}");
    assert_eq!(app.count("users").await, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_allowance() {
    let app = TestApp::start_with(|s| {
        s.auth_limits.signups_per_ip_per_hour = 1;
        s.connections.trusted_proxies = vec!["127.0.0.0/8".parse().expect("net")];
    })
    .await;
    let ok = |res: &Value| assert!(res.get("errors").is_none(), "{res}");
    ok(&register_from(&app, "p1@example.com", Some("198.51.100.1")).await);
    assert_eq!(code(&register_from(&app, "p2@example.com", Some("198.51.100.1")).await), "RATE_LIMITED");
    // The client's own forged entry is left of what the proxy appended.
    assert_eq!(
        code(&register_from(&app, "p3@example.com", Some("192.0.2.9, 198.51.100.1")).await),
        "RATE_LIMITED"
    );
    ok(&register_from(&app, "p4@example.com", Some("198.51.100.2")).await);
}

/// Reads until the server closes the connection; how long that took.
async fn closed_within(stream: &mut tokio::net::TcpStream, limit: Duration) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((started + limit).into(), stream.read(&mut buf)).await {
            Err(_) => panic!("the connection was still open after {limit:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_and_silent_connections_are_closed() {
    let app = TestApp::start_with(|s| {
        s.connections.header_read_timeout = Duration::from_secs(1);
        s.connections.keepalive_timeout = Duration::from_secs(1);
    })
    .await;
    // Nothing at all.
    let mut silent = tokio::net::TcpStream::connect(app.addr).await.expect("connect");
    closed_within(&mut silent, Duration::from_secs(5)).await;

    // A header byte now and then, forever.
    let mut slow = tokio::net::TcpStream::connect(app.addr).await.expect("connect");
    let trickle = async {
        for b in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ".iter().cycle() {
            if slow.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    };
    let cut = tokio::time::timeout(Duration::from_secs(6), trickle).await;
    assert!(cut.is_ok(), "still accepting header bytes after 6 s");

    // Idle after a request on a kept-alive connection.
    let mut idle = tokio::net::TcpStream::connect(app.addr).await.expect("connect");
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
    let mut buf = [0u8; 1024];
    let n = idle.read(&mut buf).await.expect("read");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    closed_within(&mut idle, Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_stops_reading_loses_its_connection() {
    let app = TestApp::start_with(|s| s.connections.send_timeout = Duration::from_secs(1)).await;
    // Larger than every buffer between the two ends on loopback.
    const SIZE: usize = 64 * 1024 * 1024;
    std::fs::write(app.media_dir().join("big.bin"), vec![7u8; SIZE]).expect("write");
    let mut reader = tokio::net::TcpStream::connect(app.addr).await.expect("connect");
    reader.write_all(b"GET /media/big.bin HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
    tokio::time::sleep(Duration::from_secs(4)).await;
    // What was buffered, then the end: the server gave up on this peer.
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match tokio::time::timeout_at(deadline.into(), reader.read(&mut buf)).await {
            Err(_) => panic!("still open after {got} bytes"),
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got += n,
        }
    }
    assert!(got < SIZE, "the whole file came: {got}");
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_per_client_address_are_capped() {
    let app = TestApp::start_with(|s| {
        s.connections.max_connections_per_ip = 2;
        s.connections.header_read_timeout = Duration::from_secs(30);
    })
    .await;
    let held = [
        tokio::net::TcpStream::connect(app.addr).await.expect("connect"),
        tokio::net::TcpStream::connect(app.addr).await.expect("connect"),
    ];
    let mut third = tokio::net::TcpStream::connect(app.addr).await.expect("connect");
    closed_within(&mut third, Duration::from_secs(5)).await;
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let res = app.http.get(app.url("/healthz")).send().await.expect("served once one closed");
    assert!(res.status().is_success());
}

#[tokio::test(flavor = "multi_thread")]
async fn open_connections_are_capped() {
    let app = TestApp::start_with(|s| {
        s.connections.max_connections = 2;
        s.connections.header_read_timeout = Duration::from_secs(30);
    })
    .await;
    let held: Vec<_> = vec![
        tokio::net::TcpStream::connect(app.addr).await.expect("connect"),
        tokio::net::TcpStream::connect(app.addr).await.expect("connect"),
    ];
    tokio::time::sleep(Duration::from_millis(200)).await;
    let quick = reqwest::Client::builder().timeout(Duration::from_secs(1)).build().expect("client");
    assert!(quick.get(app.url("/healthz")).send().await.is_err(), "a third connection was served");
    drop(held);
    let res = app.http.get(app.url("/healthz")).send().await.expect("served once one closed");
    assert!(res.status().is_success());
}

#[tokio::test(flavor = "multi_thread")]
async fn list_fields_cost_their_page_size() {
    let app = TestApp::start().await;
    let (token, _) = app.register("pages@example.com").await;
    let page = "generations(first: 100) { edges { node { id status } } }";
    let res = app.gql(&format!("{{ {page} }}"), json!({}), Some(&token)).await;
    assert!(res.get("errors").is_none(), "{res}");
    for list in [
        "generations(first: 100) { edges { node { id } } }",
        "orders(first: 100) { edges { node { id } } }",
        "users(first: 100) { edges { node { id } } }",
    ] {
        let aliases: String = (0..400).map(|i| format!("a{i}: {list} ")).collect();
        let res = app.gql(&format!("{{ {aliases} }}"), json!({}), Some(&token)).await;
        assert_eq!(code(&res), "BAD_USER_INPUT", "{list}: {res}");
        assert!(res["data"].is_null(), "{res}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn websockets_cap_operations_refuse_duplicate_ids_and_outlive_their_short_token() {
    let app = TestApp::start_with(|s| {
        s.connections.ws_max_operations = 2;
        s.token_ttl = Duration::from_secs(3);
    })
    .await;
    let (token, _) = app.register("ws-limits@example.com").await;
    let sub = "subscription { creditsChanged { balance } }";

    let mut ws = ws::connect_signed_in(app.addr, Some(&token)).await;
    ws::subscribe(&mut ws, "1", sub, json!({})).await;
    ws::subscribe(&mut ws, "2", sub, json!({})).await;
    ws::subscribe(&mut ws, "3", sub, json!({})).await;
    let mut refused = None;
    for _ in 0..5 {
        let msg = ws::recv(&mut ws).await.expect("message");
        if msg["id"] == "3" {
            refused = Some(msg);
            break;
        }
    }
    let refused = refused.expect("an answer for the third operation");
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["payload"][0]["extensions"]["code"], "RATE_LIMITED", "{refused}");
    // Completing one makes room.
    ws::send(&mut ws, json!({ "id": "1", "type": "complete" })).await;
    ws::subscribe(&mut ws, "4", sub, json!({})).await;
    loop {
        let msg = ws::recv(&mut ws).await.expect("message");
        assert_ne!(msg["type"], "error", "{msg}");
        if msg["id"] == "4" {
            assert_eq!(msg["type"], "next", "{msg}");
            break;
        }
    }
    // The token expires 3 s after it was issued; the socket is bound to the
    // session, not the token, so it stays open and keeps answering.
    tokio::time::sleep(Duration::from_secs(4)).await;
    ws::send(&mut ws, json!({ "id": "2", "type": "complete" })).await;
    ws::subscribe(&mut ws, "5", "subscription { creditsChanged { balance } }", json!({})).await;
    loop {
        let msg = ws::recv(&mut ws).await.expect("the socket outlives its access token");
        assert_ne!(msg["type"], "error", "{msg}");
        if msg["id"] == "5" {
            break;
        }
    }

    // A second subscribe with an id in use: 4409.
    let (token, _) = app.register("ws-dup@example.com").await;
    let mut ws = ws::connect_signed_in(app.addr, Some(&token)).await;
    ws::subscribe(&mut ws, "same", sub, json!({})).await;
    ws::subscribe(&mut ws, "same", sub, json!({})).await;
    assert_eq!(ws::close_code(&mut ws, Duration::from_secs(5)).await, 4409);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_socket_of_a_revoked_session_is_closed() {
    let app = TestApp::start().await;
    let (token, id) = app.register("gone-ws@example.com").await;
    let mut ws = ws::connect_signed_in(app.addr, Some(&token)).await;
    // Ended behind the server's back (as another instance would): the poll
    // finds it.
    app.sql(&format!("UPDATE sessions SET revoked_at = now() WHERE user_id = '{id}';")).await;
    assert_eq!(ws::close_code(&mut ws, Duration::from_secs(2)).await, 4403);
}

#[tokio::test(flavor = "multi_thread")]
async fn websockets_per_client_address_are_capped() {
    let app = TestApp::start_with(|s| s.connections.ws_max_sockets_per_ip = 2).await;
    let first = ws::connect(app.addr, "graphql-transport-ws").await;
    let _second = ws::connect(app.addr, "graphql-transport-ws").await;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{}/graphql", app.addr).into_client_request().expect("request");
    req.headers_mut().insert("Sec-WebSocket-Protocol", "graphql-transport-ws".parse().expect("header"));
    match tokio_tungstenite::connect_async(req.clone()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => assert_eq!(res.status(), 429),
        other => panic!("a third socket was opened: {:?}", other.map(|(_, r)| r.status())),
    }
    drop(first);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(tokio_tungstenite::connect_async(req).await.is_ok(), "a slot was not given back");
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_are_not_public() {
    let app = TestApp::start_with(|s| s.metrics_token = None).await;
    let res = app.http.get(app.url("/metrics")).send().await.expect("GET");
    assert_eq!(res.status(), 404);

    let token = "a-metrics-token-of-this-test";
    let app = TestApp::start_with(|s| s.metrics_token = Some(token.into())).await;
    let res =
        app.http.get(app.url("/metrics")).header("Origin", "https://evil.example").send().await.expect("GET");
    assert_eq!(res.status(), 401);
    let res =
        app.http.get(app.url("/metrics")).bearer_auth("wrong-token-of-this-test").send().await.expect("GET");
    assert_eq!(res.status(), 401);
    let res = app
        .http
        .get(app.url("/metrics"))
        .header("Origin", "https://evil.example")
        .bearer_auth(token)
        .send()
        .await
        .expect("GET");
    assert_eq!(res.status(), 200);
    assert!(res.headers().get("access-control-allow-origin").is_none(), "{:?}", res.headers());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_token_of_an_ended_session_is_unauthenticated_everywhere() {
    let app = TestApp::start().await;
    let (token, id) = app.register("gone@example.com").await;
    // Ended behind this instance's back (by another one, or by hand): the
    // revocation poll brings it within a second.
    app.sql(&format!("UPDATE sessions SET revoked_at = now() WHERE user_id = '{id}';")).await;
    let ended = Instant::now();
    while app.gql("{ me { id } }", json!({}), Some(&token)).await.get("errors").is_none() {
        assert!(ended.elapsed() < Duration::from_secs(1), "still signed in after a second");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for query in [
        "{ me { id } }",
        "{ generations { edges { node { id } } } }",
        "{ orders { edges { node { id } } } }",
        "{ creditEntries { edges { node { id } } } }",
        "mutation { createCheckout(productId: \"nope\") { url } }",
    ] {
        let res = app.gql(query, json!({}), Some(&token)).await;
        assert_eq!(code(&res), "UNAUTHENTICATED", "{query}: {res}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn media_never_follows_symbolic_links() {
    let app = TestApp::start().await;
    std::fs::write(app.media_dir().join("real.txt"), "ok").expect("write");
    std::os::unix::fs::symlink("/etc/passwd", app.media_dir().join("passwd")).expect("link");
    std::os::unix::fs::symlink("/etc", app.media_dir().join("etc")).expect("link");
    let res = app.http.get(app.url("/media/real.txt")).send().await.expect("GET");
    assert_eq!(res.status(), 200);
    std::fs::create_dir(app.media_dir().join("media")).expect("dir");
    std::os::unix::fs::symlink("/etc/passwd", app.media_dir().join("media/link")).expect("link");
    for path in ["/media/passwd", "/media/etc/passwd", "/media/%65tc/passwd", "/media/media/link"] {
        let res = app.http.get(app.url(path)).send().await.expect("GET");
        assert_eq!(res.status(), 404, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn graphql_over_http_content_types_and_methods() {
    let app = TestApp::start().await;
    let url = app.url("/graphql");
    let body = r#"{"query":"mutation { register(email: \"csrf@example.com\", password: \"long enough pw\") { token } }"}"#;
    // What a page of any origin can make a browser send without a preflight.
    for content_type in [Some("text/plain"), Some("application/x-www-form-urlencoded"), None] {
        let mut req = app.http.post(&url).body(body);
        if let Some(ct) = content_type {
            req = req.header("Content-Type", ct);
        }
        let res = req.send().await.expect("POST");
        assert_eq!(res.status(), 415, "{content_type:?}");
    }
    assert_eq!(app.count("users").await, 0);

    // A client that accepts only application/json gets it, errors with 200;
    // with the GraphQL media type, a request error is a 400 without data.
    for (accept, status) in [("application/json", 200), ("application/graphql-response+json", 400)] {
        let res = app
            .http
            .post(&url)
            .header("Accept", accept)
            .json(&json!({ "query": "{ nope }" }))
            .send()
            .await
            .expect("POST");
        assert_eq!(res.status(), status, "{accept}");
        assert!(res.headers()["content-type"].to_str().expect("ct").starts_with(accept), "{accept}");
        let v: Value = res.json().await.expect("JSON");
        assert_eq!(v["errors"][0]["extensions"]["code"], "BAD_USER_INPUT", "{v}");
        assert_eq!(v.get("data").is_some(), accept == "application/json", "{accept}: {v}");
    }

    // Nothing GraphQL answers with is acceptable: 406.
    for accept in ["text/csv", "application/json;q=0"] {
        let res =
            app.http.post(&url).header("Accept", accept).json(&json!({ "query": "{ __typename }" })).send();
        assert_eq!(res.await.expect("POST").status(), 406, "{accept}");
    }

    // Queries over GET (cacheable); mutations only over POST.
    let res = app
        .http
        .get(format!("{url}?query=%7B__typename%7D"))
        .header("Accept", "application/graphql-response+json")
        .send()
        .await
        .expect("GET");
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.expect("JSON")["data"]["__typename"], "Query");
    let res = app
        .http
        .get(format!("{url}?query=mutation%7Blogout%3Aregister(email%3A%22a%40b.c%22%2Cpassword%3A%22x%22)%7Btoken%7D%7D"))
        .header("Accept", "application/json")
        .send()
        .await
        .expect("GET");
    assert_eq!(res.status(), 405);
    assert_eq!(res.headers()["allow"], "POST");
}

/// The `graphql-http` package's own audit of a GraphQL-over-HTTP server
/// (tests/http-audit), against a real `mage serve`: no error, no warning.
#[tokio::test(flavor = "multi_thread")]
async fn the_graphql_http_server_audit_passes() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/http-audit");
    assert!(
        std::path::Path::new(dir).join("node_modules/graphql-http").exists(),
        "run `npm ci` in tests/http-audit (scripts/test does)"
    );
    let (_child, port, _db, _redis) = mage_serve(&[]).await;
    let out = tokio::process::Command::new("node")
        .arg("audit.mjs")
        .arg(format!("http://127.0.0.1:{port}/graphql"))
        .current_dir(dir)
        .output()
        .await
        .expect("node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
}
