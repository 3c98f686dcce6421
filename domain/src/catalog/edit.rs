//! The catalogue editor: admins create models and replace their whole
//! definition (`createModel`, `updateModel`). Each change is checked in
//! full, written in one transaction with its prices, and leaves one
//! `mage::audit` line. Generations already created keep what they were
//! sold at: their `cost` and `backend` are copied onto them at creation.

use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use uuid::Uuid;

use super::{MediaKind, Price, RenderModel, assemble};
use crate::backends::Backends;
use crate::db::Connection;
use crate::enums::BackendKind;
use crate::rows::{RenderModelPrice, RenderModelRow};
use crate::schema::{render_model_prices, render_models};
use crate::{Error, Result, workflows};

/// The most a model id may have: the oldest `CHECK` of `render_models.id`.
pub const ID_MAX_CHARS: usize = 63;
pub const NAME_MAX_CHARS: usize = 100;
/// Per resolution, for `credits` and `creditsPerSecond` alike: far above
/// any real price, low enough that no price computation overflows.
pub const MAX_CREDITS: i64 = 1_000_000;
pub const MAX_DURATION_SECONDS: i32 = 3600;
/// `render_models.fps` admits 1 to 120; 24 is its default.
pub const DEFAULT_FPS: i32 = 24;
/// `render_models.max_attempts` admits 1 to 20.
pub const MAX_ATTEMPTS: i32 = 20;

/// A model's whole definition as an admin gives it. An omitted optional
/// value takes its default (fps 24, the deployment's render timeout and
/// attempts), on an update too: the definition is replaced. Only an
/// omitted sort order keeps the model's place (0 for a new one).
#[derive(Debug, Clone)]
pub struct ModelDefinition {
    pub name: String,
    pub kind: MediaKind,
    pub backend: BackendKind,
    pub workflow: String,
    pub inputs: Vec<MediaKind>,
    pub prices: Vec<Price>,
    pub max_duration_seconds: Option<i32>,
    pub default_duration_seconds: Option<i32>,
    pub fps: Option<i32>,
    pub render_timeout_seconds: Option<i32>,
    pub max_attempts: Option<i32>,
    pub active: bool,
    pub sort_order: Option<i32>,
}

/// The id of a new model: lowercase letters and digits in dash-separated
/// words (`wan-2-1-t2v`), as clients and URLs show it.
pub fn check_id(id: &str) -> Result<()> {
    let words_ok = id
        .split('-')
        .all(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
    if !words_ok {
        return Err(Error::invalid(
            "id",
            "must be lowercase letters and digits in words joined by single dashes",
        ));
    }
    if id.len() > ID_MAX_CHARS {
        return Err(Error::invalid("id", format!("must be at most {ID_MAX_CHARS} characters")));
    }
    Ok(())
}

/// A catalogue item's name as shown to users: trimmed, 1 to
/// [`NAME_MAX_CHARS`] characters, no control characters.
pub(crate) fn display_name(name: &str) -> Result<String> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > NAME_MAX_CHARS || name.chars().any(char::is_control) {
        return Err(Error::invalid(
            "name",
            format!("must be 1 to {NAME_MAX_CHARS} characters, no control characters"),
        ));
    }
    Ok(name.to_owned())
}

/// Checks a definition, and its workflow against the backend's templates
/// (see [`Backends::templates_dir`]).
pub fn check(def: &mut ModelDefinition, backends: &Backends) -> Result<()> {
    def.name = display_name(&def.name)?;
    check_prices(def)?;
    match def.kind {
        MediaKind::Video => {
            let max = def
                .max_duration_seconds
                .ok_or_else(|| Error::invalid("maxDurationSeconds", "is required for a video model"))?;
            if !(1..=MAX_DURATION_SECONDS).contains(&max) {
                return Err(Error::invalid(
                    "maxDurationSeconds",
                    format!("must be between 1 and {MAX_DURATION_SECONDS}"),
                ));
            }
            if let Some(d) = def.default_duration_seconds
                && !(1..=max).contains(&d)
            {
                return Err(Error::invalid(
                    "defaultDurationSeconds",
                    format!("must be between 1 and maxDurationSeconds ({max})"),
                ));
            }
        }
        MediaKind::Image => {
            if def.max_duration_seconds.is_some() {
                return Err(Error::invalid("maxDurationSeconds", "image models take no duration"));
            }
            if def.default_duration_seconds.is_some() {
                return Err(Error::invalid("defaultDurationSeconds", "image models take no duration"));
            }
        }
    }
    if let Some(fps) = def.fps
        && !(1..=120).contains(&fps)
    {
        return Err(Error::invalid("fps", "must be between 1 and 120"));
    }
    if def.render_timeout_seconds.is_some_and(|s| s < 1) {
        return Err(Error::invalid("renderTimeoutSeconds", "must be positive"));
    }
    if def.max_attempts.is_some_and(|a| !(1..=MAX_ATTEMPTS).contains(&a)) {
        return Err(Error::invalid("maxAttempts", format!("must be between 1 and {MAX_ATTEMPTS}")));
    }
    def.workflow = def.workflow.trim().to_owned();
    let dir = backends.templates_dir(def.backend);
    workflows::check(def.backend, dir.as_deref(), &def.workflow, def.kind, &def.inputs)
}

