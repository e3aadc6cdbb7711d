//! What a subscription receives: event type patterns and content filters.
//!
//! **Event types**: an exact type (`order.created`), a prefix (`order.*`
//! matches `order.created` and `order.line.added`, not `orders.x` nor
//! `order`), or `*` (everything).
//!
//! **Filters**: JSON over the event. A leaf names a `field` and one operator;
//! `and`, `or` (lists) and `not` combine them:
//!
//! ```json
//! {"and": [
//!   {"field": "data.total", "gte": 100},
//!   {"field": "data.currency", "in": ["EUR", "USD"]},
//!   {"not": {"field": "subject", "prefix": "test-"}},
//!   {"field": "data.customer.vip", "exists": true}
//! ]}
//! ```
//!
//! Fields: `id`, `type`, `source`, `subject`, `time` (ms since the epoch),
//! `data` and paths below it (`data.items.0.sku`; numbers index arrays), and
//! extension attributes by name (`ext.priority`). Operators: `eq`, `ne` (any
//! JSON value), `in` (a list of values), `prefix` (string), `gt`, `gte`,
//! `lt`, `lte` (numbers), `exists` (boolean). A missing field equals nothing,
//! is in nothing, has no prefix and compares false; `ne` is true for it.
//! Filters nest at most 16 deep with at most 256 nodes.

use serde_json::{Map, Value};

use crate::event::Event;

/// The deepest nesting of a filter.
pub const MAX_DEPTH: usize = 16;
/// The most nodes in a filter.
pub const MAX_NODES: usize = 256;

/// A filter or pattern that does not compile, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct FilterError {
    /// Where in the filter, e.g. `filter.and[1].gte`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

fn error(path: &str, message: impl Into<String>) -> FilterError {
    FilterError {
        path: path.to_owned(),
        message: message.into(),
    }
}

/// One event type pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TypePattern {
    /// Exactly this type.
    Exact(String),
    /// Types starting with this and a dot (`order.*` is `Prefix("order")`).
    Prefix(String),
    /// Every type.
    Any,
}

impl TypePattern {
    /// Parses `order.created`, `order.*` or `*`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let valid = |s: &str| {
            !s.is_empty()
                && s.chars().count() <= 256
                && s.chars().all(|c| !c.is_control() && !c.is_whitespace() && c != '*')
        };
        if text == "*" {
            Ok(Self::Any)
        } else if let Some(prefix) = text.strip_suffix(".*") {
            if valid(prefix) {
                Ok(Self::Prefix(prefix.to_owned()))
            } else {
                Err(format!("`{text}` is not a valid prefix pattern (`prefix.*`)"))
            }
        } else if valid(text) {
            Ok(Self::Exact(text.to_owned()))
        } else {
            Err(format!("`{text}` is not an event type, `prefix.*` or `*`"))
        }
    }

    /// Whether an event of `event_type` matches.
    pub fn matches(&self, event_type: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(t) => t == event_type,
            Self::Prefix(p) => {
                event_type.len() > p.len() + 1
                    && event_type.starts_with(p.as_str())
                    && event_type.as_bytes()[p.len()] == b'.'
            }
        }
    }
}

/// Where a filter field is read from.
#[derive(Debug, Clone, PartialEq)]
enum Field {
    Id,
    Type,
    Source,
    Subject,
    Time,
    /// `data` and a path below it.
    Data(Vec<Segment>),
    /// An extension attribute.
    Extension(String),
}

#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Key(String),
    /// A numeric segment: an array index, or an object key of digits.
    Index(usize, String),
}

/// A comparison of one field.
#[derive(Debug, Clone, PartialEq)]
enum Op {
    Eq(Value),
    Ne(Value),
    In(Vec<Value>),
    Prefix(String),
    Gt(f64),
    Gte(f64),
    Lt(f64),
    Lte(f64),
    Exists(bool),
}

/// A compiled filter.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// Every part holds.
    And(Vec<Filter>),
    /// Some part holds.
    Or(Vec<Filter>),
    /// The part does not hold.
    Not(Box<Filter>),
    /// A field comparison.
    Leaf {
        /// The field.
        field: Box<FieldRef>,
        /// The comparison.
        op: Box<OpRef>,
    },
}

