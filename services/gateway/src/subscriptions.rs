//! The subscriptions API: create, list, read, change, delete, rotate the
//! secret, and test whether an event would match. DynamoDB is the source of
//! truth; every change is then published to the compacted topic
//! `<ns>.subscriptions` (a tombstone on delete), which the router and the
//! deliverer follow. The answer waits for both.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use triggers_core::event::now_ms;
use triggers_core::ids::SubscriptionId;
use triggers_core::matching::{Filter, TypePattern};
use triggers_core::subscription::{self, BatchSettings, SigningSecret, Subscription, SubscriptionStatus};
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::body::{self, read_json};
use crate::error::{ApiError, ErrorBody, subscription_store_error};
use crate::ingest::{event_from_json, format_time};
use crate::params::{Patch, page_limit, parse_body};
use crate::state::AppState;

type State = web::Data<AppState>;

/// How long a rotated-out secret keeps signing.
const ROTATION_OVERLAP_MS: i64 = 24 * 3_600 * 1_000;

/// Batched delivery.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchInput {
    /// 1-1000 events per webhook.
    #[schema(minimum = 1, maximum = 1000)]
    #[serde(deserialize_with = "crate::params::integer")]
    pub max_events: i32,
    /// Send a partial batch after this many milliseconds (0-60000).
    #[schema(minimum = 0, maximum = 60000)]
    #[serde(deserialize_with = "crate::params::integer")]
    pub max_wait_ms: i32,
}

/// The most events per batched webhook.
const BATCH_EVENTS_MAX: i32 = 1000;
/// The longest a partial batch waits (ms).
const BATCH_WAIT_MAX: i32 = 60_000;
/// The longest target URL.
const URL_MAX: usize = 2048;
/// The most event type patterns of a subscription.
const TYPES_MAX: usize = 50;
/// The longest description (characters).
const DESCRIPTION_MAX: usize = 500;

/// A new subscription.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionInput {
    /// Where webhooks go: an absolute http(s) URL.
    #[schema(format = "uri", max_length = 2048)]
    pub target_url: String,
    /// 1-50 patterns: exact types, `prefix.*` or `*`.
    #[schema(min_items = 1, max_items = 50)]
    pub event_types: Vec<String>,
    /// A content filter (see the filter language in the README).
    #[schema(value_type = Option<FilterSchema>)]
    pub filter: Option<Value>,
    /// Batched delivery.
    pub batch: Option<BatchInput>,
    /// Deliver in order (FIFO), one at a time: a failed attempt is retried
    /// before any later event goes out. Not with `batch`.
    #[serde(default)]
    pub ordered: bool,
    /// Free text, at most 500 characters.
    #[schema(max_length = 500)]
    pub description: Option<String>,
}

/// A change to a subscription; absent fields stay as they are, `null`
/// clears `filter`, `batch` and `description`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionPatch {
    /// Where webhooks go.
    #[schema(format = "uri", max_length = 2048)]
    pub target_url: Option<String>,
    /// Patterns.
    #[schema(min_items = 1, max_items = 50)]
    pub event_types: Option<Vec<String>>,
    /// A content filter, or null to remove it.
    #[serde(default)]
    #[schema(value_type = Option<FilterSchema>)]
    pub filter: Patch<Value>,
    /// `active` or `paused` (`active` also re-enables a disabled one).
    #[schema(pattern = "^(active|paused)$")]
    pub status: Option<String>,
    /// Batched delivery, or null.
    #[serde(default)]
    #[schema(value_type = Option<BatchInput>)]
    pub batch: Patch<BatchInput>,
    /// FIFO delivery.
    pub ordered: Option<bool>,
    /// Free text, or null.
    #[serde(default)]
    #[schema(value_type = Option<String>, max_length = 500)]
    pub description: Patch<String>,
}

