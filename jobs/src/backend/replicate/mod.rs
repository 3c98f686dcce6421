//! The Replicate backend: renders on Replicate's hosted models through its
//! HTTP API (`MAGE_REPLICATE_API_TOKEN`, `MAGE_REPLICATE_API_BASE`).
//!
//! Each model has a template in `workflows/replicate/` naming the hosted
//! model and its input ([`template`]). A render is one *prediction*:
//! input images go up through the Files API first, then the prediction is
//! created with a `Cancel-After` deadline and, when webhooks are on, a
//! webhook URL carrying the generation and Mage's job id. Replicate names
//! the prediction itself; render.rs records that id once `submit` returns.
//! A worker that died between creating and recording leaves only Mage's
//! job id on the generation: the next one finds the prediction among the
//! recent ones by the `job=` of its webhook URL ([`follow::find`]).
//!
//! Progress arrives as webhook deliveries, which the API verifies and
//! publishes on Redis ([`mage_domain::replicate`]) and [`hub`] hands to the
//! follower of that prediction; without webhooks, or when they go quiet,
//! the follower polls. Outputs are downloaded into the work dir as soon as
//! the prediction succeeds.
//!
//! Without webhooks a prediction carries no job id, so a crash between
//! creating and recording it leaves it unfound: the next attempt creates
//! another (the orphan runs to its end on Replicate, unused).

pub mod prediction;
pub mod template;

mod client;
mod follow;
mod hub;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use reqwest::multipart::{Form, Part};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use self::client::{Client, Resend, refused_token, unavailable};
use self::follow::Follow;
use self::hub::Hub;
use self::template::Templates;
use super::comfyui::workflow::{TemplateError, Values};
use super::{
    BackendHealth, MediaKind, RenderBackend, RenderError, RenderEvent, RenderJob, RenderOutput, RenderRequest,
};

pub const DEFAULT_API_BASE: &str = "https://api.replicate.com";
/// Webhook events asked for: every one, so progress moves with the logs.
pub const WEBHOOK_EVENTS: &[&str] = &["start", "output", "logs", "completed"];
/// Replicate's own deadline runs a little past Mage's, so that Mage's
/// timeout (which cancels and retries) decides, not Replicate's.
const CANCEL_AFTER_GRACE: Duration = Duration::from_secs(60);
/// Pages of recent predictions searched for an unrecorded job.
const LIST_PAGES: usize = 5;
const EVENT_BUFFER: usize = 64;

type Event = Result<RenderEvent, RenderError>;

/// Everything the backend needs; the worker builds it from its settings.
#[derive(Debug, Clone)]
pub struct ReplicateConfig {
    /// `https://api.replicate.com`: without `/v1`, no trailing slash.
    pub api_base: String,
    pub token: String,
    /// The templates' folder (`workflows/replicate`).
    pub workflows: PathBuf,
    /// `<MAGE_PUBLIC_URL>/webhooks/replicate` when webhooks are on; `None`
    /// polls only.
    pub webhook_url: Option<String>,
    /// With webhooks, how long a prediction may go without one before it
    /// is polled (a lost delivery never strands a job).
    pub quiet_poll_after: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error("Replicate backend: {0}")]
    Invalid(String),
}

pub struct ReplicateBackend {
    client: Client,
    templates: Arc<Templates>,
    webhook_url: Option<String>,
    quiet: Duration,
    hub: Option<Arc<Hub>>,
}

impl ReplicateBackend {
    /// Loads the templates (a bad one is an error here, not a failed
    /// render later). `redis` carries webhook deliveries when webhooks are
    /// on.
    pub fn new(cfg: ReplicateConfig, redis: mage_domain::kv::Redis) -> Result<Self, ConfigError> {
        if !(cfg.api_base.starts_with("http://") || cfg.api_base.starts_with("https://")) {
            return Err(ConfigError::Invalid(format!("API base {:?} is not an http(s) URL", cfg.api_base)));
        }
        if cfg.token.trim().is_empty() {
            return Err(ConfigError::Invalid("no API token (MAGE_REPLICATE_API_TOKEN)".into()));
        }
        if let Some(url) = &cfg.webhook_url
            && reqwest::Url::parse(url).is_err()
        {
            return Err(ConfigError::Invalid(format!("webhook URL {url:?} is not a URL")));
        }
        let templates = Templates::load(&cfg.workflows)?;
        let client = Client::new(cfg.api_base.trim_end_matches("/v1"), cfg.token.trim())
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        Ok(Self {
            client,
            templates: Arc::new(templates),
            hub: cfg.webhook_url.as_ref().map(|_| Arc::new(Hub::new(redis))),
            webhook_url: cfg.webhook_url,
            quiet: cfg.quiet_poll_after,
        })
    }

