//! Reading events back: listing and detail with delivery history, deletion,
//! the pull inbox with acknowledgements, and the first client guide's inbox
//! routes. Every read is scoped to the caller's tenant: another tenant's
//! event is reported as not found.

use actix_web::{HttpRequest, HttpResponse, web};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use triggers_core::event::Payload;
use triggers_core::eventstore::{self, ListQuery, StoredEvent};
use triggers_core::ids::{EventId, SubscriptionId};
use triggers_core::matching::TypePattern;
use triggers_core::status::EventStatus;
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::body::{self, read_json};
use crate::error::{ApiError, ErrorBody, event_list_error, event_store_error};
use crate::ingest::{format_time, parse_time};
use crate::params::{page_limit, parse_event_id as parse_id};
use crate::state::AppState;

type State = web::Data<AppState>;

/// Filters and paging of event listings.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct EventsQuery {
    /// An exact type or `prefix.*`.
    #[serde(rename = "type")]
    #[param(
        rename = "type",
        pattern = "^(\\*|[^\\s*\\u0000-\\u001f\\u007f-\\u009f]{1,256}(\\.\\*)?)$"
    )]
    pub event_type: Option<String>,
    /// `accepted`, `routed`, `retrying`, `dead_lettered`, `unmatched`, `delivered`, `acknowledged`.
    #[param(pattern = "^(accepted|routed|retrying|dead_lettered|unmatched|delivered|acknowledged)$")]
    pub status: Option<String>,
    /// Received at or after (RFC 3339).
    #[param(format = DateTime)]
    pub since: Option<String>,
    /// Received before (RFC 3339).
    #[param(format = DateTime)]
    pub until: Option<String>,
    /// Routed to this subscription.
    #[param(pattern = "^sub_[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$")]
    pub subscription_id: Option<String>,
    /// Page size, 1-1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// An event as the API shows it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EventView {
    /// `evt_…`.
    pub id: String,
    /// Its type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Its source.
    pub source: String,
    /// Its subject.
    pub subject: Option<String>,
    /// When it happened (RFC 3339).
    pub time: String,
    /// The payload. Listings carry payloads up to 64 KiB, and up to 1 MiB
    /// of them per page; the others are null with `data_omitted` (read the
    /// event by id for its payload).
    #[schema(value_type = Object)]
    pub data: Payload,
    /// Whether `data` was left out of a listing; `GET /v1/events/{id}` has it.
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub data_omitted: bool,
    /// The overall status.
    pub status: String,
    /// When Triggers accepted it (RFC 3339).
    pub received_at: String,
    /// Last change of its status (RFC 3339).
    pub updated_at: String,
    /// One entry per subscription (only on `GET /v1/events/{id}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Object>>)]
    pub deliveries: Option<Vec<Value>>,
}

/// A page of events.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EventPage {
    /// The events.
    pub data: Vec<EventView>,
    /// The cursor of the next page, or null at the end.
    pub next_cursor: Option<String>,
}

fn view(stored: &StoredEvent) -> EventView {
    EventView {
        id: stored.event.id.to_string(),
        event_type: stored.event.event_type.clone(),
        source: stored.event.source.clone(),
        subject: stored.event.subject.clone(),
        time: format_time(stored.event.time),
        data: stored.event.data.clone(),
        data_omitted: stored.data_omitted,
        status: stored.status.as_str().to_owned(),
        received_at: format_time(stored.event.received_at),
        updated_at: format_time(stored.updated_at.max(stored.event.received_at)),
        deliveries: None,
    }
}

fn parse_query(query: &EventsQuery) -> Result<ListQuery, ApiError> {
    let limit = page_limit(query.limit)?;
    let time = |name: &str, value: &Option<String>| -> Result<Option<i64>, ApiError> {
        value
            .as_deref()
            .map(|v| parse_time(v).ok_or_else(|| ApiError::BadRequest(format!("{name} must be an RFC 3339 time"))))
            .transpose()
    };
    let status = query
        .status
        .as_deref()
        .map(|s| EventStatus::parse(s).ok_or_else(|| ApiError::BadRequest(format!("unknown status `{s}`"))))
        .transpose()?;
    // The same patterns as subscriptions take; `*` is no filter at all.
    let event_type = match query.event_type.as_deref().map(TypePattern::parse) {
        None | Some(Ok(TypePattern::Any)) => None,
        Some(Ok(_)) => query.event_type.clone(),
        Some(Err(message)) => return Err(ApiError::BadRequest(format!("type: {message}"))),
    };
    let subscription_id = query
        .subscription_id
        .as_deref()
        .map(|s| {
            s.parse::<SubscriptionId>()
                .map(|id| id.to_string())
                .map_err(|_| ApiError::BadRequest(format!("subscription_id `{s}` is not a subscription id (sub_…)")))
        })
        .transpose()?;
    Ok(ListQuery {
        event_type,
        status,
        since: time("since", &query.since)?,
        until: time("until", &query.until)?,
        subscription_id,
        limit,
        cursor: query.cursor.clone(),
    })
}

