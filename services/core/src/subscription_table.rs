//! The subscriptions as an in-memory table, built from the compacted topic
//! and indexed by tenant and event type, so matching an event costs the
//! subscriptions of its tenant that could match its type — not all of them.
//!
//! Per tenant: exact types in a map, `prefix.*` patterns in a map looked up
//! once per dot-prefix of the event type (`a.b.c` looks up `a` and `a.b`),
//! and `*` in a list. Each candidate then passes its content filter.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::event::Event;
use crate::ids::{SubscriptionId, TenantId};
use crate::matching::{Filter, TypePattern};
use crate::subscription::Subscription;
use serde_json::Value;

/// A subscription ready for matching.
#[derive(Debug)]
pub struct Compiled {
    /// The subscription as published.
    pub subscription: Subscription,
    /// Its compiled filter.
    pub filter: Option<Filter>,
    /// Why its filter does not compile, if it does not: then it matches
    /// nothing (fail closed) rather than everything.
    pub invalid_filter: Option<String>,
    /// Its parsed patterns.
    pub patterns: Vec<TypePattern>,
}

#[derive(Debug, Default)]
struct TenantIndex {
    exact: HashMap<String, Vec<SubscriptionId>>,
    prefix: HashMap<String, Vec<SubscriptionId>>,
    any: Vec<SubscriptionId>,
}

impl TenantIndex {
    fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.prefix.is_empty() && self.any.is_empty()
    }
}

/// The table.
#[derive(Debug, Default)]
pub struct SubscriptionTable {
    subscriptions: HashMap<SubscriptionId, Arc<Compiled>>,
    tenants: HashMap<TenantId, TenantIndex>,
}

fn remove_from(list: &mut Vec<SubscriptionId>, id: &SubscriptionId) {
    list.retain(|x| x != id);
}

impl SubscriptionTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many subscriptions it holds.
    pub fn len(&self) -> usize {
        self.subscriptions.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.subscriptions.is_empty()
    }

    /// A subscription by id.
    pub fn get(&self, id: &SubscriptionId) -> Option<&Arc<Compiled>> {
        self.subscriptions.get(id)
    }

    /// Applies the newest state of a subscription; an older revision than the
    /// one held is ignored. Returns whether it changed the table.
    pub fn upsert(&mut self, subscription: Subscription) -> bool {
        if let Some(held) = self.subscriptions.get(&subscription.id)
            && held.subscription.revision > subscription.revision
        {
            return false;
        }
        self.remove(&subscription.id);
        let compiled = subscription.filter.as_deref().map(|text| {
            serde_json::from_str::<Value>(text)
                .map_err(|e| format!("not JSON: {e}"))
                .and_then(|value| Filter::compile(&value).map_err(|e| e.to_string()))
        });
        let (filter, invalid_filter) = match compiled {
            None => (None, None),
            Some(Ok(filter)) => (Some(filter), None),
            Some(Err(e)) => {
                tracing::warn!(
                    subscription = %subscription.id,
                    error = %e,
                    "a subscription's filter does not compile; it matches nothing until it is fixed"
                );
                (None, Some(e))
            }
        };
        let patterns: Vec<TypePattern> = subscription
            .event_types
            .iter()
            .filter_map(|p| TypePattern::parse(p).ok())
            .collect();
        let index = self.tenants.entry(subscription.tenant).or_default();
        for pattern in &patterns {
            match pattern {
                TypePattern::Exact(t) => index.exact.entry(t.clone()).or_default().push(subscription.id),
                TypePattern::Prefix(p) => index.prefix.entry(p.clone()).or_default().push(subscription.id),
                TypePattern::Any => index.any.push(subscription.id),
            }
        }
        self.subscriptions.insert(
            subscription.id,
            Arc::new(Compiled {
                subscription,
                filter,
                invalid_filter,
                patterns,
            }),
        );
        true
    }

    /// Removes a subscription (a tombstone). Returns whether it was there.
    pub fn remove(&mut self, id: &SubscriptionId) -> bool {
        let Some(old) = self.subscriptions.remove(id) else {
            return false;
        };
        let tenant = old.subscription.tenant;
        if let Some(index) = self.tenants.get_mut(&tenant) {
            for pattern in &old.patterns {
                match pattern {
                    TypePattern::Exact(t) => {
                        if let Some(list) = index.exact.get_mut(t) {
                            remove_from(list, id);
                            if list.is_empty() {
                                index.exact.remove(t);
                            }
                        }
                    }
                    TypePattern::Prefix(p) => {
                        if let Some(list) = index.prefix.get_mut(p) {
                            remove_from(list, id);
                            if list.is_empty() {
                                index.prefix.remove(p);
                            }
                        }
                    }
                    TypePattern::Any => remove_from(&mut index.any, id),
                }
            }
            if index.is_empty() {
                self.tenants.remove(&tenant);
            }
        }
        true
    }

    /// The active subscriptions `event` goes to, each once, in id order.
    pub fn matching(&self, event: &Event) -> Vec<Arc<Compiled>> {
        let Some(index) = self.tenants.get(&event.tenant) else {
            return Vec::new();
        };
        let mut candidates: HashSet<SubscriptionId> = HashSet::new();
        if let Some(ids) = index.exact.get(&event.event_type) {
            candidates.extend(ids);
        }
        if !index.prefix.is_empty() {
            for (position, byte) in event.event_type.bytes().enumerate() {
                // `p.*` needs something after the dot.
                if byte == b'.'
                    && position + 1 < event.event_type.len()
                    && let Some(ids) = index.prefix.get(&event.event_type[..position])
                {
                    candidates.extend(ids);
                }
            }
        }
        candidates.extend(&index.any);
        let mut matched: Vec<Arc<Compiled>> = candidates
            .into_iter()
            .filter_map(|id| self.subscriptions.get(&id))
            .filter(|c| c.subscription.is_active())
            .filter(|c| c.invalid_filter.is_none() && c.filter.as_ref().is_none_or(|f| f.matches(event)))
            .cloned()
            .collect();
        matched.sort_by_key(|c| c.subscription.id);
        matched
    }
}

#[cfg(test)]
mod tests;
