use serde_json::json;
use triggers_stack::TestStack;

use crate::support::{answer, start};

/// Every error status of the ingest path, each in the documented shape with
/// a request id that matches the `x-request-id` header.
#[tokio::test]
async fn every_error_status_is_structured() {
    let gateway = start(TestStack::shared(), |_, config| config.max_body_bytes = 4096).await;
    let check = |status: u16, code: &'static str, response: reqwest::Response| async move {
        let (got, headers, body) = answer(response).await;
        assert_eq!(got, status, "{body}");
        assert_eq!(body["error"]["code"], code, "{body}");
        assert!(
            body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{body}"
        );
        let header_id = headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert!(!header_id.is_empty());
        assert_eq!(body["error"]["request_id"], header_id.as_str(), "{body}");
        body
    };
    let send = |builder: reqwest::RequestBuilder| async move { builder.send().await.unwrap() };

    // 413: over the limit, refused from Content-Length, before reading.
    check(
        413,
        "payload_too_large",
        send(gateway.post("/v1/events").body(vec![b' '; 5000])).await,
    )
    .await;
    // 413 also for a chunked body with no length.
    let chunks = futures::stream::iter((0..10).map(|_| Ok::<_, std::io::Error>(vec![b' '; 1000])));
    check(
        413,
        "payload_too_large",
        send(gateway.post("/v1/events").body(reqwest::Body::wrap_stream(chunks))).await,
    )
    .await;
    check(
        400,
        "invalid_json",
        send(gateway.post("/v1/events").body("{not json")).await,
    )
    .await;
    check(400, "invalid_json", send(gateway.post("/v1/events").body("")).await).await;
    check(
        400,
        "invalid_utf8",
        send(gateway.post("/v1/events").body(vec![b'"', 0xff, 0xfe, b'"'])).await,
    )
    .await;
    check(
        415,
        "unsupported_media_type",
        send(
            gateway
                .http
                .post(format!("{}/v1/events", gateway.url))
                .bearer_auth(&gateway.key)
                .header("content-type", "text/plain")
                .body("{}"),
        )
        .await,
    )
    .await;
    let body = check(
        422,
        "invalid_field",
        send(gateway.post("/v1/events").body(json!({"source": "s"}).to_string())).await,
    )
    .await;
    assert_eq!(body["error"]["field"], "type");
    let body = check(
        422,
        "invalid_field",
        send(
            gateway
                .post("/v1/events")
                .body(json!({"type": "t", "source": 5}).to_string()),
        )
        .await,
    )
    .await;
    assert_eq!(body["error"]["field"], "source");
    check(
        401,
        "unauthorized",
        send(gateway.http.post(format!("{}/v1/events", gateway.url)).body("{}")).await,
    )
    .await;
    check(
        401,
        "unauthorized",
        send(
            gateway
                .http
                .post(format!("{}/v1/events", gateway.url))
                .bearer_auth("tk_not_a_real_key"),
        )
        .await,
    )
    .await;
    check(
        404,
        "not_found",
        send(gateway.http.get(format!("{}/v1/nothing", gateway.url))).await,
    )
    .await;
    // A path that exists with other methods: 405 and the ones it has.
    let wrong_method = send(gateway.http.put(format!("{}/v1/events", gateway.url))).await;
    assert_eq!(
        wrong_method.headers().get("allow").and_then(|v| v.to_str().ok()),
        Some("GET, POST")
    );
    check(405, "method_not_allowed", wrong_method).await;
    let trace = send(
        gateway
            .http
            .request(reqwest::Method::TRACE, format!("{}/health", gateway.url)),
    )
    .await;
    assert_eq!(trace.headers().get("allow").and_then(|v| v.to_str().ok()), Some("GET"));
    check(405, "method_not_allowed", trace).await;
    check(
        400,
        "bad_request",
        send(
            gateway
                .post("/v1/events")
                .header("idempotency-key", "has space")
                .body(json!({"type": "t", "source": "s"}).to_string()),
        )
        .await,
    )
    .await;
}

#[tokio::test]
async fn operations_openapi_and_docs_are_served() {
    let gateway = start(TestStack::shared(), |_, _| {}).await;
    triggers_stack::assert_ops_endpoints(&gateway.url).await;
    let metrics = gateway
        .http
        .get(format!("{}/metrics", gateway.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap_or_default();
    assert!(metrics.contains("triggers_http_requests_total"), "{metrics}");

    let doc: serde_json::Value = gateway
        .http
        .get(format!("{}/openapi.json", gateway.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.1")),
        "{}",
        doc["openapi"]
    );
    // The document and the served routes come from the same code: every
    // route is described, and nothing else is.
    let mut described = Vec::new();
    for (path, operations) in doc["paths"].as_object().cloned().unwrap_or_default() {
        for method in operations
            .as_object()
            .map(|o| o.keys().cloned().collect::<Vec<_>>())
            .unwrap_or_default()
        {
            described.push((method, path.clone()));
        }
    }
    let mut served: Vec<(String, String)> = triggers_gateway::api::ROUTES
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    described.sort();
    served.sort();
    assert_eq!(described, served);

    let docs = gateway.http.get(format!("{}/docs", gateway.url)).send().await.unwrap();
    assert!(
        docs.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/html"))
    );
    let html = docs.text().await.unwrap_or_default();
    assert!(
        html.contains("/v1/events/batch") && html.contains("EventInput"),
        "{html}"
    );
}

#[test]
fn the_error_catalog_documents_every_code() {
    let catalog =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/errors.md")).expect("docs/errors.md");
    for code in triggers_gateway::error::CODES {
        assert!(
            catalog.contains(&format!("`{code}`")),
            "docs/errors.md does not document `{code}`"
        );
    }
}
