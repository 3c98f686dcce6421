//! The axum router: GraphQL over HTTP and WebSocket on `/graphql`, the
//! playground on `GET /graphql`, the web app on `/`, health checks.

use async_graphql::http::ALL_WEBSOCKET_PROTOCOLS;
use std::time::Duration;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router, middleware};
use serde_json::json;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::auth::viewer_from;
use crate::client::ClientIp;
use crate::graphql::request_data;
use crate::{AppState, health, playground};

pub fn router(state: AppState) -> Router {
    let s = &state.settings;
    let api = Router::new()
        .route("/graphql", get(graphql_get).post(graphql_post))
        .route("/playground-assets/{file}", get(playground::asset))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .merge(crate::media::routes(&state))
        .merge(crate::payments::routes())
        .merge(crate::replicate::routes())
        .merge(crate::dev_mail::routes())
        // Gzip for the app's scripts and styles (a first load is mostly hls.js).
        .merge(crate::web::routes().layer(tower_http::compression::CompressionLayer::new()))
        .layer(TimeoutLayer::with_status_code(StatusCode::SERVICE_UNAVAILABLE, s.request_timeout))
        .layer(DefaultBodyLimit::max(s.max_body_bytes))
        .layer(RequestBodyLimitLayer::new(s.max_body_bytes))
        // Outside the limits, so their answers get a JSON body too.
        .layer(middleware::map_response(json_errors))
        .layer(cors(&s.cors_origins))
        // After the body limit and timeout: an upload is as big as its
        // declared size and takes as long as the client's uplink.
        .merge(crate::uploads::routes().layer(cors(&s.cors_origins)));
    // Not under CORS: no page of another origin may read it. On the public
    // port only under `mage dev` or with its token (MAGE_METRICS_ADDR gives
    // it a listener of its own).
    let api = if s.dev_mode || s.metrics_token.is_some() {
        api.route("/metrics", get(metrics_with_token))
    } else {
        api
    };
    api.layer(TraceLayer::new_for_http())
        // Outermost, so limits' and timeouts' answers count too; Router::layer
        // wraps each route, so the matched pattern (not the path) labels it.
        .layer(middleware::from_fn(crate::metrics::track_http))
        .with_state(state)
}

/// `/metrics` on the public port: open under `mage dev`, else only with
/// `Authorization: Bearer <MAGE_METRICS_TOKEN>` (compared in constant time).
async fn metrics_with_token(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(expected) = state.settings.metrics_token.as_deref() {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim().as_bytes());
        let ok = given.is_some_and(|g| {
            use sha2::Digest;
            use subtle::ConstantTimeEq;
            // Equal-length digests compared in constant time: the time
            // taken says nothing about the token.
            let (a, b) = (sha2::Sha256::digest(g), sha2::Sha256::digest(expected.as_bytes()));
            bool::from(a[..].ct_eq(&b[..]))
        });
        if !ok && !state.settings.dev_mode {
            let mut res = error_response(
                StatusCode::UNAUTHORIZED,
                "UNAUTHENTICATED",
                "send Authorization: Bearer <MAGE_METRICS_TOKEN>".into(),
            );
            res.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return res;
        }
    }
    crate::metrics::render(State(state)).await
}

/// Bearer tokens, not cookies, carry the identity, so any origin may call
/// the API unless MAGE_CORS_ORIGINS narrows it.
fn cors(origins: &[String]) -> CorsLayer {
    let layer = CorsLayer::new()
        .allow_methods([Method::GET, Method::POST, Method::PUT])
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

/// A GraphQL error response outside of execution (bad body, limits).
fn error_response(status: StatusCode, code: &str, message: String) -> Response {
    let body = json!({ "errors": [{ "message": message, "extensions": { "code": code } }] });
    (status, Json(body)).into_response()
}

/// The media type a GraphQL response is sent as, from the request's
/// `Accept` (GraphQL over HTTP, "Accept" and "Legacy watershed").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wants {
    /// `application/graphql-response+json`: the status code tells a request
    /// error (4xx, no `data`) from an execution error (200).
    GraphqlResponse,
    /// `application/json`, for clients from before the spec: always 200 once
    /// the request is a GraphQL request.
    Json,
}

const GRAPHQL_RESPONSE: &str = "application/graphql-response+json; charset=utf-8";
const JSON: &str = "application/json; charset=utf-8";

impl Wants {
    /// `None`: nothing the client accepts is something GraphQL answers with
    /// (406). No `Accept` at all is a legacy client: `application/json`.
    fn of(headers: &HeaderMap) -> Option<Self> {
        if headers.get(header::ACCEPT).is_none() {
            return Some(Self::Json);
        }
        // The first one the client lists that GraphQL answers with; `*/*`
        // gets `application/json`, which every client reads.
        accepted(headers).find_map(|media| match media.as_str() {
            "application/graphql-response+json" => Some(Self::GraphqlResponse),
            "application/json" | "*/*" | "application/*" => Some(Self::Json),
            _ => None,
        })
    }

