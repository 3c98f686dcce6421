//! GPU renders on ComfyUI and recovery from faults, end to end: real
//! PostgreSQL, Redis and ffmpeg, Mage's workers (in this process or as real
//! `mage work` processes) and fake ComfyUI servers speaking ComfyUI's HTTP
//! and WebSocket protocol (`fakes/src/comfyui.rs`).
//!
//! The fault tests print how long recovery took (`--no-capture` shows it).

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::support::process::{Child, free_port};
use crate::support::{TestApp, code};
use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Int4, Nullable, Text};
use diesel_async::RunQueryDsl;
use mage_domain::backends::{Backends, ComfySettings};
use mage_domain::catalog::BackendKind;
use mage_domain::limits::GenerationLimits;
use mage_domain::testing::TestRedis;
use mage_fakes::comfyui::{FakeComfy, Health};
use mage_jobs::settings::WorkerSettings;
use serde_json::{Value, json};
use uuid::Uuid;

const CREATE: &str = "mutation($i: CreateGenerationInput!) { createGeneration(input: $i) { id status } }";
const CANCEL: &str = "mutation($id: ID!) { cancelGeneration(id: $id) { id status } }";

fn workflows() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("workflows/comfyui")
}

fn video(prompt: &str) -> Value {
    json!({ "model": "synth-video", "prompt": prompt, "resolution": "R480P", "durationSeconds": 1 })
}

/// The ComfyUI backend alone, on `urls` (none for the API).
fn comfy(urls: Vec<String>) -> Backends {
    Backends {
        offered: vec![BackendKind::ComfyUi],
        comfyui: Some(ComfySettings { urls, workflows: workflows() }),
        replicate: None,
    }
}

/// An API whose users may queue many generations at once, every model
/// rendering on ComfyUI.
async fn app_on(redis: TestRedis) -> TestApp {
    let app = TestApp::start_on(redis, |s| {
        s.generation_limits = GenerationLimits { per_minute: 1000, active: 1000 };
        s.signup_credits = 1000;
        s.backends = comfy(Vec::new());
    })
    .await;
    app.sql("UPDATE render_models SET backend = 'comfyui'").await;
    app
}

async fn app() -> TestApp {
    app_on(TestRedis::new()).await
}

/// In-process workers rendering on the given fakes, one slot each.
fn on_comfy(fakes: &[&FakeComfy]) -> impl FnOnce(&mut WorkerSettings) {
    let urls: Vec<String> = fakes.iter().map(|f| f.url()).collect();
    move |s| {
        s.backends = comfy(urls);
        s.render_concurrency = Some(1);
        s.transcode_concurrency = 2;
        s.retry_backoff = Duration::from_secs(1);
        s.sweep_interval = Duration::from_secs(2);
    }
}

/// A real `mage work` process on the given fake.
fn work_process(app: &TestApp, fake: &FakeComfy, extra: &[(&str, &str)]) -> Child {
    let mut cmd = app.mage("work");
    cmd.env("MAGE_RENDER_BACKENDS", "comfyui")
        .env("MAGE_COMFYUI_URLS", fake.url())
        .env("MAGE_COMFYUI_WORKFLOWS", workflows())
        .env("MAGE_RETRY_BACKOFF_SECONDS", "1")
        .env("MAGE_SWEEP_INTERVAL_SECONDS", "2")
        .env("MAGE_LOG", "info,mage_jobs=debug");
    for (k, v) in extra {
        cmd.env(k, v);
    }
    Child::spawn(&mut cmd)
}

pub(crate) async fn create(app: &TestApp, token: &str, input: Value) -> Uuid {
    let res = app.gql(CREATE, json!({ "i": input }), Some(token)).await;
    let id = res["data"]["createGeneration"]["id"].as_str().unwrap_or_else(|| panic!("create: {res}"));
    id.parse().expect("uuid")
}

