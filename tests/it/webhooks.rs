//! Outgoing webhooks, delivered to a receiver that checks their Standard
//! Webhooks signatures with the `standardwebhooks` package (support::receiver).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use mage_domain::webhooks::WebhookSettings;
use mage_domain::webhooks::guard::UrlPolicy;
use mage_fakes::dns::FakeDns;
use mage_jobs::settings::WorkerSettings;
use serde_json::{Value, json};
use sha2::Sha256;

use crate::support::process::Child;
use crate::support::receiver::{Received, Receiver};
use crate::support::{TestApp, code, scalar_i64};

const CREATE_ENDPOINT: &str = "mutation($u: String!, $e: [WebhookEventType!]!) {
  createWebhookEndpoint(url: $u, events: $e, description: \"tests\") { endpoint { id url events enabled } secret } }";
const DELIVERIES: &str = "query($e: ID!) { webhookDeliveries(endpointId: $e, first: 50) { edges { node {
  id eventId eventType status attempts lastStatusCode lastError nextAttemptAt requestBody
  attemptLog { attempt statusCode error responseBody durationMs } } } } }";
const SEND_TEST: &str =
    "mutation($e: ID!) { sendTestWebhook(endpointId: $e) { id eventId eventType status } }";
const CREATE_GENERATION: &str = "mutation($i: CreateGenerationInput!) { createGeneration(input: $i) { id } }";

/// Retries a second apart: the whole schedule runs within a test.
fn fast(s: &mut WorkerSettings) {
    s.webhooks.schedule = vec![Duration::from_secs(1); 8];
    s.sweep_interval = Duration::from_secs(1);
}

async fn endpoint(app: &TestApp, token: &str, url: &str, events: &[&str]) -> (String, String) {
    let res = app.gql(CREATE_ENDPOINT, json!({ "u": url, "e": events }), Some(token)).await;
    let created = &res["data"]["createWebhookEndpoint"];
    let id = created["endpoint"]["id"].as_str().unwrap_or_else(|| panic!("createWebhookEndpoint: {res}"));
    (id.to_owned(), created["secret"].as_str().expect("secret").to_owned())
}

async fn deliveries(app: &TestApp, token: &str, endpoint_id: &str) -> Vec<Value> {
    let res = app.gql(DELIVERIES, json!({ "e": endpoint_id }), Some(token)).await;
    let edges =
        res["data"]["webhookDeliveries"]["edges"].as_array().unwrap_or_else(|| panic!("{res}")).clone();
    edges.into_iter().map(|e| e["node"].clone()).collect()
}

