use thiserror::Error;

/// Every failure a domain operation can report. The API maps each variant to
/// one GraphQL `extensions.code`; `Db`, `Pool`, `Redis` and `Internal` are
/// logged in full there and never shown to a client.
#[derive(Debug, Error)]
pub enum Error {
    #[error("{field}: {message}")]
    InvalidInput { field: &'static str, message: String },
    #[error("not found: {0}")]
    NotFound(&'static str),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("wrong email or password")]
    InvalidCredentials,
    #[error("insufficient credits: {required} required, {available} available")]
    InsufficientCredits { required: i64, available: i64 },
    #[error("rate limited: {message}")]
    RateLimited { message: String, retry_after_seconds: u64 },
    /// Storing `requested` more bytes would pass the user's storage quota.
    #[error("storage quota exceeded: {used_bytes} of {limit_bytes} bytes used, {requested_bytes} more asked")]
    QuotaExceeded { limit_bytes: i64, used_bytes: i64, requested_bytes: i64 },
    #[error("database error: {0}")]
    Db(#[from] diesel::result::Error),
    #[error("database pool error: {0}")]
    Pool(String),
    #[error("redis error: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("storage error: {0}")]
    Storage(String),
    #[error("internal error: {0}")]
    Internal(String),
    /// The payment provider could not be reached or refused the request;
    /// the message is safe to show.
    #[error("payment provider: {0}")]
    PaymentProvider(String),
    /// A job found what it needs not ready yet (an event that depends on
    /// another not yet applied); it is retried.
    #[error("not yet: {0}")]
    NotYet(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Self::InvalidInput { field, message: message.into() }
    }

    /// True for a violation of the named unique constraint or index.
    pub fn is_unique_violation(&self, constraint: &str) -> bool {
        use diesel::result::{DatabaseErrorKind, Error as D};
        matches!(self, Self::Db(D::DatabaseError(DatabaseErrorKind::UniqueViolation, info))
            if info.constraint_name() == Some(constraint))
    }
}

impl From<diesel_async::pooled_connection::deadpool::PoolError> for Error {
    fn from(e: diesel_async::pooled_connection::deadpool::PoolError) -> Self {
        Self::Pool(e.to_string())
    }
}
