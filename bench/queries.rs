//! Authenticated reads over HTTP: `me { credits { balance } }` and a
//! 20-item page of `generations` (the fields an app's list shows), sent by
//! `wrk` from 64 keep-alive connections to a release `mage serve`, against
//! `{ __typename }` on the same server (the framework floor: no resolver,
//! no database), and against the same two queries served by graphql-yoga +
//! pg (`bench/node/yoga.mjs`, one Node process, a pg Pool as large as
//! Mage's) on the same database, checking the same tokens.
//!
//! Every answer is checked: wrk's Lua `response()` compares each body with
//! the one the server gave before the run (the data does not change during
//! the run), so a GraphQL error or a truncated answer counts as wrong, and
//! non-2xx answers are counted apart. Before the load, the two servers'
//! answers are compared field by field (timestamps as instants, to the
//! millisecond that JavaScript keeps).
//!
//! Expects `DATABASE_URL` (a fresh, migrated database of its own: the
//! wrapper makes `mage_bench_<pid>`), `REDIS_URL`, `MAGE_REDIS_PREFIX`, and
//! `wrk`, `node` and `bench/node/node_modules`. With `taskset` and two or
//! more cores, the servers run on core 0 and wrk on core 1.
//!
//! Run through `bench/queries [seconds] [connections]`. Writes
//! `bench/queries.json`.
//!
//! With `MAGE_BASELINE_BIN` (an older `mage`), only the authenticated
//! `{ __typename }` and `me` run, on this build and on that one in
//! alternating rounds, for the ratio of their `me` req/s (see
//! [`against_baseline`]).

#[path = "common.rs"]
#[allow(dead_code)]
mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Cores, JWT_SECRET, Server, psql};
use serde_json::{Value, json};

/// The user whose credits and generations are read: user number 200000 of
/// 1,000 seeded users (each with 20 generations; this one with 25).
const USER: &str = "00000000-0000-4000-8000-000000200000";

const SEED_SQL: &str = r"
BEGIN;
INSERT INTO users (id, email, password_hash, created_at)
  SELECT ('00000000-0000-4000-8000-' || lpad(i::text, 12, '0'))::uuid,
         'queries' || i || '@bench.invalid', 'not-a-password-hash', now() - interval '30 days'
  FROM generate_series(200000, 200999) i;
INSERT INTO credit_accounts (user_id, balance, held) SELECT id, 1500, 40 FROM users;
WITH rows AS (
  SELECT gen_random_uuid() AS id, u.id AS user_id, g,
         now() - g * interval '37 minutes 13.123457 seconds' AS at,
         CASE WHEN g <= 2 THEN 'queued' WHEN g = 3 THEN 'rendering' WHEN g = 4 THEN 'transcoding'
              WHEN g % 7 = 0 THEN 'failed' WHEN g % 11 = 0 THEN 'canceled' ELSE 'succeeded' END AS status,
         CASE WHEN g % 4 = 3 THEN 'image' ELSE 'video' END AS kind,
         CASE g % 3 WHEN 0 THEN '480p' WHEN 1 THEN '720p' ELSE '1080p' END AS resolution
  FROM users u, generate_series(1, CASE WHEN u.id = '00000000-0000-4000-8000-000000200000' THEN 25 ELSE 20 END) g
)
INSERT INTO generations (id, user_id, model, kind, prompt, resolution, duration_seconds, seed, status,
                         progress, stage, cost, attempts, output, error,
                         created_at, updated_at, queued_at, started_at, finished_at, backend)
