//! The ComfyUI backend: one instance per ComfyUI server (`MAGE_COMFYUI_URLS`).
//!
//! ComfyUI keeps its queue in memory, has no webhooks, and its unqualified
//! `/interrupt` stops whatever runs. So Mage names every prompt itself
//! (`prompt_id` = the job id recorded on the generation before submitting),
//! follows it over `/ws?clientId=` with a client id derived from that name
//! (ComfyUI sends a prompt's events only to the client that submitted it,
//! so any worker can reconnect as that client), reconciles through
//! `/history` and `/queue` after every (re)connect and on a slow timer (a
//! dropped socket loses events; ComfyUI keeps no backlog), and interrupts
//! by `prompt_id` only. Input images go up first (`upload`), under names
//! the prompt then gives its `LoadImage` nodes.

pub mod progress;
pub mod workflow;

mod follow;
mod upload;
use follow::*;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use self::progress::Tracker;
use self::workflow::{Templates, Values};
use super::{
    BackendHealth, MediaKind, RenderBackend, RenderError, RenderEvent, RenderJob, RenderOutput, RenderRequest,
};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);
/// An output of a long video can be large; a stalled download still ends.
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Reconnects in a row (backing off 0.5 s → 16 s, about half a minute in
/// all) before the attempt gives up; the next attempt attaches again.
const RECONNECTS: u32 = 6;
/// While the socket is silent, `/history` is asked this often, so a result
/// whose events went to a replaced socket is still collected.
const POLL_EVERY: Duration = Duration::from_secs(15);
/// ComfyUI sends `execution_success` before it writes the history entry.
const HISTORY_WAIT: Duration = Duration::from_secs(10);
const EVENT_BUFFER: usize = 64;
const USER_MESSAGE_MAX: usize = 300;

type Event = Result<RenderEvent, RenderError>;

pub struct ComfyBackend {
    base: String,
    http: reqwest::Client,
    templates: Arc<Templates>,
    /// Graphs this process submitted, for progress weights; a job attached
    /// after a crash reads its graph back from `/queue`.
    graphs: Arc<Mutex<HashMap<String, Value>>>,
}

impl ComfyBackend {
    pub fn new(base: &str, templates: Arc<Templates>) -> Result<Self, RenderError> {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .map_err(|e| RenderError::Unavailable(format!("HTTP client: {e}")))?;
        Ok(Self { base: base.trim_end_matches('/').to_owned(), http, templates, graphs: Arc::default() })
    }

    fn client(&self, location: &str) -> Client {
        Client { base: location.trim_end_matches('/').to_owned(), http: self.http.clone() }
    }
}

/// The ComfyUI client id a job's events are sent to.
pub fn client_id(job_id: &str) -> String {
    format!("mage-{job_id}")
}

/// Frames of a video: ComfyUI's video latents (Wan, Hunyuan) take 4k + 1.
pub fn frames(seconds: u32, fps: u32) -> u32 {
    (seconds.max(1) * fps.max(1)) / 4 * 4 + 1
}

fn unavailable(base: &str, what: &str, e: impl std::fmt::Display) -> RenderError {
    RenderError::Unavailable(format!("{base}: {what}: {e}"))
}

#[async_trait::async_trait]
impl RenderBackend for ComfyBackend {
    fn name(&self) -> &'static str {
        "comfyui"
    }

    fn location(&self) -> String {
        self.base.clone()
    }

    async fn health(&self) -> Result<BackendHealth, RenderError> {
        let resp = self
            .http
            .get(format!("{}/system_stats", self.base))
            .timeout(HEALTH_TIMEOUT)
            .send()
            .await
            .map_err(|e| unavailable(&self.base, "GET /system_stats", e))?;
        let status = resp.status();
        let unhealthy = |detail: String| BackendHealth {
            healthy: false,
            detail,
            vram_free_bytes: None,
            vram_total_bytes: None,
        };
        if !status.is_success() {
            return Ok(unhealthy(format!("/system_stats answered {status}")));
        }
        let Ok(stats) = resp.json::<Value>().await else {
            return Ok(unhealthy("/system_stats is not JSON".into()));
        };
        let version = stats["system"]["comfyui_version"].as_str().unwrap_or("?");
        let gpu = stats["devices"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|d| d["vram_total"].as_u64().unwrap_or(0) > 0 && d["type"].as_str() != Some("cpu"));
        Ok(match gpu {
            Some(d) => BackendHealth {
                healthy: true,
                detail: format!("ComfyUI {version} on {}", d["name"].as_str().unwrap_or("a GPU")),
                vram_free_bytes: d["vram_free"].as_u64(),
                vram_total_bytes: d["vram_total"].as_u64(),
            },
            None => unhealthy(format!("ComfyUI {version} reports no GPU with VRAM")),
        })
    }

    async fn submit(&self, req: RenderRequest) -> Result<RenderJob, RenderError> {
        let template = self.templates.for_request(&req)?;
        let images = self.upload_inputs(&req).await?;
        // Latent sizes are multiples of 8 (images) or 16 (video models);
        // rounding down keeps the aspect ratio within a pixel or two.
        let step = if req.kind == MediaKind::Video { 16 } else { 8 };
        let seconds = req.duration_seconds.unwrap_or(0);
        let values = Values {
            prompt: req.prompt.clone(),
            negative_prompt: req.negative_prompt.clone().unwrap_or_default(),
            // ComfyUI seeds are unsigned 64-bit.
            seed: req.seed as u64,
            width: (req.width / step * step).max(step),
            height: (req.height / step * step).max(step),
            frames: if req.kind == MediaKind::Video { frames(seconds, req.fps) } else { 1 },
            fps: req.fps,
            duration_seconds: seconds,
            filename_prefix: format!("mage_{}", req.job_id),
            images,
        };
        let graph = template.fill(&values);
        tokio::fs::create_dir_all(&req.work_dir).await?;
        let body = json!({
            "prompt": graph,
            "client_id": client_id(&req.job_id),
            "prompt_id": req.job_id,
            "extra_data": {"mage_generation_id": req.generation_id},
        });
        let resp = self
            .http
            .post(format!("{}/prompt", self.base))
            .timeout(REQUEST_TIMEOUT)
            .json(&body)
            .send()
            .await
            .map_err(|e| unavailable(&self.base, "POST /prompt", e))?;
        let status = resp.status();
        if status.is_success() {
            if let Ok(mut graphs) = self.graphs.lock() {
                graphs.insert(req.job_id.clone(), graph);
            }
            tracing::info!(generation_id = %req.generation_id, prompt_id = %req.job_id, backend = %self.base, "prompt queued on ComfyUI");
            return Ok(RenderJob {
                id: req.job_id,
                location: self.base.clone(),
                kind: req.kind,
                work_dir: req.work_dir,
            });
        }
        let text = resp.text().await.unwrap_or_default();
        if status == reqwest::StatusCode::BAD_REQUEST {
            // The workflow does not validate: a template or model problem
            // that no retry fixes.
            return Err(RenderError::Failed {
                user_message: refusal(&text),
                detail: format!(
                    "{}: POST /prompt refused the workflow {}: {}",
                    self.base, req.workflow, text
                ),
            });
        }
        Err(unavailable(&self.base, "POST /prompt", format!("{status}: {text}")))
    }

    fn events(&self, job: &RenderJob) -> BoxStream<'static, Event> {
        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        let graph = self.graphs.lock().ok().and_then(|g| g.get(&job.id).cloned());
        let follow = Follow {
            client: self.client(&job.location),
            job: job.clone(),
            tracker: graph.as_ref().map(Tracker::new),
            graphs: self.graphs.clone(),
            tx,
        };
        tokio::spawn(follow.run());
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|ev| (ev, rx)) }).boxed()
    }

    async fn cancel(&self, job: &RenderJob) -> Result<(), RenderError> {
        let client = self.client(&job.location);
        // Both: it may be running (interrupt, by prompt_id only so no other
        // job is stopped) or still waiting in ComfyUI's queue (delete).
        client.post("/interrupt", &json!({"prompt_id": job.id})).await?;
        client.post("/queue", &json!({"delete": [job.id]})).await?;
        if let Ok(mut graphs) = self.graphs.lock() {
            graphs.remove(&job.id);
        }
        Ok(())
    }
}

