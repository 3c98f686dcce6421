//! Daily business figures: one `daily_stats` row per day of a time zone,
//! computed from the source tables in one statement and upserted, so
//! computing a day again (a late event, a backfill, a second replica) only
//! rewrites the same figures.

use chrono::{DateTime, NaiveDate, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Date, Text};
use diesel_async::RunQueryDsl;

use crate::Result;
use crate::db::Connection;
use crate::schema::daily_stats;

/// The time zone the days are cut in, for every command that needs it
/// (`serve` for today's figures, `work` for the nightly tick, `stats
/// backfill`).
#[derive(Debug, Clone, clap::Args)]
pub struct StatsArgs {
    /// Time zone the statistics' days are cut in (IANA name)
    #[arg(long, env = "MAGE_STATS_TZ", default_value = "UTC")]
    pub stats_tz: String,
}

impl StatsArgs {
    pub fn time_zone(&self) -> String {
        self.stats_tz.trim().to_owned()
    }
}

/// A day's figures as stored.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, serde::Serialize, serde::Deserialize)]
#[diesel(table_name = daily_stats, check_for_backend(diesel::pg::Pg))]
pub struct DailyStats {
    pub day: NaiveDate,
    pub new_users: i64,
    pub active_users: i64,
    pub orders_paid: i64,
    /// `{currency: cents}` of the orders paid that day.
    pub revenue: serde_json::Value,
    pub credits_purchased: i64,
    pub credits_granted: i64,
    pub credits_captured: i64,
    pub credits_released: i64,
    pub credits_clawed_back: i64,
    pub credits_expired: i64,
    pub generations_created: i64,
    pub generations_succeeded: i64,
    pub generations_failed: i64,
    pub generations_canceled: i64,
    pub queue_wait_p50_seconds: Option<f64>,
    pub queue_wait_p95_seconds: Option<f64>,
    pub render_p50_seconds: Option<f64>,
    pub render_p95_seconds: Option<f64>,
    pub render_seconds_total: f64,
    /// `[{model, created, succeeded, failed, canceled}]`.
    pub by_model: serde_json::Value,
    pub time_zone: String,
    pub computed_at: DateTime<Utc>,
}

/// The whole day in `$2`'s time zone: `[lo, hi)`. Generations are counted
/// as created on the day they were created and as succeeded / failed /
/// canceled on the day they ended; waits by the day they started.
const COMPUTE: &str = r"
WITH b AS (
    SELECT ($1::date)::timestamp AT TIME ZONE $2 AS lo, ($1::date + 1)::timestamp AT TIME ZONE $2 AS hi
),
u AS (SELECT count(*) AS n FROM users, b WHERE created_at >= lo AND created_at < hi),
g AS (
    SELECT count(*) FILTER (WHERE created_at >= lo AND created_at < hi) AS created,
           count(DISTINCT user_id) FILTER (WHERE created_at >= lo AND created_at < hi) AS active,
           count(*) FILTER (WHERE status = 'succeeded' AND finished_at >= lo AND finished_at < hi) AS succeeded,
           count(*) FILTER (WHERE status = 'failed' AND finished_at >= lo AND finished_at < hi) AS failed,
           count(*) FILTER (WHERE status = 'canceled' AND finished_at >= lo AND finished_at < hi) AS canceled
    FROM generations, b
    WHERE (created_at >= lo AND created_at < hi) OR (finished_at >= lo AND finished_at < hi)
),
per_model AS (
    SELECT model,
           count(*) FILTER (WHERE created_at >= lo AND created_at < hi) AS created,
           count(*) FILTER (WHERE status = 'succeeded' AND finished_at >= lo AND finished_at < hi) AS succeeded,
           count(*) FILTER (WHERE status = 'failed' AND finished_at >= lo AND finished_at < hi) AS failed,
           count(*) FILTER (WHERE status = 'canceled' AND finished_at >= lo AND finished_at < hi) AS canceled
    FROM generations, b
    WHERE (created_at >= lo AND created_at < hi) OR (finished_at >= lo AND finished_at < hi)
    GROUP BY model
),
m AS (
    SELECT COALESCE(jsonb_agg(jsonb_build_object('model', model, 'created', created, 'succeeded', succeeded,
                                                 'failed', failed, 'canceled', canceled) ORDER BY model),
                    '[]'::jsonb) AS by_model
    FROM per_model
),
w AS (
    SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM started_at - queued_at)) AS p50,
           percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM started_at - queued_at)) AS p95
    FROM generations, b WHERE started_at >= lo AND started_at < hi
),
r AS (
    SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - started_at)) AS p50,
           percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - started_at)) AS p95,
           COALESCE(sum(extract(epoch FROM finished_at - started_at)), 0) AS total
    FROM generations, b
    WHERE status = 'succeeded' AND started_at IS NOT NULL AND finished_at >= lo AND finished_at < hi
),
o AS (
    SELECT COALESCE(sum(n), 0) AS n, COALESCE(jsonb_object_agg(currency, cents), '{}'::jsonb) AS revenue
    FROM (
        SELECT currency, count(*) AS n, sum(total_cents) AS cents
        FROM orders, b WHERE paid_at >= lo AND paid_at < hi GROUP BY currency
    ) per_currency
),
c AS (
    SELECT COALESCE(sum(amount) FILTER (WHERE kind = 'purchase'), 0) AS purchased,
           COALESCE(sum(amount) FILTER (WHERE kind = 'grant'), 0) AS granted,
           COALESCE(-sum(amount) FILTER (WHERE kind = 'capture'), 0) AS captured,
           COALESCE(-sum(held_delta) FILTER (WHERE kind = 'release'), 0) AS released,
           COALESCE(-sum(amount) FILTER (WHERE kind = 'clawback'), 0) AS clawed_back,
           COALESCE(-sum(amount) FILTER (WHERE kind = 'expire'), 0) AS expired
    FROM credit_entries, b WHERE created_at >= lo AND created_at < hi
)
INSERT INTO daily_stats (day, new_users, active_users, orders_paid, revenue, credits_purchased, credits_granted,
    credits_captured, credits_released, credits_clawed_back, credits_expired, generations_created,
    generations_succeeded, generations_failed, generations_canceled, queue_wait_p50_seconds,
    queue_wait_p95_seconds, render_p50_seconds, render_p95_seconds, render_seconds_total, by_model, time_zone,
    computed_at)
