//! Prefixed, time-ordered identifiers.
//!
//! Every id is a [ULID] behind a short prefix (`evt_`, `sub_`, …). ULIDs sort by
//! creation time, so ids sort by arrival and make good DynamoDB sort keys.
//! Deterministic ids (for example a delivery id derived from an event and a
//! subscription) are built with [`Ulid`]s too, so every id has the same shape.
//!
//! [ULID]: https://github.com/ulid/spec

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use ulid::Ulid;

/// An id string did not have the expected prefix or was not a valid ULID.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    /// The id does not start with the prefix of its kind.
    #[error("expected an id starting with `{expected}`, got `{got}`")]
    WrongPrefix {
        /// The prefix this kind of id carries.
        expected: &'static str,
        /// The rejected input.
        got: String,
    },
    /// The part after the prefix is not a ULID.
    #[error("`{got}` is not a valid id: {source}")]
    Malformed {
        /// The rejected input.
        got: String,
        /// Why the ULID did not parse.
        #[source]
        source: ulid::DecodeError,
    },
    /// The ULID is over 128 bits (its first character is past `7`), which
    /// would alias a smaller one.
    #[error("`{got}` is not a valid id: a ULID starts with 0-7")]
    Overflow {
        /// The rejected input.
        got: String,
    },
}

macro_rules! prefixed_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(Ulid);

        impl $name {
            /// The prefix every id of this kind starts with.
            pub const PREFIX: &'static str = $prefix;

            /// A new id, ordered after every id made earlier in this process.
            pub fn new() -> Self {
                Self(next_ulid())
            }

            /// The id wrapping an existing ULID.
            pub const fn from_ulid(ulid: Ulid) -> Self {
                Self(ulid)
            }

            /// The ULID behind the prefix.
            pub const fn ulid(&self) -> Ulid {
                self.0
            }

            /// Milliseconds since the Unix epoch at which the id was made.
            pub fn timestamp_ms(&self) -> u64 {
                self.0.timestamp_ms()
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                // On the stack: ids are written several times per event.
                let mut buf = [0; ulid::ULID_LEN];
                let text = self.0.array_to_str(&mut buf);
                text.make_ascii_lowercase();
                f.write_str($prefix)?;
                f.write_str(text)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }

        impl FromStr for $name {
            type Err = IdError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let rest = s.strip_prefix($prefix).ok_or_else(|| IdError::WrongPrefix {
                    expected: $prefix,
                    got: s.to_owned(),
                })?;
                if rest.len() == ulid::ULID_LEN && rest.as_bytes().first().is_some_and(|c| !(b'0'..=b'7').contains(c)) {
                    return Err(IdError::Overflow { got: s.to_owned() });
                }
                Ulid::from_string(rest)
                    .map(Self)
                    .map_err(|source| IdError::Malformed { got: s.to_owned(), source })
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

prefixed_id!(
    /// An event, as accepted by the gateway or written by a Kafka-native producer.
    EventId,
    "evt_"
);
prefixed_id!(
    /// A subscription: a tenant's webhook target and what it wants to receive.
    SubscriptionId,
    "sub_"
);
prefixed_id!(
    /// A tenant: the unit of isolation.
    TenantId,
    "ten_"
);
prefixed_id!(
    /// An API key (the id, not the secret key itself).
    KeyId,
    "key_"
);
prefixed_id!(
    /// One delivery of one event to one subscription (deterministic, see
    /// [`DeliveryId::derive`]).
    DeliveryId,
    "dlv_"
);
prefixed_id!(
    /// One batched webhook (its `webhook-id`): several deliveries to one
    /// subscription in one request.
    BatchId,
    "bat_"
);

prefixed_id!(
    /// A request handled by an HTTP service, for correlating logs and errors.
    RequestId,
    "req_"
);

impl DeliveryId {
    /// The delivery id of `event` to `subscription`: the same inputs always give
    /// the same id, so a re-route after a crash produces the same deliveries.
    /// It keeps the event's timestamp, so deliveries sort like their events.
    pub fn derive(event: &EventId, subscription: &SubscriptionId) -> Self {
        let e = event.ulid().0;
        let s = subscription.ulid().0;
        // Mix the subscription's bits into the event's random part (80 bits).
        let mixed =
            (e ^ s.rotate_left(17) ^ s.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835)) & ((1u128 << 80) - 1);
        let time = e >> 80;
        Self(Ulid((time << 80) | mixed))
    }
}

/// A monotonic ULID source shared by the process, so ids made in the same
/// millisecond still sort in creation order.
fn next_ulid() -> Ulid {
    use std::sync::Mutex;
    static GENERATOR: Mutex<Option<ulid::Generator>> = Mutex::new(None);
    let mut guard = match GENERATOR.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    };
    let generator = guard.get_or_insert_with(ulid::Generator::new);
    // Overflow happens only after 2^80 ids in one millisecond; fall back to a
    // fresh random ULID rather than failing.
    generator.generate().unwrap_or_else(|_| Ulid::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_parse_round_trip() {
        let id = EventId::new();
        let text = id.to_string();
        assert!(text.starts_with("evt_"), "{text}");
        assert_eq!(text.len(), 4 + 26);
        assert_eq!(text[4..], id.0.to_string().to_ascii_lowercase());
        assert_eq!(text.parse::<EventId>(), Ok(id));
    }

    #[test]
    fn parse_rejects_wrong_prefix_and_garbage() {
        let sub = SubscriptionId::new().to_string();
        assert!(matches!(sub.parse::<EventId>(), Err(IdError::WrongPrefix { .. })));
        assert!(matches!(
            "evt_not-a-ulid".parse::<EventId>(),
            Err(IdError::Malformed { .. })
        ));
        // Past 128 bits: `8…` would alias `0…`, so two ids would be one.
        let id = EventId::new().to_string();
        let aliased = format!("evt_8{}", &id[5..]);
        assert!(matches!(aliased.parse::<EventId>(), Err(IdError::Overflow { .. })));
        assert_eq!(
            id.to_uppercase()
                .replacen("EVT_", "evt_", 1)
                .parse::<EventId>()
                .map(|p| p.to_string()),
            Ok(id)
        );
    }

    #[test]
    fn ids_sort_by_creation() {
        let ids: Vec<EventId> = (0..1000).map(|_| EventId::new()).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
        let mut texts: Vec<String> = ids.iter().map(ToString::to_string).collect();
        let before = texts.clone();
        texts.sort();
        assert_eq!(before, texts, "string order must equal creation order");
    }

    #[test]
    fn delivery_id_is_deterministic_and_distinct() {
        let event = EventId::new();
        let a = SubscriptionId::new();
        let b = SubscriptionId::new();
        assert_eq!(DeliveryId::derive(&event, &a), DeliveryId::derive(&event, &a));
        assert_ne!(DeliveryId::derive(&event, &a), DeliveryId::derive(&event, &b));
        assert_eq!(DeliveryId::derive(&event, &a).timestamp_ms(), event.timestamp_ms());
    }

    #[test]
    fn serde_uses_the_prefixed_form() {
        let id = TenantId::new();
        let json = serde_json::to_string(&id).unwrap_or_default();
        assert_eq!(json, format!("\"{id}\""));
        let back: TenantId = serde_json::from_str(&json).unwrap();
        assert_eq!(back, id);
    }
}
