//! Tenant analytics: per-minute and per-hour counters and latency
//! histograms per tenant and per subscription, kept by the pipeline as it
//! runs and served by `GET /v1/analytics` (the `analytics` table).
//!
//! A [`Tally`] gathers counts in memory and adds them to DynamoDB every few
//! seconds with one `UpdateItem … ADD` per (tenant, scope, minute) and per
//! (tenant, scope, hour), so the cost does not grow with the event rate.
//! Who counts what:
//! - the persister counts status *transitions* of events, where its
//!   conditional progress write succeeds (so a replayed record counts
//!   nothing), and each delivery attempt it stores, with its latency and
//!   error class;
//! - the gateway counts its own answer time per event (ingest latency) and
//!   acknowledgements from the inbox.
//!
//! Everything is counted in the bucket of the *event's* minute (its id is
//! time-ordered), so "of the events received in this hour, how many were
//! delivered" is one lookup, and the status counts of a range always add up
//! to the events ingested in it.
//!
//! Items: `pk` = tenant, `sk` = `m#<minute>#<scope>` or `h#<hour>#<scope>`
//! (minutes/hours since the epoch, 10 digits; scope `*` for the tenant,
//! else the subscription id), one number attribute per counter. Accuracy: a
//! flush that fails is kept and added later; counts of a process killed
//! before its next flush (at most one interval) are lost, and an attempt
//! whose record is processed twice (a crash before its offset was stored)
//! counts twice.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::AttributeValue;
use serde::Serialize;

use crate::CancellationToken;
use crate::delivery::{Outcome, OutcomeKind};
use crate::ids::{EventId, TenantId};
use crate::status::Progress;
use crate::tenancy::StoreError;

/// Upper bounds (ms) of the latency histogram buckets; the last bucket is
/// open. Percentiles are interpolated inside a bucket.
pub const BUCKETS_MS: [i64; 24] = [
    1, 2, 5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 750, 1_000, 1_500, 2_000, 3_000, 5_000, 10_000, 30_000,
    60_000, 300_000, 3_600_000,
];

/// How long analytics items are kept.
pub const RETENTION: Duration = Duration::from_secs(35 * 86_400);

/// The latencies kept as histograms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Latency {
    /// Request received to 202 (the gateway).
    Ingest,
    /// Event received to its delivery (2xx).
    EndToEnd,
    /// One webhook request.
    Attempt,
}

impl Latency {
    fn prefix(self) -> &'static str {
        match self {
            Self::Ingest => "h_ing_",
            Self::EndToEnd => "h_e2e_",
            Self::Attempt => "h_att_",
        }
    }
}

/// The histogram bucket of a latency.
pub fn bucket_of(ms: i64) -> usize {
    BUCKETS_MS
        .iter()
        .position(|&bound| ms <= bound)
        .unwrap_or(BUCKETS_MS.len())
}

/// Why an attempt failed, coarsely.
pub fn error_class(outcome: &Outcome) -> &'static str {
    if let Some(status) = outcome.http_status {
        return match status {
            429 => "rate_limited",
            400..=499 => "http_4xx",
            500..=599 => "http_5xx",
            _ => "other",
        };
    }
    let error = outcome.error.as_deref().unwrap_or_default().to_ascii_lowercase();
    if error.contains("timed out") || error.contains("timeout") {
        "timeout"
    } else if error.contains("ssrf") {
        "blocked"
    } else if error.contains("connect") || error.contains("refused") || error.contains("dns") || error.contains("reset")
    {
        "connection"
    } else {
        "other"
    }
}

/// The error classes [`error_class`] names.
pub const ERROR_CLASSES: [&str; 7] = [
    "timeout",
    "connection",
    "http_4xx",
    "http_5xx",
    "rate_limited",
    "blocked",
    "other",
];

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Cell {
    tenant: TenantId,
    minute: i64,
    /// `*` for the tenant, else a subscription id.
    scope: String,
}

type Counts = BTreeMap<String, i64>;

/// Counts gathered in memory and added to the analytics table every
/// `interval`. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Tally {
    cells: Arc<parking_lot::Mutex<HashMap<Cell, Counts>>>,
    /// Where flushes go (none for a detached tally).
    table: Option<Arc<(Client, String)>>,
}

