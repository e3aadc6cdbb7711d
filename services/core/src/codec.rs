//! The Avro codec in Confluent wire format (magic byte 0, 4-byte schema id,
//! Avro binary), through `schema_registry_converter` and `apache-avro`.
//!
//! Writers register the schema of `schemas/` under `<topic>-value` (the
//! registry answers the existing id when it is already there). Readers decode
//! with the writer's schema from the registry and resolve it to the schema
//! this build knows, so older and newer writers both read correctly.

use std::collections::HashMap;
use std::sync::Arc;

use apache_avro::Schema;
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
    #[error("schema {contract:?} does not parse: {source}")]
    Schema {
        /// The contract whose schema is broken.
        contract: Contract,
        /// The parser's complaint.
        #[source]
        source: Box<apache_avro::Error>,
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
#[derive(Clone)]
pub struct AvroCodec {
    inner: Arc<Inner>,
}

struct Inner {
    encoder: AvroEncoder,
    decoder: AvroDecoder,
    readers: HashMap<Contract, Schema>,
}

impl std::fmt::Debug for AvroCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AvroCodec").finish_non_exhaustive()
    }
}

impl AvroCodec {
    /// A codec talking to the registry of `config`.
    pub fn new(config: &SchemaRegistryConfig) -> Result<Self, CodecError> {
        let mut readers = HashMap::new();
        for contract in Contract::ALL {
            let schema = Schema::parse_str(contract.schema_json()).map_err(|source| CodecError::Schema {
                contract,
                source: Box::new(source),
            })?;
            readers.insert(contract, schema);
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
                readers,
            }),
        })
    }

    /// The schema this build reads `contract` with.
    pub fn schema(&self, contract: Contract) -> Option<&Schema> {
        self.inner.readers.get(&contract)
    }

    /// Encodes `value` for `topic`, registering the schema under
    /// `<topic>-value` on first use.
    pub async fn encode<T: Serialize>(
        &self,
        topic: &str,
        contract: Contract,
        value: &T,
    ) -> Result<Vec<u8>, CodecError> {
        let strategy = SubjectNameStrategy::TopicNameStrategyWithSchema(
            topic.to_owned(),
            false,
            SuppliedSchema::new(
                Some(contract.record_name().to_owned()),
                SchemaType::Avro,
                contract.schema_json().to_owned(),
            ),
        );
        self.inner.encoder.encode_struct(value, &strategy).await.map_err(|e| {
            if e.retriable || e.error.contains("registry") {
                self.inner.encoder.remove_errors_from_cache();
                CodecError::Registry(e)
            } else {
                CodecError::InvalidAvro {
                    contract,
                    message: e.to_string(),
                }
            }
        })
    }

    /// Decodes a record written with any registered version of `contract`.
    pub async fn decode<T: DeserializeOwned>(&self, contract: Contract, bytes: &[u8]) -> Result<T, CodecError> {
        let id = schema_id(bytes).ok_or(CodecError::BadMagic)?;
        if let Err(source) = self.inner.decoder.get_schema(id).await {
            return Err(if source.retriable {
                self.inner.decoder.remove_errors_from_cache();
                CodecError::Registry(source)
            } else {
                CodecError::UnknownSchema { id, source }
            });
        }
        let decoded = self
            .inner
            .decoder
            .decode(Some(bytes))
            .await
            .map_err(|e| CodecError::InvalidAvro {
                contract,
                message: e.to_string(),
            })?;
        let reader = self.schema(contract).ok_or_else(|| CodecError::InvalidAvro {
            contract,
            message: "no reader schema".to_owned(),
        })?;
        let resolved = decoded.value.resolve(reader).map_err(|e| CodecError::InvalidAvro {
            contract,
            message: format!("does not match {}: {e}", contract.record_name()),
        })?;
        apache_avro::from_value(&resolved).map_err(|e| CodecError::InvalidAvro {
            contract,
            message: e.to_string(),
        })
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
    use super::*;

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

    #[test]
    fn schema_id_reads_the_wire_prefix() {
        assert_eq!(schema_id(&[0, 0, 0, 1, 2, 9]), Some(258));
        assert_eq!(schema_id(&[1, 0, 0, 0, 1]), None);
        assert_eq!(schema_id(&[0, 0, 0]), None);
    }
}
