use std::collections::BTreeMap;

use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;
use crate::ids::{EventId, TenantId};

fn event(event_type: &str, data: Value) -> Event {
    Event {
        id: EventId::new(),
        tenant: TenantId::new(),
        event_type: event_type.to_owned(),
        source: "https://shop.example".to_owned(),
        subject: Some("order-42".to_owned()),
        time: 1_700_000_000_000,
        received_at: 1_700_000_000_000,
        specversion: "1.0".to_owned(),
        datacontenttype: "application/json".to_owned(),
        data: data.into(),
        partition_key: None,
        extensions: BTreeMap::from([("priority".to_owned(), "high".to_owned())]),
    }
}

fn compiled(filter: Value) -> Filter {
    Filter::compile(&filter).unwrap_or_else(|e| panic!("{e}"))
}

fn matches(filter: Value, data: Value) -> bool {
    compiled(filter).matches(&event("order.created", data))
}

#[test]
fn type_patterns() {
    let exact = TypePattern::parse("order.created").unwrap_or_else(|e| panic!("{e}"));
    assert!(exact.matches("order.created"));
    assert!(!exact.matches("order.created.v2"));
    let prefix = TypePattern::parse("order.*").unwrap_or_else(|e| panic!("{e}"));
    assert!(prefix.matches("order.created"));
    assert!(prefix.matches("order.line.added"));
    assert!(!prefix.matches("order"));
    assert!(!prefix.matches("order."));
    assert!(!prefix.matches("orders.created"));
    let any = TypePattern::parse("*").unwrap_or_else(|e| panic!("{e}"));
    assert!(any.matches("anything"));
    for bad in ["", "a b", "a.*.b", "*.x", "a\u{7}", ".*"] {
        assert!(TypePattern::parse(bad).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn each_operator() {
    let data = json!({"total": 150, "currency": "EUR", "items": [{"sku": "A-1"}], "note": null, "vip": false});
    assert!(matches(json!({"field": "data.currency", "eq": "EUR"}), data.clone()));
    assert!(!matches(json!({"field": "data.currency", "eq": "USD"}), data.clone()));
    assert!(matches(json!({"field": "data.total", "eq": 150.0}), data.clone()));
    assert!(matches(json!({"field": "data.currency", "ne": "USD"}), data.clone()));
    assert!(matches(
        json!({"field": "data.currency", "in": ["USD", "EUR"]}),
        data.clone()
    ));
    assert!(!matches(json!({"field": "data.currency", "in": ["USD"]}), data.clone()));
    assert!(matches(
        json!({"field": "data.items.0.sku", "prefix": "A-"}),
        data.clone()
    ));
    assert!(!matches(json!({"field": "data.total", "prefix": "1"}), data.clone()));
    assert!(matches(json!({"field": "data.total", "gt": 100}), data.clone()));
    assert!(!matches(json!({"field": "data.total", "gt": 150}), data.clone()));
    assert!(matches(json!({"field": "data.total", "gte": 150}), data.clone()));
    assert!(matches(json!({"field": "data.total", "lt": 150.5}), data.clone()));
    assert!(!matches(json!({"field": "data.total", "lte": 149}), data.clone()));
    assert!(!matches(json!({"field": "data.currency", "gt": 1}), data.clone()));
    assert!(matches(json!({"field": "data.vip", "exists": true}), data.clone()));
    assert!(matches(json!({"field": "data.note", "exists": false}), data.clone()));
    assert!(matches(json!({"field": "data.vip", "eq": false}), data));
}

#[test]
fn envelope_fields_and_extensions() {
    let e = event("order.created", json!({}));
    assert!(compiled(json!({"field": "type", "prefix": "order."})).matches(&e));
    assert!(compiled(json!({"field": "source", "eq": "https://shop.example"})).matches(&e));
    assert!(compiled(json!({"field": "subject", "eq": "order-42"})).matches(&e));
    assert!(compiled(json!({"field": "time", "gte": 1_700_000_000_000_i64})).matches(&e));
    assert!(compiled(json!({"field": "ext.priority", "in": ["high", "urgent"]})).matches(&e));
    assert!(compiled(json!({"field": "id", "prefix": "evt_"})).matches(&e));
}

#[test]
fn missing_fields() {
    let data = json!({"a": {"b": 1}});
    for op in [
        json!({"field": "data.a.c", "eq": 1}),
        json!({"field": "data.a.c", "in": [1]}),
        json!({"field": "data.a.c", "prefix": ""}),
        json!({"field": "data.a.c", "gt": 0}),
        json!({"field": "data.a.c", "lte": 0}),
        json!({"field": "data.a.c", "exists": true}),
        json!({"field": "data.a.b.c", "eq": 1}),
        json!({"field": "data.x.0", "eq": 1}),
        json!({"field": "ext.nope", "eq": "x"}),
    ] {
        assert!(!matches(op.clone(), data.clone()), "{op} matched a missing field");
    }
    assert!(matches(json!({"field": "data.a.c", "ne": 1}), data.clone()));
    assert!(matches(json!({"field": "data.a.c", "exists": false}), data.clone()));
    // Data that is not an object: paths find nothing.
    assert!(!matches(json!({"field": "data.a", "exists": true}), json!([1, 2])));
    assert!(matches(json!({"field": "data.1", "eq": 2}), json!([1, 2])));
}

#[test]
fn nesting() {
    let data = json!({"total": 150, "currency": "EUR", "country": "NL"});
    let filter = json!({"and": [
        {"field": "data.total", "gte": 100},
        {"or": [{"field": "data.currency", "eq": "USD"}, {"field": "data.country", "in": ["NL", "BE"]}]},
        {"not": {"field": "data.test", "exists": true}}
    ]});
    assert!(matches(filter.clone(), data.clone()));
    assert!(!matches(
        filter.clone(),
        json!({"total": 150, "currency": "EUR", "country": "DE"})
    ));
    assert!(!matches(filter, json!({"total": 150, "currency": "USD", "test": true})));
}

#[test]
fn invalid_filters_say_where() {
    let path_of = |filter: Value| match Filter::compile(&filter) {
        Err(e) => e.path,
        Ok(f) => panic!("{filter} compiled to {f:?}"),
    };
    assert_eq!(
        path_of(json!({"and": [{"field": "data.a", "eq": 1}, {"field": "data.b", "gte": "x"}]})),
        "filter.and[1].gte"
    );
    assert_eq!(path_of(json!({"field": "data.a", "eqq": 1})), "filter.eqq");
    assert_eq!(path_of(json!({"field": "data.a"})), "filter");
    assert_eq!(path_of(json!({"field": "data.a", "eq": 1, "ne": 2})), "filter");
    assert_eq!(path_of(json!({"field": "payload.a", "eq": 1})), "filter.field");
    assert_eq!(path_of(json!({"field": "data..a", "eq": 1})), "filter.field");
    assert_eq!(path_of(json!({"or": []})), "filter.or");
    assert_eq!(path_of(json!({"or": {"field": "type", "eq": 1}})), "filter.or");
    assert_eq!(path_of(json!({"not": {"field": "type", "in": []}})), "filter.not.in");
    assert_eq!(
        path_of(json!({"and": [{"field": "type", "eq": 1}], "or": []})),
        "filter.or"
    );
    assert_eq!(path_of(json!({"field": "type", "exists": "yes"})), "filter.exists");
    assert_eq!(path_of(json!("type == x")), "filter");
    let mut deep = json!({"field": "type", "eq": "x"});
    for _ in 0..MAX_DEPTH {
        deep = json!({"not": deep});
    }
    assert!(Filter::compile(&deep).is_err());
    let wide = json!({"or": (0..MAX_NODES).map(|i| json!({"field": "data.n", "eq": i})).collect::<Vec<_>>()});
    assert!(Filter::compile(&wide).is_err());
}

fn leaf() -> impl Strategy<Value = Value> {
    let field = prop_oneof![Just("data.n"), Just("data.s"), Just("data.missing"), Just("type")];
    let op = prop_oneof![
        (-5i64..5).prop_map(|n| ("eq", json!(n))),
        (-5i64..5).prop_map(|n| ("ne", json!(n))),
        (-5i64..5).prop_map(|n| ("gt", json!(n))),
        (-5i64..5).prop_map(|n| ("lte", json!(n))),
        "[a-c]{0,2}".prop_map(|p| ("prefix", json!(p))),
        any::<bool>().prop_map(|b| ("exists", json!(b))),
        prop::collection::vec(-3i64..3, 1..4).prop_map(|v| ("in", json!(v))),
    ];
    (field, op).prop_map(|(field, (name, operand))| {
        let mut object = serde_json::Map::new();
        object.insert("field".to_owned(), json!(field));
        object.insert(name.to_owned(), operand);
        Value::Object(object)
    })
}

fn filter() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 1..4).prop_map(|v| json!({"and": v})),
            prop::collection::vec(inner.clone(), 1..4).prop_map(|v| json!({"or": v})),
            inner.prop_map(|f| json!({"not": f})),
        ]
    })
}

