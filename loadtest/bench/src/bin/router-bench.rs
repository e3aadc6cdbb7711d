//! `router-bench`: the router with 10,000 subscriptions over 1,000 tenants.
//!
//! 1. Matching cost: the in-memory table alone, over 200,000 events.
//! 2. Router throughput: a stack of its own (Tansu, DynamoDB Local, the
//!    registry, one router), the subscriptions published to the compacted
//!    topic, events written to `<ns>.events` before the router starts; the
//!    time from its start until every event is routed.
//!
//! Prints Markdown for `loadtest/RESULTS.md`.

// A benchmark program: its report is its output.
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use futures::StreamExt;
use rdkafka::producer::{FutureRecord, Producer};
use serde_json::json;
use triggers_core::CancellationToken;
use triggers_core::codec::{AvroCodec, Contract};
use triggers_core::config::ConfigSource;
use triggers_core::dynamo::Tables;
use triggers_core::event::{Event, now_ms};
use triggers_core::ids::{EventId, TenantId};
use triggers_core::subscription::Subscription;
use triggers_router::table::SubscriptionTable;

#[derive(Debug, Parser)]
#[command(about = "Router benchmark: 10,000 subscriptions over 1,000 tenants")]
struct Args {
    /// Tenants.
    #[arg(long, default_value_t = 1_000)]
    tenants: usize,
    /// Subscriptions per tenant.
    #[arg(long, default_value_t = 10)]
    per_tenant: usize,
    /// Events for the matching measurement.
    #[arg(long, default_value_t = 200_000)]
    match_events: usize,
    /// Events for the router run.
    #[arg(long, default_value_t = 50_000)]
    route_events: usize,
}

const CURRENCIES: [&str; 3] = ["EUR", "USD", "JPY"];
const TYPES: &[&str] = &[
    "order.created",
    "order.paid",
    "order.line.added",
    "user.created",
    "invoice.sent",
];

/// The subscriptions of one tenant: exact types, prefixes, a wildcard and
/// filtered ones, in rotation.
fn subscriptions(tenant: TenantId, count: usize) -> Vec<Subscription> {
    (0..count)
        .map(|i| {
            let (types, filter) = match i % 5 {
                0 => (vec![TYPES[i % TYPES.len()].to_owned()], None),
                1 => (vec!["order.*".to_owned()], None),
                2 => (vec!["user.*".to_owned(), "invoice.*".to_owned()], None),
                3 => (vec!["*".to_owned()], Some(json!({"field": "data.total", "gte": 500}))),
                _ => (
                    vec!["order.created".to_owned()],
                    Some(json!({"and": [{"field": "data.currency", "in": ["EUR", "USD"]}, {"field": "data.total", "gt": 100}]})),
                ),
            };
            Subscription {
                filter: filter.map(|f| f.to_string()),
                ..Subscription::new(
                    tenant,
                    format!("http://hooks.test/{tenant}/{i}"),
                    types,
                    "whsec_AAAA".to_owned(),
                    now_ms(),
                )
            }
        })
        .collect()
}

