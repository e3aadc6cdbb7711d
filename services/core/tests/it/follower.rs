//! The subscription follower against real Tansu: asked about a
//! subscription it has not read yet, it reads the topic to its end first,
//! even while idle pacing has it paused and the writer was another client.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use triggers_core::CancellationToken;
use triggers_core::codec::{AvroCodec, Contract};
use triggers_core::follower::Follower;
use triggers_core::ids::{SubscriptionId, TenantId};
use triggers_core::subscription::Subscription;

use crate::support::{TestEnv, paced};
use triggers_registry::RunningRegistry;

fn subscription() -> Subscription {
    Subscription::new(
        TenantId::new(),
        "http://127.0.0.1:9/hook",
        vec!["*".to_owned()],
        "whsec_AAAA".to_owned(),
        1,
    )
}

/// A caught-up follower of a new slice's subscription topic that idle
/// pacing has look a minute apart once idle, and a writer that is another
/// client (rdkafka's own producer): nothing in this process wakes the
/// follower for its records, only the follower's own lookups.
struct Paused {
    env: TestEnv,
    shutdown: CancellationToken,
    _registry: RunningRegistry,
    codec: AvroCodec,
    topic: String,
    follower: Follower,
    other: FutureProducer,
}

impl Paused {
    async fn start() -> Self {
        let mut env = TestEnv::new().await;
        let shutdown = CancellationToken::new();
        let registry = env.with_registry(shutdown.clone()).await;
        let codec = AvroCodec::new(&env.common.schema_registry).unwrap();
        let topic = env.common.topics.subscriptions();
        let kafka = paced(&env.common.kafka, Duration::from_secs(60));
        let follower = Follower::start(&kafka, &topic, codec.clone(), "follower-test", shutdown.clone())
            .await
            .unwrap();
        follower.caught_up(Duration::from_secs(20)).await.unwrap();
        let other = ClientConfig::new()
            .set("bootstrap.servers", &env.common.kafka.bootstrap_servers)
            .create()
            .unwrap();
        // Idle long enough for pacing to pause the follower.
        tokio::time::sleep(Duration::from_secs(2)).await;
        Self {
            env,
            shutdown,
            _registry: registry,
            codec,
            topic,
            follower,
            other,
        }
    }

    /// Writes `subscription` through the other client.
    async fn write(&self, subscription: &Subscription) {
        let payload = self
            .codec
            .encode(&self.topic, Contract::Subscription, subscription)
            .await
            .unwrap();
        self.other
            .send(
                FutureRecord::to(&self.topic)
                    .key(&subscription.id.to_string())
                    .payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .unwrap_or_else(|(e, _)| panic!("{e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_subscription_is_looked_up_to_the_end_of_the_topic() {
    let paused = Paused::start().await;
    let follower = &paused.follower;
    let created = subscription();
    paused.write(&created).await;
    assert!(
        follower.knows(&created.id, Duration::from_secs(10)).await,
        "the follower did not find a subscription written before the question"
    );
    assert!(
        !follower.knows(&SubscriptionId::new(), Duration::from_secs(10)).await,
        "a subscription never written is unknown"
    );

    // Deleted through Triggers' producer (which wakes the follower): once
    // the tombstone is read, the subscription is unknown.
    let ours = triggers_core::kafka::producer(&paused.env.common.kafka, "follower-test").unwrap();
    triggers_core::subscription::publish_tombstone(&ours, &paused.topic, &created.id)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while follower.table.read().get(&created.id).is_some() {
        assert!(tokio::time::Instant::now() < deadline, "the tombstone was not read");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !follower.knows(&created.id, Duration::from_secs(10)).await,
        "a deleted subscription is unknown"
    );
    paused.shutdown.cancel();
}

/// A change to a subscription the table already holds: `knows` answers at
/// once (stale), `fresh_at` waits until the change is applied, even while
/// pacing has the follower paused and the writer was another client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_at_a_time_holds_every_change_written_before_it() {
    let paused = Paused::start().await;
    let follower = &paused.follower;
    let mut created = subscription();
    paused.write(&created).await;
    assert!(follower.knows(&created.id, Duration::from_secs(10)).await);
    // Idle long enough for pacing to pause the follower again.
    tokio::time::sleep(Duration::from_secs(2)).await;

    for revision in 2..5 {
        created.revision = revision;
        created.updated_at = revision;
        created.target_url = format!("http://127.0.0.1:9/hook/{revision}");
        paused.write(&created).await;
        let written = triggers_core::event::now_ms();
        assert!(
            follower.fresh_at(written, Duration::from_secs(10)).await,
            "revision {revision}: the table never became fresh"
        );
        let held = follower.table.read().get(&created.id).map(|c| c.subscription.revision);
        assert_eq!(held, Some(revision), "fresh, yet the change written before is missing");
    }
    // A time to come (a producer's clock ahead) counts as now: no wait for
    // the future.
    let future = triggers_core::event::now_ms() + 3_600_000;
    assert!(follower.fresh_at(future, Duration::from_secs(10)).await);
    paused.shutdown.cancel();
}
