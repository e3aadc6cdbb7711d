//! `triggers-deliverer`: the deliverer as a process.

use std::path::PathBuf;

use triggers_core::config::ConfigSource;

/// mimalloc rather than glibc's allocator: each delivery builds and frees a
/// signed request and an outcome record; with mimalloc the deliverer's worker
/// took ~12 % less CPU per event (loadtest/RESULTS.md, "mimalloc for every
/// service").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
