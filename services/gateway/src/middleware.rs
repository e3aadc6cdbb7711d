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

/// Load shedding: at most `max` API requests of this replica in flight at
/// once; one more is answered 503 `overloaded` with `Retry-After` at once,
/// before its body is read, so an overload costs neither memory nor
/// latency for the requests already admitted. The operations routes
/// (`/healthz`, `/readyz`, `/metrics`, and `/health`) are never shed.
#[derive(Debug, Clone)]
pub struct Admission {
    permits: std::sync::Arc<tokio::sync::Semaphore>,
    max: usize,
}

impl Admission {
    /// Admits at most `max` requests at once.
    pub fn new(max: usize) -> Self {
        Self {
            permits: std::sync::Arc::new(tokio::sync::Semaphore::new(max)),
            max,
        }
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.max - self.permits.available_permits()
    }
}

/// Whether a path is an operations route, which is never shed.
pub fn is_operations(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics" | "/health")
}

/// Applies the [`Admission`] found in the app data (none: admits all).
pub async fn admission(
    request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<actix_web::body::BoxBody>, actix_web::Error> {
    let admission = request.app_data::<actix_web::web::Data<Admission>>().cloned();
    let Some(admission) = admission.filter(|_| !is_operations(request.path())) else {
        return Ok(next.call(request).await?.map_into_boxed_body());
    };
    match admission.permits.clone().try_acquire_owned() {
        Ok(permit) => {
            let response = next.call(request).await;
            drop(permit);
            Ok(response?.map_into_boxed_body())
        }
        Err(_) => {
            metrics::counter!("triggers_gateway_shed_total").increment(1);
            let refusal = crate::error::ApiError::Overloaded(admission.max);
            Ok(request.error_response(refusal).map_into_boxed_body())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use actix_web::{App, HttpResponse, test, web};
    use tokio::sync::Notify;

    use super::*;

    #[actix_web::test]
    async fn requests_beyond_the_limit_are_shed_at_once_and_operations_routes_never() {
        let (entered, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let slow = {
            let (entered, release) = (entered.clone(), release.clone());
            move || {
                let (entered, release) = (entered.clone(), release.clone());
                async move {
                    entered.notify_one();
                    release.notified().await;
                    HttpResponse::Ok().finish()
                }
            }
        };
        let app = test::init_service(
            App::new()
                .app_data(web::Data::new(Admission::new(1)))
                .wrap(actix_web::middleware::from_fn(admission))
                .wrap(actix_web::middleware::from_fn(request_context))
                .route("/slow", web::get().to(slow))
                .route("/healthz", web::get().to(|| async { HttpResponse::Ok().finish() })),
        )
        .await;
        let get = |uri: &str| test::TestRequest::get().uri(uri).to_request();
        let first = test::call_service(&app, get("/slow"));
        let meanwhile = async {
            entered.notified().await;
            let shed = test::call_service(&app, get("/slow")).await;
            assert_eq!(shed.status(), 503);
            assert_eq!(shed.headers().get("retry-after").map(|v| v.as_bytes()), Some(&b"1"[..]));
            assert!(shed.headers().contains_key("x-request-id"));
            let body: serde_json::Value = test::read_body_json(shed).await;
            assert_eq!(body["error"]["code"], "overloaded");
            let health = test::call_service(&app, get("/healthz")).await;
            assert_eq!(health.status(), 200, "operations routes are never shed");
            release.notify_one();
        };
        let (first, ()) = futures::join!(first, meanwhile);
        assert_eq!(first.status(), 200);
        // The permit came back with the first answer: the next one is served.
        release.notify_one();
        assert_eq!(test::call_service(&app, get("/slow")).await.status(), 200);
    }
}