SELECT id, user_id, 'synth-' || kind, kind,
       'a red fox running through fresh snow at dusk, cinematic lighting, take ' || g,
       resolution, CASE WHEN kind = 'video' THEN 5 END, 1000 + g, status,
       CASE status WHEN 'rendering' THEN 40 WHEN 'transcoding' THEN 70 WHEN 'succeeded' THEN 100 ELSE 0 END,
       CASE status WHEN 'rendering' THEN 'rendering' WHEN 'transcoding' THEN 'transcoding' END,
       CASE WHEN kind = 'video' THEN 20 ELSE 2 END,
       CASE WHEN status = 'queued' THEN 0 ELSE 1 END,
       CASE WHEN status <> 'succeeded' THEN NULL
            WHEN kind = 'video' THEN jsonb_build_object(
              'kind', 'video',
              'hls', 'generations/' || id || '/hls/master.m3u8',
              'video', 'generations/' || id || '/video.mp4',
              'poster', 'generations/' || id || '/poster.jpg',
              'width', 1280, 'height', 720, 'durationSeconds', 5.041667,
              'renditions', jsonb_build_array(
                jsonb_build_object('name', '360p', 'width', 640, 'height', 360, 'bandwidth', 800000,
                                   'playlist', 'generations/' || id || '/hls/360p.m3u8'),
                jsonb_build_object('name', '720p', 'width', 1280, 'height', 720, 'bandwidth', 2800000,
                                   'playlist', 'generations/' || id || '/hls/720p.m3u8')))
            ELSE jsonb_build_object(
              'kind', 'image',
              'image', 'generations/' || id || '/image.png',
              'poster', 'generations/' || id || '/poster.jpg',
              'width', 1024, 'height', 1024) END,
       CASE WHEN status = 'failed' THEN 'Something went wrong on our side; your credits were not charged.' END,
       at, at, at,
       CASE WHEN status <> 'queued' THEN at + interval '3 seconds' END,
       CASE WHEN status IN ('succeeded', 'failed', 'canceled') THEN at + interval '95 seconds' END,
       'synthetic'
FROM rows;
COMMIT;
VACUUM ANALYZE;
";

const TYPENAME: &str = "{ __typename }";
const ME: &str = "query { me { credits { balance } } }";
const GENERATIONS: &str = "query { generations(first: 20) { pageInfo { hasNextPage endCursor } \
     edges { node { id status progress stage model kind prompt resolution durationSeconds cost error \
     createdAt finishedAt output { hlsUrl videoUrl imageUrl posterUrl width height durationSeconds } } } } }";

/// wrk's script: POST the body of `$BENCH_BODY` (with `$BENCH_TOKEN` as a
/// bearer token when set), compare every answer with `$BENCH_EXPECT`, print
/// one `BENCH_RESULT {json}` line.
const WRK_LUA: &str = r#"
local function slurp(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

wrk.method = "POST"
wrk.body = slurp(os.getenv("BENCH_BODY"))
wrk.headers["Content-Type"] = "application/json"
local token = os.getenv("BENCH_TOKEN")
if token ~= nil and token ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. token
end

local threads = {}
function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  expected = slurp(os.getenv("BENCH_EXPECT"))
  ok = 0
  non2xx = 0
  wrong = 0
  sample = ""
end

function response(status, headers, body)
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
    if sample == "" then sample = status .. " " .. body end
  elseif body ~= expected then
    wrong = wrong + 1
    if sample == "" then sample = body end
  else
    ok = ok + 1
  end
end

function done(summary, latency, requests)
  local o, n, w, s = 0, 0, 0, ""
  for _, t in ipairs(threads) do
    o = o + t:get("ok")
    n = n + t:get("non2xx")
    w = w + t:get("wrong")
    if s == "" then s = t:get("sample") end
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"duration_us":%d,"ok":%d,"non2xx":%d,"wrong":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, o, n, w, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean))
  if s ~= "" then
    io.write("BENCH_SAMPLE " .. string.gsub(string.sub(s, 1, 400), "\n", " ") .. "\n")
  end
end
"#;

/// One wrk run.
#[derive(Debug, Default, Clone)]
struct Run {
    requests: u64,
    seconds: f64,
    ok: u64,
    non2xx: u64,
    wrong: u64,
    socket_errors: u64,
    p50_ms: f64,
    p99_ms: f64,
    sample: Option<String>,
}

impl Run {
    /// One line of the table: `label`, then the figures; the first wrong
    /// answer under it.
    fn print(&self, label: &str) {
        println!(
            "  {label} {:>9.0} {:>8.2} {:>8.2} {:>9} {:>7} {:>6} {:>6}",
            self.per_s(),
            self.p50_ms,
            self.p99_ms,
            self.ok,
            self.non2xx,
            self.wrong,
            self.socket_errors
        );
        if let Some(s) = &self.sample {
            println!("    first bad answer: {s}");
        }
    }

    fn json(&self) -> Value {
        json!({
            "req_per_s": self.per_s(), "p50_ms": self.p50_ms, "p99_ms": self.p99_ms, "ok": self.ok,
            "non2xx": self.non2xx, "wrong": self.wrong, "socket_errors": self.socket_errors,
        })
    }

    fn per_s(&self) -> f64 {
        self.ok as f64 / self.seconds
    }
    fn clean(&self) -> bool {
        self.non2xx == 0
            && self.wrong == 0
            && self.socket_errors == 0
            && self.ok == self.requests
            && self.ok > 0
    }
}

