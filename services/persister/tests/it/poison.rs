//! A record DynamoDB can never take does not freeze its partition: it is
//! quarantined with the reason, and the events after it are stored.

use std::time::Duration;

use rdkafka::Message;
use rdkafka::message::Headers;
use rdkafka::producer::FutureRecord;
use serde_json::json;
use triggers_core::codec::Contract;
use triggers_core::event::Event;
use triggers_stack::topics::read_topic;

use crate::support::env;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_too_large_for_an_item_is_quarantined_and_the_partition_moves_on() {
    let env = env().await;
    // A Kafka-native producer's event: small data, but 450 KB of extension
    // attributes, which no DynamoDB item can hold (the gateway would refuse it).
    let mut huge = Event::new(env.tenant, "blob.tagged", "native", json!({"n": 1}));
    for i in 0..450 {
        huge.extensions.insert(format!("ext{i}"), "x".repeat(1024));
    }
    let topic = env.common.topics.events();
    let payload = env.codec.encode(&topic, Contract::Event, &huge).await.unwrap();
    env.producer
        .send(
            FutureRecord::to(&topic).key(&huge.kafka_key()).payload(&payload),
            Duration::from_secs(10),
        )
        .await
        .unwrap_or_else(|(e, _)| panic!("{e}"));
    // The next event of the tenant, on the same partition.
    let next = env.ingest(json!({"type": "order.created", "source": "shop"})).await;
    env.wait_event(&next, |_| true).await;

    // The event; its routing outcome, when written in the same batch as
    // the event, goes with it.
    let quarantined = read_topic(
        &env.common.kafka.bootstrap_servers,
        &env.common.topics.quarantine(),
        2,
        Duration::from_secs(10),
    )
    .await;
    let record = quarantined
        .iter()
        .find(|r| r.payload() == Some(payload.as_slice()))
        .unwrap_or_else(|| panic!("the event was not quarantined ({} records)", quarantined.len()));
    let header = |name: &str| {
        record
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == name).and_then(|h| h.value))
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    assert_eq!(header("triggers-error-reason").as_deref(), Some("store_rejected"));
    assert_eq!(header("triggers-service").as_deref(), Some("persister"));
    assert!(
        header("triggers-error-message").is_some_and(|m| m.contains("room")),
        "{:?}",
        header("triggers-error-message")
    );
    let (status, _) = env
        .call(reqwest::Method::GET, &format!("/v1/events/{}", huge.id), None)
        .await;
    assert_eq!(status, 404, "a partial item of the huge event was stored");
}
