//! Replicate templates: `workflows/replicate/<workflow>.json`, one per
//! model, `{"model": "owner/name", "version": "<optional>", "input": {...}}`.
//! The input takes the whole-value placeholders of the ComfyUI templates
//! (`"{{prompt}}"`, `"{{seed}}"`, `"{{image}}"`, ...; see
//! [`workflow::PLACEHOLDERS`]) plus two that Replicate's hosted models ask
//! for instead of pixel sizes: `{{resolution}}` (`"480p"`, `"720p"`, ...)
//! and `{{aspect_ratio}}` (`"16:9"`, ...). Values are put in as JSON
//! values, never spliced into text.

use std::path::Path;

use serde_json::{Map, Value};

use crate::backend::comfyui::workflow::{self, IMAGE, TemplateError, Values};

/// Placeholders only Replicate templates have.
pub const EXTRA_PLACEHOLDERS: &[&str] = &["resolution", "aspect_ratio"];

/// Aspect ratios Replicate's image and video models take, as `w:h`.
const ASPECT_RATIOS: &[(u32, u32)] =
    &[(1, 1), (16, 9), (9, 16), (4, 3), (3, 4), (3, 2), (2, 3), (5, 4), (4, 5), (21, 9), (9, 21)];

/// The value of a placeholder: the extras derive from the frame size; the
/// others are the ComfyUI ones (`images` holding the uploaded files' URLs).
fn value(values: &Values, name: &str) -> Option<Value> {
    match name {
        "resolution" => Some(Value::from(resolution(values.width, values.height))),
        "aspect_ratio" => Some(Value::from(aspect_ratio(values.width, values.height))),
        _ => values.get(name),
    }
}

/// `"480p"` for 854×480 or 480×854: the short side, as video models name
/// their sizes.
pub fn resolution(width: u32, height: u32) -> String {
    format!("{}p", width.min(height).max(1))
}

/// The listed ratio nearest to `width:height`.
pub fn aspect_ratio(width: u32, height: u32) -> String {
    let want = f64::from(width.max(1)) / f64::from(height.max(1));
    let off = |&(w, h): &(u32, u32)| (f64::from(w) / f64::from(h) / want).ln().abs();
    let mut best = ASPECT_RATIOS[0];
    for r in ASPECT_RATIOS {
        if off(r) < off(&best) {
            best = *r;
        }
    }
    format!("{}:{}", best.0, best.1)
}

#[derive(Debug, Clone)]
pub struct Template {
    pub name: String,
    /// `owner/name` of the model on Replicate.
    pub model: String,
    /// A pinned version: predictions then go to `POST /v1/predictions`.
    pub version: Option<String>,
    input: Map<String, Value>,
    inputs: usize,
}

fn valid_model(model: &str) -> bool {
    let ok = |part: &str| {
        !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    };
    matches!(model.split_once('/'), Some((owner, name)) if ok(owner) && ok(name))
}

impl Template {
    pub fn parse(name: &str, path: &Path, text: &str) -> Result<Self, TemplateError> {
        let invalid = |reason: String| TemplateError::Invalid { path: path.to_path_buf(), reason };
        let mut doc = match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(m)) => m,
            Ok(_) => return Err(invalid("not a JSON object {\"model\", \"version\", \"input\"}".into())),
            Err(e) => return Err(invalid(format!("not JSON: {e}"))),
        };
        if let Some(key) = doc.keys().find(|k| !matches!(k.as_str(), "model" | "version" | "input")) {
            return Err(invalid(format!("unknown key {key:?} (known: model, version, input)")));
        }
        let model = match doc.remove("model") {
            Some(Value::String(m)) if valid_model(&m) => m,
            _ => return Err(invalid("\"model\" must name a Replicate model as \"owner/name\"".into())),
        };
        let version = match doc.remove("version") {
            None | Some(Value::Null) => None,
            Some(Value::String(v)) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_alphanumeric()) => {
                Some(v)
            }
            Some(_) => return Err(invalid("\"version\" must be a version id (letters and digits)".into())),
        };
        let Some(Value::Object(input)) = doc.remove("input") else {
            return Err(invalid("\"input\" must be an object of the model's inputs".into()));
        };
        let mut used = Vec::new();
        for v in input.values() {
            mage_domain::workflows::collect_placeholders(v, &mut used);
        }
        let known =
            |p: &str| workflow::PLACEHOLDERS.iter().any(|(n, _)| *n == p) || EXTRA_PLACEHOLDERS.contains(&p);
        if let Some(p) = used.iter().find(|p| !known(p)) {
            let mut all: Vec<&str> = workflow::PLACEHOLDERS.iter().map(|(n, _)| *n).collect();
            all.extend(EXTRA_PLACEHOLDERS);
            return Err(invalid(format!("unknown placeholder {{{{{p}}}}} (known: {})", all.join(", "))));
        }
        if !used.iter().any(|p| p == "prompt") {
            return Err(invalid("does not use {{prompt}}".into()));
        }
        let inputs = usize::from(used.iter().any(|p| p == IMAGE));
        Ok(Self { name: name.to_owned(), model, version, input, inputs })
    }

    /// How many input images a render needs: one when it uses `{{image}}`.
    pub fn inputs(&self) -> usize {
        self.inputs
    }

    /// The prediction's `input` with every placeholder replaced.
    pub fn fill(&self, values: &Values) -> Value {
        let mut input = Value::Object(self.input.clone());
        workflow::replace_with(&mut input, &|p| value(values, p));
        input
    }
}

