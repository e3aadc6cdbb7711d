//! `triggers-router`: the router as a process.

use std::path::PathBuf;

use triggers_core::config::ConfigSource;

/// mimalloc rather than glibc's allocator: with it the router's worker took
/// ~15 % less CPU per event (loadtest/RESULTS.md, "mimalloc for every
/// service").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let file = std::env::var_os("TRIGGERS_CONFIG").map(PathBuf::from);
    let source = ConfigSource::load(file.as_deref())?;
    let common = source.common()?;
    let config: triggers_router::RouterConfig = source.section("router")?;
    common.runtime.run(async {
        let _telemetry = triggers_core::telemetry::init(&common.telemetry, "triggers-router")?;
        let shutdown = triggers_core::shutdown::signal_token();
        let running = triggers_router::start(&common, &config, shutdown).await?;
        running.task.await??;
        Ok(())
    })?
}