SELECT $1::date, u.n, g.active, o.n::bigint, o.revenue, c.purchased::bigint, c.granted::bigint,
       c.captured::bigint, c.released::bigint, c.clawed_back::bigint, c.expired::bigint, g.created, g.succeeded,
       g.failed, g.canceled, w.p50, w.p95, r.p50, r.p95, r.total::float8, m.by_model, $2, now()
FROM u, g, m, w, r, o, c
ON CONFLICT (day) DO UPDATE SET
    new_users = EXCLUDED.new_users, active_users = EXCLUDED.active_users, orders_paid = EXCLUDED.orders_paid,
    revenue = EXCLUDED.revenue, credits_purchased = EXCLUDED.credits_purchased,
    credits_granted = EXCLUDED.credits_granted, credits_captured = EXCLUDED.credits_captured,
    credits_released = EXCLUDED.credits_released, credits_clawed_back = EXCLUDED.credits_clawed_back,
    credits_expired = EXCLUDED.credits_expired, generations_created = EXCLUDED.generations_created,
    generations_succeeded = EXCLUDED.generations_succeeded, generations_failed = EXCLUDED.generations_failed,
    generations_canceled = EXCLUDED.generations_canceled, queue_wait_p50_seconds = EXCLUDED.queue_wait_p50_seconds,
    queue_wait_p95_seconds = EXCLUDED.queue_wait_p95_seconds, render_p50_seconds = EXCLUDED.render_p50_seconds,
    render_p95_seconds = EXCLUDED.render_p95_seconds, render_seconds_total = EXCLUDED.render_seconds_total,
    by_model = EXCLUDED.by_model, time_zone = EXCLUDED.time_zone, computed_at = EXCLUDED.computed_at
";

/// Computes `day` (in the IANA time zone `tz`) and stores it.
pub async fn compute_day(conn: &mut Connection, day: NaiveDate, tz: &str) -> Result<DailyStats> {
    diesel::sql_query(COMPUTE).bind::<Date, _>(day).bind::<Text, _>(tz).execute(conn).await?;
    Ok(daily_stats::table.find(day).select(DailyStats::as_select()).first(conn).await?)
}

/// Stored days in `[from, to]`, oldest first.
pub async fn range(conn: &mut Connection, from: NaiveDate, to: NaiveDate) -> Result<Vec<DailyStats>> {
    Ok(daily_stats::table
        .filter(daily_stats::day.ge(from))
        .filter(daily_stats::day.le(to))
        .order(daily_stats::day.asc())
        .select(DailyStats::as_select())
        .load(conn)
        .await?)
}

