//! Render models on offer and their prices, and the admins' catalogue
//! editor (`catalogModels`, `createModel`, `updateModel`).

use async_graphql::{Context, Enum, ID, InputObject, Object, SimpleObject};
use mage_domain::catalog::{self, ModelDefinition, Price};

use super::assets::AssetKind;
use super::context::{AdminOnly, ContextExt};
use super::generations::{ModelKind, Resolution};
use super::pagination::unpaged_complexity;
use crate::error::ApiResult;

/// Where a model's renders run.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
#[graphql(remote = "mage_domain::enums::BackendKind")]
pub enum RenderBackend {
    /// ffmpeg on the workers' CPUs (development, tests, demos).
    Synthetic,
    /// The operator's ComfyUI servers.
    #[graphql(name = "COMFYUI")]
    ComfyUi,
    /// Replicate's hosted models.
    Replicate,
}

/// What a model costs at one resolution: `credits + creditsPerSecond ×
/// durationSeconds`.
#[derive(SimpleObject)]
pub struct ModelPrice {
    resolution: Resolution,
    credits: i64,
    credits_per_second: i64,
}

pub struct RenderModel(catalog::RenderModel);

#[Object]
impl RenderModel {
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    async fn kind(&self) -> ModelKind {
        self.0.kind.into()
    }
    async fn name(&self) -> &str {
        &self.0.name
    }
    #[graphql(complexity = "unpaged_complexity(child_complexity)")]
    async fn resolutions(&self) -> Vec<Resolution> {
        self.0.resolutions().into_iter().map(Into::into).collect()
    }
    /// Video models only.
    async fn max_duration_seconds(&self) -> Option<i32> {
        self.0.max_duration_seconds
    }
    /// The duration used when `durationSeconds` is omitted (video models).
    async fn default_duration_seconds(&self) -> Option<i32> {
        self.0.default_duration_seconds
    }
    #[graphql(complexity = "unpaged_complexity(child_complexity)")]
    /// The kinds of your own assets it takes (`CreateGenerationInput.inputs`),
    /// in order; empty for a model that starts from text alone.
    async fn inputs(&self) -> Vec<super::assets::AssetKind> {
        self.0.inputs.iter().map(|k| (*k).into()).collect()
    }
    async fn prices(&self) -> Vec<ModelPrice> {
        self.0
            .prices
            .iter()
            .map(|p| ModelPrice {
                resolution: p.resolution.into(),
                credits: p.credits,
                credits_per_second: p.credits_per_second,
            })
            .collect()
    }
    /// Where its renders run (admins only).
    #[graphql(guard = "AdminOnly")]
    async fn backend(&self) -> RenderBackend {
        self.0.backend.into()
    }
    /// The backend's workflow: a built-in one (synthetic) or a template
    /// file's name (admins only).
    #[graphql(guard = "AdminOnly")]
    async fn workflow(&self) -> &str {
        &self.0.workflow
    }
    /// On offer; an inactive model is hidden from `models` (admins only).
    #[graphql(guard = "AdminOnly")]
    async fn active(&self) -> bool {
        self.0.active
    }
    /// Frames per second of its videos (admins only).
    #[graphql(guard = "AdminOnly")]
    async fn fps(&self) -> i32 {
        self.0.fps
    }
    /// Overrides the deployment's render timeout; null keeps it (admins
    /// only).
    #[graphql(guard = "AdminOnly")]
    async fn render_timeout_seconds(&self) -> Option<i32> {
        self.0.render_timeout_seconds
    }
    /// Overrides the deployment's attempts per render; null keeps them
    /// (admins only).
    #[graphql(guard = "AdminOnly")]
    async fn max_attempts(&self) -> Option<i32> {
        self.0.max_attempts
    }
    /// Display order, ascending (admins only).
    #[graphql(guard = "AdminOnly")]
    async fn sort_order(&self) -> i32 {
        self.0.sort_order
    }
}

/// One resolution of a model and its price: `credits + creditsPerSecond ×
/// durationSeconds` (an image model has no `creditsPerSecond`).
#[derive(InputObject)]
pub struct ModelPriceInput {
    resolution: Resolution,
    credits: i64,
    #[graphql(default)]
    credits_per_second: i64,
}

