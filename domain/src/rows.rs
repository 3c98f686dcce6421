//! Rows as diesel reads them.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use uuid::Uuid;

use crate::assets::AssetFiles;
use crate::enums::{
    AssetStatus, BackendKind, EntryKind, GenerationStatus, GrantSource, HoldStatus, MediaKind, OrderMode,
    OrderStatus, ProductKind, Resolution, Role, StripeEventStatus,
};
use crate::output::Output;
use crate::schema::*;

#[derive(Debug, Clone, Queryable, Selectable, Identifiable)]
#[diesel(table_name = users, check_for_backend(diesel::pg::Pg))]
pub struct User {
    pub id: Uuid,
    pub email: String,
    pub password_hash: String,
    pub role: Role,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub email_verified_at: Option<DateTime<Utc>>,
    pub deleted_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Copy, Queryable, Selectable)]
#[diesel(table_name = credit_accounts, check_for_backend(diesel::pg::Pg))]
pub struct CreditAccount {
    pub user_id: Uuid,
    pub balance: i64,
    pub held: i64,
    pub updated_at: DateTime<Utc>,
}

impl CreditAccount {
    /// What can be spent now: the balance less what open holds reserve.
    pub fn available(&self) -> i64 {
        self.balance - self.held
    }
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = credit_entries, check_for_backend(diesel::pg::Pg))]
pub struct CreditEntry {
    pub id: i64,
    pub user_id: Uuid,
    pub kind: EntryKind,
    pub amount: i64,
    pub held_delta: i64,
    pub balance_after: i64,
    pub held_after: i64,
    pub idempotency_key: String,
    pub grant_id: Option<Uuid>,
    pub hold_id: Option<Uuid>,
    pub order_id: Option<Uuid>,
    pub generation_id: Option<Uuid>,
    pub stripe_event_id: Option<String>,
    pub memo: Option<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = credit_grants, check_for_backend(diesel::pg::Pg))]
pub struct CreditGrant {
    pub id: Uuid,
    pub user_id: Uuid,
    pub source: GrantSource,
    pub amount: i64,
    pub remaining: i64,
    pub expires_at: Option<DateTime<Utc>>,
    pub expired_at: Option<DateTime<Utc>>,
    pub order_id: Option<Uuid>,
    pub stripe_event_id: Option<String>,
    pub memo: Option<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = credit_holds, check_for_backend(diesel::pg::Pg))]
pub struct CreditHold {
    pub id: Uuid,
    pub user_id: Uuid,
    pub generation_id: Option<Uuid>,
    pub amount: i64,
    pub status: HoldStatus,
    pub created_at: DateTime<Utc>,
    pub closed_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = products, check_for_backend(diesel::pg::Pg))]
pub struct Product {
    pub id: String,
    pub kind: ProductKind,
    pub name: String,
    pub credits: i64,
    pub price_cents: i64,
    pub currency: String,
    pub stripe_price_id: Option<String>,
    pub active: bool,
    pub sort_order: i32,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Queryable, QueryableByName, Selectable, serde::Serialize, serde::Deserialize)]
#[diesel(table_name = generations, check_for_backend(diesel::pg::Pg))]
pub struct Generation {
    pub id: Uuid,
    pub user_id: Uuid,
    pub model: String,
    pub kind: MediaKind,
    pub prompt: String,
    pub negative_prompt: Option<String>,
    pub resolution: Resolution,
    pub duration_seconds: Option<i32>,
    pub seed: Option<i64>,
    pub status: GenerationStatus,
    pub progress: i32,
    pub stage: Option<String>,
    pub priority: i32,
    pub cost: i64,
    pub idempotency_key: Option<String>,
    pub attempts: i32,
    /// Whose render queue it waits in, fixed when it is created.
    pub backend: BackendKind,
    pub output: Option<Output>,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub queued_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub heartbeat_at: Option<DateTime<Utc>>,
    pub cancel_requested_at: Option<DateTime<Utc>>,
    pub worker: Option<String>,
    pub backend_url: Option<String>,
    pub backend_job_id: Option<String>,
    pub media_expired_at: Option<DateTime<Utc>>,
    pub deleted_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = render_models, check_for_backend(diesel::pg::Pg))]
pub struct RenderModelRow {
    pub id: String,
    pub kind: MediaKind,
    pub name: String,
    pub workflow: String,
    pub max_duration_seconds: Option<i32>,
    pub default_duration_seconds: Option<i32>,
    pub fps: i32,
    pub active: bool,
    pub sort_order: i32,
    pub render_timeout_seconds: Option<i32>,
    pub max_attempts: Option<i32>,
    pub inputs: Vec<Option<String>>,
    pub backend: BackendKind,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = render_model_prices, check_for_backend(diesel::pg::Pg))]
pub struct RenderModelPrice {
    pub model_id: String,
    pub resolution: Resolution,
    pub credits: i64,
    pub credits_per_second: i64,
}