/// A subscription as the API shows it (never its secrets).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SubscriptionView {
    /// `sub_…`.
    pub id: String,
    /// Where webhooks go.
    pub target_url: String,
    /// Patterns.
    pub event_types: Vec<String>,
    /// The content filter.
    #[schema(value_type = Option<FilterSchema>)]
    pub filter: Option<Value>,
    /// `active`, `paused` or `disabled`.
    pub status: String,
    /// Why the system disabled it.
    pub disabled_reason: Option<String>,
    /// Batched delivery.
    pub batch: Option<BatchInput>,
    /// FIFO delivery.
    pub ordered: bool,
    /// Free text.
    pub description: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
}

/// A subscription with its new secret (create and rotate only).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SubscriptionWithSecret {
    /// The subscription.
    #[serde(flatten)]
    pub subscription: SubscriptionView,
    /// `whsec_…`: shown only now.
    pub secret: String,
}

fn status_name(status: SubscriptionStatus) -> &'static str {
    match status {
        SubscriptionStatus::Active => "active",
        SubscriptionStatus::Paused => "paused",
        SubscriptionStatus::Disabled => "disabled",
    }
}

fn view(s: &Subscription) -> SubscriptionView {
    SubscriptionView {
        id: s.id.to_string(),
        target_url: s.target_url.clone(),
        event_types: s.event_types.clone(),
        filter: s.filter.as_deref().and_then(|f| serde_json::from_str(f).ok()),
        status: status_name(s.status).to_owned(),
        disabled_reason: s.disabled_reason.clone(),
        batch: s.batch.map(|b| BatchInput {
            max_events: b.max_events,
            max_wait_ms: b.max_wait_ms,
        }),
        ordered: s.ordered,
        description: s.description.clone(),
        created_at: format_time(s.created_at),
        updated_at: format_time(s.updated_at),
    }
}

fn check_url(url: &str) -> Result<(), ApiError> {
    match url::Url::parse(url) {
        Ok(parsed)
            if matches!(parsed.scheme(), "http" | "https") && parsed.host().is_some() && url.len() <= URL_MAX =>
        {
            Ok(())
        }
        _ => Err(ApiError::field(
            "target_url",
            format!("must be an absolute http(s) URL of at most {URL_MAX} characters"),
        )),
    }
}

fn check_types(types: &[String]) -> Result<(), ApiError> {
    if types.is_empty() || types.len() > TYPES_MAX {
        return Err(ApiError::field(
            "event_types",
            format!("must hold 1 to {TYPES_MAX} patterns"),
        ));
    }
    for (i, pattern) in types.iter().enumerate() {
        TypePattern::parse(pattern).map_err(|m| ApiError::field(format!("event_types[{i}]"), m))?;
    }
    Ok(())
}

/// Compiles a filter; its JSON text to store.
fn check_filter(filter: &Value) -> Result<String, ApiError> {
    Filter::compile(filter).map_err(|e| ApiError::field(e.path, e.message))?;
    Ok(filter.to_string())
}

fn check_batch(batch: BatchInput) -> Result<BatchSettings, ApiError> {
    if !(1..=BATCH_EVENTS_MAX).contains(&batch.max_events) {
        return Err(ApiError::field(
            "batch.max_events",
            format!("must be between 1 and {BATCH_EVENTS_MAX}"),
        ));
    }
    if !(0..=BATCH_WAIT_MAX).contains(&batch.max_wait_ms) {
        return Err(ApiError::field(
            "batch.max_wait_ms",
            format!("must be between 0 and {BATCH_WAIT_MAX}"),
        ));
    }
    Ok(BatchSettings {
        max_events: batch.max_events,
        max_wait_ms: batch.max_wait_ms,
    })
}

/// Ordered delivery sends one event at a time; a batch sends several.
fn check_ordering(ordered: bool, batch: Option<&BatchSettings>) -> Result<(), ApiError> {
    if ordered && batch.is_some() {
        return Err(ApiError::field(
            "batch",
            "cannot be combined with ordered delivery; choose one",
        ));
    }
    Ok(())
}

fn check_description(description: &str) -> Result<(), ApiError> {
    if description.chars().count() > DESCRIPTION_MAX {
        return Err(ApiError::field(
            "description",
            format!("must be at most {DESCRIPTION_MAX} characters"),
        ));
    }
    Ok(())
}

/// How often a change is applied again to a subscription that another
/// request changed meanwhile, before the caller is told to retry.
const CHANGE_ATTEMPTS: usize = 3;