    fn content_type(self) -> &'static str {
        match self {
            Self::GraphqlResponse => GRAPHQL_RESPONSE,
            Self::Json => JSON,
        }
    }

    /// A request error (the body, the document, its validation or its
    /// variables are wrong: nothing ran) in this media type.
    fn request_error(self, status: StatusCode, message: String) -> Response {
        let body = json!({ "errors": [{ "message": message, "extensions": { "code": "BAD_USER_INPUT" } }] });
        self.body(status, serde_json::to_vec(&body).unwrap_or_default())
    }

    fn body(self, status: StatusCode, body: Vec<u8>) -> Response {
        (status, [(header::CONTENT_TYPE, HeaderValue::from_static(self.content_type()))], body)
            .into_response()
    }

    /// The response to an operation that reached the executor.
    fn response(self, response: async_graphql::Response) -> Response {
        // No data at all, only errors.
        let nothing = response.data == async_graphql::Value::Null && !response.errors.is_empty();
        let has_code = |code: &str| {
            let code = async_graphql::Value::from(code);
            response.errors.iter().any(|e| e.extensions.as_ref().and_then(|x| x.get("code")) == Some(&code))
        };
        let internal = has_code("INTERNAL");
        // Apollo's clients of every vintage look for PersistedQueryNotFound
        // in a 200 body (some give up on a 4xx before reading it).
        let unknown_hash = has_code(crate::graphql::PERSISTED_QUERY_NOT_FOUND);
        let request_error = !internal && !unknown_hash && crate::graphql::refused_before_running(&response);
        let status = match (self, request_error, nothing && internal) {
            (Self::GraphqlResponse, true, _) => StatusCode::BAD_REQUEST,
            // The server failed before any data: not the request's fault.
            (Self::GraphqlResponse, _, true) => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::OK,
        };
        let body = if request_error && self == Self::GraphqlResponse {
            // The spec: a request error has no `data` entry at all.
            serde_json::to_vec(&json!({ "errors": response.errors }))
        } else {
            serde_json::to_vec(&response)
        };
        let mut res = self.body(status, body.unwrap_or_default());
        res.headers_mut().extend(response.http_headers);
        res
    }
}

/// The media ranges of `Accept`, in the client's order, without those it
/// refuses (`q=0`).
fn accepted(headers: &HeaderMap) -> impl Iterator<Item = String> + '_ {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|range| {
            let mut parts = range.split(';');
            let media = parts.next()?.trim().to_ascii_lowercase();
            let refused = parts.any(|p| {
                p.trim().strip_prefix("q=").is_some_and(|q| q.trim().parse::<f32>().is_ok_and(|q| q <= 0.0))
            });
            (!media.is_empty() && !refused).then_some(media)
        })
}

fn not_acceptable() -> Response {
    error_response(
        StatusCode::NOT_ACCEPTABLE,
        "BAD_USER_INPUT",
        "accept application/graphql-response+json or application/json".into(),
    )
}

/// The fields of a GraphQL request, from a JSON body or a query string,
/// each checked for its type: a wrong one is a request error.
fn graphql_request(
    query: Option<serde_json::Value>,
    variables: Option<serde_json::Value>,
    operation_name: Option<serde_json::Value>,
    extensions: Option<serde_json::Value>,
) -> Result<async_graphql::Request, String> {
    use serde_json::Value;
    // A persisted query (`graphql::apq`) may come as its hash alone.
    let persisted = matches!(&extensions, Some(Value::Object(m)) if m.contains_key("persistedQuery"));
    let query = match query {
        Some(Value::String(q)) => q,
        Some(_) => return Err("`query` must be a string".into()),
        None if persisted => String::new(),
        None => return Err("the request has no `query`".into()),
    };
    let mut req = async_graphql::Request::new(query);
    match variables {
        None | Some(Value::Null) => {}
        Some(v @ Value::Object(_)) => req = req.variables(async_graphql::Variables::from_json(v)),
        Some(_) => return Err("`variables` must be an object".into()),
    }
    match operation_name {
        None | Some(Value::Null) => {}
        Some(Value::String(name)) => req = req.operation_name(name),
        Some(_) => return Err("`operationName` must be a string".into()),
    }
    match extensions {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            for (k, v) in map {
                if let Ok(v) = async_graphql::Value::from_json(v) {
                    req.extensions.insert(k, v);
                }
            }
        }
        Some(_) => return Err("`extensions` must be an object".into()),
    }
    Ok(req)
}

/// The client a request came from (`client`: trusted proxies).
fn client_of(state: &AppState, parts: &Parts) -> ClientIp {
    ClientIp::of(&parts.extensions, &parts.headers, &state.settings.connections.trusted_proxies)
}

/// Runs a GraphQL request as the caller of its `Authorization` header, and
/// answers in the media type the client asked for.
async fn execute(state: &AppState, parts: &Parts, req: async_graphql::Request, wants: Wants) -> Response {
    let credential = parts.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let viewer = viewer_from(state, credential).await;
    let user_agent = crate::client::UserAgent::of(&parts.headers);
    let req = request_data(req, viewer, client_of(state, parts), &state.pool).data(user_agent);
    wants.response(state.schema.execute_http(req).await)
}

