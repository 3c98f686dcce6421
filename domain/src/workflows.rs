//! The workflows a render model may name, as the catalogue checks them
//! before a model is saved: the synthetic backend's built-in ones, and the
//! JSON templates of ComfyUI and Replicate, in which an input whose whole
//! value is a placeholder string such as `"{{prompt}}"` is filled per render
//! (the backends fill them; the scan that finds them lives here, so both
//! sides read a template alike).

use std::path::Path;

use serde_json::Value;

use crate::enums::{BackendKind, MediaKind};
use crate::{Error, Result};

/// The placeholder every template must use.
pub const PROMPT: &str = "prompt";
/// The placeholder of the request's input image; a template that uses it
/// renders from exactly one image.
pub const IMAGE: &str = "image";

/// A workflow the synthetic backend draws by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Builtin {
    pub name: &'static str,
    /// The kind of media it makes; `None` for one that fits either.
    pub makes: Option<MediaKind>,
    /// The inputs a model on it must take, in order.
    pub inputs: &'static [MediaKind],
}

/// The synthetic backend's workflows (`mage_jobs`' synthetic plan knows
/// each of them; its unit tests hold the two lists together).
pub const SYNTHETIC: &[Builtin] = &[
    Builtin { name: "text-to-video", makes: Some(MediaKind::Video), inputs: &[] },
    Builtin { name: "text-to-image", makes: Some(MediaKind::Image), inputs: &[] },
    Builtin { name: "image-edit", makes: Some(MediaKind::Image), inputs: &[MediaKind::Image] },
    Builtin { name: "image-to-video", makes: Some(MediaKind::Video), inputs: &[MediaKind::Image] },
    // Fails every render: for tests and demos of failure handling.
    Builtin { name: "synthetic-broken", makes: None, inputs: &[] },
];

/// The placeholder name of a string that is one whole placeholder
/// (`"{{ seed }}"` → `seed`); `None` for any other string.
pub fn placeholder(s: &str) -> Option<&str> {
    s.strip_prefix("{{")?.strip_suffix("}}").map(str::trim)
}

/// Every whole-value placeholder in `v`, in document order, repeats kept.
pub fn collect_placeholders(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => {
            if let Some(p) = placeholder(s) {
                out.push(p.to_owned());
            }
        }
        Value::Array(a) => a.iter().for_each(|x| collect_placeholders(x, out)),
        Value::Object(m) => m.values().for_each(|x| collect_placeholders(x, out)),
        _ => {}
    }
}

/// A workflow name is a plain file stem: it names `<dir>/<name>.json` and
/// nothing outside `dir`.
pub fn check_name(name: &str) -> Result<()> {
    let plain = !name.is_empty()
        && name.len() <= 100
        && name != "."
        && name != ".."
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if plain {
        Ok(())
    } else {
        Err(Error::invalid("workflow", "must be a plain file name without .json (letters, digits, - _ .)"))
    }
}

/// Checks that `workflow` exists on `backend` and fits a model that makes
/// `kind` from `inputs`. `dir` is the backend's template folder (none for
/// the synthetic backend, whose workflows are built in).
pub fn check(
    backend: BackendKind,
    dir: Option<&Path>,
    workflow: &str,
    kind: MediaKind,
    inputs: &[MediaKind],
) -> Result<()> {
    check_name(workflow)?;
    match (backend, dir) {
        (BackendKind::Synthetic, _) => check_builtin(workflow, kind, inputs),
        (BackendKind::ComfyUi | BackendKind::Replicate, None) => {
            Err(Error::Internal(format!("no template folder for the {backend} backend")))
        }
        (BackendKind::ComfyUi | BackendKind::Replicate, Some(dir)) => {
            let path = dir.join(format!("{workflow}.json"));
            let text = std::fs::read_to_string(&path).map_err(|e| {
                Error::invalid(
                    "workflow",
                    if e.kind() == std::io::ErrorKind::NotFound {
                        format!("has no template {} for the {backend} backend", path.display())
                    } else {
                        format!("template {} cannot be read: {e}", path.display())
                    },
                )
            })?;
            let used = template_placeholders(backend, &text)
                .map_err(|why| Error::invalid("workflow", format!("template {}: {why}", path.display())))?;
            check_template(&used, inputs)
        }
    }
}

