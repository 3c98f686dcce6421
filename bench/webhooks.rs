//! Webhook intake throughput: Stripe's and Replicate's.
//!
//! Starts a release `mage serve` (on `DATABASE_URL` / `REDIS_URL`, under a
//! Redis prefix of its own, with bench webhook secrets), then, for each
//! intake, pre-builds N signed deliveries of which 10% repeat an earlier one
//! and posts them from C concurrent connections as fast as they are
//! answered: `payout.paid` events to `POST /webhooks/stripe` (a repeat has
//! the same event id), Replicate prediction webhooks (Standard Webhooks
//! signature) to `POST /webhooks/replicate` (a repeat has the same
//! `webhook-id`). The floor is the same load against `GET /healthz` of the
//! same server: what the HTTP stack alone gives. Reports each intake's
//! accepted deliveries/s as a ratio of that one floor, p50/p99 latency, and
//! checks that PostgreSQL holds one `stripe_events` row per distinct event
//! id and one `replicate_webhooks` row per distinct webhook id.
//!
//! With `taskset` and two or more cores, the server runs on core 0 and this
//! load generator on core 1 (PostgreSQL and Redis are not pinned).
//!
//! Run through `bench/webhooks [events] [connections]`.

#[path = "common.rs"]
#[allow(dead_code)]
mod common;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Cores, clean_redis, load_average, percentile, psql, psql_i64, write_json};
use serde_json::json;

const SECRET: &str = "whsec_bench_webhooks_secret";
/// Standard Webhooks secrets are `whsec_` + base64 (this one is the
/// specification's example).
const REPLICATE_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const STRIPE_PATH: &str = "/webhooks/stripe";
const REPLICATE_PATH: &str = "/webhooks/replicate";

/// One signed delivery, ready to send.
#[derive(Clone)]
struct Post {
    /// Without the `?`; empty for none.
    query: String,
    headers: Vec<(&'static str, String)>,
    body: String,
}

/// What one phase sends: n × `GET /healthz`, or signed deliveries to `path`.
enum Load {
    Healthz(usize),
    Webhooks { path: &'static str, posts: Vec<Post> },
}

impl Load {
    fn len(&self) -> usize {
        match self {
            Load::Healthz(n) => *n,
            Load::Webhooks { posts, .. } => posts.len(),
        }
    }
}

#[derive(Default)]
struct Tally {
    ok: usize,
    duplicate_answers: usize,
    errors: usize,
    first_errors: Vec<String>,
    latencies_ms: Vec<f64>,
}

struct Phase {
    tally: Tally,
    seconds: f64,
}

impl Phase {
    fn per_s(&self) -> f64 {
        self.tally.ok as f64 / self.seconds
    }
    fn p(&self, q: f64) -> f64 {
        percentile(&self.tally.latencies_ms, q)
    }
}

/// Sends the requests of `load` from `connections` concurrent loops, each
/// taking the next request as soon as its previous one is answered.
async fn run(http: &reqwest::Client, base: &str, load: Arc<Load>, connections: usize) -> Phase {
    let total = load.len();
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (http, load, next) = (http.clone(), load.clone(), next.clone());
        let healthz = format!("{base}/healthz");
        let hook = match &*load {
            Load::Healthz(_) => String::new(),
            Load::Webhooks { path, .. } => format!("{base}{path}"),
        };
        tasks.push(tokio::spawn(async move {
            let mut t = Tally::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return t;
                }
                let req = match &*load {
                    Load::Healthz(_) => http.get(&healthz),
                    Load::Webhooks { posts, .. } => {
                        let post = &posts[i];
                        let mut req = if post.query.is_empty() {
                            http.post(&hook)
                        } else {
                            http.post(format!("{hook}?{}", post.query))
                        };
                        for (name, value) in &post.headers {
                            req = req.header(*name, value.as_str());
                        }
                        req.header("Content-Type", "application/json").body(post.body.clone())
                    }
                };
                let sent = Instant::now();
                let outcome = match req.send().await {
                    Ok(res) => {
                        let status = res.status();
                        match res.text().await {
                            Ok(text) => Ok((status, text)),
                            Err(e) => Err(format!("{status}: reading the body: {e}")),
                        }
                    }
                    Err(e) => Err(format!("transport: {e}")),
                };
                let ms = sent.elapsed().as_secs_f64() * 1000.0;
                match outcome {
                    Ok((status, text)) if status == reqwest::StatusCode::OK => {
                        t.ok += 1;
                        t.latencies_ms.push(ms);
                        if text.contains("\"duplicate\":true") {
                            t.duplicate_answers += 1;
                        }
                    }
                    Ok((status, text)) => {
                        t.errors += 1;
                        if t.first_errors.len() < 3 {
                            t.first_errors.push(format!("{status}: {text}"));
                        }
                    }
                    Err(e) => {
                        t.errors += 1;
                        if t.first_errors.len() < 3 {
                            t.first_errors.push(e);
                        }
                    }
                }
            }
        }));
    }
    let mut tally = Tally::default();
    for task in tasks {
        let t = task.await.expect("load task");
        tally.ok += t.ok;
        tally.duplicate_answers += t.duplicate_answers;
        tally.errors += t.errors;
        tally.first_errors.extend(t.first_errors);
        tally.latencies_ms.extend(t.latencies_ms);
    }
    let seconds = started.elapsed().as_secs_f64();
    tally.latencies_ms.sort_by(f64::total_cmp);
    tally.first_errors.truncate(5);
    Phase { tally, seconds }
}

