//! Kafka bytes per event: what the pipeline wrote to each topic between
//! two moments, read back record by record. The capacity model sizes MSK
//! (its throughput, its storage) by these bytes (docs/capacity.md).
//!
//! The figures are the records' payload as producers hand it to Kafka, key,
//! value and headers, uncompressed (the services do not compress). The
//! record-batch framing comes on top: 61 bytes per batch and about 10 per
//! record in Kafka's v2 format.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use triggers_core::config::TopicsConfig;

/// How long reading the records back may take.
const READ_LIMIT: Duration = Duration::from_secs(120);
/// How long a metadata or watermark request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Where each partition of a set of topics ended at one moment: (topic,
/// partition) → the offset the next record gets.
#[derive(Debug, Clone, Default)]
pub struct Marks(BTreeMap<(String, i32), i64>);

/// What was written to one topic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Volume {
    pub records: u64,
    /// Keys, values and headers (names and values), in bytes.
    pub bytes: u64,
}

/// The topics an event's records go to; the subscriptions and
/// registry topics are left out (nothing writes them per event).
pub fn pipeline_topics(topics: &TopicsConfig) -> Vec<String> {
    let mut all = vec![topics.events(), topics.deliveries(), topics.outcomes()];
    all.extend(topics.retries());
    all.extend([topics.dlq(), topics.quarantine(), topics.events_invalid()]);
    all
}

/// How many consumer groups read `topic` in the common case: `events` the
/// router and the persister, `outcomes` the persister, `deliveries` and
/// its retry tiers the deliverer. Dead letters and quarantined records are
/// read only when an operator redrives or inspects them; the console's
/// live feed (`GET /v1/stream`) reads `events` and `outcomes` once more per
/// gateway replica while a stream is open, which is not counted.
pub fn readers(topics: &TopicsConfig, topic: &str) -> u64 {
    if topic == topics.events() {
        2
    } else if topic == topics.deliveries() || topic == topics.outcomes() || topics.retries().iter().any(|t| t == topic)
    {
        1
    } else {
        0
    }
}

/// A Markdown table of what was written per event to each topic that got
/// records, and the bytes written and read per event in all.
pub fn report(written: &BTreeMap<String, Volume>, topics: &TopicsConfig, events: usize) -> String {
    let per_event = |v: u64| v as f64 / events.max(1) as f64;
    let mut rows = String::new();
    let (mut records, mut bytes, mut read) = (0, 0, 0);
    for (topic, volume) in written.iter().filter(|(_, v)| v.records > 0) {
        let readers = readers(topics, topic);
        records += volume.records;
        bytes += volume.bytes;
        read += volume.bytes * readers;
        rows.push_str(&format!(
            "| `{topic}` | {:.3} | {:.0} B | {:.0} B | {readers} |\n",
            per_event(volume.records),
            volume.bytes as f64 / volume.records as f64,
            per_event(volume.bytes),
        ));
    }
    format!(
        "Kafka per event (records read back from every topic of the pipeline; key, value and headers, \
         uncompressed, without the batch framing):\n\n\
         | topic | records per event | bytes per record | bytes per event | groups reading it |\n|---|---|---|---|---|\n\
         {rows}| **all** | **{:.3}** | | **{:.0} B written** | **{:.0} B read** |\n",
        per_event(records),
        per_event(bytes),
        per_event(read),
    )
}

fn reader(bootstrap: &str) -> anyhow::Result<BaseConsumer> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("fault-suite-traffic-{}", ulid::Ulid::new()))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()
        .context("a Kafka reader for the traffic figures")
}

/// Where every partition of `topics` ends now. Blocking.
pub fn marks(bootstrap: &str, topics: &[String]) -> anyhow::Result<Marks> {
    let consumer = reader(bootstrap)?;
    let mut marks = BTreeMap::new();
    for topic in topics {
        let partitions = triggers_core::kafka::partition_count(consumer.client(), topic, REQUEST_TIMEOUT)
            .with_context(|| format!("metadata of {topic}"))?;
        for partition in 0..partitions {
            let partition = i32::try_from(partition)?;
            let (_, high) = consumer
                .fetch_watermarks(topic, partition, REQUEST_TIMEOUT)
                .with_context(|| format!("watermarks of {topic}/{partition}"))?;
            marks.insert((topic.clone(), partition), high);
        }
    }
    Ok(Marks(marks))
}

