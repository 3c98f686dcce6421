//! A fake Replicate: the HTTP API of `api.replicate.com/v1` (predictions,
//! the Files API, the account), signed webhooks as Replicate sends them, and
//! output files served like `replicate.delivery`, rendering ffmpeg test
//! patterns instead of running models.
//!
//! What it keeps faithful because Mage depends on it:
//! - every `/v1` request needs `Authorization: Bearer <token>` (or `Token`);
//!   errors are Replicate's problem objects (`title`, `detail`, `status`);
//! - predictions go `starting` → `processing` → `succeeded` / `failed` /
//!   `canceled` (`aborted` when a `Cancel-After` deadline passes before they
//!   start), with cog's logs: the seed, then tqdm progress lines;
//! - image models answer a list of one URL, video models one URL string;
//!   output URLs stop working an hour after completion;
//! - webhooks follow Standard Webhooks (`webhook-id`, `webhook-timestamp`,
//!   `webhook-signature`), honour `webhook_events_filter`, throttle `logs`
//!   to one per 500 ms, and retry `completed` until a 2xx; a webhook carries
//!   the prediction as it was when the event happened;
//! - an input URL must name a file the fake has (uploaded through the Files
//!   API, or an earlier output), or the prediction fails with
//!   `input image not found`, so tests see whether Mage uploaded first.
//!
//! Faults tests can inject: 429s with `Retry-After`, 5xx answers, a revoked
//! token, failing prompts, lost or duplicated webhooks, expiring outputs.

mod files;
mod predictions;
mod render;
mod webhooks;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, SecondsFormat, Utc};
use rand::Rng;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

pub use webhooks::sign;

/// The token a fresh fake accepts.
pub const DEFAULT_TOKEN: &str = "r8_fake_token";
/// How much a request body may hold (files are uploaded whole).
const MAX_BODY_BYTES: usize = 100 * 1024 * 1024;

/// One prediction-create request, as received, whatever the fake answered
/// (requests refused by the fault knobs or for their token are included).
#[derive(Debug, Clone, PartialEq)]
pub struct CreateRequest {
    /// E.g. `/v1/models/black-forest-labs/flux-schnell/predictions`.
    pub path: String,
    /// By lowercased name; a repeated header keeps its last value.
    pub headers: BTreeMap<String, String>,
    /// The JSON body, or the raw body as a string when it is not JSON.
    pub body: Value,
}

/// A file kept by the Files API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadedFile {
    pub id: String,
    pub name: String,
    pub content_type: String,
    pub bytes: Vec<u8>,
}

/// One webhook request the fake made (retries and duplicates each count).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentWebhook {
    /// `msg_...`, the same for retries and duplicates of one event.
    pub webhook_id: String,
    pub url: String,
    /// `start`, `output`, `logs` or `completed`.
    pub event: String,
    /// The prediction's status in the body.
    pub status: String,
    /// `None` when the request got no answer (refused, timed out).
    pub response_status: Option<u16>,
}

/// Where a prediction's webhook events go.
struct Hook {
    events: mpsc::UnboundedSender<webhooks::Event>,
    filter: Vec<String>,
}

struct Prediction {
    /// The object as the API serves it.
    object: Value,
    created: DateTime<Utc>,
    started: Option<DateTime<Utc>>,
    /// Dropped once `completed` is queued, which ends its sender.
    hook: Option<Hook>,
}

impl Prediction {
    fn status(&self) -> &str {
        self.object["status"].as_str().unwrap_or_default()
    }

    fn terminal(&self) -> bool {
        is_terminal(self.status())
    }

    /// Queues a webhook event carrying the prediction as it is now, if the
    /// prediction asked for that event.
    fn emit(&self, event: &'static str) {
        if let Some(hook) = &self.hook
            && hook.filter.iter().any(|e| e == event)
        {
            let _ = hook.events.send(webhooks::Event { kind: event, body: self.object.clone() });
        }
    }

