//! The HTTP handlers of the gateway and the table of its routes.

use std::time::Instant;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, HttpResponseBuilder, web};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tracing::Instrument;
use triggers_core::event::now_ms;
use triggers_core::ids::{KeyId, TenantId};
use triggers_core::tenancy::{self, Tenant};
use ulid::Ulid;
use utoipa::ToSchema;

use crate::auth::{Admin, Caller};
use crate::body::{self, read_json};
use crate::error::{ApiError, ErrorBody, ErrorDetail};
use crate::idempotency::{self, Claim};
use crate::ingest::{EventInput, Fields, batch_items, event_from_fields, format_time};
use crate::ratelimit::Quota;
use crate::state::AppState;

type State = web::Data<AppState>;

macro_rules! api_routes {
    ($($method:ident $path:literal => $handler:path),* $(,)?) => {
        /// Every API route as (method, path), the same table actix serves.
        pub const ROUTES: &[(&str, &str)] = &[$((stringify!($method), $path)),*];

        /// Registers every API route.
        pub fn configure(cfg: &mut web::ServiceConfig) {
            $(cfg.route($path, web::$method().to($handler));)*
        }
    };
}

api_routes! {
    post "/v1/events" => ingest,
    post "/v1/events/batch" => ingest_batch,
    post "/events" => ingest_compat,
    post "/token" => token,
    get "/health" => health,
    post "/v1/admin/tenants" => create_tenant,
    get "/v1/admin/tenants/{tenant}" => get_tenant,
    post "/v1/admin/tenants/{tenant}/keys" => create_key,
    get "/v1/admin/tenants/{tenant}/keys" => list_keys,
    delete "/v1/admin/tenants/{tenant}/keys/{key_id}" => revoke_key,
    get "/v1/events" => crate::events::list,
    get "/v1/events/{id}" => crate::events::get,
    delete "/v1/events/{id}" => crate::events::delete,
    post "/v1/events/{id}/replay" => crate::redelivery::replay,
    get "/v1/dlq" => crate::redelivery::list,
    post "/v1/dlq/redrive" => crate::redelivery::redrive,
    get "/v1/inbox" => crate::events::inbox,
    post "/v1/inbox/{id}/ack" => crate::events::ack,
    post "/v1/inbox/ack" => crate::events::ack_many,
    get "/inbox" => crate::events::inbox_compat,
    post "/inbox/{id}/ack" => crate::events::ack_compat,
    delete "/v1/admin/tenants/{tenant}" => erase_tenant,
    post "/v1/subscriptions" => crate::subscriptions::create,
    get "/v1/subscriptions" => crate::subscriptions::list,
    get "/v1/subscriptions/{id}" => crate::subscriptions::get,
    patch "/v1/subscriptions/{id}" => crate::subscriptions::patch,
    delete "/v1/subscriptions/{id}" => crate::subscriptions::delete,
    post "/v1/subscriptions/{id}/rotate-secret" => crate::subscriptions::rotate_secret,
    post "/v1/subscriptions/{id}/test-match" => crate::subscriptions::test_match,
    get "/v1/analytics" => crate::analytics::report,
    get "/v1/stream" => crate::live::stream,
}

/// The answer to an accepted event.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Accepted {
    /// The event id (`evt_…`).
    pub id: String,
    /// Always `accepted`.
    pub status: String,
    /// When Triggers accepted it (RFC 3339).
    pub received_at: String,
}

/// A batch of events.
#[derive(Debug, Deserialize, ToSchema)]
#[allow(dead_code)] // Documents the body.
pub struct EventBatch {
    /// 1 to 500 events (`gateway.max_batch_events`; a bare JSON array is
    /// accepted too).
    #[schema(min_items = 1, max_items = 500)]
    pub events: Vec<EventInput>,
}

/// The result of one batch entry.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BatchResult {
    /// Its position in the request.
    pub index: usize,
    /// The event id, when accepted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Why it was refused, otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub error: Option<serde_json::Value>,
}

