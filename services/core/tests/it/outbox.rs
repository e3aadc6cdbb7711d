//! The subscription outbox against real Tansu and DynamoDB Local: a change
//! stored while Kafka refuses it is not lost to the consumers; the sweep
//! publishes it (creation, change and deletion), and a marker is only
//! removed by the change that wrote it.

use std::time::Duration;

use triggers_core::CancellationToken;
use triggers_core::codec::AvroCodec;
use triggers_core::follower::Follower;
use triggers_core::ids::{SubscriptionId, TenantId};
use triggers_core::subscription::{self, Subscription, SubscriptionStatus, Topic, outbox};

use crate::support::TestEnv;

fn subscription() -> Subscription {
    Subscription::new(
        TenantId::new(),
        "http://127.0.0.1:9/hook",
        vec!["*".to_owned()],
        "whsec_AAAA".to_owned(),
        1,
    )
}

/// The revision the follower holds of `id` once it has read everything
/// published so far (`None`: unknown or deleted): a barrier, a subscription
/// nobody knew, is published and looked up (a lookup of an unknown id reads
/// the topic to its end).
async fn published_revision(follower: &Follower, topic: Topic<'_>, id: &SubscriptionId) -> Option<i64> {
    let barrier = subscription();
    let (producer, codec, name) = topic;
    subscription::publish(producer, codec, name, &barrier).await.unwrap();
    assert!(
        follower.knows(&barrier.id, Duration::from_secs(10)).await,
        "the barrier was not read"
    );
    follower.table.read().get(id).map(|c| c.subscription.revision)
}

/// Markers of `id` (any age).
async fn markers(env: &TestEnv, id: &SubscriptionId) -> usize {
    outbox::pending(&env.dynamo, &env.tables, i64::MAX)
        .await
        .unwrap()
        .iter()
        .filter(|p| p.id == *id)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_stored_while_kafka_refuses_them_are_published_by_the_sweep() {
    let mut env = TestEnv::new().await;
    let shutdown = CancellationToken::new();
    let _registry = env.with_registry(shutdown.clone()).await;
    let codec = AvroCodec::new(&env.common.schema_registry).unwrap();
    let topic = env.common.topics.subscriptions();
    let follower = Follower::start(
        &env.common.kafka,
        &topic,
        codec.clone(),
        "outbox-test",
        shutdown.clone(),
    )
    .await
    .unwrap();
    follower.caught_up(Duration::from_secs(20)).await.unwrap();
    let working = triggers_core::kafka::producer(&env.common.kafka, "outbox-test").unwrap();
    // A producer whose broker is gone: every publish fails after 1 s.
    let mut gone = env.common.kafka.clone();
    gone.bootstrap_servers = format!("127.0.0.1:{}", triggers_stack::free_port().unwrap());
    gone.produce_timeout = Duration::from_secs(1);
    let broken = triggers_core::kafka::producer(&gone, "outbox-test-broken").unwrap();
    let (good, bad) = ((&working, &codec, topic.as_str()), (&broken, &codec, topic.as_str()));
    let sweep = || outbox::sweep(&env.dynamo, &env.tables, good, Duration::ZERO);

    // Created while Kafka refuses: stored, marked, not on the topic.
    let created = subscription();
    let pending = subscription::create(&env.dynamo, &env.tables, &created).await.unwrap();
    let refused = outbox::announce(&env.dynamo, &env.tables, bad, Some(&created), &pending).await;
    assert!(
        matches!(refused, Err(subscription::SubscriptionStoreError::Kafka { .. })),
        "{refused:?}"
    );
    assert_eq!(markers(&env, &created.id).await, 1);
    assert_eq!(published_revision(&follower, good, &created.id).await, None);
    // A young marker is left to its own request.
    let young = outbox::sweep(&env.dynamo, &env.tables, good, Duration::from_secs(3_600))
        .await
        .unwrap();
    assert_eq!(young, 0);
    assert_eq!(published_revision(&follower, good, &created.id).await, None);
    // The sweep publishes it and removes the marker.
    assert!(sweep().await.unwrap() >= 1);
    assert_eq!(published_revision(&follower, good, &created.id).await, Some(1));
    assert_eq!(markers(&env, &created.id).await, 0);

    // A change (save_change) while Kafka refuses: stored at revision 2, and
    // published by the sweep.
    let mut paused = created.clone();
    paused.status = SubscriptionStatus::Paused;
    let saved = subscription::save_change(&env.dynamo, &env.tables, bad, paused)
        .await
        .unwrap();
    assert_eq!(saved.revision, 2);
    let stored = subscription::get(&env.dynamo, &env.tables, &created.tenant, &created.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.status, SubscriptionStatus::Paused);
    assert_eq!(published_revision(&follower, good, &created.id).await, Some(1));
    assert!(sweep().await.unwrap() >= 1);
    assert_eq!(published_revision(&follower, good, &created.id).await, Some(2));

    // Deleted while Kafka refuses: the sweep publishes the tombstone.
    let deleted = subscription::delete(&env.dynamo, &env.tables, &created.tenant, &created.id)
        .await
        .unwrap()
        .unwrap();
    assert!(
        outbox::announce(&env.dynamo, &env.tables, bad, None, &deleted)
            .await
            .is_err(),
        "Kafka refused the tombstone"
    );
    assert_eq!(published_revision(&follower, good, &created.id).await, Some(2));
    assert!(sweep().await.unwrap() >= 1);
    assert_eq!(published_revision(&follower, good, &created.id).await, None);
    assert_eq!(markers(&env, &created.id).await, 0);
    assert!(
        subscription::delete(&env.dynamo, &env.tables, &created.tenant, &created.id)
            .await
            .unwrap()
            .is_none(),
        "deleting what is gone finds nothing"
    );

    // Two changes in a row: the first one's late announcement does not
    // remove the second one's marker.
    let other = subscription();
    let first = subscription::create(&env.dynamo, &env.tables, &other).await.unwrap();
    let second = subscription::update(
        &env.dynamo,
        &env.tables,
        &Subscription {
            revision: 2,
            ..other.clone()
        },
        1,
    )
    .await
    .unwrap();
    outbox::announce(&env.dynamo, &env.tables, good, Some(&other), &first)
        .await
        .unwrap();
    assert_eq!(markers(&env, &other.id).await, 1, "the newer change's marker stays");
    let stale = subscription::update(&env.dynamo, &env.tables, &other, 1).await;
    assert!(
        matches!(stale, Err(subscription::SubscriptionStoreError::Conflict(_))),
        "{stale:?}"
    );
    outbox::announce(
        &env.dynamo,
        &env.tables,
        good,
        Some(&Subscription {
            revision: 2,
            ..other.clone()
        }),
        &second,
    )
    .await
    .unwrap();
    assert_eq!(markers(&env, &other.id).await, 0);
    assert_eq!(published_revision(&follower, good, &other.id).await, Some(2));
    shutdown.cancel();
}