    /// Ends the prediction with `status` unless it already ended; returns
    /// whether it did.
    fn finish(&mut self, status: &str, error: Option<String>) -> bool {
        if self.terminal() {
            return false;
        }
        let now = Utc::now();
        let object = &mut self.object;
        object["status"] = json!(status);
        object["completed_at"] = json!(timestamp(now));
        if let Some(error) = error {
            object["error"] = json!(error);
        }
        let seconds = |from: DateTime<Utc>| (now - from).num_microseconds().unwrap_or(0) as f64 / 1e6;
        let mut metrics = serde_json::Map::new();
        if let Some(started) = self.started {
            metrics.insert("predict_time".into(), json!(seconds(started)));
        }
        metrics.insert("total_time".into(), json!(seconds(self.created)));
        object["metrics"] = Value::Object(metrics);
        self.emit("completed");
        self.hook = None;
        true
    }
}

fn is_terminal(status: &str) -> bool {
    matches!(status, "succeeded" | "failed" | "canceled" | "aborted")
}

/// An output file, served under `/delivery/{prediction}/{name}`.
struct Output {
    name: String,
    content_type: &'static str,
    bytes: Vec<u8>,
    ready: Instant,
}

struct StoredFile {
    file: UploadedFile,
    object: Value,
}

struct Inner {
    token: &'static str,
    run_time: Duration,
    steps: u32,
    fail_rules: Vec<(String, String)>,
    rate_limited: u32,
    failing: u32,
    failing_status: u16,
    drop_webhooks: bool,
    duplicate_webhooks: bool,
    output_ttl: Duration,
    predictions: Vec<Prediction>,
    by_id: HashMap<String, usize>,
    outputs: HashMap<String, Output>,
    files: Vec<StoredFile>,
    // What tests read back.
    create_requests: Vec<CreateRequest>,
    cancels: Vec<String>,
    webhooks_sent: Vec<SentWebhook>,
    webhooks_dropped: usize,
}

impl Inner {
    fn prediction(&self, id: &str) -> Option<&Prediction> {
        self.by_id.get(id).map(|&i| &self.predictions[i])
    }

    fn prediction_mut(&mut self, id: &str) -> Option<&mut Prediction> {
        self.by_id.get(id).map(|&i| &mut self.predictions[i])
    }

    fn file(&self, id: &str) -> Option<&StoredFile> {
        self.files.iter().find(|f| f.file.id == id)
    }
}

struct Shared {
    inner: Mutex<Inner>,
    /// Bumped on every change to a prediction, for `Prefer: wait`.
    changed: watch::Sender<u64>,
    stop: CancellationToken,
    /// E.g. `http://127.0.0.1:PORT`.
    base: String,
    webhook_secret: String,
    http: reqwest::Client,
    out_dir: PathBuf,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panicking test thread must not hide what the fake recorded.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes a prediction and wakes whoever waits on one.
    fn update<R>(&self, id: &str, f: impl FnOnce(&mut Prediction) -> R) -> Option<R> {
        let result = f(self.lock().prediction_mut(id)?);
        self.changed.send_modify(|n| *n += 1);
        Some(result)
    }
}

/// A running fake Replicate API; stops when dropped.
pub struct FakeReplicate {
    addr: SocketAddr,
    shared: Arc<Shared>,
    _out: tempfile::TempDir,
}

impl Drop for FakeReplicate {
    fn drop(&mut self) {
        self.shared.stop.cancel();
    }
}

