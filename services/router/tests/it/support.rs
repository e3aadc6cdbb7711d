use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::Message;
use rdkafka::producer::FutureRecord;
use serde_json::{Value, json};
use triggers_core::CancellationToken;
use triggers_core::codec::{AvroCodec, Contract};
use triggers_core::config::CommonConfig;
use triggers_core::delivery::{Delivery, Outcome};
use triggers_core::event::{Event, now_ms};
use triggers_core::follower::Follower;
use triggers_core::ids::{EventId, SubscriptionId, TenantId};
use triggers_core::kafka::KafkaProducer;
use triggers_core::ops::RunningServer;
use triggers_router::RouterConfig;
use triggers_stack::TestStack;
use triggers_stack::topics::read_topic;
use triggers_testkit::Api;

pub struct Env {
    slice: triggers_testkit::Slice,
    pub common: CommonConfig,
    pub api: Api,
    pub tenant: TenantId,
    pub codec: AvroCodec,
    pub producer: KafkaProducer,
    pub shutdown: CancellationToken,
    pub router_shutdown: CancellationToken,
    pub router: Option<RunningServer>,
    /// The running router's subscription table.
    table: Option<Follower>,
}

impl std::ops::Deref for Env {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.api
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.router_shutdown.cancel();
        self.shutdown.cancel();
    }
}

pub async fn env() -> Env {
    let slice = triggers_testkit::slice(TestStack::shared()).await;
    let (tenant, key) = slice.tenant_with_key(None).await;
    let (common, shutdown) = (slice.common.clone(), slice.shutdown.clone());
    let gateway = triggers_gateway::testing::start(&slice, shutdown.clone(), |_| {}).await;
    let codec = AvroCodec::new(&common.schema_registry).unwrap();
    let producer = triggers_core::kafka::producer(&common.kafka, "test").unwrap();
    let mut env = Env {
        slice,
        common,
        api: Api::new(gateway.addr, key),
        tenant,
        codec,
        producer,
        shutdown,
        router_shutdown: CancellationToken::new(),
        router: None,
        table: None,
    };
    env.start_router(RouterConfig::default()).await;
    env
}

impl Env {
    pub async fn start_router(&mut self, config: RouterConfig) {
        self.router_shutdown = CancellationToken::new();
        // The slice's own group (tests running at once must not rebalance
        // each other) and an ephemeral port; the rest from `config`.
        let (router, table) =
            triggers_router::testing::start_following(&self.slice, self.router_shutdown.clone(), |defaults| {
                *defaults = RouterConfig {
                    listen: defaults.listen.clone(),
                    group_id: defaults.group_id.clone(),
                    ..config
                };
            })
            .await;
        self.router = Some(router);
        self.table = Some(table);
    }

    /// Stops the router; with a zero grace period, work in flight is
    /// abandoned as in a crash.
    pub async fn stop_router(&mut self) {
        self.router_shutdown.cancel();
        self.table = None;
        if let Some(router) = self.router.take() {
            let stopped = tokio::time::timeout(Duration::from_secs(30), router.task).await;
            assert!(matches!(stopped, Ok(Ok(Ok(())))), "router did not stop: {stopped:?}");
        }
    }

    /// Creates a subscription and, while a router runs, waits until it
    /// knows it (subscriptions reach the router asynchronously).
    pub async fn subscribe(&self, body: Value) -> String {
        let created = self.api.subscribe(body).await;
        assert!(created["secret"].as_str().is_some_and(|s| s.starts_with("whsec_")));
        let id = created["id"].as_str().unwrap_or_default().to_owned();
        if let Some(table) = &self.table {
            let parsed: SubscriptionId = id.parse().unwrap_or_else(|_| panic!("no subscription id: {created}"));
            assert!(
                table.knows(&parsed, Duration::from_secs(20)).await,
                "the router never learnt subscription {id}"
            );
        }
        id
    }

    /// An event as a Kafka-native producer would write it.
    pub fn native_event(&self, tenant: TenantId, event_type: &str, data: Value) -> Event {
        Event {
            id: EventId::new(),
            tenant,
            event_type: event_type.to_owned(),
            source: "kafka://orders-service".to_owned(),
            subject: None,
            time: now_ms(),
            received_at: now_ms(),
            specversion: "1.0".to_owned(),
            datacontenttype: "application/json".to_owned(),
            data: data.into(),
            partition_key: None,
            extensions: BTreeMap::new(),
        }
    }

    pub async fn produce_raw(&self, key: &str, payload: &[u8]) {
        self.producer
            .send(
                FutureRecord::to(&self.common.topics.events()).key(key).payload(payload),
                Duration::from_secs(10),
            )
            .await
            .unwrap_or_else(|(e, _)| panic!("{e}"));
    }

    /// The Avro record of `event` as the events topic takes it.
    pub async fn encoded(&self, event: &Event) -> Vec<u8> {
        self.codec
            .encode(&self.common.topics.events(), Contract::Event, event)
            .await
            .unwrap()
    }

    pub async fn produce_native(&self, event: &Event) {
        let payload = self.encoded(event).await;
        self.produce_raw(&event.tenant.to_string(), &payload).await;
    }

    pub async fn outcomes(&self, count: usize, timeout: Duration) -> Vec<Outcome> {
        let mut outcomes = Vec::new();
        for message in read_topic(
            &self.common.kafka.bootstrap_servers,
            &self.common.topics.outcomes(),
            count,
            timeout,
        )
        .await
        {
            let outcome: Outcome = self
                .codec
                .decode(Contract::Outcome, message.payload().unwrap_or_default())
                .await
                .unwrap();
            outcomes.push(outcome);
        }
        outcomes
    }

    pub async fn deliveries(&self, count: usize, timeout: Duration) -> Vec<(String, Delivery)> {
        let mut deliveries = Vec::new();
        for message in read_topic(
            &self.common.kafka.bootstrap_servers,
            &self.common.topics.deliveries(),
            count,
            timeout,
        )
        .await
        {
            let key = String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned();
            let delivery: Delivery = self
                .codec
                .decode(Contract::Delivery, message.payload().unwrap_or_default())
                .await
                .unwrap();
            deliveries.push((key, delivery));
        }
        deliveries
    }

    /// The subscriptions the router sent event `id` to, once it routed it.
    pub async fn routed_to(&self, id: &str) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let outcomes = self.outcomes(usize::MAX, Duration::from_millis(700)).await;
            if let Some(outcome) = outcomes.iter().find(|o| o.event_id.to_string() == id) {
                let mut subscriptions: Vec<String> = outcome.subscriptions.iter().map(ToString::to_string).collect();
                subscriptions.sort();
                return subscriptions;
            }
            assert!(tokio::time::Instant::now() < deadline, "event {id} was never routed");
        }
    }

    /// Sends probe events until routing gives `expected` (subscription
    /// changes reach the router asynchronously), then returns.
    pub async fn eventually_routes(&self, event: Value, expected: &[&str]) {
        let mut expected: Vec<String> = expected.iter().map(|s| (*s).to_owned()).collect();
        expected.sort();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let id = self.ingest(event.clone()).await;
            let got = self.routed_to(&id).await;
            if got == expected {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "routing never became {expected:?}; last {got:?}"
            );
        }
    }
}

pub fn order(total: u32) -> Value {
    json!({"type": "order.created", "source": "shop", "data": {"total": total}})
}
