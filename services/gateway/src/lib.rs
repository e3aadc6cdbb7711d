//! The HTTP front door: ingests events into `<ns>.events` and serves the
//! whole public API of `shared/API.md`.
//!
//! - Ingest: [`ingest`] (body → events), [`sink`] (produce to
//!   `<ns>.events`), [`idempotency`], [`ratelimit`], [`body`].
//! - Reading back: [`events`] (list, detail with attempts, delete, pull
//!   inbox and acknowledgements, from the events and attempts tables).
//! - Delivering again: [`redelivery`] (replay, dead letters, redrive; writes
//!   `<ns>.deliveries`).
//! - Subscriptions: [`subscriptions`] (DynamoDB, published to
//!   `<ns>.subscriptions`).
//! - Callers: [`auth`] (API keys, [`jwt`] tokens, the admin token), tenants
//!   and keys in [`api`].
//! - Around it: [`api`] (handlers and the route table), [`state`],
//!   [`middleware`] (request ids, metrics), [`error`] (the error catalog),
//!   [`openapi`] (`/openapi.json`, `/docs`), [`config`].
//!
//! Guarantee: 202 means the event is in Kafka — the shared producer is
//! idempotent with `acks=all` and the answer waits for the delivery report.
//! When Kafka cannot take an event within `kafka.produce_timeout`, the client
//! gets 503 with `Retry-After`; when the bounded producer queue is full, 503
//! at once. Never a false 202, never a hang.
#![forbid(unsafe_code)]

#[cfg(feature = "testkit")]
pub mod testing;

pub mod analytics;
pub mod api;
pub mod auth;
pub mod body;
pub mod config;
pub mod console;
pub mod error;
pub mod events;
pub mod extract;
pub mod idempotency;
pub mod ingest;
pub mod jwt;
pub mod live;
pub mod middleware;
pub mod openapi;
pub mod params;
pub mod publisher;
pub mod ratelimit;
pub mod redelivery;
pub mod sink;
pub mod state;
pub mod subscriptions;

use std::time::Duration;

use actix_web::{App, HttpRequest, HttpServer, web};
use rand::RngCore;
use tokio::task::JoinHandle;
use triggers_core::CancellationToken;
use triggers_core::codec::AvroCodec;
use triggers_core::config::CommonConfig;
use triggers_core::dynamo::Tables;
use triggers_core::ops::{self, Readiness, RunningServer};

pub use config::GatewayConfig;
pub use error::ApiError;

