//! The dead-letter store against DynamoDB Local: a redriven entry stays out
//! of the listing when its old outcome is read again, and comes back only
//! when the delivery is dead-lettered again.

use triggers_core::deadletter::{self, DeadLetterQuery};
use triggers_core::delivery::{Outcome, OutcomeKind};
use triggers_core::event::now_ms;
use triggers_core::ids::{EventId, SubscriptionId, TenantId};

use crate::support::TestEnv;

fn dead_lettered(tenant: TenantId, event: EventId, subscription: SubscriptionId, attempt: i32) -> Outcome {
    Outcome {
        event_id: event,
        tenant,
        subscription_id: Some(subscription),
        delivery_id: None,
        kind: OutcomeKind::DeadLettered,
        attempt,
        at: now_ms(),
        http_status: Some(500),
        latency_ms: Some(3),
        error: Some("HTTP 500".to_owned()),
        response_excerpt: None,
        subscriptions: Vec::new(),
        next_attempt_at: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redriven_dead_letter_does_not_come_back_when_its_outcome_is_read_again() {
    let env = TestEnv::new().await;
    env.provision().await;
    let (tenant, event, subscription) = (TenantId::new(), EventId::new(), SubscriptionId::new());
    let expires = now_ms() / 1000 + 86_400;
    let query = DeadLetterQuery {
        limit: 100,
        ..DeadLetterQuery::default()
    };
    let listed = || async {
        deadletter::list(&env.dynamo, &env.tables, &tenant, &query)
            .await
            .unwrap()
            .0
    };
    let first = dead_lettered(tenant, event, subscription, 4);
    deadletter::put(&env.dynamo, &env.tables, &first, expires)
        .await
        .unwrap();
    let entries = listed().await;
    assert_eq!(entries.len(), 1);

    // Redriven: out of the listing.
    deadletter::remove(&env.dynamo, &env.tables, &tenant, &entries[0])
        .await
        .unwrap();
    assert!(listed().await.is_empty());

    // The persister reads the old outcome again: it stays out.
    deadletter::put(&env.dynamo, &env.tables, &first, expires)
        .await
        .unwrap();
    assert!(listed().await.is_empty(), "a redriven dead letter came back");

    // The redriven delivery (attempt 5) fails for good: listed again.
    deadletter::put(
        &env.dynamo,
        &env.tables,
        &dead_lettered(tenant, event, subscription, 5),
        expires,
    )
    .await
    .unwrap();
    let entries = listed().await;
    assert_eq!(entries.iter().map(|e| e.attempt).collect::<Vec<_>>(), [5]);
}
