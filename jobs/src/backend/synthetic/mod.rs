//! The synthetic backend renders real media on the CPU with ffmpeg, so Mage
//! runs end to end on a laptop or in CI without a GPU.
//!
//! A procedural lavfi source (fractal zoom, game of life, cellular
//! automaton, gradients, Sierpinski, test pattern) is picked and
//! parametrised by a hash of the prompt and seed, its colours rotate over
//! time, and the prompt is drawn on the frames. Workflows:
//!
//! - `text-to-video`: H.264 `render.mp4` of the requested size, frame rate
//!   and duration;
//! - `text-to-image`: one frame, `render.png`;
//! - `image-edit`: the user's photo, cropped to the requested size,
//!   transformed by filters the prompt and seed choose, with the prompt
//!   drawn on it: `render.png`;
//! - `image-to-video`: the user's photo panned and zoomed (a path the
//!   prompt and seed choose) for the requested size, frame rate and
//!   duration, starting from the whole photo: `render.mp4`;
//! - `synthetic-broken`: ffmpeg is run with a filter that does not exist,
//!   so a render fails for real (tests and demos of the failure path).
//!
//! Each job is one ffmpeg process in its own process group, killed when the
//! job is cancelled, when the backend is dropped, and when the task
//! supervising it is dropped.

mod photo;
mod plan;
use plan::*;

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{
    BackendHealth, MediaKind, RenderBackend, RenderError, RenderEvent, RenderJob, RenderOutput, RenderRequest,
};
use crate::media::{self, Exit};

pub const WORKFLOW_VIDEO: &str = "text-to-video";
pub const WORKFLOW_IMAGE: &str = "text-to-image";
pub const WORKFLOW_BROKEN: &str = "synthetic-broken";
pub const WORKFLOW_EDIT: &str = "image-edit";
pub const WORKFLOW_ANIMATE: &str = "image-to-video";

/// Environment variable read by [`SyntheticBackend::from_env`].
pub const SLOWDOWN_ENV: &str = "MAGE_SYNTHETIC_SLOWDOWN";

const STAGE: &str = "rendering";
const VIDEO_FILE: &str = "render.mp4";
const IMAGE_FILE: &str = "render.png";
/// The prompt as drawtext reads it: a file, so no user text ever passes
/// through filtergraph escaping.
const TEXT_FILE: &str = "prompt.txt";

const MAX_SIDE: u32 = 4096;
const MAX_SECONDS: u32 = 600;
const MAX_FPS: u32 = 120;

/// Room in a job's event channel. Progress is dropped rather than waited
/// for when the channel is this close to full, so the last two events
/// (100 % and the outcome) always fit even if nobody reads.
const EVENT_BUFFER: usize = 32;
const RESERVED_EVENTS: usize = 2;

/// Cancelled job ids remembered so a late `events` call still answers
/// `Canceled`.
const REMEMBER_CANCELED: usize = 256;

const HEALTH_TIMEOUT: Duration = Duration::from_secs(10);

/// Fonts tried first; then any TrueType font under `/usr/share/fonts`.
const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
];

type Event = Result<RenderEvent, RenderError>;

pub struct SyntheticBackend {
    slowdown: f64,
    jobs: Arc<Mutex<Jobs>>,
    /// Only a healthy answer is cached: an unhealthy one is asked again.
    health: tokio::sync::OnceCell<BackendHealth>,
}

#[derive(Default)]
struct Jobs {
    slots: HashMap<String, Slot>,
    canceled: VecDeque<String>,
}

/// A submitted job. It leaves the map once its process has ended and its
/// events have been handed out, whichever comes last.
struct Slot {
    pid: Option<u32>,
    kill: CancellationToken,
    /// Fired once the process is gone and partial outputs are deleted.
    done: CancellationToken,
    events: Option<mpsc::Receiver<Event>>,
}

