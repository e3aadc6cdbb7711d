//! `triggers-bench`: measures ingest on this machine, in one run.
//!
//! 1. A bare rdkafka produce loop (the gateway's producer settings, the same
//!    Avro message size) against the same broker: the ceiling.
//! 2. The gateway under HTTP load at fixed arrival rates (open loop: latency
//!    is measured from when a request was due, so a slow server cannot hide
//!    its queueing), rising until a step fails; then a longer run at half the
//!    highest sustained rate for the latency figures.
//! 3. The same for batches of 100 events.
//!
//! It starts its own stack (Tansu, DynamoDB Local, registry, services) on free
//! ports in a temporary folder. Results go to standard output as Markdown.

// A benchmark program: its report is its output.
#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use rdkafka::producer::FutureRecord;
use serde_json::json;
use triggers_core::codec::{AvroCodec, Contract};
use triggers_core::event::Event;

#[derive(Debug, Parser)]
#[command(about = "Ingest benchmarks of Triggers on this machine")]
struct Args {
    /// Seconds per rate step.
    #[arg(long, default_value_t = 5)]
    step_seconds: u64,
    /// Seconds of the run at half the highest sustained rate.
    #[arg(long, default_value_t = 10)]
    hold_seconds: u64,
    /// First rate (events/s) of the single-event steps.
    #[arg(long, default_value_t = 200)]
    start_rate: u64,
    /// Rate multiplier between steps.
    #[arg(long, default_value_t = 1.3)]
    growth: f64,
    /// A step passes when at least this share of requests got 202 …
    #[arg(long, default_value_t = 0.995)]
    min_success: f64,
    /// … and its p99 is at most this many milliseconds.
    #[arg(long, default_value_t = 250)]
    max_p99_ms: u64,
    /// Seconds of the bare produce loop.
    #[arg(long, default_value_t = 8)]
    produce_seconds: u64,
    /// Export traces, sampling this share of new traces, to an OTLP/HTTP
    /// sink in this process (the cost of tracing; see run-tracing-bench).
    #[arg(long)]
    tracing_ratio: Option<f64>,
    /// Only the single-event steps and hold (b), not (a) and (c).
    #[arg(long)]
    single_only: bool,
    /// Send this `traceparent` with every request (the gateway passes it
    /// to the record when tracing is off): the cost of record headers alone.
    #[arg(long)]
    client_traceparent: Option<String>,
    /// At most this many rate steps (with `--growth 1`: repeated runs at
    /// one rate, to compare CPU per event between settings).
    #[arg(long)]
    max_steps: Option<usize>,
}

/// The `traceparent` every request carries, if any (`--client-traceparent`).
static TRACEPARENT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();

/// An OTLP/HTTP endpoint that takes every export and keeps only the count
/// of bytes: what a collector costs the services, without a collector.
async fn otlp_sink() -> anyhow::Result<(String, Arc<AtomicUsize>)> {
    let received = Arc::new(AtomicUsize::new(0));
    let counted = received.clone();
    let server = actix_web::HttpServer::new(move || {
        let counted = counted.clone();
        actix_web::App::new()
            .app_data(actix_web::web::PayloadConfig::new(64 << 20))
            .default_service(actix_web::web::to(move |body: actix_web::web::Bytes| {
                counted.fetch_add(body.len(), Ordering::Relaxed);
                async { actix_web::HttpResponse::Ok().finish() }
            }))
    })
    .workers(1)
    .disable_signals()
    .bind("127.0.0.1:0")?;
    let url = format!("http://{}", server.addrs()[0]);
    tokio::spawn(server.run());
    Ok((url, received))
}

/// Latencies and counts of one load step.
#[derive(Debug, Clone)]
struct Step {
    target: f64,
    sent: usize,
    ok: usize,
    achieved: f64,
    latencies: Vec<Duration>,
    /// CPU time this process (services, load generator, receiver) used
    /// during the step.
    cpu: Duration,
}

