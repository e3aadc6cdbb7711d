//! An event's progress: the read-modify-write of its per-subscription
//! states under the item's version, and the cache that lets one writer
//! skip the read.

use std::collections::HashMap;

use super::item::event_key;
use crate::analytics::Tally;
use crate::dynamo::{Get, ItemCalls, StoreError, StoreErrorKind, TTL_ATTRIBUTE, Tables, Update, get_n, get_s, n, s};
use crate::event::now_ms;
use crate::ids::{EventId, TenantId};
use crate::status::{EventStatus, Progress};

/// What a writer brings to its progress changes: the versions it knows
/// (skips reads) and the analytics tally its status changes count into.
#[derive(Debug, Clone, Copy, Default)]
pub struct Track<'a> {
    /// Versions and progress this writer last wrote.
    pub cache: Option<&'a ProgressCache>,
    /// Where status transitions are counted.
    pub tally: Option<&'a Tally>,
}

/// What one writer last wrote of recent events' progress (version and
/// progress), so its next change of the same event can skip the read, and a
/// body written after its stub can skip the create that would fail. Only an
/// optimisation: every write stays conditional on the version, and a
/// conflict drops the entry and reads. Bounded in count (the least
/// recently used go first) and in age: an entry unused for
/// [`PROGRESS_CACHE_IDLE`] is dropped, so a steady rate keeps a steady
/// size (rate × idle time) instead of filling to the count bound over
/// hours, and memory stops growing minutes after start.
#[derive(Debug)]
pub struct ProgressCache {
    entries: moka::sync::Cache<(TenantId, EventId), (i64, Progress)>,
}

/// Entries a [`ProgressCache`] holds at most.
pub(super) const PROGRESS_CACHE_SIZE: u64 = 100_000;

/// How long an entry is kept unused. An event's changes mostly come within
/// seconds (routed, delivered); this also covers retries up to the 2-minute
/// step. A later change reads once, as without the cache.
pub(super) const PROGRESS_CACHE_IDLE: std::time::Duration = std::time::Duration::from_secs(5 * 60);

impl Default for ProgressCache {
    fn default() -> Self {
        Self {
            entries: moka::sync::Cache::builder()
                .max_capacity(PROGRESS_CACHE_SIZE)
                .time_to_idle(PROGRESS_CACHE_IDLE)
                .build(),
        }
    }
}

impl ProgressCache {
    /// The progress this writer last wrote of an event, if it still knows it.
    pub fn progress(&self, tenant: &TenantId, id: &EventId) -> Option<Progress> {
        self.get(tenant, id).map(|(_, progress)| progress)
    }

    pub(super) fn get(&self, tenant: &TenantId, id: &EventId) -> Option<(i64, Progress)> {
        self.entries.get(&(*tenant, *id))
    }

    pub(super) fn put(&self, tenant: &TenantId, id: &EventId, version: i64, progress: Progress) {
        self.entries.insert((*tenant, *id), (version, progress));
    }

    pub(super) fn forget(&self, tenant: &TenantId, id: &EventId) {
        self.entries.invalidate(&(*tenant, *id));
    }
}

/// How [`update_progress`] works.
#[derive(Clone, Copy)]
pub(super) struct How<'a> {
    /// The expiry of a stub it creates.
    pub(super) expires_at: i64,
    /// Change nothing unless the event's body is stored.
    pub(super) must_exist: bool,
    /// Versions this writer knows, and its tally.
    pub(super) track: Track<'a>,
}

/// Changes an event's progress with `change` (read-modify-write under the
/// item's version; retried on conflicts). Creates a stub when the body has
/// not arrived yet (unless `must_exist`). Returns the new status, or `None`
/// when the event does not exist and `must_exist`.
pub(super) async fn update_progress(
    client: &impl ItemCalls,
    tables: &Tables,
    tenant: &TenantId,
    id: &EventId,
    how: How<'_>,
    change: impl Fn(&mut Progress) -> bool,
) -> Result<Option<EventStatus>, StoreError> {
    let How {
        expires_at,
        must_exist,
        track: Track { cache, tally },
    } = how;
    let table = &tables.events;
    let mut cached = cache.and_then(|c| c.get(tenant, id));
    for _ in 0..50 {
        let (version, mut progress) = match cached.take() {
            Some((version, progress)) => (Some(version), progress),
            None => match read_progress(client, table, tenant, id, must_exist).await? {
                Stored::Gone => return Ok(None),
                Stored::Found(version, progress) => (version, progress),
            },
        };
        // What the tally compares against (nothing when the event is new).
        let before = tally.and(version).map(|_| progress.clone());
        if !change(&mut progress) && version.is_some() {
            return Ok(Some(progress.status()));
        }
        let status = progress.status();
        let mut update = String::from(
            "SET progress = :progress, #status = :status, version = :next, updated_at = :now, #ttl = if_not_exists(#ttl, :ttl)",
        );
        update.push_str(if status.in_inbox() {
            ", inbox_pk = :inbox"
        } else {
            " REMOVE inbox_pk"
        });
        let next = version.unwrap_or(-1) + 1;
        let mut values = HashMap::from([
            (
                ":progress".to_owned(),
                s(serde_json::to_string(&progress).unwrap_or_default()),
            ),
            (":status".to_owned(), s(status.as_str())),
            (":next".to_owned(), n(next)),
            (":now".to_owned(), n(now_ms())),
            (":ttl".to_owned(), n(expires_at)),
        ]);
        if status.in_inbox() {
            values.insert(":inbox".to_owned(), s(tenant.to_string()));
        }
        let condition = match version {
            Some(v) => {
                values.insert(":v".to_owned(), n(v));
                "version = :v"
            }
            None => "attribute_not_exists(version) AND attribute_not_exists(deleted)",
        };
        let written = client
            .update(Update {
                table,
                key: event_key(tenant, id),
                update,
                condition,
                names: HashMap::from([
                    ("#status".to_owned(), "status".to_owned()),
                    ("#ttl".to_owned(), TTL_ATTRIBUTE.to_owned()),
                ]),
                values,
            })
            .await?;
        if written {
            if let Some(tally) = tally {
                tally.progressed(tenant, id, before.as_ref(), &progress);
            }
            if let Some(cache) = cache {
                cache.put(tenant, id, next, progress);
            }
            return Ok(Some(status));
        }
        if let Some(cache) = cache {
            cache.forget(tenant, id);
        }
    }
    Err(StoreError::found(
        "UpdateItem",
        table,
        StoreErrorKind::Contended,
        "too many concurrent changes",
    ))
}

pub(super) enum Stored {
    /// Deleted, or absent while it must exist.
    Gone,
    /// The version (none for a new item) and progress.
    Found(Option<i64>, Progress),
}

pub(super) async fn read_progress(
    client: &impl ItemCalls,
    table: &str,
    tenant: &TenantId,
    id: &EventId,
    must_exist: bool,
) -> Result<Stored, StoreError> {
    let item = client
        .get(Get {
            table,
            key: event_key(tenant, id),
            projection: "progress, version, has_body, deleted",
            consistent: true,
        })
        .await?;
    let item = item.as_ref();
    if item.is_some_and(|i| i.contains_key("deleted")) {
        return Ok(Stored::Gone);
    }
    if must_exist && !item.is_some_and(|i| i.contains_key("has_body")) {
        return Ok(Stored::Gone);
    }
    let version = item.and_then(|i| get_n(i, "version"));
    let progress: Progress = item
        .and_then(|i| get_s(i, "progress"))
        .and_then(|p| serde_json::from_str(&p).ok())
        .unwrap_or_default();
    Ok(Stored::Found(version, progress))
}
