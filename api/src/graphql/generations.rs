//! Quotes and generations: create, cancel, retry, delete, list, and their
//! subscriptions (render models are in `catalog`, the queue in `queue`).

use async_graphql::connection::{Connection, Edge};
use async_graphql::{Context, Enum, ID, InputObject, Object, SimpleObject, Subscription};
use chrono::{DateTime, Utc};
use futures_util::{Stream, StreamExt};
use mage_domain::catalog::{self, GenerationInput, MediaKind};
use mage_domain::generations::{self as domain, Status};
use mage_domain::rows::Generation as GenerationRow;
use uuid::Uuid;

use super::context::ContextExt;
use super::pagination::{decode_created_cursor, encode_created_cursor, page, page_size};
use crate::error::{ApiError, ApiResult};
use crate::live::{self, Event, Subscription as LiveSubscription};

#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
#[graphql(remote = "catalog::Resolution")]
pub enum Resolution {
    #[graphql(name = "R480P")]
    R480p,
    #[graphql(name = "R720P")]
    R720p,
    #[graphql(name = "R1080P")]
    R1080p,
}

#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
#[graphql(remote = "MediaKind")]
pub enum ModelKind {
    Image,
    Video,
}

#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
#[graphql(remote = "Status")]
pub enum GenerationStatus {
    Queued,
    Rendering,
    Transcoding,
    Succeeded,
    Failed,
    Canceled,
}

#[derive(InputObject)]
pub struct CreateGenerationInput {
    /// A RenderModel id.
    model: String,
    prompt: String,
    negative_prompt: Option<String>,
    resolution: Resolution,
    /// Video models only; the model's default when omitted.
    duration_seconds: Option<i32>,
    seed: Option<i32>,
    /// The same key twice (from the same user) returns the first generation
    /// and charges once.
    idempotency_key: Option<String>,
    /// Your READY assets the model renders from, in the order its `inputs`
    /// name them.
    inputs: Option<Vec<ID>>,
}

impl CreateGenerationInput {
    fn domain(&self) -> GenerationInput {
        GenerationInput {
            model: self.model.clone(),
            prompt: self.prompt.clone(),
            negative_prompt: self.negative_prompt.clone(),
            resolution: catalog::Resolution::from(self.resolution).as_str().to_owned(),
            duration_seconds: self.duration_seconds,
            seed: self.seed.map(i64::from),
            // A malformed id cannot name an asset: it is left to be
            // NOT_FOUND as a missing one is.
            inputs: self.inputs.iter().flatten().map(|id| id.parse().unwrap_or(Uuid::nil())).collect(),
        }
    }
}

#[derive(SimpleObject)]
#[graphql(serial)]
pub struct Rendition {
    name: String,
    width: i32,
    height: i32,
    bandwidth: i64,
}

/// Where a finished generation can be fetched. URLs are absolute.
#[derive(SimpleObject)]
#[graphql(serial)]
pub struct GenerationOutput {
    /// HLS master playlist (video).
    hls_url: Option<String>,
    /// Progressive MP4 with faststart (video).
    video_url: Option<String>,
    /// Full-size PNG (image).
    image_url: Option<String>,
    poster_url: Option<String>,
    width: i32,
    height: i32,
    duration_seconds: Option<f64>,
    renditions: Vec<Rendition>,
}

pub struct Generation {
    row: Row,
    /// The queue position when the caller already knows it (a live event
    /// carries it); otherwise it is read when asked for.
    known_position: Option<Option<i64>>,
}

/// A live event's row is shared by every subscriber it goes to (ten
/// clients watching one generation get one row, not ten copies of its
/// prompt, parameters and output).
#[allow(clippy::large_enum_variant, reason = "a listed row stays inline: no allocation per row")]
enum Row {
    Owned(GenerationRow),
    Live(std::sync::Arc<live::Snapshot>),
}

impl std::ops::Deref for Row {
    type Target = GenerationRow;

    fn deref(&self) -> &GenerationRow {
        match self {
            Row::Owned(row) => row,
            Row::Live(s) => &s.row,
        }
    }
}

impl From<GenerationRow> for Generation {
    fn from(row: GenerationRow) -> Self {
        Self { row: Row::Owned(row), known_position: None }
    }
}

impl From<std::sync::Arc<live::Snapshot>> for Generation {
    fn from(s: std::sync::Arc<live::Snapshot>) -> Self {
        let known = s.position.is_some() || s.status() != Status::Queued;
        let known_position = known.then_some(s.position);
        Self { row: Row::Live(s), known_position }
    }
}

// The fields that wait on the database or Redis run behind a `Box::pin`:
// async-graphql boxes every field's future at the size of the largest one
// the object has, so one inline query would make each of the ~20 plain
// fields of every listed generation allocate and copy its whole state
// (perf, `generations(first: 20)`: the copies under `Generation`'s fields
// went from 3.3% of the CPU to 1.15%).
impl Generation {
    async fn read_queue_position(&self, ctx: &Context<'_>) -> ApiResult<Option<i64>> {
        let mut conn = ctx.conn().await?;
        Ok(domain::queue_position(&mut conn, &self.row).await?)
    }

