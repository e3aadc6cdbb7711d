//! Kafka client builders with the settings Triggers' guarantees rest on, and
//! W3C trace context carried in record headers.
//!
//! - The producer is idempotent with `acks=all`, so a 202 means the record is
//!   replicated and a retried send never duplicates it.
//! - Consumers never store offsets on their own
//!   (`enable.auto.offset.store=false`): a service stores an offset only after
//!   the effect the record caused is done, and librdkafka commits what was
//!   stored every `commit_interval`.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::AdminClient;
use rdkafka::client::OAuthToken;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers, OwnedHeaders};

use crate::config::KafkaConfig;
use crate::handover::Handover;

/// A Kafka client could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot create Kafka {role} client: {source}")]
pub struct ClientError {
    role: &'static str,
    #[source]
    source: KafkaError,
}

/// Settings shared by every client: brokers, client id, MSK IAM
/// authentication, pass-through extras.
pub fn base_config(config: &KafkaConfig, service: &str) -> ClientConfig {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.bootstrap_servers)
        .set("client.id", format!("{}-{service}", config.client_id))
        // Tansu and MSK both advertise their listeners; a short reconnect
        // backoff keeps recovery after a broker restart quick.
        .set("reconnect.backoff.max.ms", "2000");
    if let Some(iam) = &config.msk_iam {
        // librdkafka hands sasl.oauthbearer.config to the token refresh
        // callback: every client context signs for this region.
        client
            .set("security.protocol", "SASL_SSL")
            .set("sasl.mechanism", "OAUTHBEARER")
            .set("sasl.oauthbearer.config", format!("region={}", iam.region));
    }
    for (key, value) in &config.extra {
        client.set(key, value);
    }
    client
}

mod producer;

pub use producer::{Delivery, DeliveryFuture, KafkaProducer, OwnedDeliveryResult};

/// The context of Triggers' producers and admin clients: librdkafka's
/// global errors logged, MSK IAM tokens when `kafka.msk_iam` is set, and
/// for producers, each delivery report handed to its record's future.
#[derive(Debug, Clone, Copy, Default)]
pub struct Context;

impl rdkafka::ClientContext for Context {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    fn generate_oauth_token(&self, config: Option<&str>) -> Result<OAuthToken, Box<dyn std::error::Error>> {
        msk_iam_token(config)
    }
}

/// An MSK IAM token for librdkafka: the region comes from
/// `sasl.oauthbearer.config` (`region=<region>`, set by [`base_config`]).
/// librdkafka asks only when `sasl.mechanism` is OAUTHBEARER.
pub fn msk_iam_token(config: Option<&str>) -> Result<OAuthToken, Box<dyn std::error::Error>> {
    let region = config
        .unwrap_or_default()
        .split_whitespace()
        .find_map(|pair| pair.strip_prefix("region="))
        .ok_or("sasl.oauthbearer.config has no region=…: set kafka.msk_iam.region")?;
    let token = crate::msk_iam::oauth_token(region).inspect_err(|e| {
        tracing::error!(error = %e, hint = "give the pod an AWS identity (IRSA or Pod Identity) allowed kafka-cluster:Connect", "no MSK IAM token");
    })?;
    Ok(OAuthToken {
        token: token.value,
        principal_name: token.principal,
        lifetime_ms: token.expires_at_ms,
    })
}

/// The shared, idempotent producer (`acks=all`, bounded queue).
pub fn producer(config: &KafkaConfig, service: &str) -> Result<KafkaProducer, ClientError> {
    KafkaProducer::new(&producer_config(config, service)).map_err(|source| ClientError {
        role: "producer",
        source,
    })
}

/// The producer's settings, for callers that need their own context.
pub fn producer_config(config: &KafkaConfig, service: &str) -> ClientConfig {
    let mut client = base_config(config, service);
    client
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("max.in.flight.requests.per.connection", "5")
        .set("message.timeout.ms", millis(config.produce_timeout))
        .set("message.max.bytes", config.max_record_bytes.to_string())
        .set(
            "queue.buffering.max.messages",
            config.producer_queue_max_messages.to_string(),
        )
        .set("linger.ms", millis(config.linger));
    client
}

