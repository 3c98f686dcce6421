//! Generations: creation (price, hold, queue), the lifecycle state machine
//! and the queries the API serves.
//!
//! ```text
//! QUEUED ──▶ RENDERING ──▶ TRANSCODING ──▶ SUCCEEDED (capture)
//!    │           │               │
//!    └──────────▶┴───────────────┴──▶ FAILED / CANCELED (release)
//! ```
//!
//! Every transition is one guarded `UPDATE ... WHERE status IN (<from>)`, so
//! two workers (or a worker and a cancelling user) can never both move one
//! generation: the loser updates no row and learns the generation moved on.
//! A transition into a final state settles the generation's open holds in
//! the same transaction, through the ledger's idempotent capture / release,
//! so each hold is captured or released exactly once.
//!
//! Lock order (see `credits`): the generation row first, then the account.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Double, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, RunQueryDsl};
use tracing::Instrument;
use uuid::Uuid;

use crate::catalog::{self, GenerationInput, MediaKind, Quote};
use crate::core::Core;
use crate::db::Connection;
use crate::kv::Redis;
use crate::limits::{self, GenerationLimits};
use crate::models::{CreditHold, Generation};
use crate::queue::RenderJob;
use crate::schema::{credit_holds, generations};
use crate::{Error, Result, credits, events};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    Queued,
    Rendering,
    Transcoding,
    Succeeded,
    Failed,
    Canceled,
}

impl Status {
    pub const ALL: [Self; 6] =
        [Self::Queued, Self::Rendering, Self::Transcoding, Self::Succeeded, Self::Failed, Self::Canceled];
    pub const ACTIVE: [Self; 3] = [Self::Queued, Self::Rendering, Self::Transcoding];
    pub const RUNNING: [Self; 2] = [Self::Rendering, Self::Transcoding];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Rendering => "rendering",
            Self::Transcoding => "transcoding",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Canceled => "canceled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.as_str() == s)
    }

    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Canceled)
    }

    /// The one table of allowed moves.
    pub fn can_become(self, next: Self) -> bool {
        use Status::*;
        matches!(
            (self, next),
            (Queued, Rendering)
                | (Rendering, Queued)
                | (Rendering, Transcoding)
                | (Transcoding, Succeeded)
                | (Queued | Rendering | Transcoding, Failed | Canceled)
        )
    }
}

impl Generation {
    pub fn status(&self) -> Status {
        Status::parse(&self.status).unwrap_or(Status::Failed)
    }

    pub fn media_kind(&self) -> MediaKind {
        MediaKind::parse(&self.kind).unwrap_or(MediaKind::Video)
    }

    pub fn limit_member(&self) -> String {
        limits::member(self.id, self.idempotency_key.as_deref())
    }
}

/// The states a transition into `to` may start from, as stored.
fn sources(to: Status) -> Vec<&'static str> {
    Status::ALL.into_iter().filter(|s| s.can_become(to)).map(Status::as_str).collect()
}

/// The user-facing message of a generation that failed for a reason the user
/// cannot act on (details go to the logs).
pub const INTERNAL_FAILURE: &str = "Something went wrong on our side; your credits were not charged.";

/// What `createGeneration` needs besides its input.
#[derive(Clone)]
pub struct Services {
    pub core: Core,
    pub limits: GenerationLimits,
}

/// Handlers read the shared handles as `svc.pool`, `svc.queues`.
impl std::ops::Deref for Services {
    type Target = Core;
    fn deref(&self) -> &Core {
        &self.core
    }
}

/// Prices an input without creating anything, from the same model cache as
/// [`create`], so a quote is what a create right after it charges.
pub async fn quote(
    models: &catalog::ModelCache,
    conn: &mut Connection,
    input: &GenerationInput,
) -> Result<Quote> {
    catalog::price(models.model(conn, &input.model).await?, input)
}

pub const IDEMPOTENCY_KEY_MAX: usize = 200;

