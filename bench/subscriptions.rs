//! Publish-to-client latency and memory of live subscriptions.
//!
//! Starts a release `mage serve` (on `DATABASE_URL` / `REDIS_URL`, under a
//! Redis prefix of its own), opens N graphql-transport-ws clients subscribed
//! to `generationUpdated` of four generations, publishes progress the way a
//! worker does, and reports publish-to-client latency next to a raw Redis
//! pub/sub subscriber fed in the same rounds (the floor), plus the server's
//! resident memory per connection and after everyone left.
//!
//! Run through `bench/subscriptions [clients] [rounds]`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VmRSS:").and_then(|v| v.split_whitespace().next()?.parse().ok())
            })
        })
        .unwrap_or(0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn gql(http: &reqwest::Client, url: &str, query: &str, vars: Value, token: Option<&str>) -> Value {
    let mut req = http.post(url).json(&json!({ "query": query, "variables": vars }));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.expect("POST").json().await.expect("JSON")
}

async fn client(addr: String, token: String, id: String) -> Ws {
    let mut req = format!("ws://{addr}/graphql").into_client_request().expect("request");
    req.headers_mut().insert("Sec-WebSocket-Protocol", "graphql-transport-ws".parse().expect("header"));
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.expect("connect");
    let init =
        json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {token}") } });
    ws.send(Message::text(init.to_string())).await.expect("init");
    let sub = json!({ "id": "1", "type": "subscribe", "payload": {
        "query": "subscription($id: ID!) { generationUpdated(id: $id) { progress } }", "variables": { "id": id } } });
    ws.send(Message::text(sub.to_string())).await.expect("subscribe");
    // ack, then the current state
    let mut seen = 0;
    while seen < 2 {
        if let Some(Ok(Message::Text(_))) = ws.next().await {
            seen += 1;
        }
    }
    ws
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let clients: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(2000);
    let rounds: i32 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(50);
    let db = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let redis_url = std::env::var("REDIS_URL").expect("REDIS_URL");
    let mage = std::env::var("MAGE_BIN").unwrap_or_else(|_| "target/release/mage".into());
    let prefix = format!("bench:{}:", uuid::Uuid::new_v4().simple());
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let addr = format!("127.0.0.1:{port}");
    let mut server = std::process::Command::new(&mage)
        .arg("serve")
        .env("DATABASE_URL", &db)
        .env("REDIS_URL", &redis_url)
        .env("MAGE_REDIS_PREFIX", &prefix)
        .env("MAGE_ADDR", &addr)
        .env("MAGE_JWT_SECRET", "bench-secret-bench-secret-bench-secret-0")
        .env("MAGE_LOG", "warn")
        .spawn()
        .expect("start mage serve");
    let pid = server.id();
    let http = reqwest::Client::new();
    let url = format!("http://{addr}/graphql");
    for _ in 0..300 {
        if http.get(format!("http://{addr}/readyz")).send().await.is_ok_and(|r| r.status().is_success()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let email = format!("bench-{}@example.com", uuid::Uuid::new_v4().simple());
    let reg = gql(
        &http,
        &url,
        "mutation($e: String!) { register(email: $e, password: \"bench password\") { token } }",
        json!({ "e": email }),
        None,
    )
    .await;
    let token = reg["data"]["register"]["token"].as_str().expect("token").to_owned();
    let mut ids = Vec::new();
    for i in 0..4 {
        let g = gql(
            &http,
            &url,
            "mutation($i: CreateGenerationInput!) { createGeneration(input: $i) { id } }",
            json!({ "i": { "model": "synth-image", "prompt": format!("bench {i}"), "resolution": "R480P" } }),
            Some(&token),
        )
        .await;
        ids.push(g["data"]["createGeneration"]["id"].as_str().unwrap_or_else(|| panic!("{g}")).to_owned());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_start = rss_kib(pid);

    let opened = Instant::now();
    let mut handles = Vec::new();
    for chunk in 0..clients.div_ceil(100) {
        let batch: Vec<_> = (chunk * 100..((chunk + 1) * 100).min(clients))
            .map(|i| tokio::spawn(client(addr.clone(), token.clone(), ids[i % ids.len()].clone())))
            .collect();
        for b in batch {
            handles.push(b.await.expect("client"));
        }
    }
    let open_secs = opened.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_open = rss_kib(pid);

    // Receipts: (round, when) per client.
    let receipts: Arc<Mutex<Vec<(i32, Instant)>>> = Arc::new(Mutex::new(Vec::new()));
    let mut readers = Vec::new();
    for mut ws in handles {
        let receipts = receipts.clone();
        readers.push(tokio::spawn(async move {
            let mut got = 0;
            while got < rounds {
                match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
                    Ok(Some(Ok(Message::Text(t)))) => {
                        let now = Instant::now();
                        let v: Value = serde_json::from_str(&t).unwrap_or_default();
                        if let Some(p) = v["payload"]["data"]["generationUpdated"]["progress"].as_i64() {
                            receipts.lock().expect("lock").push((p as i32, now));
                            got = p as i32;
                        }
                    }
                    Ok(Some(Ok(_))) => {}
                    _ => break,
                }
            }
            ws
        }));
    }
    // The floor: a plain Redis subscriber fed in the same rounds.
    let rclient = redis::Client::open(redis_url.as_str()).expect("redis");
    let mut floor_sub = rclient.get_async_pubsub().await.expect("pubsub");
    let floor_channel = format!("{prefix}bench:floor");
    floor_sub.subscribe(&floor_channel).await.expect("subscribe");
    let floor: Arc<Mutex<Vec<(i32, Instant)>>> = Arc::new(Mutex::new(Vec::new()));
    let floor_reader = {
        let floor = floor.clone();
        tokio::spawn(async move {
            let mut stream = floor_sub.into_on_message();
            while let Some(msg) = stream.next().await {
                let round: i32 = msg.get_payload().unwrap_or(0);
                floor.lock().expect("lock").push((round, Instant::now()));
                if round >= rounds {
                    return;
                }
            }
        })
    };
    let mut conn = rclient.get_multiplexed_async_connection().await.expect("redis conn");
    // The rows exactly as a worker publishes them.
    let pool =
        mage_domain::db::pool(&mage_domain::config::DatabaseSettings { url: db.clone(), pool_size: 2 })
            .expect("pool");
    let mut pg = pool.get().await.expect("pg");
    let mut generations = Vec::new();
    for id in &ids {
        generations.push(
            mage_domain::generations::find(&mut pg, id.parse().expect("uuid"))
                .await
                .expect("find")
                .expect("row"),
        );
    }
    let mut published: HashMap<i32, Instant> = HashMap::new();
    for round in 1..=rounds {
        let mut pipe = redis::pipe();
        for g in &mut generations {
            g.progress = round;
            let payload = serde_json::to_string(&*g).expect("json");
            pipe.publish(format!("{prefix}events:generation:{}", g.id), payload).ignore();
        }
        pipe.publish(&floor_channel, round).ignore();
        published.insert(round, Instant::now());
        let () = pipe.query_async(&mut conn).await.expect("publish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut sockets = Vec::new();
    for r in readers {
        sockets.push(r.await.expect("reader"));
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), floor_reader).await;
    let ms = |v: &[(i32, Instant)]| {
        let mut out: Vec<f64> = v
            .iter()
            .filter_map(|(r, at)| {
                published.get(r).map(|p| at.saturating_duration_since(*p).as_secs_f64() * 1000.0)
            })
            .collect();
        out.sort_by(f64::total_cmp);
        out
    };
    let mage_ms = ms(&receipts.lock().expect("lock"));
    let floor_ms = ms(&floor.lock().expect("lock"));
    let expected = clients * rounds as usize;

    drop(sockets);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_after = rss_kib(pid);
    let metrics = http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .unwrap_or_default();
    let gauge = |name: &str| {
        metrics.lines().find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned())).unwrap_or_default()
    };
    for id in &ids {
        gql(
            &http,
            &url,
            "mutation($id: ID!) { cancelGeneration(id: $id) { id } }",
            json!({ "id": id }),
            Some(&token),
        )
        .await;
    }
    let _ = server.kill();
    let _ = server.wait();

    let (p50, p99) = (percentile(&mage_ms, 0.5), percentile(&mage_ms, 0.99));
    let (f50, f99) = (percentile(&floor_ms, 0.5), percentile(&floor_ms, 0.99));
    let per_conn = (rss_open.saturating_sub(rss_start)) as f64 / clients as f64;
    let report = json!({
        "clients": clients, "rounds": rounds, "events_expected": expected, "events_received": mage_ms.len(),
        "open_seconds": open_secs,
        "latency_ms": { "mage_p50": p50, "mage_p99": p99, "redis_floor_p50": f50, "redis_floor_p99": f99 },
        "ratio_to_floor": { "p50": p50 / f50, "p99": p99 / f99 },
        "rss_kib": { "start": rss_start, "open": rss_open, "after_close": rss_after },
        "kib_per_conn": per_conn,
        "after_close": { "mage_subscriptions": gauge("mage_subscriptions"), "mage_websocket_connections": gauge("mage_websocket_connections") },
    });
    println!("subscriptions: {clients} clients x {rounds} rounds (4 generations, progress every 100 ms)");
    println!("  events received        {} / {expected}", mage_ms.len());
    println!(
        "  publish->client p50    {p50:.2} ms   (Redis pub/sub floor {f50:.2} ms, ratio {:.1}x)",
        p50 / f50
    );
    println!(
        "  publish->client p99    {p99:.2} ms   (Redis pub/sub floor {f99:.2} ms, ratio {:.1}x)",
        p99 / f99
    );
    println!(
        "  server RSS             {rss_start} KiB idle, {rss_open} KiB with clients, {rss_after} KiB after they left"
    );
    println!("  memory per connection  {per_conn:.1} KiB");
    println!(
        "  after close            subscriptions={} sockets={}",
        gauge("mage_subscriptions"),
        gauge("mage_websocket_connections")
    );
    let out = std::path::Path::new("bench/subscriptions.json");
    let _ = std::fs::write(out, serde_json::to_string_pretty(&report).unwrap_or_default());
}
