//! The lean DynamoDB client against DynamoDB Local: the event store's
//! writes made through it leave exactly what the SDK's client leaves, and
//! its failures are the SDK's `StoreError` kinds, in bounded time.

use std::time::{Duration, Instant};

use triggers_core::deadletter::{self, DeadLetterQuery};
use triggers_core::delivery::{Outcome, OutcomeKind};
use triggers_core::dynamo::{ItemCalls, LeanClient, StoreErrorKind, Tables};
use triggers_core::event::{Event, now_ms};
use triggers_core::eventstore::{self, StoredEvent, Track};
use triggers_core::ids::{EventId, SubscriptionId, TenantId};

use crate::support::TestEnv;

fn delivery(event: &Event, subscription: SubscriptionId, kind: OutcomeKind, attempt: i32, at: i64) -> Outcome {
    Outcome {
        event_id: event.id,
        tenant: event.tenant,
        subscription_id: Some(subscription),
        delivery_id: None,
        kind,
        attempt,
        at,
        http_status: Some(if kind == OutcomeKind::Delivered { 200 } else { 503 }),
        latency_ms: Some(12),
        error: (kind != OutcomeKind::Delivered).then(|| "HTTP 503".to_owned()),
        response_excerpt: Some("{\"ok\":\"é\"}".to_owned()),
        subscriptions: Vec::new(),
        next_attempt_at: (kind == OutcomeKind::Retrying).then_some(at + 5_000),
    }
}

/// A 1 MiB string that does not deflate below an item: stored in chunks.
fn incompressible() -> String {
    crate::support::noise(1024 * 1024)
}

/// What the persister writes for three events of `tenant` (the same ids,
/// times and subscription whatever the tenant): one delivered at once (the
/// common case: one create), one whose outcomes came before its body (a
/// stub, then the body), then dead-lettered and acknowledged, and one too
/// large for its item (chunks).
async fn write_scenario(
    client: &impl ItemCalls,
    tables: &Tables,
    tenant: TenantId,
    subscription: SubscriptionId,
    events: &[Event; 3],
) {
    let expires = now_ms() / 1000 + 86_400;
    let at = events[0].received_at;
    let events = events.clone().map(|mut e| {
        e.tenant = tenant;
        e
    });
    let [common, early, large] = &events;

    let delivered = delivery(common, subscription, OutcomeKind::Delivered, 1, at);
    let outcomes = [Outcome::routing(common, vec![subscription]), delivered.clone()];
    assert!(
        eventstore::put_event_with(client, tables, common, expires, &outcomes, Track::default())
            .await
            .unwrap()
    );
    eventstore::put_attempts(client, tables, &[(delivered, expires)])
        .await
        .unwrap();

    let retrying = delivery(early, subscription, OutcomeKind::Retrying, 1, at);
    let dead = delivery(early, subscription, OutcomeKind::DeadLettered, 2, at + 1);
    let routed = Outcome::routing(early, vec![subscription]);
    eventstore::apply_outcomes(client, tables, &tenant, &early.id, &[routed], expires, Track::default())
        .await
        .unwrap();
    assert!(
        eventstore::put_event_with(
            client,
            tables,
            early,
            expires,
            std::slice::from_ref(&retrying),
            Track::default()
        )
        .await
        .unwrap()
    );
    eventstore::put_attempts(client, tables, &[(retrying, expires), (dead.clone(), expires)])
        .await
        .unwrap();
    eventstore::apply_outcomes(client, tables, &tenant, &early.id, &[dead], expires, Track::default())
        .await
        .unwrap();
    assert!(
        eventstore::acknowledge(client, tables, &tenant, &early.id, None)
            .await
            .unwrap()
    );
    // Read again (a replayed record): nothing changes.
    assert!(
        eventstore::put_event_with(client, tables, early, expires, &[], Track::default())
            .await
            .unwrap()
    );

    eventstore::put_event(client, tables, large, expires).await.unwrap();
}

