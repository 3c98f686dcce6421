//! What the API reads: one generation, a user's page, queue positions,
//! ETAs and the queue's figures.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Double, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use super::Status;
use crate::db::Connection;
use crate::rows::Generation;
use crate::schema::generations;
use crate::{Error, Result};

pub async fn find(conn: &mut Connection, id: Uuid) -> Result<Option<Generation>> {
    Ok(generations::table.find(id).select(Generation::as_select()).first(conn).await.optional()?)
}

/// The caller's generation; another user's, or a deleted one, is reported
/// as missing, so ids cannot be probed.
pub async fn find_own(conn: &mut Connection, user_id: Uuid, id: Uuid) -> Result<Generation> {
    generations::table
        .find(id)
        .filter(generations::user_id.eq(user_id))
        .filter(generations::deleted_at.is_null())
        .select(Generation::as_select())
        .first(conn)
        .await
        .optional()?
        .ok_or(Error::NotFound("generation"))
}

/// [`find_own`], its row locked for the caller's transaction: a deletion
/// and a retry of one generation take turns.
pub async fn lock_own(conn: &mut Connection, user_id: Uuid, id: Uuid) -> Result<Generation> {
    generations::table
        .find(id)
        .filter(generations::user_id.eq(user_id))
        .filter(generations::deleted_at.is_null())
        .for_update()
        .select(Generation::as_select())
        .first(conn)
        .await
        .optional()?
        .ok_or(Error::NotFound("generation"))
}

/// A page of the user's generations (deleted ones left out), newest first,
/// after the `(created_at, id)` cursor.
pub async fn list(
    conn: &mut Connection,
    user_id: Uuid,
    status: Option<Status>,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<Generation>> {
    let mut q = generations::table
        .filter(generations::user_id.eq(user_id))
        .filter(generations::deleted_at.is_null())
        .select(Generation::as_select())
        .order((generations::created_at.desc(), generations::id.desc()))
        .limit(limit)
        .into_boxed();
    if let Some(s) = status {
        q = q.filter(generations::status.eq(s.as_str()));
    }
    if let Some((at, id)) = after {
        q = q.filter(
            generations::created_at.lt(at).or(generations::created_at.eq(at).and(generations::id.lt(id))),
        );
    }
    Ok(q.load(conn).await?)
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// 1-based place in its backend's render queue: QUEUED generations of the
/// same backend ahead by `(queued_at, id)`, an index range scan of
/// `generations_queue_idx`.
/// Workers take jobs first in, first out, so this is the order they start in.
pub async fn queue_position(conn: &mut Connection, g: &Generation) -> Result<Option<i64>> {
    if g.status() != Status::Queued {
        return Ok(None);
    }
    let c: Count = diesel::sql_query(QUEUE_POSITION_SQL)
        .bind::<diesel::sql_types::Text, _>(g.backend)
        .bind::<Timestamptz, _>(g.queued_at)
        .bind::<SqlUuid, _>(g.id)
        .get_result(conn)
        .await?;
    Ok(Some(c.n + 1))
}

#[derive(QueryableByName)]
struct Position {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
    #[diesel(sql_type = BigInt)]
    position: i64,
}

/// The queue positions of those of `ids` that are QUEUED, in one statement:
/// one ordered pass over the queue up to the last of them (rather than one
/// count per generation), which is what a live instance runs each time the
/// queue moves to refresh every position its subscribers watch.
pub async fn queue_positions(conn: &mut Connection, ids: &[Uuid]) -> Result<Vec<(Uuid, i64)>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<Position> = diesel::sql_query(
        "SELECT id, position FROM (
             SELECT id, row_number() OVER (PARTITION BY backend ORDER BY queued_at, id) AS position
             FROM generations
             WHERE status = 'queued'
               AND backend IN (SELECT backend FROM generations WHERE id = ANY($1))
               AND queued_at <= (SELECT max(queued_at) FROM generations WHERE id = ANY($1))
         ) q WHERE id = ANY($1)",
    )
    .bind::<diesel::sql_types::Array<SqlUuid>, _>(ids)
    .load(conn)
    .await?;
    Ok(rows.into_iter().map(|r| (r.id, r.position)).collect())
}

