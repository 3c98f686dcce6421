//! Who is calling: a session's access token or an API key, checked without
//! a database read on the hot path (`revocations`, `keys`).

pub mod keys;
mod revocations;
pub mod scopes;
mod tokens;

use uuid::Uuid;

pub use keys::KeyCache;
pub use revocations::Revocations;
pub use scopes::Scopes;
pub use tokens::{Access, Tokens};

use crate::error::ApiError;

/// The credential a signed-in caller used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// A session's access token.
    Session(Uuid),
    /// An API key, limited to its scopes.
    Key { id: Uuid, scopes: Scopes },
}

/// A signed-in caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Principal {
    pub user_id: Uuid,
    pub credential: Credential,
}

impl Principal {
    /// The session or key id: what a revocation names.
    pub fn credential_id(&self) -> Uuid {
        match self.credential {
            Credential::Session(id) | Credential::Key { id, .. } => id,
        }
    }
}

/// Who is calling: put into every request's data.
#[derive(Debug, Clone, Default)]
pub enum Viewer {
    #[default]
    Anonymous,
    User(Principal),
    /// Credentials were sent but are no good (expired, forged, revoked).
    /// Public operations such as `login` still run; anything that needs the
    /// caller is `UNAUTHENTICATED` with the reason, so a client knows to
    /// refresh or sign in again.
    Invalid(String),
}

impl Viewer {
    pub fn require(&self) -> Result<Uuid, ApiError> {
        self.optional()?.ok_or_else(ApiError::unauthenticated)
    }

    /// The caller if signed in, `None` if anonymous, an error if the
    /// credentials are bad.
    pub fn optional(&self) -> Result<Option<Uuid>, ApiError> {
        Ok(self.principal()?.map(|p| p.user_id))
    }

    pub fn principal(&self) -> Result<Option<Principal>, ApiError> {
        match self {
            Self::Anonymous => Ok(None),
            Self::User(p) => Ok(Some(*p)),
            Self::Invalid(why) => Err(ApiError::Unauthenticated(why.clone())),
        }
    }

    /// The caller and their session, for what only the account holder may
    /// do (keys, sessions, passwords, the account itself): an API key is
    /// `FORBIDDEN` here whatever its scopes.
    pub fn require_session(&self) -> Result<(Uuid, Uuid), ApiError> {
        let p = self.principal()?.ok_or_else(ApiError::unauthenticated)?;
        match p.credential {
            Credential::Session(session) => Ok((p.user_id, session)),
            Credential::Key { .. } => {
                Err(ApiError::Forbidden("an API key cannot do this: sign in as the account holder".into()))
            }
        }
    }

    /// Whether the caller is on an API key.
    pub fn is_key(&self) -> bool {
        matches!(self, Self::User(Principal { credential: Credential::Key { .. }, .. }))
    }
}

/// Takes `Bearer <token>` apart (the scheme is case-insensitive; a bare
/// token is accepted too, as WebSocket clients often send one).
fn bearer(value: &str) -> Result<&str, ApiError> {
    let value = value.trim();
    match value.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => Ok(rest.trim()),
        Some(_) => {
            Err(ApiError::Unauthenticated("unsupported Authorization scheme: use Bearer <token>".into()))
        }
        None => Ok(value),
    }
}

/// The caller named by an `Authorization` header (HTTP) or a
/// `connection_init` payload (WebSocket); no credentials is an anonymous
/// caller. An access token of an ended session, or a revoked key, is no
/// credential.
pub(crate) async fn viewer_from(state: &crate::AppState, credential: Option<&str>) -> Viewer {
    let Some(credential) = credential.map(str::trim).filter(|c| !c.is_empty()) else {
        return Viewer::Anonymous;
    };
    let secret = match bearer(credential) {
        Ok(s) => s,
        Err(e) => return Viewer::Invalid(e.message()),
    };
    if secret.starts_with(mage_domain::api_keys::KEY_PREFIX) {
        return match state.keys.find(&state.pool, &state.revocations, secret).await {
            Ok(Some(p)) => Viewer::User(p),
            Ok(None) => Viewer::Invalid("this API key is not valid (revoked or mistyped)".into()),
            Err(e) => Viewer::Invalid(e.message()),
        };
    }
    match state.tokens.verify(secret) {
        Ok(access) => match session_live(state, access.session_id).await {
            true => Viewer::User(Principal {
                user_id: access.user_id,
                credential: Credential::Session(access.session_id),
            }),
            false => Viewer::Invalid("this session has ended: sign in again".into()),
        },
        Err(e) => Viewer::Invalid(e.message()),
    }
}

/// Whether a session may still be used: from memory while the revocation
/// poll is current, else from the database (which, if it is down too, fails
/// the operation anyway; a token is then taken as good rather than signing
/// everyone out).
pub(crate) async fn session_live(state: &crate::AppState, session_id: Uuid) -> bool {
    if state.revocations.is_revoked(session_id) {
        return false;
    }
    if state.revocations.is_fresh() {
        return true;
    }
    match state.pool.get().await {
        Ok(mut conn) => !matches!(mage_domain::sessions::ended(&mut conn, session_id).await, Ok(true)),
        Err(_) => true,
    }
}
