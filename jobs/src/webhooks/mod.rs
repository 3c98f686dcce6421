//! Webhooks out, the workers' half: the listener that fans outbox events
//! out into deliveries ([`listen`]), the `deliver` queue's attempts
//! ([`deliver`]) and the guarded HTTP client they go through ([`client`]).
//! The tables, the payloads and the retry rules are `mage_domain::webhooks`'.

pub mod client;
pub(crate) mod deliver;
pub(crate) mod listen;

use mage_domain::webhooks::WebhookSettings;
use mage_domain::webhooks::guard::Guard;

/// What every delivery of this process shares.
pub(crate) struct Webhooks {
    pub guard: Guard,
    pub client: reqwest::Client,
    pub settings: WebhookSettings,
    /// The API's public URL, for the media links in payloads.
    pub public_url: String,
}

impl Webhooks {
    pub(crate) fn new(settings: WebhookSettings, public_url: Option<&str>) -> reqwest::Result<Self> {
        let guard = Guard::new(settings.policy.clone());
        let client = client::client(guard.clone(), settings.timeout)?;
        Ok(Self { guard, client, settings, public_url: public_url.unwrap_or_default().to_owned() })
    }
}