#[derive(Debug, Clone, Queryable, Selectable, Identifiable)]
#[diesel(table_name = orders, check_for_backend(diesel::pg::Pg))]
pub struct Order {
    pub id: Uuid,
    pub user_id: Uuid,
    pub status: OrderStatus,
    pub total_cents: i64,
    pub currency: String,
    pub credits: i64,
    pub refunded_cents: i64,
    pub stripe_checkout_session_id: Option<String>,
    pub stripe_payment_intent_id: Option<String>,
    pub stripe_subscription_id: Option<String>,
    pub checkout_url: Option<String>,
    pub failure_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub paid_at: Option<DateTime<Utc>>,
    pub mode: OrderMode,
    pub stripe_customer_id: Option<String>,
    pub credits_clawed_back: i64,
    pub disputed_credits: i64,
}

#[derive(Debug, Clone, Queryable, Selectable, Identifiable)]
#[diesel(table_name = order_items, check_for_backend(diesel::pg::Pg))]
pub struct OrderItem {
    pub id: Uuid,
    pub order_id: Uuid,
    pub product_id: String,
    pub product_name: String,
    pub quantity: i32,
    pub unit_price_cents: i64,
    pub unit_credits: i64,
    pub currency: String,
}

#[derive(Debug, Clone, Queryable, Selectable, Identifiable)]
#[diesel(table_name = stripe_events, check_for_backend(diesel::pg::Pg))]
pub struct StripeEvent {
    pub id: String,
    pub type_: String,
    pub livemode: bool,
    pub payload: serde_json::Value,
    pub status: StripeEventStatus,
    pub order_id: Option<Uuid>,
    pub received_at: DateTime<Utc>,
    pub processed_at: Option<DateTime<Utc>>,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub user_id: Option<Uuid>,
}

#[derive(Debug, Clone, Queryable, Selectable, Identifiable)]
#[diesel(table_name = subscriptions, check_for_backend(diesel::pg::Pg))]
pub struct Subscription {
    pub id: String,
    pub user_id: Uuid,
    pub order_id: Option<Uuid>,
    pub product_id: String,
    pub status: String,
    pub current_period_end: Option<DateTime<Utc>>,
    pub grant_id: Option<Uuid>,
    pub canceled_at: Option<DateTime<Utc>>,
    pub event_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Queryable, Selectable, Identifiable, serde::Serialize, serde::Deserialize)]
#[diesel(table_name = assets, check_for_backend(diesel::pg::Pg))]
pub struct Asset {
    pub id: Uuid,
    pub user_id: Uuid,
    pub kind: MediaKind,
    pub status: AssetStatus,
    pub filename: String,
    pub content_type: String,
    pub byte_size: i64,
    pub width: Option<i32>,
    pub height: Option<i32>,
    pub duration_seconds: Option<f64>,
    pub error: Option<String>,
    pub output: Option<AssetFiles>,
    pub upload_expires_at: DateTime<Utc>,
    pub deleted_at: Option<DateTime<Utc>>,
    pub purged_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub ready_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = sessions, check_for_backend(diesel::pg::Pg))]
pub struct Session {
    pub id: Uuid,
    pub user_id: Uuid,
    pub created_at: DateTime<Utc>,
    pub last_used_at: DateTime<Utc>,
    pub user_agent: Option<String>,
    pub ip_address: Option<String>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub revoked_reason: Option<String>,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = api_keys, check_for_backend(diesel::pg::Pg))]
pub struct ApiKey {
    pub id: Uuid,
    pub user_id: Uuid,
    pub name: String,
    pub prefix: String,
    pub secret_hash: Vec<u8>,
    pub scopes: Vec<Option<String>>,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = mails, check_for_backend(diesel::pg::Pg))]
pub struct Mail {
    pub id: Uuid,
    pub user_id: Option<Uuid>,
    pub to_address: String,
    pub subject: String,
    pub body_text: Option<String>,
    pub idempotency_key: Option<String>,
    pub created_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
    pub attempts: i32,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = webhook_endpoints, check_for_backend(diesel::pg::Pg))]
pub struct WebhookEndpoint {
    pub id: Uuid,
    pub user_id: Uuid,
    pub url: String,
    pub description: Option<String>,
    /// Event type names (`generation.succeeded`, ...).
    pub events: Vec<Option<String>>,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    pub secret: String,
    pub previous_secret: Option<String>,
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
    pub failing_since: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = webhook_events, check_for_backend(diesel::pg::Pg))]
pub struct WebhookEvent {
    pub id: Uuid,
    pub user_id: Uuid,
    pub event_type: String,
    pub data: serde_json::Value,
    pub body: Option<String>,
    pub created_at: DateTime<Utc>,
    pub fanned_out_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = webhook_deliveries, check_for_backend(diesel::pg::Pg))]
pub struct WebhookDelivery {
    pub id: Uuid,
    pub event_id: Uuid,
    pub endpoint_id: Uuid,
    pub status: String,
    pub attempts: i32,
    pub manual: bool,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub locked_until: Option<DateTime<Utc>>,
    pub last_status_code: Option<i32>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = webhook_attempts, check_for_backend(diesel::pg::Pg))]
pub struct WebhookAttempt {
    pub delivery_id: Uuid,
    pub attempt: i32,
    pub started_at: DateTime<Utc>,
    pub duration_ms: i32,
    pub status_code: Option<i32>,
    pub error: Option<String>,
    pub response_body: Option<String>,
}