    /// How long 429s and 5xx are waited out before a call reports
    /// `Unavailable` (default two minutes).
    pub fn with_retry_for(mut self, retry_for: Duration) -> Self {
        self.client.retry_for = retry_for;
        self
    }

    pub fn templates(&self) -> &Templates {
        &self.templates
    }

    fn webhook_for(&self, req: &RenderRequest) -> Option<String> {
        let base = self.webhook_url.as_deref()?;
        let mut url = reqwest::Url::parse(base).ok()?;
        url.query_pairs_mut()
            .append_pair("generation", &req.generation_id.to_string())
            .append_pair("job", &req.job_id);
        Some(url.into())
    }

    /// Uploads every input through the Files API; their URLs, in order.
    async fn upload_inputs(&self, req: &RenderRequest) -> Result<Vec<String>, RenderError> {
        let mut urls = Vec::with_capacity(req.inputs.len());
        for (n, path) in req.inputs.iter().enumerate() {
            urls.push(self.upload(req, n, path).await?);
        }
        Ok(urls)
    }

    async fn upload(&self, req: &RenderRequest, n: usize, path: &Path) -> Result<String, RenderError> {
        let crate::backend::InputImage { bytes, filename, mime } =
            crate::backend::input_image(req, n, path).await?;
        let what = "POST /v1/files";
        let resp = self
            .client
            .send(what, Resend::Always, || {
                // A form is consumed by sending it: a new one per try.
                let part = Part::bytes(bytes.clone()).file_name(filename.clone());
                let part = part.mime_str(mime).unwrap_or_else(|_| Part::bytes(bytes.clone()));
                self.client
                    .request(Method::POST, "/v1/files")
                    .timeout(client::UPLOAD_TIMEOUT)
                    .multipart(Form::new().part("content", part))
            })
            .await?;
        let status = resp.status();
        if status.is_client_error() {
            let text = resp.text().await.unwrap_or_default();
            return Err(RenderError::Failed {
                user_message: "The input image could not be sent to the render backend.".into(),
                detail: format!(
                    "{}: {what} refused {filename}: {status}: {}",
                    self.client.base,
                    client::clip(&text)
                ),
            });
        }
        if !status.is_success() {
            return Err(unavailable(&self.client.base, what, status));
        }
        let file: Value = resp.json().await.map_err(|e| unavailable(&self.client.base, what, e))?;
        let url = file["urls"]["get"]
            .as_str()
            .filter(|u| !u.is_empty())
            .ok_or_else(|| unavailable(&self.client.base, what, format!("no urls.get in {file}")))?;
        tracing::debug!(generation_id = %req.generation_id, file_id = ?file["id"].as_str(), "input uploaded to Replicate");
        Ok(url.to_owned())
    }
}

/// Replicate's `Cancel-After`: whole seconds, at least its minimum of 5.
fn cancel_after(timeout: Duration) -> String {
    format!("{}s", (timeout + CANCEL_AFTER_GRACE).as_secs().max(5))
}

/// Seeds within 31 bits: every hosted model takes those (some validate
/// against a 32-bit integer, some seed NumPy, which wants less than 2³²).
fn seed(seed: i64) -> u64 {
    seed.rem_euclid(1 << 31) as u64
}

