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
//! - `synthetic-broken`: ffmpeg is run with a filter that does not exist,
//!   so a render fails for real (tests and demos of the failure path).
//!
//! Each job is one ffmpeg process in its own process group, killed when the
//! job is cancelled, when the backend is dropped, and when the task
//! supervising it is dropped.

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Workflow {
    Video,
    Image,
    Broken,
}

/// A validated request turned into an ffmpeg run.
#[derive(Debug)]
struct Plan {
    workflow: Workflow,
    kind: MediaKind,
    width: u32,
    height: u32,
    fps: u32,
    seconds: u32,
    slowdown: f64,
    hash: u64,
    /// The prompt as drawn (wrapped, cut), when a font exists to draw it.
    text: Option<String>,
    font: Option<&'static Path>,
    primary: PathBuf,
    duration_us: Option<u64>,
}

impl Plan {
    fn new(req: &RenderRequest, slowdown: f64) -> Result<Self, RenderError> {
        let unsupported = |user_message: &str, detail: String| {
            Err(RenderError::Failed { user_message: user_message.to_owned(), detail })
        };
        let workflow = match req.workflow.as_str() {
            WORKFLOW_VIDEO => Workflow::Video,
            WORKFLOW_IMAGE => Workflow::Image,
            WORKFLOW_BROKEN => Workflow::Broken,
            other => {
                return unsupported(
                    "This model is not available right now.",
                    format!(
                        "model {} has workflow {other:?}, which the synthetic backend does not know",
                        req.model
                    ),
                );
            }
        };
        let fits = match workflow {
            Workflow::Video => req.kind == MediaKind::Video,
            Workflow::Image => req.kind == MediaKind::Image,
            Workflow::Broken => true,
        };
        if !fits {
            return unsupported(
                "This model cannot make that kind of media.",
                format!("workflow {} cannot render {:?}", req.workflow, req.kind),
            );
        }
        let side_ok = |s: u32| (16..=MAX_SIDE).contains(&s) && s.is_multiple_of(2);
        if !side_ok(req.width) || !side_ok(req.height) {
            return unsupported(
                "This size is not supported.",
                format!("{}x{}: sides must be even and within 16..={MAX_SIDE}", req.width, req.height),
            );
        }
        if !(1..=MAX_FPS).contains(&req.fps) {
            return unsupported(
                "This frame rate is not supported.",
                format!("fps {} not in 1..={MAX_FPS}", req.fps),
            );
        }
        let seconds = match (req.kind, req.duration_seconds) {
            (MediaKind::Image, _) => 0,
            (MediaKind::Video, Some(s)) if (1..=MAX_SECONDS).contains(&s) => s,
            (MediaKind::Video, s) => {
                return unsupported(
                    "This video length is not supported.",
                    format!("duration {s:?} not in 1..={MAX_SECONDS} seconds"),
                );
            }
        };
        let font = font();
        let text = font.and_then(|_| wrap_prompt(&req.prompt, req.width, req.height));
        let primary = PathBuf::from(if req.kind == MediaKind::Video { VIDEO_FILE } else { IMAGE_FILE });
        let duration_us = (req.kind == MediaKind::Video).then_some(u64::from(seconds) * 1_000_000);
        Ok(Self {
            workflow,
            kind: req.kind,
            width: req.width,
            height: req.height,
            fps: req.fps,
            seconds,
            slowdown,
            hash: prompt_hash(&req.prompt, req.negative_prompt.as_deref(), req.seed),
            text,
            font,
            primary,
            duration_us,
        })
    }

    /// The filters after the source: colour, pacing, the prompt.
    fn filters(&self) -> String {
        let mut rng = Rng(self.hash ^ 0x5eed);
        let mut chain = Vec::new();
        let hue = rng.below(360);
        let turn = 10 + rng.below(50);
        chain.push(format!("hue=H={hue}*PI/180+t*{turn}*PI/180"));
        if self.slowdown > 1.0 {
            chain.push(format!("realtime=speed={:.4}", 1.0 / self.slowdown));
        }
        if let (Some(font), Some(_)) = (self.font, &self.text) {
            let size = (self.height / 24).max(12);
            let margin = (self.height / 24).max(8);
            chain.push(format!(
                "drawtext=fontfile={}:textfile={TEXT_FILE}:expansion=none:fontsize={size}:fontcolor=white\
                 :line_spacing={}:box=1:boxcolor=black@0.55:boxborderw={}:x={margin}:y=h-th-{margin}",
                escape_option(&font.to_string_lossy()),
                size / 4,
                size / 3,
            ));
        }
        chain.push("format=yuv420p".to_owned());
        chain.join(",")
    }

