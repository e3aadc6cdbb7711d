//! Delivering again: replay of a stored event (`POST /v1/events/{id}/replay`)
//! and the dead-letter queue (`GET /v1/dlq`, `POST /v1/dlq/redrive`).
//!
//! Both put new `Delivery` records on `<ns>.deliveries`; the deliverer does
//! the rest. A new round keeps counting attempts after the event's earlier
//! ones (so the history keeps every attempt) and starts the retry schedule
//! from its first tier. Replays carry `triggers-replay: true` and go out
//! even if the event was acknowledged; a redrive is an ordinary delivery.
//! A dead letter leaves the DLQ once its redrive is in Kafka.

use std::collections::HashMap;
use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, web};
use rdkafka::producer::FutureRecord;
use serde::{Deserialize, Serialize};
use triggers_core::codec::Contract;
use triggers_core::deadletter::{self, DeadLetter, DeadLetterQuery};
use triggers_core::delivery::Delivery;
use triggers_core::event::Event;
use triggers_core::eventstore;
use triggers_core::ids::{DeliveryId, EventId, SubscriptionId};
use triggers_core::subscription::{self, Subscription, SubscriptionStatus};
use triggers_core::subscription_table::SubscriptionTable;
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::body::{self, read_limited};
use crate::error::{ApiError, ErrorBody, event_list_error, event_store_error, subscription_store_error};
use crate::ingest::format_time;
use crate::params::{page_limit, parse_body, parse_event_id as parse_id};
use crate::state::AppState;

type State = web::Data<AppState>;

/// How long a produce may take before the request answers 503.
const PRODUCE_TIMEOUT: Duration = Duration::from_secs(10);
/// Dead letters one redrive request takes at most.
const REDRIVE_LIMIT: usize = 1000;

/// What to replay.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayInput {
    /// Only this subscription (`sub_…`); all matching active ones if absent.
    #[schema(pattern = "^sub_[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$")]
    pub subscription_id: Option<String>,
}

/// One new delivery.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Redelivery {
    /// The delivery (`dlv_…`).
    pub delivery_id: String,
    /// The event.
    pub event_id: String,
    /// The subscription.
    pub subscription_id: String,
    /// The attempt number it starts at.
    pub attempt: i32,
}

/// The answer to a replay.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Replayed {
    /// The event.
    pub id: String,
    /// The deliveries queued (empty when no active subscription matches).
    pub replayed_to: Vec<Redelivery>,
}

/// A dead-lettered delivery.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DeadLetterView {
    /// The delivery (`dlv_…`), for `POST /v1/dlq/redrive` `{"ids"}`.
    pub id: String,
    /// The event.
    pub event_id: String,
    /// The subscription.
    pub subscription_id: String,
    /// The number of the last attempt.
    pub attempts: i32,
    /// When it was dead-lettered (RFC 3339).
    pub dead_lettered_at: String,
    /// The last attempt's HTTP status, if the endpoint answered.
    pub last_status: Option<i32>,
    /// The last error.
    pub last_error: Option<String>,
}

/// A page of dead letters.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DeadLetterPage {
    /// Oldest event first.
    pub data: Vec<DeadLetterView>,
    /// The cursor of the next page, or null at the end.
    pub next_cursor: Option<String>,
}

/// Filters and paging of the DLQ.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct DeadLetterParams {
    /// Only this subscription's.
    #[param(pattern = "^sub_[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$")]
    pub subscription_id: Option<String>,
    /// Page size, 1-1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// What to redrive: exactly one of the two.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RedriveInput {
    /// Every dead letter of this subscription (up to 1,000 per request).
    #[schema(pattern = "^sub_[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$")]
    pub subscription_id: Option<String>,
    /// These dead letters (`dlv_…` ids from `GET /v1/dlq`), up to 100.
    #[schema(min_items = 1, max_items = 100)]
    pub ids: Option<Vec<String>>,
}

/// The answer to a redrive.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Redriven {
    /// The deliveries put back on the delivery path.
    pub redriven: Vec<Redelivery>,
    /// Dead letters whose event no longer exists; they were removed.
    pub removed: Vec<String>,
    /// More dead letters match than one request takes: call again.
    pub more: bool,
}

