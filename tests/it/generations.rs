//! Generations end to end against real PostgreSQL, Redis and ffmpeg: the
//! API, the queues and the workers of one Mage, each test with its own
//! database and Redis prefix.

use std::time::{Duration, Instant};

use crate::support::{TestApp, code};
use serde_json::{Value, json};

const CREATE: &str = "mutation($i: CreateGenerationInput!) { createGeneration(input: $i) {
    id status cost queuePosition etaSeconds } }";

const GENERATION: &str = "query($id: ID!) { generation(id: $id) {
    id status progress stage error cost queuePosition etaSeconds startedAt finishedAt
    output { hlsUrl videoUrl posterUrl imageUrl width height durationSeconds renditions { name height } } } }";

const CREDITS: &str = "{ me { credits { balance held } } }";

fn video(resolution: &str, seconds: i64) -> Value {
    json!({ "model": "synth-video", "prompt": "a lighthouse at dusk", "resolution": resolution,
            "durationSeconds": seconds })
}

async fn credits(app: &TestApp, token: &str) -> (i64, i64) {
    let res = app.gql(CREDITS, json!({}), Some(token)).await;
    let c = &res["data"]["me"]["credits"];
    (c["balance"].as_i64().expect("balance"), c["held"].as_i64().expect("held"))
}

async fn create(app: &TestApp, token: &str, input: Value) -> Value {
    app.gql(CREATE, json!({ "i": input }), Some(token)).await
}

async fn generation(app: &TestApp, token: &str, id: &str) -> Value {
    let res = app.gql(GENERATION, json!({ "id": id }), Some(token)).await;
    assert!(res.get("errors").is_none(), "generation query failed: {res}");
    res["data"]["generation"].clone()
}