    async fn read_eta_seconds(&self, ctx: &Context<'_>) -> ApiResult<Option<i64>> {
        let svc = ctx.services();
        let mut conn = ctx.conn().await?;
        let position = match self.known_position {
            Some(known) => known,
            None => domain::queue_position(&mut conn, &self.row).await?,
        };
        let seconds = domain::recent_render_seconds(&mut conn, &self.row.model)
            .await?
            .unwrap_or_else(|| domain::default_render_seconds(&self.row));
        let queue = mage_domain::queue::Queue::Render(self.row.backend);
        let slots = mage_domain::workers::live_slots(&svc.redis, queue).await.map_err(ApiError::internal)?;
        Ok(domain::eta_seconds(&self.row, position, seconds, slots))
    }
}

// `serial`: a generation's fields are reads of the loaded row, so they are
// resolved one after another rather than through async-graphql's per-object
// FuturesUnordered (a task and a waker per field: ~10% of a
// `generations(first: 20)` request's CPU). Items of a list still resolve
// concurrently, so DataLoader batches across them are unchanged.
#[Object(serial)]
impl Generation {
    async fn id(&self) -> ID {
        ID(self.row.id.to_string())
    }
    async fn status(&self) -> GenerationStatus {
        self.row.status().into()
    }
    /// 0–100 within the current stage.
    async fn progress(&self) -> i32 {
        self.row.progress
    }
    async fn stage(&self) -> Option<&str> {
        self.row.stage.as_deref()
    }
    /// 1 = next to start; null unless QUEUED.
    async fn queue_position(&self, ctx: &Context<'_>) -> ApiResult<Option<i64>> {
        if self.row.status() != Status::Queued {
            return Ok(None);
        }
        if let Some(known) = self.known_position {
            return Ok(known);
        }
        Box::pin(self.read_queue_position(ctx)).await
    }
    /// Seconds until it is likely finished; null once final.
    async fn eta_seconds(&self, ctx: &Context<'_>) -> ApiResult<Option<i64>> {
        if self.row.status().is_final() {
            return Ok(None);
        }
        Box::pin(self.read_eta_seconds(ctx)).await
    }
    async fn model(&self) -> &str {
        &self.row.model
    }
    async fn kind(&self) -> ModelKind {
        self.row.media_kind().into()
    }
    async fn prompt(&self) -> &str {
        &self.row.prompt
    }
    async fn negative_prompt(&self) -> Option<&str> {
        self.row.negative_prompt.as_deref()
    }
    async fn resolution(&self) -> Resolution {
        self.row.resolution.into()
    }
    async fn duration_seconds(&self) -> Option<i32> {
        self.row.duration_seconds
    }
    async fn seed(&self) -> Option<i64> {
        self.row.seed
    }
    /// Credits this generation costs (held until it succeeds).
    async fn cost(&self) -> i64 {
        self.row.cost
    }
    /// Why it failed, in words fit for the user.
    async fn error(&self) -> Option<&str> {
        self.row.error.as_deref()
    }
    /// When the media retention policy deleted this generation's media.
    async fn media_expired_at(&self) -> Option<DateTime<Utc>> {
        self.row.media_expired_at
    }

    /// Null once the media retention policy deleted the media (see
    /// `mediaExpiredAt`).
    async fn output(&self, ctx: &Context<'_>) -> Option<GenerationOutput> {
        if self.row.status() != Status::Succeeded || self.row.media_expired_at.is_some() {
            return None;
        }
        let out = self.row.output.as_ref()?;
        let svc = ctx.services();
        let url = |key: &Option<String>| key.as_deref().map(|k| svc.media_url(k));
        Some(GenerationOutput {
            hls_url: url(&out.hls),
            video_url: url(&out.video),
            image_url: url(&out.image),
            poster_url: Some(svc.media_url(&out.poster)),
            width: out.width as i32,
            height: out.height as i32,
            duration_seconds: out.duration_seconds,
            renditions: out
                .renditions
                .iter()
                .map(|r| Rendition {
                    name: r.name.clone(),
                    width: r.width as i32,
                    height: r.height as i32,
                    bandwidth: r.bandwidth as i64,
                })
                .collect(),
        })
    }
    /// The assets it renders from (shown even after their deletion).
    async fn inputs(&self, ctx: &Context<'_>) -> ApiResult<Vec<super::assets::Asset>> {
        let inputs = Box::pin(ctx.loaders().generation_inputs(self.row.id)).await?;
        Ok(inputs.into_iter().map(super::assets::Asset).collect())
    }
    async fn attempts(&self) -> i32 {
        self.row.attempts
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.row.created_at
    }
    async fn queued_at(&self) -> DateTime<Utc> {
        self.row.queued_at
    }
    async fn started_at(&self) -> Option<DateTime<Utc>> {
        self.row.started_at
    }
    async fn finished_at(&self) -> Option<DateTime<Utc>> {
        self.row.finished_at
    }
}

const GENERATION_CURSOR: &str = "gen";

