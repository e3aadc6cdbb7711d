//! What the benchmark programs share.

use std::path::Path;

use triggers_core::config::ConfigSource;
use triggers_local::{LocalOptions, LocalStack};

pub mod payload;

/// The whole local pipeline on free ports with its data in `dir`: quiet
/// logs, no practical rate limit, and any `TRIGGERS_<SECTION>__<FIELD>`
/// setting of this process on top (e.g. `TRIGGERS_KAFKA__FETCH_WAIT_MAX`).
pub fn local_options(dir: &Path) -> anyhow::Result<LocalOptions> {
    let defaults = [
        ("TRIGGERS_TELEMETRY__LOG_LEVEL", "error"),
        ("TRIGGERS_GATEWAY__DEFAULT_RATE_LIMIT", "100000000"),
    ]
    .map(|(name, value)| (name.to_owned(), value.to_owned()));
    let settings = std::env::vars().filter(|(name, _)| name.starts_with("TRIGGERS_") && name.contains("__"));
    Ok(LocalOptions {
        env: defaults.into_iter().chain(settings).collect(),
        ..LocalOptions::on_free_ports(dir)?
    })
}

/// A benchmark's local stack and what must live as long as it.
#[derive(Debug)]
pub struct Local {
    /// The running stack.
    pub stack: LocalStack,
    /// The configuration it runs with.
    pub source: ConfigSource,
    /// The temporary data folder (and the log output, if any): keep them
    /// bound until the stack stopped.
    pub guards: Guards,
}

/// The temporary data folder and log output of a [`Local`].
#[derive(Debug)]
pub struct Guards {
    _dir: tempfile::TempDir,
    _telemetry: Option<triggers_core::telemetry::TelemetryGuard>,
}

/// Starts the whole local pipeline ([`local_options`]) with its data in a
/// temporary folder; `logs` names the process when its logs should be
/// written (at `TRIGGERS_TELEMETRY__LOG_LEVEL`, `error` by default).
pub async fn start_local(logs: Option<&str>) -> anyhow::Result<Local> {
    let dir = tempfile::tempdir()?;
    let options = local_options(dir.path())?;
    let source = triggers_local::load_config(&options)?;
    let telemetry = match logs {
        Some(name) => Some(triggers_core::telemetry::init(&source.common()?.telemetry, name)?),
        None => None,
    };
    let stack = triggers_local::start(&options, &source).await?;
    Ok(Local {
        stack,
        source,
        guards: Guards {
            _dir: dir,
            _telemetry: telemetry,
        },
    })
}

/// The `p` quantile (0–1) of sorted durations.
pub fn percentile(sorted: &[std::time::Duration], p: f64) -> std::time::Duration {
    if sorted.is_empty() {
        return std::time::Duration::ZERO;
    }
    sorted[(((sorted.len() - 1) as f64) * p).round() as usize]
}

/// A new on-demand table keyed like the events table (`pk`, `sk`, both
/// strings), for benchmarks that write to DynamoDB directly; its name.
pub async fn create_item_table(client: &aws_sdk_dynamodb::Client, prefix: &str) -> anyhow::Result<String> {
    use aws_sdk_dynamodb::types::{AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType};
    let table = format!("{prefix}_{}", ulid::Ulid::new().to_string().to_ascii_lowercase());
    let key = |name: &str, kind: KeyType| KeySchemaElement::builder().attribute_name(name).key_type(kind).build();
    let attribute = |name: &str| {
        AttributeDefinition::builder()
            .attribute_name(name)
            .attribute_type(ScalarAttributeType::S)
            .build()
    };
    client
        .create_table()
        .table_name(&table)
        .billing_mode(BillingMode::PayPerRequest)
        .key_schema(key("pk", KeyType::Hash)?)
        .key_schema(key("sk", KeyType::Range)?)
        .attribute_definitions(attribute("pk")?)
        .attribute_definitions(attribute("sk")?)
        .send()
        .await?;
    Ok(table)
}

/// The persister's common write: a conditional `UpdateItem` creating a
/// new item of `data` (~1.4 KB makes a ~1.5 KB item) under tenant
/// `writer % 8`; whether it succeeded.
pub async fn create_item(client: &aws_sdk_dynamodb::Client, table: &str, writer: usize, data: &str) -> bool {
    use aws_sdk_dynamodb::types::AttributeValue;
    client
        .update_item()
        .table_name(table)
        .key("pk", AttributeValue::S(format!("tenant{}", writer % 8)))
        .key("sk", AttributeValue::S(ulid::Ulid::new().to_string()))
        .update_expression("SET #d = :d, progress = :p, version = :zero")
        .condition_expression("attribute_not_exists(version)")
        .expression_attribute_names("#d", "data")
        .expression_attribute_values(":d", AttributeValue::S(data.to_owned()))
        .expression_attribute_values(":p", AttributeValue::S(r#"{"routed":true}"#.to_owned()))
        .expression_attribute_values(":zero", AttributeValue::N("0".to_owned()))
        .send()
        .await
        .is_ok()
}
