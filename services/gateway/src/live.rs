//! Live updates for the console: `GET /v1/stream`, a server-sent event
//! stream of the caller's events as the pipeline sees them: accepted (from
//! `<ns>.events`), routed, unmatched and every delivery outcome (from
//! `<ns>.outcomes`).
//!
//! Each gateway replica reads every partition of both topics from their
//! end (no consumer group, nothing committed) and fans records out to its
//! own streams. The reader starts with the first stream and keeps running;
//! a replica no console ever connects to reads nothing. It is paced like
//! the other consumers when idle ([`triggers_core::pacing`]).

use std::sync::Arc;
use std::time::Duration;

use actix_web::{HttpResponse, web};
use futures::StreamExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::Serialize;
use tokio::sync::broadcast;
use triggers_core::CancellationToken;
use triggers_core::codec::{AvroCodec, Contract};
use triggers_core::config::KafkaConfig;
use triggers_core::delivery::Outcome;
use triggers_core::event::{Event, rfc3339};
use triggers_core::ids::TenantId;

use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};

/// Updates buffered per stream before a slow one misses some (it is told).
const BUFFER: usize = 4_096;
/// A comment line this often keeps proxies from closing an idle stream.
const KEEPALIVE: Duration = Duration::from_secs(15);
/// Streams one replica serves at once; more get 503.
const MAX_STREAMS: usize = 1_000;

/// One open stream, counted until it is dropped.
struct Slot(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// One change the console shows.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Update {
    /// `accepted`, `routed`, `unmatched`, `delivered`, `retrying`,
    /// `dead_lettered`, `disabled` or `skipped`.
    pub kind: String,
    /// The event.
    pub event_id: String,
    /// Its type (`accepted` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    /// The subscription (delivery outcomes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscription_id: Option<String>,
    /// The subscriptions matched (`routed`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub subscriptions: Vec<String>,
    /// The attempt number (delivery outcomes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<i32>,
    /// The endpoint's answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_status: Option<i32>,
    /// The request's duration.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<i64>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When (RFC 3339).
    pub at: String,
    /// For `retrying`: when the next attempt is due (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<String>,
    #[serde(skip)]
    tenant: TenantId,
}

impl Update {
    fn of_event(event: &Event) -> Self {
        Self {
            kind: "accepted".to_owned(),
            event_id: event.id.to_string(),
            event_type: Some(event.event_type.clone()),
            subscription_id: None,
            subscriptions: Vec::new(),
            attempt: None,
            http_status: None,
            latency_ms: None,
            error: None,
            at: rfc3339(event.received_at),
            next_attempt_at: None,
            tenant: event.tenant,
        }
    }

    fn of_outcome(outcome: Outcome) -> Self {
        let kind = serde_json::to_value(outcome.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let delivery = outcome.subscription_id.is_some();
        Self {
            kind,
            event_id: outcome.event_id.to_string(),
            event_type: None,
            subscription_id: outcome.subscription_id.map(|s| s.to_string()),
            subscriptions: outcome.subscriptions.iter().map(ToString::to_string).collect(),
            attempt: delivery.then_some(outcome.attempt),
            http_status: outcome.http_status,
            latency_ms: outcome.latency_ms,
            error: outcome.error,
            at: rfc3339(outcome.at),
            next_attempt_at: outcome.next_attempt_at.map(rfc3339),
            tenant: outcome.tenant,
        }
    }
}

/// The fan-out of this replica's live updates. Cheap to clone.
#[derive(Debug, Clone)]
pub struct LiveFeed {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    sender: broadcast::Sender<Arc<Update>>,
    open: Arc<std::sync::atomic::AtomicUsize>,
    started: tokio::sync::OnceCell<()>,
    kafka: KafkaConfig,
    codec: AvroCodec,
    events_topic: String,
    outcomes_topic: String,
    shutdown: CancellationToken,
}

impl LiveFeed {
    /// A feed of `events_topic` and `outcomes_topic`; reads nothing until
    /// the first stream opens. Streams end when `shutdown` is cancelled.
    pub fn new(
        kafka: KafkaConfig,
        codec: AvroCodec,
        events_topic: String,
        outcomes_topic: String,
        shutdown: CancellationToken,
    ) -> Self {
        let (sender, _) = broadcast::channel(BUFFER);
        Self {
            inner: Arc::new(Inner {
                sender,
                open: Arc::default(),
                started: tokio::sync::OnceCell::new(),
                kafka,
                codec,
                events_topic,
                outcomes_topic,
                shutdown,
            }),
        }
    }

    /// A place for one more stream, if this replica has room.
    fn slot(&self) -> Result<Slot, ApiError> {
        let open = self.inner.open.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let slot = Slot(self.inner.open.clone());
        if open >= MAX_STREAMS {
            return Err(ApiError::Unavailable(format!(
                "this gateway serves {MAX_STREAMS} live streams already"
            )));
        }
        Ok(slot)
    }

    /// A receiver of every update, the reader started if it was not.
    async fn subscribe(&self) -> Result<broadcast::Receiver<Arc<Update>>, ApiError> {
        // Subscribe first: nothing read once the reader runs is missed.
        let receiver = self.inner.sender.subscribe();
        self.inner
            .started
            .get_or_try_init(|| async {
                let consumer = self.assign().await.map_err(|e| {
                    tracing::warn!(error = %e, "live updates: cannot read the topics");
                    ApiError::Unavailable("live updates are unavailable".to_owned())
                })?;
                tokio::spawn(read(consumer, self.inner.clone()));
                Ok::<(), ApiError>(())
            })
            .await?;
        Ok(receiver)
    }

