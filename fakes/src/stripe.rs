//! A fake Stripe API serving `POST /v1/checkout/sessions` and
//! `POST /v1/subscriptions/{id}` (updating `cancel_at_period_end` and
//! `metadata` of subscriptions a test registered) with Stripe's wire
//! protocol: form-encoded bracket parameters, `Authorization: Bearer sk_...`,
//! `Idempotency-Key`, and the `{"error": {...}}` envelope, with session
//! objects complete enough for async-stripe's `CheckoutSession` to parse.
//!
//! What it keeps faithful because Mage depends on it:
//! - a key seen before with the same parameters replays the stored status and
//!   body (with `Idempotent-Replayed: true`) and creates nothing; with other
//!   parameters it is an `idempotency_error`;
//! - as on Stripe, a result is stored under its key only once the endpoint
//!   ran: authentication failures, missing parameters and outages
//!   (`Mode::Down`) are not stored, so a retry with the same key runs afresh,
//!   while a refusal (`Mode::Refuse`) is replayed like a success;
//! - keys are scoped to the secret key, as idempotency keys are per account.
//!
//! Faults tests can inject: a 503 outage, a refusal, a request that is never
//! answered.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

/// The version async-stripe pins; reported when a request names none.
const DEFAULT_STRIPE_VERSION: &str = "2026-09-30.endive";
const SESSION_LIFETIME_SECS: u64 = 24 * 60 * 60;
/// Bigger array indices are taken as object keys, so a hostile body cannot
/// make [`nested`] allocate a huge array.
const MAX_INDEX: usize = 1000;

/// How the fake answers requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Normal,
    /// 503 with an `api_error`, before authentication, as when Stripe's edge
    /// is down; nothing is stored under the idempotency key.
    Down,
    /// 400 `invalid_request_error` for well-formed, authenticated requests,
    /// as for an account that may not take payments; stored under the
    /// idempotency key like any executed request.
    Refuse,
    /// Reads the request and never answers, until the fake is dropped.
    Hang,
}

/// One request, whatever its outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// E.g. `/v1/checkout/sessions`.
    pub path: String,
    pub idempotency_key: Option<String>,
    /// The raw header, e.g. `Bearer sk_test_...`.
    pub authorization: Option<String>,
    pub stripe_version: Option<String>,
    /// Form fields with their keys as sent, e.g. `metadata[order_id]`.
    pub params: BTreeMap<String, String>,
    /// `params` nested as Stripe reads them; see [`nested`].
    pub json: Value,
}

struct Stored {
    /// Stripe refuses a key reused on another endpoint too.
    path: String,
    params: BTreeMap<String, String>,
    status: StatusCode,
    body: Value,
    request_id: String,
}

struct Inner {
    mode: Mode,
    prices: HashMap<String, (i64, String)>,
    requests: Vec<Request>,
    sessions: Vec<Value>,
    /// By id, as registered by tests and updated by requests.
    subscriptions: HashMap<String, Value>,
    /// By (secret key, idempotency key).
    idempotent: HashMap<(String, String), Stored>,
}

struct Shared {
    inner: Mutex<Inner>,
    stop: CancellationToken,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panicking test thread must not hide what the fake recorded.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running fake Stripe API; stops when dropped.
pub struct FakeStripe {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Drop for FakeStripe {
    fn drop(&mut self) {
        self.shared.stop.cancel();
    }
}

impl FakeStripe {
    /// Starts on a free local port in the current tokio runtime.
    pub async fn start() -> Self {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0))).await.expect("start fake Stripe")
    }

    pub async fn start_on(addr: SocketAddr) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                mode: Mode::Normal,
                prices: HashMap::new(),
                requests: Vec::new(),
                sessions: Vec::new(),
                subscriptions: HashMap::new(),
                idempotent: HashMap::new(),
            }),
            stop: CancellationToken::new(),
        });
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let app = Router::new()
            .route("/v1/checkout/sessions", post(create_session))
            .route("/v1/subscriptions/{id}", post(update_subscription))
            .fallback(unrecognized)
            .method_not_allowed_fallback(unrecognized)
            .with_state(shared.clone());
        let stop = shared.stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await;
        });
        Ok(Self { addr, shared })
    }

    /// The API base, e.g. `http://127.0.0.1:PORT`, without `/v1`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_mode(&self, mode: Mode) {
        self.shared.lock().mode = mode;
    }

    /// Registers a Price so sessions naming it by `line_items[i][price]` get
    /// an `amount_total` and `currency`.
    pub fn set_price(&self, price_id: &str, unit_amount: i64, currency: &str) {
        self.shared.lock().prices.insert(price_id.to_owned(), (unit_amount, currency.to_lowercase()));
    }

    /// Every request in arrival order, including replays and failures.
    pub fn requests(&self) -> Vec<Request> {
        self.shared.lock().requests.clone()
    }

    /// Distinct sessions created, in order.
    pub fn sessions(&self) -> Vec<Value> {
        self.shared.lock().sessions.clone()
    }

    /// Registers an active subscription to `price_id` (what a completed
    /// subscription checkout makes on Stripe), renewing monthly from now;
    /// returns it.
    pub fn add_subscription(&self, id: &str, price_id: &str) -> Value {
        let sub = subscription_object(id, price_id);
        self.shared.lock().subscriptions.insert(id.to_owned(), sub.clone());
        sub
    }

    /// The subscription as Stripe has it now.
    pub fn subscription(&self, id: &str) -> Option<Value> {
        self.shared.lock().subscriptions.get(id).cloned()
    }
}

