//! Stripe webhook intake throughput.
//!
//! Starts a release `mage serve` (on `DATABASE_URL` / `REDIS_URL`, under a
//! Redis prefix of its own, with a bench webhook secret), pre-builds N signed
//! `payout.paid` events of which 10% are re-sends of earlier ones (same event
//! id), and posts them to `POST /webhooks/stripe` from C concurrent
//! connections as fast as they are answered. The floor is the same load
//! against `GET /healthz` of the same server: what the HTTP stack alone
//! gives. Reports accepted events/s as a ratio of the floor, p50/p99
//! latency, and checks that PostgreSQL holds one `stripe_events` row per
//! distinct event id.
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

use common::{Cores, clean_redis, percentile};
use serde_json::json;

const SECRET: &str = "whsec_bench_webhooks_secret";

/// What one phase sends: n × `GET /healthz`, or signed events `(body, Stripe-Signature)`.
enum Load {
    Healthz(usize),
    Webhooks(Vec<(String, String)>),
}

impl Load {
    fn len(&self) -> usize {
        match self {
            Load::Healthz(n) => *n,
            Load::Webhooks(reqs) => reqs.len(),
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
        let hook = format!("{base}/webhooks/stripe");
        tasks.push(tokio::spawn(async move {
            let mut t = Tally::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return t;
                }
                let req = match &*load {
                    Load::Healthz(_) => http.get(&healthz),
                    Load::Webhooks(reqs) => {
                        let (body, sig) = &reqs[i];
                        http.post(&hook)
                            .header("Stripe-Signature", sig.as_str())
                            .header("Content-Type", "application/json")
                            .body(body.clone())
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

/// `events` signed requests, every tenth a re-send of an earlier event (not
/// one of the last `2 * connections`, which may still be in flight, when
/// there are enough others). Returns the requests and the duplicate count.
fn build(run_id: &str, events: usize, connections: usize) -> (Vec<(String, String)>, usize) {
    let now = chrono::Utc::now().timestamp();
    let mut originals: Vec<usize> = Vec::new();
    let mut reqs: Vec<(String, String)> = Vec::with_capacity(events);
    let mut duplicates = 0;
    let mut rng: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in 0..events {
        if i % 10 == 9 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let k = originals.len();
            let window = if k > 2 * connections { k - 2 * connections } else { k };
            let body = reqs[originals[(rng % window as u64) as usize]].0.clone();
            let sig = mage_domain::payments::signature::sign(body.as_bytes(), SECRET, now);
            reqs.push((body, sig));
            duplicates += 1;
        } else {
            let body = event(&format!("evt_bench_{run_id}_{i:07}"), now);
            let sig = mage_domain::payments::signature::sign(body.as_bytes(), SECRET, now);
            originals.push(reqs.len());
            reqs.push((body, sig));
        }
    }
    (reqs, duplicates)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let events: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let connections: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(64).max(1);
    // Before any thread exists, so every thread inherits the pinning.
    let Cores { count: cores, pinned } = Cores::pin_self();
    let runtime = if pinned {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().enable_all().build()
    }
    .expect("tokio runtime");
    let code = runtime.block_on(bench(events, connections, cores, pinned));
    std::process::exit(code);
}

async fn bench(events: usize, connections: usize, cores: usize, pinned: bool) -> i32 {
    let db = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let redis_url = std::env::var("REDIS_URL").expect("REDIS_URL");
    let mage = std::env::var("MAGE_BIN").unwrap_or_else(|_| "target/release/mage".into());
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

    // Warm-up: open the connections, fill the server's database pool.
    let _ = run(&http, &base, Arc::new(Load::Healthz(connections * 4)), connections).await;
    let warm: Vec<(String, String)> = {
        let now = chrono::Utc::now().timestamp();
        (0..connections)
            .map(|i| {
                let body = event(&format!("evt_warmup_{run_id}_{i}"), now);
                let sig = mage_domain::payments::signature::sign(body.as_bytes(), SECRET, now);
                (body, sig)
            })
            .collect()
    };
    let _ = run(&http, &base, Arc::new(Load::Webhooks(warm)), connections).await;

    // The floor, then the webhooks (signed just before they are sent: the
    // server refuses a signature more than 300 s old).
    let floor = run(&http, &base, Arc::new(Load::Healthz(events)), connections).await;
    let (reqs, duplicates) = build(&run_id, events, connections);
    let distinct = events - duplicates;
    let hooks = run(&http, &base, Arc::new(Load::Webhooks(reqs)), connections).await;

    let _ = server.kill();
    let _ = server.wait();

    // One row per distinct event id.
    let query = format!("select count(*) from stripe_events where id like 'evt_bench_{run_id}_%'");
    let rows = Command::new("psql")
        .args(["-w", &db, "-tAc", &query])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse::<usize>().ok());
    // The settle jobs went to a queue under this run's prefix that no worker
    // reads: drop them (the rows stay, unsettled, as `payout.paid` events a
    // worker would settle as "ignored").
    let cleaned = clean_redis(&redis_url, &prefix).await;

    let ratio = hooks.per_s() / floor.per_s();
    let split = if pinned {
        "mage serve pinned to core 0, load generator to core 1 (taskset); PostgreSQL and Redis unpinned"
            .to_owned()
    } else {
        format!("not pinned: server, load generator, PostgreSQL and Redis share {cores} core(s)")
    };
    println!(
        "webhooks: {events} signed payout.paid events ({duplicates} re-sends), {connections} connections"
    );
    println!("  cores                  {cores}: {split}");
    println!("  {:<22} {:>10} {:>9} {:>9} {:>7} {:>7}", "", "ok/s", "p50 ms", "p99 ms", "ok", "errors");
    for (name, p) in [("GET /healthz (floor)", &floor), ("POST /webhooks/stripe", &hooks)] {
        println!(
            "  {:<22} {:>10.0} {:>9.2} {:>9.2} {:>7} {:>7}",
            name,
            p.per_s(),
            p.p(0.5),
            p.p(0.99),
            p.tally.ok,
            p.tally.errors
        );
    }
    println!("  ratio of floor         {ratio:.3}");
    println!(
        "  duplicates             {duplicates} sent, {} answered \"duplicate\":true",
        hooks.tally.duplicate_answers
    );
    for e in floor.tally.first_errors.iter().chain(&hooks.tally.first_errors) {
        println!("  error                  {e}");
    }
    let rows_ok = rows == Some(distinct);
    match rows {
        Some(n) => println!(
            "  stripe_events rows     {n} for {distinct} distinct event ids: {}",
            if rows_ok { "OK" } else { "MISMATCH" }
        ),
        None => println!("  stripe_events rows     could not be counted through psql"),
    }
    match cleaned {
        Ok(n) => println!("  redis                  {n} keys of prefix {prefix} removed"),
        Err(e) => println!("  redis                  could not remove the keys of prefix {prefix}: {e}"),
    }

    let report = json!({
        "webhooks": {
            "per_s": { "mage": hooks.per_s(), "healthz_floor": floor.per_s() },
            "ratio_of_floor": ratio,
            "p50_ms": hooks.p(0.5),
            "p99_ms": hooks.p(0.99),
            "duplicates": duplicates,
            "errors": hooks.tally.errors,
            "events": events,
            "connections": connections,
        }
    });
    let out = std::path::Path::new("bench/webhooks.json");
    let _ = std::fs::write(out, serde_json::to_string_pretty(&report).unwrap_or_default());
    if rows_ok && hooks.tally.errors == 0 && floor.tally.errors == 0 { 0 } else { 1 }
}
