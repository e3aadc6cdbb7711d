//! `triggers-registry`: the dev schema registry as a process.

use std::path::PathBuf;

use anyhow::Context;
use triggers_core::config::ConfigSource;

fn main() -> anyhow::Result<()> {
    let file = std::env::var_os("TRIGGERS_CONFIG").map(PathBuf::from);
    let source = ConfigSource::load(file.as_deref())?;
    let common = source.common()?;
    let config: triggers_registry::RegistryServerConfig = source.section("registry_server")?;
    common.runtime.run(async {
        let _telemetry = triggers_core::telemetry::init(&common.telemetry, "triggers-registry")?;
        let shutdown = triggers_core::shutdown::signal_token();
        let running = triggers_registry::start(&common.kafka, &config, shutdown)
            .await
            .context("starting the schema registry")?;
        running.task.await.context("registry task")??;
        Ok(())
    })?
}