impl Jobs {
    fn lock(jobs: &Mutex<Jobs>) -> MutexGuard<'_, Jobs> {
        // The map stays consistent under every panic point (single inserts
        // and removes), so a poisoned lock is still usable.
        jobs.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Default for SyntheticBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl SyntheticBackend {
    /// Renders as fast as the CPU allows.
    pub fn new() -> Self {
        Self::with_slowdown(1.0)
    }

    /// `slowdown` above 1 paces every render to `1 / slowdown` of real time
    /// (a 5 s clip at 4 takes about 20 s), so tests and demos can watch or
    /// cancel a render in progress. 1 or less (or not a number): no pacing.
    pub fn with_slowdown(slowdown: f64) -> Self {
        let slowdown = if slowdown.is_finite() && slowdown > 1.0 { slowdown } else { 1.0 };
        Self { slowdown, jobs: Arc::default(), health: tokio::sync::OnceCell::new() }
    }

    /// [`with_slowdown`](Self::with_slowdown) from `MAGE_SYNTHETIC_SLOWDOWN`
    /// (default 1). A value that is not a positive number is ignored with a
    /// warning: it is a development knob, not worth refusing to start over.
    pub fn from_env() -> Self {
        let slowdown = match std::env::var(SLOWDOWN_ENV) {
            Ok(v) => match v.trim().parse::<f64>() {
                Ok(f) if f.is_finite() && f > 0.0 => f,
                _ => {
                    tracing::warn!(value = %v, "{SLOWDOWN_ENV} is not a positive number; renders are not slowed down");
                    1.0
                }
            },
            Err(_) => 1.0,
        };
        Self::with_slowdown(slowdown)
    }

    pub fn slowdown(&self) -> f64 {
        self.slowdown
    }

    /// Process ids of the ffmpeg processes still running for this backend.
    pub fn running_pids(&self) -> Vec<u32> {
        Jobs::lock(&self.jobs)
            .slots
            .values()
            .filter(|s| !s.done.is_cancelled())
            .filter_map(|s| s.pid)
            .collect()
    }
}

impl Drop for SyntheticBackend {
    fn drop(&mut self) {
        for slot in Jobs::lock(&self.jobs).slots.values() {
            slot.kill.cancel();
        }
    }
}

#[async_trait::async_trait]
impl RenderBackend for SyntheticBackend {
    fn name(&self) -> &'static str {
        "synthetic"
    }

    /// Jobs live in this process: another process never finds them, and
    /// submits again (`Lost`).
    fn location(&self) -> String {
        "local".to_owned()
    }

    async fn health(&self) -> Result<BackendHealth, RenderError> {
        let cached = self
            .health
            .get_or_try_init(|| async {
                let h = check_ffmpeg().await;
                if h.healthy { Ok(h) } else { Err(h) }
            })
            .await;
        Ok(match cached {
            Ok(h) => h.clone(),
            Err(h) => h,
        })
    }

    async fn submit(&self, req: RenderRequest) -> Result<RenderJob, RenderError> {
        let plan = Plan::new(&req, self.slowdown)?;
        for input in &req.inputs {
            if !tokio::fs::metadata(input).await.is_ok_and(|m| m.is_file()) {
                return Err(RenderError::Failed {
                    user_message: "The input image is no longer available.".into(),
                    detail: format!("input {} is not a readable file", input.display()),
                });
            }
        }
        tokio::fs::create_dir_all(&req.work_dir).await?;
        if let Some(text) = &plan.text {
            tokio::fs::write(req.work_dir.join(TEXT_FILE), text).await?;
        }
        let cmd = plan.command(&req.work_dir);
        let child = match media::spawn_logged(cmd, "rendering") {
            Ok(child) => child,
            Err(e) => {
                media::remove_quietly(&req.work_dir.join(TEXT_FILE)).await;
                return Err(if e.kind() == std::io::ErrorKind::NotFound {
                    RenderError::Unavailable(format!("{} is not installed", media::FFMPEG))
                } else {
                    RenderError::Io(e)
                });
            }
        };
        let id = req.job_id.clone();
        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        let kill = CancellationToken::new();
        let done = CancellationToken::new();
        Jobs::lock(&self.jobs).slots.insert(
            id.clone(),
            Slot { pid: child.id(), kill: kill.clone(), done: done.clone(), events: Some(rx) },
        );
        tracing::info!(job = %id, generation_id = %req.generation_id, pid = ?child.id(), "synthetic render started");
        let driver = Driver {
            jobs: self.jobs.clone(),
            id: id.clone(),
            work_dir: req.work_dir.clone(),
            primary: plan.primary,
            duration_us: plan.duration_us,
            kill,
            done,
            tx,
        };
        tokio::spawn(driver.run(child));
        Ok(RenderJob { id, location: self.location(), kind: req.kind, work_dir: req.work_dir })
    }

