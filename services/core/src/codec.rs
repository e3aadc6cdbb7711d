//! The Avro codec in Confluent wire format (magic byte 0, 4-byte schema id,
//! Avro binary), through `schema_registry_converter` and `apache-avro`.
//!
//! Writers register the schema of `schemas/` under `<topic>-value` (the
//! registry answers the existing id when it is already there). Readers decode
//! with the writer's schema from the registry and resolve it to the schema
//! this build knows, so older and newer writers both read correctly.
//!
//! The registry client is only asked for ids and schemas; the records are
//! written and read here, with each schema resolved once per process: this is
//! on every service's per-record path.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use apache_avro::Schema;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::schema::ResolvedSchema;
use apache_avro::writer::datum::GenericDatumWriter;
use parking_lot::RwLock;
use schema_registry_converter::async_impl::avro::{AvroDecoder, AvroEncoder};
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::{SchemaType, SubjectNameStrategy, SuppliedSchema};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::config::SchemaRegistryConfig;

/// The record types of the Kafka contract, one `.avsc` each in `schemas/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Contract {
    /// `triggers.v1.Event` on `<ns>.events`.
    Event,
    /// `triggers.v1.Subscription` on `<ns>.subscriptions`.
    Subscription,
    /// `triggers.v1.Delivery` on deliveries, retry tiers and the DLQ.
    Delivery,
    /// `triggers.v1.Outcome` on `<ns>.outcomes`.
    Outcome,
}

impl Contract {
    /// Every contract.
    pub const ALL: [Contract; 4] = [Self::Event, Self::Subscription, Self::Delivery, Self::Outcome];

    /// The schema text, as in `schemas/`.
    pub fn schema_json(self) -> &'static str {
        match self {
            Self::Event => include_str!("../../../schemas/event.avsc"),
            Self::Subscription => include_str!("../../../schemas/subscription.avsc"),
            Self::Delivery => include_str!("../../../schemas/delivery.avsc"),
            Self::Outcome => include_str!("../../../schemas/outcome.avsc"),
        }
    }

    /// The full record name, e.g. `triggers.v1.Event`.
    pub fn record_name(self) -> &'static str {
        match self {
            Self::Event => "triggers.v1.Event",
            Self::Subscription => "triggers.v1.Subscription",
            Self::Delivery => "triggers.v1.Delivery",
            Self::Outcome => "triggers.v1.Outcome",
        }
    }
}

/// Why a record could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The bytes do not start with the Confluent magic byte and a schema id.
    #[error("not in Confluent wire format (missing magic byte 0 and schema id)")]
    BadMagic,
    /// The registry does not know the schema id in the record.
    #[error("unknown schema id {id}: {source}")]
    UnknownSchema {
        /// The schema id in the record.
        id: u32,
        /// What the registry client said.
        #[source]
        source: SRCError,
    },
    /// The bytes do not decode with their schema, or do not fit this build's.
    #[error("invalid Avro for {contract:?}: {message}")]
    InvalidAvro {
        /// What was expected.
        contract: Contract,
        /// What went wrong.
        message: String,
    },
    /// The registry could not be reached or refused the schema.
    #[error("schema registry: {0}")]
    Registry(#[source] SRCError),
    /// A schema shipped in `schemas/` does not parse (a build defect).
    #[error("schema {contract:?} does not parse: {message}")]
    Schema {
        /// The contract whose schema is broken.
        contract: Contract,
        /// The parser's complaint.
        message: String,
    },
    /// The registry client could not be set up.
    #[error("schema registry client: {0}")]
    Client(#[source] SRCError),
}

impl CodecError {
    /// Whether trying again later may succeed (the registry was unreachable),
    /// as opposed to a record that will never decode (quarantine it).
    pub fn is_retriable(&self) -> bool {
        match self {
            Self::Registry(e) => e.retriable,
            Self::BadMagic | Self::UnknownSchema { .. } | Self::InvalidAvro { .. } => false,
            Self::Schema { .. } | Self::Client(_) => false,
        }
    }

    /// A short machine-readable reason, for headers and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::BadMagic => "bad_magic_byte",
            Self::UnknownSchema { .. } => "unknown_schema_id",
            Self::InvalidAvro { .. } => "invalid_avro",
            Self::Registry(_) => "registry_unavailable",
            Self::Schema { .. } => "schema_defect",
            Self::Client(_) => "registry_client",
        }
    }
}

