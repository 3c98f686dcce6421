//! The test harness: a fresh PostgreSQL database per test, cloned from a
//! migrated template, and a Redis key prefix per test, so tests run in
//! parallel against the real servers (nextest runs each in its own process).
//!
//! `MAGE_TEST_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/test`)
//! names a database the harness can connect to with the right to create
//! databases; `MAGE_TEST_REDIS_URL` (default `redis://127.0.0.1:6379`) the Redis.

use diesel::sql_types::{BigInt, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::config::{DatabaseSettings, RedisSettings, StorageSettings};
use crate::db::{self, DbPool};
use crate::kv::Redis;
use crate::storage::Storage;

const TEMPLATE_LOCK_KEY: i64 = 0x6d61_6765_7470_6c00;

pub fn admin_url() -> String {
    std::env::var("MAGE_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

pub fn redis_url() -> String {
    std::env::var("MAGE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// `postgres://.../test` with the database name replaced.
fn url_for(db: &str) -> String {
    let admin = admin_url();
    let (base, query) = match admin.split_once('?') {
        Some((b, q)) => (b.to_owned(), format!("?{q}")),
        None => (admin.clone(), String::new()),
    };
    let cut = base.rfind('/').filter(|&i| i > "postgres://".len()).unwrap_or(base.len());
    format!("{}/{db}{query}", &base[..cut])
}

#[derive(diesel::QueryableByName)]
struct Name {
    #[diesel(sql_type = diesel::sql_types::Text)]
    datname: String,
}

/// Names of the databases matching a LIKE pattern.
async fn databases_like(admin: &mut AsyncPgConnection, pattern: &str) -> Vec<String> {
    diesel::sql_query("SELECT datname FROM pg_database WHERE datname LIKE $1")
        .bind::<Text, _>(pattern)
        .load::<Name>(admin)
        .await
        .map(|names| names.into_iter().map(|n| n.datname).collect())
        .unwrap_or_default()
}

async fn drop_database(admin: &mut AsyncPgConnection, name: &str) -> diesel::QueryResult<usize> {
    diesel::sql_query(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")).execute(admin).await
}

/// A database of its own for one test, dropped when this value is.
pub struct TestDb {
    name: String,
    url: String,
}

impl TestDb {
    pub async fn new() -> Self {
        let template = ensure_template().await;
        // The pid lets a later run drop what a killed run left behind.
        let name = format!("mage_test_{}_{}", std::process::id(), Uuid::new_v4().simple());
        let mut admin = db::connect(&admin_url()).await.expect("connect to the test PostgreSQL");
        diesel::sql_query(format!("CREATE DATABASE \"{name}\" TEMPLATE \"{template}\""))
            .execute(&mut admin)
            .await
            .expect("create a test database");
        let url = url_for(&name);
        Self { name, url }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn settings(&self) -> DatabaseSettings {
        DatabaseSettings { url: self.url.clone(), pool_size: 8 }
    }

    pub fn pool(&self) -> DbPool {
        db::pool(&self.settings()).expect("test pool")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs inside the test's runtime, which cannot be blocked on;
        // a thread of its own with a small runtime can.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
            if let Ok(rt) = rt {
                rt.block_on(async {
                    if let Ok(mut admin) = db::connect(&admin_url()).await {
                        let _ = drop_database(&mut admin, &name).await;
                    }
                });
            }
        })
        .join();
    }
}

/// The migrated template database for the current migrations, created once
/// (under an advisory lock, since test processes start together).
async fn ensure_template() -> String {
    let template = format!("mage_tpl_{}", env!("MAGE_MIGRATIONS_FINGERPRINT"));
    let mut admin = db::connect(&admin_url()).await.expect("connect to the test PostgreSQL");
    diesel::sql_query("SELECT pg_advisory_lock($1)")
        .bind::<BigInt, _>(TEMPLATE_LOCK_KEY)
        .execute(&mut admin)
        .await
        .expect("template lock");
    let existing = databases_like(&mut admin, "mage\\_tpl\\_%").await;
    drop_leftovers(&mut admin).await;
    if !existing.contains(&template) {
        for old in &existing {
            let _ = drop_database(&mut admin, old).await;
        }
        let building = format!("{template}_building");
        drop_database(&mut admin, &building).await.expect("drop a half-built template");
        diesel::sql_query(format!("CREATE DATABASE \"{building}\""))
            .execute(&mut admin)
            .await
            .expect("create the template database");
        db::run_migrations(&url_for(&building)).await.expect("migrate the template database");
        // Renamed only once complete, so a crash never leaves a half-migrated
        // template under the final name.
        diesel::sql_query(format!("ALTER DATABASE \"{building}\" RENAME TO \"{template}\""))
            .execute(&mut admin)
            .await
            .expect("publish the template database");
    }
    diesel::sql_query("SELECT pg_advisory_unlock($1)")
        .bind::<BigInt, _>(TEMPLATE_LOCK_KEY)
        .execute(&mut admin)
        .await
        .expect("template unlock");
    template
}

/// Drops the test databases of test processes that are gone (killed before
/// their `Drop` ran). Only for a server on this machine, where the pid in a
/// database's name says whether its process still runs.
async fn drop_leftovers(admin: &mut AsyncPgConnection) {
    let local = ["@127.0.0.1", "@localhost", "@[::1]", "@/"].iter().any(|h| admin_url().contains(h));
    if !local {
        return;
    }
    for name in databases_like(admin, "mage\\_test\\_%").await {
        let pid = name.strip_prefix("mage_test_").and_then(|rest| rest.split('_').next());
        if pid.is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists()) {
            let _ = drop_database(admin, &name).await;
        }
    }
}

/// Redis settings with a key prefix of the test's own; the keys are deleted
/// when this value is dropped.
pub struct TestRedis {
    settings: RedisSettings,
}

impl TestRedis {
    pub fn new() -> Self {
        Self::at(&redis_url())
    }

    /// A prefix of its own on the Redis at `url` (a test's private server).
    pub fn at(url: &str) -> Self {
        let prefix = format!("mage-test:{}:", Uuid::new_v4().simple());
        Self { settings: RedisSettings { url: url.to_owned(), prefix } }
    }

    pub fn settings(&self) -> RedisSettings {
        self.settings.clone()
    }

    pub fn redis(&self) -> Redis {
        Redis::new(&self.settings).expect("test redis")
    }
}

impl Default for TestRedis {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        let settings = self.settings.clone();
        let _ = std::thread::spawn(move || {
            let Ok(client) = redis::Client::open(settings.url.as_str()) else { return };
            let Ok(mut conn) = client.get_connection() else { return };
            let keys: Vec<String> =
                redis::cmd("KEYS").arg(format!("{}*", settings.prefix)).query(&mut conn).unwrap_or_default();
            if !keys.is_empty() {
                let _: redis::RedisResult<()> = redis::cmd("DEL").arg(keys).query(&mut conn);
            }
        })
        .join();
    }
}

/// An S3-protocol server of the test's own (s3s-fs over a temporary folder),
/// with one fresh bucket; both processes are killed when this value is
/// dropped. Mage talks to an authenticated endpoint, which checks SigV4
/// signatures (presigned URLs included); a second, anonymous endpoint over
/// the same folder stands for the bucket's public URL (a CDN) that players
/// read from.
///
/// `MAGE_TEST_S3_SERVER` names the s3s-fs binary (`scripts/test` installs
/// it); `s3s-fs` on the PATH otherwise.
pub struct TestS3 {
    root: std::path::PathBuf,
    bucket: String,
    secret: String,
    endpoint: String,
    public: String,
    servers: Vec<std::process::Child>,
}

/// The one access key of the test servers; the secret is per server.
const S3_ACCESS_KEY: &str = "mage-test";
/// The prefix of every key in the test bucket, as in `s3://bucket/media`.
const S3_PREFIX: &str = "media";

pub fn s3_server() -> String {
    std::env::var("MAGE_TEST_S3_SERVER").unwrap_or_else(|_| "s3s-fs".into())
}

impl TestS3 {
    pub async fn start() -> Self {
        let root =
            std::env::temp_dir().join(format!("mage-s3-{}-{}", std::process::id(), Uuid::new_v4().simple()));
        let bucket = format!("mage-{}", Uuid::new_v4().simple());
        // s3s-fs keeps a bucket as a folder under its root; object_store
        // cannot create buckets, so the folder is made here.
        std::fs::create_dir_all(root.join(&bucket)).expect("create the test bucket");
        let secret = Uuid::new_v4().simple().to_string();
        let auth = ["--access-key", S3_ACCESS_KEY, "--secret-key", &secret].map(str::to_owned);
        let mut s3 =
            Self { root, bucket, secret, endpoint: String::new(), public: String::new(), servers: vec![] };
        s3.endpoint = s3.spawn(&auth).await;
        s3.public = s3.spawn(&[]).await;
        s3
    }

    /// Starts one server on a free port; returns its URL once it accepts
    /// connections. Another process may take the port between our probe
    /// and the server's bind: the server then exits and we try another.
    async fn spawn(&mut self, args: &[String]) -> String {
        let server = s3_server();
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let mut child = std::process::Command::new(&server)
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(args)
                .arg(&self.root)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("cannot start the S3 test server {server:?} ({e}): run scripts/test, which installs it")
                });
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while std::time::Instant::now() < deadline {
                if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                    self.servers.push(child);
                    return format!("http://127.0.0.1:{port}");
                }
                if child.try_wait().ok().flatten().is_some() {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("the S3 test server {server:?} did not start");
    }

    /// The authenticated endpoint (`AWS_ENDPOINT_URL`).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// `s3://<bucket>/media`, its public URL on the anonymous endpoint.
    pub fn settings(&self) -> StorageSettings {
        StorageSettings {
            media_dir: self.root.clone(),
            url: Some(format!("s3://{}/{S3_PREFIX}", self.bucket)),
            base_url: Some(format!("{}/{}/{S3_PREFIX}", self.public, self.bucket)),
        }
    }

    /// The `AWS_*` settings that reach this server.
    pub fn aws_config(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", self.secret.clone()),
        ]
    }

    /// Storage on this bucket, whatever `AWS_*` the process has.
    pub fn storage(&self) -> Storage {
        Storage::with_aws_config(&self.settings(), self.aws_config()).expect("S3 test storage")
    }

    /// What is left of multipart uploads begun and neither completed nor
    /// aborted: s3s-fs cannot list them, and keeps `.upload-<id>.json` per
    /// upload and `.upload_id-<id>.part-<n>` per part in its root.
    pub fn incomplete_uploads(&self) -> usize {
        std::fs::read_dir(&self.root)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .filter(|e| e.file_name().to_string_lossy().starts_with(".upload"))
                    .count()
            })
            .unwrap_or(0)
    }
}

