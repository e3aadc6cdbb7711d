//! The registry's state, rebuilt by applying the `_schemas` log in order.
//!
//! The log decides conflicts: a record that would give an id to a second
//! schema, or a subject version to a second id, is ignored when applied. Every
//! instance applies the same log in the same order, so every instance ends
//! with the same state, and a writer learns whether its record won by reading
//! the log back.

use std::collections::{BTreeMap, HashMap};

use apache_avro::Schema;
use serde::{Deserialize, Serialize};

use crate::compat::Level;

/// The key of a record in the `_schemas` topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "keytype", rename_all = "UPPERCASE")]
pub enum LogKey {
    /// A subject version.
    Schema {
        /// The subject.
        subject: String,
        /// The version within it.
        version: u32,
    },
    /// A compatibility setting; `subject` absent for the global one.
    Config {
        /// The subject, or none for the global level.
        subject: Option<String>,
    },
}

/// The value of a `SCHEMA` record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SchemaRecord {
    /// The subject.
    pub subject: String,
    /// The version within the subject.
    pub version: u32,
    /// The global schema id.
    pub id: u32,
    /// The schema text as registered.
    pub schema: String,
    /// Always `AVRO` here.
    pub schema_type: String,
}

/// The value of a `CONFIG` record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigRecord {
    /// The level.
    pub compatibility_level: Level,
}

/// One registered schema.
#[derive(Debug, Clone)]
pub struct StoredSchema {
    /// The schema text as first registered.
    pub text: String,
    /// The parsed schema.
    pub parsed: Schema,
    /// Its normalized form, the identity of a schema.
    pub normalized: String,
}

/// A subject version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version {
    /// The version number.
    pub version: u32,
    /// The schema id.
    pub id: u32,
}

/// The registry's state.
#[derive(Debug, Default)]
pub struct State {
    schemas: BTreeMap<u32, StoredSchema>,
    ids_by_normalized: HashMap<String, u32>,
    subjects: BTreeMap<String, Vec<Version>>,
    global_level: Option<Level>,
    subject_levels: HashMap<String, Level>,
}

/// Parses a schema and computes its normalized form.
pub fn parse(text: &str) -> Result<(Schema, String), String> {
    let parsed = Schema::parse_str(text).map_err(|e| e.to_string())?;
    let normalized = serde_json::to_string(&parsed).map_err(|e| e.to_string())?;
    Ok((parsed, normalized))
}

impl State {
    /// Applies one log record; records that lose a conflict are ignored.
    /// Returns whether it changed the state.
    pub fn apply(&mut self, key: &LogKey, value: Option<&[u8]>) -> bool {
        match key {
            LogKey::Schema { subject, version } => {
                let Some(record) = value.and_then(|v| serde_json::from_slice::<SchemaRecord>(v).ok()) else {
                    return false;
                };
                if record.subject != *subject || record.version != *version {
                    return false;
                }
                self.apply_schema(record)
            }
            LogKey::Config { subject } => {
                let level = value
                    .and_then(|v| serde_json::from_slice::<ConfigRecord>(v).ok())
                    .map(|c| c.compatibility_level);
                match (subject, level) {
                    (None, level) => self.global_level = level,
                    (Some(subject), Some(level)) => {
                        self.subject_levels.insert(subject.clone(), level);
                    }
                    (Some(subject), None) => {
                        self.subject_levels.remove(subject);
                    }
                }
                true
            }
        }
    }

    fn apply_schema(&mut self, record: SchemaRecord) -> bool {
        let Ok((parsed, normalized)) = parse(&record.schema) else {
            return false;
        };
        // The id must be free or already this schema's.
        match self.schemas.get(&record.id) {
            Some(existing) if existing.normalized != normalized => return false,
            _ => {}
        }
        if let Some(id) = self.ids_by_normalized.get(&normalized)
            && *id != record.id
        {
            return false;
        }
        let versions = self.subjects.entry(record.subject.clone()).or_default();
        if let Some(existing) = versions.iter().find(|v| v.version == record.version) {
            // Already there (a replayed record) or taken by another id.
            let _ = existing;
            return false;
        }
        // Versions only grow, and a subject holds a schema once.
        if versions.last().is_some_and(|v| v.version >= record.version) || versions.iter().any(|v| v.id == record.id) {
            return false;
        }
        versions.push(Version {
            version: record.version,
            id: record.id,
        });
        self.ids_by_normalized.insert(normalized.clone(), record.id);
        self.schemas.entry(record.id).or_insert(StoredSchema {
            text: record.schema,
            parsed,
            normalized,
        });
        true
    }

    /// The schema with `id`.
    pub fn schema(&self, id: u32) -> Option<&StoredSchema> {
        self.schemas.get(&id)
    }

    /// The id of a schema with this normalized form, in any subject.
    pub fn id_of(&self, normalized: &str) -> Option<u32> {
        self.ids_by_normalized.get(normalized).copied()
    }

