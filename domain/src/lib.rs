//! Mage's domain: everything the API and the workers share. Database access
//! lives here and nowhere else, so `diesel_async::RunQueryDsl` never meets
//! GraphQL code.

pub mod accounts;
pub mod api_keys;
pub mod assets;
pub mod backends;
pub mod catalog;
pub mod config;
pub mod core;
pub mod credits;
pub mod db;
pub mod enums;
pub mod error;
pub mod events;
pub mod generations;
pub mod kv;
pub mod limits;
pub mod mail;
pub mod metrics;
pub mod orders;
pub mod output;
pub mod payments;
mod pg_enum;
pub mod products;
pub mod queue;
pub mod replicate;
pub mod rows;
pub mod schema;
pub mod sessions;
pub mod stats;
pub mod storage;
pub mod subscriptions;
pub mod users;
pub mod webhooks;
pub mod workers;
pub mod workflows;

#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use error::{Error, Result};