/// List the tenant's events, newest first.
#[utoipa::path(
    get, path = "/v1/events", tag = "events",
    params(EventsQuery),
    responses((status = 200, body = EventPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("api_key" = []))
)]
pub async fn list(caller: Caller, query: web::Query<EventsQuery>, state: State) -> Result<HttpResponse, ApiError> {
    let query = parse_query(&query)?;
    let (page, next) = eventstore::list(&state.dynamo, &state.tables, &caller.tenant, &query, false)
        .await
        .map_err(event_list_error)?;
    Ok(HttpResponse::Ok().json(EventPage {
        data: page.iter().map(view).collect(),
        next_cursor: next,
    }))
}

/// One event with its delivery history.
#[utoipa::path(
    get, path = "/v1/events/{id}", tag = "events",
    params(("id" = String, Path, description = "evt_…")),
    responses((status = 200, body = EventView), (status = 404, body = ErrorBody)),
    security(("api_key" = []))
)]
pub async fn get(caller: Caller, path: web::Path<String>, state: State) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path)?;
    let stored = eventstore::get(&state.dynamo, &state.tables, &caller.tenant, &id)
        .await
        .map_err(event_store_error)?
        .ok_or_else(|| ApiError::NotFound(format!("event {id}")))?;
    let attempts = eventstore::attempts(&state.dynamo, &state.tables, &caller.tenant, &id)
        .await
        .map_err(event_store_error)?;
    let deliveries = stored
        .progress
        .subscriptions
        .iter()
        .map(|(subscription, delivery_state)| {
            let attempts: Vec<Value> = attempts
                .iter()
                .filter(|a| &a.subscription_id == subscription)
                .map(|a| {
                    json!({"attempt": a.attempt, "outcome": a.kind, "at": format_time(a.at),
                           "http_status": a.http_status, "latency_ms": a.latency_ms,
                           "error": a.error, "response_excerpt": a.response_excerpt,
                           "next_attempt_at": a.next_attempt_at.map(format_time)})
                })
                .collect();
            json!({"subscription_id": subscription, "state": delivery_state, "attempts": attempts})
        })
        .collect();
    let mut body = view(&stored);
    body.deliveries = Some(deliveries);
    Ok(HttpResponse::Ok().json(body))
}

/// Remove an event and its history.
#[utoipa::path(
    delete, path = "/v1/events/{id}", tag = "events",
    params(("id" = String, Path, description = "evt_…")),
    responses((status = 204, description = "Deleted"), (status = 404, body = ErrorBody)),
    security(("api_key" = []))
)]
pub async fn delete(caller: Caller, path: web::Path<String>, state: State) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path)?;
    if !eventstore::delete(&state.dynamo, &state.tables, &caller.tenant, &id)
        .await
        .map_err(event_store_error)?
    {
        return Err(ApiError::NotFound(format!("event {id}")));
    }
    Ok(HttpResponse::NoContent().finish())
}

/// Events not yet delivered or acknowledged, oldest first.
#[utoipa::path(
    get, path = "/v1/inbox", tag = "inbox",
    params(EventsQuery),
    responses((status = 200, body = EventPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("api_key" = []))
)]
pub async fn inbox(caller: Caller, query: web::Query<EventsQuery>, state: State) -> Result<HttpResponse, ApiError> {
    let query = parse_query(&query)?;
    let (page, next) = eventstore::list(&state.dynamo, &state.tables, &caller.tenant, &query, true)
        .await
        .map_err(event_list_error)?;
    Ok(HttpResponse::Ok().json(EventPage {
        data: page.iter().map(view).collect(),
        next_cursor: next,
    }))
}

async fn acknowledge(state: &AppState, caller: &Caller, text: &str) -> Result<(), ApiError> {
    let id = parse_id(text)?;
    if eventstore::acknowledge(&state.dynamo, &state.tables, &caller.tenant, &id, Some(&state.tally))
        .await
        .map_err(event_store_error)?
    {
        Ok(())
    } else {
        Err(ApiError::NotFound(format!("event {id}")))
    }
}

