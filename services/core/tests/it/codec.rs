use std::collections::BTreeMap;

use serde_json::json;
use triggers_core::CancellationToken;
use triggers_core::codec::{AvroCodec, CodecError, Contract};
use triggers_core::event::{Event, JSON_CONTENT_TYPE, Payload, SPEC_VERSION, now_ms};
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
        data: data.into(),
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
    // A payload's text travels as written: member order, spacing, and
    // numbers beyond what a float holds.
    let written = "{ \"zeta\": 1,\n  \"alpha\": 123456789012345678901234567890.000000000000000001 }";
    let mut original = event(json!(null));
    original.data = Payload::from_text(written.to_owned()).expect("JSON");
    let bytes = codec.encode(&topic, Contract::Event, &original).await.expect("encode");
    schema_ids.push(triggers_core::codec::schema_id(&bytes));
    let decoded: Event = codec.decode(Contract::Event, &bytes).await.expect("decode");
    assert_eq!(decoded.data.as_str(), written);
    schema_ids.dedup();
    assert_eq!(schema_ids.len(), 1, "one schema id for every event: {schema_ids:?}");

    // Data that is not JSON is refused, not read as null.
    let mut record = serde_json::to_value(&original).expect("event as JSON");
    record["data"] = json!("{\"unclosed\": ");
    assert!(serde_json::from_value::<Event>(record).is_err());

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

#[tokio::test]
async fn records_of_an_older_schema_version_in_the_registry_are_resolved() {
    let shutdown = CancellationToken::new();
    let mut env = TestEnv::new().await;
    let _registry = env.with_registry(shutdown.clone()).await;
    let codec = AvroCodec::new(&env.common.schema_registry).unwrap();

    // A Kafka-native producer still on an older event schema: no
    // partition_key nor extensions, and a field this build does not know.
    let mut older: serde_json::Value = serde_json::from_str(Contract::Event.schema_json()).unwrap();
    let fields = older["fields"].as_array_mut().unwrap();
    fields.retain(|f| f["name"] != "partition_key" && f["name"] != "extensions");
    fields.push(json!({"name": "legacy_priority", "type": "int"}));
    let registered: serde_json::Value = reqwest::Client::new()
        .post(format!(
            "{}/subjects/legacy-producer-value/versions",
            env.common.schema_registry.url
        ))
        .header("content-type", "application/vnd.schemaregistry.v1+json")
        .json(&json!({"schema": older.to_string()}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = u32::try_from(registered["id"].as_u64().expect("an id")).unwrap();

    let original = event(json!({"legacy": true}));
    let schema = apache_avro::Schema::parse_str(&older.to_string()).unwrap();
    let mut record = apache_avro::types::Record::new(&schema).unwrap();
    record.put("id", original.id.to_string());
    record.put("tenant", original.tenant.to_string());
    record.put("type", original.event_type.clone());
    record.put("source", original.source.clone());
    record.put(
        "subject",
        apache_avro::types::Value::Union(0, Box::new(apache_avro::types::Value::Null)),
    );
    record.put("time", original.time);
    record.put("received_at", original.received_at);
    record.put("specversion", original.specversion.clone());
    record.put("datacontenttype", original.datacontenttype.clone());
    record.put("data", original.data.to_string());
    record.put("legacy_priority", 3);
    let mut bytes = vec![0];
    bytes.extend_from_slice(&id.to_be_bytes());
    bytes.extend(
        apache_avro::writer::datum::GenericDatumWriter::builder(&schema)
            .build()
            .and_then(|writer| writer.write_value_to_vec(record))
            .unwrap(),
    );

    for _ in 0..2 {
        // The second time from the codec's cache of readers.
        let decoded: Event = codec.decode(Contract::Event, &bytes).await.expect("decode");
        let expected = Event {
            subject: None,
            partition_key: None,
            extensions: BTreeMap::new(),
            ..original.clone()
        };
        assert_eq!(decoded, expected);
    }
    // This build's own records still read straight alongside.
    let current = event(json!({"current": 1}));
    let own = codec
        .encode(&env.common.topics.events(), Contract::Event, &current)
        .await
        .unwrap();
    assert_ne!(triggers_core::codec::schema_id(&own), Some(id));
    assert_eq!(codec.decode::<Event>(Contract::Event, &own).await.unwrap(), current);
    shutdown.cancel();
}
