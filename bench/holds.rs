//! Credit holds: concurrent `createGeneration` through GraphQL over HTTP
//! against a release `mage serve` (price, rate-limit slots in Redis, the
//! generation + HOLD statement, the render job pushed on the queue, the
//! live events published; no worker runs), for one user and for 1,000
//! users, against the same database work run by `pgbench` on the same
//! PostgreSQL (the ceiling).
//!
//! The ceiling is the same database work run by pgbench: Mage's hold is one
//! statement (`generations::CreateWithHold`: the guarded `UPDATE` of the
//! account, `balance - held >= price`, feeding the INSERTs of the
//! generation, its hold and the HOLD ledger entry), and pgbench runs that
//! statement, prepared, on one account row and on 1,000 rows picked at
//! random. An extra line runs only the guarded UPDATE + ledger INSERT (no
//! generation row, no hold row): the bound of a ledger without generations.
//!
//! Expects `DATABASE_URL` (a fresh, migrated database of its own: the
//! wrapper makes `mage_bench_<pid>`), `REDIS_URL` and `MAGE_REDIS_PREFIX`.
//! The users are seeded with SQL (1,000,000,000 credits each) and their
//! tokens signed with the server's secret. With `taskset` and two or more
//! cores, the server runs on core 0 and this load generator (and pgbench)
//! on core 1.
//!
//! pgbench runs each script with 4, 16 and 64 clients (prepared
//! statements, one thread) and the best of the three is the ceiling: on one
//! row more clients only queue on its lock, so the best count is not
//! Mage's pool size.
//!
//! Run through `bench/holds [seconds] [connections] [pgbench clients, e.g. 4,16,64]`.
//! Writes `bench/holds.json`.

#[path = "common.rs"]
#[allow(dead_code)]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Cores, JWT_SECRET, Server, percentile, psql, psql_i64};
use serde_json::{Value, json};
use uuid::Uuid;

/// User numbers: the one user, and the 1,000 users after it. A user's id is
/// `00000000-0000-4000-8000-<number, 12 digits>`, so pgbench can name it.
const ONE_USER: u32 = 100_000;
const MANY_FIRST: u32 = 100_001;
const MANY_USERS: u32 = 1_000;
const CREDITS: i64 = 1_000_000_000;

fn user_id(n: u32) -> Uuid {
    format!("00000000-0000-4000-8000-{n:012}").parse().expect("a user id")
}

fn seed_sql() -> String {
    let last = MANY_FIRST + MANY_USERS - 1;
    format!(
        "BEGIN;
         INSERT INTO users (id, email, password_hash)
           SELECT ('00000000-0000-4000-8000-' || lpad(i::text, 12, '0'))::uuid,
                  'holds' || i || '@bench.invalid', 'not-a-password-hash'
           FROM generate_series({ONE_USER}, {last}) i;
         INSERT INTO credit_accounts (user_id, balance) SELECT id, {CREDITS} FROM users;
         INSERT INTO credit_grants (user_id, source, amount, remaining, memo)
           SELECT id, 'admin', {CREDITS}, {CREDITS}, 'bench' FROM users;
         INSERT INTO credit_entries (user_id, kind, amount, held_delta, balance_after, held_after,
                                     idempotency_key, grant_id, memo)
           SELECT user_id, 'grant', amount, 0, amount, 0, 'bench-grant:' || user_id, id, 'bench'
           FROM credit_grants;
         -- History, as a live system has: 20 finished generations per user,
         -- their holds released. From empty tables, the pooled connections
         -- Mage opens in its warm-up cache plans of the foreign-key checks
         -- made while credit_holds is empty (a sequential scan, kept until the
         -- next ANALYZE, a minute away) while pgbench's fresh connections
         -- plan against a grown table: measured so, every second hold of the
         -- Mage phase read ~7,500 rows of credit_holds.
         INSERT INTO generations (id, user_id, model, kind, prompt, resolution, seed, cost, backend,
                                  status, finished_at)
           SELECT gen_random_uuid(), u.id, 'synth-image', 'image', 'history', '480p', 1, 1, 'synthetic',
                  'canceled', now()
           FROM users u, generate_series(1, 20);
         INSERT INTO credit_holds (user_id, generation_id, amount, status, closed_at)
           SELECT user_id, id, 1, 'released', now() FROM generations;
         COMMIT;
         VACUUM ANALYZE;"
    )
}

