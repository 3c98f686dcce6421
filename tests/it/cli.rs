//! The `mage` binary itself: configuration errors, subcommands, and a real
//! `mage serve` process answering a browser-like client.

use crate::support::process::{mage, serve_on, start_listening};
use crate::support::{post_graphql, register_at};
use mage_domain::testing::{TestDb, TestRedis};
use serde_json::json;

fn one_line_error(out: &std::process::Output, names: &str) {
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let first = stderr.lines().next().unwrap_or_default();
    assert!(first.contains(names), "first line should name {names}: {stderr}");
    assert!(!stderr.contains("panicked") && !stderr.contains("backtrace"), "{stderr}");
}

#[test]
fn a_missing_setting_is_one_line_naming_it() {
    let out = mage().arg("migrate").output().expect("run");
    one_line_error(&out, "DATABASE_URL");
    assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1);

    let out = mage()
        .args(["serve"])
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/none")
        .env("REDIS_URL", "redis://127.0.0.1:1")
        .output()
        .expect("run");
    one_line_error(&out, "MAGE_JWT_SECRET");

    let out = mage()
        .args(["serve"])
        .env("DATABASE_URL", "mysql://nope")
        .env("REDIS_URL", "redis://127.0.0.1:1")
        .env("MAGE_JWT_SECRET", "a-secret-long-enough-for-hs256-0123456789")
        .output()
        .expect("run");
    one_line_error(&out, "DATABASE_URL");
}

#[test]
fn a_malformed_setting_names_it() {
    let out = mage().args(["serve"]).env("MAGE_ADDR", "not an address").output().expect("run");
    one_line_error(&out, "MAGE_ADDR");
    let out = mage().args(["serve"]).env("MAGE_SIGNUP_CREDITS", "-4").output().expect("run");
    one_line_error(&out, "MAGE_SIGNUP_CREDITS");
}

#[test]
fn help_documents_every_command_and_setting() {
    let out = mage().arg("--help").output().expect("run");
    let help = String::from_utf8_lossy(&out.stdout);
    for cmd in ["serve", "work", "dev", "migrate", "print-schema", "user"] {
        assert!(help.contains(cmd), "{cmd} missing from --help: {help}");
    }
    // `dev` takes every setting of `serve` and of `work`.
    let out = mage().args(["dev", "--help"]).output().expect("run");
    let help = String::from_utf8_lossy(&out.stdout);
    // Every setting the README documents.
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README");
    let documented: Vec<&str> = readme
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .filter(|v| v.starts_with("MAGE_") || v.ends_with("_URL"))
        .filter(|v| {
            !matches!(*v, "MAGE_QUEUES" | "MAGE_METRICS_ADDR" | "MAGE_LOG" | "MAGE_SYNTHETIC_SLOWDOWN")
        })
        .collect();
    assert!(documented.len() >= 15, "README's settings table not found: {documented:?}");
    for var in documented {
        assert!(help.contains(var), "{var} missing from dev --help: {help}");
    }
}

#[test]
fn print_schema_prints_the_committed_sdl() {
    let out = mage().arg("print-schema").output().expect("run");
    assert!(out.status.success());
    let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/schema.graphql"))
        .expect("schema.graphql");
    assert_eq!(String::from_utf8_lossy(&out.stdout), committed);
}

#[tokio::test(flavor = "multi_thread")]
async fn mage_serve_migrates_serves_and_promotes() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    // An empty database: `serve` applies the migrations itself.
    {
        let mut admin = mage_domain::db::connect(db.url()).await.expect("connect");
        use diesel_async::RunQueryDsl;
        for sql in ["DROP SCHEMA public CASCADE", "CREATE SCHEMA public"] {
            diesel::sql_query(sql).execute(&mut admin).await.expect("empty the database");
        }
    }
    let mut serve = serve_on(&db, &redis);
    serve.env("MAGE_SIGNUP_CREDITS", "250");
    let (child, port) = start_listening(serve).await;
    let http = reqwest::Client::new();
    let gql = format!("http://127.0.0.1:{port}/graphql");
    let (token, _) = register_at(&http, &gql, "cli@example.com").await;
    let me = post_graphql(&http, &gql, "{ me { role credits { balance } } }", json!({}), Some(&token)).await;
    assert_eq!(me["data"]["me"], json!({ "role": "USER", "credits": { "balance": 250 } }));

    let out = mage()
        .args(["user", "promote", "CLI@example.com", "--role", "admin"])
        .env("DATABASE_URL", db.url())
        .output()
        .expect("promote");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let me = post_graphql(&http, &gql, "{ me { role } }", json!({}), Some(&token)).await;
    assert_eq!(me["data"]["me"]["role"], "ADMIN");

    let out = mage()
        .args(["user", "promote", "ghost@example.com"])
        .env("DATABASE_URL", db.url())
        .output()
        .expect("run");
    assert!(!out.status.success());
    drop(child);
}
