//! The life of an event, as the persister records it.
//!
//! ```text
//!               ┌──────────► unmatched
//! accepted ──► routed ──► retrying ──► dead_lettered
//!                 │           │              │ (redrive)
//!                 └───────────┴──────────────┴──► delivered
//! any state ──► acknowledged (from the inbox)
//! ```
//!
//! Each subscription of an event has its own state (`pending`, `retrying`,
//! `dead_lettered`, `disabled`, `delivered`, `skipped`); the event's overall
//! status follows from them. States only move forward: every state has a
//! rank, and a record that would lower it (a replayed or reordered outcome)
//! changes nothing. A redriven delivery may still move `dead_lettered` to
//! `delivered`, which ranks higher.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::delivery::{Outcome, OutcomeKind};

/// The overall status of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventStatus {
    /// Stored; not routed yet.
    Accepted,
    /// Routed; deliveries pending.
    Routed,
    /// A delivery failed and will be retried.
    Retrying,
    /// A delivery exhausted its retries, or was held back (its subscription
    /// paused or disabled): not delivered, and in the DLQ or the inbox.
    DeadLettered,
    /// No subscription matched.
    Unmatched,
    /// Every delivery succeeded (or was settled otherwise).
    Delivered,
    /// Acknowledged from the inbox.
    Acknowledged,
}

impl EventStatus {
    /// The name used in the API and in keys.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Routed => "routed",
            Self::Retrying => "retrying",
            Self::DeadLettered => "dead_lettered",
            Self::Unmatched => "unmatched",
            Self::Delivered => "delivered",
            Self::Acknowledged => "acknowledged",
        }
    }

    /// Parses an API name.
    pub fn parse(text: &str) -> Option<Self> {
        serde_json::from_value(serde_json::Value::String(text.to_owned())).ok()
    }

    /// Whether the event is in the pull inbox: not yet delivered nor
    /// acknowledged.
    pub fn in_inbox(self) -> bool {
        !matches!(self, Self::Delivered | Self::Acknowledged)
    }
}

/// The state of one subscription's delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Not attempted yet.
    Pending,
    /// Failed; another attempt follows.
    Retrying,
    /// Every attempt failed.
    DeadLettered,
    /// The subscription was disabled (410 Gone).
    Disabled,
    /// Not attempted (acknowledged, deleted, subscription gone).
    Skipped,
    /// A 2xx.
    Delivered,
}

impl DeliveryState {
    /// Higher ranks win.
    pub fn rank(self) -> u8 {
        match self {
            Self::Pending => 0,
            Self::Retrying => 1,
            Self::DeadLettered | Self::Disabled | Self::Skipped => 2,
            Self::Delivered => 3,
        }
    }

    fn settled(self) -> bool {
        self.rank() >= 2
    }
}

/// What the persister keeps about an event's progress.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Routed yet (or known unmatched).
    pub routed: bool,
    /// No subscription matched.
    pub unmatched: bool,
    /// Acknowledged from the inbox.
    pub acknowledged: bool,
    /// Per subscription.
    pub subscriptions: BTreeMap<String, DeliveryState>,
}

impl Progress {
    /// Applies an outcome; returns whether anything changed.
    pub fn apply(&mut self, outcome: &Outcome) -> bool {
        match outcome.kind {
            OutcomeKind::Routed => {
                let mut changed = !self.routed;
                self.routed = true;
                for id in &outcome.subscriptions {
                    self.subscriptions.entry(id.to_string()).or_insert_with(|| {
                        changed = true;
                        DeliveryState::Pending
                    });
                }
                changed
            }
            OutcomeKind::Unmatched => {
                let unmatched = self.unmatched || self.subscriptions.is_empty();
                let changed = !self.routed || unmatched != self.unmatched;
                self.routed = true;
                self.unmatched = unmatched;
                changed
            }
            kind => {
                let state = match kind {
                    OutcomeKind::Delivered => DeliveryState::Delivered,
                    OutcomeKind::Retrying => DeliveryState::Retrying,
                    OutcomeKind::DeadLettered => DeliveryState::DeadLettered,
                    OutcomeKind::Disabled => DeliveryState::Disabled,
                    _ => DeliveryState::Skipped,
                };
                let Some(id) = &outcome.subscription_id else {
                    return false;
                };
                let mut changed = std::mem::take(&mut self.unmatched);
                let entry = self.subscriptions.entry(id.to_string()).or_insert_with(|| {
                    changed = true;
                    DeliveryState::Pending
                });
                if state.rank() > entry.rank() {
                    *entry = state;
                    changed = true;
                }
                changed
            }
        }
    }

