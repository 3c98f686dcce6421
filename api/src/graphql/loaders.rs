//! DataLoaders, made fresh for every request (they see only that caller's
//! request, and their batches never outlive it).

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::dataloader::{DataLoader, Loader};
use mage_domain::db::DbPool;
use mage_domain::models::{CreditAccount, User};
use mage_domain::{credits, users};
use uuid::Uuid;

use crate::error::ApiError;

pub struct Loaders {
    pub users: DataLoader<UserLoader>,
    pub accounts: DataLoader<AccountLoader>,
}

impl Loaders {
    pub fn new(pool: DbPool) -> Self {
        Self {
            users: DataLoader::new(UserLoader(pool.clone()), tokio::spawn),
            accounts: DataLoader::new(AccountLoader(pool), tokio::spawn),
        }
    }

    pub async fn user(&self, id: Uuid) -> Result<Option<User>, ApiError> {
        self.users.load_one(id).await.map_err(|e| ApiError::internal(e.as_ref()))
    }

    pub async fn account(&self, user_id: Uuid) -> Result<CreditAccount, ApiError> {
        self.accounts
            .load_one(user_id)
            .await
            .map_err(|e| ApiError::internal(e.as_ref()))?
            .ok_or_else(|| ApiError::NotFound("credit account".into()))
    }
}

pub struct UserLoader(DbPool);

impl Loader<Uuid> for UserLoader {
    type Value = User;
    type Error = Arc<mage_domain::Error>;

    async fn load(&self, keys: &[Uuid]) -> Result<HashMap<Uuid, User>, Self::Error> {
        let mut conn = self.0.get().await.map_err(|e| Arc::new(e.into()))?;
        let found = users::find_many(&mut conn, keys).await.map_err(Arc::new)?;
        Ok(found.into_iter().map(|u| (u.id, u)).collect())
    }
}

pub struct AccountLoader(DbPool);

impl Loader<Uuid> for AccountLoader {
    type Value = CreditAccount;
    type Error = Arc<mage_domain::Error>;

    async fn load(&self, keys: &[Uuid]) -> Result<HashMap<Uuid, CreditAccount>, Self::Error> {
        let mut conn = self.0.get().await.map_err(|e| Arc::new(e.into()))?;
        let found = credits::accounts(&mut conn, keys).await.map_err(Arc::new)?;
        Ok(found.into_iter().map(|a| (a.user_id, a)).collect())
    }
}