fn check_builtin(workflow: &str, kind: MediaKind, inputs: &[MediaKind]) -> Result<()> {
    let Some(b) = SYNTHETIC.iter().find(|b| b.name == workflow) else {
        let known: Vec<&str> = SYNTHETIC.iter().map(|b| b.name).collect();
        return Err(Error::invalid(
            "workflow",
            format!("is not a synthetic workflow (those are: {})", known.join(", ")),
        ));
    };
    if b.makes.is_some_and(|m| m != kind) {
        return Err(Error::invalid("workflow", format!("{workflow} cannot make {kind} models")));
    }
    if b.inputs != inputs {
        let names: Vec<&str> = b.inputs.iter().map(|k| k.as_str()).collect();
        return Err(Error::invalid(
            "inputs",
            format!("must be [{}] for the synthetic workflow {workflow}", names.join(", ")),
        ));
    }
    Ok(())
}

/// The placeholders a template of `backend` uses, or why it is no template
/// of that backend: a ComfyUI graph in API format (an object of nodes, each
/// with a `class_type`), or a Replicate template (`{"model": "owner/name",
/// "version": ..., "input": {...}}`, placeholders in `input`).
fn template_placeholders(backend: BackendKind, text: &str) -> std::result::Result<Vec<String>, String> {
    let doc: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let Value::Object(doc) = doc else {
        return Err("not a JSON object".into());
    };
    let mut used = Vec::new();
    match backend {
        BackendKind::ComfyUi => {
            if let Some(id) = doc
                .iter()
                .find(|(_, n)| n.get("class_type").and_then(Value::as_str).is_none())
                .map(|(id, _)| id)
            {
                return Err(format!(
                    "node {id} has no class_type (is this the UI format? export it with \"Save (API)\")"
                ));
            }
            doc.values().for_each(|n| collect_placeholders(n, &mut used));
        }
        BackendKind::Replicate => {
            if !doc.get("model").and_then(Value::as_str).is_some_and(|m| m.contains('/')) {
                return Err("has no \"model\": \"owner/name\"".into());
            }
            let Some(input) = doc.get("input").filter(|i| i.is_object()) else {
                return Err("has no \"input\" object".into());
            };
            collect_placeholders(input, &mut used);
        }
        BackendKind::Synthetic => {}
    }
    Ok(used)
}