/// A query as sent: its request body and whether it carries the token.
struct Query {
    name: &'static str,
    body: String,
    auth: bool,
}

/// wrk's answer-checking Lua script, in a folder of its own (wrk writes its
/// samples beside it).
fn check_script() -> Result<(tempfile::TempDir, PathBuf), String> {
    let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    let script = dir.path().join("check.lua");
    std::fs::write(&script, WRK_LUA).map_err(|e| format!("{}: {e}", script.display()))?;
    Ok((dir, script))
}

struct Wrk<'a> {
    cores: &'a Cores,
    dir: &'a Path,
    script: PathBuf,
    token: &'a str,
    connections: usize,
}

impl Wrk<'_> {
    /// Runs `q` against `url` for `seconds`, checking every answer against
    /// `expected`.
    fn run(&self, url: &str, q: &Query, expected: &str, seconds: u64) -> Result<Run, String> {
        let body_path = self.dir.join(format!("{}.body.json", q.name));
        let expect_path = self.dir.join(format!("{}.expected.json", q.name));
        std::fs::write(&body_path, &q.body).map_err(|e| format!("{}: {e}", body_path.display()))?;
        std::fs::write(&expect_path, expected).map_err(|e| format!("{}: {e}", expect_path.display()))?;
        let out = self
            .cores
            .load_command("wrk")
            .args(["-t1", "-c", &self.connections.to_string(), "-d", &format!("{seconds}s")])
            .args(["--timeout", "10s", "-s"])
            .arg(&self.script)
            .arg(url)
            .env("BENCH_BODY", &body_path)
            .env("BENCH_EXPECT", &expect_path)
            .env("BENCH_TOKEN", if q.auth { self.token } else { "" })
            .output()
            .map_err(|e| format!("wrk: {e}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            return Err(format!(
                "wrk failed ({}): {}{}",
                out.status,
                stdout.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let line = stdout
            .lines()
            .find_map(|l| l.strip_prefix("BENCH_RESULT "))
            .ok_or_else(|| format!("no BENCH_RESULT in wrk's output: {stdout}"))?;
        let v: Value = serde_json::from_str(line).map_err(|e| format!("wrk result {line:?}: {e}"))?;
        let n = |k: &str| v[k].as_f64().unwrap_or(0.0);
        Ok(Run {
            requests: n("requests") as u64,
            seconds: n("duration_us") / 1e6,
            ok: n("ok") as u64,
            non2xx: n("non2xx") as u64,
            wrong: n("wrong") as u64,
            socket_errors: (n("connect") + n("read") + n("write") + n("timeout")) as u64,
            p50_ms: n("p50_us") / 1000.0,
            p99_ms: n("p99_us") / 1000.0,
            sample: stdout.lines().find_map(|l| l.strip_prefix("BENCH_SAMPLE ")).map(str::to_owned),
        })
    }
}

/// Posts `q` once and returns the body, which must be a 200 without errors.
async fn reference(http: &reqwest::Client, url: &str, q: &Query, token: &str) -> Result<String, String> {
    let mut req = http.post(url).header("Content-Type", "application/json").body(q.body.clone());
    if q.auth {
        req = req.bearer_auth(token);
    }
    let res = req.send().await.map_err(|e| format!("{url} {}: {e:?}", q.name))?;
    let status = res.status();
    let text = res.text().await.map_err(|e| format!("{url} {}: {e}", q.name))?;
    let v: Value =
        serde_json::from_str(&text).map_err(|e| format!("{url} {}: not JSON ({e}): {text}", q.name))?;
    if !status.is_success() || v.get("errors").is_some() || v["data"].is_null() {
        return Err(format!("{url} {}: {status} {text}", q.name));
    }
    Ok(text)
}

/// The value with every RFC 3339 timestamp replaced by its instant in
/// milliseconds and every number as a float, for comparing two servers.
fn normalize(v: &Value) -> Value {
    match v {
        Value::String(s) => match chrono::DateTime::parse_from_rfc3339(s) {
            Ok(t) => json!({ "instant_ms": t.timestamp_millis() }),
            Err(_) => v.clone(),
        },
        Value::Number(n) => json!(n.as_f64()),
        Value::Array(a) => Value::Array(a.iter().map(normalize).collect()),
        Value::Object(o) => Value::Object(o.iter().map(|(k, v)| (k.clone(), normalize(v))).collect()),
        other => other.clone(),
    }
}

/// Where `a` and `b` differ (first difference), allowing 1 ms between
/// instants (JavaScript keeps milliseconds, PostgreSQL microseconds).
fn differ(a: &Value, b: &Value, path: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            if x.len() != y.len() || x.keys().any(|k| !y.contains_key(k)) {
                return Some(format!("{path}: keys {:?} vs {:?}", x.keys(), y.keys()));
            }
            if let (Some(p), Some(q)) = (x.get("instant_ms"), y.get("instant_ms"))
                && x.len() == 1
            {
                let (p, q) = (p.as_i64().unwrap_or(0), q.as_i64().unwrap_or(0));
                return ((p - q).abs() > 1).then(|| format!("{path}: {p} ms vs {q} ms"));
            }
            x.iter().find_map(|(k, v)| differ(v, &y[k], &format!("{path}.{k}")))
        }
        (Value::Array(x), Value::Array(y)) => {
            if x.len() != y.len() {
                return Some(format!("{path}: {} items vs {}", x.len(), y.len()));
            }
            x.iter().zip(y).enumerate().find_map(|(i, (p, q))| differ(p, q, &format!("{path}[{i}]")))
        }
        _ => (a != b).then(|| format!("{path}: {a} vs {b}")),
    }
}