fn minute_of(ms: i64) -> i64 {
    ms.div_euclid(60_000)
}

fn event_minute(id: &EventId) -> i64 {
    minute_of(i64::try_from(id.timestamp_ms()).unwrap_or(0))
}

impl Tally {
    /// Starts the flushing task: every `interval` until `shutdown` is
    /// cancelled; [`Tally::close`] flushes the rest.
    pub fn start(client: Client, table: String, interval: Duration, shutdown: CancellationToken) -> Self {
        let tally = Self {
            cells: Arc::default(),
            table: Some(Arc::new((client, table))),
        };
        let flushing = tally.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = shutdown.cancelled() => break,
                }
                if let Err(e) = flushing.flush().await {
                    tracing::warn!(error = %e, "analytics flush failed; kept for the next one");
                }
            }
        });
        tally
    }

    /// A tally that never writes (for tests of what is counted).
    pub fn detached() -> Self {
        Self {
            cells: Arc::default(),
            table: None,
        }
    }

    /// The last flush, once nothing more will be counted.
    pub async fn close(&self) {
        if let Err(e) = self.flush().await {
            tracing::warn!(error = %e, "analytics: the last flush failed; those counts are lost");
        }
    }

    fn add(&self, tenant: &TenantId, minute: i64, scope: &str, counts: &[(&str, i64)]) {
        let mut cells = self.cells.lock();
        let cell = cells
            .entry(Cell {
                tenant: *tenant,
                minute,
                scope: scope.to_owned(),
            })
            .or_default();
        for (name, delta) in counts {
            *cell.entry((*name).to_owned()).or_default() += delta;
        }
    }

    /// An event's progress changed from `before` (`None`: the event is new
    /// to the store) to `after`.
    pub fn progressed(&self, tenant: &TenantId, id: &EventId, before: Option<&Progress>, after: &Progress) {
        let new = after.status();
        let old = before.map(Progress::status);
        if old == Some(new) {
            return;
        }
        let new_name = format!("s_{}", new.as_str());
        let mut counts = vec![(new_name.as_str(), 1)];
        let old_name = old.map(|old| format!("s_{}", old.as_str()));
        match &old_name {
            Some(old_name) => counts.push((old_name.as_str(), -1)),
            None => counts.push(("ingested", 1)),
        }
        self.add(tenant, event_minute(id), "*", &counts);
    }

    /// One delivery outcome was stored.
    pub fn attempted(&self, outcome: &Outcome) {
        let Some(subscription) = &outcome.subscription_id else {
            return;
        };
        let minute = event_minute(&outcome.event_id);
        let mut counts: Vec<(String, i64)> = Vec::new();
        match outcome.kind {
            OutcomeKind::Delivered => {
                counts.push(("attempts".into(), 1));
                counts.push(("delivered".into(), 1));
                let e2e = outcome.at - i64::try_from(outcome.event_id.timestamp_ms()).unwrap_or(outcome.at);
                counts.push((format!("{}{}", Latency::EndToEnd.prefix(), bucket_of(e2e.max(0))), 1));
            }
            OutcomeKind::Retrying | OutcomeKind::DeadLettered | OutcomeKind::Disabled => {
                counts.push(("attempts".into(), 1));
                counts.push(("failed".into(), 1));
                counts.push((format!("e_{}", error_class(outcome)), 1));
                if outcome.kind == OutcomeKind::DeadLettered {
                    counts.push(("dead_lettered".into(), 1));
                }
            }
            OutcomeKind::Skipped | OutcomeKind::Routed | OutcomeKind::Unmatched => return,
        }
        if let Some(latency) = outcome.latency_ms {
            counts.push((format!("{}{}", Latency::Attempt.prefix(), bucket_of(latency.max(0))), 1));
        }
        let borrowed: Vec<(&str, i64)> = counts.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        self.add(&outcome.tenant, minute, "*", &borrowed);
        self.add(&outcome.tenant, minute, &subscription.to_string(), &borrowed);
    }

    /// The gateway answered 202 for `id` after `ms`.
    pub fn ingested_in(&self, tenant: &TenantId, id: &EventId, ms: i64) {
        let name = format!("{}{}", Latency::Ingest.prefix(), bucket_of(ms.max(0)));
        self.add(tenant, event_minute(id), "*", &[(name.as_str(), 1)]);
    }

    /// Takes what is gathered and adds it to the table (16 cells at a
    /// time); what could not be written is put back for the next flush.
    pub async fn flush(&self) -> Result<(), StoreError> {
        use futures::StreamExt;
        let Some(target) = self.table.clone() else {
            return Ok(());
        };
        let (client, table) = (&target.0, target.1.as_str());
        let cells: Vec<(Cell, Counts)> = std::mem::take(&mut *self.cells.lock())
            .into_iter()
            .map(|(cell, counts)| (cell, counts.into_iter().filter(|(_, v)| *v != 0).collect::<Counts>()))
            .filter(|(_, counts)| !counts.is_empty())
            .collect();
        let results: Vec<Option<(Cell, Counts, StoreError)>> = futures::stream::iter(cells)
            .map(|(cell, counts)| async move {
                let hour = cell.minute.div_euclid(60);
                let minute_sk = format!("m#{:010}#{}", cell.minute, cell.scope);
                let hour_sk = format!("h#{hour:010}#{}", cell.scope);
                let written = futures::future::join(
                    add_counts(client, table, &cell, &minute_sk, &counts),
                    add_counts(client, table, &cell, &hour_sk, &counts),
                )
                .await;
                match written {
                    (Ok(()), Ok(())) => None,
                    // Put back only when neither item was written: a
                    // half-written cell keeps what was written rather than
                    // count it twice.
                    (Err(e), Err(_)) => Some((cell, counts, e)),
                    (Err(e), Ok(())) | (Ok(()), Err(e)) => {
                        tracing::warn!(error = %e, "analytics: one of a cell's minute and hour items was not written");
                        None
                    }
                }
            })
            .buffer_unordered(16)
            .collect()
            .await;
        let mut failed = None;
        let mut cells = self.cells.lock();
        for (cell, counts, error) in results.into_iter().flatten() {
            let into = cells.entry(cell).or_default();
            for (name, value) in counts {
                *into.entry(name).or_default() += value;
            }
            failed = Some(error);
        }
        failed.map_or(Ok(()), Err)
    }
}

fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

fn n(value: i64) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

async fn add_counts(client: &Client, table: &str, cell: &Cell, sk: &str, counts: &Counts) -> Result<(), StoreError> {
    let mut adds = Vec::new();
    let mut request = client
        .update_item()
        .table_name(table)
        .key("pk", s(cell.tenant.to_string()))
        .key("sk", s(sk))
        .expression_attribute_names("#ttl", crate::dynamo::TTL_ATTRIBUTE)
        .expression_attribute_values(
            ":ttl",
            n(crate::event::now_ms() / 1000 + i64::try_from(RETENTION.as_secs()).unwrap_or(0)),
        );
    for (i, (name, value)) in counts.iter().enumerate() {
        adds.push(format!("#a{i} :a{i}"));
        request = request
            .expression_attribute_names(format!("#a{i}"), name)
            .expression_attribute_values(format!(":a{i}"), n(*value));
    }
    request
        .update_expression(format!("SET #ttl = :ttl ADD {}", adds.join(", ")))
        .send()
        .await
        .map_err(|e| StoreError::new("UpdateItem", table, e))?;
    Ok(())
}

/// The granularity of a report's series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Granularity {
    /// One point per minute.
    Minute,
    /// One point per hour.
    Hour,
}

impl Granularity {
    /// A bucket's length in milliseconds.
    pub fn ms(self) -> i64 {
        match self {
            Self::Minute => 60_000,
            Self::Hour => 3_600_000,
        }
    }

    fn letter(self) -> &'static str {
        match self {
            Self::Minute => "m",
            Self::Hour => "h",
        }
    }
}

/// Latency percentiles, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Percentiles {
    /// How many latencies were measured.
    pub count: i64,
    /// Median.
    pub p50: Option<f64>,
    /// 95th percentile.
    pub p95: Option<f64>,
    /// 99th percentile.
    pub p99: Option<f64>,
}

