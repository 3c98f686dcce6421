//! What a resolver reaches through its `Context`: the services set up once
//! when the server starts, the caller and the request's DataLoaders, put
//! there per request by `request_data` (HTTP) or the socket (WebSocket).
//! One place reads them, so no resolver names a data type or unwraps one.

use std::sync::Arc;

use async_graphql::{Context, Guard};
use mage_domain::db::PooledConnection;
use mage_domain::rows;

use super::{Loaders, Services};
use crate::auth::Viewer;
use crate::client::ClientIp;
use crate::error::{ApiError, ApiResult};

pub(crate) trait ContextExt<'a> {
    fn services(&self) -> &'a Services;

    /// Who is calling; anonymous when the request carries no credentials.
    fn viewer(&self) -> &'a Viewer;

    fn client(&self) -> ClientIp;

    /// Where a session started now comes from (user agent, address).
    fn origin(&self) -> mage_domain::sessions::Origin;

    fn loaders(&self) -> &'a Loaders;

    /// A pooled database connection; a pool failure is `INTERNAL`.
    async fn conn(&self) -> ApiResult<PooledConnection>;

    /// The signed-in user, loaded; `UNAUTHENTICATED` when there is none.
    async fn current_user(&self) -> ApiResult<rows::User>;
}

impl<'a> ContextExt<'a> for Context<'a> {
    fn services(&self) -> &'a Services {
        self.data_unchecked::<Arc<Services>>()
    }

    fn viewer(&self) -> &'a Viewer {
        static ANONYMOUS: Viewer = Viewer::Anonymous;
        self.data_opt::<Viewer>().unwrap_or(&ANONYMOUS)
    }

    fn client(&self) -> ClientIp {
        self.data_opt::<ClientIp>().copied().unwrap_or(ClientIp::UNKNOWN)
    }

    fn origin(&self) -> mage_domain::sessions::Origin {
        mage_domain::sessions::Origin {
            user_agent: self.data_opt::<crate::client::UserAgent>().and_then(|ua| ua.0.clone()),
            ip_address: Some(self.client().0.to_canonical().to_string())
                .filter(|_| self.client() != ClientIp::UNKNOWN),
        }
    }

    fn loaders(&self) -> &'a Loaders {
        self.data_unchecked::<Loaders>()
    }

    async fn conn(&self) -> ApiResult<PooledConnection> {
        self.services().pool.get().await.map_err(ApiError::internal)
    }

    async fn current_user(&self) -> ApiResult<rows::User> {
        let id = self.viewer().require()?;
        self.loaders()
            .user(id)
            .await?
            .ok_or_else(|| ApiError::Unauthenticated("this account no longer exists".into()))
    }
}

/// Admin-only fields: `#[graphql(guard = "AdminOnly")]`. The role is read
/// from the database on every request, so a demotion takes effect at once;
/// past the guard, the caller is `ctx.viewer()`.
pub(crate) struct AdminOnly;

impl Guard for AdminOnly {
    async fn check(&self, ctx: &Context<'_>) -> async_graphql::Result<()> {
        // An admin's API key is still only a key: admin work needs the
        // admin in person.
        ctx.viewer().require_session()?;
        if !ctx.current_user().await?.is_admin() {
            return Err(ApiError::Forbidden("this operation is for admins".into()).into());
        }
        Ok(())
    }
}