/// Reads the caller's subscription `id`, applies `edit`, saves and
/// publishes it. When another change landed in between (the revision
/// moved), the subscription is read again and `edit` applied to the new
/// state; after [`CHANGE_ATTEMPTS`] such races, 409 `conflict`.
async fn change_subscription(
    state: &AppState,
    caller: &Caller,
    id: &str,
    mut edit: impl FnMut(&mut Subscription) -> Result<(), ApiError>,
) -> Result<Subscription, ApiError> {
    let topic = state.subscriptions.topic();
    for _ in 0..CHANGE_ATTEMPTS {
        let mut current = state.subscription(caller, id).await?;
        edit(&mut current)?;
        match subscription::save_change(&state.dynamo, &state.tables, topic, current).await {
            Ok(saved) => return Ok(saved),
            Err(subscription::SubscriptionStoreError::Conflict(_)) => continue,
            Err(e) => return Err(subscription_store_error(e)),
        }
    }
    Err(ApiError::Conflict(format!(
        "subscription {id} kept changing while this change was applied; retry"
    )))
}

fn parse_id(text: &str) -> Result<SubscriptionId, ApiError> {
    text.parse()
        .map_err(|_| ApiError::NotFound(format!("subscription {text}")))
}

/// Create a subscription.
#[utoipa::path(
    post, path = "/v1/subscriptions", tag = "subscriptions",
    request_body = SubscriptionInput,
    responses((status = 201, body = SubscriptionWithSecret), (status = 401, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("api_key" = []))
)]
pub async fn create(
    caller: Caller,
    request: HttpRequest,
    payload: web::Payload,
    state: State,
) -> Result<HttpResponse, ApiError> {
    let (_, value) = read_json(&request, payload, 256 * 1024, body::JSON).await?;
    let input: SubscriptionInput = parse_body(value)?;
    check_url(&input.target_url)?;
    check_types(&input.event_types)?;
    let filter = input
        .filter
        .as_ref()
        .filter(|f| !f.is_null())
        .map(check_filter)
        .transpose()?;
    let batch = input.batch.map(check_batch).transpose()?;
    check_ordering(input.ordered, batch.as_ref())?;
    if let Some(description) = &input.description {
        check_description(description)?;
    }
    let limit = state.config.max_subscriptions_per_tenant;
    let existing = subscription::count(&state.dynamo, &state.tables, &caller.tenant, limit)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "cannot count subscriptions");
            ApiError::Unavailable("the subscription store is unavailable".to_owned())
        })?;
    if existing >= limit {
        return Err(ApiError::LimitExceeded(format!(
            "the tenant has {existing} subscriptions, the most allowed ({limit}); delete one, or ask the operator to raise gateway.max_subscriptions_per_tenant"
        )));
    }
    let now = now_ms();
    let secret = subscription::generate_secret();
    let created = Subscription {
        filter,
        batch,
        ordered: input.ordered,
        description: input.description,
        ..Subscription::new(caller.tenant, input.target_url, input.event_types, secret.clone(), now)
    };
    let pending = subscription::create(&state.dynamo, &state.tables, &created)
        .await
        .map_err(subscription_store_error)?;
    // Stored: it takes effect once on the topic (now, or by the outbox sweep).
    let topic = state.subscriptions.topic();
    subscription::outbox::announce_or_defer(&state.dynamo, &state.tables, topic, Some(&created), &pending).await;
    Ok(HttpResponse::Created()
        .insert_header(("cache-control", "no-store"))
        .json(SubscriptionWithSecret {
            subscription: view(&created),
            secret,
        }))
}

/// List query parameters.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ListQuery {
    /// Page size, 1-1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// A page of subscriptions.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SubscriptionPage {
    /// The subscriptions.
    pub data: Vec<SubscriptionView>,
    /// The cursor of the next page, or null at the end.
    pub next_cursor: Option<String>,
}

