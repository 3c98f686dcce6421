//! Generations: creation (price, hold, queue), the lifecycle state machine,
//! deletion (`delete`: cancelled if active, hidden, media purged) and the
//! queries the API serves.
//!
//! ```text
//! QUEUED ──▶ RENDERING ──▶ TRANSCODING ──▶ SUCCEEDED (capture)
//!    │           │               │
//!    └──────────▶┴───────────────┴──▶ FAILED / CANCELED (release)
//! ```
//!
//! Every transition is one guarded `UPDATE ... WHERE status IN (<from>)`, so
//! two workers (or a worker and a cancelling user) can never both move one
//! generation: the loser updates no row and learns the generation moved on.
//! A transition into a final state settles the generation's open holds in
//! the same transaction, through the ledger's idempotent capture / release,
//! so each hold is captured or released exactly once.
//!
//! Lock order (see `credits`): the generation row first, then the account.

mod create;
mod delete;
mod lifecycle;
mod queries;
mod retry;
mod status;
mod upkeep;

pub use crate::output::{Output, Rendition};
pub use create::{IDEMPOTENCY_KEY_MAX, create, quote};
pub(crate) use delete::purge_logged;
pub use delete::{delete, deleted_media_due, media_prefix, purge_media};
pub use lifecycle::{
    Canceled, NotStarted, after_cancel, cancel, cancel_and_signal, fail, finished, finished_with, give_back,
    hand_back, record_backend_job, record_progress, requeue, start_render, start_transcode, succeed,
    why_not_started,
};
pub use queries::{
    QUEUE_POSITION_SQL, QUEUE_POSITION_SQL_EXPLAIN, QueueStats, default_render_seconds, eta_seconds, find,
    find_many, find_own, list, queue_position, queue_positions, queue_stats, queued_of,
    recent_render_seconds,
};
pub use retry::{retry, retry_and_enqueue, retry_dead_job};
pub use status::Status;
use status::sources;

pub use upkeep::{mark_media_expired, media_due, queued_since, release_orphaned_holds, stale};

use crate::core::Core;
use crate::limits::GenerationLimits;

/// The user-facing message of a generation that failed for a reason the user
/// cannot act on (details go to the logs).
pub const INTERNAL_FAILURE: &str = "Something went wrong on our side; your credits were not charged.";

/// What `createGeneration` needs besides its input.
#[derive(Clone)]
pub struct Services {
    pub core: Core,
    pub limits: GenerationLimits,
    /// Models on a backend this deployment does not run are not offered.
    pub backends: std::sync::Arc<crate::backends::Backends>,
}

/// Handlers read the shared handles as `svc.pool`, `svc.queues`.
impl std::ops::Deref for Services {
    type Target = Core;
    fn deref(&self) -> &Core {
        &self.core
    }
}
