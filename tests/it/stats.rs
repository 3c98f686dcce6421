//! Daily statistics: two seeded days computed by `mage stats backfill` and
//! read through the admin `dailyStats` query, figure by figure.

use crate::support::process::Child;
use crate::support::{TestApp, code};
use serde_json::{Value, json};

const QUERY: &str = "query($f: Date!, $t: Date!) { dailyStats(from: $f, to: $t) {
    day newUsers activeUsers ordersPaid revenue { currency cents }
    creditsPurchased creditsGranted creditsCaptured creditsReleased creditsClawedBack creditsExpired
    generationsCreated generationsSucceeded generationsFailed generationsCanceled
    queueWaitP50Seconds queueWaitP95Seconds renderP50Seconds renderP95Seconds renderSecondsTotal
    byModel { model created succeeded failed canceled } timeZone } }";

/// Two days of activity (2026-01-10 and -11, UTC), every end state, a
/// generation that crosses midnight, orders in two currencies, every kind
/// of credit movement.
const SEED: &str = "
INSERT INTO users (id, email, password_hash, created_at) VALUES
  ('00000000-0000-0000-0000-0000000000a1', 's1@example.com', 'x', '2026-01-10 10:00+00'),
  ('00000000-0000-0000-0000-0000000000a2', 's2@example.com', 'x', '2026-01-10 23:30+00'),
  ('00000000-0000-0000-0000-0000000000a3', 's3@example.com', 'x', '2026-01-11 01:00+00');
INSERT INTO credit_accounts (user_id) SELECT id FROM users WHERE email LIKE 's_@example.com';
INSERT INTO orders (user_id, status, total_cents, currency, credits, paid_at) VALUES
  ('00000000-0000-0000-0000-0000000000a1', 'paid', 500, 'usd', 100, '2026-01-10 12:00+00'),
  ('00000000-0000-0000-0000-0000000000a2', 'refunded', 1000, 'eur', 200, '2026-01-10 13:00+00'),
  ('00000000-0000-0000-0000-0000000000a1', 'paid', 2000, 'usd', 500, '2026-01-11 09:00+00'),
  ('00000000-0000-0000-0000-0000000000a1', 'pending', 500, 'usd', 100, NULL);
INSERT INTO credit_entries (user_id, kind, amount, held_delta, balance_after, held_after, idempotency_key, created_at) VALUES
  ('00000000-0000-0000-0000-0000000000a1', 'purchase', 100, 0, 0, 0, 'k1', '2026-01-10 12:00+00'),
  ('00000000-0000-0000-0000-0000000000a2', 'grant', 50, 0, 0, 0, 'k2', '2026-01-10 23:30+00'),
  ('00000000-0000-0000-0000-0000000000a1', 'hold', 0, 50, 0, 0, 'k3', '2026-01-10 10:00+00'),
  ('00000000-0000-0000-0000-0000000000a1', 'capture', -20, -20, 0, 0, 'k4', '2026-01-10 10:01+00'),
  ('00000000-0000-0000-0000-0000000000a1', 'release', 0, -30, 0, 0, 'k5', '2026-01-10 12:01+00'),
  ('00000000-0000-0000-0000-0000000000a1', 'clawback', -10, 0, 0, 0, 'k6', '2026-01-10 14:00+00'),
  ('00000000-0000-0000-0000-0000000000a2', 'expire', -5, 0, 0, 0, 'k7', '2026-01-10 23:59+00'),
  ('00000000-0000-0000-0000-0000000000a1', 'purchase', 500, 0, 0, 0, 'k8', '2026-01-11 09:00+00'),
  ('00000000-0000-0000-0000-0000000000a1', 'capture', -7, -7, 0, 0, 'k9', '2026-01-11 10:00+00');
