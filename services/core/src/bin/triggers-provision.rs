//! `triggers-provision`: creates every topic and table of a deployment from
//! its configuration (the Helm chart runs it as a Job). Idempotent.
//!
//! `--no-tables`: topics only, for deployments whose DynamoDB tables are
//! created elsewhere (Terraform, CloudFormation).

// A command-line program: it reports to the person (or Job log) running it.
#![allow(clippy::print_stdout)]

use std::path::PathBuf;

use triggers_core::config::ConfigSource;
use triggers_core::dynamo::Tables;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let file = std::env::var_os("TRIGGERS_CONFIG").map(PathBuf::from);
    let source = ConfigSource::load(file.as_deref())?;
    let common = source.common()?;
    let schemas_topic = std::env::var("TRIGGERS_SCHEMAS_TOPIC").unwrap_or_else(|_| "_schemas".to_owned());
    let with_tables = match std::env::args().nth(1).as_deref() {
        None => true,
        Some("--no-tables") => false,
        Some(other) => return Err(format!("unknown argument `{other}` (only --no-tables)").into()),
    };
    let mut report = triggers_core::provision::ProvisionReport::default();
    triggers_core::provision::provision_topics(
        &common.kafka,
        &triggers_core::provision::topic_specs(&common.topics, &schemas_topic),
        common.topics.replication_factor,
        &mut report,
    )
    .await?;
    if with_tables {
        let dynamo = triggers_core::dynamo::client(&common.dynamodb).await;
        let tables = Tables::new(&common.dynamodb.table_prefix);
        triggers_core::provision::provision_tables(&dynamo, &tables, &mut report).await?;
    }
    println!("topics created:  {:?}", report.topics_created);
    println!("topics existing: {:?}", report.topics_existing);
    println!("tables created:  {:?}", report.tables_created);
    println!("tables existing: {:?}", report.tables_existing);
    println!("ttl enabled:     {:?}", report.ttl_enabled);
    println!(
        "{}",
        if report.changed() {
            "provisioned"
        } else {
            "nothing to do"
        }
    );
    Ok(())
}
