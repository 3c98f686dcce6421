//! Webhooks as Replicate sends them: Standard Webhooks headers and
//! signature, one sender per prediction so its events arrive in order, and
//! retries for `completed` events that did not get a 2xx.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::*;

/// Waits before the second and third attempt at a `completed` event.
const RETRY_DELAYS: [Duration; 2] = [Duration::from_millis(200), Duration::from_secs(1)];

pub(super) struct Event {
    pub(super) kind: &'static str,
    /// The prediction when the event happened.
    pub(super) body: Value,
}

/// Signs like Standard Webhooks: the `webhook-signature` header value
/// `v1,<base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}"))>`, where the key
/// is the base64 after `whsec_` (a secret that is not base64 is used as
/// its bytes).
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> String {
    let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
    let key = STANDARD.decode(encoded).unwrap_or_else(|_| encoded.as_bytes().to_vec());
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes keys of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// Starts the sender of one prediction's webhook events to `url`; it ends
/// when the returned sender is dropped and its queue is drained.
pub(super) fn sender(shared: Arc<Shared>, url: String) -> mpsc::UnboundedSender<Event> {
    let (tx, rx) = mpsc::unbounded_channel();
    let stop = shared.stop.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = deliver_all(&shared, &url, rx) => {}
        }
    });
    tx
}

async fn deliver_all(shared: &Shared, url: &str, mut rx: mpsc::UnboundedReceiver<Event>) {
    while let Some(event) = rx.recv().await {
        let duplicate = {
            let mut inner = shared.lock();
            if inner.drop_webhooks {
                inner.webhooks_dropped += 1;
                continue;
            }
            inner.duplicate_webhooks
        };
        let id = format!(
            "msg_{}",
            random_string(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz", 27)
        );
        let body = serde_json::to_vec(&event.body).unwrap_or_default();
        for _ in 0..if duplicate { 2 } else { 1 } {
            deliver(shared, url, &id, &event, &body).await;
        }
    }
}

/// One event, retried as Replicate retries terminal ones.
async fn deliver(shared: &Shared, url: &str, id: &str, event: &Event, body: &[u8]) {
    let mut delays = RETRY_DELAYS.iter();
    loop {
        let response_status = post(shared, url, id, body).await;
        shared.lock().webhooks_sent.push(SentWebhook {
            webhook_id: id.to_owned(),
            url: url.to_owned(),
            event: event.kind.to_owned(),
            status: event.body["status"].as_str().unwrap_or_default().to_owned(),
            response_status,
        });
        let delivered = response_status.is_some_and(|s| (200..300).contains(&s));
        if delivered || event.kind != "completed" {
            return;
        }
        match delays.next() {
            Some(delay) => tokio::time::sleep(*delay).await,
            None => return,
        }
    }
}

async fn post(shared: &Shared, url: &str, id: &str, body: &[u8]) -> Option<u16> {
    // Each attempt is signed afresh with its own timestamp.
    let now = Utc::now().timestamp();
    let response = shared
        .http
        .post(url)
        .header("webhook-id", id)
        .header("webhook-timestamp", now.to_string())
        .header("webhook-signature", sign(&shared.webhook_secret, id, now, body))
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.to_vec())
        .send()
        .await
        .ok()?;
    Some(response.status().as_u16())
}