/// A compiled field reference (opaque).
#[derive(Debug, Clone, PartialEq)]
pub struct FieldRef(Field);

/// A compiled comparison (opaque).
#[derive(Debug, Clone, PartialEq)]
pub struct OpRef(Op);

const OPERATORS: &[&str] = &["eq", "ne", "in", "prefix", "gt", "gte", "lt", "lte", "exists"];

impl Filter {
    /// Compiles a filter; errors say where (`filter.and[1].gte: …`).
    pub fn compile(value: &Value) -> Result<Self, FilterError> {
        let mut nodes = 0;
        compile(value, "filter", 1, &mut nodes)
    }

    /// Whether `event` passes.
    pub fn matches(&self, event: &Event) -> bool {
        match self {
            Self::And(parts) => parts.iter().all(|p| p.matches(event)),
            Self::Or(parts) => parts.iter().any(|p| p.matches(event)),
            Self::Not(part) => !part.matches(event),
            Self::Leaf { field, op } => {
                let value = resolve(&field.0, event);
                apply(&op.0, value.as_ref())
            }
        }
    }
}

fn compile(value: &Value, path: &str, depth: usize, nodes: &mut usize) -> Result<Filter, FilterError> {
    *nodes += 1;
    if *nodes > MAX_NODES {
        return Err(error(path, format!("the filter has more than {MAX_NODES} nodes")));
    }
    if depth > MAX_DEPTH {
        return Err(error(path, format!("filters nest at most {MAX_DEPTH} deep")));
    }
    let Value::Object(object) = value else {
        return Err(error(
            path,
            "must be an object: {\"field\": …, \"<op>\": …}, {\"and\": […]}, {\"or\": […]} or {\"not\": {…}}",
        ));
    };
    for combinator in ["and", "or"] {
        if let Some(parts) = object.get(combinator) {
            only_key(object, combinator, path)?;
            let here = format!("{path}.{combinator}");
            let Value::Array(parts) = parts else {
                return Err(error(&here, "must be a list of filters"));
            };
            if parts.is_empty() {
                return Err(error(&here, "must not be empty"));
            }
            let compiled = parts
                .iter()
                .enumerate()
                .map(|(i, part)| compile(part, &format!("{here}[{i}]"), depth + 1, nodes))
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(if combinator == "and" {
                Filter::And(compiled)
            } else {
                Filter::Or(compiled)
            });
        }
    }
    if let Some(part) = object.get("not") {
        only_key(object, "not", path)?;
        return Ok(Filter::Not(Box::new(compile(
            part,
            &format!("{path}.not"),
            depth + 1,
            nodes,
        )?)));
    }
    let field = match object.get("field") {
        Some(Value::String(name)) => parse_field(name).map_err(|m| error(&format!("{path}.field"), m))?,
        Some(_) => return Err(error(&format!("{path}.field"), "must be a string")),
        None => return Err(error(path, "needs `field` and one operator, or `and`, `or`, `not`")),
    };
    let mut ops = object.keys().filter(|k| k.as_str() != "field");
    let (Some(name), None) = (ops.next(), ops.next()) else {
        return Err(error(
            path,
            format!(
                "needs exactly one operator besides `field`: one of {}",
                OPERATORS.join(", ")
            ),
        ));
    };
    let here = format!("{path}.{name}");
    let operand = &object[name];
    let number = || operand.as_f64().ok_or_else(|| error(&here, "must be a number"));
    let op = match name.as_str() {
        "eq" => Op::Eq(operand.clone()),
        "ne" => Op::Ne(operand.clone()),
        "in" => match operand {
            Value::Array(values) if !values.is_empty() && values.len() <= 1000 => Op::In(values.clone()),
            _ => return Err(error(&here, "must be a list of 1 to 1000 values")),
        },
        "prefix" => match operand {
            Value::String(prefix) => Op::Prefix(prefix.clone()),
            _ => return Err(error(&here, "must be a string")),
        },
        "gt" => Op::Gt(number()?),
        "gte" => Op::Gte(number()?),
        "lt" => Op::Lt(number()?),
        "lte" => Op::Lte(number()?),
        "exists" => match operand {
            Value::Bool(b) => Op::Exists(*b),
            _ => return Err(error(&here, "must be true or false")),
        },
        other => {
            return Err(error(
                &format!("{path}.{other}"),
                format!("unknown operator; use one of {}", OPERATORS.join(", ")),
            ));
        }
    };
    Ok(Filter::Leaf {
        field: Box::new(FieldRef(field)),
        op: Box::new(OpRef(op)),
    })
}