/// The gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The server could not bind.
    #[error("cannot listen on {listen}: {source}")]
    Bind {
        /// The address.
        listen: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A Kafka client could not be built.
    #[error(transparent)]
    Kafka(#[from] triggers_core::kafka::ClientError),
    /// The codec could not be built.
    #[error(transparent)]
    Codec(#[from] triggers_core::codec::CodecError),
    /// The settings contradict each other.
    #[error("{0}")]
    Config(String),
}

/// Checks that the largest body the gateway accepts makes records every
/// service can produce: a delivery record is the event plus a little.
pub fn check_record_size(common: &CommonConfig, config: &GatewayConfig) -> Result<(), GatewayError> {
    let needed = config.max_body_bytes + triggers_core::config::RECORD_MARGIN;
    if needed > common.kafka.max_record_bytes {
        return Err(GatewayError::Config(format!(
            "gateway.max_body_bytes ({}) plus the record margin ({}) exceeds kafka.max_record_bytes ({}): \
             raise kafka.max_record_bytes to at least {needed} or lower gateway.max_body_bytes",
            config.max_body_bytes,
            triggers_core::config::RECORD_MARGIN,
            common.kafka.max_record_bytes
        )));
    }
    Ok(())
}

/// Routes served besides the API's ([`api::ROUTES`]): operations, the
/// document, the console.
const OTHER_ROUTES: &[(&str, &str)] = &[
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
    ("get", "/docs"),
    ("get", "/docs/errors"),
    ("get", "/console"),
    ("get", "/console/{file:.*}"),
];

/// The methods `path` answers (upper case, sorted), from the route tables.
/// A path a static route names (`/v1/events/batch`) answers only that
/// route's methods, though a pattern (`/v1/events/{id}`) would match too.
fn allowed_methods(path: &str) -> Vec<String> {
    let routes = || api::ROUTES.iter().chain(OTHER_ROUTES);
    let exact = routes().any(|(_, pattern)| *pattern == path);
    let mut methods: Vec<String> = routes()
        .filter(|(_, pattern)| {
            if exact {
                *pattern == path
            } else {
                actix_web::dev::ResourceDef::new(*pattern).is_match(path)
            }
        })
        .map(|(method, _)| method.to_ascii_uppercase())
        .collect();
    methods.sort();
    methods.dedup();
    methods
}

/// What no route answers: 405 with `Allow` when the path exists with other
/// methods, else 404.
async fn not_found(request: HttpRequest) -> Result<actix_web::HttpResponse, ApiError> {
    let (method, path) = (request.method().to_string(), request.path().to_owned());
    let allowed = allowed_methods(&path);
    if allowed.is_empty() {
        return Err(ApiError::NoRoute { method, path });
    }
    Err(ApiError::MethodNotAllowed {
        method,
        path,
        allow: allowed.join(", "),
    })
}

/// Starts the gateway; it runs until `shutdown` is cancelled, then stops
/// taking requests, finishes those in flight and flushes the producer.
pub async fn start(
    common: &CommonConfig,
    config: &GatewayConfig,
    shutdown: CancellationToken,
) -> Result<RunningServer, GatewayError> {
    check_record_size(common, config)?;
    let dynamo = triggers_core::dynamo::client(&common.dynamodb).await;
    let tables = Tables::new(&common.dynamodb.table_prefix);
    let codec = AvroCodec::new(&common.schema_registry)?;
    let sink = sink::EventSink::new(&common.kafka, codec.clone(), common.topics.events())?;
    let live = web::Data::new(live::LiveFeed::new(
        common.kafka.clone(),
        codec.clone(),
        common.topics.events(),
        common.topics.outcomes(),
        shutdown.clone(),
    ));
    let tally = triggers_core::analytics::Tally::start(
        dynamo.clone(),
        tables.analytics.clone(),
        config.analytics_flush,
        shutdown.clone(),
    );
    let publisher = publisher::SubscriptionPublisher {
        producer: triggers_core::kafka::producer(&common.kafka, "gateway-subscriptions")?,
        codec,
        topic: common.topics.subscriptions(),
        deliveries: common.topics.deliveries(),
    };
    let jwt_secret = match &config.jwt_secret {
        Some(secret) => secret.as_bytes().to_vec(),
        None => {
            tracing::warn!("gateway.jwt_secret is not set: tokens from POST /token work only on this replica");
            let mut secret = vec![0u8; 32];
            rand::rng().fill_bytes(&mut secret);
            secret
        }
    };
    let auth = auth::Authenticator::new(
        dynamo.clone(),
        tables.clone(),
        config.auth_cache_ttl,
        jwt::JwtKeys::new(
            &jwt_secret,
            &config
                .jwt_previous_secrets
                .iter()
                .map(String::as_bytes)
                .collect::<Vec<_>>(),
            &config.jwt_issuer,
            &config.jwt_audience,
        ),
        config.admin_token.as_deref(),
    );
    let idempotency = idempotency::IdempotencyStore::new(
        dynamo.clone(),
        tables.idempotency.clone(),
        config.idempotency_ttl,
        common.kafka.produce_timeout + Duration::from_secs(2),
    );
    let state = web::Data::new(state::AppState {
        auth,
        limiter: ratelimit::RateLimiter::new(config.default_rate_limit, config.rate_limit_replicas),
        sink: sink.clone(),
        idempotency,
        dynamo: dynamo.clone(),
        tables,
        config: config.clone(),
        subscriptions: publisher,
        tally: tally.clone(),
    });
    spawn_outbox_sweep(
        dynamo.clone(),
        state.tables.clone(),
        state.subscriptions.clone(),
        config.outbox_sweep_interval,
        shutdown.clone(),
    );
    let readiness = Readiness::new()
        .with("kafka", ops::kafka_probe(&common.kafka))
        .with("dynamodb", ops::dynamo_probe(&dynamo));

    let admission = web::Data::new(middleware::Admission::new(config.max_in_flight));
    let gauged = admission.clone();
    let mut server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(live.clone())
            .app_data(admission.clone())
            .wrap(actix_web::middleware::from_fn(middleware::admission))
            .wrap(actix_web::middleware::from_fn(middleware::request_context))
            .app_data(
                web::QueryConfig::default()
                    .error_handler(|e, _| ApiError::BadRequest(format!("query string: {e}")).into()),
            )
            .app_data(
                web::PathConfig::default().error_handler(|e, _| ApiError::BadRequest(format!("path: {e}")).into()),
            )
            .configure(ops::configure(readiness.clone()))
            .configure(api::configure)
            .route("/openapi.json", web::get().to(openapi::openapi_json))
            .route("/docs", web::get().to(openapi::docs))
            .configure(console::configure)
            .default_service(web::to(not_found))
    })
    .disable_signals()
    .shutdown_timeout(10);
    if config.workers > 0 {
        server = server.workers(config.workers);
    }
    let server = server.bind(&config.listen).map_err(|source| GatewayError::Bind {
        listen: config.listen.clone(),
        source,
    })?;
    let running = ops::spawn_until(server, shutdown.clone());
    tracing::info!(addr = %running.addr, "gateway listening");

    spawn_gauges(sink.clone(), gauged, shutdown);
    let server_task = running.task;
    let task: JoinHandle<std::io::Result<()>> = tokio::spawn(async move {
        let result = server_task.await;
        tally.close().await;
        // Every request has been answered: flush what is left.
        let flushing = sink.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || flushing.flush()).await {
            tracing::warn!(error = %e, "flush task failed");
        }
        match result {
            Ok(result) => result,
            Err(e) => Err(std::io::Error::other(e)),
        }
    });
    Ok(RunningServer {
        addr: running.addr,
        task,
    })
}