/// The user of a pgbench transaction: `:base + random(0, :span - 1)`.
const PGBENCH_USER: &str = r"\set n :base + random(0, :span - 1)";

/// What Mage commits for one createGeneration (see the module doc). pgbench
/// reads `:name` as a variable even inside a quoted literal, so no literal
/// here has a colon followed by a letter or digit.
const MIRROR_SCRIPT: &str = r"WITH ids AS (SELECT gen_random_uuid() AS id), acc AS (UPDATE credit_accounts SET held = held + 1, updated_at = now() WHERE user_id = ('00000000-0000-4000-8000-' || lpad(:n::text, 12, '0'))::uuid AND balance - held >= 1 RETURNING user_id, balance, held), gen AS (INSERT INTO generations (id, user_id, model, kind, prompt, negative_prompt, resolution, duration_seconds, seed, cost, idempotency_key, backend) SELECT ids.id, acc.user_id, 'synth-image', 'image', 'a lighthouse at dawn, oil on canvas', NULL, '480p', NULL, 1234567, 1, NULL, 'synthetic' FROM ids, acc RETURNING *), hold AS (INSERT INTO credit_holds (user_id, generation_id, amount) SELECT acc.user_id, ids.id, 1 FROM ids, acc RETURNING id), entry AS (INSERT INTO credit_entries (user_id, kind, amount, held_delta, balance_after, held_after, idempotency_key, hold_id, generation_id) SELECT acc.user_id, 'hold', 0, 1, acc.balance, acc.held, 'hold:' || 'gen:' || ids.id::text || ':' || '1', hold.id, ids.id FROM ids, acc, hold) SELECT * FROM gen;
";

/// The ledger alone: the guarded UPDATE feeding the ledger INSERT.
const LEDGER_ONLY_SCRIPT: &str = r"WITH a AS (UPDATE credit_accounts SET held = held + 1, updated_at = now() WHERE user_id = ('00000000-0000-4000-8000-' || lpad(:n::text, 12, '0'))::uuid AND balance - held >= 1 RETURNING user_id, balance, held) INSERT INTO credit_entries (user_id, kind, amount, held_delta, balance_after, held_after, idempotency_key) SELECT user_id, 'hold', 0, 1, balance, held, 'hold:' || 'guarded:' || gen_random_uuid() FROM a;
";

const CREATE: &str =
    "mutation Create($input: CreateGenerationInput!) { createGeneration(input: $input) { id status cost } }";

#[derive(Default)]
struct Tally {
    /// Answered correctly before the deadline.
    ok: usize,
    /// Answered correctly after it (in flight when the time was up).
    ok_late: usize,
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
    fn created(&self) -> usize {
        self.tally.ok + self.tally.ok_late
    }
}

/// Checks one createGeneration answer.
fn check(status: reqwest::StatusCode, body: &str) -> Result<(), String> {
    if !status.is_success() {
        return Err(format!("HTTP {status}: {}", body.chars().take(300).collect::<String>()));
    }
    let v: Value = serde_json::from_str(body).map_err(|e| format!("not JSON ({e}): {body}"))?;
    if v.get("errors").is_some() {
        return Err(format!("GraphQL errors: {}", v["errors"]));
    }
    let g = &v["data"]["createGeneration"];
    if g["id"].as_str().is_none() || g["status"] != "QUEUED" || g["cost"] != 1 {
        return Err(format!("unexpected answer: {body}"));
    }
    Ok(())
}

