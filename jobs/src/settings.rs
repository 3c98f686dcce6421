//! The settings of `mage work` (and of the workers inside `mage dev`):
//! render backends, concurrency, attempts, timers, the stats cron.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use mage_domain::config::{ConfigError, ShutdownArgs};

#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    /// Render backend: `synthetic` (ffmpeg on the CPU, no GPU needed) or `comfyui` (GPU hosts)
    #[arg(long, env = "MAGE_RENDER_BACKEND", default_value = "synthetic")]
    pub render_backend: String,
    /// ComfyUI servers, comma-separated (e.g. http://gpu1:8188,http://gpu2:8188); required with comfyui
    #[arg(long, env = "MAGE_COMFYUI_URLS")]
    pub comfyui_urls: Option<String>,
    /// Folder of the ComfyUI workflow templates, one `<workflow>.json` per model workflow
    #[arg(long, env = "MAGE_COMFYUI_WORKFLOWS", default_value = "workflows/comfyui")]
    pub comfyui_workflows: PathBuf,
    /// Render jobs run at once: per process for synthetic (default 2), per ComfyUI URL for comfyui (default 1)
    #[arg(
        long,
        env = "MAGE_RENDER_CONCURRENCY",
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..),
    )]
    pub render_concurrency: Option<usize>,
    /// Transcode jobs one worker process runs at once
    #[arg(
        long,
        env = "MAGE_TRANSCODE_CONCURRENCY",
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..),
        default_value_t = 1,
    )]
    pub transcode_concurrency: usize,
    /// Attempts a job gets before its generation fails and its credits are released (a model may override it)
    #[arg(
        long,
        env = "MAGE_JOB_ATTEMPTS",
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..),
        default_value_t = 3,
    )]
    pub job_attempts: usize,
    /// Longest one render attempt may take (a model may override it)
    #[arg(
        long,
        env = "MAGE_RENDER_TIMEOUT_SECONDS",
        value_parser = clap::value_parser!(u64).range(1..),
        default_value_t = 7200,
    )]
    pub render_timeout_seconds: u64,
    /// Wait before the second attempt of a render; doubles for each further one
    #[arg(long, env = "MAGE_RETRY_BACKOFF_SECONDS", default_value_t = 30)]
    pub retry_backoff_seconds: u64,
    /// How often the sweeper looks for lost jobs, dead renders and open holds
    #[arg(
        long,
        env = "MAGE_SWEEP_INTERVAL_SECONDS",
        value_parser = clap::value_parser!(u64).range(1..),
        default_value_t = 60,
    )]
    pub sweep_interval_seconds: u64,
    /// A rendering or transcoding generation silent this long is failed by the sweeper and its credits released
    #[arg(
        long,
        env = "MAGE_STALE_AFTER_SECONDS",
        value_parser = clap::value_parser!(u64).range(1..),
        default_value_t = 900,
    )]
    pub stale_after_seconds: u64,
    /// Days a finished generation's media are kept; older ones are deleted
    /// from storage and shown as expired (unset: kept forever)
    #[arg(long, env = "MAGE_MEDIA_RETENTION_DAYS", value_parser = clap::value_parser!(u32).range(1..))]
    pub media_retention_days: Option<u32>,
    /// Largest uploaded image, in pixels (width × height, read from its
    /// header before anything is decoded)
    #[arg(long, env = "MAGE_MAX_IMAGE_PIXELS", value_parser = clap::value_parser!(u64).range(1..), default_value_t = 40_000_000)]
    pub max_image_pixels: u64,
    /// Longest uploaded video, in seconds
    #[arg(long, env = "MAGE_MAX_UPLOAD_SECONDS", value_parser = clap::value_parser!(u32).range(1..), default_value_t = 600)]
    pub max_upload_seconds: u32,
    #[command(flatten)]
    pub shutdown: ShutdownArgs,
    /// This worker process's name, unique among all workers (default: host-pid)
    #[arg(long, env = "MAGE_WORKER_NAME")]
    pub worker_name: Option<String>,
    /// When the daily statistics of the previous day are computed (cron
    /// with seconds, in UTC)
    #[arg(long, env = "MAGE_STATS_CRON", default_value = "0 5 0 * * *")]
    pub stats_cron: String,
    /// Time zone the statistics' days are cut in (IANA name)
    #[arg(long, env = "MAGE_STATS_TZ", default_value = "UTC")]
    pub stats_tz: String,
    /// SMTP server mails go through: smtp://host:port (plain, a local
    /// relay), smtp://user:pass@host:587 (STARTTLS required) or
    /// smtps://user:pass@host:465 (implicit TLS). Unset: `mage dev` keeps
    /// mails at /dev/mail; elsewhere they wait in the outbox
    #[arg(long, env = "MAGE_SMTP_URL", hide_env_values = true)]
    pub smtp_url: Option<String>,
    /// Sender of Mage's mails (`Name <address>` or an address)
    #[arg(long, env = "MAGE_MAIL_FROM", default_value = crate::mail::DEFAULT_FROM)]
    pub mail_from: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenderBackendKind {
    Synthetic,
    /// One slot set per server URL.
    ComfyUi {
        urls: Vec<String>,
        workflows: PathBuf,
    },
}

