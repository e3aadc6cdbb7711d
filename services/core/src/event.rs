//! The event model: what flows through `triggers.events`.
//!
//! Attribute names follow [CloudEvents 1.0]. The payload (`data`) is any JSON
//! value; in Avro it travels as a JSON string inside the envelope, so the
//! schema never has to know the shape of a tenant's payloads.
//!
//! [CloudEvents 1.0]: https://github.com/cloudevents/spec/blob/v1.0.2/cloudevents/spec.md

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::{EventId, TenantId};

/// The CloudEvents spec version every event carries.
pub const SPEC_VERSION: &str = "1.0";
/// The content type of `data` when the producer does not say otherwise.
pub const JSON_CONTENT_TYPE: &str = "application/json";

/// One event, as stored in `triggers.events` (Avro record `triggers.v1.Event`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Unique per tenant; chosen by the producer or assigned by the gateway.
    pub id: EventId,
    /// The tenant the event belongs to; the partition key unless
    /// `partition_key` says otherwise.
    pub tenant: TenantId,
    /// What happened, e.g. `order.created` (CloudEvents `type`).
    #[serde(rename = "type")]
    pub event_type: String,
    /// Who says it happened, a URI-reference (CloudEvents `source`).
    pub source: String,
    /// What it happened to, within the source (CloudEvents `subject`).
    pub subject: Option<String>,
    /// When it happened, milliseconds since the Unix epoch (CloudEvents `time`).
    pub time: i64,
    /// When Triggers accepted it, milliseconds since the Unix epoch.
    pub received_at: i64,
    /// Always [`SPEC_VERSION`].
    pub specversion: String,
    /// The media type of `data`.
    pub datacontenttype: String,
    /// The payload, any JSON value.
    #[serde(with = "json_text")]
    pub data: serde_json::Value,
    /// Overrides the tenant as the Kafka key, for ordering by something finer.
    pub partition_key: Option<String>,
    /// CloudEvents extension attributes, as strings.
    pub extensions: BTreeMap<String, String>,
}

impl Event {
    /// A new event of `tenant` happening now, with a new id and no subject,
    /// partition key or extensions.
    pub fn new(tenant: TenantId, event_type: &str, source: &str, data: serde_json::Value) -> Self {
        let now = now_ms();
        Self {
            id: EventId::new(),
            tenant,
            event_type: event_type.to_owned(),
            source: source.to_owned(),
            subject: None,
            time: now,
            received_at: now,
            specversion: SPEC_VERSION.to_owned(),
            datacontenttype: JSON_CONTENT_TYPE.to_owned(),
            data,
            partition_key: None,
            extensions: BTreeMap::new(),
        }
    }

    /// The Kafka record key: `partition_key` when given, else the tenant.
    pub fn kafka_key(&self) -> String {
        match &self.partition_key {
            Some(key) => key.clone(),
            None => self.tenant.to_string(),
        }
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(now.as_millis()).unwrap_or(i64::MAX)
}

/// (De)serializes a JSON value as its JSON text, for Avro `string` fields.
pub mod json_text {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes the value as compact JSON text, serialized straight into a
    /// buffer: `Value`'s `Display`, used before, goes through `fmt::Write`,
    /// and a 1 KB event's whole encode took 1.75-1.80 µs with it against
    /// 1.40-1.50 (`codec-bench`, loadtest/RESULTS.md).
    pub fn serialize<S: Serializer>(value: &serde_json::Value, s: S) -> Result<S::Ok, S::Error> {
        let mut text = Vec::with_capacity(256);
        serde_json::to_writer(&mut text, value).map_err(serde::ser::Error::custom)?;
        let text = String::from_utf8(text).map_err(serde::ser::Error::custom)?;
        s.serialize_str(&text)
    }

    /// Reads JSON text back into a value.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<serde_json::Value, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        serde_json::from_str(&text).map_err(serde::de::Error::custom)
    }
}

/// RFC 3339 (UTC, milliseconds) of milliseconds since the epoch.
pub fn rfc3339(ms: i64) -> String {
    use time::format_description::well_known::Rfc3339;
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// Milliseconds since the epoch of an RFC 3339 time.
pub fn parse_rfc3339(value: &str) -> Option<i64> {
    use time::format_description::well_known::Rfc3339;
    let time = time::OffsetDateTime::parse(value, &Rfc3339).ok()?;
    i64::try_from(time.unix_timestamp_nanos() / 1_000_000).ok()
}
