//! Render models on offer and their prices.

use async_graphql::{Context, ID, Object, SimpleObject};
use mage_domain::catalog;

use super::context::ContextExt;
use super::generations::{ModelKind, Resolution};
use super::pagination::unpaged_complexity;
use crate::error::ApiResult;

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
}
