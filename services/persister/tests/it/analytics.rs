//! The analytics the pipeline keeps: counted as the persister stores
//! events and outcomes (and the gateway answers), read by `GET /v1/analytics`.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use triggers_core::delivery::{Outcome, OutcomeKind};
use triggers_core::event::now_ms;
use triggers_core::ids::{DeliveryId, EventId, SubscriptionId};

use crate::support::env;

fn attempt(env: &crate::support::Env, event: EventId, sub: SubscriptionId, kind: OutcomeKind, n: i32) -> Outcome {
    let ok = kind == OutcomeKind::Delivered;
    Outcome {
        event_id: event,
        tenant: env.tenant,
        subscription_id: Some(sub),
        delivery_id: Some(DeliveryId::derive(&event, &sub)),
        kind,
        attempt: n,
        at: now_ms(),
        http_status: Some(if ok { 200 } else { 503 }),
        latency_ms: Some(40),
        error: (!ok).then(|| "HTTP 503".to_owned()),
        response_excerpt: None,
        subscriptions: Vec::new(),
        next_attempt_at: (kind == OutcomeKind::Retrying).then(|| now_ms() + 5_000),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analytics_count_every_status_transition_and_attempt_once() {
    let env = env().await;
    let created = env
        .subscribe(json!({"target_url": "http://h.test/", "event_types": ["order.*"]}))
        .await;
    let sub: SubscriptionId = created["id"].as_str().unwrap_or_default().parse().unwrap();
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(
            env.ingest(json!({"type": "order.created", "source": "s", "data": {"n": n}}))
                .await,
        );
    }
    let unmatched = env.ingest(json!({"type": "other.thing", "source": "s"})).await;
    for id in &ids {
        env.wait_event(id, |e| e["status"] == "routed").await;
    }
    env.wait_event(&unmatched, |e| e["status"] == "unmatched").await;
    let events: Vec<EventId> = ids.iter().map(|i| i.parse().unwrap()).collect();
    // Delivered at once; delivered at the second attempt; dead-lettered
    // after two attempts, then acknowledged from the inbox.
    env.produce_outcome(&attempt(&env, events[0], sub, OutcomeKind::Delivered, 1))
        .await;
    env.produce_outcome(&attempt(&env, events[1], sub, OutcomeKind::Retrying, 1))
        .await;
    env.produce_outcome(&attempt(&env, events[1], sub, OutcomeKind::Delivered, 2))
        .await;
    env.produce_outcome(&attempt(&env, events[2], sub, OutcomeKind::Retrying, 1))
        .await;
    env.produce_outcome(&attempt(&env, events[2], sub, OutcomeKind::DeadLettered, 2))
        .await;
    env.wait_event(&ids[2], |e| e["status"] == "dead_lettered").await;
    let retrying = env
        .wait_event(&ids[1], |e| {
            e["status"] == "delivered" && e["deliveries"][0]["attempts"].as_array().is_some_and(|a| a.len() == 2)
        })
        .await;
    assert!(
        retrying["deliveries"][0]["attempts"][0]["next_attempt_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{retrying}"
    );
    let (status, _) = env
        .call(reqwest::Method::POST, &format!("/v1/inbox/{}/ack", ids[2]), None)
        .await;
    assert_eq!(status, 200);

    // The counters reach the table within a flush or two.
    let expected = json!({
        "ingested": 4, "delivered": 2, "attempts": 5, "failed_attempts": 3,
        "deliveries_succeeded": 2, "deliveries_dead_lettered": 1, "success_rate": 1.0,
    });
    let expected_status = json!({
        "delivered": 2, "pending": 0, "retrying": 0, "dead_lettered": 0, "unmatched": 1, "acknowledged": 1,
    });
    let deadline = Instant::now() + Duration::from_secs(40);
    let report = loop {
        let (status, report) = env.call(reqwest::Method::GET, "/v1/analytics?range=1h", None).await;
        assert_eq!(status, 200, "{report}");
        // Per-subscription figures are flushed with their own items: wait
        // for them too.
        if report["totals"] == expected
            && report["status"] == expected_status
            && report["subscriptions"][0]["attempts"] == 5
        {
            break report;
        }
        assert!(Instant::now() < deadline, "analytics never settled: {report}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(report["granularity"], "minute");
    assert_eq!(report["errors"], json!({"http_5xx": 3}));
    assert_eq!(report["latency_ms"]["attempt"]["count"], 5);
    assert_eq!(report["latency_ms"]["end_to_end"]["count"], 2);
    let ingest = &report["latency_ms"]["ingest"];
    assert_eq!(ingest["count"], 4, "{ingest}");
    assert!(ingest["p50"].as_f64().is_some_and(|p| p > 0.0));
    let figures = &report["subscriptions"][0];
    assert_eq!(figures["subscription_id"], sub.to_string().as_str());
    assert_eq!(figures["attempts"], 5);
    assert_eq!(figures["delivered"], 2);
    assert_eq!(figures["dead_lettered"], 1);
    // Attempt latency 40 ms: in the (30, 50] bucket.
    assert!(
        figures["attempt_latency_ms"]["p50"]
            .as_f64()
            .is_some_and(|p| (30.0..=50.0).contains(&p)),
        "{figures}"
    );
    assert_eq!(report["top_failing"], json!([sub.to_string()]));
    let series: Vec<&Value> = report["series"]
        .as_array()
        .expect("no series")
        .iter()
        .filter(|p| p["ingested"].as_i64() > Some(0))
        .collect();
    assert_eq!(
        series.iter().map(|p| p["ingested"].as_i64().unwrap_or(0)).sum::<i64>(),
        4
    );
    // One point per minute, empty ones included (61 unless now is exactly
    // on a minute).
    let points = report["series"].as_array().map_or(0, Vec::len);
    assert!((60..=61).contains(&points), "{points} points");

    // Same figures a while later: nothing counted twice.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let (_, again) = env.call(reqwest::Method::GET, "/v1/analytics?range=1h", None).await;
    assert_eq!(again["totals"], expected);
    assert_eq!(again["status"], expected_status);

    // Another tenant sees none of it; a bad range is a 400 (a query problem).
    let (_, other_key) = env.slice.tenant_with_key(None).await;
    let (status, theirs) = env
        .call_as(&other_key, reqwest::Method::GET, "/v1/analytics?range=7d", None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(theirs["totals"]["ingested"], 0);
    assert_eq!(theirs["subscriptions"], json!([]));
    let (status, body) = env.call(reqwest::Method::GET, "/v1/analytics?range=2h", None).await;
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("range")),
        "{body}"
    );
}
