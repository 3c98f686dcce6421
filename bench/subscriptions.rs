//! Publish-to-client latency, memory and CPU of live subscriptions, Mage
//! against a graphql-ws peer on Node.
//!
//! Starts a release `mage serve` (on `DATABASE_URL` / `REDIS_URL`, under a
//! Redis prefix of its own) and creates 1,000 generations through its API.
//! Then, for each client count (1,000 / 5,000 / 10,000 by default), opens
//! graphql-transport-ws clients spread evenly over those generations, each
//! subscribed to `generationUpdated(id)`, and publishes progress exactly as
//! a worker does (`mage_domain::events::publish_generation`, the row's JSON
//! on the generation's and its owner's channels): every generation once a
//! second, spread evenly, so 1,000 events/s in total and `clients / 1,000`
//! deliveries per event. It reports publish-to-client p50/p99 (next to a
//! raw Redis pattern subscriber fed by the same publishes: the floor), the
//! server's resident memory per connection (peak RSS while publishing, less
//! RSS before any client) and its CPU while publishing (/proc/<pid>/stat
//! utime + stime).
//!
//! The same clients and publisher then drive the peer,
//! `bench/node/graphql_ws_peer.mjs` (graphql-ws + `ws`, one ioredis pub/sub
//! connection fanning out, the same schema and payload shape), fed by the
//! same Redis channels and reading the same rows; Mage is stopped (SIGSTOP)
//! meanwhile. With `taskset` and two or more cores, the server under test
//! runs on core 0 and this process (clients and publisher) on core 1;
//! PostgreSQL and Redis are not pinned.
//!
//! Run through `bench/subscriptions [clients=1000,5000,10000] [rounds=5]`
//! (rounds: progress steps per generation at each client count, one a
//! second); `BENCH_PEER=0` skips the peer. Writes `bench/subscriptions.json`.

#[path = "common.rs"]
#[allow(dead_code)]
mod common;

use std::collections::HashMap;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Cores, JWT_SECRET, METRICS_TOKEN, percentile};
use futures_util::{SinkExt, StreamExt};
use mage_domain::rows::Generation;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Generations progressing at once; each publishes once a second.
const GENERATIONS: usize = 1000;
/// Publish ticks per second (each publishes `GENERATIONS / TICKS` events).
const TICKS: usize = 100;
/// Clients connecting at once while opening.
const CONNECT_BATCH: usize = 100;
const SUBSCRIPTION: &str =
    "subscription($id: ID!) { generationUpdated(id: $id) { id status progress stage queuePosition } }";

fn proc_status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field).and_then(|v| v.split_whitespace().next()?.parse().ok()))
        })
        .unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmRSS:")
}

/// CPU seconds (user + system, all threads) the process has used; Linux
/// reports them in USER_HZ ticks, 100 a second.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the command name (in parentheses): state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// CPU seconds the whole machine has been busy (all cores, /proc/stat).
fn machine_busy_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal: all but idle and iowait.
    let busy: u64 =
        ticks.iter().take(8).enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, t)| t).sum();
    busy as f64 / 100.0
}

/// "1k", "10k", "2500".
fn size_key(n: usize) -> String {
    if n.is_multiple_of(1000) { format!("{}k", n / 1000) } else { n.to_string() }
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill").args([sig, &pid.to_string()]).status();
}

/// A server under test, killed when dropped (also when the bench panics).
struct Server {
    name: &'static str,
    child: Child,
    addr: String,
}

