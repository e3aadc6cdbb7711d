//! Every error the API answers, mapped in one place to the shape of
//! `shared/API.md`: `{"error": {"code", "message", "request_id"}}`.
//! The catalog with causes and fixes is `docs/errors.md`; a test keeps the two
//! in step.

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

/// An error answered to a client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the body is not JSON.
    #[error("the body is not valid JSON: {0}")]
    InvalidJson(String),
    /// 400: the body is not UTF-8.
    #[error("the body is not valid UTF-8")]
    InvalidUtf8,
    /// 400: a header or query parameter is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// 401: no usable credentials.
    #[error("missing or invalid credentials: {0}")]
    Unauthorized(&'static str),
    /// 403: the credentials may not do this.
    #[error("{0}")]
    Forbidden(&'static str),
    /// 404: no such resource (or not this tenant's).
    #[error("{0} not found")]
    NotFound(String),
    /// 404: no such route.
    #[error("no route for {method} {path}")]
    NoRoute {
        /// The request method.
        method: String,
        /// The request path.
        path: String,
    },
    /// 405: the path exists, the method does not.
    #[error("{method} is not allowed on {path}; use {allow}")]
    MethodNotAllowed {
        /// The request method.
        method: String,
        /// The request path.
        path: String,
        /// The methods the path answers, for the `Allow` header.
        allow: String,
    },
    /// 409: the idempotency key was used with another body.
    #[error("Idempotency-Key `{0}` was already used with a different request body")]
    IdempotencyConflict(String),
    /// 409: a request with the same idempotency key is still in flight.
    #[error("a request with Idempotency-Key `{0}` is still being processed; retry shortly")]
    IdempotencyInProgress(String),
    /// 413: the body is over the limit.
    #[error("the body is larger than {limit} bytes")]
    PayloadTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// 415: the media type is not accepted.
    #[error("content type `{got}` is not accepted; use {expected}")]
    UnsupportedMediaType {
        /// What the request said.
        got: String,
        /// What the route accepts.
        expected: &'static str,
    },
    /// 422: a field is missing or malformed.
    #[error("`{field}` {message}")]
    InvalidField {
        /// The JSON path of the field (`type`, `events[3].source`).
        field: String,
        /// What is wrong.
        message: String,
    },
    /// 429: over the tenant's rate limit.
    #[error("rate limit of {limit} events/s exceeded; retry after {retry_after:?}")]
    RateLimited {
        /// Events per second.
        limit: u32,
        /// Seconds until the bucket is full.
        reset: u64,
        /// When enough capacity is back.
        retry_after: Duration,
    },
    /// 409: the resource kept changing concurrently.
    #[error("{0}")]
    Conflict(String),
    /// 409: a per-tenant limit is reached.
    #[error("{0}")]
    LimitExceeded(String),
    /// 429: too many failed authentications from this client address.
    #[error("too many failed authentications from this address; retry after {retry_after:?}")]
    AuthThrottled {
        /// When lookups resume.
        retry_after: Duration,
    },
    /// 503: Kafka did not take the event in time, or a dependency is down.
    #[error("{0}; retry later")]
    Unavailable(String),
    /// 503: this replica already handles `gateway.max_in_flight` requests;
    /// it sheds more at once instead of queueing them.
    #[error("the gateway is at capacity ({0} requests in flight); retry later")]
    Overloaded(usize),
}

/// The JSON body of an error.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// One error.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Machine-readable code; see `docs/errors.md`.
    pub code: &'static str,
    /// What went wrong and how to fix it.
    pub message: String,
    /// The request's id, also in the `x-request-id` header.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// For 422: the offending field.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// Every error code, for the catalog test.
pub const CODES: &[&str] = &[
    "invalid_json",
    "invalid_utf8",
    "bad_request",
    "unauthorized",
    "forbidden",
    "not_found",
    "method_not_allowed",
    "idempotency_key_reused",
    "idempotency_in_progress",
    "limit_exceeded",
    "conflict",
    "payload_too_large",
    "unsupported_media_type",
    "invalid_field",
    "rate_limited",
    "unavailable",
    "overloaded",
];

impl ApiError {
    /// The machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidJson(_) => "invalid_json",
            Self::InvalidUtf8 => "invalid_utf8",
            Self::BadRequest(_) => "bad_request",
            Self::Unauthorized(_) => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::NotFound(_) | Self::NoRoute { .. } => "not_found",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::IdempotencyConflict(_) => "idempotency_key_reused",
            Self::LimitExceeded(_) => "limit_exceeded",
            Self::Conflict(_) => "conflict",
            Self::IdempotencyInProgress(_) => "idempotency_in_progress",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::UnsupportedMediaType { .. } => "unsupported_media_type",
            Self::InvalidField { .. } => "invalid_field",
            Self::RateLimited { .. } | Self::AuthThrottled { .. } => "rate_limited",
            Self::Unavailable(_) => "unavailable",
            Self::Overloaded(_) => "overloaded",
        }
    }

    /// A 422 for `field`.
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::InvalidField {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The detail object, as it appears in error bodies and batch results.
    pub fn detail(&self, request_id: Option<String>) -> ErrorDetail {
        ErrorDetail {
            code: self.code(),
            message: self.to_string(),
            request_id,
            field: match self {
                Self::InvalidField { field, .. } => Some(field.clone()),
                _ => None,
            },
        }
    }

    fn retry_after(&self) -> Option<u64> {
        match self {
            Self::RateLimited { retry_after, .. } | Self::AuthThrottled { retry_after } => {
                Some(retry_after.as_secs_f64().ceil().max(1.0) as u64)
            }
            Self::Unavailable(_) | Self::Overloaded(_) | Self::IdempotencyInProgress(_) | Self::Conflict(_) => Some(1),
            _ => None,
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::InvalidJson(_) | Self::InvalidUtf8 | Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) | Self::NoRoute { .. } => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::IdempotencyConflict(_)
            | Self::IdempotencyInProgress(_)
            | Self::LimitExceeded(_)
            | Self::Conflict(_) => StatusCode::CONFLICT,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::InvalidField { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::RateLimited { .. } | Self::AuthThrottled { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) | Self::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        if let Some(seconds) = self.retry_after() {
            response.insert_header(("retry-after", seconds.to_string()));
        }
        if matches!(self, Self::Unauthorized(_)) {
            response.insert_header(("www-authenticate", "Bearer"));
        }
        if let Self::MethodNotAllowed { allow, .. } = self {
            response.insert_header(("allow", allow.as_str()));
        }
        if let Self::RateLimited { limit, reset, .. } = self {
            response
                .insert_header(("ratelimit-limit", limit.to_string()))
                .insert_header(("ratelimit-remaining", "0"))
                .insert_header(("ratelimit-reset", reset.to_string()));
        }
        // Shed load is counted (`triggers_gateway_shed_total`), not logged:
        // a log line per refusal would add to the overload.
        if self.status_code().is_server_error() && !matches!(self, Self::Overloaded(_)) {
            tracing::warn!(error = %self, "request failed");
        }
        response.json(ErrorBody {
            error: self.detail(crate::middleware::current_request_id()),
        })
    }
}

/// The answer when the event store fails: 503, the cause in the log.
pub fn event_store_error(e: triggers_core::tenancy::StoreError) -> ApiError {
    tracing::warn!(error = %e, "event store failed");
    ApiError::Unavailable("the event store is unavailable".to_owned())
}

/// The answer when an event listing fails: a bad cursor is the caller's.
pub fn event_list_error(e: triggers_core::eventstore::ListError) -> ApiError {
    match e {
        triggers_core::eventstore::ListError::BadCursor => ApiError::BadRequest("invalid cursor".to_owned()),
        triggers_core::eventstore::ListError::Store(e) => event_store_error(e),
    }
}

/// The answer when the subscription store fails.
pub fn subscription_store_error(e: triggers_core::subscription::SubscriptionStoreError) -> ApiError {
    use triggers_core::subscription::SubscriptionStoreError;
    match e {
        SubscriptionStoreError::BadCursor => ApiError::BadRequest("invalid cursor".to_owned()),
        SubscriptionStoreError::Conflict(id) => {
            ApiError::Conflict(format!("subscription {id} was changed concurrently; retry"))
        }
        other => {
            tracing::warn!(error = %other, "subscription store failed");
            ApiError::Unavailable("the subscription store is unavailable".to_owned())
        }
    }
}
