//! The event store against DynamoDB Local: its reads, and how it stores
//! payloads.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{AttributeValue, ReturnConsumedCapacity};
use triggers_core::event::{Event, now_ms};
use triggers_core::eventstore::{self, BATCH_GET_KEYS, ListQuery};
use triggers_core::ids::{EventId, TenantId};

use crate::support::TestEnv;

/// The deliverer's batched acknowledgement check tells what the one-by-one
/// check tells, for more events than one `BatchGetItem` takes, across
/// tenants, with repeated and unknown keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stops_read_in_batches_agree_with_the_single_check() {
    let env = TestEnv::new().await;
    env.provision().await;
    let expires = now_ms() / 1000 + 86_400;
    let tenants = [TenantId::new(), TenantId::new()];
    let mut keys = Vec::new();
    for i in 0..(BATCH_GET_KEYS + 30) {
        let event = Event::new(tenants[i % 2], "order.created", "test", serde_json::json!({"i": i}));
        eventstore::put_event(&env.dynamo, &env.tables, &event, expires)
            .await
            .unwrap();
        keys.push((event.tenant, event.id));
    }
    let acknowledged = [keys[3], keys[BATCH_GET_KEYS + 7]];
    for (tenant, id) in acknowledged {
        assert!(
            eventstore::acknowledge(&env.dynamo, &env.tables, &tenant, &id, None)
                .await
                .unwrap()
        );
    }
    let deleted = keys[42];
    assert!(
        eventstore::delete(&env.dynamo, &env.tables, &deleted.0, &deleted.1)
            .await
            .unwrap()
    );
    // Never stored, and an id stored under the other tenant.
    let unknown = (tenants[0], EventId::new());
    let crossed = (tenants[0], keys[1].1);
    let mut asked = keys.clone();
    asked.extend([unknown, crossed, keys[3], keys[42]]);

    let stopped = eventstore::deliveries_stopped_many(&env.dynamo, &env.tables, &asked)
        .await
        .unwrap();
    let mut expected: Vec<_> = acknowledged.into_iter().chain([deleted]).collect();
    expected.sort_unstable_by_key(|(tenant, id)| (tenant.to_string(), id.to_string()));
    let mut got: Vec<_> = stopped.into_iter().collect();
    got.sort_unstable_by_key(|(tenant, id)| (tenant.to_string(), id.to_string()));
    assert_eq!(got, expected);
    for (tenant, id) in [keys[3], keys[42], keys[0], unknown, crossed] {
        let one = eventstore::deliveries_stopped(&env.dynamo, &env.tables, &tenant, &id)
            .await
            .unwrap();
        assert_eq!(one, expected.contains(&(tenant, id)), "{tenant}/{id}");
    }
    assert!(
        eventstore::deliveries_stopped_many(&env.dynamo, &env.tables, &[])
            .await
            .unwrap()
            .is_empty()
    );
}

/// About 1.2 KB of an order as JSON: repetitive like most event payloads,
/// so it deflates to well under half.
fn order(n: usize) -> serde_json::Value {
    let lines: Vec<_> = (0..8)
        .map(|i| {
            serde_json::json!({
                "sku": format!("SKU-{:05}", n * 10 + i),
                "name": format!("Stainless steel water bottle, {} ml", 500 + 50 * i),
                "quantity": 1 + i % 3,
                "unit_price": {"amount": 1999 + 100 * i, "currency": "EUR"},
            })
        })
        .collect();
    serde_json::json!({
        "order_id": format!("ord_{n:08}"),
        "customer": {"id": "cus_0042", "email": "ada@example.com", "country": "DE"},
        "lines": lines,
        "status": "paid",
    })
}

/// 1.4 KB that deflates by a fifth at most: still two write units deflated.
fn noise() -> serde_json::Value {
    serde_json::Value::String(crate::support::noise(1_400))
}

