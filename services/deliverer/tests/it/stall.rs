//! No subscription can stall delivery for the others: a huge `Retry-After`
//! does not freeze a retry tier, and a failing ordered subscription blocks
//! only its own lane.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{Receiver, env_with, events_in};

fn items(kind: &str, count: usize) -> Vec<Value> {
    (0..count)
        .map(|i| json!({"type": kind, "source": "s", "data": {"i": i}}))
        .collect()
}

fn count_of(receiver: &Receiver, kind: &str) -> usize {
    events_in(&receiver.received.lock())
        .iter()
        .filter(|e| e["type"] == kind)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_retry_after_does_not_freeze_the_retry_tier() {
    // Two slots per consumer: two records sleeping on a retry tier's
    // consumer would hold all of them.
    let env = env_with(|config| config.max_in_flight = 2).await;
    let (busy, other) = (Receiver::default(), Receiver::default());
    env.subscribe_with(json!({"target_url": busy.start(), "event_types": ["busy.*"]}))
        .await;
    env.subscribe_with(json!({"target_url": other.start(), "event_types": ["other.*"]}))
        .await;
    env.ingest_until_received(&busy, json!({"type": "busy.warm", "source": "s"}))
        .await;
    env.ingest_until_received(&other, json!({"type": "other.warm", "source": "s"}))
        .await;

    // Three events whose endpoint asks to be left alone for 95 years.
    busy.script.lock().extend([(503, Some(3_000_000_000)); 3]);
    env.ingest_batch(items("busy.item", 3)).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while count_of(&busy, "busy.item") < 3 {
        assert!(Instant::now() < deadline, "first attempts missing");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Another subscription's retry (first tier: 1 s) still happens on time.
    other.script.lock().push_back((500, None));
    let id = env.ingest(json!({"type": "other.item", "source": "s"})).await;
    let attempts = env.attempts_of(&other, &id, 2, Duration::from_secs(15)).await;
    let gap = attempts[1].at - attempts[0].at;
    assert!(gap < Duration::from_secs(8), "the retry waited {gap:?}");
    // The busy events are not retried early: their wait is capped, not dropped.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(count_of(&busy, "busy.item"), 3, "a Retry-After was ignored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_ordered_subscription_blocks_only_its_own_lane() {
    let env = env_with(|config| config.max_in_flight = 4).await;
    let (ordered, fast) = (Receiver::default(), Receiver::default());
    env.subscribe_with(json!({"target_url": ordered.start(), "event_types": ["ord.*"], "ordered": true}))
        .await;
    env.subscribe_with(json!({"target_url": fast.start(), "event_types": ["fast.*"]}))
        .await;
    env.ingest_until_received(&ordered, json!({"type": "ord.warm", "source": "s"}))
        .await;
    env.ingest_until_received(&fast, json!({"type": "fast.warm", "source": "s"}))
        .await;

    // Three times the consumer's slots of ordered events to a failing endpoint.
    *ordered.always.lock() = Some(500);
    env.ingest_batch(items("ord.item", 12)).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while count_of(&ordered, "ord.item") == 0 {
        assert!(Instant::now() < deadline, "the ordered head was never attempted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Everyone else is still delivered.
    env.ingest_batch(items("fast.item", 3)).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while count_of(&fast, "fast.item") < 3 {
        assert!(
            Instant::now() < deadline,
            "the failing ordered subscription stalled the others"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And the lane kept its order: only its head was tried.
    let tried: Vec<i64> = events_in(&ordered.received.lock())
        .iter()
        .filter(|e| e["type"] == "ord.item")
        .map(|e| e["data"]["i"].as_i64().unwrap_or(-1))
        .collect();
    assert!(tried.iter().all(|i| *i == 0), "the lane was overtaken: {tried:?}");
}