/// A consumer in `group` that stores offsets only when told to.
pub fn consumer<C: ConsumerContext + 'static>(
    config: &KafkaConfig,
    service: &str,
    group: &str,
    context: C,
) -> Result<StreamConsumer<C>, ClientError> {
    consumer_config(config, service, group)
        .create_with_context(context)
        .map_err(|source| ClientError {
            role: "consumer",
            source,
        })
}

/// The consumer's settings, for callers that need another consumer type.
pub fn consumer_config(config: &KafkaConfig, service: &str, group: &str) -> ClientConfig {
    let mut client = base_config(config, service);
    client
        .set("group.id", group)
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("auto.commit.interval.ms", millis(config.commit_interval))
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", millis(config.session_timeout))
        .set("fetch.wait.max.ms", millis(config.fetch_wait_max));
    if let Some(name) = &config.group_instance_id {
        client.set("group.instance.id", name);
    }
    // Incremental rebalances: a member joining or leaving moves only the
    // partitions that must move, and the others keep being worked on. An
    // extra setting may name another assignor (a rolling change from an
    // eager one: docs/operations.md).
    if !config.extra.contains_key("partition.assignment.strategy") {
        client.set("partition.assignment.strategy", "cooperative-sticky");
    }
    if !config.statistics_interval.is_zero() {
        client.set("statistics.interval.ms", millis(config.statistics_interval));
    }
    paced(config, &mut client);
    client
}

/// What idle pacing needs of a consumer ([`crate::pacing`]): the end of a
/// partition reported, so a paced consumer knows its fetch came back.
pub fn paced(config: &KafkaConfig, client: &mut ClientConfig) {
    if !config.idle_fetch_interval.is_zero() {
        client.set("enable.partition.eof", "true");
    }
}

/// The context of every Triggers consumer: librdkafka's global errors
/// logged with a hint of what to do, except the end of a partition (which
/// consumers ask for on purpose: followers to know they caught up, paced
/// consumers to know a fetch came back), and rebalances logged at INFO.
/// In a consumer group it also exports the group's lag per partition from
/// librdkafka's statistics (`kafka.statistics_interval`):
/// `triggers_consumer_lag_records{group,topic,partition}`.
///
/// A consumer with a [`Handover`] (every one made by [`ConsumerLog::in_group`])
/// hands revoked partitions over drained: before they go, their waiting work is stopped,
/// their running work finished and the offsets of what is done stored and
/// committed (see [`crate::handover`]).
#[derive(Debug, Clone)]
pub struct ConsumerLog {
    /// Who consumes (`router`, `deliverer`, …), for the log lines.
    pub role: &'static str,
    group: Option<std::sync::Arc<str>>,
    handover: Option<std::sync::Arc<Handover>>,
}

impl ConsumerLog {
    /// The context of `role`'s consumers.
    pub fn new(role: &'static str) -> Self {
        Self {
            role,
            group: None,
            handover: None,
        }
    }

    /// The context of `role`'s consumer in `group`, which exports its lag
    /// and hands its partitions over drained.
    pub fn in_group(role: &'static str, group: &str) -> Self {
        Self {
            role,
            group: Some(group.into()),
            handover: Some(Handover::new()),
        }
    }

    /// What the consume loop shares with the rebalance callback, if any.
    pub fn handover(&self) -> Option<&std::sync::Arc<Handover>> {
        self.handover.as_ref()
    }
}

/// How many partitions `topic` has, as the broker answers; 0 when it does
/// not know the topic. Blocking: call it from `spawn_blocking`.
pub fn partition_count<C: rdkafka::ClientContext>(
    client: &rdkafka::client::Client<C>,
    topic: &str,
    timeout: Duration,
) -> Result<usize, KafkaError> {
    let metadata = client.fetch_metadata(Some(topic), timeout)?;
    Ok(metadata.topics().first().map_or(0, |t| t.partitions().len()))
}

/// Whether `error` only says a fetch reached the end of a partition.
pub fn is_partition_eof(error: &KafkaError) -> bool {
    matches!(
        error,
        KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
    )
}

impl rdkafka::ClientContext for ConsumerLog {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    fn generate_oauth_token(&self, config: Option<&str>) -> Result<OAuthToken, Box<dyn std::error::Error>> {
        msk_iam_token(config)
    }

