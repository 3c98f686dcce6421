//! The settings of `mage work` (and of the workers inside `mage dev`):
//! render backends, concurrency, attempts, timers, the stats cron.

use std::time::Duration;

use clap::Args;
use mage_domain::backends::Backends;
use mage_domain::catalog::BackendKind;
use mage_domain::config::{ConfigError, ShutdownArgs};

#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
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
    /// Replicate predictions one worker process follows at once (each is
    /// an HTTP wait, not local work)
    #[arg(
        long,
        env = "MAGE_REPLICATE_CONCURRENCY",
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..),
        default_value_t = 32,
    )]
    pub replicate_concurrency: usize,
    /// With webhooks, how long a Replicate prediction may go without one
    /// before it is polled anyway
    #[arg(long, env = "MAGE_REPLICATE_QUIET_POLL_SECONDS", value_parser = clap::value_parser!(u64).range(1..), default_value_t = 60, hide = true)]
    pub replicate_quiet_poll_seconds: u64,
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

#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// The render backends this process runs a queue for.
    pub backends: Backends,
    /// Where Replicate sends its webhooks (MAGE_PUBLIC_URL), when known.
    pub public_url: Option<String>,
    /// MAGE_RENDER_CONCURRENCY: per process (synthetic) or per ComfyUI
    /// URL; `None` takes each backend's default.
    pub render_concurrency: Option<usize>,
    /// Replicate predictions followed at once.
    pub replicate_concurrency: usize,
    /// A prediction silent this long (no webhook) is polled.
    pub replicate_quiet_poll: Duration,
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
    /// How webhooks are delivered (the `deliver` queue).
    pub webhooks: mage_domain::webhooks::WebhookSettings,
}

impl WorkerSettings {
    /// Settings for tests and tools: the synthetic backend and the defaults.
    pub fn synthetic(worker_name: &str) -> Self {
        Self {
            backends: Backends::synthetic(),
            public_url: None,
            render_concurrency: None,
            replicate_concurrency: 32,
            replicate_quiet_poll: Duration::from_secs(60),
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
            webhooks: mage_domain::webhooks::WebhookSettings::local(),
        }
    }

    /// Render jobs of `kind` this process runs at once.
    pub fn render_slots(&self, kind: BackendKind) -> usize {
        if !self.backends.offers(kind) {
            return 0;
        }
        match kind {
            BackendKind::Synthetic => self.render_concurrency.unwrap_or(2),
            BackendKind::ComfyUi => {
                self.backends.comfyui.as_ref().map_or(0, |c| c.urls.len()) * self.comfy_concurrency()
            }
            BackendKind::Replicate => self.replicate_concurrency,
        }
    }

    /// Per ComfyUI server: one unless said. ComfyUI runs one prompt at a
    /// time; more would only wait in its in-memory queue, which a restart
    /// loses.
    pub fn comfy_concurrency(&self) -> usize {
        self.render_concurrency.unwrap_or(1)
    }
}

impl WorkerArgs {
    /// `backends` are the deployment's (shared with the API);
    /// `public_url` is where Replicate's webhooks reach the API.
    pub fn resolve(
        &self,
        backends: Backends,
        public_url: Option<String>,
    ) -> Result<WorkerSettings, ConfigError> {
        let worker_name = match self.worker_name.as_deref().map(str::trim) {
            Some(n) if !n.is_empty() => n.to_owned(),
            _ => default_worker_name(),
        };
        Ok(WorkerSettings {
            backends,
            public_url,
            render_concurrency: self.render_concurrency,
            replicate_concurrency: self.replicate_concurrency,
            replicate_quiet_poll: Duration::from_secs(self.replicate_quiet_poll_seconds),
            transcode_concurrency: self.transcode_concurrency,
            job_attempts: self.job_attempts,
            render_timeout: Duration::from_secs(self.render_timeout_seconds),
            retry_backoff: Duration::from_secs(self.retry_backoff_seconds),
            sweep_interval: Duration::from_secs(self.sweep_interval_seconds),
            stale_after: Duration::from_secs(self.stale_after_seconds),
            shutdown_grace: self.shutdown.grace(),
            worker_name,
            stats_cron: self.stats_cron.trim().to_owned(),
            // The caller sets it from the StatsArgs it shares with the API.
            stats_tz: "UTC".to_owned(),
            media_retention: self.media_retention_days.map(|d| Duration::from_secs(u64::from(d) * 86_400)),
            ingest: crate::media::IngestLimits {
                max_image_pixels: self.max_image_pixels,
                max_seconds: f64::from(self.max_upload_seconds),
                ..crate::media::IngestLimits::default()
            },
            mail: crate::mail::MailSettings::resolve(self.smtp_url.as_deref(), &self.mail_from)?,
            // The caller sets them from the WebhookArgs it shares with the API.
            webhooks: mage_domain::webhooks::WebhookSettings::default(),
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