/// List the tenant's subscriptions, oldest first.
#[utoipa::path(
    get, path = "/v1/subscriptions", tag = "subscriptions",
    params(ListQuery),
    responses((status = 200, body = SubscriptionPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("api_key" = []))
)]
pub async fn list(caller: Caller, query: web::Query<ListQuery>, state: State) -> Result<HttpResponse, ApiError> {
    // A negative limit is out of range like zero.
    let limit = page_limit(query.limit.map(|l| usize::try_from(l).unwrap_or(0)))?;
    let (page, next) = subscription::list(
        &state.dynamo,
        &state.tables,
        &caller.tenant,
        i32::try_from(limit).unwrap_or(1000),
        query.cursor.as_deref(),
    )
    .await
    .map_err(subscription_store_error)?;
    Ok(HttpResponse::Ok().json(SubscriptionPage {
        data: page.iter().map(view).collect(),
        next_cursor: next,
    }))
}

/// Read a subscription.
#[utoipa::path(
    get, path = "/v1/subscriptions/{id}", tag = "subscriptions",
    params(("id" = String, Path, description = "sub_…")),
    responses((status = 200, body = SubscriptionView), (status = 404, body = ErrorBody)),
    security(("api_key" = []))
)]
pub async fn get(caller: Caller, path: web::Path<String>, state: State) -> Result<HttpResponse, ApiError> {
    let found = state.subscription(&caller, &path).await?;
    Ok(HttpResponse::Ok().json(view(&found)))
}

/// Change a subscription.
#[utoipa::path(
    patch, path = "/v1/subscriptions/{id}", tag = "subscriptions",
    params(("id" = String, Path, description = "sub_…")),
    request_body = SubscriptionPatch,
    responses((status = 200, body = SubscriptionView), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("api_key" = []))
)]
pub async fn patch(
    caller: Caller,
    path: web::Path<String>,
    request: HttpRequest,
    payload: web::Payload,
    state: State,
) -> Result<HttpResponse, ApiError> {
    let (_, value) = read_json(&request, payload, 256 * 1024, body::JSON).await?;
    let change: SubscriptionPatch = parse_body(value)?;
    let saved = change_subscription(&state, &caller, &path, |current| apply_patch(&change, current)).await?;
    Ok(HttpResponse::Ok().json(view(&saved)))
}

/// Applies a PATCH body to `current`, checking each new value.
fn apply_patch(change: &SubscriptionPatch, current: &mut Subscription) -> Result<(), ApiError> {
    let change = change.clone();
    if let Some(url) = change.target_url {
        check_url(&url)?;
        current.target_url = url;
    }
    if let Some(types) = change.event_types {
        check_types(&types)?;
        current.event_types = types;
    }
    change
        .filter
        .apply(&mut current.filter, |filter| check_filter(&filter))?;
    change.batch.apply(&mut current.batch, check_batch)?;
    change.description.apply(&mut current.description, |text| {
        check_description(&text)?;
        Ok::<_, ApiError>(text)
    })?;
    if let Some(ordered) = change.ordered {
        current.ordered = ordered;
    }
    check_ordering(current.ordered, current.batch.as_ref())?;
    if let Some(status) = change.status {
        current.status = match status.as_str() {
            "active" => SubscriptionStatus::Active,
            "paused" => SubscriptionStatus::Paused,
            _ => return Err(ApiError::field("status", "must be `active` or `paused`")),
        };
        if current.status == SubscriptionStatus::Active {
            current.disabled_reason = None;
        }
    }
    Ok(())
}

/// Delete a subscription; routing to it stops.
#[utoipa::path(
    delete, path = "/v1/subscriptions/{id}", tag = "subscriptions",
    params(("id" = String, Path, description = "sub_…")),
    responses((status = 204, description = "Deleted"), (status = 404, body = ErrorBody)),
    security(("api_key" = []))
)]
pub async fn delete(caller: Caller, path: web::Path<String>, state: State) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path)?;
    let Some(pending) = subscription::delete(&state.dynamo, &state.tables, &caller.tenant, &id)
        .await
        .map_err(subscription_store_error)?
    else {
        return Err(ApiError::NotFound(format!("subscription {id}")));
    };
    let topic = state.subscriptions.topic();
    subscription::outbox::announce_or_defer(&state.dynamo, &state.tables, topic, None, &pending).await;
    Ok(HttpResponse::NoContent().finish())
}