/// The answer to a batch.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BatchAccepted {
    /// One result per input, in order.
    pub results: Vec<BatchResult>,
    /// How many were accepted.
    pub accepted: usize,
    /// How many were refused.
    pub rejected: usize,
}

fn header<'a>(request: &'a HttpRequest, name: &str) -> Option<&'a str> {
    request.headers().get(name).and_then(|v| v.to_str().ok())
}

fn with_quota(mut builder: HttpResponseBuilder, quota: &Quota) -> HttpResponseBuilder {
    builder
        .insert_header(("ratelimit-limit", quota.limit.to_string()))
        .insert_header(("ratelimit-remaining", quota.remaining.to_string()))
        .insert_header(("ratelimit-reset", quota.reset.to_string()));
    builder
}

fn acquire(state: &AppState, caller: &Caller, events: u32) -> Result<Quota, ApiError> {
    state
        .limiter
        .acquire(caller.tenant, caller.rate_limit, events, Instant::now())
        .map_err(|exceeded| {
            metrics::counter!("triggers_gateway_events_rejected_total", "reason" => "rate_limited")
                .increment(u64::from(events));
            ApiError::RateLimited {
                limit: exceeded.quota.limit,
                reset: exceeded.quota.reset,
                retry_after: exceeded.retry_after,
            }
        })
}

fn replay(status: u16, body: String, quota: &Quota) -> HttpResponse {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::ACCEPTED);
    with_quota(HttpResponse::build(status), quota)
        .insert_header(("idempotent-replayed", "true"))
        .content_type("application/json")
        .body(body)
}

/// Runs `produce` under the request's `Idempotency-Key`, if it has one.
/// `produce` gets the seed of the request's event ids when it has a key
/// ([`idempotency::event_id`]): a retry of the request makes the same events.
///
/// An owned claim's produce runs detached from the request: a client that
/// hangs up mid-produce (its record may still reach Kafka) cannot leave the
/// claim pending; it is completed or released all the same.
async fn idempotent<F, Fut>(
    state: &State,
    request: &HttpRequest,
    caller: &Caller,
    body: &[u8],
    quota: &Quota,
    produce: F,
) -> Result<HttpResponse, ApiError>
where
    F: FnOnce(Option<Ulid>) -> Fut + 'static,
    Fut: std::future::Future<Output = Result<(StatusCode, String), ApiError>> + 'static,
{
    let Some(key) = header(request, "idempotency-key") else {
        let (status, body) = produce(None).await?;
        return Ok(with_quota(HttpResponse::build(status), quota)
            .content_type("application/json")
            .body(body));
    };
    idempotency::validate_key(key)?;
    let hash = idempotency::body_hash(body);
    match state.idempotency.claim(&caller.tenant, key, &hash).await? {
        Claim::Replay { status, body } => {
            metrics::counter!("triggers_gateway_idempotent_replays_total").increment(1);
            Ok(replay(status, body, quota))
        }
        Claim::Owned { seed } => {
            let (state, tenant, key) = (state.clone(), caller.tenant, key.to_owned());
            let owned = actix_web::rt::spawn(
                async move {
                    match produce(Some(seed)).await {
                        Ok((status, body)) => {
                            // The event is in Kafka: answer so even if the answer cannot
                            // be stored (a retry then waits for the claim to go stale).
                            if let Err(e) = state.idempotency.complete(&tenant, &key, status.as_u16(), &body).await {
                                tracing::warn!(error = %e, "cannot store an idempotent answer");
                            }
                            Ok((status, body))
                        }
                        Err(e) => {
                            state.idempotency.release(&tenant, &key).await;
                            Err(e)
                        }
                    }
                }
                .instrument(tracing::Span::current()),
            );
            let (status, body) = owned
                .await
                .map_err(|e| ApiError::Unavailable(format!("the request's work failed: {e}")))??;
            Ok(with_quota(HttpResponse::build(status), quota)
                .content_type("application/json")
                .body(body))
        }
    }
}

