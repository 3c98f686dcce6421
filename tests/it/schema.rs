//! Generated files that must not go stale: schema.graphql (printed from the
//! code) and domain/src/schema.rs (printed by diesel from the migrations).
//! Set MAGE_UPDATE_SNAPSHOTS=1 to rewrite them instead of failing.

use std::path::Path;
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn check(path: &Path, fresh: &str, how: &str) {
    let current = std::fs::read_to_string(path).unwrap_or_default();
    if current == fresh {
        return;
    }
    if std::env::var_os("MAGE_UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(path, fresh).expect("write snapshot");
        return;
    }
    panic!("{} is stale: {how} (or run the tests with MAGE_UPDATE_SNAPSHOTS=1)", path.display());
}

#[test]
fn schema_graphql_is_printed_from_the_code() {
    let sdl = mage_api::build_schema().sdl();
    check(&root().join("schema.graphql"), &sdl, "run `cargo run -- print-schema > schema.graphql`");
}

#[tokio::test(flavor = "multi_thread")]
async fn domain_schema_rs_matches_the_migrations() {
    let db = mage_domain::testing::TestDb::new().await;
    let out = Command::new("diesel")
        .args(["print-schema", "--database-url", db.url()])
        .current_dir(root())
        .output()
        .expect("the diesel CLI is needed: scripts/test installs it (cargo install diesel_cli --no-default-features --features postgres)");
    assert!(out.status.success(), "diesel print-schema failed: {}", String::from_utf8_lossy(&out.stderr));
    let fresh = String::from_utf8(out.stdout).expect("utf-8");
    check(
        &root().join("domain/src/schema.rs"),
        &fresh,
        "run `diesel print-schema --database-url <a migrated database> > domain/src/schema.rs`",
    );
}
