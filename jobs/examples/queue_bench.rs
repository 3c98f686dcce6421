//! Mage's side of `bench/queue`: the render queue as Mage runs it
//! (apalis-redis with `mage_domain::queue::config`, the pub/sub wake-up of
//! `mage_jobs::wake`, one apalis worker built like `mage work` builds a
//! render worker) with a no-op handler. The producer runs in a process of
//! its own (this binary again, started under `taskset -c
//! $QUEUE_BENCH_PRODUCER_CPUS` when that is set); this process is the
//! worker. Prints one JSON line.
//!
//! ```text
//! queue_bench latency [JOBS=400] [RATE_PER_S=20] [CONCURRENCY=50]
//! queue_bench drain   [JOBS=20000] [CONCURRENCY=50]
//! ```
//!
//! * `latency`: jobs pushed one by one with `Queues::push_render` (what
//!   `createGeneration` does) at a steady rate into an idle queue; each
//!   job's enqueue time (wall clock, ns, taken just before the push) rides
//!   in the high 64 bits of its `generation_id`, and the handler subtracts
//!   it from its own start time. The first push comes after the worker has
//!   idled QUEUE_BENCH_IDLE_MS (default 6,000: past its first heartbeat).
//! * `drain`: JOBS pushed in bulk (chunks of 1,000 through apalis-redis'
//!   `push_tasks`, apalis-redis' bulk push, then one wake-up), then the
//!   worker starts; the time is from building the worker until every job is
//!   acknowledged (`{queue}:done` holds JOBS ids).
//!
//! apalis-redis puts every pushed task in its scheduled set and its fetch
//! script promotes all due ones at once with `RPUSH active unpack(ids)`,
//! which Redis' Lua refuses above ~8,000 values ("too many results to
//! unpack"): a worker that finds 20,000 due tasks fails its every fetch.
//! So `drain` promotes them itself first, in chunks, as that script would
//! (`QUEUE_BENCH_RAW_PROMOTE=1` skips this, to show the failure).
//!
//! Experiments (the JSON says whether the configuration was Mage's own,
//! `config.production`, and which signal ran):
//! * QUEUE_BENCH_BATCH_SIZE overrides apalis-redis' fetch batch (Mage: its
//!   default, 10);
//! * QUEUE_BENCH_LOCK_TASKS=1 turns apalis-redis' per-task leases back on
//!   (Mage: off since each lease ran `LREM {queue}:active`, a scan of the
//!   whole waiting list, so a backlog drained in quadratic time);
//! * QUEUE_BENCH_SIGNAL=fixed wakes the worker with [`FixedSignal`] instead
//!   of `mage_jobs::wake::Signal`.
//!
//! REDIS_URL, default redis://127.0.0.1:6379. Keys live under a prefix of
//! their own and are deleted at the end.

use mage_domain::catalog::BackendKind;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use apalis::layers::WorkerBuilderExt;
use apalis::prelude::{
    BoxDynError, Data, Monitor, ParallelizeExt, PollWith, Strategy, TaskBuilder, TaskId, WorkerBuilder,
};
use apalis_redis::{ConnectionManager, RedisStorage};
use futures_util::task::AtomicWaker;
use futures_util::{Stream, StreamExt};
use mage_domain::queue::{self, Queues, RenderJob};
use mage_jobs::wake::{self, Cancels, Signal};
use serde_json::json;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The allocator `mage work` runs with (src/main.rs): this process stands
/// in for a worker, and under glibc's malloc a tenth of its CPU went to
/// allocation (perf), which Mage's own workers do not pay.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Res<T> = Result<T, BoxDynError>;

const CHUNK: usize = 1000;

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or_default()
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize, default: T) -> T {
    args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default)
}