/// Make a new signing secret; the old one keeps signing for 24 h.
#[utoipa::path(
    post, path = "/v1/subscriptions/{id}/rotate-secret", tag = "subscriptions",
    params(("id" = String, Path, description = "sub_…")),
    responses((status = 200, body = SubscriptionWithSecret), (status = 404, body = ErrorBody)),
    security(("api_key" = []))
)]
pub async fn rotate_secret(caller: Caller, path: web::Path<String>, state: State) -> Result<HttpResponse, ApiError> {
    let secret = subscription::generate_secret();
    let saved = change_subscription(&state, &caller, &path, |current| {
        let now = now_ms();
        // Keep the secrets that still sign, ending within the overlap window.
        let mut secrets: Vec<SigningSecret> = current
            .secrets
            .iter()
            .filter(|s| s.expires_at.is_none_or(|at| at > now))
            .map(|s| SigningSecret {
                secret: s.secret.clone(),
                expires_at: Some(
                    s.expires_at
                        .map_or(now + ROTATION_OVERLAP_MS, |at| at.min(now + ROTATION_OVERLAP_MS)),
                ),
            })
            .collect();
        secrets.insert(
            0,
            SigningSecret {
                secret: secret.clone(),
                expires_at: None,
            },
        );
        current.secrets = secrets;
        Ok(())
    })
    .await?;
    Ok(HttpResponse::Ok()
        .insert_header(("cache-control", "no-store"))
        .json(SubscriptionWithSecret {
            subscription: view(&saved),
            secret,
        }))
}

/// The verdict of a test match.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TestMatchResult {
    /// The event would be delivered (types and filter match, and the
    /// subscription is active).
    pub matches: bool,
    /// Some event type pattern matches.
    pub event_type_matched: bool,
    /// The filter holds (true when there is none).
    pub filter_matched: bool,
    /// The subscription's status.
    pub status: String,
}

/// Tell whether an event would match this subscription (nothing is sent).
///
/// The body is an event as for `POST /v1/events`.
#[utoipa::path(
    post, path = "/v1/subscriptions/{id}/test-match", tag = "subscriptions",
    params(("id" = String, Path, description = "sub_…")),
    request_body(content = crate::ingest::EventInput, content_type = "application/json"),
    responses((status = 200, body = TestMatchResult), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("api_key" = []))
)]
pub async fn test_match(
    caller: Caller,
    path: web::Path<String>,
    request: HttpRequest,
    payload: web::Payload,
    state: State,
) -> Result<HttpResponse, ApiError> {
    let found = state.subscription(&caller, &path).await?;
    let (_, value) = read_json(&request, payload, state.config.max_body_bytes, body::SINGLE).await?;
    let event = event_from_json(value, caller.tenant, now_ms(), "")?;
    let event_type_matched = found
        .event_types
        .iter()
        .filter_map(|p| TypePattern::parse(p).ok())
        .any(|p| p.matches(&event.event_type));
    let filter_matched = match found.filter.as_deref().map(serde_json::from_str::<Value>) {
        Some(Ok(filter)) => Filter::compile(&filter).map(|f| f.matches(&event)).unwrap_or(false),
        Some(Err(_)) => false,
        None => true,
    };
    Ok(HttpResponse::Ok().json(json!(TestMatchResult {
        matches: event_type_matched && filter_matched && found.is_active(),
        event_type_matched,
        filter_matched,
        status: status_name(found.status).to_owned(),
    })))
}

#[cfg(test)]
mod tests {
    use serde_json::Value;
    use utoipa::OpenApi;

    use super::*;

    fn schema(name: &str) -> Value {
        let document = serde_json::to_value(crate::openapi::ApiDoc::openapi()).unwrap();
        document["components"]["schemas"][name].clone()
    }

