//! Outages, the DLQ and redrive, replay, and a deliverer crash.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use triggers_core::delivery::OutcomeKind;

use crate::support::{Env, Receiver, env, env_with};

/// Polls `path` until `check` holds on the answer.
async fn wait_api(env: &Env, path: &str, check: impl Fn(&Value) -> bool, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let (status, body) = env.call(Method::GET, path, None).await;
        if status == 200 && check(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "{path}: {status} {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_down_then_up_gets_everything() {
    let env = env().await;
    let receiver = Receiver::default();
    env.subscribe(&receiver.start()).await;
    env.ingest_until_received(&receiver, json!({"type": "warm.up", "source": "s"}))
        .await;
    // Down: every request fails.
    *receiver.always.lock() = Some(503);
    let ids = env
        .ingest_batch(
            (0..8)
                .map(|i| json!({"type": "outage.item", "source": "s", "data": {"i": i}}))
                .collect(),
        )
        .await;
    // Every event failed at least once (the test tiers are short: 1 s, 2 s, 4 s).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let failed: HashSet<String> = receiver
            .received
            .lock()
            .iter()
            .filter_map(|r| r.header("webhook-id").map(str::to_owned))
            .collect();
        if ids.iter().all(|id| failed.contains(id)) {
            break;
        }
        assert!(Instant::now() < deadline, "not every event was attempted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Up again: the retries deliver every one.
    *receiver.always.lock() = None;
    for id in &ids {
        env.wait_outcome(id, |o| o.kind == OutcomeKind::Delivered, Duration::from_secs(30))
            .await;
        let delivered = receiver
            .received
            .lock()
            .iter()
            .filter(|r| r.header("webhook-id") == Some(id.as_str()))
            .count();
        assert!(delivered >= 2, "{id} was not retried");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_is_listed_redriven_and_delivered_and_a_replay_is_marked() {
    let env = env().await;
    let receiver = Receiver::default();
    *receiver.always.lock() = Some(500);
    let (subscription, _) = env.subscribe(&receiver.start()).await;
    let id = env
        .ingest_until_received(&receiver, json!({"type": "dlq.item", "source": "s"}))
        .await;
    env.wait_outcome(&id, |o| o.kind == OutcomeKind::DeadLettered, Duration::from_secs(40))
        .await;

    // Listed by the API once the persister has it.
    let listed = wait_api(
        &env,
        &format!("/v1/dlq?subscription_id={subscription}"),
        |b| {
            b["data"]
                .as_array()
                .is_some_and(|d| d.iter().any(|e| e["event_id"] == id.as_str()))
        },
        Duration::from_secs(20),
    )
    .await;
    let entry = listed["data"]
        .as_array()
        .and_then(|d| d.iter().find(|e| e["event_id"] == id.as_str()))
        .cloned()
        .unwrap_or_default();
    assert_eq!(entry["subscription_id"], subscription.as_str());
    assert_eq!(entry["attempts"], 4);
    assert_eq!(entry["last_status"], 500);
    assert_eq!(entry["last_error"], "HTTP 500");
    let dead_id = entry["id"].as_str().unwrap_or_default().to_owned();
    assert!(dead_id.starts_with("dlv_"), "{entry}");

    // Bad redrive requests are refused with a clear error.
    let (status, error) = env.call(Method::POST, "/v1/dlq/redrive", Some(json!({}))).await;
    assert_eq!(status, 422, "{error}");
    let (status, error) = env
        .call(Method::POST, "/v1/dlq/redrive", Some(json!({"ids": ["nope"]})))
        .await;
    assert_eq!(
        (status, error["error"]["field"].as_str()),
        (422, Some("ids[0]")),
        "{error}"
    );

    // The endpoint is fixed; the redrive delivers it with a fresh schedule.
    *receiver.always.lock() = None;
    let before = receiver.count();
    let (status, redriven) = env
        .call(Method::POST, "/v1/dlq/redrive", Some(json!({"ids": [dead_id]})))
        .await;
    assert_eq!(status, 202, "{redriven}");
    assert_eq!(redriven["redriven"].as_array().map(Vec::len), Some(1), "{redriven}");
    assert_eq!(redriven["redriven"][0]["attempt"], 5);
    let outcomes = env
        .wait_outcome(&id, |o| o.kind == OutcomeKind::Delivered, Duration::from_secs(20))
        .await;
    let delivered = outcomes
        .iter()
        .find(|o| o.kind == OutcomeKind::Delivered)
        .expect("none");
    assert_eq!(delivered.attempt, 5);
    let again = env.attempts_of(&receiver, &id, 5, Duration::from_secs(10)).await;
    assert!(receiver.count() > before);
    assert_eq!(again[4].header("triggers-replay"), None, "a redrive is not a replay");
    let (_, dlq) = env
        .call(Method::GET, &format!("/v1/dlq?subscription_id={subscription}"), None)
        .await;
    assert!(
        !dlq["data"]
            .as_array()
            .is_some_and(|d| d.iter().any(|e| e["event_id"] == id.as_str())),
        "still in the DLQ: {dlq}"
    );
    wait_api(
        &env,
        &format!("/v1/events/{id}"),
        |b| b["status"] == "delivered",
        Duration::from_secs(20),
    )
    .await;

    // A replay goes out again, marked, with the same webhook-id, as attempt 6.
    let (status, replayed) = env.call(Method::POST, &format!("/v1/events/{id}/replay"), None).await;
    assert_eq!(status, 202, "{replayed}");
    assert_eq!(replayed["replayed_to"][0]["subscription_id"], subscription.as_str());
    assert_eq!(replayed["replayed_to"][0]["attempt"], 6);
    let attempts = env.attempts_of(&receiver, &id, 6, Duration::from_secs(20)).await;
    assert_eq!(attempts[5].header("triggers-replay"), Some("true"));
    let history = wait_api(
        &env,
        &format!("/v1/events/{id}"),
        |b| {
            b["deliveries"][0]["attempts"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x["attempt"] == 6))
        },
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(history["status"], "delivered");

    // Replays of unknown events, or to another tenant's subscription id, are 404.
    let (status, _) = env
        .call(Method::POST, "/v1/events/evt_01jz0000000000000000000000/replay", None)
        .await;
    assert_eq!(status, 404);
    let (status, _) = env
        .call(
            Method::POST,
            &format!("/v1/events/{id}/replay"),
            Some(json!({"subscription_id": "sub_01jz0000000000000000000000"})),
        )
        .await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deliverer_killed_mid_load_loses_nothing() {
    let mut env = env_with(|config| config.shutdown_grace = Duration::from_millis(1)).await;
    let receiver = Receiver::default();
    env.subscribe(&receiver.start()).await;
    env.ingest_until_received(&receiver, json!({"type": "warm.up", "source": "s"}))
        .await;
    *receiver.delay.lock() = Some(Duration::from_millis(100));
    let mut ids = Vec::new();
    for round in 0..4 {
        ids.extend(
            env.ingest_batch(
                (0..25)
                    .map(|i| json!({"type": "crash.item", "source": "s", "data": {"r": round, "i": i}}))
                    .collect(),
            )
            .await,
        );
    }
    // Kill it while deliveries are in flight, then start another.
    let deadline = Instant::now() + Duration::from_secs(20);
    while receiver.count() < 20 {
        assert!(Instant::now() < deadline, "nothing was delivered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    env.restart_deliverer().await;

    let expected: HashSet<String> = ids.iter().cloned().collect();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let got: HashSet<String> = receiver
            .received
            .lock()
            .iter()
            .filter_map(|r| r.header("webhook-id").map(str::to_owned))
            .collect();
        if got.is_superset(&expected) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} events never arrived",
            expected.difference(&got).count(),
            expected.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Duplicates are allowed; each carries its event's id as webhook-id.
    for request in receiver.received.lock().iter() {
        let body: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
        assert_eq!(body["id"].as_str(), request.header("webhook-id"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_event_is_not_delivered_again_nor_brought_back() {
    let env = env().await;
    let receiver = Receiver::default();
    *receiver.always.lock() = Some(500);
    env.subscribe(&receiver.start()).await;
    let id = env
        .ingest_until_received(&receiver, json!({"type": "delete.item", "source": "s"}))
        .await;
    wait_api(&env, &format!("/v1/events/{id}"), |_| true, Duration::from_secs(20)).await;
    let (status, _) = env.call(Method::DELETE, &format!("/v1/events/{id}"), None).await;
    assert_eq!(status, 204);
    *receiver.always.lock() = None;
    // Its pending retry is skipped, not delivered.
    let outcomes = env
        .wait_outcome(&id, |o| o.kind == OutcomeKind::Skipped, Duration::from_secs(20))
        .await;
    let skipped = outcomes.iter().find(|o| o.kind == OutcomeKind::Skipped).expect("none");
    assert!(
        skipped.error.as_deref().is_some_and(|e| e.contains("deleted")),
        "{skipped:?}"
    );
    assert!(
        !outcomes.iter().any(|o| o.kind == OutcomeKind::Delivered),
        "{outcomes:?}"
    );
    // The outcomes that followed the deletion did not bring it back.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (status, body) = env.call(Method::GET, &format!("/v1/events/{id}"), None).await;
    assert_eq!(status, 404, "{body}");
    let (_, listed) = env.call(Method::GET, "/v1/events?type=delete.item", None).await;
    assert!(
        !listed["data"]
            .as_array()
            .is_some_and(|d| d.iter().any(|e| e["id"] == id.as_str())),
        "{listed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_subscription_holds_its_deliveries_and_never_counts_them_delivered() {
    let env = env().await;
    let receiver = Receiver::default();
    let (subscription, _) = env.subscribe(&receiver.start()).await;
    env.ingest_until_received(&receiver, json!({"type": "warm.up", "source": "s"}))
        .await;
    // The first attempt fails; the subscription is paused while its retry waits.
    receiver.script.lock().extend([(500, None); 3]);
    let id = env.ingest(json!({"type": "paused.item", "source": "s"})).await;
    env.attempts_of(&receiver, &id, 1, Duration::from_secs(15)).await;
    let path = format!("/v1/subscriptions/{subscription}");
    let (status, body) = env.call(Method::PATCH, &path, Some(json!({"status": "paused"}))).await;
    assert_eq!(status, 200, "{body}");

    // Held as a dead letter that says why, and the event is not delivered.
    let outcomes = env
        .wait_outcome(
            &id,
            |o| o.kind == OutcomeKind::DeadLettered && o.error.as_deref().is_some_and(|e| e.contains("paused")),
            Duration::from_secs(30),
        )
        .await;
    assert!(
        !outcomes
            .iter()
            .any(|o| o.kind == OutcomeKind::Skipped || o.kind == OutcomeKind::Delivered),
        "{outcomes:?}"
    );
    wait_api(
        &env,
        &format!("/v1/events/{id}"),
        |b| b["status"] == "dead_lettered",
        Duration::from_secs(20),
    )
    .await;
    let (_, inbox) = env.call(Method::GET, "/v1/inbox", None).await;
    assert!(
        inbox["data"]
            .as_array()
            .is_some_and(|d| d.iter().any(|e| e["id"] == id.as_str())),
        "the held event left the inbox: {inbox}"
    );

    // Resumed and redriven: delivered.
    receiver.script.lock().clear();
    let (status, body) = env.call(Method::PATCH, &path, Some(json!({"status": "active"}))).await;
    assert_eq!(status, 200, "{body}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // Until the deliverer has seen the resume, a redrive is held again.
        let (status, body) = env
            .call(
                Method::POST,
                "/v1/dlq/redrive",
                Some(json!({"subscription_id": subscription})),
            )
            .await;
        assert_eq!(status, 202, "{body}");
        if env
            .outcomes_of(&id)
            .await
            .iter()
            .any(|o| o.kind == OutcomeKind::Delivered)
        {
            break;
        }
        assert!(Instant::now() < deadline, "never delivered after the resume");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    wait_api(
        &env,
        &format!("/v1/events/{id}"),
        |b| b["status"] == "delivered",
        Duration::from_secs(20),
    )
    .await;
}
