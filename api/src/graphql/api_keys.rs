//! API keys: created, listed and revoked by the account holder (never by a
//! key).

use async_graphql::{Context, Enum, ID, Object, SimpleObject};
use chrono::{DateTime, Utc};
use mage_domain::api_keys::{self as domain, Scope};
use mage_domain::rows;

use super::context::ContextExt;
use crate::error::{ApiError, ApiResult};

/// What an API key may do.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
#[graphql(remote = "domain::Scope")]
pub enum ApiKeyScope {
    /// Queries and subscriptions.
    Read,
    /// Creating, cancelling, retrying and deleting generations; uploads.
    Generate,
    /// Checkout.
    Billing,
}

pub struct ApiKey(rows::ApiKey);

#[Object]
impl ApiKey {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }

    async fn name(&self) -> &str {
        &self.0.name
    }

    /// The key's first characters, to recognise it (`mage_sk_` and 8 more).
    async fn prefix(&self) -> &str {
        &self.0.prefix
    }

    async fn scopes(&self) -> Vec<ApiKeyScope> {
        self.0.scopes().into_iter().map(Into::into).collect()
    }

    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }

    /// Updated at most once a minute.
    async fn last_used_at(&self) -> Option<DateTime<Utc>> {
        self.0.last_used_at
    }

    async fn revoked_at(&self) -> Option<DateTime<Utc>> {
        self.0.revoked_at
    }
}

/// A new key with its secret, shown this once.
#[derive(SimpleObject)]
pub struct CreatedApiKey {
    api_key: ApiKey,
    /// Send as `Authorization: Bearer <secret>`; Mage keeps only its hash.
    secret: String,
}

#[derive(Default)]
pub struct ApiKeysQuery;

#[Object]
impl ApiKeysQuery {
    /// The account's live API keys, newest first.
    async fn api_keys(&self, ctx: &Context<'_>) -> ApiResult<Vec<ApiKey>> {
        let (user_id, _) = ctx.viewer().require_session()?;
        let mut conn = ctx.conn().await?;
        Ok(domain::list(&mut conn, user_id).await?.into_iter().map(ApiKey).collect())
    }
}

#[derive(Default)]
pub struct ApiKeysMutation;

#[Object]
impl ApiKeysMutation {
    /// Creates an API key (at most 20 live per account, `CONFLICT` past
    /// that). The secret is in the answer and nowhere else.
    async fn create_api_key(
        &self,
        ctx: &Context<'_>,
        name: String,
        scopes: Vec<ApiKeyScope>,
    ) -> ApiResult<CreatedApiKey> {
        let (user_id, _) = ctx.viewer().require_session()?;
        let scopes: Vec<Scope> = scopes.into_iter().map(Into::into).collect();
        let mut conn = ctx.conn().await?;
        let (key, secret) = domain::create(&mut conn, user_id, &name, &scopes).await?;
        tracing::info!(%user_id, api_key_id = %key.id, prefix = %key.prefix, "API key created");
        Ok(CreatedApiKey { api_key: ApiKey(key), secret })
    }

    /// Revokes a key: it stops working on every server within a second and
    /// its WebSockets close (4403). Revoking it again changes nothing.
    async fn revoke_api_key(&self, ctx: &Context<'_>, id: ID) -> ApiResult<ApiKey> {
        let (user_id, _) = ctx.viewer().require_session()?;
        let id = id.parse().map_err(|_| ApiError::NotFound("API key".into()))?;
        let mut conn = ctx.conn().await?;
        let key = domain::revoke(&mut conn, user_id, id).await?;
        ctx.services().revocations.add(&[key.id]);
        Ok(ApiKey(key))
    }
}
