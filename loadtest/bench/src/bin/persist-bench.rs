//! `persist-bench`: how soon an accepted event is readable, and how fast the
//! inbox lists.
//!
//! Starts the local stack (gateway, router, persister, DynamoDB Local, Tansu)
//! on free ports, ingests at fixed rates, and for sampled events polls
//! `GET /v1/events/{id}` from its 202 until it answers: the time to
//! readability, and how many events/s the persister stored. Before that it
//! measures what DynamoDB Local itself takes in the same run: item creates
//! like the persister's (a conditional UpdateItem of a ~1.5 KB item) from as
//! many writers as the persister runs at once, so the persister's rate can
//! be read as a share of the store's. Then lists 1,000 inbox events.
//! Prints Markdown.

// A benchmark program: its report is its output.
#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use serde_json::json;
use triggers_bench::payload::Data;
use triggers_bench::percentile;

#[derive(Debug, Parser)]
#[command(about = "Persistence benchmark: time from 202 to readable, inbox listing")]
struct Args {
    /// Ingest rates to try, events/s.
    #[arg(long, value_delimiter = ',', default_value = "100,250,500,1000")]
    rates: Vec<u64>,
    /// Seconds per rate.
    #[arg(long, default_value_t = 15)]
    seconds: u64,
    /// Poll every n-th event for readability.
    #[arg(long, default_value_t = 50)]
    sample_every: usize,
    /// Milliseconds between polls of one sampled event.
    #[arg(long, default_value_t = 200)]
    poll_ms: u64,
    /// Seconds of raw item writes to DynamoDB Local first (0: skip).
    #[arg(long, default_value_t = 10)]
    raw_seconds: u64,
    /// The events' `data`: `pad` (1,000 bytes of `x`, which deflate to
    /// nothing; the figures before 2026-12-07) or `order` (~1 KB of varying
    /// order JSON, which deflates as real payloads do).
    #[arg(long, value_enum, default_value_t = Data::Pad)]
    data: Data,
}

/// Item creates per second DynamoDB Local takes from `writers` concurrent
/// writers for `seconds`: the persister's common write (a conditional
/// UpdateItem creating a ~1.5 KB item), into a table of its own.
async fn raw_write_rate(
    config: &triggers_core::config::DynamoConfig,
    writers: usize,
    seconds: u64,
) -> anyhow::Result<f64> {
    let client = triggers_core::dynamo::client(config).await;
    let table = triggers_bench::create_item_table(&client, "rawbench").await?;
    let data = "x".repeat(1_400);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let writes = (0..writers).map(|writer| {
        let (client, table, data) = (client.clone(), table.clone(), data.clone());
        async move {
            let mut written = 0u64;
            while Instant::now() < deadline {
                if triggers_bench::create_item(&client, &table, writer, &data).await {
                    written += 1;
                }
            }
            written
        }
    });
    let started = Instant::now();
    let written: u64 = futures::future::join_all(writes).await.into_iter().sum();
    let rate = written as f64 / started.elapsed().as_secs_f64();
    client.delete_table().table_name(&table).send().await?;
    Ok(rate)
}

/// The persister's `triggers_persister_events_total` (one process hosts
/// every service locally: its operations port shows them all).
async fn events_stored(client: &reqwest::Client, persister: &str) -> anyhow::Result<f64> {
    let text = client.get(format!("{persister}/metrics")).send().await?.text().await?;
    Ok(text
        .lines()
        .filter_map(|line| line.strip_prefix("triggers_persister_events_total"))
        .filter_map(|rest| rest.split_whitespace().last()?.parse::<f64>().ok())
        .sum())
}

