//! `e2e-bench`: end-to-end latency, from the gateway's 202 to the webhook
//! arriving at a local receiver.
//!
//! Starts the whole local pipeline (gateway, router, persister, deliverer,
//! Tansu, DynamoDB Local) on free ports, subscribes a receiver of its own
//! (the demo subscription is paused), ingests single events at fixed rates,
//! and for every event takes the time from its 202 to the receiver getting
//! it (same process, same clock; the event also carries its send time).
//! Prints Markdown.

// A benchmark program: its report is its output.
#![allow(clippy::print_stdout)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use clap::Parser;
use serde_json::json;
use triggers_bench::percentile;

#[derive(Debug, Parser)]
#[command(about = "End-to-end benchmark: 202 to webhook")]
struct Args {
    /// Ingest rates to try, events/s.
    #[arg(long, value_delimiter = ',', default_value = "100,250,500,1000")]
    rates: Vec<u64>,
    /// Seconds per rate.
    #[arg(long, default_value_t = 15)]
    seconds: u64,
}

/// When each webhook (by `webhook-id`) first arrived.
type Arrivals = Arc<Mutex<HashMap<String, Instant>>>;

async fn receive(request: HttpRequest, arrivals: web::Data<Arrivals>) -> HttpResponse {
    let now = Instant::now();
    if let Some(id) = request.headers().get("webhook-id").and_then(|v| v.to_str().ok())
        && let Ok(mut arrivals) = arrivals.lock()
    {
        arrivals.entry(id.to_owned()).or_insert(now);
    }
    HttpResponse::NoContent().finish()
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

    let arrivals: Arrivals = Arc::default();
    let data = web::Data::new(arrivals.clone());
    let server = HttpServer::new(move || App::new().app_data(data.clone()).default_service(web::to(receive)))
        .workers(2)
        .disable_signals()
        .bind("127.0.0.1:0")?;
    let receiver = format!("http://{}/hook", server.addrs()[0]);
    tokio::spawn(server.run());

    let api = |method: reqwest::Method, path: &str| {
        client
            .request(method, format!("{base}{path}"))
            .bearer_auth(key.as_str())
    };
    api(
        reqwest::Method::PATCH,
        &format!("/v1/subscriptions/{}", stack.demo.subscription_id),
    )
    .json(&json!({"status": "paused"}))
    .send()
    .await?
    .error_for_status()?;
    api(reqwest::Method::POST, "/v1/subscriptions")
        .json(&json!({"target_url": receiver, "event_types": ["bench.e2e"]}))
        .send()
        .await?
        .error_for_status()?;
    // Until the new subscription reaches the router and the deliverer.
    let warm = Instant::now();
    while arrivals.lock().map(|a| a.is_empty()).unwrap_or(true) {
        anyhow::ensure!(
            warm.elapsed() < Duration::from_secs(60),
            "the receiver never got a webhook"
        );
        api(reqwest::Method::POST, "/v1/events")
            .json(&json!({"type": "bench.e2e", "source": "bench", "data": {"warm": true}}))
            .send()
            .await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    println!("# End-to-end benchmark\n");
    println!(
        "Gateway, router, persister, deliverer, Tansu and DynamoDB Local on this machine; single events at a fixed rate for {} s; latency from each event's 202 to its webhook at a local receiver (every event measured).\n",
        args.seconds
    );
    println!("| ingest events/s | 202s | delivered | p50 | p95 | p99 | max | not delivered after 30 s |");
    println!("|---|---|---|---|---|---|---|---|");
    for &rate in &args.rates {
        let total = (rate * args.seconds) as usize;
        let interval = Duration::from_secs_f64(1.0 / rate as f64);
        let start = tokio::time::Instant::now();
        let mut tasks = Vec::with_capacity(total);
        for i in 0..total {
            tokio::time::sleep_until(start + interval.mul_f64(i as f64)).await;
            let (client, base, key) = (client.clone(), base.clone(), key.clone());
            tasks.push(tokio::spawn(async move {
                let sent_at = triggers_core::event::now_ms();
                let response = client
                    .post(format!("{base}/v1/events"))
                    .bearer_auth(key.as_str())
                    .json(&json!({"type": "bench.e2e", "source": "bench", "data": {"i": i, "sent_at": sent_at}}))
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
                Some((id, accepted))
            }));
        }
        let mut accepted = Vec::with_capacity(total);
        for task in tasks {
            if let Ok(Some(pair)) = task.await {
                accepted.push(pair);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut latencies = Vec::with_capacity(accepted.len());
        let mut missing;
        loop {
            latencies.clear();
            missing = 0;
            if let Ok(arrivals) = arrivals.lock() {
                for (id, at) in &accepted {
                    match arrivals.get(id) {
                        Some(arrived) => latencies.push(arrived.saturating_duration_since(*at)),
                        None => missing += 1,
                    }
                }
            }
            if missing == 0 || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        latencies.sort_unstable();
        let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
        println!(
            "| {rate} | {}/{total} | {} | {} | {} | {} | {} | {missing} |",
            accepted.len(),
            latencies.len(),
            ms(percentile(&latencies, 0.5)),
            ms(percentile(&latencies, 0.95)),
            ms(percentile(&latencies, 0.99)),
            ms(latencies.last().copied().unwrap_or_default()),
        );
    }
    stack.stop().await;
    Ok(())
}
