//! ComfyUI workflow templates: API-format graphs (ComfyUI's "Export (API)")
//! in which an input whose whole value is a placeholder string such as
//! `"{{prompt}}"` is replaced by a JSON value of the right type. The graph
//! is never built by string concatenation, so no prompt can break out of
//! its string or inject nodes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use mage_domain::workflows::{collect_placeholders, placeholder};
use serde_json::{Map, Value};

/// What a template may ask for, and the JSON type it gets.
pub const PLACEHOLDERS: &[(&str, Kind)] = &[
    ("prompt", Kind::Text),
    ("negative_prompt", Kind::Text),
    ("seed", Kind::Integer),
    ("width", Kind::Integer),
    ("height", Kind::Integer),
    ("frames", Kind::Integer),
    ("fps", Kind::Integer),
    ("duration_seconds", Kind::Integer),
    ("filename_prefix", Kind::Text),
    ("image", Kind::Text),
];

/// The placeholder of the request's input image: the name ComfyUI gave
/// the file Mage uploaded, as a `LoadImage` node takes it.
pub const IMAGE: &str = mage_domain::workflows::IMAGE;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    Integer,
}

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("cannot read workflow templates in {dir}: {source}")]
    Dir { dir: PathBuf, source: std::io::Error },
    #[error("workflow template {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

/// The values one render fills in.
#[derive(Debug, Clone)]
pub struct Values {
    pub prompt: String,
    pub negative_prompt: String,
    pub seed: u64,
    pub width: u32,
    pub height: u32,
    pub frames: u32,
    pub fps: u32,
    pub duration_seconds: u32,
    pub filename_prefix: String,
    /// Names of the uploaded inputs on the ComfyUI server, in the model's
    /// order; `{{image}}` is the first.
    pub images: Vec<String>,
}

impl Values {
    /// The JSON value of placeholder `name`, when it is one of
    /// [`PLACEHOLDERS`] (`{{image}}` only with an input).
    pub(crate) fn get(&self, name: &str) -> Option<Value> {
        Some(match name {
            "prompt" => Value::from(self.prompt.as_str()),
            "negative_prompt" => Value::from(self.negative_prompt.as_str()),
            "seed" => Value::from(self.seed),
            "width" => Value::from(self.width),
            "height" => Value::from(self.height),
            "frames" => Value::from(self.frames),
            "fps" => Value::from(self.fps),
            "duration_seconds" => Value::from(self.duration_seconds),
            "filename_prefix" => Value::from(self.filename_prefix.as_str()),
            IMAGE => Value::from(self.images.first()?.as_str()),
            _ => return None,
        })
    }
}

#[derive(Debug, Clone)]
pub struct Template {
    pub name: String,
    graph: Map<String, Value>,
    /// How many input images a render of it needs.
    inputs: usize,
}

impl Template {
    /// Parses and checks a template: an object of nodes with a `class_type`,
    /// whose placeholders are all known, and which uses `{{prompt}}`.
    pub fn parse(name: &str, path: &Path, text: &str) -> Result<Self, TemplateError> {
        let invalid = |reason: String| TemplateError::Invalid { path: path.to_path_buf(), reason };
        let graph = match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(m)) => m,
            Ok(_) => {
                return Err(invalid("not a JSON object of nodes (export it with \"Save (API)\")".into()));
            }
            Err(e) => return Err(invalid(format!("not JSON: {e}"))),
        };
        for (id, node) in &graph {
            if node.get("class_type").and_then(Value::as_str).is_none() {
                return Err(invalid(format!(
                    "node {id} has no class_type (is this the UI format? export it with \"Save (API)\")"
                )));
            }
        }
        let mut used = Vec::new();
        for v in graph.values() {
            collect_placeholders(v, &mut used);
        }
        for p in &used {
            if !PLACEHOLDERS.iter().any(|(n, _)| n == p) {
                let known: Vec<&str> = PLACEHOLDERS.iter().map(|(n, _)| *n).collect();
                return Err(invalid(format!(
                    "unknown placeholder {{{{{p}}}}} (known: {})",
                    known.join(", ")
                )));
            }
        }
        if !used.iter().any(|p| p == mage_domain::workflows::PROMPT) {
            return Err(invalid("does not use {{prompt}}".into()));
        }
        let inputs = usize::from(used.iter().any(|p| p == IMAGE));
        Ok(Self { name: name.to_owned(), graph, inputs })
    }

    /// How many input images a render of this template needs: one when it
    /// uses `{{image}}`.
    pub fn inputs(&self) -> usize {
        self.inputs
    }

    /// The graph with every placeholder replaced by its value.
    pub fn fill(&self, values: &Values) -> Value {
        let mut graph = Value::Object(self.graph.clone());
        replace(&mut graph, values);
        graph
    }
}

