//! What the deliverer's consume loops share: clients, the subscription
//! table, flow control and settings. Its behaviour is split by concern
//! across `dispatch`, `attempt` and `settle`.

use std::time::Duration;

use triggers_core::CancellationToken;
use triggers_core::codec::AvroCodec;
use triggers_core::config::TopicsConfig;
use triggers_core::dynamo::Tables;
use triggers_core::follower::Follower;
use triggers_core::kafka::KafkaProducer;

use crate::batch::Batcher;
use crate::checks::Checks;
use crate::lanes::{Lanes, Slots};
use crate::ssrf;

/// What the deliverer shares between its consume loops.
pub(crate) struct Deliverer {
    pub(crate) http: reqwest::Client,
    pub(crate) allow: ssrf::AllowList,
    pub(crate) follower: Follower,
    pub(crate) producer: KafkaProducer,
    pub(crate) codec: AvroCodec,
    pub(crate) topics: TopicsConfig,
    /// The retry tiers' topics, shortest first.
    pub(crate) retry_topics: Vec<String>,
    pub(crate) dynamo: aws_sdk_dynamodb::Client,
    pub(crate) tables: Tables,
    /// Acknowledgement checks, gathered into few calls.
    pub(crate) checks: Checks,
    pub(crate) max_response_bytes: usize,
    pub(crate) lanes: Lanes,
    pub(crate) slots: Slots,
    pub(crate) batcher: Batcher,
    pub(crate) park_after: Duration,
    pub(crate) park_delay: Duration,
    /// Ends waits for the registry.
    pub(crate) shutdown: CancellationToken,
}