INSERT INTO generations (user_id, model, kind, prompt, resolution, status, cost, created_at, queued_at, started_at, finished_at, backend) VALUES
  ('00000000-0000-0000-0000-0000000000a1', 'synth-video', 'video', 'g1', '480p', 'succeeded', 2,
     '2026-01-10 10:00+00', '2026-01-10 10:00+00', '2026-01-10 10:00:10+00', '2026-01-10 10:01:10+00', 'synthetic'),
  ('00000000-0000-0000-0000-0000000000a1', 'synth-video', 'video', 'g2', '480p', 'succeeded', 2,
     '2026-01-10 11:00+00', '2026-01-10 11:00+00', '2026-01-10 11:00:30+00', '2026-01-10 11:02:30+00', 'synthetic'),
  ('00000000-0000-0000-0000-0000000000a2', 'synth-image', 'image', 'g3', '480p', 'failed', 1,
     '2026-01-10 12:00+00', '2026-01-10 12:00+00', '2026-01-10 12:00:20+00', '2026-01-10 12:00:50+00', 'synthetic'),
  ('00000000-0000-0000-0000-0000000000a2', 'synth-image', 'image', 'g4', '480p', 'canceled', 1,
     '2026-01-10 13:00+00', '2026-01-10 13:00+00', NULL, '2026-01-10 13:05+00', 'synthetic'),
  ('00000000-0000-0000-0000-0000000000a1', 'synth-video', 'video', 'g5', '480p', 'succeeded', 2,
     '2026-01-10 23:50+00', '2026-01-11 00:00+00', '2026-01-11 00:00:50+00', '2026-01-11 00:02:50+00', 'synthetic'),
  ('00000000-0000-0000-0000-0000000000a3', 'synth-video', 'video', 'g6', '480p', 'queued', 2,
     '2026-01-11 08:00+00', '2026-01-11 08:00+00', NULL, NULL, 'synthetic');
";

