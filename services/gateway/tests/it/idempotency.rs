//! `Idempotency-Key` never makes a second event: a request that takes over
//! a stale claim produces the same event id, and a client that hangs up
//! mid-produce does not leave its claim pending (actix keeps running a
//! handler whose HTTP/1 client left, so this one guards the release path
//! rather than reproducing a loss; the produce also runs detached, for
//! handlers that are dropped: shutdown, HTTP/2 resets).

use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use serde_json::json;
use triggers_core::dynamo::Tables;
use triggers_core::event::now_ms;
use triggers_core::ids::EventId;
use triggers_stack::TestStack;

use crate::support::{answer, start};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_that_takes_over_a_stale_claim_makes_the_same_event() {
    let gateway = start(TestStack::shared(), |_, _| {}).await;
    let body = json!({"type": "order.created", "source": "shop"}).to_string();
    // What a gateway that died after claiming (and maybe producing) left.
    let seed = EventId::new().ulid();
    let tables = Tables::new(&gateway.common.dynamodb.table_prefix);
    let dynamo = triggers_core::dynamo::client(&gateway.common.dynamodb).await;
    let now = now_ms();
    dynamo
        .put_item()
        .table_name(&tables.idempotency)
        .item("pk", AttributeValue::S(format!("{}#order-1", gateway.tenant)))
        .item(
            "body_hash",
            AttributeValue::S(triggers_gateway::idempotency::body_hash(body.as_bytes())),
        )
        .item("state", AttributeValue::S("pending".to_owned()))
        .item("created_at", AttributeValue::N((now - 60_000).to_string()))
        .item("seed", AttributeValue::S(seed.to_string()))
        .item("expires_at", AttributeValue::N((now / 1000 + 3_600).to_string()))
        .send()
        .await
        .unwrap();

    let send = || {
        gateway
            .post("/v1/events")
            .header("idempotency-key", "order-1")
            .body(body.clone())
            .send()
    };
    let (status, _, accepted) = answer(send().await.unwrap()).await;
    assert_eq!(status, 202, "{accepted}");
    assert_eq!(
        accepted["id"].as_str(),
        Some(EventId::from_ulid(seed).to_string().as_str()),
        "the retry made a new event"
    );
    let (status, headers, again) = answer(send().await.unwrap()).await;
    assert_eq!((status, &again["id"]), (202, &accepted["id"]));
    assert_eq!(
        headers.get("idempotent-replayed").and_then(|v| v.to_str().ok()),
        Some("true")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_mid_produce_does_not_leave_its_claim_pending() {
    let stack = TestStack::start().unwrap();
    let gateway = start(&stack, |common, _| {
        common.kafka.produce_timeout = Duration::from_secs(2)
    })
    .await;
    let body = json!({"type": "order.created", "source": "shop"}).to_string();
    let send = |client: &reqwest::Client| {
        client
            .post(format!("{}/v1/events", gateway.url))
            .bearer_auth(&gateway.key)
            .header("content-type", "application/json")
            .header("idempotency-key", "order-2")
            .body(body.clone())
            .send()
    };
    stack.stop_kafka();
    // The client gives up while the gateway is still trying Kafka.
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    assert!(send(&impatient).await.is_err(), "the request should have timed out");
    // Once the produce has failed, the claim is released: a retry tries
    // again (503, Kafka is still down) instead of waiting on a claim nobody
    // holds (409 idempotency_in_progress until it goes stale).
    // Until the produce fails (its timeout), the claim is held: 409.
    let patient = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, _, error) = answer(send(&patient).await.unwrap()).await;
        let code = error["error"]["code"].as_str().map(str::to_owned);
        if status == 503 {
            assert_eq!(code.as_deref(), Some("unavailable"), "{error}");
            break;
        }
        assert_eq!(
            (status, code.as_deref()),
            (409, Some("idempotency_in_progress")),
            "{error}"
        );
        assert!(Instant::now() < deadline, "the claim was never released");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    stack.start_kafka().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, _, body) = answer(send(&patient).await.unwrap()).await;
        if status == 202 {
            assert!(body["id"].as_str().is_some_and(|id| id.starts_with("evt_")), "{body}");
            break;
        }
        assert_eq!(status, 503, "{body}");
        assert!(Instant::now() < deadline, "never accepted after the broker came back");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
