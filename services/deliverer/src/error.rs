//! Why the deliverer could not start.

/// The deliverer could not start.
#[derive(Debug, thiserror::Error)]
pub enum DelivererError {
    /// The operations server could not bind.
    #[error("cannot listen on {listen}: {source}")]
    Bind {
        /// The address.
        listen: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Kafka refused.
    #[error("Kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// A client could not be built.
    #[error(transparent)]
    Client(#[from] triggers_core::kafka::ClientError),
    /// The codec could not be built.
    #[error(transparent)]
    Codec(#[from] triggers_core::codec::CodecError),
    /// Anything else.
    #[error("{0}")]
    Internal(String),
}
