//! The request's input images, sent to ComfyUI's input folder with
//! `POST /upload/image` before the prompt whose `LoadImage` names them.
//!
//! Each file is named after the generation and its place among the inputs
//! (`mage-<generation>-<n>.<ext>`), never after the user's file, and is
//! uploaded with `overwrite=true`: two generations never share a name, and
//! the next attempt of the same generation replaces its own file instead
//! of piling up `name (1).png` copies. The extension comes from the
//! content, because ComfyUI lists (and so validates) only files whose
//! extension says image.

use std::path::Path;
use std::time::Duration;

use reqwest::multipart::{Form, Part};
use serde_json::Value;

use super::{ComfyBackend, RenderError, RenderRequest, unavailable};

/// An input may be a few tens of megabytes on a slow link to the GPU host.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(120);

impl ComfyBackend {
    /// Uploads every input of `req`, in order, and returns the names the
    /// prompt must give ComfyUI for them.
    pub(super) async fn upload_inputs(&self, req: &RenderRequest) -> Result<Vec<String>, RenderError> {
        let mut names = Vec::with_capacity(req.inputs.len());
        for (n, path) in req.inputs.iter().enumerate() {
            names.push(self.upload(req, n, path).await?);
        }
        Ok(names)
    }

    async fn upload(&self, req: &RenderRequest, n: usize, path: &Path) -> Result<String, RenderError> {
        let crate::backend::InputImage { bytes, filename, mime } =
            crate::backend::input_image(req, n, path).await?;
        let part = Part::bytes(bytes)
            .file_name(filename.clone())
            .mime_str(mime)
            .map_err(|e| RenderError::Unavailable(format!("multipart: {e}")))?;
        let form = Form::new().part("image", part).text("type", "input").text("overwrite", "true");
        let what = "POST /upload/image";
        let resp = self
            .http
            .post(format!("{}/upload/image", self.base))
            .timeout(UPLOAD_TIMEOUT)
            .multipart(form)
            .send()
            .await
            .map_err(|e| unavailable(&self.base, what, e))?;
        let status = resp.status();
        if status.is_client_error() {
            // Too large for the server, or not an upload it accepts: the
            // same bytes are refused again.
            let text = resp.text().await.unwrap_or_default();
            return Err(RenderError::Failed {
                user_message: "The input image could not be sent to the render backend.".into(),
                detail: format!("{}: {what} refused {filename}: {status}: {text}", self.base),
            });
        }
        if !status.is_success() {
            return Err(unavailable(&self.base, what, status));
        }
        let answer: Value = resp.json().await.map_err(|e| unavailable(&self.base, what, e))?;
        let name = answer["name"]
            .as_str()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| unavailable(&self.base, what, format!("no name in {answer}")))?;
        tracing::debug!(generation_id = %req.generation_id, name, backend = %self.base, "input uploaded to ComfyUI");
        Ok(match answer["subfolder"].as_str().filter(|s| !s.is_empty()) {
            Some(sub) => format!("{sub}/{name}"),
            None => name.to_owned(),
        })
    }
}