/// How long the worker idles before the first push (QUEUE_BENCH_IDLE_MS).
fn idle_ms() -> u64 {
    std::env::var("QUEUE_BENCH_IDLE_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(6000)
}

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

#[derive(Clone)]
struct Probe {
    started: Arc<AtomicUsize>,
    /// Enqueue-to-start, ns (latency mode only).
    latencies: Option<Arc<Mutex<Vec<u64>>>>,
}

async fn noop(job: RenderJob, probe: Data<Probe>) -> Result<(), BoxDynError> {
    let now = now_ns();
    if let Some(lat) = &probe.latencies {
        let sent = job.generation_id.as_u64_pair().0;
        if let Ok(mut v) = lat.lock() {
            v.push(now.saturating_sub(sent));
        }
    }
    probe.started.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

struct RunningWorker {
    /// Why the worker stopped, when it did on its own.
    failure: Arc<Mutex<Option<String>>>,
    monitor: JoinHandle<Result<(), apalis::prelude::MonitorError>>,
    listener: JoinHandle<()>,
    shutdown: CancellationToken,
    stop: CancellationToken,
}

impl RunningWorker {
    /// Stops the worker; its error, if it failed.
    async fn stop(self) -> Option<String> {
        self.shutdown.cancel();
        self.stop.cancel();
        let outcome = self.monitor.await;
        let _ = self.listener.await;
        let failure = self.failure.lock().ok().and_then(|mut f| f.take());
        match outcome {
            Ok(Ok(())) => failure,
            Ok(Err(e)) => Some(e.to_string()),
            Err(e) => Some(e.to_string()),
        }
    }
}

/// One render worker as `mage work` builds it (woken storage, concurrency,
/// `parallelize(tokio::spawn)`), plus the wake-up listener.
fn start_worker(
    url: &str,
    queues: &Queues,
    prefix: &str,
    concurrency: usize,
    config: apalis_redis::Config,
    probe: Probe,
) -> RunningWorker {
    let stop = CancellationToken::new();
    let channel = queues.wake_channel(queue::Queue::Render(BackendKind::Synthetic));
    if std::env::var("QUEUE_BENCH_SIGNAL").as_deref() == Ok("fixed") {
        let signal = FixedSignal::default();
        let listener = tokio::spawn(listen_fixed(url.to_owned(), channel, signal.clone(), stop.clone()));
        let conn = queues.connection();
        // What `mage_jobs::woken_storage` builds, with the other signal.
        let backend = move || {
            let storage = RedisStorage::<RenderJob>::new(conn.clone()).with_config(config.clone());
            PollWith::new(storage, Strategy::new().stream(signal.clone()))
        };
        return run_worker(concurrency, probe, backend, listener, stop);
    }
    let signal = Signal::default();
    let listener = tokio::spawn(wake::listen(
        url.to_owned(),
        vec![(channel, signal.clone())],
        format!("{prefix}control:cancel"),
        Cancels::default(),
        mage_jobs::IDLE_POLL,
        stop.clone(),
    ));
    let conn = queues.connection();
    let backend = move || mage_jobs::woken_storage::<RenderJob>(&conn, &config, &signal);
    run_worker(concurrency, probe, backend, listener, stop)
}

/// Experiment (QUEUE_BENCH_SIGNAL=fixed): `mage_jobs::wake::Signal` with
/// its waker registered on every poll, before the flag is read. Mage's
/// registers only when the flag is clear; apalis' `PollWith` polls the
/// signal before each fetch and ignores a `Ready`, so a poll that takes the
/// flag while a fetch comes back empty leaves no waker behind, and the
/// worker sleeps through every later wake-up until its next heartbeat.
#[derive(Clone, Default)]
struct FixedSignal(Arc<(AtomicBool, AtomicWaker)>);

impl FixedSignal {
    fn notify(&self) {
        self.0.0.store(true, Ordering::Release);
        self.0.1.wake();
    }
}

impl Stream for FixedSignal {
    type Item = ();

    fn poll_next(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<()>> {
        self.0.1.register(cx.waker());
        if self.0.0.swap(false, Ordering::AcqRel) { Poll::Ready(Some(())) } else { Poll::Pending }
    }
}

/// `wake::listen` for a [`FixedSignal`]: a notify per message on the wake
/// channel, one after subscribing and one every `IDLE_POLL`.
async fn listen_fixed(url: String, channel: String, signal: FixedSignal, stop: CancellationToken) {
    let Ok(client) = redis::Client::open(url) else { return };
    let Ok(mut pubsub) = client.get_async_pubsub().await else { return };
    if pubsub.subscribe(&channel).await.is_err() {
        return;
    }
    signal.notify();
    let mut messages = pubsub.on_message();
    let mut tick = tokio::time::interval(mage_jobs::IDLE_POLL);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => signal.notify(),
            m = messages.next() => match m {
                Some(_) => signal.notify(),
                None => return,
            },
        }
    }
}

fn run_worker(
    concurrency: usize,
    probe: Probe,
    backend: impl Fn() -> PollWith<RedisStorage<RenderJob>, Strategy> + Send + Sync + 'static,
    listener: JoinHandle<()>,
    stop: CancellationToken,
) -> RunningWorker {
    let name = format!("bench-{}-render-0", std::process::id());
    let failure: Arc<Mutex<Option<String>>> = Arc::default();
    let failed = failure.clone();
    // No restart: a failing worker shows as a failed run, not a slow one.
    let monitor = Monitor::new()
        .shutdown_timeout(Duration::from_secs(5))
        .should_restart(move |_, e| {
            if let Ok(mut f) = failed.lock() {
                *f = Some(e.to_string());
            }
            false
        })
        .register(move |_| {
            WorkerBuilder::new(name.clone())
                .backend(backend())
                .concurrency(concurrency)
                .data(probe.clone())
                .parallelize(tokio::spawn)
                .build(noop)
        });
    let shutdown = CancellationToken::new();
    let sd = shutdown.clone();
    let monitor = tokio::spawn(async move {
        monitor
            .run_with_signal(async move {
                sd.cancelled().await;
                Ok(())
            })
            .await
    });
    RunningWorker { failure, monitor, listener, shutdown, stop }
}

/// This binary again in `role`, pinned to $QUEUE_BENCH_PRODUCER_CPUS; the
/// JSON line it printed, if any.
async fn run_producer(role: &str, args: &[String]) -> Res<serde_json::Value> {
    let exe = std::env::current_exe()?;
    let cpus = std::env::var("QUEUE_BENCH_PRODUCER_CPUS").ok().filter(|c| !c.is_empty());
    let mut cmd = match &cpus {
        Some(c) => {
            let mut cmd = tokio::process::Command::new("taskset");
            cmd.arg("-c").arg(c).arg(&exe);
            cmd
        }
        None => tokio::process::Command::new(&exe),
    };
    let out = cmd.arg(role).args(args).stderr(std::process::Stdio::inherit()).output().await?;
    if !out.status.success() {
        return Err(format!("producer {role} failed: {}", out.status).into());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.lines().last().and_then(|l| serde_json::from_str(l).ok()).unwrap_or_default())
}

/// Deletes every key under `prefix`, and the queue's entry in apalis-redis'
/// registry of queues (`core:apalis:queues:list`, outside any prefix).
async fn delete_prefix(conn: &mut ConnectionManager, prefix: &str) -> Res<u64> {
    let workers = queue::config(prefix, queue::Queue::Render(BackendKind::Synthetic)).workers_set();
    let _: i64 = redis::cmd("ZREM").arg("core:apalis:queues:list").arg(workers).query_async(conn).await?;
    let mut cursor: u64 = 0;
    let mut deleted = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await?;
        if !keys.is_empty() {
            let n: u64 = redis::cmd("UNLINK").arg(&keys).query_async(conn).await?;
            deleted += n;
        }
        if next == 0 {
            return Ok(deleted);
        }
        cursor = next;
    }
}