fn percentile(histogram: &[i64], q: f64) -> Option<f64> {
    let total: i64 = histogram.iter().sum();
    if total <= 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut seen = 0.0;
    for (i, &count) in histogram.iter().enumerate() {
        if count <= 0 {
            continue;
        }
        let next = seen + count as f64;
        if next >= rank {
            let low = if i == 0 { 0 } else { BUCKETS_MS[i - 1] } as f64;
            let Some(&high) = BUCKETS_MS.get(i) else {
                return Some(low);
            };
            let within = ((rank - seen) / count as f64).clamp(0.0, 1.0);
            return Some(((low + within * (high as f64 - low)) * 10.0).round() / 10.0);
        }
        seen = next;
    }
    None
}

impl Percentiles {
    fn of(histogram: &[i64]) -> Self {
        Self {
            count: histogram.iter().sum(),
            p50: percentile(histogram, 0.50),
            p95: percentile(histogram, 0.95),
            p99: percentile(histogram, 0.99),
        }
    }
}

/// Counts of one scope over a range.
#[derive(Debug, Clone, Default)]
struct Sums(BTreeMap<String, i64>);

impl Sums {
    fn add(&mut self, item: &HashMap<String, AttributeValue>) {
        for (name, value) in item {
            if matches!(name.as_str(), "pk" | "sk") || name == crate::dynamo::TTL_ATTRIBUTE {
                continue;
            }
            if let AttributeValue::N(text) = value
                && let Ok(v) = text.parse::<i64>()
            {
                *self.0.entry(name.clone()).or_default() += v;
            }
        }
    }

    fn get(&self, name: &str) -> i64 {
        self.0.get(name).copied().unwrap_or(0)
    }

    fn histogram(&self, latency: Latency) -> Vec<i64> {
        (0..=BUCKETS_MS.len())
            .map(|i| self.get(&format!("{}{i}", latency.prefix())))
            .collect()
    }

    fn errors(&self) -> BTreeMap<String, i64> {
        ERROR_CLASSES
            .iter()
            .map(|class| ((*class).to_owned(), self.get(&format!("e_{class}"))))
            .filter(|(_, v)| *v > 0)
            .collect()
    }
}

fn rate(good: i64, bad: i64) -> Option<f64> {
    let all = good + bad;
    (all > 0).then(|| (good as f64 / all as f64 * 10_000.0).round() / 10_000.0)
}

/// Event statuses as the analytics show them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct StatusBreakdown {
    /// Every delivery succeeded.
    pub delivered: i64,
    /// Stored, routed, deliveries not attempted yet.
    pub pending: i64,
    /// A delivery failed and will be retried.
    pub retrying: i64,
    /// Dead-lettered (or held by a disabled subscription).
    pub dead_lettered: i64,
    /// No subscription matched.
    pub unmatched: i64,
    /// Acknowledged from the inbox.
    pub acknowledged: i64,
}

/// The totals of a range.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Totals {
    /// Events received (stored) in the range.
    pub ingested: i64,
    /// Of those, events all of whose deliveries succeeded.
    pub delivered: i64,
    /// Webhook requests made for those events.
    pub attempts: i64,
    /// Of those, the ones that failed.
    pub failed_attempts: i64,
    /// Deliveries that succeeded (an event with two subscriptions counts two).
    pub deliveries_succeeded: i64,
    /// Deliveries that exhausted their retries.
    pub deliveries_dead_lettered: i64,
    /// `delivered / (delivered + dead-lettered)` over the events that
    /// settled; `null` when none did.
    pub success_rate: Option<f64>,
}

/// One point of the series.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Point {
    /// The bucket's start (RFC 3339).
    pub at: String,
    /// Events received in it.
    pub ingested: i64,
    /// Of those, delivered (now).
    pub delivered: i64,
    /// Failed attempts for its events.
    pub failed_attempts: i64,
    /// Dead-lettered deliveries of its events.
    pub dead_lettered: i64,
    /// End-to-end p95 of its events, ms.
    pub e2e_p95: Option<f64>,
}

