//! Turning a request body into events: CloudEvents attribute names,
//! `payload` as an alias of `data`, every problem a 422 naming its field.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use triggers_core::event::{Event, JSON_CONTENT_TYPE, Payload, SPEC_VERSION};
use triggers_core::ids::{EventId, TenantId};

use crate::error::ApiError;

/// Attributes with a meaning of their own; anything else is an extension.
const KNOWN: &[&str] = &[
    "id",
    "type",
    "source",
    "subject",
    "time",
    "specversion",
    "datacontenttype",
    "dataschema",
    "data",
    "payload",
    "data_base64",
    "partition_key",
];

/// The most extension attributes per event.
const MAX_EXTENSIONS: usize = 32;

/// The longest attributes (characters), as `/openapi.json` states them
/// ([`EventInput`]; a unit test keeps the two equal).
const TYPE_MAX: usize = 256;
const SOURCE_MAX: usize = 1024;
const ID_MAX: usize = 64;
const SUBJECT_MAX: usize = 1024;
const TIME_MAX: usize = 64;
const SPECVERSION_MAX: usize = 16;
const CONTENT_TYPE_MAX: usize = 256;
const PARTITION_KEY_MAX: usize = 256;

fn text<'a>(
    object: &'a Map<String, Value>,
    name: &str,
    path: &str,
    max: usize,
    required: bool,
) -> Result<Option<&'a str>, ApiError> {
    // The field's name is built only for an error: this runs for every
    // attribute of every event.
    let field = || format!("{path}{name}");
    match object.get(name) {
        None | Some(Value::Null) if required => Err(ApiError::field(field(), "is required")),
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() && required => Err(ApiError::field(field(), "must not be empty")),
        Some(Value::String(s)) if s.len() > max && s.chars().count() > max => {
            Err(ApiError::field(field(), format!("must be at most {max} characters")))
        }
        Some(Value::String(s)) if s.chars().any(char::is_control) => {
            Err(ApiError::field(field(), "must not contain control characters"))
        }
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ApiError::field(field(), "must be a string")),
    }
}

pub use triggers_core::event::{parse_rfc3339 as parse_time, rfc3339 as format_time};

/// The extension attributes of an event: every attribute without a meaning
/// of its own, named 1-20 lowercase letters or digits, with a string,
/// number or boolean value (stored as text; `null` is left out).
fn extensions(object: &Map<String, Value>, path: &str) -> Result<BTreeMap<String, String>, ApiError> {
    let mut extensions = BTreeMap::new();
    for (name, value) in object {
        if KNOWN.contains(&name.as_str()) {
            continue;
        }
        let field = || format!("{path}{name}");
        let valid_name =
            !name.is_empty() && name.len() <= 20 && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        if !valid_name {
            return Err(ApiError::field(
                field(),
                "is not a known attribute, and extension attribute names are 1-20 lowercase letters or digits",
            ));
        }
        let value = match value {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Null => continue,
            _ => {
                return Err(ApiError::field(
                    field(),
                    "extension attributes must be strings, numbers or booleans",
                ));
            }
        };
        if value.len() > 1024 {
            return Err(ApiError::field(field(), "must be at most 1024 characters"));
        }
        extensions.insert(name.clone(), value);
    }
    if extensions.len() > MAX_EXTENSIONS {
        return Err(ApiError::field(
            if path.is_empty() {
                "the body"
            } else {
                path.trim_end_matches('.')
            }
            .to_owned(),
            format!("has more than {MAX_EXTENSIONS} extension attributes"),
        ));
    }
    Ok(extensions)
}

/// One event object as the client wrote it: its attributes as values, its
/// payload (`data`, or its alias `payload`) still as its JSON text. The
/// payload is the bulk of an event; it is checked to be JSON and then
/// carried as that text (`Payload`), never built as a tree.
#[derive(Debug)]
pub struct Fields {
    object: Map<String, Value>,
    data: Option<Payload>,
    payload: Option<Payload>,
}

impl Fields {
    /// The fields of the JSON text of one event; `path` prefixes field
    /// names in errors (`events[3].`).
    pub fn parse(text: &str, path: &str) -> Result<Self, ApiError> {
        serde_json::from_str(text).map_err(|e| {
            if e.is_data() {
                // Valid JSON, but not an object.
                not_an_object(path)
            } else {
                ApiError::InvalidJson(e.to_string())
            }
        })
    }