#[derive(QueryableByName, Debug, Clone)]
pub(crate) struct Row {
    #[diesel(sql_type = Text)]
    pub(crate) status: String,
    #[diesel(sql_type = Int4)]
    pub(crate) attempts: i32,
    #[diesel(sql_type = Nullable<Text>)]
    pub(crate) error: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub(crate) backend_url: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub(crate) backend_job_id: Option<String>,
    #[diesel(sql_type = Int4)]
    pub(crate) progress: i32,
}

pub(crate) async fn row(app: &TestApp, id: Uuid) -> Row {
    diesel::sql_query(
        "SELECT status, attempts, error, backend_url, backend_job_id, progress FROM generations WHERE id = $1",
    )
    .bind::<diesel::sql_types::Uuid, _>(id)
    .get_result(&mut *app.conn().await)
    .await
    .expect("generation row")
}

/// Polls the generation's row until `done` holds, or panics after `within`.
pub(crate) async fn wait_row(app: &TestApp, id: Uuid, within: Duration, done: impl Fn(&Row) -> bool) -> Row {
    let start = Instant::now();
    loop {
        let r = row(app, id).await;
        if done(&r) {
            return r;
        }
        assert!(start.elapsed() < within, "generation {id} did not get there in {within:?}: {r:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(crate) async fn wait_status(app: &TestApp, id: Uuid, status: &str, within: Duration) -> Row {
    wait_row(app, id, within, |r| r.status == status).await
}

/// The ledger entry kinds of a generation's holds, sorted.
pub(crate) async fn ledger(app: &TestApp, id: Uuid) -> Vec<String> {
    #[derive(QueryableByName)]
    struct Entry {
        #[diesel(sql_type = Text)]
        kind: String,
    }
    let rows: Vec<Entry> = diesel::sql_query(
        "SELECT e.kind FROM credit_entries e JOIN credit_holds h ON h.id = e.hold_id
         WHERE h.generation_id = $1 ORDER BY e.kind",
    )
    .bind::<diesel::sql_types::Uuid, _>(id)
    .load(&mut *app.conn().await)
    .await
    .expect("ledger");
    rows.into_iter().map(|e| e.kind).collect()
}

pub(crate) async fn open_holds(app: &TestApp) -> i64 {
    #[derive(QueryableByName)]
    struct N {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let n: N = diesel::sql_query("SELECT count(*) AS n FROM credit_holds WHERE status = 'open'")
        .get_result(&mut *app.conn().await)
        .await
        .expect("holds");
    n.n
}

/// Tasks apalis-redis finished on a queue (a plain set, whatever its Lua
/// overview script assumes), once `expected` are or 10 s have passed: a
/// task is acknowledged just after its handler returned, so the last one
/// may still be on its way when its generation already shows SUCCEEDED.
async fn done_tasks(app: &TestApp, queue: mage_domain::queue::Queue, expected: i64) -> i64 {
    let key = mage_domain::queue::config(app.redis.redis().prefix(), queue).done_jobs_set();
    let mut conn = app.queues.connection();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let n: i64 = redis::cmd("SCARD").arg(&key).query_async(&mut conn).await.expect("SCARD");
        if n >= expected || tokio::time::Instant::now() >= deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Files stored for a generation (the render's and the HLS ladder's).
fn stored_files(app: &TestApp, id: Uuid) -> usize {
    fn walk(dir: &std::path::Path) -> usize {
        std::fs::read_dir(dir)
            .map(|rd| rd.flatten().map(|e| if e.path().is_dir() { walk(&e.path()) } else { 1 }).sum())
            .unwrap_or(0)
    }
    walk(&app.media_dir().join("generations").join(id.to_string()))
}

pub(crate) async fn make_admin(app: &TestApp, email: &str) -> String {
    let (token, _) = app.register(email).await;
    mage_domain::users::set_role(&app.pool, email, mage_domain::users::Role::Admin).await.expect("promote");
    token
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_generations_spread_over_two_backends_each_rendered_downloaded_and_transcoded_once() {
    let (a, b) = (FakeComfy::start().await, FakeComfy::start().await);
    let app = app().await;
    let _workers = app.start_workers_with(on_comfy(&[&a, &b])).await;
    let (token, _) = app.register("many@example.com").await;
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(create(&app, &token, video(&format!("shot {i}: a lighthouse at dusk"))).await);
    }
    for id in &ids {
        let r = wait_status(&app, *id, "succeeded", Duration::from_secs(240)).await;
        assert_eq!(r.attempts, 1, "{r:?}");
        assert!(r.backend_url.as_ref().is_some_and(|u| *u == a.url() || *u == b.url()), "{r:?}");
        assert_eq!(ledger(&app, *id).await, ["capture", "hold"], "generation {id}");
        assert!(stored_files(&app, *id) > 2, "generation {id} has its source and its HLS ladder");
    }
    let (done_a, done_b) = (a.completed(), b.completed());
    assert!(!done_a.is_empty() && !done_b.is_empty(), "spread: {} on a, {} on b", done_a.len(), done_b.len());
    assert_eq!(done_a.len() + done_b.len(), 20);
    assert_eq!(a.total_executions() + b.total_executions(), 20, "no prompt ran twice");
    let submitted: HashSet<String> =
        a.submissions().into_iter().chain(b.submissions()).map(|s| s.prompt_id).collect();
    assert_eq!(submitted.len(), 20);
    // Each generation's prompt carries its own text, filled in as a JSON
    // value.
    assert!(a.submissions().iter().all(|s| s.prompt["6"]["inputs"]["text"].as_str().is_some()));
    let downloads: Vec<(String, usize)> = a.downloads().into_iter().chain(b.downloads()).collect();
    assert_eq!(downloads.len(), 20, "{downloads:?}");
    assert!(downloads.iter().all(|(_, n)| *n == 1), "each output downloaded once: {downloads:?}");
    assert_eq!(
        done_tasks(&app, mage_domain::queue::Queue::Transcode, 20).await,
        20,
        "each output transcoded once"
    );
    assert_eq!(open_holds(&app).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_error_fails_the_generation_with_the_nodes_message_and_gives_the_credits_back() {
    let fake = FakeComfy::start().await;
    fake.fail_when_prompt_contains("melt", "CUDA out of memory. Tried to allocate 2.00 GiB");
    let app = app().await;
    let _workers = app.start_workers_with(on_comfy(&[&fake])).await;
    let (token, _) = app.register("oom@example.com").await;
    let id = create(&app, &token, video("melt the GPU")).await;
    let r = wait_status(&app, id, "failed", Duration::from_secs(60)).await;
    let error = r.error.clone().unwrap_or_default();
    assert!(error.contains("KSampler") && error.contains("CUDA out of memory"), "{r:?}");
    let api =
        app.gql("query($id: ID!) { generation(id: $id) { status error } }", json!({"id": id}), Some(&token));
    let api = api.await;
    assert_eq!(api["data"]["generation"]["error"].as_str(), Some(error.as_str()), "{api}");
    assert_eq!(ledger(&app, id).await, ["hold", "release"]);
    assert_eq!(fake.total_executions(), 1, "a node error is not retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_websocket_dropped_mid_render_is_reconciled_without_rendering_twice() {
    let fake = FakeComfy::start().await;
    // The rest of the render finishes before the first reconnect: its result
    // is only in /history.
    fake.set_step_delay(Duration::from_millis(10));
    fake.drop_websockets_after_steps(5);
    let app = app().await;
    let _workers = app.start_workers_with(on_comfy(&[&fake])).await;
    let (token, _) = app.register("drop@example.com").await;
    let id = create(&app, &token, video("through the storm")).await;
    let r = wait_status(&app, id, "succeeded", Duration::from_secs(60)).await;
    assert_eq!(r.attempts, 1, "{r:?}");
    assert_eq!(fake.submissions().len(), 1);
    assert_eq!(fake.total_executions(), 1);
    assert!(fake.downloads().values().all(|n| *n == 1));
    assert_eq!(ledger(&app, id).await, ["capture", "hold"]);
}

/// A ComfyUI graph of someone else's, submitted straight to the server.
fn foreign_prompt(steps: u32) -> Value {
    json!({
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "3": {"class_type": "KSampler", "inputs": {"steps": steps, "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "foreign", "images": ["8", 0]}},
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_interrupts_only_its_own_prompt_and_removes_it_from_the_servers_queue() {
    let fake = FakeComfy::start().await;
    fake.set_step_delay(Duration::from_millis(100));
    // Another client's job runs on the server for a minute, unless its
    // owner stops it.
    let http = reqwest::Client::new();
    let res: Value = http
        .post(format!("{}/prompt", fake.url()))
        .json(&json!({"prompt": foreign_prompt(600), "client_id": "someone-else", "prompt_id": "foreign"}))
        .send()
        .await
        .expect("POST /prompt")
        .json()
        .await
        .expect("JSON");
    assert_eq!(res["prompt_id"], "foreign");
    let app = app().await;
    let _workers = app.start_workers_with(on_comfy(&[&fake])).await;
    let (token, _) = app.register("cancel@example.com").await;

    // Waiting behind the foreign job in ComfyUI's queue: cancel deletes it
    // there, and the foreign job runs on.
    let waiting = create(&app, &token, video("never mind")).await;
    let r = wait_row(&app, waiting, Duration::from_secs(30), |r| r.backend_job_id.is_some()).await;
    let waiting_prompt = r.backend_job_id.clone().expect("prompt id");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let res = app.gql(CANCEL, json!({"id": waiting}), Some(&token)).await;
    assert!(res.get("errors").is_none(), "{res}");
    wait_status(&app, waiting, "canceled", Duration::from_secs(30)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !fake.queue_deletes().contains(&waiting_prompt) {
        assert!(Instant::now() < deadline, "the prompt was not deleted from ComfyUI's queue");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        fake.running().as_deref(),
        Some("foreign"),
        "the foreign job runs on: {:?}",
        fake.interrupts()
    );
    assert_eq!(fake.executions(&waiting_prompt), 0);
    // Its owner stops it, as only its owner should.
    http.post(format!("{}/interrupt", fake.url()))
        .json(&json!({"prompt_id": "foreign"}))
        .send()
        .await
        .expect("interrupt");

    // Running: interrupted by its prompt_id.
    let running = create(&app, &token, video("stop me")).await;
    let r = wait_row(&app, running, Duration::from_secs(30), |r| r.progress > 0).await;
    let running_prompt = r.backend_job_id.clone().expect("prompt id");
    let res = app.gql(CANCEL, json!({"id": running}), Some(&token)).await;
    assert!(res.get("errors").is_none(), "{res}");
    wait_status(&app, running, "canceled", Duration::from_secs(30)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while fake.queue_len() > 0 {
        assert!(Instant::now() < deadline, "the running prompt was not interrupted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(fake.executions(&running_prompt), 1);
    assert!(!fake.completed().contains(&running_prompt));
    let interrupts = fake.interrupts();
    assert!(interrupts.iter().all(Option::is_some), "never an unqualified interrupt: {interrupts:?}");
    assert!(interrupts.contains(&Some(running_prompt)), "{interrupts:?}");
    assert_eq!(ledger(&app, waiting).await, ["hold", "release"]);
    assert_eq!(ledger(&app, running).await, ["hold", "release"]);
}

const BACKENDS: &str = "{ queue { backends { kind location healthy detail vramFreeBytes vramTotalBytes } } }";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unhealthy_backend_delays_jobs_without_using_attempts_and_they_succeed_when_it_recovers() {
    let fake = FakeComfy::start().await;
    fake.set_health(Health::NoGpu);
    let app = app().await;
    let admin = make_admin(&app, "ops@example.com").await;
    let _workers = app.start_workers_with(on_comfy(&[&fake])).await;
    let (token, _) = app.register("patient@example.com").await;
    let ids = [create(&app, &token, video("first")).await, create(&app, &token, video("second")).await];

    // A minute without a GPU: nothing starts, no attempt is used.
    let start = Instant::now();
    let mut seen_unhealthy = false;
    while start.elapsed() < Duration::from_secs(60) {
        for id in ids {
            let r = row(&app, id).await;
            assert!(r.status == "queued" && r.attempts == 0, "after {:?}: {r:?}", start.elapsed());
        }
        if !seen_unhealthy {
            let res = app.gql(BACKENDS, json!({}), Some(&admin)).await;
            let backends = res["data"]["queue"]["backends"].as_array().cloned().unwrap_or_default();
            seen_unhealthy = backends.iter().any(|b| {
                b["location"] == fake.url().as_str() && b["healthy"] == false && b["kind"] == "comfyui"
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(seen_unhealthy, "admins see the backend unhealthy");
    assert_eq!(fake.submissions().len(), 0);
    let res = app.gql(BACKENDS, json!({}), Some(&token)).await;
    assert_eq!(code(&res), "FORBIDDEN", "{res}");

    fake.set_health(Health::Healthy);
    let recovered = Instant::now();
    for id in ids {
        let r = wait_status(&app, id, "succeeded", Duration::from_secs(90)).await;
        assert_eq!(r.attempts, 1, "{r:?}");
    }
    println!(
        "unhealthy backend: all generations succeeded {:.1} s after it recovered",
        recovered.elapsed().as_secs_f64()
    );
    let res = app.gql(BACKENDS, json!({}), Some(&admin)).await;
    let b = &res["data"]["queue"]["backends"][0];
    assert_eq!(b["healthy"], true, "{res}");
    assert!(b["vramTotalBytes"].as_f64().unwrap_or(0.0) > 0.0, "{res}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_a_worker_mid_render_the_next_worker_finishes_it_with_one_hold_and_one_capture() {
    let fake = FakeComfy::start().await;
    // About six seconds of sampling.
    fake.set_step_delay(Duration::from_millis(200));
    let app = app().await;
    let (token, _) = app.register("crash@example.com").await;
    let mut first = work_process(&app, &fake, &[]);
    let id = create(&app, &token, video("survive a crash")).await;
    let r = wait_row(&app, id, Duration::from_secs(60), |r| r.status == "rendering" && r.progress > 0).await;
    let prompt_id = r.backend_job_id.clone().expect("prompt id");
    first.0.kill().expect("kill -9");
    let _ = first.0.wait();
    let killed = Instant::now();

    let _second = work_process(&app, &fake, &[]);
    let r = wait_status(&app, id, "succeeded", Duration::from_secs(180)).await;
    println!(
        "kill -9: generation succeeded {:.1} s after its worker was killed",
        killed.elapsed().as_secs_f64()
    );
    assert_eq!(ledger(&app, id).await, ["capture", "hold"], "{r:?}");
    assert_eq!(fake.executions(&prompt_id), 1, "the render was resumed, not run twice");
    assert_eq!(fake.submissions().len(), 1);
    assert_eq!(open_holds(&app).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flushall_while_generations_are_queued_they_all_still_succeed() {
    // A Redis of this test's own: FLUSHALL must not touch other tests.
    let port = free_port();
    let _redis = Child(
        std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (the Debian package redis-server)"),
    );
    let url = format!("redis://127.0.0.1:{port}");
    let client = redis::Client::open(url.as_str()).expect("client");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut conn = loop {
        if let Ok(c) = client.get_multiplexed_async_connection().await {
            break c;
        }
        assert!(Instant::now() < deadline, "private redis-server did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let fake = FakeComfy::start().await;
    fake.set_step_delay(Duration::from_millis(30));
    let app = app_on(TestRedis::at(&url)).await;
    let _workers = app.start_workers_with(on_comfy(&[&fake])).await;
    let (token, _) = app.register("flush@example.com").await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(create(&app, &token, video(&format!("queued {i}"))).await);
    }
    // One renders; the others wait, their jobs only in Redis.
    wait_row(&app, ids[0], Duration::from_secs(60), |r| r.status == "rendering").await;
    let mut queued = 0;
    for id in &ids {
        queued += usize::from(row(&app, *id).await.status == "queued");
    }
    assert!(queued >= 3, "only {queued} still queued");
    let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.expect("FLUSHALL");
    let flushed = Instant::now();
    for id in &ids {
        let r = wait_status(&app, *id, "succeeded", Duration::from_secs(180)).await;
        assert_eq!(ledger(&app, *id).await, ["capture", "hold"], "{r:?}");
    }
    println!(
        "FLUSHALL with {queued} generations queued: all succeeded {:.1} s later",
        flushed.elapsed().as_secs_f64()
    );
    assert_eq!(fake.total_executions(), 5, "none rendered twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_hands_back_the_running_render_and_exits_0_and_the_next_worker_collects_it() {
    let fake = FakeComfy::start().await;
    // Longer than the grace period.
    fake.set_step_delay(Duration::from_millis(300));
    let app = app().await;
    let (token, _) = app.register("term@example.com").await;
    let mut first = work_process(&app, &fake, &[("MAGE_SHUTDOWN_GRACE_SECONDS", "2")]);
    let id = create(&app, &token, video("outlive the deploy")).await;
    let r = wait_row(&app, id, Duration::from_secs(60), |r| r.status == "rendering" && r.progress > 0).await;
    let prompt_id = r.backend_job_id.clone().expect("prompt id");
    let (status, exited) = first.terminate(Duration::from_secs(20)).await;
    assert!(status.success(), "mage work exited with {status}");
    let r = row(&app, id).await;
    assert_eq!(r.status, "rendering", "handed back, not failed: {r:?}");
    assert_eq!(ledger(&app, id).await, ["hold"]);

    let _second = work_process(&app, &fake, &[]);
    let restarted = Instant::now();
    let r = wait_status(&app, id, "succeeded", Duration::from_secs(120)).await;
    println!(
        "SIGTERM: exited 0 in {:.1} s; the next worker finished the render {:.1} s after it started",
        exited.as_secs_f64(),
        restarted.elapsed().as_secs_f64()
    );
    assert_eq!(fake.executions(&prompt_id), 1, "collected, not rendered again: {r:?}");
    assert_eq!(ledger(&app, id).await, ["capture", "hold"]);
}

const DEAD: &str = "query($q: String) { deadJobs(queue: $q) { queue taskId generationId attempts error } }";
const RETRY_DEAD: &str =
    "mutation($q: String!, $t: ID!) { retryDeadJob(queue: $q, taskId: $t) { id status } }";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_render_out_of_attempts_is_dead_listed_for_admins_and_retryable() {
    let fake = FakeComfy::start().await;
    fake.set_step_delay(Duration::from_millis(100));
    let app = app().await;
    let admin = make_admin(&app, "admin@example.com").await;
    let _workers = app
        .start_workers_with(|s| {
            on_comfy(&[&fake])(s);
            s.job_attempts = 1;
        })
        .await;
    let (token, _) = app.register("unlucky@example.com").await;
    let id = create(&app, &token, video("interrupted by someone")).await;
    wait_row(&app, id, Duration::from_secs(60), |r| r.progress > 0).await;
    // Someone stops whatever runs on the server: not Mage's doing, so it
    // counts as a failed attempt, the only one allowed here.
    reqwest::Client::new().post(format!("{}/interrupt", fake.url())).send().await.expect("interrupt");
    let r = wait_status(&app, id, "failed", Duration::from_secs(60)).await;
    assert_eq!(ledger(&app, id).await, ["hold", "release"], "{r:?}");

    let res = app.gql(DEAD, json!({"q": "render"}), Some(&token)).await;
    assert_eq!(code(&res), "FORBIDDEN", "{res}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let job = loop {
        let res = app.gql(DEAD, json!({"q": "render"}), Some(&admin)).await;
        let jobs = res["data"]["deadJobs"].as_array().cloned().unwrap_or_default();
        if let Some(j) = jobs.into_iter().find(|j| j["generationId"] == id.to_string().as_str()) {
            break j;
        }
        assert!(Instant::now() < deadline, "no dead job listed: {res}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let task = job["taskId"].as_str().expect("task id").to_owned();
    // The render queue of the generation's backend.
    assert_eq!(job["queue"], "render:comfyui", "{job}");
    // The admin's queue view counts the failed attempt and the dead job.
    let res =
        app.gql("{ queue { jobs { queue waiting running failed dead } } }", json!({}), Some(&admin)).await;
    let queues = res["data"]["queue"]["jobs"].as_array().cloned().unwrap_or_else(|| panic!("{res}"));
    let render = queues.iter().find(|q| q["queue"] == "render:comfyui").unwrap_or_else(|| panic!("{res}"));
    assert_eq!((render["failed"].as_i64(), render["dead"].as_i64()), (Some(1), Some(1)), "{res}");
    assert!(queues.iter().any(|q| q["queue"] == "settle"), "{res}");
    let res = app.gql(RETRY_DEAD, json!({"q": "render:comfyui", "t": task}), Some(&token)).await;
    assert_eq!(code(&res), "FORBIDDEN", "{res}");
    let res = app.gql(RETRY_DEAD, json!({"q": "render:comfyui", "t": task}), Some(&admin)).await;
    assert_eq!(res["data"]["retryDeadJob"]["status"], "QUEUED", "{res}");
    let again = app.gql(RETRY_DEAD, json!({"q": "render:comfyui", "t": task}), Some(&admin)).await;
    assert_eq!(code(&again), "NOT_FOUND", "a dead job is retried once: {again}");
    wait_status(&app, id, "succeeded", Duration::from_secs(60)).await;
    assert_eq!(ledger(&app, id).await, ["capture", "hold", "hold", "release"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweeper_requeues_lost_jobs_fails_silent_renders_and_settles_stray_holds_once() {
    let app = app().await;
    let (token, _) = app.register("swept@example.com").await;
    let lost = create(&app, &token, video("its job vanished")).await;
    let silent = create(&app, &token, video("its worker vanished")).await;
    let stray = create(&app, &token, video("its hold was left open")).await;
    // No workers run: the faults are made by hand, as a crash would leave
    // them. Redis forgets one job; a worker died mid-render an hour ago;
    // a generation ended without settling its hold.
    app.queues.forget_render(BackendKind::ComfyUi, lost).await.expect("forget");
    app.sql(&format!(
        "UPDATE generations SET updated_at = now() - interval '1 minute' WHERE id = '{lost}';
         UPDATE generations SET status = 'rendering', worker = 'gone', started_at = now() - interval '1 hour',
             heartbeat_at = now() - interval '1 hour', updated_at = now() - interval '1 hour' WHERE id = '{silent}';
         UPDATE generations SET status = 'canceled', finished_at = now() WHERE id = '{stray}';
         UPDATE credit_holds SET created_at = now() - interval '2 minutes' WHERE generation_id = '{stray}';"
    ))
    .await;
    // A Stripe event stored five minutes ago whose settle job was lost.
    app.sql(
        "INSERT INTO stripe_events (id, type, payload, received_at)
         VALUES ('evt_lost', 'payout.paid', '{}'::jsonb, now() - interval '5 minutes')",
    )
    .await;
    let (pool, redis, queues) = (&app.pool, &app.redis.redis(), &app.queues);
    let stale_after = Duration::from_secs(900);
    let report = mage_jobs::sweep_once(pool, redis, queues, stale_after).await.expect("sweep");
    assert_eq!(report.requeued, [lost]);
    assert_eq!(report.failed_stale, [silent]);
    assert_eq!(report.holds_settled, 1);
    assert_eq!(report.events_requeued, 1);
    assert_eq!(
        queues.counts(mage_domain::queue::Queue::Settle).await.expect("counts").waiting,
        1,
        "its settle job is back"
    );
    assert!(queues.render_alive(BackendKind::ComfyUi, lost).await.expect("alive"), "enqueued again");
    let r = row(&app, silent).await;
    assert_eq!((r.status.as_str(), r.error.as_deref()), ("failed", Some(mage_jobs::STALE_MESSAGE)));
    assert_eq!(ledger(&app, silent).await, ["hold", "release"]);
    assert_eq!(ledger(&app, stray).await, ["hold", "release"]);
    assert_eq!(ledger(&app, lost).await, ["hold"], "a queued generation keeps its hold");

    let again = mage_jobs::sweep_once(pool, redis, queues, stale_after).await.expect("sweep");
    assert_eq!(again, mage_jobs::SweepReport::default(), "a second pass finds nothing");
}
