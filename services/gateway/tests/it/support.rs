use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use triggers_core::CancellationToken;
use triggers_core::codec::{AvroCodec, Contract};
use triggers_core::config::CommonConfig;
use triggers_core::event::Event;
use triggers_core::ids::TenantId;
use triggers_gateway::GatewayConfig;
use triggers_stack::TestStack;

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// A gateway on its own topics and tables, with a tenant and its key.
pub struct Gateway {
    _slice: triggers_testkit::Slice,
    pub url: String,
    pub common: CommonConfig,
    pub tenant: TenantId,
    pub key: String,
    pub http: reqwest::Client,
    pub shutdown: CancellationToken,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub async fn start(stack: &TestStack, adjust: impl FnOnce(&mut CommonConfig, &mut GatewayConfig)) -> Gateway {
    let slice = triggers_testkit::slice(stack).await;
    let (tenant, key) = slice.tenant_with_key(None).await;
    let (mut common, shutdown) = (slice.common.clone(), slice.shutdown.clone());

    let mut config = GatewayConfig {
        listen: "127.0.0.1:0".to_owned(),
        workers: 2,
        admin_token: Some(ADMIN_TOKEN.to_owned()),
        jwt_secret: Some("a-test-jwt-secret-of-at-least-32-chars".to_owned()),
        auth_cache_ttl: Duration::from_secs(1),
        ..GatewayConfig::default()
    };
    adjust(&mut common, &mut config);
    let running = triggers_gateway::start(&common, &config, shutdown.clone())
        .await
        .expect("gateway");
    Gateway {
        _slice: slice,
        url: format!("http://{}", running.addr),
        common,
        tenant,
        key,
        http: reqwest::Client::new(),
        shutdown,
    }
}

impl Gateway {
    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{}{path}", self.url))
            .bearer_auth(&self.key)
            .header("content-type", "application/json")
    }

    /// Every record of the events topic, decoded, with its key, until
    /// `count` are read or `timeout` passes.
    pub async fn read_events(&self, count: usize, timeout: Duration) -> Vec<(String, Event)> {
        let consumer: StreamConsumer = triggers_core::kafka::base_config(&self.common.kafka, "test-reader")
            .set("group.id", format!("reader-{}", triggers_core::ids::RequestId::new()))
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "10")
            .create()
            .unwrap();
        let topic = self.common.topics.events();
        let mut assignment = TopicPartitionList::new();
        for partition in 0..self.common.topics.partitions {
            assignment
                .add_partition_offset(&topic, partition, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&assignment).unwrap();
        let codec = AvroCodec::new(&self.common.schema_registry).unwrap();
        let mut events = Vec::new();
        let deadline = tokio::time::Instant::now() + timeout;
        while events.len() < count {
            let message = match tokio::time::timeout_at(deadline, consumer.recv()).await {
                Ok(Ok(message)) => message,
                Ok(Err(e)) => panic!("{e}"),
                Err(_) => break,
            };
            let key = String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned();
            let event: Event = codec
                .decode(Contract::Event, message.payload().unwrap_or_default())
                .await
                .unwrap();
            events.push((key, event));
        }
        events
    }
}

/// The JSON body of a response, with its status and headers.
pub async fn answer(response: reqwest::Response) -> (u16, reqwest::header::HeaderMap, serde_json::Value) {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.json().await.unwrap_or(serde_json::Value::Null);
    (status, headers, body)
}
