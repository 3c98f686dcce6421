//! Mage's background workers: apalis workers on Redis queues, one module per
//! job. `render` and `transcode` carry a generation from QUEUED to
//! SUCCEEDED; `sweep` finds what fell through the cracks.
//!
//! Render retries do not use apalis-redis' own (its Lua ignores
//! `max_attempts` and retries in place, holding a GPU slot for the
//! backoff): a render that may work later puts its generation back to
//! QUEUED and enqueues a new task after `MAGE_RETRY_BACKOFF_SECONDS`
//! (doubling per attempt), and the attempt count lives on the generation,
//! so a worker that crashed mid-render counts too. At the limit the
//! generation fails (its hold released) and the task returns `AbortError`,
//! which puts it in `{queue}:dead` for admins (`deadJobs`, `retryDeadJob`).
//! Transcodes are local and short, so they keep apalis-redis' in-place
//! retries, counted with `Attempt`. A failure that will not go away by
//! retrying (the render itself failed) fails the generation at once.
//!
//! `worker` wires the queues to apalis, `ctx` is what every job holds,
//! `outcome` decides a generation job's ending; `settle` applies Stripe
//! events and nothing else.

pub mod backend;
mod ctx;
mod ingest;
pub mod mail;
pub mod media;
mod outcome;
mod progress;
mod render;
pub mod settings;
mod settle;
mod slot;
mod stats;
mod sweep;
mod transcode;
pub mod wake;
pub mod webhooks;
mod worker;

pub use crate::stats::expire_once;
pub use crate::sweep::{STALE_MESSAGE, SweepReport, expire_media_once, finish_deletions_once, sweep_once};
pub use crate::worker::{
    IDLE_POLL, RESTART_WINDOW, RESTARTS_PER_WINDOW, WorkError, Workers, render_backends, woken_storage,
};
