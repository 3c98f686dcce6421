//! Health of the backend behind a set of render slots (the QwenEditBot
//! lesson: check before taking a job, not after failing it). An unhealthy
//! backend's slots put each job back, delayed, without using one of its
//! attempts, and back off before taking the next one, so jobs flow to the
//! healthy backends and a sick one is not hammered.

use std::time::{Duration, Instant};

use mage_domain::workers::{self, BackendStatus};

use crate::backend::RenderBackend;
use mage_domain::kv::Redis;
use tokio_util::sync::CancellationToken;

/// A healthy answer is trusted this long (a health request per job would
/// double the requests to a busy GPU host for nothing).
pub const HEALTH_FRESH: Duration = Duration::from_secs(5);
pub const BACKOFF_MIN: Duration = Duration::from_secs(2);
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// When a job put back because its backend was unhealthy runs again.
pub const UNHEALTHY_RETRY: Duration = Duration::from_secs(5);

/// What a slot needs from its worker to probe and wait: the backend, who
/// checks it, where health is published, and the stop signal.
pub struct Probe<'a> {
    pub backend: &'a dyn RenderBackend,
    pub worker: &'a str,
    pub redis: &'a Redis,
    pub stopping: &'a CancellationToken,
}

pub struct Slot {
    location: String,
    state: tokio::sync::Mutex<State>,
}

struct State {
    checked: Option<Instant>,
    healthy: bool,
    backoff: Duration,
}

impl Slot {
    pub fn new(backend: &dyn RenderBackend, worker: &str) -> Self {
        let location = match backend.location().as_str() {
            // Each process has its own synthetic "server".
            "local" => format!("local:{worker}"),
            l => l.to_owned(),
        };
        Self {
            location,
            state: tokio::sync::Mutex::new(State { checked: None, healthy: false, backoff: BACKOFF_MIN }),
        }
    }

    /// `Err(why)` when the backend is not fit for a job now.
    pub async fn check(&self, ctx: &Probe<'_>) -> Result<(), String> {
        let mut state = self.state.lock().await;
        if state.healthy && state.checked.is_some_and(|t| t.elapsed() < HEALTH_FRESH) {
            return Ok(());
        }
        self.probe(ctx, &mut state).await
    }

    /// Checks now and publishes the result (called on a timer, so admins
    /// see idle backends too, and when a job finds the backend unfit).
    /// `Err(why)` when the backend is not fit for a job.
    pub async fn refresh(&self, ctx: &Probe<'_>) -> Result<(), String> {
        let mut state = self.state.lock().await;
        self.probe(ctx, &mut state).await
    }

    async fn probe(&self, ctx: &Probe<'_>, state: &mut State) -> Result<(), String> {
        let health = ctx.backend.health().await;
        let (healthy, detail, free, total) = match &health {
            Ok(h) => (h.healthy, h.detail.clone(), h.vram_free_bytes, h.vram_total_bytes),
            Err(e) => (false, e.to_string(), None, None),
        };
        if healthy != state.healthy || state.checked.is_none() {
            if healthy {
                tracing::info!(backend = %self.location, %detail, "render backend healthy");
            } else {
                tracing::warn!(backend = %self.location, %detail, "render backend unhealthy");
            }
        }
        state.checked = Some(Instant::now());
        state.healthy = healthy;
        if healthy {
            state.backoff = BACKOFF_MIN;
        }
        let status = BackendStatus {
            kind: ctx.backend.name().to_owned(),
            location: self.location.clone(),
            healthy,
            detail: detail.clone(),
            vram_free_bytes: free,
            vram_total_bytes: total,
            checked_by: ctx.worker.to_owned(),
            checked_at: chrono::Utc::now(),
        };
        if let Err(e) = workers::record_backend(ctx.redis, &status).await {
            tracing::debug!(error = %e, "could not publish backend health");
        }
        if healthy { Ok(()) } else { Err(detail) }
    }

    /// Waits out the current backoff (doubling it for next time), or until
    /// the worker stops. The backend is probed every `HEALTH_FRESH` while
    /// waiting, so a recovered backend takes jobs again within seconds and
    /// not at the end of a long backoff.
    pub async fn back_off(&self, ctx: &Probe<'_>) {
        let wait = {
            let mut state = self.state.lock().await;
            let wait = state.backoff;
            state.backoff = (state.backoff * 2).min(BACKOFF_MAX);
            wait
        };
        let until = tokio::time::Instant::now() + wait;
        loop {
            let nap = until.saturating_duration_since(tokio::time::Instant::now()).min(HEALTH_FRESH);
            if nap.is_zero() {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(nap) => {}
                _ = ctx.stopping.cancelled() => return,
            }
            if self.check(ctx).await.is_ok() {
                return;
            }
        }
    }
}
