//! Starting a persister for tests on one slice of the local stack (feature
//! `testkit`): the settings every test uses (an ephemeral port, a consumer
//! group of the slice's own), changed by `adjust`.

use triggers_core::CancellationToken;
use triggers_core::ops::RunningServer;
use triggers_testkit::Slice;

use crate::PersisterConfig;

/// Starts a persister on `slice` until `shutdown`.
///
/// # Panics
/// When it cannot start (a test failure).
pub async fn start(
    slice: &Slice,
    shutdown: CancellationToken,
    adjust: impl FnOnce(&mut PersisterConfig),
) -> RunningServer {
    let mut config = PersisterConfig {
        listen: "127.0.0.1:0".to_owned(),
        group_id: slice.group("persister"),
        ..PersisterConfig::default()
    };
    adjust(&mut config);
    crate::start(&slice.common, &config, shutdown)
        .await
        .unwrap_or_else(|e| panic!("persister: {e}"))
}
