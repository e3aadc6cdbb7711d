//! The item codec of the events table: keys, how a payload is stored
//! (inline, deflated or in chunks), an item read back as a
//! [`StoredEvent`], and a delivery outcome as an attempt item.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};

use super::StoredEvent;
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use crate::delivery::{Outcome, OutcomeKind};
use crate::dynamo::{TTL_ATTRIBUTE, UNIT_BYTES, attribute_size, get_n, get_s, n, s};
use crate::event::Event;
use crate::ids::{EventId, TenantId};
use crate::status::{EventStatus, Progress};

pub(crate) use crate::pager::Item;

/// The most a DynamoDB item may hold (names and values).
pub const ITEM_LIMIT: usize = 400 * 1024;
/// What an event item keeps free for its progress (one entry per matched
/// subscription, ~60 bytes each) and its fixed attributes.
pub(super) const ITEM_RESERVE: usize = 48 * 1024;
/// Chunk size of payloads that do not fit one item even deflated.
pub(super) const CHUNK_SIZE: usize = 300 * 1024;

pub(super) fn event_sk(id: &EventId) -> String {
    format!("e#{id}")
}

/// The key of an event's item.
pub(super) fn event_key(tenant: &TenantId, id: &EventId) -> Item {
    HashMap::from([
        ("pk".to_owned(), s(tenant.to_string())),
        ("sk".to_owned(), s(event_sk(id))),
    ])
}

pub(super) fn chunk_sk(id: &EventId, index: usize) -> String {
    format!("c#{id}#{index:04}")
}

/// How a payload is stored.
pub(super) enum Payload {
    Inline(String),
    Deflated(Vec<u8>),
    Chunked(Vec<Vec<u8>>),
}

/// How hard [`deflate`] works.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Effort {
    /// zlib-rs' level 1: greedy matches coded with deflate's static Huffman
    /// codes. A 1 KB JSON payload in ~5 µs, to about 58 %.
    Quick,
    /// Level 2: Huffman codes built for the text, about a fifth smaller
    /// than [`Effort::Quick`] on JSON; building them costs ~9 µs more
    /// however small the text.
    Close,
}

impl Effort {
    fn level(self) -> Compression {
        match self {
            Self::Quick => Compression::new(1),
            Self::Close => Compression::new(2),
        }
    }
}

/// `text` deflated (raw deflate). Each thread keeps a compressor per
/// [`Effort`]: a new one allocates and clears its tables, which takes
/// longer than compressing a 1 KB payload.
pub(super) fn deflate(text: &str, effort: Effort) -> Vec<u8> {
    thread_local! {
        static QUICK: RefCell<Compress> = RefCell::new(Compress::new(Effort::Quick.level(), false));
        static CLOSE: RefCell<Compress> = RefCell::new(Compress::new(Effort::Close.level(), false));
    }
    let input = text.as_bytes();
    let compressor = match effort {
        Effort::Quick => &QUICK,
        Effort::Close => &CLOSE,
    };
    compressor.with_borrow_mut(|compress| {
        compress.reset();
        let mut out = Vec::with_capacity(input.len() / 2 + 64);
        loop {
            let read = usize::try_from(compress.total_in())
                .unwrap_or(usize::MAX)
                .min(input.len());
            match compress.compress_vec(&input[read..], &mut out, FlushCompress::Finish) {
                Ok(Status::StreamEnd) => return out,
                // The output is full: room for as much again.
                Ok(Status::Ok | Status::BufError) => out.reserve(out.capacity().max(64)),
                // Not seen with a reset compressor; a fresh one then.
                Err(_) => return deflate_afresh(input, effort),
            }
        }
    })
}

fn deflate_afresh(input: &[u8], effort: Effort) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::DeflateEncoder::new(Vec::new(), effort.level());
    // Writing to a Vec cannot fail.
    let _ = encoder.write_all(input);
    encoder.finish().unwrap_or_default()
}

/// The most [`inflate`] gives: more than any payload it was given (1 MiB).
const INFLATED_MAX: usize = 8 << 20;