fn parse_id(id: &ID) -> ApiResult<Uuid> {
    // A malformed id cannot name anyone's generation: same answer as a
    // missing one.
    id.parse().map_err(|_| ApiError::NotFound("generation".into()))
}

#[derive(Default)]
pub struct GenerationsQuery;

#[Object]
impl GenerationsQuery {
    /// Credits `input` would cost; `createGeneration` charges exactly this.
    async fn quote(&self, ctx: &Context<'_>, input: CreateGenerationInput) -> ApiResult<i64> {
        let svc = ctx.services();
        let mut conn = ctx.conn().await?;
        Ok(domain::quote(&svc.generations, &mut conn, &input.domain()).await?.price)
    }

    /// One of your generations.
    async fn generation(&self, ctx: &Context<'_>, id: ID) -> ApiResult<Option<Generation>> {
        let user_id = ctx.viewer().require()?;
        let id = parse_id(&id)?;
        let mut conn = ctx.conn().await?;
        Ok(Some(domain::find_own(&mut conn, user_id, id).await?.into()))
    }

    /// Your generations, newest first.
    #[graphql(complexity = "super::pagination::list_complexity(first, child_complexity)")]
    async fn generations(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        status: Option<GenerationStatus>,
    ) -> ApiResult<Connection<String, Generation>> {
        let user_id = ctx.viewer().require()?;
        let limit = page_size(first)?;
        let after = decode_created_cursor(GENERATION_CURSOR, after.as_deref())?;
        let mut conn = ctx.conn().await?;
        let rows = domain::list(&mut conn, user_id, status.map(Into::into), after, limit + 1).await?;
        Ok(page(rows, limit, after.is_some(), |g| {
            Edge::new(encode_created_cursor(GENERATION_CURSOR, g.created_at, g.id), Generation::from(g))
        }))
    }
}

#[derive(Default)]
pub struct GenerationsMutation;

#[Object]
impl GenerationsMutation {
    /// Holds the quoted price and queues the generation. The credits are
    /// charged when it succeeds and given back if it fails or is cancelled.
    async fn create_generation(
        &self,
        ctx: &Context<'_>,
        input: CreateGenerationInput,
    ) -> ApiResult<Generation> {
        let user_id = ctx.viewer().require()?;
        let svc = ctx.services();
        let g = domain::create(&svc.generations, user_id, &input.domain(), input.idempotency_key.as_deref())
            .await?;
        Ok(g.into())
    }

    /// Stops a queued or running generation and gives its credits back.
    async fn cancel_generation(&self, ctx: &Context<'_>, id: ID) -> ApiResult<Generation> {
        let user_id = ctx.viewer().require()?;
        let id = parse_id(&id)?;
        Ok(domain::cancel_and_signal(&ctx.services().generations, user_id, id).await?.into())
    }

    /// Deletes one of your generations: cancelled first if still active
    /// (its credits given back, as `cancelGeneration` does), its media
    /// deleted from storage, and from then on it is in no query or
    /// subscription (`NOT_FOUND`, also when deleted twice). Credits it was
    /// charged stay charged; usage statistics still count it.
    async fn delete_generation(&self, ctx: &Context<'_>, id: ID) -> ApiResult<Generation> {
        let user_id = ctx.viewer().require()?;
        let id = parse_id(&id)?;
        Ok(domain::delete(&ctx.services().generations, user_id, id).await?.into())
    }

    /// Runs a failed generation again, holding its price again.
    async fn retry_generation(&self, ctx: &Context<'_>, id: ID) -> ApiResult<Generation> {
        let user_id = ctx.viewer().require()?;
        let id = parse_id(&id)?;
        Ok(domain::retry_and_enqueue(&ctx.services().generations, user_id, id).await?.into())
    }
}

#[derive(Default)]
pub struct GenerationsSubscription;

#[Subscription]
impl GenerationsSubscription {
    /// One of your generations: its current state at once, then every change
    /// of status, stage, progress and queue position, in order; the stream
    /// completes after a final state (SUCCEEDED, FAILED, CANCELED). A client
    /// that falls far behind gets the latest progress rather than every step.
    async fn generation_updated(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> Result<impl Stream<Item = ApiResult<Generation>> + use<>, ApiError> {
        let user_id = ctx.viewer().require()?;
        let id = parse_id(&id)?;
        Ok(generations_of(ctx.services().live.generation(user_id, id).await?))
    }

    /// Every change of any of your generations (creation included), from now
    /// on.
    async fn my_generations(
        &self,
        ctx: &Context<'_>,
    ) -> Result<impl Stream<Item = ApiResult<Generation>> + use<>, ApiError> {
        let user_id = ctx.viewer().require()?;
        Ok(generations_of(ctx.services().live.user_generations(user_id).await?))
    }
}

fn generations_of(sub: LiveSubscription) -> impl Stream<Item = ApiResult<Generation>> {
    sub.filter_map(|event| {
        std::future::ready(match event {
            Ok(Event::Generation(s)) => Some(Ok(Generation::from(s))),
            Ok(Event::Credits(_) | Event::Asset(_)) => None,
            Err(lagged) => Some(Err(lagged.into())),
        })
    })
}
