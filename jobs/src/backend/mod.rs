//! Render backends: whatever turns a prompt into a media file.
//!
//! The trait follows the shape every real backend has, so a ComfyUI backend
//! fits it without pretending: a job is *submitted* (ComfyUI: `POST /prompt`,
//! which answers with its own `prompt_id`), its *events* are streamed while it
//! runs (ComfyUI: the WebSocket's progress messages), it can be *cancelled*
//! (ComfyUI: `POST /interrupt`) and the backend reports its *health*
//! (ComfyUI: `GET /system_stats`, including VRAM). The render worker owns the
//! work directory; the backend only writes into it.
//!
//! Mage, not the backend, names each job (`RenderRequest::job_id`) and
//! records that name and the backend's location on the generation *before*
//! submitting: a worker that takes over after a crash, or the next attempt
//! after a lost connection, attaches to the same job through
//! [`RenderBackend::events`] instead of rendering twice.
//!
//! [`synthetic::SyntheticBackend`] renders on the CPU with ffmpeg, so the
//! whole pipeline runs (and is tested) on machines without a GPU;
//! [`comfyui::ComfyBackend`] drives a ComfyUI server on a GPU host;
//! [`replicate::ReplicateBackend`] renders on Replicate's hosted models (a
//! backend that names its jobs itself: `submit` returns the prediction id,
//! which render.rs records in place of Mage's).

pub mod comfyui;
pub mod replicate;
pub mod synthetic;

use std::path::{Path, PathBuf};

use futures_util::stream::BoxStream;