#[derive(Clone)]
struct Client {
    base: String,
    http: reqwest::Client,
}

/// Where a prompt is, as ComfyUI's HTTP API tells it.
enum Found {
    Done(Value),
    Waiting(Value),
    Unknown,
}

impl Client {
    async fn get(&self, path: &str) -> Result<Value, RenderError> {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await
            .map_err(|e| unavailable(&self.base, path, e))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(unavailable(&self.base, path, status));
        }
        resp.json().await.map_err(|e| unavailable(&self.base, path, e))
    }

    async fn post(&self, path: &str, body: &Value) -> Result<(), RenderError> {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .timeout(REQUEST_TIMEOUT)
            .json(body)
            .send()
            .await
            .map_err(|e| unavailable(&self.base, path, e))?;
        if resp.status().is_server_error() {
            return Err(unavailable(&self.base, path, resp.status()));
        }
        Ok(())
    }

    async fn history(&self, id: &str) -> Result<Option<Value>, RenderError> {
        let mut all = self.get(&format!("/history/{id}")).await?;
        Ok(all.get_mut(id).map(Value::take))
    }

    async fn find(&self, id: &str) -> Result<Found, RenderError> {
        if let Some(entry) = self.history(id).await? {
            return Ok(Found::Done(entry));
        }
        let queue = self.get("/queue").await?;
        for list in ["queue_running", "queue_pending"] {
            for item in queue[list].as_array().into_iter().flatten() {
                if item[1].as_str() == Some(id) {
                    return Ok(Found::Waiting(item[2].clone()));
                }
            }
        }
        // It may have finished between the two requests.
        Ok(match self.history(id).await? {
            Some(entry) => Found::Done(entry),
            None => Found::Unknown,
        })
    }

    async fn download(&self, file: &Value, to: &Path) -> Result<(), RenderError> {
        let query = [
            ("filename", file["filename"].as_str().unwrap_or_default()),
            ("subfolder", file["subfolder"].as_str().unwrap_or_default()),
            ("type", file["type"].as_str().unwrap_or("output")),
        ];
        let resp = self
            .http
            .get(format!("{}/view", self.base))
            .query(&query)
            .timeout(DOWNLOAD_TIMEOUT)
            .send()
            .await
            .map_err(|e| unavailable(&self.base, "GET /view", e))?;
        if !resp.status().is_success() {
            return Err(unavailable(
                &self.base,
                "GET /view",
                format!("{} for {:?}", resp.status(), query[0].1),
            ));
        }
        let mut out = tokio::fs::File::create(to).await?;
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            out.write_all(&chunk.map_err(|e| unavailable(&self.base, "GET /view", e))?).await?;
        }
        out.flush().await?;
        Ok(())
    }
}

