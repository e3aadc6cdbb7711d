//! Retrying an effect until it succeeds, fails for good, or shutdown comes:
//! what the consume loop, the quarantine and the stores share.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Retries `attempt` with backoff until it succeeds or `shutdown`; `None`
/// on shutdown.
pub async fn retry<T, E: std::fmt::Display, Fut: Future<Output = Result<T, E>>>(
    what: &str,
    shutdown: &CancellationToken,
    attempt: impl FnMut() -> Fut,
) -> Option<T> {
    // Everything is retriable: the only way out without a value is shutdown.
    retry_transient(what, shutdown, |_| true, attempt)
        .await
        .and_then(Result::ok)
}

/// Like [`retry`], but only errors for which `retriable` holds are retried;
/// any other ends the retries: `Some(Err(e))`. `None` on shutdown.
pub async fn retry_transient<T, E: std::fmt::Display, Fut: Future<Output = Result<T, E>>>(
    what: &str,
    shutdown: &CancellationToken,
    retriable: impl Fn(&E) -> bool,
    mut attempt: impl FnMut() -> Fut,
) -> Option<Result<T, E>> {
    let mut backoff = Duration::from_millis(100);
    loop {
        match attempt().await {
            Ok(value) => return Some(Ok(value)),
            Err(e) if !retriable(&e) => {
                tracing::warn!(error = %e, what, "failed for good");
                return Some(Err(e));
            }
            Err(e) => {
                tracing::warn!(error = %e, what, "failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}