    /// The fields of a JSON value (the payload written back to text).
    pub fn of_value(value: Value, path: &str) -> Result<Self, ApiError> {
        let Value::Object(mut object) = value else {
            return Err(not_an_object(path));
        };
        let data = object.remove("data").map(Payload::from);
        let payload = object.remove("payload").map(Payload::from);
        Ok(Self { object, data, payload })
    }

    /// Whether the client left the id to the gateway.
    pub fn assigns_id(&self) -> bool {
        !self.object.contains_key("id")
    }
}

fn not_an_object(path: &str) -> ApiError {
    let what = if path.is_empty() {
        "the body"
    } else {
        path.trim_end_matches('.')
    };
    ApiError::field(what, "must be a JSON object")
}

impl<'de> serde::Deserialize<'de> for Fields {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Object;
        impl<'de> Visitor<'de> for Object {
            type Value = Fields;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields, A::Error> {
                let mut fields = Fields {
                    object: Map::new(),
                    data: None,
                    payload: None,
                };
                // A name given twice keeps its last value, as a JSON object
                // read whole does.
                while let Some(name) = map.next_key::<String>()? {
                    match name.as_str() {
                        "data" => fields.data = Some(map.next_value()?),
                        "payload" => fields.payload = Some(map.next_value()?),
                        _ => {
                            let value: Value = map.next_value()?;
                            fields.object.insert(name, value);
                        }
                    }
                }
                Ok(fields)
            }
        }
        d.deserialize_map(Object)
    }
}

/// Builds the event of one JSON object; `path` prefixes field names in
/// errors (`events[3].`).
pub fn event_from_json(value: Value, tenant: TenantId, received_at: i64, path: &str) -> Result<Event, ApiError> {
    event_from_fields(Fields::of_value(value, path)?, tenant, received_at, path)
}

/// Builds the event of one object's fields; `path` prefixes field names in
/// errors (`events[3].`).
pub fn event_from_fields(fields: Fields, tenant: TenantId, received_at: i64, path: &str) -> Result<Event, ApiError> {
    let Fields { object, data, payload } = fields;
    if let Some(version) = text(&object, "specversion", path, SPECVERSION_MAX, false)?
        && version != SPEC_VERSION
    {
        return Err(ApiError::field(format!("{path}specversion"), "must be \"1.0\""));
    }
    let event_type = text(&object, "type", path, TYPE_MAX, true)?
        .unwrap_or_default()
        .to_owned();
    let source = text(&object, "source", path, SOURCE_MAX, true)?
        .unwrap_or_default()
        .to_owned();
    if source.chars().any(char::is_whitespace) {
        return Err(ApiError::field(
            format!("{path}source"),
            "must be a URI-reference (no whitespace)",
        ));
    }
    let id = match text(&object, "id", path, ID_MAX, false)? {
        Some(id) => id.parse::<EventId>().map_err(|_| {
            ApiError::field(
                format!("{path}id"),
                "must be an event id (evt_ followed by a 26-character ULID); leave it out to have one assigned, and use the Idempotency-Key header to deduplicate",
            )
        })?,
        None => EventId::new(),
    };
    let subject = text(&object, "subject", path, SUBJECT_MAX, false)?.map(str::to_owned);
    let time = match text(&object, "time", path, TIME_MAX, false)? {
        Some(time) => {
            parse_time(time).ok_or_else(|| ApiError::field(format!("{path}time"), "must be an RFC 3339 timestamp"))?
        }
        None => received_at,
    };
    let datacontenttype = text(&object, "datacontenttype", path, CONTENT_TYPE_MAX, false)?
        .unwrap_or(JSON_CONTENT_TYPE)
        .to_owned();
    let partition_key = text(&object, "partition_key", path, PARTITION_KEY_MAX, false)?.map(str::to_owned);
    // CloudEvents' `dataschema` is taken (a URI of up to 1024 characters)
    // and not used.
    text(&object, "dataschema", path, SOURCE_MAX, false)?;
    if object.contains_key("data_base64") {
        return Err(ApiError::field(
            format!("{path}data_base64"),
            "binary data is not supported; send JSON in `data`",
        ));
    }
    let data = match (data, payload) {
        (Some(_), Some(_)) => {
            return Err(ApiError::field(
                format!("{path}payload"),
                "give `data` or its alias `payload`, not both",
            ));
        }
        (Some(data), None) | (None, Some(data)) => data,
        (None, None) => Payload::null(),
    };
    let extensions = extensions(&object, path)?;
    Ok(Event {
        id,
        tenant,
        event_type,
        source,
        subject,
        time,
        received_at,
        specversion: SPEC_VERSION.to_owned(),
        datacontenttype,
        data,
        partition_key,
        extensions,
    })
}