impl FakeReplicate {
    /// Starts on a free local port in the current tokio runtime, signing
    /// webhooks with `webhook_secret` (`whsec_<base64>`).
    pub async fn start(webhook_secret: &str) -> Self {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), webhook_secret)
            .await
            .expect("start fake Replicate")
    }

    pub async fn start_on(addr: SocketAddr, webhook_secret: &str) -> std::io::Result<Self> {
        let out = tempfile::Builder::new().prefix("fake-replicate-").tempdir()?;
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        // Replicate does not follow redirects when it sends webhooks.
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(std::io::Error::other)?;
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                token: DEFAULT_TOKEN,
                run_time: Duration::from_secs(2),
                steps: 10,
                fail_rules: Vec::new(),
                rate_limited: 0,
                failing: 0,
                failing_status: 500,
                drop_webhooks: false,
                duplicate_webhooks: false,
                output_ttl: Duration::from_secs(60 * 60),
                predictions: Vec::new(),
                by_id: HashMap::new(),
                outputs: HashMap::new(),
                files: Vec::new(),
                create_requests: Vec::new(),
                cancels: Vec::new(),
                webhooks_sent: Vec::new(),
                webhooks_dropped: 0,
            }),
            changed: watch::Sender::new(0),
            stop: CancellationToken::new(),
            base: format!("http://{addr}"),
            webhook_secret: webhook_secret.to_owned(),
            http,
            out_dir: out.path().to_path_buf(),
        });
        let app = Router::new()
            .route("/v1/account", get(account))
            .route("/v1/predictions", post(predictions::create).get(predictions::list))
            .route("/v1/models/{owner}/{name}/predictions", post(predictions::create_for_model))
            .route("/v1/predictions/{id}", get(predictions::get_one))
            .route("/v1/predictions/{id}/cancel", post(predictions::cancel))
            .route("/v1/files", post(files::create).get(files::list))
            .route("/v1/files/{id}", get(files::get_one).delete(files::delete))
            .route("/v1/files/{id}/download", get(files::download))
            .route("/v1/webhooks/default/secret", get(webhook_secret_key))
            .route("/delivery/{id}/{name}", get(delivery))
            .fallback(not_found)
            .layer(middleware::from_fn_with_state(shared.clone(), guard))
            .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
            .with_state(shared.clone());
        let stop = shared.stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await;
        });
        Ok(Self { addr, shared, _out: out })
    }

    /// The API base without `/v1`, e.g. `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The one API token accepted now.
    pub fn token(&self) -> &str {
        self.shared.lock().token
    }

    /// Accepts only `token` from now on, as when the old one was revoked.
    pub fn set_token(&self, token: &str) {
        // Leaked so `token()` can hand out a `&str` that outlives the lock;
        // a test sets a handful at most.
        self.shared.lock().token = Box::leak(token.to_owned().into_boxed_str());
    }

    /// How long a prediction runs once processing, spread over its steps.
    pub fn set_run_time(&self, d: Duration) {
        self.shared.lock().run_time = d;
    }

    /// How many tqdm steps a prediction reports.
    pub fn set_steps(&self, n: u32) {
        self.shared.lock().steps = n.max(1);
    }

    /// Predictions whose `prompt` input contains `needle` fail halfway with
    /// `error`, keeping their logs.
    pub fn fail_when_prompt_contains(&self, needle: &str, error: &str) {
        self.shared.lock().fail_rules.push((needle.to_owned(), error.to_owned()));
    }

    /// The next `n` API requests are answered 429 with `Retry-After: 1`.
    pub fn rate_limit_next(&self, n: u32) {
        self.shared.lock().rate_limited = n;
    }

    /// The next `n` API requests are answered `status` (a 5xx).
    pub fn fail_next(&self, n: u32, status: u16) {
        let mut inner = self.shared.lock();
        inner.failing = n;
        inner.failing_status = status;
    }

    /// Webhooks are counted in [`Self::webhooks_dropped`] but not sent.
    pub fn drop_webhooks(&self, drop: bool) {
        self.shared.lock().drop_webhooks = drop;
    }

    /// Each webhook is sent twice with the same `webhook-id`.
    pub fn duplicate_webhooks(&self, dup: bool) {
        self.shared.lock().duplicate_webhooks = dup;
    }

    /// Output URLs answer 404 once `d` has passed since their prediction
    /// completed (an hour on Replicate).
    pub fn expire_outputs_after(&self, d: Duration) {
        self.shared.lock().output_ttl = d;
    }

    /// Every prediction as the API serves it now, in creation order.
    pub fn predictions(&self) -> Vec<Value> {
        self.shared.lock().predictions.iter().map(|p| p.object.clone()).collect()
    }

    pub fn create_requests(&self) -> Vec<CreateRequest> {
        self.shared.lock().create_requests.clone()
    }

    /// Ids of the predictions named in `POST /v1/predictions/{id}/cancel`.
    pub fn cancels(&self) -> Vec<String> {
        self.shared.lock().cancels.clone()
    }

    /// Files the Files API keeps, in upload order.
    pub fn files(&self) -> Vec<UploadedFile> {
        self.shared.lock().files.iter().map(|f| f.file.clone()).collect()
    }

    pub fn webhooks_sent(&self) -> Vec<SentWebhook> {
        self.shared.lock().webhooks_sent.clone()
    }

    /// Webhook events not sent because of [`Self::drop_webhooks`].
    pub fn webhooks_dropped(&self) -> usize {
        self.shared.lock().webhooks_dropped
    }
}