/// Decodes a form body into its fields, keeping bracket keys as sent. A
/// repeated key keeps its last value.
pub fn parse_form(body: &[u8]) -> BTreeMap<String, String> {
    form_urlencoded::parse(body).map(|(k, v)| (k.into_owned(), v.into_owned())).collect()
}

/// Nests bracket keys as Stripe reads them: `a[b][0][c]=x` becomes
/// `{"a": {"b": [{"c": "x"}]}}`; numeric segments index arrays (gaps are
/// null) and `[]` appends. A key with unbalanced brackets stays whole.
pub fn nested(params: &BTreeMap<String, String>) -> Value {
    let mut root = Value::Object(Map::new());
    for (key, value) in params {
        let segments = segments(key);
        insert(&mut root, &segments, value);
    }
    root
}

fn segments(key: &str) -> Vec<&str> {
    let whole = vec![key];
    let Some(open) = key.find('[').filter(|&i| i > 0) else {
        return whole;
    };
    let mut segments = vec![&key[..open]];
    let mut rest = &key[open..];
    while let Some(inner) = rest.strip_prefix('[') {
        let Some(close) = inner.find(']') else {
            return whole;
        };
        segments.push(&inner[..close]);
        rest = &inner[close + 1..];
    }
    if rest.is_empty() { segments } else { whole }
}

fn insert(node: &mut Value, segments: &[&str], value: &str) {
    let Some((first, rest)) = segments.split_first() else {
        *node = Value::String(value.to_owned());
        return;
    };
    let index = match first.parse::<usize>() {
        Ok(i) if i <= MAX_INDEX => Some(i),
        _ if first.is_empty() => None,
        _ => {
            if !node.is_object() {
                *node = Value::Object(Map::new());
            }
            if let Value::Object(map) = node {
                insert(map.entry(*first).or_insert(Value::Null), rest, value);
            }
            return;
        }
    };
    if !node.is_array() {
        *node = Value::Array(Vec::new());
    }
    if let Value::Array(items) = node {
        let i = index.unwrap_or(items.len());
        if items.len() <= i {
            items.resize(i + 1, Value::Null);
        }
        insert(&mut items[i], rest, value);
    }
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Random `[0-9A-Za-z]`, drawn from v4 UUIDs to avoid a dependency on rand.
fn random_alphanumeric(n: usize) -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut out = String::with_capacity(n);
    while out.len() < n {
        // Bytes 6 and 8 carry the UUID version and variant, not randomness.
        for (i, b) in uuid::Uuid::new_v4().into_bytes().into_iter().enumerate() {
            // Values of 248 and up would favour the first letters.
            if i == 6 || i == 8 || b >= 248 || out.len() == n {
                continue;
            }
            out.push(char::from(ALPHABET[usize::from(b) % ALPHABET.len()]));
        }
    }
    out
}

fn error(status: StatusCode, error: Value) -> (StatusCode, Value) {
    (status, json!({ "error": error }))
}

fn missing(param: &str) -> (StatusCode, Value) {
    error(
        StatusCode::BAD_REQUEST,
        json!({
            "type": "invalid_request_error",
            "code": "parameter_missing",
            "doc_url": "https://stripe.com/docs/error-codes/parameter-missing",
            "param": param,
            "message": format!("Missing required param: {param}."),
        }),
    )
}

fn invalid(param: &str, code: Option<&str>, message: String) -> (StatusCode, Value) {
    let mut body = json!({"type": "invalid_request_error", "param": param, "message": message});
    if let Some(code) = code {
        body["code"] = json!(code);
        body["doc_url"] = json!(format!("https://stripe.com/docs/error-codes/{}", code.replace('_', "-")));
    }
    error(StatusCode::BAD_REQUEST, body)
}

fn down() -> (StatusCode, Value) {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        json!({
            "type": "api_error",
            "message": "Stripe is temporarily unavailable. Please try again later.",
        }),
    )
}

