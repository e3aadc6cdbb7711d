//! Writes one event straight to `triggers.events`, as a Kafka-native
//! producer would: Avro in Confluent wire format, the schema registered under
//! `triggers.events-value`, keyed by tenant. The router routes it exactly like
//! an event from the HTTP API.
//!
//! ```sh
//! scripts/run-local            # in another terminal
//! source var/local.env
//! cargo run -p triggers-router --example kafka_native_producer -- order.created '{"order_id": 42}'
//! ```
//!
//! The demo receiver then prints the webhook (once the deliverer runs), and
//! `GET /v1/events/{id}` shows the event.

// An example program: it reports what it did.
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use rdkafka::producer::FutureRecord;
use triggers_core::codec::{AvroCodec, Contract};
use triggers_core::config::{KafkaConfig, SchemaRegistryConfig};
use triggers_core::event::{Event, now_ms};
use triggers_core::ids::EventId;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let env = |name: &str| std::env::var(name).with_context(|| format!("{name} is not set: source var/local.env"));
    let mut args = std::env::args().skip(1);
    let event_type = args.next().unwrap_or_else(|| "order.created".to_owned());
    let data: serde_json::Value = match args.next() {
        Some(text) => serde_json::from_str(&text).context("the second argument must be JSON")?,
        None => serde_json::json!({"order_id": 42}),
    };

    let kafka = KafkaConfig {
        bootstrap_servers: env("TRIGGERS_KAFKA_BOOTSTRAP")?,
        ..KafkaConfig::default()
    };
    let registry = SchemaRegistryConfig {
        url: env("TRIGGERS_REGISTRY_URL")?,
        ..SchemaRegistryConfig::default()
    };
    let tenant = env("TRIGGERS_DEMO_TENANT_ID")?
        .parse()
        .context("TRIGGERS_DEMO_TENANT_ID")?;
    let topic = std::env::var("TRIGGERS_EVENTS_TOPIC").unwrap_or_else(|_| "triggers.events".to_owned());

    let event = Event {
        id: EventId::new(),
        tenant,
        event_type,
        source: "kafka://example-producer".to_owned(),
        subject: None,
        time: now_ms(),
        received_at: now_ms(),
        specversion: "1.0".to_owned(),
        datacontenttype: "application/json".to_owned(),
        data: data.into(),
        partition_key: None,
        extensions: BTreeMap::new(),
    };
    let codec = AvroCodec::new(&registry)?;
    let payload = codec.encode(&topic, Contract::Event, &event).await?;
    let producer = triggers_core::kafka::producer(&kafka, "example")?;
    let key = event.kafka_key();
    let delivered = producer
        .send(
            FutureRecord::to(&topic).key(&key).payload(&payload),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)?;
    println!(
        "produced {} ({}) to {topic} partition {} offset {}",
        event.id, event.event_type, delivered.partition, delivered.offset
    );
    Ok(())
}
