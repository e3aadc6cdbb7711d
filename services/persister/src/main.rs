//! `triggers-persister`: the persister as a process.

use std::path::PathBuf;

use triggers_core::config::ConfigSource;

/// mimalloc rather than glibc's allocator: the persister builds and frees a
/// DynamoDB request and response per event, and spent ~20 % of its CPU in
/// glibc's malloc and free; with mimalloc it took 4-9 % less CPU per event
/// (loadtest/RESULTS.md, "The allocator"). The other services use it too.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let file = std::env::var_os("TRIGGERS_CONFIG").map(PathBuf::from);
    let source = ConfigSource::load(file.as_deref())?;
    let common = source.common()?;
    let config: triggers_persister::PersisterConfig = source.section("persister")?;
    common.runtime.run(async {
        let _telemetry = triggers_core::telemetry::init(&common.telemetry, "triggers-persister")?;
        let shutdown = triggers_core::shutdown::signal_token();
        let running = triggers_persister::start(&common, &config, shutdown).await?;
        running.task.await??;
        Ok(())
    })?
}