/// At least one price, one per resolution, each positive: a video is
/// charged `credits + creditsPerSecond × seconds`, an image `credits`.
fn check_prices(def: &mut ModelDefinition) -> Result<()> {
    if def.prices.is_empty() {
        return Err(Error::invalid("prices", "must offer at least one resolution"));
    }
    for (i, p) in def.prices.iter().enumerate() {
        if def.prices[..i].iter().any(|q| q.resolution == p.resolution) {
            return Err(Error::invalid("prices", format!("lists {} twice", p.resolution)));
        }
        if !(0..=MAX_CREDITS).contains(&p.credits) || !(0..=MAX_CREDITS).contains(&p.credits_per_second) {
            return Err(Error::invalid(
                "prices",
                format!("credits and creditsPerSecond must be between 0 and {MAX_CREDITS}"),
            ));
        }
        match def.kind {
            MediaKind::Image if p.credits_per_second != 0 => {
                return Err(Error::invalid(
                    "prices",
                    "an image model has no creditsPerSecond (it has no duration)",
                ));
            }
            MediaKind::Image if p.credits < 1 => {
                return Err(Error::invalid("prices", format!("credits must be positive ({})", p.resolution)));
            }
            MediaKind::Video if p.credits + p.credits_per_second < 1 => {
                return Err(Error::invalid(
                    "prices",
                    format!("credits or creditsPerSecond must be positive ({})", p.resolution),
                ));
            }
            _ => {}
        }
    }
    def.prices.sort_by_key(|p| p.resolution);
    Ok(())
}

/// Adds a model; `CONFLICT` if the id is taken.
pub async fn create_model(
    conn: &mut Connection,
    backends: &Backends,
    admin_id: Uuid,
    id: &str,
    mut def: ModelDefinition,
) -> Result<RenderModel> {
    check_id(id)?;
    check(&mut def, backends)?;
    let created = conn
        .transaction::<_, Error, _>(async |conn| {
            diesel::insert_into(render_models::table).values(row(id, &def)).execute(conn).await?;
            insert_prices(conn, id, &def.prices).await?;
            load(conn, id).await
        })
        .await
        .map_err(|e| {
            if e.is_unique_violation("render_models_pkey") {
                Error::Conflict(format!("a model {id} exists already: change it with updateModel"))
            } else {
                e
            }
        })?;
    tracing::info!(target: "mage::audit", %admin_id, model_id = id, action = "model.create",
        definition = %Fields(&summary(&created)), "catalogue changed");
    Ok(created)
}

/// Replaces a model's whole definition and its prices; `NOT_FOUND` for an
/// unknown id.
pub async fn update_model(
    conn: &mut Connection,
    backends: &Backends,
    admin_id: Uuid,
    id: &str,
    mut def: ModelDefinition,
) -> Result<RenderModel> {
    check(&mut def, backends)?;
    let (before, after) = conn
        .transaction::<_, Error, _>(async |conn| {
            let locked: Option<String> = render_models::table
                .find(id)
                .for_update()
                .select(render_models::id)
                .first(conn)
                .await
                .optional()?;
            if locked.is_none() {
                return Err(Error::NotFound("model"));
            }
            let before = load(conn, id).await?;
            def.sort_order = def.sort_order.or(Some(before.sort_order));
            diesel::update(render_models::table.find(id)).set(row(id, &def)).execute(conn).await?;
            diesel::delete(render_model_prices::table.filter(render_model_prices::model_id.eq(id)))
                .execute(conn)
                .await?;
            insert_prices(conn, id, &def.prices).await?;
            Ok((before, load(conn, id).await?))
        })
        .await?;
    let (was, now) = (summary(&before), summary(&after));
    let changed: Vec<&str> = was.iter().zip(&now).filter(|(a, b)| a != b).map(|((k, _), _)| *k).collect();
    tracing::info!(target: "mage::audit", %admin_id, model_id = id, action = "model.update",
        changed = %changed.join(","), before = %Fields(&was), after = %Fields(&now), "catalogue changed");
    Ok(after)
}

