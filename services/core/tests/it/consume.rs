//! The consume loop against real Tansu: a full consumer keeps polling (and
//! stays in its group), a handler that only waits frees its slot, a
//! handler that keeps failing is retried, then quarantined, and its
//! partition moves on, and partitions taken away in a rebalance go over
//! drained.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::FutureRecord;
use tokio::sync::Notify;
use triggers_core::CancellationToken;
use triggers_core::config::KafkaConfig;
use triggers_core::consume::{HANDLER_ATTEMPTS, Handled, Limits, Slot};
use triggers_core::pacing::Pacer;
use triggers_core::quarantine::Quarantine;
use triggers_stack::topics::read_topic;

use crate::support::TestEnv;

fn consumer(kafka: &KafkaConfig, group: &str, topic: &str) -> StreamConsumer<triggers_core::kafka::ConsumerLog> {
    let consumer = triggers_core::kafka::consumer(
        kafka,
        "consume-test",
        group,
        triggers_core::kafka::ConsumerLog::new("test"),
    )
    .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    consumer
}

/// Writes `payloads` with one key (so to one partition, in order).
async fn produce(kafka: &KafkaConfig, topic: &str, payloads: &[&str]) {
    let producer = triggers_core::kafka::producer(kafka, "consume-test").unwrap();
    for payload in payloads {
        producer
            .send(
                FutureRecord::to(topic).key("one-key").payload(payload.as_bytes()),
                Duration::from_secs(10),
            )
            .await
            .unwrap_or_else(|(e, _)| panic!("{e}"));
    }
}

fn text(message: &rdkafka::message::OwnedMessage) -> String {
    String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned()
}

fn quarantine(env: &TestEnv) -> Quarantine {
    let producer = triggers_core::kafka::producer(&env.common.kafka, "consume-test").unwrap();
    Quarantine::new(producer, env.common.topics.quarantine(), "test")
}