/// Inserts a live session `id` for the bench user, when the database has
/// sessions (a build from before them has none); says whether it did.
fn seed_session(db: &str, id: uuid::Uuid) -> Result<bool, String> {
    if psql(db, "SELECT to_regclass('public.sessions') IS NOT NULL")? != "t" {
        return Ok(false);
    }
    psql(
        db,
        &format!(
            "INSERT INTO sessions (id, user_id, user_agent, ip_address) \
             VALUES ('{id}', '{USER}', 'bench/queries', '127.0.0.1')"
        ),
    )?;
    Ok(true)
}

/// The bench user's access token in `session`. A build from before sessions
/// takes it too: it ignores the `sid` claim.
fn sign(session: uuid::Uuid) -> Result<String, String> {
    let tokens = mage_api::auth::Tokens::new(JWT_SECRET, Duration::from_secs(3600));
    let user = USER.parse().map_err(|e| format!("user id: {e}"))?;
    let (token, _) = tokens.issue(user, session).map_err(|e| format!("token: {e:?}"))?;
    Ok(token)
}

/// A `mage` binary and the database it serves.
struct Target<'a> {
    bin: &'a str,
    db: &'a str,
    redis_url: &'a str,
    prefix: &'a str,
    pool_size: &'a str,
}

impl Target<'_> {
    /// Starts `mage serve` on the server core and waits until it is ready;
    /// returns it and its base URL.
    async fn start(&self, cores: &Cores, http: &reqwest::Client) -> Result<(Server, String), String> {
        let addr = format!("127.0.0.1:{}", common::free_port());
        let public_url = format!("http://{addr}");
        let mut cmd = cores.server_command(self.bin);
        cmd.arg("serve")
            .env("DATABASE_URL", self.db)
            .env("REDIS_URL", self.redis_url)
            .env("MAGE_REDIS_PREFIX", self.prefix)
            .env("MAGE_ADDR", &addr)
            .env("MAGE_PUBLIC_URL", &public_url)
            .env("MAGE_JWT_SECRET", JWT_SECRET)
            .env("MAGE_DB_POOL_SIZE", self.pool_size)
            .env("MAGE_SKIP_MIGRATIONS", "true")
            .env("MAGE_LOG", std::env::var("MAGE_LOG").unwrap_or_else(|_| "warn".into()));
        let mut server = Server::spawn("mage serve", cmd);
        server.wait_ready(http, &format!("{public_url}/readyz")).await?;
        Ok((server, public_url))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let seconds: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(6).max(1);
    let connections: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(64).max(1);
    let cores = Cores::pin_self();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    let baseline = std::env::var("MAGE_BASELINE_BIN").ok().filter(|b| !b.is_empty());
    let outcome = match baseline {
        Some(baseline) => runtime.block_on(against_baseline(seconds, connections, cores, baseline)),
        None => runtime.block_on(bench(seconds, connections, cores)),
    };
    let code = match outcome {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            eprintln!("queries: {e}");
            2
        }
    };
    std::process::exit(code);
}