/// Mage's render queue configuration, with the overrides of
/// QUEUE_BENCH_BATCH_SIZE (apalis-redis' fetch batch) and
/// QUEUE_BENCH_LOCK_TASKS=1 (apalis-redis' per-task lease) for experiments.
fn worker_config(queues: &Queues) -> apalis_redis::Config {
    let mut config = queues.config(queue::Queue::Render(BackendKind::Synthetic));
    if let Some(b) =
        std::env::var("QUEUE_BENCH_BATCH_SIZE").ok().and_then(|b| b.parse().ok()).filter(|b| *b > 0)
    {
        config = config.batch_size(b);
    }
    if let Ok(l) = std::env::var("QUEUE_BENCH_LOCK_TASKS") {
        config = config.lock_tasks(!matches!(l.as_str(), "0" | "false"));
    }
    config
}

fn config_json(config: &apalis_redis::Config) -> serde_json::Value {
    json!({
        "batch_size": config.batch_size, "lock_tasks": config.lock_tasks,
        "heartbeat_s": config.heartbeat_interval.as_secs(), "persist_results": config.persist_results,
        "emit_events": config.emit_events,
        "production": *config == worker_config_production(config),
    })
}

fn worker_config_production(config: &apalis_redis::Config) -> apalis_redis::Config {
    queue::config("", queue::Queue::Render(BackendKind::Synthetic)).queue(config.queue.as_ref())
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1e6
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

async fn ping_rtts(conn: &mut ConnectionManager, n: usize) -> Res<Vec<u64>> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let _: String = redis::cmd("PING").query_async(conn).await?;
        v.push(t.elapsed().as_nanos() as u64);
    }
    v.sort_unstable();
    Ok(v)
}