/// A template must use `{{prompt}}`, and `{{image}}` exactly when the model
/// takes an image: a template carries at most that one input.
fn check_template(used: &[String], inputs: &[MediaKind]) -> Result<()> {
    if !used.iter().any(|p| p == PROMPT) {
        return Err(Error::invalid("workflow", "template does not use \"{{prompt}}\""));
    }
    let takes_image = used.iter().any(|p| p == IMAGE);
    match inputs {
        [] if takes_image => Err(Error::invalid(
            "inputs",
            "must be [IMAGE]: the template renders from an input image (\"{{image}}\")",
        )),
        [] => Ok(()),
        [MediaKind::Image] if takes_image => Ok(()),
        [MediaKind::Image] => Err(Error::invalid(
            "workflow",
            "template has no whole-value \"{{image}}\" placeholder for the model's input image",
        )),
        _ => Err(Error::invalid("inputs", "a template takes at most one input, an IMAGE")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(r: Result<()>) -> &'static str {
        match r {
            Err(Error::InvalidInput { field, .. }) => field,
            other => panic!("expected invalid input, got {other:?}"),
        }
    }

    #[test]
    fn finds_whole_value_placeholders_only() {
        let v: Value = serde_json::json!({"a": "{{prompt}}", "b": ["{{ seed }}", "x {{image}}"], "c": {"d": "{{image}}"}});
        let mut out = Vec::new();
        collect_placeholders(&v, &mut out);
        out.sort();
        assert_eq!(out, ["image", "prompt", "seed"]);
    }

    #[test]
    fn names_are_plain_file_stems() {
        for ok in ["text-to-video", "wan_2.1-i2v"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "..", "../etc/passwd", "a/b", "a\\b", ".hidden", "a b"] {
            assert_eq!(field(check_name(bad)), "workflow", "{bad:?}");
        }
    }

    #[test]
    fn builtin_workflows_fit_their_kind_and_inputs() {
        let dir = None;
        let s = BackendKind::Synthetic;
        assert!(check(s, dir, "text-to-video", MediaKind::Video, &[]).is_ok());
        assert!(check(s, dir, "image-edit", MediaKind::Image, &[MediaKind::Image]).is_ok());
        assert!(check(s, dir, "synthetic-broken", MediaKind::Image, &[]).is_ok());
        assert_eq!(field(check(s, dir, "nope", MediaKind::Video, &[])), "workflow");
        assert_eq!(field(check(s, dir, "text-to-video", MediaKind::Image, &[])), "workflow");
        assert_eq!(field(check(s, dir, "image-to-video", MediaKind::Video, &[])), "inputs");
    }

    #[test]
    fn templates_need_prompt_and_image_exactly_when_the_model_takes_one() {
        let dir = tempfile::tempdir().unwrap();
        let write =
            |name: &str, text: &str| std::fs::write(dir.path().join(format!("{name}.json")), text).unwrap();
        write("t2v", r#"{"model": "a/b", "input": {"prompt": "{{prompt}}"}}"#);
        write("i2v", r#"{"model": "a/b", "input": {"prompt": "{{prompt}}", "image": "{{image}}"}}"#);
        write("noprompt", r#"{"model": "a/b", "input": {"image": "{{image}}"}}"#);
        write("broken", r#"{"model": "a/b", "input": "#);
        write("graph", r#"{"1": {"class_type": "X", "inputs": {"text": "{{prompt}}"}}}"#);
        let (r, v, img) = (BackendKind::Replicate, MediaKind::Video, [MediaKind::Image]);
        assert!(check(r, Some(dir.path()), "t2v", v, &[]).is_ok());
        assert!(check(r, Some(dir.path()), "i2v", v, &img).is_ok());
        assert_eq!(field(check(r, Some(dir.path()), "t2v", v, &img)), "workflow");
        assert_eq!(field(check(r, Some(dir.path()), "i2v", v, &[])), "inputs");
        assert_eq!(field(check(r, Some(dir.path()), "noprompt", v, &img)), "workflow");
        assert_eq!(field(check(r, Some(dir.path()), "broken", v, &[])), "workflow");
        assert_eq!(field(check(r, Some(dir.path()), "missing", v, &[])), "workflow");
        assert_eq!(
            field(check(r, Some(dir.path()), "graph", v, &[])),
            "workflow",
            "a ComfyUI graph is no Replicate template"
        );
        assert!(check(BackendKind::ComfyUi, Some(dir.path()), "graph", v, &[]).is_ok());
        assert_eq!(field(check(BackendKind::ComfyUi, Some(dir.path()), "t2v", v, &[])), "workflow");
        assert_eq!(field(check(r, Some(dir.path()), "i2v", v, &[MediaKind::Video])), "inputs");
    }

    #[test]
    fn the_shipped_comfyui_templates_pass() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../workflows/comfyui");
        let c = BackendKind::ComfyUi;
        let dir = Some(dir.as_path());
        assert!(check(c, dir, "text-to-video", MediaKind::Video, &[]).is_ok());
        assert!(check(c, dir, "image-to-video", MediaKind::Video, &[MediaKind::Image]).is_ok());
    }
}