async fn bench(seconds: u64, connections: usize, cores: Cores) -> Result<bool, String> {
    let db = std::env::var("DATABASE_URL").map_err(|_| "DATABASE_URL is not set")?;
    let redis_url = std::env::var("REDIS_URL").map_err(|_| "REDIS_URL is not set")?;
    let prefix = std::env::var("MAGE_REDIS_PREFIX").map_err(|_| "MAGE_REDIS_PREFIX is not set")?;
    let mage = std::env::var("MAGE_BIN").unwrap_or_else(|_| "target/release/mage".into());
    let pool_size = std::env::var("MAGE_DB_POOL_SIZE").unwrap_or_else(|_| "16".into());
    let warmup: u64 = 2;
    let load_before = common::load_average();

    psql(&db, SEED_SQL)?;
    let session = uuid::Uuid::new_v4();
    if !seed_session(&db, session)? {
        return Err("the database has no sessions table: is it migrated by this build?".into());
    }
    let token = sign(session)?;

    let (dir, script) = check_script()?;
    let wrk = Wrk { cores: &cores, dir: dir.path(), script, token: &token, connections };
    let body = |query: &str| json!({ "query": query }).to_string();
    let queries = [
        Query { name: "typename", body: body(TYPENAME), auth: false },
        Query { name: "typename_auth", body: body(TYPENAME), auth: true },
        Query { name: "me", body: body(ME), auth: true },
        Query { name: "generations", body: body(GENERATIONS), auth: true },
    ];
    // A new connection for each check: a kept-alive one may have been
    // closed by the server while wrk ran.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| format!("HTTP client: {e}"))?;

    // Mage: every query.
    let target =
        Target { bin: &mage, db: &db, redis_url: &redis_url, prefix: &prefix, pool_size: &pool_size };
    let (server, public_url) = target.start(&cores, &http).await?;
    let url = format!("{public_url}/graphql");
    let mut mage_refs = Vec::new();
    let mut mage_runs = Vec::new();
    for q in &queries {
        let expected = reference(&http, &url, q, &token).await?;
        wrk.run(&url, q, &expected, warmup)?;
        mage_runs.push(wrk.run(&url, q, &expected, seconds)?);
        mage_refs.push(expected);
    }
    server.stop();
    let cleaned = common::clean_redis(&redis_url, &prefix).await;

    // graphql-yoga: the same queries but the authenticated __typename.
    let yoga_port = common::free_port();
    let mut cmd = cores.server_command("node");
    cmd.arg("bench/node/yoga.mjs")
        .env("DATABASE_URL", &db)
        .env("MAGE_JWT_SECRET", JWT_SECRET)
        .env("HOST", "127.0.0.1")
        .env("PORT", yoga_port.to_string())
        .env("POOL_SIZE", &pool_size)
        .env("PUBLIC_URL", &public_url)
        .env("NODE_ENV", "production")
        .stdout(std::process::Stdio::null());
    let mut yoga = Server::spawn("graphql-yoga", cmd);
    let yoga_base = format!("http://127.0.0.1:{yoga_port}");
    yoga.wait_ready(&http, &format!("{yoga_base}/health")).await?;
    let url = format!("{yoga_base}/graphql");
    let mut yoga_runs = Vec::new();
    let mut differences = Vec::new();
    for (q, mage_ref) in queries.iter().zip(&mage_refs) {
        if q.name == "typename_auth" {
            yoga_runs.push(None);
            continue;
        }
        let expected = reference(&http, &url, q, &token).await?;
        let (a, b) = (
            serde_json::from_str::<Value>(mage_ref).map_err(|e| e.to_string())?,
            serde_json::from_str::<Value>(&expected).map_err(|e| e.to_string())?,
        );
        if let Some(d) = differ(&normalize(&a), &normalize(&b), q.name) {
            differences.push(d);
        }
        wrk.run(&url, q, &expected, warmup)?;
        yoga_runs.push(Some(wrk.run(&url, q, &expected, seconds)?));
    }
    yoga.stop();
    let load_after = common::load_average();

    let get = |name: &str| queries.iter().position(|q| q.name == name).expect("a query of the list");
    let mage_of = |name: &str| mage_runs[get(name)].clone();
    let yoga_of = |name: &str| yoga_runs[get(name)].clone().unwrap_or_default();
    let (floor, floor_auth, me, gens) =
        (mage_of("typename"), mage_of("typename_auth"), mage_of("me"), mage_of("generations"));
    let (y_floor, y_me, y_gens) = (yoga_of("typename"), yoga_of("me"), yoga_of("generations"));

    let split = cores.describe("the server (mage serve, then node)", "wrk");
    println!(
        "queries: wrk -t1 -c{connections} -d{seconds}s, POST /graphql (keep-alive), every answer checked; \
         MAGE_DB_POOL_SIZE {pool_size}, pg Pool {pool_size}"
    );
    println!("  cores  {}: {split}", cores.count);
    println!("  load   {load_before} before, {load_after} after (1, 5, 15 min)");
    println!(
        "  {:<34} {:>9} {:>8} {:>8} {:>9} {:>7} {:>6} {:>6}",
        "", "req/s", "p50 ms", "p99 ms", "ok", "non2xx", "wrong", "sock"
    );
    let lines = [
        ("mage { __typename }  (floor)", &floor),
        ("mage { __typename } + token", &floor_auth),
        ("mage me { credits { balance } }", &me),
        ("mage generations(first: 20)", &gens),
        ("yoga { __typename }", &y_floor),
        ("yoga me { credits { balance } }", &y_me),
        ("yoga generations(first: 20)", &y_gens),
    ];
    for (name, r) in lines {
        r.print(&format!("{name:<34}"));
    }
    println!(
        "  me: {:.2}x yoga, {:.2} of the floor; generations: {:.2}x yoga, {:.2} of the floor \
         (targets: 5x yoga, 0.5 of the floor)",
        me.per_s() / y_me.per_s(),
        me.per_s() / floor.per_s(),
        gens.per_s() / y_gens.per_s(),
        gens.per_s() / floor.per_s()
    );
    if differences.is_empty() {
        println!("  answers: mage and yoga return the same data (timestamps to the millisecond)");
    } else {
        for d in &differences {
            println!("  answers DIFFER: {d}");
        }
    }
    match cleaned {
        Ok(n) => println!("  redis  {n} keys of prefix {prefix} removed"),
        Err(e) => println!("  redis  could not remove the keys of prefix {prefix}: {e}"),
    }

    let report = json!({
        "queries": {
            "req_per_s": {
                "me_mage": me.per_s(),
                "me_yoga": y_me.per_s(),
                "generations_mage": gens.per_s(),
                "generations_yoga": y_gens.per_s(),
                "typename_mage": floor.per_s(),
                "typename_mage_with_token": floor_auth.per_s(),
                "typename_yoga": y_floor.per_s(),
            },
            "ratio": {
                "me_vs_yoga": me.per_s() / y_me.per_s(),
                "generations_vs_yoga": gens.per_s() / y_gens.per_s(),
                "me_vs_floor": me.per_s() / floor.per_s(),
                "generations_vs_floor": gens.per_s() / floor.per_s(),
            },
            "runs": {
                "typename_mage": Run::json(&floor),
                "typename_mage_with_token": Run::json(&floor_auth),
                "me_mage": Run::json(&me),
                "generations_mage": Run::json(&gens),
                "typename_yoga": Run::json(&y_floor),
                "me_yoga": Run::json(&y_me),
                "generations_yoga": Run::json(&y_gens),
            },
            "answers_match": differences.is_empty(),
            "seconds": seconds,
            "connections": connections,
            "db_pool_size": pool_size,
            "cores": cores.count,
            "split": split,
            "load_average_before": load_before,
            "load_average_after": load_after,
        }
    });
    common::write_json("bench/queries.json", &report);
    let all = [&floor, &floor_auth, &me, &gens, &y_floor, &y_me, &y_gens];
    Ok(differences.is_empty() && all.iter().all(|r| r.clean()))
}

