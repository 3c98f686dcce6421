//! `/healthz`: the process is up. `/readyz`: PostgreSQL and Redis answer.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::AppState;

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let (pg, redis) = tokio::join!(
        tokio::time::timeout(CHECK_TIMEOUT, mage_domain::db::ping(&state.pool)),
        tokio::time::timeout(CHECK_TIMEOUT, state.redis.ping()),
    );
    let verdict = |r: Result<mage_domain::Result<()>, _>, what: &str| match r {
        Ok(Ok(())) => "ok".to_owned(),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "{what} is not ready");
            "unavailable".to_owned()
        }
        Err(_) => {
            tracing::warn!("{what} did not answer within {CHECK_TIMEOUT:?}");
            "timeout".to_owned()
        }
    };
    let pg = verdict(pg, "PostgreSQL");
    let redis = verdict(redis, "Redis");
    let ready = pg == "ok" && redis == "ok";
    let code = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (
        code,
        Json(json!({ "status": if ready { "ok" } else { "unavailable" }, "postgres": pg, "redis": redis })),
    )
}