fn replace(v: &mut Value, values: &Values) {
    replace_with(v, &|p| values.get(p));
}

/// Replaces every whole-value placeholder in `v` for which `value` has a
/// value; the others stay as they are.
pub(crate) fn replace_with(v: &mut Value, value: &dyn Fn(&str) -> Option<Value>) {
    match v {
        Value::String(s) => {
            if let Some(new) = placeholder(s).and_then(value) {
                *v = new;
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| replace_with(x, value)),
        Value::Object(m) => m.values_mut().for_each(|x| replace_with(x, value)),
        _ => {}
    }
}

/// A template as read from its file (a ComfyUI graph, a Replicate model
/// template), checked when it is parsed.
pub trait TemplateFile: Sized {
    /// Which backend's templates these are, for messages.
    const KIND: &'static str;
    fn parse(name: &str, path: &Path, text: &str) -> Result<Self, TemplateError>;
    /// How many input images a render of it needs.
    fn inputs(&self) -> usize;
}

impl TemplateFile for Template {
    const KIND: &'static str = "ComfyUI workflow";
    fn parse(name: &str, path: &Path, text: &str) -> Result<Self, TemplateError> {
        Template::parse(name, path, text)
    }
    fn inputs(&self) -> usize {
        Template::inputs(self)
    }
}

/// The ComfyUI workflow templates of a folder.
pub type Templates = TemplateDir<Template>;

/// Every `<name>.json` of a folder, by name. Read once at start, so a bad
/// template stops `mage work` with its path instead of failing renders.
#[derive(Debug, Clone)]
pub struct TemplateDir<T> {
    pub dir: PathBuf,
    by_name: HashMap<String, T>,
}

impl<T: TemplateFile> TemplateDir<T> {
    pub fn load(dir: &Path) -> Result<Self, TemplateError> {
        let entries =
            std::fs::read_dir(dir).map_err(|source| TemplateError::Dir { dir: dir.to_path_buf(), source })?;
        let mut by_name = HashMap::new();
        for entry in entries {
            let path = entry.map_err(|source| TemplateError::Dir { dir: dir.to_path_buf(), source })?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let Some(name) = path.file_stem().and_then(|s| s.to_str()).map(str::to_owned) else {
                continue;
            };
            let text = std::fs::read_to_string(&path)
                .map_err(|e| TemplateError::Invalid { path: path.clone(), reason: e.to_string() })?;
            by_name.insert(name.clone(), T::parse(&name, &path, &text)?);
        }
        Ok(Self { dir: dir.to_path_buf(), by_name })
    }

    pub fn get(&self, name: &str) -> Option<&T> {
        self.by_name.get(name)
    }

    /// The template of `req`'s workflow, when there is one and `req` has
    /// the input images it needs; otherwise the render fails.
    pub fn for_request(
        &self,
        req: &crate::backend::RenderRequest,
    ) -> Result<&T, crate::backend::RenderError> {
        use crate::backend::RenderError;
        let template = self.get(&req.workflow).ok_or_else(|| RenderError::Failed {
            user_message: "This model is not available right now.".into(),
            detail: format!(
                "model {}: no {} template {}.json in {}",
                req.model,
                T::KIND,
                req.workflow,
                self.dir.display()
            ),
        })?;
        if req.inputs.len() != template.inputs() {
            return Err(RenderError::Failed {
                user_message: if template.inputs() == 0 {
                    "This model does not take input images.".into()
                } else {
                    "This model needs exactly one input image.".into()
                },
                detail: format!(
                    "{} {} takes {} input image(s), the request has {}",
                    T::KIND,
                    req.workflow,
                    template.inputs(),
                    req.inputs.len()
                ),
            });
        }
        Ok(template)
    }

    pub fn names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.by_name.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn values(prompt: &str) -> Values {
        Values {
            prompt: prompt.into(),
            negative_prompt: String::new(),
            seed: 7,
            width: 832,
            height: 480,
            frames: 81,
            fps: 16,
            duration_seconds: 5,
            filename_prefix: "mage_x".into(),
            images: vec!["mage-1-0.png".into()],
        }
    }

    #[test]
    fn fills_typed_values_and_keeps_hostile_prompts_inside_their_string() {
        let t = Template::parse(
            "t",
            Path::new("t.json"),
            r#"{"1": {"class_type": "CLIPTextEncode", "inputs": {"text": "{{prompt}}", "clip": ["2", 0]}},
                "3": {"class_type": "KSampler", "inputs": {"seed": "{{ seed }}", "steps": 20}},
                "4": {"class_type": "EmptyLatentImage", "inputs": {"width": "{{width}}", "height": "{{height}}"}}}"#,
        )
        .unwrap();
        let hostile = r#"x"}, "9": {"class_type": "Exec", "inputs": {}}, "y": {"a": "{{seed}}"#;
        let g = t.fill(&values(hostile));
        assert_eq!(g["1"]["inputs"]["text"], Value::from(hostile));
        assert_eq!(g["1"]["inputs"]["clip"], serde_json::json!(["2", 0]));
        assert_eq!(g["3"]["inputs"]["seed"], Value::from(7u64));
        assert_eq!(g["4"]["inputs"]["width"], Value::from(832));
        assert!(g.get("9").is_none());
        assert_eq!(t.inputs(), 0);
    }

    #[test]
    fn fills_the_uploaded_image_name() {
        let t = Template::parse(
            "t",
            Path::new("t.json"),
            r#"{"1": {"class_type": "CLIPTextEncode", "inputs": {"text": "{{prompt}}"}},
                "2": {"class_type": "LoadImage", "inputs": {"image": "{{image}}", "upload": "image"}}}"#,
        )
        .unwrap();
        assert_eq!(t.inputs(), 1);
        let g = t.fill(&values("x"));
        assert_eq!(g["2"]["inputs"]["image"], Value::from("mage-1-0.png"));
    }

    #[test]
    fn rejects_unknown_placeholders_ui_format_and_missing_prompt() {
        let p = Path::new("t.json");
        assert!(
            Template::parse("t", p, r#"{"1": {"class_type": "X", "inputs": {"a": "{{promt}}"}}}"#).is_err()
        );
        assert!(Template::parse("t", p, r#"{"nodes": [], "links": []}"#).is_err());
        assert!(
            Template::parse("t", p, r#"{"1": {"class_type": "X", "inputs": {"a": "{{seed}}"}}}"#).is_err()
        );
    }

    #[test]
    fn the_shipped_templates_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../workflows/comfyui");
        let t = Templates::load(&dir).unwrap();
        assert!(t.get("text-to-video").is_some() && t.get("text-to-image").is_some(), "{:?}", t.names());
        for name in ["image-edit", "image-to-video"] {
            assert_eq!(t.get(name).map(Template::inputs), Some(1), "{name}: {:?}", t.names());
        }
    }
}