/// `connections` loops posting createGeneration for `seconds`, each with the
/// next token of `tokens` (round robin), as soon as the previous answer came.
async fn drive(
    http: &reqwest::Client,
    url: &str,
    tokens: Arc<Vec<String>>,
    connections: usize,
    seconds: f64,
) -> Phase {
    let body: Arc<str> = json!({
        "query": CREATE,
        "variables": { "input": { "model": "synth-image", "prompt": "a lighthouse at dawn, oil on canvas", "resolution": "R480P" } },
    })
    .to_string()
    .into();
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (http, tokens, next, body, url) =
            (http.clone(), tokens.clone(), next.clone(), body.clone(), url.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut t = Tally::default();
            while Instant::now() < deadline {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let token = &tokens[i % tokens.len()];
                let sent = Instant::now();
                let outcome = match http
                    .post(&url)
                    .bearer_auth(token)
                    .header("Content-Type", "application/json")
                    .body(body.to_string())
                    .send()
                    .await
                {
                    Ok(res) => {
                        let status = res.status();
                        match res.text().await {
                            Ok(text) => check(status, &text),
                            Err(e) => Err(format!("{status}: reading the body: {e}")),
                        }
                    }
                    Err(e) => Err(format!("transport: {e}")),
                };
                let done = Instant::now();
                match outcome {
                    Ok(()) if done <= deadline => {
                        t.ok += 1;
                        t.latencies_ms.push((done - sent).as_secs_f64() * 1000.0);
                    }
                    Ok(()) => t.ok_late += 1,
                    Err(e) => {
                        t.errors += 1;
                        if t.first_errors.len() < 3 {
                            t.first_errors.push(e);
                        }
                    }
                }
            }
            t
        }));
    }
    let mut tally = Tally::default();
    for task in tasks {
        let t = task.await.expect("load task");
        tally.ok += t.ok;
        tally.ok_late += t.ok_late;
        tally.errors += t.errors;
        tally.first_errors.extend(t.first_errors);
        tally.latencies_ms.extend(t.latencies_ms);
    }
    tally.latencies_ms.sort_by(f64::total_cmp);
    tally.first_errors.truncate(5);
    Phase { tally, seconds }
}

#[derive(Debug, Clone)]
struct Pgbench {
    clients: usize,
    tps: f64,
    transactions: u64,
    failed: u64,
    latency_ms: f64,
}

/// Where and how pgbench runs.
struct PgbenchRun<'a> {
    cores: &'a Cores,
    db: &'a str,
    dir: &'a std::path::Path,
    clients: &'a [usize],
    seconds: f64,
}

impl PgbenchRun<'_> {
    /// Runs `script` with each client count; returns the best run and all.
    fn best(&self, name: &str, script: &str, users: (u32, u32)) -> Result<(Pgbench, Vec<Pgbench>), String> {
        let mut all = Vec::new();
        for &clients in self.clients {
            all.push(self.run(name, script, users, clients)?);
        }
        let best = all
            .iter()
            .max_by(|a, b| a.tps.total_cmp(&b.tps))
            .cloned()
            .ok_or_else(|| "no pgbench client count".to_owned())?;
        Ok((best, all))
    }

    /// Runs `script` (prepared statements, `clients` connections, one
    /// thread) on users `base .. base + span`.
    fn run(
        &self,
        name: &str,
        script: &str,
        (base, span): (u32, u32),
        clients: usize,
    ) -> Result<Pgbench, String> {
        let path = self.dir.join(format!("{name}.sql"));
        std::fs::write(&path, format!("{PGBENCH_USER}\n{script}")).map_err(|e| format!("{name}.sql: {e}"))?;
        let out = self
            .cores
            .load_command("pgbench")
            .args(["-n", "-M", "prepared", "-j", "1"])
            .args(["-c", &clients.to_string(), "-T", &format!("{}", self.seconds.ceil() as u64)])
            .args(["-D", &format!("base={base}"), "-D", &format!("span={span}")])
            .arg("-f")
            .arg(&path)
            .arg(self.db)
            .output()
            .map_err(|e| format!("pgbench: {e}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            return Err(format!(
                "pgbench {name} failed ({}): {}{}",
                out.status,
                stdout.trim(),
                stderr.trim()
            ));
        }
        let number_after = |prefix: &str| -> Option<f64> {
            stdout.lines().find_map(|l| {
                l.trim().strip_prefix(prefix).and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            })
        };
        let tps = number_after("tps = ").ok_or_else(|| format!("no tps in pgbench output: {stdout}"))?;
        let transactions = number_after("number of transactions actually processed:")
            .ok_or_else(|| format!("no transaction count in pgbench output: {stdout}"))?
            as u64;
        let failed = number_after("number of failed transactions:").map_or(0, |n| n as u64);
        let latency_ms = number_after("latency average =").unwrap_or(f64::NAN);
        Ok(Pgbench { clients, tps, transactions, failed, latency_ms })
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let seconds: f64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(6.0);
    let connections: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(64).max(1);
    let clients: Vec<usize> = args
        .get(3)
        .map_or("4,16,64", String::as_str)
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .filter(|&c| c > 0)
        .collect();
    let cores = Cores::pin_self();
    let runtime = cores.runtime();
    let code = match runtime.block_on(bench(seconds, connections, &clients, cores)) {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            eprintln!("holds: {e}");
            2
        }
    };
    std::process::exit(code);
}