/// How many DynamoDB writes the local persister runs at once.
fn stack_writers(source: &triggers_core::config::ConfigSource) -> usize {
    source
        .section::<triggers_persister::PersisterConfig>("persister")
        .map_or(64, |config| config.write_concurrency)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let triggers_bench::Local {
        stack,
        source,
        guards: _guards,
    } = triggers_bench::start_local(None).await?;
    let client = reqwest::Client::builder().pool_max_idle_per_host(256).build()?;
    let base = stack.endpoints.gateway_url.clone();
    let key = Arc::new(stack.demo.api_key.clone());

    println!("# Persistence benchmark\n");
    println!(
        "Gateway, router, persister, deliverer, Tansu and DynamoDB Local on this machine; 1 KB events; every {}th event polled every {} ms from its 202 until `GET /v1/events/{{id}}` answers. Stored events/s: from the first event until the persister stored them all.\n",
        args.sample_every, args.poll_ms
    );
    let persister = stack
        .endpoints
        .ops_urls
        .iter()
        .find(|(name, _)| *name == "persister")
        .map(|(_, url)| url.clone())
        .context("the persister's operations address")?;
    let writers = stack_writers(&source);
    // Rows wait for DynamoDB Local's own rate, measured after them (warm).
    let mut rows: Vec<(String, f64)> = Vec::new();
    // Per rate, why posts were not accepted (status or error) and how often.
    let mut refusals: Vec<(u64, std::collections::BTreeMap<String, usize>)> = Vec::new();
    let pad = "x".repeat(1_000);
    for &rate in &args.rates {
        let stored_before = events_stored(&client, &persister).await?;
        let total = (rate * args.seconds) as usize;
        let interval = Duration::from_secs_f64(1.0 / rate as f64);
        let start = tokio::time::Instant::now();
        let mut tasks = Vec::with_capacity(total);
        let (sample_every, poll) = (args.sample_every, Duration::from_millis(args.poll_ms));
        for i in 0..total {
            tokio::time::sleep_until(start + interval.mul_f64(i as f64)).await;
            let (client, base, key) = (client.clone(), base.clone(), key.clone());
            let data = args.data.of(i as u64, &pad);
            tasks.push(tokio::spawn(async move {
                let response = client
                    .post(format!("{base}/v1/events"))
                    .bearer_auth(key.as_str())
                    .json(&json!({"type": "bench.persist", "source": "bench", "data": data}))
                    .send()
                    .await
                    .map_err(|e| {
                        if e.is_timeout() {
                            "timeout".to_owned()
                        } else if e.is_connect() {
                            "connect error".to_owned()
                        } else {
                            "request error".to_owned()
                        }
                    })?;
                if response.status().as_u16() != 202 {
                    return Err(format!("HTTP {}", response.status().as_u16()));
                }
                let accepted = Instant::now();
                let body = response
                    .json::<serde_json::Value>()
                    .await
                    .map_err(|_| "202 without a JSON body".to_owned())?;
                let id = body["id"].as_str().ok_or("202 without an id")?.to_owned();
                if i % sample_every != 0 {
                    return Ok(None);
                }
                while accepted.elapsed() < Duration::from_secs(30) {
                    let found = client
                        .get(format!("{base}/v1/events/{id}"))
                        .bearer_auth(key.as_str())
                        .send()
                        .await
                        .is_ok_and(|r| r.status().as_u16() == 200);
                    if found {
                        return Ok(Some(Some(accepted.elapsed())));
                    }
                    tokio::time::sleep(poll).await;
                }
                Ok(Some(None))
            }));
        }
        let (mut ok, mut latencies, mut lost) = (0usize, Vec::new(), 0usize);
        let mut refused = std::collections::BTreeMap::<String, usize>::new();
        for task in tasks {
            match task.await {
                Ok(Ok(sample)) => {
                    ok += 1;
                    match sample {
                        Some(Some(latency)) => latencies.push(latency),
                        Some(None) => lost += 1,
                        None => {}
                    }
                }
                Ok(Err(reason)) => *refused.entry(reason).or_default() += 1,
                Err(_) => *refused.entry("the posting task failed".to_owned()).or_default() += 1,
            }
        }
        if !refused.is_empty() {
            refusals.push((rate, refused));
        }
        // Every accepted event stored (or a minute more): the persister's
        // rate from the first event on.
        let stored_by = Instant::now() + Duration::from_secs(60);
        let stored = loop {
            let stored = events_stored(&client, &persister).await? - stored_before;
            if stored >= ok as f64 || Instant::now() > stored_by {
                break stored;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        let stored_rate = stored / start.elapsed().as_secs_f64();
        latencies.sort_unstable();
        let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
        rows.push((
            format!(
                "| {rate} | {ok}/{total} | {} | {} | {} | {} | {} | {lost} | {stored_rate:.0} |",
                latencies.len() + lost,
                ms(percentile(&latencies, 0.5)),
                ms(percentile(&latencies, 0.95)),
                ms(percentile(&latencies, 0.99)),
                ms(latencies.last().copied().unwrap_or_default()),
            ),
            stored_rate,
        ));
    }
    let raw = if args.raw_seconds > 0 {
        // Two seconds to warm up DynamoDB Local's JIT on this write, then the count.
        raw_write_rate(&stack.common.dynamodb, writers, 2).await?;
        let raw = raw_write_rate(&stack.common.dynamodb, writers, args.raw_seconds).await?;
        println!(
            "DynamoDB Local alone, same run, after the rates: **{raw:.0} item creates/s** ({writers} writers, conditional UpdateItem of a ~1.5 KB item, {} s).\n",
            args.raw_seconds
        );
        Some(raw)
    } else {
        None
    };
    println!(
        "| ingest events/s | 202s | sampled | readable p50 | p95 | p99 | max | unreadable after 30 s | stored events/s | of DynamoDB Local's rate |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (row, stored_rate) in rows {
        let share = raw.map_or("—".to_owned(), |raw| format!("{:.0} %", 100.0 * stored_rate / raw));
        println!("{row} {share} |");
    }
    for (rate, refused) in refusals {
        let reasons: Vec<String> = refused.iter().map(|(why, n)| format!("{why} ×{n}")).collect();
        println!("\nNot accepted at {rate} events/s: {}.", reasons.join(", "));
    }

    println!("\n## Inbox listing\n");
    // 1,000 events that stay in the inbox: nothing matches them while the demo
    // subscription is paused.
    client
        .patch(format!("{base}/v1/subscriptions/{}", stack.demo.subscription_id))
        .bearer_auth(key.as_str())
        .json(&json!({"status": "paused"}))
        .send()
        .await?
        .error_for_status()?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for round in 0..10 {
        let events: Vec<serde_json::Value> = (0..100)
            .map(|i| json!({"type": "bench.inbox", "source": "bench", "data": {"r": round, "i": i}}))
            .collect();
        client
            .post(format!("{base}/v1/events/batch"))
            .bearer_auth(key.as_str())
            .json(&json!({"events": events}))
            .send()
            .await?
            .error_for_status()?;
    }
    let waiting = Instant::now();
    loop {
        let page: serde_json::Value = client
            .get(format!("{base}/v1/inbox?limit=1000&type=bench.inbox"))
            .bearer_auth(key.as_str())
            .send()
            .await?
            .json()
            .await?;
        if page["data"].as_array().map_or(0, Vec::len) >= 1000 || waiting.elapsed() > Duration::from_secs(300) {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let mut timings = Vec::new();
    let mut count = 0;
    for _ in 0..5 {
        let started = Instant::now();
        let page: serde_json::Value = client
            .get(format!("{base}/v1/inbox?limit=1000"))
            .bearer_auth(key.as_str())
            .send()
            .await?
            .json()
            .await?;
        timings.push(started.elapsed());
        count = page["data"].as_array().map(Vec::len).unwrap_or(0);
    }
    timings.sort_unstable();
    println!(
        "`GET /v1/inbox?limit=1000` ({count} events per page), 5 runs: median **{:.0} ms**, slowest {:.0} ms.",
        timings[2].as_secs_f64() * 1000.0,
        timings[4].as_secs_f64() * 1000.0
    );
    stack.stop().await;
    Ok(())
}