/// The list of a batch body: `{"events": [...]}` or a bare array
/// (`application/cloudevents-batch+json`), each event still as its JSON text.
pub fn batch_items(text: &str, max: usize) -> Result<Vec<Box<RawValue>>, ApiError> {
    let invalid = |e: serde_json::Error| ApiError::InvalidJson(e.to_string());
    let items: Vec<Box<RawValue>> = match text.trim_start().as_bytes().first() {
        Some(b'[') => serde_json::from_str(text).map_err(invalid)?,
        Some(b'{') => {
            let mut object: BTreeMap<String, Box<RawValue>> = serde_json::from_str(text).map_err(invalid)?;
            match object.remove("events") {
                Some(events) if events.get().starts_with('[') => serde_json::from_str(events.get()).map_err(invalid)?,
                Some(_) => return Err(ApiError::field("events", "must be an array")),
                None => return Err(ApiError::field("events", "is required")),
            }
        }
        _ => {
            // Not JSON at all, or JSON of another shape.
            serde_json::from_str::<serde::de::IgnoredAny>(text).map_err(invalid)?;
            return Err(ApiError::field(
                "the body",
                "must be {\"events\": [...]} or an array of events",
            ));
        }
    };
    if items.is_empty() {
        return Err(ApiError::field("events", "must hold at least one event"));
    }
    if items.len() > max {
        return Err(ApiError::field(
            "events",
            format!("must hold at most {max} events, got {}", items.len()),
        ));
    }
    Ok(items)
}

