//! One event, one trace: the gateway's server span (child of the client's
//! `traceparent`) → its producer span → the router's and the persister's
//! process spans → the deliverer's process span → its HTTP client span,
//! whose context the webhook carries. Spans are collected by an in-test
//! OTLP/HTTP receiver from the real exporter.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{App, HttpResponse, HttpServer, web};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use parking_lot::Mutex;
use prost::Message as _;
use serde_json::json;
use triggers_core::config::{LogFormat, TelemetryConfig};

use crate::support::{Env, Receiver, env};

type Spans = Arc<Mutex<Vec<Span>>>;

async fn collect(body: web::Bytes, spans: web::Data<Spans>) -> HttpResponse {
    match ExportTraceServiceRequest::decode(body.as_ref()) {
        Ok(request) => {
            let mut spans = spans.lock();
            for resource in request.resource_spans {
                for scope in resource.scope_spans {
                    spans.extend(scope.spans);
                }
            }
            HttpResponse::Ok().finish()
        }
        Err(_) => HttpResponse::BadRequest().finish(),
    }
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref()?.value.clone())
        .map(|v| match v {
            AnyValue::StringValue(s) => s,
            AnyValue::IntValue(i) => i.to_string(),
            other => format!("{other:?}"),
        })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Sends an event of `kind` with the client's `traceparent`; the
/// `traceparent` its webhook carried.
async fn ingest_traced(env: &Env, receiver: &Receiver, traceparent: &str, kind: &str) -> String {
    let response = env
        .http
        .post(format!("{}/v1/events", env.base))
        .bearer_auth(&env.key)
        .header("traceparent", traceparent)
        .json(&json!({"type": kind, "source": "s"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 202);
    let id = response.json::<serde_json::Value>().await.unwrap_or_default()["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let webhook = env.attempts_of(receiver, &id, 1, Duration::from_secs(20)).await;
    webhook[0].header("traceparent").unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_event_is_one_trace_across_every_hop() {
    let spans: Spans = Arc::default();
    let data = web::Data::new(spans.clone());
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(web::PayloadConfig::new(16 << 20))
            .route("/v1/traces", web::post().to(collect))
    })
    .workers(1)
    .disable_signals()
    .bind("127.0.0.1:0")
    .unwrap();
    let collector = format!("http://{}", server.addrs()[0]);
    tokio::spawn(server.run());
    // The process-wide subscriber, as a service's main installs it.
    let _telemetry = triggers_core::telemetry::init(
        &TelemetryConfig {
            log_level: "warn".to_owned(),
            log_format: LogFormat::Pretty,
            otlp_endpoint: Some(collector),
            trace_sample_ratio: 1.0,
        },
        "triggers-test",
    )
    .unwrap();

    let env = env().await;
    let receiver = Receiver::default();
    env.subscribe(&receiver.start()).await;
    env.ingest_until_received(&receiver, json!({"type": "warm.up", "source": "s"}))
        .await;

    // A trace its client did not sample: nothing is exported, and the
    // webhook still carries the trace (flags 00) for the receiver to log.
    let unsampled_trace = "0af7651916cd43dd8448eb211c80319c";
    let unsampled_parent = ingest_traced(
        &env,
        &receiver,
        &format!("00-{unsampled_trace}-b7ad6b7169203331-00"),
        "untraced.item",
    )
    .await;
    let fields: Vec<&str> = unsampled_parent.split('-').collect();
    assert_eq!(fields.get(1).copied(), Some(unsampled_trace), "{unsampled_parent}");
    assert_eq!(
        fields.get(3).copied(),
        Some("00"),
        "still not sampled: {unsampled_parent}"
    );

    let (trace_id, client_span) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let traceparent = ingest_traced(
        &env,
        &receiver,
        &format!("00-{trace_id}-{client_span}-01"),
        "traced.item",
    )
    .await;
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(
        parts.get(1).copied(),
        Some(trace_id),
        "the webhook's traceparent: {traceparent}"
    );

    let topics = &env.common.topics;
    let named = |spans: &[Span], name: &str, service: &str| {
        spans
            .iter()
            .find(|s| s.name == name && attribute(s, "triggers.service").as_deref() == Some(service))
            .cloned()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let trace = loop {
        let trace: Vec<Span> = spans
            .lock()
            .iter()
            .filter(|s| hex(&s.trace_id) == trace_id)
            .cloned()
            .collect();
        let complete = named(&trace, "POST", "deliverer").is_some()
            && named(&trace, &format!("{} process", topics.events()), "persister").is_some()
            && named(&trace, &format!("{} process", topics.events()), "router").is_some();
        if complete {
            break trace;
        }
        assert!(
            Instant::now() < deadline,
            "incomplete trace: {:?}",
            trace
                .iter()
                .map(|s| (&s.name, attribute(s, "triggers.service")))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let find = |name: &str, service: &str| {
        named(&trace, name, service).unwrap_or_else(|| panic!("no {name} span of {service}"))
    };
    let server = find("POST /v1/events", "gateway");
    assert_eq!(
        hex(&server.parent_span_id),
        client_span,
        "the client's traceparent is the parent"
    );
    assert_eq!(server.kind, SpanKind::Server as i32);
    let publish = find(&format!("{} publish", topics.events()), "gateway");
    assert_eq!(publish.kind, SpanKind::Producer as i32);
    assert_eq!(publish.parent_span_id, server.span_id);
    assert_eq!(attribute(&publish, "messaging.system").as_deref(), Some("kafka"));
    assert_eq!(attribute(&publish, "messaging.destination.name"), Some(topics.events()));
    assert!(
        attribute(&publish, "messaging.kafka.offset").is_some(),
        "no offset on the producer span"
    );
    assert!(attribute(&publish, "messaging.destination.partition.id").is_some());
    for service in ["router", "persister"] {
        let process = find(&format!("{} process", topics.events()), service);
        assert_eq!(process.kind, SpanKind::Consumer as i32);
        assert_eq!(process.parent_span_id, publish.span_id, "{service}'s parent");
    }
    let router = find(&format!("{} process", topics.events()), "router");
    let delivery = find(&format!("{} process", topics.deliveries()), "deliverer");
    assert_eq!(delivery.parent_span_id, router.span_id, "the deliverer's parent");
    let client = find("POST", "deliverer");
    assert_eq!(client.kind, SpanKind::Client as i32);
    assert_eq!(client.parent_span_id, delivery.span_id);
    assert_eq!(attribute(&client, "http.response.status_code").as_deref(), Some("200"));
    assert_eq!(
        parts.get(2).copied(),
        Some(hex(&client.span_id).as_str()),
        "the webhook carries the client span"
    );
    // The unsampled event went through first; by the time the sampled
    // trace is exported, none of its spans were.
    let leaked: Vec<String> = spans
        .lock()
        .iter()
        .filter(|s| hex(&s.trace_id) == unsampled_trace)
        .map(|s| s.name.clone())
        .collect();
    assert!(
        leaked.is_empty(),
        "spans of an unsampled trace were exported: {leaked:?}"
    );
}