    fn events(&self, job: &RenderJob) -> BoxStream<'static, Event> {
        let taken = {
            let mut jobs = Jobs::lock(&self.jobs);
            let canceled = jobs.canceled.contains(&job.id);
            match jobs.slots.get_mut(&job.id) {
                Some(slot) => {
                    let rx = slot.events.take();
                    if slot.done.is_cancelled() {
                        jobs.slots.remove(&job.id);
                    }
                    rx.ok_or_else(|| {
                        RenderError::Unavailable(format!(
                            "the events of render job {} were already taken",
                            job.id
                        ))
                    })
                }
                None if canceled => Err(RenderError::Canceled),
                None => Err(RenderError::Lost(format!("unknown render job {}", job.id))),
            }
        };
        match taken {
            Ok(rx) => {
                futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|ev| (ev, rx)) })
                    .boxed()
            }
            Err(e) => futures_util::stream::once(async move { Err(e) }).boxed(),
        }
    }

    async fn cancel(&self, job: &RenderJob) -> Result<(), RenderError> {
        let tokens = Jobs::lock(&self.jobs).slots.get(&job.id).map(|s| (s.kill.clone(), s.done.clone()));
        if let Some((kill, done)) = tokens {
            kill.cancel();
            done.cancelled().await;
        }
        Ok(())
    }
}

/// Watches one ffmpeg process to its end and reports it.
struct Driver {
    jobs: Arc<Mutex<Jobs>>,
    id: String,
    work_dir: PathBuf,
    primary: PathBuf,
    duration_us: Option<u64>,
    kill: CancellationToken,
    done: CancellationToken,
    tx: mpsc::Sender<Event>,
}

impl Driver {
    async fn run(self, child: tokio::process::Child) {
        let progress = |percent| Ok(RenderEvent::Progress { stage: STAGE.to_owned(), percent });
        let _ = self.tx.try_send(progress(0));
        let tx = self.tx.clone();
        let on_percent = move |p| {
            if tx.capacity() > RESERVED_EVENTS {
                let _ = tx.try_send(progress(p));
            }
        };
        let exit = media::supervise(child, self.duration_us, on_percent, &self.kill).await;
        media::remove_quietly(&self.work_dir.join(TEXT_FILE)).await;
        let primary = self.work_dir.join(&self.primary);
        let outcome = match exit {
            Ok(Exit::Done { status, .. }) if status.success() => match tokio::fs::metadata(&primary).await {
                Ok(m) if m.len() > 0 => {
                    Ok(RenderEvent::Finished(RenderOutput { files: vec![primary.clone()] }))
                }
                _ => Err(RenderError::Failed {
                    user_message: "The renderer produced nothing.".into(),
                    detail: format!("ffmpeg succeeded but {} is missing or empty", primary.display()),
                }),
            },
            Ok(Exit::Done { status, stderr }) => Err(RenderError::Failed {
                user_message: "The renderer failed.".into(),
                detail: format!("ffmpeg {status}: {stderr}"),
            }),
            Ok(Exit::Canceled) => Err(RenderError::Canceled),
            Err(e) => Err(RenderError::Io(e)),
        };
        match &outcome {
            Ok(_) => {
                let _ = self.tx.try_send(progress(100));
                tracing::info!(job = %self.id, "synthetic render finished");
            }
            Err(e) => {
                media::remove_quietly(&primary).await;
                tracing::info!(job = %self.id, error = %e, "synthetic render ended without output");
            }
        }
        let canceled = matches!(outcome, Err(RenderError::Canceled));
        let _ = self.tx.try_send(outcome);
        let mut jobs = Jobs::lock(&self.jobs);
        if canceled {
            if jobs.canceled.len() >= REMEMBER_CANCELED {
                jobs.canceled.pop_front();
            }
            jobs.canceled.push_back(self.id.clone());
        }
        if jobs.slots.get(&self.id).is_some_and(|s| s.events.is_none()) {
            jobs.slots.remove(&self.id);
        }
        // Under the lock, so `events` sees "done" and "removed" together.
        self.done.cancel();
    }
}

