use std::time::Duration;

use serde_json::json;
use triggers_core::ids::TenantId;
use triggers_stack::topics::{header, read_topic};

use crate::support::env;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_native_records_are_routed_and_poison_is_quarantined() {
    let env = env().await;
    let all = env
        .subscribe(json!({"target_url": "http://hooks.test/all", "event_types": ["*"]}))
        .await;

    // An Avro record written straight to the topic is routed like an HTTP one.
    let native = env.native_event(env.tenant, "invoice.paid", json!({"invoice": 7}));
    env.produce_native(&native).await;
    assert_eq!(env.routed_to(&native.id.to_string()).await, vec![all.clone()]);

    // Poison: not Avro, an unknown schema id, invalid Avro, a payload that
    // is not JSON, an unknown tenant.
    env.produce_raw(&env.tenant.to_string(), b"{\"json\": \"not avro\"}")
        .await;
    env.produce_raw(&env.tenant.to_string(), &[0, 0, 0, 0x7f, 0x01, 2, 4])
        .await;
    let good = env.encoded(&native).await;
    env.produce_raw(&env.tenant.to_string(), &good[..9]).await;
    // Avro that fits the schema, with `data` text that is not JSON: the
    // JSON string `"zq9zq9"` made `{zq9zq9` in the record's bytes.
    let marked = env.native_event(env.tenant, "invoice.paid", json!("zq9zq9"));
    let mut not_json = env.encoded(&marked).await;
    let at = not_json
        .windows(8)
        .position(|w| w == b"\"zq9zq9\"")
        .expect("the payload's text in the record");
    not_json[at] = b'{';
    env.produce_raw(&env.tenant.to_string(), &not_json).await;
    let stranger = env.native_event(TenantId::new(), "invoice.paid", json!({}));
    env.produce_native(&stranger).await;
    // … and the next good record still flows.
    let after = env.native_event(env.tenant, "invoice.paid", json!({"invoice": 8}));
    env.produce_native(&after).await;
    assert_eq!(env.routed_to(&after.id.to_string()).await, vec![all]);

    let invalid = read_topic(
        &env.common.kafka.bootstrap_servers,
        &env.common.topics.events_invalid(),
        5,
        Duration::from_secs(15),
    )
    .await;
    // Records of different keys may sit on different partitions: compare as a set.
    let mut reasons: Vec<String> = invalid
        .iter()
        .filter_map(|m| header(m, "triggers-error-reason"))
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        [
            "bad_magic_byte",
            "invalid_avro",
            "invalid_avro",
            "unknown_schema_id",
            "unknown_tenant"
        ]
    );
    for message in &invalid {
        assert!(header(message, "triggers-source-offset").is_some());
        assert!(header(message, "triggers-error-message").is_some_and(|m| !m.is_empty()));
    }
    // The quarantined record is the original, byte for byte.
    use rdkafka::Message;
    let bad_magic = invalid
        .iter()
        .find(|m| header(m, "triggers-error-reason").as_deref() == Some("bad_magic_byte"))
        .expect("no bad_magic_byte record");
    assert_eq!(bad_magic.payload(), Some(&b"{\"json\": \"not avro\"}"[..]));
    // The stranger's event was never routed.
    let outcomes = env.outcomes(usize::MAX, Duration::from_secs(1)).await;
    assert!(
        outcomes
            .iter()
            .all(|o| o.event_id != stranger.id && o.event_id != marked.id)
    );

    let metrics = reqwest::get(format!(
        "http://{}/metrics",
        env.router.as_ref().map(|r| r.addr.to_string()).unwrap_or_default()
    ))
    .await
    .unwrap()
    .text()
    .await
    .unwrap_or_default();
    assert!(metrics.contains("triggers_router_invalid_events_total"), "{metrics}");
}
