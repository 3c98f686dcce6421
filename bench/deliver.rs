//! Webhook delivery throughput: events/s from the outbox to a receiver.
//!
//! A receiver that answers every POST with 200 at once (plain hyper, in
//! this driver) counts what arrives and the distinct `webhook-id`s. One user
//! has one endpoint pointing at it, listening for `generation.succeeded`.
//!
//! 1. **Ceiling.** A load generator (this binary, `--load`, a process of its
//!    own) posts 5 × N requests of the same size as Mage's (a body Mage sent in
//!    the warm-up, signed per request as Mage signs, the same headers) to
//!    the receiver from C connections with reqwest (Mage's HTTP client),
//!    each connection sending its next request as soon as the last is
//!    answered: the receiver's requests/s with nothing else in the way.
//! 2. **Mage.** A release `mage work` with `MAGE_QUEUES=deliver`, its
//!    default `MAGE_WEBHOOK_CONCURRENCY` (C deliveries in flight) and the
//!    per-endpoint bound raised to C (its default, 8, is there to keep one
//!    slow endpoint from taking every slot; with one endpoint it would
//!    measure that bound). N generations of the user, rendering, then turn
//!    SUCCEEDED in one UPDATE: the trigger writes N `webhook_events` rows
//!    and NOTIFYs each at commit; the listener fans each out into its
//!    delivery and pushes a `deliver` job; each job takes its endpoint
//!    permit, claims the delivery, signs and POSTs it and records the
//!    attempt. Timed from the start of the UPDATE to the receiver taking
//!    the N-th request; then every delivery must be SUCCEEDED after one
//!    attempt, and the receiver must have seen N distinct `webhook-id`s
//!    with a valid signature on the first.
//!
//! A warm-up of W events first (connections, pools, the first-request
//! costs; its body is what the ceiling sends).
//!
//! With `taskset` and two or more cores, the sender (`mage work`, or the
//! ceiling's load generator) runs on core 0 and this driver with the
//! receiver on core 1; PostgreSQL and Redis, which only Mage uses, are not
//! pinned.
//!
//! Expects `DATABASE_URL` (a fresh, migrated database of its own),
//! `REDIS_URL` and `MAGE_REDIS_PREFIX`. Run through
//! `bench/deliver [events=10000] [connections=64]`. Writes
//! `bench/deliver.json`.

#[path = "common.rs"]
#[allow(dead_code)]
mod common;

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Cores, Server, psql, psql_i64, write_json};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use mage_domain::output::{Output, Rendition};
use mage_domain::standard_webhooks::{self, Signed};
use serde_json::json;

const USER: &str = "00000000-0000-4000-8000-000000400000";
const ENDPOINT: &str = "00000000-0000-4000-8000-000000400001";
const WARM_UP: usize = 200;
/// The ceiling sends this many requests per event of Mage's run.
const CEILING_FACTOR: usize = 5;
/// The longest the deliveries of one phase may take.
const PHASE_TIMEOUT: Duration = Duration::from_secs(120);

/// One request as received: `webhook-id`, `webhook-timestamp`,
/// `webhook-signature`, body.
type Sample = (Option<String>, Option<String>, Option<String>, Bytes);

/// What the receiver saw in the current phase.
#[derive(Default)]
struct Seen {
    ids: HashSet<String>,
    /// The first request: its headers and body.
    sample: Option<Sample>,
    first: Option<Instant>,
    last: Option<Instant>,
}

#[derive(Default)]
struct Receiver {
    count: AtomicUsize,
    seen: Mutex<Seen>,
}

impl Receiver {
    /// Starts a new phase.
    fn reset(&self) -> Seen {
        self.count.store(0, Ordering::SeqCst);
        std::mem::take(&mut *self.seen.lock().expect("receiver lock"))
    }

    fn take(&self) -> Seen {
        std::mem::take(&mut *self.seen.lock().expect("receiver lock"))
    }

