//! The synthetic backend: renders real media on the CPU with ffmpeg, so
//! Mage runs end to end on a laptop or in CI with no GPU. A procedural
//! source chosen and seeded from the prompt and seed, the prompt drawn on
//! the frames, the requested size, frame rate and duration. Workflows:
//! `synthetic-video`, `synthetic-image`, and `synthetic-broken` (ffmpeg
//! itself fails: a real failing render for tests and demos).

use std::collections::HashMap;
use std::ffi::OsString;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::{
    BackendHealth, MediaKind, RenderBackend, RenderError, RenderEvent, RenderJob, RenderOutput, RenderRequest,
};
use crate::ffmpeg::{self, FfmpegError};

const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

struct Running {
    cancel: CancellationToken,
    pid: Arc<AtomicU32>,
    events: Option<mpsc::Receiver<Result<RenderEvent, RenderError>>>,
    done: watch::Receiver<bool>,
}

pub struct SyntheticBackend {
    /// > 1 paces the render that many times slower than real time (demos,
    /// and tests that need a render to still be running).
    slowdown: f64,
    font: Option<PathBuf>,
    jobs: Arc<Mutex<HashMap<String, Running>>>,
}

impl SyntheticBackend {
    pub fn with_slowdown(slowdown: f64) -> Self {
        let font = FONTS.iter().map(PathBuf::from).find(|p| p.exists());
        if font.is_none() {
            tracing::warn!("no DejaVuSans font found: synthetic renders will not show the prompt");
        }
        Self { slowdown: if slowdown.is_finite() { slowdown } else { 1.0 }, font, jobs: Default::default() }
    }

    /// Reads `MAGE_SYNTHETIC_SLOWDOWN` (default 1).
    pub fn from_env() -> Self {
        let slowdown =
            std::env::var("MAGE_SYNTHETIC_SLOWDOWN").ok().and_then(|v| v.trim().parse().ok()).unwrap_or(1.0);
        Self::with_slowdown(slowdown)
    }

    /// Process ids of the ffmpeg processes running now.
    pub fn running_pids(&self) -> Vec<u32> {
        self.jobs
            .lock()
            .map(|jobs| jobs.values().map(|r| r.pid.load(Ordering::Acquire)).filter(|p| *p != 0).collect())
            .unwrap_or_default()
    }

    fn args(&self, req: &RenderRequest, text_file: Option<&Path>, out: &Path) -> Vec<OsString> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        req.prompt.hash(&mut h);
        req.seed.hash(&mut h);
        let hash = h.finish();
        let (w, ht, fps) = (req.width, req.height, req.fps.max(1));
        let seed = hash % 1_000_000;
        let source = match hash % 4 {
            0 => format!("gradients=size={w}x{ht}:rate={fps}:seed={seed}:speed=0.015:n=5"),
            1 => format!("gradients=size={w}x{ht}:rate={fps}:seed={seed}:speed=0.03:n=3:type=radial"),
            2 => format!(
                "life=size={w}x{ht}:rate={fps}:seed={seed}:ratio=0.25:mold=20:life_color=#{:06x}:death_color=#101018",
                hash & 0xffffff | 0x404040
            ),
            _ => format!(
                "cellauto=size={w}x{ht}:rate={fps}:seed={seed}:rule={}:scroll=1",
                18 + (hash % 100) * 2
            ),
        };
        let mut filters = vec![format!("hue=h={}+t*20", hash % 360)];
        if req.workflow == "synthetic-broken" {
            // A filter ffmpeg does not have: the render really fails.
            filters.push("no_such_filter_mage".into());
        }
        if let (Some(font), Some(text)) = (&self.font, text_file) {
            filters.push(format!(
                "drawtext=fontfile={}:textfile={}:expansion=none:fontcolor=white:fontsize=h/20:\
                 box=1:boxcolor=black@0.55:boxborderw=14:line_spacing=6:x=(w-tw)/2:y=h-th-h/10",
                filter_path(font),
                filter_path(text)
            ));
        }
        let mut args: Vec<OsString> = Vec::new();
        if self.slowdown > 1.0 {
            args.extend(["-readrate".into(), format!("{:.4}", 1.0 / self.slowdown).into()]);
        }
        args.extend(["-f".into(), "lavfi".into(), "-i".into(), source.into()]);
        args.extend(["-vf".into(), filters.join(",").into()]);
        match req.kind {
            MediaKind::Video => {
                let d = req.duration_seconds.unwrap_or(5).max(1);
                for a in
                    ["-t", &d.to_string(), "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p"]
                {
                    args.push(a.into());
                }
                args.extend(["-movflags".into(), "+faststart".into()]);
            }
            MediaKind::Image => {
                // Skip the first frames: some sources start blank.
                args.extend(["-ss".into(), "0.5".into(), "-frames:v".into(), "1".into()]);
            }
        }
        args.push(out.as_os_str().to_owned());
        args
    }
}