#[async_trait::async_trait]
impl RenderBackend for ReplicateBackend {
    fn name(&self) -> &'static str {
        "replicate"
    }

    fn location(&self) -> String {
        self.client.base.clone()
    }

    async fn health(&self) -> Result<BackendHealth, RenderError> {
        let resp = self
            .client
            .request(Method::GET, "/v1/account")
            .timeout(client::HEALTH_TIMEOUT)
            .send()
            .await
            .map_err(|e| unavailable(&self.client.base, "GET /v1/account", e))?;
        let status = resp.status();
        let health = |healthy: bool, detail: String| BackendHealth {
            healthy,
            detail,
            vram_free_bytes: None,
            vram_total_bytes: None,
        };
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Ok(health(false, refused_token(status)));
        }
        if !status.is_success() {
            return Ok(health(false, format!("Replicate's /v1/account answered {status}")));
        }
        let account: Value = resp.json().await.unwrap_or_default();
        let who = account["username"].as_str().unwrap_or("?");
        Ok(health(true, format!("Replicate, account {who}")))
    }

    async fn submit(&self, req: RenderRequest) -> Result<RenderJob, RenderError> {
        let template = self.templates.for_request(&req)?;
        let images = self.upload_inputs(&req).await?;
        let seconds = req.duration_seconds.unwrap_or(0);
        let values = Values {
            prompt: req.prompt.clone(),
            negative_prompt: req.negative_prompt.clone().unwrap_or_default(),
            seed: seed(req.seed),
            width: req.width,
            height: req.height,
            frames: if req.kind == MediaKind::Video { super::comfyui::frames(seconds, req.fps) } else { 1 },
            fps: req.fps,
            duration_seconds: seconds,
            filename_prefix: format!("mage_{}", req.job_id),
            images,
        };
        let mut body = json!({"input": template.fill(&values)});
        if let Some(webhook) = self.webhook_for(&req) {
            body["webhook"] = Value::from(webhook);
            body["webhook_events_filter"] = json!(WEBHOOK_EVENTS);
        }
        let path = match &template.version {
            Some(version) => {
                body["version"] = Value::from(version.as_str());
                "/v1/predictions".to_owned()
            }
            None => format!("/v1/models/{}/predictions", template.model),
        };
        tokio::fs::create_dir_all(&req.work_dir).await?;
        let what = format!("POST {path}");
        let cancel_after = cancel_after(req.timeout);
        // Not sent again after a broken connection: it may have created a
        // prediction, which the next attempt finds by its webhook URL.
        let resp = self
            .client
            .send(&what, Resend::IfNotSent, || {
                self.client
                    .request(Method::POST, &path)
                    .timeout(client::REQUEST_TIMEOUT)
                    .header("Cancel-After", &cancel_after)
                    .json(&body)
            })
            .await?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if status.is_success() {
            let prediction: Value =
                serde_json::from_str(&text).map_err(|e| unavailable(&self.client.base, &what, e))?;
            let id = prediction["id"].as_str().filter(|id| mage_domain::replicate::valid_id(id)).ok_or_else(
                || {
                    unavailable(
                        &self.client.base,
                        &what,
                        format!("no prediction id in {}", client::clip(&text)),
                    )
                },
            )?;
            tracing::info!(
                generation_id = %req.generation_id,
                job_id = %req.job_id,
                prediction_id = id,
                model = %template.model,
                "prediction created on Replicate"
            );
            return Ok(RenderJob {
                id: id.to_owned(),
                location: self.client.base.clone(),
                kind: req.kind,
                work_dir: req.work_dir,
            });
        }
        // 4xx but 401/403/429: the input or the model is wrong, and stays so.
        let why = client::problem(&text);
        Err(RenderError::Failed {
            user_message: match (status, &why) {
                (StatusCode::NOT_FOUND, _) => "This model is not available right now.".into(),
                (_, Some(why)) => prediction::bounded(&format!("Replicate refused the request: {why}")),
                _ => "Replicate refused the request.".into(),
            },
            detail: format!(
                "{}: {what} ({}) answered {status}: {}",
                self.client.base,
                template.model,
                client::clip(&text)
            ),
        })
    }

    fn events(&self, job: &RenderJob) -> BoxStream<'static, Event> {
        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        let mut client = self.client.clone();
        // A job recorded on another Replicate base (a test server, a proxy)
        // is followed there, with this token.
        client.base = job.location.trim_end_matches('/').to_owned();
        let follow = Follow { client, job: job.clone(), hub: self.hub.clone(), quiet: self.quiet, tx };
        tokio::spawn(follow.run());
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|ev| (ev, rx)) }).boxed()
    }

    async fn cancel(&self, job: &RenderJob) -> Result<(), RenderError> {
        if let Some(id) = follow::find(&self.client, &job.id).await? {
            let path = format!("/v1/predictions/{id}/cancel");
            let resp = self
                .client
                .send(&format!("POST {path}"), Resend::Always, || {
                    self.client.request(Method::POST, &path).timeout(client::REQUEST_TIMEOUT)
                })
                .await?;
            // 404: unknown, or long gone; either way nothing runs.
            let status = resp.status();
            if !status.is_success() && status != StatusCode::NOT_FOUND {
                return Err(unavailable(&self.client.base, "cancel", status));
            }
            tracing::info!(prediction_id = %id, "prediction canceled on Replicate");
        }
        remove_outputs(&job.work_dir).await;
        Ok(())
    }
}

/// Removes what a follower downloaded (`output-<n>.<ext>`); the caller owns
/// the folder itself.
async fn remove_outputs(dir: &Path) {
    let Ok(mut entries) = tokio::fs::read_dir(dir).await else { return };
    while let Ok(Some(entry)) = entries.next_entry().await {
        if entry.file_name().to_string_lossy().starts_with("output-") {
            let _ = tokio::fs::remove_file(entry.path()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicate_deadlines_run_past_mages() {
        assert_eq!(cancel_after(Duration::from_secs(600)), "660s");
        assert_eq!(cancel_after(Duration::ZERO), "60s");
    }

    #[test]
    fn seeds_fit_every_model() {
        assert_eq!(seed(42), 42);
        assert_eq!(seed(-1), (1 << 31) - 1);
        assert!(seed(i64::MAX) < 1 << 31);
    }
}