const VIDEO_EXTS: &[&str] = &["mp4", "webm", "mov", "mkv", "gif"];
const IMAGE_EXTS: &[&str] = &["png", "jpg", "jpeg", "webp"];

/// The primary output (the first video, or image, by node id) first.
fn order_outputs(mut files: Vec<PathBuf>, kind: MediaKind) -> Option<Vec<PathBuf>> {
    let exts = if kind == MediaKind::Video { VIDEO_EXTS } else { IMAGE_EXTS };
    let is = |p: &PathBuf| {
        p.extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| exts.contains(&e.to_ascii_lowercase().as_str()))
    };
    let primary = files.iter().position(is)?;
    let p = files.remove(primary);
    files.insert(0, p);
    Some(files)
}

/// Why ComfyUI refused a prompt (`400` with `error` and `node_errors`),
/// told to the user with the first failing node's own words, bounded.
fn refusal(body: &str) -> String {
    const GENERIC: &str = "This model could not start on the render backend.";
    let Ok(body) = serde_json::from_str::<Value>(body) else {
        return GENERIC.to_owned();
    };
    let node = body["node_errors"].as_object().and_then(|nodes| {
        nodes.values().find_map(|n| {
            let error = n["errors"].as_array()?.first()?;
            let why = error["details"].as_str().filter(|d| !d.is_empty()).or(error["message"].as_str())?;
            Some(format!("{}: {why}", n["class_type"].as_str().unwrap_or("a node")))
        })
    });
    let why = node.or_else(|| body["error"]["message"].as_str().map(str::to_owned));
    match why.as_deref().and_then(|w| w.lines().next()).map(str::trim).filter(|w| !w.is_empty()) {
        Some(why) => bounded(format!("{GENERIC} {why}")),
        None => GENERIC.to_owned(),
    }
}

