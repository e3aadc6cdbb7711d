//! `triggers-deliverer`: the deliverer as a process.

use std::path::PathBuf;

use triggers_core::config::ConfigSource;

fn main() -> anyhow::Result<()> {
    let file = std::env::var_os("TRIGGERS_CONFIG").map(PathBuf::from);
    let source = ConfigSource::load(file.as_deref())?;
    let common = source.common()?;
    let config: triggers_deliverer::DelivererConfig = source.section("deliverer")?;
    common.runtime.run(async {
        let _telemetry = triggers_core::telemetry::init(&common.telemetry, "triggers-deliverer")?;
        let shutdown = triggers_core::shutdown::signal_token();
        let running = triggers_deliverer::start(&common, &config, shutdown).await?;
        running.task.await??;
        Ok(())
    })?
}