/// Encodes and decodes the contract records. Cheap to clone; shares caches.
///
/// The schemas of this build are parsed and resolved once per process
/// ([`prepared`]); the registry is asked once per topic for the id to write
/// with and once per writer schema id for what to read with. Records are
/// written straight from the Rust value with the schema-aware serializer and,
/// when written with this build's schema (the common case), read straight into
/// the Rust value with the schema-aware deserializer: no `Value` tree, no
/// per-record schema work. Records of another version of the contract are read
/// with their writer's schema and resolved to this build's.
#[derive(Clone)]
pub struct AvroCodec {
    inner: Arc<Inner>,
}

struct Inner {
    encoder: AvroEncoder,
    decoder: AvroDecoder,
    /// The id each `(topic, contract)` writes with, learnt from the registry.
    writing: RwLock<Vec<(String, Contract, u32)>>,
    /// How to read each `(writer schema id, contract)` seen so far.
    reading: RwLock<HashMap<(u32, Contract), Arc<Reading>>>,
}

/// How records of one writer schema id become one contract's values.
enum Reading {
    /// Written with this build's schema: straight into the value.
    Direct(&'static Prepared),
    /// Written with another version: read with the writer's schema, resolved
    /// to this build's, then converted.
    Resolving(GenericDatumReader<'static>),
}

impl Reading {
    /// How to read records written with `writer` (registered as `id`) as
    /// `contract`, this build's `prepared` schema of it.
    fn new(prepared: &'static Prepared, writer: &Schema, id: u32, contract: Contract) -> Result<Self, CodecError> {
        if writer.canonical_form() == prepared.canonical {
            return Ok(Self::Direct(prepared));
        }
        // Leaked once per writer schema id and contract: a registry holds few
        // versions, and each is read for the life of the process.
        let writer: &'static Schema = Box::leak(Box::new(writer.clone()));
        GenericDatumReader::builder(writer)
            .reader_schema(prepared.schema)
            .resolved_reader_schemata(prepared.resolved.clone())
            .build()
            .map(Self::Resolving)
            .map_err(|e| CodecError::InvalidAvro {
                contract,
                message: format!("writer schema {id} does not resolve: {e}"),
            })
    }

    /// Reads one record's Avro `body` (after the wire prefix).
    fn read<T: DeserializeOwned>(&self, contract: Contract, mut body: &[u8]) -> Result<T, CodecError> {
        let invalid = |e: apache_avro::Error| CodecError::InvalidAvro {
            contract,
            message: e.to_string(),
        };
        match self {
            Self::Direct(prepared) => prepared.reader.read_deser(&mut body).map_err(invalid),
            Self::Resolving(reader) => {
                let value = reader.read_value(&mut body).map_err(|e| CodecError::InvalidAvro {
                    contract,
                    message: format!("does not match {}: {e}", contract.record_name()),
                })?;
                apache_avro::from_value(&value).map_err(invalid)
            }
        }
    }
}

/// One contract's schema of this build, parsed and resolved once.
struct Prepared {
    schema: &'static Schema,
    canonical: String,
    writer: GenericDatumWriter<'static>,
    reader: GenericDatumReader<'static>,
    resolved: ResolvedSchema<'static>,
}

/// Every contract's [`Prepared`] schema, in [`Contract::ALL`] order. The
/// schemas live for the process (they are compiled in); a schema that does not
/// parse is a build defect, reported by [`AvroCodec::new`].
fn prepared(contract: Contract) -> Result<&'static Prepared, CodecError> {
    static PREPARED: OnceLock<Result<Vec<Prepared>, (Contract, String)>> = OnceLock::new();
    let all = PREPARED.get_or_init(|| {
        Contract::ALL
            .iter()
            .map(|&contract| Prepared::new(contract).map_err(|e| (contract, e.to_string())))
            .collect()
    });
    match all {
        Ok(all) => all
            .iter()
            .zip(Contract::ALL)
            .find_map(|(prepared, c)| (c == contract).then_some(prepared))
            .ok_or(CodecError::Schema {
                contract,
                message: "not prepared".to_owned(),
            }),
        Err((contract, message)) => Err(CodecError::Schema {
            contract: *contract,
            message: message.clone(),
        }),
    }
}

impl Prepared {
    fn new(contract: Contract) -> Result<Self, apache_avro::Error> {
        // Leaked once per contract per process: the readers and writers below
        // borrow it for the life of the process.
        let schema: &'static Schema = Box::leak(Box::new(Schema::parse_str(contract.schema_json())?));
        let resolved = ResolvedSchema::try_from(schema)?;
        Ok(Self {
            schema,
            canonical: schema.canonical_form(),
            writer: GenericDatumWriter::builder(schema)
                .resolved_schemata(resolved.clone())
                .build()?,
            reader: GenericDatumReader::builder(schema)
                .resolved_writer_schemata(resolved.clone())
                .build()?,
            resolved,
        })
    }
}

impl std::fmt::Debug for AvroCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AvroCodec").finish_non_exhaustive()
    }
}