fn elapsed_ms(started: Instant) -> i64 {
    i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX)
}

fn accepted_counter(n: usize) {
    metrics::counter!("triggers_gateway_events_accepted_total").increment(n as u64);
}

fn invalid_counter(n: usize) {
    metrics::counter!("triggers_gateway_events_rejected_total", "reason" => "invalid").increment(n as u64);
}

/// Ingest one event.
///
/// Answers 202 only after Kafka acknowledged the write; 503 with
/// `Retry-After` when Kafka cannot take it in time.
#[utoipa::path(
    post, path = "/v1/events", tag = "events",
    request_body(content = EventInput, content_type = "application/json"),
    params(("Idempotency-Key" = Option<String>, Header, description = "Same key and body within 24 h returns the original id")),
    responses(
        (status = 202, description = "In Kafka", body = Accepted),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 429, body = ErrorBody), (status = 503, body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn ingest(request: HttpRequest, payload: web::Payload, state: State) -> Result<HttpResponse, ApiError> {
    let span = server_span(&request, "/v1/events");
    ingest_one(request, payload, state).instrument(span).await
}

/// The server span of an ingest request (OpenTelemetry HTTP conventions),
/// the child of the client's `traceparent` if it sent one.
fn server_span(request: &HttpRequest, route: &'static str) -> tracing::Span {
    let span = tracing::debug_span!(
        "request",
        otel.name = %format!("POST {route}"),
        otel.kind = "server",
        http.request.method = "POST",
        http.route = route,
        triggers.service = "gateway",
    );
    triggers_core::kafka::trace_headers::extract_from(
        header(request, "traceparent"),
        header(request, "tracestate"),
        &span,
    );
    span
}

async fn ingest_one(request: HttpRequest, payload: web::Payload, state: State) -> Result<HttpResponse, ApiError> {
    let started = Instant::now();
    let caller = crate::extract::caller_of(&state, &request).await?;
    let body = body::read(&request, payload, state.config.max_body_bytes, body::SINGLE).await?;
    let fields = Fields::parse(body::text(&body)?, "")?;
    let received_at = now_ms();
    let assigned = fields.assigns_id();
    let mut event = event_from_fields(fields, caller.tenant, received_at, "").inspect_err(|_| invalid_counter(1))?;
    let quota = acquire(&state, &caller, 1)?;
    let traceparent = header(&request, "traceparent").map(str::to_owned);
    let sink = state.clone();
    idempotent(&state, &request, &caller, &body, &quota, move |seed| async move {
        if let Some(seed) = seed.filter(|_| assigned) {
            event.id = idempotency::event_id(seed, 0);
        }
        sink.sink.send(&event, traceparent.as_deref()).await?;
        accepted_counter(1);
        sink.tally.ingested_in(&event.tenant, &event.id, elapsed_ms(started));
        let answer = Accepted {
            id: event.id.to_string(),
            status: "accepted".to_owned(),
            received_at: format_time(received_at),
        };
        Ok((StatusCode::ACCEPTED, json!(answer).to_string()))
    })
    .await
}

/// Ingest one event (the first client guide's route; same as `/v1/events`).
#[utoipa::path(
    post, path = "/events", tag = "compatibility",
    request_body(content = EventInput, content_type = "application/json"),
    responses((status = 202, body = Accepted), (status = 401, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("api_key" = []))
)]
pub async fn ingest_compat(
    request: HttpRequest,
    payload: web::Payload,
    state: State,
) -> Result<HttpResponse, ApiError> {
    ingest(request, payload, state).await
}