    /// The lavfi source, and the filters that make it presentable (upscale
    /// of the cell sources, tint of the black-and-white ones). Nothing of
    /// the user's text goes in here.
    fn source(&self) -> (String, Vec<String>) {
        let (w, h, r) = (self.width, self.height, self.fps);
        let mut rng = Rng(self.hash);
        let seed = rng.below(1 << 31);
        let tint = |rng: &mut Rng| {
            let c = |rng: &mut Rng| 0.35 + rng.below(65) as f64 / 100.0;
            format!("format=rgb24,colorchannelmixer=rr={:.2}:gg={:.2}:bb={:.2}", c(rng), c(rng), c(rng))
        };
        let color = |rng: &mut Rng| format!("0x{:06x}", rng.below(1 << 24));
        // Cells a few pixels wide read as a pattern rather than noise, and
        // compress far better.
        let cells = (w / 4).max(8);
        let cell_rows = (h / 4).max(8);
        let upscale = format!("scale={w}:{h}:flags=neighbor");
        match rng.below(6) {
            0 => {
                const POINTS: &[(f64, f64)] = &[
                    (-0.743_643_887_037_158_7, 0.131_825_904_205_311_97),
                    (-0.761_574, -0.084_759_6),
                    (-1.250_066, 0.020_12),
                    (0.285_015, 0.010_2),
                    (-0.160_7, 1.037_7),
                ];
                let (x, y) = POINTS[rng.below(POINTS.len() as u64) as usize];
                let zoom = 200 + rng.below(400);
                (
                    format!(
                        "mandelbrot=s={w}x{h}:rate={r}:maxiter=256:outer=normalized_iteration_count\
                         :start_x={x}:start_y={y}:start_scale=3:end_scale=0.001:end_pts={zoom}"
                    ),
                    vec![],
                )
            }
            1 => (
                format!(
                    "life=s={cells}x{cell_rows}:rate={r}:seed={seed}:ratio=0.{}:mold=10\
                     :life_color={}:death_color={}:mold_color={}",
                    10 + rng.below(40),
                    color(&mut rng),
                    color(&mut rng),
                    color(&mut rng)
                ),
                vec![upscale],
            ),
            2 => {
                const RULES: &[u64] = &[18, 22, 30, 45, 60, 73, 90, 105, 110, 126, 150, 182];
                let rule = RULES[rng.below(RULES.len() as u64) as usize];
                (
                    format!(
                        "cellauto=s={cells}x{cell_rows}:rate={r}:rule={rule}:seed={seed}:random_fill_ratio=0.5"
                    ),
                    vec![upscale, tint(&mut rng)],
                )
            }
            3 => (
                format!(
                    "gradients=s={w}x{h}:rate={r}:seed={seed}:n={}:speed=0.0{}:c0={}:c1={}:c2={}:c3={}",
                    2 + rng.below(4),
                    1 + rng.below(4),
                    color(&mut rng),
                    color(&mut rng),
                    color(&mut rng),
                    color(&mut rng)
                ),
                vec![],
            ),
            4 => {
                let kind = if rng.below(2) == 0 { "carpet" } else { "triangle" };
                (
                    format!(
                        "sierpinski=s={w}x{h}:rate={r}:seed={seed}:jump={}:type={kind}",
                        1 + rng.below(4)
                    ),
                    vec![tint(&mut rng)],
                )
            }
            _ => (format!("testsrc2=s={w}x{h}:rate={r}"), vec![]),
        }
    }

    fn command(&self, work_dir: &Path) -> tokio::process::Command {
        let mut cmd = media::ffmpeg_command(work_dir);
        if self.workflow == Workflow::Broken {
            // A filter ffmpeg does not have: it refuses to start, for real.
            let (w, h, r) = (self.width, self.height, self.fps);
            cmd.args(["-f", "lavfi", "-i", &format!("color=c=black:s={w}x{h}:r={r}")]);
            cmd.args(["-vf", "mage_no_such_filter", "-frames:v", "1"]);
            cmd.arg(&self.primary);
            return cmd;
        }
        let (source, prepare) = self.source();
        let mut filters = prepare;
        filters.push(self.filters());
        cmd.args(["-f", "lavfi", "-i", &source, "-vf", &filters.join(",")]);
        match self.kind {
            MediaKind::Video => {
                cmd.args(["-t", &self.seconds.to_string()]);
                cmd.args(["-c:v", "libx264", "-preset", "veryfast", "-crf", "18", "-pix_fmt", "yuv420p"]);
            }
            MediaKind::Image => {
                cmd.args(["-frames:v", "1", "-update", "1"]);
            }
        }
        cmd.arg(&self.primary);
        cmd
    }
}

