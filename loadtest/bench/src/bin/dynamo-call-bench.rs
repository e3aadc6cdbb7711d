//! `dynamo-call-bench`: the client's CPU per DynamoDB call, the floor under
//! the persister's cost per event (about one conditional `UpdateItem` per
//! event, docs/capacity.md).
//!
//! Starts DynamoDB Local alone on a free port and makes the persister's
//! common write (a conditional `UpdateItem` creating a ~1.5 KB item) from a
//! few concurrent writers through each client variant in turn, twice,
//! alternating: the services' client (`triggers_core::dynamo::client`), the
//! same without stalled-stream protection, and the plain SDK client without
//! the services' metrics interceptor; `--lean` adds the same write made by
//! hand (JSON written directly, signed with `aws-sigv4`, sent with reqwest:
//! what a client without the SDK's orchestrator could cost) and through the
//! persister's lean client (`triggers_core::dynamo::LeanClient`, the same
//! with credential refresh, retries, timeouts and metrics). `--writers
//! 8,64` repeats each for several counts of concurrent writers. CPU is
//! this process's (`/proc/self/stat`) and, apart, DynamoDB Local's (its own
//! process group). Prints Markdown.

// A benchmark program: its report is its output.
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::StalledStreamProtectionConfig;
use clap::Parser;
use triggers_bench::percentile;
use triggers_core::dynamo::{ItemCalls, LeanClient, Update};

#[derive(Debug, Parser)]
#[command(about = "CPU per DynamoDB call of the services' client and variants")]
struct Args {
    /// Seconds per variant and round.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrent writers, one count or several (`8,64`).
    #[arg(long, value_delimiter = ',', default_value = "8")]
    writers: Vec<usize>,
    /// Only the services' client (no variants).
    #[arg(long)]
    services_only: bool,
    /// Also write to a table shaped like the events table (its `inbox`
    /// global index, which the written items do not enter).
    #[arg(long)]
    events_shape: bool,
    /// Also the same write by hand, without the SDK (what a lean client
    /// could cost).
    #[arg(long)]
    lean: bool,
    /// Also `--batch` creates per call: `BatchExecuteStatement` of PartiQL
    /// `INSERT`s (conditional: an existing item is refused) and, for
    /// comparison, `BatchWriteItem` of puts (unconditional).
    #[arg(long)]
    batched: bool,
    /// Items per batched call (1 to 25; the persister's batches at 100
    /// events/s hold 3 to 4).
    #[arg(long, default_value_t = 25, value_parser = clap::value_parser!(u8).range(1..=25))]
    batch: u8,
    /// Rounds (each runs every variant once).
    #[arg(long, default_value_t = 2)]
    rounds: usize,
}

/// This process's CPU time so far (user and system, every thread).
fn own_cpu() -> Duration {
    triggers_core::telemetry::process_cpu_time().unwrap_or_default()
}

/// What one variant's writes took.
struct Took {
    /// Items created.
    items: u64,
    /// This process's CPU.
    client_cpu: Duration,
    /// DynamoDB Local's CPU.
    server_cpu: Duration,
    /// Wall time.
    wall: Duration,
    /// Each call's wall time, sorted (one per call made).
    latencies: Vec<Duration>,
}

/// The persister's write without the SDK's orchestrator: the request's
/// JSON written directly, signed with `aws-sigv4`, sent over reqwest's
/// pooled HTTP/1.1 connections. What a lean client could cost per call;
/// not a client the services use (no retries, no credential refresh).
struct Lean {
    http: reqwest::Client,
    url: String,
    host: String,
    region: String,
    identity: aws_smithy_runtime_api::client::identity::Identity,
}

impl Lean {
    fn new(port: u16, region: &str) -> anyhow::Result<Self> {
        let credentials = aws_credential_types::Credentials::new("local", "local", None, None, "bench");
        Ok(Self {
            http: reqwest::Client::builder().build()?,
            url: format!("http://127.0.0.1:{port}/"),
            host: format!("127.0.0.1:{port}"),
            region: region.to_owned(),
            identity: credentials.into(),
        })
    }