/// The text `bytes` deflate; `None` when they are not raw deflate of
/// UTF-8 (or inflate beyond [`INFLATED_MAX`]). Each thread keeps its
/// decompressor, as [`deflate`] does.
pub(super) fn inflate(bytes: &[u8]) -> Option<String> {
    thread_local! {
        static DECOMPRESS: RefCell<Decompress> = RefCell::new(Decompress::new(false));
    }
    DECOMPRESS.with_borrow_mut(|decompress| {
        decompress.reset(false);
        let mut out = Vec::with_capacity(bytes.len().saturating_mul(3).min(INFLATED_MAX) + 64);
        loop {
            let (read, written) = (decompress.total_in(), decompress.total_out());
            let rest = &bytes[usize::try_from(read).ok()?.min(bytes.len())..];
            // `Finish` would need the whole text to fit at once (miniz_oxide).
            match decompress.decompress_vec(rest, &mut out, FlushDecompress::None).ok()? {
                Status::StreamEnd => break,
                Status::Ok | Status::BufError => {
                    if out.len() == out.capacity() {
                        if out.len() >= INFLATED_MAX {
                            return None;
                        }
                        out.reserve(out.capacity());
                    } else if decompress.total_in() == read && decompress.total_out() == written {
                        // No progress with room to write: the input ended early.
                        return None;
                    }
                }
            }
        }
        String::from_utf8(out).ok()
    })
}

/// `text` stored inline if it takes at most `inline_limit` bytes, else
/// deflated, else in chunks.
pub(super) fn encode_payload(text: String, inline_limit: usize) -> Payload {
    if text.len() <= inline_limit {
        return Payload::Inline(text);
    }
    let deflated = deflate(&text, Effort::Close);
    if deflated.len() <= inline_limit {
        return Payload::Deflated(deflated);
    }
    Payload::Chunked(deflated.chunks(CHUNK_SIZE).map(<[u8]>::to_vec).collect())
}