    /// Whether nothing more is expected of the event's pipeline: routed,
    /// and every delivery settled (delivered, dead-lettered, disabled,
    /// skipped), or unmatched, or acknowledged. Only a replay or an
    /// acknowledgement changes it later.
    pub fn settled(&self) -> bool {
        self.acknowledged
            || (self.routed
                && matches!(
                    self.status(),
                    EventStatus::Delivered | EventStatus::DeadLettered | EventStatus::Unmatched
                ))
    }

    /// The overall status.
    pub fn status(&self) -> EventStatus {
        if self.acknowledged {
            return EventStatus::Acknowledged;
        }
        if self.unmatched && self.subscriptions.is_empty() {
            return EventStatus::Unmatched;
        }
        if !self.routed && self.subscriptions.is_empty() {
            return EventStatus::Accepted;
        }
        let states: Vec<DeliveryState> = self.subscriptions.values().copied().collect();
        if !states.is_empty() && states.iter().all(|s| s.settled()) {
            // A delivery that never reached its endpoint (dead-lettered,
            // or its subscription disabled) is not delivered.
            return if states
                .iter()
                .any(|s| matches!(s, DeliveryState::DeadLettered | DeliveryState::Disabled))
            {
                EventStatus::DeadLettered
            } else {
                EventStatus::Delivered
            };
        }
        if states
            .iter()
            .any(|s| matches!(s, DeliveryState::Retrying | DeliveryState::DeadLettered))
        {
            return EventStatus::Retrying;
        }
        EventStatus::Routed
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::ids::{EventId, SubscriptionId, TenantId};

    fn outcome(kind: OutcomeKind, sub: Option<SubscriptionId>, subs: Vec<SubscriptionId>) -> Outcome {
        Outcome {
            event_id: EventId::new(),
            tenant: TenantId::new(),
            subscription_id: sub,
            delivery_id: None,
            kind,
            attempt: 1,
            at: 0,
            http_status: None,
            latency_ms: None,
            error: None,
            response_excerpt: None,
            subscriptions: subs,
            next_attempt_at: None,
        }
    }

    #[test]
    fn the_happy_path_and_the_sad_one() {
        let (a, b) = (SubscriptionId::new(), SubscriptionId::new());
        let mut p = Progress::default();
        assert_eq!(p.status(), EventStatus::Accepted);
        p.apply(&outcome(OutcomeKind::Routed, None, vec![a, b]));
        assert_eq!(p.status(), EventStatus::Routed);
        p.apply(&outcome(OutcomeKind::Retrying, Some(a), vec![]));
        assert_eq!(p.status(), EventStatus::Retrying);
        p.apply(&outcome(OutcomeKind::Delivered, Some(b), vec![]));
        assert_eq!(p.status(), EventStatus::Retrying);
        p.apply(&outcome(OutcomeKind::DeadLettered, Some(a), vec![]));
        assert_eq!(p.status(), EventStatus::DeadLettered);
        // A redrive that succeeds.
        p.apply(&outcome(OutcomeKind::Delivered, Some(a), vec![]));
        assert_eq!(p.status(), EventStatus::Delivered);
        // A late retrying outcome changes nothing.
        assert!(!p.apply(&outcome(OutcomeKind::Retrying, Some(a), vec![])));
        assert_eq!(p.status(), EventStatus::Delivered);
        p.acknowledged = true;
        assert_eq!(p.status(), EventStatus::Acknowledged);
    }

    #[test]
    fn a_disabled_subscription_does_not_make_an_event_delivered() {
        let (a, b) = (SubscriptionId::new(), SubscriptionId::new());
        let mut p = Progress::default();
        p.apply(&outcome(OutcomeKind::Routed, None, vec![a, b]));
        p.apply(&outcome(OutcomeKind::Delivered, Some(a), vec![]));
        p.apply(&outcome(OutcomeKind::Disabled, Some(b), vec![]));
        assert_eq!(p.status(), EventStatus::DeadLettered);
        assert!(p.status().in_inbox());
    }

    #[test]
    fn unmatched_and_outcomes_before_routing() {
        let mut p = Progress::default();
        p.apply(&outcome(OutcomeKind::Unmatched, None, vec![]));
        assert_eq!(p.status(), EventStatus::Unmatched);
        // A delivery outcome that overtook its routed outcome.
        let a = SubscriptionId::new();
        let mut q = Progress::default();
        q.apply(&outcome(OutcomeKind::Delivered, Some(a), vec![]));
        q.apply(&outcome(OutcomeKind::Routed, None, vec![a]));
        assert_eq!(q.status(), EventStatus::Delivered);
        assert_eq!(EventStatus::parse("dead_lettered"), Some(EventStatus::DeadLettered));
        assert!(EventStatus::Unmatched.in_inbox() && !EventStatus::Delivered.in_inbox());
    }

    #[test]
    fn settled_only_once_routed_and_every_delivery_settled() {
        let (a, b) = (SubscriptionId::new(), SubscriptionId::new());
        let mut p = Progress::default();
        assert!(!p.settled(), "accepted");
        // A delivery outcome that overtook its routed outcome: the event
        // may have more subscriptions than the one it names.
        p.apply(&outcome(OutcomeKind::Delivered, Some(a), vec![]));
        assert_eq!(p.status(), EventStatus::Delivered);
        assert!(!p.settled(), "not routed yet");
        p.apply(&outcome(OutcomeKind::Routed, None, vec![a, b]));
        assert!(!p.settled(), "b pending");
        p.apply(&outcome(OutcomeKind::Retrying, Some(b), vec![]));
        assert!(!p.settled(), "b retrying");
        p.apply(&outcome(OutcomeKind::DeadLettered, Some(b), vec![]));
        assert!(p.settled(), "delivered and dead-lettered");
        let mut unmatched = Progress::default();
        unmatched.apply(&outcome(OutcomeKind::Unmatched, None, vec![]));
        assert!(unmatched.settled());
        let acknowledged = Progress {
            acknowledged: true,
            ..Progress::default()
        };
        assert!(acknowledged.settled());
    }

    proptest! {
        /// Whatever the order, the same outcomes give the same status, and no
        /// subscription state ever goes down.
        #[test]
        fn order_does_not_matter(order in Just((0..8usize).collect::<Vec<_>>()).prop_shuffle()) {
            let (a, b) = (SubscriptionId::new(), SubscriptionId::new());
            let all = [
                outcome(OutcomeKind::Routed, None, vec![a, b]),
                outcome(OutcomeKind::Retrying, Some(a), vec![]),
                outcome(OutcomeKind::Retrying, Some(a), vec![]),
                outcome(OutcomeKind::DeadLettered, Some(a), vec![]),
                outcome(OutcomeKind::Retrying, Some(b), vec![]),
                outcome(OutcomeKind::Delivered, Some(b), vec![]),
                outcome(OutcomeKind::Routed, None, vec![a, b]),
                outcome(OutcomeKind::Retrying, Some(b), vec![]),
            ];
            let mut p = Progress::default();
            let mut ranks: BTreeMap<String, u8> = BTreeMap::new();
            for i in order {
                p.apply(&all[i]);
                for (sub, state) in &p.subscriptions {
                    let before = ranks.insert(sub.clone(), state.rank()).unwrap_or(0);
                    prop_assert!(state.rank() >= before);
                }
            }
            prop_assert_eq!(p.status(), EventStatus::DeadLettered);
        }

        /// `apply` says whether it changed anything, in any order of any
        /// outcomes (unmatched ones, ones before routing, repeats).
        #[test]
        fn apply_says_whether_it_changed_the_progress(
            order in proptest::collection::vec(0..10usize, 0..14),
        ) {
            let (a, b) = (SubscriptionId::new(), SubscriptionId::new());
            let all = [
                outcome(OutcomeKind::Routed, None, vec![a, b]),
                outcome(OutcomeKind::Routed, None, vec![b]),
                outcome(OutcomeKind::Routed, None, vec![]),
                outcome(OutcomeKind::Unmatched, None, vec![]),
                outcome(OutcomeKind::Retrying, Some(a), vec![]),
                outcome(OutcomeKind::DeadLettered, Some(a), vec![]),
                outcome(OutcomeKind::Delivered, Some(b), vec![]),
                outcome(OutcomeKind::Disabled, Some(b), vec![]),
                outcome(OutcomeKind::Skipped, Some(a), vec![]),
                outcome(OutcomeKind::Delivered, None, vec![]),
            ];
            let mut p = Progress::default();
            for i in order {
                let before = p.clone();
                let changed = p.apply(&all[i]);
                prop_assert_eq!(changed, p != before, "{:?} on {:?}", all[i].kind, before);
            }
        }
    }
}
