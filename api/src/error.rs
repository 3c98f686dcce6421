//! Errors at the GraphQL edge: every error a client sees carries one
//! `extensions.code` of docs/api.md; internal failures are logged in full
//! here and reach the client as a bare `INTERNAL`.

use async_graphql::{ErrorExtensions, ServerError};
use mage_domain::Error as DomainError;

/// Deliberately not `Display`: async-graphql converts any `Display` error into
/// a code-less GraphQL error, so resolvers return `ApiResult` and the only way
/// out is `From<ApiError>` below, which always sets the code.
#[derive(Debug, Clone)]
pub enum ApiError {
    Unauthenticated(String),
    Forbidden(String),
    NotFound(String),
    BadUserInput {
        field: Option<String>,
        message: String,
    },
    InsufficientCredits {
        required: i64,
        available: i64,
    },
    RateLimited {
        message: String,
        retry_after_seconds: u64,
    },
    Conflict(String),
    QuotaExceeded {
        limit_bytes: i64,
        used_bytes: i64,
        requested_bytes: i64,
    },
    /// Stripe could not be reached or refused; nothing was charged.
    PaymentProvider(String),
    Internal,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unauthenticated(_) => "UNAUTHENTICATED",
            Self::Forbidden(_) => "FORBIDDEN",
            Self::NotFound(_) => "NOT_FOUND",
            Self::BadUserInput { .. } => "BAD_USER_INPUT",
            Self::InsufficientCredits { .. } => "INSUFFICIENT_CREDITS",
            Self::RateLimited { .. } => "RATE_LIMITED",
            Self::Conflict(_) => "CONFLICT",
            Self::QuotaExceeded { .. } => "QUOTA_EXCEEDED",
            Self::PaymentProvider(_) => "PAYMENT_PROVIDER_ERROR",
            Self::Internal => "INTERNAL",
        }
    }

    pub fn message(&self) -> String {
        match self {
            Self::Unauthenticated(m) | Self::Forbidden(m) | Self::Conflict(m) | Self::PaymentProvider(m) => {
                m.clone()
            }
            Self::NotFound(what) => format!("{what} not found"),
            Self::BadUserInput { message, .. } => message.clone(),
            Self::InsufficientCredits { required, available } => {
                format!("not enough credits: {required} needed, {available} available")
            }
            Self::RateLimited { message, retry_after_seconds } => {
                format!("{message}: retry in {retry_after_seconds} s")
            }
            Self::QuotaExceeded { limit_bytes, used_bytes, requested_bytes } => format!(
                "storage quota exceeded: this upload needs {requested_bytes} bytes, and {used_bytes} of your \
                 {limit_bytes} are in use; delete assets to make room"
            ),
            Self::Internal => "internal error".into(),
        }
    }

    pub fn bad_input(field: &str, message: impl Into<String>) -> Self {
        Self::BadUserInput { field: Some(field.to_owned()), message: message.into() }
    }

    pub fn unauthenticated() -> Self {
        Self::Unauthenticated("sign in first: send Authorization: Bearer <token>".into())
    }

    /// Logs the cause with its detail and returns the detail-free error.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::Internal
    }
}

impl From<DomainError> for ApiError {
    fn from(e: DomainError) -> Self {
        match e {
            DomainError::InvalidInput { field, message } => {
                Self::BadUserInput { field: Some(field.to_owned()), message: format!("{field} {message}") }
            }
            DomainError::NotFound(what) => Self::NotFound(what.to_owned()),
            DomainError::Conflict(m) => Self::Conflict(m),
            DomainError::PaymentProvider(m) => Self::PaymentProvider(m),
            DomainError::RateLimited { message, retry_after_seconds } => {
                Self::RateLimited { message, retry_after_seconds }
            }
            DomainError::QuotaExceeded { limit_bytes, used_bytes, requested_bytes } => {
                Self::QuotaExceeded { limit_bytes, used_bytes, requested_bytes }
            }
            DomainError::InvalidCredentials => Self::Unauthenticated("wrong email or password".into()),
            DomainError::InsufficientCredits { required, available } => {
                Self::InsufficientCredits { required, available }
            }
            e @ (DomainError::Db(_)
            | DomainError::Pool(_)
            | DomainError::Redis(_)
            | DomainError::Storage(_)
            | DomainError::Internal(_)
            | DomainError::NotYet(_)) => Self::internal(e),
        }
    }
}

impl From<ApiError> for async_graphql::Error {
    fn from(e: ApiError) -> Self {
        async_graphql::Error::new(e.message()).extend_with(|_, ext| {
            let e = &e;
            ext.set("code", e.code());
            match e {
                ApiError::BadUserInput { field: Some(f), .. } => ext.set("field", f.as_str()),
                ApiError::InsufficientCredits { required, available } => {
                    ext.set("required", *required);
                    ext.set("available", *available);
                }
                ApiError::RateLimited { retry_after_seconds, .. } => {
                    ext.set("retryAfterSeconds", *retry_after_seconds);
                }
                ApiError::QuotaExceeded { limit_bytes, used_bytes, .. } => {
                    ext.set("limitBytes", *limit_bytes);
                    ext.set("usedBytes", *used_bytes);
                }
                _ => {}
            }
        })
    }
}

/// An error produced outside any resolver (parse and validation failures,
/// limits, bad variables) has no code yet; all of those are the client's.
pub fn ensure_code(err: &mut ServerError) {
    let has_code = err.extensions.as_ref().is_some_and(|e| e.get("code").is_some());
    if !has_code {
        err.extensions.get_or_insert_with(Default::default).set("code", "BAD_USER_INPUT");
    }
}
