//! Real `mage` processes started by a test.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mage_domain::testing::{TestDb, TestRedis};

/// The `MAGE_JWT_SECRET` of the `mage serve` processes of the tests.
pub const JWT_SECRET: &str = "a-secret-for-this-test-only-0123456789";

/// The `mage` binary with none of the test's own settings leaking in.
pub fn mage() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mage"));
    for (var, _) in std::env::vars() {
        if var.starts_with("MAGE_") || var == "DATABASE_URL" || var == "REDIS_URL" {
            cmd.env_remove(var);
        }
    }
    cmd.env("MAGE_LOG", "warn");
    cmd
}

/// `mage <command>` on a test's database and Redis key prefix.
pub fn mage_on(command: &str, db: &TestDb, redis: &TestRedis) -> Command {
    let redis = redis.settings();
    let mut cmd = mage();
    cmd.arg(command)
        .env("DATABASE_URL", db.url())
        .env("REDIS_URL", redis.url)
        .env("MAGE_REDIS_PREFIX", redis.prefix);
    cmd
}

/// `mage serve` on a test's database and Redis key prefix, signing tokens
/// with [`JWT_SECRET`].
pub fn serve_on(db: &TestDb, redis: &TestRedis) -> Command {
    let mut cmd = mage_on("serve", db, redis);
    cmd.env("MAGE_JWT_SECRET", JWT_SECRET);
    cmd
}

/// Starts `cmd` (`mage serve` or `mage dev`) on a free port, its output
/// discarded; returns once it answers `/readyz`.
pub async fn start_listening(mut cmd: Command) -> (Child, u16) {
    let port = free_port();
    cmd.env("MAGE_ADDR", format!("127.0.0.1:{port}")).stdout(Stdio::null());
    let child = Child(cmd.spawn().expect("spawn mage"));
    wait_ready(&reqwest::Client::new(), port, Duration::from_secs(30)).await;
    (child, port)
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A child process killed when dropped.
pub struct Child(pub std::process::Child);

impl Child {
    pub fn spawn(cmd: &mut Command) -> Self {
        Self(cmd.spawn().expect("spawn mage"))
    }

    /// Sends SIGTERM and waits for the exit, at most `limit`; returns the
    /// exit status and how long the process took.
    pub async fn terminate(&mut self, limit: Duration) -> (std::process::ExitStatus, Duration) {
        let pid = i32::try_from(self.0.id()).expect("pid");
        // SAFETY: signals a child process this test started and still owns.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let signalled = Instant::now();
        loop {
            if let Some(status) = self.0.try_wait().expect("wait") {
                return (status, signalled.elapsed());
            }
            assert!(signalled.elapsed() < limit, "the process was still running {limit:?} after SIGTERM");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until `mage serve` on `port` answers `/readyz`, at most `limit`.
pub async fn wait_ready(http: &reqwest::Client, port: u16, limit: Duration) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(r) = http.get(format!("http://127.0.0.1:{port}/readyz")).send().await
            && r.status().is_success()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("mage serve on {port} never became ready");
}

/// A real `mage dev` (API, workers, dev checkout and mailbox) on a database,
/// Redis prefix and media folder of its own, stopped when dropped.
pub struct Dev {
    pub port: u16,
    _child: Child,
    _media: tempfile::TempDir,
    _db: TestDb,
    _redis: TestRedis,
}

impl Dev {
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// `mage dev` with these settings added.
    pub async fn start_with(env: &[(&str, &str)]) -> Self {
        let (db, redis) = (TestDb::new().await, TestRedis::new());
        let media = tempfile::tempdir().expect("media");
        let mut cmd = mage_on("dev", &db, &redis);
        cmd.env("MAGE_MEDIA_DIR", media.path()).envs(env.iter().copied());
        let (child, port) = start_listening(cmd).await;
        Self { port, _child: child, _media: media, _db: db, _redis: redis }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// `mage <command>` on this instance's database and Redis.
    pub fn mage(&self, command: &str) -> Command {
        mage_on(command, &self._db, &self._redis)
    }
}
