//! The process's shared handles, built once at start and handed to `serve`,
//! `work` and `dev` alike: whatever reaches the database, Redis, the queues
//! or the media store holds this (cheap to clone) beside its own extras.

use crate::catalog::ModelCache;
use crate::db::DbPool;
use crate::kv::Redis;
use crate::queue::Queues;
use crate::storage::Storage;

#[derive(Clone)]
pub struct Core {
    pub pool: DbPool,
    pub redis: Redis,
    pub queues: Queues,
    pub storage: Storage,
    /// Render models by id, shared by quotes and creates (see
    /// [`ModelCache`]).
    pub models: ModelCache,
}

impl Core {
    pub fn new(pool: DbPool, redis: Redis, queues: Queues, storage: Storage) -> Self {
        Self { pool, redis, queues, storage, models: ModelCache::default() }
    }
}
