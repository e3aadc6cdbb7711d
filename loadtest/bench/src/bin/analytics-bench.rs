//! `analytics-bench`: `GET /v1/analytics` for a tenant that ingested
//! 100,000 events in the last 24 hours.
//!
//! The whole local stack; the demo tenant's counters are written the way
//! the pipeline writes them (a `Tally` fed each event's status transitions,
//! its delivery attempts with their latencies and its ingest latency, then
//! flushed), spread evenly over the last 24 h across three subscriptions,
//! 5 % of the events needing a retry. Then the API is timed over HTTP for
//! each range, and the 24 h report is checked against what was written.
//!
//! Prints Markdown for `loadtest/RESULTS.md`.

// A benchmark program: its report is its output.
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use triggers_core::CancellationToken;
use triggers_core::analytics::Tally;
use triggers_core::delivery::{Outcome, OutcomeKind};
use triggers_core::dynamo::Tables;
use triggers_core::event::now_ms;
use triggers_core::ids::{DeliveryId, EventId, SubscriptionId, TenantId};
use triggers_core::status::{DeliveryState, Progress};

#[derive(Debug, Parser)]
#[command(about = "GET /v1/analytics for a tenant with 100,000 events in 24 h")]
struct Args {
    /// Events in the last 24 hours.
    #[arg(long, default_value_t = 100_000)]
    events: u64,
    /// Requests per range.
    #[arg(long, default_value_t = 50)]
    requests: usize,
}

fn outcome(
    tenant: TenantId,
    event: EventId,
    sub: SubscriptionId,
    kind: OutcomeKind,
    attempt: i32,
    latency: i64,
) -> Outcome {
    Outcome {
        event_id: event,
        tenant,
        subscription_id: Some(sub),
        delivery_id: Some(DeliveryId::derive(&event, &sub)),
        kind,
        attempt,
        at: i64::try_from(event.timestamp_ms()).unwrap_or(0) + latency * 3,
        http_status: Some(if kind == OutcomeKind::Delivered { 200 } else { 503 }),
        latency_ms: Some(latency),
        error: (kind != OutcomeKind::Delivered).then(|| "HTTP 503".to_owned()),
        response_excerpt: None,
        subscriptions: Vec::new(),
        next_attempt_at: None,
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let local = triggers_bench::start_local(None).await?;
    let stack = &local.stack;
    let tenant: TenantId = stack.demo.tenant_id.parse().context("demo tenant id")?;
    let dynamo = triggers_core::dynamo::client(&stack.common.dynamodb).await;
    let tables = Tables::new(&stack.common.dynamodb.table_prefix);
    let stop = CancellationToken::new();
    let tally = Tally::start(
        dynamo,
        tables.analytics.clone(),
        Duration::from_secs(3_600),
        stop.clone(),
    );

    // Count the events as the pipeline would.
    let subscriptions = [SubscriptionId::new(), SubscriptionId::new(), SubscriptionId::new()];
    let now = now_ms();
    let span = 24 * 3_600_000 - 120_000;
    let started = Instant::now();
    for n in 0..args.events {
        let at = now - span + i64::try_from(n).unwrap_or(0) * span / i64::try_from(args.events).unwrap_or(1);
        let id = EventId::from_ulid(ulid::Ulid::from_parts(u64::try_from(at).unwrap_or(0), u128::from(n)));
        let sub = subscriptions[usize::try_from(n % 3).unwrap_or(0)];
        let latency = 5 + i64::try_from(n % 200).unwrap_or(0);
        let accepted = Progress::default();
        let mut routed = accepted.clone();
        routed.routed = true;
        routed.subscriptions.insert(sub.to_string(), DeliveryState::Pending);
        let mut delivered = routed.clone();
        delivered
            .subscriptions
            .insert(sub.to_string(), DeliveryState::Delivered);
        tally.ingested_in(&tenant, &id, 2 + latency / 20);
        tally.progressed(&tenant, &id, None, &accepted);
        tally.progressed(&tenant, &id, Some(&accepted), &routed);
        if n % 20 == 0 {
            tally.attempted(&outcome(tenant, id, sub, OutcomeKind::Retrying, 1, latency));
            tally.attempted(&outcome(tenant, id, sub, OutcomeKind::Delivered, 2, latency));
        } else {
            tally.attempted(&outcome(tenant, id, sub, OutcomeKind::Delivered, 1, latency));
        }
        tally.progressed(&tenant, &id, Some(&routed), &delivered);
    }
    let counted = started.elapsed();
    let started = Instant::now();
    tally.flush().await.context("flush")?;
    let flushed = started.elapsed();
    stop.cancel();

    let http = reqwest::Client::new();
    let url = |range: &str| format!("{}/v1/analytics?range={range}", stack.endpoints.gateway_url);
    let report: serde_json::Value = http
        .get(url("24h"))
        .bearer_auth(&stack.demo.api_key)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    anyhow::ensure!(
        report["totals"]["ingested"] == args.events,
        "the 24 h report counts {} events, not {}",
        report["totals"]["ingested"],
        args.events
    );
    anyhow::ensure!(report["status"]["delivered"] == args.events, "{}", report["status"]);

    println!(
        "### `GET /v1/analytics`, a tenant with {} events in 24 h\n",
        args.events
    );
    println!(
        "Counting them in a `Tally`: {:.0} ms ({:.1} µs per event); one flush of the whole day \
         ({} minutes × 4 scopes, a minute and an hour item each): {:.1} s.\n",
        counted.as_secs_f64() * 1000.0,
        counted.as_secs_f64() * 1e6 / args.events as f64,
        24 * 60,
        flushed.as_secs_f64()
    );
    println!("| range | points | requests | p50 | p95 | max |");
    println!("|---|---|---|---|---|---|");
    for range in ["1h", "24h", "7d", "24h&granularity=minute"] {
        let mut times = Vec::with_capacity(args.requests);
        let mut points = 0;
        for _ in 0..args.requests {
            let started = Instant::now();
            let body: serde_json::Value = http
                .get(url(range))
                .bearer_auth(&stack.demo.api_key)
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            times.push(started.elapsed());
            points = body["series"].as_array().map_or(0, Vec::len);
        }
        times.sort();
        println!(
            "| {range} | {points} | {} | {:.1} ms | {:.1} ms | {:.1} ms |",
            args.requests,
            triggers_bench::percentile(&times, 0.5).as_secs_f64() * 1000.0,
            triggers_bench::percentile(&times, 0.95).as_secs_f64() * 1000.0,
            times.last().copied().unwrap_or_default().as_secs_f64() * 1000.0,
        );
    }
    local.stack.stop().await;
    Ok(())
}