async fn check_ffmpeg() -> BackendHealth {
    let run = |args: &'static [&'static str]| async move {
        let out = tokio::time::timeout(
            HEALTH_TIMEOUT,
            tokio::process::Command::new(media::FFMPEG)
                .args(args)
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await;
        match out {
            Ok(Ok(o)) if o.status.success() => Ok(String::from_utf8_lossy(&o.stdout).into_owned()),
            Ok(Ok(o)) => Err(format!("ffmpeg {args:?} exited with {}", o.status)),
            Ok(Err(e)) => Err(format!("ffmpeg could not be run: {e}")),
            Err(_) => Err(format!("ffmpeg {args:?} did not answer within {HEALTH_TIMEOUT:?}")),
        }
    };
    let unhealthy = |detail: String| BackendHealth {
        healthy: false,
        detail,
        vram_free_bytes: None,
        vram_total_bytes: None,
    };
    let version = match run(&["-hide_banner", "-version"]).await {
        Ok(v) => v.lines().next().unwrap_or("ffmpeg").trim().to_owned(),
        Err(e) => return unhealthy(e),
    };
    match run(&["-hide_banner", "-encoders"]).await {
        Ok(list) if list.split_whitespace().any(|w| w == "libx264") => {}
        Ok(_) => return unhealthy(format!("{version}: no libx264 encoder")),
        Err(e) => return unhealthy(e),
    }
    let text = match font() {
        Some(f) => format!("prompt font {}", f.display()),
        None => "no font: prompts are not drawn".to_owned(),
    };
    BackendHealth {
        healthy: true,
        detail: format!("{version}; {text}"),
        vram_free_bytes: None,
        vram_total_bytes: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_survives_both_parsers() {
        assert_eq!(escape_option("/a b/c.ttf"), "/a b/c.ttf");
        assert_eq!(escape_option("a:b"), "a\\\\:b");
        assert_eq!(escape_option("x'y,z"), "x\\\\\\'y\\,z");
    }

    #[test]
    fn prompts_wrap_and_are_cut() {
        // 160 px wide with 12 px type: 19 columns.
        let text = wrap_prompt("one two three four five six seven", 160, 240).unwrap_or_default();
        assert_eq!(text, "one two three four\nfive six seven");
        let long = "word ".repeat(2000);
        let text = wrap_prompt(&long, 640, 360).unwrap_or_default();
        assert!(text.ends_with('…'), "{text}");
        assert!(text.lines().count() <= 9);
        assert_eq!(wrap_prompt(" \n\t\u{7}", 640, 360), None);
        let unbroken = "x".repeat(100);
        assert!(wrap_prompt(&unbroken, 640, 360).unwrap_or_default().lines().count() > 1);
    }

    #[test]
    fn hash_is_stable_and_tells_prompts_apart() {
        assert_eq!(prompt_hash("a cat", None, 1), prompt_hash("a cat", None, 1));
        assert_ne!(prompt_hash("a cat", None, 1), prompt_hash("a cat", None, 2));
        assert_ne!(prompt_hash("a cat", None, 1), prompt_hash("a dog", None, 1));
        assert_ne!(prompt_hash("a", Some("b"), 1), prompt_hash("ab", None, 1));
    }
}
