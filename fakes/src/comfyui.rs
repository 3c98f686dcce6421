//! A fake ComfyUI: the HTTP + WebSocket API of ComfyUI's `server.py` and
//! the behaviour of its single-GPU executor, with the message shapes of
//! ComfyUI 0.3 and VideoHelperSuite, rendering ffmpeg test patterns of the
//! requested size instead of diffusion.
//!
//! What it keeps faithful because Mage depends on it:
//! - one prompt runs at a time, FIFO; the queue lives in memory only;
//! - a prompt's events go only to the socket of its `client_id`, and a new
//!   socket with the same id replaces the old one; nothing is replayed;
//! - `execution_success` is sent before the history entry is written;
//! - an unqualified `POST /interrupt` stops whatever runs;
//! - outputs are listed in `/history/{id}` and served by `/view`;
//! - `POST /upload/image` keeps files (in memory) for `LoadImage`, renaming
//!   on a clash unless `overwrite`, and a prompt naming a file it does not
//!   have fails validation.
//!
//! Faults tests can inject: unhealthy `/system_stats`, a node error when the
//! prompt text contains a needle, WebSocket drops mid-render, uploads that
//! are answered but not kept.

mod execute;
mod prompt;
mod uploads;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

/// What `/system_stats` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Healthy,
    /// The server answers 503 (ComfyUI behind a proxy whose upstream died).
    Down,
    /// ComfyUI runs but found no CUDA device (driver lost, `--cpu`).
    NoGpu,
}

/// One accepted `POST /prompt`.
#[derive(Debug, Clone)]
pub struct Submission {
    pub prompt_id: String,
    pub client_id: Option<String>,
    pub prompt: Value,
    pub number: u64,
}

const VRAM_TOTAL: u64 = 25_386_352_640;
/// Output node classes and the key their files are listed under.
const OUTPUT_NODES: &[(&str, &str)] =
    &[("SaveImage", "images"), ("VHS_VideoCombine", "gifs"), ("SaveVideo", "videos"), ("SaveWEBM", "images")];
/// Node classes this fake knows; anything else fails validation as in
/// ComfyUI when a custom node is missing.
const KNOWN_NODES: &[&str] = &[
    "CheckpointLoaderSimple",
    "UNETLoader",
    "CLIPLoader",
    "VAELoader",
    "ModelSamplingSD3",
    "CLIPTextEncode",
    "EmptyLatentImage",
    "EmptyHunyuanLatentVideo",
    "EmptySD3LatentImage",
    "KSampler",
    "KSamplerAdvanced",
    "VAEDecode",
    "SaveImage",
    "VHS_VideoCombine",
    "SaveVideo",
    "CreateVideo",
    "SaveWEBM",
    "LoadImage",
    "ImageScale",
    "VAEEncode",
    "TextEncodeQwenImageEdit",
    "ModelSamplingAuraFlow",
    "CFGNorm",
    "WanImageToVideo",
];
const SAMPLERS: &[&str] = &["KSampler", "KSamplerAdvanced"];

#[derive(Clone)]
struct Queued {
    number: u64,
    prompt_id: String,
    prompt: Value,
    extra_data: Value,
    outputs: Vec<String>,
    client_id: Option<String>,
}

impl Queued {
    /// The tuple ComfyUI lists in `/queue` and `/history`.
    fn tuple(&self) -> Value {
        json!([self.number, self.prompt_id, self.prompt, self.extra_data, self.outputs])
    }
}

struct Socket {
    conn: u64,
    tx: mpsc::UnboundedSender<Message>,
}

struct Inner {
    health: Health,
    step_delay: Duration,
    fail_rules: Vec<(String, String)>,
    drop_after_steps: Option<u32>,
    next_number: u64,
    next_conn: u64,
    pending: VecDeque<Queued>,
    running: Option<Queued>,
    interrupt_requested: bool,
    history: HashMap<String, Value>,
    sockets: HashMap<String, Socket>,
    counters: HashMap<String, u32>,
    // What tests read back.
    submissions: Vec<Submission>,
    executions: HashMap<String, usize>,
    completed: Vec<String>,
    downloads: HashMap<String, usize>,
    interrupts: Vec<Option<String>>,
    queue_deletes: Vec<String>,
    uploads: uploads::Uploads,
}

