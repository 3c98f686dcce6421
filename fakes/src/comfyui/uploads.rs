//! ComfyUI's input folder: `POST /upload/image` (`server.py`'s
//! `image_upload`) and the check `LoadImage.VALIDATE_INPUTS` makes before a
//! prompt is queued. Files are kept in memory, per fake instance.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Multipart, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::Shared;

/// ComfyUI's default `--max-upload-size` (MB).
pub(super) const MAX_UPLOAD_BYTES: usize = 100 * 1024 * 1024;

/// Uploaded files by folder type (`input`, `temp`, `output`), then by
/// `subfolder/name` (or `name`).
#[derive(Default)]
pub(super) struct Uploads {
    by_type: HashMap<String, HashMap<String, Vec<u8>>>,
    /// Answer uploads without keeping them, as a second ComfyUI behind the
    /// same load balancer would for the prompt that follows.
    pub(super) discard: bool,
}

impl Uploads {
    pub(super) fn input(&self, name: &str) -> Option<&Vec<u8>> {
        self.by_type.get("input")?.get(name)
    }

    pub(super) fn inputs(&self) -> HashMap<String, Vec<u8>> {
        self.by_type.get("input").cloned().unwrap_or_default()
    }
}

/// `subfolder/name`, or `name` alone at the folder's top.
fn key(subfolder: &str, name: &str) -> String {
    if subfolder.is_empty() { name.to_owned() } else { format!("{subfolder}/{name}") }
}

/// `name (1).png`, `name (2).png`, ... as ComfyUI renames on a clash.
fn numbered(name: &str, i: u32) -> String {
    match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => format!("{stem} ({i}).{ext}"),
        _ => format!("{name} ({i})"),
    }
}

pub(super) async fn upload_image(State(shared): State<Arc<Shared>>, mut form: Multipart) -> Response {
    let (mut image, mut fields) = (None, HashMap::new());
    loop {
        match form.next_field().await {
            Ok(Some(field)) => {
                let name = field.name().unwrap_or_default().to_owned();
                let filename = field.file_name().map(str::to_owned);
                let Ok(bytes) = field.bytes().await else {
                    return StatusCode::BAD_REQUEST.into_response();
                };
                if name == "image" {
                    image = Some((filename.unwrap_or_default(), bytes.to_vec()));
                } else {
                    fields.insert(name, String::from_utf8_lossy(&bytes).into_owned());
                }
            }
            Ok(None) => break,
            Err(_) => return StatusCode::BAD_REQUEST.into_response(),
        }
    }
    let Some((mut filename, bytes)) = image.filter(|(f, _)| !f.is_empty()) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let kind = match fields.get("type").map(String::as_str) {
        Some(k @ ("temp" | "output")) => k.to_owned(),
        _ => "input".to_owned(),
    };
    let subfolder = fields.get("subfolder").cloned().unwrap_or_default();
    // ComfyUI refuses a path that leaves the folder.
    let escapes = |s: &str| s.split(['/', '\\']).any(|p| p == "..") || s.starts_with('/');
    if escapes(&subfolder) || escapes(&filename) || filename.contains('/') {
        return StatusCode::BAD_REQUEST.into_response();
    }
    let overwrite = matches!(fields.get("overwrite").map(String::as_str), Some("true" | "1"));
    let mut inner = shared.lock();
    let uploads = &mut inner.uploads;
    if !uploads.discard {
        let folder = uploads.by_type.entry(kind.clone()).or_default();
        if !overwrite {
            let original = filename.clone();
            let mut i = 1;
            // The same bytes under the same name are the same upload.
            while let Some(existing) = folder.get(&key(&subfolder, &filename)) {
                if *existing == bytes {
                    break;
                }
                filename = numbered(&original, i);
                i += 1;
            }
        }
        folder.insert(key(&subfolder, &filename), bytes);
    }
    Json(json!({"name": filename, "subfolder": subfolder, "type": kind})).into_response()
}

/// `LoadImage` nodes whose image is not in the input folder, as the node
/// errors `validate_inputs` reports for them (`outputs`: the prompt's
/// output nodes, which all depend on them in the graphs Mage sends).
pub(super) fn missing_images(
    prompt: &Map<String, Value>,
    outputs: &[String],
    uploads: &Uploads,
    node_errors: &mut Map<String, Value>,
) {
    for (id, node) in prompt {
        if node["class_type"].as_str() != Some("LoadImage") {
            continue;
        }
        let value = &node["inputs"]["image"];
        // ComfyUI's annotated form `name [input]` names the same file.
        let name = value.as_str().map(|s| s.strip_suffix(" [input]").unwrap_or(s));
        if name.is_some_and(|n| uploads.input(n).is_some()) {
            continue;
        }
        let shown = value.as_str().map(str::to_owned).unwrap_or_else(|| value.to_string());
        node_errors.insert(
            id.clone(),
            json!({"errors": [{
                "type": "custom_validation_failed",
                "message": "Custom validation failed for node",
                "details": format!("image - Invalid image file: {shown}"),
                "extra_info": {"input_name": "image"},
            }], "dependent_outputs": outputs, "class_type": "LoadImage"}),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clashes_are_numbered_before_the_extension() {
        assert_eq!(numbered("photo.png", 1), "photo (1).png");
        assert_eq!(numbered("a.b.jpg", 2), "a.b (2).jpg");
        assert_eq!(numbered("noext", 1), "noext (1)");
        assert_eq!(key("", "a.png"), "a.png");
        assert_eq!(key("x", "a.png"), "x/a.png");
    }
}
