//! `codec-bench`: CPU per record of the Avro codec, the work every service
//! does per record (the gateway writes events; the router reads them and
//! writes deliveries and outcomes; the deliverer reads deliveries and writes
//! outcomes; the persister reads events and outcomes).
//!
//! Starts a stack of its own (Tansu, DynamoDB Local, the schema registry),
//! then encodes and decodes 1 KB events, deliveries of them and outcomes in a
//! loop on one thread, two ways, alternating: through `AvroCodec` (schemas
//! resolved once per process, records written and read straight from and
//! into the Rust values), and through the registry client's own encode and
//! decode followed by a resolution to this build's schema and a conversion
//! from `Value`, which is what `AvroCodec` did before. Then builds the
//! persister's items of 1 KB order events (`eventstore::new_item`: the
//! payload deflated when that saves a write unit). CPU is this process's
//! (`/proc/self/stat`). Prints Markdown.

// A benchmark program: its report is its output.
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use apache_avro::Schema;
use clap::Parser;
use schema_registry_converter::async_impl::avro::{AvroDecoder, AvroEncoder};
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use schema_registry_converter::schema_registry_common::{SchemaType, SubjectNameStrategy, SuppliedSchema};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use triggers_bench::payload::Data;
use triggers_core::CancellationToken;
use triggers_core::codec::{AvroCodec, Contract};
use triggers_core::config::ConfigSource;
use triggers_core::delivery::{Delivery, Outcome};
use triggers_core::event::Event;
use triggers_core::eventstore;
use triggers_core::ids::{SubscriptionId, TenantId};

#[derive(Debug, Parser)]
#[command(about = "CPU per record of the Avro codec")]
struct Args {
    /// Records per contract, way and round.
    #[arg(long, default_value_t = 50_000)]
    records: usize,
    /// Rounds (each runs both ways once).
    #[arg(long, default_value_t = 2)]
    rounds: usize,
}

/// This process's CPU time so far (user and system, every thread).
fn own_cpu() -> Duration {
    triggers_core::telemetry::process_cpu_time().unwrap_or_default()
}

/// The codec as it was: the registry client's encode and decode, then a
/// resolution to this build's schema and a conversion from `Value`.
struct Generic {
    encoder: AvroEncoder,
    decoder: AvroDecoder,
}

impl Generic {
    async fn encode<T: Serialize>(&self, topic: &str, contract: Contract, value: &T) -> anyhow::Result<Vec<u8>> {
        let strategy = SubjectNameStrategy::TopicNameStrategyWithSchema(
            topic.to_owned(),
            false,
            SuppliedSchema::new(
                Some(contract.record_name().to_owned()),
                SchemaType::Avro,
                contract.schema_json().to_owned(),
            ),
        );
        Ok(self.encoder.encode_struct(value, &strategy).await?)
    }

    async fn decode<T: DeserializeOwned>(&self, reader: &Schema, bytes: &[u8]) -> anyhow::Result<T> {
        let decoded = self.decoder.decode(Some(bytes)).await?;
        let resolved = decoded.value.resolve(reader)?;
        Ok(apache_avro::from_value(&resolved)?)
    }
}