    /// `/openapi.json` states the limits the handlers enforce: a client that
    /// follows the document is never refused for a limit it could not see.
    #[test]
    fn the_document_states_the_limits_that_are_checked() {
        let batch = schema("BatchInput");
        assert_eq!(batch["properties"]["max_events"]["minimum"], 1);
        assert_eq!(batch["properties"]["max_events"]["maximum"], BATCH_EVENTS_MAX);
        assert_eq!(batch["properties"]["max_wait_ms"]["minimum"], 0);
        assert_eq!(batch["properties"]["max_wait_ms"]["maximum"], BATCH_WAIT_MAX);
        for name in ["SubscriptionInput", "SubscriptionPatch"] {
            let properties = &schema(name)["properties"];
            assert_eq!(properties["target_url"]["maxLength"], URL_MAX, "{name}");
            assert_eq!(properties["event_types"]["minItems"], 1, "{name}");
            assert_eq!(properties["event_types"]["maxItems"], TYPES_MAX, "{name}");
            assert_eq!(properties["description"]["maxLength"], DESCRIPTION_MAX, "{name}");
        }
        assert_eq!(
            schema("SubscriptionPatch")["properties"]["status"]["pattern"],
            "^(active|paused)$"
        );
    }
}

/// The content-filter language as a recursive schema, `Filter` in
/// `/openapi.json`: a leaf (`field` and exactly one operator) or `and`,
/// `or` (non-empty lists) and `not` around filters. What a schema cannot
/// say: filters nest at most 16 deep with at most 256 nodes.
#[derive(Debug)]
pub struct FilterSchema;

impl FilterSchema {
    /// The schema as JSON.
    pub fn json() -> serde_json::Value {
        let filter = serde_json::json!({"$ref": "#/components/schemas/Filter"});
        let field = serde_json::json!({
            "description": "id, type, source, subject, time, data, data.<path> (numbers index arrays) or ext.<name>",
            "anyOf": [
                {"type": "string", "enum": ["id", "type", "source", "subject", "time", "data"]},
                {"type": "string", "pattern": "^data(\\.[^.]+)+$"},
                {"type": "string", "pattern": "^ext\\.[\\s\\S]"}
            ]
        });
        let leaf = |op: &str, operand: serde_json::Value| {
            serde_json::json!({
                "type": "object",
                "title": op,
                "required": ["field", op],
                "additionalProperties": false,
                "properties": {"field": field, op: operand}
            })
        };
        let combinator = |name: &str, operand: serde_json::Value| {
            serde_json::json!({
                "type": "object",
                "title": name,
                "required": [name],
                "additionalProperties": false,
                "properties": {name: operand}
            })
        };
        let list = serde_json::json!({"type": "array", "minItems": 1, "items": filter});
        let number = serde_json::json!({"type": "number"});
        let any = serde_json::json!({
            "description": "Any JSON value",
            "type": ["null", "boolean", "object", "array", "number", "string"]
        });
        serde_json::json!({
            "description": "A content filter: {\"field\": …, \"<op>\": …}, {\"and\": […]}, {\"or\": […]} or {\"not\": {…}}. At most 16 deep and 256 nodes.",
            "oneOf": [
                combinator("and", list.clone()),
                combinator("or", list),
                combinator("not", filter),
                leaf("eq", any.clone()),
                leaf("ne", any.clone()),
                leaf("in", serde_json::json!({"type": "array", "minItems": 1, "maxItems": 1000, "items": any})),
                leaf("prefix", serde_json::json!({"type": "string"})),
                leaf("gt", number.clone()),
                leaf("gte", number.clone()),
                leaf("lt", number.clone()),
                leaf("lte", number),
                leaf("exists", serde_json::json!({"type": "boolean"})),
            ]
        })
    }
}

impl utoipa::PartialSchema for FilterSchema {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        serde_json::from_value(Self::json()).unwrap_or_else(|e| {
            // The literal above is this build's own: a failure is a bug
            // caught by the OpenAPI tests, not a runtime condition.
            tracing::error!(error = %e, "the Filter schema does not parse");
            utoipa::openapi::RefOr::T(utoipa::openapi::schema::Schema::default())
        })
    }
}

impl utoipa::ToSchema for FilterSchema {
    fn name() -> std::borrow::Cow<'static, str> {
        std::borrow::Cow::Borrowed("Filter")
    }
}
