use std::time::Duration;

use serde_json::json;
use triggers_stack::TestStack;

use crate::support::{answer, start};

#[tokio::test]
async fn an_accepted_event_is_in_the_topic_and_decodes_to_what_was_sent() {
    let gateway = start(TestStack::shared(), |_, _| {}).await;
    let body = json!({
        "type": "order.created", "source": "https://shop.example", "subject": "order-42",
        "time": "2026-01-02T03:04:05.678Z", "data": {"total": 19.99, "items": ["a", "b"]},
        "tenant": "ten_01hzzzzzzzzzzzzzzzzzzzzzzz"
    });
    let (status, headers, accepted) = answer(gateway.post("/v1/events").json(&body).send().await.unwrap()).await;
    assert_eq!(status, 202, "{accepted}");
    assert_eq!(accepted["status"], "accepted");
    assert!(headers.contains_key("x-request-id"));
    assert!(headers.contains_key("ratelimit-remaining"));
    let id = accepted["id"].as_str().unwrap_or_default().to_owned();
    assert!(id.starts_with("evt_"), "{accepted}");

    let events = gateway.read_events(1, Duration::from_secs(15)).await;
    assert_eq!(events.len(), 1);
    let (key, event) = &events[0];
    // Keyed and owned by the authenticated tenant, whatever the body says.
    assert_eq!(key, &gateway.tenant.to_string());
    assert_eq!(event.tenant, gateway.tenant);
    assert_eq!(event.id.to_string(), id);
    assert_eq!(event.event_type, "order.created");
    assert_eq!(event.source, "https://shop.example");
    assert_eq!(event.subject.as_deref(), Some("order-42"));
    assert_eq!(event.time, 1_767_323_045_678);
    assert_eq!(event.data, json!({"total": 19.99, "items": ["a", "b"]}));

    // payload is an alias of data; partition_key becomes the Kafka key;
    // application/cloudevents+json is accepted.
    let response = gateway
        .post("/v1/events")
        .header("content-type", "application/cloudevents+json; charset=utf-8")
        .body(
            json!({"specversion": "1.0", "type": "a.b", "source": "s", "payload": [1], "partition_key": "customer-9"})
                .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 202);
    let events = gateway.read_events(2, Duration::from_secs(15)).await;
    let (key, event) = events.iter().find(|(_, e)| e.event_type == "a.b").expect("missing");
    assert_eq!(key, "customer-9");
    assert_eq!(event.data, json!([1]));
}

#[tokio::test]
async fn a_batch_answers_one_result_per_input_in_order() {
    let gateway = start(TestStack::shared(), |_, _| {}).await;
    let batch = json!({"events": [
        {"type": "one", "source": "s", "data": 1},
        {"source": "s"},
        {"type": "three", "source": "s", "data": 3},
    ]});
    let (status, _, body) = answer(gateway.post("/v1/events/batch").json(&batch).send().await.unwrap()).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["accepted"], 2);
    assert_eq!(body["rejected"], 1);
    let results = body["results"].as_array().cloned().unwrap_or_default();
    assert_eq!(results.len(), 3);
    for (i, result) in results.iter().enumerate() {
        assert_eq!(result["index"], i);
    }
    assert!(results[0]["id"].as_str().is_some_and(|id| id.starts_with("evt_")));
    assert_eq!(results[1]["error"]["code"], "invalid_field");
    assert_eq!(results[1]["error"]["field"], "events[1].type");
    assert!(results[2]["id"].is_string());

    // A bare array with the CloudEvents batch media type.
    let response = gateway
        .post("/v1/events/batch")
        .header("content-type", "application/cloudevents-batch+json")
        .body(json!([{"type": "four", "source": "s"}]).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 202);

    let events = gateway.read_events(3, Duration::from_secs(15)).await;
    let mut types: Vec<&str> = events.iter().map(|(_, e)| e.event_type.as_str()).collect();
    types.sort_unstable();
    assert_eq!(types, ["four", "one", "three"]);

    // More than 500 events is refused as a whole.
    let too_many: Vec<_> = (0..501).map(|_| json!({"type": "x", "source": "s"})).collect();
    let (status, _, body) = answer(
        gateway
            .post("/v1/events/batch")
            .json(&json!({"events": too_many}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["field"], "events");
}

#[tokio::test]
async fn idempotency_keys_replay_refuse_and_race_safely() {
    let gateway = start(TestStack::shared(), |_, _| {}).await;
    let body = json!({"type": "payment.captured", "source": "s", "data": {"n": 1}}).to_string();
    let send = |key: &str, body: String| {
        gateway
            .post("/v1/events")
            .header("idempotency-key", key)
            .body(body)
            .send()
    };
    let (status, headers, first) = answer(send("pay-1", body.clone()).await.unwrap()).await;
    assert_eq!(status, 202, "{first}");
    assert!(!headers.contains_key("idempotent-replayed"));
    let (status, headers, second) = answer(send("pay-1", body.clone()).await.unwrap()).await;
    assert_eq!(status, 202);
    assert_eq!(
        headers.get("idempotent-replayed").and_then(|v| v.to_str().ok()),
        Some("true")
    );
    assert_eq!(second["id"], first["id"]);
    let other_body = json!({"type": "payment.captured", "source": "s", "data": {"n": 2}}).to_string();
    let (status, _, conflict) = answer(send("pay-1", other_body).await.unwrap()).await;
    assert_eq!(status, 409);
    assert_eq!(conflict["error"]["code"], "idempotency_key_reused");

    // Eight concurrent duplicates: one event, one id.
    let concurrent = json!({"type": "payment.refunded", "source": "s"}).to_string();
    let answers = futures::future::join_all((0..8).map(|_| send("refund-7", concurrent.clone()))).await;
    let mut ids = Vec::new();
    for response in answers {
        let (status, _, body) = answer(response.unwrap()).await;
        assert_eq!(status, 202, "{body}");
        ids.push(body["id"].as_str().unwrap_or_default().to_owned());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "{ids:?}");

    let events = gateway.read_events(3, Duration::from_secs(10)).await;
    assert_eq!(
        events.len(),
        2,
        "exactly one event per key: {:?}",
        events.iter().map(|(_, e)| &e.event_type).collect::<Vec<_>>()
    );
}
