//! `createGeneration`: price, rate-limit slots, the row and its hold in one
//! statement, then the render job.

use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use tracing::Instrument;
use uuid::Uuid;

use super::{INTERNAL_FAILURE, Services, fail, finished};
use crate::catalog::{self, GenerationInput, Quote};
use crate::db::Connection;
use crate::queue::RenderJob;
use crate::rows::Generation;
use crate::schema::generations;
use crate::{Error, Result, assets, credits, events, limits};

/// Prices an input without creating anything, from the same model cache as
/// [`create`], so a quote is what a create right after it charges. A model
/// whose backend this deployment does not run is unavailable.
pub async fn quote(svc: &Services, conn: &mut Connection, input: &GenerationInput) -> Result<Quote> {
    let model = svc.models.model(conn, &input.model).await?;
    if let Some(m) = &model
        && !svc.backends.offers(m.backend)
    {
        return Err(Error::invalid("model", format!("model unavailable: {} is not offered here", m.id)));
    }
    catalog::price(model, input)
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
    let quote = quote(svc, &mut conn, input).await?;
    if let Some(k) = key
        && let Some(first) = by_key(&mut conn, user_id, k).await?
    {
        return replayed(&mut conn, first, &quote, &input.inputs).await;
    }

    let id = Uuid::now_v7();
    let member = limits::member(id, key);
    limits::reserve(&svc.redis, svc.limits, user_id, &member).await?;
    let created = if input.inputs.is_empty() && quote.model.inputs.is_empty() {
        insert_with_hold(&mut conn, id, user_id, &quote, key).await
    } else {
        // The inputs are checked and recorded in the generation's own
        // transaction (see assets::check_inputs).
        let (wanted, ids) = (&quote.model.inputs, &input.inputs);
        conn.transaction::<_, Error, _>(async |conn| {
            assets::check_inputs(conn, user_id, wanted, ids).await?;
            let g = insert_with_hold(conn, id, user_id, &quote, key).await?;
            assets::record_inputs(conn, g.id, ids).await?;
            Ok(g)
        })
        .await
    };
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
                Some(first) => replayed(&mut conn, first, &quote, &input.inputs).await,
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
pub(super) async fn enqueue_new(svc: &Services, g: Generation) -> Result<Generation> {
    if let Err(e) = svc.queues.push_render(g.backend, &RenderJob { generation_id: g.id }).await {
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

/// The first generation of an idempotency key, if this request is the same
/// one again (its inputs included).
async fn replayed(
    conn: &mut Connection,
    first: Generation,
    quote: &Quote,
    inputs: &[Uuid],
) -> Result<Generation> {
    let had: Vec<Uuid> = assets::inputs_of(conn, &[first.id]).await?.into_iter().map(|(_, a)| a.id).collect();
    if had != inputs {
        return Err(Error::Conflict("idempotencyKey was already used for a different generation".into()));
    }
    same_request(first, quote)
}

fn same_request(first: Generation, quote: &Quote) -> Result<Generation> {
    let same = first.model == quote.model.id
        && first.prompt == quote.prompt
        && first.negative_prompt.as_deref() == quote.negative_prompt.as_deref()
        && first.resolution == quote.resolution
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
    let row = NewGeneration {
        id,
        model: &q.model.id,
        kind: q.model.kind.as_str(),
        prompt: &q.prompt,
        negative_prompt: q.negative_prompt.as_deref(),
        resolution: q.resolution.as_str(),
        duration_seconds: q.duration_seconds,
        seed,
        cost: q.price,
        key,
        backend: q.model.backend.as_str(),
    };
    let statement =
        credits::HoldFor { user_id, amount: q.price, generation_id: id, hold_key: hold_key(id, 1), row };
    match statement.get_result::<Generation>(conn).await.optional()? {
        Some(g) => {
            credits::hold_taken(q.price);
            Ok(g)
        }
        // The guard kept the account as it was: say why.
        None => {
            let acc = credits::account(conn, user_id).await?;
            Err(Error::InsufficientCredits { required: q.price, available: acc.available() })
        }
    }
}

/// The generation's row inside [`credits::HoldFor`]: inserted from the
/// account the hold's guard updated (`acc`), so it exists only when its
/// hold does.
struct NewGeneration<'a> {
    id: Uuid,
    model: &'a str,
    kind: &'static str,
    prompt: &'a str,
    negative_prompt: Option<&'a str>,
    resolution: &'static str,
    duration_seconds: Option<i32>,
    seed: i64,
    cost: i64,
    key: Option<&'a str>,
    backend: &'static str,
}

impl diesel::query_builder::QueryId for NewGeneration<'_> {
    type QueryId = NewGeneration<'static>;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl diesel::query_builder::Query for NewGeneration<'_> {
    type SqlType = diesel::sql_types::Untyped;
}

impl diesel::query_builder::QueryFragment<diesel::pg::Pg> for NewGeneration<'_> {
    fn walk_ast<'b>(
        &'b self,
        mut out: diesel::query_builder::AstPass<'_, 'b, diesel::pg::Pg>,
    ) -> QueryResult<()> {
        use diesel::sql_types::{BigInt, Integer, Nullable, Text, Uuid as SqlUuid};
        out.push_sql(
            "INSERT INTO generations (id, user_id, model, kind, prompt, negative_prompt, \
             resolution, duration_seconds, seed, cost, idempotency_key, backend) SELECT ",
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
        out.push_bind_param::<Nullable<Integer>, _>(&self.duration_seconds)?;
        out.push_sql(", ");
        out.push_bind_param::<BigInt, _>(&self.seed)?;
        out.push_sql(", ");
        out.push_bind_param::<BigInt, _>(&self.cost)?;
        out.push_sql(", ");
        out.push_bind_param::<Nullable<Text>, _>(&self.key)?;
        out.push_sql(", ");
        out.push_bind_param::<Text, _>(&self.backend)?;
        out.push_sql(" FROM acc");
        Ok(())
    }
}

pub(super) fn hold_key(id: Uuid, run: i64) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `createGeneration` writes the generation, its hold and the HOLD entry
    /// in one statement that inserts nothing unless the account's guard
    /// passed; `bench/holds` measures exactly this text.
    #[test]
    fn the_generation_and_its_hold_are_one_guarded_statement() {
        let id = Uuid::nil();
        let row = NewGeneration {
            id,
            model: "m",
            kind: "video",
            prompt: "p",
            negative_prompt: None,
            resolution: "480p",
            duration_seconds: Some(5),
            seed: 1,
            cost: 10,
            key: None,
            backend: "synthetic",
        };
        let statement =
            credits::HoldFor { user_id: id, amount: 10, generation_id: id, hold_key: hold_key(id, 1), row };
        let sql = diesel::debug_query::<diesel::pg::Pg, _>(&statement).to_string();
        let sql = sql.split(" -- binds").next().expect("sql");
        assert_eq!(
            sql,
            "WITH acc AS (UPDATE credit_accounts SET held = held + $1, updated_at = now() \
             WHERE user_id = $2 AND balance - held >= $3 RETURNING user_id, balance, held), \
             new_row AS (INSERT INTO generations (id, user_id, model, kind, prompt, negative_prompt, \
             resolution, duration_seconds, seed, cost, idempotency_key, backend) SELECT $4, user_id, $5, $6, $7, \
             $8, $9, $10, $11, $12, $13, $14 FROM acc RETURNING *), \
             hold AS (INSERT INTO credit_holds (user_id, generation_id, amount) SELECT user_id, $15, $16 \
             FROM acc RETURNING id), \
             entry AS (INSERT INTO credit_entries (user_id, kind, amount, held_delta, balance_after, \
             held_after, idempotency_key, hold_id, generation_id) SELECT acc.user_id, $17, 0, $18, \
             acc.balance, acc.held, $19, hold.id, $20 FROM acc, hold) SELECT * FROM new_row"
        );
    }
}