/// Samples the producer queue and the requests in flight every second.
fn spawn_gauges(sink: sink::EventSink, admission: web::Data<middleware::Admission>, shutdown: CancellationToken) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {
                    metrics::gauge!("triggers_gateway_producer_queue_depth").set(f64::from(sink.queue_depth()));
                    metrics::gauge!("triggers_gateway_requests_in_flight").set(admission.in_flight() as f64);
                }
            }
        }
    });
}

/// Publishes, every `interval`, the subscription changes that were stored
/// but not published (Kafka failed after DynamoDB took them) and are older
/// than `interval` ([`triggers_core::subscription::outbox`]).
fn spawn_outbox_sweep(
    dynamo: aws_sdk_dynamodb::Client,
    tables: triggers_core::dynamo::Tables,
    publisher: publisher::SubscriptionPublisher,
    interval: std::time::Duration,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let swept = triggers_core::subscription::outbox::sweep(&dynamo, &tables, publisher.topic(), interval).await;
            if let Err(e) = swept {
                tracing::warn!(error = %e, "the subscription outbox sweep failed; next try in {interval:?}");
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_with_other_methods_answers_405_with_allow() {
        assert_eq!(allowed_methods("/v1/events"), ["GET", "POST"]);
        assert_eq!(allowed_methods("/v1/subscriptions/sub_x"), ["DELETE", "GET", "PATCH"]);
        assert_eq!(allowed_methods("/health"), ["GET"]);
        assert_eq!(allowed_methods("/v1/events/batch"), ["POST"], "not /v1/events/{{id}}'s");
        assert_eq!(allowed_methods("/console/app.js"), ["GET"]);
        assert!(allowed_methods("/v1/nothing").is_empty());
        assert!(allowed_methods("/v1/events/evt_x/nothing").is_empty());
    }

    #[test]
    fn the_body_limit_must_leave_room_for_every_derived_record() {
        let mut common = CommonConfig::default();
        let config = GatewayConfig::default();
        assert!(
            check_record_size(&common, &config).is_ok(),
            "the defaults are consistent"
        );
        common.kafka.max_record_bytes = config.max_body_bytes + 1024;
        let error = match check_record_size(&common, &config) {
            Ok(()) => panic!("a body limit with no room for the record margin was accepted"),
            Err(e) => e.to_string(),
        };
        assert!(error.contains("kafka.max_record_bytes"), "{error}");
    }
}
