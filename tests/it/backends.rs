//! A backend per model, end to end: an admin puts a model on Replicate
//! through `createModel`, users' generations on it render on the fake
//! Replicate (`fakes/src/replicate.rs`) through its own `render:replicate`
//! queue beside the synthetic backend's, with real PostgreSQL and Redis, the
//! API receiving Replicate's signed webhooks.

use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use mage_domain::backends::{Backends, ReplicateSettings};
use mage_domain::catalog::BackendKind;
use mage_fakes::replicate::{FakeReplicate, sign};
use mage_jobs::settings::WorkerSettings;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::recovery::{create, ledger, make_admin, open_holds, row, wait_row, wait_status};
use crate::support::{TestApp, code};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const WITHIN: Duration = Duration::from_secs(90);
const CREATE_MODEL: &str =
    "mutation($id: String!, $i: ModelInput!) { createModel(id: $id, input: $i) { id } }";
const QUOTE: &str = "query($i: CreateGenerationInput!) { quote(input: $i) }";
const GENERATION: &str = "query($id: ID!) { generation(id: $id) { status progress stage cost error
    queuePosition output { hlsUrl videoUrl } } }";

fn workflows() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("workflows/replicate")
}

/// Synthetic and Replicate; the API side knows no token.
fn backends(fake: &FakeReplicate, token: Option<&str>) -> Backends {
    Backends {
        offered: vec![BackendKind::Synthetic, BackendKind::Replicate],
        comfyui: None,
        replicate: Some(ReplicateSettings {
            api_base: fake.url(),
            token: token.map(str::to_owned),
            webhook_secret: Some(SECRET.into()),
            webhooks: true,
            workflows: workflows(),
        }),
    }
}

async fn fake() -> FakeReplicate {
    let fake = FakeReplicate::start(SECRET).await;
    fake.set_run_time(Duration::from_millis(2500));
    fake.set_steps(10);
    fake
}

async fn app(fake: &FakeReplicate) -> TestApp {
    let b = backends(fake, None);
    TestApp::start_with(move |s| {
        s.backends = b;
        s.replicate_webhook_secret = Some(SECRET.into());
        s.signup_credits = 1000;
    })
    .await
}

/// In-process workers on both backends, webhooks to this API.
fn on_replicate(app: &TestApp, fake: &FakeReplicate) -> impl FnOnce(&mut WorkerSettings) {
    let (b, public) = (backends(fake, Some(fake.token())), app.url(""));
    move |s| {
        s.backends = b;
        s.public_url = Some(public.trim_end_matches('/').to_owned());
        s.retry_backoff = Duration::from_secs(1);
    }
}

/// The admin's Replicate video model on the shipped `text-to-video`
/// template: 5 credits + 2 a second at 480p.
async fn replicate_model(app: &TestApp, admin: &str, id: &str, workflow: &str, inputs: Value) {
    let input = json!({
        "name": "Wan on Replicate", "kind": "VIDEO", "backend": "REPLICATE", "workflow": workflow,
        "inputs": inputs, "prices": [{ "resolution": "R480P", "credits": 5, "creditsPerSecond": 2 }],
        "maxDurationSeconds": 5, "defaultDurationSeconds": 2, "fps": 16,
    });
    let res = app.gql(CREATE_MODEL, json!({ "id": id, "i": input }), Some(admin)).await;
    assert_eq!(res["data"]["createModel"]["id"], id, "{res}");
}

fn on(model: &str, prompt: &str) -> Value {
    json!({ "model": model, "prompt": prompt, "resolution": "R480P", "durationSeconds": 2 })
}

