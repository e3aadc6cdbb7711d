//! The payload from the client's request to the webhook and the events API,
//! as the client wrote it.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{Receiver, env, verify};

/// The payloads, as the requests write them: member order that is not
/// sorted, spacing, a number no float holds, escapes and non-ASCII text.
const SINGLE: &str = r#"{ "zeta": 1,
    "alpha": [1.50, 123456789012345678901234567890, -0.0],
    "text": "caf\u00e9 \"quoted\" é" }"#;
const IN_BATCH: &str = r#"[ {"b":2,"a":1}, null ]"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_payload_reaches_the_webhook_and_the_api_as_the_client_wrote_it() {
    let env = env().await;
    let receiver = Receiver::default();
    let url = receiver.start();
    let (_, secret) = env.subscribe(&url).await;

    let post = |path: &'static str, body: String| {
        env.api
            .http
            .post(format!("{}{path}", env.api.base))
            .bearer_auth(&env.api.key)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let single = post(
        "/v1/events",
        format!(r#"{{"type": "verbatim.one", "source": "s", "data": {SINGLE}}}"#),
    )
    .await
    .unwrap();
    assert_eq!(single.status(), 202);
    let single: Value = single.json().await.unwrap();
    let batch = post(
        "/v1/events/batch",
        format!(r#"{{"events": [{{"type": "verbatim.batch", "source": "s", "payload": {IN_BATCH}}}]}}"#),
    )
    .await
    .unwrap();
    assert_eq!(batch.status(), 202);
    let batch: Value = batch.json().await.unwrap();
    let ids = [
        (single["id"].as_str().unwrap().to_owned(), SINGLE),
        (batch["results"][0]["id"].as_str().unwrap().to_owned(), IN_BATCH),
    ];

    let received = receiver.wait_for(2, Duration::from_secs(30)).await;
    for (id, written) in &ids {
        let request = received
            .iter()
            .find(|r| r.header("webhook-id") == Some(id.as_str()))
            .unwrap_or_else(|| panic!("no webhook for {id}"));
        verify(&secret, request);
        let body = String::from_utf8(request.body.clone()).unwrap();
        assert!(body.starts_with(&format!(r#"{{"data":{written},"#)), "{body}");
    }

    // Stored, and read back through the events API with the same text.
    for (id, written) in &ids {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let answer = env
                .api
                .http
                .get(format!("{}/v1/events/{id}", env.api.base))
                .bearer_auth(&env.api.key)
                .send()
                .await
                .unwrap();
            let text = answer.text().await.unwrap();
            if text.contains(&format!(r#""data":{written},"#)) {
                break;
            }
            assert!(Instant::now() < deadline, "{id} not readable as written: {text}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
