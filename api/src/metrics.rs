//! `GET /metrics` (Prometheus text, see `mage_domain::metrics`) and what
//! the HTTP side counts: requests by route and status, GraphQL operations
//! by name, WebSocket connections and subscriptions.

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use async_graphql::Response as GqlResponse;
use async_graphql::parser::types::OperationType;
use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use mage_domain::kv::Redis;
use mage_domain::queue::Queues;

/// Installs the recorder, so what is counted before the first scrape is
/// kept; the gauges show from the first scrape.
pub fn init() {
    mage_domain::metrics::init();
    subscriptions(0, 0);
    websockets(0);
}

pub async fn render(State(state): State<crate::AppState>) -> Response {
    scrape(&state.redis, &state.queues).await
}

async fn scrape(redis: &Redis, queues: &Queues) -> Response {
    let body = mage_domain::metrics::render(redis, queues).await;
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
}

/// `/metrics` alone, for `mage work` (`MAGE_METRICS_ADDR`), until
/// `shutdown` resolves.
pub async fn serve_standalone(
    listener: tokio::net::TcpListener,
    redis: Redis,
    queues: Queues,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    init();
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let (redis, queues) = (redis.clone(), queues.clone());
            async move { scrape(&redis, &queues).await }
        }),
    );
    tracing::info!(addr = %listener.local_addr()?, "metrics listening");
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

/// Counts every HTTP request by route (the router's pattern, so ids in paths
/// do not make new series), method and status, with its latency. A
/// WebSocket counts its upgrade, not its lifetime.
pub async fn track_http(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().as_str().to_owned();
    let started = Instant::now();
    let res = next.run(req).await;
    let status = res.status().as_u16().to_string();
    metrics::histogram!("mage_http_request_duration_seconds", "route" => route.clone(), "method" => method.clone())
        .record(started.elapsed().as_secs_f64());
    metrics::counter!("mage_http_requests_total", "route" => route, "method" => method, "status" => status)
        .increment(1);
    res
}

/// Live subscriptions of this process and the Redis channels they need.
pub fn subscriptions(subscriptions: usize, channels: usize) {
    metrics::gauge!("mage_subscriptions").set(subscriptions as f64);
    metrics::gauge!("mage_pubsub_channels").set(channels as f64);
}

/// Open GraphQL WebSocket connections of this process.
pub fn websockets(open: usize) {
    metrics::gauge!("mage_websocket_connections").set(open as f64);
}

/// A subscriber fell too far behind and its subscription was ended.
pub fn lagged() {
    metrics::counter!("mage_subscriptions_lagged_total").increment(1);
}

/// Distinct operation names kept as labels; later ones count as `other`, so
/// clients naming operations at random cannot grow the scrape without bound.
const MAX_OPERATION_NAMES: usize = 200;

fn operation_label(name: Option<&str>) -> String {
    static SEEN: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    let Some(name) = name.filter(|n| n.len() <= 64) else {
        return if name.is_some() { "other".into() } else { "anonymous".into() };
    };
    let Ok(mut seen) = SEEN.get_or_init(Mutex::default).lock() else { return "other".into() };
    if seen.contains(name) {
        return name.to_owned();
    }
    if seen.len() < MAX_OPERATION_NAMES {
        seen.insert(name.to_owned());
        return name.to_owned();
    }
    "other".into()
}

/// One GraphQL operation (a query or mutation over HTTP or WebSocket) as
/// counted by name, type and outcome (`ok`, or `error` when the response
/// carries errors), with its latency. Read from the request before it runs
/// (parsing it there costs nothing: execution reuses the parsed document),
/// not by an async-graphql extension: with any extension installed,
/// async-graphql resolves every field through its slow path (a registry
/// lookup and the extension chain per field), which cost a list of 20
/// generations a large share of its time.
pub struct Operation {
    name: String,
    kind: &'static str,
    /// The type of the operation that runs, when the document names one.
    ty: Option<OperationType>,
    started: Instant,
}

impl Operation {
    pub fn of(request: &mut async_graphql::Request) -> Self {
        let requested = request.operation_name.clone();
        let (kind, ty, parsed_name) = match request.parsed_query() {
            Ok(doc) => {
                // The operation that runs: the one named, else the only one.
                let found = doc.operations.iter().find(|(name, _)| match requested.as_deref() {
                    Some(requested) => name.is_some_and(|n| n.as_str() == requested),
                    None => true,
                });
                let ty = found.filter(|_| requested.is_some() || doc.operations.iter().nth(1).is_none());
                match found.or_else(|| doc.operations.iter().next()) {
                    Some((name, op)) => (
                        operation_kind(op.node.ty),
                        ty.map(|(_, op)| op.node.ty),
                        name.map(|n| n.to_string()),
                    ),
                    None => ("query", None, None),
                }
            }
            // async-graphql answers the parse error itself.
            Err(_) => ("query", None, None),
        };
        // Requests often leave operationName out when the document names its
        // one operation.
        let name = operation_label(requested.as_deref().or(parsed_name.as_deref()));
        Self { name, kind, ty, started: Instant::now() }
    }

    pub fn operation_type(&self) -> Option<OperationType> {
        self.ty
    }

    pub fn is_subscription(&self) -> bool {
        self.kind == "subscription"
    }

    pub fn finished(&self, response: &GqlResponse) {
        let outcome = if response.errors.is_empty() { "ok" } else { "error" };
        let (name, kind) = (self.name.clone(), self.kind);
        metrics::histogram!("mage_graphql_operation_duration_seconds", "operation" => name.clone(), "type" => kind)
            .record(self.started.elapsed().as_secs_f64());
        metrics::counter!("mage_graphql_operations_total", "operation" => name, "type" => kind, "outcome" => outcome)
            .increment(1);
    }
}

fn operation_kind(ty: OperationType) -> &'static str {
    match ty {
        OperationType::Query => "query",
        OperationType::Mutation => "mutation",
        OperationType::Subscription => "subscription",
    }
}
