use std::time::{Duration, Instant};

use serde_json::json;
use triggers_stack::TestStack;

use crate::support::start;

/// With the broker down the client gets 503 with Retry-After within the
/// produce timeout (never a 202, never a hang); once it is back, events are
/// accepted again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_broker_gives_503_and_recovery_follows() {
    let stack = TestStack::start().unwrap();
    let gateway = start(&stack, |common, _| {
        common.kafka.produce_timeout = Duration::from_secs(2)
    })
    .await;
    let send = || {
        gateway
            .post("/v1/events")
            .json(&json!({"type": "t", "source": "s"}))
            .send()
    };
    assert_eq!(send().await.map(|r| r.status().as_u16()).ok(), Some(202));

    stack.stop_kafka();
    let started = Instant::now();
    let response = send().await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(response.status().as_u16(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    assert_eq!(body["error"]["code"], "unavailable");
    assert!(elapsed < Duration::from_secs(10), "answered after {elapsed:?}");

    stack.start_kafka().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = send().await.map(|r| r.status().as_u16()).unwrap_or(0);
        if status == 202 {
            break;
        }
        assert_eq!(status, 503, "only 503 while recovering");
        if Instant::now() >= deadline {
            let log = std::fs::read_to_string(stack.dir().join("tansu.log")).unwrap_or_default();
            let tail: Vec<&str> = log
                .lines()
                .filter(|l| !l.contains("UnableToSend") && !l.contains("SendError"))
                .rev()
                .take(40)
                .collect();
            panic!(
                "no recovery within 60s; tansu log tail:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