/// The deliveries once every one is `status` (polled).
async fn wait_deliveries(
    app: &TestApp,
    token: &str,
    endpoint_id: &str,
    n: usize,
    status: &str,
) -> Vec<Value> {
    let start = Instant::now();
    loop {
        let d = deliveries(app, token, endpoint_id).await;
        if d.len() >= n && d.iter().all(|d| d["status"] == status) {
            return d;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "deliveries never all {status}: {d:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn body(r: &Received) -> Value {
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("body {:?}: {e}", r.body))
}

async fn api_key(app: &TestApp, token: &str) -> String {
    let res = app
        .gql(
            "mutation($s: [ApiKeyScope!]!) { createApiKey(name: \"server\", scopes: $s) { secret } }",
            json!({ "s": ["READ", "GENERATE"] }),
            Some(token),
        )
        .await;
    res["data"]["createApiKey"]["secret"].as_str().unwrap_or_else(|| panic!("{res}")).to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn generation_succeeded_reaches_a_verifying_receiver_retried_logged_and_redelivered() {
    let app = TestApp::start().await;
    let _workers = app.start_workers_with(fast).await;
    let receiver = Receiver::start().await;
    let (token, _) = app.register("integrator@example.com").await;
    let key = api_key(&app, &token).await;
    let (endpoint_id, secret) =
        endpoint(&app, &token, &receiver.url("/hooks"), &["GENERATION_SUCCEEDED"]).await;
    assert!(secret.starts_with("whsec_"), "{secret}");
    receiver.configure(json!({ "secrets": [secret], "script": [500, 500], "status": 200 })).await;

    let input = json!({ "model": "synth-video", "prompt": "a lighthouse", "resolution": "R480P", "durationSeconds": 1 });
    let res = app.gql(CREATE_GENERATION, json!({ "i": input }), Some(&key)).await;
    let generation_id =
        res["data"]["createGeneration"]["id"].as_str().unwrap_or_else(|| panic!("{res}")).to_owned();

    let got = receiver.wait_answered(3, Duration::from_secs(90)).await;
    assert_eq!(got.len(), 3, "{got:#?}");
    assert!(got.iter().all(|r| r.verified), "every attempt verifies with standardwebhooks: {got:#?}");
    assert_eq!(got.iter().map(|r| r.status).collect::<Vec<_>>(), [Some(500), Some(500), Some(200)]);
    let id = got[0].id.clone().expect("webhook-id");
    assert!(got.iter().all(|r| r.id.as_deref() == Some(&id)), "one webhook-id on every retry: {got:#?}");
    let payload = body(&got[0]);
    assert!(got.iter().all(|r| body(r) == payload), "the same body on every attempt");
    assert_eq!(payload["type"], "generation.succeeded");
    assert_eq!(payload["id"], id.as_str());
    assert!(payload["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')), "{payload}");

    // `data` is the generation as the API shows it.
    let q =
        "query($id: ID!) { generation(id: $id) { id status model kind prompt resolution durationSeconds cost
      attempts output { hlsUrl videoUrl posterUrl width height } } }";
    let api = app.gql(q, json!({ "id": generation_id }), Some(&token)).await;
    let shown = &api["data"]["generation"];
    let data = &payload["data"];
    for field in
        ["id", "status", "model", "kind", "prompt", "resolution", "durationSeconds", "cost", "attempts"]
    {
        assert_eq!(data[field], shown[field], "{field}: webhook {data} vs API {shown}");
    }
    for field in ["hlsUrl", "videoUrl", "posterUrl", "width", "height"] {
        assert_eq!(data["output"][field], shown["output"][field], "output.{field}");
    }
    assert!(shown["output"]["hlsUrl"].is_string(), "{shown}");

    let d = wait_deliveries(&app, &token, &endpoint_id, 1, "SUCCEEDED").await;
    assert_eq!(d.len(), 1, "{d:#?}");
    assert_eq!(d[0]["attempts"], 3);
    assert_eq!(d[0]["eventId"], id.as_str());
    assert_eq!(d[0]["eventType"], "GENERATION_SUCCEEDED");
    assert_eq!(d[0]["lastStatusCode"], 200);
    assert_eq!(d[0]["requestBody"], got[0].body.as_str());
    let log: Vec<Value> = d[0]["attemptLog"].as_array().expect("log").clone();
    assert_eq!(
        log.iter().map(|a| a["statusCode"].clone()).collect::<Vec<_>>(),
        [json!(500), json!(500), json!(200)]
    );
    assert_eq!(log[0]["responseBody"], r#"{"error": "scripted"}"#, "{log:#?}");

    let res = app
        .gql(
            "mutation($d: ID!) { redeliverWebhook(deliveryId: $d) { status } }",
            json!({ "d": d[0]["id"] }),
            Some(&token),
        )
        .await;
    assert_eq!(res["data"]["redeliverWebhook"]["status"], "PENDING", "{res}");
    let got = receiver.wait_answered(4, Duration::from_secs(30)).await;
    assert!(
        got[3].verified && got[3].id.as_deref() == Some(&id) && got[3].status == Some(200),
        "{:#?}",
        got[3]
    );
    let d = wait_deliveries(&app, &token, &endpoint_id, 1, "SUCCEEDED").await;
    assert_eq!(d[0]["attempts"], 4, "{d:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_a_rotation_a_receiver_with_either_secret_accepts_the_next_event() {
    let app = TestApp::start().await;
    let _workers = app.start_workers_with(fast).await;
    let receiver = Receiver::start().await;
    let (token, _) = app.register("rotator@example.com").await;
    let (endpoint_id, old) = endpoint(&app, &token, &receiver.url("/r"), &["GENERATION_SUCCEEDED"]).await;
    let res = app
        .gql("mutation($e: ID!) { rotateWebhookSecret(id: $e) { secret endpoint { previousSecretExpiresAt } } }", json!({ "e": endpoint_id }), Some(&token))
        .await;
    let new =
        res["data"]["rotateWebhookSecret"]["secret"].as_str().unwrap_or_else(|| panic!("{res}")).to_owned();
    assert_ne!(old, new);
    assert!(res["data"]["rotateWebhookSecret"]["endpoint"]["previousSecretExpiresAt"].is_string(), "{res}");

    for (n, secret) in [(1, &old), (2, &new)] {
        receiver.configure(json!({ "secrets": [secret] })).await;
        let res = app.gql(SEND_TEST, json!({ "e": endpoint_id }), Some(&token)).await;
        assert_eq!(res["data"]["sendTestWebhook"]["eventType"], "TEST", "{res}");
        let got = receiver.wait_answered(n, Duration::from_secs(30)).await;
        let last = &got[n - 1];
        assert!(
            last.verified,
            "verified with only the {} secret: {last:#?}",
            if n == 1 { "old" } else { "new" }
        );
        assert_eq!(last.signature.as_deref().map(|s| s.split(' ').count()), Some(2), "two v1 entries");
        assert_eq!(body(last)["type"], "webhook.test");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_the_worker_mid_delivery_the_event_is_still_delivered_once() {
    let app = TestApp::start().await;
    let receiver = Receiver::start().await;
    let (token, _) = app.register("crash-hook@example.com").await;
    let (endpoint_id, secret) = endpoint(&app, &token, &receiver.url("/k"), &["GENERATION_SUCCEEDED"]).await;
    // The first request hangs: the worker is killed while it waits.
    receiver.configure(json!({ "secrets": [secret], "hang_seconds": 30 })).await;
    let work = |app: &TestApp| {
        let mut cmd = app.mage("work");
        cmd.env("MAGE_QUEUES", "deliver,sweep")
            .env("MAGE_WEBHOOKS_ALLOW_PRIVATE", "true")
            .env("MAGE_WEBHOOK_RETRY_SCHEDULE", "1s,1s,1s")
            .env("MAGE_SWEEP_INTERVAL_SECONDS", "1");
        Child::spawn(&mut cmd)
    };
    let mut first = work(&app);
    // Committed by the API; the worker fans nothing out (a test event is
    // its own delivery) and takes the job.
    let res = app.gql(SEND_TEST, json!({ "e": endpoint_id }), Some(&token)).await;
    let event_id =
        res["data"]["sendTestWebhook"]["eventId"].as_str().unwrap_or_else(|| panic!("{res}")).to_owned();
    receiver.wait_for(1, Duration::from_secs(30)).await;
    first.0.kill().expect("kill -9");
    let _ = first.0.wait();
    let killed = Instant::now();
    receiver.configure(json!({ "secrets": [secret] })).await;

    let _second = work(&app);
    let d = wait_deliveries(&app, &token, &endpoint_id, 1, "SUCCEEDED").await;
    println!("kill -9 mid-delivery: delivered {:.1} s after the worker died", killed.elapsed().as_secs_f64());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let got = receiver.received().await;
    let answered: Vec<_> = got.iter().filter(|r| r.status == Some(200)).collect();
    assert_eq!(answered.len(), 1, "one successful attempt, then nothing more: {got:#?}");
    assert!(got.iter().all(|r| r.id.as_deref() == Some(event_id.as_str()) && r.verified), "{got:#?}");
    assert_eq!(d[0]["attempts"], 2, "the killed attempt counts: {d:#?}");
    let log = d[0]["attemptLog"].as_array().expect("log");
    assert_eq!(log.len(), 1, "only the attempt that finished is logged: {log:#?}");
    assert_eq!(log[0]["statusCode"], 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn private_addresses_are_refused_at_creation_and_never_delivered_to() {
    let dns = FakeDns::start(vec![
        ("evil.test".to_owned(), "10.0.0.1".parse().expect("ip")),
        ("loopback.test".to_owned(), "127.0.0.1".parse().expect("ip")),
        ("public.test".to_owned(), "93.184.215.14".parse().expect("ip")),
    ])
    .await
    .expect("fake DNS");
    let policy = UrlPolicy { allow_http: true, allow_private: false, nameserver: Some(dns.addr()) };
    let guarded = WebhookSettings { policy: policy.clone(), ..WebhookSettings::local() };
    let app = TestApp::start_with(|s| s.webhooks = guarded.clone()).await;
    let receiver = Receiver::start().await;
    let (token, _) = app.register("ssrf@example.com").await;
    for url in [
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "http://127.0.0.1/".to_owned(),
        receiver.url("/direct"),
        "http://evil.test/hook".to_owned(),
        "http://loopback.test/hook".to_owned(),
        "http://[::1]/".to_owned(),
        "http://[::ffff:10.0.0.1]/".to_owned(),
        "http://100.64.0.1/".to_owned(),
        "http://user:pass@public.test/".to_owned(),
    ] {
        let res =
            app.gql(CREATE_ENDPOINT, json!({ "u": url, "e": ["GENERATION_SUCCEEDED"] }), Some(&token)).await;
        assert_eq!(code(&res), "BAD_USER_INPUT", "{url}: {res}");
        println!("refused {url}: {}", res["errors"][0]["message"]);
    }
    assert_eq!(app.count("webhook_endpoints").await, 0);
    // A public name is accepted (not resolved to anything here but the fake).
    let (public_id, _) = endpoint(&app, &token, "http://public.test/hook", &["GENERATION_SUCCEEDED"]).await;

    // An endpoint whose name later points home (DNS rebinding), or a row
    // written before the rules changed, is refused again at delivery.
    app.sql(&format!(
        "UPDATE webhook_endpoints SET url = '{}' WHERE id = '{public_id}'",
        receiver.url("/rebound")
    ))
    .await;
    let (other_id, _) = {
        let id = endpoint(&app, &token, "http://public.test/other", &["GENERATION_SUCCEEDED"]).await;
        app.sql(&format!(
            "UPDATE webhook_endpoints SET url = 'http://loopback.test:{}/x' WHERE id = '{}'",
            receiver.port, id.0
        ))
        .await;
        id
    };
    let _workers = app
        .start_workers_with(|s| {
            fast(s);
            s.webhooks = WebhookSettings { schedule: vec![], ..guarded.clone() };
        })
        .await;
    for id in [&public_id, &other_id] {
        app.gql(SEND_TEST, json!({ "e": id }), Some(&token)).await;
        let d = wait_deliveries(&app, &token, id, 1, "FAILED").await;
        let error = d[0]["lastError"].as_str().unwrap_or_default();
        assert!(error.contains("refused"), "{d:#?}");
        println!("never delivered: {error}");
    }
    assert!(receiver.received().await.is_empty(), "nothing reached the loopback receiver");

    // https only outside development.
    let strict =
        WebhookSettings { policy: UrlPolicy { allow_http: false, ..policy }, ..WebhookSettings::local() };
    let app = TestApp::start_with(|s| s.webhooks = strict.clone()).await;
    let (token, _) = app.register("https@example.com").await;
    let res = app
        .gql(CREATE_ENDPOINT, json!({ "u": "http://public.test/", "e": ["ORDER_PAID"] }), Some(&token))
        .await;
    assert_eq!(code(&res), "BAD_USER_INPUT", "{res}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redirect_is_never_followed() {
    let app = TestApp::start().await;
    let _workers = app
        .start_workers_with(|s| {
            fast(s);
            s.webhooks.schedule = vec![];
        })
        .await;
    let target = Receiver::start().await;
    let redirector = Receiver::start().await;
    redirector.configure(json!({ "status": 302, "location": target.url("/stolen") })).await;
    let (token, _) = app.register("redirect@example.com").await;
    let (id, _) = endpoint(&app, &token, &redirector.url("/r"), &["CREDITS_LOW"]).await;
    app.gql(SEND_TEST, json!({ "e": id }), Some(&token)).await;
    let d = wait_deliveries(&app, &token, &id, 1, "FAILED").await;
    assert_eq!(d[0]["lastStatusCode"], 302, "{d:#?}");
    assert_eq!(redirector.received().await.len(), 1);
    assert!(target.received().await.is_empty(), "the redirect was not followed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_endpoint_that_hangs_does_not_delay_another_users_deliveries() {
    let app = TestApp::start().await;
    let _workers = app.start_workers_with(fast).await;
    let slow = Receiver::start().await;
    slow.configure(json!({ "hang_seconds": 12 })).await;
    let fast_receiver = Receiver::start().await;
    let (slow_token, _) = app.register("slow@example.com").await;
    let (fast_token, _) = app.register("fast@example.com").await;
    let (slow_id, _) = endpoint(&app, &slow_token, &slow.url("/slow"), &["ORDER_PAID"]).await;
    let (fast_id, _) = endpoint(&app, &fast_token, &fast_receiver.url("/fast"), &["ORDER_PAID"]).await;
    // More deliveries to the hanging endpoint than its permits and than a
    // worker's slots' share.
    for _ in 0..20 {
        app.gql(SEND_TEST, json!({ "e": slow_id }), Some(&slow_token)).await;
    }
    slow.wait_for(8, Duration::from_secs(30)).await;
    let sent = Instant::now();
    app.gql(SEND_TEST, json!({ "e": fast_id }), Some(&fast_token)).await;
    let got = fast_receiver.wait_answered(1, Duration::from_secs(30)).await;
    let fast_took = sent.elapsed();
    let in_flight = slow.received().await.len();
    let d = wait_deliveries(&app, &slow_token, &slow_id, 20, "PENDING").await;
    let slow_timed_out = {
        let start = Instant::now();
        loop {
            let d = deliveries(&app, &slow_token, &slow_id).await;
            if let Some(a) =
                d.iter().find_map(|d| d["attemptLog"].as_array().and_then(|l| l.first()).cloned())
            {
                break a;
            }
            assert!(start.elapsed() < Duration::from_secs(60), "no slow attempt finished: {d:#?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    println!(
        "a hanging endpoint (20 deliveries waiting): another user's delivery took {:.0} ms; the hanging one's first \
         attempt ended after {} ms ({})",
        fast_took.as_secs_f64() * 1000.0,
        slow_timed_out["durationMs"],
        slow_timed_out["error"]
    );
    assert_eq!(got.len(), 1);
    assert!(d.len() >= 20);
    assert!(slow_timed_out["error"].as_str().is_some_and(|e| e.contains("no answer")), "{slow_timed_out}");
    // Delivered while every permit of the hanging endpoint was still held:
    // it did not wait for one of them to time out.
    assert!(fast_took < Duration::from_secs(10), "{fast_took:?}");
    assert_eq!(in_flight, 8, "at most 8 in flight to one endpoint");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn credits_low_fires_once_per_crossing_and_orders_and_uploads_raise_their_events() {
    let mut app = TestApp::start().await;
    app.ledger_written_by_hand();
    let _workers = app.start_workers_with(fast).await;
    let receiver = Receiver::start().await;
    let (token, user_id) = app.register("low@example.com").await;
    let (_, secret) =
        endpoint(&app, &token, &receiver.url("/low"), &["CREDITS_LOW", "ORDER_PAID", "ASSET_REJECTED"]).await;
    receiver.configure(json!({ "secrets": [secret] })).await;
    let floor: i64 = scalar_i64(
        &mut *app.conn().await,
        "SELECT min(p.credits + p.credits_per_second * CASE WHEN m.kind = 'video' THEN 1 ELSE 0 END)::bigint AS n
           FROM render_model_prices p JOIN render_models m ON m.id = p.model_id WHERE m.active",
    )
    .await;
    // Down across the floor, further down, back up, down again: two events.
    for held in
        [format!("balance - {floor} + 1"), "balance".into(), "0".into(), format!("balance - {floor} + 1")]
    {
        app.sql(&format!("UPDATE credit_accounts SET held = {held} WHERE user_id = '{user_id}'")).await;
    }
    let got = receiver.wait_answered(2, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got_all = receiver.received().await;
    assert_eq!(got_all.len(), 2, "{got_all:#?}");
    for r in &got {
        let b = body(r);
        assert_eq!(b["type"], "credits.low");
        assert_eq!(b["data"]["threshold"], floor);
        assert_eq!(b["data"]["balance"], floor - 1, "{b}");
        assert!(r.verified);
    }
    // An order paid (a settlement's UPDATE, here by hand) is announced with
    // the order as the API shows it.
    app.sql(&format!(
        "INSERT INTO orders (id, user_id, status, total_cents, currency, credits, mode)
         VALUES ('{}', '{user_id}', 'pending', 500, 'usd', 50, 'payment');
         UPDATE orders SET status = 'paid', paid_at = now() WHERE user_id = '{user_id}'",
        uuid::Uuid::new_v4()
    ))
    .await;
    let got = receiver.wait_answered(3, Duration::from_secs(30)).await;
    let b = body(&got[2]);
    assert_eq!(b["type"], "order.paid");
    assert_eq!(b["data"]["status"], "PAID");
    assert_eq!(b["data"]["totalCents"], 500);
    assert_eq!(b["data"]["currency"], "USD");

    // An upload the ingest worker refuses (not an image) is announced
    // REJECTED with the reason the API shows.
    let res = app
        .gql(
            "mutation($i: CreateUploadInput!) { createUpload(input: $i) { url asset { id } } }",
            json!({ "i": { "filename": "cat.jpg", "contentType": "image/jpeg", "byteSize": 4000 } }),
            Some(&token),
        )
        .await;
    let url = res["data"]["createUpload"]["url"].as_str().unwrap_or_else(|| panic!("{res}")).to_owned();
    let asset_id = res["data"]["createUpload"]["asset"]["id"].as_str().expect("asset id").to_owned();
    let put = reqwest::Client::new().put(&url).body(vec![7u8; 4000]).send().await.expect("PUT");
    assert!(put.status().is_success(), "{}", put.status());
    let done = app
        .gql(
            "mutation($id: ID!) { completeUpload(id: $id) { status } }",
            json!({ "id": asset_id }),
            Some(&token),
        )
        .await;
    assert_eq!(done["data"]["completeUpload"]["status"], "PROCESSING", "{done}");
    let got = receiver.wait_answered(4, Duration::from_secs(60)).await;
    let b = body(&got[3]);
    assert_eq!(b["type"], "asset.rejected", "{b}");
    let shown = app
        .gql(
            "query($id: ID!) { asset(id: $id) { id status error kind filename } }",
            json!({ "id": asset_id }),
            Some(&token),
        )
        .await;
    for field in ["id", "status", "error", "kind", "filename"] {
        assert_eq!(b["data"][field], shown["data"]["asset"][field], "{field}: {b} vs {shown}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn endpoints_are_checked_limited_kept_from_api_keys_and_disabled_after_failing() {
    let app = TestApp::start().await;
    let _workers = app
        .start_workers_with(|s| {
            fast(s);
            s.webhooks.schedule = vec![Duration::from_secs(1); 2];
            s.webhooks.disable_after = Duration::from_secs(2);
        })
        .await;
    let receiver = Receiver::start().await;
    receiver.configure(json!({ "status": 503 })).await;
    let (token, _) = app.register("limits@example.com").await;
    let url = receiver.url("/l");
    for (events, why) in [(json!([]), "no event"), (json!(["TEST"]), "TEST")] {
        let res = app.gql(CREATE_ENDPOINT, json!({ "u": url, "e": events }), Some(&token)).await;
        assert_eq!(code(&res), "BAD_USER_INPUT", "{why}: {res}");
    }
    let res = app.gql(CREATE_ENDPOINT, json!({ "u": "not a url", "e": ["ORDER_PAID"] }), Some(&token)).await;
    assert_eq!(code(&res), "BAD_USER_INPUT", "{res}");
    let key = api_key(&app, &token).await;
    let res = app.gql(CREATE_ENDPOINT, json!({ "u": url, "e": ["ORDER_PAID"] }), Some(&key)).await;
    assert_eq!(code(&res), "FORBIDDEN", "an API key cannot register endpoints: {res}");
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.push(endpoint(&app, &token, &url, &["ORDER_PAID"]).await.0);
    }
    let res = app.gql(CREATE_ENDPOINT, json!({ "u": url, "e": ["ORDER_PAID"] }), Some(&token)).await;
    assert_eq!(code(&res), "CONFLICT", "the 11th: {res}");
    let res =
        app.gql("{ webhookEndpoints { id url events enabled disabledReason } }", json!({}), Some(&key)).await;
    assert_eq!(res["data"]["webhookEndpoints"].as_array().map(Vec::len), Some(10), "{res}");
    assert!(!res.to_string().contains("whsec_"), "no secret is ever listed");

    // Failing every delivery for longer than `disable_after`: disabled,
    // with a reason, its owner told by mail.
    let id = &ids[0];
    for _ in 0..3 {
        app.gql(SEND_TEST, json!({ "e": id }), Some(&token)).await;
        tokio::time::sleep(Duration::from_millis(1200)).await;
    }
    let start = Instant::now();
    let reason = loop {
        let res =
            app.gql("{ webhookEndpoints { id enabled disabledReason } }", json!({}), Some(&token)).await;
        let e = res["data"]["webhookEndpoints"]
            .as_array()
            .and_then(|l| l.iter().find(|e| e["id"] == id.as_str()).cloned());
        if let Some(e) = e.filter(|e| e["enabled"] == false) {
            break e["disabledReason"].as_str().unwrap_or_default().to_owned();
        }
        assert!(start.elapsed() < Duration::from_secs(60), "never disabled: {res}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(reason.contains("every delivery failed"), "{reason}");
    let mails = scalar_i64(
        &mut *app.conn().await,
        "SELECT count(*) AS n FROM mails WHERE subject LIKE '%webhook endpoint was disabled%'",
    )
    .await;
    assert_eq!(mails, 1);
    let res = app.gql(SEND_TEST, json!({ "e": id }), Some(&token)).await;
    assert_eq!(code(&res), "CONFLICT", "{res}");
    let res = app
        .gql(
            "mutation($e: ID!) { updateWebhookEndpoint(id: $e, enabled: true) { enabled disabledReason } }",
            json!({ "e": id }),
            Some(&token),
        )
        .await;
    assert_eq!(res["data"]["updateWebhookEndpoint"]["enabled"], true, "{res}");
    let res = app
        .gql("mutation($e: ID!) { deleteWebhookEndpoint(id: $e) }", json!({ "e": id }), Some(&token))
        .await;
    assert_eq!(res["data"]["deleteWebhookEndpoint"], true, "{res}");
}

/// The harness itself: what Rust signs by the spec, the package accepts; a
/// tampered body it refuses; and the receiver answers its script, then its
/// status.
#[tokio::test(flavor = "multi_thread")]
async fn receiver_verifies_with_the_standardwebhooks_package() {
    let receiver = Receiver::start().await;
    let (old, new) = ("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_c2VjcmV0LW9mLXRoZS1yZWNlaXZlci10ZXN0");
    receiver.configure(json!({ "secrets": [old, new], "script": [500], "status": 200 })).await;
    let http = reqwest::Client::builder().no_proxy().build().expect("client");
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs();
    let body = r#"{"type":"generation.completed","data":{"id":"g1"}}"#;
    let post = |id: &str, signature: String, body: &str| {
        http.post(receiver.url("/hooks/mage"))
            .header("webhook-id", id)
            .header("webhook-timestamp", now.to_string())
            .header("webhook-signature", signature)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
    };

    let scripted = post("msg_1", sign(new, "msg_1", now, body), body).await.expect("POST");
    assert_eq!(scripted.status(), 500);
    assert_eq!(scripted.headers()["content-length"], "21");
    assert_eq!(scripted.json::<serde_json::Value>().await.expect("JSON"), json!({ "error": "scripted" }));

    let tampered = body.replace("g1", "g2");
    let res = post("msg_2", sign(new, "msg_2", now, body), &tampered).await.expect("POST");
    assert_eq!(res.status(), 200);

    // During a rotation both signatures go out; the first no longer matches.
    let both = format!(
        "{} {}",
        sign("whsec_dW5rbm93bi1zZWNyZXQ=", "msg_3", now, body),
        sign(old, "msg_3", now, body)
    );
    let res = post("msg_3", both.clone(), body).await.expect("POST");
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<serde_json::Value>().await.expect("JSON"), json!({ "ok": true }));

    let got = receiver.wait_answered(3, Duration::from_secs(5)).await;
    let summary: Vec<_> =
        got.iter().map(|r| (r.id.as_deref(), r.verified, r.verified_with, r.status)).collect();
    assert_eq!(
        summary,
        [
            (Some("msg_1"), true, Some(1), Some(500)),
            (Some("msg_2"), false, None, Some(200)),
            (Some("msg_3"), true, Some(0), Some(200)),
        ]
    );
    assert_eq!(got[0].path, "/hooks/mage");
    assert_eq!(got[0].json()["data"]["id"], "g1");
    assert_eq!(got[1].body, tampered);
    assert_eq!(got[0].timestamp, Some(now.to_string()));
    assert!(got[0].received_at <= got[0].answered_at.expect("answered"));
    assert_eq!(got[0].method, "POST");
    assert_eq!(got[0].headers["content-type"], "application/json");
    assert_eq!(got[2].signature, Some(both));

    // A held answer is recorded on arrival; its status comes with the answer.
    receiver.configure(json!({ "secrets": [new], "hang_seconds": 2 })).await;
    let held = tokio::spawn(post("msg_4", sign(new, "msg_4", now, body), body));
    let arrived = receiver.wait_for(4, Duration::from_secs(5)).await;
    assert_eq!((arrived[3].verified, arrived[3].status, arrived[3].answered_at), (true, None, None));
    let answered = receiver.wait_answered(4, Duration::from_secs(10)).await;
    assert_eq!(answered[3].status, Some(200));
    assert!(answered[3].answered_at.expect("answered") - answered[3].received_at >= 2.0);
    assert_eq!(held.await.expect("task").expect("POST").status(), 200);
}

/// `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">` keyed by the
/// base64 part of a `whsec_` secret, written from the spec on purpose rather
/// than with Mage's signer.
fn sign(secret: &str, id: &str, timestamp: u64, body: &str) -> String {
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = b64.decode(secret.trim_start_matches("whsec_")).expect("base64 secret");
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("any key length");
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    format!("v1,{}", b64.encode(mac.finalize().into_bytes()))
}