    async fn wait_for(&self, n: usize, timeout: Duration) -> Result<(), String> {
        let started = Instant::now();
        while self.count.load(Ordering::SeqCst) < n {
            if started.elapsed() > timeout {
                return Err(format!(
                    "the receiver got {} of {n} requests within {} s",
                    self.count.load(Ordering::SeqCst),
                    timeout.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(())
    }
}

async fn receive(
    receiver: Arc<Receiver>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let (id, timestamp, signature) =
        (header("webhook-id"), header("webhook-timestamp"), header("webhook-signature"));
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Ok(Response::builder().status(400).body(Full::default()).unwrap_or_default()),
    };
    let now = Instant::now();
    {
        let mut seen = receiver.seen.lock().expect("receiver lock");
        seen.first.get_or_insert(now);
        seen.last = Some(now);
        if let Some(id) = &id {
            seen.ids.insert(id.clone());
        }
        if seen.sample.is_none() {
            seen.sample = Some((id, timestamp, signature, body));
        }
    }
    receiver.count.fetch_add(1, Ordering::SeqCst);
    Ok(Response::new(Full::default()))
}

async fn serve(listener: tokio::net::TcpListener, receiver: Arc<Receiver>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let _ = stream.set_nodelay(true);
        let receiver = receiver.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| receive(receiver.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The ceiling's load generator: `--load URL N CONNECTIONS SECRET BODY_FILE`;
/// prints `seconds ok errors`.
async fn load(args: &[String]) -> i32 {
    let [url, n, connections, secret, body_file] = args else {
        eprintln!("usage: deliver_bench --load URL N CONNECTIONS SECRET BODY_FILE");
        return 2;
    };
    let (Ok(n), Ok(connections)) = (n.parse::<usize>(), connections.parse::<usize>()) else {
        eprintln!("N and CONNECTIONS are numbers");
        return 2;
    };
    let body = match std::fs::read(body_file) {
        Ok(b) => Bytes::from(b),
        Err(e) => {
            eprintln!("{body_file}: {e}");
            return 2;
        }
    };
    // As Mage's delivery client: HTTP/1.1, no proxy, no redirects.
    let http = reqwest::Client::builder()
        .http1_only()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .user_agent("Mage-Webhooks/1.0")
        .build()
        .expect("HTTP client");
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (http, next, body, url, secret) =
            (http.clone(), next.clone(), body.clone(), url.clone(), secret.clone());
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut errors) = (0usize, 0usize);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return (ok, errors);
                }
                // Signed at send time, as Mage signs.
                let id = format!("msg_ceiling_{i:07}");
                let timestamp = chrono::Utc::now().timestamp();
                let signature = standard_webhooks::sign(&secret, &id, timestamp, &body).unwrap_or_default();
                let sent = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .header("webhook-id", id)
                    .header("webhook-timestamp", timestamp.to_string())
                    .header("webhook-signature", signature)
                    .body(body.clone())
                    .send()
                    .await;
                match sent {
                    Ok(res) if res.status().is_success() => match res.bytes().await {
                        Ok(_) => ok += 1,
                        Err(_) => errors += 1,
                    },
                    _ => errors += 1,
                }
            }
        }));
    }
    let (mut ok, mut errors) = (0, 0);
    for t in tasks {
        let (o, e) = t.await.unwrap_or((0, 1));
        ok += o;
        errors += e;
    }
    println!("{} {ok} {errors}", started.elapsed().as_secs_f64());
    0
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--load") {
        // Started on the sender's core by the driver: stays there.
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
        std::process::exit(runtime.block_on(load(&args[2..])));
    }
    let events: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let connections: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(64).max(1);
    // Before any thread exists, so every thread inherits the pinning.
    let cores = Cores::pin_self();
    let runtime = cores.runtime();
    let code = match runtime.block_on(bench(events, connections, cores)) {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            eprintln!("deliver: {e}");
            1
        }
    };
    std::process::exit(code);
}