/// Checks a time zone name against PostgreSQL's list.
pub async fn valid_time_zone(conn: &mut Connection, tz: &str) -> Result<bool> {
    #[derive(QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let n: N = diesel::sql_query("SELECT count(*) AS n FROM pg_timezone_names WHERE name = $1")
        .bind::<Text, _>(tz)
        .get_result(conn)
        .await?;
    Ok(n.n > 0)
}

/// How long a day's figures stay in the Redis cache of the read path (a
/// recompute removes them at once).
const CACHE_TTL_SECONDS: u64 = 3600;

fn cache_key(redis: &crate::kv::Redis, day: NaiveDate) -> String {
    redis.key(&format!("stats:day:{day}"))
}

/// Computes a day and drops its cached copy.
pub async fn recompute(
    conn: &mut Connection,
    redis: &crate::kv::Redis,
    day: NaiveDate,
    tz: &str,
) -> Result<DailyStats> {
    let s = compute_day(conn, day, tz).await?;
    let mut r = redis.conn().await?;
    let _: i64 = redis::cmd("DEL").arg(cache_key(redis, day)).query_async(&mut r).await?;
    Ok(s)
}

/// `range` through the Redis cache: days found there are not read from
/// PostgreSQL (the dashboard asks for the same weeks over and over).
pub async fn cached_range(
    pool: &crate::db::DbPool,
    redis: &crate::kv::Redis,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<Vec<DailyStats>> {
    let days: Vec<NaiveDate> = from.iter_days().take_while(|d| *d <= to).collect();
    let mut r = redis.conn().await?;
    let keys: Vec<String> = days.iter().map(|d| cache_key(redis, *d)).collect();
    let cached: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query_async(&mut r).await?;
    let hits: Vec<DailyStats> =
        cached.iter().flatten().filter_map(|json| serde_json::from_str(json).ok()).collect();
    if hits.len() == days.len() {
        return Ok(hits);
    }
    let mut conn = pool.get().await?;
    let rows = range(&mut conn, from, to).await?;
    let mut pipe = redis::pipe();
    for s in &rows {
        if let Ok(json) = serde_json::to_string(s) {
            pipe.cmd("SET").arg(cache_key(redis, s.day)).arg(json).arg("EX").arg(CACHE_TTL_SECONDS).ignore();
        }
    }
    let () = pipe.query_async(&mut r).await?;
    Ok(rows)
}

/// How often the current day is computed again on the read path: the
/// admin console shows today's figures at most this old.
const TODAY_EVERY_SECONDS: u64 = 10;

/// `cached_range`, with the current day (in `tz`) computed so far when the
/// range reaches it. It is stored like any other day (the nightly tick
/// computes it again once it is over), at most once per
/// `TODAY_EVERY_SECONDS` over all instances.
pub async fn range_with_today(
    pool: &crate::db::DbPool,
    redis: &crate::kv::Redis,
    from: NaiveDate,
    to: NaiveDate,
    tz: &str,
) -> Result<Vec<DailyStats>> {
    let mut conn = pool.get().await?;
    let today = day_of(&mut conn, Utc::now(), tz).await?;
    if (from..=to).contains(&today) {
        let mut r = redis.conn().await?;
        let fresh: Option<String> = redis::cmd("SET")
            .arg(redis.key("stats:today:computing"))
            .arg(1)
            .arg("NX")
            .arg("EX")
            .arg(TODAY_EVERY_SECONDS)
            .query_async(&mut r)
            .await?;
        if fresh.is_some() {
            recompute(&mut conn, redis, today, tz).await?;
        }
    }
    drop(conn);
    cached_range(pool, redis, from, to).await
}

/// The day before the one `at` falls on, in time zone `tz`: what a tick
/// computes.
pub async fn previous_day(conn: &mut Connection, at: DateTime<Utc>, tz: &str) -> Result<NaiveDate> {
    let day = day_of(conn, at, tz).await?;
    Ok(day.pred_opt().unwrap_or(day))
}

/// The day `at` falls on in time zone `tz` (PostgreSQL's zone rules).
async fn day_of(conn: &mut Connection, at: DateTime<Utc>, tz: &str) -> Result<NaiveDate> {
    #[derive(QueryableByName)]
    struct D {
        #[diesel(sql_type = Date)]
        day: NaiveDate,
    }
    let d: D = diesel::sql_query("SELECT (($1)::timestamptz AT TIME ZONE $2)::date AS day")
        .bind::<diesel::sql_types::Timestamptz, _>(at)
        .bind::<Text, _>(tz)
        .get_result(conn)
        .await?;
    Ok(d.day)
}