fn event(tenant: TenantId, i: usize) -> Event {
    Event {
        id: EventId::new(),
        tenant,
        event_type: TYPES[i % TYPES.len()].to_owned(),
        source: "bench".to_owned(),
        subject: None,
        time: now_ms(),
        received_at: now_ms(),
        specversion: "1.0".to_owned(),
        datacontenttype: "application/json".to_owned(),
        data: json!({"total": (i * 37) % 1000, "currency": CURRENCIES[i % 3]}).into(),
        partition_key: None,
        extensions: BTreeMap::new(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let tenants: Vec<TenantId> = (0..args.tenants).map(|_| TenantId::new()).collect();
    let all: Vec<Subscription> = tenants
        .iter()
        .flat_map(|t| subscriptions(*t, args.per_tenant))
        .collect();
    println!("# Router benchmark\n");
    println!(
        "{} subscriptions over {} tenants (exact, prefix, wildcard, filtered).\n",
        all.len(),
        tenants.len()
    );

    // 1. Matching cost.
    let mut table = SubscriptionTable::new();
    let build = Instant::now();
    for s in &all {
        table.upsert(s.clone());
    }
    let build = build.elapsed();
    let events: Vec<Event> = (0..args.match_events)
        .map(|i| event(tenants[i % tenants.len()], i))
        .collect();
    let start = Instant::now();
    let mut matched = 0usize;
    for e in &events {
        matched += table.matching(e).len();
    }
    let elapsed = start.elapsed();
    println!("## Matching (in memory)\n");
    println!("| measure | value |\n|---|---|");
    println!(
        "| table build, {} subscriptions | {:.1} ms |",
        all.len(),
        build.as_secs_f64() * 1000.0
    );
    println!("| events matched | {} |", events.len());
    println!("| matches per event | {:.2} |", matched as f64 / events.len() as f64);
    println!(
        "| cost per event | **{:.2} µs** |",
        elapsed.as_secs_f64() * 1e6 / events.len() as f64
    );
    println!(
        "| single-core matching rate | {:.0} events/s |\n",
        events.len() as f64 / elapsed.as_secs_f64()
    );

    // 2. Router throughput on a stack of its own.
    let stack = triggers_stack::TestStack::start()?;
    let namespace = "bench";
    let mut common = ConfigSource::from_parts(None, Vec::new())?
        .with_toml(&stack.config_toml(namespace))
        .with_value("topics.partitions", 6)
        .common()?;
    let tables = Tables::new(&common.dynamodb.table_prefix);
    let dynamo = triggers_core::dynamo::client(&common.dynamodb).await;
    let schemas_topic = format!("{namespace}._schemas");
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
    common.telemetry.log_level = "error".to_owned();

    // Tenants (DynamoDB Local is slow per write: in parallel).
    futures::stream::iter(tenants.iter().map(|t| {
        let dynamo = dynamo.clone();
        let tables = tables.clone();
        let tenant = triggers_core::tenancy::Tenant {
            id: *t,
            name: "bench".to_owned(),
            created_at: now_ms(),
            rate_limit: None,
            retention_days: None,
        };
        async move { triggers_core::tenancy::put_tenant(&dynamo, &tables, &tenant).await }
    }))
    .buffer_unordered(32)
    .collect::<Vec<_>>()
    .await
    .into_iter()
    .collect::<Result<Vec<_>, _>>()?;

    let codec = AvroCodec::new(&common.schema_registry)?;
    let producer = triggers_core::kafka::producer(&common.kafka, "bench")?;
    let subscriptions_topic = common.topics.subscriptions();
    for s in &all {
        let payload = codec.encode(&subscriptions_topic, Contract::Subscription, s).await?;
        // Queued only: the flush below waits for every report.
        let _report = producer
            .send_result(
                FutureRecord::to(&subscriptions_topic)
                    .key(&s.id.to_string())
                    .payload(&payload),
            )
            .map_err(|(e, _)| e)?;
    }
    let events_topic = common.topics.events();
    for i in 0..args.route_events {
        let e = event(tenants[i % tenants.len()], i);
        let payload = codec.encode(&events_topic, Contract::Event, &e).await?;
        loop {
            match producer.send_result(
                FutureRecord::to(&events_topic)
                    .key(&e.tenant.to_string())
                    .payload(&payload),
            ) {
                Ok(_) => break,
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    }
    producer.flush(Duration::from_secs(60))?;

    let router_shutdown = CancellationToken::new();
    let start = Instant::now();
    let router = triggers_router::start(
        &common,
        &triggers_router::RouterConfig {
            listen: "127.0.0.1:0".to_owned(),
            ..Default::default()
        },
        router_shutdown.clone(),
    )
    .await?;
    let caught_up = start.elapsed();
    let metrics_url = format!("http://{}/metrics", router.addr);
    let routed_count = || async {
        let text = reqwest::get(&metrics_url).await.ok()?.text().await.ok()?;
        Some(
            text.lines()
                .filter(|l| l.starts_with("triggers_router_events_total{"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>() as usize,
        )
    };
    loop {
        if routed_count().await.unwrap_or(0) >= args.route_events {
            break;
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(600),
            "routing did not finish in 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let total = start.elapsed();
    let routing = total - caught_up;
    let text = reqwest::get(&metrics_url).await?.text().await?;
    let deliveries = text
        .lines()
        .find(|l| l.starts_with("triggers_router_deliveries_total"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .context("no deliveries metric")?;
    println!("## Router throughput (Tansu, 6 partitions, one router)\n");
    println!("| measure | value |\n|---|---|");
    println!(
        "| subscription table read to its end at start | {:.2} s |",
        caught_up.as_secs_f64()
    );
    println!("| events routed | {} |", args.route_events);
    println!(
        "| deliveries written | {deliveries:.0} ({:.2} per event) |",
        deliveries / args.route_events as f64
    );
    println!("| routing time | {:.2} s |", routing.as_secs_f64());
    println!(
        "| router throughput | **{:.0} events/s** ({:.0} records/s written) |",
        args.route_events as f64 / routing.as_secs_f64(),
        (args.route_events as f64 + deliveries) / routing.as_secs_f64()
    );
    router_shutdown.cancel();
    let _ = router.task.await;
    shutdown.cancel();
    Ok(())
}