/// Ingest up to 500 events; one result per input, in order.
#[utoipa::path(
    post, path = "/v1/events/batch", tag = "events",
    request_body(content = EventBatch, content_type = "application/json"),
    params(("Idempotency-Key" = Option<String>, Header, description = "Covers the whole batch")),
    responses(
        (status = 202, description = "Per-event results", body = BatchAccepted),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 409, description = "The Idempotency-Key was used with another batch, or that batch is in flight", body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 422, body = ErrorBody), (status = 429, body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn ingest_batch(request: HttpRequest, payload: web::Payload, state: State) -> Result<HttpResponse, ApiError> {
    let span = server_span(&request, "/v1/events/batch");
    ingest_many(request, payload, state).instrument(span).await
}

async fn ingest_many(request: HttpRequest, payload: web::Payload, state: State) -> Result<HttpResponse, ApiError> {
    let started = Instant::now();
    let caller = crate::extract::caller_of(&state, &request).await?;
    let body = body::read(&request, payload, state.config.max_body_bytes, body::BATCH).await?;
    let items = batch_items(body::text(&body)?, state.config.max_batch_events)?;
    let received_at = now_ms();
    let fields: Vec<(Result<Fields, ApiError>, String)> = items
        .iter()
        .enumerate()
        .map(|(index, item)| {
            let path = format!("events[{index}].");
            (Fields::parse(item.get(), &path), path)
        })
        .collect();
    drop(items);
    let assigned: Vec<bool> = fields
        .iter()
        .map(|(item, _)| item.as_ref().is_ok_and(Fields::assigns_id))
        .collect();
    let mut parsed: Vec<Result<triggers_core::event::Event, ApiError>> = fields
        .into_iter()
        .map(|(item, path)| item.and_then(|item| event_from_fields(item, caller.tenant, received_at, &path)))
        .collect();
    let valid = parsed.iter().filter(|r| r.is_ok()).count();
    invalid_counter(parsed.len() - valid);
    let quota = acquire(&state, &caller, u32::try_from(valid.max(1)).unwrap_or(u32::MAX))?;
    let traceparent = header(&request, "traceparent").map(str::to_owned);
    let sink = state.clone();
    idempotent(&state, &request, &caller, &body, &quota, move |seed| async move {
        if let Some(seed) = seed {
            for (index, (event, assigned)) in parsed.iter_mut().zip(assigned).enumerate() {
                if let (Ok(event), true) = (event, assigned) {
                    event.id = idempotency::event_id(seed, index);
                }
            }
        }
        let state = &sink;
        let sends = parsed.iter().map(|result| {
            let traceparent = traceparent.as_deref();
            async move {
                match result {
                    Ok(event) => state.sink.send(event, traceparent).await.map(|()| event.id.to_string()),
                    Err(e) => Err(ApiError::field(String::new(), e.to_string())),
                }
            }
        });
        let sent = futures::future::join_all(sends).await;
        let answered_in = elapsed_ms(started);
        for (outcome, input) in sent.iter().zip(&parsed) {
            if let (Ok(_), Ok(event)) = (outcome, input) {
                state.tally.ingested_in(&event.tenant, &event.id, answered_in);
            }
        }
        let mut results = Vec::with_capacity(sent.len());
        let (mut ok, mut unavailable) = (0, 0);
        for (index, (outcome, input)) in sent.into_iter().zip(&parsed).enumerate() {
            let error = match (outcome, input) {
                (Ok(id), _) => {
                    ok += 1;
                    results.push(BatchResult {
                        index,
                        id: Some(id),
                        error: None,
                    });
                    continue;
                }
                (Err(_), Err(invalid)) => invalid.detail(None),
                (Err(send), Ok(_)) => {
                    unavailable += 1;
                    send.detail(None)
                }
            };
            results.push(BatchResult {
                index,
                id: None,
                error: Some(json!(ErrorDetail {
                    request_id: None,
                    ..error
                })),
            });
        }
        if ok == 0 && unavailable > 0 {
            return Err(ApiError::Unavailable(
                "Kafka did not acknowledge the batch in time".to_owned(),
            ));
        }
        accepted_counter(ok);
        let answer = BatchAccepted {
            accepted: ok,
            rejected: results.len() - ok,
            results,
        };
        Ok((StatusCode::ACCEPTED, json!(answer).to_string()))
    })
    .await
}

/// The form of `POST /token`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct TokenForm {
    /// Any name (kept for the first client guide's code).
    #[serde(default)]
    pub username: Option<String>,
    /// An API key (`tk_…`).
    pub password: String,
}

