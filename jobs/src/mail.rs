//! The `mail` queue: sends the outbox's mails (`mage_domain::mail`) over
//! SMTP with lettre, and does the lookup half of a password reset.
//!
//! A send locks its mail row and marks it sent in the same transaction, so
//! a duplicate job (the sweeper's, or a retry) sends nothing twice. Over
//! SMTP the body is cleared once sent: a live link then exists only in the
//! recipient's mailbox. Under `mage dev` without MAGE_SMTP_URL mails are
//! "sent" into the development mailbox instead (`GET /dev/mail`), body
//! kept. Anywhere else without SMTP they wait in the outbox, with a
//! warning, until a worker with MAGE_SMTP_URL takes them.
//!
//! A failed send is counted on the row and tried again after a backoff
//! ([`BACKOFF`], doubling) as a new task; after [`ATTEMPTS`] the job is dead
//! (listed for admins) and the mail stays unsent with its last error.

use std::sync::Arc;
use std::time::Duration;

use apalis::prelude::{AbortError, BoxDynError};
use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use mage_domain::config::ConfigError;
use mage_domain::mail::{self, Delivery, Sent};
use mage_domain::queue::MailJob;
use tracing::Instrument;
use uuid::Uuid;

use crate::ctx::Ctx;

/// The sender when MAGE_MAIL_FROM is not set.
pub const DEFAULT_FROM: &str = "Mage <no-reply@localhost>";
/// Sends of one mail before it is given up (and failures of a job before
/// it is dead).
pub const ATTEMPTS: i32 = 6;
/// Wait before the second send of a mail; doubles for each further one
/// (15 s, 30 s, ... about 8 minutes in all: a short SMTP outage passes).
pub const BACKOFF: Duration = Duration::from_secs(15);
/// Mails one worker sends at once.
pub const CONCURRENCY: usize = 4;
/// Longest one SMTP conversation may take.
const SMTP_TIMEOUT: Duration = Duration::from_secs(20);

/// How the connection to the SMTP server is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// No TLS: a relay on the same host or network (`smtp://host:25`).
    Plain,
    /// STARTTLS, required (`smtp://host:587`, or `?tls=required`).
    StartTls,
    /// TLS from the first byte (`smtps://host:465`).
    Tls,
}

/// Where mails go (MAGE_SMTP_URL).
#[derive(Clone)]
pub struct SmtpSettings {
    pub host: String,
    pub port: u16,
    pub security: Security,
    credentials: Option<(String, String)>,
}

impl std::fmt::Debug for SmtpSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The password is never printed.
        f.debug_struct("SmtpSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("security", &self.security)
            .field("user", &self.credentials.as_ref().map(|c| &c.0))
            .finish()
    }
}