impl Step {
    fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
        sorted[index.min(sorted.len() - 1)]
    }

    /// Milliseconds of this process's CPU per accepted request.
    fn cpu_ms_per_request(&self) -> f64 {
        if self.ok == 0 {
            0.0
        } else {
            self.cpu.as_secs_f64() * 1000.0 / self.ok as f64
        }
    }

    fn success(&self) -> f64 {
        if self.sent == 0 {
            0.0
        } else {
            self.ok as f64 / self.sent as f64
        }
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn sample_event(tenant: triggers_core::ids::TenantId) -> Event {
    let now = triggers_core::event::now_ms();
    Event {
        id: triggers_core::ids::EventId::new(),
        tenant,
        event_type: "order.created".to_owned(),
        source: "https://shop.example/orders".to_owned(),
        subject: Some("order-42".to_owned()),
        time: now,
        received_at: now,
        specversion: "1.0".to_owned(),
        datacontenttype: "application/json".to_owned(),
        data: sample_data().into(),
        partition_key: None,
        extensions: Default::default(),
    }
}

fn sample_data() -> serde_json::Value {
    json!({"order_id": 42, "customer": "cus_123", "total": 99.5, "currency": "EUR",
           "items": [{"sku": "A-1", "qty": 2}, {"sku": "B-7", "qty": 1}]})
}

/// (a) The bare produce loop: as many in flight as the producer queue takes.
async fn produce_loop(stack: &triggers_local::LocalStack, seconds: u64) -> anyhow::Result<(f64, usize)> {
    let producer = triggers_core::kafka::producer(&stack.common.kafka, "bench")?;
    let codec = AvroCodec::new(&stack.common.schema_registry)?;
    let topic = stack.common.topics.events();
    let tenant = stack.demo.tenant_id.parse()?;
    let payload = codec.encode(&topic, Contract::Event, &sample_event(tenant)).await?;
    let key = stack.demo.tenant_id.clone();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let start = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    let mut acked = 0usize;
    while Instant::now() < deadline {
        while in_flight.len() < 2_000 {
            let record = FutureRecord::to(&topic).key(&key).payload(&payload);
            match producer.send_result(record) {
                Ok(delivery) => in_flight.push(delivery),
                Err(_) => break,
            }
        }
        if let Some(Ok(Ok(_))) = in_flight.next().await {
            acked += 1;
        }
    }
    while let Some(result) = in_flight.next().await {
        if let Ok(Ok(_)) = result {
            acked += 1;
        }
    }
    Ok((acked as f64 / start.elapsed().as_secs_f64(), payload.len()))
}

/// A keep-alive HTTP/1.1 connection that sends one pre-built request at a
/// time: the cheapest client there is, so the generator does not eat the
/// CPU the gateway needs.
struct Connection {
    stream: tokio::io::BufReader<tokio::net::TcpStream>,
}

impl Connection {
    async fn open(addr: &str) -> std::io::Result<Self> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream: tokio::io::BufReader::with_capacity(16 * 1024, stream),
        })
    }

    /// Sends `request`; the response's status.
    async fn call(&mut self, request: &[u8]) -> std::io::Result<u16> {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
        self.stream.get_mut().write_all(request).await?;
        let mut line = String::new();
        self.stream.read_line(&mut line).await?;
        let status = line.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let mut length = 0usize;
        loop {
            line.clear();
            if self.stream.read_line(&mut line).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; length];
        self.stream.read_exact(&mut body).await?;
        Ok(status)
    }
}

fn raw_request(url: &str, key: &str, body: &str) -> (String, Vec<u8>) {
    let without_scheme = url.trim_start_matches("http://");
    let (addr, path) = without_scheme.split_once('/').unwrap_or((without_scheme, ""));
    let request = format!(
        "POST /{path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\n{}Content-Length: {}\r\n\r\n{body}",
        TRACEPARENT
            .get()
            .and_then(Option::as_ref)
            .map(|t| format!("traceparent: {t}\r\n"))
            .unwrap_or_default(),
        body.len()
    );
    (addr.to_owned(), request.into_bytes())
}