/// A token.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenResponse {
    /// An HS256 JWT, accepted wherever an API key is.
    pub access_token: String,
    /// Always `bearer`.
    pub token_type: String,
    /// Seconds until it expires.
    pub expires_in: u64,
}

/// Exchange an API key for a 24 h JWT.
#[utoipa::path(
    post, path = "/token", tag = "auth",
    request_body(content = TokenForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, body = TokenResponse), (status = 401, body = ErrorBody), (status = 415, body = ErrorBody))
)]
pub async fn token(request: HttpRequest, payload: web::Payload, state: State) -> Result<HttpResponse, ApiError> {
    let media = header(&request, "content-type")
        .map(|v| v.split(';').next().unwrap_or_default().trim().to_ascii_lowercase())
        .unwrap_or_default();
    let body = body::read_limited(&request, payload, 16 * 1024).await?;
    let form: TokenForm = match media.as_str() {
        "application/x-www-form-urlencoded" | "multipart/form-data" | "" => serde_urlencoded::from_bytes(&body)
            .map_err(|e| ApiError::BadRequest(format!("expected form fields username and password: {e}")))?,
        "application/json" => serde_json::from_slice(&body).map_err(|e| ApiError::InvalidJson(e.to_string()))?,
        other => {
            return Err(ApiError::UnsupportedMediaType {
                got: other.to_owned(),
                expected: "application/x-www-form-urlencoded",
            });
        }
    };
    let client = crate::auth::client_address(&request, state.config.trust_forwarded_for);
    let caller = state.auth.by_api_key(form.password.trim(), client).await?;
    let ttl = state.config.token_ttl;
    let access_token = state.auth.issue(&caller, ttl)?;
    Ok(HttpResponse::Ok()
        .insert_header(("cache-control", "no-store"))
        .json(TokenResponse {
            access_token,
            token_type: "bearer".to_owned(),
            expires_in: ttl.as_secs(),
        }))
}

/// Alive (the first client guide's health route).
#[utoipa::path(get, path = "/health", tag = "compatibility", responses((status = 200, description = "Alive")))]
pub async fn health() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// A new tenant.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantInput {
    /// Display name (1-200 characters, not only white space; stored
    /// trimmed).
    #[schema(min_length = 1, max_length = 200, pattern = "\\S")]
    pub name: String,
    /// Events per second (1-1000000), instead of the deployment's default.
    #[schema(minimum = 1, maximum = 1000000)]
    #[serde(default, deserialize_with = "crate::params::optional_integer")]
    pub rate_limit: Option<u32>,
    /// Days events are kept (1-3650), instead of the deployment's default.
    #[schema(minimum = 1, maximum = 3650)]
    #[serde(default, deserialize_with = "crate::params::optional_integer")]
    pub retention_days: Option<u32>,
}

/// A tenant.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TenantView {
    /// `ten_…`.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Its own rate limit, if any.
    pub rate_limit: Option<u32>,
    /// Its own retention, if any.
    pub retention_days: Option<u32>,
    /// RFC 3339.
    pub created_at: String,
}

impl From<Tenant> for TenantView {
    fn from(t: Tenant) -> Self {
        Self {
            id: t.id.to_string(),
            name: t.name,
            rate_limit: t.rate_limit,
            retention_days: t.retention_days,
            created_at: format_time(t.created_at),
        }
    }
}

fn store_error(e: tenancy::StoreError) -> ApiError {
    tracing::warn!(error = %e, "tenant store failed");
    ApiError::Unavailable("the tenant store is unavailable".to_owned())
}

