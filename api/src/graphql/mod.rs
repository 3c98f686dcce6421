//! The GraphQL schema, one module per domain area, merged here.

mod account;
mod admin;
mod api_keys;
mod apq;
mod assets;
mod budget;
mod catalog;
mod context;
mod credits;
mod documents;
mod email;
mod generations;
mod loaders;
mod orders;
mod pagination;
mod products;
mod queue;
mod sessions;
mod stats;
mod users;
mod webhooks;

use std::sync::Arc;

pub use apq::NOT_FOUND as PERSISTED_QUERY_NOT_FOUND;

use crate::settings::ServerSettings;
use async_graphql::parser::types::OperationType;
use async_graphql::{Data, MergedObject, MergedSubscription, Response, Schema, SchemaBuilder};
use futures_util::stream::{BoxStream, StreamExt};
use mage_domain::db::DbPool;

use crate::auth::{Tokens, Viewer};
use crate::client::ClientIp;
use crate::error::ensure_code;

pub use loaders::Loaders;

#[derive(MergedObject, Default)]
pub struct Query(
    users::UsersQuery,
    sessions::SessionsQuery,
    api_keys::ApiKeysQuery,
    webhooks::WebhooksQuery,
    credits::CreditsQuery,
    products::ProductsQuery,
    orders::OrdersQuery,
    catalog::CatalogQuery,
    generations::GenerationsQuery,
    assets::AssetsQuery,
    queue::QueueQuery,
    stats::StatsQuery,
    admin::AdminQuery,
);

#[derive(MergedObject, Default)]
pub struct Mutation(
    users::UsersMutation,
    sessions::SessionsMutation,
    api_keys::ApiKeysMutation,
    webhooks::WebhooksMutation,
    orders::OrdersMutation,
    products::ProductsMutation,
    catalog::CatalogMutation,
    generations::GenerationsMutation,
    assets::AssetsMutation,
    admin::AdminMutation,
    email::EmailMutation,
    account::AccountMutation,
);

#[derive(MergedSubscription, Default)]
pub struct Subscription(
    generations::GenerationsSubscription,
    credits::CreditsSubscription,
    assets::AssetsSubscription,
);

pub type MageSchema = Schema<Query, Mutation, Subscription>;

/// What resolvers reach through `ctx.data`: set once when the server starts.
pub struct Services {
    pub tokens: Tokens,
    pub signup_credits: i64,
    /// The signup credits wait for a verified email address.
    pub signup_bonus_requires_verified_email: bool,
    pub generations: mage_domain::generations::Services,
    /// Base of the absolute URLs handed to clients.
    pub public_url: String,
    /// Live events for subscriptions.
    pub live: crate::live::Hub,
    pub payments: mage_domain::payments::checkout::PaymentServices,
    pub auth_limits: mage_domain::limits::AuthLimits,
    pub assets: mage_domain::assets::AssetLimits,
    /// Sessions and keys revoked: a revoking mutation tells this instance
    /// at once (the others poll).
    pub revocations: Arc<crate::auth::Revocations>,
    pub session_idle_days: u32,
    /// Checks webhook endpoint URLs (MAGE_WEBHOOKS_ALLOW_PRIVATE).
    pub webhook_guard: mage_domain::webhooks::guard::Guard,
    /// The time zone of the daily statistics (MAGE_STATS_TZ).
    pub stats_tz: String,
}

/// Resolvers read the shared handles as `svc.pool`, `svc.redis`: the
/// generations' services hold the process's one `Core`.
impl std::ops::Deref for Services {
    type Target = mage_domain::core::Core;
    fn deref(&self) -> &mage_domain::core::Core {
        &self.generations.core
    }
}

impl Services {
    /// The URL a client fetches a stored media object from.
    pub fn media_url(&self, key: &str) -> String {
        self.storage.public_url(&self.public_url, key)
    }
}

/// Limits applied to every operation; `schema_builder` is shared by the
/// printed SDL and the running server, so both describe the same schema.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_depth: usize,
    pub max_complexity: usize,
    pub max_root_mutations: usize,
}

impl Limits {
    pub fn from_settings(s: &ServerSettings) -> Self {
        Self {
            max_depth: s.graphql_max_depth,
            max_complexity: s.graphql_max_complexity,
            max_root_mutations: s.graphql_max_root_mutations,
        }
    }