/// Creates a generation: validate, take rate-limit slots, then in one
/// transaction insert it QUEUED and HOLD its price; only after the commit,
/// enqueue the render. With an `idempotency_key`, a repeat (even a
/// concurrent one) returns the first generation and charges nothing more.
pub async fn create(
    svc: &Services,
    user_id: Uuid,
    input: &GenerationInput,
    idempotency_key: Option<&str>,
) -> Result<Generation> {
    let key = idempotency_key.map(str::trim).filter(|k| !k.is_empty());
    if let Some(k) = key
        && (k.len() > IDEMPOTENCY_KEY_MAX || k.chars().any(char::is_control))
    {
        return Err(Error::invalid(
            "idempotencyKey",
            format!("at most {IDEMPOTENCY_KEY_MAX} bytes without control characters"),
        ));
    }
    let mut conn = svc.pool.get().await?;
    let quote = quote(&svc.models, &mut conn, input).await?;
    if let Some(k) = key
        && let Some(first) = by_key(&mut conn, user_id, k).await?
    {
        return same_request(first, &quote);
    }

    let id = Uuid::now_v7();
    let member = limits::member(id, key);
    limits::reserve(&svc.redis, svc.limits, user_id, &member).await?;
    let created = insert_with_hold(&mut conn, id, user_id, &quote, key).await;
    let g = match created {
        Ok(g) => g,
        Err(e) => {
            let replay = match (&e, key) {
                (e, Some(k)) if e.is_unique_violation("generations_idempotency_key") => {
                    by_key(&mut conn, user_id, k).await?
                }
                _ => None,
            };
            if replay.is_none()
                && let Err(undo) = limits::undo(&svc.redis, user_id, &member).await
            {
                tracing::warn!(error = %undo, "could not give back a rate-limit slot");
            }
            return match replay {
                // A concurrent request with the same key won the insert; its
                // transaction rolled ours back whole, hold included.
                Some(first) => same_request(first, &quote),
                None => Err(e),
            };
        }
    };
    drop(conn);
    let span = tracing::info_span!("generation", generation_id = %g.id);
    enqueue_new(svc, g).instrument(span).await
}

/// After the commit: queue the render; without a job the generation would
/// wait for the sweeper while its credits sit held, so if the push fails it
/// fails now and the hold goes back (nothing half-done).
async fn enqueue_new(svc: &Services, g: Generation) -> Result<Generation> {
    if let Err(e) = svc.queues.push_render(&RenderJob { generation_id: g.id }).await {
        tracing::error!(error = %e, "could not enqueue the render job");
        let mut conn = svc.pool.get().await?;
        if let Some(failed) = fail(&mut conn, g.id, INTERNAL_FAILURE).await? {
            finished(svc, &failed).await;
        }
        return Err(e);
    }
    tracing::info!(model = %g.model, cost = g.cost, status = %g.status, "generation queued");
    crate::metrics::generation_created(&g.model);
    events::publish_created_logged(&svc.redis, &g).await;
    Ok(g)
}

fn same_request(first: Generation, quote: &Quote) -> Result<Generation> {
    let same = first.model == quote.model.id
        && first.prompt == quote.prompt
        && first.negative_prompt.as_deref() == quote.negative_prompt.as_deref()
        && first.resolution == quote.resolution.as_str()
        && first.duration_seconds == quote.duration_seconds
        && quote.seed.is_none_or(|s| first.seed == Some(s));
    if same {
        Ok(first)
    } else {
        Err(Error::Conflict("idempotencyKey was already used for a different generation".into()))
    }
}

async fn insert_with_hold(
    conn: &mut Connection,
    id: Uuid,
    user_id: Uuid,
    q: &Quote,
    key: Option<&str>,
) -> Result<Generation> {
    // Without a seed from the client, one is drawn here and stored, so the
    // render can be reproduced and a retry renders the same thing.
    let seed = q.seed.unwrap_or_else(|| i64::from(id.as_u128() as u32));
    let statement = CreateWithHold {
        id,
        user_id,
        model: &q.model.id,
        kind: q.model.kind.as_str(),
        prompt: &q.prompt,
        negative_prompt: q.negative_prompt.as_deref(),
        resolution: q.resolution.as_str(),
        duration_seconds: q.duration_seconds,
        seed,
        price: q.price,
        key,
        hold_kind: credits::EntryKind::Hold.as_str(),
        hold_key: hold_key(id, 1),
    };
    match statement.get_result::<Generation>(conn).await.optional()? {
        Some(g) => {
            crate::metrics::credits_moved(credits::EntryKind::Hold, 0, q.price);
            Ok(g)
        }
        // The guard kept the account as it was: say why.
        None => {
            let acc = credits::account(conn, user_id).await?;
            Err(Error::InsufficientCredits { required: q.price, available: acc.available() })
        }
    }
}