fn event(id: &str, created: i64) -> String {
    json!({
        "id": id,
        "object": "event",
        "type": "payout.paid",
        "livemode": false,
        "created": created,
        "data": { "object": { "id": "po_x", "object": "payout" } },
    })
    .to_string()
}

fn stripe_post(id: &str, now: i64) -> Post {
    let body = event(id, now);
    let sig = mage_domain::payments::signature::sign(body.as_bytes(), SECRET, now);
    Post { query: String::new(), headers: vec![("Stripe-Signature", sig)], body }
}

/// A prediction object as Replicate posts it, about the size of a real one.
fn prediction(id: &str, status: &str, created: &str) -> String {
    let done = status == "succeeded";
    json!({
        "id": id,
        "model": "bench/video-model",
        "version": "5c7d5dc6dd8bf75c1acaa8565735e7986bc5b66206b55cca93cb72c9bf15ccaa",
        "input": { "prompt": "a lighthouse at dusk, slow dolly in", "num_frames": 81, "seed": 42 },
        "logs": "Using seed: 42\n 40%|████      | 20/50 [00:08<00:12,  2.41it/s]",
        "output": if done { json!([format!("https://replicate.delivery/xezq/{id}/out.mp4")]) } else { json!(null) },
        "data_removed": false,
        "error": null,
        "status": status,
        "created_at": created,
        "started_at": created,
        "completed_at": if done { json!(created) } else { json!(null) },
        "urls": {
            "get": format!("https://api.replicate.com/v1/predictions/{id}"),
            "cancel": format!("https://api.replicate.com/v1/predictions/{id}/cancel"),
            "stream": format!("https://stream.replicate.com/v1/files/{id}"),
        },
        "metrics": if done { json!({ "predict_time": 20.5 }) } else { json!({}) },
    })
    .to_string()
}

fn replicate_post(webhook_id: &str, prediction_id: &str, status: &str, query: String, now: i64) -> Post {
    let created = chrono::DateTime::from_timestamp(now, 0).unwrap_or_default().to_rfc3339();
    let body = prediction(prediction_id, status, &created);
    let sig = mage_domain::replicate::sign(REPLICATE_SECRET, webhook_id, now, body.as_bytes())
        .expect("the bench secret is whsec_ + base64");
    Post {
        query,
        headers: vec![
            ("webhook-id", webhook_id.to_owned()),
            ("webhook-timestamp", now.to_string()),
            ("webhook-signature", sig),
        ],
        body,
    }
}

/// `events` signed `payout.paid` events, 10% re-sent (same event id).
fn stripe_deliveries(run_id: &str, events: usize, connections: usize) -> (Vec<Post>, usize) {
    let now = chrono::Utc::now().timestamp();
    build(events, connections, |n| stripe_post(&format!("evt_bench_{run_id}_{n:07}"), now))
}

/// `events` signed prediction webhooks, 10% redelivered (same `webhook-id`).
/// Prediction `n / 4` sends four (start, two of progress, completion), to the
/// URL of its generation and job, as Mage registers it with Replicate.
fn replicate_deliveries(run_id: &str, events: usize, connections: usize) -> (Vec<Post>, usize) {
    let now = chrono::Utc::now().timestamp();
    let mut query = String::new();
    build(events, connections, |n| {
        if n % 4 == 0 {
            query = format!("generation={}&job={}", uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
        }
        let status = ["starting", "processing", "processing", "succeeded"][n % 4];
        // 26 lowercase alphanumerics, like Replicate's prediction ids.
        let prediction_id = format!("{}{:07}", &run_id[..19], n / 4);
        replicate_post(&format!("msg_bench_{run_id}_{n:07}"), &prediction_id, status, query.clone(), now)
    })
}

/// `events` signed deliveries, the `n`-th distinct one made by `make(n)`,
/// every tenth a repeat of an earlier one (not one of the last
/// `2 * connections`, which may still be in flight, when there are enough
/// others). Returns the deliveries and the repeat count.
fn build(events: usize, connections: usize, mut make: impl FnMut(usize) -> Post) -> (Vec<Post>, usize) {
    let mut originals: Vec<usize> = Vec::new();
    let mut posts: Vec<Post> = Vec::with_capacity(events);
    let mut duplicates = 0;
    let mut rng: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in 0..events {
        if i % 10 == 9 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let k = originals.len();
            let window = if k > 2 * connections { k - 2 * connections } else { k };
            let again = posts[originals[(rng % window as u64) as usize]].clone();
            posts.push(again);
            duplicates += 1;
        } else {
            posts.push(make(originals.len()));
            originals.push(posts.len() - 1);
        }
    }
    (posts, duplicates)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let events: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let connections: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(64).max(1);
    // Before any thread exists, so every thread inherits the pinning.
    let cores = Cores::pin_self();
    let code = cores.runtime().block_on(bench(events, connections, cores.count, cores.pinned));
    std::process::exit(code);
}