async fn bench(seconds: f64, connections: usize, clients: &[usize], cores: Cores) -> Result<bool, String> {
    let load_before = common::load_average();
    let db = std::env::var("DATABASE_URL").map_err(|_| "DATABASE_URL is not set")?;
    let redis_url = std::env::var("REDIS_URL").map_err(|_| "REDIS_URL is not set")?;
    let prefix = std::env::var("MAGE_REDIS_PREFIX").map_err(|_| "MAGE_REDIS_PREFIX is not set")?;
    let mage = std::env::var("MAGE_BIN").unwrap_or_else(|_| "target/release/mage".into());
    let pool_size = std::env::var("MAGE_DB_POOL_SIZE").unwrap_or_else(|_| "16".into());

    psql(&db, &seed_sql())?;

    let addr = format!("127.0.0.1:{}", common::free_port());
    let mut cmd = cores.server_command(&mage);
    cmd.arg("serve")
        .env("DATABASE_URL", &db)
        .env("REDIS_URL", &redis_url)
        .env("MAGE_REDIS_PREFIX", &prefix)
        .env("MAGE_ADDR", &addr)
        .env("MAGE_JWT_SECRET", JWT_SECRET)
        .env("MAGE_DB_POOL_SIZE", &pool_size)
        .env("MAGE_GENERATIONS_PER_MINUTE", "1000000000")
        .env("MAGE_ACTIVE_GENERATIONS", "1000000000")
        .env("MAGE_SKIP_MIGRATIONS", "true")
        .env("MAGE_LOG", std::env::var("MAGE_LOG").unwrap_or_else(|_| "warn".into()));
    let mut server = Server::spawn("mage serve", cmd);
    let base = format!("http://{addr}");
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| format!("HTTP client: {e}"))?;
    server.wait_ready(&http, &format!("{base}/readyz")).await?;
    let url = format!("{base}/graphql");

    let tokens = mage_api::auth::Tokens::new(JWT_SECRET, Duration::from_secs(3600));
    let sign = |n: u32| {
        tokens.issue(user_id(n), uuid::Uuid::new_v4()).map(|(t, _)| t).map_err(|e| format!("token: {e:?}"))
    };
    let one: Arc<Vec<String>> = Arc::new(vec![sign(ONE_USER)?]);
    let many: Arc<Vec<String>> =
        Arc::new((MANY_FIRST..MANY_FIRST + MANY_USERS).map(sign).collect::<Result<_, _>>()?);

    // Warm-up: open the connections, fill the pool, load the scripts.
    let warm = drive(&http, &url, many.clone(), connections, 2.0).await;
    let mage_one = drive(&http, &url, one, connections, seconds).await;
    let mage_many = drive(&http, &url, many, connections, seconds).await;
    server.stop();

    // Every answered createGeneration left exactly one generation, one open
    // hold, one HOLD entry, one held credit and one render job.
    let created = (warm.created() + mage_one.created() + mage_many.created()) as i64;
    let counts = [
        ("generations", psql_i64(&db, "SELECT count(*) FROM generations WHERE status = 'queued'")?),
        ("open holds", psql_i64(&db, "SELECT count(*) FROM credit_holds WHERE status = 'open'")?),
        ("HOLD entries", psql_i64(&db, "SELECT count(*) FROM credit_entries WHERE kind = 'hold'")?),
        ("held credits", psql_i64(&db, "SELECT sum(held)::bigint FROM credit_accounts")?),
        (
            "one user's held",
            psql_i64(
                &db,
                &format!("SELECT held FROM credit_accounts WHERE user_id = '{}'", user_id(ONE_USER)),
            )?,
        ),
        ("render jobs", render_jobs(&redis_url, &prefix).await?),
    ];
    let expected_one = (mage_one.created()) as i64;
    let mut consistent = true;
    let mut consistency = Vec::new();
    for (what, n) in counts {
        let want = if what == "one user's held" { expected_one } else { created };
        consistent &= n == want;
        consistency.push(format!("{what} {n}/{want}"));
    }

    // The ceiling, on the same database (its accounts now hold Mage's
    // credits; the tables carry Mage's rows).
    let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    let _ = psql(&db, "VACUUM ANALYZE");
    let pg_seconds = (seconds / 2.0).clamp(3.0, 4.0);
    let pg = PgbenchRun { cores: &cores, db: &db, dir: dir.path(), clients, seconds: pg_seconds };
    let (pg_one, pg_one_all) = pg.best("mirror_one", MIRROR_SCRIPT, (ONE_USER, 1))?;
    let (pg_many, pg_many_all) = pg.best("mirror_many", MIRROR_SCRIPT, (MANY_FIRST, MANY_USERS))?;
    let (ledger_only_one, ledger_only_one_all) =
        pg.best("ledger_only_one", LEDGER_ONLY_SCRIPT, (ONE_USER, 1))?;
    let (ledger_only_many, ledger_only_many_all) =
        pg.best("ledger_only_many", LEDGER_ONLY_SCRIPT, (MANY_FIRST, MANY_USERS))?;
    let load_after = common::load_average();
    let cleaned = common::clean_redis(&redis_url, &prefix).await;

    let split = cores.describe("mage serve", "the load generator and pgbench");
    let counts: Vec<String> = clients.iter().map(ToString::to_string).collect();
    println!(
        "holds: createGeneration (synth-image, 1 credit) for {seconds} s from {connections} connections, \
         MAGE_DB_POOL_SIZE {pool_size}; pgbench -M prepared -j 1, -c {} ({} s each), best taken",
        counts.join("/"),
        pg_seconds.ceil()
    );
    println!("  cores  {}: {split}", cores.count);
    println!("  load   {load_before} before, {load_after} after (1, 5, 15 min)");
    println!(
        "  {:<36} {:>8} {:>8} {:>8} {:>8} {:>6} {:>10}",
        "", "per s", "p50 ms", "p99 ms", "ok", "errors", "of pgbench"
    );
    let rows = [("mage, one user", &mage_one, &pg_one), ("mage, 1,000 users", &mage_many, &pg_many)];
    for (name, p, pg) in rows {
        println!(
            "  {:<36} {:>8.0} {:>8.2} {:>8.2} {:>8} {:>6} {:>10.2}",
            name,
            p.per_s(),
            p.p(0.5),
            p.p(0.99),
            p.tally.ok,
            p.tally.errors,
            p.per_s() / pg.tps
        );
    }
    let sweep = |all: &[Pgbench]| {
        all.iter().map(|r| format!("{}:{:.0}", r.clients, r.tps)).collect::<Vec<_>>().join(" ")
    };
    println!(
        "  {:<36} {:>8} {:>8} {:>8} {:>8} {:>6}  per s by clients",
        "", "per s", "mean ms", "clients", "txns", "failed"
    );
    for (name, best, all) in [
        ("pgbench, Mage's statement, 1 row", &pg_one, &pg_one_all),
        ("pgbench, Mage's statement, 1k rows", &pg_many, &pg_many_all),
        ("pgbench, ledger entry only, 1 row", &ledger_only_one, &ledger_only_one_all),
        ("pgbench, ledger entry only, 1k", &ledger_only_many, &ledger_only_many_all),
    ] {
        println!(
            "  {:<36} {:>8.0} {:>8.2} {:>8} {:>8} {:>6}  {}",
            name,
            best.tps,
            best.latency_ms,
            best.clients,
            best.transactions,
            all.iter().map(|r| r.failed).sum::<u64>(),
            sweep(all)
        );
    }
    for e in warm
        .tally
        .first_errors
        .iter()
        .chain(&mage_one.tally.first_errors)
        .chain(&mage_many.tally.first_errors)
    {
        println!("  error  {e}");
    }
    println!("  rows   {} ({})", consistency.join(", "), if consistent { "consistent" } else { "MISMATCH" });
    match cleaned {
        Ok(n) => println!("  redis  {n} keys of prefix {prefix} removed"),
        Err(e) => println!("  redis  could not remove the keys of prefix {prefix}: {e}"),
    }

    let by_clients =
        |all: &[Pgbench]| Value::Object(all.iter().map(|r| (r.clients.to_string(), json!(r.tps))).collect());
    let pg_failed: u64 = [&pg_one_all, &pg_many_all, &ledger_only_one_all, &ledger_only_many_all]
        .iter()
        .flat_map(|a| a.iter())
        .map(|r| r.failed)
        .sum();
    let report = json!({
        "holds": {
            "per_s": {
                "mage_one_user": mage_one.per_s(),
                "mage_many_users": mage_many.per_s(),
                "pgbench_one_row": pg_one.tps,
                "pgbench_many_rows": pg_many.tps,
            },
            "ratio_of_pgbench": {
                "one_user": mage_one.per_s() / pg_one.tps,
                "many_users": mage_many.per_s() / pg_many.tps,
            },
            "pgbench_ledger_only_per_s": { "one_row": ledger_only_one.tps, "many_rows": ledger_only_many.tps },
            "pgbench_per_s_by_clients": {
                "one_row": by_clients(&pg_one_all),
                "many_rows": by_clients(&pg_many_all),
                "ledger_only_one_row": by_clients(&ledger_only_one_all),
                "ledger_only_many_rows": by_clients(&ledger_only_many_all),
            },
            "pgbench_best_clients": {
                "one_row": pg_one.clients,
                "many_rows": pg_many.clients,
                "ledger_only_one_row": ledger_only_one.clients,
                "ledger_only_many_rows": ledger_only_many.clients,
            },
            "p50_ms": { "mage_one_user": mage_one.p(0.5), "mage_many_users": mage_many.p(0.5) },
            "p99_ms": { "mage_one_user": mage_one.p(0.99), "mage_many_users": mage_many.p(0.99) },
            "pgbench_latency_avg_ms": {
                "one_row": pg_one.latency_ms,
                "many_rows": pg_many.latency_ms,
                "ledger_only_one_row": ledger_only_one.latency_ms,
                "ledger_only_many_rows": ledger_only_many.latency_ms,
            },
            "errors": {
                "mage_one_user": mage_one.tally.errors,
                "mage_many_users": mage_many.tally.errors,
                "warmup": warm.tally.errors,
                "pgbench_failed": pg_failed,
            },
            "rows_consistent": consistent,
            "seconds": seconds,
            "pgbench_seconds": pg_seconds.ceil(),
            "connections": connections,
            "db_pool_size": pool_size,
            "cores": cores.count,
            "split": split,
            "load_average_before": load_before,
            "load_average_after": load_after,
        }
    });
    common::write_json("bench/holds.json", &report);
    let errors = warm.tally.errors + mage_one.tally.errors + mage_many.tally.errors;
    Ok(consistent && errors == 0 && pg_failed == 0)
}

/// Render jobs Mage pushed: its index of each generation's render task.
async fn render_jobs(url: &str, prefix: &str) -> Result<i64, String> {
    let client = redis::Client::open(url).map_err(|e| format!("redis: {e}"))?;
    let mut conn = client.get_multiplexed_async_connection().await.map_err(|e| format!("redis: {e}"))?;
    redis::cmd("HLEN")
        .arg(format!(
            "{prefix}{}:by-generation",
            mage_domain::queue::Queue::Render(mage_domain::catalog::BackendKind::Synthetic)
        ))
        .query_async(&mut conn)
        .await
        .map_err(|e| format!("redis HLEN: {e}"))
}