/// These generations, in no particular order (missing ids are left out).
pub async fn find_many(conn: &mut Connection, ids: &[Uuid]) -> Result<Vec<Generation>> {
    Ok(generations::table
        .filter(generations::id.eq_any(ids))
        .select(Generation::as_select())
        .load(conn)
        .await?)
}

/// The user's QUEUED generations.
pub async fn queued_of(conn: &mut Connection, user_id: Uuid) -> Result<Vec<Generation>> {
    Ok(generations::table
        .filter(generations::user_id.eq(user_id))
        .filter(generations::status.eq(Status::Queued.as_str()))
        .select(Generation::as_select())
        .load(conn)
        .await?)
}

pub const QUEUE_POSITION_SQL: &str = "SELECT count(*) AS n FROM generations WHERE status = 'queued' AND backend = $1 AND (queued_at, id) < ($2, $3)";

/// The same query with literals, for tests that check its plan.
pub const QUEUE_POSITION_SQL_EXPLAIN: &str = "EXPLAIN SELECT count(*) AS n FROM generations \
     WHERE status = 'queued' AND backend = 'synthetic' \
     AND (queued_at, id) < (now(), '00000000-0000-0000-0000-000000000000'::uuid)";

#[derive(QueryableByName)]
struct Avg {
    #[diesel(sql_type = Nullable<Double>)]
    seconds: Option<f64>,
}

/// Mean render-to-finish time of the model's last 20 successes, or `None`
/// when it has none yet.
pub async fn recent_render_seconds(conn: &mut Connection, model: &str) -> Result<Option<f64>> {
    let a: Avg = diesel::sql_query(
        "SELECT avg(extract(epoch FROM finished_at - started_at))::float8 AS seconds FROM (
             SELECT started_at, finished_at FROM generations
             WHERE model = $1 AND status = 'succeeded' AND started_at IS NOT NULL
             ORDER BY finished_at DESC LIMIT 20) recent",
    )
    .bind::<Text, _>(model)
    .get_result(conn)
    .await?;
    Ok(a.seconds)
}

/// Seconds until the generation is likely done: the jobs ahead of it spread
/// over the live render slots, plus its own render.
pub fn eta_seconds(g: &Generation, position: Option<i64>, render_seconds: f64, slots: u32) -> Option<i64> {
    let slots = f64::from(slots.max(1));
    let secs = match g.status() {
        Status::Queued => {
            let ahead = (position.unwrap_or(1) - 1) as f64;
            ((ahead / slots).floor() + 1.0) * render_seconds
        }
        Status::Rendering | Status::Transcoding => render_seconds * (1.0 - f64::from(g.progress) / 100.0),
        _ => return None,
    };
    Some(secs.ceil().max(1.0) as i64)
}

/// A guess for a model with no history: rendering runs about as long as the
/// clip, plus start-up and transcode.
pub fn default_render_seconds(g: &Generation) -> f64 {
    5.0 + 2.0 * f64::from(g.duration_seconds.unwrap_or(1))
}

#[derive(Debug, Clone, Default)]
pub struct QueueStats {
    pub depth: i64,
    pub running: i64,
    pub average_wait_seconds: Option<f64>,
}

#[derive(QueryableByName)]
struct QueueRow {
    #[diesel(sql_type = BigInt)]
    depth: i64,
    #[diesel(sql_type = BigInt)]
    running: i64,
    #[diesel(sql_type = Nullable<Double>)]
    wait: Option<f64>,
}

/// Depth and running count, and the mean wait of generations that started
/// in the last hour.
pub async fn queue_stats(conn: &mut Connection) -> Result<QueueStats> {
    let r: QueueRow = diesel::sql_query(
        "SELECT
           (SELECT count(*) FROM generations WHERE status = 'queued') AS depth,
           (SELECT count(*) FROM generations WHERE status IN ('rendering', 'transcoding')) AS running,
           (SELECT avg(extract(epoch FROM started_at - queued_at))::float8 FROM generations
             WHERE status <> 'queued' AND started_at > now() - interval '1 hour') AS wait",
    )
    .get_result(conn)
    .await?;
    Ok(QueueStats { depth: r.depth, running: r.running, average_wait_seconds: r.wait })
}