/// Waits until `done()` or the worker stops or `timeout` passes.
async fn wait_for(
    worker: &RunningWorker,
    timeout: Duration,
    every: Duration,
    mut done: impl AsyncFnMut() -> Res<bool>,
) -> Res<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        if done().await? {
            return Ok(true);
        }
        if worker.monitor.is_finished() {
            return Err("the worker stopped".into());
        }
        if Instant::now() > deadline {
            return Ok(false);
        }
        tokio::time::sleep(every).await;
    }
}

async fn latency(args: &[String]) -> Res<()> {
    let jobs: usize = arg(args, 2, 400);
    let rate: f64 = arg(args, 3, 20.0);
    let concurrency: usize = arg(args, 4, 50);
    let url = redis_url();
    let prefix = format!("mage-bench-{}:", Uuid::new_v4().simple());
    let queues = Queues::connect(&url, &prefix).await?;
    let mut conn = queues.connection();
    let pings = ping_rtts(&mut conn, 200).await?;

    let latencies: Arc<Mutex<Vec<u64>>> = Arc::default();
    let probe = Probe { started: Arc::default(), latencies: Some(latencies.clone()) };
    let config = worker_config(&queues);
    let worker = start_worker(&url, &queues, &prefix, concurrency, config.clone(), probe.clone());
    // Registered, fetched nothing, parked on the wake-up: an idle queue. By
    // default past the worker's first heartbeat (HEARTBEAT, 5 s): a worker
    // that has just started may sleep through its first wake-ups until then
    // (see FixedSignal), which is not what an idle queue is about.
    let idle_ms = idle_ms();
    tokio::time::sleep(Duration::from_millis(idle_ms)).await;

    let produced =
        run_producer("produce-latency", &[prefix.clone(), jobs.to_string(), rate.to_string()]).await;
    let all = if produced.is_ok() {
        wait_for(&worker, Duration::from_secs(10), Duration::from_millis(5), async || {
            Ok(probe.started.load(Ordering::Relaxed) >= jobs)
        })
        .await
    } else {
        Ok(false)
    };
    let failed = worker.stop().await;
    let deleted = delete_prefix(&mut conn, &prefix).await;
    let produced = produced?;
    all.map_err(|e| format!("{e}: {}", failed.unwrap_or_default()))?;
    deleted?;

    let mut lat = latencies.lock().map(|v| v.clone()).unwrap_or_default();
    if std::env::var_os("QUEUE_BENCH_DUMP").is_some() {
        eprintln!("{:?}", lat.iter().map(|n| n / 1000).collect::<Vec<_>>());
    }
    lat.sort_unstable();
    if lat.is_empty() {
        return Err("no job started".into());
    }
    let mean = lat.iter().sum::<u64>() as f64 / lat.len() as f64 / 1e6;
    println!(
        "{}",
        json!({
            "impl": "mage", "mode": "latency", "jobs": jobs, "started": lat.len(),
            "rate_per_s": rate, "concurrency": concurrency, "idle_before_ms": idle_ms,
            "signal": std::env::var("QUEUE_BENCH_SIGNAL").unwrap_or_else(|_| "mage".into()),
            "config": config_json(&config),
            "p50_ms": round3(pct(&lat, 0.5)), "p90_ms": round3(pct(&lat, 0.9)),
            "p99_ms": round3(pct(&lat, 0.99)), "max_ms": round3(pct(&lat, 1.0)),
            "mean_ms": round3(mean),
            "redis_ping_p50_ms": round3(pct(&pings, 0.5)), "redis_ping_p99_ms": round3(pct(&pings, 0.99)),
            "enqueue_call_p50_ms": produced.get("enqueue_call_p50_ms"),
            "redis_ping_paced_p50_ms": produced.get("redis_ping_paced_p50_ms"),
            "redis_ping_paced_p99_ms": produced.get("redis_ping_paced_p99_ms"),
            "enqueue_call_p99_ms": produced.get("enqueue_call_p99_ms"),
            "pid": std::process::id(),
        })
    );
    Ok(())
}

