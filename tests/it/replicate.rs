//! Renders on Replicate: the webhook intake of the API (`/webhooks/replicate`)
//! and the Replicate backend driven directly against a fake Replicate
//! (`fakes/src/replicate.rs`), with real PostgreSQL and Redis, its webhooks
//! delivered to a running API.

use std::path::{Path, PathBuf};
use std::time::Duration;

use diesel::QueryableByName;
use diesel::sql_types::{Nullable, Text, Uuid as SqlUuid};
use diesel_async::RunQueryDsl;
use futures_util::StreamExt;
use mage_fakes::replicate::{FakeReplicate, sign};
use mage_jobs::backend::replicate::{ReplicateBackend, ReplicateConfig};
use mage_jobs::backend::{
    MediaKind, RenderBackend, RenderError, RenderEvent, RenderJob, RenderOutput, RenderRequest,
};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::TestApp;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// Long enough for any of these renders, short enough to fail a hung test.
const WITHIN: Duration = Duration::from_secs(60);

async fn app() -> TestApp {
    TestApp::start_with(|s| s.replicate_webhook_secret = Some(SECRET.into())).await
}

async fn fake() -> FakeReplicate {
    let fake = FakeReplicate::start(SECRET).await;
    fake.set_run_time(Duration::from_millis(800));
    fake.set_steps(8);
    fake
}

fn workflows() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("workflows/replicate")
}

/// A backend on the fake, with webhooks to `app` (or polling only),
/// polling after a second without a webhook.
fn backend(app: &TestApp, fake: &FakeReplicate, webhooks: bool) -> ReplicateBackend {
    backend_quiet(app, fake, webhooks, Duration::from_secs(1))
}

fn backend_quiet(app: &TestApp, fake: &FakeReplicate, webhooks: bool, quiet: Duration) -> ReplicateBackend {
    let cfg = ReplicateConfig {
        api_base: fake.url(),
        token: fake.token().to_owned(),
        workflows: workflows(),
        webhook_url: webhooks.then(|| app.url("/webhooks/replicate")),
        quiet_poll_after: quiet,
    };
    ReplicateBackend::new(cfg, app.redis.redis()).expect("backend").with_retry_for(Duration::from_secs(20))
}

fn request(
    work: &Path,
    workflow: &str,
    kind: MediaKind,
    prompt: &str,
    inputs: Vec<PathBuf>,
) -> RenderRequest {
    RenderRequest {
        generation_id: Uuid::new_v4(),
        job_id: Uuid::new_v4().to_string(),
        model: format!("replicate-{workflow}"),
        workflow: workflow.into(),
        kind,
        prompt: prompt.into(),
        negative_prompt: None,
        width: 854,
        height: 480,
        duration_seconds: (kind == MediaKind::Video).then_some(1),
        fps: 16,
        seed: 7,
        work_dir: work.join(Uuid::new_v4().to_string()),
        inputs,
        timeout: Duration::from_secs(600),
    }
}

/// Every event of a job up to its end.
async fn run(
    backend: &ReplicateBackend,
    job: &RenderJob,
) -> (Vec<(String, u8)>, Result<RenderOutput, RenderError>) {
    let mut events = backend.events(job);
    let mut progress = Vec::new();
    let end = tokio::time::timeout(WITHIN, async {
        loop {
            match events.next().await {
                Some(Ok(RenderEvent::Progress { stage, percent })) => progress.push((stage, percent)),
                Some(Ok(RenderEvent::Finished(out))) => return Ok(out),
                Some(Ok(RenderEvent::Located(id))) => progress.push((format!("located {id}"), 0)),
                Some(Err(e)) => return Err(e),
                None => return Err(RenderError::Unavailable("the stream ended without a result".into())),
            }
        }
    })
    .await
    .expect("the job ended in time");
    (progress, end)
}

fn assert_monotonic(progress: &[(String, u8)]) {
    assert!(progress.windows(2).all(|w| w[0].1 <= w[1].1), "progress went back: {progress:?}");
}

// ---- the webhook intake ----

#[derive(QueryableByName, Debug)]
struct Row {
    #[diesel(sql_type = Text)]
    prediction_id: String,
    #[diesel(sql_type = Nullable<SqlUuid>)]
    generation_id: Option<Uuid>,
    #[diesel(sql_type = Text)]
    status: String,
}