/// A model's row as written: an omitted value is written as its default
/// (or NULL), never left as it was.
#[derive(Insertable, AsChangeset)]
#[diesel(table_name = render_models, treat_none_as_null = true)]
struct Row<'a> {
    id: &'a str,
    kind: MediaKind,
    name: &'a str,
    backend: BackendKind,
    workflow: &'a str,
    inputs: Vec<Option<&'static str>>,
    max_duration_seconds: Option<i32>,
    default_duration_seconds: Option<i32>,
    fps: i32,
    render_timeout_seconds: Option<i32>,
    max_attempts: Option<i32>,
    active: bool,
    sort_order: i32,
}

fn row<'a>(id: &'a str, def: &'a ModelDefinition) -> Row<'a> {
    Row {
        id,
        kind: def.kind,
        name: &def.name,
        backend: def.backend,
        workflow: &def.workflow,
        inputs: def.inputs.iter().map(|k| Some(k.as_str())).collect(),
        max_duration_seconds: def.max_duration_seconds,
        default_duration_seconds: def.default_duration_seconds,
        fps: def.fps.unwrap_or(DEFAULT_FPS),
        render_timeout_seconds: def.render_timeout_seconds,
        max_attempts: def.max_attempts,
        active: def.active,
        sort_order: def.sort_order.unwrap_or(0),
    }
}

async fn insert_prices(conn: &mut Connection, id: &str, prices: &[Price]) -> Result<()> {
    let rows: Vec<_> = prices
        .iter()
        .map(|p| {
            (
                render_model_prices::model_id.eq(id),
                render_model_prices::resolution.eq(p.resolution),
                render_model_prices::credits.eq(p.credits),
                render_model_prices::credits_per_second.eq(p.credits_per_second),
            )
        })
        .collect();
    diesel::insert_into(render_model_prices::table).values(rows).execute(conn).await?;
    Ok(())
}

/// The model, whatever its state.
async fn load(conn: &mut Connection, id: &str) -> Result<RenderModel> {
    let rows = render_models::table
        .inner_join(render_model_prices::table)
        .filter(render_models::id.eq(id))
        .select((RenderModelRow::as_select(), RenderModelPrice::as_select()))
        .load(conn)
        .await?;
    assemble(rows).pop().ok_or(Error::NotFound("model"))
}

/// A model's definition as audit lines show it, field by field.
fn summary(m: &RenderModel) -> Vec<(&'static str, String)> {
    let opt = |v: Option<i32>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
    let prices: Vec<String> = m
        .prices
        .iter()
        .map(|p| format!("{}:{}+{}/s", p.resolution, p.credits, p.credits_per_second))
        .collect();
    let inputs: Vec<&str> = m.inputs.iter().map(|k| k.as_str()).collect();
    vec![
        ("name", format!("{:?}", m.name)),
        ("kind", m.kind.to_string()),
        ("backend", m.backend.to_string()),
        ("workflow", m.workflow.clone()),
        ("inputs", format!("[{}]", inputs.join(" "))),
        ("prices", prices.join(" ")),
        ("maxDurationSeconds", opt(m.max_duration_seconds)),
        ("defaultDurationSeconds", opt(m.default_duration_seconds)),
        ("fps", m.fps.to_string()),
        ("renderTimeoutSeconds", opt(m.render_timeout_seconds)),
        ("maxAttempts", opt(m.max_attempts)),
        ("active", m.active.to_string()),
        ("sortOrder", m.sort_order.to_string()),
    ]
}

