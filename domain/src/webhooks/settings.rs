//! The webhook settings `mage serve` (what an endpoint may point at) and
//! `mage work` (how deliveries are sent and retried) share.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;

use super::guard::UrlPolicy;
use crate::config::ConfigError;

/// An endpoint must answer within this: a 2xx later is a failed attempt.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Retries after the first attempt: Svix's first waits, then 12 h ones,
/// about three days in all (a receiver down over a long weekend).
pub const DEFAULT_RETRY_SCHEDULE: &str = "5s,5m,30m,2h,5h,10h,10h,10h,12h,12h,12h";

#[derive(Debug, Clone, Args)]
pub struct WebhookArgs {
    /// Let endpoints point at loopback, private, link-local and CGNAT
    /// addresses, and use http:// (development and tests only)
    #[arg(long, env = "MAGE_WEBHOOKS_ALLOW_PRIVATE", default_value_t = false, action = clap::ArgAction::Set)]
    pub webhooks_allow_private: bool,
    /// Waits between a failed delivery attempt and the next, comma-separated
    /// (`30s`, `5m`, `2h`, `1d`, or plain seconds); the delivery fails after
    /// the last
    #[arg(long, env = "MAGE_WEBHOOK_RETRY_SCHEDULE", default_value = DEFAULT_RETRY_SCHEDULE)]
    pub webhook_retry_schedule: String,
    /// Resolve endpoint hosts through this DNS server (`host:port`) instead
    /// of the system's resolver
    #[arg(long, env = "MAGE_WEBHOOK_NAMESERVER")]
    pub webhook_nameserver: Option<SocketAddr>,
    /// Deliveries one worker process sends at once
    #[arg(long, env = "MAGE_WEBHOOK_CONCURRENCY", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub webhook_concurrency: u32,
    /// Deliveries in flight to one endpoint at once (across all workers)
    #[arg(long, env = "MAGE_WEBHOOK_ENDPOINT_CONCURRENCY", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..=256))]
    pub webhook_endpoint_concurrency: u32,
    /// An endpoint whose every delivery failed for this long is disabled
    #[arg(long, env = "MAGE_WEBHOOK_DISABLE_AFTER_SECONDS", default_value_t = 5 * 86_400, hide = true)]
    pub webhook_disable_after_seconds: u64,
}

/// The resolved webhook settings.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// What an endpoint URL may be (checked at creation and every delivery).
    pub policy: UrlPolicy,
    /// Waits before each retry; attempts in all = its length + 1.
    pub schedule: Vec<Duration>,
    pub concurrency: usize,
    pub per_endpoint: usize,
    pub disable_after: Duration,
    /// An endpoint must answer within this.
    pub timeout: Duration,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            policy: UrlPolicy::default(),
            schedule: parse_schedule(DEFAULT_RETRY_SCHEDULE).unwrap_or_default(),
            concurrency: 64,
            per_endpoint: 8,
            disable_after: Duration::from_secs(5 * 86_400),
            timeout: TIMEOUT,
        }
    }
}

impl WebhookSettings {
    /// For tests and `mage dev`: endpoints on this machine, over http.
    pub fn local() -> Self {
        let mut s = Self::default();
        s.policy.allow_private = true;
        s.policy.allow_http = true;
        s
    }
}

impl WebhookArgs {
    /// `dev`: `mage dev` also allows http:// endpoints (anywhere else only
    /// https, unless private addresses are allowed for development).
    pub fn resolve(&self, dev: bool) -> Result<WebhookSettings, ConfigError> {
        let schedule = parse_schedule(&self.webhook_retry_schedule)
            .map_err(|e| ConfigError::new("MAGE_WEBHOOK_RETRY_SCHEDULE", e))?;
        Ok(WebhookSettings {
            policy: UrlPolicy {
                allow_http: dev || self.webhooks_allow_private,
                allow_private: self.webhooks_allow_private,
                nameserver: self.webhook_nameserver,
            },
            schedule,
            concurrency: self.webhook_concurrency as usize,
            per_endpoint: self.webhook_endpoint_concurrency as usize,
            disable_after: Duration::from_secs(self.webhook_disable_after_seconds),
            timeout: TIMEOUT,
        })
    }
}

/// `5s,5m,30m,2h` → durations; an empty schedule (`""`) means one attempt.
pub fn parse_schedule(raw: &str) -> Result<Vec<Duration>, String> {
    raw.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
            let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a duration such as 30s, 5m, 2h"))?;
            let secs = match unit {
                "" | "s" => n,
                "m" => n * 60,
                "h" => n * 3600,
                "d" => n * 86_400,
                _ => return Err(format!("{s:?}: the unit must be s, m, h or d")),
            };
            Ok(Duration::from_secs(secs))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_schedule_reaches_about_three_days() {
        let s = parse_schedule(DEFAULT_RETRY_SCHEDULE).expect("default");
        assert_eq!(s.len(), 11);
        let total: u64 = s.iter().map(|d| d.as_secs()).sum();
        assert!((2 * 86_400..4 * 86_400).contains(&total), "{total}");
        assert_eq!(parse_schedule("1, 2s,3m").expect("mixed"), [1, 2, 180].map(Duration::from_secs));
        assert!(parse_schedule("5x").is_err());
        assert!(parse_schedule("").expect("empty").is_empty());
    }
}