async fn generation(app: &TestApp, token: &str, id: Uuid) -> Value {
    let res = app.gql(GENERATION, json!({ "id": id }), Some(token)).await;
    res["data"]["generation"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replicate_model_renders_beside_a_synthetic_one_charged_its_quote() {
    let fake = fake().await;
    let app = app(&fake).await;
    let _workers = app.start_workers_with(on_replicate(&app, &fake)).await;
    let admin = make_admin(&app, "ops@example.com").await;
    replicate_model(&app, &admin, "wan-fast", "text-to-video", json!([])).await;
    let (token, _) = app.register("maker@example.com").await;

    let wan = on("wan-fast", "a heron lifting off a misty lake");
    let q = app.gql(QUOTE, json!({ "i": wan }), Some(&token)).await;
    assert_eq!(q["data"]["quote"], 5 + 2 * 2, "{q}");
    let on_replicate = create(&app, &token, wan).await;
    let on_synthetic = create(&app, &token, on("synth-video", "the same heron, drawn by ffmpeg")).await;

    // Progress rises from the tqdm lines of the prediction's logs.
    let mut seen = Vec::new();
    let start = Instant::now();
    loop {
        let g = generation(&app, &token, on_replicate).await;
        let p = g["progress"].as_i64().unwrap_or(0);
        if g["status"] == "RENDERING" && p > 0 && p < 100 && seen.last() != Some(&p) {
            seen.push(p);
        }
        if g["status"] == "SUCCEEDED" {
            assert_eq!(g["cost"], 9, "{g}");
            assert!(g["output"]["hlsUrl"].as_str().is_some_and(|u| u.ends_with(".m3u8")), "{g}");
            break;
        }
        assert!(start.elapsed() < WITHIN && g["status"] != "FAILED", "{g}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!seen.is_empty(), "no progress between 0 and 100 was seen");
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "progress went backwards: {seen:?}");
    wait_status(&app, on_synthetic, "succeeded", WITHIN).await;
    assert_eq!(ledger(&app, on_replicate).await, ["capture", "hold"]);
    assert_eq!(ledger(&app, on_synthetic).await, ["capture", "hold"]);
    assert_eq!(open_holds(&app).await, 0);
    let res = app.gql("{ me { credits { balance } } }", json!({}), Some(&token)).await;
    let synth_cost = generation(&app, &token, on_synthetic).await["cost"].as_i64().expect("cost");
    assert_eq!(res["data"]["me"]["credits"]["balance"], 1000 - 9 - synth_cost, "{res}");

    // The fake got the template's input, one prediction, with a deadline
    // and a webhook naming the generation.
    let creates = fake.create_requests();
    assert_eq!(creates.len(), 1, "one prediction");
    let sent = &creates[0];
    assert!(sent.path.ends_with("/v1/models/wan-video/wan-2.2-t2v-fast/predictions"), "{}", sent.path);
    assert_eq!(sent.body["input"]["prompt"], "a heron lifting off a misty lake");
    assert_eq!(sent.body["input"]["frames_per_second"], 16);
    assert_eq!(sent.body["input"]["resolution"], "480p");
    assert!(sent.headers.contains_key("cancel-after"), "{:?}", sent.headers);
    let hook = sent.body["webhook"].as_str().unwrap_or_default();
    assert!(hook.contains(&on_replicate.to_string()) && hook.contains("/webhooks/replicate"), "{hook}");
    assert_eq!(sent.body["webhook_events_filter"], json!(["start", "output", "logs", "completed"]));

    // Each generation waited in its backend's queue.
    let r = row(&app, on_replicate).await;
    assert_eq!(r.backend_job_id.as_deref(), fake.predictions()[0]["id"].as_str(), "prediction id recorded");
    let kinds = [backend_of(&app, on_replicate).await, backend_of(&app, on_synthetic).await];
    assert_eq!(kinds, ["replicate", "synthetic"]);

    // A late, replayed or out-of-order event changes nothing.
    let before = generation(&app, &token, on_replicate).await;
    let mut stale = fake.predictions()[0].clone();
    stale["status"] = json!("processing");
    stale["output"] = Value::Null;
    let body = stale.to_string();
    let now = chrono::Utc::now().timestamp();
    let http = reqwest::Client::new();
    for _ in 0..2 {
        let res = http
            .post(hook)
            .header("webhook-id", "msg_late_one")
            .header("webhook-timestamp", now.to_string())
            .header("webhook-signature", sign(SECRET, "msg_late_one", now, body.as_bytes()))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .expect("late webhook");
        assert_eq!(res.status(), 200);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(generation(&app, &token, on_replicate).await, before);
    assert_eq!(ledger(&app, on_replicate).await, ["capture", "hold"]);
}

async fn backend_of(app: &TestApp, id: Uuid) -> String {
    use diesel_async::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct B {
        #[diesel(sql_type = diesel::sql_types::Text)]
        backend: String,
    }
    let b: B = diesel::sql_query("SELECT backend FROM generations WHERE id = $1")
        .bind::<diesel::sql_types::Uuid, _>(id)
        .get_result(&mut *app.conn().await)
        .await
        .expect("backend");
    b.backend
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_every_webhook_dropped_a_generation_still_finishes_by_polling() {
    let fake = fake().await;
    fake.drop_webhooks(true);
    let app = app(&fake).await;
    let tweak = on_replicate(&app, &fake);
    let _workers = app
        .start_workers_with(|s| {
            tweak(s);
            s.replicate_quiet_poll = Duration::from_secs(1);
        })
        .await;
    let admin = make_admin(&app, "ops@example.com").await;
    replicate_model(&app, &admin, "wan-fast", "text-to-video", json!([])).await;
    let (token, _) = app.register("quiet@example.com").await;
    let id = create(&app, &token, on("wan-fast", "no news is good news")).await;
    wait_status(&app, id, "succeeded", WITHIN).await;
    assert!(fake.webhooks_dropped() > 0, "webhooks were dropped");
    assert_eq!(ledger(&app, id).await, ["capture", "hold"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_reaches_the_prediction_and_a_failed_one_gives_the_credits_back() {
    let fake = fake().await;
    fake.set_run_time(Duration::from_secs(20));
    fake.fail_when_prompt_contains("forbidden fruit", "NSFW content detected. Try a different prompt.");
    let app = app(&fake).await;
    let _workers = app.start_workers_with(on_replicate(&app, &fake)).await;
    let admin = make_admin(&app, "ops@example.com").await;
    replicate_model(&app, &admin, "wan-fast", "text-to-video", json!([])).await;
    let (token, _) = app.register("canceler@example.com").await;

    let id = create(&app, &token, on("wan-fast", "a very long take")).await;
    let r = wait_row(&app, id, WITHIN, |r| r.backend_job_id.as_deref().is_some_and(|j| j.len() < 36)).await;
    let prediction = r.backend_job_id.expect("prediction id");
    let res = app
        .gql("mutation($id: ID!) { cancelGeneration(id: $id) { status } }", json!({ "id": id }), Some(&token))
        .await;
    assert_eq!(res["data"]["cancelGeneration"]["status"], "CANCELED", "{res}");
    let start = Instant::now();
    while !fake.cancels().contains(&prediction) {
        assert!(start.elapsed() < WITHIN, "the cancel never reached Replicate: {:?}", fake.cancels());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ledger(&app, id).await, ["hold", "release"]);

    fake.set_run_time(Duration::from_millis(800));
    let id = create(&app, &token, on("wan-fast", "forbidden fruit")).await;
    let r = wait_status(&app, id, "failed", WITHIN).await;
    assert_eq!(r.error.as_deref(), Some("NSFW content detected. Try a different prompt."), "{r:?}");
    assert_eq!(ledger(&app, id).await, ["hold", "release"]);
    assert_eq!(open_holds(&app).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_token_makes_the_backend_unhealthy_and_jobs_wait_without_using_attempts() {
    let fake = fake().await;
    fake.set_run_time(Duration::from_millis(800));
    let app = app(&fake).await;
    let _workers = app.start_workers_with(on_replicate(&app, &fake)).await;
    let admin = make_admin(&app, "ops@example.com").await;
    replicate_model(&app, &admin, "wan-fast", "text-to-video", json!([])).await;
    let (token, _) = app.register("patient@example.com").await;
    fake.set_token("r8_revoked_elsewhere");

    let id = create(&app, &token, on("wan-fast", "waiting for a key")).await;
    let backends = "{ queue { backends { kind healthy detail } } }";
    let start = Instant::now();
    loop {
        let res = app.gql(backends, json!({}), Some(&admin)).await;
        let all = res["data"]["queue"]["backends"].as_array().cloned().unwrap_or_default();
        if all.iter().any(|b| b["kind"] == "replicate" && b["healthy"] == false) {
            break;
        }
        assert!(start.elapsed() < WITHIN, "replicate never reported unhealthy: {res}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let r = row(&app, id).await;
    assert_eq!((r.status.as_str(), r.attempts), ("queued", 0), "{r:?}");
    assert!(fake.predictions().is_empty());

    fake.set_token(mage_fakes::replicate::DEFAULT_TOKEN);
    let r = wait_status(&app, id, "succeeded", WITHIN).await;
    assert_eq!(r.attempts, 1, "{r:?}");
    assert_eq!(ledger(&app, id).await, ["capture", "hold"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_image_to_video_model_gets_the_users_photo_through_the_files_api() {
    let fake = fake().await;
    fake.set_run_time(Duration::from_millis(800));
    let app = app(&fake).await;
    let _workers = app.start_workers_with(on_replicate(&app, &fake)).await;
    let admin = make_admin(&app, "ops@example.com").await;
    replicate_model(&app, &admin, "wan-i2v", "image-to-video", json!(["IMAGE"])).await;
    let (token, _) = app.register("photographer@example.com").await;
    let dir = tempfile::tempdir().expect("dir");
    let photo = crate::inputs::make_photo(dir.path()).await;
    let asset = crate::ingest::upload(&app, &token, "bars.jpg", "image/jpeg", photo).await;
    let ready = crate::ingest::settled(&app, &token, &asset).await;
    assert_eq!(ready["status"], "READY", "{ready}");

    let mut input = on("wan-i2v", "the bars start to sway");
    input["inputs"] = json!([asset]);
    let id = create(&app, &token, input).await;
    wait_status(&app, id, "succeeded", WITHIN).await;
    let files = fake.files();
    assert_eq!(files.len(), 1, "the photo went up through the Files API");
    assert!(files[0].content_type.starts_with("image/"), "{}", files[0].content_type);
    let sent = &fake.create_requests()[0].body;
    assert_eq!(
        sent["input"]["image"].as_str(),
        Some(format!("{}/v1/files/{}", fake.url(), files[0].id).as_str())
    );
}

/// A real `mage work` on the Replicate queue alone.
fn work_process(app: &TestApp, fake: &FakeReplicate) -> Child {
    let mut cmd = app.mage("work");
    cmd.env("MAGE_RENDER_BACKENDS", "synthetic,replicate")
        .env("MAGE_QUEUES", "render:replicate,transcode")
        .env("MAGE_REPLICATE_API_BASE", fake.url())
        .env("MAGE_REPLICATE_API_TOKEN", fake.token())
        .env("MAGE_REPLICATE_WEBHOOK_SECRET", SECRET)
        .env("MAGE_REPLICATE_WORKFLOWS", workflows())
        .env("MAGE_PUBLIC_URL", app.url("").trim_end_matches('/'))
        .env("MAGE_LOG", "info,mage_jobs=debug");
    cmd.spawn().expect("mage work")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_after_the_prediction_was_created_leaves_one_prediction_and_one_capture() {
    let fake = fake().await;
    fake.set_run_time(Duration::from_secs(6));
    let app = app(&fake).await;
    let admin = make_admin(&app, "ops@example.com").await;
    replicate_model(&app, &admin, "wan-fast", "text-to-video", json!([])).await;
    let (token, _) = app.register("crash@example.com").await;
    let mut first = work_process(&app, &fake);
    let id = create(&app, &token, on("wan-fast", "survive a crash")).await;
    let start = Instant::now();
    while fake.predictions().is_empty() {
        assert!(start.elapsed() < WITHIN, "no prediction was created");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill().expect("kill -9");
    let _ = first.wait();

    let mut second = work_process(&app, &fake);
    let r = wait_status(&app, id, "succeeded", Duration::from_secs(180)).await;
    let _ = second.kill();
    let _ = second.wait();
    assert_eq!(fake.predictions().len(), 1, "the takeover found the prediction instead of starting another");
    assert_eq!(r.backend_job_id.as_deref(), fake.predictions()[0]["id"].as_str());
    assert_eq!(ledger(&app, id).await, ["capture", "hold"]);
    assert_eq!(open_holds(&app).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_model_on_a_backend_the_deployment_does_not_run_is_not_offered() {
    let app = TestApp::start().await;
    app.sql("UPDATE render_models SET backend = 'replicate' WHERE id = 'synth-image'").await;
    let (token, _) = app.register("picky@example.com").await;
    let res = app.gql("{ models { id } }", json!({}), Some(&token)).await;
    let ids: Vec<&str> =
        res["data"]["models"].as_array().expect("models").iter().filter_map(|m| m["id"].as_str()).collect();
    assert!(ids.contains(&"synth-video") && !ids.contains(&"synth-image"), "{ids:?}");
    let input = json!({ "model": "synth-image", "prompt": "p", "resolution": "R480P" });
    for q in [QUOTE, "mutation($i: CreateGenerationInput!) { createGeneration(input: $i) { id } }"] {
        let res = app.gql(q, json!({ "i": input }), Some(&token)).await;
        assert_eq!(code(&res), "BAD_USER_INPUT", "{res}");
        assert!(
            res["errors"][0]["message"].as_str().is_some_and(|m| m.contains("model unavailable")),
            "{res}"
        );
    }
    assert_eq!(app.count("generations").await, 0);
}