/// The middle of `values` (the mean of the two middle ones for an even
/// count).
fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn min_max(values: &[f64]) -> (f64, f64) {
    values.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(*v), hi.max(*v)))
}

/// One server's turn in the comparison with a baseline.
struct Turn {
    round: usize,
    baseline: bool,
    typename_auth: Run,
    me: Run,
}

/// `MAGE_BASELINE_BIN` set: the same authenticated `{ __typename }` and
/// `me { credits { balance } }` on this build and on the baseline binary
/// (an older build), each on a database of its own (`DATABASE_URL`,
/// `MAGE_BASELINE_DATABASE_URL`, both migrated by their own binary), in
/// `MAGE_BASELINE_ROUNDS` rounds (3) whose order alternates (baseline
/// first, then this build first, ...) so that drift in the machine's other
/// load falls on both alike. One token serves both: it names a real,
/// live session of the bench user. Prints the median `me` req/s of each,
/// their ratio (issue 20: this build within 10% of before, i.e. >= 0.90),
/// the spread; writes `bench/queries_baseline.json`. No graphql-yoga.
async fn against_baseline(
    seconds: u64,
    connections: usize,
    cores: Cores,
    baseline_bin: String,
) -> Result<bool, String> {
    let db = std::env::var("DATABASE_URL").map_err(|_| "DATABASE_URL is not set")?;
    let base_db = std::env::var("MAGE_BASELINE_DATABASE_URL")
        .map_err(|_| "MAGE_BASELINE_DATABASE_URL is not set (a database migrated by the baseline binary)")?;
    let redis_url = std::env::var("REDIS_URL").map_err(|_| "REDIS_URL is not set")?;
    let prefix = std::env::var("MAGE_REDIS_PREFIX").map_err(|_| "MAGE_REDIS_PREFIX is not set")?;
    let mage = std::env::var("MAGE_BIN").unwrap_or_else(|_| "target/release/mage".into());
    let pool_size = std::env::var("MAGE_DB_POOL_SIZE").unwrap_or_else(|_| "16".into());
    let rounds: usize =
        std::env::var("MAGE_BASELINE_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(3).max(1);
    let warmup: u64 = 2;
    let load_before = common::load_average();

    psql(&db, SEED_SQL)?;
    psql(&base_db, SEED_SQL)?;
    let session = uuid::Uuid::new_v4();
    if !seed_session(&db, session)? {
        return Err("the database of this build has no sessions table".into());
    }
    let base_has_sessions = seed_session(&base_db, session)?;
    let token = sign(session)?;

    let (dir, script) = check_script()?;
    let wrk = Wrk { cores: &cores, dir: dir.path(), script, token: &token, connections };
    let body = |query: &str| json!({ "query": query }).to_string();
    let typename_auth = Query { name: "typename_auth", body: body(TYPENAME), auth: true };
    let me = Query { name: "me", body: body(ME), auth: true };
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| format!("HTTP client: {e}"))?;
    let new = Target { bin: &mage, db: &db, redis_url: &redis_url, prefix: &prefix, pool_size: &pool_size };
    let old = Target {
        bin: &baseline_bin,
        db: &base_db,
        redis_url: &redis_url,
        prefix: &prefix,
        pool_size: &pool_size,
    };

    // The first answers seen: every server must give the same ones.
    let mut first: Vec<Option<String>> = vec![None, None];
    let mut differences = Vec::new();
    let mut turns = Vec::new();
    for round in 1..=rounds {
        let order = if round % 2 == 1 { [true, false] } else { [false, true] };
        for baseline in order {
            let target = if baseline { &old } else { &new };
            let (server, public_url) = target.start(&cores, &http).await?;
            let url = format!("{public_url}/graphql");
            let mut runs = Vec::new();
            for (i, q) in [&typename_auth, &me].into_iter().enumerate() {
                let expected = reference(&http, &url, q, &token).await?;
                match &first[i] {
                    Some(f) if *f != expected => differences.push(format!(
                        "{} (round {round}, {}): {expected} vs {f}",
                        q.name,
                        if baseline { "baseline" } else { "this build" }
                    )),
                    Some(_) => {}
                    None => first[i] = Some(expected.clone()),
                }
                // The warm-up also covers the new build's first revocation
                // poll, before which it reads sessions from the database.
                wrk.run(&url, q, &expected, warmup)?;
                runs.push(wrk.run(&url, q, &expected, seconds)?);
            }
            server.stop();
            common::clean_redis(&redis_url, &prefix).await.map_err(|e| format!("redis clean-up: {e}"))?;
            let me_run = runs.pop().unwrap_or_default();
            let typename_run = runs.pop().unwrap_or_default();
            eprintln!(
                "  round {round} {:<10} me {:>7.0} req/s, {{ __typename }} + token {:>7.0} req/s",
                if baseline { "baseline" } else { "this build" },
                me_run.per_s(),
                typename_run.per_s()
            );
            turns.push(Turn { round, baseline, typename_auth: typename_run, me: me_run });
        }
    }
    let load_after = common::load_average();

    let of = |baseline: bool, f: fn(&Turn) -> f64| -> Vec<f64> {
        turns.iter().filter(|t| t.baseline == baseline).map(f).collect()
    };
    let me_new = of(false, |t| t.me.per_s());
    let me_old = of(true, |t| t.me.per_s());
    let floor_new = of(false, |t| t.typename_auth.per_s());
    let floor_old = of(true, |t| t.typename_auth.per_s());
    // Each round's own ratio: the two turns of a round ran back to back.
    let paired = |f: fn(&Turn) -> f64| -> Vec<f64> {
        (1..=rounds)
            .filter_map(|r| {
                let n = turns.iter().find(|t| t.round == r && !t.baseline)?;
                let o = turns.iter().find(|t| t.round == r && t.baseline)?;
                Some(f(n) / f(o))
            })
            .collect()
    };
    let me_pairs = paired(|t| t.me.per_s());
    let floor_pairs = paired(|t| t.typename_auth.per_s());
    let me_ratio = median(&me_new) / median(&me_old);
    let floor_ratio = median(&floor_new) / median(&floor_old);

    let split = cores.describe("the server (mage serve)", "wrk");
    println!(
        "queries against a baseline: wrk -t1 -c{connections} -d{seconds}s (after {warmup} s of warm-up), \
         POST /graphql (keep-alive), every answer checked; {rounds} rounds, order alternating; \
         MAGE_DB_POOL_SIZE {pool_size}"
    );
    println!("  this build  {mage} (session {session} in its database)");
    println!(
        "  baseline    {baseline_bin} ({})",
        if base_has_sessions { "with sessions: the same session seeded" } else { "no sessions table" }
    );
    println!("  cores  {}: {split}", cores.count);
    println!("  load   {load_before} before, {load_after} after (1, 5, 15 min)");
    println!(
        "  {:<5} {:<10} {:<24} {:>9} {:>8} {:>8} {:>9} {:>7} {:>6} {:>6}",
        "round", "binary", "query", "req/s", "p50 ms", "p99 ms", "ok", "non2xx", "wrong", "sock"
    );
    for t in &turns {
        for (name, r) in [("{ __typename } + token", &t.typename_auth), ("me { credits { balance } }", &t.me)]
        {
            r.print(&format!(
                "{:<5} {:<10} {name:<24}",
                t.round,
                if t.baseline { "baseline" } else { "this" }
            ));
        }
    }
    let spread = |v: &[f64]| {
        let (lo, hi) = min_max(v);
        format!("{lo:.0}–{hi:.0}")
    };
    let ratio_spread = |v: &[f64]| {
        let (lo, hi) = min_max(v);
        format!("{lo:.3}–{hi:.3}")
    };
    println!(
        "  me:                    this build median {:.0} req/s ({}), baseline median {:.0} req/s ({})",
        median(&me_new),
        spread(&me_new),
        median(&me_old),
        spread(&me_old)
    );
    println!(
        "  {{ __typename }} + token: this build median {:.0} req/s ({}), baseline median {:.0} req/s ({})",
        median(&floor_new),
        spread(&floor_new),
        median(&floor_old),
        spread(&floor_old)
    );
    println!(
        "  me this build / baseline: {me_ratio:.3} (medians; per round {}), target >= 0.90: {}",
        ratio_spread(&me_pairs),
        if me_ratio >= 0.9 { "met" } else { "NOT met" }
    );
    println!(
        "  {{ __typename }} + token this build / baseline: {floor_ratio:.3} (medians; per round {})",
        ratio_spread(&floor_pairs)
    );
    if differences.is_empty() {
        println!("  answers: both binaries return the same bytes");
    } else {
        for d in &differences {
            println!("  answers DIFFER: {d}");
        }
    }

    let report = json!({
        "queries_baseline": {
            "me_req_per_s": { "median": median(&me_new), "baseline_median": median(&me_old),
                              "all": me_new, "baseline_all": me_old },
            "typename_with_token_req_per_s": { "median": median(&floor_new),
                                               "baseline_median": median(&floor_old),
                                               "all": floor_new, "baseline_all": floor_old },
            "ratio": { "me": me_ratio, "me_per_round": me_pairs,
                       "typename_with_token": floor_ratio, "typename_with_token_per_round": floor_pairs },
            "target_me_ratio": 0.9,
            "met": me_ratio >= 0.9,
            "turns": turns.iter().map(|t| json!({
                "round": t.round, "binary": if t.baseline { "baseline" } else { "this" },
                "typename_with_token": Run::json(&t.typename_auth), "me": Run::json(&t.me),
            })).collect::<Vec<_>>(),
            "binary": mage,
            "baseline_binary": baseline_bin,
            "answers_match": differences.is_empty(),
            "rounds": rounds,
            "seconds": seconds,
            "connections": connections,
            "db_pool_size": pool_size,
            "cores": cores.count,
            "split": split,
            "load_average_before": load_before,
            "load_average_after": load_after,
        }
    });
    common::write_json("bench/queries_baseline.json", &report);
    let clean = turns.iter().all(|t| t.typename_auth.clean() && t.me.clean());
    Ok(differences.is_empty() && clean)
}
