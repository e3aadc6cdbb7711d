//! Batching, FIFO order, and the per-subscription concurrency cap.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use triggers_core::delivery::OutcomeKind;

use crate::support::{Received, Receiver, env, env_with, verify};

/// The events of type `kind` in the requests, flattening batches.
fn events_of(requests: &[Received], kind: &str) -> Vec<Value> {
    crate::support::events_in(requests)
        .into_iter()
        .filter(|e| e["type"] == kind)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batched_subscription_gets_signed_arrays_and_every_event_its_outcome() {
    let env = env().await;
    let receiver = Receiver::default();
    let url = receiver.start();
    let (_, secret) = env
        .subscribe_with(json!({"target_url": url, "event_types": ["*"],
                               "batch": {"max_events": 5, "max_wait_ms": 300}}))
        .await;
    env.ingest_until_received(&receiver, json!({"type": "warm.up", "source": "s"}))
        .await;

    let events: Vec<Value> = (0..12)
        .map(|i| json!({"type": "batch.item", "source": "s", "data": {"i": i}}))
        .collect();
    let ids = env.ingest_batch(events).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let received = receiver.received.lock().clone();
        if events_of(&received, "batch.item").len() >= 12 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not every event arrived: {:?}",
            receiver.bodies()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let received = receiver.received.lock().clone();
    let batches: Vec<&Received> = received
        .iter()
        .filter(|r| !events_of(std::slice::from_ref(*r), "batch.item").is_empty())
        .collect();
    let mut largest = 0;
    for request in &batches {
        verify(&secret, request);
        let body: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
        let size = body.as_array().map_or(0, Vec::len);
        assert!((1..=5).contains(&size), "a batch of {size}");
        largest = largest.max(size);
        assert!(
            request.header("webhook-id").is_some_and(|id| id.starts_with("bat_")),
            "{:?}",
            request.header("webhook-id")
        );
    }
    assert!(largest > 1, "nothing was batched");
    let got: HashSet<String> = events_of(&received, "batch.item")
        .iter()
        .map(|e| e["id"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(got, ids.iter().cloned().collect::<HashSet<_>>());
    // Every event of a batch gets its own outcome.
    for id in ids.iter().take(3) {
        env.wait_outcome(id, |o| o.kind == OutcomeKind::Delivered, Duration::from_secs(15))
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ordered_subscription_keeps_fifo_order_through_a_retry() {
    let env = env().await;
    let receiver = Receiver::default();
    let url = receiver.start();
    env.subscribe_with(json!({"target_url": url, "event_types": ["*"], "ordered": true}))
        .await;
    env.ingest_until_received(&receiver, json!({"type": "warm.up", "source": "s"}))
        .await;
    // The first event fails once; nothing after it may overtake it.
    receiver.script.lock().push_back((500, None));
    let events: Vec<Value> = (0..10)
        .map(|i| json!({"type": "fifo.item", "source": "s", "data": {"i": i}}))
        .collect();
    env.ingest_batch(events).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while events_of(&receiver.received.lock(), "fifo.item").len() < 11 {
        assert!(Instant::now() < deadline, "{:?}", receiver.bodies());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let order: Vec<i64> = events_of(&receiver.received.lock(), "fifo.item")
        .iter()
        .map(|e| e["data"]["i"].as_i64().unwrap_or(-1))
        .collect();
    assert_eq!(order, [0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_endpoint_does_not_starve_the_others() {
    let env = env_with(|config| {
        config.max_in_flight = 8;
        config.max_in_flight_per_subscription = 2;
        config.park_after = Duration::from_millis(50);
        config.park_delay = Duration::from_millis(200);
    })
    .await;
    let slow = Receiver::default();
    let fast = Receiver::default();
    env.subscribe_with(json!({"target_url": slow.start(), "event_types": ["slow.*"]}))
        .await;
    env.subscribe_with(json!({"target_url": fast.start(), "event_types": ["fast.*"]}))
        .await;
    env.ingest_until_received(&slow, json!({"type": "slow.warm", "source": "s"}))
        .await;
    env.ingest_until_received(&fast, json!({"type": "fast.warm", "source": "s"}))
        .await;
    *slow.delay.lock() = Some(Duration::from_millis(1_500));

    // Three times the consumer's slots of slow work, then a little fast work.
    let slow_events: Vec<Value> = (0..24)
        .map(|i| json!({"type": "slow.item", "source": "s", "data": {"i": i}}))
        .collect();
    env.ingest_batch(slow_events).await;
    let fast_ids = env
        .ingest_batch(
            (0..3)
                .map(|i| json!({"type": "fast.item", "source": "s", "data": {"i": i}}))
                .collect(),
        )
        .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while events_of(&fast.received.lock(), "fast.item").len() < fast_ids.len() {
        assert!(Instant::now() < deadline, "the fast endpoint starved");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The fast events did not wait for the slow backlog (24 × 1.5 s at two at once).
    let slow_done = events_of(&slow.received.lock(), "slow.item").len();
    assert!(slow_done < 24, "the fast events waited for all {slow_done} slow ones");
    // And the slow endpoint never had more than its cap at once.
    assert!(slow.most_at_once() <= 2, "{} at once", slow.most_at_once());
    // Every slow event still arrives.
    let deadline = Instant::now() + Duration::from_secs(60);
    while events_of(&slow.received.lock(), "slow.item").len() < 24 {
        assert!(Instant::now() < deadline, "slow events lost");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