fn backfill(app: &TestApp) {
    let out = app
        .mage("stats")
        .args(["backfill", "--from", "2026-01-10", "--to", "2026-01-11"])
        .output()
        .expect("mage stats backfill");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

async fn days(app: &TestApp, token: &str) -> Value {
    let res = app.gql(QUERY, json!({"f": "2026-01-09", "t": "2026-01-12"}), Some(token)).await;
    assert!(res.get("errors").is_none(), "{res}");
    res["data"]["dailyStats"].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_seeded_days_come_out_exactly_and_computing_again_changes_nothing() {
    let mut app = TestApp::start().await;
    let (admin, _) = app.register("stats-admin@example.com").await;
    mage_domain::users::set_role(&app.pool, "stats-admin@example.com", mage_domain::users::Role::Admin)
        .await
        .expect("promote");
    // The admin registered today, far from the seeded days.
    app.sql(SEED).await;
    app.ledger_written_by_hand();
    backfill(&app);
    let first = days(&app, &admin).await;
    assert_eq!(
        first,
        json!([
            {
                "day": "2026-01-10", "newUsers": 2, "activeUsers": 2, "ordersPaid": 2,
                "revenue": [{"currency": "EUR", "cents": 1000}, {"currency": "USD", "cents": 500}],
                "creditsPurchased": 100, "creditsGranted": 50, "creditsCaptured": 20, "creditsReleased": 30,
                "creditsClawedBack": 10, "creditsExpired": 5,
                "generationsCreated": 5, "generationsSucceeded": 2, "generationsFailed": 1, "generationsCanceled": 1,
                "queueWaitP50Seconds": 20.0, "queueWaitP95Seconds": 29.0,
                "renderP50Seconds": 90.0, "renderP95Seconds": 117.0, "renderSecondsTotal": 180.0,
                "byModel": [
                    {"model": "synth-image", "created": 2, "succeeded": 0, "failed": 1, "canceled": 1},
                    {"model": "synth-video", "created": 3, "succeeded": 2, "failed": 0, "canceled": 0}
                ],
                "timeZone": "UTC"
            },
            {
                "day": "2026-01-11", "newUsers": 1, "activeUsers": 1, "ordersPaid": 1,
                "revenue": [{"currency": "USD", "cents": 2000}],
                "creditsPurchased": 500, "creditsGranted": 0, "creditsCaptured": 7, "creditsReleased": 0,
                "creditsClawedBack": 0, "creditsExpired": 0,
                "generationsCreated": 1, "generationsSucceeded": 1, "generationsFailed": 0, "generationsCanceled": 0,
                "queueWaitP50Seconds": 50.0, "queueWaitP95Seconds": 50.0,
                "renderP50Seconds": 120.0, "renderP95Seconds": 120.0, "renderSecondsTotal": 120.0,
                "byModel": [{"model": "synth-video", "created": 1, "succeeded": 1, "failed": 0, "canceled": 0}],
                "timeZone": "UTC"
            }
        ])
    );
    backfill(&app);
    assert_eq!(days(&app, &admin).await, first, "computing the days again changes nothing");
    // A late change of the source (a generation of the 10th ends) shows
    // after the next computation, past the read cache.
    app.sql(
        "UPDATE generations SET status = 'failed', finished_at = '2026-01-10 20:00+00' WHERE prompt = 'g6'",
    )
    .await;
    backfill(&app);
    let again = days(&app, &admin).await;
    assert_eq!(again[0]["generationsFailed"], 2, "{again}");
    assert_eq!(app.count("daily_stats").await, 2);

    let (user, _) = app.register("not-admin@example.com").await;
    let res = app.gql(QUERY, json!({"f": "2026-01-09", "t": "2026-01-12"}), Some(&user)).await;
    assert_eq!(code(&res), "FORBIDDEN", "{res}");
    assert!(res["data"].is_null(), "no data for a non-admin: {res}");
    let res = app.gql(QUERY, json!({"f": "2026-01-12", "t": "2026-01-09"}), Some(&admin)).await;
    assert_eq!(code(&res), "BAD_USER_INPUT", "{res}");
    let res = app.gql(QUERY, json!({"f": "2026-13-01", "t": "2026-01-09"}), Some(&admin)).await;
    assert_eq!(code(&res), "BAD_USER_INPUT", "{res}");
}

/// Two `mage work` processes run the stats cron (every second here): each
/// tick is computed by exactly one of them.
#[tokio::test(flavor = "multi_thread")]
async fn two_workers_compute_each_tick_once() {
    let app = TestApp::start().await;
    let redis = app.redis.redis();
    let work =
        || Child::spawn(app.mage("work").env("MAGE_QUEUES", "stats").env("MAGE_STATS_CRON", "* * * * * *"));
    let (a, b) = (work(), work());
    let mut conn = app.queues.connection();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let ticks: i64 =
            redis::cmd("HLEN").arg(redis.key("stats:ticks")).query_async(&mut conn).await.expect("HLEN");
        if ticks >= 4 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the cron did not tick: {ticks} ticks");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    drop((a, b));
    let ticks: std::collections::HashMap<String, String> =
        redis::cmd("HGETALL").arg(redis.key("stats:ticks")).query_async(&mut conn).await.expect("HGETALL");
    let computations: i64 =
        redis::cmd("GET").arg(redis.key("stats:computations")).query_async(&mut conn).await.expect("GET");
    assert_eq!(computations, ticks.len() as i64, "one computation per tick: {ticks:?}");
    let workers: std::collections::HashSet<&String> = ticks.values().collect();
    assert!(!workers.is_empty(), "{ticks:?}");
    // Yesterday (UTC) is in the table.
    let yesterday = (chrono::Utc::now() - chrono::Duration::days(1)).date_naive();
    assert_eq!(app.count("daily_stats").await, 1);
    use diesel_async::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct D {
        #[diesel(sql_type = diesel::sql_types::Date)]
        day: chrono::NaiveDate,
    }
    let d: D = diesel::sql_query("SELECT day FROM daily_stats")
        .get_result(&mut *app.conn().await)
        .await
        .expect("day");
    assert_eq!(d.day, yesterday);
}
