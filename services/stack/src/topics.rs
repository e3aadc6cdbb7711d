//! Reading topics in tests.

use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::OwnedMessage;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

/// Every record of `topic` from the beginning, until `count` were read or
/// `timeout` passed (whichever first), in the order they arrived.
///
/// # Panics
/// When the broker cannot be reached (a test failure).
pub async fn read_topic(bootstrap: &str, topic: &str, count: usize, timeout: Duration) -> Vec<OwnedMessage> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("test-reader-{}", ulid::Ulid::new()))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()
        .unwrap_or_else(|e| panic!("reader for {topic}: {e}"));
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("metadata of {topic}: {e}"));
    let partitions = metadata.topics().first().map(|t| t.partitions().len()).unwrap_or(0);
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment
            .add_partition_offset(topic, partition as i32, Offset::Beginning)
            .unwrap_or_else(|e| panic!("{e}"));
    }
    consumer.assign(&assignment).unwrap_or_else(|e| panic!("{e}"));
    let deadline = tokio::time::Instant::now() + timeout;
    let mut records = Vec::new();
    while records.len() < count {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Ok(Ok(message)) => records.push(message.detach()),
            Ok(Err(e)) => panic!("reading {topic}: {e}"),
            Err(_) => break,
        }
    }
    records
}

/// The value of header `name` of `message`, as text.
pub fn header(message: &OwnedMessage, name: &str) -> Option<String> {
    use rdkafka::message::Headers;
    let headers = message.headers()?;
    headers
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}
