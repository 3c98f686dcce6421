//! Webhooks out: endpoints a user registers, the events their changes raise
//! and the signed deliveries of those events, with a log of every attempt.
//!
//! Events are an outbox: a database trigger (migration
//! `2026-12-07-000001_webhooks`) writes the `webhook_events` row in the
//! transaction of the change it reports, for users with an enabled
//! endpoint listening for its type, and NOTIFYs `mage_webhook_events`. The
//! workers' listener ([`events::fan_out`]) turns an event into one delivery
//! per matching endpoint and pushes a `deliver` job for each; the sweeper
//! fans out what a listener missed and re-sends deliveries whose job or
//! worker was lost. Each delivery is signed as Standard Webhooks
//! ([`crate::standard_webhooks`]) with the event id as `webhook-id`.

pub mod deliveries;
pub mod endpoints;
pub mod events;
pub mod guard;
pub mod objects;
pub mod permits;
pub mod settings;

pub use settings::{WebhookArgs, WebhookSettings};

/// What an endpoint can listen for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    GenerationStarted,
    GenerationSucceeded,
    GenerationFailed,
    GenerationCanceled,
    AssetReady,
    AssetRejected,
    OrderPaid,
    CreditsLow,
    /// Sent by `sendTestWebhook` only; no endpoint subscribes to it.
    Test,
}

impl EventType {
    /// The types an endpoint may subscribe to.
    pub const SUBSCRIBABLE: [EventType; 8] = [
        EventType::GenerationStarted,
        EventType::GenerationSucceeded,
        EventType::GenerationFailed,
        EventType::GenerationCanceled,
        EventType::AssetReady,
        EventType::AssetRejected,
        EventType::OrderPaid,
        EventType::CreditsLow,
    ];

    /// The `type` of the payload, as the triggers write it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::GenerationStarted => "generation.started",
            Self::GenerationSucceeded => "generation.succeeded",
            Self::GenerationFailed => "generation.failed",
            Self::GenerationCanceled => "generation.canceled",
            Self::AssetReady => "asset.ready",
            Self::AssetRejected => "asset.rejected",
            Self::OrderPaid => "order.paid",
            Self::CreditsLow => "credits.low",
            Self::Test => "webhook.test",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::SUBSCRIBABLE.into_iter().chain([Self::Test]).find(|t| t.as_str() == s)
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A delivery's state (`webhook_deliveries.status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryStatus {
    /// Not delivered yet: an attempt is due or running.
    Pending,
    Succeeded,
    /// Its schedule ran out (or its endpoint was disabled or deleted).
    Failed,
}

impl DeliveryStatus {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Pending, Self::Succeeded, Self::Failed].into_iter().find(|t| t.as_str() == s)
    }
}

/// What the delivery log keeps of a request or response body.
pub const LOGGED_BODY_BYTES: usize = 4096;

/// `s` cut to at most [`LOGGED_BODY_BYTES`] bytes, on a character boundary.
pub fn truncate_body(s: &str) -> &str {
    if s.len() <= LOGGED_BODY_BYTES {
        return s;
    }
    let mut end = LOGGED_BODY_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_types_round_trip() {
        for t in EventType::SUBSCRIBABLE.into_iter().chain([EventType::Test]) {
            assert_eq!(EventType::parse(t.as_str()), Some(t));
        }
        assert_eq!(EventType::parse("generation.queued"), None);
    }

    #[test]
    fn bodies_are_cut_on_a_character_boundary() {
        let s = "é".repeat(LOGGED_BODY_BYTES);
        let cut = truncate_body(&s);
        assert!(cut.len() <= LOGGED_BODY_BYTES && cut.len() >= LOGGED_BODY_BYTES - 1);
        assert_eq!(truncate_body("short"), "short");
    }
}
