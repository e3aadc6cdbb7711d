//! `triggers-local`: runs the whole pipeline on this machine until Ctrl-C.
//!
//! It prints the demo API key and a ready `curl` line; the endpoints and
//! credentials are in `var/local.env`.

// A command-line program: it talks to the person who started it.
#![allow(clippy::print_stdout)]

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use triggers_local::LocalOptions;

/// The services' allocator (their `main.rs`: mimalloc took 12-15 % off
/// their workers' CPU per event).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Runs Tansu, DynamoDB Local, the schema registry, every Triggers service
/// and a demo webhook receiver, with data under `--data-dir`.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Where data, logs and local.env go.
    #[arg(long, default_value = "var", env = "TRIGGERS_LOCAL_DATA_DIR")]
    data_dir: PathBuf,
    /// A configuration file layered over the local defaults.
    #[arg(long, env = "TRIGGERS_CONFIG")]
    config: Option<PathBuf>,
    /// Tansu's port.
    #[arg(long, default_value_t = 9092)]
    kafka_port: u16,
    /// DynamoDB Local's port.
    #[arg(long, default_value_t = 8000)]
    dynamodb_port: u16,
    /// The schema registry's port.
    #[arg(long, default_value_t = 8081)]
    registry_port: u16,
    /// The gateway's port.
    #[arg(long, default_value_t = 8080)]
    gateway_port: u16,
    /// The demo webhook receiver's port.
    #[arg(long, default_value_t = 9000)]
    receiver_port: u16,
    /// Also start Prometheus (Debian's package), scraping every service
    /// with the alert rules loaded, to query the dashboards' metrics.
    #[arg(long)]
    prometheus: bool,
    /// Prometheus's port, with `--prometheus`.
    #[arg(long, default_value_t = 9090)]
    prometheus_port: u16,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let options = LocalOptions {
        config_file: args.config,
        kafka_port: args.kafka_port,
        dynamodb_port: args.dynamodb_port,
        registry_port: args.registry_port,
        gateway_port: args.gateway_port,
        receiver_port: args.receiver_port,
        prometheus_port: args.prometheus.then_some(args.prometheus_port),
        env: std::env::vars().collect(),
        ..LocalOptions::new(args.data_dir)
    };
    let source = triggers_local::load_config(&options)?;
    let common = source.common()?;
    let _telemetry = triggers_core::telemetry::init(&common.telemetry, "triggers-local")?;
    let shutdown = triggers_core::shutdown::signal_token();

    let stack = tokio::select! {
        stack = triggers_local::start(&options, &source) => stack.context("starting the local stack")?,
        _ = shutdown.cancelled() => return Ok(()),
    };
    let env_file = options.data_dir.join("local.env");
    let endpoints = &stack.endpoints;
    let (gateway, key) = (&endpoints.gateway_url, &stack.demo.api_key);
    let ops = endpoints
        .ops_urls
        .iter()
        .map(|(name, url)| format!("{name} {}", url.rsplit(':').next().unwrap_or(url)))
        .collect::<Vec<_>>()
        .join(", ");
    println!();
    println!(
        "Triggers is running. Data in {}/, Tansu's and DynamoDB Local's logs in {}/log/.",
        options.data_dir.display(),
        options.data_dir.display()
    );
    println!("  gateway          {gateway}   (API docs: {gateway}/docs)");
    println!("  console          {gateway}/console   (sign in with the API key below)");
    println!(
        "  demo receiver    {}   (prints every webhook here)",
        endpoints.demo_receiver_url
    );
    println!("  kafka (Tansu)    {}", endpoints.kafka_bootstrap);
    println!("  dynamodb local   {}", endpoints.dynamodb_endpoint);
    println!("  schema registry  {}", endpoints.registry_url);
    println!("  ops ports        {ops}   (/healthz /readyz /metrics)");
    if let Some(prometheus) = &endpoints.prometheus_url {
        println!("  prometheus       {prometheus}   (alerts: {prometheus}/alerts)");
    }
    println!();
    println!("Demo tenant {}, API key:", stack.demo.tenant_id);
    println!("  {key}");
    println!();
    println!("Send an event (from another terminal):");
    println!(
        "  curl -sS -X POST {gateway}/v1/events -H 'Authorization: Bearer {key}' \\\n    -H 'Content-Type: application/json' -d '{{\"type\":\"order.created\",\"source\":\"demo\",\"data\":{{\"order_id\":42}}}}'"
    );
    println!();
    println!("Watch it arrive:");
    println!("  - here: the demo receiver logs \"webhook received\" with the event;");
    println!("  - its status and delivery attempts (the id is in the 202's body):");
    println!("    curl -sS {gateway}/v1/events/<evt_id> -H 'Authorization: Bearer {key}'");
    println!("  - or in the browser: {gateway}/console (compose, send, watch it live, analytics).");
    println!();
    println!(
        "Endpoints and credentials: {} (source it). Ctrl-C stops everything.",
        env_file.display()
    );
    println!();

    shutdown.cancelled().await;
    println!("Stopping…");
    stack.stop().await;
    Ok(())
}