/// One event to ingest (CloudEvents 1.0 attribute names).
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[allow(dead_code)] // Documents the body; parsing is field by field above.
pub struct EventInput {
    /// What happened, e.g. `order.created` (1-256 characters, no control
    /// characters).
    #[serde(rename = "type")]
    #[schema(min_length = 1, max_length = 256, pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]+$")]
    pub event_type: String,
    /// Who says so, a URI-reference without whitespace (1-1024 characters).
    #[schema(
        min_length = 1,
        max_length = 1024,
        pattern = "^[^\\s\\u0000-\\u001f\\u007f-\\u009f]+$"
    )]
    pub source: String,
    /// The payload: any JSON.
    #[schema(value_type = Option<Object>)]
    pub data: Option<serde_json::Value>,
    /// Alias of `data` (first client guide).
    #[schema(value_type = Option<Object>)]
    pub payload: Option<serde_json::Value>,
    /// `evt_<ULID>`; assigned when absent.
    #[schema(max_length = 64, pattern = "^evt_[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$")]
    pub id: Option<String>,
    /// What it happened to.
    #[schema(max_length = 1024, pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$")]
    pub subject: Option<String>,
    /// When it happened, RFC 3339; now when absent.
    #[schema(format = DateTime, max_length = 64)]
    pub time: Option<String>,
    /// Kafka key override, for ordering finer than the tenant.
    #[schema(max_length = 256, pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$")]
    pub partition_key: Option<String>,
    /// `1.0` when given.
    #[schema(max_length = 16, pattern = "^1\\.0$")]
    pub specversion: Option<String>,
    /// Media type of `data`; `application/json` when absent.
    #[schema(max_length = 256, pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$")]
    pub datacontenttype: Option<String>,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(value: Value) -> Result<Event, ApiError> {
        event_from_json(value, TenantId::new(), 1_700_000_000_000, "")
    }

    fn field_of(result: Result<Event, ApiError>) -> String {
        match result {
            Err(ApiError::InvalidField { field, .. }) => field,
            other => panic!("expected a field error, got {other:?}"),
        }
    }

    #[test]
    fn a_full_cloudevent_is_accepted() {
        let id = EventId::new();
        let event = parse(json!({
            "specversion": "1.0", "id": id.to_string(), "type": "order.created", "source": "/shop",
            "subject": "o-1", "time": "2024-05-01T12:00:00.250+02:00", "datacontenttype": "application/json",
            "data": {"total": 3}, "partition_key": "cust-1", "traceparent": "00-x", "priority": 5
        }))
        .unwrap();
        assert_eq!(event.id, id);
        assert_eq!(event.time, 1_714_557_600_250);
        assert_eq!(event.data, json!({"total": 3}));
        assert_eq!(event.partition_key.as_deref(), Some("cust-1"));
        assert_eq!(event.extensions.get("priority").map(String::as_str), Some("5"));
        assert_eq!(event.kafka_key(), "cust-1");
    }

    #[test]
    fn payload_is_an_alias_of_data_and_defaults_fill_in() {
        let event = parse(json!({"type": "a", "source": "b", "payload": [1, 2]})).unwrap();
        assert_eq!(event.data, json!([1, 2]));
        assert_eq!(event.time, 1_700_000_000_000);
        assert_eq!(event.datacontenttype, "application/json");
        assert!(event.id.to_string().starts_with("evt_"));
        let no_data = parse(json!({"type": "a", "source": "b"})).unwrap();
        assert_eq!(no_data.data, Value::Null);
    }

    #[test]
    fn each_bad_field_is_named() {
        assert_eq!(field_of(parse(json!({"source": "b"}))), "type");
        assert_eq!(field_of(parse(json!({"type": "", "source": "b"}))), "type");
        assert_eq!(field_of(parse(json!({"type": 7, "source": "b"}))), "type");
        assert_eq!(field_of(parse(json!({"type": "a\u{1}", "source": "b"}))), "type");
        assert_eq!(field_of(parse(json!({"type": "x".repeat(257), "source": "b"}))), "type");
        assert_eq!(field_of(parse(json!({"type": "a"}))), "source");
        assert_eq!(field_of(parse(json!({"type": "a", "source": "has space"}))), "source");
        assert_eq!(field_of(parse(json!({"type": "a", "source": "b", "id": "123"}))), "id");
        assert_eq!(
            field_of(parse(json!({"type": "a", "source": "b", "time": "yesterday"}))),
            "time"
        );
        assert_eq!(
            field_of(parse(json!({"type": "a", "source": "b", "specversion": "0.3"}))),
            "specversion"
        );
        assert_eq!(
            field_of(parse(json!({"type": "a", "source": "b", "data": 1, "payload": 2}))),
            "payload"
        );
        assert_eq!(
            field_of(parse(json!({"type": "a", "source": "b", "data_base64": "AA=="}))),
            "data_base64"
        );
        assert_eq!(
            field_of(parse(json!({"type": "a", "source": "b", "Bad_Name": 1}))),
            "Bad_Name"
        );
        assert_eq!(
            field_of(parse(json!({"type": "a", "source": "b", "ext": {"x": 1}}))),
            "ext"
        );
        assert_eq!(field_of(parse(json!([1]))), "the body");
        let nested = event_from_json(json!({"type": "a"}), TenantId::new(), 0, "events[3].");
        assert_eq!(field_of(nested), "events[3].source");
    }

    #[test]
    fn batches_come_in_two_shapes_and_are_bounded() {
        let items = |text: &str, max| batch_items(text, max).map(|v| v.iter().map(|i| i.get().to_owned()).collect());
        assert_eq!(
            items(r#"{"events": [1, {"a": 2}]}"#, 10).ok(),
            Some(vec!["1".to_owned(), r#"{"a": 2}"#.to_owned()])
        );
        assert_eq!(items(" [1, 2, 3]", 10).map(|v: Vec<String>| v.len()).ok(), Some(3));
        for (text, field) in [
            (r#"{"events": []}"#, "events"),
            ("[1, 2, 3]", "events"),
            (r#"{"evts": []}"#, "events"),
            (r#"{"events": {"a": 1}}"#, "events"),
            ("7", "the body"),
            (r#""events""#, "the body"),
        ] {
            match batch_items(text, 2) {
                Err(ApiError::InvalidField { field: named, .. }) => assert_eq!(named, field, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
        for text in ["[1, 2", r#"{"events": [1,]}"#, "{events: []}", "nope"] {
            assert!(matches!(batch_items(text, 10), Err(ApiError::InvalidJson(_))), "{text}");
        }
    }

    #[test]
    fn the_payload_is_kept_as_the_client_wrote_it() {
        let text = r#"{"type": "a", "source": "b", "data": {"z": 1, "a": [1.50, 123456789012345678901234567890]}}"#;
        let event = event_from_fields(Fields::parse(text, "").unwrap(), TenantId::new(), 0, "").unwrap();
        assert_eq!(
            event.data.as_str(),
            r#"{"z": 1, "a": [1.50, 123456789012345678901234567890]}"#
        );
        let aliased = Fields::parse(r#"{"payload": "x", "type": "a", "source": "b"}"#, "").unwrap();
        assert_eq!(
            event_from_fields(aliased, TenantId::new(), 0, "")
                .unwrap()
                .data
                .as_str(),
            r#""x""#
        );
        // Not an object, and not JSON: told apart.
        let not_object = Fields::parse("[1]", "events[2].").and_then(|f| event_from_fields(f, TenantId::new(), 0, ""));
        assert_eq!(field_of(not_object), "events[2]");
        assert!(matches!(
            Fields::parse(r#"{"type": "a", "data": {"#, ""),
            Err(ApiError::InvalidJson(_))
        ));
        assert!(matches!(
            Fields::parse(r#"{"data": 1} x"#, ""),
            Err(ApiError::InvalidJson(_))
        ));
        // A name given twice keeps its last value.
        let twice = Fields::parse(r#"{"type": "a", "source": "b", "data": 1, "data": 2}"#, "").unwrap();
        assert_eq!(event_from_fields(twice, TenantId::new(), 0, "").unwrap().data, json!(2));
    }

    /// `/openapi.json` states the limits the parser enforces.
    #[test]
    fn the_document_states_the_limits_that_are_checked() {
        use utoipa::OpenApi;
        let document = serde_json::to_value(crate::openapi::ApiDoc::openapi()).unwrap();
        let properties = &document["components"]["schemas"]["EventInput"]["properties"];
        for (name, max) in [
            ("type", TYPE_MAX),
            ("source", SOURCE_MAX),
            ("id", ID_MAX),
            ("subject", SUBJECT_MAX),
            ("time", TIME_MAX),
            ("specversion", SPECVERSION_MAX),
            ("datacontenttype", CONTENT_TYPE_MAX),
            ("partition_key", PARTITION_KEY_MAX),
        ] {
            assert_eq!(properties[name]["maxLength"], max, "{name}");
        }
        // The patterns admit what the parser admits, and refuse what it refuses.
        let id = EventId::new().to_string();
        let pattern = properties["id"]["pattern"].as_str().unwrap();
        assert!(
            pattern.starts_with("^evt_[0-7]") && pattern.ends_with("{25}$"),
            "{pattern}"
        );
        assert!(parse(json!({"type": "a", "source": "b", "id": id})).is_ok());
        let upper = id.to_uppercase().replacen("EVT_", "evt_", 1);
        assert!(
            parse(json!({"type": "a", "source": "b", "id": upper})).is_ok(),
            "either case is admitted"
        );
        let overflow = format!("evt_8{}", &id[5..]);
        assert!(
            parse(json!({"type": "a", "source": "b", "id": overflow})).is_err(),
            "over 128 bits"
        );
        assert_eq!(properties["specversion"]["pattern"], "^1\\.0$");
        assert!(properties["source"]["pattern"].as_str().unwrap().contains("\\s"));
    }

    #[test]
    fn times_round_trip() {
        assert_eq!(format_time(1_714_557_600_250), "2024-05-01T10:00:00.25Z");
        assert_eq!(parse_time(&format_time(1_714_557_600_250)), Some(1_714_557_600_250));
    }
}