/// Adds the headers Stripe puts on every response.
fn respond(
    (status, body): (StatusCode, Value),
    request_id: &str,
    stripe_version: Option<&str>,
    idempotency_key: Option<&str>,
) -> Response {
    let mut response = (status, Json(body)).into_response();
    let headers = response.headers_mut();
    let mut set = |name: &'static str, value: &str| {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    };
    set("request-id", request_id);
    set("stripe-version", stripe_version.unwrap_or(DEFAULT_STRIPE_VERSION));
    if let Some(key) = idempotency_key {
        set("idempotency-key", key);
    }
    if status == StatusCode::UNAUTHORIZED {
        set("www-authenticate", "Bearer realm=\"Stripe\"");
    }
    response
}

/// The secret key, or Stripe's 401.
fn authenticate(authorization: Option<&str>) -> Result<String, (StatusCode, Value)> {
    let token = authorization.map(|h| h.strip_prefix("Bearer ").unwrap_or(h).trim()).unwrap_or("");
    if token.starts_with("sk_") {
        return Ok(token.to_owned());
    }
    let message = if token.is_empty() {
        "You did not provide an API key. You need to provide your API key in the Authorization header, \
         using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY'). See \
         https://stripe.com/docs/api#authentication for details, or we can help at \
         https://support.stripe.com/."
            .to_owned()
    } else {
        format!("Invalid API Key provided: {}", mask(token))
    };
    Err(error(StatusCode::UNAUTHORIZED, json!({"type": "invalid_request_error", "message": message})))
}

/// `sk_test_****wxyz`, as Stripe echoes keys it rejects.
fn mask(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() <= 8 {
        return key.to_owned();
    }
    let prefix = key.match_indices('_').nth(1).map(|(i, _)| key[..=i].chars().count()).unwrap_or(0);
    let prefix = prefix.min(chars.len() - 4);
    let mut out: String = chars[..prefix].iter().collect();
    out.extend(std::iter::repeat_n('*', chars.len() - prefix - 4));
    out.extend(&chars[chars.len() - 4..]);
    out
}

fn integer(params: &BTreeMap<String, String>, param: &str) -> Result<Option<i64>, (StatusCode, Value)> {
    match params.get(param) {
        None => Ok(None),
        Some(v) => {
            v.trim().parse::<i64>().map(Some).map_err(|_| {
                invalid(param, Some("parameter_invalid_integer"), format!("Invalid integer: {v}"))
            })
        }
    }
}

/// What a valid request asks for.
struct Checked {
    mode: String,
    /// `None` when some line item names an unregistered price.
    amount: Option<i64>,
    currency: Option<String>,
}

fn validate(
    params: &BTreeMap<String, String>,
    prices: &HashMap<String, (i64, String)>,
) -> Result<Checked, (StatusCode, Value)> {
    let mode = params.get("mode").ok_or_else(|| missing("mode"))?;
    if !matches!(mode.as_str(), "payment" | "subscription" | "setup") {
        return Err(invalid(
            "mode",
            None,
            format!("Invalid mode: must be one of payment, setup, or subscription (got {mode:?})"),
        ));
    }
    // Embedded and custom UIs return to `return_url` instead.
    let hosted = params.get("ui_mode").is_none_or(|m| m == "hosted" || m == "hosted_page");
    if hosted && !params.contains_key("success_url") {
        return Err(missing("success_url"));
    }
    let indices: BTreeSet<usize> = params
        .keys()
        .filter_map(|k| k.strip_prefix("line_items[")?.split_once(']')?.0.parse().ok())
        .collect();
    let mut currency = params.get("currency").map(|c| c.to_lowercase());
    if mode == "setup" {
        if currency.is_none() && !params.keys().any(|k| k.starts_with("payment_method_types[")) {
            return Err(missing("currency"));
        }
        return Ok(Checked { mode: mode.clone(), amount: None, currency });
    }
    if indices.is_empty() {
        return Err(missing("line_items"));
    }
    let mut amount = Some(0i64);
    let mut item_currency = None;
    for i in indices {
        let p = |name: &str| format!("line_items[{i}]{name}");
        let quantity = integer(params, &p("[quantity]"))?.ok_or_else(|| missing(&p("[quantity]")))?;
        let has_price_data = params.keys().any(|k| k.starts_with(&p("[price_data]")));
        let (unit, cur) = match (params.get(&p("[price]")), has_price_data) {
            (Some(_), true) => {
                return Err(invalid(
                    &p("[price]"),
                    None,
                    "You may only specify one of these parameters: price, price_data.".to_owned(),
                ));
            }
            (None, false) => return Err(missing(&p("[price]"))),
            (Some(price), false) => match prices.get(price) {
                Some((unit, cur)) => (Some(*unit as f64), Some(cur.clone())),
                None => (None, None),
            },
            (None, true) => {
                let cur = params
                    .get(&p("[price_data][currency]"))
                    .ok_or_else(|| missing(&p("[price_data][currency]")))?;
                let unit = match integer(params, &p("[price_data][unit_amount]"))? {
                    Some(unit) => unit as f64,
                    None => {
                        let decimal = p("[price_data][unit_amount_decimal]");
                        let raw =
                            params.get(&decimal).ok_or_else(|| missing(&p("[price_data][unit_amount]")))?;
                        raw.trim().parse::<f64>().map_err(|_| {
                            invalid(
                                &decimal,
                                Some("parameter_invalid_decimal"),
                                format!("Invalid decimal: {raw}"),
                            )
                        })?
                    }
                };
                if !params.contains_key(&p("[price_data][product]")) {
                    if !params.keys().any(|k| k.starts_with(&p("[price_data][product_data]"))) {
                        return Err(missing(&p("[price_data][product_data]")));
                    }
                    if !params.contains_key(&p("[price_data][product_data][name]")) {
                        return Err(missing(&p("[price_data][product_data][name]")));
                    }
                }
                (Some(unit), Some(cur.to_lowercase()))
            }
        };
        item_currency = item_currency.or(cur);
        // Stripe rounds a decimal unit amount only once it is multiplied out.
        amount = amount.zip(unit).map(|(sum, unit)| sum + (unit * quantity as f64).round() as i64);
    }
    if item_currency.is_some() {
        currency = item_currency;
    }
    Ok(Checked { mode: mode.clone(), amount, currency })
}

