//! The event store's reads against DynamoDB Local.

use triggers_core::event::{Event, now_ms};
use triggers_core::eventstore::{self, BATCH_GET_KEYS};
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
