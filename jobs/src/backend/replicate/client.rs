//! Replicate's HTTP API, as the backend uses it. Rate limits (429) and
//! server errors (5xx) are waited out here, honouring `Retry-After`, for a
//! bounded time ([`Client::retry_for`]) before the call reports
//! `Unavailable`: a busy Replicate costs a job no attempt. A refused token
//! (401/403) is never retried: it is `Refused`, which the render job treats
//! as its backend being unhealthy.

use std::path::Path;
use std::time::Duration;

use futures_util::StreamExt;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::Value;
use tokio::io::AsyncWriteExt;

use crate::backend::RenderError;

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// An input image on a slow uplink.
pub const UPLOAD_TIMEOUT: Duration = Duration::from_secs(120);
/// An output of a long video can be large; a stalled download still ends.
pub const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(30 * 60);
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);
pub const RETRY_FOR: Duration = Duration::from_secs(120);
const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct Client {
    /// Without `/v1` and without a trailing slash.
    pub base: String,
    token: String,
    pub http: reqwest::Client,
    pub retry_for: Duration,
}

/// Whether a request may be sent again after a network error: one that
/// creates something may have done so before the connection broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resend {
    Always,
    /// Only when the connection was never made.
    IfNotSent,
}

pub fn unavailable(base: &str, what: &str, e: impl std::fmt::Display) -> RenderError {
    RenderError::Unavailable(format!("{base}: {what}: {e}"))
}

/// The refusal of a token, in words for operators.
pub fn refused_token(status: StatusCode) -> String {
    format!("Replicate refused the API token ({status}): check MAGE_REPLICATE_API_TOKEN")
}

/// `Retry-After` in seconds (Replicate's form); a date is left to the
/// backoff.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let secs = headers.get(RETRY_AFTER)?.to_str().ok()?.trim().parse::<f64>().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(3600.0)))
}

impl Client {
    pub fn new(base: &str, token: &str) -> Result<Self, RenderError> {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .map_err(|e| RenderError::Unavailable(format!("HTTP client: {e}")))?;
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            http,
            retry_for: RETRY_FOR,
        })
    }

    /// A request to the API (`path` from `/v1`), authorised.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base)).bearer_auth(&self.token)
    }

    /// Whether `url` is on the API's own origin (so it may carry the token).
    pub fn owns(&self, url: &str) -> bool {
        url.strip_prefix(&self.base).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }

    /// Sends the request `build` makes, again while Replicate is busy.
    /// Answers other than 429 and 5xx come back as they are, except a
    /// refused token.
    pub async fn send(
        &self,
        what: &str,
        resend: Resend,
        build: impl Fn() -> RequestBuilder,
    ) -> Result<Response, RenderError> {
        let deadline = tokio::time::Instant::now() + self.retry_for;
        let mut delay = RETRY_MIN;
        loop {
            let why = match build().send().await {
                Ok(resp) => {
                    let status = resp.status();
                    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                        return Err(RenderError::Refused(refused_token(status)));
                    }
                    if status != StatusCode::TOO_MANY_REQUESTS && !status.is_server_error() {
                        return Ok(resp);
                    }
                    if let Some(wait) = retry_after(resp.headers()) {
                        delay = wait;
                    }
                    format!("answered {status}")
                }
                Err(e) if resend == Resend::IfNotSent && !e.is_connect() => {
                    return Err(unavailable(&self.base, what, e));
                }
                Err(e) => e.to_string(),
            };
            let now = tokio::time::Instant::now();
            if now + delay > deadline {
                return Err(unavailable(
                    &self.base,
                    what,
                    format!("{why}; gave up after {}s", self.retry_for.as_secs()),
                ));
            }
            tracing::debug!(what, %why, delay = ?delay, "Replicate busy; trying again");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(RETRY_MAX);
        }
    }

    /// A GET whose JSON answer is wanted; `None` for 404.
    pub async fn get_json(&self, path: &str) -> Result<Option<Value>, RenderError> {
        let resp = self
            .send(&format!("GET {path}"), Resend::Always, || {
                self.request(Method::GET, path).timeout(REQUEST_TIMEOUT)
            })
            .await?;
        self.json_or_404(&format!("GET {path}"), resp).await
    }

    /// A GET of an absolute URL of the API (a `next` page link).
    pub async fn get_url(&self, url: &str) -> Result<Option<Value>, RenderError> {
        let what = format!("GET {url}");
        let resp = self
            .send(&what, Resend::Always, || {
                self.http.get(url).bearer_auth(&self.token).timeout(REQUEST_TIMEOUT)
            })
            .await?;
        self.json_or_404(&what, resp).await
    }

    async fn json_or_404(&self, what: &str, resp: Response) -> Result<Option<Value>, RenderError> {
        let status = resp.status();
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            return Err(unavailable(&self.base, what, format!("{status}: {}", clip(&text))));
        }
        resp.json().await.map(Some).map_err(|e| unavailable(&self.base, what, e))
    }

    /// Streams `url` into the file `to`. `Ok(false)`: the file is gone
    /// (404/410; Replicate deletes API outputs after an hour).
    pub async fn download(&self, url: &str, to: &Path) -> Result<bool, RenderError> {
        let what = "download";
        let owns = self.owns(url);
        let resp = self
            .send(what, Resend::Always, || {
                let req = self.http.get(url).timeout(DOWNLOAD_TIMEOUT);
                // The token goes to Replicate's API only, never to a host
                // an output URL names.
                if owns { req.bearer_auth(&self.token) } else { req }
            })
            .await?;
        let status = resp.status();
        if status == StatusCode::NOT_FOUND || status == StatusCode::GONE {
            return Ok(false);
        }
        if !status.is_success() {
            return Err(unavailable(&self.base, what, format!("{status} for {url}")));
        }
        let mut out = tokio::fs::File::create(to).await?;
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            out.write_all(&chunk.map_err(|e| unavailable(&self.base, what, e))?).await?;
        }
        out.flush().await?;
        Ok(true)
    }
}

/// A response body, bounded for a log line.
pub fn clip(text: &str) -> String {
    const MAX: usize = 500;
    if text.len() <= MAX {
        return text.to_owned();
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// What Replicate says is wrong with a request (`detail`, else `title`).
pub fn problem(text: &str) -> Option<String> {
    let body: Value = serde_json::from_str(text).ok()?;
    let detail = body["detail"].as_str().or(body["title"].as_str())?.trim();
    (!detail.is_empty()).then(|| detail.split_whitespace().collect::<Vec<_>>().join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_read_in_seconds() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(RETRY_AFTER, "3".parse().unwrap_or_else(|_| unreachable!()));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        h.insert(RETRY_AFTER, "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap_or_else(|_| unreachable!()));
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn only_the_api_origin_gets_the_token() {
        let Ok(c) = Client::new("https://api.replicate.com/", "r8_x") else { unreachable!() };
        assert!(c.owns("https://api.replicate.com/v1/files/abc"));
        assert!(!c.owns("https://api.replicate.com.evil.example/v1"));
        assert!(!c.owns("https://replicate.delivery/xezq/out.mp4"));
    }

    #[test]
    fn problems_are_read_from_replicate_errors() {
        let body = r#"{"detail": "- input.num_frames: Must be greater than or equal to 81\n", "status": 422, "title": "Input validation failed"}"#;
        assert_eq!(problem(body).as_deref(), Some("- input.num_frames: Must be greater than or equal to 81"));
        assert_eq!(problem(r#"{"title": "Not found"}"#).as_deref(), Some("Not found"));
        assert_eq!(problem("<html>"), None);
    }
}