fn session(params: &BTreeMap<String, String>, checked: &Checked, livemode: bool) -> Value {
    let id = format!("cs_{}_{}", if livemode { "live" } else { "test" }, random_alphanumeric(58));
    let created = now_secs();
    let param = |name: &str| params.get(name).map_or(Value::Null, |v| json!(v));
    let metadata: Map<String, Value> = params
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("metadata[")?.strip_suffix(']')?.to_owned(), json!(v))))
        .collect();
    let paying = checked.mode != "setup";
    // Two halves, as one `json!` this size exceeds the macro recursion limit.
    let mut session = json!({
        "id": id,
        "object": "checkout.session",
        "adaptive_pricing": null,
        "after_expiration": null,
        "allow_promotion_codes": params.get("allow_promotion_codes").map(|v| v == "true"),
        "amount_subtotal": checked.amount,
        "amount_total": checked.amount,
        "automatic_tax": {"enabled": false, "liability": null, "provider": null, "status": null},
        "billing_address_collection": param("billing_address_collection"),
        "cancel_url": param("cancel_url"),
        "client_reference_id": param("client_reference_id"),
        "client_secret": null,
        "collected_information": null,
        "consent": null,
        "consent_collection": null,
        "created": created,
        "currency": checked.currency,
        "currency_conversion": null,
        "custom_fields": [],
        "custom_text": {
            "after_submit": null, "shipping_address": null, "submit": null,
            "terms_of_service_acceptance": null,
        },
        "customer": param("customer"),
        "customer_creation": if checked.mode == "payment" && !params.contains_key("customer") {
            json!("if_required")
        } else {
            Value::Null
        },
        "customer_details": null,
        "customer_email": param("customer_email"),
    });
    let rest = json!({
        "discounts": [],
        "expires_at": created + SESSION_LIFETIME_SECS,
        "invoice": null,
        "invoice_creation": null,
        "livemode": livemode,
        "locale": param("locale"),
        "metadata": metadata,
        "mode": checked.mode,
        "payment_intent": null,
        "payment_link": null,
        "payment_method_collection": "always",
        "payment_method_configuration_details": null,
        "payment_method_options": {},
        "payment_method_types": ["card"],
        "payment_status": if paying { "unpaid" } else { "no_payment_required" },
        "phone_number_collection": {"enabled": false},
        "recovered_from": null,
        "saved_payment_method_options": null,
        "setup_intent": null,
        "shipping_address_collection": null,
        "shipping_cost": null,
        "shipping_options": [],
        "status": "open",
        "submit_type": null,
        "subscription": null,
        "success_url": param("success_url"),
        "total_details": if paying {
            json!({"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0})
        } else {
            Value::Null
        },
        "ui_mode": params.get("ui_mode").map_or("hosted_page", String::as_str),
        "url": format!("https://checkout.stripe.com/c/pay/{id}"),
    });
    if let (Value::Object(session), Value::Object(rest)) = (&mut session, rest) {
        session.extend(rest);
    }
    session
}

async fn create_session(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    handle(&shared, "/v1/checkout/sessions".to_owned(), &headers, &body, |inner, params, secret, refuse| {
        let checked = validate(params, &inner.prices).map_err(Stop::Unstored)?;
        if refuse {
            return Err(Stop::Stored(refusal()));
        }
        let session = session(params, &checked, secret.starts_with("sk_live_"));
        inner.sessions.push(session.clone());
        Ok(session)
    })
    .await
}

async fn update_subscription(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(&shared, format!("/v1/subscriptions/{id}"), &headers, &body, |inner, params, _, refuse| {
        let Some(sub) = inner.subscriptions.get_mut(&id) else {
            // Executed (and so stored under the key), as on Stripe.
            return Err(Stop::Stored(error(
                StatusCode::NOT_FOUND,
                json!({
                    "type": "invalid_request_error",
                    "code": "resource_missing",
                    "doc_url": "https://stripe.com/docs/error-codes/resource-missing",
                    "param": "id",
                    "message": format!("No such subscription: '{id}'"),
                }),
            )));
        };
        let mut cancel_at_period_end = None;
        let mut metadata = Map::new();
        for (key, value) in params {
            if key == "cancel_at_period_end" {
                cancel_at_period_end = Some(match value.as_str() {
                    "true" => true,
                    "false" => false,
                    _ => {
                        return Err(Stop::Unstored(invalid(
                            key,
                            Some("parameter_invalid_boolean"),
                            format!("Invalid boolean: {value}"),
                        )));
                    }
                });
            } else if let Some(name) = key.strip_prefix("metadata[").and_then(|k| k.strip_suffix(']')) {
                metadata.insert(name.to_owned(), json!(value));
            } else if key != "expand[]" && !key.starts_with("expand[") {
                return Err(Stop::Unstored(invalid(
                    key,
                    Some("parameter_unknown"),
                    format!("Received unknown parameter: {key}"),
                )));
            }
        }
        if refuse {
            return Err(Stop::Stored(refusal()));
        }
        if sub["status"] == "canceled" && cancel_at_period_end.is_some() {
            return Err(Stop::Stored(invalid(
                "cancel_at_period_end",
                None,
                "A canceled subscription can only update its cancellation_details and metadata.".to_owned(),
            )));
        }
        if let Some(cancel) = cancel_at_period_end {
            sub["cancel_at_period_end"] = json!(cancel);
            sub["cancel_at"] = if cancel { sub["current_period_end"].clone() } else { Value::Null };
            sub["canceled_at"] = if cancel { json!(now_secs()) } else { Value::Null };
            sub["cancellation_details"] = json!({
                "comment": null,
                "feedback": null,
                "reason": if cancel { json!("cancellation_requested") } else { Value::Null },
            });
        }
        if let Value::Object(m) = &mut sub["metadata"] {
            m.extend(metadata);
        }
        Ok(sub.clone())
    })
    .await
}

/// What `Mode::Refuse` answers a valid request.
fn refusal() -> (StatusCode, Value) {
    error(
        StatusCode::BAD_REQUEST,
        json!({
            "type": "invalid_request_error",
            "message": "Your account cannot currently make charges. To find out why charge creation is \
                        currently disabled, look at the `requirements.disabled_reason` property on this \
                        account.",
        }),
    )
}

/// Why an endpoint did not succeed.
enum Stop {
    /// Refused before running (bad parameters): a retry with the same key
    /// runs afresh.
    Unstored((StatusCode, Value)),
    /// Ran and failed: replayed like a success.
    Stored((StatusCode, Value)),
}

/// What every endpoint shares: the fault modes, authentication, and
/// idempotency keys (scoped to the secret key, replayed only for the same
/// endpoint and parameters).
async fn handle(
    shared: &Shared,
    path: String,
    headers: &HeaderMap,
    body: &[u8],
    // With `refuse` (Mode::Refuse), a valid request is refused.
    run: impl FnOnce(&mut Inner, &BTreeMap<String, String>, &str, bool) -> Result<Value, Stop>,
) -> Response {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let params = parse_form(body);
    let request = Request {
        path,
        idempotency_key: header("idempotency-key"),
        authorization: header("authorization"),
        stripe_version: header("stripe-version"),
        json: nested(&params),
        params,
    };
    let request_id = format!("req_{}", random_alphanumeric(14));
    let version = request.stripe_version.as_deref();
    let mode = {
        let mut inner = shared.lock();
        inner.requests.push(request.clone());
        inner.mode
    };
    let reply = |result| respond(result, &request_id, version, request.idempotency_key.as_deref());
    match mode {
        Mode::Down => return reply(down()),
        Mode::Hang => {
            // Answering once stopped lets graceful shutdown finish.
            shared.stop.cancelled().await;
            return reply(down());
        }
        Mode::Normal | Mode::Refuse => {}
    }
    let secret = match authenticate(request.authorization.as_deref()) {
        Ok(secret) => secret,
        Err(e) => return reply(e),
    };
    let mut inner = shared.lock();
    let slot = request.idempotency_key.clone().map(|key| (secret.clone(), key));
    if let Some(slot) = &slot
        && let Some(stored) = inner.idempotent.get(slot)
    {
        if stored.params != request.params || stored.path != request.path {
            return reply(error(
                StatusCode::BAD_REQUEST,
                json!({
                    "type": "idempotency_error",
                    "message": format!(
                        "Keys for idempotent requests can only be used with the same parameters they were \
                         first used with. Try using a key other than '{}' if you meant to execute a \
                         different request.",
                        slot.1
                    ),
                }),
            ));
        }
        let mut response = reply((stored.status, stored.body.clone()));
        let headers = response.headers_mut();
        headers.insert(HeaderName::from_static("idempotent-replayed"), HeaderValue::from_static("true"));
        if let Ok(original) = HeaderValue::from_str(&stored.request_id) {
            headers.insert(HeaderName::from_static("original-request"), original);
        }
        return response;
    }
    let result = match run(&mut inner, &request.params, &secret, mode == Mode::Refuse) {
        Ok(object) => (StatusCode::OK, object),
        Err(Stop::Unstored(e)) => return reply(e),
        Err(Stop::Stored(e)) => e,
    };
    if let Some(slot) = slot {
        let stored = Stored {
            path: request.path.clone(),
            params: request.params.clone(),
            status: result.0,
            body: result.1.clone(),
            request_id: request_id.clone(),
        };
        inner.idempotent.insert(slot, stored);
    }
    drop(inner);
    reply(result)
}

/// A subscription object as Stripe returns it (the fields Mage or a client
/// library would read), active for a month from now.
fn subscription_object(id: &str, price_id: &str) -> Value {
    let start = now_secs();
    let end = start + 30 * 24 * 60 * 60;
    json!({
        "id": id,
        "object": "subscription",
        "billing_cycle_anchor": start,
        "cancel_at": null,
        "cancel_at_period_end": false,
        "canceled_at": null,
        "cancellation_details": {"comment": null, "feedback": null, "reason": null},
        "collection_method": "charge_automatically",
        "created": start,
        "currency": "usd",
        "current_period_end": end,
        "current_period_start": start,
        "customer": format!("cus_{}", random_alphanumeric(14)),
        "ended_at": null,
        "items": {
            "object": "list",
            "data": [{
                "id": format!("si_{}", random_alphanumeric(14)),
                "object": "subscription_item",
                "current_period_end": end,
                "current_period_start": start,
                "price": {"id": price_id, "object": "price", "recurring": {"interval": "month"}},
                "quantity": 1,
                "subscription": id,
            }],
            "has_more": false,
            "url": format!("/v1/subscription_items?subscription={id}"),
        },
        "livemode": false,
        "metadata": {},
        "start_date": start,
        "status": "active",
    })
}

async fn unrecognized(method: Method, uri: Uri) -> Response {
    let body = json!({"error": {
        "type": "invalid_request_error",
        "message": format!(
            "Unrecognized request URL ({method}: {}). Please see https://stripe.com/docs or we can help at \
             https://support.stripe.com/.",
            uri.path()
        ),
    }});
    (StatusCode::NOT_FOUND, Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use super::*;

    const KEY: &str = "Bearer sk_test_4eC39HqLyjWDarjtT1zdp7dc";

    fn payment_form(order: &str) -> Vec<(&'static str, String)> {
        vec![
            ("mode", "payment".into()),
            ("success_url", "https://mage.test/billing/success?session_id={CHECKOUT_SESSION_ID}".into()),
            ("cancel_url", "https://mage.test/billing".into()),
            ("client_reference_id", "user_42".into()),
            ("customer_email", "ada@mage.test".into()),
            ("metadata[order_id]", order.into()),
            ("line_items[0][quantity]", "2".into()),
            ("line_items[0][price_data][currency]", "USD".into()),
            ("line_items[0][price_data][unit_amount]", "1500".into()),
            ("line_items[0][price_data][product_data][name]", "1000 credits".into()),
        ]
    }

    async fn post(
        fake: &FakeStripe,
        key: Option<&str>,
        form: &[(&str, String)],
    ) -> (StatusCode, HeaderMap, Value) {
        let mut req = reqwest::Client::new()
            .post(format!("{}/v1/checkout/sessions", fake.url()))
            .header("authorization", KEY)
            .header("stripe-version", DEFAULT_STRIPE_VERSION)
            .form(form);
        if let Some(key) = key {
            req = req.header("idempotency-key", key);
        }
        let resp = req.send().await.unwrap();
        let status = StatusCode::from_u16(resp.status().as_u16()).unwrap();
        let headers = resp.headers().clone();
        (status, headers, resp.json().await.unwrap())
    }

    #[tokio::test]
    async fn creates_a_payment_session() {
        let fake = FakeStripe::start().await;
        let (status, headers, s) = post(&fake, None, &payment_form("ord_1")).await;
        assert_eq!(status, StatusCode::OK, "{s}");
        assert!(headers["request-id"].to_str().unwrap().starts_with("req_"));
        let id = s["id"].as_str().unwrap();
        let suffix = id.strip_prefix("cs_test_").unwrap();
        assert!(suffix.len() >= 24 && suffix.chars().all(|c| c.is_ascii_alphanumeric()), "{id}");
        assert_eq!(s["object"], "checkout.session");
        assert_eq!(s["url"], format!("https://checkout.stripe.com/c/pay/{id}"));
        assert_eq!(s["mode"], "payment");
        assert_eq!(s["status"], "open");
        assert_eq!(s["payment_status"], "unpaid");
        assert_eq!(s["amount_total"], 3000);
        assert_eq!(s["currency"], "usd");
        assert_eq!(s["metadata"], json!({"order_id": "ord_1"}));
        assert_eq!(s["client_reference_id"], "user_42");
        assert_eq!(s["customer_email"], "ada@mage.test");
        assert_eq!(s["cancel_url"], "https://mage.test/billing");
        assert!(s["customer"].is_null() && s["payment_intent"].is_null() && s["subscription"].is_null());
        assert_eq!(s["livemode"], false);
        assert_eq!(s["expires_at"].as_u64().unwrap(), s["created"].as_u64().unwrap() + 86_400);
        assert_eq!(fake.sessions(), vec![s.clone()]);

        let requests = fake.requests();
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].authorization.as_deref(), Some(KEY));
        assert_eq!(requests[0].params["metadata[order_id]"], "ord_1");
        assert_eq!(requests[0].json["line_items"][0]["price_data"]["product_data"]["name"], "1000 credits");
    }

    #[tokio::test]
    async fn prices_by_id_use_registered_amounts() {
        let fake = FakeStripe::start().await;
        fake.set_price("price_credits_1000", 999, "EUR");
        let form = |price: &str| {
            vec![
                ("mode", "payment".to_owned()),
                ("success_url", "https://mage.test/ok".to_owned()),
                ("line_items[0][price]", price.to_owned()),
                ("line_items[0][quantity]", "3".to_owned()),
            ]
        };
        let (_, _, s) = post(&fake, None, &form("price_credits_1000")).await;
        assert_eq!((s["amount_total"].clone(), s["currency"].clone()), (json!(2997), json!("eur")));
        let (status, _, s) = post(&fake, None, &form("price_unknown")).await;
        assert_eq!(status, StatusCode::OK);
        assert!(s["amount_total"].is_null() && s["currency"].is_null());
    }

    #[tokio::test]
    async fn replaying_an_idempotency_key_returns_the_same_session() {
        let fake = FakeStripe::start().await;
        let (_, _, first) = post(&fake, Some("order-7"), &payment_form("ord_7")).await;
        let (status, headers, again) = post(&fake, Some("order-7"), &payment_form("ord_7")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(again, first);
        assert_eq!(headers["idempotent-replayed"], "true");
        assert_eq!(fake.sessions().len(), 1);
        assert_eq!(fake.requests().len(), 2);
        assert_eq!(fake.requests()[1].idempotency_key.as_deref(), Some("order-7"));
    }

    #[tokio::test]
    async fn reusing_a_key_with_other_params_is_an_idempotency_error() {
        let fake = FakeStripe::start().await;
        post(&fake, Some("order-8"), &payment_form("ord_8")).await;
        let (status, _, body) = post(&fake, Some("order-8"), &payment_form("ord_9")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"]["type"], "idempotency_error");
        assert!(body["error"]["message"].as_str().unwrap().starts_with("Keys for idempotent requests"));
        assert_eq!(fake.sessions().len(), 1);
    }

    #[tokio::test]
    async fn down_answers_503_and_a_retry_with_the_same_key_runs_afresh() {
        let fake = FakeStripe::start().await;
        fake.set_mode(Mode::Down);
        let (status, _, body) = post(&fake, Some("order-9"), &payment_form("ord_9")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["error"]["type"], "api_error");
        fake.set_mode(Mode::Normal);
        let (status, _, _) = post(&fake, Some("order-9"), &payment_form("ord_9")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(fake.sessions().len(), 1);
    }

    #[tokio::test]
    async fn refusals_are_stripe_errors_and_replayed() {
        let fake = FakeStripe::start().await;
        fake.set_mode(Mode::Refuse);
        let (status, _, body) = post(&fake, Some("order-10"), &payment_form("ord_10")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"]["type"], "invalid_request_error");
        fake.set_mode(Mode::Normal);
        let (status, _, again) = post(&fake, Some("order-10"), &payment_form("ord_10")).await;
        assert_eq!((status, again), (StatusCode::BAD_REQUEST, body));
        assert!(fake.sessions().is_empty());
    }

    #[tokio::test]
    async fn hang_never_answers() {
        let fake = FakeStripe::start().await;
        fake.set_mode(Mode::Hang);
        let sent = reqwest::Client::new()
            .post(format!("{}/v1/checkout/sessions", fake.url()))
            .header("authorization", KEY)
            .form(&payment_form("ord_11"))
            .timeout(Duration::from_millis(300))
            .send()
            .await;
        assert!(sent.unwrap_err().is_timeout());
        assert_eq!(fake.requests().len(), 1);
    }

    #[tokio::test]
    async fn missing_params_are_named() {
        let fake = FakeStripe::start().await;
        let mut form = payment_form("ord_12");
        form.retain(|(k, _)| *k != "success_url");
        let (status, _, body) = post(&fake, Some("order-12"), &form).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(body["error"]["code"], "parameter_missing");
        assert_eq!(body["error"]["param"], "success_url");
        assert_eq!(body["error"]["message"], "Missing required param: success_url.");

        let mut form = payment_form("ord_12");
        form.retain(|(k, _)| *k != "line_items[0][quantity]");
        let (_, _, body) = post(&fake, Some("order-12"), &form).await;
        assert_eq!(body["error"]["param"], "line_items[0][quantity]");
        // Failed validation is not stored, so the key is still free.
        let (status, _, _) = post(&fake, Some("order-12"), &payment_form("ord_12")).await;
        assert_eq!(status, StatusCode::OK);
    }

    #[tokio::test]
    async fn bad_keys_are_401() {
        let fake = FakeStripe::start().await;
        let resp = reqwest::Client::new()
            .post(format!("{}/v1/checkout/sessions", fake.url()))
            .header("authorization", "Bearer pk_test_abcdefghijklmnop")
            .form(&payment_form("ord_13"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 401);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(body["error"]["message"], "Invalid API Key provided: pk_test_************mnop");
        assert!(fake.sessions().is_empty());
    }

    async fn update_subscription(
        fake: &FakeStripe,
        id: &str,
        key: Option<&str>,
        form: &[(&str, &str)],
    ) -> (u16, Value) {
        let mut req = reqwest::Client::new()
            .post(format!("{}/v1/subscriptions/{id}", fake.url()))
            .header("authorization", KEY)
            .form(form);
        if let Some(key) = key {
            req = req.header("idempotency-key", key);
        }
        let resp = req.send().await.unwrap();
        (resp.status().as_u16(), resp.json().await.unwrap())
    }

    #[tokio::test]
    async fn a_subscription_is_set_to_end_with_its_period() {
        let fake = FakeStripe::start().await;
        let created = fake.add_subscription("sub_1", "price_mage_basic_monthly");
        assert_eq!(
            (created["status"].clone(), created["cancel_at_period_end"].clone()),
            (json!("active"), json!(false))
        );
        let (status, sub) =
            update_subscription(&fake, "sub_1", Some("k1"), &[("cancel_at_period_end", "true")]).await;
        assert_eq!(status, 200, "{sub}");
        assert_eq!(sub["object"], "subscription");
        assert_eq!(sub["cancel_at_period_end"], true);
        assert_eq!(sub["cancel_at"], sub["current_period_end"]);
        assert_eq!(sub["status"], "active", "it runs to the end of the period");
        assert_eq!(fake.subscription("sub_1").unwrap(), sub);
        assert_eq!(fake.requests()[0].path, "/v1/subscriptions/sub_1");
        // The same key on another endpoint is refused.
        let (status, _, body) = post(&fake, Some("k1"), &payment_form("ord_20")).await;
        assert_eq!(
            (status, body["error"]["type"].clone()),
            (StatusCode::BAD_REQUEST, json!("idempotency_error"))
        );
    }

    #[tokio::test]
    async fn unknown_subscriptions_and_parameters_are_refused_as_stripe_does() {
        let fake = FakeStripe::start().await;
        let (status, body) =
            update_subscription(&fake, "sub_nope", None, &[("cancel_at_period_end", "true")]).await;
        assert_eq!(status, 404);
        assert_eq!(body["error"]["code"], "resource_missing");
        assert_eq!(body["error"]["message"], "No such subscription: 'sub_nope'");
        fake.add_subscription("sub_2", "price_mage_basic_monthly");
        let (status, body) =
            update_subscription(&fake, "sub_2", None, &[("cancel_at_period_end", "yes")]).await;
        assert_eq!((status, body["error"]["code"].clone()), (400, json!("parameter_invalid_boolean")));
        let (status, body) = update_subscription(&fake, "sub_2", None, &[("colour", "blue")]).await;
        assert_eq!((status, body["error"]["code"].clone()), (400, json!("parameter_unknown")));
        assert_eq!(fake.subscription("sub_2").unwrap()["cancel_at_period_end"], false);
    }

    #[test]
    fn nests_bracket_keys() {
        let params = parse_form(
            b"a%5Bb%5D%5B0%5D%5Bc%5D=x&a[b][1][c]=y&expand[]=line_items&metadata[order_id]=o&mode=payment&odd[=1",
        );
        assert_eq!(params["metadata[order_id]"], "o");
        assert_eq!(
            nested(&params),
            json!({
                "a": {"b": [{"c": "x"}, {"c": "y"}]},
                "expand": ["line_items"],
                "metadata": {"order_id": "o"},
                "mode": "payment",
                "odd[": "1",
            })
        );
    }
}