impl Server {
    /// Starts `program args` with `envs` (on core 0 when `pinned`).
    fn start(
        name: &'static str,
        program: &str,
        args: &[&str],
        envs: &[(&str, &str)],
        pinned: bool,
        addr: String,
    ) -> Self {
        let mut cmd = if pinned {
            // taskset execs the program: the child's pid is the server's.
            let mut c = Command::new("taskset");
            c.args(["-c", "0", program]);
            c
        } else {
            Command::new(program)
        };
        cmd.args(args).envs(envs.iter().copied());
        let child = cmd.spawn().unwrap_or_else(|e| panic!("start {name}: {e}"));
        Self { name, child, addr }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        signal(self.pid(), "-CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn wait_ready(http: &reqwest::Client, server: &mut Server, path: &str) {
    for _ in 0..300 {
        if let Ok(Some(status)) = server.child.try_wait() {
            panic!("{} exited at start: {status}", server.name);
        }
        if http
            .get(format!("http://{}{path}", server.addr))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{} did not answer {path} within 30 s", server.name);
}

async fn gql(http: &reqwest::Client, url: &str, query: &str, vars: Value, token: Option<&str>) -> Value {
    let mut req = http.post(url).json(&json!({ "query": query, "variables": vars }));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.expect("POST").json().await.expect("JSON")
}

/// One receipt: which generation, which progress, when.
type Receipt = (u32, i32, Instant);

#[derive(Default)]
struct Tally {
    receipts: Mutex<Vec<Receipt>>,
    /// Sockets that closed or errored while they should have stayed open.
    dropped: AtomicUsize,
}

async fn connect(addr: &str, token: &str, id: &str) -> Ws {
    let mut req = format!("ws://{addr}/graphql").into_client_request().expect("request");
    req.headers_mut().insert("Sec-WebSocket-Protocol", "graphql-transport-ws".parse().expect("header"));
    // Small buffers: 10,000 clients share this process.
    let config = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
    let (mut ws, _) =
        tokio_tungstenite::connect_async_with_config(req, Some(config), true).await.expect("connect");
    let init =
        json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {token}") } });
    ws.send(Message::text(init.to_string())).await.expect("init");
    // The protocol wants the ack before any subscribe (graphql-ws closes
    // the socket with 4401 otherwise), then the first event is the current
    // state.
    let mut acked = false;
    loop {
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                let v: Value = serde_json::from_str(&t).unwrap_or_default();
                match v["type"].as_str() {
                    Some("connection_ack") if !acked => {
                        acked = true;
                        let sub = json!({ "id": "1", "type": "subscribe",
                            "payload": { "query": SUBSCRIPTION, "variables": { "id": id } } });
                        ws.send(Message::text(sub.to_string())).await.expect("subscribe");
                    }
                    Some("next") if acked => {
                        assert!(v["payload"]["errors"].is_null(), "subscription failed: {t}");
                        break;
                    }
                    Some("ping") => {
                        ws.send(Message::text(r#"{"type":"pong"}"#)).await.expect("pong");
                    }
                    Some("error") | Some("complete") => panic!("subscription refused: {t}"),
                    _ => {}
                }
            }
            Ok(Some(Ok(Message::Close(frame)))) => panic!("socket closed while subscribing: {frame:?}"),
            Ok(Some(Ok(_))) => {}
            other => panic!("socket ended while subscribing: {other:?}"),
        }
    }
    ws
}

/// Reads a client's events until the task is aborted.
async fn read(mut ws: Ws, generation: u32, tally: Arc<Tally>) {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                let now = Instant::now();
                let v: Value = serde_json::from_str(&t).unwrap_or_default();
                match v["type"].as_str() {
                    Some("next") => {
                        if let Some(p) = v["payload"]["data"]["generationUpdated"]["progress"].as_i64() {
                            tally.receipts.lock().expect("lock").push((generation, p as i32, now));
                        }
                    }
                    Some("ping") => {
                        let _ = ws.send(Message::text(r#"{"type":"pong"}"#)).await;
                    }
                    Some("pong") => {}
                    _ => {
                        tally.dropped.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
            }
            Some(Ok(_)) => {}
            _ => {
                tally.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
}

/// The publisher and its bookkeeping, shared by both servers' runs.
struct Publisher {
    redis: mage_domain::kv::Redis,
    rows: Vec<Generation>,
    /// The next progress value (it only grows, so every (generation,
    /// progress) is published once in the whole run).
    next_progress: i32,
    published: HashMap<(u32, i32), Instant>,
}

impl Publisher {
    /// `rounds` seconds of progress: each generation once a second, spread
    /// evenly over the second. Samples the server's RSS meanwhile; returns
    /// the progress values published and the peak RSS.
    async fn run(&mut self, rounds: usize, pid: u32) -> (std::ops::Range<i32>, u64) {
        let first = self.next_progress;
        let per_tick = self.rows.len().div_ceil(TICKS);
        let mut interval = tokio::time::interval(Duration::from_secs(1) / TICKS as u32);
        let mut peak = rss_kib(pid);
        let mut sampled = Instant::now();
        for _ in 0..rounds {
            let progress = self.next_progress;
            self.next_progress += 1;
            for tick in 0..TICKS {
                interval.tick().await;
                let from = (tick * per_tick).min(self.rows.len());
                let to = ((tick + 1) * per_tick).min(self.rows.len());
                let mut sends = Vec::new();
                for (i, row) in self.rows[from..to].iter_mut().enumerate() {
                    row.progress = progress;
                    row.updated_at = chrono::Utc::now();
                    self.published.insert(((from + i) as u32, progress), Instant::now());
                    let (redis, row) = (&self.redis, &*row);
                    sends.push(
                        async move { mage_domain::events::publish_generation(redis, row, false).await },
                    );
                }
                for r in futures_util::future::join_all(sends).await {
                    r.expect("publish");
                }
                if sampled.elapsed() >= Duration::from_millis(250) {
                    peak = peak.max(rss_kib(pid));
                    sampled = Instant::now();
                }
            }
        }
        (first..self.next_progress, peak.max(rss_kib(pid)))
    }
}

/// Latencies (ms, sorted) of the receipts of progress values in `rounds`.
fn latencies(
    receipts: &[Receipt],
    published: &HashMap<(u32, i32), Instant>,
    rounds: &std::ops::Range<i32>,
) -> Vec<f64> {
    let mut out: Vec<f64> = receipts
        .iter()
        .filter(|(_, p, _)| rounds.contains(p))
        .filter_map(|(g, p, at)| {
            published.get(&(*g, *p)).map(|sent| at.saturating_duration_since(*sent).as_secs_f64() * 1000.0)
        })
        .collect();
    out.sort_by(f64::total_cmp);
    out
}

/// p99 (ms) of each round's deliveries: one a second, to show where the
/// tail comes from (a burst, a pause) rather than only how long it is.
fn p99_by_round(
    receipts: &[Receipt],
    published: &HashMap<(u32, i32), Instant>,
    rounds: &std::ops::Range<i32>,
) -> Vec<f64> {
    rounds.clone().map(|r| percentile(&latencies(receipts, published, &(r..r + 1)), 0.99)).collect()
}

struct Phase {
    clients: usize,
    p50: f64,
    p99: f64,
    max: f64,
    floor_p50: f64,
    floor_p99: f64,
    received: usize,
    expected: usize,
    open_seconds: f64,
    open_cpu_seconds: f64,
    rss_idle: u64,
    rss_open: u64,
    rss_peak: u64,
    kib_per_conn: f64,
    cpu_percent: f64,
    cpu_us_per_delivery: f64,
    client_cpu_percent: f64,
    /// Everything else on the machine (PostgreSQL, Redis, other programs).
    other_cpu_percent: f64,
    p99_by_second: Vec<f64>,
    dropped: usize,
}

impl Phase {
    fn json(&self) -> Value {
        json!({
            "clients": self.clients,
            "latency_ms": { "p50": self.p50, "p99": self.p99, "max": self.max,
                            "redis_floor_p50": self.floor_p50, "redis_floor_p99": self.floor_p99 },
            "events": { "received": self.received, "expected": self.expected },
            "open_seconds": self.open_seconds, "open_cpu_seconds": self.open_cpu_seconds,
            "rss_kib": { "idle": self.rss_idle, "open": self.rss_open, "peak_publishing": self.rss_peak },
            "kib_per_conn": self.kib_per_conn,
            "cpu_percent_of_one_core": self.cpu_percent,
            "cpu_us_per_delivery": self.cpu_us_per_delivery,
            "client_cpu_percent_of_one_core": self.client_cpu_percent,
            "rest_of_machine_cpu_percent_of_one_core": self.other_cpu_percent,
            "p99_ms_by_second": self.p99_by_second,
            "sockets_dropped": self.dropped,
        })
    }
}

/// Opens clients up to each size in turn (keeping the earlier ones) and
/// publishes `rounds` seconds of progress at each.
async fn run_server(
    server: &Server,
    sizes: &[usize],
    rounds: usize,
    token: &str,
    ids: &[String],
    publisher: &mut Publisher,
    floor: &Mutex<Vec<Receipt>>,
) -> Vec<Phase> {
    let pid = server.pid();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_idle = rss_kib(pid);
    let tally = Arc::new(Tally::default());
    let mut readers = Vec::new();
    let mut phases = Vec::new();
    for &size in sizes {
        let (opened, cpu_before_open) = (Instant::now(), cpu_seconds(pid));
        while readers.len() < size {
            let start = readers.len();
            let batch: Vec<_> = (start..(start + CONNECT_BATCH).min(size))
                .map(|i| {
                    let (addr, token, id) =
                        (server.addr.clone(), token.to_owned(), ids[i % ids.len()].clone());
                    tokio::spawn(async move { connect(&addr, &token, &id).await })
                })
                .collect();
            for (k, b) in batch.into_iter().enumerate() {
                let ws = b.await.expect("client");
                let generation = ((start + k) % ids.len()) as u32;
                readers.push(tokio::spawn(read(ws, generation, tally.clone())));
            }
        }
        let open_seconds = opened.elapsed().as_secs_f64();
        let open_cpu_seconds = cpu_seconds(pid) - cpu_before_open;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rss_open = rss_kib(pid);

        let me = std::process::id();
        let (cpu0, client_cpu0, busy0, t0) =
            (cpu_seconds(pid), cpu_seconds(me), machine_busy_seconds(), Instant::now());
        let (progress, rss_peak) = publisher.run(rounds, pid).await;
        let (cpu, client_cpu, busy, wall) = (
            cpu_seconds(pid) - cpu0,
            cpu_seconds(me) - client_cpu0,
            machine_busy_seconds() - busy0,
            t0.elapsed().as_secs_f64(),
        );
        // Let the last deliveries land.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let receipts = tally.receipts.lock().expect("lock");
        let got = latencies(&receipts, &publisher.published, &progress);
        let p99_by_second = p99_by_round(&receipts, &publisher.published, &progress);
        drop(receipts);
        let floor_ms = latencies(&floor.lock().expect("lock"), &publisher.published, &progress);
        let expected = size * rounds;
        let phase = Phase {
            clients: size,
            p50: percentile(&got, 0.5),
            p99: percentile(&got, 0.99),
            max: got.last().copied().unwrap_or(f64::NAN),
            floor_p50: percentile(&floor_ms, 0.5),
            floor_p99: percentile(&floor_ms, 0.99),
            received: got.len(),
            expected,
            open_seconds,
            open_cpu_seconds,
            rss_idle,
            rss_open,
            rss_peak,
            kib_per_conn: rss_peak.max(rss_open).saturating_sub(rss_idle) as f64 / size as f64,
            cpu_percent: 100.0 * cpu / wall,
            cpu_us_per_delivery: cpu * 1e6 / got.len().max(1) as f64,
            client_cpu_percent: 100.0 * client_cpu / wall,
            other_cpu_percent: (100.0 * (busy - cpu - client_cpu) / wall).max(0.0),
            p99_by_second,
            dropped: tally.dropped.load(Ordering::Relaxed),
        };
        println!(
            "  {:<5} {:>6} clients  p50 {:>7.2} ms  p99 {:>7.2} ms  (floor p99 {:.2})  {:>6}/{:<6} events  {:>5.1} KiB/conn  CPU {:>5.1}% (clients {:.0}%, rest {:.0}%)  opened in {:.1} s",
            server.name,
            size,
            phase.p50,
            phase.p99,
            phase.floor_p99,
            phase.received,
            phase.expected,
            phase.kib_per_conn,
            phase.cpu_percent,
            phase.client_cpu_percent,
            phase.other_cpu_percent,
            phase.open_seconds,
        );
        phases.push(phase);
    }
    for r in &readers {
        r.abort();
    }
    for r in readers {
        let _ = r.await;
    }
    phases
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mut sizes: Vec<usize> = args
        .get(1)
        .map(|a| a.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1000, 5000, 10_000]);
    sizes.retain(|&n| n > 0);
    sizes.sort_unstable();
    assert!(!sizes.is_empty(), "usage: bench/subscriptions [clients=1000,5000,10000] [rounds=5]");
    let rounds: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(5).max(1);
    // Before any thread exists, so every thread inherits the pinning.
    let cores = Cores::pin_self();
    cores.runtime().block_on(bench(sizes, rounds, cores.pinned));
}

async fn bench(sizes: Vec<usize>, rounds: usize, pinned: bool) {
    let db = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let redis_url = std::env::var("REDIS_URL").expect("REDIS_URL");
    let mage_bin = std::env::var("MAGE_BIN").unwrap_or_else(|_| "target/release/mage".into());
    let with_peer = std::env::var("BENCH_PEER").map(|v| v != "0").unwrap_or(true);
    let prefix = format!("bench:subs:{}:", uuid::Uuid::new_v4().simple());
    let free_addr = || {
        let port =
            std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        format!("127.0.0.1:{port}")
    };
    let started = Instant::now();

    let addr = free_addr();
    let mut mage = Server::start(
        "mage",
        &mage_bin,
        &["serve"],
        &[
            ("DATABASE_URL", &db),
            ("REDIS_URL", &redis_url),
            ("MAGE_REDIS_PREFIX", &prefix),
            ("MAGE_ADDR", &addr),
            ("MAGE_JWT_SECRET", JWT_SECRET),
            ("MAGE_SIGNUP_CREDITS", "100000000"),
            ("MAGE_GENERATIONS_PER_MINUTE", "1000000"),
            ("MAGE_ACTIVE_GENERATIONS", "1000000"),
            // Every client of the benchmark connects from 127.0.0.1.
            ("MAGE_WS_MAX_SOCKETS_PER_IP", "1000000"),
            ("MAGE_MAX_CONNECTIONS_PER_IP", "1000000"),
            ("MAGE_METRICS_TOKEN", METRICS_TOKEN),
            ("MAGE_LOG", "warn"),
        ],
        pinned,
        addr.clone(),
    );
    let http = reqwest::Client::new();
    wait_ready(&http, &mut mage, "/readyz").await;
    let url = format!("http://{}/graphql", mage.addr);

    // One user with GENERATIONS queued generations (no worker runs).
    let email = format!("bench-{}@example.com", uuid::Uuid::new_v4().simple());
    let reg = gql(
        &http,
        &url,
        "mutation($e: String!) { register(email: $e, password: \"bench password\") { token } }",
        json!({ "e": email }),
        None,
    )
    .await;
    let token =
        reg["data"]["register"]["token"].as_str().unwrap_or_else(|| panic!("register: {reg}")).to_owned();
    let ids: Vec<String> = futures_util::stream::iter(0..GENERATIONS)
        .map(|i| {
            let (http, url, token) = (&http, &url, &token);
            async move {
                let g = gql(
                    http,
                    url,
                    "mutation($i: CreateGenerationInput!) { createGeneration(input: $i) { id } }",
                    json!({ "i": { "model": "synth-image", "prompt": format!("bench {i}"), "resolution": "R480P" } }),
                    Some(token),
                )
                .await;
                g["data"]["createGeneration"]["id"].as_str().unwrap_or_else(|| panic!("createGeneration: {g}")).to_owned()
            }
        })
        .buffered(8)
        .collect()
        .await;

    // The rows as a worker holds them while rendering.
    let pool =
        mage_domain::db::pool(&mage_domain::config::DatabaseSettings { url: db.clone(), pool_size: 2 })
            .expect("pool");
    let mut pg = pool.get().await.expect("pg");
    let mut rows = Vec::new();
    for id in &ids {
        let mut g = mage_domain::generations::find(&mut pg, id.parse().expect("uuid"))
            .await
            .expect("find")
            .expect("row");
        g.status = mage_domain::generations::Status::Rendering;
        g.stage = Some("rendering".into());
        g.started_at = Some(chrono::Utc::now());
        g.worker = Some("bench".into());
        rows.push(g);
    }
    drop(pg);
    let index: HashMap<uuid::Uuid, u32> = rows.iter().enumerate().map(|(i, g)| (g.id, i as u32)).collect();
    let settings = mage_domain::config::RedisSettings { url: redis_url.clone(), prefix: prefix.clone() };
    let mut publisher = Publisher {
        redis: mage_domain::kv::Redis::new(&settings).expect("redis"),
        rows,
        next_progress: 1,
        published: HashMap::new(),
    };

    // The floor: a raw Redis subscriber to every generation channel.
    let rclient = redis::Client::open(redis_url.as_str()).expect("redis");
    let mut floor_sub = rclient.get_async_pubsub().await.expect("pubsub");
    floor_sub.psubscribe(format!("{prefix}events:generation:*")).await.expect("psubscribe");
    let floor: Arc<Mutex<Vec<Receipt>>> = Arc::new(Mutex::new(Vec::new()));
    let floor_reader = {
        let floor = floor.clone();
        tokio::spawn(async move {
            let mut stream = floor_sub.into_on_message();
            while let Some(msg) = stream.next().await {
                let at = Instant::now();
                let row: Value = serde_json::from_slice(msg.get_payload_bytes()).unwrap_or_default();
                if let Some(id) = row["id"].as_str().and_then(|id| id.parse::<uuid::Uuid>().ok())
                    && let Some(&i) = index.get(&id)
                    && let Some(progress) = row["progress"].as_i64()
                {
                    floor.lock().expect("lock").push((i, progress as i32, at));
                }
            }
        })
    };

    println!(
        "subscriptions: {GENERATIONS} generations progressing once a second each ({GENERATIONS} events/s), \
         clients spread evenly over them, {rounds} s per size; {}",
        if pinned {
            "server on core 0, clients + publisher on core 1 (taskset); PostgreSQL and Redis unpinned"
        } else {
            "not pinned (taskset or a second core missing)"
        }
    );
    let mage_phases = run_server(&mage, &sizes, rounds, &token, &ids, &mut publisher, &floor).await;

    // Mage lets go of every subscription once the sockets are gone.
    let metrics_url = format!("http://{}/metrics", mage.addr);
    let gauges = |metrics: &str| {
        let gauge = |name: &str| {
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse::<f64>().ok()))
                .unwrap_or(f64::NAN)
        };
        (gauge("mage_subscriptions "), gauge("mage_websocket_connections "), gauge("mage_pubsub_channels "))
    };
    let mut after_close = (f64::NAN, f64::NAN, f64::NAN);
    for _ in 0..50 {
        let text = match http.get(&metrics_url).bearer_auth(METRICS_TOKEN).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        after_close = gauges(&text);
        if after_close.0 == 0.0 && after_close.1 == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mage_rss_after_close = rss_kib(mage.pid());

    let peer_phases = if with_peer {
        // Mage sleeps while the peer is measured.
        signal(mage.pid(), "-STOP");
        let addr = free_addr();
        let node = std::env::var("NODE").unwrap_or_else(|_| "node".into());
        let mut peer = Server::start(
            "peer",
            &node,
            &["bench/node/graphql_ws_peer.mjs"],
            &[
                ("DATABASE_URL", &db),
                ("REDIS_URL", &redis_url),
                ("MAGE_REDIS_PREFIX", &prefix),
                ("MAGE_JWT_SECRET", JWT_SECRET),
                ("PEER_ADDR", &addr),
            ],
            pinned,
            addr.clone(),
        );
        wait_ready(&http, &mut peer, "/healthz").await;
        let phases = run_server(&peer, &sizes, rounds, &token, &ids, &mut publisher, &floor).await;
        drop(peer);
        signal(mage.pid(), "-CONT");
        phases
    } else {
        Vec::new()
    };
    floor_reader.abort();

    // Clean up: cancel the generations (releasing their credit holds), then
    // drop the run's Redis keys. On new connections: Mage closed the idle
    // ones while it was stopped for the peer's turn.
    let http = reqwest::Client::builder().pool_max_idle_per_host(0).build().expect("HTTP client");
    futures_util::stream::iter(&ids)
        .map(|id| {
            gql(
                &http,
                &url,
                "mutation($id: ID!) { cancelGeneration(id: $id) { id } }",
                json!({ "id": id }),
                Some(&token),
            )
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
    drop(mage);
    if let Ok(mut conn) = rclient.get_multiplexed_async_connection().await {
        let keys: Vec<String> =
            match redis::AsyncCommands::scan_match::<_, String>(&mut conn, format!("{prefix}*")).await {
                Ok(iter) => iter.filter_map(|k| std::future::ready(k.ok())).collect().await,
                Err(_) => Vec::new(),
            };
        for chunk in keys.chunks(500) {
            let _: Result<i64, _> = redis::cmd("UNLINK").arg(chunk).query_async(&mut conn).await;
        }
    }

    let mut p99 = serde_json::Map::new();
    let mut p50 = serde_json::Map::new();
    let mut kib = serde_json::Map::new();
    let mut cpu = serde_json::Map::new();
    let mut floor99 = serde_json::Map::new();
    let mut detail = serde_json::Map::new();
    for (name, phases) in [("mage", &mage_phases), ("peer", &peer_phases)] {
        for ph in phases {
            let k = format!("{name}_{}", size_key(ph.clients));
            p99.insert(k.clone(), json!(ph.p99));
            p50.insert(k.clone(), json!(ph.p50));
            kib.insert(k.clone(), json!(ph.kib_per_conn));
            cpu.insert(k.clone(), json!(ph.cpu_percent));
            floor99.insert(k.clone(), json!(ph.floor_p99));
            detail.insert(k, ph.json());
        }
        if let Some(largest) = phases.last() {
            kib.insert(name.into(), json!(largest.kib_per_conn));
        }
    }
    let report = json!({ "subscriptions": {
        "p99_ms": p99, "p50_ms": p50, "kib_per_conn": kib, "cpu_percent_of_one_core": cpu,
        "redis_floor_p99_ms": floor99,
        "runs": detail,
        "mage_after_close": { "subscriptions": after_close.0, "websocket_connections": after_close.1,
                              "pubsub_channels": after_close.2, "rss_kib": mage_rss_after_close },
        "setup": { "generations": GENERATIONS, "events_per_s": GENERATIONS, "rounds": rounds, "sizes": sizes,
                   "pinned": pinned, "server_core": if pinned { json!(0) } else { json!(null) },
                   "client_core": if pinned { json!(1) } else { json!(null) },
                   "subscription": SUBSCRIPTION, "seconds": started.elapsed().as_secs_f64() },
    }});
    let largest = sizes.last().copied().unwrap_or(0);
    let find =
        |phases: &[Phase]| phases.iter().find(|p| p.clients == largest).map(|p| (p.p99, p.kib_per_conn));
    if let Some((p99, kib)) = find(&mage_phases) {
        print!("  mage at {largest}: p99 {p99:.1} ms (target <= 100), {kib:.1} KiB/conn (target <= 32)");
        if let Some((pp99, pkib)) = find(&peer_phases) {
            print!("; peer: p99 {pp99:.1} ms, {pkib:.1} KiB/conn");
        }
        println!();
    }
    println!(
        "  mage after the clients left: subscriptions={} sockets={} channels={} RSS={mage_rss_after_close} KiB; whole run {:.0} s",
        after_close.0,
        after_close.1,
        after_close.2,
        started.elapsed().as_secs_f64()
    );
    let text = serde_json::to_string_pretty(&report).expect("JSON");
    std::fs::write("bench/subscriptions.json", text + "\n").expect("write bench/subscriptions.json");
}
