//! `dynamo-call-bench`: the client's CPU per DynamoDB call, the floor under
//! the persister's cost per event (about one conditional `UpdateItem` per
//! event, docs/capacity.md).
//!
//! Starts DynamoDB Local alone on a free port and makes the persister's
//! common write (a conditional `UpdateItem` creating a ~1.5 KB item) from a
//! few concurrent writers through each client variant in turn, twice,
//! alternating: the services' client (`triggers_core::dynamo::client`), the
//! same without stalled-stream protection, and the plain SDK client without
//! the services' metrics interceptor. CPU is this process's (`/proc/self/stat`);
//! DynamoDB Local runs in its own. Prints Markdown.

// A benchmark program: its report is its output.
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::StalledStreamProtectionConfig;
use clap::Parser;

#[derive(Debug, Parser)]
#[command(about = "CPU per DynamoDB call of the services' client and variants")]
struct Args {
    /// Seconds per variant and round.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrent writers.
    #[arg(long, default_value_t = 8)]
    writers: usize,
    /// Rounds (each runs every variant once).
    #[arg(long, default_value_t = 2)]
    rounds: usize,
}

/// This process's CPU time so far (user and system, every thread).
fn own_cpu() -> Duration {
    triggers_core::telemetry::process_cpu_time().unwrap_or_default()
}

/// Item creates from `writers` concurrent writers for `seconds`: (calls
/// that succeeded, the CPU this process used, the wall time).
async fn write_for(client: &Client, table: &str, writers: usize, seconds: u64) -> (u64, Duration, Duration) {
    let data = "x".repeat(1_400);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let writes = (0..writers).map(|writer| {
        let (client, data) = (client.clone(), data.clone());
        async move {
            let mut written = 0u64;
            while Instant::now() < deadline {
                if triggers_bench::create_item(&client, table, writer, &data).await {
                    written += 1;
                }
            }
            written
        }
    });
    let (started, cpu) = (Instant::now(), own_cpu());
    let written = futures::future::join_all(writes).await.into_iter().sum();
    (written, own_cpu().saturating_sub(cpu), started.elapsed())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let tools = triggers_stack::Tools::locate()?;
    let dir = tempfile::tempdir()?;
    let port = triggers_stack::free_port()?;
    let _dynamo = {
        let (dir, log) = (dir.path().join("dynamodb"), dir.path().join("dynamodb.log"));
        tokio::task::spawn_blocking(move || triggers_stack::start_dynamodb_local(&tools, &dir, port, &log)).await??
    };
    let config = triggers_core::config::DynamoConfig {
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        access_key_id: Some("local".to_owned()),
        secret_access_key: Some("local".to_owned()),
        ..Default::default()
    };
    let services = triggers_core::dynamo::client(&config).await;
    let unprotected = Client::from_conf(
        services
            .config()
            .to_builder()
            .stalled_stream_protection(StalledStreamProtectionConfig::disabled())
            .build(),
    );
    let plain = {
        let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_sdk_dynamodb::config::Region::new(config.region.clone()))
            .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
                "local", "local", None, None, "bench",
            ))
            .endpoint_url(format!("http://127.0.0.1:{port}"))
            .load()
            .await;
        Client::new(&shared)
    };
    let variants = [
        ("the services' client (`triggers_core::dynamo::client`)", &services),
        ("the same, stalled-stream protection off", &unprotected),
        ("the SDK's default client, no metrics interceptor", &plain),
    ];

    let table = triggers_bench::create_item_table(&services, "callbench").await?;
    // DynamoDB Local's JIT and every client's connections warm.
    for (_, client) in variants {
        write_for(client, &table, args.writers, 2).await;
    }

    println!("# CPU per DynamoDB call\n");
    println!(
        "Conditional `UpdateItem` creating a ~1.5 KB item, {} writers on one thread, {} s per variant and round, DynamoDB Local in its own process; CPU of this process only.\n",
        args.writers, args.seconds
    );
    println!("| round | client | calls/s | client CPU per call |\n|---|---|---|---|");
    for round in 1..=args.rounds {
        for (name, client) in variants {
            let (calls, cpu, wall) = write_for(client, &table, args.writers, args.seconds).await;
            anyhow::ensure!(calls > 0, "{name}: no call succeeded");
            println!(
                "| {round} | {name} | {:.0} | {:.0} µs |",
                calls as f64 / wall.as_secs_f64(),
                cpu.as_secs_f64() * 1e6 / calls as f64
            );
        }
    }
    services.delete_table().table_name(&table).send().await?;
    Ok(())
}