/// Queues `delivery` on `<ns>.deliveries`.
async fn enqueue(state: &AppState, delivery: &Delivery) -> Result<(), ApiError> {
    let publisher = &state.subscriptions;
    let payload = publisher
        .codec
        .encode(&publisher.deliveries, Contract::Delivery, delivery)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "cannot encode a delivery");
            ApiError::Unavailable("the schema registry is unavailable".to_owned())
        })?;
    let key = delivery.subscription_id.to_string();
    publisher
        .producer
        .send(
            FutureRecord::to(&publisher.deliveries).key(&key).payload(&payload),
            PRODUCE_TIMEOUT,
        )
        .await
        .map_err(|(e, _)| {
            tracing::warn!(error = %e, "cannot produce a delivery");
            ApiError::Unavailable("Kafka did not take the delivery in time".to_owned())
        })?;
    Ok(())
}

fn redelivery(delivery: &Delivery) -> Redelivery {
    Redelivery {
        delivery_id: delivery.id.to_string(),
        event_id: delivery.event.id.to_string(),
        subscription_id: delivery.subscription_id.to_string(),
        attempt: delivery.attempt,
    }
}

/// The highest attempt number of each subscription of an event.
async fn previous_attempts(
    state: &AppState,
    caller: &Caller,
    event: &EventId,
) -> Result<HashMap<String, i32>, ApiError> {
    let attempts = eventstore::attempts(&state.dynamo, &state.tables, &caller.tenant, event)
        .await
        .map_err(event_store_error)?;
    let mut highest = HashMap::new();
    for attempt in attempts {
        let entry = highest.entry(attempt.subscription_id).or_insert(0);
        *entry = (*entry).max(attempt.attempt);
    }
    Ok(highest)
}

/// The stored event with its payload; 404 when it is not (or not yet) stored.
async fn stored_event(state: &AppState, caller: &Caller, id: &EventId) -> Result<Option<Event>, ApiError> {
    Ok(eventstore::get(&state.dynamo, &state.tables, &caller.tenant, id)
        .await
        .map_err(event_store_error)?
        .filter(|stored| stored.has_body)
        .map(|stored| stored.event))
}

/// The tenant's active subscriptions that match `event`.
async fn matching(state: &AppState, caller: &Caller, event: &Event) -> Result<Vec<Subscription>, ApiError> {
    let mut table = SubscriptionTable::new();
    let mut cursor: Option<String> = None;
    loop {
        let (page, next) = subscription::list(&state.dynamo, &state.tables, &caller.tenant, 100, cursor.as_deref())
            .await
            .map_err(subscription_store_error)?;
        for found in page {
            table.upsert(found);
        }
        match next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    Ok(table
        .matching(event)
        .into_iter()
        .map(|compiled| compiled.subscription.clone())
        .collect())
}

/// Deliver a stored event again.
///
/// To every active subscription that matches it now, or to
/// `{"subscription_id"}` only. Same event id; the webhook carries
/// `triggers-replay: true`.
#[utoipa::path(
    post, path = "/v1/events/{id}/replay", tag = "events",
    params(("id" = String, Path, description = "evt_…")),
    request_body(content = Option<ReplayInput>, content_type = "application/json"),
    responses((status = 202, body = Replayed), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody),
              (status = 503, body = ErrorBody)),
    security(("api_key" = []))
)]
pub async fn replay(
    caller: Caller,
    path: web::Path<String>,
    request: HttpRequest,
    payload: web::Payload,
    state: State,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path)?;
    body::check_media_type(&request, body::JSON)?;
    let raw = read_limited(&request, payload, 64 * 1024).await?;
    // No body, or `null`, replays to every matching subscription.
    let input: ReplayInput = if raw.iter().all(u8::is_ascii_whitespace) {
        ReplayInput::default()
    } else {
        parse_body::<Option<ReplayInput>>(body::parse_json(&raw)?)?.unwrap_or_default()
    };
    let event = stored_event(&state, &caller, &id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("event {id}")))?;
    let targets = match &input.subscription_id {
        Some(subscription) => {
            let found = state.subscription(&caller, subscription).await?;
            if found.status != SubscriptionStatus::Active {
                return Err(ApiError::field(
                    "subscription_id",
                    "is not active: PATCH its status to active first",
                ));
            }
            vec![found]
        }
        None => matching(&state, &caller, &event).await?,
    };
    let previous = previous_attempts(&state, &caller, &id).await?;
    let mut replayed_to = Vec::new();
    for target in targets {
        let before = previous.get(&target.id.to_string()).copied().unwrap_or(0);
        let delivery = Delivery::again(event.clone(), target.id, before, true);
        enqueue(&state, &delivery).await?;
        replayed_to.push(redelivery(&delivery));
    }
    metrics::counter!("triggers_gateway_replays_total").increment(replayed_to.len() as u64);
    Ok(HttpResponse::Accepted().json(Replayed {
        id: id.to_string(),
        replayed_to,
    }))
}

