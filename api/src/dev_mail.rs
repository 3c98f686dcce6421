//! The development mailbox: `GET /dev/mail` lists the outbox's newest
//! mails with their links clickable, so that password resets and email
//! verification can be tried under `mage dev` with no SMTP server. It
//! exists only under `mage dev` (404 elsewhere): bodies hold live links.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;

use crate::AppState;

/// Mails the page shows.
const SHOWN: i64 = 50;

pub fn routes() -> Router<AppState> {
    Router::new().route("/dev/mail", get(mailbox))
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The body, escaped, with every http(s) URL made a link.
fn linkified(body: &str) -> String {
    body.split_inclusive(char::is_whitespace)
        .map(|word| {
            let trimmed = word.trim_end();
            if trimmed.starts_with("http://") || trimmed.starts_with("https://") {
                let url = escape(trimmed);
                format!("<a href=\"{url}\">{url}</a>{}", &word[trimmed.len()..])
            } else {
                escape(word)
            }
        })
        .collect()
}

async fn mailbox(State(state): State<AppState>) -> Response {
    if !state.settings.dev_mode {
        return StatusCode::NOT_FOUND.into_response();
    }
    let mails = async {
        let mut conn = state.pool.get().await?;
        mage_domain::mail::recent(&mut conn, SHOWN).await
    };
    let mails = match mails.await {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(error = %e, "development mailbox: could not read the outbox");
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
    };
    let items: String = mails
        .iter()
        .map(|m| {
            let status = match (m.sent_at, &m.last_error) {
                (Some(at), _) => format!("delivered {}", at.format("%Y-%m-%d %H:%M:%S UTC")),
                (None, Some(e)) => format!("not sent yet (attempt {}: {})", m.attempts, escape(e)),
                (None, None) => "waiting to be sent".to_owned(),
            };
            let body = match &m.body_text {
                Some(b) => format!("<pre>{}</pre>", linkified(b)),
                None => "<p class=\"gone\">Sent over SMTP: the body is not kept.</p>".to_owned(),
            };
            format!(
                r#"<article class="mail"><h2>{subject}</h2>
<p class="meta">To <strong>{to}</strong> · written {created} · {status}</p>{body}</article>"#,
                subject = escape(&m.subject),
                to = escape(&m.to_address),
                created = m.created_at.format("%Y-%m-%d %H:%M:%S UTC"),
            )
        })
        .collect();
    let items = if mails.is_empty() { "<p id=\"empty\">No mail yet.</p>".to_owned() } else { items };
    Html(format!(
        r#"<!doctype html><html><head><meta charset="utf-8"><title>Mage development mailbox</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 52rem; margin: 2rem auto; padding: 0 1rem; color: #1d1d1f; }}
.mail {{ border: 1px solid #d0d0d7; border-radius: 8px; padding: 0.5rem 1rem; margin: 1rem 0; }}
.mail h2 {{ font-size: 1.1rem; margin: 0.5rem 0; }}
.meta {{ color: #555; font-size: 0.9rem; margin: 0; }}
pre {{ white-space: pre-wrap; word-break: break-all; background: #f6f6f8; padding: 0.75rem; border-radius: 6px; }}
.gone {{ color: #777; font-style: italic; }}
</style></head>
<body><h1>Development mailbox</h1>
<p>The outbox's newest {SHOWN} mails, newest first. Under <code>mage dev</code> with no
<code>MAGE_SMTP_URL</code> they are kept here instead of sent.</p>
{items}</body></html>"#
    ))
    .into_response()
}

#[cfg(test)]
mod tests {
    #[test]
    fn links_become_anchors_and_the_rest_is_escaped() {
        let html = super::linkified("open <this>:\n\nhttp://x.test/reset-password?token=a_b&c=1\n\nbye");
        assert!(html.contains("&lt;this&gt;"), "{html}");
        assert!(
            html.contains(
                r#"<a href="http://x.test/reset-password?token=a_b&amp;c=1">http://x.test/reset-password?token=a_b&amp;c=1</a>"#
            ),
            "{html}"
        );
    }
}
