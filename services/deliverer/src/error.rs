//! Why the deliverer could not start.

use triggers_core::service::ServiceError;

/// The deliverer could not start.
#[derive(Debug, thiserror::Error)]
pub enum DelivererError {
    /// What any consumer service can fail at.
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// `allow_networks` names something that is not a network.
    #[error("deliverer.allow_networks: {0}")]
    AllowList(String),
    /// The webhook HTTP client could not be built.
    #[error("webhook HTTP client: {0}")]
    HttpClient(#[source] reqwest::Error),
}
