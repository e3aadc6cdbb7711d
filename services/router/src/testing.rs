//! Starting a router for tests on one slice of the local stack (feature
//! `testkit`): the settings every test uses (an ephemeral port, a consumer
//! group of the slice's own), changed by `adjust`.

use triggers_core::CancellationToken;
use triggers_core::follower::Follower;
use triggers_core::ops::RunningServer;
use triggers_testkit::Slice;

use crate::RouterConfig;

/// Starts a router on `slice` until `shutdown`.
///
/// # Panics
/// When it cannot start (a test failure).
pub async fn start(
    slice: &Slice,
    shutdown: CancellationToken,
    adjust: impl FnOnce(&mut RouterConfig),
) -> RunningServer {
    start_following(slice, shutdown, adjust).await.0
}

/// [`start`], also giving the router's subscription table: wait on
/// [`Follower::knows`] before counting on a new subscription.
///
/// # Panics
/// When it cannot start (a test failure).
pub async fn start_following(
    slice: &Slice,
    shutdown: CancellationToken,
    adjust: impl FnOnce(&mut RouterConfig),
) -> (RunningServer, Follower) {
    let mut config = RouterConfig {
        listen: "127.0.0.1:0".to_owned(),
        group_id: slice.group("router"),
        ..RouterConfig::default()
    };
    adjust(&mut config);
    crate::start_following(&slice.common, &config, shutdown)
        .await
        .unwrap_or_else(|e| panic!("router: {e}"))
}