fn bounded(mut user: String) -> String {
    if user.chars().count() > USER_MESSAGE_MAX {
        user = user.chars().take(USER_MESSAGE_MAX - 1).collect::<String>() + "…";
    }
    user
}

/// A failed node, told to the user in ComfyUI's own words (first line,
/// bounded), with the whole report in the log.
fn execution_error(data: &Value) -> RenderError {
    let message = data["exception_message"].as_str().unwrap_or("unknown error").trim();
    let node = data["node_type"].as_str().unwrap_or("a node");
    let first = message.lines().next().unwrap_or_default();
    RenderError::Failed {
        user_message: bounded(format!("The render failed in {node}: {first}")),
        detail: format!(
            "node {} ({node}): {}: {message}",
            data["node_id"].as_str().unwrap_or("?"),
            data["exception_type"].as_str().unwrap_or("?")
        ),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn video_frames_fit_the_latent_step() {
        assert_eq!(frames(5, 16), 81);
        assert_eq!(frames(1, 24), 25);
        assert_eq!(frames(0, 0), 1);
    }

    #[test]
    fn primary_output_comes_first_by_kind() {
        let files: Vec<PathBuf> = ["9-a.png", "50-b.mp4", "51-c.mp4"].iter().map(PathBuf::from).collect();
        let v = order_outputs(files.clone(), MediaKind::Video).unwrap();
        assert_eq!(v[0], PathBuf::from("50-b.mp4"));
        assert_eq!(v.len(), 3);
        assert_eq!(order_outputs(files, MediaKind::Image).unwrap()[0], PathBuf::from("9-a.png"));
        assert!(order_outputs(vec![PathBuf::from("x.txt")], MediaKind::Image).is_none());
    }

    #[test]
    fn node_errors_reach_the_user_bounded_to_one_line() {
        let e = execution_error(&json!({
            "node_id": "3", "node_type": "KSampler", "exception_type": "torch.OutOfMemoryError",
            "exception_message": format!("Allocation on device failed {}\nTraceback line", "x".repeat(500)),
        }));
        let RenderError::Failed { user_message, detail } = e else { panic!() };
        assert!(user_message.starts_with("The render failed in KSampler: Allocation on device failed"));
        assert!(user_message.chars().count() <= USER_MESSAGE_MAX && !user_message.contains('\n'));
        assert!(detail.contains("OutOfMemoryError"));
    }

    #[test]
    fn refused_prompts_name_the_failing_node() {
        let body = json!({
            "error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
                      "details": "", "extra_info": {}},
            "node_errors": {"52": {"errors": [{"type": "custom_validation_failed",
                "message": "Custom validation failed for node", "details": "image - Invalid image file: a.png",
                "extra_info": {}}], "dependent_outputs": ["60"], "class_type": "LoadImage"}},
        });
        assert_eq!(
            refusal(&body.to_string()),
            "This model could not start on the render backend. LoadImage: image - Invalid image file: a.png"
        );
        let missing = json!({"error": {"type": "invalid_prompt", "message": "Cannot execute because node X does not exist.",
            "details": "Node ID '#1'", "extra_info": {}}, "node_errors": {}});
        assert!(refusal(&missing.to_string()).ends_with("node X does not exist."));
        assert_eq!(refusal("<html>"), "This model could not start on the render backend.");
    }
}
