use crate::subscription::SubscriptionStatus;
use proptest::prelude::*;
use serde_json::json;

use super::*;

fn subscription(tenant: TenantId, types: &[&str], filter: Option<Value>) -> Subscription {
    Subscription {
        filter: filter.map(|f| f.to_string()),
        ..Subscription::new(
            tenant,
            "http://example.test/hook",
            types.iter().map(|t| (*t).to_owned()).collect(),
            "whsec_x".to_owned(),
            0,
        )
    }
}

fn event(tenant: TenantId, event_type: &str, data: Value) -> Event {
    Event::new(tenant, event_type, "s", data)
}

fn ids(matched: Vec<Arc<Compiled>>) -> Vec<SubscriptionId> {
    matched.into_iter().map(|c| c.subscription.id).collect()
}

#[test]
fn a_filter_that_does_not_compile_matches_nothing() {
    let tenant = TenantId::new();
    let mut table = SubscriptionTable::new();
    let mut not_json = subscription(tenant, &["*"], None);
    not_json.filter = Some("{not json".to_owned());
    let unknown_operator = subscription(tenant, &["*"], Some(json!({"field": "data.x", "resembles": 1})));
    let fine = subscription(tenant, &["*"], None);
    for s in [&not_json, &unknown_operator, &fine] {
        table.upsert(s.clone());
    }
    assert_eq!(
        ids(table.matching(&event(tenant, "a.b", json!({"x": 1})))),
        vec![fine.id]
    );
    let held = table.get(&not_json.id).map(|c| c.invalid_filter.is_some());
    assert_eq!(held, Some(true), "the reason is kept");
}

#[test]
fn types_filters_tenants_and_status() {
    let (a, b) = (TenantId::new(), TenantId::new());
    let mut table = SubscriptionTable::new();
    let exact = subscription(a, &["order.created"], None);
    let prefix = subscription(a, &["order.*"], Some(json!({"field": "data.total", "gte": 100})));
    let any = subscription(a, &["*"], None);
    let mut paused = subscription(a, &["*"], None);
    paused.status = SubscriptionStatus::Paused;
    let other_tenant = subscription(b, &["*"], None);
    for s in [&exact, &prefix, &any, &paused, &other_tenant] {
        table.upsert(s.clone());
    }
    let mut expected = vec![exact.id, prefix.id, any.id];
    expected.sort();
    assert_eq!(
        ids(table.matching(&event(a, "order.created", json!({"total": 150})))),
        expected
    );
    let mut expected = vec![exact.id, any.id];
    expected.sort();
    assert_eq!(
        ids(table.matching(&event(a, "order.created", json!({"total": 5})))),
        expected
    );
    assert_eq!(ids(table.matching(&event(a, "user.created", json!({})))), vec![any.id]);
    assert_eq!(
        ids(table.matching(&event(b, "order.created", json!({})))),
        vec![other_tenant.id]
    );
    assert!(
        table
            .matching(&event(TenantId::new(), "order.created", json!({})))
            .is_empty()
    );
}

#[test]
fn updates_replace_and_tombstones_remove() {
    let tenant = TenantId::new();
    let mut table = SubscriptionTable::new();
    let mut s = subscription(tenant, &["a.b"], None);
    table.upsert(s.clone());
    assert_eq!(table.matching(&event(tenant, "a.b", json!(null))).len(), 1);
    s.event_types = vec!["x.*".to_owned()];
    s.revision = 2;
    assert!(table.upsert(s.clone()));
    assert!(table.matching(&event(tenant, "a.b", json!(null))).is_empty());
    assert_eq!(table.matching(&event(tenant, "x.y", json!(null))).len(), 1);
    // An older revision arriving late changes nothing.
    let mut stale = s.clone();
    stale.revision = 1;
    stale.event_types = vec!["a.b".to_owned()];
    assert!(!table.upsert(stale));
    assert!(table.matching(&event(tenant, "a.b", json!(null))).is_empty());
    assert!(table.remove(&s.id));
    assert!(table.matching(&event(tenant, "x.y", json!(null))).is_empty());
    assert!(table.is_empty());
}

#[test]
fn a_subscription_with_several_matching_patterns_is_matched_once() {
    let tenant = TenantId::new();
    let mut table = SubscriptionTable::new();
    table.upsert(subscription(tenant, &["a.b.c", "a.*", "a.b.*", "*"], None));
    assert_eq!(table.matching(&event(tenant, "a.b.c", json!(null))).len(), 1);
}

proptest! {
    /// The index finds exactly what checking every subscription would.
    #[test]
    fn the_index_agrees_with_a_full_scan(
        patterns in prop::collection::vec(prop::collection::vec("(\\*|[ab](\\.[ab]){0,2}(\\.\\*)?)", 1..3), 1..12),
        event_type in "[ab](\\.[ab]){0,3}",
    ) {
        let tenant = TenantId::new();
        let mut table = SubscriptionTable::new();
        let mut all = Vec::new();
        for types in &patterns {
            let refs: Vec<&str> = types.iter().map(String::as_str).collect();
            let s = subscription(tenant, &refs, None);
            table.upsert(s.clone());
            all.push(s);
        }
        let e = event(tenant, &event_type, json!(null));
        let mut expected: Vec<SubscriptionId> = all
            .iter()
            .filter(|s| s.event_types.iter().filter_map(|p| TypePattern::parse(p).ok()).any(|p| p.matches(&event_type)))
            .map(|s| s.id)
            .collect();
        expected.sort();
        prop_assert_eq!(ids(table.matching(&e)), expected);
    }
}