/// The records written since `from` to the topics it marks, per topic,
/// read up to where each partition ends now. Blocking.
pub fn since(bootstrap: &str, from: &Marks) -> anyhow::Result<BTreeMap<String, Volume>> {
    let topics: Vec<String> = from
        .0
        .keys()
        .map(|(topic, _)| topic.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let to = marks(bootstrap, &topics)?;
    let mut volumes: BTreeMap<String, Volume> = topics.iter().map(|t| (t.clone(), Volume::default())).collect();
    // Partitions with records to read, and the offset each must reach.
    let mut left: BTreeMap<(String, i32), i64> = BTreeMap::new();
    let mut assignment = TopicPartitionList::new();
    for ((topic, partition), end) in &to.0 {
        let start = from.0.get(&(topic.clone(), *partition)).copied().unwrap_or(0);
        if *end > start {
            assignment.add_partition_offset(topic, *partition, Offset::Offset(start))?;
            left.insert((topic.clone(), *partition), *end);
        }
    }
    if left.is_empty() {
        return Ok(volumes);
    }
    let consumer = reader(bootstrap)?;
    consumer.assign(&assignment)?;
    let deadline = Instant::now() + READ_LIMIT;
    while !left.is_empty() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "reading the pipeline's records back took over {} s; partitions left: {:?}",
            READ_LIMIT.as_secs(),
            left.keys().collect::<Vec<_>>()
        );
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message.context("reading the pipeline's records back")?;
        let key = (message.topic().to_owned(), message.partition());
        let Some(end) = left.get(&key).copied() else {
            continue;
        };
        if message.offset() >= end {
            left.remove(&key);
            continue;
        }
        let volume = volumes.entry(key.0.clone()).or_default();
        volume.records += 1;
        volume.bytes += record_bytes(&message) as u64;
        if message.offset() + 1 >= end {
            left.remove(&key);
        }
    }
    Ok(volumes)
}

/// A record's key, value and headers, in bytes.
fn record_bytes<M: Message>(message: &M) -> usize {
    let headers = message.headers().map_or(0, |headers| {
        headers
            .iter()
            .map(|h| h.key.len() + h.value.map_or(0, <[u8]>::len))
            .sum()
    });
    message.key().map_or(0, <[u8]>::len) + message.payload().map_or(0, <[u8]>::len) + headers
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::{Header, OwnedHeaders, OwnedMessage, Timestamp};

    #[test]
    fn a_record_counts_its_key_value_and_headers() {
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "tenant",
                value: Some("t1"),
            })
            .insert(Header::<&str> {
                key: "empty",
                value: None,
            });
        let message = OwnedMessage::new(
            Some(vec![0; 100]),
            Some(b"key".to_vec()),
            "t".to_owned(),
            Timestamp::NotAvailable,
            0,
            0,
            Some(headers),
        );
        assert_eq!(record_bytes(&message), 100 + 3 + "tenant".len() + 2 + "empty".len());
        let bare = OwnedMessage::new(None, None, "t".to_owned(), Timestamp::NotAvailable, 0, 0, None);
        assert_eq!(record_bytes(&bare), 0);
    }

    #[test]
    fn the_pipeline_topics_include_every_retry_tier() {
        let topics = TopicsConfig::default();
        let all = pipeline_topics(&topics);
        assert_eq!(all.len(), 3 + topics.retry_tiers.len() + 3);
        assert!(all.contains(&"triggers.deliveries.retry.5s".to_owned()));
        assert!(!all.contains(&topics.subscriptions()));
    }

    #[test]
    fn the_report_counts_bytes_once_written_and_once_per_reading_group() {
        let topics = TopicsConfig::default();
        let volume = |records, bytes| Volume { records, bytes };
        let written = BTreeMap::from([
            (topics.events(), volume(10, 11_000)),
            (topics.deliveries(), volume(10, 12_000)),
            (topics.outcomes(), volume(20, 6_000)),
            (topics.dlq(), volume(0, 0)),
        ]);
        let text = report(&written, &topics, 10);
        // 29,000 B written by 10 events; events read twice, the rest once.
        assert!(text.contains("**2900 B written**"), "{text}");
        assert!(text.contains("**4000 B read**"), "{text}");
        assert!(
            text.contains("| `triggers.outcomes` | 2.000 | 300 B | 600 B | 1 |"),
            "{text}"
        );
        assert!(!text.contains("dlq"), "{text}");
    }
}