/// One subscription's figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct SubscriptionFigures {
    /// The subscription.
    pub subscription_id: String,
    /// Webhook requests.
    pub attempts: i64,
    /// Deliveries that succeeded.
    pub delivered: i64,
    /// Attempts that failed.
    pub failed_attempts: i64,
    /// Deliveries that exhausted their retries.
    pub dead_lettered: i64,
    /// `delivered / (delivered + dead_lettered)`.
    pub success_rate: Option<f64>,
    /// Attempt (request) latency.
    pub attempt_latency_ms: Percentiles,
    /// Event received to delivered.
    pub end_to_end_latency_ms: Percentiles,
    /// Failed attempts by class.
    pub errors: BTreeMap<String, i64>,
}

/// Latencies of a range.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Latencies {
    /// Request received to 202.
    pub ingest: Percentiles,
    /// Event received to its webhook's 2xx.
    pub end_to_end: Percentiles,
    /// One webhook request.
    pub attempt: Percentiles,
}

/// What `GET /v1/analytics` answers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Report {
    /// Start of the first bucket (RFC 3339).
    pub since: String,
    /// End of the last bucket, exclusive (RFC 3339).
    pub until: String,
    /// `minute` or `hour`.
    pub granularity: Option<Granularity>,
    /// The totals.
    pub totals: Totals,
    /// Current status of the events received in the range.
    pub status: StatusBreakdown,
    /// Latency percentiles.
    pub latency_ms: Latencies,
    /// Failed attempts by class.
    pub errors: BTreeMap<String, i64>,
    /// One point per bucket, oldest first, empty buckets included.
    pub series: Vec<Point>,
    /// Per subscription, most attempts first.
    pub subscriptions: Vec<SubscriptionFigures>,
    /// The subscriptions with the most failed attempts (at most 5, only
    /// those with failures).
    pub top_failing: Vec<String>,
}