    /// [`triggers_bench::create_item`]'s request, by hand.
    async fn create_item(&self, table: &str, writer: usize, data: &str) -> bool {
        use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
        let body = serde_json::json!({
            "TableName": table,
            "Key": {
                "pk": {"S": format!("tenant{}", writer % 8)},
                "sk": {"S": ulid::Ulid::new().to_string()},
            },
            "UpdateExpression": "SET #d = :d, progress = :p, version = :zero",
            "ConditionExpression": "attribute_not_exists(version)",
            "ExpressionAttributeNames": {"#d": "data"},
            "ExpressionAttributeValues": {
                ":d": {"S": data},
                ":p": {"S": r#"{"routed":true}"#},
                ":zero": {"N": "0"},
            },
        })
        .to_string();
        let headers = [
            ("host", self.host.as_str()),
            ("content-type", "application/x-amz-json-1.0"),
            ("x-amz-target", "DynamoDB_20120810.UpdateItem"),
        ];
        let Ok(params) = aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&self.identity)
            .region(&self.region)
            .name("dynamodb")
            .time(std::time::SystemTime::now())
            .settings(SigningSettings::default())
            .build()
        else {
            return false;
        };
        let params = params.into();
        let Ok(signable) = SignableRequest::new(
            "POST",
            &self.url,
            headers.iter().copied(),
            SignableBody::Bytes(body.as_bytes()),
        ) else {
            return false;
        };
        let Ok(signed) = sign(signable, &params) else {
            return false;
        };
        let (instructions, _) = signed.into_parts();
        let mut request = self.http.post(&self.url);
        // Every signed header but `host` (the first), which reqwest sets.
        for (name, value) in headers.iter().skip(1).copied().chain(instructions.headers()) {
            request = request.header(name, value);
        }
        request
            .body(body)
            .send()
            .await
            .is_ok_and(|response| response.status().is_success())
    }
}