struct Shared {
    inner: Mutex<Inner>,
    work: Notify,
    out_dir: PathBuf,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panicking test thread must not hide what the fake recorded.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends to the socket currently registered for `client_id`, as
    /// ComfyUI's `send_sync(..., sid)` does; without a socket the message is
    /// lost.
    fn send(&self, client_id: Option<&str>, kind: &str, data: Value) {
        let text = json!({"type": kind, "data": data}).to_string();
        let inner = self.lock();
        match client_id {
            Some(id) => {
                if let Some(s) = inner.sockets.get(id) {
                    let _ = s.tx.send(Message::Text(text.into()));
                }
            }
            None => {
                for s in inner.sockets.values() {
                    let _ = s.tx.send(Message::Text(text.clone().into()));
                }
            }
        }
    }
}

/// A running fake ComfyUI server; stops when dropped.
pub struct FakeComfy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
    _out: tempfile::TempDir,
}

impl Drop for FakeComfy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl FakeComfy {
    /// Starts on a free local port with 20 ms sampler steps.
    pub async fn start() -> Self {
        let fake = Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0))).await.expect("start fake ComfyUI");
        fake.set_step_delay(Duration::from_millis(20));
        fake
    }

    pub async fn start_on(addr: SocketAddr) -> std::io::Result<Self> {
        let out = tempfile::Builder::new().prefix("fake-comfyui-").tempdir()?;
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                health: Health::Healthy,
                step_delay: Duration::from_millis(100),
                fail_rules: Vec::new(),
                drop_after_steps: None,
                next_number: 0,
                next_conn: 0,
                pending: VecDeque::new(),
                running: None,
                interrupt_requested: false,
                history: HashMap::new(),
                sockets: HashMap::new(),
                counters: HashMap::new(),
                submissions: Vec::new(),
                executions: HashMap::new(),
                completed: Vec::new(),
                downloads: HashMap::new(),
                interrupts: Vec::new(),
                queue_deletes: Vec::new(),
                uploads: uploads::Uploads::default(),
            }),
            work: Notify::new(),
            out_dir: out.path().join("output"),
        });
        std::fs::create_dir_all(&shared.out_dir)?;
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let app = Router::new()
            .route("/system_stats", get(system_stats))
            .route("/prompt", post(prompt::submit).get(prompt::prompt_info))
            .route("/queue", get(queue).post(queue_edit))
            .route("/interrupt", post(interrupt))
            .route("/history", get(history_all))
            .route("/history/{id}", get(history_one))
            .route("/view", get(view))
            .route(
                "/upload/image",
                post(uploads::upload_image).layer(DefaultBodyLimit::max(uploads::MAX_UPLOAD_BYTES)),
            )
            .route("/ws", get(ws))
            .with_state(shared.clone());
        let serve_stop = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).with_graceful_shutdown(serve_stop.cancelled_owned()).await;
        });
        tokio::spawn(execute::executor(shared.clone(), stop.clone()));
        Ok(Self { addr, shared, stop, _out: out })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_health(&self, health: Health) {
        self.shared.lock().health = health;
        self.shared.work.notify_one();
    }

    pub fn set_step_delay(&self, delay: Duration) {
        self.shared.lock().step_delay = delay;
    }

    /// Prompts whose text contains `needle` fail in their sampler with
    /// `message`, as a CUDA out-of-memory or a bad model file does.
    pub fn fail_when_prompt_contains(&self, needle: &str, message: &str) {
        self.shared.lock().fail_rules.push((needle.to_owned(), message.to_owned()));
    }

    /// Closes the socket of each running prompt's client once, after its
    /// sampler's `n`-th step.
    pub fn drop_websockets_after_steps(&self, n: u32) {
        self.shared.lock().drop_after_steps = Some(n);
    }

    pub fn submissions(&self) -> Vec<Submission> {
        self.shared.lock().submissions.clone()
    }

    /// How many times the prompt started executing.
    pub fn executions(&self, prompt_id: &str) -> usize {
        self.shared.lock().executions.get(prompt_id).copied().unwrap_or(0)
    }

    pub fn total_executions(&self) -> usize {
        self.shared.lock().executions.values().sum()
    }

    /// Prompts that ran to success, in order.
    pub fn completed(&self) -> Vec<String> {
        self.shared.lock().completed.clone()
    }

    /// `/view` downloads by file name.
    pub fn downloads(&self) -> HashMap<String, usize> {
        self.shared.lock().downloads.clone()
    }

    /// Every `POST /interrupt`, with the `prompt_id` it named (`None` for an
    /// unqualified interrupt).
    pub fn interrupts(&self) -> Vec<Option<String>> {
        self.shared.lock().interrupts.clone()
    }

    /// Prompt ids named in `POST /queue {"delete": [...]}`.
    pub fn queue_deletes(&self) -> Vec<String> {
        self.shared.lock().queue_deletes.clone()
    }

    /// The files of the input folder (what `POST /upload/image` kept), by
    /// `subfolder/name`.
    pub fn uploads(&self) -> HashMap<String, Vec<u8>> {
        self.shared.lock().uploads.inputs()
    }

    /// Answers uploads as usual but keeps nothing, as a second ComfyUI
    /// behind the same load balancer would for the prompt that follows.
    pub fn discard_uploads(&self, discard: bool) {
        self.shared.lock().uploads.discard = discard;
    }

    /// The prompt executing now.
    pub fn running(&self) -> Option<String> {
        self.shared.lock().running.as_ref().map(|q| q.prompt_id.clone())
    }

    /// Prompts waiting or running.
    pub fn queue_len(&self) -> usize {
        let inner = self.shared.lock();
        inner.pending.len() + usize::from(inner.running.is_some())
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

async fn system_stats(State(shared): State<Arc<Shared>>) -> Response {
    let health = shared.lock().health;
    let devices = match health {
        Health::Down => return (StatusCode::SERVICE_UNAVAILABLE, "upstream unavailable").into_response(),
        Health::NoGpu => json!([{
            "name": "cpu", "type": "cpu", "index": null,
            "vram_total": 0, "vram_free": 0, "torch_vram_total": 0, "torch_vram_free": 0,
        }]),
        Health::Healthy => {
            let busy = shared.lock().running.is_some();
            let free = if busy { VRAM_TOTAL / 4 } else { VRAM_TOTAL - 1_073_741_824 };
            json!([{
                "name": "cuda:0 NVIDIA GeForce RTX 4090 : cudaMallocAsync", "type": "cuda", "index": 0,
                "vram_total": VRAM_TOTAL, "vram_free": free,
                "torch_vram_total": 0, "torch_vram_free": 0,
            }])
        }
    };
    Json(json!({
        "system": {
            "os": "posix", "ram_total": 67_108_864_000u64, "ram_free": 50_000_000_000u64,
            "comfyui_version": "0.3.60", "python_version": "3.12.3", "pytorch_version": "2.7.1+cu128",
            "embedded_python": false, "argv": ["main.py", "--listen"],
        },
        "devices": devices,
    }))
    .into_response()
}

async fn queue(State(shared): State<Arc<Shared>>) -> Json<Value> {
    let inner = shared.lock();
    let running: Vec<Value> = inner.running.iter().map(Queued::tuple).collect();
    let pending: Vec<Value> = inner.pending.iter().map(Queued::tuple).collect();
    Json(json!({"queue_running": running, "queue_pending": pending}))
}

async fn queue_edit(State(shared): State<Arc<Shared>>, Json(body): Json<Value>) -> StatusCode {
    let mut inner = shared.lock();
    if body["clear"].as_bool() == Some(true) {
        inner.pending.clear();
    }
    for id in body["delete"].as_array().into_iter().flatten().filter_map(Value::as_str) {
        inner.queue_deletes.push(id.to_owned());
        inner.pending.retain(|q| q.prompt_id != id);
    }
    StatusCode::OK
}

async fn interrupt(State(shared): State<Arc<Shared>>, body: Option<Json<Value>>) -> StatusCode {
    let target = body.and_then(|Json(b)| b["prompt_id"].as_str().map(str::to_owned));
    let mut inner = shared.lock();
    inner.interrupts.push(target.clone());
    // As ComfyUI: with a prompt_id only that prompt, if it is the one
    // running; without, whatever runs.
    let hit = match (&target, &inner.running) {
        (_, None) => false,
        (None, Some(_)) => true,
        (Some(id), Some(r)) => &r.prompt_id == id,
    };
    if hit {
        inner.interrupt_requested = true;
    }
    StatusCode::OK
}

async fn history_all(State(shared): State<Arc<Shared>>) -> Json<Value> {
    let inner = shared.lock();
    Json(Value::Object(inner.history.iter().map(|(k, v)| (k.clone(), v.clone())).collect()))
}

async fn history_one(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Json<Value> {
    let inner = shared.lock();
    Json(match inner.history.get(&id) {
        Some(entry) => json!({ id: entry }),
        None => json!({}),
    })
}

#[derive(Deserialize)]
struct ViewQuery {
    filename: String,
    #[serde(default)]
    subfolder: String,
    #[serde(default, rename = "type")]
    kind: Option<String>,
}

async fn view(State(shared): State<Arc<Shared>>, Query(q): Query<ViewQuery>) -> Response {
    let safe = |s: &str| !s.contains("..") && !s.starts_with('/');
    if !safe(&q.filename) || !safe(&q.subfolder) || q.kind.as_deref().is_some_and(|k| k != "output") {
        return StatusCode::FORBIDDEN.into_response();
    }
    let path = shared.out_dir.join(&q.subfolder).join(&q.filename);
    match tokio::fs::read(&path).await {
        Ok(bytes) => {
            *shared.lock().downloads.entry(q.filename.clone()).or_default() += 1;
            let mime = match path.extension().and_then(|e| e.to_str()) {
                Some("png") => "image/png",
                Some("mp4") => "video/mp4",
                Some("webm") => "video/webm",
                _ => "application/octet-stream",
            };
            ([(axum::http::header::CONTENT_TYPE, mime)], bytes).into_response()
        }
        Err(_) => StatusCode::NOT_FOUND.into_response(),
    }
}

#[derive(Deserialize)]
struct WsQuery {
    #[serde(rename = "clientId")]
    client_id: Option<String>,
}

async fn ws(State(shared): State<Arc<Shared>>, Query(q): Query<WsQuery>, up: WebSocketUpgrade) -> Response {
    let sid = q.client_id.unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    up.on_upgrade(move |socket| follow_socket(shared, sid, socket))
}

async fn follow_socket(shared: Arc<Shared>, sid: String, mut socket: WebSocket) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let conn = {
        let mut inner = shared.lock();
        inner.next_conn += 1;
        let conn = inner.next_conn;
        // Same client id: the new socket replaces the old, whose sender is
        // dropped here, which ends it.
        inner.sockets.insert(sid.clone(), Socket { conn, tx: tx.clone() });
        let remaining = inner.pending.len() + usize::from(inner.running.is_some());
        let status = json!({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": remaining}}, "sid": sid}});
        let _ = tx.send(Message::Text(status.to_string().into()));
        conn
    };
    drop(tx);
    loop {
        tokio::select! {
            out = rx.recv() => match out {
                Some(msg) => {
                    let close = matches!(msg, Message::Close(_));
                    if socket.send(msg).await.is_err() || close {
                        break;
                    }
                }
                None => break,
            },
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
        }
    }
    let mut inner = shared.lock();
    if inner.sockets.get(&sid).is_some_and(|s| s.conn == conn) {
        inner.sockets.remove(&sid);
    }
}
