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

use crate::config::{DatabaseSettings, RedisSettings};
use crate::db::{self, DbPool};
use crate::kv::Redis;

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