async fn rows(app: &TestApp) -> Vec<Row> {
    diesel::sql_query(
        "SELECT prediction_id, generation_id, status FROM replicate_webhooks ORDER BY received_at",
    )
    .load(&mut *app.conn().await)
    .await
    .expect("rows")
}

async fn deliver(
    app: &TestApp,
    query: &str,
    id: &str,
    timestamp: i64,
    signature: &str,
    body: &str,
) -> (u16, Value) {
    let resp = app
        .http
        .post(app.url(&format!("/webhooks/replicate{query}")))
        .header("webhook-id", id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .expect("deliver");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Messages published on a prediction's channel.
async fn listen(app: &TestApp, prediction_id: &str) -> futures_util::stream::BoxStream<'static, String> {
    let redis = app.redis.redis();
    let client = redis::Client::open(redis.url()).expect("redis");
    let mut pubsub = client.get_async_pubsub().await.expect("pubsub");
    pubsub.subscribe(mage_domain::replicate::channel(&redis, prediction_id)).await.expect("subscribe");
    pubsub.into_on_message().map(|m| m.get_payload::<String>().unwrap_or_default()).boxed()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signed_webhook_is_recorded_and_passed_on_once() {
    let app = app().await;
    let mut messages = listen(&app, "p1abc").await;
    let generation = Uuid::new_v4();
    let body = json!({"id": "p1abc", "status": "processing", "logs": " 40%|████ | 4/10", "output": null})
        .to_string();
    let now = chrono::Utc::now().timestamp();
    let sig = sign(SECRET, "msg_1", now, body.as_bytes());
    let query = format!("?generation={generation}&job=j1");

    let (status, answer) = deliver(&app, &query, "msg_1", now, &sig, &body).await;
    assert_eq!((status, &answer["duplicate"]), (200, &json!(false)), "{answer}");
    let got = tokio::time::timeout(Duration::from_secs(5), messages.next()).await.expect("published");
    assert_eq!(got.as_deref(), Some(body.as_str()));
    let stored = rows(&app).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(
        (stored[0].prediction_id.as_str(), stored[0].generation_id, stored[0].status.as_str()),
        ("p1abc", Some(generation), "processing")
    );

    // Replicate delivers again: nothing more happens.
    let (status, answer) = deliver(&app, &query, "msg_1", now, &sig, &body).await;
    assert_eq!((status, &answer["duplicate"]), (200, &json!(true)), "{answer}");
    assert_eq!(rows(&app).await.len(), 1);
    assert!(
        tokio::time::timeout(Duration::from_millis(500), messages.next()).await.is_err(),
        "a redelivery was published again"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_and_stale_signatures_are_refused_without_side_effects() {
    let app = app().await;
    let mut messages = listen(&app, "p2abc").await;
    let body = json!({"id": "p2abc", "status": "succeeded"}).to_string();
    let now = chrono::Utc::now().timestamp();

    let other_body = sign(SECRET, "msg_2", now, br#"{"id": "p2abc", "status": "failed"}"#);
    let (status, _) = deliver(&app, "", "msg_2", now, &other_body, &body).await;
    assert_eq!(status, 400);
    let other_secret = sign("whsec_c2VjcmV0LW9mLXNvbWVvbmUtZWxzZQ==", "msg_2", now, body.as_bytes());
    assert_eq!(deliver(&app, "", "msg_2", now, &other_secret, &body).await.0, 400);
    let stale = now - 301;
    let stale_sig = sign(SECRET, "msg_2", stale, body.as_bytes());
    assert_eq!(deliver(&app, "", "msg_2", stale, &stale_sig, &body).await.0, 400);
    let future = now + 301;
    let future_sig = sign(SECRET, "msg_2", future, body.as_bytes());
    assert_eq!(deliver(&app, "", "msg_2", future, &future_sig, &body).await.0, 400);
    // Signed, but not a prediction.
    let junk = r#"{"hello": "world"}"#;
    let junk_sig = sign(SECRET, "msg_3", now, junk.as_bytes());
    assert_eq!(deliver(&app, "", "msg_3", now, &junk_sig, junk).await.0, 400);

    assert!(rows(&app).await.is_empty());
    assert!(tokio::time::timeout(Duration::from_millis(300), messages.next()).await.is_err());
    // Still accepted once signed right: the refusals left nothing behind.
    let sig = sign(SECRET, "msg_2", now, body.as_bytes());
    assert_eq!(deliver(&app, "", "msg_2", now, &sig, &body).await.0, 200);
    assert_eq!(rows(&app).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_secret_the_route_refuses_everything() {
    let app = TestApp::start().await;
    let body = json!({"id": "p3abc", "status": "succeeded"}).to_string();
    let now = chrono::Utc::now().timestamp();
    let sig = sign(SECRET, "msg_1", now, body.as_bytes());
    assert_eq!(deliver(&app, "", "msg_1", now, &sig, &body).await.0, 404);
    assert!(rows(&app).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn deliveries_older_than_a_week_are_pruned() {
    let app = app().await;
    app.sql(
        "INSERT INTO replicate_webhooks (id, prediction_id, status, received_at) VALUES \
         ('msg_old', 'p', 'succeeded', now() - interval '8 days'), \
         ('msg_new', 'p', 'processing', now() - interval '6 days')",
    )
    .await;
    let pruned =
        mage_domain::replicate::prune(&mut *app.conn().await, chrono::Utc::now()).await.expect("prune");
    assert_eq!(pruned, 1);
    assert_eq!(rows(&app).await.iter().map(|r| r.status.as_str()).collect::<Vec<_>>(), ["processing"]);
}

// ---- the backend against the fake ----

#[tokio::test(flavor = "multi_thread")]
async fn a_video_renders_with_webhooks_and_is_downloaded() {
    let (app, fake) = (app().await, fake().await);
    // No quiet poll before the test's deadline: only webhooks can end it.
    let backend = backend_quiet(&app, &fake, true, WITHIN * 2);
    assert!(backend.health().await.expect("health").healthy);
    let work = tempfile::tempdir().expect("tmp");
    let req = request(work.path(), "text-to-video", MediaKind::Video, "a lighthouse at dusk", vec![]);
    let (generation, job_id) = (req.generation_id, req.job_id.clone());
    let job = backend.submit(req).await.expect("submit");
    assert_ne!(job.id, job_id, "the prediction id names the job");
    assert_eq!(job.location, fake.url());

    let (progress, end) = run(&backend, &job).await;
    let out = end.expect("finished");
    assert_eq!(out.files.len(), 1);
    assert_eq!(out.files[0].extension().and_then(|e| e.to_str()), Some("mp4"));
    assert!(std::fs::metadata(&out.files[0]).expect("downloaded").len() > 0);
    assert!(out.files[0].starts_with(&job.work_dir));
    assert_monotonic(&progress);
    assert!(progress.iter().any(|(s, p)| s == "rendering" && *p > 0 && *p < 100), "{progress:?}");
    assert_eq!(progress.last().map(|(_, p)| *p), Some(100));

    // What Replicate was asked.
    let created = fake.create_requests();
    assert_eq!(created.len(), 1);
    let c = &created[0];
    assert_eq!(c.path, "/v1/models/wan-video/wan-2.2-t2v-fast/predictions");
    assert_eq!(c.headers.get("cancel-after").map(String::as_str), Some("660s"));
    let hook = c.body["webhook"].as_str().expect("webhook");
    assert_eq!(hook, app.url(&format!("/webhooks/replicate?generation={generation}&job={job_id}")));
    assert_eq!(c.body["webhook_events_filter"], json!(["start", "output", "logs", "completed"]));
    let input = &c.body["input"];
    assert_eq!(
        (
            &input["prompt"],
            &input["seed"],
            &input["num_frames"],
            &input["resolution"],
            &input["aspect_ratio"]
        ),
        (&json!("a lighthouse at dusk"), &json!(7), &json!(17), &json!("480p"), &json!("16:9"))
    );
    // The webhooks reached the API and were recorded once each.
    let sent = fake.webhooks_sent();
    assert!(sent.iter().any(|w| w.response_status == Some(200)), "{sent:?}");
    let stored = rows(&app).await;
    assert!(
        !stored.is_empty()
            && stored.iter().all(|r| r.prediction_id == job.id && r.generation_id == Some(generation))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_image_renders_without_webhooks_by_polling() {
    let (app, fake) = (app().await, fake().await);
    let backend = backend(&app, &fake, false);
    let work = tempfile::tempdir().expect("tmp");
    let req = request(work.path(), "text-to-image", MediaKind::Image, "a red kite", vec![]);
    let job = backend.submit(req).await.expect("submit");
    let (progress, end) = run(&backend, &job).await;
    let out = end.expect("finished");
    assert_eq!(out.files[0].extension().and_then(|e| e.to_str()), Some("png"));
    assert_monotonic(&progress);
    let c = &fake.create_requests()[0];
    assert_eq!(c.path, "/v1/models/black-forest-labs/flux-schnell/predictions");
    assert!(c.body.get("webhook").is_none(), "{}", c.body);
    assert!(fake.webhooks_sent().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn lost_webhooks_are_made_up_for_by_polling() {
    let (app, fake) = (app().await, fake().await);
    fake.drop_webhooks(true);
    let backend = backend(&app, &fake, true);
    let work = tempfile::tempdir().expect("tmp");
    let job = backend
        .submit(request(work.path(), "text-to-image", MediaKind::Image, "a quiet pond", vec![]))
        .await
        .expect("submit");
    let (_, end) = run(&backend, &job).await;
    assert!(end.is_ok(), "{end:?}");
    assert!(fake.webhooks_dropped() > 0);
    assert!(rows(&app).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn duplicated_webhooks_are_acted_upon_once() {
    let (app, fake) = (app().await, fake().await);
    fake.duplicate_webhooks(true);
    let backend = backend(&app, &fake, true);
    let work = tempfile::tempdir().expect("tmp");
    let job = backend
        .submit(request(work.path(), "text-to-image", MediaKind::Image, "two moons", vec![]))
        .await
        .expect("submit");
    let (progress, end) = run(&backend, &job).await;
    assert!(end.is_ok(), "{end:?}");
    assert_monotonic(&progress);
    // Wait for the last webhooks the fake sends after completion.
    let distinct = |sent: &[mage_fakes::replicate::SentWebhook]| {
        let mut ids: Vec<&str> =
            sent.iter().filter(|w| w.response_status == Some(200)).map(|w| w.webhook_id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        ids.len()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let sent = fake.webhooks_sent();
        let answered = sent.iter().filter(|w| w.response_status == Some(200)).count();
        if answered > distinct(&sent) && rows(&app).await.len() == distinct(&sent) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "sent {sent:?}, rows {:?}", rows(&app).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_prediction_fails_with_replicates_error() {
    let (app, fake) = (app().await, fake().await);
    fake.fail_when_prompt_contains(
        "forbidden",
        "NSFW content detected. Try running it again, or try a different prompt.",
    );
    let backend = backend(&app, &fake, true);
    let work = tempfile::tempdir().expect("tmp");
    let job = backend
        .submit(request(work.path(), "text-to-video", MediaKind::Video, "a forbidden dance", vec![]))
        .await
        .expect("submit");
    let (progress, end) = run(&backend, &job).await;
    assert_monotonic(&progress);
    match end {
        Err(RenderError::Failed { user_message, .. }) => {
            assert_eq!(
                user_message,
                "NSFW content detected. Try running it again, or try a different prompt."
            )
        }
        other => panic!("expected Failed, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_reaches_replicate() {
    let (app, fake) = (app().await, fake().await);
    fake.set_run_time(Duration::from_secs(30));
    let backend = backend(&app, &fake, true);
    let work = tempfile::tempdir().expect("tmp");
    let job = backend
        .submit(request(work.path(), "text-to-video", MediaKind::Video, "a long take", vec![]))
        .await
        .expect("submit");
    let mut events = backend.events(&job);
    let first = tokio::time::timeout(WITHIN, events.next()).await.expect("an event");
    assert!(matches!(first, Some(Ok(RenderEvent::Progress { .. }))), "{first:?}");
    drop(events);
    backend.cancel(&job).await.expect("cancel");
    assert_eq!(fake.cancels(), std::slice::from_ref(&job.id));
    // Cancelling again, or a job Replicate never had, does nothing.
    backend.cancel(&job).await.expect("cancel again");
    let status = fake.predictions()[0]["status"].clone();
    assert_eq!(status, "canceled");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_token_makes_the_backend_unhealthy() {
    let (app, fake) = (app().await, fake().await);
    let backend = backend(&app, &fake, true);
    assert!(backend.health().await.expect("health").healthy);
    fake.set_token("r8_rotated_token");
    let health = backend.health().await.expect("health");
    assert!(!health.healthy);
    assert!(health.detail.contains("MAGE_REPLICATE_API_TOKEN"), "{}", health.detail);
    let work = tempfile::tempdir().expect("tmp");
    let refused = backend.submit(request(work.path(), "text-to-image", MediaKind::Image, "x", vec![])).await;
    assert!(matches!(refused, Err(RenderError::Refused(_))), "{refused:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limits_and_outages_are_waited_out() {
    let (app, fake) = (app().await, fake().await);
    let backend = backend(&app, &fake, true);
    let work = tempfile::tempdir().expect("tmp");
    fake.rate_limit_next(2);
    let job = backend
        .submit(request(work.path(), "text-to-image", MediaKind::Image, "patience", vec![]))
        .await
        .expect("submit after 429s");
    fake.fail_next(2, 503);
    let (_, end) = run(&backend, &job).await;
    assert!(end.is_ok(), "{end:?}");
    assert_eq!(fake.predictions().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_input_image_goes_through_the_files_api() {
    let (app, fake) = (app().await, fake().await);
    let backend = backend(&app, &fake, true);
    let work = tempfile::tempdir().expect("tmp");
    let input = work.path().join("input-0.png");
    let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR not really a png".to_vec();
    std::fs::write(&input, &png).expect("input");
    let req = request(work.path(), "image-to-video", MediaKind::Video, "it comes alive", vec![input]);
    let generation = req.generation_id;
    let job = backend.submit(req).await.expect("submit");
    let (_, end) = run(&backend, &job).await;
    assert!(end.is_ok(), "{end:?}");
    let files = fake.files();
    assert_eq!(files.len(), 1);
    assert_eq!(
        (files[0].name.as_str(), files[0].content_type.as_str()),
        (format!("mage-{generation}-0.png").as_str(), "image/png")
    );
    assert_eq!(files[0].bytes, png);
    let image = fake.create_requests()[0].body["input"]["image"].as_str().expect("image").to_owned();
    assert!(image.starts_with(&fake.url()) && image.contains(&files[0].id), "{image}");

    // A template that takes an image refuses a request without one.
    let refused = backend.submit(request(work.path(), "image-to-video", MediaKind::Video, "x", vec![])).await;
    assert!(matches!(refused, Err(RenderError::Failed { .. })), "{refused:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_taking_over_finds_the_prediction_by_mages_job_id() {
    let (app, fake) = (app().await, fake().await);
    fake.set_run_time(Duration::from_secs(2));
    let backend = backend(&app, &fake, true);
    let work = tempfile::tempdir().expect("tmp");
    let req = request(work.path(), "text-to-video", MediaKind::Video, "handed over", vec![]);
    let job_id = req.job_id.clone();
    let submitted = backend.submit(req).await.expect("submit");
    // The worker died before recording the prediction id: only Mage's job
    // id is on the generation. Another worker (another backend instance)
    // attaches.
    let other = self::backend(&app, &fake, true);
    let recorded = RenderJob { id: job_id, ..submitted.clone() };
    let (_, end) = run(&other, &recorded).await;
    assert!(end.is_ok(), "{end:?}");
    assert_eq!(fake.predictions().len(), 1, "attached, not rendered twice");
    assert_eq!(fake.create_requests().len(), 1);
    // And cancelling by that name reaches the same prediction.
    other.cancel(&recorded).await.expect("cancel");
    assert_eq!(fake.cancels(), [submitted.id]);

    // A job Replicate has no prediction of is lost: render.rs submits again.
    let unknown = RenderJob { id: Uuid::new_v4().to_string(), ..recorded };
    let (_, end) = run(&other, &unknown).await;
    assert!(matches!(end, Err(RenderError::Lost(_))), "{end:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn outputs_gone_before_download_make_the_job_lost() {
    let (app, fake) = (app().await, fake().await);
    fake.expire_outputs_after(Duration::ZERO);
    let backend = backend(&app, &fake, false);
    let work = tempfile::tempdir().expect("tmp");
    let job = backend
        .submit(request(work.path(), "text-to-image", MediaKind::Image, "ephemeral", vec![]))
        .await
        .expect("submit");
    let (_, end) = run(&backend, &job).await;
    assert!(matches!(end, Err(RenderError::Lost(_))), "{end:?}");
    let left: Vec<_> = std::fs::read_dir(&job.work_dir).expect("work dir").collect();
    assert!(left.is_empty(), "partial outputs left: {left:?}");
}