/// A model's whole definition. An omitted optional field takes its
/// default (fps 24, the deployment's render timeout and attempts), on
/// `updateModel` too; an omitted `sortOrder` keeps the model's place (0
/// for a new one).
#[derive(InputObject)]
pub struct ModelInput {
    /// Shown to users; 1 to 100 characters.
    name: String,
    kind: ModelKind,
    backend: RenderBackend,
    /// A synthetic workflow (`text-to-video`, `text-to-image`,
    /// `image-edit`, `image-to-video`), or the name of a template
    /// `<workflow>.json` in the backend's folder (`MAGE_COMFYUI_WORKFLOWS`,
    /// `MAGE_REPLICATE_WORKFLOWS`).
    workflow: String,
    /// The user's assets it renders from, in order.
    #[graphql(default)]
    inputs: Vec<AssetKind>,
    /// At least one; each resolution once.
    prices: Vec<ModelPriceInput>,
    /// Required for a video model; none for an image model.
    max_duration_seconds: Option<i32>,
    default_duration_seconds: Option<i32>,
    /// 1 to 120.
    fps: Option<i32>,
    render_timeout_seconds: Option<i32>,
    /// 1 to 20.
    max_attempts: Option<i32>,
    #[graphql(default = true)]
    active: bool,
    sort_order: Option<i32>,
}

impl From<ModelInput> for ModelDefinition {
    fn from(i: ModelInput) -> Self {
        Self {
            name: i.name,
            kind: i.kind.into(),
            backend: i.backend.into(),
            workflow: i.workflow,
            inputs: i.inputs.into_iter().map(Into::into).collect(),
            prices: i
                .prices
                .into_iter()
                .map(|p| Price {
                    resolution: p.resolution.into(),
                    credits: p.credits,
                    credits_per_second: p.credits_per_second,
                })
                .collect(),
            max_duration_seconds: i.max_duration_seconds,
            default_duration_seconds: i.default_duration_seconds,
            fps: i.fps,
            render_timeout_seconds: i.render_timeout_seconds,
            max_attempts: i.max_attempts,
            active: i.active,
            sort_order: i.sort_order,
        }
    }
}

#[derive(Default)]
pub struct CatalogMutation;

#[Object]
impl CatalogMutation {
    /// Adds a render model (admins only). `id` is lowercase letters and
    /// digits in dash-separated words, at most 63 characters; `CONFLICT`
    /// if taken. The workflow is checked against the backend: a synthetic
    /// one must exist, a template must exist, parse, use `"{{prompt}}"`,
    /// and use `"{{image}}"` exactly when `inputs` is `[IMAGE]`. A backend
    /// the deployment does not offer is allowed (the model stays hidden
    /// until it is), its templates looked for in the default folder.
    #[graphql(guard = "AdminOnly")]
    async fn create_model(&self, ctx: &Context<'_>, id: String, input: ModelInput) -> ApiResult<RenderModel> {
        let admin_id = ctx.viewer().require()?;
        let svc = ctx.services();
        let mut conn = ctx.conn().await?;
        let m =
            catalog::create_model(&mut conn, &svc.generations.backends, admin_id, &id, input.into()).await?;
        svc.models.forget(&m.id);
        Ok(RenderModel(m))
    }

    /// Replaces a model's whole definition, prices included (admins only);
    /// `NOT_FOUND` for an unknown id. Checked as `createModel` checks it.
    /// Every instance prices with it within 2 s; generations already
    /// created keep their price and backend.
    #[graphql(guard = "AdminOnly")]
    async fn update_model(&self, ctx: &Context<'_>, id: ID, input: ModelInput) -> ApiResult<RenderModel> {
        let admin_id = ctx.viewer().require()?;
        let svc = ctx.services();
        let mut conn = ctx.conn().await?;
        let m =
            catalog::update_model(&mut conn, &svc.generations.backends, admin_id, &id, input.into()).await?;
        svc.models.forget(&m.id);
        Ok(RenderModel(m))
    }
}

#[derive(Default)]
pub struct CatalogQuery;

#[Object]
impl CatalogQuery {
    /// What can be generated, with prices.
    #[graphql(complexity = "unpaged_complexity(child_complexity)")]
    async fn models(&self, ctx: &Context<'_>) -> ApiResult<Vec<RenderModel>> {
        let mut conn = ctx.conn().await?;
        let backends = &ctx.services().generations.backends;
        Ok(catalog::models(&mut conn)
            .await?
            .into_iter()
            .filter(|m| backends.offers(m.backend))
            .map(RenderModel)
            .collect())
    }

    /// Every model, active or not, on any backend, in display order
    /// (admins only).
    #[graphql(guard = "AdminOnly", complexity = "unpaged_complexity(child_complexity)")]
    async fn catalog_models(&self, ctx: &Context<'_>) -> ApiResult<Vec<RenderModel>> {
        let mut conn = ctx.conn().await?;
        Ok(catalog::all_models(&mut conn).await?.into_iter().map(RenderModel).collect())
    }
}