/// Everything a backend needs to render one generation.
#[derive(Debug, Clone)]
pub struct RenderRequest {
    pub generation_id: uuid::Uuid,
    /// The job's name on the backend, chosen by Mage (ComfyUI: the
    /// `prompt_id`).
    pub job_id: String,
    /// Render model id, e.g. `synth-video`.
    pub model: String,
    /// The backend's workflow for that model (a ComfyUI workflow name; for
    /// the synthetic backend one of its [`synthetic`] workflows).
    pub workflow: String,
    pub kind: MediaKind,
    pub prompt: String,
    pub negative_prompt: Option<String>,
    pub width: u32,
    pub height: u32,
    /// Length of a video; ignored for images.
    pub duration_seconds: Option<u32>,
    pub fps: u32,
    pub seed: i64,
    /// An empty directory the backend writes its outputs into. The caller
    /// owns it and removes it; the backend removes only partial outputs of a
    /// cancelled or failed job.
    pub work_dir: PathBuf,
    /// The user's input media (clean files ingest made), in the order the
    /// model's `inputs` name them; local files the caller owns.
    pub inputs: Vec<PathBuf>,
    /// How long the render may take (the model's render timeout); a hosted
    /// backend gives its own deadline from it.
    pub timeout: std::time::Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MediaKind {
    Image,
    Video,
}

/// A submitted job: enough to find it again from any worker process.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RenderJob {
    /// [`RenderRequest::job_id`], or the backend's own name for the job
    /// when it assigns one (a Replicate prediction id).
    pub id: String,
    /// Where it runs ([`RenderBackend::location`]).
    pub location: String,
    pub kind: MediaKind,
    /// Where its outputs are written or downloaded to.
    pub work_dir: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenderEvent {
    /// `percent` never goes down within a job; 100 comes just before
    /// `Finished`.
    Progress { stage: String, percent: u8 },
    /// The last event of a job that worked.
    Finished(RenderOutput),
    /// The backend's own name of a job it was asked about by Mage's (a
    /// Replicate prediction found after a worker died before recording
    /// it): recorded, so the next takeover need not search for it.
    Located(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderOutput {
    /// Every file the job wrote, all inside the request's `work_dir`; the
    /// primary output (mp4 for video, png for image) comes first.
    pub files: Vec<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendHealth {
    pub healthy: bool,
    /// One line for operators, e.g. the backend's version or why it is not
    /// healthy.
    pub detail: String,
    pub vram_free_bytes: Option<u64>,
    pub vram_total_bytes: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The render itself failed and will fail again: `user_message` is fit to
    /// show the end user (no paths, no command lines), `detail` is for logs.
    #[error("render failed: {detail}")]
    Failed { user_message: String, detail: String },
    /// The backend could not be reached or is unhealthy: worth retrying
    /// later.
    #[error("render backend unavailable: {0}")]
    Unavailable(String),
    /// The backend refused Mage itself (its credentials), so no job can run
    /// there until an operator acts; nothing was created by the refused
    /// request.
    #[error("render backend refused us: {0}")]
    Refused(String),
    #[error("render canceled")]
    Canceled,
    /// The backend does not know the job (it restarted and lost its queue,
    /// or the job lived in a process that died): submit it again.
    #[error("render job lost: {0}")]
    Lost(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

#[async_trait::async_trait]
pub trait RenderBackend: Send + Sync + 'static {
    /// Short stable name, recorded on the generation (`synthetic`, `comfyui`).
    fn name(&self) -> &'static str;

    /// Which server this instance renders on (a ComfyUI base URL), recorded
    /// with the job so another worker can find it.
    fn location(&self) -> String;

    /// Whether the backend can take work now. `Err(Unavailable)` when it
    /// cannot even be asked; `Ok` with `healthy: false` when it answers but
    /// is not fit for work.
    async fn health(&self) -> Result<BackendHealth, RenderError>;

    /// Starts (or queues) a render named `req.job_id` and returns at once.
    async fn submit(&self, req: RenderRequest) -> Result<RenderJob, RenderError>;

    /// Events of a submitted job, ending with `Finished` or an error (a
    /// cancelled job ends with `Err(Canceled)`, a job the backend does not
    /// know with `Err(Lost)`). For a job that already finished, the result
    /// is collected at once. The job may have been submitted by another
    /// process (at `job.location`).
    fn events(&self, job: &RenderJob) -> BoxStream<'static, Result<RenderEvent, RenderError>>;

    /// Stops the job (its process, its GPU work) and removes its partial
    /// outputs; returns once that is done. Idempotent: cancelling a job that
    /// already ended, or an unknown one, does nothing.
    async fn cancel(&self, job: &RenderJob) -> Result<(), RenderError>;
}

/// One of a request's input images, read and typed for upload to a backend.
pub(crate) struct InputImage {
    pub bytes: Vec<u8>,
    /// `mage-<generation>-<n>.<ext>`.
    pub filename: String,
    pub mime: &'static str,
}

/// Reads the `n`th input of `req` (an image ingest already checked and
/// bounded in size); a missing or untyped one fails the render.
pub(crate) async fn input_image(
    req: &RenderRequest,
    n: usize,
    path: &Path,
) -> Result<InputImage, RenderError> {
    let bytes = match tokio::fs::read(path).await {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(RenderError::Failed {
                user_message: "The input image is no longer available.".into(),
                detail: format!("input {} is missing", path.display()),
            });
        }
        Err(e) => return Err(e.into()),
    };
    let Some((ext, mime)) = image_type(&bytes) else {
        return Err(RenderError::Failed {
            user_message: "The input image is not a JPEG, PNG or WebP image.".into(),
            detail: format!("input {} is not a JPEG, PNG or WebP file", path.display()),
        });
    };
    Ok(InputImage { bytes, filename: format!("mage-{}-{n}.{ext}", req.generation_id), mime })
}

/// The extension and MIME type of an image, from its first bytes.
fn image_type(bytes: &[u8]) -> Option<(&'static str, &'static str)> {
    match infer::get(bytes)?.mime_type() {
        "image/png" => Some(("png", "image/png")),
        "image/jpeg" => Some(("jpg", "image/jpeg")),
        "image/webp" => Some(("webp", "image/webp")),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_content_names_the_type() {
        assert_eq!(image_type(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"), Some(("png", "image/png")));
        assert_eq!(
            image_type(&[0xff, 0xd8, 0xff, 0xe0, 0, 0x10, b'J', b'F', b'I', b'F']),
            Some(("jpg", "image/jpeg"))
        );
        assert_eq!(image_type(b"RIFF\x10\0\0\0WEBPVP8 "), Some(("webp", "image/webp")));
        assert_eq!(image_type(b"#EXTM3U\nfile:///etc/passwd"), None);
        assert_eq!(image_type(b""), None);
    }
}