/// Reads the figures of `tenant` for `[since, until)` at `granularity`
/// (bucket edges are rounded out to whole buckets).
pub async fn report(
    client: &Client,
    table: &str,
    tenant: &TenantId,
    since: i64,
    until: i64,
    granularity: Granularity,
) -> Result<Report, StoreError> {
    let step = granularity.ms();
    let first = since.div_euclid(step);
    let last = (until - 1).div_euclid(step);
    let letter = granularity.letter();
    let mut items = Vec::new();
    let request = client
        .query()
        .table_name(table)
        .key_condition_expression("pk = :pk AND sk BETWEEN :from AND :to")
        .expression_attribute_values(":pk", s(tenant.to_string()))
        .expression_attribute_values(":from", s(format!("{letter}#{first:010}#")))
        .expression_attribute_values(":to", s(format!("{letter}#{last:010}#~")));
    crate::pager::query_all(request, table, |page| {
        items.extend(page.items().iter().cloned());
        true
    })
    .await?;
    let mut tenant_sums = Sums::default();
    let mut per_bucket: BTreeMap<i64, Sums> = BTreeMap::new();
    let mut per_subscription: BTreeMap<String, Sums> = BTreeMap::new();
    for item in &items {
        let Some(AttributeValue::S(sk)) = item.get("sk") else {
            continue;
        };
        let mut parts = sk.splitn(3, '#');
        let (_, Some(bucket), Some(scope)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let Ok(bucket) = bucket.parse::<i64>() else { continue };
        if scope == "*" {
            tenant_sums.add(item);
            per_bucket.entry(bucket).or_default().add(item);
        } else {
            per_subscription.entry(scope.to_owned()).or_default().add(item);
        }
    }
    let status = StatusBreakdown {
        delivered: tenant_sums.get("s_delivered"),
        pending: tenant_sums.get("s_accepted") + tenant_sums.get("s_routed"),
        retrying: tenant_sums.get("s_retrying"),
        dead_lettered: tenant_sums.get("s_dead_lettered"),
        unmatched: tenant_sums.get("s_unmatched"),
        acknowledged: tenant_sums.get("s_acknowledged"),
    };
    let totals = Totals {
        ingested: tenant_sums.get("ingested"),
        delivered: status.delivered,
        attempts: tenant_sums.get("attempts"),
        failed_attempts: tenant_sums.get("failed"),
        deliveries_succeeded: tenant_sums.get("delivered"),
        deliveries_dead_lettered: tenant_sums.get("dead_lettered"),
        success_rate: rate(status.delivered, status.dead_lettered),
    };
    let series = (first..=last)
        .map(|bucket| {
            let sums = per_bucket.get(&bucket).cloned().unwrap_or_default();
            Point {
                at: crate::event::rfc3339(bucket * step),
                ingested: sums.get("ingested"),
                delivered: sums.get("s_delivered"),
                failed_attempts: sums.get("failed"),
                dead_lettered: sums.get("dead_lettered"),
                e2e_p95: percentile(&sums.histogram(Latency::EndToEnd), 0.95),
            }
        })
        .collect();
    let mut subscriptions: Vec<SubscriptionFigures> = per_subscription
        .into_iter()
        .map(|(id, sums)| SubscriptionFigures {
            subscription_id: id,
            attempts: sums.get("attempts"),
            delivered: sums.get("delivered"),
            failed_attempts: sums.get("failed"),
            dead_lettered: sums.get("dead_lettered"),
            success_rate: rate(sums.get("delivered"), sums.get("dead_lettered")),
            attempt_latency_ms: Percentiles::of(&sums.histogram(Latency::Attempt)),
            end_to_end_latency_ms: Percentiles::of(&sums.histogram(Latency::EndToEnd)),
            errors: sums.errors(),
        })
        .collect();
    subscriptions.sort_by(|a, b| {
        b.attempts
            .cmp(&a.attempts)
            .then(a.subscription_id.cmp(&b.subscription_id))
    });
    let mut failing: Vec<&SubscriptionFigures> = subscriptions.iter().filter(|s| s.failed_attempts > 0).collect();
    failing.sort_by_key(|s| std::cmp::Reverse(s.failed_attempts));
    let top_failing = failing.iter().take(5).map(|s| s.subscription_id.clone()).collect();
    Ok(Report {
        since: crate::event::rfc3339(first * step),
        until: crate::event::rfc3339((last + 1) * step),
        granularity: Some(granularity),
        totals,
        status,
        latency_ms: Latencies {
            ingest: Percentiles::of(&tenant_sums.histogram(Latency::Ingest)),
            end_to_end: Percentiles::of(&tenant_sums.histogram(Latency::EndToEnd)),
            attempt: Percentiles::of(&tenant_sums.histogram(Latency::Attempt)),
        },
        errors: tenant_sums.errors(),
        series,
        subscriptions,
        top_failing,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_and_percentiles() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(1), 0);
        assert_eq!(bucket_of(2), 1);
        assert_eq!(bucket_of(99), 8);
        assert_eq!(bucket_of(100), 8);
        assert_eq!(bucket_of(10_000_000), BUCKETS_MS.len());
        let mut histogram = vec![0; BUCKETS_MS.len() + 1];
        // 100 latencies in (75, 100].
        histogram[8] = 100;
        let p = Percentiles::of(&histogram);
        assert_eq!(p.count, 100);
        assert_eq!(p.p50, Some(87.5));
        assert_eq!(p.p99, Some(99.8));
        // One slow outlier moves p99 but not p50.
        histogram[14] = 2;
        let q = Percentiles::of(&histogram);
        assert_eq!(q.p50, Some(87.8));
        assert!(q.p99.is_some_and(|v| v > 750.0));
        assert_eq!(Percentiles::of(&[0; 25]).p50, None);
        // The open bucket reports its lower edge.
        let mut open = vec![0; BUCKETS_MS.len() + 1];
        open[BUCKETS_MS.len()] = 1;
        assert_eq!(percentile(&open, 0.5), Some(3_600_000.0));
    }

    #[test]
    fn a_status_transition_moves_one_event_between_counts() {
        let tally = Tally::detached();
        let tenant = TenantId::new();
        let id = EventId::new();
        let mut progress = Progress::default();
        tally.progressed(&tenant, &id, None, &progress);
        let before = progress.clone();
        progress.unmatched = true;
        progress.routed = true;
        tally.progressed(&tenant, &id, Some(&before), &progress);
        // No change: nothing counted.
        tally.progressed(&tenant, &id, Some(&progress), &progress);
        let cells = tally.cells.lock();
        let cell = cells.values().next().cloned().unwrap_or_default();
        assert_eq!(cells.len(), 1);
        assert_eq!(cell.get("ingested"), Some(&1));
        assert_eq!(cell.get("s_accepted"), Some(&0));
        assert_eq!(cell.get("s_unmatched"), Some(&1));
    }
}
