//! `persist-bench`: how soon an accepted event is readable, and how fast the
//! inbox lists.
//!
//! Starts the local stack (gateway, router, persister, DynamoDB Local, Tansu)
//! on free ports, ingests at fixed rates, and for sampled events polls
//! `GET /v1/events/{id}` from its 202 until it answers: the time to
//! readability. Then lists 1,000 inbox events. Prints Markdown.

// A benchmark program: its report is its output.
#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::json;
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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let triggers_bench::Local {
        stack, guards: _guards, ..
    } = triggers_bench::start_local(None).await?;
    let client = reqwest::Client::builder().pool_max_idle_per_host(256).build()?;
    let base = stack.endpoints.gateway_url.clone();
    let key = Arc::new(stack.demo.api_key.clone());

    println!("# Persistence benchmark\n");
    println!(
        "Gateway, router, persister, Tansu and DynamoDB Local on this machine; every {}th event polled every {} ms from its 202 until `GET /v1/events/{{id}}` answers.\n",
        args.sample_every, args.poll_ms
    );
    println!("| ingest events/s | 202s | sampled | readable p50 | p95 | p99 | max | unreadable after 30 s |");
    println!("|---|---|---|---|---|---|---|---|");
    for &rate in &args.rates {
        let total = (rate * args.seconds) as usize;
        let interval = Duration::from_secs_f64(1.0 / rate as f64);
        let start = tokio::time::Instant::now();
        let mut tasks = Vec::with_capacity(total);
        let (sample_every, poll) = (args.sample_every, Duration::from_millis(args.poll_ms));
        for i in 0..total {
            tokio::time::sleep_until(start + interval.mul_f64(i as f64)).await;
            let (client, base, key) = (client.clone(), base.clone(), key.clone());
            tasks.push(tokio::spawn(async move {
                let response = client
                    .post(format!("{base}/v1/events"))
                    .bearer_auth(key.as_str())
                    .json(&json!({"type": "bench.persist", "source": "bench", "data": {"i": i}}))
                    .send()
                    .await
                    .ok()?;
                if response.status().as_u16() != 202 {
                    return None;
                }
                let accepted = Instant::now();
                let id = response.json::<serde_json::Value>().await.ok()?["id"]
                    .as_str()?
                    .to_owned();
                if i % sample_every != 0 {
                    return Some(None);
                }
                while accepted.elapsed() < Duration::from_secs(30) {
                    let found = client
                        .get(format!("{base}/v1/events/{id}"))
                        .bearer_auth(key.as_str())
                        .send()
                        .await
                        .is_ok_and(|r| r.status().as_u16() == 200);
                    if found {
                        return Some(Some(Some(accepted.elapsed())));
                    }
                    tokio::time::sleep(poll).await;
                }
                Some(Some(None))
            }));
        }
        let (mut ok, mut latencies, mut lost) = (0usize, Vec::new(), 0usize);
        for task in tasks {
            if let Ok(Some(sample)) = task.await {
                ok += 1;
                match sample {
                    Some(Some(latency)) => latencies.push(latency),
                    Some(None) => lost += 1,
                    None => {}
                }
            }
        }
        latencies.sort_unstable();
        let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
        println!(
            "| {rate} | {ok}/{total} | {} | {} | {} | {} | {} | {lost} |",
            latencies.len() + lost,
            ms(percentile(&latencies, 0.5)),
            ms(percentile(&latencies, 0.95)),
            ms(percentile(&latencies, 0.99)),
            ms(latencies.last().copied().unwrap_or_default()),
        );
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
