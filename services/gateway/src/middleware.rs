//! Around every request: an id (`x-request-id`, also in error bodies) and
//! request metrics by route, method and status.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use triggers_core::ids::RequestId;

tokio::task_local! {
    static REQUEST_ID: String;
}

/// The id of the request being handled, if any.
pub fn current_request_id() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok()
}

/// Assigns the request id (a sane incoming `x-request-id` is kept) and
/// records `triggers_http_requests_total` and
/// `triggers_http_request_duration_seconds`.
pub async fn request_context(
    request: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| RequestId::new().to_string());
    let start = Instant::now();
    let method = method_label(request.method()).to_owned();
    let route = request.match_pattern().unwrap_or_else(|| "unmatched".to_owned());
    let mut response = REQUEST_ID.scope(id.clone(), next.call(request)).await?;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response
            .headers_mut()
            .insert(HeaderName::from_static("x-request-id"), value);
    }
    let status = response.status().as_u16().to_string();
    let labels = [("route", route), ("method", method), ("status", status)];
    metrics::counter!("triggers_http_requests_total", &labels).increment(1);
    metrics::histogram!("triggers_http_request_duration_seconds", &labels).record(start.elapsed().as_secs_f64());
    Ok(response)
}

/// The `method` label: the standard methods by name, anything else `other`
/// (a client inventing method names must not grow the metric set).
fn method_label(method: &actix_web::http::Method) -> &'static str {
    use actix_web::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}