impl SmtpSettings {
    /// `smtp://[user:pass@]host[:port][?tls=required]` or
    /// `smtps://[user:pass@]host[:port]`.
    pub fn parse(raw: &str) -> Result<Self, ConfigError> {
        let bad = |m: &str| ConfigError::new("MAGE_SMTP_URL", m.to_owned());
        let url = reqwest::Url::parse(raw.trim())
            .map_err(|e| bad(&format!("is not a URL ({e}); e.g. smtps://user:password@smtp.example.com")))?;
        let host = url.host_str().filter(|h| !h.is_empty()).ok_or_else(|| bad("has no host"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        let tls_required = url.query_pairs().any(|(k, v)| k == "tls" && v == "required");
        let (port, security) = match url.scheme() {
            "smtps" => (url.port().unwrap_or(465), Security::Tls),
            "smtp" => {
                let port = url.port().unwrap_or(25);
                let starttls = port == 587 || tls_required;
                (port, if starttls { Security::StartTls } else { Security::Plain })
            }
            other => return Err(bad(&format!("scheme {other:?} is not smtp or smtps"))),
        };
        let decode = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned();
        let credentials = match (url.username(), url.password()) {
            ("", None) => None,
            (user, password) => Some((decode(user), decode(password.unwrap_or_default()))),
        };
        let loopback = matches!(host.as_str(), "localhost" | "127.0.0.1" | "::1");
        if credentials.is_some() && security == Security::Plain && !loopback {
            return Err(bad(
                "sends a password without TLS: use smtps:// (port 465) or port 587 (STARTTLS), \
                 or ?tls=required",
            ));
        }
        Ok(Self { host, port, security, credentials })
    }

    fn transport(&self) -> Result<AsyncSmtpTransport<Tokio1Executor>, lettre::transport::smtp::Error> {
        type T = AsyncSmtpTransport<Tokio1Executor>;
        let builder = match self.security {
            Security::Tls => T::relay(&self.host)?,
            Security::StartTls => T::starttls_relay(&self.host)?,
            Security::Plain => T::builder_dangerous(&self.host),
        };
        let mut builder = builder.port(self.port).timeout(Some(SMTP_TIMEOUT));
        if let Some((user, password)) = &self.credentials {
            builder = builder.credentials(Credentials::new(user.clone(), password.clone()));
        }
        Ok(builder.build())
    }
}

/// How the `mail` queue delivers (MAGE_SMTP_URL, MAGE_MAIL_FROM).
#[derive(Debug, Clone)]
pub struct MailSettings {
    pub smtp: Option<SmtpSettings>,
    /// The sender, checked to parse as a mailbox.
    pub from: String,
    /// Without SMTP, keep mails in the development mailbox (`mage dev`).
    pub dev_mailbox: bool,
}

impl Default for MailSettings {
    fn default() -> Self {
        Self { smtp: None, from: DEFAULT_FROM.to_owned(), dev_mailbox: false }
    }
}

impl MailSettings {
    pub fn resolve(smtp_url: Option<&str>, from: &str) -> Result<Self, ConfigError> {
        let from = from.trim().to_owned();
        if let Err(e) = from.parse::<Mailbox>() {
            return Err(ConfigError::new(
                "MAGE_MAIL_FROM",
                format!("is not an address such as `Mage <no-reply@example.com>` ({e})"),
            ));
        }
        let smtp = smtp_url.filter(|u| !u.trim().is_empty()).map(SmtpSettings::parse).transpose()?;
        Ok(Self { smtp, from, dev_mailbox: false })
    }
}

/// The transport of this worker process.
pub(crate) enum Mailer {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    DevMailbox,
    /// Nowhere to send: mails wait in the outbox.
    Off,
}

impl Mailer {
    pub(crate) fn new(settings: &MailSettings) -> Result<Self, lettre::transport::smtp::Error> {
        Ok(match &settings.smtp {
            Some(smtp) => Self::Smtp(smtp.transport()?),
            None if settings.dev_mailbox => Self::DevMailbox,
            None => Self::Off,
        })
    }

    /// Says where mails go, once at start.
    pub(crate) fn announce(&self, settings: &MailSettings) {
        match (self, &settings.smtp) {
            (Self::Smtp(_), Some(s)) => {
                tracing::info!(host = %s.host, port = s.port, security = ?s.security, "mail worker: sending over SMTP")
            }
            (Self::DevMailbox, _) => {
                tracing::info!(
                    "mail worker: no MAGE_SMTP_URL; mails are kept in the development mailbox (/dev/mail)"
                )
            }
            _ => tracing::warn!(
                "mail worker: MAGE_SMTP_URL is not set: no mail (password resets, email verification) \
                 will be sent; they wait in the outbox until a worker has MAGE_SMTP_URL"
            ),
        }
    }
}

pub(crate) async fn run(ctx: Arc<Ctx>, job: MailJob, attempt: usize) -> Result<(), BoxDynError> {
    let span = match &job {
        MailJob::Send { mail_id } => tracing::info_span!("mail", %mail_id),
        MailJob::PasswordReset { request_id, .. } => tracing::info_span!("mail", %request_id),
    };
    async move {
        let result = match job {
            MailJob::Send { mail_id } => send(&ctx, mail_id).await,
            MailJob::PasswordReset { email, request_id, public_url } => {
                match mail::queue_reset(&ctx.core.pool, &email, request_id, &public_url).await {
                    // Nothing is said anywhere about an address with no
                    // account: not even a log line naming it.
                    Ok(None) => Ok(Done::Done),
                    Ok(Some(m)) if m.sent_at.is_some() => Ok(Done::Done),
                    Ok(Some(m)) => send(&ctx, m.id).await,
                    Err(e) => Err(e),
                }
            }
        };
        match result {
            Ok(Done::Done) => Ok(()),
            // Its attempts are counted on the mail: the task is dead now,
            // not retried in place.
            Ok(Done::GaveUp(why)) => Err(AbortError::new(why).into()),
            // The database or the queue failed (not the SMTP server):
            // apalis-redis tries the task again shortly.
            Err(e) if attempt + 1 >= ATTEMPTS as usize => {
                tracing::error!(attempt, error = %e, "mail job failed for the last time");
                Err(AbortError::new(format!("attempt {attempt}: {e}")).into())
            }
            Err(e) => {
                tracing::warn!(attempt, error = %e, "mail job failed; it will be retried");
                Err(e.into())
            }
        }
    }
    .instrument(span)
    .await
}

/// How a mail job ended, when nothing failed on our side.
enum Done {
    /// Sent, skipped, waiting for SMTP, or scheduled for another try.
    Done,
    /// The SMTP server refused it [`ATTEMPTS`] times.
    GaveUp(String),
}

/// Sends one mail; a failed send is scheduled again after its backoff, or
/// given up after [`ATTEMPTS`].
async fn send(ctx: &Ctx, mail_id: Uuid) -> Result<Done, mage_domain::Error> {
    let from = ctx.settings.mail.from.clone();
    let sent = match &*ctx.mailer {
        Mailer::Off => {
            tracing::warn!("MAGE_SMTP_URL is not set: the mail waits in the outbox");
            return Ok(Done::Done);
        }
        Mailer::DevMailbox => mail::send_with(&ctx.core.pool, mail_id, async |_| Ok(Delivery::Kept)).await?,
        Mailer::Smtp(transport) => {
            let transport = transport.clone();
            mail::send_with(&ctx.core.pool, mail_id, async move |m| {
                let message = message(&from, &m)?;
                transport.send(message).await.map_err(|e| format!("SMTP: {e}"))?;
                Ok(Delivery::Smtp)
            })
            .await?
        }
    };
    match sent {
        Sent::Sent => {
            tracing::info!("mail sent");
        }
        Sent::Skipped => tracing::debug!("mail already sent, or being sent by another worker"),
        Sent::Failed { attempts, error } if attempts >= ATTEMPTS => {
            tracing::error!(attempts, %error, "mail could not be sent; giving up");
            return Ok(Done::GaveUp(format!("mail {mail_id} not sent after {attempts} attempts: {error}")));
        }
        Sent::Failed { attempts, error } => {
            let delay = BACKOFF * 2u32.saturating_pow(attempts.saturating_sub(1).max(0) as u32);
            tracing::warn!(attempts, %error, retry_in_seconds = delay.as_secs(), "mail not sent; it will be tried again");
            ctx.core.queues.push_mail_after(&MailJob::Send { mail_id }, delay).await?;
        }
    }
    Ok(Done::Done)
}

fn message(from: &str, m: &mage_domain::rows::Mail) -> Result<Message, String> {
    let from: Mailbox = from.parse().map_err(|e| format!("MAGE_MAIL_FROM {from:?}: {e}"))?;
    let to: Mailbox = m.to_address.parse().map_err(|e| format!("recipient {:?}: {e}", m.to_address))?;
    let body = m.body_text.clone().ok_or("the mail has no body left to send")?;
    Message::builder()
        .from(from)
        .to(to)
        .subject(&m.subject)
        .header(ContentType::TEXT_PLAIN)
        .body(body)
        .map_err(|e| format!("building the message: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_sender_parses() {
        assert!(DEFAULT_FROM.parse::<Mailbox>().is_ok());
    }

    #[test]
    fn smtp_urls_choose_the_security() {
        let s = SmtpSettings::parse("smtp://127.0.0.1:2525").expect("plain");
        assert_eq!((s.port, s.security), (2525, Security::Plain));
        let s = SmtpSettings::parse("smtp://u:p@mail.example.com:587").expect("starttls");
        assert_eq!(s.security, Security::StartTls);
        let s = SmtpSettings::parse("smtps://u:p%40x@mail.example.com").expect("tls");
        assert_eq!((s.port, s.security), (465, Security::Tls));
        assert_eq!(s.credentials, Some(("u".into(), "p@x".into())));
        assert!(!format!("{s:?}").contains("p@x"), "the password is not printed");
        assert!(SmtpSettings::parse("smtp://u:p@mail.example.com:25").is_err(), "password in the clear");
        assert!(SmtpSettings::parse("http://mail.example.com").is_err());
    }
}
