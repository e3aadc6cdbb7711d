//! Reading DynamoDB queries page by page: every listing of the API (events,
//! the inbox, dead letters, subscriptions) through [`page`] with an opaque
//! [`Cursor`], and every read of a whole key range through [`query_all`].
//!
//! A listing's page is bounded twice: by its size, and by the queries it may
//! make. DynamoDB's `Limit` counts items *read*, before filters, so a
//! selective filter can read many items to return few; after
//! [`MAX_QUERIES`] the page is answered as it is (partial, even empty) with a
//! cursor, instead of scanning a tenant's whole history in one request.

use std::collections::HashMap;

use aws_sdk_dynamodb::operation::query::QueryOutput;
use aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder;
use aws_sdk_dynamodb::types::AttributeValue;
use base64::Engine;

use crate::dynamo::{StoreError, get_s, store_error};

/// A DynamoDB item (or key).
pub(crate) type Item = HashMap<String, AttributeValue>;

/// The most queries one listing page makes.
pub const MAX_QUERIES: usize = 10;

/// The cursor of one listing: the sort key where the next page starts,
/// tagged with the listing's name and version (`e1`, `d1`, `s1`) so a cursor
/// of one listing is refused by another, in URL-safe base64.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cursor {
    tag: &'static str,
    /// Whether a decoded sort key can belong to this listing.
    valid: fn(&str) -> bool,
}

impl Cursor {
    /// A cursor format named `tag` whose sort keys satisfy `valid`.
    pub(crate) const fn new(tag: &'static str, valid: fn(&str) -> bool) -> Self {
        Self { tag, valid }
    }

    /// The cursor continuing after `sk`.
    pub(crate) fn encode(&self, sk: &str) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{}:{sk}", self.tag))
    }

    /// The cursor continuing after the key DynamoDB stopped at.
    pub(crate) fn after(&self, key: &Item) -> Option<String> {
        get_s(key, "sk").map(|sk| self.encode(&sk))
    }

    /// The sort key in `cursor`, if this listing made it.
    pub(crate) fn decode(&self, cursor: &str) -> Option<String> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(cursor).ok()?;
        let text = String::from_utf8(bytes).ok()?;
        let sk = text.strip_prefix(self.tag)?.strip_prefix(':')?;
        (self.valid)(sk).then(|| sk.to_owned())
    }
}

/// One page of the query `request` (its table, index, key condition,
/// filters and direction set), from `start` (an exclusive start key):
/// items `take` keeps, until `limit` of them, the range's end or
/// `max_queries` queries (usually [`MAX_QUERIES`]). Also the key DynamoDB
/// stopped at, when there is more to read.
pub(crate) async fn page<T>(
    request: QueryFluentBuilder,
    table: &str,
    mut start: Option<Item>,
    (limit, max_queries): (usize, usize),
    mut take: impl FnMut(&Item) -> Option<T>,
) -> Result<(Vec<T>, Option<Item>), StoreError> {
    let limit = limit.max(1);
    let mut page = Vec::new();
    for _ in 0..max_queries.max(1) {
        // At most the items still wanted: the page never overshoots, so the
        // key DynamoDB stopped at is exactly where the next page starts.
        let wanted = i32::try_from(limit - page.len()).unwrap_or(i32::MAX);
        let output = request
            .clone()
            .limit(wanted)
            .set_exclusive_start_key(start.take())
            .send()
            .await
            .map_err(|e| store_error("Query", table, e))?;
        page.extend(output.items().iter().filter_map(&mut take));
        start = output.last_evaluated_key().cloned();
        if page.len() >= limit || start.is_none() {
            break;
        }
    }
    Ok((page, start))
}

/// Reads every page of `request` (through the SDK's paginator), handing
/// each to `each`; stops early when `each` says so (`false`).
pub(crate) async fn query_all(
    request: QueryFluentBuilder,
    table: &str,
    mut each: impl FnMut(&QueryOutput) -> bool,
) -> Result<(), StoreError> {
    let mut pages = request.into_paginator().send();
    while let Some(output) = pages.next().await {
        let output = output.map_err(|e| store_error("Query", table, e))?;
        if !each(&output) {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVENTS: Cursor = Cursor::new("e1", |sk| sk.starts_with("e#"));
    const LETTERS: Cursor = Cursor::new("d1", |sk| sk.starts_with("dlq#"));

    #[test]
    fn cursors_round_trip_and_belong_to_one_listing() {
        let cursor = EVENTS.encode("e#evt_1");
        assert_eq!(EVENTS.decode(&cursor), Some("e#evt_1".to_owned()));
        assert_eq!(LETTERS.decode(&cursor), None, "another listing's cursor");
        assert_eq!(
            EVENTS.decode(&EVENTS.encode("c#evt_1#0001")),
            None,
            "a key of another item kind"
        );
        assert_eq!(EVENTS.decode("not base64!"), None);
        assert_eq!(
            EVENTS.decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("e1e#x")),
            None
        );
        let key = HashMap::from([("sk".to_owned(), AttributeValue::S("e#evt_2".to_owned()))]);
        assert_eq!(
            EVENTS.after(&key).and_then(|c| EVENTS.decode(&c)),
            Some("e#evt_2".to_owned())
        );
    }
}