async fn drain(args: &[String]) -> Res<()> {
    let jobs: usize = arg(args, 2, 20_000);
    let concurrency: usize = arg(args, 3, 50);
    let url = redis_url();
    let prefix = format!("mage-bench-{}:", Uuid::new_v4().simple());
    let queues = Queues::connect(&url, &prefix).await?;
    let mut conn = queues.connection();

    let t = Instant::now();
    if let Err(e) = run_producer("produce-bulk", &[prefix.clone(), jobs.to_string()]).await {
        delete_prefix(&mut conn, &prefix).await?;
        return Err(e);
    }
    let enqueue_s = t.elapsed().as_secs_f64();
    let depth = queues.depth(queue::Queue::Render(BackendKind::Synthetic)).await?;
    if depth != jobs as u64 {
        delete_prefix(&mut conn, &prefix).await?;
        return Err(format!("{depth} jobs queued, expected {jobs}").into());
    }

    let config = worker_config(&queues);
    let done_set = config.done_jobs_set();
    let probe = Probe { started: Arc::default(), latencies: None };
    let t0 = Instant::now();
    let worker = start_worker(&url, &queues, &prefix, concurrency, config.clone(), probe.clone());
    let finished = wait_for(&worker, Duration::from_secs(60), Duration::from_millis(2), async || {
        Ok(probe.started.load(Ordering::Relaxed) >= jobs)
    })
    .await;
    let started_s = t0.elapsed().as_secs_f64();
    let acked = match finished {
        Ok(true) => {
            let mut c = conn.clone();
            let done_set = done_set.clone();
            wait_for(&worker, Duration::from_secs(10), Duration::from_millis(1), async || {
                let n: u64 = redis::cmd("SCARD").arg(&done_set).query_async(&mut c).await?;
                Ok(n >= jobs as u64)
            })
            .await
        }
        other => other,
    };
    let seconds = t0.elapsed().as_secs_f64();
    let started = probe.started.load(Ordering::Relaxed);
    let failed = worker.stop().await;
    let done: u64 = redis::cmd("SCARD").arg(&done_set).query_async(&mut conn).await?;
    delete_prefix(&mut conn, &prefix).await?;
    if !acked.map_err(|e| format!("{e}: {}", failed.unwrap_or_default()))? {
        return Err(format!("only {started} of {jobs} jobs started, {done} acknowledged").into());
    }
    println!(
        "{}",
        json!({
            "impl": "mage", "mode": "drain", "jobs": jobs, "done": done,
            "concurrency": concurrency, "config": config_json(&config),
            "seconds": round3(seconds), "jobs_per_s": (jobs as f64 / seconds).round(),
            "all_started_s": round3(started_s), "enqueue_s": round3(enqueue_s),
            "prepromoted": std::env::var("QUEUE_BENCH_RAW_PROMOTE").as_deref() != Ok("1"),
            "pid": std::process::id(),
        })
    );
    Ok(())
}

