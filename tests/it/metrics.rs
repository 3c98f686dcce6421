//! `/metrics` of `serve` and of `work` (`MAGE_METRICS_ADDR`): Prometheus
//! text that a parser reads, and figures that move when a generation runs.
//! JSON logs (`MAGE_LOG_FORMAT=json`) carry the generation's id.

use std::io::Read;
use std::time::{Duration, Instant};

use crate::support::TestApp;
use crate::support::process::{Child, free_port};
use prometheus_parse::{Scrape, Value as Metric};
use serde_json::{Value, json};

const CREATE: &str =
    "mutation Create($i: CreateGenerationInput!) { createGeneration(input: $i) { id cost } }";
const POLL: &str = "query Poll($id: ID!) { generation(id: $id) { status } }";

fn input() -> Value {
    json!({ "model": "synth-video", "prompt": "a lighthouse at dusk", "resolution": "R480P",
            "durationSeconds": 1 })
}

/// Every line is a comment or `name{label="value",...} number`, as the text
/// format says (the parser below skips what it cannot read, so this is the
/// strict half).
fn assert_well_formed(body: &str) {
    for line in body.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line}"));
        assert!(
            value.parse::<f64>().is_ok() || matches!(value, "+Inf" | "-Inf" | "NaN"),
            "bad value in {line}"
        );
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => {
                (n, Some(rest.strip_suffix('}').unwrap_or_else(|| panic!("unclosed: {line}"))))
            }
            None => (series, None),
        };
        assert!(
            !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line}"
        );
        if let Some(labels) = labels {
            // Values are quoted; split on `",` so commas inside them are kept.
            for pair in labels.split("\",").filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once("=\"").unwrap_or_else(|| panic!("bad label {pair:?} in {line}"));
                assert!(k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "bad label name in {line}");
                assert!(!v.contains('\n'), "{line}");
            }
        }
    }
}

const METRICS_TOKEN: &str = "metrics-token-for-this-test-only";

/// A client that sends the metrics token, as a Prometheus scrape config does.
fn scraper() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers
        .insert(reqwest::header::AUTHORIZATION, format!("Bearer {METRICS_TOKEN}").parse().expect("header"));
    reqwest::Client::builder().default_headers(headers).build().expect("client")
}

async fn scrape(http: &reqwest::Client, url: &str) -> Scrape {
    let res = http.get(url).send().await.expect("GET /metrics");
    assert_eq!(res.status(), 200);
    let ct = res.headers()["content-type"].to_str().expect("content type").to_owned();
    assert!(ct.starts_with("text/plain"), "{ct}");
    let body = res.text().await.expect("body");
    assert_well_formed(&body);
    let scrape = Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).expect("Prometheus text");
    assert!(!scrape.samples.is_empty(), "no samples in {body}");
    scrape
}

/// Sum of the samples of `metric` whose labels include `labels` (0 when
/// none: a counter not touched yet).
fn sum(s: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == metric && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match &x.value {
            Metric::Counter(v) | Metric::Gauge(v) | Metric::Untyped(v) => *v,
            Metric::Histogram(b) => b.iter().map(|c| c.count).fold(0.0, f64::max),
            Metric::Summary(_) => 0.0,
        })
        .sum()
}

fn present(s: &Scrape, metric: &str) -> bool {
    s.samples.iter().any(|x| x.metric == metric)
}

