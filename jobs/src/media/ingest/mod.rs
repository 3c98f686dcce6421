//! Checking and cleaning an uploaded file before anything else reads it.
//!
//! What a file is comes from its first bytes, never from its name or the
//! type the client declared. Images are decoded in-process by the `image`
//! crate under explicit limits, after their size was read from the header,
//! and written again as a clean file (no EXIF, orientation applied). Videos
//! are read by ffprobe/ffmpeg as the container their bytes say, with only
//! the `file` protocol allowed, then transcoded like a generated video.
//!
//! Layout under `out_dir`:
//!
//! ```text
//! image.jpg | image.png   image: the clean re-encoded file
//! thumb.jpg               longest side at most 320 px
//! poster.jpg, video.mp4, hls/...   video: as `transcode_video` writes them
//! ```

mod image;
mod video;

use std::path::Path;

use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

use super::{MediaError, TranscodeOutput, remove_quietly};
use crate::backend::MediaKind;

/// Longest side of `thumb.jpg`.
pub const THUMBNAIL_MAX_SIDE: u32 = 320;

/// How much of the file's start `infer` looks at: every signature it
/// knows sits within the first few kilobytes.
const SNIFF_BYTES: u64 = 8192;

#[derive(Debug, Clone, PartialEq)]
pub struct IngestLimits {
    /// Width × height of an image, read from its header before decoding.
    pub max_image_pixels: u64,
    pub max_seconds: f64,
    /// A video must fit this box in either orientation.
    pub max_long_side: u32,
    pub max_short_side: u32,
}