/// Audit fields as `name=value` pairs.
pub(crate) struct Fields<'a>(pub(crate) &'a [(&'static str, String)]);

impl std::fmt::Display for Fields<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (k, v)) in self.0.iter().enumerate() {
            write!(f, "{}{k}={v}", if i == 0 { "" } else { " " })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enums::Resolution;

    fn video() -> ModelDefinition {
        ModelDefinition {
            name: " Wan ".into(),
            kind: MediaKind::Video,
            backend: BackendKind::Synthetic,
            workflow: "text-to-video".into(),
            inputs: vec![],
            prices: vec![
                Price { resolution: Resolution::R720p, credits: 0, credits_per_second: 4 },
                Price { resolution: Resolution::R480p, credits: 1, credits_per_second: 2 },
            ],
            max_duration_seconds: Some(10),
            default_duration_seconds: Some(5),
            fps: None,
            render_timeout_seconds: None,
            max_attempts: None,
            active: true,
            sort_order: None,
        }
    }

    fn field(def: ModelDefinition) -> &'static str {
        match check(&mut def.clone(), &Backends::synthetic()) {
            Err(Error::InvalidInput { field, .. }) => field,
            other => panic!("expected invalid input, got {other:?}"),
        }
    }

    #[test]
    fn ids_are_dashed_lowercase_words() {
        for ok in ["wan", "wan-2-1", "a1"] {
            assert!(check_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "a--b", "A", "a_b", "a b", "é", &"a".repeat(64)] {
            assert!(check_id(bad).is_err(), "{bad:?}");
        }
        assert!(check_id(&"a".repeat(63)).is_ok());
    }

    #[test]
    fn a_good_definition_is_trimmed_and_its_prices_sorted() {
        let mut def = video();
        check(&mut def, &Backends::synthetic()).expect("valid");
        assert_eq!(def.name, "Wan");
        assert_eq!(def.prices[0].resolution, Resolution::R480p);
    }

    #[test]
    fn bad_definitions_name_their_field() {
        assert_eq!(field(ModelDefinition { name: "  ".into(), ..video() }), "name");
        assert_eq!(field(ModelDefinition { name: "x".repeat(101), ..video() }), "name");
        assert_eq!(field(ModelDefinition { prices: vec![], ..video() }), "prices");
        let twice = vec![video().prices[0].clone(), video().prices[0].clone()];
        assert_eq!(field(ModelDefinition { prices: twice, ..video() }), "prices");
        let free = vec![Price { resolution: Resolution::R480p, credits: 0, credits_per_second: 0 }];
        assert_eq!(field(ModelDefinition { prices: free, ..video() }), "prices");
        let negative = vec![Price { resolution: Resolution::R480p, credits: 5, credits_per_second: -1 }];
        assert_eq!(field(ModelDefinition { prices: negative, ..video() }), "prices");
        assert_eq!(field(ModelDefinition { max_duration_seconds: None, ..video() }), "maxDurationSeconds");
        assert_eq!(field(ModelDefinition { max_duration_seconds: Some(0), ..video() }), "maxDurationSeconds");
        assert_eq!(
            field(ModelDefinition { default_duration_seconds: Some(11), ..video() }),
            "defaultDurationSeconds"
        );
        assert_eq!(field(ModelDefinition { fps: Some(121), ..video() }), "fps");
        assert_eq!(
            field(ModelDefinition { render_timeout_seconds: Some(0), ..video() }),
            "renderTimeoutSeconds"
        );
        assert_eq!(field(ModelDefinition { max_attempts: Some(0), ..video() }), "maxAttempts");
        assert_eq!(field(ModelDefinition { workflow: "../x".into(), ..video() }), "workflow");
        assert_eq!(field(ModelDefinition { inputs: vec![MediaKind::Image], ..video() }), "inputs");
        let image = ModelDefinition {
            kind: MediaKind::Image,
            workflow: "text-to-image".into(),
            max_duration_seconds: None,
            default_duration_seconds: None,
            prices: vec![Price { resolution: Resolution::R480p, credits: 2, credits_per_second: 0 }],
            ..video()
        };
        assert!(check(&mut image.clone(), &Backends::synthetic()).is_ok());
        assert_eq!(
            field(ModelDefinition { max_duration_seconds: Some(5), ..image.clone() }),
            "maxDurationSeconds"
        );
        let per_second = vec![Price { resolution: Resolution::R480p, credits: 2, credits_per_second: 1 }];
        assert_eq!(field(ModelDefinition { prices: per_second, ..image }), "prices");
    }
}
