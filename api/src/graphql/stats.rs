//! Daily business figures for admins.

use async_graphql::{
    Context, InputValueError, InputValueResult, Object, Scalar, ScalarType, SimpleObject, Value,
};
use chrono::NaiveDate;
use mage_domain::stats;

use super::context::{AdminOnly, ContextExt};
use super::pagination::unpaged_complexity;
use crate::error::{ApiError, ApiResult};

/// Longest range one `dailyStats` call returns.
const MAX_DAYS: i64 = 366;

/// A calendar day, `YYYY-MM-DD`.
#[derive(Debug, Clone, Copy)]
pub struct Date(pub NaiveDate);

#[Scalar(name = "Date")]
impl ScalarType for Date {
    fn parse(value: Value) -> InputValueResult<Self> {
        match &value {
            Value::String(s) => NaiveDate::parse_from_str(s, "%Y-%m-%d")
                .map(Date)
                .map_err(|_| InputValueError::custom(format!("{s:?} is not a date (YYYY-MM-DD)"))),
            _ => Err(InputValueError::expected_type(value)),
        }
    }

    fn to_value(&self) -> Value {
        Value::String(self.0.format("%Y-%m-%d").to_string())
    }
}

#[derive(SimpleObject)]
pub struct Money {
    /// ISO 4217 code, upper case.
    currency: String,
    cents: i64,
}

#[derive(SimpleObject)]
pub struct ModelDailyStats {
    model: String,
    created: i64,
    succeeded: i64,
    failed: i64,
    canceled: i64,
}

#[derive(SimpleObject)]
pub struct DailyStats {
    day: Date,
    new_users: i64,
    active_users: i64,
    orders_paid: i64,
    /// One per currency.
    revenue: Vec<Money>,
    credits_purchased: i64,
    credits_granted: i64,
    credits_captured: i64,
    credits_released: i64,
    credits_clawed_back: i64,
    credits_expired: i64,
    generations_created: i64,
    generations_succeeded: i64,
    generations_failed: i64,
    generations_canceled: i64,
    queue_wait_p50_seconds: Option<f64>,
    queue_wait_p95_seconds: Option<f64>,
    render_p50_seconds: Option<f64>,
    render_p95_seconds: Option<f64>,
    render_seconds_total: f64,
    by_model: Vec<ModelDailyStats>,
    /// The time zone the day was cut in.
    time_zone: String,
}

impl From<stats::DailyStats> for DailyStats {
    fn from(s: stats::DailyStats) -> Self {
        let mut revenue: Vec<Money> = s
            .revenue
            .as_object()
            .into_iter()
            .flatten()
            .map(|(c, v)| Money { currency: c.to_uppercase(), cents: v.as_i64().unwrap_or(0) })
            .collect();
        revenue.sort_by(|a, b| a.currency.cmp(&b.currency));
        let int = |m: &serde_json::Value, k: &str| m[k].as_i64().unwrap_or(0);
        let by_model = s
            .by_model
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| ModelDailyStats {
                model: m["model"].as_str().unwrap_or_default().to_owned(),
                created: int(m, "created"),
                succeeded: int(m, "succeeded"),
                failed: int(m, "failed"),
                canceled: int(m, "canceled"),
            })
            .collect();
        Self {
            day: Date(s.day),
            new_users: s.new_users,
            active_users: s.active_users,
            orders_paid: s.orders_paid,
            revenue,
            credits_purchased: s.credits_purchased,
            credits_granted: s.credits_granted,
            credits_captured: s.credits_captured,
            credits_released: s.credits_released,
            credits_clawed_back: s.credits_clawed_back,
            credits_expired: s.credits_expired,
            generations_created: s.generations_created,
            generations_succeeded: s.generations_succeeded,
            generations_failed: s.generations_failed,
            generations_canceled: s.generations_canceled,
            queue_wait_p50_seconds: s.queue_wait_p50_seconds,
            queue_wait_p95_seconds: s.queue_wait_p95_seconds,
            render_p50_seconds: s.render_p50_seconds,
            render_p95_seconds: s.render_p95_seconds,
            render_seconds_total: s.render_seconds_total,
            by_model,
            time_zone: s.time_zone,
        }
    }
}

#[derive(Default)]
pub struct StatsQuery;

#[Object]
impl StatsQuery {
    /// The computed days in `[from, to]`, oldest first (admins only). A day
    /// not computed yet is absent; today (in MAGE_STATS_TZ) is computed so
    /// far, at most 10 seconds ago.
    #[graphql(guard = "AdminOnly", complexity = "unpaged_complexity(child_complexity)")]
    async fn daily_stats(&self, ctx: &Context<'_>, from: Date, to: Date) -> ApiResult<Vec<DailyStats>> {
        let days = (to.0 - from.0).num_days();
        if !(0..MAX_DAYS).contains(&days) {
            return Err(ApiError::bad_input(
                "to",
                format!("to must be on or after from, at most {MAX_DAYS} days"),
            ));
        }
        let svc = ctx.services();
        Ok(stats::range_with_today(&svc.pool, &svc.redis, from.0, to.0, &svc.stats_tz)
            .await?
            .into_iter()
            .map(DailyStats::from)
            .collect())
    }
}