impl Default for IngestLimits {
    fn default() -> Self {
        Self { max_image_pixels: 40_000_000, max_seconds: 600.0, max_long_side: 3840, max_short_side: 2160 }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Ingested {
    pub kind: MediaKind,
    /// From the content's magic bytes: `image/jpeg`, `image/png`,
    /// `image/webp`, `video/mp4`, `video/quicktime`, `video/webm` or
    /// `video/x-matroska`.
    pub content_type: &'static str,
    /// Of the clean image, or of the video as served (the top rung of the
    /// ladder, rotation applied).
    pub width: u32,
    pub height: u32,
    pub duration_seconds: Option<f64>,
    /// Image: `image.jpg` (from a JPEG) or `image.png` (from a PNG or WebP).
    pub image: Option<String>,
    /// `thumb.jpg`
    pub thumbnail: String,
    /// Video: `poster.jpg`
    pub poster: Option<String>,
    /// Video: the HLS ladder and the MP4.
    pub video: Option<TranscodeOutput>,
    /// Every file written under `out_dir`, relative, `/`-separated, sorted.
    pub files: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The file is refused; the reason is for the end user. Nothing was
    /// left in `out_dir`.
    #[error("rejected: {0}")]
    Rejected(String),
    /// Our side failed (ffmpeg missing, a full disk): worth retrying.
    #[error(transparent)]
    Failed(#[from] MediaError),
    #[error("ingest canceled")]
    Canceled,
}

/// What the magic bytes said, for the formats Mage accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Jpeg,
    Png,
    Webp,
    Mp4,
    QuickTime,
    Webm,
    Matroska,
}

impl Format {
    pub(crate) fn kind(self) -> MediaKind {
        match self {
            Self::Jpeg | Self::Png | Self::Webp => MediaKind::Image,
            Self::Mp4 | Self::QuickTime | Self::Webm | Self::Matroska => MediaKind::Video,
        }
    }

    pub(crate) fn content_type(self) -> &'static str {
        match self {
            Self::Jpeg => "image/jpeg",
            Self::Png => "image/png",
            Self::Webp => "image/webp",
            Self::Mp4 => "video/mp4",
            Self::QuickTime => "video/quicktime",
            Self::Webm => "video/webm",
            Self::Matroska => "video/x-matroska",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Jpeg => "JPEG",
            Self::Png => "PNG",
            Self::Webp => "WebP",
            Self::Mp4 => "MP4",
            Self::QuickTime => "QuickTime",
            Self::Webm => "WebM",
            Self::Matroska => "Matroska",
        }
    }
}

const ACCEPTED: &str = "Upload a JPEG, PNG or WebP image, or an MP4, MOV, WebM or MKV video.";

/// The format of `head` (the start of a file), or the reason it is refused.
pub(crate) fn sniff(head: &[u8]) -> Result<Format, String> {
    if head.is_empty() {
        return Err("The file is empty.".into());
    }
    let Some(found) = infer::get(head) else {
        return Err(format!("This file is not an image or a video we can recognise. {ACCEPTED}"));
    };
    Ok(match found.mime_type() {
        "image/jpeg" => Format::Jpeg,
        "image/png" => Format::Png,
        "image/webp" => Format::Webp,
        // M4V is Apple's name for an MP4 (its own `ftyp` brand).
        "video/mp4" | "video/x-m4v" => Format::Mp4,
        "video/quicktime" => Format::QuickTime,
        "video/webm" => Format::Webm,
        "video/x-matroska" => Format::Matroska,
        mime => {
            let what = match mime {
                "application/zip" => "a ZIP archive".to_owned(),
                "application/pdf" => "a PDF document".to_owned(),
                "image/gif" => "a GIF image, which is not accepted".to_owned(),
                "image/heif" | "image/avif" => {
                    format!("an {} image, which is not accepted", found.extension().to_uppercase())
                }
                _ => format!("a {} file", found.extension().to_uppercase()),
            };
            return Err(format!("This file is {what}, not an image or a video. {ACCEPTED}"));
        }
    })
}

/// Checks `input` and writes its clean forms into `out_dir` (layout in the
/// module docs). The type is decided by the content alone; content of the
/// other kind than `declared` is rejected. `progress` gets non-decreasing
/// percentages, 100 last. On any error nothing is left in `out_dir` (it
/// is created only once the file passed its first checks).
pub async fn ingest(
    input: &Path,
    declared: MediaKind,
    limits: &IngestLimits,
    out_dir: &Path,
    progress: impl Fn(u8) + Send + Sync,
    cancel: CancellationToken,
) -> Result<Ingested, IngestError> {
    let format = sniff(&read_head(input).await?).map_err(IngestError::Rejected)?;
    let kind = format.kind();
    if kind != declared {
        let (is, expected) = match kind {
            MediaKind::Image => ("an image", "a video"),
            MediaKind::Video => ("a video", "an image"),
        };
        return Err(IngestError::Rejected(format!(
            "This file is {is} ({}), but {expected} was expected.",
            format.name()
        )));
    }
    if cancel.is_cancelled() {
        return Err(IngestError::Canceled);
    }
    let result = match kind {
        MediaKind::Image => image::ingest_image(input, format, limits, out_dir, &cancel).await,
        MediaKind::Video => video::ingest_video(input, format, limits, out_dir, &progress, &cancel).await,
    };
    match result {
        Ok(done) => {
            progress(100);
            Ok(done)
        }
        Err(e) => {
            remove_outputs(out_dir).await;
            Err(e)
        }
    }
}

async fn read_head(input: &Path) -> Result<Vec<u8>, IngestError> {
    let file = tokio::fs::File::open(input).await.map_err(MediaError::from)?;
    let mut head = Vec::with_capacity(SNIFF_BYTES as usize);
    file.take(SNIFF_BYTES).read_to_end(&mut head).await.map_err(MediaError::from)?;
    Ok(head)
}

/// Deletes everything [`ingest`] may have written.
async fn remove_outputs(out_dir: &Path) {
    super::video::remove_video_outputs(out_dir).await;
    for name in ["image.jpg", "image.png", "thumb.jpg"] {
        remove_quietly(&out_dir.join(name)).await;
    }
}
