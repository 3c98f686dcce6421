//! Deleting generations and accounts end to end, against real PostgreSQL,
//! Redis, storage, workers and a fake Stripe: holds released, media and
//! uploads gone from storage, the ledger kept, the email free again, and
//! the sweeper finishing what a crash left.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::{PASSWORD, TestApp, code, scalar_i64, ws};
use mage_domain::config::PaymentSettings;
use mage_fakes::stripe::FakeStripe;
use serde_json::{Value, json};

const CREATE: &str = "mutation($i: CreateGenerationInput!) { createGeneration(input: $i) { id cost } }";
const GET: &str = "query($id: ID!) { generation(id: $id) { id status progress } }";
const DELETE_GENERATION: &str = "mutation($id: ID!) { deleteGeneration(id: $id) { id status } }";
const DELETE_ACCOUNT: &str = "mutation($p: String!) { deleteAccount(password: $p) }";
const CREDITS: &str = "{ me { credits { balance held } } }";

fn image() -> Value {
    json!({ "model": "synth-image", "prompt": "a lighthouse at dusk", "resolution": "R480P" })
}

fn video(seconds: i64) -> Value {
    json!({ "model": "synth-video", "prompt": "a lighthouse at dusk", "resolution": "R480P",
            "durationSeconds": seconds })
}

/// Slows the synthetic renderer so a render is still running when the test
/// acts (each test runs in a process of its own under nextest).
fn slow_renders() {
    unsafe { std::env::set_var("MAGE_SYNTHETIC_SLOWDOWN", "4") };
}

async fn create(app: &TestApp, token: &str, input: Value) -> String {
    let res = app.gql(CREATE, json!({ "i": input }), Some(token)).await;
    res["data"]["createGeneration"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("create failed: {res}"))
        .to_owned()
}

async fn credits(app: &TestApp, token: &str) -> (i64, i64) {
    let res = app.gql(CREDITS, json!({}), Some(token)).await;
    let c = &res["data"]["me"]["credits"];
    (c["balance"].as_i64().unwrap_or_else(|| panic!("{res}")), c["held"].as_i64().expect("held"))
}