async fn graphql_post(State(state): State<AppState>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let Some(wants) = Wants::of(&parts.headers) else { return not_acceptable() };
    // Only JSON: a form or text/plain POST is what a page of any origin can
    // make a visitor's browser send without asking (no CORS preflight).
    let content_type = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let media = content_type.split(';').next().unwrap_or("").trim();
    if !media.eq_ignore_ascii_case("application/json") {
        let why =
            if media.is_empty() { "the request has no Content-Type" } else { "unsupported Content-Type" };
        let mut res = wants.request_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("{why}: send the operation as Content-Type: application/json"),
        );
        res.headers_mut().insert("accept-post", HeaderValue::from_static("application/json"));
        return res;
    }
    let body = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(b) => b,
        // Too large (the body limit) or cut off.
        Err(e) => {
            let too_large = {
                let inner = e.into_inner();
                let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&*inner);
                std::iter::from_fn(|| {
                    let c = cause?;
                    cause = c.source();
                    Some(c)
                })
                .any(|c| c.is::<http_body_util::LengthLimitError>())
            };
            return match too_large {
                true => error_response(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "BAD_USER_INPUT",
                    "the request body is larger than this server accepts".into(),
                ),
                false => {
                    wants.request_error(StatusCode::BAD_REQUEST, "the request body could not be read".into())
                }
            };
        }
    };
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Body {
        query: Option<serde_json::Value>,
        variables: Option<serde_json::Value>,
        operation_name: Option<serde_json::Value>,
        extensions: Option<serde_json::Value>,
    }
    let req = match serde_json::from_slice::<Body>(&body) {
        Ok(b) => graphql_request(b.query, b.variables, b.operation_name, b.extensions),
        Err(e) => {
            Err(format!("the body is not a GraphQL request ({e}): send JSON {{\"query\", \"variables\"}}"))
        }
    };
    let req = match req {
        Ok(r) => r,
        Err(message) => return wants.request_error(StatusCode::BAD_REQUEST, message),
    };
    execute(&state, &parts, req, wants).await
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

/// `GET /graphql`: the WebSocket endpoint when the request asks for an
/// upgrade, the playground for a browser asking for a page, and otherwise a
/// query in the query string (`query`, `variables`, `operationName`,
/// `extensions`), which a CDN may cache; mutations only over POST (405).
async fn graphql_get(State(state): State<AppState>, req: Request) -> Response {
    let (parts, _body) = req.into_parts();
    let wants_upgrade = parts
        .headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if wants_upgrade {
        return websocket(state, parts).await;
    }
    let wants_page = accepted(&parts.headers).any(|media| media == "text/html");
    if wants_page {
        return playground::page();
    }
    let Some(wants) = Wants::of(&parts.headers) else { return not_acceptable() };
    let mut fields: std::collections::HashMap<String, String> = Default::default();
    for (k, v) in form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes()) {
        fields.insert(k.into_owned(), v.into_owned());
    }
    let json_field = |name: &str| -> Result<Option<serde_json::Value>, String> {
        match fields.get(name) {
            None => Ok(None),
            Some(v) => serde_json::from_str(v).map(Some).map_err(|_| format!("`{name}` is not JSON")),
        }
    };
    let req = json_field("variables").and_then(|variables| {
        let extensions = json_field("extensions")?;
        graphql_request(
            fields.get("query").cloned().map(serde_json::Value::String),
            variables,
            fields.get("operationName").cloned().map(serde_json::Value::String),
            extensions,
        )
    });
    let mut req = match req {
        Ok(r) => r,
        Err(message) => return wants.request_error(StatusCode::BAD_REQUEST, message),
    };
    // The text first: whether it is a mutation is in the text.
    if let Err(refused) = state.schema.resolve_persisted(&mut req).await {
        return wants.response(refused);
    }
    if state.schema.operation_type(&mut req) == Some(async_graphql::parser::types::OperationType::Mutation) {
        let mut res = wants
            .request_error(StatusCode::METHOD_NOT_ALLOWED, "mutations are only accepted over POST".into());
        res.headers_mut().insert(header::ALLOW, HeaderValue::from_static("POST"));
        return res;
    }
    execute(&state, &parts, req, wants).await
}

async fn websocket(state: AppState, mut parts: Parts) -> Response {
    let Some(protocol) = crate::ws::protocol(&parts.headers) else {
        return error_response(
            StatusCode::BAD_REQUEST,
            "BAD_USER_INPUT",
            "ask for the WebSocket subprotocol graphql-transport-ws (or the legacy graphql-ws)".into(),
        );
    };
    let client = client_of(&state, &parts);
    let Some(slot) = crate::ws::socket_slot(client, state.settings.connections.ws_max_sockets_per_ip) else {
        let mut res = error_response(
            StatusCode::TOO_MANY_REQUESTS,
            "RATE_LIMITED",
            format!(
                "at most {} WebSockets from one address: close one first",
                state.settings.connections.ws_max_sockets_per_ip
            ),
        );
        res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        return res;
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
        .on_upgrade(move |socket| crate::ws::serve(socket, state, protocol, client, slot))
}