async fn run_one(app: &TestApp, token: &str) -> (String, i64) {
    let res = app.gql(CREATE, json!({ "i": input() }), Some(token)).await;
    let g = &res["data"]["createGeneration"];
    let id = g["id"].as_str().unwrap_or_else(|| panic!("{res}")).to_owned();
    let cost = g["cost"].as_i64().expect("cost");
    let start = Instant::now();
    loop {
        let r = app.gql(POLL, json!({ "id": id }), Some(token)).await;
        let status = r["data"]["generation"]["status"].as_str().unwrap_or_default().to_owned();
        if status == "SUCCEEDED" {
            return (id, cost);
        }
        assert!(!matches!(status.as_str(), "FAILED" | "CANCELED"), "{r}");
        assert!(start.elapsed() < Duration::from_secs(90), "not done: {r}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_metrics_parse_and_move_when_a_generation_runs() {
    let app = TestApp::start_with(|s| s.metrics_token = Some(METRICS_TOKEN.into())).await;
    let scraper = scraper();
    let _workers = app.start_workers().await;
    let (token, _) = app.register("metrics@example.com").await;
    let url = app.url("/metrics");
    let before = scrape(&scraper, &url).await;
    for m in ["mage_websocket_connections", "mage_subscriptions", "mage_queue_waiting", "mage_queue_dead"] {
        assert!(present(&before, m), "{m} missing");
    }

    let (_, cost) = run_one(&app, &token).await;
    // A job's counters move when its handler returns, a moment after the
    // generation it finished is visible to the client.
    let transcoded = [("queue", "transcode"), ("outcome", "ok")];
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut after = scrape(&scraper, &url).await;
    while sum(&after, "mage_jobs_total", &transcoded) - sum(&before, "mage_jobs_total", &transcoded) < 1.0
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
        after = scrape(&scraper, &url).await;
    }
    let moved =
        |metric: &str, labels: &[(&str, &str)]| sum(&after, metric, labels) - sum(&before, metric, labels);

    let gql = [("route", "/graphql"), ("method", "POST"), ("status", "200")];
    assert!(moved("mage_http_requests_total", &gql) >= 2.0, "HTTP requests not counted");
    assert!(
        moved("mage_http_request_duration_seconds_count", &[("route", "/graphql")]) >= 2.0,
        "HTTP latency not recorded"
    );
    let create = [("operation", "Create"), ("type", "mutation"), ("outcome", "ok")];
    assert_eq!(moved("mage_graphql_operations_total", &create), 1.0);
    assert!(moved("mage_graphql_operations_total", &[("operation", "Poll"), ("type", "query")]) >= 1.0);
    assert!(moved("mage_graphql_operation_duration_seconds_count", &[("operation", "Create")]) >= 1.0);
    for queue in ["render:synthetic", "transcode"] {
        assert_eq!(moved("mage_jobs_total", &[("queue", queue), ("outcome", "ok")]), 1.0, "{queue} job");
        assert_eq!(moved("mage_job_duration_seconds_count", &[("queue", queue)]), 1.0, "{queue} duration");
    }
    assert_eq!(moved("mage_credits_moved_total", &[("kind", "hold")]), cost as f64);
    assert_eq!(moved("mage_credits_moved_total", &[("kind", "capture")]), cost as f64);
    assert_eq!(moved("mage_generations_created_total", &[("model", "synth-video")]), 1.0);
    assert_eq!(
        moved("mage_generations_finished_total", &[("model", "synth-video"), ("status", "succeeded")]),
        1.0
    );
    // The scrape itself was counted, under its route.
    assert!(sum(&after, "mage_http_requests_total", &[("route", "/metrics")]) >= 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn work_serves_metrics_on_its_own_address_and_logs_json_with_ids() {
    let app = TestApp::start().await;
    let (token, _) = app.register("work-metrics@example.com").await;
    let port = free_port();
    let mut cmd = app.mage("work");
    cmd.env("MAGE_METRICS_ADDR", format!("127.0.0.1:{port}"))
        .env("MAGE_LOG_FORMAT", "json")
        .env("MAGE_LOG", "info")
        .stderr(std::process::Stdio::piped());
    let mut work = Child::spawn(&mut cmd);
    // Read all along, so a full pipe never blocks the worker.
    let mut stderr = work.0.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut logs = String::new();
        let _ = stderr.read_to_string(&mut logs);
        logs
    });
    let url = format!("http://127.0.0.1:{port}/metrics");
    let deadline = Instant::now() + Duration::from_secs(30);
    while app.http.get(&url).send().await.is_err() {
        assert!(Instant::now() < deadline, "mage work never served /metrics");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = scrape(&app.http, &url).await;
    assert!(present(&before, "mage_queue_waiting"));

    let (id, cost) = run_one(&app, &token).await;
    let after = scrape(&app.http, &url).await;
    let moved =
        |metric: &str, labels: &[(&str, &str)]| sum(&after, metric, labels) - sum(&before, metric, labels);
    assert_eq!(moved("mage_jobs_total", &[("queue", "render:synthetic"), ("outcome", "ok")]), 1.0);
    assert_eq!(moved("mage_jobs_total", &[("queue", "transcode"), ("outcome", "ok")]), 1.0);
    assert_eq!(moved("mage_credits_moved_total", &[("kind", "capture")]), cost as f64);

    let _ = work.0.kill();
    let _ = work.0.wait();
    let logs = reader.join().expect("log reader");
    let lines: Vec<Value> = logs
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}")))
        .collect();
    assert!(lines.iter().all(|l| l["level"].is_string() && l["timestamp"].is_string()), "{logs}");
    // A line inside the render span names the generation.
    let about = |l: &Value| {
        l["generation_id"] == id.as_str()
            || l["spans"].as_array().is_some_and(|s| s.iter().any(|s| s["generation_id"] == id.as_str()))
    };
    assert!(lines.iter().any(about), "no log line names generation {id}: {logs}");
}