/// Acknowledge one event: it leaves the inbox and its pending retries stop.
#[utoipa::path(
    post, path = "/v1/inbox/{id}/ack", tag = "inbox",
    params(("id" = String, Path, description = "evt_…")),
    responses((status = 200, description = "Acknowledged"), (status = 404, body = ErrorBody)),
    security(("api_key" = []))
)]
pub async fn ack(caller: Caller, path: web::Path<String>, state: State) -> Result<HttpResponse, ApiError> {
    acknowledge(&state, &caller, &path).await?;
    Ok(HttpResponse::Ok().json(json!({"id": path.as_str(), "status": "acknowledged"})))
}

/// Acknowledgements of one `POST /v1/inbox/ack` under way at once.
const ACK_CONCURRENCY: usize = 16;

/// Ids to acknowledge.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AckMany {
    /// 1-1000 event ids.
    #[schema(min_items = 1, max_items = 1000)]
    pub ids: Vec<String>,
}

/// Acknowledge many events; one result per id, in order.
#[utoipa::path(
    post, path = "/v1/inbox/ack", tag = "inbox",
    request_body = AckMany,
    responses((status = 200, description = "One result per id"), (status = 422, body = ErrorBody)),
    security(("api_key" = []))
)]
pub async fn ack_many(
    caller: Caller,
    request: HttpRequest,
    payload: web::Payload,
    state: State,
) -> Result<HttpResponse, ApiError> {
    let (_, value) = read_json(&request, payload, 256 * 1024, body::JSON).await?;
    let input: AckMany = serde_json::from_value(value).map_err(|e| ApiError::field("ids", e.to_string()))?;
    if input.ids.is_empty() || input.ids.len() > 1000 {
        return Err(ApiError::field("ids", "must hold 1 to 1000 ids"));
    }
    // A malformed id is the request's mistake, not a missing event.
    if let Some((i, id)) = input
        .ids
        .iter()
        .enumerate()
        .find(|(_, id)| id.parse::<EventId>().is_err())
    {
        return Err(ApiError::field(
            format!("ids[{i}]"),
            format!("`{id}` is not an event id (evt_…)"),
        ));
    }
    // A few at a time: one request must not send a thousand calls to
    // DynamoDB at once (it starved every other request of the store).
    let results: Vec<Value> = futures::stream::iter(input.ids.iter().map(|id| {
        let (state, caller) = (&state, &caller);
        async move {
            match acknowledge(state, caller, id).await {
                Ok(()) => json!({"id": id, "status": "acknowledged"}),
                Err(e) => json!({"id": id, "error": e.detail(None)}),
            }
        }
    }))
    .buffered(ACK_CONCURRENCY)
    .collect()
    .await;
    Ok(HttpResponse::Ok().json(json!({"results": results})))
}

/// Up to 100 pending events, as a bare array (first client guide).
#[utoipa::path(
    get, path = "/inbox", tag = "compatibility",
    responses((status = 200, description = "A JSON array of events with id, type, source, payload, status, created_at, updated_at")),
    security(("api_key" = []))
)]
pub async fn inbox_compat(caller: Caller, state: State) -> Result<HttpResponse, ApiError> {
    let query = ListQuery {
        limit: 100,
        ..ListQuery::default()
    };
    let (page, _) = eventstore::list(&state.dynamo, &state.tables, &caller.tenant, &query, true)
        .await
        .map_err(event_list_error)?;
    let items: Vec<InboxItem<'_>> = page
        .iter()
        .map(|e| InboxItem {
            id: e.event.id.to_string(),
            event_type: &e.event.event_type,
            source: &e.event.source,
            payload: &e.event.data,
            payload_omitted: e.data_omitted,
            status: e.status.as_str(),
            created_at: format_time(e.event.received_at),
            updated_at: format_time(e.updated_at.max(e.event.received_at)),
        })
        .collect();
    Ok(HttpResponse::Ok().json(items))
}

/// An event of the first client guide's inbox.
#[derive(Serialize)]
struct InboxItem<'a> {
    id: String,
    #[serde(rename = "type")]
    event_type: &'a str,
    source: &'a str,
    payload: &'a Payload,
    /// A large payload is left out, as in every listing: say so.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    payload_omitted: bool,
    status: &'a str,
    created_at: String,
    updated_at: String,
}

/// Acknowledge one event (first client guide): answers status `delivered`.
#[utoipa::path(
    post, path = "/inbox/{id}/ack", tag = "compatibility",
    params(("id" = String, Path, description = "evt_…")),
    responses((status = 200, description = "{\"id\", \"status\": \"delivered\"}"), (status = 404, body = ErrorBody)),
    security(("api_key" = []))
)]
pub async fn ack_compat(caller: Caller, path: web::Path<String>, state: State) -> Result<HttpResponse, ApiError> {
    acknowledge(&state, &caller, &path).await?;
    Ok(HttpResponse::Ok().json(json!({"id": path.as_str(), "status": "delivered"})))
}
