//! `GET /media/{*path}` (and `HEAD`): the local media store, served from
//! disk by tower-http's `ServeDir`, which streams the file and answers byte
//! ranges (`206`, and `416` for an unsatisfiable one), `If-Modified-Since`
//! (`304`) and `If-Unmodified-Since` (`412`). Nothing else: no directory
//! listing, no `index.html`, and a `..`, absolute or otherwise escaping path
//! is a 404.
//!
//! With a bucket (MAGE_STORAGE_URL) the route does not exist: clients fetch
//! media from MAGE_MEDIA_BASE_URL.
//!
//! The router's request timeout does not cut a long download short:
//! tower-http's `TimeoutLayer` bounds the time until the response *headers*
//! are ready (here: opening the file), not the streaming of the body.

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use mage_domain::storage::{cache_control, content_type};
use tower_http::services::ServeDir;

use crate::AppState;

/// The `/media` routes, or none when storage is not local.
pub fn routes(state: &AppState) -> Router<AppState> {
    let Some(root) = state.storage.local_root() else {
        return Router::new();
    };
    let root = std::sync::Arc::new(root.to_path_buf());
    let files = ServeDir::new(root.as_path()).append_index_html_on_directories(false);
    Router::new()
        .nest_service("/media", files)
        .layer(middleware::from_fn(move |req: Request, next: Next| {
            let root = root.clone();
            async move { no_symlinks(&root, req, next).await }
        }))
        .layer(middleware::from_fn(media_headers))
}

/// `ServeDir` follows symbolic links, so a link inside the folder would serve
/// whatever it points at (`/etc/passwd`). Mage never writes links there:
/// a path through one is a 404, checked component by component without
/// following any (`symlink_metadata`).
async fn no_symlinks(root: &std::path::Path, req: Request, next: Next) -> Response {
    // Nested under /media, the router may or may not have stripped it.
    let path = req.uri().path();
    let path = path.strip_prefix("/media").unwrap_or(path);
    let decoded = percent_encoding::percent_decode_str(path).decode_utf8_lossy().into_owned();
    // Raw uploads are unchecked bytes: only their clean copies are served.
    if decoded.split('/').find(|p| !p.is_empty() && *p != ".") == Some("uploads") {
        return StatusCode::NOT_FOUND.into_response();
    }
    let mut at = root.to_path_buf();
    for part in decoded.split('/').filter(|p| !p.is_empty() && *p != ".") {
        at.push(part);
        match tokio::fs::symlink_metadata(&at).await {
            Ok(meta) if meta.file_type().is_symlink() => {
                tracing::warn!(path = %decoded, "refused a media path through a symbolic link");
                return StatusCode::NOT_FOUND.into_response();
            }
            Ok(_) => {}
            // Missing: ServeDir answers 404 itself.
            Err(_) => break,
        }
    }
    next.run(req).await
}

/// Content type and caching from the key's extension. `ServeDir` asks
/// mime_guess, which knows `.m3u8` as `audio/x-mpegurl`, `.ts` as a DLNA
/// type and `.m4s` not at all. What is not media goes out as
/// `application/octet-stream` with `nosniff`, so no file in the folder can
/// run as a page of the API's origin.
async fn media_headers(req: Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    let mut res = next.run(req).await;
    let status = res.status();
    let headers = res.headers_mut();
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    if matches!(status, StatusCode::OK | StatusCode::PARTIAL_CONTENT | StatusCode::NOT_MODIFIED) {
        if status != StatusCode::NOT_MODIFIED {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type(&path)));
        }
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache_control(&path)));
    }
    res
}
