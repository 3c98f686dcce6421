//! The axum router: GraphQL over HTTP and WebSocket on `/graphql`, the
//! playground on `GET /graphql`, health checks.

use async_graphql::Executor as _;
use async_graphql::http::ALL_WEBSOCKET_PROTOCOLS;
use std::time::Duration;

use async_graphql_axum::GraphQLResponse;
use axum::body::Bytes;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router, middleware};
use serde_json::json;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::auth::Viewer;
use crate::error::ApiError;
use crate::graphql::request_data;
use crate::{AppState, health, playground};

pub fn router(state: AppState) -> Router {
    let s = &state.settings;
    Router::new()
        .route("/graphql", get(graphql_get).post(graphql_post))
        .route("/playground-assets/{file}", get(playground::asset))
        .route("/healthz", get(health::healthz))
        .route("/metrics", get(crate::metrics::render))
        .route("/readyz", get(health::readyz))
        .merge(crate::media::routes(&state))
        .merge(crate::payments::routes())
        .layer(TimeoutLayer::with_status_code(StatusCode::SERVICE_UNAVAILABLE, s.request_timeout))
        .layer(DefaultBodyLimit::max(s.max_body_bytes))
        .layer(RequestBodyLimitLayer::new(s.max_body_bytes))
        // Outside the limits, so their answers get a JSON body too.
        .layer(middleware::map_response(json_errors))
        .layer(cors(&s.cors_origins))
        .layer(TraceLayer::new_for_http())
        // Outermost, so limits' and timeouts' answers count too; Router::layer
        // wraps each route, so the matched pattern (not the path) labels it.
        .layer(middleware::from_fn(crate::metrics::track_http))
        .with_state(state)
}

/// Bearer tokens, not cookies, carry the identity, so any origin may call
/// the API unless MAGE_CORS_ORIGINS narrows it.
fn cors(origins: &[String]) -> CorsLayer {
    let layer = CorsLayer::new()
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE, header::RANGE])
        // Web players read byte ranges of /media cross-origin.
        .expose_headers([header::CONTENT_RANGE, header::ACCEPT_RANGES])
        .max_age(Duration::from_secs(3600));
    if origins.is_empty() {
        layer.allow_origin(AllowOrigin::any())
    } else {
        layer.allow_origin(AllowOrigin::list(origins.iter().filter_map(|o| o.parse().ok())))
    }
}

/// The caller named by an `Authorization` header (HTTP) or a
/// `connection_init` payload (WebSocket); no credentials is an anonymous
/// caller.
pub(crate) fn viewer_from(state: &AppState, credential: Option<&str>) -> Viewer {
    match credential.map(str::trim).filter(|c| !c.is_empty()) {
        None => Viewer::Anonymous,
        Some(c) => match state.tokens.verify_header(c) {
            Ok(id) => Viewer::User(id),
            Err(e) => Viewer::Invalid(e.message()),
        },
    }
}

/// A GraphQL error response outside of execution (bad body, limits).
fn error_response(status: StatusCode, code: &str, message: String) -> Response {
    let body = json!({ "errors": [{ "message": message, "extensions": { "code": code } }] });
    (status, Json(body)).into_response()
}

async fn graphql_post(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let req: async_graphql::Request = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "BAD_USER_INPUT",
                format!("the body is not a GraphQL request ({e}): send JSON {{\"query\", \"variables\"}}"),
            );
        }
    };
    let credential = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let req = request_data(req, viewer_from(&state, credential), &state.pool);
    // Executed on a task of its own: if the client goes away or the request
    // times out, the operation still runs to its end, so no transaction is
    // cut off half-way (cancelling one does not close it).
    let schema = state.schema.clone();
    match tokio::spawn(async move { schema.execute(req).await }).await {
        Ok(response) => GraphQLResponse::from(response).into_response(),
        Err(e) => {
            let _ = ApiError::internal(format!("GraphQL execution task failed: {e}"));
            error_response(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", "internal error".into())
        }
    }
}

/// Limits answered by tower layers (413, timeout) get a GraphQL error body
/// with a code, like every other error.
async fn json_errors(res: Response) -> Response {
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    match res.status() {
        StatusCode::PAYLOAD_TOO_LARGE if !is_json => error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            "BAD_USER_INPUT",
            "the request body is larger than this server accepts".into(),
        ),
        StatusCode::SERVICE_UNAVAILABLE if !is_json => error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "INTERNAL",
            "the request did not finish in time; retry (with an idempotency key for mutations)".into(),
        ),
        _ => res,
    }
}

/// `GET /graphql` is the WebSocket endpoint when the request asks for an
/// upgrade, and the playground otherwise.
async fn graphql_get(State(state): State<AppState>, req: Request) -> Response {
    let (mut parts, _body) = req.into_parts();
    let wants_upgrade = parts
        .headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !wants_upgrade {
        return playground::page();
    }
    let Some(protocol) = crate::ws::protocol(&parts.headers) else {
        return error_response(
            StatusCode::BAD_REQUEST,
            "BAD_USER_INPUT",
            "ask for the WebSocket subprotocol graphql-transport-ws (or the legacy graphql-ws)".into(),
        );
    };
    let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &state).await {
        Ok(u) => u,
        Err(rejection) => return rejection.into_response(),
    };
    upgrade
        // GraphQL messages are small: tungstenite's 128 KiB default read
        // buffer per socket would dominate the memory of an idle subscriber.
        .read_buffer_size(4 * 1024)
        .write_buffer_size(4 * 1024)
        .max_message_size(crate::ws::MAX_MESSAGE_BYTES)
        .protocols(ALL_WEBSOCKET_PROTOCOLS)
        .on_upgrade(move |socket| crate::ws::serve(socket, state, protocol))
}