/// The output a finished generation stores, its keys under `generations/GEN/`
/// (GEN: replaced by the generation's id in SQL).
fn output_template() -> Result<String, String> {
    let key = |rest: &str| format!("generations/GEN/{rest}");
    let rung = |name: &str, width: u32, height: u32, bandwidth: u64| Rendition {
        name: name.to_owned(),
        width,
        height,
        bandwidth,
        playlist: key(&format!("hls/{name}/index.m3u8")),
    };
    let output = Output {
        kind: mage_domain::enums::MediaKind::Video,
        hls: Some(key("hls/master.m3u8")),
        video: Some(key("video.mp4")),
        image: None,
        poster: key("poster.jpg"),
        width: 1280,
        height: 720,
        duration_seconds: Some(5.0),
        renditions: vec![rung("480p", 854, 480, 1_400_000), rung("720p", 1280, 720, 2_800_000)],
    };
    serde_json::to_string(&output).map_err(|e| format!("output: {e}"))
}

/// N generations of the user, rendering (no trigger fires on INSERT).
fn insert_generations(db: &str, n: usize) -> Result<(), String> {
    psql(
        db,
        &format!(
            "INSERT INTO generations (user_id, model, kind, prompt, resolution, duration_seconds, seed, status,
                progress, stage, cost, attempts, backend, started_at, heartbeat_at, worker)
             SELECT '{USER}', 'synth-video', 'video', 'a lighthouse at dusk, slow dolly in, volumetric fog',
                '720p', 5, 1000 + i, 'rendering', 90, 'encoding', 4, 1, 'synthetic', now(), now(), 'bench'
             FROM generate_series(1, {n}) i;"
        ),
    )
    .map(drop)
}

/// Every rendering generation of the user SUCCEEDED, in one statement: one
/// event each, written and NOTIFYd by the trigger at commit.
fn succeed_generations(db: &str, output: &str) -> Result<(), String> {
    psql(
        db,
        &format!(
            "UPDATE generations SET status = 'succeeded', progress = 100, stage = NULL,
                output = replace('{output}', 'GEN', id::text)::jsonb,
                finished_at = now(), updated_at = now(), heartbeat_at = NULL
             WHERE user_id = '{USER}' AND status = 'rendering';"
        ),
    )
    .map(drop)
}

