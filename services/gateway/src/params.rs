//! Request parameters the handlers share: page sizes, event ids in paths,
//! typed JSON bodies.

use serde_json::Value;
use triggers_core::ids::EventId;

use crate::error::ApiError;

/// The page size of a listing: `limit`, 1-1000, 50 when absent.
pub fn page_limit(limit: Option<usize>) -> Result<usize, ApiError> {
    let limit = limit.unwrap_or(50);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::BadRequest("limit must be between 1 and 1000".to_owned()));
    }
    Ok(limit)
}

/// An event id from a path; one that does not parse is not found.
pub fn parse_event_id(text: &str) -> Result<EventId, ApiError> {
    text.parse().map_err(|_| ApiError::NotFound(format!("event {text}")))
}

/// A JSON body as `T`; serde's complaint names the field (422).
pub fn parse_body<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, ApiError> {
    serde_json::from_value(value).map_err(|e| {
        let message = e.to_string();
        let field = message
            .split('`')
            .nth(1)
            .filter(|_| message.starts_with("unknown field") || message.starts_with("missing field"))
            .unwrap_or("the body")
            .to_owned();
        ApiError::field(field, message)
    })
}