    fn stats(&self, statistics: rdkafka::Statistics) {
        let Some(group) = &self.group else { return };
        for (topic, stats) in &statistics.topics {
            for (partition, stats) in &stats.partitions {
                // -1 is librdkafka's internal partition; a negative lag is unknown.
                if *partition < 0 || stats.consumer_lag < 0 {
                    continue;
                }
                metrics::gauge!(
                    "triggers_consumer_lag_records",
                    "group" => group.to_string(),
                    "topic" => topic.clone(),
                    "partition" => partition.to_string()
                )
                .set(stats.consumer_lag as f64);
            }
        }
    }

    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        // The idle pacer's wake-up (an offsets request with no time to
        // wait, `pacing`) expires unsent by design: librdkafka reports it
        // as "Timed out 0 in-flight, 0 retry-queued, 1 out-queue".
        if fac == "REQTMOUT" && log_message.contains(" 0 in-flight, 0 retry-queued,") {
            tracing::debug!(role = self.role, log_message, "queued Kafka request expired unsent");
            return;
        }
        rdkafka::ClientContext::log(&rdkafka::client::DefaultClientContext, level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if is_partition_eof(&error) {
            return;
        }
        let hint = match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::BrokerTransportFailure | RDKafkaErrorCode::AllBrokersDown) => {
                "cannot reach Kafka: is the broker running and kafka.bootstrap_servers right? \
                 The consumer reconnects on its own."
            }
            Some(RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed) => {
                "Kafka refused the credentials: check kafka.extra (SASL/TLS settings)"
            }
            _ => "librdkafka retries on its own; if it persists, check the broker",
        };
        tracing::error!(role = self.role, %error, reason, hint, "Kafka consumer error");
    }
}

impl ConsumerContext for ConsumerLog {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        tracing::debug!(role = self.role, ?rebalance, "rebalance starting");
        if let (Rebalance::Revoke(revoked), Some(handover)) = (rebalance, &self.handover) {
            let partitions: Vec<(String, i32)> = revoked
                .elements()
                .iter()
                .map(|e| (e.topic().to_owned(), e.partition()))
                .collect();
            let drained = handover.revoke(&partitions);
            for d in &drained {
                if let Err(e) = consumer.store_offset(&d.topic, d.partition, d.offset) {
                    tracing::warn!(role = self.role, error = %e, topic = d.topic, partition = d.partition, "cannot store the offset of a revoked partition");
                }
            }
            if !drained.is_empty() {
                match consumer.commit_consumer_state(CommitMode::Sync) {
                    Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
                    Err(e) => tracing::warn!(
                        role = self.role,
                        error = %e,
                        "cannot commit before partitions go; their new owner repeats some records"
                    ),
                }
            }
            tracing::info!(
                role = self.role,
                partitions = partitions.len(),
                committed = drained.len(),
                "revoked partitions drained"
            );
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(partitions) => {
                tracing::info!(role = self.role, partitions = partitions.count(), "partitions assigned")
            }
            Rebalance::Revoke(partitions) => {
                tracing::info!(role = self.role, partitions = partitions.count(), "partitions revoked")
            }
            Rebalance::Error(e) => tracing::warn!(role = self.role, error = %e, "rebalance failed"),
        }
    }
}

/// Why Kafka can never take a record, if that is what `error` says (the
/// record is over `message.max.bytes`, or the topic's `max.message.bytes`);
/// `None` for errors worth retrying.
pub fn permanent_produce_error(error: &KafkaError) -> Option<&'static str> {
    match error.rdkafka_error_code() {
        Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidMessageSize) => Some("record_too_large"),
        Some(RDKafkaErrorCode::InvalidRecord | RDKafkaErrorCode::InvalidMessage) => Some("record_invalid"),
        _ => None,
    }
}

/// An admin client, for provisioning and readiness checks.
pub fn admin(config: &KafkaConfig, service: &str) -> Result<AdminClient<Context>, ClientError> {
    base_config(config, service)
        .create_with_context(Context)
        .map_err(|source| ClientError { role: "admin", source })
}

fn millis(duration: Duration) -> String {
    duration.as_millis().to_string()
}

/// Record headers that carry W3C trace context (`traceparent`, `tracestate`).
pub mod trace_headers {
    use opentelemetry::propagation::{Extractor, Injector};
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    use super::*;