    /// The next free id.
    pub fn next_id(&self) -> u32 {
        self.schemas.keys().next_back().map_or(1, |id| id + 1)
    }

    /// Every subject, sorted.
    pub fn subjects(&self) -> Vec<String> {
        self.subjects.keys().cloned().collect()
    }

    /// A subject's versions, oldest first.
    pub fn versions(&self, subject: &str) -> Option<&[Version]> {
        self.subjects.get(subject).map(Vec::as_slice).filter(|v| !v.is_empty())
    }

    /// The version of `subject` holding the schema with this normalized form.
    pub fn find_in_subject(&self, subject: &str, normalized: &str) -> Option<Version> {
        let id = self.id_of(normalized)?;
        self.versions(subject)?.iter().copied().find(|v| v.id == id)
    }

    /// The subject versions that use schema `id`.
    pub fn usages(&self, id: u32) -> Vec<(String, u32)> {
        self.subjects
            .iter()
            .flat_map(|(subject, versions)| {
                versions
                    .iter()
                    .filter(move |v| v.id == id)
                    .map(move |v| (subject.clone(), v.version))
            })
            .collect()
    }

    /// The level that applies to `subject`.
    pub fn level(&self, subject: Option<&str>, default: Level) -> Level {
        subject
            .and_then(|s| self.subject_levels.get(s).copied())
            .or(self.global_level)
            .unwrap_or(default)
    }

    /// The level set on `subject` itself, if any.
    pub fn subject_level(&self, subject: &str) -> Option<Level> {
        self.subject_levels.get(subject).copied()
    }

    /// The global level, if set.
    pub fn global_level(&self) -> Option<Level> {
        self.global_level
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = r#"{"type":"record","name":"A","fields":[{"name":"x","type":"int"}]}"#;
    const B: &str = r#"{"type":"record","name":"B","fields":[{"name":"y","type":"int"}]}"#;

    fn record(subject: &str, version: u32, id: u32, schema: &str) -> (LogKey, Vec<u8>) {
        let value = SchemaRecord {
            subject: subject.to_owned(),
            version,
            id,
            schema: schema.to_owned(),
            schema_type: "AVRO".to_owned(),
        };
        (
            LogKey::Schema {
                subject: subject.to_owned(),
                version,
            },
            serde_json::to_vec(&value).unwrap_or_default(),
        )
    }

    fn apply(state: &mut State, (key, value): (LogKey, Vec<u8>)) -> bool {
        state.apply(&key, Some(&value))
    }

    #[test]
    fn first_record_wins_an_id_race() {
        let mut state = State::default();
        assert!(apply(&mut state, record("s1", 1, 1, A)));
        // Another instance gave id 1 to a different schema at the same time.
        assert!(!apply(&mut state, record("s2", 1, 1, B)));
        assert_eq!(state.versions("s2"), None);
        assert!(apply(&mut state, record("s2", 1, 2, B)));
        assert_eq!(state.next_id(), 3);
    }

    #[test]
    fn first_record_wins_a_version_race() {
        let mut state = State::default();
        assert!(apply(&mut state, record("s", 1, 1, A)));
        assert!(!apply(&mut state, record("s", 1, 2, B)));
        assert_eq!(state.versions("s").map(<[Version]>::len), Some(1));
    }

    #[test]
    fn the_same_schema_keeps_its_id_across_subjects() {
        let mut state = State::default();
        assert!(apply(&mut state, record("s1", 1, 1, A)));
        assert!(apply(&mut state, record("s2", 1, 1, A)));
        // A second id for the same schema is refused.
        assert!(!apply(&mut state, record("s3", 1, 5, A)));
        assert_eq!(state.usages(1), [("s1".to_owned(), 1), ("s2".to_owned(), 1)]);
    }

    #[test]
    fn config_records_set_and_clear_levels() {
        let mut state = State::default();
        let value = serde_json::to_vec(&ConfigRecord {
            compatibility_level: Level::Full,
        })
        .unwrap_or_default();
        state.apply(
            &LogKey::Config {
                subject: Some("s".to_owned()),
            },
            Some(&value),
        );
        assert_eq!(state.level(Some("s"), Level::Backward), Level::Full);
        assert_eq!(state.level(Some("t"), Level::Backward), Level::Backward);
        state.apply(
            &LogKey::Config {
                subject: Some("s".to_owned()),
            },
            None,
        );
        assert_eq!(state.level(Some("s"), Level::Backward), Level::Backward);
    }

    #[test]
    fn garbage_records_are_ignored() {
        let mut state = State::default();
        let key = LogKey::Schema {
            subject: "s".to_owned(),
            version: 1,
        };
        assert!(!state.apply(&key, Some(b"not json")));
        assert!(!state.apply(&key, None));
        assert!(state.subjects().is_empty());
    }
}