impl Drop for TestS3 {
    fn drop(&mut self) {
        for child in &mut self.servers {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// An SMTP server of the test's own: aiosmtpd (Python), delivering into a
/// Maildir in a temporary folder the test reads. Killed when dropped.
///
/// `MAGE_TEST_SMTP_PYTHON` names a Python that has aiosmtpd
/// (`scripts/test` makes a virtualenv with it); `python3` otherwise.
pub struct TestSmtp {
    dir: std::path::PathBuf,
    port: u16,
    server: std::process::Child,
}

pub fn smtp_python() -> String {
    std::env::var("MAGE_TEST_SMTP_PYTHON").unwrap_or_else(|_| "python3".into())
}

impl TestSmtp {
    pub async fn start() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "mage-smtp-{}-{}",
            std::process::id(),
            Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).expect("a folder for the test mailbox");
        let python = smtp_python();
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            // The Maildir must not exist yet: aiosmtpd creates it with its
            // tmp/new/cur folders only then.
            let mut child = std::process::Command::new(&python)
                .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")])
                .args(["-c", "aiosmtpd.handlers.Mailbox"])
                .arg(dir.join("maildir"))
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("cannot start the SMTP test server with {python:?} ({e}): run scripts/test, which installs aiosmtpd")
                });
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
            while std::time::Instant::now() < deadline {
                if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                    return Self { dir, port, server: child };
                }
                if child.try_wait().ok().flatten().is_some() {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!(
            "the SMTP test server did not start with {python:?}: is aiosmtpd installed (scripts/test sets MAGE_TEST_SMTP_PYTHON)?"
        );
    }

    /// `smtp://127.0.0.1:<port>` (no TLS, no password: a local relay).
    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// Every message delivered so far, raw (headers and body), oldest first.
    pub fn messages(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.dir.join("maildir").join("new")) else {
            return vec![];
        };
        let mut files: Vec<(std::time::SystemTime, std::path::PathBuf)> = entries
            .filter_map(|e| e.ok())
            .map(|e| (e.metadata().and_then(|m| m.modified()).unwrap_or(std::time::UNIX_EPOCH), e.path()))
            .collect();
        files.sort();
        files.into_iter().filter_map(|(_, p)| std::fs::read_to_string(p).ok()).collect()
    }

    /// The messages once there are at least `n` (panics after `timeout`).
    pub async fn wait_for(&self, n: usize, timeout: std::time::Duration) -> Vec<String> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let got = self.messages();
            if got.len() >= n {
                return got;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{n} mails expected within {timeout:?}, {} arrived",
                got.len()
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

impl Drop for TestSmtp {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