impl AvroCodec {
    /// A codec talking to the registry of `config`.
    pub fn new(config: &SchemaRegistryConfig) -> Result<Self, CodecError> {
        for contract in Contract::ALL {
            prepared(contract)?;
        }
        let settings = || {
            let mut builder = SrSettings::new_builder(config.url.trim_end_matches('/').to_owned());
            builder.set_timeout(config.timeout).no_proxy();
            if let Some(user) = &config.username {
                builder.set_basic_authorization(user, config.password.as_deref());
            }
            builder.build().map_err(CodecError::Client)
        };
        Ok(Self {
            inner: Arc::new(Inner {
                encoder: AvroEncoder::new(settings()?),
                decoder: AvroDecoder::new(settings()?),
                writing: RwLock::new(Vec::new()),
                reading: RwLock::new(HashMap::new()),
            }),
        })
    }

    /// The schema this build reads and writes `contract` with.
    pub fn schema(&self, contract: Contract) -> Option<&'static Schema> {
        prepared(contract).ok().map(|prepared| prepared.schema)
    }

    /// Encodes `value` for `topic`, registering the schema under
    /// `<topic>-value` on first use.
    pub async fn encode<T: Serialize>(
        &self,
        topic: &str,
        contract: Contract,
        value: &T,
    ) -> Result<Vec<u8>, CodecError> {
        let prepared = prepared(contract)?;
        let id = match self.known_id(topic, contract) {
            Some(id) => id,
            None => self.register(topic, contract).await?,
        };
        let mut bytes = Vec::with_capacity(256);
        bytes.push(0);
        bytes.extend_from_slice(&id.to_be_bytes());
        prepared
            .writer
            .write_ser(&mut bytes, value)
            .map_err(|e| CodecError::InvalidAvro {
                contract,
                message: e.to_string(),
            })?;
        Ok(bytes)
    }

    /// The id `contract` is written with on `topic`, once the registry said.
    fn known_id(&self, topic: &str, contract: Contract) -> Option<u32> {
        let writing = self.inner.writing.read();
        writing
            .iter()
            .find(|(t, c, _)| *c == contract && t == topic)
            .map(|(_, _, id)| *id)
    }

    /// Registers (or finds) this build's schema of `contract` under
    /// `<topic>-value` and remembers its id.
    async fn register(&self, topic: &str, contract: Contract) -> Result<u32, CodecError> {
        let strategy = SubjectNameStrategy::TopicNameStrategyWithSchema(
            topic.to_owned(),
            false,
            SuppliedSchema::new(
                Some(contract.record_name().to_owned()),
                SchemaType::Avro,
                contract.schema_json().to_owned(),
            ),
        );
        let subject = strategy.get_subject().map_err(CodecError::Registry)?;
        let registered = self
            .inner
            .encoder
            .get_schema_and_id(&subject, strategy)
            .await
            .map_err(|e| {
                self.inner.encoder.remove_errors_from_cache();
                CodecError::Registry(e)
            })?;
        let mut writing = self.inner.writing.write();
        if !writing.iter().any(|(t, c, _)| *c == contract && t == topic) {
            writing.push((topic.to_owned(), contract, registered.id));
        }
        Ok(registered.id)
    }

    /// Decodes a record written with any registered version of `contract`.
    pub async fn decode<T: DeserializeOwned>(&self, contract: Contract, bytes: &[u8]) -> Result<T, CodecError> {
        let id = schema_id(bytes).ok_or(CodecError::BadMagic)?;
        let cached = self.inner.reading.read().get(&(id, contract)).cloned();
        let reading = match cached {
            Some(reading) => reading,
            None => self.prepare_reading(id, contract).await?,
        };
        reading.read(contract, bytes.get(5..).unwrap_or_default())
    }

    /// Fetches writer schema `id` and decides how to read it as `contract`.
    async fn prepare_reading(&self, id: u32, contract: Contract) -> Result<Arc<Reading>, CodecError> {
        let prepared = prepared(contract)?;
        let writer = self.inner.decoder.get_schema(id).await.map_err(|source| {
            if source.retriable {
                self.inner.decoder.remove_errors_from_cache();
                CodecError::Registry(source)
            } else {
                CodecError::UnknownSchema { id, source }
            }
        })?;
        let reading = Reading::new(prepared, &writer.parsed, id, contract)?;
        let reading = Arc::new(reading);
        Ok(self
            .inner
            .reading
            .write()
            .entry((id, contract))
            .or_insert(reading)
            .clone())
    }
}