/// Stores an inline payload of `body` deflated when that makes the item
/// take fewer write units, the item's other attributes (key, progress)
/// taking `others` bytes. DynamoDB charges a write a unit per started KiB
/// of the item, for its create, for every later change of its progress
/// and for each of its `inbox` index entries: a 1 KiB JSON payload, which
/// usually deflates to under half, turns a two-unit item into a one-unit
/// item. Payloads that would not save a unit stay inline (readable as
/// they are, and no deflate for the writer).
pub(super) fn deflate_if_cheaper(body: &mut [(&'static str, AttributeValue)], others: usize) {
    let size = others
        + body
            .iter()
            .map(|(name, value)| attribute_size(name, value))
            .sum::<usize>();
    if size <= UNIT_BYTES {
        return;
    }
    let Some(slot) = body.iter_mut().find(|(name, _)| *name == "data") else {
        return;
    };
    let AttributeValue::S(text) = &slot.1 else {
        return;
    };
    // The item's bytes but the payload's, and its units with `len`
    // deflated bytes.
    let fixed = size - attribute_size("data", &slot.1) + "data_z".len();
    let units = |len: usize| (fixed + len).div_ceil(UNIT_BYTES);
    // Deflated bytes that save a unit.
    let Some(room) = ((size.div_ceil(UNIT_BYTES) - 1) * UNIT_BYTES).checked_sub(fixed) else {
        return;
    };
    // The quick deflate leaves about 58 % of a JSON text: tried first when
    // 65 % would do, else the close one at once (trying both costs more).
    let quick_first = room * 100 >= text.len() * 65;
    let effort = if quick_first { Effort::Quick } else { Effort::Close };
    let mut deflated = deflate(text, effort);
    // After a quick deflate, a close one when it could take a unit more
    // off: it is about a fifth smaller.
    let one_fewer = (units(deflated.len()) - 1) * UNIT_BYTES;
    if quick_first && one_fewer > fixed && fixed + deflated.len() - one_fewer <= deflated.len() / 4 {
        let closer = deflate(text, Effort::Close);
        if units(closer.len()) < units(deflated.len()) {
            deflated = closer;
        }
    }
    // Empty: deflate failed (it never gives less than two bytes).
    if !deflated.is_empty() && deflated.len() <= room {
        *slot = ("data_z", AttributeValue::B(Blob::new(deflated)));
    }
}

/// The bytes DynamoDB counts for `attributes`.
pub(super) fn attributes_bytes<'a>(attributes: impl IntoIterator<Item = (&'a str, &'a AttributeValue)>) -> usize {
    attributes
        .into_iter()
        .map(|(name, value)| attribute_size(name, value))
        .sum()
}

/// The attributes of an event's body (everything but its progress), with
/// its payload stored as `payload` says.
pub(super) fn body_attributes(
    event: &Event,
    extensions: String,
    payload: Payload,
    expires_at: i64,
) -> Vec<(&'static str, AttributeValue)> {
    let mut body: Vec<(&'static str, AttributeValue)> = vec![
        ("event_type", s(&event.event_type)),
        ("source", s(&event.source)),
        ("time", n(event.time)),
        ("received_at", n(event.received_at)),
        ("specversion", s(&event.specversion)),
        ("datacontenttype", s(&event.datacontenttype)),
        ("extensions", s(extensions)),
        ("has_body", AttributeValue::Bool(true)),
        (TTL_ATTRIBUTE, n(expires_at)),
    ];
    if let Some(subject) = &event.subject {
        body.push(("subject", s(subject)));
    }
    if let Some(key) = &event.partition_key {
        body.push(("partition_key", s(key)));
    }
    match payload {
        Payload::Inline(text) => body.push(("data", s(text))),
        Payload::Deflated(bytes) => body.push(("data_z", AttributeValue::B(Blob::new(bytes)))),
        Payload::Chunked(chunks) => body.push(("chunks", n(chunks.len()))),
    }
    body
}

/// The bytes an event item takes besides its payload and progress.
pub(super) fn attributes_size(event: &Event, extensions: &str) -> usize {
    event.event_type.len()
        + event.source.len()
        + event.subject.as_ref().map_or(0, String::len)
        + event.partition_key.as_ref().map_or(0, String::len)
        + event.datacontenttype.len()
        + event.specversion.len()
        + extensions.len()
}

/// The attempt item of a delivery outcome (`None` for routing outcomes).
pub(super) fn attempt_item(outcome: &Outcome, expires_at: i64) -> Option<Item> {
    if matches!(outcome.kind, OutcomeKind::Routed | OutcomeKind::Unmatched) {
        return None;
    }
    let subscription = outcome.subscription_id.as_ref()?;
    let kind = serde_json::to_value(outcome.kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let mut item = HashMap::from([
        ("pk".to_owned(), s(outcome.tenant.to_string())),
        (
            "sk".to_owned(),
            s(format!(
                "{}#{subscription}#{:05}#{kind}",
                outcome.event_id, outcome.attempt
            )),
        ),
        ("subscription_id".to_owned(), s(subscription.to_string())),
        ("attempt".to_owned(), n(outcome.attempt)),
        ("kind".to_owned(), s(kind)),
        ("at".to_owned(), n(outcome.at)),
        (TTL_ATTRIBUTE.to_owned(), n(expires_at)),
    ]);
    if let Some(status) = outcome.http_status {
        item.insert("http_status".to_owned(), n(status));
    }
    if let Some(latency) = outcome.latency_ms {
        item.insert("latency_ms".to_owned(), n(latency));
    }
    if let Some(error) = &outcome.error {
        item.insert("error".to_owned(), s(error));
    }
    if let Some(excerpt) = &outcome.response_excerpt {
        item.insert("response_excerpt".to_owned(), s(excerpt));
    }
    if let Some(due) = outcome.next_attempt_at {
        item.insert("next_attempt_at".to_owned(), n(due));
    }
    Some(item)
}

/// Listings carry payloads stored inline up to this size; larger ones are
/// left out (`data_omitted`).
pub const LISTING_DATA_MAX: usize = 64 * 1024;

/// How much of a payload an item gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Load {
    /// The whole payload (one event): inflated if deflated.
    Whole,
    /// For a listing: inline payloads up to `budget` bytes, nothing else.
    Listing { budget: usize },
}

/// An item's payload text as `load` asks for it, and whether it was left
/// out. A listing gives a deflated payload too (small ones are stored
/// deflated to save a write unit, [`deflate_if_cheaper`]) when its text
/// fits the listing's limits; chunked payloads only come whole.
fn payload_text(item: &Item, load: Load) -> (Option<std::borrow::Cow<'_, str>>, bool) {
    let limit = match load {
        Load::Whole => usize::MAX,
        Load::Listing { budget } => LISTING_DATA_MAX.min(budget),
    };
    if let Some(text) = item.get("data").and_then(|v| v.as_s().ok()) {
        return if text.len() <= limit {
            (Some(std::borrow::Cow::Borrowed(text.as_str())), false)
        } else {
            (None, true)
        };
    }
    if let Some(bytes) = item.get("data_z").and_then(|v| v.as_b().ok()) {
        // Deflate adds a few bytes at most: bytes over the limit do not
        // inflate to a text within it.
        if bytes.as_ref().len() <= limit
            && let Some(text) = inflate(bytes.as_ref()).filter(|text| text.len() <= limit)
        {
            return (Some(std::borrow::Cow::Owned(text)), false);
        }
        return (None, true);
    }
    (None, item.contains_key("chunks"))
}

/// An event item read back, with the bytes of the payload text it gives
/// (0 when left out).
pub(super) fn from_item(item: &Item, tenant: &TenantId, load: Load) -> Option<(StoredEvent, usize)> {
    let id: EventId = get_s(item, "sk")?.strip_prefix("e#")?.parse().ok()?;
    let progress: Progress = get_s(item, "progress")
        .and_then(|p| serde_json::from_str(&p).ok())
        .unwrap_or_default();
    let (text, data_omitted) = payload_text(item, load);
    let given = text.as_deref().map_or(0, str::len);
    let data = text
        .and_then(|text| crate::event::Payload::from_text(text.into_owned()).ok())
        .unwrap_or_default();
    let extensions: BTreeMap<String, String> = get_s(item, "extensions")
        .and_then(|e| serde_json::from_str(&e).ok())
        .unwrap_or_default();
    Some((
        StoredEvent {
            event: Event {
                id,
                tenant: *tenant,
                event_type: get_s(item, "event_type").unwrap_or_default(),
                source: get_s(item, "source").unwrap_or_default(),
                subject: get_s(item, "subject"),
                time: get_n(item, "time").unwrap_or_default(),
                received_at: get_n(item, "received_at").unwrap_or_default(),
                specversion: get_s(item, "specversion").unwrap_or_else(|| "1.0".to_owned()),
                datacontenttype: get_s(item, "datacontenttype").unwrap_or_default(),
                data,
                partition_key: get_s(item, "partition_key"),
                extensions,
            },
            has_body: item.contains_key("has_body"),
            status: get_s(item, "status")
                .and_then(|s| EventStatus::parse(&s))
                .unwrap_or_else(|| progress.status()),
            progress,
            updated_at: get_n(item, "updated_at").unwrap_or_default(),
            data_omitted,
        },
        given,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(text: &str) -> Vec<(&'static str, AttributeValue)> {
        vec![("event_type", s("order.paid")), ("data", s(text))]
    }

    /// `lines` order lines as JSON, each different (ids, amounts).
    fn orders(lines: u64) -> String {
        let lines: Vec<_> = (0..lines)
            .map(|i| {
                let mixed = (i + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                let name = ["Merino wool hiking socks", "Cast iron skillet, 28 cm"][(mixed % 2) as usize];
                serde_json::json!({
                    "sku": format!("SKU-{:06}", mixed % 1_000_000),
                    "name": name,
                    "quantity": 1 + mixed % 4,
                    "unit_price": {"amount": 499 + mixed % 20_000, "currency": "EUR"},
                    "reference": format!("pi_{mixed:016x}"),
                })
            })
            .collect();
        serde_json::json!({"order_id": "ord_5f3c9a1b2e4d", "lines": lines}).to_string()
    }

    #[test]
    fn a_payload_is_deflated_only_when_the_item_then_takes_fewer_units() {
        let repetitive = format!("[{}]", "{\"sku\":\"SKU-1\",\"qty\":1},".repeat(50));
        assert!(repetitive.len() > 1_000);
        let deflated_to = |text: &str, others: usize| {
            let mut body = body(text);
            deflate_if_cheaper(&mut body, others);
            body.iter().find(|(name, _)| *name == "data_z").map(|(_, value)| {
                let bytes = value.as_b().map(|b| b.as_ref().to_vec()).unwrap_or_default();
                assert!(inflate(&bytes).as_deref() == Some(text), "does not inflate back");
                bytes.len()
            })
        };
        // Two units inline, one deflated.
        assert!(deflated_to(&repetitive, 200).is_some_and(|len| len < 200));
        // Within one unit already: nothing to save.
        assert_eq!(deflated_to("{\"sku\":\"SKU-1\"}", 200), None);
        assert_eq!(deflated_to(&repetitive[..700], 300), None);
        // Pseudo-random text deflates by a fifth at most: two units either way.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let noise: String = (0..1_400)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                char::from(b'#' + (state % 88) as u8)
            })
            .collect();
        assert_eq!(deflated_to(&noise, 200), None);
        // The quick deflate when it saves the unit with room to spare, the
        // close one when only it can.
        let order = orders(6);
        let (quick, close) = (
            deflate(&order, Effort::Quick).len(),
            deflate(&order, Effort::Close).len(),
        );
        assert!(quick > close && quick - close <= quick / 4, "{quick} against {close}");
        let room = UNIT_BYTES - attribute_size("event_type", &s("order.paid")) - "data_z".len();
        assert!(order.len() + room - close > UNIT_BYTES, "inline takes two units");
        // Room for 70 % of the text: the quick one.
        let generous = order.len() * 7 / 10;
        assert!(quick <= generous, "{quick} of {}", order.len());
        assert_eq!(deflated_to(&order, room - generous), Some(quick));
        // Room for less than the quick one leaves: the close one at once.
        assert_eq!(deflated_to(&order, room - quick + 1), Some(close));
        assert_eq!(deflated_to(&order, room - close), Some(close));
        assert_eq!(deflated_to(&order, room - close + 1), None);
        // Deflated payloads and chunks are left as they are.
        let mut chunked = vec![("chunks", n(2))];
        deflate_if_cheaper(&mut chunked, 5_000);
        assert_eq!(chunked, [("chunks", n(2))]);
    }

    #[test]
    fn deflate_round_trips_and_bad_input_does_not_inflate() {
        let texts = [
            String::new(),
            "{\"a\":1}".to_owned(),
            "é ✓ ".repeat(100_000),
            (0..300_000u32)
                .map(|i| char::from(b'a' + (i * 7919 % 26) as u8))
                .collect(),
        ];
        for effort in [Effort::Quick, Effort::Close] {
            for (i, text) in texts.iter().enumerate() {
                let bytes = deflate(text, effort);
                assert!(!bytes.is_empty());
                assert!(inflate(&bytes).as_deref() == Some(text.as_str()), "{effort:?} text {i}");
                // The same again: the thread's compressor starts afresh.
                assert!(deflate(text, effort) == bytes, "{effort:?} text {i}");
            }
        }
        let bytes = deflate(&texts[2], Effort::Close);
        assert_eq!(inflate(&bytes[..bytes.len() / 2]), None, "truncated");
        assert_eq!(inflate(b"not deflate at all"), None);
    }

    #[test]
    fn payloads_deflated_before_zlib_rs_still_inflate() {
        // miniz_oxide's fast level (dynamic Huffman codes), as stored until
        // 2026-12-07.
        let stored = [
            0x85, 0x8c, 0xc1, 0x0d, 0x40, 0x30, 0x00, 0x45, 0x57, 0x91, 0x7f, 0xae, 0x84, 0xe2, 0xa0, 0x2b, 0x38, 0x8a,
            0x93, 0x88, 0xa0, 0x95, 0x34, 0xa4, 0x82, 0x3a, 0x48, 0xd3, 0x29, 0x5c, 0x2d, 0x60, 0x0e, 0x9b, 0x98, 0x44,
            0x4d, 0xe0, 0x9f, 0x7e, 0xf2, 0x5e, 0x9e, 0xc1, 0xb4, 0x70, 0xb1, 0xd4, 0x92, 0x83, 0x7d, 0xb7, 0x4e, 0xfa,
            0xa8, 0x4b, 0x9b, 0xb0, 0xa5, 0x22, 0xe6, 0x20, 0x18, 0xa5, 0x12, 0x2b, 0x58, 0x69, 0xb0, 0x0e, 0x9b, 0x53,
            0xf2, 0xac, 0xf0, 0x03, 0xb7, 0x98, 0x3a, 0x38, 0x6f, 0x8d, 0xd2, 0x52, 0xef, 0x60, 0xd4, 0x92, 0x1f, 0x23,
            0xb2, 0x15, 0x81, 0x9a, 0xb4, 0x70, 0x91, 0xfb, 0xf2, 0x9e, 0xf3, 0x80, 0x7d, 0x01,
        ];
        let text = r#"{"order_id":"ord_5f3c9a1b2e4d","lines":[{"sku":"SKU-000042","quantity":2},{"sku":"SKU-000042","quantity":3}],"note":"é ✓"}"#;
        assert_eq!(inflate(&stored).as_deref(), Some(text));
    }

    #[test]
    fn payloads_are_stored_inline_deflated_or_chunked() {
        let limit = 350 * 1024;
        assert!(matches!(encode_payload("x".repeat(1000), limit), Payload::Inline(_)));
        assert!(matches!(
            encode_payload("ab".repeat(400 * 1024), limit),
            Payload::Deflated(_)
        ));
        // What the other attributes leave decides: a smaller room deflates sooner.
        assert!(matches!(encode_payload("x".repeat(1000), 999), Payload::Deflated(_)));
        // Incompressible: 1 MiB of pseudo-random hex-free bytes as a JSON string.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let noise: String = (0..1024 * 1024)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                char::from(b'!' + (state % 90) as u8)
            })
            .filter(|c| *c != '"' && *c != '\\')
            .collect();
        let text = serde_json::to_string(&noise).unwrap_or_default();
        match encode_payload(text.clone(), limit) {
            Payload::Chunked(chunks) => {
                assert!(chunks.len() >= 2);
                assert!(chunks.iter().all(|c| c.len() <= CHUNK_SIZE));
                assert_eq!(inflate(&chunks.concat()), Some(text));
            }
            _ => panic!("1 MiB of noise was not chunked"),
        }
    }
}