fn dead_letter_view(dead: DeadLetter) -> DeadLetterView {
    DeadLetterView {
        id: dead.delivery_id.to_string(),
        event_id: dead.event_id.to_string(),
        subscription_id: dead.subscription_id.to_string(),
        attempts: dead.attempt,
        dead_lettered_at: format_time(dead.at),
        last_status: dead.http_status,
        last_error: dead.error,
    }
}

fn subscription_filter(text: Option<&str>) -> Result<Option<SubscriptionId>, ApiError> {
    text.map(|t| {
        t.parse()
            .map_err(|_| ApiError::field("subscription_id", "is not a subscription id (sub_…)"))
    })
    .transpose()
}

/// Dead-lettered deliveries, oldest event first.
#[utoipa::path(
    get, path = "/v1/dlq", tag = "dlq",
    params(DeadLetterParams),
    responses((status = 200, body = DeadLetterPage), (status = 400, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("api_key" = []))
)]
pub async fn list(caller: Caller, query: web::Query<DeadLetterParams>, state: State) -> Result<HttpResponse, ApiError> {
    let limit = page_limit(query.limit)?;
    let query = DeadLetterQuery {
        subscription_id: subscription_filter(query.subscription_id.as_deref())?,
        delivery_ids: None,
        limit,
        cursor: query.cursor.clone(),
    };
    let (page, next_cursor) = deadletter::list(&state.dynamo, &state.tables, &caller.tenant, &query)
        .await
        .map_err(event_list_error)?;
    Ok(HttpResponse::Ok().json(DeadLetterPage {
        data: page.into_iter().map(dead_letter_view).collect(),
        next_cursor,
    }))
}

/// Put dead letters back on the delivery path.
///
/// `{"subscription_id"}` takes all of that subscription's (up to 1,000 per
/// request; `more` says whether to call again), `{"ids"}` the listed ones.
/// Each gets a new round of attempts with the full retry schedule.
#[utoipa::path(
    post, path = "/v1/dlq/redrive", tag = "dlq",
    request_body(content = RedriveInput, content_type = "application/json"),
    responses((status = 202, body = Redriven), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("api_key" = []))
)]
pub async fn redrive(
    caller: Caller,
    request: HttpRequest,
    payload: web::Payload,
    state: State,
) -> Result<HttpResponse, ApiError> {
    let (_, value) = body::read_json(&request, payload, 64 * 1024, body::JSON).await?;
    let input: RedriveInput = parse_body(value)?;
    let query = match (&input.subscription_id, &input.ids) {
        (Some(subscription), None) => DeadLetterQuery {
            subscription_id: subscription_filter(Some(subscription))?,
            delivery_ids: None,
            limit: REDRIVE_LIMIT,
            cursor: None,
        },
        (None, Some(ids)) => {
            if ids.is_empty() || ids.len() > 100 {
                return Err(ApiError::field("ids", "must hold 1 to 100 ids"));
            }
            let parsed = ids
                .iter()
                .enumerate()
                .map(|(i, id)| {
                    id.parse::<DeliveryId>()
                        .map_err(|_| ApiError::field(format!("ids[{i}]"), "is not a delivery id (dlv_…)"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            DeadLetterQuery {
                subscription_id: None,
                delivery_ids: Some(parsed),
                limit: REDRIVE_LIMIT,
                cursor: None,
            }
        }
        _ => {
            return Err(ApiError::field(
                "the body",
                "give exactly one of `subscription_id` and `ids`",
            ));
        }
    };
    let (dead, next) = deadletter::list(&state.dynamo, &state.tables, &caller.tenant, &query)
        .await
        .map_err(event_list_error)?;
    let mut answer = Redriven {
        redriven: Vec::new(),
        removed: Vec::new(),
        more: next.is_some(),
    };
    for entry in dead {
        let remove = || deadletter::remove(&state.dynamo, &state.tables, &caller.tenant, &entry);
        let Some(event) = stored_event(&state, &caller, &entry.event_id).await? else {
            remove().await.map_err(event_store_error)?;
            answer.removed.push(entry.delivery_id.to_string());
            continue;
        };
        let delivery = Delivery::again(event, entry.subscription_id, entry.attempt, false);
        enqueue(&state, &delivery).await?;
        remove().await.map_err(event_store_error)?;
        answer.redriven.push(redelivery(&delivery));
    }
    metrics::counter!("triggers_gateway_redriven_total").increment(answer.redriven.len() as u64);
    Ok(HttpResponse::Accepted().json(answer))
}