    struct HeaderInjector<'a>(&'a mut HashMap<String, String>);

    impl Injector for HeaderInjector<'_> {
        fn set(&mut self, key: &str, value: String) {
            self.0.insert(key.to_owned(), value);
        }
    }

    struct HeaderExtractor(HashMap<String, String>);

    impl Extractor for HeaderExtractor {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).map(String::as_str)
        }

        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(String::as_str).collect()
        }
    }

    /// Adds the current span's trace context to `headers`.
    pub fn inject(headers: OwnedHeaders) -> OwnedHeaders {
        let context = tracing::Span::current().context();
        let mut fields = HashMap::new();
        opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.inject_context(&context, &mut HeaderInjector(&mut fields));
        });
        fields.into_iter().fold(headers, |headers, (key, value)| {
            headers.insert(rdkafka::message::Header {
                key: &key,
                value: Some(value.as_bytes()),
            })
        })
    }

    /// The trace context of `span` as header fields (`traceparent`,
    /// `tracestate`); empty when the span is not traced (no exporter, or
    /// not sampled and no parent).
    pub fn fields_of(span: &tracing::Span) -> Vec<(String, String)> {
        let context = span.context();
        let mut fields = HashMap::new();
        opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.inject_context(&context, &mut HeaderInjector(&mut fields));
        });
        let mut fields: Vec<(String, String)> = fields.into_iter().collect();
        fields.sort();
        fields
    }

    /// Makes `span` a child of a W3C `traceparent` (and `tracestate`), as an
    /// HTTP request carries them.
    pub fn extract_from(traceparent: Option<&str>, tracestate: Option<&str>, span: &tracing::Span) {
        let Some(traceparent) = traceparent else { return };
        let mut fields = HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
        if let Some(tracestate) = tracestate {
            fields.insert("tracestate".to_owned(), tracestate.to_owned());
        }
        let extractor = HeaderExtractor(fields);
        let parent = opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(&extractor));
        let _ = span.set_parent(parent);
    }

    /// Whether a W3C `traceparent` (`00-<trace>-<parent>-<flags>`) says its
    /// trace is not sampled: nothing under it will be exported, so no span
    /// needs to be built; the record's `traceparent` is passed on as it is.
    pub fn unsampled(traceparent: &[u8]) -> bool {
        match traceparent {
            [version @ .., b'-', hi, lo] if version.len() == 52 => {
                let mut flags = [0u8; 1];
                hex::decode_to_slice([*hi, *lo], &mut flags).is_ok_and(|()| flags[0] & 1 == 0)
            }
            _ => false,
        }
    }

    /// Whether `span` is part of a sampled trace (false with tracing off,
    /// and for a span that is not recorded at all).
    pub fn is_sampled(span: &tracing::Span) -> bool {
        use opentelemetry::trace::TraceContextExt as _;
        !span.is_disabled() && span.context().span().span_context().is_sampled()
    }

    /// A span for processing one record of `topic` (messaging semantic
    /// conventions), the child of the trace context in the record's headers;
    /// no span at all when that context is not sampled (90% of events at the
    /// default ratio: building spans nobody exports is most of tracing's cost).
    pub fn process_span<M: rdkafka::Message>(message: &M, service: &'static str) -> tracing::Span {
        let headers = message.headers();
        if traceparent(headers).is_some_and(unsampled) {
            return tracing::Span::none();
        }
        let span = tracing::debug_span!(
            "process",
            otel.name = %format!("{} process", message.topic()),
            otel.kind = "consumer",
            messaging.system = "kafka",
            messaging.operation.type = "process",
            messaging.destination.name = %message.topic(),
            messaging.destination.partition.id = message.partition(),
            messaging.kafka.offset = message.offset(),
            messaging.kafka.message.key = %String::from_utf8_lossy(message.key().unwrap_or_default()),
            triggers.service = service,
        );
        extract_into(headers, &span);
        span
    }

    /// Makes `span` a child of the trace context found in `headers`, if any.
    pub fn extract_into<H: Headers>(headers: Option<&H>, span: &tracing::Span) {
        let Some(headers) = headers else { return };
        let mut fields = HashMap::new();
        for header in headers.iter() {
            if let Some(value) = header.value.and_then(|v| std::str::from_utf8(v).ok()) {
                fields.insert(header.key.to_ascii_lowercase(), value.to_owned());
            }
        }
        let extractor = HeaderExtractor(fields);
        let parent = opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(&extractor));
        // Fails only when the span is disabled; then there is nothing to link.
        let _ = span.set_parent(parent);
    }

    /// The `traceparent` header of a record, if present (any case).
    pub fn traceparent<H: Headers>(headers: Option<&H>) -> Option<&[u8]> {
        headers?
            .iter()
            .find(|h| h.key.eq_ignore_ascii_case("traceparent"))
            .and_then(|h| h.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msk_iam::MskIamConfig;

    fn setting(client: &ClientConfig, key: &str) -> Option<String> {
        client.get(key).map(str::to_owned)
    }

    #[test]
    fn a_traceparent_without_the_sampled_flag_is_unsampled() {
        use trace_headers::unsampled;
        let id = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7";
        assert!(unsampled(format!("{id}-00").as_bytes()));
        assert!(unsampled(format!("{id}-02").as_bytes()));
        assert!(!unsampled(format!("{id}-01").as_bytes()));
        assert!(!unsampled(format!("{id}-03").as_bytes()));
        assert!(!unsampled(format!("{id}-FF").as_bytes()));
        // Malformed: not known to be unsampled, so traced as before.
        assert!(!unsampled(b"00-x"));
        assert!(!unsampled(b""));
        assert!(!unsampled(format!("{id}-0").as_bytes()));
    }

    #[test]
    fn msk_iam_selects_sasl_oauthbearer_over_tls_and_names_the_region() {
        let config = KafkaConfig {
            msk_iam: Some(MskIamConfig {
                region: "eu-central-1".to_owned(),
            }),
            ..KafkaConfig::default()
        };
        for client in [
            base_config(&config, "gateway"),
            producer_config(&config, "gateway"),
            consumer_config(&config, "router", "triggers-router"),
        ] {
            assert_eq!(setting(&client, "security.protocol").as_deref(), Some("SASL_SSL"));
            assert_eq!(setting(&client, "sasl.mechanism").as_deref(), Some("OAUTHBEARER"));
            assert_eq!(
                setting(&client, "sasl.oauthbearer.config").as_deref(),
                Some("region=eu-central-1")
            );
        }
    }

    #[test]
    fn tls_and_scram_come_from_the_extra_settings_and_plaintext_is_the_default() {
        let plain = base_config(&KafkaConfig::default(), "router");
        assert_eq!(
            setting(&plain, "security.protocol"),
            None,
            "librdkafka's default: plaintext"
        );
        assert_eq!(setting(&plain, "sasl.mechanism"), None);

        let scram = KafkaConfig {
            extra: [
                ("security.protocol", "SASL_SSL"),
                ("sasl.mechanism", "SCRAM-SHA-512"),
                ("sasl.username", "triggers"),
                ("sasl.password", "s3cret"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
            ..KafkaConfig::default()
        };
        let client = producer_config(&scram, "gateway");
        assert_eq!(setting(&client, "security.protocol").as_deref(), Some("SASL_SSL"));
        assert_eq!(setting(&client, "sasl.mechanism").as_deref(), Some("SCRAM-SHA-512"));
        assert_eq!(setting(&client, "sasl.username").as_deref(), Some("triggers"));
        // The guarantees stay the services' own.
        assert_eq!(setting(&client, "enable.idempotence").as_deref(), Some("true"));
        assert_eq!(setting(&client, "acks").as_deref(), Some("all"));
    }

    #[test]
    fn a_token_request_without_a_region_says_what_to_set() {
        let error = msk_iam_token(None).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("kafka.msk_iam.region"), "{error}");
        let error = msk_iam_token(Some("principal=x"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains("kafka.msk_iam.region"), "{error}");
    }

    #[test]
    fn msk_iam_refuses_extra_settings_that_would_override_it() {
        use crate::config::Validate as _;
        let config = KafkaConfig {
            msk_iam: Some(MskIamConfig {
                region: "us-east-1".to_owned(),
            }),
            extra: [("sasl.mechanism".to_owned(), "PLAIN".to_owned())]
                .into_iter()
                .collect(),
            ..KafkaConfig::default()
        };
        let mut issues = Vec::new();
        config.validate("kafka", &mut issues);
        assert_eq!(issues.len(), 1, "{issues:?}");
        assert!(
            issues[0].to_string().contains("kafka.extra.sasl.mechanism"),
            "{}",
            issues[0]
        );
    }
}