/// Create a tenant (admin).
#[utoipa::path(
    post, path = "/v1/admin/tenants", tag = "admin",
    request_body = TenantInput,
    responses((status = 201, body = TenantView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("admin_token" = []))
)]
pub async fn create_tenant(
    _admin: Admin,
    request: HttpRequest,
    payload: web::Payload,
    state: State,
) -> Result<HttpResponse, ApiError> {
    let (_, value) = read_json(&request, payload, 64 * 1024, body::JSON).await?;
    let input: TenantInput = serde_json::from_value(value).map_err(|e| ApiError::field("the body", e.to_string()))?;
    let name = input.name.trim();
    if name.is_empty() || input.name.chars().count() > 200 {
        return Err(ApiError::field("name", "must be 1-200 characters"));
    }
    if input.rate_limit.is_some_and(|r| !(1..=1_000_000).contains(&r)) {
        return Err(ApiError::field("rate_limit", "must be between 1 and 1000000"));
    }
    if input.retention_days.is_some_and(|d| !(1..=3650).contains(&d)) {
        return Err(ApiError::field("retention_days", "must be between 1 and 3650"));
    }
    let tenant = Tenant {
        id: TenantId::new(),
        name: name.to_owned(),
        created_at: now_ms(),
        rate_limit: input.rate_limit,
        retention_days: input.retention_days,
    };
    tenancy::put_tenant(&state.dynamo, &state.tables, &tenant)
        .await
        .map_err(store_error)?;
    Ok(HttpResponse::Created().json(TenantView::from(tenant)))
}

fn tenant_path(text: &str) -> Result<TenantId, ApiError> {
    text.parse().map_err(|_| ApiError::NotFound(format!("tenant {text}")))
}

async fn existing_tenant(state: &AppState, text: &str) -> Result<Tenant, ApiError> {
    let id = tenant_path(text)?;
    tenancy::get_tenant(&state.dynamo, &state.tables, &id)
        .await
        .map_err(store_error)?
        .ok_or_else(|| ApiError::NotFound(format!("tenant {text}")))
}

/// Read a tenant (admin).
#[utoipa::path(
    get, path = "/v1/admin/tenants/{tenant}", tag = "admin",
    params(("tenant" = String, Path, description = "ten_…")),
    responses((status = 200, body = TenantView), (status = 404, body = ErrorBody)),
    security(("admin_token" = []))
)]
pub async fn get_tenant(_admin: Admin, path: web::Path<String>, state: State) -> Result<HttpResponse, ApiError> {
    let tenant = existing_tenant(&state, &path).await?;
    Ok(HttpResponse::Ok().json(TenantView::from(tenant)))
}

/// A new API key, shown once.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct KeyCreated {
    /// `key_…`, for listing and revoking.
    pub id: String,
    /// `tk_…`: store it now, it is not shown again.
    pub key: String,
}

/// An API key as listed.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct KeyView {
    /// `key_…`.
    pub id: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339, when revoked.
    pub revoked_at: Option<String>,
}

/// Create an API key for a tenant (admin). A tenant may hold several.
#[utoipa::path(
    post, path = "/v1/admin/tenants/{tenant}/keys", tag = "admin",
    params(("tenant" = String, Path, description = "ten_…")),
    responses((status = 201, body = KeyCreated), (status = 404, body = ErrorBody)),
    security(("admin_token" = []))
)]
pub async fn create_key(_admin: Admin, path: web::Path<String>, state: State) -> Result<HttpResponse, ApiError> {
    let tenant = existing_tenant(&state, &path).await?;
    let key = tenancy::create_api_key(&state.dynamo, &state.tables, &tenant.id)
        .await
        .map_err(store_error)?;
    Ok(HttpResponse::Created()
        .insert_header(("cache-control", "no-store"))
        .json(KeyCreated {
            id: key.id.to_string(),
            key: key.key,
        }))
}