/// The Replicate model templates of a folder, read once at start so a bad
/// template stops `mage work` with its path instead of failing renders.
pub type Templates = workflow::TemplateDir<Template>;

impl workflow::TemplateFile for Template {
    const KIND: &'static str = "Replicate";
    fn parse(name: &str, path: &Path, text: &str) -> Result<Self, TemplateError> {
        Template::parse(name, path, text)
    }
    fn inputs(&self) -> usize {
        Template::inputs(self)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn fill(prompt: &str, images: &[&str]) -> Values {
        Values {
            prompt: prompt.into(),
            negative_prompt: String::new(),
            seed: 42,
            width: 854,
            height: 480,
            frames: 81,
            fps: 16,
            duration_seconds: 5,
            filename_prefix: "mage_x".into(),
            images: images.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn fills_typed_values_and_keeps_hostile_prompts_inside_their_string() {
        let t = Template::parse(
            "t",
            Path::new("t.json"),
            r#"{"model": "wan-video/wan-2.2-t2v-fast", "input": {"prompt": "{{prompt}}", "seed": "{{seed}}",
                "num_frames": "{{frames}}", "frames_per_second": "{{fps}}", "resolution": "{{resolution}}",
                "aspect_ratio": "{{aspect_ratio}}", "go_fast": true}}"#,
        )
        .unwrap();
        assert_eq!(
            (t.model.as_str(), t.version.as_deref(), t.inputs()),
            ("wan-video/wan-2.2-t2v-fast", None, 0)
        );
        let hostile = r#"x", "go_fast": false, "y": "{{seed}}"#;
        let input = t.fill(&fill(hostile, &[]));
        assert_eq!(
            input,
            serde_json::json!({"prompt": hostile, "seed": 42, "num_frames": 81, "frames_per_second": 16,
                "resolution": "480p", "aspect_ratio": "16:9", "go_fast": true})
        );
    }

    #[test]
    fn the_image_placeholder_takes_the_uploaded_url() {
        let t = Template::parse(
            "t",
            Path::new("t.json"),
            r#"{"model": "o/m", "version": "abc123", "input": {"prompt": "{{prompt}}", "image": "{{image}}"}}"#,
        )
        .unwrap();
        assert_eq!((t.inputs(), t.version.as_deref()), (1, Some("abc123")));
        let input = t.fill(&fill("p", &["https://api.replicate.com/v1/files/abc"]));
        assert_eq!(input["image"], "https://api.replicate.com/v1/files/abc");
    }

    #[test]
    fn rejects_bad_models_keys_placeholders_and_missing_prompt() {
        let p = Path::new("t.json");
        for bad in [
            r#"{"model": "flux", "input": {"prompt": "{{prompt}}"}}"#,
            r#"{"model": "a/b/c", "input": {"prompt": "{{prompt}}"}}"#,
            r#"{"model": "o/m", "inputs": {"prompt": "{{prompt}}"}}"#,
            r#"{"model": "o/m", "input": {"prompt": "{{promt}}"}}"#,
            r#"{"model": "o/m", "input": {"seed": "{{seed}}"}}"#,
            r#"{"model": "o/m", "version": "", "input": {"prompt": "{{prompt}}"}}"#,
            r#"[1]"#,
        ] {
            assert!(Template::parse("t", p, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes_become_replicate_names() {
        assert_eq!(resolution(1280, 720), "720p");
        assert_eq!(resolution(480, 854), "480p");
        assert_eq!(aspect_ratio(854, 480), "16:9");
        assert_eq!(aspect_ratio(480, 854), "9:16");
        assert_eq!(aspect_ratio(1024, 1024), "1:1");
        assert_eq!(aspect_ratio(1000, 760), "4:3");
    }

    #[test]
    fn the_shipped_templates_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../workflows/replicate");
        let t = Templates::load(&dir).unwrap();
        assert_eq!(t.names(), ["image-to-video", "text-to-image", "text-to-video"]);
        assert_eq!(t.get("image-to-video").map(Template::inputs), Some(1));
        assert_eq!(t.get("text-to-image").map(|t| t.model.as_str()), Some("black-forest-labs/flux-schnell"));
    }
}
