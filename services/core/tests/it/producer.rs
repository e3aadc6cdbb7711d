//! Triggers' producer against real Tansu: every concurrent send gets its own
//! delivery report, and what was reported is what a reader finds.

use std::collections::BTreeSet;
use std::time::Duration;

use rdkafka::Message;
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use triggers_stack::topics::read_topic;

use crate::support::TestEnv;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_send_is_reported_where_it_landed() {
    let env = TestEnv::new().await;
    env.provision().await;
    let topic = env.common.topics.events();
    let producer = triggers_core::kafka::producer(&env.common.kafka, "producer-test").unwrap();
    let payloads: Vec<String> = (0..20).map(|i| format!("record-{i}")).collect();
    let sends = payloads.iter().map(|payload| {
        let headers = OwnedHeaders::new().insert(Header {
            key: "traceparent",
            value: Some(payload.as_bytes()),
        });
        producer.send(
            FutureRecord::to(&topic)
                .key("one-key")
                .payload(payload.as_bytes())
                .headers(headers),
            Duration::from_secs(10),
        )
    });
    let reports = futures::future::join_all(sends).await;
    let mut landed = BTreeSet::new();
    for report in reports {
        let delivery = report.unwrap_or_else(|(e, _)| panic!("{e}"));
        landed.insert((delivery.partition, delivery.offset));
    }
    assert_eq!(
        landed.len(),
        payloads.len(),
        "two sends reported the same offset: {landed:?}"
    );

    let messages = read_topic(
        &env.common.kafka.bootstrap_servers,
        &topic,
        payloads.len(),
        Duration::from_secs(20),
    )
    .await;
    let found: BTreeSet<(i32, i64)> = messages.iter().map(|m| (m.partition(), m.offset())).collect();
    assert_eq!(found, landed);
    for message in &messages {
        let header = message
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == "traceparent"));
        assert_eq!(
            header.and_then(|h| h.value),
            message.payload(),
            "headers travel with their record"
        );
    }
}
