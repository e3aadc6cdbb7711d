//! `triggers-gateway`: the gateway as a process.

use std::path::PathBuf;

use triggers_core::config::ConfigSource;

/// mimalloc rather than glibc's allocator: each request allocates and frees
/// its headers, JSON, Avro record and metric labels, and with mimalloc the
/// gateway's HTTP worker took ~15 % less CPU per event (loadtest/RESULTS.md,
/// "mimalloc for every service").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let file = std::env::var_os("TRIGGERS_CONFIG").map(PathBuf::from);
    let source = ConfigSource::load(file.as_deref())?;
    let common = source.common()?;
    let config: triggers_gateway::GatewayConfig = source.section("gateway")?;
    common.runtime.run(async {
        let _telemetry = triggers_core::telemetry::init(&common.telemetry, "triggers-gateway")?;
        let shutdown = triggers_core::shutdown::signal_token();
        let running = triggers_gateway::start(&common, &config, shutdown).await?;
        running.task.await??;
        Ok(())
    })?
}