/// RFC 3339 in UTC with microseconds, as Replicate writes times.
fn timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Lowercase base32, as Replicate's prediction and file ids.
fn random_id() -> String {
    random_string(b"abcdefghijklmnopqrstuvwxyz234567", 26)
}

fn random_string(alphabet: &[u8], n: usize) -> String {
    let mut rng = rand::thread_rng();
    (0..n).map(|_| char::from(alphabet[rng.gen_range(0..alphabet.len())])).collect()
}

/// Replicate's error body.
fn problem(status: StatusCode, title: &str, detail: &str) -> Response {
    (status, Json(json!({"title": title, "detail": detail, "status": status.as_u16()}))).into_response()
}

fn not_found_detail(detail: &str) -> Response {
    problem(StatusCode::NOT_FOUND, "Not found", detail)
}

async fn not_found() -> Response {
    not_found_detail("The requested resource could not be found.")
}

/// `POST /v1/predictions` and `POST /v1/models/{owner}/{name}/predictions`.
fn is_create(method: &Method, path: &str) -> bool {
    if method != Method::POST {
        return false;
    }
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    matches!(segments.as_slice(), ["", "v1", "predictions"] | ["", "v1", "models", _, _, "predictions"])
}

/// What every `/v1` request goes through: recording of prediction creates,
/// the fault knobs, then authentication.
async fn guard(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let path = request.uri().path().to_owned();
    if !path.starts_with("/v1/") {
        return next.run(request).await;
    }
    let request = if is_create(request.method(), &path) {
        let (parts, body) = request.into_parts();
        let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY_BYTES).await else {
            return problem(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Request too large",
                "The request body is too large.",
            );
        };
        let headers = parts
            .headers
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        shared.lock().create_requests.push(CreateRequest { path: path.clone(), headers, body });
        Request::from_parts(parts, Body::from(bytes))
    } else {
        request
    };
    let fault = {
        let mut inner = shared.lock();
        if inner.rate_limited > 0 {
            inner.rate_limited -= 1;
            Some(StatusCode::TOO_MANY_REQUESTS)
        } else if inner.failing > 0 {
            inner.failing -= 1;
            Some(StatusCode::from_u16(inner.failing_status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        } else {
            None
        }
    };
    match fault {
        Some(StatusCode::TOO_MANY_REQUESTS) => {
            let mut response = problem(
                StatusCode::TOO_MANY_REQUESTS,
                "Too Many Requests",
                "Request was throttled. Expected available in 1 second.",
            );
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return response;
        }
        Some(status) => {
            let title = status.canonical_reason().unwrap_or("Server Error");
            return problem(status, title, "Something went wrong on Replicate's side. Please try again.");
        }
        None => {}
    }
    // Download URLs carry their own signature instead of a token.
    let signed = path.ends_with("/download");
    if !signed && !authorized(&shared, request.headers().get(header::AUTHORIZATION)) {
        return problem(
            StatusCode::UNAUTHORIZED,
            "Unauthenticated",
            "You did not pass a valid authentication token",
        );
    }
    next.run(request).await
}

/// Replicate takes `Bearer` and the older `Token` scheme.
fn authorized(shared: &Shared, authorization: Option<&HeaderValue>) -> bool {
    let Some(value) = authorization.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let token = value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("Token ")).map(str::trim);
    token.is_some_and(|t| !t.is_empty() && t == shared.lock().token)
}

async fn account() -> Json<Value> {
    Json(json!({"type": "organization", "username": "fake", "name": "Fake", "github_url": null}))
}

/// `GET /v1/webhooks/default/secret`: the key webhooks are signed with.
async fn webhook_secret_key(State(shared): State<Arc<Shared>>) -> Json<Value> {
    Json(json!({"key": shared.webhook_secret}))
}

/// Output files, as `replicate.delivery` serves them.
async fn delivery(State(shared): State<Arc<Shared>>, Path((id, name)): Path<(String, String)>) -> Response {
    let inner = shared.lock();
    match inner.outputs.get(&id) {
        Some(out) if out.name == name && out.ready.elapsed() < inner.output_ttl => {
            ([(header::CONTENT_TYPE, out.content_type)], out.bytes.clone()).into_response()
        }
        _ => (StatusCode::NOT_FOUND, "Not Found").into_response(),
    }
}