/// The schema id of a record in Confluent wire format, if it is one.
pub fn schema_id(bytes: &[u8]) -> Option<u32> {
    match bytes {
        [0, a, b, c, d, ..] => Some(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::delivery::{Delivery, Outcome, OutcomeKind};
    use crate::event::Event;
    use crate::ids::{DeliveryId, SubscriptionId, TenantId};

    #[test]
    fn every_contract_schema_parses_with_its_record_name() {
        for contract in Contract::ALL {
            let schema = Schema::parse_str(contract.schema_json()).unwrap_or_else(|e| panic!("{contract:?}: {e}"));
            let name = match &schema {
                Schema::Record(record) => record.name.fullname(None),
                other => panic!("{contract:?} is not a record: {other:?}"),
            };
            assert_eq!(name, contract.record_name());
        }
    }

    #[test]
    fn delivery_embeds_the_event_schema_unchanged() {
        let delivery: serde_json::Value = serde_json::from_str(Contract::Delivery.schema_json()).unwrap();
        let event: serde_json::Value = serde_json::from_str(Contract::Event.schema_json()).unwrap();
        let embedded = delivery["fields"]
            .as_array()
            .and_then(|fields| fields.iter().find(|f| f["name"] == "event"))
            .map(|f| f["type"].clone());
        assert_eq!(
            embedded,
            Some(event),
            "schemas/delivery.avsc must embed schemas/event.avsc as it is"
        );
    }

    fn sample_event(full: bool) -> Event {
        let mut event = Event::new(
            TenantId::new(),
            "order.created",
            "https://shop.example/orders",
            serde_json::json!({"order": 42, "items": [{"sku": "A", "qty": 2}], "note": "Grüße 🎉"}),
        );
        if full {
            event.subject = Some("order-42".to_owned());
            event.partition_key = Some("customer-7".to_owned());
            event.extensions = BTreeMap::from([
                ("traceparent".to_owned(), "00-abc-def-01".to_owned()),
                ("region".to_owned(), "eu".to_owned()),
            ]);
        }
        event
    }

    fn sample_outcome(full: bool) -> Outcome {
        let event = sample_event(full);
        if !full {
            return Outcome::routing(&event, Vec::new());
        }
        let mut outcome = Outcome::routing(&event, vec![SubscriptionId::new(), SubscriptionId::new()]);
        outcome.kind = OutcomeKind::Retrying;
        outcome.subscription_id = Some(SubscriptionId::new());
        outcome.delivery_id = Some(DeliveryId::new());
        outcome.attempt = 3;
        outcome.http_status = Some(503);
        outcome.latency_ms = Some(1_234);
        outcome.error = Some("HTTP 503".to_owned());
        outcome.response_excerpt = Some("busy".to_owned());
        outcome.next_attempt_at = Some(event.received_at + 30_000);
        outcome
    }

    fn sample_delivery(full: bool) -> Delivery {
        let mut delivery = Delivery::first(sample_event(full), SubscriptionId::new());
        if full {
            delivery = Delivery::again(delivery.event, delivery.subscription_id, 4, true);
            delivery.last_error = Some("timed out".to_owned());
            delivery.last_status = Some(504);
        }
        delivery
    }

    /// Writes `value` with this build's schema, reads it back through the
    /// direct reader and through apache-avro's generic `Value` path, and
    /// checks both give the value.
    fn round_trip<T>(contract: Contract, value: &T)
    where
        T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        let prepared = prepared(contract).unwrap();
        let bytes = prepared.writer.write_ser_to_vec(value).unwrap();
        let direct: T = Reading::Direct(prepared).read(contract, &bytes).unwrap();
        assert_eq!(&direct, value, "{contract:?} read straight");
        let generic = GenericDatumReader::builder(prepared.schema)
            .build()
            .and_then(|reader| reader.read_value(&mut bytes.as_slice()))
            .unwrap();
        let generic: T = apache_avro::from_value(&generic).unwrap();
        assert_eq!(&generic, value, "{contract:?} read through Value");
    }

    #[test]
    fn records_read_straight_into_values_equal_the_generic_reading() {
        for full in [false, true] {
            round_trip(Contract::Event, &sample_event(full));
            round_trip(Contract::Outcome, &sample_outcome(full));
            round_trip(Contract::Delivery, &sample_delivery(full));
        }
    }

    #[test]
    fn a_writer_with_this_builds_schema_is_read_directly_whatever_its_formatting() {
        let prepared = prepared(Contract::Event).unwrap();
        // The registry may answer the schema reformatted, with other docs.
        let mut json: serde_json::Value = serde_json::from_str(Contract::Event.schema_json()).unwrap();
        json["doc"] = serde_json::json!("reworded");
        let writer = Schema::parse_str(&json.to_string()).unwrap();
        let reading = Reading::new(prepared, &writer, 7, Contract::Event).unwrap();
        assert!(matches!(reading, Reading::Direct(_)));
    }

    #[test]
    fn an_older_writer_schema_is_resolved_to_this_builds() {
        // Version 0 of the event: no partition_key nor extensions, and a
        // field this build no longer has.
        let mut json: serde_json::Value = serde_json::from_str(Contract::Event.schema_json()).unwrap();
        let fields = json["fields"].as_array_mut().unwrap();
        fields.retain(|f| f["name"] != "partition_key" && f["name"] != "extensions");
        fields.push(serde_json::json!({"name": "legacy_priority", "type": "int"}));
        let older = Schema::parse_str(&json.to_string()).unwrap();

        let event = sample_event(true);
        let mut record = apache_avro::types::Record::new(&older).unwrap();
        record.put("id", event.id.to_string());
        record.put("tenant", event.tenant.to_string());
        record.put("type", event.event_type.clone());
        record.put("source", event.source.clone());
        record.put(
            "subject",
            apache_avro::types::Value::Union(1, Box::new(apache_avro::types::Value::String("order-42".to_owned()))),
        );
        record.put("time", event.time);
        record.put("received_at", event.received_at);
        record.put("specversion", event.specversion.clone());
        record.put("datacontenttype", event.datacontenttype.clone());
        record.put("data", event.data.to_string());
        record.put("legacy_priority", 5);
        let bytes = GenericDatumWriter::builder(&older)
            .build()
            .and_then(|writer| writer.write_value_to_vec(record))
            .unwrap();

        let reading = Reading::new(prepared(Contract::Event).unwrap(), &older, 3, Contract::Event).unwrap();
        assert!(matches!(reading, Reading::Resolving(_)));
        let read: Event = reading.read(Contract::Event, &bytes).unwrap();
        let expected = Event {
            partition_key: None,
            extensions: BTreeMap::new(),
            ..event
        };
        assert_eq!(
            read, expected,
            "the defaults of this build's schema fill the missing fields"
        );
    }

    #[test]
    fn records_that_do_not_fit_are_invalid_not_a_panic() {
        let outcome = prepared(Contract::Outcome).unwrap();
        let bytes = outcome.writer.write_ser_to_vec(&sample_outcome(true)).unwrap();
        // An outcome's schema read as an event's does not resolve.
        let reading = Reading::new(prepared(Contract::Event).unwrap(), outcome.schema, 4, Contract::Event).unwrap();
        let error = reading.read::<Event>(Contract::Event, &bytes).unwrap_err();
        assert!(matches!(error, CodecError::InvalidAvro { .. }), "{error}");

        // Truncated, or garbage, with the right schema.
        let event = prepared(Contract::Event).unwrap();
        let bytes = event.writer.write_ser_to_vec(&sample_event(true)).unwrap();
        for body in [&bytes[..bytes.len() / 2], &[0xff; 16][..], &[][..]] {
            let error = Reading::Direct(event).read::<Event>(Contract::Event, body).unwrap_err();
            assert!(matches!(error, CodecError::InvalidAvro { .. }), "{error}");
        }
    }

    #[test]
    fn schema_id_reads_the_wire_prefix() {
        assert_eq!(schema_id(&[0, 0, 0, 1, 2, 9]), Some(258));
        assert_eq!(schema_id(&[1, 0, 0, 0, 1]), None);
        assert_eq!(schema_id(&[0, 0, 0]), None);
    }
}
