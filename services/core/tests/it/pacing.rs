//! Idle fetch pacing against real Tansu: an idle paced consumer sends far
//! fewer fetches than an unpaced one, and both still read every record.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use rdkafka::Message;
use rdkafka::consumer::{ConsumerContext, StreamConsumer};
use rdkafka::producer::FutureRecord;
use rdkafka::statistics::Statistics;
use triggers_core::CancellationToken;
use triggers_core::config::KafkaConfig;
use triggers_core::consume::{Handled, Limits};
use triggers_core::pacing::Pacer;

use crate::support::{TestEnv, paced};

/// Keeps the client's cumulative count of Fetch requests.
#[derive(Clone, Default)]
struct FetchCount(Arc<AtomicI64>);

impl rdkafka::ClientContext for FetchCount {
    fn stats(&self, statistics: Statistics) {
        let fetches = statistics
            .brokers
            .values()
            .filter_map(|broker| broker.req.get("Fetch"))
            .sum();
        self.0.store(fetches, Ordering::Relaxed);
    }
}

impl ConsumerContext for FetchCount {}
impl triggers_core::consume::WithHandover for FetchCount {}

struct Reader {
    fetches: FetchCount,
    seen: Arc<Mutex<HashSet<String>>>,
    task: tokio::task::JoinHandle<()>,
}

fn start_reader(kafka: &KafkaConfig, topic: &str, group: &str, shutdown: CancellationToken) -> Reader {
    let fetches = FetchCount::default();
    let consumer: StreamConsumer<FetchCount> = triggers_core::kafka::consumer_config(kafka, "pacing-test", group)
        .set("statistics.interval.ms", "200")
        .create_with_context(fetches.clone())
        .unwrap();
    rdkafka::consumer::Consumer::subscribe(&consumer, &[topic]).unwrap();
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let pacer = Pacer::new(kafka);
    let quarantine = crate::support::quarantine(kafka, topic);
    let task = {
        let seen = seen.clone();
        tokio::spawn(async move {
            triggers_core::consume::run(
                consumer,
                pacer,
                Limits::new(16, Duration::from_secs(2)),
                quarantine,
                shutdown,
                move |message, _| {
                    let seen = seen.clone();
                    async move {
                        if let Some(key) = message.key() {
                            seen.lock().insert(String::from_utf8_lossy(key).into_owned());
                        }
                        Handled::Done
                    }
                },
            )
            .await;
        })
    };
    Reader { fetches, seen, task }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_paced_consumer_fetches_far_less_and_still_reads_every_record() {
    let env = TestEnv::new().await;
    env.provision().await;
    let topic = env.common.topics.events();
    let shutdown = CancellationToken::new();

    let unpaced = KafkaConfig {
        idle_fetch_interval: Duration::ZERO,
        ..env.common.kafka.clone()
    };
    let paced = paced(&env.common.kafka, Duration::from_millis(300));
    let plain = start_reader(
        &unpaced,
        &topic,
        &format!("{}-unpaced", env.namespace),
        shutdown.clone(),
    );
    let calm = start_reader(&paced, &topic, &format!("{}-paced", env.namespace), shutdown.clone());

    // Both join their groups and then sit idle on an empty topic.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (plain_start, calm_start) = (
        plain.fetches.0.load(Ordering::Relaxed),
        calm.fetches.0.load(Ordering::Relaxed),
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    let plain_idle = plain.fetches.0.load(Ordering::Relaxed) - plain_start;
    let calm_idle = calm.fetches.0.load(Ordering::Relaxed) - calm_start;
    eprintln!("fetches in 4 idle seconds: {calm_idle} paced, {plain_idle} unpaced");
    assert!(
        plain_idle > 50,
        "the unpaced consumer should poll continuously: {plain_idle} fetches"
    );
    assert!(
        calm_idle * 3 < plain_idle,
        "pacing should cut idle fetches: {calm_idle} paced vs {plain_idle} unpaced"
    );

    // Records written while the paced consumer is paused all arrive, once
    // it looks again, as they do for the unpaced one.
    let producer = triggers_core::kafka::producer(&env.common.kafka, "pacing-test").unwrap();
    let keys: HashSet<String> = (0..20).map(|i| format!("k{i}")).collect();
    for key in &keys {
        producer
            .send(
                FutureRecord::to(&topic).key(key.as_bytes()).payload(b"x".as_slice()),
                Duration::from_secs(5),
            )
            .await
            .unwrap_or_else(|(e, _)| panic!("{e}"));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    for reader in [&plain, &calm] {
        while *reader.seen.lock() != keys {
            assert!(
                tokio::time::Instant::now() < deadline,
                "records missing: {:?}",
                keys.difference(&reader.seen.lock()).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    shutdown.cancel();
    for reader in [plain, calm] {
        reader.task.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_this_process_writes_wakes_a_paused_reader() {
    let env = TestEnv::new().await;
    env.provision().await;
    let topic = env.common.topics.events();
    let shutdown = CancellationToken::new();
    // Looks a minute apart: only the wake can bring the record in time.
    let paced = paced(&env.common.kafka, Duration::from_secs(60));
    let reader = start_reader(&paced, &topic, &format!("{}-woken", env.namespace), shutdown.clone());
    // Joined, read to the end of the empty topic, and paused since.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let fetches_paused = reader.fetches.0.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        reader.fetches.0.load(Ordering::Relaxed),
        fetches_paused,
        "the reader should be paused before the write"
    );

    let producer = triggers_core::kafka::producer(&env.common.kafka, "pacing-test").unwrap();
    producer
        .send(
            FutureRecord::to(&topic)
                .key(b"woken".as_slice())
                .payload(b"x".as_slice()),
            Duration::from_secs(5),
        )
        .await
        .unwrap_or_else(|(e, _)| panic!("{e}"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !reader.seen.lock().contains("woken") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the paused reader did not wake for the record"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    reader.task.await.unwrap();
}