    fn budget(&self) -> budget::Budget {
        budget::Budget {
            max_fields: self.max_complexity,
            max_spreads: budget::MAX_SPREADS,
            max_root_mutations: self.max_root_mutations,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_depth: 16, max_complexity: 5000, max_root_mutations: 10 }
    }
}

pub fn schema_builder(limits: Limits) -> SchemaBuilder<Query, Mutation, Subscription> {
    Schema::build(Query::default(), Mutation::default(), Subscription::default())
        .limit_depth(limits.max_depth)
        .limit_complexity(limits.max_complexity)
        .limit_recursive_depth(64)
}

/// The schema with no data behind it: enough to print the SDL.
pub fn build_schema() -> MageSchema {
    schema_builder(Limits::default()).finish()
}

pub fn schema(services: Arc<Services>, limits: Limits) -> Operations {
    Operations {
        persisted: apq::PersistedQueries::new(Some(services.redis.clone())),
        schema: schema_builder(limits).data(services).finish(),
        documents: Arc::default(),
        budget: limits.budget(),
    }
}

/// Per-request data: the caller and fresh DataLoaders (they cache what they
/// load for the caller, so they must not outlive the request).
pub fn request_data(
    req: async_graphql::Request,
    viewer: Viewer,
    client: ClientIp,
    pool: &DbPool,
) -> async_graphql::Request {
    req.data(viewer).data(client).data(Loaders::new(pool.clone()))
}

/// The schema as the server runs it, over HTTP and WebSocket alike: every
/// error that left async-graphql without a code (parse and validation
/// errors, depth and complexity limits, malformed variables) gets
/// `BAD_USER_INPUT`, and queries and mutations are counted
/// (`crate::metrics::Operation`). Done around execution rather than as
/// async-graphql extensions, which would put every resolved field on
/// async-graphql's slow path. Parsed documents are reused by query text
/// (`documents::Documents`), and a document larger than the limits once its
/// fragments are expanded is refused before async-graphql validates it
/// (`budget`).
#[derive(Clone)]
pub struct Operations {
    schema: MageSchema,
    documents: Arc<documents::Documents>,
    budget: budget::Budget,
    persisted: apq::PersistedQueries,
}

impl Operations {
    /// Gives a hash-only persisted query its text (`apq`); `Err` is the
    /// answer instead. Any other request passes untouched (one with its
    /// text and hash is registered when it runs).
    pub async fn resolve_persisted(&self, request: &mut async_graphql::Request) -> Result<(), Response> {
        if !request.query.is_empty() {
            return Ok(());
        }
        self.persisted.resolve(request).await.map(|_| ())
    }

    /// The refusal of a document over budget; `None` for one within it, or
    /// one that does not parse (async-graphql answers that).
    fn over_budget(&self, request: &mut async_graphql::Request) -> Option<Response> {
        let doc = request.parsed_query().ok()?;
        let budget::Refused(message) = budget::check(doc, &self.budget).err()?;
        let mut error = async_graphql::ServerError::new(message, None);
        ensure_code(&mut error);
        Some(Response::from_errors(vec![error]))
    }

    /// The refusal of an operation an API key's scopes do not cover (see
    /// `auth::scopes`), found before anything runs; `None` for any other
    /// caller. The caller is in the request (HTTP) or the socket's data.
    fn out_of_scope(request: &mut async_graphql::Request, socket: Option<&Data>) -> Option<Response> {
        use crate::auth::{Credential, Principal};
        let viewer = |data: &Data| {
            data.get(&std::any::TypeId::of::<Viewer>()).and_then(|v| v.downcast_ref::<Viewer>()).cloned()
        };
        let Some(Viewer::User(Principal { credential: Credential::Key { scopes, .. }, .. })) =
            viewer(&request.data).or_else(|| socket.and_then(viewer))
        else {
            return None;
        };
        let name = request.operation_name.clone();
        let why = crate::auth::scopes::refusal(request.parsed_query().ok()?, name.as_deref(), scopes)?;
        let mut error = async_graphql::ServerError::new(why, None);
        error.extensions.get_or_insert_with(Default::default).set("code", "FORBIDDEN");
        Some(Response::from_errors(vec![error]))
    }

    /// Runs an operation that came over HTTP. A mutation runs on a task of
    /// its own: if the client goes away or the request times out it still
    /// runs to its end, so no transaction is cut off half-way (cancelling
    /// one does not close it). Anything else runs in the request's task, so
    /// it ends with the request.
    pub async fn execute_http(&self, request: async_graphql::Request) -> Response {
        self.run(request, true).await
    }