fn only_key(object: &Map<String, Value>, key: &str, path: &str) -> Result<(), FilterError> {
    match object.keys().find(|k| k.as_str() != key) {
        Some(other) => Err(error(
            &format!("{path}.{other}"),
            format!("cannot stand beside `{key}`"),
        )),
        None => Ok(()),
    }
}

fn parse_field(name: &str) -> Result<Field, String> {
    match name {
        "id" => return Ok(Field::Id),
        "type" => return Ok(Field::Type),
        "source" => return Ok(Field::Source),
        "subject" => return Ok(Field::Subject),
        "time" => return Ok(Field::Time),
        "data" => return Ok(Field::Data(Vec::new())),
        _ => {}
    }
    if let Some(path) = name.strip_prefix("data.") {
        let segments: Vec<Segment> = path
            .split('.')
            .map(|s| match s.parse::<usize>() {
                Ok(i) => Segment::Index(i, s.to_owned()),
                Err(_) => Segment::Key(s.to_owned()),
            })
            .collect();
        if path.split('.').any(str::is_empty) {
            return Err(format!("`{name}` has an empty path segment"));
        }
        return Ok(Field::Data(segments));
    }
    if let Some(extension) = name.strip_prefix("ext.")
        && !extension.is_empty()
    {
        return Ok(Field::Extension(extension.to_owned()));
    }
    Err(format!(
        "`{name}` is not a field: use id, type, source, subject, time, data, data.<path> or ext.<name>"
    ))
}

fn resolve(field: &Field, event: &Event) -> Option<Value> {
    match field {
        Field::Id => Some(Value::String(event.id.to_string())),
        Field::Type => Some(Value::String(event.event_type.clone())),
        Field::Source => Some(Value::String(event.source.clone())),
        Field::Subject => event.subject.clone().map(Value::String),
        Field::Time => Some(Value::from(event.time)),
        Field::Extension(name) => event.extensions.get(name).cloned().map(Value::String),
        Field::Data(segments) => {
            let mut current = event.data.value();
            for segment in segments {
                current = match (segment, current) {
                    (Segment::Key(key), Value::Object(map)) => map.get(key)?,
                    (Segment::Index(_, key), Value::Object(map)) => map.get(key)?,
                    (Segment::Index(i, _), Value::Array(items)) => items.get(*i)?,
                    _ => return None,
                };
            }
            // `null` counts as absent.
            (!current.is_null()).then(|| current.clone())
        }
    }
}

/// JSON equality, with numbers compared by value (1 == 1.0).
fn equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

fn apply(op: &Op, value: Option<&Value>) -> bool {
    match (op, value) {
        (Op::Exists(wanted), value) => value.is_some() == *wanted,
        (Op::Ne(other), Some(value)) => !equal(value, other),
        (Op::Ne(_), None) => true,
        (_, None) => false,
        (Op::Eq(other), Some(value)) => equal(value, other),
        (Op::In(values), Some(value)) => values.iter().any(|v| equal(value, v)),
        (Op::Prefix(prefix), Some(Value::String(s))) => s.starts_with(prefix.as_str()),
        (Op::Prefix(_), Some(_)) => false,
        (Op::Gt(n), Some(v)) => v.as_f64().is_some_and(|x| x > *n),
        (Op::Gte(n), Some(v)) => v.as_f64().is_some_and(|x| x >= *n),
        (Op::Lt(n), Some(v)) => v.as_f64().is_some_and(|x| x < *n),
        (Op::Lte(n), Some(v)) => v.as_f64().is_some_and(|x| x <= *n),
    }
}

#[cfg(test)]
mod tests;