#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub render_backend: RenderBackendKind,
    /// Per process (synthetic) or per ComfyUI URL.
    pub render_concurrency: usize,
    pub transcode_concurrency: usize,
    pub job_attempts: usize,
    pub render_timeout: Duration,
    pub retry_backoff: Duration,
    pub sweep_interval: Duration,
    pub stale_after: Duration,
    pub shutdown_grace: Duration,
    pub worker_name: String,
    pub stats_cron: String,
    pub stats_tz: String,
    pub media_retention: Option<Duration>,
    /// What uploads may be (MAGE_MAX_IMAGE_PIXELS, MAGE_MAX_UPLOAD_SECONDS).
    pub ingest: crate::media::IngestLimits,
    /// How mails leave (MAGE_SMTP_URL, MAGE_MAIL_FROM).
    pub mail: crate::mail::MailSettings,
}

impl WorkerSettings {
    /// Settings for tests and tools: the synthetic backend and the defaults.
    pub fn synthetic(worker_name: &str) -> Self {
        Self {
            render_backend: RenderBackendKind::Synthetic,
            render_concurrency: 2,
            transcode_concurrency: 1,
            job_attempts: 3,
            render_timeout: Duration::from_secs(7200),
            retry_backoff: Duration::from_secs(30),
            sweep_interval: Duration::from_secs(60),
            stale_after: Duration::from_secs(900),
            shutdown_grace: Duration::from_secs(30),
            worker_name: worker_name.to_owned(),
            stats_cron: "0 5 0 * * *".to_owned(),
            stats_tz: "UTC".to_owned(),
            media_retention: None,
            ingest: crate::media::IngestLimits::default(),
            mail: crate::mail::MailSettings::default(),
        }
    }

    /// Render jobs this process runs at once, over all its backends.
    pub fn render_slots(&self) -> usize {
        match &self.render_backend {
            RenderBackendKind::Synthetic => self.render_concurrency,
            RenderBackendKind::ComfyUi { urls, .. } => urls.len() * self.render_concurrency,
        }
    }
}

impl WorkerArgs {
    pub fn resolve(&self) -> Result<WorkerSettings, ConfigError> {
        let render_backend = match self.render_backend.trim() {
            "synthetic" => RenderBackendKind::Synthetic,
            "comfyui" => {
                let urls: Vec<String> = self
                    .comfyui_urls
                    .as_deref()
                    .unwrap_or_default()
                    .split(',')
                    .map(|u| u.trim().trim_end_matches('/').to_owned())
                    .filter(|u| !u.is_empty())
                    .collect();
                if urls.is_empty() {
                    return Err(ConfigError::new(
                        "MAGE_COMFYUI_URLS",
                        "is required with MAGE_RENDER_BACKEND=comfyui",
                    ));
                }
                if let Some(bad) =
                    urls.iter().find(|u| !(u.starts_with("http://") || u.starts_with("https://")))
                {
                    return Err(ConfigError::new(
                        "MAGE_COMFYUI_URLS",
                        format!("{bad:?} must start with http:// or https://"),
                    ));
                }
                let mut seen = std::collections::HashSet::new();
                if let Some(dup) = urls.iter().find(|u| !seen.insert(*u)) {
                    return Err(ConfigError::new("MAGE_COMFYUI_URLS", format!("{dup} is listed twice")));
                }
                RenderBackendKind::ComfyUi { urls, workflows: self.comfyui_workflows.clone() }
            }
            other => {
                return Err(ConfigError::new(
                    "MAGE_RENDER_BACKEND",
                    format!("unknown backend {other:?} (this build has: synthetic, comfyui)"),
                ));
            }
        };
        let default_concurrency = match render_backend {
            RenderBackendKind::Synthetic => 2,
            // ComfyUI runs one prompt at a time; more would only wait in its
            // in-memory queue, which a restart loses.
            RenderBackendKind::ComfyUi { .. } => 1,
        };
        let worker_name = match self.worker_name.as_deref().map(str::trim) {
            Some(n) if !n.is_empty() => n.to_owned(),
            _ => default_worker_name(),
        };
        Ok(WorkerSettings {
            render_backend,
            render_concurrency: self.render_concurrency.unwrap_or(default_concurrency),
            transcode_concurrency: self.transcode_concurrency,
            job_attempts: self.job_attempts,
            render_timeout: Duration::from_secs(self.render_timeout_seconds),
            retry_backoff: Duration::from_secs(self.retry_backoff_seconds),
            sweep_interval: Duration::from_secs(self.sweep_interval_seconds),
            stale_after: Duration::from_secs(self.stale_after_seconds),
            shutdown_grace: self.shutdown.grace(),
            worker_name,
            stats_cron: self.stats_cron.trim().to_owned(),
            stats_tz: self.stats_tz.trim().to_owned(),
            media_retention: self.media_retention_days.map(|d| Duration::from_secs(u64::from(d) * 86_400)),
            ingest: crate::media::IngestLimits {
                max_image_pixels: self.max_image_pixels,
                max_seconds: f64::from(self.max_upload_seconds),
                ..crate::media::IngestLimits::default()
            },
            mail: crate::mail::MailSettings::resolve(self.smtp_url.as_deref(), &self.mail_from)?,
        })
    }
}

/// Host name + pid: unique per process, and stable for its life, which
/// apalis-redis needs to hand a dead worker's tasks to another (apalis #504).
pub fn default_worker_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "mage".to_owned());
    format!("{host}-{}", std::process::id())
}
