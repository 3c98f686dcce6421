//! Helpers shared by the Rust benchmark drivers of the root package (included with
//! `#[path]`): core pinning, child servers that die with the benchmark,
//! psql, Redis clean-up, percentiles.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The HS256 secret the benchmarks' servers sign and check tokens with.
pub const JWT_SECRET: &str = "bench-secret-bench-secret-bench-secret-0";
/// Opens `/metrics` on the port of a `mage serve` under test
/// (MAGE_METRICS_TOKEN).
pub const METRICS_TOKEN: &str = "bench-metrics-token-0123456789";

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn have_taskset() -> bool {
    Command::new("taskset")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// How the cores are split: with two or more cores and `taskset`, this
/// process (the load generator: call before any thread exists, so every
/// thread inherits it) goes to core 1 and the servers to core 0.
#[derive(Debug, Clone, Copy)]
pub struct Cores {
    pub count: usize,
    pub pinned: bool,
}

impl Cores {
    pub fn pin_self() -> Self {
        let count = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let pinned = count >= 2
            && have_taskset()
            && Command::new("taskset")
                .args(["-c", "-p", "1", &std::process::id().to_string()])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
        Self { count, pinned }
    }

    /// The load generator's runtime: one thread when pinned to its one
    /// core (more would only take turns on it), else one per core.
    pub fn runtime(&self) -> tokio::runtime::Runtime {
        if self.pinned {
            tokio::runtime::Builder::new_current_thread().enable_all().build()
        } else {
            tokio::runtime::Builder::new_multi_thread().enable_all().build()
        }
        .expect("tokio runtime")
    }

    /// `program` to run on the server core (core 0) when pinned.
    pub fn server_command(&self, program: &str) -> Command {
        self.command_on("0", program)
    }

    /// `program` to run on the load-generator core (core 1) when pinned.
    pub fn load_command(&self, program: &str) -> Command {
        self.command_on("1", program)
    }

    fn command_on(&self, core: &str, program: &str) -> Command {
        if self.pinned {
            let mut c = Command::new("taskset");
            c.args(["-c", core, program]);
            c
        } else {
            Command::new(program)
        }
    }

    pub fn describe(&self, server: &str, load: &str) -> String {
        if self.pinned {
            format!("{server} pinned to core 0, {load} to core 1 (taskset); PostgreSQL and Redis unpinned")
        } else {
            format!("not pinned: {server}, {load}, PostgreSQL and Redis share {} core(s)", self.count)
        }
    }
}

/// A child server, killed when dropped (also on a panic of the benchmark).
pub struct Server {
    pub name: &'static str,
    child: Child,
}

impl Server {
    pub fn spawn(name: &'static str, mut cmd: Command) -> Self {
        let child = cmd.spawn().unwrap_or_else(|e| panic!("could not start {name}: {e}"));
        Self { name, child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Polls `url` until it answers 2xx (30 s at most).
    pub async fn wait_ready(&mut self, http: &reqwest::Client, url: &str) -> Result<(), String> {
        for _ in 0..300 {
            if http.get(url).send().await.is_ok_and(|r| r.status().is_success()) {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("{} exited before it was ready: {status}", self.name));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!("{} did not answer {url} within 30 s", self.name))
    }

    /// SIGTERM, then SIGKILL after 5 s.
    pub fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        for _ in 0..50 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// Runs `sql` through `psql` on `db` (stopping at the first error) and
/// returns what it printed (unaligned, tuples only).
/// The statements run one by one (as a script, not one implicit
/// transaction), so `sql` may hold its own BEGIN / COMMIT and a VACUUM.
pub fn psql(db: &str, sql: &str) -> Result<String, String> {
    use std::io::Write;
    let mut child = Command::new("psql")
        .args(["-w", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-tA", db, "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("psql: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(sql.as_bytes()).map_err(|e| format!("psql: writing the script: {e}"))?;
    }
    let out = child.wait_with_output().map_err(|e| format!("psql: {e}"))?;
    if !out.status.success() {
        return Err(format!("psql failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// A single number printed by `psql`.
pub fn psql_i64(db: &str, sql: &str) -> Result<i64, String> {
    let out = psql(db, sql)?;
    out.parse().map_err(|_| format!("expected a number from {sql:?}, got {out:?}"))
}

/// Removes every key of `prefix`; returns how many.
pub async fn clean_redis(url: &str, prefix: &str) -> redis::RedisResult<usize> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let mut cursor: u64 = 0;
    let mut removed = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await?;
        if !keys.is_empty() {
            let n: usize = redis::cmd("UNLINK").arg(&keys).query_async(&mut conn).await?;
            removed += n;
        }
        if next == 0 {
            return Ok(removed);
        }
        cursor = next;
    }
}

/// The 1-, 5- and 15-minute load averages: other work on the machine.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free TCP port")
}

/// Writes `report` as pretty JSON to `path`.
pub fn write_json(path: &str, report: &serde_json::Value) {
    match serde_json::to_string_pretty(report) {
        Ok(text) => {
            if let Err(e) = std::fs::write(path, text + "\n") {
                eprintln!("could not write {path}: {e}");
            }
        }
        Err(e) => eprintln!("could not serialise the report: {e}"),
    }
}
