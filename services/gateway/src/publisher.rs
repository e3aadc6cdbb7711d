//! Where the gateway writes to Kafka besides events: subscription changes
//! (the compacted `<ns>.subscriptions`) and replayed or redriven deliveries
//! (`<ns>.deliveries`).

use triggers_core::codec::AvroCodec;
use triggers_core::kafka::KafkaProducer;
use triggers_core::subscription::Topic;

/// Publishes subscription changes to the compacted topic.
#[derive(Clone)]
pub struct SubscriptionPublisher {
    /// The producer.
    pub producer: KafkaProducer,
    /// The codec.
    pub codec: AvroCodec,
    /// `<ns>.subscriptions`.
    pub topic: String,
    /// `<ns>.deliveries`, for replays and redrives.
    pub deliveries: String,
}

impl std::fmt::Debug for SubscriptionPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubscriptionPublisher")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl SubscriptionPublisher {
    /// Where subscription states go.
    pub fn topic(&self) -> Topic<'_> {
        (&self.producer, &self.codec, self.topic.as_str())
    }
}
