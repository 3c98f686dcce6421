//! The render model catalogue, prices and input validation. `quote` and
//! `createGeneration` both go through [`price`], so a generation is charged
//! exactly what its quote said.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use crate::db::Connection;
pub use crate::enums::{BackendKind, MediaKind, Resolution};
use crate::rows::{RenderModelPrice, RenderModelRow};
use crate::schema::{render_model_prices, render_models};
use crate::{Error, Result};

mod edit;
pub(crate) use edit::{Fields, display_name};
pub use edit::{ModelDefinition, create_model, update_model};

pub const PROMPT_MAX_CHARS: usize = 2000;

impl Resolution {
    /// Frame size: 16:9 with even dimensions, as encoders need.
    pub fn dimensions(self) -> (u32, u32) {
        match self {
            Self::R480p => (854, 480),
            Self::R720p => (1280, 720),
            Self::R1080p => (1920, 1080),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Price {
    pub resolution: Resolution,
    pub credits: i64,
    pub credits_per_second: i64,
}

#[derive(Debug, Clone)]
pub struct RenderModel {
    pub id: String,
    pub kind: MediaKind,
    pub name: String,
    /// Where its renders run.
    pub backend: BackendKind,
    pub workflow: String,
    pub max_duration_seconds: Option<i32>,
    pub default_duration_seconds: Option<i32>,
    pub fps: i32,
    /// Overrides of `MAGE_RENDER_TIMEOUT_SECONDS` / `MAGE_JOB_ATTEMPTS`.
    pub render_timeout_seconds: Option<i32>,
    pub max_attempts: Option<i32>,
    /// The kinds of the user's assets it renders from, in order.
    pub inputs: Vec<MediaKind>,
    /// Ascending by resolution.
    pub prices: Vec<Price>,
    /// On offer; an inactive model is kept for its generations' sake.
    pub active: bool,
    /// Display order, ascending.
    pub sort_order: i32,
}

impl RenderModel {
    pub fn resolutions(&self) -> Vec<Resolution> {
        self.prices.iter().map(|p| p.resolution).collect()
    }
}

/// What a client asks for, before validation.
#[derive(Debug, Clone, Default)]
pub struct GenerationInput {
    pub model: String,
    pub prompt: String,
    pub negative_prompt: Option<String>,
    pub resolution: String,
    pub duration_seconds: Option<i32>,
    pub seed: Option<i64>,
    /// The user's READY assets the model renders from, in its order.
    pub inputs: Vec<uuid::Uuid>,
}

/// A validated, priced input.
#[derive(Debug, Clone)]
pub struct Quote {
    pub model: RenderModel,
    pub prompt: String,
    pub negative_prompt: Option<String>,
    pub resolution: Resolution,
    /// `None` for images.
    pub duration_seconds: Option<i32>,
    pub seed: Option<i64>,
    pub price: i64,
}

/// Active models in display order, with their prices.
pub async fn models(conn: &mut Connection) -> Result<Vec<RenderModel>> {
    let rows = render_models::table
        .inner_join(render_model_prices::table)
        .filter(render_models::active.eq(true))
        .order((render_models::sort_order.asc(), render_models::id.asc()))
        .select((RenderModelRow::as_select(), RenderModelPrice::as_select()))
        .load(conn)
        .await?;
    Ok(assemble(rows))
}

/// Every model, active or not, in display order (the catalogue editor).
pub async fn all_models(conn: &mut Connection) -> Result<Vec<RenderModel>> {
    let rows = render_models::table
        .inner_join(render_model_prices::table)
        .order((render_models::sort_order.asc(), render_models::id.asc()))
        .select((RenderModelRow::as_select(), RenderModelPrice::as_select()))
        .load(conn)
        .await?;
    Ok(assemble(rows))
}

/// One active model with its prices, in one prepared statement (it prices
/// every `createGeneration`).
pub async fn model(conn: &mut Connection, id: &str) -> Result<Option<RenderModel>> {
    let rows = render_models::table
        .inner_join(render_model_prices::table)
        .filter(render_models::id.eq(id))
        .filter(render_models::active.eq(true))
        .select((RenderModelRow::as_select(), RenderModelPrice::as_select()))
        .load(conn)
        .await?;
    Ok(assemble(rows).pop())
}

/// Models as `createGeneration` prices them: each is kept for
/// [`ModelCache::TTL`] in this process, which spares every create a query.
/// Admins edit the catalogue rarely (`createModel`, `updateModel`); a
/// price change or a deactivation applies on every instance within that
/// time, and at once on the one that made it ([`ModelCache::forget`]). Unknown ids are not kept, so a new
/// model can be used at once. Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct ModelCache(
    std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, (std::time::Instant, RenderModel)>>>,
);

impl ModelCache {
    pub const TTL: std::time::Duration = std::time::Duration::from_secs(2);

    pub async fn model(&self, conn: &mut Connection, id: &str) -> Result<Option<RenderModel>> {
        if let Ok(cache) = self.0.lock()
            && let Some((at, m)) = cache.get(id)
            && at.elapsed() < Self::TTL
        {
            return Ok(Some(m.clone()));
        }
        let found = model(conn, id).await?;
        if let (Some(m), Ok(mut cache)) = (&found, self.0.lock()) {
            cache.insert(id.to_owned(), (std::time::Instant::now(), m.clone()));
        }
        Ok(found)
    }

    /// Drops what is kept of `id`: the next read sees the database.
    pub fn forget(&self, id: &str) {
        if let Ok(mut cache) = self.0.lock() {
            cache.remove(id);
        }
    }
}

/// Groups joined (model, price) rows, ordered by model, into models; a model
/// without a price this build knows is left out.
fn assemble(rows: Vec<(RenderModelRow, RenderModelPrice)>) -> Vec<RenderModel> {
    let mut models: Vec<RenderModel> = Vec::new();
    for (r, p) in rows {
        if models.last().is_none_or(|m| m.id != r.id) {
            models.push(RenderModel {
                id: r.id,
                kind: r.kind,
                name: r.name,
                backend: r.backend,
                workflow: r.workflow,
                max_duration_seconds: r.max_duration_seconds,
                default_duration_seconds: r.default_duration_seconds,
                fps: r.fps,
                render_timeout_seconds: r.render_timeout_seconds,
                max_attempts: r.max_attempts,
                // The column's CHECK admits only kinds this build knows.
                inputs: r.inputs.iter().flatten().filter_map(|k| MediaKind::parse(k)).collect(),
                prices: Vec::new(),
                active: r.active,
                sort_order: r.sort_order,
            });
        }
        if let Some(m) = models.last_mut() {
            m.prices.push(Price {
                resolution: p.resolution,
                credits: p.credits,
                credits_per_second: p.credits_per_second,
            });
        }
    }
    models.retain(|m| !m.prices.is_empty());
    for m in &mut models {
        m.prices.sort_by_key(|p| p.resolution);
    }
    models
}

/// Validates `input` against `model` and prices it.
pub fn price(model: Option<RenderModel>, input: &GenerationInput) -> Result<Quote> {
    let model = model.ok_or_else(|| Error::invalid("model", format!("unknown model {:?}", input.model)))?;
    let prompt = check_text("prompt", &input.prompt, 1)?;
    let negative_prompt = match input.negative_prompt.as_deref() {
        None => None,
        Some(n) => Some(check_text("negativePrompt", n, 0)?).filter(|n| !n.is_empty()),
    };
    let resolution = Resolution::parse(&input.resolution)
        .and_then(|r| model.prices.iter().find(|p| p.resolution == r))
        .ok_or_else(|| {
            let offered: Vec<&str> = model.prices.iter().map(|p| p.resolution.as_str()).collect();
            Error::invalid("resolution", format!("{} offers {}", model.id, offered.join(", ")))
        })?
        .clone();
    let duration_seconds = match (model.kind, input.duration_seconds) {
        (MediaKind::Image, None) => None,
        (MediaKind::Image, Some(_)) => {
            return Err(Error::invalid("durationSeconds", "image models take no duration"));
        }
        (MediaKind::Video, d) => {
            let max = model.max_duration_seconds.unwrap_or(1);
            let d = d.or(model.default_duration_seconds).unwrap_or(max);
            if d < 1 || d > max {
                return Err(Error::invalid(
                    "durationSeconds",
                    format!("must be between 1 and {max} seconds for {}", model.id),
                ));
            }
            Some(d)
        }
    };
    if let Some(seed) = input.seed
        && seed < 0
    {
        return Err(Error::invalid("seed", "must not be negative"));
    }
    let price = resolution.credits + resolution.credits_per_second * i64::from(duration_seconds.unwrap_or(0));
    Ok(Quote {
        prompt,
        negative_prompt,
        resolution: resolution.resolution,
        duration_seconds,
        seed: input.seed,
        price,
        model,
    })
}

fn check_text(field: &'static str, text: &str, min: usize) -> Result<String> {
    let t = text.trim();
    // Newlines and tabs are how people write prompts; every other control
    // character is either an accident or an attack on a downstream renderer.
    if t.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Err(Error::invalid(field, "must not contain control characters"));
    }
    let n = t.chars().count();
    if n < min {
        return Err(Error::invalid(field, "must not be empty"));
    }
    if n > PROMPT_MAX_CHARS {
        return Err(Error::invalid(field, format!("must be at most {PROMPT_MAX_CHARS} characters")));
    }
    Ok(t.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn video() -> RenderModel {
        RenderModel {
            id: "v".into(),
            kind: MediaKind::Video,
            name: "V".into(),
            backend: BackendKind::Synthetic,
            workflow: "w".into(),
            max_duration_seconds: Some(10),
            default_duration_seconds: Some(5),
            fps: 24,
            render_timeout_seconds: None,
            max_attempts: None,
            inputs: Vec::new(),
            prices: vec![
                Price { resolution: Resolution::R480p, credits: 0, credits_per_second: 2 },
                Price { resolution: Resolution::R720p, credits: 0, credits_per_second: 4 },
            ],
            active: true,
            sort_order: 0,
        }
    }

    fn input(prompt: &str, resolution: &str, d: Option<i32>) -> GenerationInput {
        GenerationInput {
            model: "v".into(),
            prompt: prompt.into(),
            resolution: resolution.into(),
            duration_seconds: d,
            ..GenerationInput::default()
        }
    }

    fn field(r: Result<Quote>) -> &'static str {
        match r {
            Err(Error::InvalidInput { field, .. }) => field,
            other => panic!("expected invalid input, got {other:?}"),
        }
    }

    #[test]
    fn prices_video_per_second() {
        assert_eq!(price(Some(video()), &input("a cat", "480p", Some(5))).unwrap().price, 10);
        assert_eq!(price(Some(video()), &input("a cat", "720p", None)).unwrap().price, 20);
    }

    #[test]
    fn rejects_bad_input_naming_the_field() {
        assert_eq!(field(price(None, &input("a", "480p", None))), "model");
        assert_eq!(field(price(Some(video()), &input("   ", "480p", None))), "prompt");
        assert_eq!(field(price(Some(video()), &input("a\u{7}b", "480p", None))), "prompt");
        assert_eq!(field(price(Some(video()), &input(&"x".repeat(2001), "480p", None))), "prompt");
        assert_eq!(field(price(Some(video()), &input("a", "1080p", None))), "resolution");
        assert_eq!(field(price(Some(video()), &input("a", "480p", Some(11)))), "durationSeconds");
        assert_eq!(field(price(Some(video()), &input("a", "480p", Some(0)))), "durationSeconds");
    }

    #[test]
    fn trims_and_keeps_newlines() {
        let q = price(Some(video()), &input("  two\nlines  ", "480p", None)).unwrap();
        assert_eq!(q.prompt, "two\nlines");
        assert_eq!(price(Some(video()), &input(&"é".repeat(2000), "480p", None)).unwrap().price, 10);
    }
}