/// (b) Requests at a fixed arrival rate for `seconds`: a dispatcher hands
/// due times to `connections` keep-alive connections every millisecond;
/// latency counts from the due time, so queueing anywhere shows.
async fn open_loop(url: &str, key: &str, body: Arc<String>, rate: f64, seconds: u64) -> Step {
    const CONNECTIONS: usize = 128;
    let (addr, request) = raw_request(url, key, &body);
    let request = Arc::new(request);
    let total = (rate * seconds as f64).round() as usize;
    let (due_tx, due_rx) = async_channel::bounded::<tokio::time::Instant>(total.max(1));
    let ok = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        let (addr, request, due_rx, ok) = (addr.clone(), request.clone(), due_rx.clone(), ok.clone());
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut connection = Connection::open(&addr).await.ok();
            while let Ok(due) = due_rx.recv().await {
                let status = match connection.as_mut() {
                    Some(c) => c.call(&request).await.unwrap_or(0),
                    None => 0,
                };
                if status == 202 {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else if status == 0 {
                    connection = Connection::open(&addr).await.ok();
                }
                latencies.push(due.elapsed());
            }
            latencies
        }));
    }
    let cpu_before = triggers_core::telemetry::process_cpu_time().unwrap_or_default();
    let start = tokio::time::Instant::now();
    let mut sent = 0usize;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while sent < total {
        tick.tick().await;
        let due_by_now = ((start.elapsed().as_secs_f64() * rate) as usize).min(total);
        while sent < due_by_now {
            let due = start + Duration::from_secs_f64(sent as f64 / rate);
            if due_tx.send(due).await.is_err() {
                break;
            }
            sent += 1;
        }
    }
    due_tx.close();
    let mut latencies = Vec::with_capacity(total);
    for worker in workers {
        if let Ok(mut part) = worker.await {
            latencies.append(&mut part);
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = triggers_core::telemetry::process_cpu_time()
        .unwrap_or_default()
        .saturating_sub(cpu_before);
    let ok = ok.load(Ordering::Relaxed);
    Step {
        target: rate,
        sent: total,
        ok,
        achieved: ok as f64 / elapsed,
        latencies,
        cpu,
    }
}

fn passes(step: &Step, args: &Args) -> bool {
    step.success() >= args.min_success
        && step.achieved >= step.target * 0.95
        && step.percentile(0.99) <= Duration::from_millis(args.max_p99_ms)
}

fn print_step(step: &Step, events_per_request: usize, pass: bool) {
    println!(
        "| {:.0} | {:.0} | {:.2}% | {} | {} | {} | {:.2} | {} |",
        step.target * events_per_request as f64,
        step.achieved * events_per_request as f64,
        step.success() * 100.0,
        ms(step.percentile(0.50)),
        ms(step.percentile(0.95)),
        ms(step.percentile(0.99)),
        step.cpu_ms_per_request() / events_per_request as f64,
        if pass { "yes" } else { "no" }
    );
}

/// Rising steps until one fails; the highest passing request rate.
async fn ramp(args: &Args, url: &str, key: &str, body: Arc<String>, start_rate: f64, events_per_request: usize) -> f64 {
    println!("| target events/s | achieved events/s | 202 | p50 ms | p95 ms | p99 ms | CPU ms/event | sustained |");
    println!("|---|---|---|---|---|---|---|---|");
    let mut rate = start_rate;
    let mut best = 0.0;
    for _ in 0..args.max_steps.unwrap_or(usize::MAX) {
        let step = open_loop(url, key, body.clone(), rate, args.step_seconds).await;
        let pass = passes(&step, args);
        print_step(&step, events_per_request, pass);
        if !pass {
            return best;
        }
        best = rate;
        rate *= args.growth;
        // Let queues drain between steps.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    best
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _ = TRACEPARENT.set(args.client_traceparent.clone());
    // The services' telemetry as their mains install it (logs at ERROR),
    // with an OTLP endpoint only when tracing is on.
    let mut exported = None;
    let otlp_endpoint = match args.tracing_ratio {
        Some(_) => {
            let (endpoint, received) = otlp_sink().await?;
            exported = Some(received);
            Some(endpoint)
        }
        None => None,
    };
    let _telemetry = triggers_core::telemetry::init(
        &triggers_core::config::TelemetryConfig {
            log_level: "error".to_owned(),
            log_format: triggers_core::config::LogFormat::Pretty,
            otlp_endpoint,
            trace_sample_ratio: args.tracing_ratio.unwrap_or(0.0),
        },
        "triggers-bench",
    )?;
    let triggers_bench::Local {
        stack, guards: _guards, ..
    } = triggers_bench::start_local(None).await?;
    match args.tracing_ratio {
        Some(ratio) => println!(
            "Tracing: on, {:.0}% of new traces sampled, exported over OTLP/HTTP.\n",
            ratio * 100.0
        ),
        None => println!("Tracing: off (no OTLP endpoint).\n"),
    }
    println!("# Ingest benchmark\n");
    println!(
        "Machine: {} cores; broker, DynamoDB Local, every service and the load generator on it.\n",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );

    let raw_rate = if args.single_only {
        f64::NAN
    } else {
        let (raw_rate, message_bytes) = produce_loop(&stack, args.produce_seconds).await?;
        println!("## (a) Bare produce loop\n");
        println!(
            "idempotent `acks=all` producer, {message_bytes}-byte Avro events, up to 2,000 in flight: **{raw_rate:.0} events/s**\n"
        );
        raw_rate
    };

    let single = Arc::new(json!({"type": "order.created", "source": "https://shop.example/orders", "subject": "order-42", "data": sample_data()}).to_string());
    let url = format!("{}/v1/events", stack.endpoints.gateway_url);
    let key = stack.demo.api_key.clone();
    // Warm up connections, caches and the schema id.
    let _ = open_loop(&url, &key, single.clone(), 50.0, 1).await;

    println!("## (b) Gateway, single events, fixed arrival rates\n");
    let max_single = ramp(&args, &url, &key, single.clone(), args.start_rate as f64, 1).await;
    println!();
    let hold = open_loop(
        &url,
        &key,
        single.clone(),
        (max_single / 2.0).max(1.0),
        args.hold_seconds,
    )
    .await;
    let share = if raw_rate.is_nan() {
        String::new()
    } else {
        format!(" = **{:.0}%** of the bare produce rate", max_single / raw_rate * 100.0)
    };
    println!(
        "Highest sustained: **{max_single:.0} events/s**{share}.\n\nAt half of it ({:.0}/s for {} s): p50 **{} ms**, p95 **{} ms**, p99 **{} ms**, {:.2}% 202, {:.2} ms of this process's CPU per event.\n",
        hold.target,
        args.hold_seconds,
        ms(hold.percentile(0.50)),
        ms(hold.percentile(0.95)),
        ms(hold.percentile(0.99)),
        hold.success() * 100.0,
        hold.cpu_ms_per_request()
    );

    if let Some(exported) = &exported {
        println!(
            "Spans exported: {} KiB of OTLP protobuf.\n",
            exported.load(Ordering::Relaxed) / 1024
        );
    }
    if args.single_only {
        stack.stop().await;
        return Ok(());
    }
    println!("## (c) Gateway, batches of 100 events\n");
    let events: Vec<serde_json::Value> = (0..100)
        .map(|i| json!({"type": "order.created", "source": "https://shop.example/orders", "subject": format!("order-{i}"), "data": sample_data()}))
        .collect();
    let batch = Arc::new(json!({"events": events}).to_string());
    let batch_url = format!("{}/v1/events/batch", stack.endpoints.gateway_url);
    let start_batches = (max_single / 100.0).max(2.0);
    let max_batches = ramp(&args, &batch_url, &key, batch, start_batches, 100).await;
    println!(
        "\nHighest sustained: **{:.0} events/s** in batches of 100 = **{:.1}×** the single-event rate.\n",
        max_batches * 100.0,
        max_batches * 100.0 / max_single.max(1.0)
    );
    stack.stop().await;
    Ok(())
}
