//! Avro compatibility levels, as Confluent Schema Registry defines them.

use apache_avro::Schema;
use apache_avro::schema_compatibility::SchemaCompatibility;
use serde::{Deserialize, Serialize};

/// A subject's compatibility rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Level {
    /// No check.
    None,
    /// The new schema can read data written with the latest one.
    #[default]
    Backward,
    /// … with every earlier one.
    BackwardTransitive,
    /// Data written with the new schema can be read with the latest one.
    Forward,
    /// … with every earlier one.
    ForwardTransitive,
    /// Both backward and forward against the latest one.
    Full,
    /// … against every earlier one.
    FullTransitive,
}

impl Level {
    /// Parses `BACKWARD`, `full_transitive`, … (case-insensitive).
    pub fn parse(text: &str) -> Option<Self> {
        serde_json::from_value(serde_json::Value::String(text.to_ascii_uppercase())).ok()
    }

    /// The Confluent spelling, e.g. `BACKWARD`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "NONE",
            Self::Backward => "BACKWARD",
            Self::BackwardTransitive => "BACKWARD_TRANSITIVE",
            Self::Forward => "FORWARD",
            Self::ForwardTransitive => "FORWARD_TRANSITIVE",
            Self::Full => "FULL",
            Self::FullTransitive => "FULL_TRANSITIVE",
        }
    }

    /// Checks `new` against `existing` (oldest first). `Err` explains the
    /// first incompatibility found.
    pub fn check(self, new: &Schema, existing: &[Schema]) -> Result<(), String> {
        let against: &[Schema] = match self {
            Self::None => return Ok(()),
            Self::Backward | Self::Forward | Self::Full => existing.last().map(std::slice::from_ref).unwrap_or(&[]),
            Self::BackwardTransitive | Self::ForwardTransitive | Self::FullTransitive => existing,
        };
        let backward = matches!(
            self,
            Self::Backward | Self::BackwardTransitive | Self::Full | Self::FullTransitive
        );
        let forward = matches!(
            self,
            Self::Forward | Self::ForwardTransitive | Self::Full | Self::FullTransitive
        );
        for old in against {
            if backward {
                SchemaCompatibility::can_read(old, new)
                    .map_err(|e| format!("the new schema cannot read data written with an earlier one: {e}"))?;
            }
            if forward {
                SchemaCompatibility::can_read(new, old)
                    .map_err(|e| format!("an earlier schema cannot read data written with the new one: {e}"))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(fields: &str) -> Schema {
        Schema::parse_str(&format!(r#"{{"type":"record","name":"R","fields":[{fields}]}}"#)).unwrap()
    }

    #[test]
    fn backward_allows_a_new_field_with_default_and_refuses_one_without() {
        let v1 = schema(r#"{"name":"a","type":"string"}"#);
        let with_default = schema(r#"{"name":"a","type":"string"},{"name":"b","type":"int","default":0}"#);
        let without_default = schema(r#"{"name":"a","type":"string"},{"name":"b","type":"int"}"#);
        assert!(Level::Backward.check(&with_default, std::slice::from_ref(&v1)).is_ok());
        assert!(
            Level::Backward
                .check(&without_default, std::slice::from_ref(&v1))
                .is_err()
        );
        assert!(Level::None.check(&without_default, std::slice::from_ref(&v1)).is_ok());
        // Removing a field is backward compatible, but not forward when it had no default.
        assert!(
            Level::Backward
                .check(&v1, std::slice::from_ref(&without_default))
                .is_ok()
        );
        assert!(
            Level::Forward
                .check(&v1, std::slice::from_ref(&without_default))
                .is_err()
        );
    }

    #[test]
    fn transitive_checks_every_version() {
        let v1 = schema(r#"{"name":"a","type":"string"}"#);
        let v2 = schema(r#"{"name":"b","type":"int","default":1}"#);
        let v3 = schema(r#"{"name":"b","type":"int","default":1},{"name":"c","type":"int","default":2}"#);
        // v3 reads v2 data, and v1 data too (missing fields have defaults).
        assert!(Level::BackwardTransitive.check(&v3, &[v1.clone(), v2.clone()]).is_ok());
        let v3_strict = schema(r#"{"name":"b","type":"int"}"#);
        assert!(Level::Backward.check(&v3_strict, &[v1.clone(), v2.clone()]).is_ok());
        assert!(Level::BackwardTransitive.check(&v3_strict, &[v1, v2]).is_err());
    }

    #[test]
    fn levels_parse_case_insensitively() {
        assert_eq!(Level::parse("backward_transitive"), Some(Level::BackwardTransitive));
        assert_eq!(Level::parse("FULL"), Some(Level::Full));
        assert_eq!(Level::parse("sideways"), None);
        assert_eq!(Level::Full.as_str(), "FULL");
    }
}
