#![allow(clippy::unwrap_used)]

use std::collections::VecDeque;

use axum::http::HeaderMap;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::predictions::{parse_duration, tqdm_line};
use super::*;

/// The secret of the Standard Webhooks test vector.
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const VERSION: &str = "5c7d5dc6dd8bf75c1acaa8565735e7986bc5b66206b55cca93cb72c9bf15ccaa";

async fn quick_fake() -> FakeReplicate {
    let fake = FakeReplicate::start(SECRET).await;
    fake.set_run_time(Duration::from_millis(300));
    fake.set_steps(5);
    fake
}

struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Value,
}

async fn call(
    fake: &FakeReplicate,
    method: Method,
    path: &str,
    body: Option<Value>,
    extra: &[(&str, &str)],
) -> Answer {
    let mut request = reqwest::Client::new()
        .request(method, format!("{}{path}", fake.url()))
        .header("authorization", format!("Bearer {}", fake.token()));
    for (k, v) in extra {
        request = request.header(*k, *v);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.unwrap();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Answer { status, headers, body }
}

async fn create(fake: &FakeReplicate, model: &str, body: Value) -> Value {
    let answer = call(fake, Method::POST, &format!("/v1/models/{model}/predictions"), Some(body), &[]).await;
    assert_eq!(answer.status, 201, "{}", answer.body);
    answer.body
}

/// Polls the prediction until `done` holds; gives up after 20 s so a broken
/// fake fails instead of hanging.
async fn poll_until(fake: &FakeReplicate, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..400 {
        let answer = call(fake, Method::GET, &format!("/v1/predictions/{id}"), None, &[]).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        if done(&answer.body) {
            return answer.body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("prediction {id} never got there");
}

async fn finished(fake: &FakeReplicate, id: &str) -> Value {
    poll_until(fake, id, |p| is_terminal(p["status"].as_str().unwrap())).await
}

async fn download(url: &str) -> (u16, Vec<u8>) {
    let response = reqwest::get(url).await.unwrap();
    (response.status().as_u16(), response.bytes().await.unwrap().to_vec())
}

/// Requests a [`Receiver`] got: headers and body.
type Received = Arc<Mutex<Vec<(HeaderMap, Vec<u8>)>>>;

/// A webhook endpoint that records what it gets and answers the queued
/// statuses, then 200.
struct Receiver {
    url: String,
    got: Received,
    _stop: tokio_util::sync::DropGuard,
}

impl Receiver {
    async fn start(statuses: &[u16]) -> Self {
        let got: Received = Arc::default();
        let answers = Arc::new(Mutex::new(statuses.iter().copied().collect::<VecDeque<u16>>()));
        let (seen, answers2) = (got.clone(), answers.clone());
        let app = Router::new().route(
            "/hook",
            post(move |headers: HeaderMap, body: axum::body::Bytes| async move {
                seen.lock().unwrap().push((headers, body.to_vec()));
                let status = answers2.lock().unwrap().pop_front().unwrap_or(200);
                StatusCode::from_u16(status).unwrap()
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let serve_stop = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).with_graceful_shutdown(serve_stop.cancelled_owned()).await;
        });
        Self { url: format!("http://{addr}/hook"), got, _stop: stop.drop_guard() }
    }

    fn bodies(&self) -> Vec<Value> {
        self.got.lock().unwrap().iter().map(|(_, b)| serde_json::from_slice(b).unwrap()).collect()
    }

    /// Waits until `n` requests arrived (at most 20 s).
    async fn wait_for(&self, n: usize) {
        for _ in 0..400 {
            if self.got.lock().unwrap().len() >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("only {} webhooks arrived, wanted {n}", self.got.lock().unwrap().len());
    }
}

/// Standard Webhooks verification, written from the spec rather than with
/// [`sign`].
fn verify(secret: &str, headers: &HeaderMap, body: &[u8]) -> bool {
    let header = |name: &str| headers.get(name).unwrap().to_str().unwrap().to_owned();
    let key = STANDARD.decode(secret.strip_prefix("whsec_").unwrap()).unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    let signed = format!("{}.{}.", header("webhook-id"), header("webhook-timestamp"));
    mac.update(signed.as_bytes());
    mac.update(body);
    let expected = STANDARD.encode(mac.finalize().into_bytes());
    header("webhook-signature").split(' ').any(|s| s.strip_prefix("v1,") == Some(expected.as_str()))
}

#[test]
fn signs_the_standard_webhooks_test_vector() {
    let signature = sign(SECRET, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1_614_265_330, br#"{"test": 2432232314}"#);
    assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
}

#[test]
fn progress_lines_are_tqdm_lines() {
    assert_eq!(tqdm_line(0, 10, Duration::ZERO), "  0%|          | 0/10 [00:00<?, ?it/s]");
    assert_eq!(
        tqdm_line(1, 10, Duration::from_secs_f64(1.0 / 9.5)),
        " 10%|█         | 1/10 [00:00<00:00,  9.50it/s]"
    );
    assert_eq!(tqdm_line(1, 3, Duration::from_secs(2)), " 33%|███▎      | 1/3 [00:02<00:04,  2.00s/it]");
    assert_eq!(tqdm_line(10, 10, Duration::from_secs(75)), "100%|██████████| 10/10 [01:15<00:00,  7.50s/it]");
    assert_eq!(
        tqdm_line(28, 28, Duration::from_secs_f64(3.5)),
        "100%|██████████| 28/28 [00:03<00:00,  8.00it/s]"
    );
}

#[test]
fn cancel_after_takes_go_durations() {
    assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
    assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
    assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
    assert_eq!(parse_duration("1.5h"), Some(Duration::from_secs(5400)));
    assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
    assert_eq!(parse_duration("90"), Some(Duration::from_secs(90)));
    for bad in ["", "soon", "5x", "m5", "-3s"] {
        assert_eq!(parse_duration(bad), None, "{bad}");
    }
}

#[tokio::test]
async fn an_image_model_runs_to_success_with_tqdm_logs_and_a_downloadable_output() {
    let fake = quick_fake().await;
    let created = create(
        &fake,
        "black-forest-labs/flux-schnell",
        json!({"input": {"prompt": "a lighthouse at dusk", "seed": 42, "width": 320, "height": 240}}),
    )
    .await;
    let id = created["id"].as_str().unwrap();
    assert!(id.len() == 26 && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()), "{id}");
    assert_eq!(created["status"], "starting");
    assert_eq!(created["model"], "black-forest-labs/flux-schnell");
    assert_eq!(created["version"], "hidden");
    assert_eq!(created["input"]["prompt"], "a lighthouse at dusk");
    assert_eq!((created["output"].clone(), created["error"].clone()), (Value::Null, Value::Null));
    assert_eq!(created["urls"]["get"], format!("{}/v1/predictions/{id}", fake.url()));
    assert_eq!(created["urls"]["cancel"], format!("{}/v1/predictions/{id}/cancel", fake.url()));
    assert_eq!(created["urls"]["web"], format!("https://replicate.com/p/{id}"));
    assert!(created["created_at"].as_str().unwrap().ends_with('Z'));
    assert!(created["started_at"].is_null() && created["completed_at"].is_null());

    let running = poll_until(&fake, id, |p| p["status"] != "starting").await;
    assert!(running["started_at"].is_string(), "{running}");
    let done = finished(&fake, id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let logs = done["logs"].as_str().unwrap();
    assert!(logs.starts_with("Using seed: 42\n  0%|          | 0/5 [00:00<?, ?it/s]\n"), "{logs}");
    assert!(logs.contains(" 20%|██        | 1/5 ["), "{logs}");
    assert!(logs.contains("100%|██████████| 5/5 ["), "{logs}");
    assert!(done["completed_at"].as_str().unwrap() >= done["started_at"].as_str().unwrap());
    assert!(done["metrics"]["predict_time"].as_f64().unwrap() > 0.0);
    assert!(
        done["metrics"]["total_time"].as_f64().unwrap() >= done["metrics"]["predict_time"].as_f64().unwrap()
    );

    let outputs = done["output"].as_array().unwrap();
    assert_eq!(outputs.len(), 1);
    let url = outputs[0].as_str().unwrap();
    assert_eq!(url, format!("{}/delivery/{id}/output.png", fake.url()));
    let (status, png) = download(url).await;
    assert_eq!(status, 200);
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"));
    // The IHDR chunk holds the size asked for.
    assert_eq!((&png[16..20], &png[20..24]), (&320u32.to_be_bytes()[..], &240u32.to_be_bytes()[..]));

    assert_eq!(fake.predictions(), vec![done.clone()]);
    let requests = fake.create_requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].path, "/v1/models/black-forest-labs/flux-schnell/predictions");
    assert_eq!(requests[0].headers["authorization"], "Bearer r8_fake_token");
    assert_eq!(requests[0].body["input"]["seed"], 42);
}

#[tokio::test]
async fn a_video_model_answers_one_mp4_url() {
    let fake = quick_fake().await;
    let body = json!({
        "version": format!("wan-video/wan-2.2-i2v-fast:{VERSION}"),
        "input": {"prompt": "waves", "width": 320, "height": 240, "num_frames": 8},
    });
    let created = call(&fake, Method::POST, "/v1/predictions", Some(body), &[]).await;
    assert_eq!(created.status, 201, "{}", created.body);
    assert_eq!(
        (created.body["model"].as_str(), created.body["version"].as_str()),
        (Some("wan-video/wan-2.2-i2v-fast"), Some(VERSION))
    );
    let done = finished(&fake, created.body["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let url = done["output"].as_str().unwrap();
    assert!(url.ends_with("/output.mp4"), "{url}");
    let (status, mp4) = download(url).await;
    assert_eq!(status, 200);
    assert_eq!(&mp4[4..8], b"ftyp");
}

#[tokio::test]
async fn webhooks_are_signed_ordered_and_filtered() {
    let fake = FakeReplicate::start(SECRET).await;
    fake.set_run_time(Duration::from_millis(1200));
    fake.set_steps(6);
    let receiver = Receiver::start(&[]).await;
    let created = create(
        &fake,
        "black-forest-labs/flux-schnell",
        json!({"input": {"prompt": "p"}, "webhook": receiver.url}),
    )
    .await;
    assert_eq!(created["webhook"], receiver.url);
    assert_eq!(created["webhook_events_filter"], json!(["start", "output", "logs", "completed"]));
    let id = created["id"].as_str().unwrap();
    finished(&fake, id).await;
    let sent = poll_webhooks(&fake, |s| s.iter().any(|w| w.event == "completed")).await;
    receiver.wait_for(sent.len()).await;

    let events: Vec<&str> = sent.iter().map(|w| w.event.as_str()).collect();
    assert_eq!(events.first(), Some(&"start"), "{events:?}");
    assert_eq!(&events[events.len() - 2..], ["output", "completed"], "{events:?}");
    assert!(events.contains(&"logs"), "{events:?}");
    let ids: std::collections::BTreeSet<&str> = sent.iter().map(|w| w.webhook_id.as_str()).collect();
    assert_eq!(ids.len(), sent.len(), "each event has its own id");
    assert!(sent.iter().all(|w| w.webhook_id.starts_with("msg_") && w.response_status == Some(200)));
    assert!(sent.iter().all(|w| w.url == receiver.url));

    let got = receiver.got.lock().unwrap().clone();
    for (headers, body) in &got {
        assert!(verify(SECRET, headers, body), "bad signature on {}", String::from_utf8_lossy(body));
        assert_eq!(headers["content-type"], "application/json");
        let sent_at: i64 = headers["webhook-timestamp"].to_str().unwrap().parse().unwrap();
        assert!((Utc::now().timestamp() - sent_at).abs() < 300);
    }
    assert!(!verify("whsec_c2VjcmV0LW9mLXNvbWVvbmUtZWxzZQ==", &got[0].0, &got[0].1));
    let bodies = receiver.bodies();
    assert_eq!(bodies[0]["status"], "processing");
    assert!(bodies[0]["output"].is_null());
    let output = &bodies[bodies.len() - 2];
    assert_eq!((output["status"].as_str(), output["output"].is_array()), (Some("processing"), true));
    let last = bodies.last().unwrap();
    assert_eq!(last["status"], "succeeded");
    assert_eq!(last["id"], id);
    assert_eq!(sent.last().unwrap().status, "succeeded");

    fake.set_run_time(Duration::from_millis(100));
    let only_completed = create(
        &fake,
        "black-forest-labs/flux-schnell",
        json!({"input": {"prompt": "p"}, "webhook": receiver.url, "webhook_events_filter": ["completed"]}),
    )
    .await;
    finished(&fake, only_completed["id"].as_str().unwrap()).await;
    let sent = poll_webhooks(&fake, |s| s.iter().filter(|w| w.event == "completed").count() == 2).await;
    receiver.wait_for(sent.len()).await;
    let theirs: Vec<Value> = receiver
        .bodies()
        .into_iter()
        .filter(|b| b["id"] == only_completed["id"])
        .map(|b| b["status"].clone())
        .collect();
    assert_eq!(theirs, [json!("succeeded")]);
}

async fn poll_webhooks(fake: &FakeReplicate, done: impl Fn(&[SentWebhook]) -> bool) -> Vec<SentWebhook> {
    for _ in 0..400 {
        let sent = fake.webhooks_sent();
        if done(&sent) {
            return sent;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("webhooks never got there: {:?}", fake.webhooks_sent());
}

#[tokio::test]
async fn completed_webhooks_are_retried_and_can_be_duplicated_or_dropped() {
    let fake = quick_fake().await;
    fake.set_run_time(Duration::from_millis(50));
    let receiver = Receiver::start(&[500, 503]).await;
    let hook = |events: Value| {
        let input = json!({"prompt": "p", "width": 64, "height": 64});
        json!({"input": input, "webhook": receiver.url, "webhook_events_filter": events})
    };

    let first = create(&fake, "owner/model", hook(json!(["completed"]))).await;
    finished(&fake, first["id"].as_str().unwrap()).await;
    let sent = poll_webhooks(&fake, |s| s.len() == 3).await;
    let statuses: Vec<Option<u16>> = sent.iter().map(|w| w.response_status).collect();
    assert_eq!(statuses, [Some(500), Some(503), Some(200)]);
    assert!(sent.iter().all(|w| w.webhook_id == sent[0].webhook_id), "retries keep their id");

    // Only terminal events are retried.
    let receiver_start = Receiver::start(&[500]).await;
    let start_only =
        json!({"input": {"prompt": "p"}, "webhook": receiver_start.url, "webhook_events_filter": ["start"]});
    let second = create(&fake, "owner/model", start_only).await;
    finished(&fake, second["id"].as_str().unwrap()).await;
    let sent = poll_webhooks(&fake, |s| s.len() == 4).await;
    assert_eq!((sent[3].event.as_str(), sent[3].response_status), ("start", Some(500)));

    fake.duplicate_webhooks(true);
    let third = create(&fake, "owner/model", hook(json!(["completed"]))).await;
    finished(&fake, third["id"].as_str().unwrap()).await;
    let sent = poll_webhooks(&fake, |s| s.len() == 6).await;
    assert_eq!(sent[4].webhook_id, sent[5].webhook_id);
    assert_eq!(receiver.bodies().iter().filter(|b| b["id"] == third["id"]).count(), 2);

    fake.duplicate_webhooks(false);
    fake.drop_webhooks(true);
    let fourth = create(&fake, "owner/model", hook(json!(["start", "completed"]))).await;
    finished(&fake, fourth["id"].as_str().unwrap()).await;
    for _ in 0..400 {
        if fake.webhooks_dropped() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(fake.webhooks_dropped(), 2);
    assert_eq!(fake.webhooks_sent().len(), 6);
}

#[tokio::test]
async fn cancel_stops_a_running_prediction() {
    let fake = quick_fake().await;
    fake.set_run_time(Duration::from_secs(30));
    let created = create(&fake, "owner/model", json!({"input": {"prompt": "slow"}})).await;
    let id = created["id"].as_str().unwrap();
    poll_until(&fake, id, |p| p["status"] == "processing").await;
    let canceled = call(&fake, Method::POST, &format!("/v1/predictions/{id}/cancel"), None, &[]).await;
    assert_eq!(canceled.status, 200);
    assert_eq!(canceled.body["status"], "canceled");
    assert!(canceled.body["completed_at"].is_string());
    assert!(canceled.body["output"].is_null());
    assert_eq!(fake.cancels(), vec![id.to_owned()]);
    let again = call(&fake, Method::POST, &format!("/v1/predictions/{id}/cancel"), None, &[]).await;
    assert_eq!(again.body, canceled.body, "a finished prediction is unchanged");
    let unknown = call(&fake, Method::POST, "/v1/predictions/nope/cancel", None, &[]).await;
    assert_eq!((unknown.status, unknown.body["title"].as_str()), (404, Some("Not found")));
    assert_eq!(fake.predictions()[0]["status"], "canceled");
}

#[tokio::test]
async fn bad_tokens_are_401() {
    let fake = quick_fake().await;
    let account = |authorization: Option<String>| {
        let mut request = reqwest::Client::new().get(format!("{}/v1/account", fake.url()));
        if let Some(a) = authorization {
            request = request.header("authorization", a);
        }
        async move {
            let response = request.send().await.unwrap();
            (response.status().as_u16(), response.json::<Value>().await.unwrap())
        }
    };
    let unauthenticated = json!({
        "title": "Unauthenticated",
        "detail": "You did not pass a valid authentication token",
        "status": 401,
    });
    assert_eq!(account(None).await, (401, unauthenticated.clone()));
    assert_eq!(account(Some("Bearer r8_wrong".into())).await, (401, unauthenticated.clone()));
    let ok = account(Some("Bearer r8_fake_token".into())).await;
    assert_eq!(
        ok,
        (200, json!({"type": "organization", "username": "fake", "name": "Fake", "github_url": null}))
    );
    assert_eq!(account(Some("Token r8_fake_token".into())).await.0, 200);

    fake.set_token("r8_rotated");
    assert_eq!(fake.token(), "r8_rotated");
    assert_eq!(account(Some("Bearer r8_fake_token".into())).await, (401, unauthenticated));
    assert_eq!(account(Some("Bearer r8_rotated".into())).await.0, 200);
    let created =
        call(&fake, Method::POST, "/v1/models/a/b/predictions", Some(json!({"input": {}})), &[]).await;
    assert_eq!(created.status, 201);
}

#[tokio::test]
async fn rate_limits_and_outages_answer_as_told() {
    let fake = quick_fake().await;
    fake.rate_limit_next(2);
    for _ in 0..2 {
        let limited = call(&fake, Method::GET, "/v1/account", None, &[]).await;
        assert_eq!(limited.status, 429);
        assert_eq!(limited.headers["retry-after"], "1");
        assert_eq!(limited.body["title"], "Too Many Requests");
        assert_eq!(limited.body["status"], 429);
        assert!(limited.body["detail"].is_string());
    }
    assert_eq!(call(&fake, Method::GET, "/v1/account", None, &[]).await.status, 200);

    fake.fail_next(1, 503);
    let body = json!({"input": {"prompt": "p"}});
    let down = call(&fake, Method::POST, "/v1/models/a/b/predictions", Some(body.clone()), &[]).await;
    assert_eq!((down.status, down.body["status"].clone()), (503, json!(503)));
    assert!(fake.predictions().is_empty());
    assert_eq!(call(&fake, Method::POST, "/v1/models/a/b/predictions", Some(body), &[]).await.status, 201);
    assert_eq!(fake.create_requests().len(), 2, "refused creates are recorded too");
    assert_eq!(fake.predictions().len(), 1);
}

fn multipart(boundary: &str, name: &str, content_type: &str, bytes: &[u8], metadata: &str) -> Vec<u8> {
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"content\"; filename=\"{name}\"\r\nContent-Type: {content_type}\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(bytes);
    body.extend_from_slice(
        format!(
            "\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"metadata\"\r\nContent-Type: application/json\r\n\r\n{metadata}\r\n--{boundary}--\r\n"
        )
        .as_bytes(),
    );
    body
}

#[tokio::test]
async fn uploaded_files_feed_predictions_and_unknown_urls_fail_them() {
    let fake = quick_fake().await;
    let image = b"\x89PNG\r\n\x1a\nnot really a png".to_vec();
    let response = reqwest::Client::new()
        .post(format!("{}/v1/files", fake.url()))
        .header("authorization", "Bearer r8_fake_token")
        .header("content-type", "multipart/form-data; boundary=XyZ")
        .body(multipart("XyZ", "cat.png", "image/png", &image, r#"{"generation": "g1"}"#))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    let file: Value = response.json().await.unwrap();
    let id = file["id"].as_str().unwrap();
    assert_eq!(file["name"], "cat.png");
    assert_eq!(file["content_type"], "image/png");
    assert_eq!(file["size"], image.len());
    assert_eq!(file["checksums"]["sha256"], hex::encode(Sha256::digest(&image)));
    assert_eq!(file["checksums"]["md5"].as_str().unwrap().len(), 32);
    assert_eq!(file["metadata"], json!({"generation": "g1"}));
    assert!(file["expires_at"].as_str().unwrap() > file["created_at"].as_str().unwrap());
    let get_url = file["urls"]["get"].as_str().unwrap();
    assert_eq!(get_url, format!("{}/v1/files/{id}", fake.url()));
    assert_eq!(
        fake.files(),
        vec![UploadedFile {
            id: id.into(),
            name: "cat.png".into(),
            content_type: "image/png".into(),
            bytes: image.clone()
        }]
    );

    let fetched = call(&fake, Method::GET, &format!("/v1/files/{id}"), None, &[]).await;
    assert_eq!(fetched.body, file);
    let (status, bytes) = download(&format!("{get_url}/download")).await;
    assert_eq!((status, bytes), (200, image));

    let with_file =
        create(&fake, "wan-video/wan-2.2-i2v-fast", json!({"input": {"prompt": "p", "image": get_url}}))
            .await;
    let done = finished(&fake, with_file["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "succeeded", "{done}");

    let elsewhere = json!({"input": {"prompt": "p", "image": "https://example.com/cat.png"}});
    let without = create(&fake, "wan-video/wan-2.2-i2v-fast", elsewhere).await;
    let failed = finished(&fake, without["id"].as_str().unwrap()).await;
    assert_eq!(
        (failed["status"].as_str(), failed["error"].as_str()),
        (Some("failed"), Some("input image not found"))
    );
    let gone = json!({"input": {"prompt": "p", "image": format!("{}/v1/files/nosuchfile", fake.url())}});
    let missing = finished(&fake, create(&fake, "owner/model", gone).await["id"].as_str().unwrap()).await;
    assert_eq!(missing["error"], "input image not found");
}

#[tokio::test]
async fn cancel_after_cancels_what_still_runs_and_aborts_what_has_not_started() {
    let fake = quick_fake().await;
    fake.set_run_time(Duration::from_secs(30));
    let body = json!({"input": {"prompt": "slow"}});
    let path = "/v1/models/owner/model/predictions";
    let created = call(&fake, Method::POST, path, Some(body.clone()), &[("cancel-after", "400ms")]).await;
    assert_eq!(created.status, 201);
    assert!(created.body["deadline"].as_str().unwrap() > created.body["created_at"].as_str().unwrap());
    let done = finished(&fake, created.body["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "canceled");
    assert!(done["logs"].as_str().unwrap().starts_with("Using seed: "));
    assert_eq!(fake.create_requests()[0].headers["cancel-after"], "400ms");
    assert!(fake.cancels().is_empty(), "the fake canceled it, not a request");

    let early = call(&fake, Method::POST, path, Some(body.clone()), &[("cancel-after", "10ms")]).await;
    let aborted = finished(&fake, early.body["id"].as_str().unwrap()).await;
    assert_eq!(aborted["status"], "aborted");
    assert!(aborted["started_at"].is_null());

    let bad = call(&fake, Method::POST, path, Some(body), &[("cancel-after", "whenever")]).await;
    assert_eq!((bad.status, bad.body["status"].clone()), (400, json!(400)));
}

#[tokio::test]
async fn invalid_requests_are_refused_as_replicate_does() {
    let fake = quick_fake().await;
    let missing = call(&fake, Method::POST, "/v1/models/a/b/predictions", Some(json!({})), &[]).await;
    assert_eq!(missing.status, 422);
    assert_eq!(missing.body["title"], "Input validation failed");
    assert_eq!(missing.body["status"], 422);
    assert_eq!(missing.body["invalid_fields"][0]["field"], "input");
    let not_object =
        call(&fake, Method::POST, "/v1/models/a/b/predictions", Some(json!({"input": "a cat"})), &[]).await;
    assert_eq!(not_object.status, 422);
    let bad_version =
        call(&fake, Method::POST, "/v1/predictions", Some(json!({"version": "nope", "input": {}})), &[])
            .await;
    assert_eq!(
        (bad_version.status, bad_version.body["invalid_fields"][0]["field"].clone()),
        (422, json!("version"))
    );
    let bad_filter =
        json!({"input": {}, "webhook": "http://127.0.0.1:9/x", "webhook_events_filter": ["done"]});
    assert_eq!(
        call(&fake, Method::POST, "/v1/models/a/b/predictions", Some(bad_filter), &[]).await.status,
        422
    );
    let unknown = call(&fake, Method::GET, "/v1/predictions/doesnotexist", None, &[]).await;
    assert_eq!((unknown.status, unknown.body["title"].clone()), (404, json!("Not found")));
    assert!(fake.predictions().is_empty());
}

#[tokio::test]
async fn failing_prompts_fail_with_their_error_and_keep_their_logs() {
    let fake = quick_fake().await;
    fake.fail_when_prompt_contains("boom", "CUDA out of memory");
    let created = create(&fake, "owner/model", json!({"input": {"prompt": "a boom box"}})).await;
    let done = finished(&fake, created["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "failed");
    assert_eq!(done["error"], "CUDA out of memory");
    assert!(done["output"].is_null());
    let logs = done["logs"].as_str().unwrap();
    assert!(
        logs.starts_with("Using seed: ") && logs.contains("3/5") && logs.contains("CUDA out of memory"),
        "{logs}"
    );
}

#[tokio::test]
async fn sync_mode_waits_and_the_list_is_newest_first() {
    let fake = quick_fake().await;
    let first = create(&fake, "owner/model", json!({"input": {"prompt": "one"}})).await;
    let body = json!({"input": {"prompt": "two"}});
    let waited =
        call(&fake, Method::POST, "/v1/models/owner/model/predictions", Some(body), &[("prefer", "wait")])
            .await;
    assert_eq!((waited.status, waited.body["status"].as_str()), (201, Some("succeeded")));
    let list = call(&fake, Method::GET, "/v1/predictions?cursor=abc", None, &[]).await;
    assert_eq!(list.status, 200);
    assert!(list.body["next"].is_null() && list.body["previous"].is_null());
    let ids: Vec<&Value> = list.body["results"].as_array().unwrap().iter().map(|p| &p["id"]).collect();
    assert_eq!(ids, [&waited.body["id"], &first["id"]]);
}

#[tokio::test]
async fn outputs_expire() {
    let fake = quick_fake().await;
    fake.expire_outputs_after(Duration::ZERO);
    let created = create(&fake, "owner/model", json!({"input": {"prompt": "p"}})).await;
    let done = finished(&fake, created["id"].as_str().unwrap()).await;
    let (status, _) = download(done["output"][0].as_str().unwrap()).await;
    assert_eq!(status, 404);
    fake.expire_outputs_after(Duration::from_secs(3600));
    let (status, _) = download(done["output"][0].as_str().unwrap()).await;
    assert_eq!(status, 200, "expiry counts from completion, as set now");
}

#[tokio::test]
async fn the_webhook_secret_is_served() {
    let fake = quick_fake().await;
    let secret = call(&fake, Method::GET, "/v1/webhooks/default/secret", None, &[]).await;
    assert_eq!(secret.body, json!({"key": SECRET}));
}