    /// The type of the operation a request would run; `None` when its
    /// document does not parse or names no such operation.
    pub fn operation_type(&self, request: &mut async_graphql::Request) -> Option<OperationType> {
        self.documents.prepare(request);
        crate::metrics::Operation::of(request).operation_type()
    }

    async fn run(&self, mut request: async_graphql::Request, detach_mutations: bool) -> Response {
        let register = match self.persisted.resolve(&mut request).await {
            Ok(hash) => hash.map(|h| (h, request.query.clone())),
            Err(refused) => return refused,
        };
        let response = self.run_resolved(request, detach_mutations).await;
        if let Some((hash, text)) = register {
            self.persisted.register(hash, &text, &response).await;
        }
        response
    }

    async fn run_resolved(&self, mut request: async_graphql::Request, detach_mutations: bool) -> Response {
        self.documents.prepare(&mut request);
        let operation = crate::metrics::Operation::of(&mut request);
        let response = if let Some(refused) =
            self.over_budget(&mut request).or_else(|| Self::out_of_scope(&mut request, None))
        {
            refused
        } else if detach_mutations && operation.operation_type() == Some(OperationType::Mutation) {
            let schema = self.schema.clone();
            match tokio::spawn(async move { schema.execute(request).await }).await {
                Ok(response) => with_codes(response),
                Err(e) => {
                    let _ = crate::error::ApiError::internal(format!("GraphQL execution task failed: {e}"));
                    Response::from_errors(vec![
                        async_graphql::Error::from(crate::error::ApiError::Internal)
                            .into_server_error(async_graphql::Pos::default()),
                    ])
                }
            }
        } else {
            with_codes(self.schema.execute(request).await)
        };
        operation.finished(&response);
        response
    }
}

impl async_graphql::Executor for Operations {
    async fn execute(&self, request: async_graphql::Request) -> Response {
        self.run(request, false).await
    }

    fn execute_stream(
        &self,
        mut request: async_graphql::Request,
        session_data: Option<Arc<Data>>,
    ) -> BoxStream<'static, Response> {
        if !request.extensions.contains_key("persistedQuery") {
            return self.stream(request, session_data);
        }
        // Over WebSocket too: the text may have to come from Redis first,
        // and a new one is registered once its first answer shows it ran.
        let this = self.clone();
        futures_util::stream::once(async move {
            match this.persisted.resolve(&mut request).await {
                Ok(None) => this.stream(request, session_data),
                Ok(Some(hash)) => {
                    let text = request.query.clone();
                    let persisted = this.persisted.clone();
                    let mut register = Some((hash, text));
                    this.stream(request, session_data)
                        .then(move |response| {
                            let first = register.take();
                            let persisted = persisted.clone();
                            async move {
                                if let Some((hash, text)) = first {
                                    persisted.register(hash, &text, &response).await;
                                }
                                response
                            }
                        })
                        .boxed()
                }
                Err(refused) => futures_util::stream::once(async move { refused }).boxed(),
            }
        })
        .flatten()
        .boxed()
    }
}

impl Operations {
    fn stream(
        &self,
        mut request: async_graphql::Request,
        session_data: Option<Arc<Data>>,
    ) -> BoxStream<'static, Response> {
        self.documents.prepare(&mut request);
        let operation = crate::metrics::Operation::of(&mut request);
        let refused = self
            .over_budget(&mut request)
            .or_else(|| Self::out_of_scope(&mut request, session_data.as_deref()));
        if let Some(refused) = refused {
            operation.finished(&refused);
            return futures_util::stream::once(async move { refused }).boxed();
        }
        let stream = self.schema.execute_stream_with_session_data(request, session_data.unwrap_or_default());
        if operation.is_subscription() {
            stream.map(with_codes).boxed()
        } else {
            stream
                .map(move |response| {
                    let response = with_codes(response);
                    operation.finished(&response);
                    response
                })
                .boxed()
        }
    }
}

/// Nothing ran: parsing, validation, the limits or the variables refused
/// the request (no data, and no error at a field's path).
pub fn refused_before_running(response: &Response) -> bool {
    response.data == async_graphql::Value::Null
        && !response.errors.is_empty()
        && response.errors.iter().all(|e| e.path.is_empty())
}

fn with_codes(mut response: Response) -> Response {
    response.errors.iter_mut().for_each(ensure_code);
    response
}
