//! The GraphQL schema, one module per domain area, merged here.

mod admin;
mod credits;
mod documents;
mod generations;
mod loaders;
mod orders;
mod pagination;
mod products;
mod stats;
mod users;

use std::sync::Arc;

use async_graphql::{Data, MergedObject, MergedSubscription, Response, Schema, SchemaBuilder};
use futures_util::stream::{BoxStream, StreamExt};
use mage_domain::config::ServerSettings;
use mage_domain::db::DbPool;

use crate::auth::{Tokens, Viewer};
use crate::error::ensure_code;

pub use loaders::Loaders;

#[derive(MergedObject, Default)]
pub struct Query(
    users::UsersQuery,
    credits::CreditsQuery,
    products::ProductsQuery,
    orders::OrdersQuery,
    generations::GenerationsQuery,
    stats::StatsQuery,
    admin::AdminQuery,
);

#[derive(MergedObject, Default)]
pub struct Mutation(
    users::UsersMutation,
    orders::OrdersMutation,
    generations::GenerationsMutation,
    admin::AdminMutation,
);

#[derive(MergedSubscription, Default)]
pub struct Subscription(generations::GenerationsSubscription, credits::CreditsSubscription);

pub type MageSchema = Schema<Query, Mutation, Subscription>;

/// What resolvers reach through `ctx.data`: set once when the server starts.
pub struct Services {
    pub pool: DbPool,
    pub redis: mage_domain::kv::Redis,
    pub tokens: Tokens,
    pub signup_credits: i64,
    pub generations: mage_domain::generations::Services,
    /// Base of the absolute URLs handed to clients.
    pub public_url: String,
    pub storage: mage_domain::storage::Storage,
    /// Live events for subscriptions.
    pub live: crate::live::Hub,
    pub payments: mage_domain::payments::checkout::PaymentServices,
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
}

impl Limits {
    pub fn from_settings(s: &ServerSettings) -> Self {
        Self { max_depth: s.graphql_max_depth, max_complexity: s.graphql_max_complexity }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_depth: 16, max_complexity: 5000 }
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
    Operations { schema: schema_builder(limits).data(services).finish(), documents: Arc::default() }
}

/// Per-request data: the caller and fresh DataLoaders (they cache what they
/// load for the caller, so they must not outlive the request).
pub fn request_data(req: async_graphql::Request, viewer: Viewer, pool: &DbPool) -> async_graphql::Request {
    req.data(viewer).data(Loaders::new(pool.clone()))
}

/// The schema as the server runs it, over HTTP and WebSocket alike: every
/// error that left async-graphql without a code (parse and validation
/// errors, depth and complexity limits, malformed variables) gets
/// `BAD_USER_INPUT`, and queries and mutations are counted
/// (`crate::metrics::Operation`). Done around execution rather than as
/// async-graphql extensions, which would put every resolved field on
/// async-graphql's slow path. Parsed documents are reused by query text
/// (`documents::Documents`).
#[derive(Clone)]
pub struct Operations {
    schema: MageSchema,
    documents: Arc<documents::Documents>,
}

impl async_graphql::Executor for Operations {
    async fn execute(&self, mut request: async_graphql::Request) -> Response {
        self.documents.prepare(&mut request);
        let operation = crate::metrics::Operation::of(&mut request);
        let response = with_codes(self.schema.execute(request).await);
        operation.finished(&response);
        response
    }

    fn execute_stream(
        &self,
        mut request: async_graphql::Request,
        session_data: Option<Arc<Data>>,
    ) -> BoxStream<'static, Response> {
        self.documents.prepare(&mut request);
        let operation = crate::metrics::Operation::of(&mut request);
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

fn with_codes(mut response: Response) -> Response {
    response.errors.iter_mut().for_each(ensure_code);
    response
}

fn services<'a>(ctx: &async_graphql::Context<'a>) -> &'a Services {
    ctx.data_unchecked::<Arc<Services>>()
}

fn viewer<'a>(ctx: &async_graphql::Context<'a>) -> &'a Viewer {
    static ANONYMOUS: Viewer = Viewer::Anonymous;
    ctx.data_opt::<Viewer>().unwrap_or(&ANONYMOUS)
}

fn loaders<'a>(ctx: &async_graphql::Context<'a>) -> &'a Loaders {
    ctx.data_unchecked::<Loaders>()
}