    /// A consumer assigned every partition of both topics at their end.
    async fn assign(&self) -> Result<Arc<StreamConsumer<triggers_core::kafka::ConsumerLog>>, KafkaError> {
        let inner = &self.inner;
        let mut config = triggers_core::kafka::base_config(&inner.kafka, "gateway-live");
        config
            .set(
                "group.id",
                format!("gateway-live-{}", triggers_core::ids::RequestId::new()),
            )
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", inner.kafka.fetch_wait_max.as_millis().to_string());
        triggers_core::kafka::paced(&inner.kafka, &mut config);
        let consumer: StreamConsumer<triggers_core::kafka::ConsumerLog> =
            config.create_with_context(triggers_core::kafka::ConsumerLog::new("live updates"))?;
        let consumer = Arc::new(consumer);
        let topics = [inner.events_topic.clone(), inner.outcomes_topic.clone()];
        let fetching = consumer.clone();
        let assignment = tokio::task::spawn_blocking(move || {
            let mut assignment = TopicPartitionList::new();
            for topic in &topics {
                let partitions =
                    triggers_core::kafka::partition_count(fetching.client(), topic, Duration::from_secs(10))?;
                for partition in 0..partitions {
                    assignment.add_partition_offset(
                        topic,
                        i32::try_from(partition).unwrap_or(i32::MAX),
                        Offset::End,
                    )?;
                }
            }
            Ok::<_, KafkaError>(assignment)
        })
        .await
        .map_err(|_| KafkaError::Canceled)??;
        consumer.assign(&assignment)?;
        Ok(consumer)
    }
}

/// Reads until shutdown, sending each update to every stream.
async fn read(consumer: Arc<StreamConsumer<triggers_core::kafka::ConsumerLog>>, inner: Arc<Inner>) {
    let mut pacer = triggers_core::pacing::Pacer::new(&inner.kafka);
    loop {
        let message = tokio::select! {
            () = inner.shutdown.cancelled() => return,
            () = pacer.due() => {
                pacer.act(consumer.as_ref());
                continue;
            }
            message = consumer.recv() => message,
        };
        let message = match message {
            Ok(message) => message,
            Err(KafkaError::PartitionEOF(_)) => {
                pacer.saw_end();
                continue;
            }
            Err(e) => {
                tracing::debug!(error = %e, "live updates: read failed");
                continue;
            }
        };
        pacer.saw_record();
        // Nobody listening: skip the decoding.
        if inner.sender.receiver_count() == 0 {
            continue;
        }
        let Some(payload) = message.payload() else { continue };
        let update = if message.topic() == inner.events_topic {
            inner
                .codec
                .decode::<Event>(Contract::Event, payload)
                .await
                .map(|event| Update::of_event(&event))
        } else {
            inner
                .codec
                .decode::<Outcome>(Contract::Outcome, payload)
                .await
                .map(Update::of_outcome)
        };
        match update {
            Ok(update) => {
                let _ = inner.sender.send(Arc::new(update));
            }
            Err(e) => tracing::debug!(error = %e, "live updates: undecodable record skipped"),
        }
    }
}

fn frame(name: &str, data: &str) -> web::Bytes {
    web::Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

/// Server-sent events of the caller's events as they move through the
/// pipeline: `event: update` with an [`Update`] as data, `event: lagged`
/// when this stream fell behind and missed some (reload what is shown),
/// and a comment every 15 s. Authenticate with the `Authorization` header
/// (read the stream with `fetch`, not `EventSource`, to send it). A replica
/// serves up to 1,000 streams at once (then 503).
#[utoipa::path(
    get, path = "/v1/stream", tag = "events",
    responses(
        (status = 200, description = "A text/event-stream of updates", content_type = "text/event-stream", body = Update),
        (status = 401, body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn stream(caller: Caller, live: web::Data<LiveFeed>) -> Result<HttpResponse, ApiError> {
    let slot = live.slot()?;
    let receiver = live.subscribe().await?;
    let tenant = caller.tenant;
    let shutdown = live.inner.shutdown.clone();
    let updates = futures::stream::unfold(receiver, |mut receiver| async move {
        let item = match receiver.recv().await {
            Ok(update) => Ok(update),
            Err(broadcast::error::RecvError::Lagged(missed)) => Err(missed),
            Err(broadcast::error::RecvError::Closed) => return None,
        };
        Some((item, receiver))
    })
    .filter_map(move |item| {
        // The stream holds its slot until it is dropped.
        let _held = &slot;
        let frame = match item {
            Ok(update) if update.tenant == tenant => serde_json::to_string(&*update).ok().map(|d| frame("update", &d)),
            Ok(_) => None,
            Err(missed) => Some(frame("lagged", &format!("{{\"missed\":{missed}}}"))),
        };
        std::future::ready(frame)
    });
    let mut tick = tokio::time::interval(KEEPALIVE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let keepalive = futures::stream::unfold(tick, |mut tick| async move {
        tick.tick().await;
        Some((web::Bytes::from_static(b": keepalive\n\n"), tick))
    })
    .skip(1);
    let opened = futures::stream::once(std::future::ready(web::Bytes::from_static(
        b"event: open\ndata: {}\n\n",
    )));
    let body = opened
        .chain(futures::stream::select(updates, keepalive))
        .take_until(shutdown.cancelled_owned())
        .map(Ok::<_, std::convert::Infallible>);
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("cache-control", "no-cache"))
        .insert_header(("x-accel-buffering", "no"))
        .streaming(body))
}
