//! The GraphiQL playground, with every asset compiled into the binary so it
//! works with no internet access (see assets/playground/LICENSES.md).

use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};

const ASSET_BASE: &str = "/playground-assets";
const PAGE: &str = include_str!("../assets/playground/index.html");

const ASSETS: &[(&str, &str, &[u8])] = &[
    ("graphiql.min.css", "text/css; charset=utf-8", include_bytes!("../assets/playground/graphiql.min.css")),
    (
        "graphiql.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/playground/graphiql.min.js"),
    ),
    (
        "react.production.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/playground/react.production.min.js"),
    ),
    (
        "react-dom.production.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/playground/react-dom.production.min.js"),
    ),
];

pub fn page() -> Response {
    let html = PAGE
        .replace("{{ASSET_BASE}}", ASSET_BASE)
        .replace("{{ENDPOINT}}", "/graphql")
        // Empty: the page derives ws(s)://<its own host>/graphql, which stays
        // right behind any proxy that keeps the host.
        .replace("{{WS_ENDPOINT}}", "");
    ([(header::CACHE_CONTROL, "no-cache")], Html(html)).into_response()
}

pub async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, content_type, body)) => {
            ([(header::CONTENT_TYPE, *content_type), (header::CACHE_CONTROL, "public, max-age=86400")], *body)
                .into_response()
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}