/// Polls the generation until `done` holds, or panics after `within`.
async fn wait_for(app: &TestApp, token: &str, id: &str, within: Duration, done: impl Fn(&Value) -> bool) {
    let start = Instant::now();
    loop {
        let res = app.gql(GET, json!({ "id": id }), Some(token)).await;
        if done(&res["data"]["generation"]) {
            return;
        }
        assert!(start.elapsed() < within, "generation did not get there in {within:?}: {res}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn running(g: &Value) -> bool {
    g["status"] == "RENDERING" && g["progress"].as_i64().unwrap_or(0) > 0
}

/// Files below `dir` of the media folder.
fn files_under(app: &TestApp, dir: &str) -> usize {
    walk(&app.media_dir().join(dir))
}

fn walk(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| entries.flatten().map(|e| if e.path().is_dir() { walk(&e.path()) } else { 1 }).sum())
        .unwrap_or(0)
}

/// Waits until nothing is stored under `dir` (a cancelled render's worker
/// may still be cleaning up what it wrote).
async fn until_empty(app: &TestApp, dir: &str) {
    let start = Instant::now();
    while files_under(app, dir) > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "{dir} still holds {} files",
            files_under(app, dir)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn n(app: &TestApp, sql: &str) -> i64 {
    scalar_i64(&mut *app.conn().await, sql).await
}

fn core(app: &TestApp) -> mage_domain::core::Core {
    mage_domain::core::Core::new(app.pool.clone(), app.redis.redis(), app.queues.clone(), app.storage.clone())
}

async fn today(app: &TestApp) -> mage_domain::stats::DailyStats {
    let day = chrono::Utc::now().date_naive();
    mage_domain::stats::compute_day(&mut *app.conn().await, day, "UTC").await.expect("stats")
}

/// A small PNG made by ffmpeg.
async fn png() -> Vec<u8> {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("p.png");
    let out = tokio::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-f", "lavfi", "-i"])
        .args(["testsrc2=s=320x240", "-frames:v", "1"])
        .arg(&path)
        .output()
        .await
        .expect("ffmpeg runs");
    assert!(out.status.success(), "ffmpeg: {}", String::from_utf8_lossy(&out.stderr));
    std::fs::read(path).expect("png")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_finished_generation_loses_its_media_and_leaves_every_query_but_keeps_its_ledger() {
    let app = TestApp::start().await;
    let workers = app.start_workers().await;
    let (token, user_id) = app.register("done@example.com").await;
    let id = create(&app, &token, image()).await;
    let kept = create(&app, &token, image()).await;
    for g in [&id, &kept] {
        wait_for(&app, &token, g, Duration::from_secs(60), |g| g["status"] == "SUCCEEDED").await;
    }
    drop(workers);
    let folder = format!("generations/{id}");
    assert!(files_under(&app, &folder) > 0, "the output is stored");
    let entries = format!("SELECT count(*) AS n FROM credit_entries WHERE user_id = '{user_id}'");
    let ledger = n(&app, &entries).await;
    let charged = credits(&app, &token).await;
    let stats = today(&app).await;

    // Someone else cannot delete it: it does not exist for them.
    let (other, _) = app.register("other@example.com").await;
    let res = app.gql(DELETE_GENERATION, json!({ "id": id }), Some(&other)).await;
    assert_eq!(code(&res), "NOT_FOUND", "{res}");

    let res = app.gql(DELETE_GENERATION, json!({ "id": id }), Some(&token)).await;
    assert_eq!(res["data"]["deleteGeneration"]["status"], "SUCCEEDED", "{res}");
    assert_eq!(files_under(&app, &folder), 0, "its media are gone from storage");
    assert!(files_under(&app, &format!("generations/{kept}")) > 0, "the other one's are not");

    // Gone from every query and subscription, and deleting again is NOT_FOUND.
    assert_eq!(code(&app.gql(GET, json!({ "id": id }), Some(&token)).await), "NOT_FOUND");
    let list = app.gql("{ generations(first: 10) { edges { node { id } } } }", json!({}), Some(&token)).await;
    assert_eq!(list["data"]["generations"]["edges"], json!([{ "node": { "id": kept } }]), "{list}");
    let again = app.gql(DELETE_GENERATION, json!({ "id": id }), Some(&token)).await;
    assert_eq!(code(&again), "NOT_FOUND", "{again}");
    let retry =
        app.gql("mutation($id: ID!) { retryGeneration(id: $id) { id } }", json!({ "id": id }), Some(&token));
    assert_eq!(code(&retry.await), "NOT_FOUND");
    let mut socket = ws::connect_signed_in(app.addr, Some(&token)).await;
    ws::subscribe(
        &mut socket,
        "g",
        "subscription($id: ID!) { generationUpdated(id: $id) { id } }",
        json!({ "id": id }),
    )
    .await;
    let refused = ws::recv(&mut socket).await.expect("an answer");
    assert_eq!(refused["payload"]["errors"][0]["extensions"]["code"], "NOT_FOUND", "{refused}");

    // What it cost stays charged, its ledger entries stay, statistics count it.
    assert_eq!(credits(&app, &token).await, charged);
    assert_eq!(n(&app, &entries).await, ledger);
    let after = today(&app).await;
    assert_eq!(
        (after.generations_created, after.generations_succeeded),
        (stats.generations_created, stats.generations_succeeded)
    );
    let marked = format!(
        "SELECT count(*) AS n FROM generations WHERE id = '{id}' AND deleted_at IS NOT NULL AND media_expired_at IS NOT NULL"
    );
    assert_eq!(n(&app, &marked).await, 1, "kept as a row, its media marked purged");
    // Nothing is left for the sweeper.
    assert_eq!(mage_jobs::finish_deletions_once(&core(&app), Duration::ZERO).await.expect("sweep"), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_queued_or_running_generation_gives_its_credits_back() {
    slow_renders();
    let app = TestApp::start().await;
    let (token, _) = app.register("busy@example.com").await;

    // Queued (no worker yet).
    let queued = create(&app, &token, video(5)).await;
    assert_ne!(credits(&app, &token).await, (100, 0));
    let res = app.gql(DELETE_GENERATION, json!({ "id": queued }), Some(&token)).await;
    assert_eq!(res["data"]["deleteGeneration"]["status"], "CANCELED", "{res}");
    assert_eq!(credits(&app, &token).await, (100, 0));

    // Running.
    let _workers = app.start_workers().await;
    let id = create(&app, &token, video(10)).await;
    wait_for(&app, &token, &id, Duration::from_secs(30), running).await;
    let res = app.gql(DELETE_GENERATION, json!({ "id": id }), Some(&token)).await;
    assert_eq!(res["data"]["deleteGeneration"]["status"], "CANCELED", "{res}");
    assert_eq!(credits(&app, &token).await, (100, 0), "the hold is released");
    assert_eq!(code(&app.gql(GET, json!({ "id": id }), Some(&token)).await), "NOT_FOUND");
    // The worker stops and nothing of it stays; the sweeper, after its
    // grace, deletes anything a worker wrote late and marks it done.
    until_empty(&app, &format!("generations/{id}")).await;
    let n_done = mage_jobs::finish_deletions_once(&core(&app), Duration::ZERO).await.expect("sweep");
    assert_eq!(n_done, 2, "both cancelled ones were left to the sweeper's second look");
    assert_eq!(mage_jobs::finish_deletions_once(&core(&app), Duration::ZERO).await.expect("sweep"), 0);
    assert_eq!(n(&app, "SELECT count(*) AS n FROM credit_holds WHERE status = 'open'").await, 0);
}

/// An app talking to a fake Stripe that knows the user's subscription.
async fn app_with_stripe() -> (TestApp, FakeStripe) {
    let stripe = FakeStripe::start().await;
    let base = stripe.url();
    let app = TestApp::start_with(|s| {
        s.payments = PaymentSettings {
            stripe_secret_key: Some("sk_test_mage".into()),
            stripe_api_base: Some(base),
            stripe_timeout: Duration::from_secs(2),
            ..PaymentSettings::development()
        };
    })
    .await;
    (app, stripe)
}

async fn subscribe_to_basic(app: &TestApp, stripe: &FakeStripe, user_id: &str, sub: &str) {
    stripe.add_subscription(sub, "price_mage_basic_monthly");
    app.sql(&format!(
        "INSERT INTO subscriptions (id, user_id, product_id, status, current_period_end) \
         VALUES ('{sub}', '{user_id}', 'basic', 'active', now() + interval '30 days')"
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_an_account_releases_holds_empties_storage_ends_renewals_and_frees_the_email() {
    slow_renders();
    let (app, stripe) = app_with_stripe().await;
    let _workers = app.start_workers().await;
    let (token, user_id) = app.register("leaving@example.com").await;
    subscribe_to_basic(&app, &stripe, &user_id, "sub_leaving").await;
    let asset = crate::ingest::upload(&app, &token, "p.png", "image/png", png().await).await;
    assert_eq!(crate::ingest::settled(&app, &token, &asset).await["status"], "READY");
    let done = create(&app, &token, image()).await;
    wait_for(&app, &token, &done, Duration::from_secs(60), |g| g["status"] == "SUCCEEDED").await;
    let active = create(&app, &token, video(10)).await;
    wait_for(&app, &token, &active, Duration::from_secs(30), running).await;
    assert!(files_under(&app, &format!("generations/{done}")) > 0 && files_under(&app, "assets") > 0);
    let (balance, held) = credits(&app, &token).await;
    assert!(held > 0);
    let ledger = n(&app, "SELECT count(*) AS n FROM credit_entries").await;

    // A wrong password changes nothing.
    let res = app.gql(DELETE_ACCOUNT, json!({ "p": "not my password" }), Some(&token)).await;
    assert_eq!(code(&res), "BAD_USER_INPUT", "{res}");
    assert_eq!(credits(&app, &token).await, (balance, held));
    assert_eq!(n(&app, "SELECT count(*) AS n FROM users WHERE email = 'leaving@example.com'").await, 1);
    assert_eq!(n(&app, "SELECT count(*) AS n FROM generations WHERE deleted_at IS NOT NULL").await, 0);
    assert!(stripe.requests().is_empty(), "Stripe was not asked");
    assert!(files_under(&app, &format!("generations/{done}")) > 0 && files_under(&app, "assets") > 0);

    let res = app.gql(DELETE_ACCOUNT, json!({ "p": PASSWORD }), Some(&token)).await;
    assert_eq!(res["data"]["deleteAccount"], true, "{res}");

    // The hold is released and the ledger kept: held back to 0, nothing
    // taken, no entry removed (TestApp audits the invariants when dropped).
    let account = format!("SELECT balance AS n FROM credit_accounts WHERE user_id = '{user_id}'");
    assert_eq!(n(&app, &account).await, balance + held);
    let held_now = format!("SELECT held AS n FROM credit_accounts WHERE user_id = '{user_id}'");
    assert_eq!(n(&app, &held_now).await, 0);
    assert!(n(&app, "SELECT count(*) AS n FROM credit_entries").await > ledger, "a release was added");
    let statuses = format!(
        "SELECT count(*) AS n FROM generations WHERE user_id = '{user_id}' AND deleted_at IS NOT NULL \
         AND status IN ('succeeded', 'canceled')"
    );
    assert_eq!(n(&app, &statuses).await, 2);

    // Media and uploads are gone from storage, and the quota is free.
    assert_eq!(files_under(&app, &format!("generations/{done}")), 0);
    assert_eq!(files_under(&app, "assets") + files_under(&app, "uploads"), 0);
    until_empty(&app, &format!("generations/{active}")).await;
    let used = format!("SELECT storage_used_bytes AS n FROM users WHERE id = '{user_id}'");
    assert_eq!(n(&app, &used).await, 0);

    // Stripe will not renew the subscription.
    let sub = stripe.subscription("sub_leaving").expect("subscription");
    assert_eq!(sub["cancel_at_period_end"], true, "{sub}");
    let sent: Vec<_> =
        stripe.requests().into_iter().filter(|r| r.path == "/v1/subscriptions/sub_leaving").collect();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].params.get("cancel_at_period_end").map(String::as_str), Some("true"));
    assert!(sent[0].idempotency_key.is_some());

    // Every session and API key ended; the email is scrubbed and free.
    let live =
        format!("SELECT count(*) AS n FROM sessions WHERE user_id = '{user_id}' AND revoked_at IS NULL");
    assert_eq!(n(&app, &live).await, 0);
    let keys =
        format!("SELECT count(*) AS n FROM api_keys WHERE user_id = '{user_id}' AND revoked_at IS NULL");
    assert_eq!(n(&app, &keys).await, 0);
    let login =
        app.gql(crate::support::LOGIN, json!({ "e": "leaving@example.com", "p": PASSWORD }), None).await;
    assert_eq!(code(&login), "UNAUTHENTICATED", "{login}");
    let (again, new_id) = app.register("leaving@example.com").await;
    assert_ne!(new_id, user_id);
    assert_eq!(credits(&app, &again).await, (100, 0), "a new account, with its own signup bonus");
    let orders = format!("SELECT count(*) AS n FROM subscriptions WHERE user_id = '{user_id}'");
    assert_eq!(n(&app, &orders).await, 1, "subscriptions stay with the anonymised account");

    // Admins see it as deleted.
    let (admin, _) = app.register("boss@example.com").await;
    mage_domain::users::set_role(&app.pool, "boss@example.com", mage_domain::users::Role::Admin)
        .await
        .expect("promote");
    let users = app
        .gql(
            "{ users(search: \"deleted.invalid\", first: 10) { edges { node { id email deleted deletedAt } } } }",
            json!({}),
            Some(&admin),
        )
        .await;
    let node = &users["data"]["users"]["edges"][0]["node"];
    assert_eq!(node["id"], user_id.as_str(), "{users}");
    assert_eq!(node["email"], format!("deleted+{user_id}@deleted.invalid"));
    assert_eq!(node["deleted"], true);
    assert!(node["deletedAt"].is_string(), "{users}");

    // Nothing is left for the sweeper but the cancelled render's second look.
    assert_eq!(mage_jobs::finish_deletions_once(&core(&app), Duration::ZERO).await.expect("sweep"), 1);
    assert_eq!(mage_jobs::finish_deletions_once(&core(&app), Duration::ZERO).await.expect("sweep"), 0);
}

/// An API key can never delete the account; once the account holder does,
/// their session and every key stop working (this instance knows at once,
/// the others through their poll of revocations).
#[tokio::test(flavor = "multi_thread")]
async fn only_a_session_deletes_an_account_and_then_its_tokens_and_keys_stop_working() {
    let app = TestApp::start().await;
    let (token, _) = app.register("token@example.com").await;
    let res = app
        .gql(
            "mutation($s: [ApiKeyScope!]!) { createApiKey(name: \"ci\", scopes: $s) { secret } }",
            json!({ "s": ["READ", "GENERATE", "BILLING"] }),
            Some(&token),
        )
        .await;
    let key = res["data"]["createApiKey"]["secret"].as_str().unwrap_or_else(|| panic!("{res}")).to_owned();
    let refused = app.gql(DELETE_ACCOUNT, json!({ "p": PASSWORD }), Some(&key)).await;
    assert_eq!(code(&refused), "FORBIDDEN", "{refused}");
    assert_eq!(n(&app, "SELECT count(*) AS n FROM users WHERE deleted_at IS NOT NULL").await, 0);

    let res = app.gql(DELETE_ACCOUNT, json!({ "p": PASSWORD }), Some(&token)).await;
    assert_eq!(res["data"]["deleteAccount"], true, "{res}");
    let start = Instant::now();
    for credential in [&token, &key] {
        loop {
            let me = app.gql("{ me { id } }", json!({}), Some(credential)).await;
            if me.get("errors").is_some() && code(&me) == "UNAUTHENTICATED" {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(2), "the credential still works: {me}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_concurrent_deletions_of_one_account_leave_one_consistent_result() {
    let (app, stripe) = app_with_stripe().await;
    let (token, user_id) = app.register("twice@example.com").await;
    subscribe_to_basic(&app, &stripe, &user_id, "sub_twice").await;
    let queued = create(&app, &token, video(5)).await;

    let results = app.gql_concurrently(2, DELETE_ACCOUNT, |_| json!({ "p": PASSWORD }), Some(&token)).await;
    let ok = results.iter().filter(|r| r["data"]["deleteAccount"] == true).count();
    assert!(ok >= 1, "{results:?}");
    for r in &results {
        assert!(r["data"]["deleteAccount"] == true || code(r) == "UNAUTHENTICATED", "{r}");
    }

    let user = format!(
        "SELECT count(*) AS n FROM users WHERE id = '{user_id}' AND deleted_at IS NOT NULL \
         AND email = 'deleted+{user_id}@deleted.invalid'"
    );
    assert_eq!(n(&app, &user).await, 1);
    let g = format!(
        "SELECT count(*) AS n FROM generations WHERE id = '{queued}' AND status = 'canceled' AND deleted_at IS NOT NULL"
    );
    assert_eq!(n(&app, &g).await, 1);
    let releases =
        format!("SELECT count(*) AS n FROM credit_entries WHERE user_id = '{user_id}' AND kind = 'release'");
    assert_eq!(n(&app, &releases).await, 1, "the hold was released once");
    let held = format!("SELECT held AS n FROM credit_accounts WHERE user_id = '{user_id}'");
    assert_eq!(n(&app, &held).await, 0);
    assert_eq!(stripe.subscription("sub_twice").expect("sub")["cancel_at_period_end"], true);
    assert_eq!(mage_jobs::finish_deletions_once(&core(&app), Duration::ZERO).await.expect("sweep"), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sweeper_finishes_deletions_a_crash_or_a_racing_request_left() {
    let app = TestApp::start().await;
    let workers = app.start_workers().await;
    let (token, _) = app.register("crash@example.com").await;
    let id = create(&app, &token, image()).await;
    wait_for(&app, &token, &id, Duration::from_secs(60), |g| g["status"] == "SUCCEEDED").await;
    drop(workers);
    // The deletion committed, then the process died before storage.
    app.sql(&format!(
        "UPDATE generations SET deleted_at = now(), finished_at = now() - interval '1 hour' WHERE id = '{id}'"
    ))
    .await;
    assert!(files_under(&app, &format!("generations/{id}")) > 0);
    let grace = Duration::from_secs(600);
    assert_eq!(mage_jobs::finish_deletions_once(&core(&app), grace).await.expect("sweep"), 1);
    assert_eq!(files_under(&app, &format!("generations/{id}")), 0);
    assert_eq!(mage_jobs::finish_deletions_once(&core(&app), grace).await.expect("sweep"), 0);

    // A generation created by a request racing the account's deletion (it
    // committed after the deletion's transaction): cancelled, released,
    // deleted, and its session ended.
    let (late, late_user) = app.register("late@example.com").await;
    let stray = create(&app, &late, video(5)).await;
    app.sql(&format!(
        "UPDATE users SET deleted_at = now(), email = 'deleted+{late_user}@deleted.invalid' WHERE id = '{late_user}'"
    ))
    .await;
    assert!(mage_jobs::finish_deletions_once(&core(&app), grace).await.expect("sweep") >= 1);
    let g = format!(
        "SELECT count(*) AS n FROM generations WHERE id = '{stray}' AND status = 'canceled' AND deleted_at IS NOT NULL"
    );
    assert_eq!(n(&app, &g).await, 1);
    let held = format!("SELECT held AS n FROM credit_accounts WHERE user_id = '{late_user}'");
    assert_eq!(n(&app, &held).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn when_stripe_cannot_be_reached_nothing_is_deleted_and_a_retry_completes() {
    let (app, stripe) = app_with_stripe().await;
    let (token, user_id) = app.register("outage@example.com").await;
    subscribe_to_basic(&app, &stripe, &user_id, "sub_outage").await;
    let queued = create(&app, &token, video(5)).await;
    stripe.set_mode(mage_fakes::stripe::Mode::Down);
    let res = app.gql(DELETE_ACCOUNT, json!({ "p": PASSWORD }), Some(&token)).await;
    assert_eq!(code(&res), "PAYMENT_PROVIDER_ERROR", "{res}");
    assert_eq!(n(&app, "SELECT count(*) AS n FROM users WHERE deleted_at IS NOT NULL").await, 0);
    let g = app.gql(GET, json!({ "id": queued }), Some(&token)).await;
    assert_eq!(g["data"]["generation"]["status"], "QUEUED", "untouched: {g}");
    assert_eq!(credits(&app, &token).await.1, 10, "still held");

    stripe.set_mode(mage_fakes::stripe::Mode::Normal);
    let res = app.gql(DELETE_ACCOUNT, json!({ "p": PASSWORD }), Some(&token)).await;
    assert_eq!(res["data"]["deleteAccount"], true, "{res}");
    assert_eq!(stripe.subscription("sub_outage").expect("sub")["cancel_at_period_end"], true);
}