/// The write units DynamoDB Local charges to put `item` (under a scratch
/// key, without its inbox entry, which costs as much again).
async fn units_of(env: &TestEnv, mut item: HashMap<String, AttributeValue>) -> f64 {
    item.remove("inbox_pk");
    item.insert(
        "sk".to_owned(),
        AttributeValue::S(format!("scratch#{}", EventId::new())),
    );
    env.dynamo
        .put_item()
        .table_name(&env.tables.events)
        .set_item(Some(item))
        .return_consumed_capacity(ReturnConsumedCapacity::Total)
        .send()
        .await
        .unwrap()
        .consumed_capacity
        .and_then(|c| c.capacity_units)
        .unwrap()
}

async fn raw(env: &TestEnv, event: &Event) -> HashMap<String, AttributeValue> {
    env.dynamo
        .get_item()
        .table_name(&env.tables.events)
        .key("pk", AttributeValue::S(event.tenant.to_string()))
        .key("sk", AttributeValue::S(format!("e#{}", event.id)))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item
        .unwrap()
}

/// A payload whose item would take two write units inline is stored
/// deflated when that takes one (through the single and the batched
/// create); a small one, or one that does not deflate, stays inline. Each
/// reads back whole, alone and in listings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_is_deflated_when_that_saves_a_write_unit() {
    let env = TestEnv::new().await;
    env.provision().await;
    let expires = now_ms() / 1000 + 86_400;
    let tenant = TenantId::new();
    let small = Event::new(tenant, "order.noted", "test", serde_json::json!({"i": 1}));
    let single = Event::new(tenant, "order.paid", "test", order(1));
    let batched = Event::new(tenant, "order.paid", "test", order(2));
    let random = Event::new(tenant, "blob.put", "test", noise());
    assert!(
        single.data.to_string().len() > 1_024,
        "{}",
        single.data.to_string().len()
    );
    for event in [&small, &single, &random] {
        eventstore::put_event(&env.dynamo, &env.tables, event, expires)
            .await
            .unwrap();
    }
    let item = eventstore::new_item(&batched, expires, &[]).expect("batched");
    let track = eventstore::Track::default();
    eventstore::create_events(&env.dynamo, &env.tables, &[item], track)
        .await
        .unwrap();

    for (event, deflated) in [(&small, false), (&single, true), (&batched, true), (&random, false)] {
        let item = raw(&env, event).await;
        assert_eq!(item.contains_key("data_z"), deflated, "{}", event.event_type);
        assert_eq!(!item.contains_key("data"), deflated, "{}", event.event_type);
        let stored = eventstore::get(&env.dynamo, &env.tables, &tenant, &event.id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stored.event.data, event.data);
    }
    // What DynamoDB charges: one unit deflated, two for the same item inline.
    let deflated = raw(&env, &single).await;
    let mut inline = deflated.clone();
    inline.remove("data_z");
    inline.insert("data".to_owned(), AttributeValue::S(single.data.to_string()));
    assert_eq!(units_of(&env, deflated).await, 1.0);
    assert_eq!(units_of(&env, inline).await, 2.0);
    // The inline payload that does not deflate is all the units it needs.
    assert_eq!(units_of(&env, raw(&env, &random).await).await, 2.0);

    // Written inline before (an older version, or a smaller item then):
    // written again, one form stays.
    let mut before = raw(&env, &single).await;
    before.remove("data_z");
    before.insert("data".to_owned(), AttributeValue::S(single.data.to_string()));
    env.dynamo
        .put_item()
        .table_name(&env.tables.events)
        .set_item(Some(before))
        .send()
        .await
        .unwrap();
    eventstore::put_existing_event(&env.dynamo, &env.tables, &single, expires, &[], track)
        .await
        .unwrap();
    let item = raw(&env, &single).await;
    assert!(
        item.contains_key("data_z") && !item.contains_key("data"),
        "{:?}",
        item.keys()
    );

    let query = ListQuery {
        limit: 10,
        ..ListQuery::default()
    };
    for inbox in [false, true] {
        let (page, _) = eventstore::list(&env.dynamo, &env.tables, &tenant, &query, inbox)
            .await
            .unwrap();
        assert_eq!(page.len(), 4, "inbox: {inbox}");
        for listed in page {
            let original = [&small, &single, &batched, &random]
                .into_iter()
                .find(|e| e.id == listed.event.id)
                .unwrap();
            assert!(!listed.data_omitted, "{}", original.event_type);
            assert_eq!(listed.event.data, original.data);
        }
    }
}