/// List a tenant's API keys (admin).
#[utoipa::path(
    get, path = "/v1/admin/tenants/{tenant}/keys", tag = "admin",
    params(("tenant" = String, Path, description = "ten_…")),
    responses((status = 200, body = [KeyView]), (status = 404, body = ErrorBody)),
    security(("admin_token" = []))
)]
pub async fn list_keys(_admin: Admin, path: web::Path<String>, state: State) -> Result<HttpResponse, ApiError> {
    let tenant = existing_tenant(&state, &path).await?;
    let keys = tenancy::list_api_keys(&state.dynamo, &state.tables, &tenant.id)
        .await
        .map_err(store_error)?;
    let data: Vec<KeyView> = keys
        .into_iter()
        .map(|k| KeyView {
            id: k.id.to_string(),
            created_at: format_time(k.created_at),
            revoked_at: k.revoked_at.map(format_time),
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({"data": data, "next_cursor": null})))
}

/// Revoke an API key (admin); effective everywhere within twice `auth_cache_ttl` (4 s by default).
#[utoipa::path(
    delete, path = "/v1/admin/tenants/{tenant}/keys/{key_id}", tag = "admin",
    params(("tenant" = String, Path, description = "ten_…"), ("key_id" = String, Path, description = "key_…")),
    responses((status = 204, description = "Revoked"), (status = 404, body = ErrorBody)),
    security(("admin_token" = []))
)]
pub async fn revoke_key(
    _admin: Admin,
    path: web::Path<(String, String)>,
    state: State,
) -> Result<HttpResponse, ApiError> {
    let (tenant, key) = path.into_inner();
    let tenant = tenant_path(&tenant)?;
    let key_id: KeyId = key.parse().map_err(|_| ApiError::NotFound(format!("key {key}")))?;
    let revoked = tenancy::revoke_api_key(&state.dynamo, &state.tables, &tenant, &key_id)
        .await
        .map_err(store_error)?;
    if !revoked {
        return Err(ApiError::NotFound(format!("key {key}")));
    }
    // This replica forgets at once; the others within twice auth_cache_ttl.
    state.auth.forget(None);
    Ok(HttpResponse::NoContent().finish())
}

/// Erase a tenant (admin): its keys, subscriptions, events, attempts and
/// idempotency records. Its events are gone from every API at once.
#[utoipa::path(
    delete, path = "/v1/admin/tenants/{tenant}", tag = "admin",
    params(("tenant" = String, Path, description = "ten_…")),
    responses((status = 204, description = "Erased"), (status = 404, body = ErrorBody)),
    security(("admin_token" = []))
)]
pub async fn erase_tenant(_admin: Admin, path: web::Path<String>, state: State) -> Result<HttpResponse, ApiError> {
    let tenant = existing_tenant(&state, &path).await?;
    // The tenant goes first: from now on its keys do not authenticate and
    // consumers drop its records.
    tenancy::erase_tenant(&state.dynamo, &state.tables, &tenant.id)
        .await
        .map_err(store_error)?;
    let mut cursor = None;
    loop {
        let (page, next) =
            triggers_core::subscription::list(&state.dynamo, &state.tables, &tenant.id, 100, cursor.as_deref())
                .await
                .map_err(|e| ApiError::Unavailable(e.to_string()))?;
        for subscription in page {
            let deleted =
                triggers_core::subscription::delete(&state.dynamo, &state.tables, &tenant.id, &subscription.id)
                    .await
                    .map_err(|e| ApiError::Unavailable(e.to_string()))?;
            if let Some(pending) = deleted {
                let topic = state.subscriptions.topic();
                triggers_core::subscription::outbox::announce_or_defer(
                    &state.dynamo,
                    &state.tables,
                    topic,
                    None,
                    &pending,
                )
                .await;
            }
        }
        match next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    let events = triggers_core::eventstore::delete_prefix(&state.dynamo, &state.tables.events, &tenant.id, "")
        .await
        .map_err(store_error)?;
    let attempts = triggers_core::eventstore::delete_prefix(&state.dynamo, &state.tables.attempts, &tenant.id, "")
        .await
        .map_err(store_error)?;
    state.auth.forget(None);
    tracing::info!(tenant = %tenant.id, events, attempts, "tenant erased");
    Ok(HttpResponse::NoContent().finish())
}