/// Polls until `done` holds for the generation, or panics after `within`.
async fn wait_for(
    app: &TestApp,
    token: &str,
    id: &str,
    within: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let start = Instant::now();
    loop {
        let g = generation(app, token, id).await;
        if done(&g) {
            return g;
        }
        assert!(start.elapsed() < within, "generation did not get there in {within:?}: {g}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn is_final(g: &Value) -> bool {
    matches!(g["status"].as_str(), Some("SUCCEEDED" | "FAILED" | "CANCELED"))
}

fn raise_limits(s: &mut mage_api::settings::ServerSettings) {
    s.generation_limits = mage_domain::limits::GenerationLimits { per_minute: 1000, active: 1000 };
}

#[tokio::test(flavor = "multi_thread")]
async fn models_are_listed_with_prices_and_quote_matches_the_charge() {
    let app = TestApp::start().await;
    let res = app
        .gql("{ models { id kind name resolutions maxDurationSeconds prices { resolution credits creditsPerSecond } } }", json!({}), None)
        .await;
    let models = res["data"]["models"].as_array().expect("models");
    let kinds: Vec<&str> = models.iter().filter_map(|m| m["kind"].as_str()).collect();
    assert!(kinds.contains(&"IMAGE") && kinds.contains(&"VIDEO"), "{res}");

    let q = |input: Value| {
        let app = &app;
        async move {
            app.gql("query($i: CreateGenerationInput!) { quote(input: $i) }", json!({ "i": input }), None)
                .await
        }
    };
    assert_eq!(q(video("R480P", 5)).await["data"]["quote"], 10);
    assert_eq!(q(video("R720P", 5)).await["data"]["quote"], 20);

    let (token, _) = app.register("quote@example.com").await;
    let created = create(&app, &token, video("R720P", 5)).await;
    assert_eq!(created["data"]["createGeneration"]["cost"], 20, "{created}");
    assert_eq!(credits(&app, &token).await, (80, 20));
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_names_the_field_and_leaves_nothing_behind() {
    let app = TestApp::start().await;
    let (token, _) = app.register("bad@example.com").await;
    let cases = [
        (json!({ "model": "nope", "prompt": "x", "resolution": "R480P" }), "model"),
        (json!({ "model": "synth-video", "prompt": "   ", "resolution": "R480P" }), "prompt"),
        (json!({ "model": "synth-video", "prompt": "a\u{0007}b", "resolution": "R480P" }), "prompt"),
        (json!({ "model": "synth-video", "prompt": "x".repeat(2001), "resolution": "R480P" }), "prompt"),
        (
            json!({ "model": "synth-video", "prompt": "x", "resolution": "R480P", "durationSeconds": 11 }),
            "durationSeconds",
        ),
        (
            json!({ "model": "synth-image", "prompt": "x", "resolution": "R480P", "durationSeconds": 3 }),
            "durationSeconds",
        ),
    ];
    for (input, field) in cases {
        let res = create(&app, &token, input.clone()).await;
        assert_eq!(code(&res), "BAD_USER_INPUT", "{input} → {res}");
        assert_eq!(res["errors"][0]["extensions"]["field"], field, "{input} → {res}");
    }
    assert_eq!(app.count("generations").await, 0);
    assert_eq!(app.count("credit_holds").await, 0);
    assert_eq!(credits(&app, &token).await, (100, 0));

    let anonymous = create(&app, "", video("R480P", 5)).await;
    assert_eq!(code(&anonymous), "UNAUTHENTICATED");
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_concurrent_creates_that_afford_five_make_exactly_five() {
    let app = TestApp::start_with(raise_limits).await;
    let (token, _) = app.register("fifty@example.com").await;
    // 480p × 10 s = 20 credits; the signup bonus of 100 affords five.
    let results =
        app.gql_concurrently(50, CREATE, |_| json!({ "i": video("R480P", 10) }), Some(&token)).await;
    let ok = results.iter().filter(|r| r.get("errors").is_none()).count();
    let short: Vec<&Value> =
        results.iter().filter(|r| r.get("errors").is_some() && code(r) == "INSUFFICIENT_CREDITS").collect();
    assert_eq!(ok, 5, "{results:?}");
    assert_eq!(short.len(), 45, "{results:?}");
    let ext = &short[0]["errors"][0]["extensions"];
    assert_eq!(ext["required"], 20);
    assert_eq!(ext["available"], 0);
    assert_eq!(app.count("generations").await, 5);
    assert_eq!(app.count("credit_holds").await, 5);
    assert_eq!(credits(&app, &token).await, (0, 100));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_idempotency_key_twenty_times_makes_one_generation_and_one_hold() {
    let app = TestApp::start_with(raise_limits).await;
    let (token, _) = app.register("idem@example.com").await;
    let mut input = video("R480P", 5);
    input["idempotencyKey"] = json!("client-retry-1");
    let results = app.gql_concurrently(20, CREATE, |_| json!({ "i": input.clone() }), Some(&token)).await;
    let ids: std::collections::HashSet<&str> = results
        .iter()
        .map(|r| r["data"]["createGeneration"]["id"].as_str().unwrap_or_else(|| panic!("{r}")))
        .collect();
    assert_eq!(ids.len(), 1, "{results:?}");
    assert_eq!(app.count("generations").await, 1);
    assert_eq!(app.count("credit_holds").await, 1);
    assert_eq!(credits(&app, &token).await, (90, 10));

    // The key names one request: reusing it for another is refused.
    let mut other = video("R720P", 5);
    other["idempotencyKey"] = json!("client-retry-1");
    assert_eq!(code(&create(&app, &token, other).await), "CONFLICT");
    // Every field of the input names the request, the negative prompt too.
    let mut other = video("R480P", 5);
    other["idempotencyKey"] = json!("client-retry-1");
    other["negativePrompt"] = json!("blurry");
    assert_eq!(code(&create(&app, &token, other).await), "CONFLICT");
}

#[tokio::test(flavor = "multi_thread")]
async fn per_user_limits_answer_rate_limited_with_retry_after() {
    let app = TestApp::start_with(|s| {
        s.generation_limits = mage_domain::limits::GenerationLimits { per_minute: 3, active: 100 };
    })
    .await;
    let (token, _) = app.register("rate@example.com").await;
    for _ in 0..3 {
        let res = create(&app, &token, video("R480P", 1)).await;
        assert!(res.get("errors").is_none(), "{res}");
    }
    let res = create(&app, &token, video("R480P", 1)).await;
    assert_eq!(code(&res), "RATE_LIMITED", "{res}");
    let retry = res["errors"][0]["extensions"]["retryAfterSeconds"].as_u64().expect("retryAfterSeconds");
    assert!((1..=60).contains(&retry), "{res}");
    // Another user has a window of their own.
    let (other, _) = app.register("rate2@example.com").await;
    assert!(create(&app, &other, video("R480P", 1)).await.get("errors").is_none());

    let app = TestApp::start_with(|s| {
        s.generation_limits = mage_domain::limits::GenerationLimits { per_minute: 100, active: 2 };
    })
    .await;
    let (token, _) = app.register("active@example.com").await;
    let first = create(&app, &token, video("R480P", 1)).await;
    create(&app, &token, video("R480P", 1)).await;
    assert_eq!(code(&create(&app, &token, video("R480P", 1)).await), "RATE_LIMITED");
    // Cancelling one frees its slot.
    let id = first["data"]["createGeneration"]["id"].as_str().expect("id");
    let res = app
        .gql("mutation($id: ID!) { cancelGeneration(id: $id) { status } }", json!({ "id": id }), Some(&token))
        .await;
    assert_eq!(res["data"]["cancelGeneration"]["status"], "CANCELED", "{res}");
    assert!(create(&app, &token, video("R480P", 1)).await.get("errors").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn queue_positions_follow_the_queue_and_only_owners_see_a_generation() {
    let app = TestApp::start().await;
    let (alice, _) = app.register("alice@example.com").await;
    let (bob, _) = app.register("bob@example.com").await;
    let a1 = create(&app, &alice, video("R480P", 1)).await["data"]["createGeneration"].clone();
    let b1 = create(&app, &bob, video("R480P", 1)).await["data"]["createGeneration"].clone();
    let a2 = create(&app, &alice, video("R480P", 1)).await["data"]["createGeneration"].clone();
    let id = |g: &Value| g["id"].as_str().expect("id").to_owned();
    assert_eq!(generation(&app, &alice, &id(&a1)).await["queuePosition"], 1);
    assert_eq!(generation(&app, &bob, &id(&b1)).await["queuePosition"], 2);
    let g = generation(&app, &alice, &id(&a2)).await;
    assert_eq!(g["queuePosition"], 3);
    assert!(g["etaSeconds"].as_i64().expect("eta") > 0, "{g}");

    // Bob cannot see, cancel or retry Alice's: it does not exist for him.
    let res = app.gql(GENERATION, json!({ "id": id(&a1) }), Some(&bob)).await;
    assert_eq!(code(&res), "NOT_FOUND", "{res}");
    let res = app
        .gql(
            "mutation($id: ID!) { cancelGeneration(id: $id) { status } }",
            json!({ "id": id(&a1) }),
            Some(&bob),
        )
        .await;
    assert_eq!(code(&res), "NOT_FOUND", "{res}");
    let list = app.gql("{ generations(first: 10) { edges { node { id } } } }", json!({}), Some(&bob)).await;
    assert_eq!(list["data"]["generations"]["edges"].as_array().map(Vec::len), Some(1), "{list}");

    // Cancelling the head moves everyone up.
    let res = app
        .gql(
            "mutation($id: ID!) { cancelGeneration(id: $id) { status queuePosition } }",
            json!({ "id": id(&a1) }),
            Some(&alice),
        )
        .await;
    assert_eq!(res["data"]["cancelGeneration"]["status"], "CANCELED", "{res}");
    assert_eq!(generation(&app, &bob, &id(&b1)).await["queuePosition"], 1);
    assert_eq!(generation(&app, &alice, &id(&a2)).await["queuePosition"], 2);
    // A final generation cannot be cancelled or retried again.
    let again = app
        .gql(
            "mutation($id: ID!) { cancelGeneration(id: $id) { status } }",
            json!({ "id": id(&a1) }),
            Some(&alice),
        )
        .await;
    assert_eq!(code(&again), "CONFLICT", "{again}");
    let retry = app
        .gql(
            "mutation($id: ID!) { retryGeneration(id: $id) { status } }",
            json!({ "id": id(&a1) }),
            Some(&alice),
        )
        .await;
    assert_eq!(code(&retry), "CONFLICT", "{retry}");
    // 480p × 1 s = 2 credits; one of the two is still held.
    assert_eq!(credits(&app, &alice).await, (98, 2));

    let q = app.gql("{ queue { depth running averageWaitSeconds renderSlots } }", json!({}), None).await;
    assert_eq!(q["data"]["queue"]["depth"], 2, "{q}");

    // The position query is an index range scan.
    let plan = app.explain(mage_domain::generations::QUEUE_POSITION_SQL_EXPLAIN).await;
    assert!(plan.contains("generations_queue_idx"), "{plan}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_video_generation_goes_from_queued_to_a_playable_hls_ladder() {
    let app = TestApp::start().await;
    let _workers = app.start_workers().await;
    let (token, _) = app.register("e2e@example.com").await;
    let quote = app
        .gql(
            "query($i: CreateGenerationInput!) { quote(input: $i) }",
            json!({ "i": video("R720P", 5) }),
            None,
        )
        .await["data"]["quote"]
        .as_i64()
        .expect("quote");
    let created = create(&app, &token, video("R720P", 5)).await;
    let id =
        created["data"]["createGeneration"]["id"].as_str().unwrap_or_else(|| panic!("{created}")).to_owned();
    let start = Instant::now();
    let g = wait_for(&app, &token, &id, Duration::from_secs(60), is_final).await;
    eprintln!("720p 5 s render + transcode: {:.1} s", start.elapsed().as_secs_f64());
    assert_eq!(g["status"], "SUCCEEDED", "{g}");
    assert_eq!(g["progress"], 100);
    assert!(g["startedAt"].is_string() && g["finishedAt"].is_string(), "{g}");
    let out = &g["output"];
    assert_eq!((out["width"].as_i64(), out["height"].as_i64()), (Some(1280), Some(720)), "{g}");

    let hls = out["hlsUrl"].as_str().expect("hlsUrl");
    let master = app.http.get(hls).send().await.expect("GET master");
    assert!(master.status().is_success());
    let master = master.text().await.expect("master text");
    let renditions = master.lines().filter(|l| l.starts_with("#EXT-X-STREAM-INF")).count();
    assert!(renditions >= 2, "master playlist lists {renditions} renditions:\n{master}");

    let probe = tokio::process::Command::new("ffprobe")
        .args(["-v", "error", "-show_entries", "format=duration", "-of", "default=nw=1:nk=1", hls])
        .output()
        .await
        .expect("ffprobe");
    let duration: f64 = String::from_utf8_lossy(&probe.stdout).trim().parse().unwrap_or(0.0);
    assert!(
        (duration - 5.0).abs() < 0.6,
        "ffprobe read {duration} s from {hls}: {}",
        String::from_utf8_lossy(&probe.stderr)
    );
    for url in [out["videoUrl"].as_str(), out["posterUrl"].as_str()] {
        let url = url.expect("url");
        assert!(app.http.get(url).send().await.expect("GET").status().is_success(), "{url}");
    }

    assert_eq!(credits(&app, &token).await, (100 - quote, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_image_generation_succeeds_with_an_image_and_a_poster() {
    let app = TestApp::start().await;
    let _workers = app.start_workers().await;
    let (token, _) = app.register("image@example.com").await;
    let created =
        create(&app, &token, json!({ "model": "synth-image", "prompt": "a red fox", "resolution": "R480P" }))
            .await;
    let id =
        created["data"]["createGeneration"]["id"].as_str().unwrap_or_else(|| panic!("{created}")).to_owned();
    let g = wait_for(&app, &token, &id, Duration::from_secs(60), is_final).await;
    assert_eq!(g["status"], "SUCCEEDED", "{g}");
    let image = g["output"]["imageUrl"].as_str().expect("imageUrl");
    let res = app.http.get(image).send().await.expect("GET image");
    assert_eq!(res.headers()["content-type"], "image/png");
    assert_eq!(credits(&app, &token).await, (99, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_render_ends_failed_with_the_hold_released_and_can_be_retried() {
    let app = TestApp::start().await;
    app.sql(
        "INSERT INTO render_models (id, kind, name, workflow, max_duration_seconds, default_duration_seconds, backend)
         VALUES ('broken', 'video', 'Broken', 'synthetic-broken', 5, 2, 'synthetic');
         INSERT INTO render_model_prices (model_id, resolution, credits_per_second) VALUES ('broken', '480p', 3)",
    )
    .await;
    let _workers = app.start_workers().await;
    let (token, _) = app.register("fail@example.com").await;
    let input = json!({ "model": "broken", "prompt": "never", "resolution": "R480P", "durationSeconds": 2 });
    let created = create(&app, &token, input).await;
    let id =
        created["data"]["createGeneration"]["id"].as_str().unwrap_or_else(|| panic!("{created}")).to_owned();
    let g = wait_for(&app, &token, &id, Duration::from_secs(30), is_final).await;
    assert_eq!(g["status"], "FAILED", "{g}");
    let error = g["error"].as_str().expect("error message");
    assert!(
        !error.is_empty() && !error.contains("ffmpeg") && !error.contains('/'),
        "not fit for a user: {error}"
    );
    assert_eq!(credits(&app, &token).await, (100, 0));

    // Retrying holds the price again and runs again (and fails again).
    let res = app
        .gql("mutation($id: ID!) { retryGeneration(id: $id) { status } }", json!({ "id": id }), Some(&token))
        .await;
    assert_eq!(res["data"]["retryGeneration"]["status"], "QUEUED", "{res}");
    let g = wait_for(&app, &token, &id, Duration::from_secs(30), |g| {
        g["status"] == "FAILED" && g["finishedAt"].is_string()
    })
    .await;
    assert_eq!(g["status"], "FAILED");
    assert_eq!(credits(&app, &token).await, (100, 0));
    assert_eq!(app.count("credit_holds").await, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelling_a_running_render_releases_the_hold_and_stops_ffmpeg() {
    // Slow the synthetic renderer down so the render is still running when
    // the cancel arrives (this test runs in a process of its own).
    unsafe { std::env::set_var("MAGE_SYNTHETIC_SLOWDOWN", "4") };
    let app = TestApp::start().await;
    let _workers = app.start_workers().await;
    let (token, _) = app.register("cancel@example.com").await;
    let created = create(&app, &token, video("R480P", 10)).await;
    let id =
        created["data"]["createGeneration"]["id"].as_str().unwrap_or_else(|| panic!("{created}")).to_owned();
    wait_for(&app, &token, &id, Duration::from_secs(30), |g| {
        g["status"] == "RENDERING" && g["progress"].as_i64().unwrap_or(0) > 0
    })
    .await;
    assert!(!child_ffmpeg_pids().is_empty(), "no ffmpeg running for the render");

    let res = app
        .gql("mutation($id: ID!) { cancelGeneration(id: $id) { status } }", json!({ "id": id }), Some(&token))
        .await;
    assert_eq!(res["data"]["cancelGeneration"]["status"], "CANCELED", "{res}");
    assert_eq!(credits(&app, &token).await, (100, 0));

    let start = Instant::now();
    while !child_ffmpeg_pids().is_empty() {
        assert!(start.elapsed() < Duration::from_secs(10), "ffmpeg still running: {:?}", child_ffmpeg_pids());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Nothing of it was kept.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !app.media_dir().join("generations").join(&id).exists(),
        "outputs of a cancelled generation remain"
    );
    let g = generation(&app, &token, &id).await;
    assert_eq!(g["status"], "CANCELED");
}

/// ffmpeg processes whose parent is this test process.
fn child_ffmpeg_pids() -> Vec<u32> {
    let me = std::process::id().to_string();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // pid (comm) state ppid ...
        let Some((head, rest)) = stat.rsplit_once(") ") else { continue };
        let ppid = rest.split_whitespace().nth(1).unwrap_or_default();
        let state = rest.split_whitespace().next().unwrap_or_default();
        if head.ends_with("(ffmpeg") && ppid == me && state != "Z" {
            pids.extend(entry.file_name().to_str().and_then(|p| p.parse::<u32>().ok()));
        }
    }
    pids
}
