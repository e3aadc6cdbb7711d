//! Every DynamoDB call asks for the capacity it consumed, and the client
//! records what DynamoDB answers (`triggers_dynamodb_capacity_units`): the
//! figures the capacity model (docs/capacity.md) is built on.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;

use crate::support::TestEnv;

/// The `_sum` of `triggers_dynamodb_capacity_units` for one operation,
/// table and kind in a Prometheus text exposition.
fn units(text: &str, operation: &str, table: &str, kind: &str) -> Option<f64> {
    text.lines()
        .filter(|line| line.starts_with("triggers_dynamodb_capacity_units_sum{"))
        .filter(|line| {
            line.contains(&format!("operation=\"{operation}\""))
                && line.contains(&format!("table=\"{table}\""))
                && line.contains(&format!("capacity=\"{kind}\""))
        })
        .find_map(|line| line.rsplit(' ').next()?.parse().ok())
}

#[tokio::test]
async fn every_call_records_the_capacity_dynamodb_charged() {
    let env = TestEnv::new().await;
    env.provision().await;
    let metrics = triggers_core::telemetry::metrics();
    let table = env.tables.events.clone();
    let key = |sk: &str| {
        HashMap::from([
            ("pk".to_owned(), AttributeValue::S("ten_capacity".to_owned())),
            ("sk".to_owned(), AttributeValue::S(sk.to_owned())),
        ])
    };

    // 2.5 KB: three write units (one per KB, rounded up); read back
    // strongly consistent: one read unit (per 4 KB).
    let mut item = key("e#big");
    item.insert("body".to_owned(), AttributeValue::S("x".repeat(2_500)));
    env.dynamo
        .put_item()
        .table_name(&table)
        .set_item(Some(item))
        .send()
        .await
        .unwrap();
    env.dynamo
        .get_item()
        .table_name(&table)
        .set_key(Some(key("e#big")))
        .consistent_read(true)
        .send()
        .await
        .unwrap();
    // Two small items in one batch: one unit each.
    let small = |sk: &str| {
        let mut item = key(sk);
        item.insert("body".to_owned(), AttributeValue::S("y".repeat(100)));
        aws_sdk_dynamodb::types::WriteRequest::builder()
            .put_request(
                aws_sdk_dynamodb::types::PutRequest::builder()
                    .set_item(Some(item))
                    .build()
                    .unwrap(),
            )
            .build()
    };
    env.dynamo
        .batch_write_item()
        .request_items(&table, vec![small("e#a"), small("e#b")])
        .send()
        .await
        .unwrap();
    // Two items read in one batch, eventually consistent: half a unit each
    // (per 4 KB).
    env.dynamo
        .batch_get_item()
        .request_items(
            &table,
            aws_sdk_dynamodb::types::KeysAndAttributes::builder()
                .keys(key("e#big"))
                .keys(key("e#a"))
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();

    let text = metrics.render();
    assert_eq!(units(&text, "PutItem", &table, "write"), Some(3.0), "{text}");
    assert_eq!(units(&text, "GetItem", &table, "read"), Some(1.0), "{text}");
    assert_eq!(units(&text, "BatchWriteItem", &table, "write"), Some(2.0), "{text}");
    assert_eq!(units(&text, "BatchGetItem", &table, "read"), Some(1.0), "{text}");
}
