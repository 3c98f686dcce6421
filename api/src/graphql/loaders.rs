//! DataLoaders, made fresh for every request (they see only that caller's
//! request, and their batches never outlive it).

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::dataloader::{DataLoader, Loader};
use mage_domain::db::DbPool;
use mage_domain::rows::{CreditAccount, OrderItem, User};
use mage_domain::{credits, orders, users};
use uuid::Uuid;

use crate::error::ApiError;

pub struct Loaders {
    pub users: DataLoader<UserLoader>,
    pub accounts: DataLoader<AccountLoader>,
    pub order_items: DataLoader<OrderItemsLoader>,
    pub generation_inputs: DataLoader<GenerationInputsLoader>,
}

impl Loaders {
    pub fn new(pool: DbPool) -> Self {
        Self {
            users: DataLoader::new(UserLoader(pool.clone()), tokio::spawn),
            accounts: DataLoader::new(AccountLoader(pool.clone()), tokio::spawn),
            order_items: DataLoader::new(OrderItemsLoader(pool.clone()), tokio::spawn),
            generation_inputs: DataLoader::new(GenerationInputsLoader(pool), tokio::spawn),
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

    /// A generation's input assets, in order.
    pub async fn generation_inputs(
        &self,
        generation_id: Uuid,
    ) -> Result<Vec<mage_domain::rows::Asset>, ApiError> {
        Ok(self
            .generation_inputs
            .load_one(generation_id)
            .await
            .map_err(|e| ApiError::internal(e.as_ref()))?
            .unwrap_or_default())
    }

    pub async fn order_items(&self, order_id: Uuid) -> Result<Vec<OrderItem>, ApiError> {
        Ok(self
            .order_items
            .load_one(order_id)
            .await
            .map_err(|e| ApiError::internal(e.as_ref()))?
            .unwrap_or_default())
    }
}

pub struct OrderItemsLoader(DbPool);

impl Loader<Uuid> for OrderItemsLoader {
    type Value = Vec<OrderItem>;
    type Error = Arc<mage_domain::Error>;

    async fn load(&self, keys: &[Uuid]) -> Result<HashMap<Uuid, Vec<OrderItem>>, Self::Error> {
        let mut conn = self.0.get().await.map_err(|e| Arc::new(e.into()))?;
        let mut by_order: HashMap<Uuid, Vec<OrderItem>> = HashMap::new();
        for item in orders::items(&mut conn, keys).await.map_err(Arc::new)? {
            by_order.entry(item.order_id).or_default().push(item);
        }
        Ok(by_order)
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

pub struct GenerationInputsLoader(DbPool);

impl Loader<Uuid> for GenerationInputsLoader {
    type Value = Vec<mage_domain::rows::Asset>;
    type Error = Arc<mage_domain::Error>;

    async fn load(&self, keys: &[Uuid]) -> Result<HashMap<Uuid, Self::Value>, Self::Error> {
        let mut conn = self.0.get().await.map_err(|e| Arc::new(e.into()))?;
        let mut by_generation: HashMap<Uuid, Self::Value> = HashMap::new();
        for (generation_id, asset) in
            mage_domain::assets::inputs_of(&mut conn, keys).await.map_err(Arc::new)?
        {
            by_generation.entry(generation_id).or_default().push(asset);
        }
        Ok(by_generation)
    }
}