/// Escapes a path for a filtergraph option value.
fn filter_path(p: &Path) -> String {
    let s = p.to_string_lossy();
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '\\' | ':' | '\'' | ',' | ';' | '[' | ']' | '=') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The prompt as it appears on the frames: wrapped, at most five lines.
fn caption(prompt: &str) -> String {
    let mut lines: Vec<String> = Vec::new();
    let mut line = String::new();
    for word in prompt.split_whitespace() {
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > 42 {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.extend(word.chars().take(42));
    }
    if !line.is_empty() {
        lines.push(line);
    }
    if lines.len() > 5 {
        lines.truncate(5);
        lines[4].push('…');
    }
    lines.join("\n")
}

#[async_trait::async_trait]
impl RenderBackend for SyntheticBackend {
    fn name(&self) -> &'static str {
        "synthetic"
    }

    async fn health(&self) -> Result<BackendHealth, RenderError> {
        let out = tokio::process::Command::new("ffmpeg").arg("-version").output().await;
        match out {
            Ok(o) if o.status.success() => Ok(BackendHealth {
                healthy: true,
                detail: String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("ffmpeg").to_owned(),
                vram_free_bytes: None,
                vram_total_bytes: None,
            }),
            Ok(o) => Err(RenderError::Unavailable(format!("ffmpeg -version exited with {}", o.status))),
            Err(e) => Err(RenderError::Unavailable(format!("ffmpeg not runnable: {e}"))),
        }
    }

    async fn submit(&self, req: RenderRequest) -> Result<RenderJob, RenderError> {
        let id = req.generation_id.to_string();
        let text = req.work_dir.join("prompt.txt");
        tokio::fs::write(&text, caption(&req.prompt)).await?;
        let out = req.work_dir.join(match req.kind {
            MediaKind::Video => "render.mp4",
            MediaKind::Image => "render.png",
        });
        let args = self.args(&req, self.font.as_ref().map(|_| text.as_path()), &out);
        let duration_us = match req.kind {
            MediaKind::Video => Some(u64::from(req.duration_seconds.unwrap_or(5).max(1)) * 1_000_000),
            MediaKind::Image => None,
        };
        let (tx, rx) = mpsc::channel(64);
        let (done_tx, done_rx) = watch::channel(false);
        let cancel = CancellationToken::new();
        let pid = Arc::new(AtomicU32::new(0));
        {
            let mut jobs =
                self.jobs.lock().map_err(|_| RenderError::Unavailable("job table poisoned".into()))?;
            // Resubmitting the same generation replaces a stale run.
            if let Some(old) = jobs.remove(&id) {
                old.cancel.cancel();
            }
            jobs.insert(
                id.clone(),
                Running { cancel: cancel.clone(), pid: pid.clone(), events: Some(rx), done: done_rx },
            );
        }
        let jobs = self.jobs.clone();
        let job_id = id.clone();
        tokio::spawn(async move {
            let _ = tx.send(Ok(RenderEvent::Progress { stage: "rendering".into(), percent: 0 })).await;
            let progress_tx = tx.clone();
            let result = ffmpeg::run(
                args,
                duration_us,
                move |p| {
                    if p < 100 {
                        let _ = progress_tx
                            .try_send(Ok(RenderEvent::Progress { stage: "rendering".into(), percent: p }));
                    }
                },
                cancel,
                Some(pid),
            )
            .await;
            let event = match result {
                Ok(()) => Ok(RenderEvent::Finished(RenderOutput { files: vec![out] })),
                Err(FfmpegError::Canceled) => {
                    let _ = tokio::fs::remove_file(&out).await;
                    Err(RenderError::Canceled)
                }
                Err(FfmpegError::Exit { status, stderr }) => {
                    let _ = tokio::fs::remove_file(&out).await;
                    Err(RenderError::Failed {
                        user_message: "The renderer could not produce this generation.".into(),
                        detail: format!("ffmpeg {status}: {stderr}"),
                    })
                }
                Err(FfmpegError::Io(e)) => Err(RenderError::Io(e)),
            };
            let _ = tx.send(event).await;
            if let Ok(mut jobs) = jobs.lock() {
                jobs.remove(&job_id);
            }
            let _ = done_tx.send(true);
        });
        Ok(RenderJob { id })
    }

    fn events(&self, job: &RenderJob) -> BoxStream<'static, Result<RenderEvent, RenderError>> {
        let rx =
            self.jobs.lock().ok().and_then(|mut jobs| jobs.get_mut(&job.id).and_then(|r| r.events.take()));
        match rx {
            Some(rx) => {
                futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (e, rx)) })
                    .boxed()
            }
            None => futures_util::stream::once(async { Err(RenderError::Canceled) }).boxed(),
        }
    }

    async fn cancel(&self, job: &RenderJob) -> Result<(), RenderError> {
        let running = self
            .jobs
            .lock()
            .ok()
            .and_then(|jobs| jobs.get(&job.id).map(|r| (r.cancel.clone(), r.done.clone())));
        if let Some((cancel, mut done)) = running {
            cancel.cancel();
            // Return only once ffmpeg is gone and its output removed.
            let _ = tokio::time::timeout(Duration::from_secs(10), done.wait_for(|d| *d)).await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captions_wrap_and_escape_nothing() {
        assert_eq!(caption("a  b\nc"), "a b c");
        let long = caption(&"word ".repeat(200));
        assert_eq!(long.lines().count(), 5);
        assert!(long.ends_with('…'));
    }

    #[test]
    fn filter_paths_are_escaped() {
        assert_eq!(filter_path(Path::new("/tmp/a:b,c")), "/tmp/a\\:b\\,c");
    }
}