/// What is stored of `id` under `tenant`, its change time left out.
async fn stored(env: &TestEnv, tenant: TenantId, id: EventId) -> (StoredEvent, Vec<eventstore::Attempt>) {
    let mut event = eventstore::get(&env.dynamo, &env.tables, &tenant, &id)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("{tenant}/{id} is not stored"));
    assert_eq!(event.event.tenant, tenant);
    event.updated_at = 0;
    let attempts = eventstore::attempts(&env.dynamo, &env.tables, &tenant, &id)
        .await
        .unwrap();
    (event, attempts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lean_client_stores_what_the_sdk_client_stores() {
    let env = TestEnv::new().await;
    env.provision().await;
    let lean = LeanClient::new(&env.common.dynamodb).await.unwrap();
    let template = TenantId::new();
    let mut large = Event::new(template, "file.uploaded", "test", serde_json::json!(incompressible()));
    large.subject = Some("a \"quoted\" subject\nwith a line break".to_owned());
    let events = [
        Event::new(
            template,
            "order.created",
            "test",
            serde_json::json!({"n": 1, "s": "é ✓ \u{1}"}),
        ),
        Event::new(template, "order.updated", "test", serde_json::json!({"n": 2})),
        large,
    ];
    let (by_sdk, by_lean) = (TenantId::new(), TenantId::new());
    let subscription = SubscriptionId::new();
    write_scenario(&env.dynamo, &env.tables, by_sdk, subscription, &events).await;
    write_scenario(&lean, &env.tables, by_lean, subscription, &events).await;

    for event in &events {
        let (sdk, sdk_attempts) = stored(&env, by_sdk, event.id).await;
        let (mut lean, lean_attempts) = stored(&env, by_lean, event.id).await;
        lean.event.tenant = by_sdk;
        assert_eq!(lean, sdk, "{}", event.event_type);
        assert_eq!(lean_attempts, sdk_attempts, "{}", event.event_type);
        assert_eq!(lean.event.data, event.data, "{}", event.event_type);
    }
    let (common, early, large) = (
        stored(&env, by_lean, events[0].id).await,
        stored(&env, by_lean, events[1].id).await,
        stored(&env, by_lean, events[2].id).await,
    );
    assert_eq!(common.0.status.as_str(), "delivered");
    assert_eq!(common.1.len(), 1);
    assert_eq!(early.0.status.as_str(), "acknowledged");
    assert!(early.0.has_body);
    assert_eq!(early.1.len(), 2);
    assert!(large.0.has_body && !large.0.data_omitted);
    let letters = |tenant| {
        let env = &env;
        async move {
            deadletter::list(
                &env.dynamo,
                &env.tables,
                &tenant,
                &DeadLetterQuery {
                    limit: 10,
                    ..DeadLetterQuery::default()
                },
            )
            .await
            .unwrap()
            .0
        }
    };
    let (sdk_letters, lean_letters) = (letters(by_sdk).await, letters(by_lean).await);
    assert_eq!(lean_letters.len(), 1);
    assert_eq!(lean_letters, sdk_letters);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_the_sdk_kinds_and_end_in_bounded_time() {
    let env = TestEnv::new().await;
    env.provision().await;
    let event = Event::new(TenantId::new(), "order.created", "test", serde_json::json!({}));
    let expires = now_ms() / 1000 + 86_400;

    // A table that does not exist: DynamoDB's own error, not tried again.
    let lean = LeanClient::new(&env.common.dynamodb).await.unwrap();
    let missing = Tables::new("no_such_prefix_");
    let error = eventstore::put_event(&lean, &missing, &event, expires)
        .await
        .unwrap_err();
    assert_eq!(error.kind(), StoreErrorKind::Service, "{error}");
    assert!(error.to_string().contains("ResourceNotFoundException"), "{error}");

    // A request DynamoDB refuses as malformed (no table name): permanent.
    let mut unnamed = env.tables.clone();
    unnamed.events = String::new();
    let error = eventstore::put_event(&lean, &unnamed, &event, expires)
        .await
        .unwrap_err();
    assert_eq!(error.kind(), StoreErrorKind::Invalid, "{error}");
    assert!(!error.is_retriable());

    // Nothing listens: a transport failure naming its cause, after the
    // attempts the call timeout leaves room for.
    let port = triggers_stack::free_port().unwrap();
    let mut config = env.common.dynamodb.clone();
    config.endpoint = Some(format!("http://127.0.0.1:{port}"));
    config.attempt_timeout = Duration::from_millis(300);
    config.call_timeout = Duration::from_secs(2);
    let unreachable = LeanClient::new(&config).await.unwrap();
    let started = Instant::now();
    let error = eventstore::put_event(&unreachable, &env.tables, &event, expires)
        .await
        .unwrap_err();
    assert_eq!(error.kind(), StoreErrorKind::Transport, "{error}");
    assert!(error.is_retriable());
    assert!(error.to_string().to_lowercase().contains("refused"), "{error}");
    assert!(started.elapsed() < config.call_timeout, "took {:?}", started.elapsed());
    assert!(std::error::Error::source(&error).is_some(), "the cause is kept");
}

/// An event's item as DynamoDB holds it, without its key, its change time,
/// a tombstone's expiry (from the second it was deleted) and the tenant in
/// its inbox entry (compared across tenants).
async fn raw_item(env: &TestEnv, tenant: TenantId, id: EventId) -> std::collections::BTreeMap<String, String> {
    use aws_sdk_dynamodb::types::AttributeValue;
    let item = env
        .dynamo
        .get_item()
        .table_name(&env.tables.events)
        .key("pk", AttributeValue::S(tenant.to_string()))
        .key("sk", AttributeValue::S(format!("e#{id}")))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item
        .unwrap_or_else(|| panic!("{tenant}/{id} has no item"));
    let tombstone = item.contains_key("deleted");
    item.into_iter()
        .filter(|(name, _)| !matches!(name.as_str(), "pk" | "sk" | "updated_at"))
        .filter(|(name, _)| !(tombstone && name == "expires_at"))
        .map(|(name, value)| {
            let shown = match (name.as_str(), value) {
                ("inbox_pk", AttributeValue::S(t)) => (t == tenant.to_string()).to_string(),
                (_, value) => format!("{value:?}"),
            };
            (name, shown)
        })
        .collect()
}

/// Batched creates (`BatchExecuteStatement` of PartiQL `INSERT`s) through
/// either client: a new event's item is the one a single create writes; an
/// event whose stub an outcome made, or whose tombstone a deletion left, is
/// refused (`Exists`) and nothing of it changes, and writing it on its own
/// after ends where the single path ends.
async fn batched_creates_store_what_single_creates_store(client: &impl ItemCalls, env: &TestEnv) {
    use triggers_core::dynamo::Inserted;
    let expires = now_ms() / 1000 + 86_400;
    let subscription = SubscriptionId::new();
    let (single, batched) = (TenantId::new(), TenantId::new());
    let template = [
        Event::new(
            single,
            "order.created",
            "test",
            serde_json::json!({"n": 1, "s": "é ✓ \u{1} 'quoted'"}),
        ),
        Event::new(single, "order.updated", "test", serde_json::json!({"n": 2})),
        Event::new(single, "order.deleted", "test", serde_json::json!({"n": 3})),
    ];
    let of = |tenant: TenantId| {
        template.clone().map(|mut e| {
            e.tenant = tenant;
            e.subject = Some("a subject".to_owned());
            e
        })
    };
    // delivered: one create with both outcomes; routed only: in the inbox.
    let outcomes = |e: &Event| match e.event_type.as_str() {
        "order.created" => vec![
            Outcome::routing(e, vec![subscription]),
            delivery(e, subscription, OutcomeKind::Delivered, 1, e.received_at),
        ],
        _ => vec![Outcome::routing(e, vec![subscription])],
    };
    for tenant in [single, batched] {
        let [_, early, deleted] = &of(tenant);
        // An outcome before the body (a stub), and a deleted event (a tombstone).
        let retrying = delivery(early, subscription, OutcomeKind::Retrying, 1, early.received_at);
        eventstore::apply_outcomes(
            client,
            &env.tables,
            &tenant,
            &early.id,
            &[retrying],
            expires,
            Track::default(),
        )
        .await
        .unwrap();
        eventstore::put_event(client, &env.tables, deleted, expires)
            .await
            .unwrap();
        assert!(
            eventstore::delete(&env.dynamo, &env.tables, &tenant, &deleted.id)
                .await
                .unwrap()
        );
    }
    for event in &of(single) {
        eventstore::put_event_with(client, &env.tables, event, expires, &outcomes(event), Track::default())
            .await
            .unwrap();
    }
    let events = of(batched);
    let items: Vec<_> = events
        .iter()
        .map(|e| eventstore::new_item(e, expires, &outcomes(e)).expect("a small event is batched"))
        .collect();
    let cache = eventstore::ProgressCache::default();
    let track = Track {
        cache: Some(&cache),
        tally: None,
    };
    let results = eventstore::create_events(client, &env.tables, &items, track)
        .await
        .unwrap();
    assert_eq!(results, [Inserted::Created, Inserted::Exists, Inserted::Exists]);
    assert!(
        cache.progress(&batched, &events[0].id).is_some(),
        "a created event's progress is known"
    );
    assert!(cache.progress(&batched, &events[1].id).is_none());
    // The stub is untouched until the event is written on its own.
    assert!(!raw_item(env, batched, events[1].id).await.contains_key("has_body"));
    for event in &events[1..] {
        eventstore::put_existing_event(client, &env.tables, event, expires, &outcomes(event), Track::default())
            .await
            .unwrap();
    }

    for (single_event, batched_event) in of(single).iter().zip(&events) {
        assert_eq!(
            raw_item(env, batched, batched_event.id).await,
            raw_item(env, single, single_event.id).await,
            "{}",
            batched_event.event_type
        );
    }
    let created = stored(env, batched, events[0].id).await.0;
    assert_eq!(created.status.as_str(), "delivered");
    assert_eq!(created.event.data, events[0].data);
    assert!(
        eventstore::get(&env.dynamo, &env.tables, &batched, &events[2].id)
            .await
            .unwrap()
            .is_none(),
        "a deleted event stays deleted"
    );

    // Events too large to be batched are written alone.
    let large = Event::new(batched, "file.uploaded", "test", serde_json::json!(incompressible()));
    assert!(eventstore::new_item(&large, expires, &[]).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_creates_through_either_client() {
    let env = TestEnv::new().await;
    env.provision().await;
    let lean = LeanClient::new(&env.common.dynamodb).await.unwrap();
    batched_creates_store_what_single_creates_store(&env.dynamo, &env).await;
    batched_creates_store_what_single_creates_store(&lean, &env).await;
}