/// The prompt as drawn: control characters gone, words wrapped to the
/// frame's width, at most as many lines as fit in its lower half (the last
/// one ending in "…" when cut). `None` when nothing is left to draw.
fn wrap_prompt(prompt: &str, width: u32, height: u32) -> Option<String> {
    let size = (height / 24).max(12) as usize;
    let margin = (height / 24).max(8) as usize;
    // DejaVu Sans averages about 0.55 em per character; a little more
    // keeps wide letters inside the frame.
    let columns = ((width as usize).saturating_sub(2 * margin) * 10 / (size * 6)).max(8);
    let max_lines = (height as usize * 45 / 100 / (size + size / 4)).max(1);
    let cleaned: String = prompt
        .replace("\r\n", "\n")
        .chars()
        .map(|c| if c == '\t' || c == '\r' { ' ' } else { c })
        .filter(|c| *c == '\n' || !c.is_control())
        .collect();
    let mut lines: Vec<String> = Vec::new();
    for paragraph in cleaned.split('\n') {
        let mut line = String::new();
        for word in paragraph.split(' ').filter(|w| !w.is_empty()) {
            let mut word: Vec<char> = word.chars().collect();
            // Longer than a line: cut it where the line ends.
            while word.len() > columns {
                let room =
                    if line.is_empty() { columns } else { columns.saturating_sub(line.chars().count() + 1) };
                if room == 0 {
                    lines.push(std::mem::take(&mut line));
                    continue;
                }
                if !line.is_empty() {
                    line.push(' ');
                }
                line.extend(word.drain(..room));
                lines.push(std::mem::take(&mut line));
            }
            let needed = line.chars().count() + usize::from(!line.is_empty()) + word.len();
            if needed > columns {
                lines.push(std::mem::take(&mut line));
            }
            if !line.is_empty() {
                line.push(' ');
            }
            line.extend(word);
        }
        lines.push(line);
    }
    while lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    while lines.first().is_some_and(|l| l.is_empty()) {
        lines.remove(0);
    }
    if lines.is_empty() {
        return None;
    }
    if lines.len() > max_lines {
        lines.truncate(max_lines);
        if let Some(last) = lines.last_mut() {
            let kept: String = last.chars().take(columns.saturating_sub(1)).collect();
            *last = format!("{}…", kept.trim_end());
        }
    }
    Some(lines.join("\n"))
}

/// Escapes a value for a filter option inside a filtergraph: once for the
/// option parser (`\ ' :`), once more for the graph parser
/// (`\ ' [ ] , ;`), each level undoing one backslash.
fn escape_option(value: &str) -> String {
    fn level(s: &str, special: &[char]) -> String {
        let mut out = String::with_capacity(s.len());
        for c in s.chars() {
            if special.contains(&c) {
                out.push('\\');
            }
            out.push(c);
        }
        out
    }
    level(&level(value, &['\\', '\'', ':']), &['\\', '\'', '[', ']', ',', ';'])
}

/// The font drawtext uses, found once. Without one the prompt is not drawn
/// (Debian's ffmpeg has no default font for drawtext).
fn font() -> Option<&'static Path> {
    static FONT: OnceLock<Option<PathBuf>> = OnceLock::new();
    FONT.get_or_init(|| {
        let found = FONTS
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .or_else(|| any_font(Path::new("/usr/share/fonts"), 4));
        match &found {
            Some(f) => {
                tracing::debug!(font = %f.display(), "synthetic renders draw the prompt with this font")
            }
            None => tracing::warn!(
                "no TrueType font under /usr/share/fonts: synthetic renders will not show the prompt"
            ),
        }
        found
    })
    .as_deref()
}

fn any_font(dir: &Path, depth: u32) -> Option<PathBuf> {
    let mut entries: Vec<PathBuf> =
        std::fs::read_dir(dir).ok()?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    let is_ttf = |p: &PathBuf| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("ttf")) && p.is_file();
    if let Some(f) = entries.iter().find(|p| is_ttf(p)) {
        return Some(f.clone());
    }
    if depth == 0 {
        return None;
    }
    entries.iter().filter(|p| p.is_dir()).find_map(|d| any_font(d, depth - 1))
}

/// FNV-1a: stable across Rust versions and platforms, so a prompt and seed
/// look the same on every worker and after every upgrade.
fn prompt_hash(prompt: &str, negative: Option<&str>, seed: i64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    eat(prompt.as_bytes());
    eat(&[0xff]);
    eat(negative.unwrap_or("").as_bytes());
    eat(&[0xff]);
    eat(&seed.to_le_bytes());
    h
}

/// splitmix64, for drawing the source's parameters from the hash.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
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