/// `createGeneration`'s write as one statement: the guarded `UPDATE` of the
/// account (`balance - held >= price`) takes the row lock and checks the
/// balance; the generation, its hold and the HOLD ledger entry are inserted
/// from its result, so nothing is inserted when the guard fails. Sent as
/// one prepared statement in its own implicit transaction, it holds the
/// account's row lock only while PostgreSQL runs it, never across a client
/// round trip: the ceiling for one busy account is the database's, not the
/// network's. The ledger figures come from the updated row, as
/// `credits::apply` computes them under its lock; the hold key is new (a
/// fresh generation id), so no earlier entry can answer for it.
struct CreateWithHold<'a> {
    id: Uuid,
    user_id: Uuid,
    model: &'a str,
    kind: &'static str,
    prompt: &'a str,
    negative_prompt: Option<&'a str>,
    resolution: &'static str,
    duration_seconds: Option<i32>,
    seed: i64,
    price: i64,
    key: Option<&'a str>,
    hold_kind: &'static str,
    hold_key: String,
}

impl diesel::query_builder::QueryId for CreateWithHold<'_> {
    type QueryId = CreateWithHold<'static>;
    // The SQL text never changes, so PostgreSQL prepares it once per connection.
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl diesel::query_builder::Query for CreateWithHold<'_> {
    type SqlType = diesel::sql_types::Untyped;
}

impl diesel::query_builder::QueryFragment<diesel::pg::Pg> for CreateWithHold<'_> {
    fn walk_ast<'b>(
        &'b self,
        mut out: diesel::query_builder::AstPass<'_, 'b, diesel::pg::Pg>,
    ) -> QueryResult<()> {
        out.push_sql("WITH acc AS (UPDATE credit_accounts SET held = held + ");
        out.push_bind_param::<BigInt, _>(&self.price)?;
        out.push_sql(", updated_at = now() WHERE user_id = ");
        out.push_bind_param::<SqlUuid, _>(&self.user_id)?;
        out.push_sql(" AND balance - held >= ");
        out.push_bind_param::<BigInt, _>(&self.price)?;
        out.push_sql(
            " RETURNING user_id, balance, held), \
             gen AS (INSERT INTO generations (id, user_id, model, kind, prompt, negative_prompt, \
             resolution, duration_seconds, seed, cost, idempotency_key) SELECT ",
        );
        out.push_bind_param::<SqlUuid, _>(&self.id)?;
        out.push_sql(", user_id, ");
        out.push_bind_param::<Text, _>(&self.model)?;
        out.push_sql(", ");
        out.push_bind_param::<Text, _>(&self.kind)?;
        out.push_sql(", ");
        out.push_bind_param::<Text, _>(&self.prompt)?;
        out.push_sql(", ");
        out.push_bind_param::<Nullable<Text>, _>(&self.negative_prompt)?;
        out.push_sql(", ");
        out.push_bind_param::<Text, _>(&self.resolution)?;
        out.push_sql(", ");
        out.push_bind_param::<Nullable<diesel::sql_types::Integer>, _>(&self.duration_seconds)?;
        out.push_sql(", ");
        out.push_bind_param::<BigInt, _>(&self.seed)?;
        out.push_sql(", ");
        out.push_bind_param::<BigInt, _>(&self.price)?;
        out.push_sql(", ");
        out.push_bind_param::<Nullable<Text>, _>(&self.key)?;
        out.push_sql(
            " FROM acc RETURNING *), \
             hold AS (INSERT INTO credit_holds (user_id, generation_id, amount) SELECT user_id, ",
        );
        out.push_bind_param::<SqlUuid, _>(&self.id)?;
        out.push_sql(", ");
        out.push_bind_param::<BigInt, _>(&self.price)?;
        out.push_sql(
            " FROM acc RETURNING id), \
             entry AS (INSERT INTO credit_entries (user_id, kind, amount, held_delta, balance_after, \
             held_after, idempotency_key, hold_id, generation_id) SELECT acc.user_id, ",
        );
        out.push_bind_param::<Text, _>(&self.hold_kind)?;
        out.push_sql(", 0, ");
        out.push_bind_param::<BigInt, _>(&self.price)?;
        out.push_sql(", acc.balance, acc.held, ");
        out.push_bind_param::<Text, _>(&self.hold_key)?;
        out.push_sql(", hold.id, ");
        out.push_bind_param::<SqlUuid, _>(&self.id)?;
        out.push_sql(" FROM acc, hold) SELECT * FROM gen");
        Ok(())
    }
}

fn hold_key(id: Uuid, run: i64) -> String {
    format!("hold:gen:{id}:{run}")
}

async fn by_key(conn: &mut Connection, user_id: Uuid, key: &str) -> Result<Option<Generation>> {
    Ok(generations::table
        .filter(generations::user_id.eq(user_id))
        .filter(generations::idempotency_key.eq(key))
        .select(Generation::as_select())
        .first(conn)
        .await
        .optional()?)
}

