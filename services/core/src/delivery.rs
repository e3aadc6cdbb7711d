//! Deliveries (`<ns>.deliveries`, its retry tiers, the DLQ) and outcomes
//! (`<ns>.outcomes`): Avro records `triggers.v1.Delivery` and
//! `triggers.v1.Outcome`.

use serde::{Deserialize, Serialize};

use crate::event::Event;
use crate::ids::{DeliveryId, EventId, SubscriptionId, TenantId};

/// One event to deliver to one subscription. Keyed by the subscription id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    /// Derived from the event and the subscription ([`DeliveryId::derive`]).
    pub id: DeliveryId,
    /// The subscription to deliver to.
    pub subscription_id: SubscriptionId,
    /// The owner.
    pub tenant: TenantId,
    /// The event itself.
    pub event: Event,
    /// The attempt this record asks for, from 1. Attempt numbers keep
    /// counting across replays and redrives, so every attempt of an event to
    /// a subscription has its own number in the history.
    pub attempt: i32,
    /// The attempt that started this round of the retry schedule: 1, or the
    /// first attempt of a replay or redrive. The retry tier of a failed
    /// attempt is `attempt - first_attempt`.
    #[serde(default = "one")]
    pub first_attempt: i32,
    /// Not before this time (ms since the epoch); 0 for at once.
    pub not_before: i64,
    /// A replay of an earlier delivery.
    pub replay: bool,
    /// The error of the previous attempt.
    pub last_error: Option<String>,
    /// The HTTP status of the previous attempt.
    pub last_status: Option<i32>,
}

impl Delivery {
    /// The first delivery of `event` to `subscription`.
    pub fn first(event: Event, subscription: SubscriptionId) -> Self {
        Self {
            id: DeliveryId::derive(&event.id, &subscription),
            subscription_id: subscription,
            tenant: event.tenant,
            event,
            attempt: 1,
            first_attempt: 1,
            not_before: 0,
            replay: false,
            last_error: None,
            last_status: None,
        }
    }
}

fn one() -> i32 {
    1
}

impl Delivery {
    /// A new round of deliveries of `event` to `subscription` after
    /// `previous_attempts` earlier attempts: a replay (`replay`) or a redrive.
    pub fn again(event: Event, subscription: SubscriptionId, previous_attempts: i32, replay: bool) -> Self {
        let attempt = previous_attempts.max(0) + 1;
        Self {
            attempt,
            first_attempt: attempt,
            replay,
            ..Self::first(event, subscription)
        }
    }

    /// The position of this attempt in the current round (0 for its first).
    pub fn round_position(&self) -> i32 {
        self.attempt - self.first_attempt.max(1)
    }
}

/// What happened to an event or one of its deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeKind {
    /// The router matched it to `subscriptions`.
    Routed,
    /// No subscription matched.
    Unmatched,
    /// A webhook got a 2xx.
    Delivered,
    /// An attempt failed; another will follow.
    Retrying,
    /// Every attempt failed; it is in the DLQ.
    DeadLettered,
    /// The endpoint answered 410 Gone; the subscription is disabled.
    Disabled,
    /// Not attempted (acknowledged, deleted, or subscription gone).
    Skipped,
}

/// The result of routing or of one attempt. Keyed by the event id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// The event.
    pub event_id: EventId,
    /// The owner.
    pub tenant: TenantId,
    /// The subscription, for delivery outcomes.
    pub subscription_id: Option<SubscriptionId>,
    /// The delivery, for delivery outcomes.
    pub delivery_id: Option<DeliveryId>,
    /// What happened.
    pub kind: OutcomeKind,
    /// The attempt number (0 for routing outcomes).
    pub attempt: i32,
    /// When (ms since the epoch).
    pub at: i64,
    /// The endpoint's HTTP status, if it answered.
    pub http_status: Option<i32>,
    /// How long the attempt took.
    pub latency_ms: Option<i64>,
    /// What went wrong.
    pub error: Option<String>,
    /// The start of the endpoint's answer (at most 4 KB).
    pub response_excerpt: Option<String>,
    /// For `routed`: the subscriptions that matched.
    pub subscriptions: Vec<SubscriptionId>,
    /// For `retrying`: when the next attempt is due (ms since the epoch).
    #[serde(default)]
    pub next_attempt_at: Option<i64>,
}

impl Outcome {
    /// A routing outcome (`routed` or `unmatched`) of `event`.
    pub fn routing(event: &Event, subscriptions: Vec<SubscriptionId>) -> Self {
        Self {
            event_id: event.id,
            tenant: event.tenant,
            subscription_id: None,
            delivery_id: None,
            kind: if subscriptions.is_empty() {
                OutcomeKind::Unmatched
            } else {
                OutcomeKind::Routed
            },
            attempt: 0,
            at: crate::event::now_ms(),
            http_status: None,
            latency_ms: None,
            error: None,
            response_excerpt: None,
            subscriptions,
            next_attempt_at: None,
        }
    }
}
