//! Request parameters the handlers share: page sizes, event ids in paths,
//! typed JSON bodies.

use serde_json::Value;
use triggers_core::ids::EventId;

use crate::error::ApiError;

/// The page size of a listing: `limit`, 1-1000, 50 when absent.
pub fn page_limit(limit: Option<usize>) -> Result<usize, ApiError> {
    let limit = limit.unwrap_or(50);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::BadRequest("limit must be between 1 and 1000".to_owned()));
    }
    Ok(limit)
}

/// An event id from a path; one that does not parse is not found.
pub fn parse_event_id(text: &str) -> Result<EventId, ApiError> {
    text.parse().map_err(|_| ApiError::NotFound(format!("event {text}")))
}

/// A JSON body as `T`; serde's complaint names the field (422).
pub fn parse_body<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, ApiError> {
    serde_json::from_value(value).map_err(|e| {
        let message = e.to_string();
        let field = message
            .split('`')
            .nth(1)
            .filter(|_| message.starts_with("unknown field") || message.starts_with("missing field"))
            .unwrap_or("the body")
            .to_owned();
        ApiError::field(field, message)
    })
}

/// An integer field that also takes a JSON number written with a fraction
/// of zero (`353.0`): JSON Schema counts it as an integer, and so do
/// clients that write every number as a float.
pub fn integer<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<i64>,
{
    use serde::Deserialize;
    let number = serde_json::Number::deserialize(deserializer)?;
    let integral = match number.as_i64() {
        Some(n) => Some(n),
        // 2^53: past it a float no longer holds every integer.
        None => number
            .as_f64()
            .filter(|f| f.fract() == 0.0 && f.abs() <= 9_007_199_254_740_992.0)
            .map(|f| f as i64),
    };
    integral
        .and_then(|n| T::try_from(n).ok())
        .ok_or_else(|| serde::de::Error::custom(format!("{number} is not an integer in range")))
}

/// [`integer`] for an optional field (`null` or absent: `None`).
pub fn optional_integer<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<i64>,
{
    use serde::Deserialize;
    match Option::<serde_json::Number>::deserialize(deserializer)? {
        None => Ok(None),
        Some(number) => integer(serde_json::Value::Number(number))
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

/// A field of a PATCH body: absent (left as it is), `null` (cleared) or a
/// new value. Declare it `#[serde(default)]` so an absent field is
/// [`Patch::Absent`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Patch<T> {
    /// Not in the body: unchanged.
    #[default]
    Absent,
    /// `null`: cleared.
    Null,
    /// The new value.
    Value(T),
}

impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for Patch<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Option::<T>::deserialize(deserializer).map(|value| value.map_or(Self::Null, Self::Value))
    }
}

impl<T> Patch<T> {
    /// Applies the change to `slot` (`None` when cleared), with the new value
    /// checked and converted by `check` first.
    pub fn apply<U, E>(self, slot: &mut Option<U>, check: impl FnOnce(T) -> Result<U, E>) -> Result<(), E> {
        match self {
            Self::Absent => {}
            Self::Null => *slot = None,
            Self::Value(value) => *slot = Some(check(value)?),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[derive(Debug, serde::Deserialize)]
    struct Body {
        #[serde(default)]
        note: Patch<String>,
    }

    #[test]
    fn integers_may_be_written_as_integral_floats() {
        #[derive(Debug, serde::Deserialize)]
        struct Count {
            #[serde(deserialize_with = "integer")]
            n: i32,
        }
        let parse = |value| serde_json::from_value::<Count>(value).map(|c| c.n);
        assert_eq!(parse(json!({"n": 353})).unwrap(), 353);
        assert_eq!(parse(json!({"n": 353.0})).unwrap(), 353);
        assert_eq!(parse(json!({"n": -1.0})).unwrap(), -1);
        assert!(parse(json!({"n": 1.5})).is_err());
        assert!(parse(json!({"n": 3e10})).is_err());
        assert!(parse(json!({"n": "1"})).is_err());
    }

    #[test]
    fn a_patch_field_tells_absent_null_and_value_apart() {
        let parse = |value| serde_json::from_value::<Body>(value).unwrap().note;
        assert_eq!(parse(json!({})), Patch::Absent);
        assert_eq!(parse(json!({"note": null})), Patch::Null);
        assert_eq!(parse(json!({"note": "x"})), Patch::Value("x".to_owned()));
        let mut slot = Some(1);
        Patch::<i32>::Absent.apply(&mut slot, Ok::<_, ()>).unwrap();
        assert_eq!(slot, Some(1));
        Patch::Value(2).apply(&mut slot, Ok::<_, ()>).unwrap();
        assert_eq!(slot, Some(2));
        assert_eq!(Patch::Value(-1).apply(&mut slot, |_| Err("negative")), Err("negative"));
        assert_eq!(slot, Some(2), "a refused value changes nothing");
        Patch::<i32>::Null.apply(&mut slot, Ok::<_, ()>).unwrap();
        assert_eq!(slot, None);
    }
}