pub async fn find(conn: &mut Connection, id: Uuid) -> Result<Option<Generation>> {
    Ok(generations::table.find(id).select(Generation::as_select()).first(conn).await.optional()?)
}

/// The caller's generation; another user's is reported as missing, so ids
/// cannot be probed.
pub async fn find_own(conn: &mut Connection, user_id: Uuid, id: Uuid) -> Result<Generation> {
    generations::table
        .find(id)
        .filter(generations::user_id.eq(user_id))
        .select(Generation::as_select())
        .first(conn)
        .await
        .optional()?
        .ok_or(Error::NotFound("generation"))
}

/// A page of the user's generations, newest first, after the `(created_at,
/// id)` cursor.
pub async fn list(
    conn: &mut Connection,
    user_id: Uuid,
    status: Option<Status>,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<Generation>> {
    let mut q = generations::table
        .filter(generations::user_id.eq(user_id))
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

/// 1-based place in the render queue: QUEUED generations ahead by
/// `(queued_at, id)`, an index range scan of `generations_queue_idx`.
/// Workers take jobs first in, first out, so this is the order they start in.
pub async fn queue_position(conn: &mut Connection, g: &Generation) -> Result<Option<i64>> {
    if g.status() != Status::Queued {
        return Ok(None);
    }
    let c: Count = diesel::sql_query(QUEUE_POSITION_SQL)
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
             SELECT id, row_number() OVER (ORDER BY queued_at, id) AS position
             FROM generations
             WHERE status = 'queued'
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

pub const QUEUE_POSITION_SQL: &str =
    "SELECT count(*) AS n FROM generations WHERE status = 'queued' AND (queued_at, id) < ($1, $2)";

/// The same query with literals, for tests that check its plan.
pub const QUEUE_POSITION_SQL_EXPLAIN: &str = "EXPLAIN SELECT count(*) AS n FROM generations \
     WHERE status = 'queued' AND (queued_at, id) < (now(), '00000000-0000-0000-0000-000000000000'::uuid)";

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

// --- Transitions -----------------------------------------------------------

/// QUEUED → RENDERING, by `worker`. A generation already RENDERING is taken
/// over only when its worker went silent (no heartbeat for `stale`), handed
/// it back (shutdown), or is this same worker: that is a job redelivered
/// after a crash, and the render it recorded (`backend_url`,
/// `backend_job_id`) is kept so the new attempt attaches to it. Returns
/// `None` when someone else has it or it has moved on (see [`why_not_started`]).
pub async fn start_render(
    conn: &mut Connection,
    id: Uuid,
    worker: &str,
    backend: &str,
    stale: std::time::Duration,
) -> Result<Option<Generation>> {
    let stale_before = Utc::now() - chrono::Duration::from_std(stale).unwrap_or(chrono::Duration::MAX);
    let now = Utc::now();
    Ok(diesel::update(generations::table)
        .filter(generations::id.eq(id))
        .filter(
            generations::status.eq(Status::Queued.as_str()).or(generations::status
                .eq(Status::Rendering.as_str())
                .and(
                    generations::worker
                        .eq(worker)
                        .or(generations::worker.is_null())
                        .or(generations::heartbeat_at.lt(stale_before)),
                )),
        )
        .filter(generations::cancel_requested_at.is_null())
        .set((
            generations::status.eq(Status::Rendering.as_str()),
            generations::started_at.eq(now),
            generations::heartbeat_at.eq(now),
            generations::updated_at.eq(now),
            generations::progress.eq(0),
            generations::stage.eq("starting"),
            generations::attempts.eq(generations::attempts + 1),
            generations::worker.eq(worker),
            generations::backend.eq(backend),
        ))
        .returning(Generation::as_returning())
        .get_result(conn)
        .await
        .optional()?)
}

/// Why [`start_render`] found nothing to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotStarted {
    /// Final, cancelled or gone: the job is done.
    Over,
    /// Another worker renders it and is alive: try again once its heartbeat
    /// could have gone stale.
    Busy { retry_in: std::time::Duration },
    /// Past the render (transcoding): the job is done.
    Moved,
}

pub async fn why_not_started(
    conn: &mut Connection,
    id: Uuid,
    stale: std::time::Duration,
) -> Result<NotStarted> {
    let Some(g) = find(conn, id).await? else { return Ok(NotStarted::Over) };
    Ok(match g.status() {
        Status::Rendering => {
            let age =
                g.heartbeat_at.map(|h| (Utc::now() - h).to_std().unwrap_or_default()).unwrap_or_default();
            NotStarted::Busy { retry_in: stale.saturating_sub(age) + std::time::Duration::from_secs(1) }
        }
        Status::Transcoding => NotStarted::Moved,
        _ => NotStarted::Over,
    })
}

/// Records, before submitting, which render on which backend this attempt
/// runs. `false`: the generation left this worker (cancelled, taken over).
pub async fn record_backend_job(
    conn: &mut Connection,
    id: Uuid,
    worker: &str,
    backend_url: Option<&str>,
    backend_job_id: Option<&str>,
) -> Result<bool> {
    let n = diesel::update(generations::table)
        .filter(generations::id.eq(id))
        .filter(generations::status.eq(Status::Rendering.as_str()))
        .filter(generations::worker.eq(worker))
        .set((
            generations::backend_url.eq(backend_url),
            generations::backend_job_id.eq(backend_job_id),
            generations::updated_at.eq(Utc::now()),
        ))
        .execute(conn)
        .await?;
    Ok(n == 1)
}

/// RENDERING → QUEUED after a failed attempt that may work later; the
/// recorded backend render is kept, so the next attempt collects it if it
/// finished after all. `false`: it already moved on.
pub async fn requeue(
    conn: &mut Connection,
    id: Uuid,
    worker: &str,
    stage: &str,
) -> Result<Option<Generation>> {
    let now = Utc::now();
    Ok(diesel::update(generations::table)
        .filter(generations::id.eq(id))
        .filter(generations::status.eq(Status::Rendering.as_str()))
        .filter(generations::worker.eq(worker))
        .set((
            generations::status.eq(Status::Queued.as_str()),
            generations::stage.eq(stage),
            generations::progress.eq(0),
            generations::worker.eq(None::<String>),
            generations::heartbeat_at.eq(None::<DateTime<Utc>>),
            generations::updated_at.eq(now),
        ))
        .returning(Generation::as_returning())
        .get_result(conn)
        .await
        .optional()?)
}

/// A stopping worker gives a render back without waiting for it: the
/// generation stays RENDERING (its backend render keeps going) and any
/// worker may take it over at once.
pub async fn hand_back(conn: &mut Connection, id: Uuid, worker: &str) -> Result<bool> {
    let n = diesel::update(generations::table)
        .filter(generations::id.eq(id))
        .filter(generations::status.eq(Status::Rendering.as_str()))
        .filter(generations::worker.eq(worker))
        .set((generations::worker.eq(None::<String>), generations::updated_at.eq(Utc::now())))
        .execute(conn)
        .await?;
    Ok(n == 1)
}

/// Generations in `statuses` whose worker has been silent since `before`
/// (the sweeper fails them).
pub async fn stale(conn: &mut Connection, before: DateTime<Utc>, limit: i64) -> Result<Vec<Generation>> {
    Ok(generations::table
        .filter(generations::status.eq_any([Status::Rendering.as_str(), Status::Transcoding.as_str()]))
        .filter(generations::heartbeat_at.lt(before).or(generations::heartbeat_at.is_null()))
        .filter(generations::updated_at.lt(before))
        .order(generations::heartbeat_at.asc())
        .limit(limit)
        .select(Generation::as_select())
        .load(conn)
        .await?)
}

/// QUEUED generations waiting since before `before`, oldest first (the
/// sweeper checks that each still has a job).
pub async fn queued_since(
    conn: &mut Connection,
    before: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<Generation>> {
    Ok(generations::table
        .filter(generations::status.eq(Status::Queued.as_str()))
        .filter(generations::updated_at.lt(before))
        .order((generations::queued_at.asc(), generations::id.asc()))
        .limit(limit)
        .select(Generation::as_select())
        .load(conn)
        .await?)
}

/// Open holds whose generation is final or missing: what crashed between
/// a final state and its settlement, or anything else that left one open.
/// Released through the ledger (idempotent by hold).
pub async fn release_orphaned_holds(conn: &mut Connection, limit: i64) -> Result<Vec<CreditHold>> {
    let orphans: Vec<CreditHold> = credit_holds::table
        .left_join(generations::table)
        .filter(credit_holds::status.eq(credits::HOLD_OPEN))
        .filter(credit_holds::generation_id.is_null().or(generations::status.eq_any([
            Status::Succeeded.as_str(),
            Status::Failed.as_str(),
            Status::Canceled.as_str(),
        ])))
        .filter(credit_holds::created_at.lt(Utc::now() - chrono::Duration::minutes(1)))
        .limit(limit)
        .select(CreditHold::as_select())
        .load(conn)
        .await?;
    let mut released = Vec::new();
    for h in orphans {
        let succeeded = match h.generation_id {
            Some(g) => find(conn, g).await?.is_some_and(|g| g.status() == Status::Succeeded),
            None => false,
        };
        // A SUCCEEDED generation's work was delivered: its hold is captured.
        if succeeded {
            credits::capture(conn, h.id).await?;
        } else {
            credits::release(conn, h.id).await?;
        }
        released.push(h);
    }
    Ok(released)
}

/// Records progress and proves the worker alive. `false`: the generation is
/// no longer `expected` (cancelled, failed by the sweeper): stop working.
pub async fn record_progress(
    conn: &mut Connection,
    id: Uuid,
    expected: Status,
    progress: i32,
    stage: &str,
) -> Result<bool> {
    let now = Utc::now();
    let n = diesel::update(generations::table)
        .filter(generations::id.eq(id))
        .filter(generations::status.eq(expected.as_str()))
        .set((
            generations::progress.eq(progress.clamp(0, 100)),
            generations::stage.eq(stage),
            generations::heartbeat_at.eq(now),
            generations::updated_at.eq(now),
        ))
        .execute(conn)
        .await?;
    Ok(n == 1)
}

/// RENDERING → TRANSCODING.
pub async fn start_transcode(conn: &mut Connection, id: Uuid) -> Result<Option<Generation>> {
    let now = Utc::now();
    Ok(diesel::update(generations::table)
        .filter(generations::id.eq(id))
        .filter(generations::status.eq_any(sources(Status::Transcoding)))
        .set((
            generations::status.eq(Status::Transcoding.as_str()),
            generations::progress.eq(0),
            generations::stage.eq("transcoding"),
            generations::heartbeat_at.eq(now),
            generations::updated_at.eq(now),
        ))
        .returning(Generation::as_returning())
        .get_result(conn)
        .await
        .optional()?)
}

/// TRANSCODING → SUCCEEDED with its output, capturing the hold in the same
/// transaction. `None`: it had already left TRANSCODING (cancelled).
pub async fn succeed(
    conn: &mut Connection,
    id: Uuid,
    output: serde_json::Value,
) -> Result<Option<Generation>> {
    conn.transaction::<_, Error, _>(async |conn| {
        let now = Utc::now();
        let g: Option<Generation> = diesel::update(generations::table)
            .filter(generations::id.eq(id))
            .filter(generations::status.eq_any(sources(Status::Succeeded)))
            .set((
                generations::status.eq(Status::Succeeded.as_str()),
                generations::progress.eq(100),
                generations::stage.eq(None::<String>),
                generations::output.eq(output),
                generations::finished_at.eq(now),
                generations::updated_at.eq(now),
            ))
            .returning(Generation::as_returning())
            .get_result(conn)
            .await
            .optional()?;
        if g.is_some() {
            settle_holds(conn, id, true).await?;
        }
        Ok(g)
    })
    .await
}

/// Any active state → FAILED with a message for the user, releasing the
/// hold. `None`: it was already final.
pub async fn fail(conn: &mut Connection, id: Uuid, user_message: &str) -> Result<Option<Generation>> {
    end(conn, id, None, Status::Failed, Some(user_message)).await
}

async fn end(
    conn: &mut Connection,
    id: Uuid,
    user_id: Option<Uuid>,
    to: Status,
    error: Option<&str>,
) -> Result<Option<Generation>> {
    conn.transaction::<_, Error, _>(async |conn| {
        let now = Utc::now();
        let mut q = diesel::update(generations::table)
            .filter(generations::id.eq(id))
            .filter(generations::status.eq_any(sources(to)))
            .into_boxed();
        if let Some(u) = user_id {
            q = q.filter(generations::user_id.eq(u));
        }
        let g: Option<Generation> = q
            .set((
                generations::status.eq(to.as_str()),
                generations::stage.eq(None::<String>),
                generations::error.eq(error),
                generations::finished_at.eq(now),
                generations::updated_at.eq(now),
                generations::cancel_requested_at.eq(if to == Status::Canceled { Some(now) } else { None }),
            ))
            .returning(Generation::as_returning())
            .get_result(conn)
            .await
            .optional()?;
        if g.is_some() {
            settle_holds(conn, id, false).await?;
        }
        Ok(g)
    })
    .await
}

/// Captures (success) or releases (failure) every open hold of the
/// generation; normally exactly one.
async fn settle_holds(conn: &mut Connection, id: Uuid, capture: bool) -> Result<()> {
    let open: Vec<CreditHold> = credit_holds::table
        .filter(credit_holds::generation_id.eq(id))
        .filter(credit_holds::status.eq(credits::HOLD_OPEN))
        .select(CreditHold::as_select())
        .load(conn)
        .await?;
    for h in open {
        if capture {
            credits::capture(conn, h.id).await?;
        } else {
            credits::release(conn, h.id).await?;
        }
    }
    Ok(())
}

#[derive(Debug)]
pub struct Canceled {
    pub generation: Generation,
    /// It was RENDERING or TRANSCODING: its worker must be told to stop.
    pub was_running: bool,
}

/// The user cancels: a QUEUED, RENDERING or TRANSCODING generation becomes
/// CANCELED at once and its hold is released; a running one's worker is
/// signalled by the caller. Any other state is a `Conflict`.
pub async fn cancel(conn: &mut Connection, user_id: Uuid, id: Uuid) -> Result<Canceled> {
    let before = find_own(conn, user_id, id).await?;
    match end(conn, id, Some(user_id), Status::Canceled, None).await? {
        Some(generation) => Ok(Canceled { generation, was_running: before.status() != Status::Queued }),
        None => {
            let now = find_own(conn, user_id, id).await?;
            Err(Error::Conflict(format!("a {} generation cannot be cancelled", now.status)))
        }
    }
}

/// FAILED → QUEUED with a fresh hold of the same price and its attempts
/// counted afresh. The caller enqueues.
pub async fn retry(conn: &mut Connection, user_id: Uuid, id: Uuid) -> Result<Generation> {
    conn.transaction::<_, Error, _>(async |conn| {
        let g: Generation = generations::table
            .find(id)
            .filter(generations::user_id.eq(user_id))
            .for_update()
            .select(Generation::as_select())
            .first(conn)
            .await
            .optional()?
            .ok_or(Error::NotFound("generation"))?;
        if g.status() != Status::Failed {
            return Err(Error::Conflict(format!(
                "only a failed generation can be retried, this one is {}",
                g.status
            )));
        }
        let runs: i64 =
            credit_holds::table.filter(credit_holds::generation_id.eq(id)).count().get_result(conn).await?;
        credits::hold(conn, user_id, g.cost, Some(id), &hold_key(id, runs + 1)).await?;
        let now = Utc::now();
        Ok(diesel::update(generations::table)
            .filter(generations::id.eq(id))
            .filter(generations::status.eq(Status::Failed.as_str()))
            .set((
                generations::status.eq(Status::Queued.as_str()),
                generations::progress.eq(0),
                generations::stage.eq(None::<String>),
                generations::error.eq(None::<String>),
                generations::output.eq(None::<serde_json::Value>),
                // A new run gets every attempt again.
                generations::attempts.eq(0),
                generations::queued_at.eq(now),
                generations::started_at.eq(None::<DateTime<Utc>>),
                generations::finished_at.eq(None::<DateTime<Utc>>),
                generations::heartbeat_at.eq(None::<DateTime<Utc>>),
                generations::cancel_requested_at.eq(None::<DateTime<Utc>>),
                generations::worker.eq(None::<String>),
                generations::backend_url.eq(None::<String>),
                generations::backend_job_id.eq(None::<String>),
                generations::updated_at.eq(now),
            ))
            .returning(Generation::as_returning())
            .get_result(conn)
            .await?)
    })
    .await
}

/// Retries a failed generation: new hold, back in the queue, job enqueued.
pub async fn retry_and_enqueue(svc: &Services, user_id: Uuid, id: Uuid) -> Result<Generation> {
    let mut conn = svc.pool.get().await?;
    let current = find_own(&mut conn, user_id, id).await?;
    if current.status() != Status::Failed {
        return Err(Error::Conflict(format!(
            "only a failed generation can be retried, this one is {}",
            current.status
        )));
    }
    let member = current.limit_member();
    limits::reserve(&svc.redis, svc.limits, user_id, &member).await?;
    let g = match retry(&mut conn, user_id, id).await {
        Ok(g) => g,
        Err(e) => {
            if let Err(undo) = limits::undo(&svc.redis, user_id, &member).await {
                tracing::warn!(error = %undo, "could not give back a rate-limit slot");
            }
            return Err(e);
        }
    };
    let span = tracing::info_span!("generation", generation_id = %g.id);
    enqueue_new(svc, g).instrument(span).await
}

/// An admin retries a dead job: its generation (FAILED when its job died)
/// runs again for its owner, with a fresh hold, skipping the owner's rate
/// limits. The dead job leaves the dead set first, so two admins retrying
/// at once retry once; it goes back if the retry is refused.
pub async fn retry_dead_job(svc: &Services, queue: crate::queue::Queue, task_id: &str) -> Result<Generation> {
    let Some(dead) = svc.queues.take_dead_job(queue, task_id).await? else {
        return Err(Error::NotFound("dead job"));
    };
    let put_back = async || {
        let mut conn = svc.queues.connection();
        let added: redis::RedisResult<i64> = redis::cmd("SADD")
            .arg(svc.queues.config(queue).dead_jobs_set())
            .arg(task_id)
            .query_async(&mut conn)
            .await;
        if let Err(e) = added {
            tracing::warn!(task_id, error = %e, "could not put a dead job back");
        }
    };
    let Some(id) = dead.generation_id else {
        put_back().await;
        return Err(Error::Conflict("this dead job names no generation".into()));
    };
    let mut conn = svc.pool.get().await?;
    let Some(g) = find(&mut conn, id).await? else {
        return Err(Error::NotFound("generation"));
    };
    let g = match retry(&mut conn, g.user_id, id).await {
        Ok(g) => g,
        Err(e) => {
            put_back().await;
            return Err(e);
        }
    };
    drop(conn);
    let span = tracing::info_span!("generation", generation_id = %g.id);
    async {
        tracing::info!(%queue, task_id, "dead job retried by an admin");
        enqueue_new(svc, g).await
    }
    .instrument(span)
    .await
}

/// Cancels and tells a running generation's worker to stop.
pub async fn cancel_and_signal(svc: &Services, user_id: Uuid, id: Uuid) -> Result<Generation> {
    let mut conn = svc.pool.get().await?;
    let c = cancel(&mut conn, user_id, id).await?;
    if c.was_running
        && let Err(e) = events::publish_cancel(&svc.redis, id).await
    {
        // The worker also notices on its next progress write.
        tracing::warn!(generation_id = %id, error = %e, "could not signal the cancel to the worker");
    }
    tracing::info!(generation_id = %id, "generation cancelled");
    finished(svc, &c.generation).await;
    if !c.was_running {
        // Everything queued behind it moved up one place.
        events::publish_queue_advanced_logged(&svc.redis).await;
    }
    Ok(c.generation)
}

/// After a generation reaches a final state: free its active slot and
/// publish the change (of the generation and of its owner's credits).
pub async fn finished(svc: &Services, g: &Generation) {
    finished_with(&svc.redis, g).await;
}

pub async fn finished_with(redis: &Redis, g: &Generation) {
    crate::metrics::generation_finished(&g.model, &g.status);
    if let Err(e) = limits::release_active(redis, g.user_id, &g.limit_member()).await {
        tracing::warn!(generation_id = %g.id, error = %e, "could not free the active-generation slot");
    }
    events::publish_generation_logged(redis, g, false).await;
    // Reaching a final state captured or released the hold.
    events::publish_credits_changed_logged(redis, g.user_id).await;
}

/// Final generations with stored media that finished before `before`
/// (the media retention policy), oldest first.
pub async fn media_due(conn: &mut Connection, before: DateTime<Utc>, limit: i64) -> Result<Vec<Uuid>> {
    Ok(generations::table
        .filter(generations::media_expired_at.is_null())
        .filter(generations::output.is_not_null())
        .filter(generations::finished_at.lt(before))
        .filter(generations::status.eq_any([
            Status::Succeeded.as_str(),
            Status::Failed.as_str(),
            Status::Canceled.as_str(),
        ]))
        .order(generations::finished_at.asc())
        .limit(limit)
        .select(generations::id)
        .load(conn)
        .await?)
}

/// Records that a generation's media were deleted.
pub async fn mark_media_expired(conn: &mut Connection, id: Uuid) -> Result<()> {
    diesel::update(generations::table.find(id))
        .filter(generations::media_expired_at.is_null())
        .set(generations::media_expired_at.eq(Utc::now()))
        .execute(conn)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Status::{self, *};

    #[test]
    fn state_machine_allows_only_the_documented_moves() {
        let allowed = [
            (Queued, Rendering),
            (Rendering, Queued),
            (Rendering, Transcoding),
            (Transcoding, Succeeded),
            (Queued, Failed),
            (Queued, Canceled),
            (Rendering, Failed),
            (Rendering, Canceled),
            (Transcoding, Failed),
            (Transcoding, Canceled),
        ];
        for from in Status::ALL {
            for to in Status::ALL {
                assert_eq!(from.can_become(to), allowed.contains(&(from, to)), "{from:?} -> {to:?}");
            }
        }
    }
}