/// Waits until `n` deliveries are SUCCEEDED in the table (the record
/// transaction commits after the receiver answered).
async fn wait_recorded(db: &str, n: usize) -> Result<i64, String> {
    let started = Instant::now();
    loop {
        let done = psql_i64(db, "SELECT count(*) FROM webhook_deliveries WHERE status = 'succeeded'")?;
        if usize::try_from(done) == Ok(n) || started.elapsed() > Duration::from_secs(20) {
            return Ok(done);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn bench(events: usize, connections: usize, cores: Cores) -> Result<bool, String> {
    let db = std::env::var("DATABASE_URL").map_err(|_| "DATABASE_URL is not set")?;
    let redis_url = std::env::var("REDIS_URL").map_err(|_| "REDIS_URL is not set")?;
    let prefix = std::env::var("MAGE_REDIS_PREFIX").unwrap_or_else(|_| "bench:deliver:".into());
    let mage = std::env::var("MAGE_BIN").unwrap_or_else(|_| "target/release/mage".into());
    let me = std::env::current_exe().map_err(|e| format!("this binary: {e}"))?;
    let me = me.to_str().ok_or("this binary's path is not UTF-8")?.to_owned();
    let load_before = common::load_average();
    let log = std::env::var("MAGE_LOG").unwrap_or_else(|_| "warn".into());

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| format!("bind: {e}"))?;
    let port = listener.local_addr().map_err(|e| format!("addr: {e}"))?.port();
    let url = format!("http://127.0.0.1:{port}/hook");
    let receiver = Arc::new(Receiver::default());
    tokio::spawn(serve(listener, receiver.clone()));

    let secret = standard_webhooks::new_secret();
    psql(
        &db,
        &format!(
            "INSERT INTO users (id, email, password_hash, created_at)
               VALUES ('{USER}', 'deliver@bench.invalid', 'not-a-password-hash', now());
             INSERT INTO webhook_endpoints (id, user_id, url, description, events, secret)
               VALUES ('{ENDPOINT}', '{USER}', '{url}', 'bench receiver', ARRAY['generation.succeeded'], '{secret}');"
        ),
    )?;
    let output = output_template()?;

    let mut cmd = cores.server_command(&mage);
    cmd.arg("work")
        .env("DATABASE_URL", &db)
        .env("REDIS_URL", &redis_url)
        .env("MAGE_REDIS_PREFIX", &prefix)
        .env("MAGE_QUEUES", "deliver")
        .env("MAGE_PUBLIC_URL", "https://mage.bench.invalid")
        .env("MAGE_WEBHOOKS_ALLOW_PRIVATE", "true")
        .env("MAGE_WEBHOOK_CONCURRENCY", connections.to_string())
        .env("MAGE_WEBHOOK_ENDPOINT_CONCURRENCY", connections.to_string())
        .env("MAGE_SKIP_MIGRATIONS", "true")
        .env("MAGE_LOG", &log);
    let worker = Server::spawn("mage work", cmd);

    // Warm-up, which also waits for the worker to be up (its listener fans
    // out what was written before it listened).
    insert_generations(&db, WARM_UP)?;
    succeed_generations(&db, &output)?;
    receiver.wait_for(WARM_UP, Duration::from_secs(60)).await?;
    let warm = receiver.take();
    let Some((id, timestamp, signature, body)) = warm.sample else {
        return Err("the warm-up delivered nothing".into());
    };
    let signed =
        Signed { id: id.as_deref(), timestamp: timestamp.as_deref(), signature: signature.as_deref() };
    let signature_ok = standard_webhooks::verify(&secret, signed, &body, chrono::Utc::now().timestamp());
    let body_bytes = body.len();

    // 1. The ceiling: the same bytes straight from a load generator.
    let body_file = tempfile::NamedTempFile::new().map_err(|e| format!("body file: {e}"))?;
    std::fs::write(body_file.path(), &body).map_err(|e| format!("body file: {e}"))?;
    let path = body_file.path().to_str().ok_or("the temporary path is not UTF-8")?.to_owned();
    receiver.reset();
    let mut cmd = cores.server_command(&me);
    // More requests than events: the receiver's pace is many times Mage's,
    // and a run of a fraction of a second says little.
    let ceiling_n = events * CEILING_FACTOR;
    cmd.args(["--load", &url, &ceiling_n.to_string(), &connections.to_string(), &secret, &path]);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .map_err(|e| format!("load generator: {e}"))?
        .map_err(|e| format!("load generator: {e}"))?;
    let printed = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let fields: Vec<f64> = printed.split_whitespace().filter_map(|f| f.parse().ok()).collect();
    let [ceiling_s, ceiling_ok, ceiling_errors] = fields[..] else {
        return Err(format!(
            "the load generator printed {printed:?} ({})",
            String::from_utf8_lossy(&out.stderr)
        ));
    };
    let ceiling_seen = receiver.reset();
    let ceiling_per_s = ceiling_ok / ceiling_s;

    // 2. Mage: N generations succeed at once; every event is delivered.
    insert_generations(&db, events)?;
    let started = Instant::now();
    succeed_generations(&db, &output)?;
    let committed = started.elapsed();
    let delivered = receiver.wait_for(events, PHASE_TIMEOUT).await;
    let seen = receiver.take();
    let received = receiver.count.load(Ordering::SeqCst);
    let recorded = wait_recorded(&db, WARM_UP + events).await;
    worker.stop();
    delivered?;
    let last = seen.last.ok_or("nothing arrived")?;
    let first = seen.first.ok_or("nothing arrived")?;
    let mage_s = last.duration_since(started).as_secs_f64();
    let mage_per_s = events as f64 / mage_s;
    let first_ms = first.duration_since(started).as_secs_f64() * 1000.0;
    let ratio = mage_per_s / ceiling_per_s;

    let recorded = recorded?;
    // Where the time went: the batch's events share their transaction's
    // created_at; fan-out and first attempts are stamped as they happen.
    let stages = psql(
        &db,
        "WITH e AS (SELECT * FROM webhook_events WHERE created_at = (SELECT max(created_at) FROM webhook_events))
         SELECT round(extract(epoch FROM min(e.fanned_out_at) - min(e.created_at)) * 1000),
                round(extract(epoch FROM max(e.fanned_out_at) - min(e.created_at)) * 1000),
                round(extract(epoch FROM min(a.started_at) - min(e.created_at)) * 1000),
                round(extract(epoch FROM max(a.started_at) - min(e.created_at)) * 1000)
         FROM e JOIN webhook_deliveries d ON d.event_id = e.id JOIN webhook_attempts a ON a.delivery_id = d.id",
    )
    .unwrap_or_default();
    let stage_ms: Vec<f64> = stages.split('|').filter_map(|f| f.trim().parse().ok()).collect();
    let attempts = psql_i64(&db, "SELECT coalesce(sum(attempts), 0)::bigint FROM webhook_deliveries")?;
    let other = psql_i64(&db, "SELECT count(*) FROM webhook_deliveries WHERE status <> 'succeeded'")?;
    let all = (WARM_UP + events) as i64;
    let checks = [
        ("receiver distinct webhook-ids", seen.ids.len() == events && received == events),
        ("deliveries SUCCEEDED", recorded == all && other == 0),
        ("one attempt each", attempts == all),
        ("signature verifies", signature_ok.is_ok()),
        ("ceiling without errors", ceiling_errors == 0.0 && ceiling_seen.ids.len() == ceiling_n),
    ];

    println!(
        "deliver: {events} generation.succeeded events of {body_bytes} bytes to one endpoint, {connections} \
         in flight; {}",
        cores.describe("the sender (mage work / load generator)", "the receiver")
    );
    println!("  load average            {load_before} before, {} after", common::load_average());
    println!(
        "  ceiling                 {ceiling_per_s:>9.0} req/s  ({ceiling_ok} in {ceiling_s:.2} s, \
         load generator → receiver, {connections} connections)"
    );
    println!(
        "  mage work               {mage_per_s:>9.0} events/s  ({events} in {mage_s:.2} s: UPDATE committed \
         after {:.0} ms, first delivery at {first_ms:.0} ms)",
        committed.as_secs_f64() * 1000.0
    );
    println!("  ratio                   {ratio:.2}x  (target >= 0.5x)");
    println!(
        "  deliveries              {recorded} of {all} SUCCEEDED, {attempts} attempts, {} distinct webhook-ids received",
        seen.ids.len()
    );
    if let [fan_first, fan_last, send_first, send_last] = stage_ms[..] {
        println!(
            "  stages (ms after the UPDATE's transaction began)  fanned out {fan_first:.0}–{fan_last:.0}, \
             attempts started {send_first:.0}–{send_last:.0}"
        );
    }
    for (what, ok) in checks {
        println!("  {what:<32}{}", if ok { "OK" } else { "FAILED" });
    }
    if let Err(e) = &signature_ok {
        println!("  signature               {e}");
    }

    let report = json!({
        "deliver": {
            "per_s": { "mage": mage_per_s, "receiver_ceiling": ceiling_per_s },
            "ratio_of_ceiling": ratio,
            "events": events,
            "connections": connections,
            "body_bytes": body_bytes,
            "seconds": { "mage": mage_s, "ceiling": ceiling_s, "update_commit": committed.as_secs_f64() },
            "first_delivery_ms": first_ms,
            "stages_ms": stage_ms,
            "succeeded": recorded,
            "attempts": attempts,
            "ceiling_requests": ceiling_n,
            "ceiling_errors": ceiling_errors,
        }
    });
    write_json("bench/deliver.json", &report);
    Ok(checks.iter().all(|(_, ok)| *ok))
}
