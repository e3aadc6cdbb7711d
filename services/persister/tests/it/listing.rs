//! Listings stay bounded: payloads only up to a size and a byte budget per
//! page, and a selective filter answers a partial page with a cursor instead
//! of scanning the tenant's whole history in one request.

use serde_json::{Value, json};

use crate::support::env;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_bound_their_payload_bytes_and_their_scans() {
    let env = env().await;
    let filler = "x".repeat(100 * 1024);
    let mut big = Vec::new();
    for i in 0..24 {
        big.push(
            env.ingest(json!({"type": "big.item", "source": "s", "data": {"i": i, "filler": filler}}))
                .await,
        );
    }
    let larger = env
        .ingest(json!({"type": "big.item", "source": "s", "data": {"filler": "y".repeat(200 * 1024)}}))
        .await;
    let events: Vec<Value> = (0..120)
        .map(|i| json!({"type": "small.item", "source": "s", "data": {"i": i}}))
        .collect();
    let (status, answer) = env
        .call(
            reqwest::Method::POST,
            "/v1/events/batch",
            Some(json!({"events": events})),
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    for id in big.iter().chain([&larger]) {
        env.wait_event(id, |_| true).await;
    }
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while env.all_ids("/v1/events?type=small.item").await.len() < 120 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the small events were not all stored"
        );
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }

    let (status, page) = env
        .call(reqwest::Method::GET, "/v1/events?type=big.item&limit=100", None)
        .await;
    assert_eq!(status, 200, "{page}");
    let items = page["data"].as_array().cloned().unwrap_or_default();
    assert_eq!(items.len(), 25, "{}", items.len());
    let carried: usize = items
        .iter()
        .filter(|e| !e["data"].is_null())
        .map(|e| e["data"].to_string().len())
        .sum();
    assert!(carried <= 1024 * 1024 + 1024, "a page carried {carried} payload bytes");
    let omitted = items.iter().filter(|e| e["data_omitted"] == true).count();
    assert!(omitted >= 14, "only {omitted} payloads were left out");
    let large = items
        .iter()
        .find(|e| e["id"] == larger.as_str())
        .cloned()
        .unwrap_or_default();
    assert_eq!((&large["data"], &large["data_omitted"]), (&Value::Null, &json!(true)));
    // By id, the whole payload.
    let whole = env.wait_event(&larger, |_| true).await;
    assert_eq!(whole["data"]["filler"].as_str().map(str::len), Some(200 * 1024));

    // Nothing matches: the first answer is an empty page with a cursor (a
    // bounded scan), and following the cursors ends.
    let mut path = "/v1/events?type=nothing.here&limit=10".to_owned();
    let mut requests = 0;
    loop {
        requests += 1;
        assert!(requests < 100, "the cursors never end");
        let (status, page) = env.call(reqwest::Method::GET, &path, None).await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(page["data"].as_array().map(Vec::len), Some(0), "{page}");
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/events?type=nothing.here&limit=10&cursor={cursor}"),
            None => break,
        }
    }
    assert!(requests >= 2, "one request scanned all 145 events");
}