/// [`triggers_bench::create_item`]'s request through the persister's lean
/// client.
async fn create_item_lean(client: &LeanClient, table: &str, writer: usize, data: &str) -> bool {
    use aws_sdk_dynamodb::types::AttributeValue;
    use std::collections::HashMap;
    let request = Update {
        table,
        key: HashMap::from([
            ("pk".to_owned(), AttributeValue::S(format!("tenant{}", writer % 8))),
            ("sk".to_owned(), AttributeValue::S(ulid::Ulid::new().to_string())),
        ]),
        update: "SET #d = :d, progress = :p, version = :zero".to_owned(),
        condition: "attribute_not_exists(version)",
        names: HashMap::from([("#d".to_owned(), "data".to_owned())]),
        values: HashMap::from([
            (":d".to_owned(), AttributeValue::S(data.to_owned())),
            (":p".to_owned(), AttributeValue::S(r#"{"routed":true}"#.to_owned())),
            (":zero".to_owned(), AttributeValue::N("0".to_owned())),
        ]),
    };
    matches!(client.update(request).await, Ok(true))
}

/// `batch` of [`triggers_bench::create_item`]'s items in one
/// `BatchExecuteStatement` of PartiQL `INSERT`s, each refused if its item
/// exists; how many were created.
async fn insert_batch(client: &Client, table: &str, writer: usize, data: &str, batch: usize) -> u64 {
    use aws_sdk_dynamodb::types::{AttributeValue, BatchStatementRequest};
    let statement =
        format!(r#"INSERT INTO "{table}" VALUE {{'pk': ?, 'sk': ?, 'data': ?, 'progress': ?, 'version': ?}}"#);
    let statements = (0..batch).filter_map(|_| {
        BatchStatementRequest::builder()
            .statement(&statement)
            .parameters(AttributeValue::S(format!("tenant{}", writer % 8)))
            .parameters(AttributeValue::S(ulid::Ulid::new().to_string()))
            .parameters(AttributeValue::S(data.to_owned()))
            .parameters(AttributeValue::S(r#"{"routed":true}"#.to_owned()))
            .parameters(AttributeValue::N("0".to_owned()))
            .build()
            .ok()
    });
    match client
        .batch_execute_statement()
        .set_statements(Some(statements.collect()))
        .send()
        .await
    {
        Ok(output) => output.responses().iter().filter(|r| r.error().is_none()).count() as u64,
        Err(_) => 0,
    }
}

/// `batch` of the same items as unconditional puts in one
/// `BatchWriteItem`; how many were created.
async fn put_batch(client: &Client, table: &str, writer: usize, data: &str, batch: usize) -> u64 {
    use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, WriteRequest};
    let requests = (0..batch).filter_map(|_| {
        let put = PutRequest::builder()
            .item("pk", AttributeValue::S(format!("tenant{}", writer % 8)))
            .item("sk", AttributeValue::S(ulid::Ulid::new().to_string()))
            .item("data", AttributeValue::S(data.to_owned()))
            .item("progress", AttributeValue::S(r#"{"routed":true}"#.to_owned()))
            .item("version", AttributeValue::N("0".to_owned()))
            .build()
            .ok()?;
        Some(WriteRequest::builder().put_request(put).build())
    });
    match client
        .batch_write_item()
        .request_items(table, requests.collect())
        .send()
        .await
    {
        Ok(output) => {
            let left = output
                .unprocessed_items()
                .and_then(|u| u.get(table))
                .map_or(0, Vec::len);
            batch.saturating_sub(left) as u64
        }
        Err(_) => 0,
    }
}

/// A client under measurement.
#[derive(Clone, Copy)]
enum Variant<'a> {
    Sdk(&'a Client),
    ByHand(&'a Lean),
    Lean(&'a LeanClient),
    Inserts(&'a Client, usize),
    Puts(&'a Client, usize),
}

impl Variant<'_> {
    /// Items created by one call.
    async fn create_items(self, table: &str, writer: usize, data: &str) -> u64 {
        match self {
            Self::Sdk(client) => triggers_bench::create_item(client, table, writer, data).await.into(),
            Self::ByHand(lean) => lean.create_item(table, writer, data).await.into(),
            Self::Lean(client) => create_item_lean(client, table, writer, data).await.into(),
            Self::Inserts(client, batch) => insert_batch(client, table, writer, data, batch).await,
            Self::Puts(client, batch) => put_batch(client, table, writer, data, batch).await,
        }
    }
}

/// Item creates from `writers` concurrent writers for `seconds`.
async fn write_for(
    client: Variant<'_>,
    dynamo: &triggers_stack::ChildProcess,
    table: &str,
    writers: usize,
    seconds: u64,
) -> Took {
    let data = "x".repeat(1_400);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let writes = (0..writers).map(|writer| {
        let data = data.clone();
        async move {
            let (mut items, mut latencies) = (0u64, Vec::new());
            while Instant::now() < deadline {
                let call = Instant::now();
                items += client.create_items(table, writer, &data).await;
                latencies.push(call.elapsed());
            }
            (items, latencies)
        }
    });
    let (started, client_cpu, server_cpu) = (Instant::now(), own_cpu(), dynamo.cpu());
    let (mut items, mut latencies) = (0, Vec::new());
    for (written, mut took) in futures::future::join_all(writes).await {
        items += written;
        latencies.append(&mut took);
    }
    latencies.sort_unstable();
    Took {
        latencies,
        items,
        client_cpu: own_cpu().saturating_sub(client_cpu),
        server_cpu: dynamo.cpu().saturating_sub(server_cpu),
        wall: started.elapsed(),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let tools = triggers_stack::Tools::locate()?;
    let dir = tempfile::tempdir()?;
    let port = triggers_stack::free_port()?;
    let dynamo = {
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
    let by_hand = Lean::new(port, &config.region)?;
    let lean = LeanClient::new(&config).await?;
    let mut variants = vec![
        (
            "the services' client (`triggers_core::dynamo::client`)".to_owned(),
            Variant::Sdk(&services),
        ),
        (
            "the same, stalled-stream protection off".to_owned(),
            Variant::Sdk(&unprotected),
        ),
        (
            "the SDK's default client, no metrics interceptor".to_owned(),
            Variant::Sdk(&plain),
        ),
    ];
    if args.services_only {
        variants.truncate(1);
    }
    if args.lean {
        variants.push((
            "by hand: JSON, `aws-sigv4`, reqwest (no SDK)".to_owned(),
            Variant::ByHand(&by_hand),
        ));
        variants.push((
            "the persister's lean client (`LeanClient`)".to_owned(),
            Variant::Lean(&lean),
        ));
    }
    if args.batched {
        let batch = usize::from(args.batch);
        variants.push((
            format!("the services' client, `BatchExecuteStatement` of {batch} `INSERT`s"),
            Variant::Inserts(&services, batch),
        ));
        variants.push((
            format!("the services' client, `BatchWriteItem` of {batch} puts (unconditional)"),
            Variant::Puts(&services, batch),
        ));
    }
    anyhow::ensure!(
        !args.writers.is_empty() && !args.writers.contains(&0),
        "--writers takes counts of at least 1"
    );
    let most = args.writers.iter().copied().max().unwrap_or(1);

    let mut tables = vec![("bare", triggers_bench::create_item_table(&services, "callbench").await?)];
    if args.events_shape {
        let shaped = triggers_core::dynamo::Tables::new(&format!(
            "callbench_{}_",
            ulid::Ulid::new().to_string().to_ascii_lowercase()
        ));
        shaped
            .specs()
            .into_iter()
            .find(|spec| spec.name == shaped.events)
            .ok_or_else(|| anyhow::anyhow!("no events table spec"))?
            .create_request(&services)?
            .send()
            .await?;
        tables.push(("events (`inbox` index)", shaped.events));
    }
    // DynamoDB Local's JIT and every client's connections warm.
    for (_, client) in &variants {
        for (_, table) in &tables {
            write_for(*client, &dynamo, table, most, 2).await;
        }
    }

    println!("# CPU per DynamoDB call\n");
    println!(
        "Conditional `UpdateItem` creating a ~1.5 KB item, the writers on one thread, {} s per variant and round; DynamoDB Local in its own process, its CPU counted apart.\n",
        args.seconds
    );
    println!(
        "| round | table | client | writers | calls/s | items/s | client CPU per item | DynamoDB Local CPU per item | call p50 | p99 | max |\n|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for round in 1..=args.rounds {
        for writers in &args.writers {
            for (name, client) in &variants {
                for (shape, table) in &tables {
                    let took = write_for(*client, &dynamo, table, *writers, args.seconds).await;
                    anyhow::ensure!(took.items > 0, "{name}: no item was created");
                    let per_item = |cpu: Duration| cpu.as_secs_f64() * 1e6 / took.items as f64;
                    let wall = took.wall.as_secs_f64();
                    let ms = |p: f64| percentile(&took.latencies, p).as_secs_f64() * 1e3;
                    println!(
                        "| {round} | {shape} | {name} | {writers} | {:.0} | {:.0} | {:.0} µs | {:.0} µs | {:.1} ms | {:.1} ms | {:.1} ms |",
                        took.latencies.len() as f64 / wall,
                        took.items as f64 / wall,
                        per_item(took.client_cpu),
                        per_item(took.server_cpu),
                        ms(0.5),
                        ms(0.99),
                        ms(1.0)
                    );
                }
            }
        }
    }
    for (_, table) in &tables {
        services.delete_table().table_name(table).send().await?;
    }
    Ok(())
}
