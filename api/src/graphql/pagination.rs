//! Relay connection arguments and opaque cursors.

use async_graphql::OutputType;
use async_graphql::connection::{Connection, Edge, EmptyFields};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::error::ApiError;

pub const DEFAULT_PAGE: i32 = 20;
pub const MAX_PAGE: i32 = 100;

/// The complexity of a list field: each of the `first` items (the default
/// page when absent) costs what its selection costs, so 400 aliases of a
/// 100-item page cost 40,000 items, not 400 fields.
pub fn list_complexity(first: Option<i32>, child_complexity: usize) -> usize {
    let items = first.unwrap_or(DEFAULT_PAGE).max(0) as usize;
    items.saturating_mul(child_complexity).saturating_add(1)
}

/// The complexity of a list whose length the caller does not choose (the
/// catalogue, an order's lines, a row per queue or backend, the days of a
/// range the resolver bounds): counted as one item, as async-graphql counts
/// any field, because multiplying by a guessed length would refuse
/// operations that the field budget (`budget`) and the limits admit today.
pub fn unpaged_complexity(child_complexity: usize) -> usize {
    child_complexity.saturating_add(1)
}

/// `first` checked against 1..=MAX_PAGE (default DEFAULT_PAGE).
pub fn page_size(first: Option<i32>) -> Result<i64, ApiError> {
    match first {
        None => Ok(i64::from(DEFAULT_PAGE)),
        Some(n) if (0..=MAX_PAGE).contains(&n) => Ok(i64::from(n)),
        Some(_) => Err(ApiError::bad_input("first", format!("first must be between 0 and {MAX_PAGE}"))),
    }
}

/// A page of a connection from the rows read for it: `limit + 1` were
/// asked for, the extra one only telling that a next page exists.
pub fn page<R, N: OutputType>(
    mut rows: Vec<R>,
    limit: i64,
    has_previous: bool,
    edge: impl FnMut(R) -> Edge<String, N, EmptyFields>,
) -> Connection<String, N> {
    let has_next = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let mut page = Connection::new(has_previous, has_next);
    page.edges.extend(rows.into_iter().map(edge));
    page
}

/// Cursors are opaque to clients: `kind:value`, base64url-encoded.
pub fn encode_cursor(kind: &str, value: impl std::fmt::Display) -> String {
    URL_SAFE_NO_PAD.encode(format!("{kind}:{value}"))
}

pub fn decode_cursor<T: std::str::FromStr>(kind: &str, cursor: Option<&str>) -> Result<Option<T>, ApiError> {
    let Some(cursor) = cursor else { return Ok(None) };
    let bad = || ApiError::bad_input("after", "after is not a cursor this list returned");
    let raw = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| bad())?;
    let raw = String::from_utf8(raw).map_err(|_| bad())?;
    let value = raw.strip_prefix(kind).and_then(|r| r.strip_prefix(':')).ok_or_else(bad)?;
    value.parse().map(Some).map_err(|_| bad())
}

/// The cursor of a row in a list ordered by creation time, then id.
pub fn encode_created_cursor(kind: &str, created_at: DateTime<Utc>, id: Uuid) -> String {
    encode_cursor(kind, format!("{}_{}", created_at.timestamp_micros(), id))
}

pub fn decode_created_cursor(
    kind: &str,
    after: Option<&str>,
) -> Result<Option<(DateTime<Utc>, Uuid)>, ApiError> {
    let Some(raw) = decode_cursor::<String>(kind, after)? else { return Ok(None) };
    let bad = || ApiError::bad_input("after", "after is not a cursor this list returned");
    let (micros, id) = raw.split_once('_').ok_or_else(bad)?;
    let at = micros.parse().ok().and_then(DateTime::<Utc>::from_timestamp_micros).ok_or_else(bad)?;
    Ok(Some((at, id.parse().map_err(|_| bad())?)))
}
