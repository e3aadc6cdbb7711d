//! The event model: what flows through `triggers.events`.
//!
//! Attribute names follow [CloudEvents 1.0]. The payload (`data`) is any JSON
//! value; in Avro it travels as a JSON string inside the envelope, so the
//! schema never has to know the shape of a tenant's payloads. It is kept as
//! that text ([`Payload`]) from the gateway to the webhook: the services
//! carry, store and send it without building it as a tree, and only a
//! subscription filter on `data.<path>` reads it as a value.
//!
//! [CloudEvents 1.0]: https://github.com/cloudevents/spec/blob/v1.0.2/cloudevents/spec.md

use std::collections::BTreeMap;
use std::fmt;
use std::sync::OnceLock;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use serde_json::value::RawValue;

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
    /// The payload, any JSON value, as JSON text.
    #[serde(with = "json_text")]
    pub data: Payload,
    /// Overrides the tenant as the Kafka key, for ordering by something finer.
    pub partition_key: Option<String>,
    /// CloudEvents extension attributes, as strings.
    pub extensions: BTreeMap<String, String>,
}

impl Event {
    /// A new event of `tenant` happening now, with a new id and no subject,
    /// partition key or extensions.
    pub fn new(tenant: TenantId, event_type: &str, source: &str, data: Value) -> Self {
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
            data: Payload::from(&data),
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

/// An event's payload: valid JSON text, kept as it was written (no
/// reordering, no loss of precision in numbers), and its value, parsed on
/// first use and kept.
///
/// Written to JSON it is its text, verbatim; two payloads are equal when
/// their values are.
#[derive(Clone)]
pub struct Payload {
    text: Box<RawValue>,
    value: OnceLock<Value>,
}

impl Payload {
    /// `null`: an event without data.
    pub fn null() -> Self {
        Self::from_raw(RawValue::NULL.to_owned())
    }

    /// The payload of JSON `text`, checked to be one JSON value.
    pub fn from_text(text: String) -> Result<Self, serde_json::Error> {
        RawValue::from_string(text).map(Self::from_raw)
    }

    /// The payload of JSON text already checked by `serde_json`.
    pub fn from_raw(text: Box<RawValue>) -> Self {
        Self {
            text,
            value: OnceLock::new(),
        }
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        self.text.get()
    }

    /// The value, parsed on the first call. `null` for a payload with a
    /// number beyond a double's range, which JSON allows and `Value` cannot
    /// hold.
    pub fn value(&self) -> &Value {
        // The text is valid JSON (every constructor checks it); only a
        // number out of a double's range fails the parse.
        self.value
            .get_or_init(|| serde_json::from_str(self.text.get()).unwrap_or(Value::Null))
    }

    /// Whether the payload is `null`.
    pub fn is_null(&self) -> bool {
        self.text.get() == "null"
    }
}

impl Default for Payload {
    fn default() -> Self {
        Self::null()
    }
}

impl From<&Value> for Payload {
    fn from(value: &Value) -> Self {
        // Writing a `Value` does not fail: its map keys are strings.
        match serde_json::value::to_raw_value(value) {
            Ok(text) => Self::from_raw(text),
            Err(_) => Self::null(),
        }
    }
}

impl From<Value> for Payload {
    fn from(value: Value) -> Self {
        Self::from(&value)
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq for Payload {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str() || self.value() == other.value()
    }
}

impl PartialEq<Value> for Payload {
    fn eq(&self, other: &Value) -> bool {
        self.value() == other
    }
}

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.text.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Box::<RawValue>::deserialize(d).map(Self::from_raw)
    }
}

/// (De)serializes a payload as its JSON text in a string, for Avro `string`
/// fields.
pub mod json_text {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::Payload;

    /// Writes the payload's text.
    pub fn serialize<S: Serializer>(payload: &Payload, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(payload.as_str())
    }

    /// Reads JSON text, checking that it is JSON.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Payload, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Payload::from_text(text.into_owned()).map_err(serde::de::Error::custom)
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_payload_keeps_its_text_and_compares_by_value() {
        let written = r#"{ "b": [1, 2.50],
            "a": 123456789012345678901234567890 }"#;
        let payload = Payload::from_text(written.to_owned()).unwrap();
        assert_eq!(payload.as_str(), written);
        // Written into JSON as it is, not as a reformatted tree.
        assert_eq!(serde_json::to_string(&payload).unwrap(), written);
        let compact = Payload::from(json!({"a": 123456789012345678901234567890.0, "b": [1, 2.5]}));
        assert_eq!(compact.as_str(), r#"{"a":1.2345678901234568e+29,"b":[1,2.5]}"#);
        assert_eq!(payload, compact, "equal values");
        assert_ne!(payload, Payload::from(json!({"a": 1, "b": [1, 2.5]})));
        assert_eq!(payload.value()["b"][1], json!(2.5));
        assert!(Payload::null().is_null() && Payload::default() == json!(null));
        assert!(!Payload::from(json!("null")).is_null());
    }

    #[test]
    fn text_that_is_not_one_json_value_is_not_a_payload() {
        for text in ["", "{", "{\"a\": 1", "1 2", "nul", "{\"a\": 1}}", "'x'"] {
            assert!(Payload::from_text(text.to_owned()).is_err(), "{text:?}");
        }
        assert!(serde_json::from_str::<Payload>("[1, {\"x\": null}]").is_ok());
        // JSON allows numbers beyond a double: carried as written, read as
        // null (docs/status.md).
        let huge = Payload::from_text("{\"n\": 1e400}".to_owned()).unwrap();
        assert_eq!(huge.as_str(), "{\"n\": 1e400}");
        assert!(huge.value().is_null());
    }

    #[test]
    fn events_carry_their_payload_as_json_text_in_a_string() {
        let mut event = Event::new(TenantId::new(), "a.b", "/s", json!(null));
        event.data = Payload::from_text("{ \"z\": 1, \"a\": 2 }".to_owned()).unwrap();
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["data"], json!("{ \"z\": 1, \"a\": 2 }"));
        let back: Event = serde_json::from_value(json).unwrap();
        assert_eq!(back.data.as_str(), event.data.as_str());
    }
}
