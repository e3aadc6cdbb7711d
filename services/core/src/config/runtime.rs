//! `[runtime]`: the async runtime each service process runs on.

use std::future::Future;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigIssue, Validate, join};

/// The most worker threads a process may ask for.
const MAX_WORKER_THREADS: usize = 256;

/// How many threads run a service's tasks.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Threads that run the service's tasks (Tokio's worker threads). 0:
    /// `TOKIO_WORKER_THREADS` if set, else one per core the process sees,
    /// which in a pod without a CPU limit is every core of its node.
    /// Blocking work (Kafka polls, flushes) runs on other threads either
    /// way. On a 1-vCPU pod, 1 costs less CPU per event than one per core
    /// (docs/capacity.md).
    pub worker_threads: usize,
}

impl RuntimeConfig {
    /// The multi-threaded runtime these settings describe; multi-threaded
    /// even with one worker, since a rebalance waits for running work in
    /// `block_in_place` (`crate::handover`), which a current-thread
    /// runtime does not allow.
    pub fn build(&self) -> std::io::Result<tokio::runtime::Runtime> {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.enable_all();
        if self.worker_threads > 0 {
            builder.worker_threads(self.worker_threads);
        }
        builder.build()
    }

    /// Runs `main` to its end on the runtime these settings describe, then
    /// gives blocking work still running (a consumer's close or a flush
    /// that the broker does not answer) [`EXIT_GRACE`] before the process
    /// goes: dropping a runtime would wait for it without a limit.
    pub fn run<F: Future>(&self, main: F) -> std::io::Result<F::Output> {
        let runtime = self.build()?;
        let output = runtime.block_on(main);
        runtime.shutdown_timeout(EXIT_GRACE);
        Ok(output)
    }
}

/// How long [`RuntimeConfig::run`] waits for blocking work at exit.
pub const EXIT_GRACE: Duration = Duration::from_secs(5);

impl Validate for RuntimeConfig {
    fn validate(&self, prefix: &str, issues: &mut Vec<ConfigIssue>) {
        if self.worker_threads > MAX_WORKER_THREADS {
            issues.push(ConfigIssue::new(
                join(prefix, "worker_threads"),
                format!("must be at most {MAX_WORKER_THREADS} (0: one per core)"),
            ));
        }
    }
}
