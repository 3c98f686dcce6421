//! The web app (`web/` at the repository root): one HTML page for every
//! route of the app, and its files under `/web/`. Release builds carry the
//! files in the binary, so the app works with no internet access and no
//! folder beside the binary; debug builds read them from disk, so a change
//! to `web/` shows on reload without rebuilding.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

#[derive(rust_embed::Embed)]
#[folder = "../web"]
#[exclude = "vendor/update.sh"]
#[exclude = "*.md"]
struct Files;

/// The first path segments the app routes itself (History API): a reload or
/// a link to any of them gets the page. The mails' links (`/verify-email`,
/// `/reset-password`) and Stripe's return pages (`/checkout/...`) are here.
const PAGES: &[&str] = &[
    "signin",
    "signup",
    "forgot-password",
    "reset-password",
    "verify-email",
    "create",
    "generations",
    "history",
    "assets",
    "billing",
    "checkout",
    "account",
    "admin",
];

/// Scripts only from this server; media and API calls may go to the
/// storage's public origin (S3 or a CDN), so those stay open.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src * data: blob:; \
                   media-src * blob:; connect-src *; worker-src 'self' blob:; frame-ancestors 'none'; \
                   base-uri 'none'; form-action 'self'";

pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let mut router = Router::new()
        .route("/", get(page))
        .route("/web/{*file}", get(file))
        // Browsers ask every page's origin for one (the playground, the
        // development checkout page and mailbox have no <link rel=icon>).
        .route("/favicon.ico", get(|headers| file(Path("icon.svg".to_owned()), headers)));
    for p in PAGES {
        router = router.route(&format!("/{p}"), get(page)).route(&format!("/{p}/{{*rest}}"), get(page));
    }
    router
}

async fn page() -> Response {
    let Some(index) = Files::get("index.html") else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "web/index.html is missing from this build")
            .into_response();
    };
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "same-origin"),
            (header::X_FRAME_OPTIONS, "DENY"),
        ],
        index.data,
    )
        .into_response()
}

/// A file of the app, revalidated by its content hash: the names carry no
/// version, so `no-cache` with an ETag is what keeps an upgraded app
/// consistent (a 304 costs one round trip, no bytes).
async fn file(Path(name): Path<String>, headers: HeaderMap) -> Response {
    let Some(f) = Files::get(&name) else { return StatusCode::NOT_FOUND.into_response() };
    let etag = format!("\"{}\"", hex::encode(&f.metadata.sha256_hash()[..16]));
    let cached = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let mime = f.metadata.mimetype();
    // `.mjs` is JavaScript whatever the system's MIME table says.
    let mime =
        if name.ends_with(".js") || name.ends_with(".mjs") { "text/javascript; charset=utf-8" } else { mime };
    let mut res = if cached { StatusCode::NOT_MODIFIED.into_response() } else { f.data.into_response() };
    let h = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(mime) {
        h.insert(header::CONTENT_TYPE, v);
    }
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    res
}
