//! Enqueue-to-start latency of Mage's render queue, as Mage configures it
//! (apalis-redis + the pub/sub wake-up), with a no-op handler: jobs pushed
//! one by one at a steady rate into an idle queue. The baseline, measured
//! in the same run, is a Redis PING round trip: no queue can start a job
//! faster than one round trip to Redis.
//!
//! cargo run --release -p mage-jobs --example queue_latency [-- JOBS RATE_PER_S]
//! (REDIS_URL, default redis://127.0.0.1:6379)

use mage_domain::catalog::BackendKind;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use apalis::layers::WorkerBuilderExt;
use apalis::prelude::{Data, Monitor, ParallelizeExt, WorkerBuilder};
use mage_domain::queue::{self, Queues, RenderJob};
use mage_jobs::wake::{self, Cancels, Signal};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

type Sent = Arc<Mutex<HashMap<Uuid, Instant>>>;
type Seen = Arc<Mutex<Vec<Duration>>>;

async fn noop(job: RenderJob, sent: Data<Sent>, seen: Data<Seen>) {
    let now = Instant::now();
    let start = sent.lock().ok().and_then(|mut m| m.remove(&job.generation_id));
    if let (Some(start), Ok(mut seen)) = (start, seen.lock()) {
        seen.push(now - start);
    }
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let jobs: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(400);
    let rate: f64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(20.0);
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let prefix = format!("mage-bench-{}:", Uuid::new_v4().simple());
    let queues = Queues::connect(&url, &prefix).await?;

    // Baseline: Redis round trips on the same connection kind.
    let mut conn = queues.connection();
    let mut pings = Vec::with_capacity(jobs);
    for _ in 0..jobs {
        let t = Instant::now();
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        pings.push(t.elapsed());
    }
    pings.sort();

    let sent: Sent = Arc::default();
    let seen: Seen = Arc::default();
    let signal = Signal::default();
    let stop = CancellationToken::new();
    let listener = tokio::spawn(wake::listen(
        url.clone(),
        vec![(queues.wake_channel(queue::Queue::Render(BackendKind::Synthetic)), signal.clone())],
        format!("{prefix}control:cancel"),
        Cancels::default(),
        mage_jobs::IDLE_POLL,
        stop.clone(),
    ));
    let (conn, config) = (queues.connection(), queues.config(queue::Queue::Render(BackendKind::Synthetic)));
    let (s1, s2) = (sent.clone(), seen.clone());
    let monitor = Monitor::new().register(move |_| {
        WorkerBuilder::new(format!("bench-{}", std::process::id()))
            .backend(mage_jobs::woken_storage::<RenderJob>(&conn, &config, &signal))
            .concurrency(50)
            .data(s1.clone())
            .data(s2.clone())
            .parallelize(tokio::spawn)
            .build(noop)
    });
    let shutdown = CancellationToken::new();
    let sd = shutdown.clone();
    let running = tokio::spawn(async move {
        monitor
            .run_with_signal(async move {
                sd.cancelled().await;
                Ok(())
            })
            .await
    });
    let idle: u64 = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(500);
    tokio::time::sleep(Duration::from_millis(idle)).await;

    let every = Duration::from_secs_f64(1.0 / rate);
    let mut tick = tokio::time::interval(every);
    for _ in 0..jobs {
        tick.tick().await;
        let id = Uuid::new_v4();
        if let Ok(mut m) = sent.lock() {
            m.insert(id, Instant::now());
        }
        queues.push_render(BackendKind::Synthetic, &RenderJob { generation_id: id }).await?;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.lock().map(|s| s.len()).unwrap_or(0) < jobs && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    stop.cancel();
    let _ = running.await;
    let _ = listener.await;

    let mut lat = seen.lock().map(|s| s.clone()).unwrap_or_default();
    lat.sort();
    if lat.is_empty() {
        return Err("no job started".into());
    }
    let (p50, p99) = (pct(&lat, 0.5), pct(&lat, 0.99));
    let (b50, b99) = (pct(&pings, 0.5), pct(&pings, 0.99));
    println!("jobs started: {}/{jobs} at {rate}/s into an idle queue", lat.len());
    println!("enqueue→start  p50 {p50:.2} ms  p99 {p99:.2} ms");
    println!("Redis PING RTT p50 {b50:.3} ms  p99 {b99:.3} ms (baseline)");
    println!("ratio to baseline: p50 {:.1}×  p99 {:.1}×", p50 / b50, p99 / b99);
    Ok(())
}