proptest! {
    /// `not` inverts, `and`/`or` follow boolean algebra (De Morgan), for any
    /// generated filters and data.
    #[test]
    fn filters_obey_boolean_algebra(a in filter(), b in filter(), n in -6i64..6, s in "[a-c]{0,3}") {
        let e = event("order.created", json!({"n": n, "s": s}));
        let eval = |f: &Value| compiled(f.clone()).matches(&e);
        prop_assert_eq!(eval(&json!({"not": a.clone()})), !eval(&a));
        prop_assert_eq!(eval(&json!({"and": [a.clone(), b.clone()]})), eval(&a) && eval(&b));
        prop_assert_eq!(eval(&json!({"or": [a.clone(), b.clone()]})), eval(&a) || eval(&b));
        prop_assert_eq!(
            eval(&json!({"not": {"and": [a.clone(), b.clone()]}})),
            eval(&json!({"or": [{"not": a}, {"not": b}]}))
        );
    }

    /// Every valid leaf compiles, and numeric comparisons agree with Rust's.
    #[test]
    fn comparisons_agree_with_numbers(x in -1000i64..1000, y in -1000i64..1000) {
        let data = json!({"x": x});
        prop_assert_eq!(matches(json!({"field": "data.x", "gt": y}), data.clone()), x > y);
        prop_assert_eq!(matches(json!({"field": "data.x", "gte": y}), data.clone()), x >= y);
        prop_assert_eq!(matches(json!({"field": "data.x", "lt": y}), data.clone()), x < y);
        prop_assert_eq!(matches(json!({"field": "data.x", "lte": y}), data.clone()), x <= y);
        prop_assert_eq!(matches(json!({"field": "data.x", "eq": y}), data.clone()), x == y);
        prop_assert_eq!(matches(json!({"field": "data.x", "ne": y}), data), x != y);
    }

    /// Type patterns: a prefix pattern matches exactly the types that start
    /// with the prefix and a dot and have something after it.
    #[test]
    fn prefix_patterns(prefix in "[a-c]{1,3}(\\.[a-c]{1,2})?", event_type in "[a-c]{1,3}(\\.[a-c]{0,2}){0,3}") {
        let pattern = TypePattern::parse(&format!("{prefix}.*")).unwrap_or_else(|e| panic!("{e}"));
        let expected = event_type.starts_with(&format!("{prefix}.")) && event_type.len() > prefix.len() + 1;
        prop_assert_eq!(pattern.matches(&event_type), expected);
    }
}
