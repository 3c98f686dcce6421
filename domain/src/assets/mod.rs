//! Media users bring in: an asset is created AWAITING_UPLOAD with a staged
//! upload target, its bytes are PUT to `uploads/<id>` (through Mage or
//! straight to the bucket), `completeUpload` checks them and hands them to
//! the ingest job, which makes it READY (clean files under `assets/<id>/`)
//! or REJECTED. The only writer of `assets`, `generation_inputs` and
//! `users.storage_used_bytes`.
//!
//! Quota: a user's `storage_used_bytes` counts the declared size of every
//! asset whose bytes are not purged; it is raised by one conditional UPDATE
//! when the upload is created (so concurrent uploads cannot pass it
//! together) and lowered exactly once when the bytes are purged.

mod files;
mod inputs;
mod lifecycle;
mod queries;
mod sweep;
pub mod upload;

use std::time::Duration;

pub use files::AssetFiles;
pub use inputs::{check_inputs, inputs_of, record_inputs};
pub use lifecycle::{Ready, delete, mark_ready, purge, purge_if_unused, reject};
pub use queries::{find, find_own, list_own};
pub use sweep::sweep;
pub use upload::{NewUpload, complete, create_upload, declared_kind};

use crate::enums::MediaKind;

pub use crate::enums::AssetStatus as Status;
pub use crate::rows::Asset;

/// How long a staged upload may wait for its bytes.
pub const UPLOAD_TTL: Duration = Duration::from_secs(3600);

/// What a user may upload.
#[derive(Debug, Clone, Copy)]
pub struct AssetLimits {
    pub max_image_bytes: i64,
    pub max_video_bytes: i64,
    pub quota_bytes: i64,
    pub uploads_per_minute: u32,
}

impl Default for AssetLimits {
    fn default() -> Self {
        Self {
            max_image_bytes: 20 * 1024 * 1024,
            max_video_bytes: 500 * 1024 * 1024,
            quota_bytes: 5 * 1024 * 1024 * 1024,
            uploads_per_minute: 20,
        }
    }
}

impl AssetLimits {
    pub fn max_bytes(&self, kind: MediaKind) -> i64 {
        match kind {
            MediaKind::Image => self.max_image_bytes,
            MediaKind::Video => self.max_video_bytes,
        }
    }
}

/// Where the client PUTs an asset's bytes, and where ingest reads them.
pub fn upload_key(id: uuid::Uuid) -> String {
    format!("uploads/{id}")
}

/// The folder of an asset's clean files.
pub fn files_prefix(id: uuid::Uuid) -> String {
    format!("assets/{id}/")
}
