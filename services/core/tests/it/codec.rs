use std::collections::BTreeMap;

use serde_json::json;
use triggers_core::CancellationToken;
use triggers_core::codec::{AvroCodec, CodecError, Contract};
use triggers_core::event::{Event, JSON_CONTENT_TYPE, SPEC_VERSION, now_ms};
use triggers_core::ids::{EventId, TenantId};

use crate::support::TestEnv;

fn event(data: serde_json::Value) -> Event {
    Event {
        id: EventId::new(),
        tenant: TenantId::new(),
        event_type: "order.created".to_owned(),
        source: "https://shop.example/orders".to_owned(),
        subject: Some("order-42".to_owned()),
        time: now_ms() - 5,
        received_at: now_ms(),
        specversion: SPEC_VERSION.to_owned(),
        datacontenttype: JSON_CONTENT_TYPE.to_owned(),
        data,
        partition_key: None,
        extensions: BTreeMap::from([("traceparent".to_owned(), "00-abc-def-01".to_owned())]),
    }
}

#[tokio::test]
async fn events_of_any_payload_shape_round_trip_through_avro_and_the_registry() {
    let shutdown = CancellationToken::new();
    let mut env = TestEnv::new().await;
    let _registry = env.with_registry(shutdown.clone()).await;
    let codec = AvroCodec::new(&env.common.schema_registry).unwrap();
    let topic = env.common.topics.events();

    let big_array: Vec<serde_json::Value> = (0..2_000).map(|i| json!({"i": i, "s": "x".repeat(i % 7)})).collect();
    let payloads = vec![
        json!({"order_id": 42, "total": 19.99, "items": [{"sku": "A", "qty": 2}], "gift": false}),
        json!([1, "two", null, {"three": [3.0]}]),
        json!("just a string"),
        json!(12345678901234_i64),
        json!(-0.5),
        json!(true),
        json!(null),
        json!({}),
        json!({"unicode": "Grüße, 世界 🎉", "escapes": "quote \" backslash \\ newline \n"}),
        json!({"deep": {"a": {"b": {"c": {"d": {"e": [[[[1]]]]}}}}}}),
        json!(big_array),
    ];
    let mut schema_ids = Vec::new();
    for data in payloads {
        let mut original = event(data);
        original.subject = None;
        original.partition_key = Some("customer-7".to_owned());
        let bytes = codec.encode(&topic, Contract::Event, &original).await.expect("encode");
        assert_eq!(bytes[0], 0, "Confluent magic byte");
        schema_ids.push(triggers_core::codec::schema_id(&bytes));
        let decoded: Event = codec.decode(Contract::Event, &bytes).await.expect("decode");
        assert_eq!(decoded, original);
    }
    schema_ids.dedup();
    assert_eq!(schema_ids.len(), 1, "one schema id for every event: {schema_ids:?}");

    // The schema is registered under <topic>-value and readable by id.
    let url = format!(
        "{}/subjects/{topic}-value/versions/latest",
        env.common.schema_registry.url
    );
    let latest: serde_json::Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
    assert_eq!(latest["version"], 1);
    assert_eq!(latest["id"].as_u64(), schema_ids[0].map(u64::from));
    shutdown.cancel();
}

#[tokio::test]
async fn undecodable_records_are_told_apart() {
    let shutdown = CancellationToken::new();
    let mut env = TestEnv::new().await;
    let _registry = env.with_registry(shutdown.clone()).await;
    let codec = AvroCodec::new(&env.common.schema_registry).unwrap();

    let error = codec
        .decode::<Event>(Contract::Event, b"{\"json\": true}")
        .await
        .expect_err("decoded JSON as Avro");
    assert!(matches!(error, CodecError::BadMagic), "{error}");
    assert!(!error.is_retriable());

    let error = codec
        .decode::<Event>(Contract::Event, &[0, 0, 0, 0x7f, 0x7f, 2, 4])
        .await
        .expect_err("decoded an unknown schema id");
    assert!(matches!(error, CodecError::UnknownSchema { id: 0x7f7f, .. }), "{error}");
    assert_eq!(error.reason(), "unknown_schema_id");

    // A valid prefix with a registered id but bytes that are not an Event.
    let good = codec
        .encode(&env.common.topics.events(), Contract::Event, &event(json!({"a": 1})))
        .await
        .unwrap();
    let mut truncated = good[..8].to_vec();
    truncated.push(0xff);
    let error = codec
        .decode::<Event>(Contract::Event, &truncated)
        .await
        .expect_err("decoded truncated Avro");
    assert!(matches!(error, CodecError::InvalidAvro { .. }), "{error}");
    shutdown.cancel();
}
