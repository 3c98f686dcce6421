//! Mage's domain: everything the API and the workers share. Database access
//! lives here and nowhere else, so `diesel_async::RunQueryDsl` never meets
//! GraphQL code.

pub mod config;
pub mod credits;
pub mod db;
pub mod error;
pub mod kv;
pub mod models;
pub mod products;
pub mod schema;
pub mod users;

#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use error::{Error, Result};