/// µs of CPU per encode and per decode of `value`, `n` times each.
async fn measure<T>(
    codec: &AvroCodec,
    generic: Option<&Generic>,
    topic: &str,
    contract: Contract,
    value: &T,
    n: usize,
) -> anyhow::Result<(f64, f64, usize)>
where
    T: Serialize + DeserializeOwned + PartialEq,
{
    let reader = codec.schema(contract).ok_or_else(|| anyhow::anyhow!("no schema"))?;
    let encode = || async move {
        match generic {
            Some(generic) => generic.encode(topic, contract, value).await,
            None => Ok(codec.encode(topic, contract, value).await?),
        }
    };
    let bytes = encode().await?;
    let start = own_cpu();
    let mut total = 0;
    for _ in 0..n {
        total += std::hint::black_box(encode().await?).len();
    }
    let encode_us = (own_cpu() - start).as_secs_f64() * 1e6 / n as f64;
    let start = own_cpu();
    for _ in 0..n {
        let decoded: T = match generic {
            Some(generic) => generic.decode(reader, &bytes).await?,
            None => codec.decode(contract, &bytes).await?,
        };
        anyhow::ensure!(decoded == *value, "{contract:?} did not round trip");
    }
    let decode_us = (own_cpu() - start).as_secs_f64() * 1e6 / n as f64;
    Ok((encode_us, decode_us, total / n))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let stack = triggers_stack::TestStack::start()?;
    let namespace = "codecbench";
    let mut common = ConfigSource::from_parts(None, Vec::new())?
        .with_toml(&stack.config_toml(namespace))
        .common()?;
    let schemas_topic = format!("{namespace}._schemas");
    let tables = triggers_core::dynamo::Tables::new(&common.dynamodb.table_prefix);
    let dynamo = triggers_core::dynamo::client(&common.dynamodb).await;
    triggers_core::provision::provision_all(&common.kafka, &common.topics, &schemas_topic, &dynamo, &tables).await?;
    let shutdown = CancellationToken::new();
    let registry = triggers_registry::start(
        &common.kafka,
        &triggers_registry::RegistryServerConfig {
            listen: "127.0.0.1:0".to_owned(),
            topic: schemas_topic,
            ..Default::default()
        },
        shutdown.clone(),
    )
    .await?;
    common.schema_registry.url = registry.url();

    let codec = AvroCodec::new(&common.schema_registry)?;
    let settings = || SrSettings::new_builder(registry.url()).no_proxy().build();
    let generic = Generic {
        encoder: AvroEncoder::new(settings()?),
        decoder: AvroDecoder::new(settings()?),
    };

    // A 1 KB event, as the benchmarks send.
    let mut event = Event::new(
        TenantId::new(),
        "order.created",
        "https://shop.example/orders",
        json!({"order_id": 42, "customer": "c-7", "items": [{"sku": "A-1", "qty": 2, "price": 19.99}], "note": "x".repeat(700)}),
    );
    event.subject = Some("order-42".to_owned());
    event.extensions = BTreeMap::from([(
        "traceparent".to_owned(),
        "00-4bf92f3577b34da6-00f067aa0ba902b7-01".to_owned(),
    )]);
    let delivery = Delivery::first(event.clone(), SubscriptionId::new());
    let outcome = Outcome::routing(&event, vec![delivery.subscription_id]);

    println!("| round | record | bytes | way | encode, µs CPU | decode, µs CPU |");
    println!("|---|---|---|---|---|---|");
    for round in 1..=args.rounds {
        for (way, generic) in [
            ("registry client + resolve (before)", Some(&generic)),
            ("AvroCodec", None),
        ] {
            let rows = [
                (
                    "event",
                    measure(
                        &codec,
                        generic,
                        &common.topics.events(),
                        Contract::Event,
                        &event,
                        args.records,
                    )
                    .await?,
                ),
                (
                    "delivery",
                    measure(
                        &codec,
                        generic,
                        &common.topics.deliveries(),
                        Contract::Delivery,
                        &delivery,
                        args.records,
                    )
                    .await?,
                ),
                (
                    "outcome",
                    measure(
                        &codec,
                        generic,
                        &common.topics.outcomes(),
                        Contract::Outcome,
                        &outcome,
                        args.records,
                    )
                    .await?,
                ),
            ];
            for (record, (encode, decode, bytes)) in rows {
                println!("| {round} | {record} | {bytes} B | {way} | {encode:.2} | {decode:.2} |");
            }
        }
    }
    // What the persister does per new event besides decoding it: the
    // event's item, its payload deflated when that saves a write unit.
    let orders: Vec<Event> = (0..1_000)
        .map(|seq| {
            let mut order = event.clone();
            order.data = Data::Order.of(seq, "").into();
            order
        })
        .collect();
    let routed = [outcome.clone()];
    println!(
        "\n| round | event items (`eventstore::new_item`, ~1 KB order payloads) | µs CPU per item | payloads deflated |"
    );
    println!("|---|---|---|---|");
    for round in 1..=args.rounds {
        let mut deflated = 0;
        let start = own_cpu();
        for order in orders.iter().cycle().take(args.records) {
            let item = eventstore::new_item(order, 0, &routed).ok_or_else(|| anyhow::anyhow!("no item"))?;
            deflated += usize::from(std::hint::black_box(item).is_deflated());
        }
        let micros = (own_cpu() - start).as_secs_f64() * 1e6 / args.records as f64;
        println!("| {round} | {} | {micros:.2} | {deflated} |", args.records);
    }
    let started = Instant::now();
    shutdown.cancel();
    drop(stack);
    println!("\n(stack stopped in {:.1} s)", started.elapsed().as_secs_f64());
    Ok(())
}