/// Producer of `latency`: `Queues::push_render` at a steady rate.
async fn produce_latency(args: &[String]) -> Res<()> {
    let prefix = args.get(2).ok_or("prefix")?;
    let jobs: usize = arg(args, 3, 400);
    let rate: f64 = arg(args, 4, 20.0);
    let queues = Queues::connect(&redis_url(), prefix).await?;
    let period = Duration::from_secs_f64(1.0 / rate);
    let mut tick = tokio::time::interval(period);
    let mut conn = queues.connection();
    let mut calls = Vec::with_capacity(jobs);
    let mut pings = Vec::with_capacity(jobs);
    for _ in 0..jobs {
        tick.tick().await;
        let sent = now_ns();
        let id = Uuid::from_u64_pair(sent, rand_low());
        queues.push_render(BackendKind::Synthetic, &RenderJob { generation_id: id }).await?;
        calls.push(now_ns().saturating_sub(sent));
        // One Redis round trip under the same conditions as a push: alone,
        // after the same idle time (half a period), on the same connection.
        // A PING in a tight loop (the worker's `redis_ping_p50_ms`) rides
        // on warm caches and a busy event loop; a lone request pays for
        // waking both ends.
        tokio::time::sleep(period / 2).await;
        let t = Instant::now();
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        pings.push(t.elapsed().as_nanos() as u64);
    }
    calls.sort_unstable();
    pings.sort_unstable();
    println!(
        "{}",
        json!({"enqueue_call_p50_ms": round3(pct(&calls, 0.5)), "enqueue_call_p99_ms": round3(pct(&calls, 0.99)),
               "redis_ping_paced_p50_ms": round3(pct(&pings, 0.5)), "redis_ping_paced_p99_ms": round3(pct(&pings, 0.99))})
    );
    Ok(())
}

fn rand_low() -> u64 {
    Uuid::new_v4().as_u64_pair().1
}

/// Producer of `drain`: JOBS render tasks in chunks through apalis-redis' bulk push.
async fn produce_bulk(args: &[String]) -> Res<()> {
    let prefix = args.get(2).ok_or("prefix")?;
    let jobs: usize = arg(args, 3, 20_000);
    let queues = Queues::connect(&redis_url(), prefix).await?;
    let config = queues.config(queue::Queue::Render(BackendKind::Synthetic));
    let mut conn = queues.connection();
    let mut left = jobs;
    while left > 0 {
        let n = left.min(CHUNK);
        let mut tasks = Vec::with_capacity(n);
        for _ in 0..n {
            let bytes = serde_json::to_vec(&RenderJob { generation_id: Uuid::new_v4() })?;
            let id = Uuid::new_v4().to_string();
            tasks.push(TaskBuilder::new(bytes).task_id(TaskId::from_string(id)).build());
        }
        apalis_redis::queries::push_tasks(&mut conn, &config, &tasks).await?;
        left -= n;
    }
    if std::env::var("QUEUE_BENCH_RAW_PROMOTE").as_deref() != Ok("1") {
        // Step 1 of apalis-redis' fetch_next.lua, in chunks its Lua can unpack.
        let script = redis::Script::new(
            r"local ids = redis.call('zrangebyscore', KEYS[1], 0, ARGV[1], 'LIMIT', 0, ARGV[2])
              if #ids > 0 then
                redis.call('rpush', KEYS[2], unpack(ids))
                redis.call('zrem', KEYS[1], unpack(ids))
              end
              return #ids",
        );
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + 1;
        loop {
            let moved: usize = script
                .key(config.scheduled_jobs_set())
                .key(config.active_jobs_list())
                .arg(now)
                .arg(CHUNK)
                .invoke_async(&mut conn)
                .await?;
            if moved == 0 {
                break;
            }
        }
    }
    let _: i64 = redis::cmd("PUBLISH")
        .arg(queues.wake_channel(queue::Queue::Render(BackendKind::Synthetic)))
        .arg(1)
        .query_async(&mut conn)
        .await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("latency") => latency(&args).await,
        Some("drain") => drain(&args).await,
        Some("produce-latency") => produce_latency(&args).await,
        Some("produce-bulk") => produce_bulk(&args).await,
        _ => {
            Err("usage: queue_bench latency [JOBS] [RATE] [CONCURRENCY] | drain [JOBS] [CONCURRENCY]".into())
        }
    }
}
