use std::time::Duration;

use serde_json::json;
use triggers_core::delivery::OutcomeKind;
use triggers_stack::topics::read_topic;

use crate::support::{Receiver, env, verify};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_is_signed_per_standard_webhooks_and_retries_follow_the_schedule() {
    let env = env().await;
    let receiver = Receiver::default();
    let url = receiver.start();
    let (_, secret) = env.subscribe(&url).await;
    // Two failures, then success.
    receiver.script.lock().extend([(500, None), (503, None)]);
    let id = env
        .ingest(json!({"type": "order.created", "source": "shop", "subject": "o-1", "data": {"total": 42}}))
        .await;
    let requests = receiver.wait_for(3, Duration::from_secs(30)).await;

    // Verified by an independent implementation of the spec.
    for request in &requests {
        verify(&secret, request);
        assert_eq!(request.header("webhook-id"), Some(id.as_str()));
        assert_eq!(request.header("content-type"), Some("application/json"));
        assert!(request.header("user-agent").is_some_and(|u| u.starts_with("Triggers/")));
    }
    let body: serde_json::Value = serde_json::from_slice(&requests[0].body).unwrap_or_default();
    assert_eq!(body["id"], id.as_str());
    assert_eq!(body["type"], "order.created");
    assert_eq!(body["specversion"], "1.0");
    assert_eq!(body["subject"], "o-1");
    assert_eq!(body["data"], json!({"total": 42}));

    // Test tiers are 1 s, 2 s, 4 s (±10% jitter).
    let first_gap = requests[1].at - requests[0].at;
    let second_gap = requests[2].at - requests[1].at;
    assert!(first_gap >= Duration::from_millis(900), "{first_gap:?}");
    assert!(second_gap >= Duration::from_millis(1_800), "{second_gap:?}");

    let outcomes = env
        .wait_outcome(&id, |o| o.kind == OutcomeKind::Delivered, Duration::from_secs(15))
        .await;
    let kinds: Vec<OutcomeKind> = outcomes
        .iter()
        .map(|o| o.kind)
        .filter(|k| *k != OutcomeKind::Routed)
        .collect();
    assert_eq!(
        kinds,
        [OutcomeKind::Retrying, OutcomeKind::Retrying, OutcomeKind::Delivered]
    );
    let retrying = outcomes
        .iter()
        .find(|o| o.kind == OutcomeKind::Retrying)
        .expect("no retrying");
    assert_eq!(retrying.http_status, Some(500));
    assert_eq!(retrying.response_excerpt.as_deref(), Some("receiver says hi"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_failing_goes_to_the_dlq_and_429_retry_after_is_honoured() {
    let env = env().await;
    let failing = Receiver::default();
    *failing.always.lock() = Some(500);
    let (_, _) = env.subscribe(&failing.start()).await;
    let id = env.ingest(json!({"type": "a.b", "source": "s"})).await;
    // 1 + three tiers = 4 attempts, then the DLQ.
    let outcomes = env
        .wait_outcome(&id, |o| o.kind == OutcomeKind::DeadLettered, Duration::from_secs(40))
        .await;
    assert_eq!(failing.count(), 4);
    let dead = outcomes
        .iter()
        .find(|o| o.kind == OutcomeKind::DeadLettered)
        .expect("none");
    assert_eq!(dead.attempt, 4);
    assert_eq!(dead.error.as_deref(), Some("HTTP 500"));
    let dlq = read_topic(
        &env.common.kafka.bootstrap_servers,
        &env.common.topics.dlq(),
        1,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(dlq.len(), 1);

    // 429 with Retry-After: 3 waits 3 s although the first tier is 1 s.
    // (The new subscription reaches the router asynchronously: send until
    // the receiver sees an event, then follow that event's attempts.)
    let slow = Receiver::default();
    slow.script.lock().push_back((429, Some(3)));
    env.subscribe(&slow.start()).await;
    let event = env
        .ingest_until_received(&slow, json!({"type": "a.c", "source": "s"}))
        .await;
    let attempts = env.attempts_of(&slow, &event, 2, Duration::from_secs(20)).await;
    let (first, second) = (&attempts[0], &attempts[1]);
    let gap = second.at - first.at;
    assert!(gap >= Duration::from_millis(2_900), "Retry-After not honoured: {gap:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_disables_the_subscription_and_the_ssrf_guard_refuses_private_addresses() {
    let env = env().await;
    let gone = Receiver::default();
    gone.script.lock().push_back((410, None));
    let (sub, _) = env.subscribe(&gone.start()).await;
    let id = env.ingest(json!({"type": "a.b", "source": "s"})).await;
    env.wait_outcome(&id, |o| o.kind == OutcomeKind::Disabled, Duration::from_secs(20))
        .await;
    let (status, subscription) = env
        .call(reqwest::Method::GET, &format!("/v1/subscriptions/{sub}"), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(subscription["status"], "disabled");
    assert!(
        subscription["disabled_reason"]
            .as_str()
            .is_some_and(|r| r.contains("410")),
        "{subscription}"
    );
    // No retries after 410, and nothing more once disabled.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(gone.count(), 1);

    // A private address is never contacted.
    let (status, _) = env
        .call(reqwest::Method::DELETE, &format!("/v1/subscriptions/{sub}"), None)
        .await;
    assert_eq!(status, 204);
    env.subscribe("http://10.255.255.1:9/hook").await;
    // Send until an event is routed to it (it reaches the router asynchronously).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let id = env.ingest(json!({"type": "a.b", "source": "s"})).await;
        let outcomes = env.outcomes_of(&id).await;
        if let Some(refused) = outcomes.iter().find(|o| o.kind == OutcomeKind::Retrying) {
            assert!(
                refused.error.as_deref().is_some_and(|e| e.contains("SSRF")),
                "{refused:?}"
            );
            assert_eq!(refused.http_status, None);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never attempted: {outcomes:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_event_the_gateway_accepts_is_delivered_and_stored() {
    let env = env().await;
    let receiver = Receiver::default();
    env.subscribe(&receiver.start()).await;
    env.ingest_until_received(&receiver, json!({"type": "warm.up", "source": "s"}))
        .await;
    // Just under the gateway's 1 MiB body limit, and incompressible: the
    // event record, its delivery record and its stored item are all larger
    // than librdkafka's and DynamoDB's defaults would take.
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let noise: String = (0..1_040_000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            char::from(b'a' + (state % 26) as u8)
        })
        .collect();
    let body = json!({"type": "blob.large", "source": "s", "data": {"blob": noise}});
    assert!(body.to_string().len() < 1024 * 1024);
    let id = env.ingest(body).await;
    let delivered = env.attempts_of(&receiver, &id, 1, Duration::from_secs(30)).await;
    let got: serde_json::Value = serde_json::from_slice(&delivered[0].body).unwrap_or_default();
    assert!(got["data"]["blob"] == noise.as_str(), "the payload changed on the way");
    env.wait_outcome(&id, |o| o.kind == OutcomeKind::Delivered, Duration::from_secs(20))
        .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (status, stored) = env.call(reqwest::Method::GET, &format!("/v1/events/{id}"), None).await;
        if status == 200 && stored["status"] == "delivered" {
            assert!(stored["data"]["blob"] == noise.as_str(), "the stored payload differs");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{status} {stored}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