async fn wait_until(what: &str, timeout: Duration, check: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_consumer_keeps_polling_and_stays_in_its_group() {
    let env = TestEnv::new().await;
    env.provision().await;
    let topic = env.common.topics.events();
    // A short poll interval: a consumer that stops polling while its one
    // slot sleeps longer than that leaves the group, and its records are
    // read (and handled) again once it rejoins.
    let mut kafka = env.common.kafka.clone();
    kafka.session_timeout = Duration::from_secs(2);
    kafka.extra.insert("max.poll.interval.ms".to_owned(), "3000".to_owned());
    kafka.extra.insert("heartbeat.interval.ms".to_owned(), "500".to_owned());
    produce(&kafka, &topic, &["a", "b", "c"]).await;

    let handled: Arc<Mutex<HashMap<i64, usize>>> = Arc::default();
    let shutdown = CancellationToken::new();
    let consumer = consumer(&kafka, &format!("{}-full", env.namespace), &topic);
    let task = {
        let (handled, shutdown, quarantine) = (handled.clone(), shutdown.clone(), quarantine(&env));
        tokio::spawn(async move {
            let limits = Limits::new(1, Duration::from_secs(10));
            triggers_core::consume::run(
                consumer,
                Pacer::new(&kafka),
                limits,
                quarantine,
                shutdown,
                move |message, _| {
                    *handled.lock().entry(message.offset()).or_default() += 1;
                    async move {
                        // Twice the poll interval, holding the only slot.
                        tokio::time::sleep(Duration::from_secs(6)).await;
                        Handled::Done
                    }
                },
            )
            .await;
        })
    };
    wait_until("three records handled", Duration::from_secs(40), || {
        handled.lock().len() == 3
    })
    .await;
    // Long enough for an evicted consumer to rejoin and read again.
    tokio::time::sleep(Duration::from_secs(8)).await;
    shutdown.cancel();
    task.await.unwrap();
    let handled = handled.lock().clone();
    assert!(
        handled.values().all(|times| *times == 1),
        "records were handled more than once (the consumer left its group): {handled:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_only_waits_frees_its_slot() {
    let env = TestEnv::new().await;
    env.provision().await;
    let topic = env.common.topics.events();
    produce(&env.common.kafka, &topic, &["waits", "frees"]).await;

    let released = Arc::new(Notify::new());
    let done: Arc<Mutex<Vec<String>>> = Arc::default();
    let shutdown = CancellationToken::new();
    let consumer = consumer(&env.common.kafka, &format!("{}-free", env.namespace), &topic);
    let kafka = env.common.kafka.clone();
    let task = {
        let (released, done, shutdown, quarantine) =
            (released.clone(), done.clone(), shutdown.clone(), quarantine(&env));
        tokio::spawn(async move {
            // One slot: the second record runs only if the first freed it.
            let limits = Limits::new(1, Duration::from_secs(5));
            triggers_core::consume::run(
                consumer,
                Pacer::new(&kafka),
                limits,
                quarantine,
                shutdown,
                move |message, slot: Slot| {
                    let (released, done) = (released.clone(), done.clone());
                    async move {
                        let payload = text(&message);
                        if payload == "waits" {
                            slot.free();
                            released.notified().await;
                            done.lock().push(payload);
                        } else {
                            done.lock().push(payload);
                            released.notify_one();
                        }
                        Handled::Done
                    }
                },
            )
            .await;
        })
    };
    wait_until("both records done", Duration::from_secs(20), || done.lock().len() == 2).await;
    assert_eq!(*done.lock(), ["frees", "waits"]);
    shutdown.cancel();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_handler_is_retried_then_quarantined_and_the_partition_moves_on() {
    let env = TestEnv::new().await;
    env.provision().await;
    let topic = env.common.topics.events();
    let group = format!("{}-poison", env.namespace);
    produce(&env.common.kafka, &topic, &["flaky", "bad", "good"]).await;

    let attempts: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let done: Arc<Mutex<Vec<String>>> = Arc::default();
    let run = |shutdown: CancellationToken| {
        let (attempts, done, kafka) = (attempts.clone(), done.clone(), env.common.kafka.clone());
        let consumer = consumer(&kafka, &group, &topic);
        let quarantine = quarantine(&env);
        tokio::spawn(async move {
            let limits = Limits::new(8, Duration::from_secs(5));
            triggers_core::consume::run(
                consumer,
                Pacer::new(&kafka),
                limits,
                quarantine,
                shutdown,
                move |message, _| {
                    let (attempts, done) = (attempts.clone(), done.clone());
                    async move {
                        let payload = text(&message);
                        let attempt = {
                            let mut attempts = attempts.lock();
                            let attempt = attempts.entry(payload.clone()).or_default();
                            *attempt += 1;
                            *attempt
                        };
                        // `flaky` fails once, `bad` every time: a bug in the handler.
                        if payload == "bad" || (payload == "flaky" && attempt == 1) {
                            panic!("handler bug on {payload}");
                        }
                        done.lock().push(payload);
                        Handled::Done
                    }
                },
            )
            .await;
        })
    };
    let shutdown = CancellationToken::new();
    let task = run(shutdown.clone());
    wait_until("the bad record given up", Duration::from_secs(30), || {
        attempts.lock().get("bad").copied() == Some(HANDLER_ATTEMPTS)
    })
    .await;
    let quarantined = read_topic(
        &env.common.kafka.bootstrap_servers,
        &env.common.topics.quarantine(),
        1,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(quarantined.len(), 1, "the bad record is not in quarantine");
    let record = &quarantined[0];
    assert_eq!(text(record), "bad");
    let header = |name: &str| {
        use rdkafka::message::Headers;
        record
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == name).and_then(|h| h.value))
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    assert_eq!(header("triggers-error-reason").as_deref(), Some("handler_failed"));
    assert_eq!(header("triggers-source-topic").as_deref(), Some(topic.as_str()));
    assert!(
        header("triggers-error-message").is_some_and(|m| m.contains("handler bug on bad")),
        "{:?}",
        header("triggers-error-message")
    );
    wait_until("the good records done", Duration::from_secs(10), || {
        done.lock().len() == 2
    })
    .await;
    let mut finished = done.lock().clone();
    finished.sort();
    assert_eq!(finished, ["flaky", "good"], "a record after the bad one was held up");
    assert_eq!(
        attempts.lock().get("flaky").copied(),
        Some(2),
        "the flaky record was not retried"
    );

    // The partition's offset moved past all three: a new member of the
    // group reads only what comes next.
    shutdown.cancel();
    task.await.unwrap();
    attempts.lock().clear();
    done.lock().clear();
    // A barrier after it, on the same partition: anything read again would
    // come before both, so once the barrier is done it would have shown.
    produce(&env.common.kafka, &topic, &["next", "barrier"]).await;
    let shutdown = CancellationToken::new();
    let task = run(shutdown.clone());
    wait_until("the barrier record", Duration::from_secs(20), || {
        done.lock().iter().any(|p| p == "barrier")
    })
    .await;
    let mut finished = done.lock().clone();
    finished.sort();
    assert_eq!(
        finished,
        ["barrier", "next"],
        "records before the commit were read again"
    );
    assert!(attempts.lock().get("bad").is_none(), "the quarantined record came back");
    shutdown.cancel();
    task.await.unwrap();
}

/// A second consumer joins while the first works: the partitions that move
/// go over drained (the first finishes what it started on them and commits
/// it before they go), so no record is worked on by both.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partitions_taken_away_in_a_rebalance_go_over_drained() {
    let env = TestEnv::new().await;
    env.provision().await;
    let topic = env.common.topics.events();
    let partitions = env.common.topics.partitions;
    assert!(partitions >= 2, "the test needs partitions to move ({partitions})");
    let producer = triggers_core::kafka::producer(&env.common.kafka, "consume-test").unwrap();
    let total = 40 * partitions;
    for i in 0..total {
        producer
            .send(
                FutureRecord::to(&topic)
                    .partition(i % partitions)
                    .key("k")
                    .payload(&format!("r{i}")),
                Duration::from_secs(10),
            )
            .await
            .unwrap_or_else(|(e, _)| panic!("{e}"));
    }
    let group = format!("{}-handover", env.namespace);
    // Who handled each record (by partition and offset), in order.
    type Handlers = HashMap<(i32, i64), Vec<&'static str>>;
    let handled: Arc<Mutex<Handlers>> = Arc::default();
    let shutdown = CancellationToken::new();
    let start = |name: &'static str| {
        let consumer = triggers_core::kafka::consumer(
            &env.common.kafka,
            "consume-test",
            &group,
            triggers_core::kafka::ConsumerLog::in_group("test", &group),
        )
        .unwrap();
        consumer.subscribe(&[&topic]).unwrap();
        let (handled, shutdown, quarantine, kafka) = (
            handled.clone(),
            shutdown.clone(),
            quarantine(&env),
            env.common.kafka.clone(),
        );
        tokio::spawn(async move {
            triggers_core::consume::run(
                consumer,
                Pacer::new(&kafka),
                Limits::new(8, Duration::from_secs(20)),
                quarantine,
                shutdown,
                move |message, _| {
                    let handled = handled.clone();
                    async move {
                        // Long enough for a rebalance to land mid-work.
                        tokio::time::sleep(Duration::from_millis(1500)).await;
                        handled
                            .lock()
                            .entry((message.partition(), message.offset()))
                            .or_default()
                            .push(name);
                        Handled::Done
                    }
                },
            )
            .await;
        })
    };
    let first = start("first");
    wait_until("the first consumer at work", Duration::from_secs(30), || {
        handled.lock().len() >= 4
    })
    .await;
    let second = start("second");
    let count = usize::try_from(total).unwrap();
    wait_until("every record handled", Duration::from_secs(90), || {
        handled.lock().len() == count
    })
    .await;
    // Time for a record handed over undrained to be handled again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    shutdown.cancel();
    first.await.unwrap();
    second.await.unwrap();
    let handled = handled.lock().clone();
    let twice: Vec<_> = handled.iter().filter(|(_, by)| by.len() > 1).collect();
    assert!(twice.is_empty(), "records handled more than once: {twice:?}");
    let by_second = handled.values().filter(|by| by[0] == "second").count();
    assert!(
        by_second > 0 && by_second < count,
        "the second consumer took over some partitions: {by_second} of {count}"
    );
}
