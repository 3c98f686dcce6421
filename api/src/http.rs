//! The axum router: GraphQL over HTTP and WebSocket on `/graphql`, the
//! playground on `GET /graphql`, health checks.

use async_graphql::Data;
use async_graphql::http::ALL_WEBSOCKET_PROTOCOLS;
use async_graphql_axum::{GraphQLProtocol, GraphQLRequest, GraphQLResponse, GraphQLWebSocket};
use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
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
        .route("/readyz", get(health::readyz))
        .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, s.request_timeout))
        .layer(DefaultBodyLimit::max(s.max_body_bytes))
        .layer(RequestBodyLimitLayer::new(s.max_body_bytes))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// The caller named by an `Authorization` header (HTTP) or a
/// `connection_init` payload (WebSocket); no credentials is an anonymous
/// caller, bad credentials an error.
fn viewer_from(state: &AppState, credential: Option<&str>) -> Result<Viewer, ApiError> {
    match credential.map(str::trim).filter(|c| !c.is_empty()) {
        None => Ok(Viewer(None)),
        Some(c) => state.tokens.verify_header(c).map(|id| Viewer(Some(id))),
    }
}

async fn graphql_post(State(state): State<AppState>, headers: HeaderMap, req: GraphQLRequest) -> Response {
    let credential = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let viewer = match viewer_from(&state, credential) {
        Ok(v) => v,
        Err(e) => {
            let err = async_graphql::Error::from(e).into_server_error(Default::default());
            return GraphQLResponse::from(async_graphql::Response::from_errors(vec![err])).into_response();
        }
    };
    let req = request_data(req.into_inner(), viewer, &state.pool);
    GraphQLResponse::from(state.schema.execute(req).await).into_response()
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
    let protocol = match GraphQLProtocol::from_request_parts(&mut parts, &state).await {
        Ok(p) => p,
        Err(rejection) => return rejection.into_response(),
    };
    let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &state).await {
        Ok(u) => u,
        Err(rejection) => return rejection.into_response(),
    };
    let schema = state.schema.clone();
    upgrade.protocols(ALL_WEBSOCKET_PROTOCOLS).on_upgrade(move |socket| {
        let init_state = state.clone();
        GraphQLWebSocket::new(socket, schema, protocol)
            .on_connection_init(move |payload| async move { connection_init(&init_state, payload) })
            .serve()
    })
}

/// Authenticates a WebSocket from its `connection_init` payload:
/// `{"Authorization": "Bearer <token>"}` (also `authorization` or `token`).
/// A bad token rejects the connection.
fn connection_init(state: &AppState, payload: serde_json::Value) -> async_graphql::Result<Data> {
    let credential = ["Authorization", "authorization", "token"]
        .iter()
        .find_map(|k| payload.get(*k).and_then(|v| v.as_str()));
    let viewer = viewer_from(state, credential).map_err(async_graphql::Error::from)?;
    let mut data = Data::default();
    data.insert(viewer);
    data.insert(crate::graphql::Loaders::new(state.pool.clone()));
    Ok(data)
}
