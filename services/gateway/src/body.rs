//! Reading a JSON body: the media type is checked first, a declared length
//! over the limit is refused before reading, and reading stops as soon as
//! the limit is passed.

use actix_web::HttpRequest;
use actix_web::web::{self, Bytes, BytesMut};
use futures::StreamExt;
use serde_json::Value;

use crate::error::ApiError;

/// Media types of `POST /v1/events`.
pub const SINGLE: &[&str] = &["application/json", "application/cloudevents+json"];
/// Media types of `POST /v1/events/batch`.
pub const BATCH: &[&str] = &["application/json", "application/cloudevents-batch+json"];
/// Plain JSON only.
pub const JSON: &[&str] = &["application/json"];

/// The media type without parameters, lowercase; `None` when absent.
fn media_type(request: &HttpRequest) -> Option<String> {
    let value = request.headers().get("content-type")?.to_str().unwrap_or("invalid");
    Some(value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase())
}

/// Checks the media type against `accepted` (a missing header counts as JSON).
pub fn check_media_type(request: &HttpRequest, accepted: &'static [&'static str]) -> Result<(), ApiError> {
    match media_type(request) {
        None => Ok(()),
        Some(media) if accepted.contains(&media.as_str()) => Ok(()),
        Some(media) => Err(ApiError::UnsupportedMediaType {
            got: media,
            expected: match accepted {
                [one] => one,
                _ if accepted == BATCH => "application/json or application/cloudevents-batch+json",
                _ => "application/json or application/cloudevents+json",
            },
        }),
    }
}

/// Reads at most `limit` bytes of body.
pub async fn read_limited(request: &HttpRequest, mut payload: web::Payload, limit: usize) -> Result<Bytes, ApiError> {
    let declared = request
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let mut body = BytesMut::with_capacity(declared.unwrap_or(4096).min(limit));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::BadRequest(format!("could not read the body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::PayloadTooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// A body as text: UTF-8, not empty.
pub fn text(body: &[u8]) -> Result<&str, ApiError> {
    let text = std::str::from_utf8(body).map_err(|_| ApiError::InvalidUtf8)?;
    if text.trim().is_empty() {
        return Err(ApiError::InvalidJson("the body is empty".to_owned()));
    }
    Ok(text)
}

/// Parses a body as UTF-8 JSON.
pub fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_str(text(body)?).map_err(|e| ApiError::InvalidJson(e.to_string()))
}

/// Media type check and bounded read: the raw body, to parse as the
/// caller needs ([`text`]).
pub async fn read(
    request: &HttpRequest,
    payload: web::Payload,
    limit: usize,
    accepted: &'static [&'static str],
) -> Result<Bytes, ApiError> {
    check_media_type(request, accepted)?;
    read_limited(request, payload, limit).await
}

/// Media type check, bounded read, UTF-8 and JSON: the raw body and its value.
pub async fn read_json(
    request: &HttpRequest,
    payload: web::Payload,
    limit: usize,
    accepted: &'static [&'static str],
) -> Result<(Bytes, Value), ApiError> {
    let body = read(request, payload, limit, accepted).await?;
    let value = parse_json(&body)?;
    Ok((body, value))
}
