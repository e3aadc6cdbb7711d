use std::time::Duration;

use rdkafka::producer::FutureRecord;
use serde_json::Value;
use triggers_core::CancellationToken;
use triggers_core::codec::{AvroCodec, Contract};
use triggers_core::config::CommonConfig;
use triggers_core::delivery::Outcome;
use triggers_core::dynamo::Tables;
use triggers_core::follower::Follower;
use triggers_core::ids::{SubscriptionId, TenantId};
use triggers_core::kafka::KafkaProducer;
use triggers_core::ops::RunningServer;
use triggers_stack::TestStack;
use triggers_testkit::Api;

pub const ADMIN: &str = "persister-test-admin-token";

pub struct Env {
    pub slice: triggers_testkit::Slice,
    pub common: CommonConfig,
    pub tables: Tables,
    pub dynamo: aws_sdk_dynamodb::Client,
    pub api: Api,
    pub tenant: TenantId,
    pub codec: AvroCodec,
    pub producer: KafkaProducer,
    pub shutdown: CancellationToken,
    pub persister_shutdown: CancellationToken,
    pub persister: Option<RunningServer>,
    /// The router's subscription table.
    pub router: Follower,
}

impl std::ops::Deref for Env {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.api
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.persister_shutdown.cancel();
        self.shutdown.cancel();
    }
}

pub async fn env() -> Env {
    let slice = triggers_testkit::slice(TestStack::shared()).await;
    let (tenant, key) = slice.tenant_with_key(Some(30)).await;
    let (common, shutdown) = (slice.common.clone(), slice.shutdown.clone());
    let (tables, dynamo) = (slice.tables.clone(), slice.dynamo.clone());
    let gateway = triggers_gateway::testing::start(&slice, shutdown.clone(), |gateway| {
        gateway.workers = 2;
        gateway.admin_token = Some(ADMIN.to_owned());
    })
    .await;
    let (_, router) = triggers_router::testing::start_following(&slice, shutdown.clone(), |_| {}).await;
    let codec = AvroCodec::new(&common.schema_registry).unwrap();
    let producer = triggers_core::kafka::producer(&common.kafka, "test").unwrap();
    let mut env = Env {
        slice,
        common,
        tables,
        dynamo,
        api: Api::new(gateway.addr, key),
        tenant,
        codec,
        producer,
        shutdown,
        persister_shutdown: CancellationToken::new(),
        persister: None,
        router,
    };
    env.start_persister(Duration::from_secs(20)).await;
    env
}

impl Env {
    pub async fn start_persister(&mut self, grace: Duration) {
        self.start_persister_with(|persister| persister.shutdown_grace = grace)
            .await;
    }

    /// Starts a persister with its settings changed by `adjust`.
    pub async fn start_persister_with(&mut self, adjust: impl FnOnce(&mut triggers_persister::PersisterConfig)) {
        self.persister_shutdown = CancellationToken::new();
        let persister = triggers_persister::testing::start(&self.slice, self.persister_shutdown.clone(), adjust).await;
        self.persister = Some(persister);
    }

    pub async fn stop_persister(&mut self) {
        self.persister_shutdown.cancel();
        if let Some(persister) = self.persister.take() {
            let stopped = tokio::time::timeout(Duration::from_secs(30), persister.task).await;
            assert!(matches!(stopped, Ok(Ok(Ok(())))), "persister did not stop: {stopped:?}");
        }
    }

    /// Creates a subscription and waits until the router knows it: a new
    /// subscription reaches the router asynchronously, so an event sent at
    /// once could otherwise be routed without it (stored `unmatched`).
    pub async fn subscribe(&self, body: Value) -> Value {
        let created = self.api.subscribe(body).await;
        let id: SubscriptionId = created["id"]
            .as_str()
            .and_then(|id| id.parse().ok())
            .unwrap_or_else(|| panic!("no subscription id: {created}"));
        assert!(
            self.router.knows(&id, Duration::from_secs(20)).await,
            "the router never learnt subscription {id}"
        );
        created
    }

    /// Waits until `GET /v1/events/{id}` answers 200 with `check` true.
    pub async fn wait_event(&self, id: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let (status, body) = self.call(reqwest::Method::GET, &format!("/v1/events/{id}"), None).await;
            if status == 200 && check(&body) {
                return body;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "event {id} never got there: {status} {body}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Every event id listed by `path` (paging with the cursor).
    pub async fn all_ids(&self, path: &str) -> Vec<String> {
        let mut ids = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let separator = if path.contains('?') { '&' } else { '?' };
            let url = match &cursor {
                Some(c) => format!("{path}{separator}limit=7&cursor={c}"),
                None => format!("{path}{separator}limit=7"),
            };
            let (status, page) = self.call(reqwest::Method::GET, &url, None).await;
            assert_eq!(status, 200, "{page}");
            for item in page["data"].as_array().cloned().unwrap_or_default() {
                ids.push(item["id"].as_str().unwrap_or_default().to_owned());
            }
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => return ids,
            }
        }
    }

    pub async fn produce_outcome(&self, outcome: &Outcome) {
        self.produce_outcome_to(outcome, None).await;
    }

    /// Produces `outcome`, to `partition` when given (records of one
    /// partition are read in order).
    pub async fn produce_outcome_to(&self, outcome: &Outcome, partition: Option<i32>) {
        let topic = self.common.topics.outcomes();
        let payload = self.codec.encode(&topic, Contract::Outcome, outcome).await.unwrap();
        let key = outcome.event_id.to_string();
        let mut record = FutureRecord::to(&topic).key(&key).payload(&payload);
        if let Some(partition) = partition {
            record = record.partition(partition);
        }
        self.producer
            .send(record, Duration::from_secs(10))
            .await
            .unwrap_or_else(|(e, _)| panic!("{e}"));
    }
}