async fn bench(events: usize, connections: usize, cores: usize, pinned: bool) -> i32 {
    let db = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let redis_url = std::env::var("REDIS_URL").expect("REDIS_URL");
    let mage = std::env::var("MAGE_BIN").unwrap_or_else(|_| "target/release/mage".into());
    let load_before = load_average();
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let prefix = format!("bench:webhooks:{run_id}:");
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let addr = format!("127.0.0.1:{port}");
    let mut cmd = if pinned {
        let mut c = Command::new("taskset");
        c.args(["-c", "0"]).arg(&mage);
        c
    } else {
        Command::new(&mage)
    };
    let mut server = cmd
        .arg("serve")
        .env("DATABASE_URL", &db)
        .env("REDIS_URL", &redis_url)
        .env("MAGE_REDIS_PREFIX", &prefix)
        .env("MAGE_ADDR", &addr)
        .env("MAGE_JWT_SECRET", "bench-secret-bench-secret-bench-secret-0")
        .env("STRIPE_WEBHOOK_SECRET", SECRET)
        .env("MAGE_REPLICATE_WEBHOOK_SECRET", REPLICATE_SECRET)
        .env("MAGE_LOG", "warn")
        .spawn()
        .expect("start mage serve");
    let base = format!("http://{addr}");
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("HTTP client");
    let mut ready = false;
    for _ in 0..300 {
        if http.get(format!("{base}/readyz")).send().await.is_ok_and(|r| r.status().is_success()) {
            ready = true;
            break;
        }
        if let Ok(Some(status)) = server.try_wait() {
            eprintln!("mage serve exited before it was ready: {status}");
            return 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !ready {
        eprintln!("mage serve did not become ready on {addr} within 30 s");
        let _ = server.kill();
        let _ = server.wait();
        return 1;
    }

    // Warm-up: open the connections, fill the server's database pool, take
    // each intake's first-request costs.
    let _ = run(&http, &base, Arc::new(Load::Healthz(connections * 4)), connections).await;
    let now = chrono::Utc::now().timestamp();
    let warm = (0..connections).map(|i| stripe_post(&format!("evt_warmup_{run_id}_{i}"), now)).collect();
    let _ = run(&http, &base, Arc::new(Load::Webhooks { path: STRIPE_PATH, posts: warm }), connections).await;
    let warm = (0..connections)
        .map(|i| {
            let prediction_id = format!("{}w{i:06}", &run_id[..19]);
            replicate_post(
                &format!("msg_warmup_{run_id}_{i}"),
                &prediction_id,
                "starting",
                String::new(),
                now,
            )
        })
        .collect();
    let _ =
        run(&http, &base, Arc::new(Load::Webhooks { path: REPLICATE_PATH, posts: warm }), connections).await;

    // The floor, then each intake (signed just before it is sent: the server
    // refuses a signature more than 300 s old).
    let floor = run(&http, &base, Arc::new(Load::Healthz(events)), connections).await;
    let (posts, stripe_dups) = stripe_deliveries(&run_id, events, connections);
    let stripe = run(&http, &base, Arc::new(Load::Webhooks { path: STRIPE_PATH, posts }), connections).await;
    let (posts, replicate_dups) = replicate_deliveries(&run_id, events, connections);
    let replicate =
        run(&http, &base, Arc::new(Load::Webhooks { path: REPLICATE_PATH, posts }), connections).await;

    let _ = server.kill();
    let _ = server.wait();

    // One row per distinct id.
    let stripe_rows =
        psql_i64(&db, &format!("select count(*) from stripe_events where id like 'evt_bench_{run_id}_%'"));
    let replicate_rows = psql_i64(
        &db,
        &format!("select count(*) from replicate_webhooks where id like 'msg_bench_{run_id}_%'"),
    );
    // The sweeper would prune these after a week; they serve nothing, and
    // runs should not measure against a table grown by earlier runs. (The
    // Stripe events stay, unsettled, as `payout.paid` events a worker would
    // settle as "ignored".)
    let pruned = psql(
        &db,
        &format!(
            "delete from replicate_webhooks where id like 'msg_bench_{run_id}_%' or id like 'msg_warmup_{run_id}_%'"
        ),
    );
    // The settle jobs went to a queue under this run's prefix that no worker
    // reads, and nobody listened to the prediction channels: drop the keys.
    let cleaned = clean_redis(&redis_url, &prefix).await;

    let stripe_ratio = stripe.per_s() / floor.per_s();
    let replicate_ratio = replicate.per_s() / floor.per_s();
    let split = if pinned {
        "mage serve pinned to core 0, load generator to core 1 (taskset); PostgreSQL and Redis unpinned"
            .to_owned()
    } else {
        format!("not pinned: server, load generator, PostgreSQL and Redis share {cores} core(s)")
    };
    println!(
        "webhooks: {events} signed deliveries per intake (Stripe payout.paid events, {stripe_dups} re-sends; \
         Replicate prediction webhooks, {replicate_dups} redeliveries), {connections} connections"
    );
    println!("  cores                    {cores}: {split}");
    println!("  load average             {load_before} before, {} after", load_average());
    println!("  {:<24} {:>10} {:>9} {:>9} {:>7} {:>7}", "", "ok/s", "p50 ms", "p99 ms", "ok", "errors");
    for (name, p) in [
        ("GET /healthz (floor)", &floor),
        ("POST /webhooks/stripe", &stripe),
        ("POST /webhooks/replicate", &replicate),
    ] {
        println!(
            "  {:<24} {:>10.0} {:>9.2} {:>9.2} {:>7} {:>7}",
            name,
            p.per_s(),
            p.p(0.5),
            p.p(0.99),
            p.tally.ok,
            p.tally.errors
        );
    }
    println!("  ratio of floor           stripe {stripe_ratio:.3}, replicate {replicate_ratio:.3}");
    println!(
        "  duplicates               stripe {stripe_dups} sent, {} answered \"duplicate\":true; \
         replicate {replicate_dups} sent, {} answered \"duplicate\":true",
        stripe.tally.duplicate_answers, replicate.tally.duplicate_answers
    );
    for e in
        floor.tally.first_errors.iter().chain(&stripe.tally.first_errors).chain(&replicate.tally.first_errors)
    {
        println!("  error                    {e}");
    }
    let mut rows_ok = true;
    for (table, rows, distinct, what) in [
        ("stripe_events", &stripe_rows, events - stripe_dups, "event ids"),
        ("replicate_webhooks", &replicate_rows, events - replicate_dups, "webhook ids"),
    ] {
        match rows {
            Ok(n) => {
                let ok = usize::try_from(*n) == Ok(distinct);
                rows_ok &= ok;
                println!(
                    "  {:<24} {n} for {distinct} distinct {what}: {}",
                    format!("{table} rows"),
                    if ok { "OK" } else { "MISMATCH" }
                );
            }
            Err(e) => {
                rows_ok = false;
                println!("  {:<24} could not be counted: {e}", format!("{table} rows"));
            }
        }
    }
    if let Err(e) = pruned {
        println!("  replicate_webhooks       could not delete this run's rows: {e}");
    }
    match cleaned {
        Ok(n) => println!("  redis                    {n} keys of prefix {prefix} removed"),
        Err(e) => println!("  redis                    could not remove the keys of prefix {prefix}: {e}"),
    }

    // `webhooks.*` is Stripe's figure, as before; `webhooks.replicate` sits beside it.
    let report = json!({
        "webhooks": {
            "per_s": { "mage": stripe.per_s(), "healthz_floor": floor.per_s() },
            "ratio_of_floor": stripe_ratio,
            "p50_ms": stripe.p(0.5),
            "p99_ms": stripe.p(0.99),
            "duplicates": stripe_dups,
            "errors": stripe.tally.errors,
            "events": events,
            "connections": connections,
            "replicate": {
                "per_s": { "mage": replicate.per_s(), "healthz_floor": floor.per_s() },
                "ratio_of_floor": replicate_ratio,
                "p50_ms": replicate.p(0.5),
                "p99_ms": replicate.p(0.99),
                "duplicates": replicate_dups,
                "errors": replicate.tally.errors,
                "events": events,
            },
        }
    });
    write_json("bench/webhooks.json", &report);
    let errors = floor.tally.errors + stripe.tally.errors + replicate.tally.errors;
    if rows_ok && errors == 0 { 0 } else { 1 }
}
