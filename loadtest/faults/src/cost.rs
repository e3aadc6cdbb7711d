//! What one event costs: CPU time per service and DynamoDB requests and
//! capacity units per event, for ~1 KB events without an
//! `Idempotency-Key`, each matching one subscription and delivered at the
//! first attempt — the common case the capacity model (docs/capacity.md)
//! is built on.
//!
//! Every service runs as its own process, so its CPU time is read from
//! `/proc` apart from the load generator and receiver (this process), Tansu
//! and DynamoDB Local. The DynamoDB figures are the services' own metrics
//! (`triggers_dynamodb_request_duration_seconds_count`,
//! `triggers_dynamodb_capacity_units_sum`), taken before the load and after
//! the persister stored every event and outcome, and before the accounting
//! reads anything back.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::audit::Auditor;
use crate::cluster::{self, Cluster, Part};
use crate::load::{self, Load};
use crate::receiver::Receiver;
use crate::traffic;

/// The services whose CPU time is the pipeline's cost.
const SERVICES: [Part; 5] = [
    Part::GatewayA,
    Part::GatewayB,
    Part::Router,
    Part::Persister,
    Part::Deliverer,
];
/// Outcomes the persister applies per event in the common case: the
/// router's `routed` and the deliverer's one attempt.
const OUTCOMES_PER_EVENT: usize = 2;
/// The processes reported beside them: the local stand-ins for MSK and
/// DynamoDB, and the schema registry (idle after start-up).
const OTHERS: [Part; 3] = [Part::Broker, Part::Dynamo, Part::Registry];

/// One sample of a Prometheus counter or histogram series.
#[derive(Debug, Clone, PartialEq)]
struct Series {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// The series of a Prometheus text exposition (comments skipped).
fn parse_exposition(text: &str) -> Vec<Series> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| {
            let (head, value) = line.rsplit_once(' ')?;
            let value = value.parse::<f64>().ok()?;
            let (name, labels) = match head.split_once('{') {
                Some((name, rest)) => (name, rest.strip_suffix('}')?),
                None => (head, ""),
            };
            let labels = split_labels(labels)
                .into_iter()
                .filter_map(|pair| {
                    let (key, quoted) = pair.split_once('=')?;
                    let value = quoted.strip_prefix('"')?.strip_suffix('"')?;
                    Some((key.to_owned(), value.replace("\\\"", "\"").replace("\\\\", "\\")))
                })
                .collect();
            Some(Series {
                name: name.to_owned(),
                labels,
                value,
            })
        })
        .collect()
}

/// `a="x",b="y,z"` → [`a="x"`, `b="y,z"`]: commas inside quotes stay.
fn split_labels(labels: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in labels.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                parts.push(&labels[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if start < labels.len() {
        parts.push(&labels[start..]);
    }
    parts
}

/// DynamoDB figures of one service: per (operation, table or "", result or
/// capacity kind) the calls or units so far.
#[derive(Debug, Default, Clone)]
struct Dynamo {
    /// (operation, result) → calls.
    calls: BTreeMap<(String, String), f64>,
    /// (operation, table, read/write) → capacity units.
    units: BTreeMap<(String, String, String), f64>,
}

impl Dynamo {
    fn from_series(series: &[Series]) -> Self {
        let mut dynamo = Self::default();
        let label = |s: &Series, key: &str| s.labels.get(key).cloned().unwrap_or_default();
        for s in series {
            match s.name.as_str() {
                "triggers_dynamodb_request_duration_seconds_count" => {
                    *dynamo
                        .calls
                        .entry((label(s, "operation"), label(s, "result")))
                        .or_default() += s.value;
                }
                "triggers_dynamodb_capacity_units_sum" => {
                    *dynamo
                        .units
                        .entry((label(s, "operation"), label(s, "table"), label(s, "capacity")))
                        .or_default() += s.value;
                }
                _ => {}
            }
        }
        dynamo
    }

    /// What happened between `earlier` and `self`.
    fn since(&self, earlier: &Self) -> Self {
        let minus = |now: &f64, before: Option<&f64>| now - before.copied().unwrap_or_default();
        Self {
            calls: self
                .calls
                .iter()
                .map(|(k, v)| (k.clone(), minus(v, earlier.calls.get(k))))
                .filter(|(_, v)| *v > 0.0)
                .collect(),
            units: self
                .units
                .iter()
                .map(|(k, v)| (k.clone(), minus(v, earlier.units.get(k))))
                .filter(|(_, v)| *v > 0.0)
                .collect(),
        }
    }
}

/// Whether a DynamoDB operation writes.
fn writes(operation: &str) -> bool {
    matches!(
        operation,
        "PutItem" | "UpdateItem" | "DeleteItem" | "BatchWriteItem" | "BatchExecuteStatement" | "TransactWriteItems"
    )
}

/// Everything measured at one moment.
#[derive(Debug, Clone)]
struct Sample {
    at: Instant,
    cpu: BTreeMap<Part, Duration>,
    /// The services' CPU and sleeps by kind of thread.
    threads: BTreeMap<Part, BTreeMap<String, triggers_stack::ThreadUse>>,
    own_cpu: Duration,
    dynamo: BTreeMap<Part, Dynamo>,
    counters: BTreeMap<Part, Vec<Series>>,
}

async fn sample(cluster: &Cluster, http: &reqwest::Client) -> Sample {
    let cpu = cpu_now(cluster);
    let threads = SERVICES
        .iter()
        .filter_map(|part| Some((*part, triggers_stack::group_threads(cluster.group(*part)?))))
        .collect();
    let mut dynamo = BTreeMap::new();
    let mut counters = BTreeMap::new();
    for part in SERVICES {
        let Some(series) = scrape(cluster, http, part).await else {
            continue;
        };
        dynamo.insert(part, Dynamo::from_series(&series));
        counters.insert(part, series);
    }
    Sample {
        at: Instant::now(),
        cpu,
        threads,
        own_cpu: cluster::own_cpu(),
        dynamo,
        counters,
    }
}

/// The sum of the series named `name` of `part`.
fn total(sample: &Sample, part: Part, name: &str) -> f64 {
    sample
        .counters
        .get(&part)
        .map(|series| sum(series, name))
        .unwrap_or_default()
}

/// What the cost run measured and whether it passed.
pub struct Cost {
    pub report: String,
    pub failures: Vec<String>,
}

/// Settings of a cost run.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Events per second.
    pub rate: u32,
    /// Events to send.
    pub events: usize,
    /// How long the idle CPU of every process is measured first.
    pub idle: Duration,
    /// How long the accounting may take.
    pub limit: Duration,
    /// The events' `data`.
    pub data: crate::load::Data,
}

/// Every process's CPU when idle, as a fraction of one core.
struct Idle {
    rate: BTreeMap<Part, f64>,
    span: Duration,
}

impl Idle {
    fn of(&self, part: Part) -> f64 {
        self.rate.get(&part).copied().unwrap_or_default()
    }

    /// The CPU `part` uses idle over `span`.
    fn over(&self, part: Part, span: Duration) -> Duration {
        Duration::from_secs_f64(self.of(part) * span.as_secs_f64())
    }
}

/// Warms the pipeline up with 10 s at `plan.rate` (every event delivered
/// and stored before going on), then measures every process idle for
/// `plan.idle`.
async fn warm_up_and_idle(
    cluster: &Cluster,
    receiver: &Receiver,
    auditor: &Auditor,
    http: &reqwest::Client,
    dir: &std::path::Path,
    plan: Plan,
) -> anyhow::Result<Idle> {
    let url = format!("http://127.0.0.1:{}/v1/events", cluster.ports.of(Part::GatewayA));
    eprintln!("[cost] warm-up: 10 s at {} events/s", plan.rate);
    let mut warm = Load::start_with(
        url,
        &cluster.demo.api_key,
        plan.rate,
        &dir.join("warm-up.txt"),
        false,
        plan.data,
    )?;
    tokio::time::sleep(Duration::from_secs(10)).await;
    warm.stop().await?;
    let warm_entries = warm.entries(0);
    let left = auditor
        .settle(receiver, &warm_entries, Instant::now() + plan.limit)
        .await;
    anyhow::ensure!(left.is_empty(), "the warm-up did not settle: {}", left.describe());

    eprintln!("[cost] idle: {} s", plan.idle.as_secs());
    let start = sample(cluster, http).await;
    tokio::time::sleep(plan.idle).await;
    let end = sample(cluster, http).await;
    let span = end.at - start.at;
    let rate = end
        .cpu
        .iter()
        .map(|(part, used)| {
            let before = start.cpu.get(part).copied().unwrap_or_default();
            (*part, used.saturating_sub(before).as_secs_f64() / span.as_secs_f64())
        })
        .collect();
    Ok(Idle { rate, span })
}

/// Warms the pipeline up, measures every process idle, then sends
/// `plan.events` at `plan.rate` to one gateway, waits until every event was
/// delivered and the persister stored every event and outcome, and reports
/// CPU time per 1,000 events (as used, and net of the idle rate) and
/// DynamoDB calls and capacity units per event; then checks that every
/// event is delivered and stored.
pub async fn cost(
    cluster: &Cluster,
    receiver: &Receiver,
    auditor: &Auditor,
    dir: &std::path::Path,
    plan: Plan,
) -> anyhow::Result<Cost> {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?;
    let url = format!("http://127.0.0.1:{}/v1/events", cluster.ports.of(Part::GatewayA));
    let idle = warm_up_and_idle(cluster, receiver, auditor, &http, dir, plan).await?;

    eprintln!("[cost] {} events at {} events/s", plan.events, plan.rate);
    let bootstrap = cluster.common.kafka.bootstrap_servers.clone();
    let topics = traffic::pipeline_topics(&cluster.common.topics);
    let marks = {
        let bootstrap = bootstrap.clone();
        tokio::task::spawn_blocking(move || traffic::marks(&bootstrap, &topics)).await??
    };
    let before = sample(cluster, &http).await;
    let mut load = Load::start_with(
        url,
        &cluster.demo.api_key,
        plan.rate,
        &dir.join("ledger.txt"),
        false,
        plan.data,
    )?;
    while load.accepted() < plan.events {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    load.stop().await?;
    let sent = load.counters();
    let entries = load.entries(0);
    let accepted = entries.len();

    // Delivered (the receiver's view) and stored (the persister's counters):
    // nothing here reads DynamoDB, so the figures are the pipeline's alone.
    let deadline = Instant::now() + plan.limit;
    loop {
        let now = sample(cluster, &http).await;
        let delivered = entries.iter().filter(|e| receiver.seen(&e.id).is_some()).count();
        let stored = total(&now, Part::Persister, "triggers_persister_events_total")
            - total(&before, Part::Persister, "triggers_persister_events_total");
        let outcomes = total(&now, Part::Persister, "triggers_persister_outcomes_total")
            - total(&before, Part::Persister, "triggers_persister_outcomes_total");
        if delivered == accepted && stored >= accepted as f64 && outcomes >= (accepted * OUTCOMES_PER_EVENT) as f64 {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "after {} s: {delivered} of {accepted} delivered, {stored} events and {outcomes} outcomes stored",
            plan.limit.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The writes of the last batch are counted once they are answered.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = sample(cluster, &http).await;
    let span = after.at - before.at;
    let written = tokio::task::spawn_blocking(move || traffic::since(&bootstrap, &marks)).await??;
    let left = auditor.settle(receiver, &entries, Instant::now() + plan.limit).await;

    let mut failures = Vec::new();
    if !left.is_empty() {
        failures.push(left.describe());
    }
    if sent.rejected + sent.server_errors + sent.gave_up > 0 {
        failures.push(format!(
            "{} refused, {} 5xx, {} given up",
            sent.rejected, sent.server_errors, sent.gave_up
        ));
    }
    let duplicates = entries
        .iter()
        .filter(|e| receiver.seen(&e.id).is_some_and(|s| s.count > 1))
        .count();
    // From each 202 to its first webhook (a webhook may beat its 202 to
    // the client: zero).
    let mut latencies: Vec<Duration> = entries
        .iter()
        .filter_map(|e| {
            receiver
                .seen(&e.id)
                .map(|s| s.first.saturating_duration_since(e.accepted))
        })
        .collect();
    let over_time = latency_over_time(&entries, receiver);
    latencies.sort_unstable();
    let latency = |p: f64| triggers_bench::percentile(&latencies, p).as_secs_f64() * 1000.0;
    let retries = total(&after, Part::Deliverer, "triggers_deliverer_attempts_total")
        - total(&before, Part::Deliverer, "triggers_deliverer_attempts_total")
        - accepted as f64;

    let per_thousand = |d: Duration| d.as_secs_f64() * 1000.0 / accepted as f64 * 1000.0;
    let mut cpu_rows = String::new();
    let (mut services_gross, mut services_net) = (0.0, 0.0);
    for part in SERVICES.iter().chain(OTHERS.iter()) {
        let used = after.cpu.get(part).copied().unwrap_or_default() - before.cpu.get(part).copied().unwrap_or_default();
        let idle_used = idle.over(*part, span);
        let gross = per_thousand(used);
        let net = per_thousand(used.saturating_sub(idle_used));
        if SERVICES.contains(part) {
            services_gross += gross;
            services_net += net;
        }
        cpu_rows.push_str(&format!(
            "| {} | {:.2} s | {:.1} % | {gross:.1} ms | {net:.1} ms |\n",
            part.name(),
            used.as_secs_f64(),
            idle.of(*part) * 100.0,
        ));
    }
    let own = after.own_cpu - before.own_cpu;
    cpu_rows.push_str(&format!(
        "| the suite (load generator, webhook receiver) | {:.2} s | — | {:.1} ms | — |\n",
        own.as_secs_f64(),
        per_thousand(own)
    ));

    let thread_rows = thread_rows(&after, &before, accepted);

    let mut dynamo_rows = String::new();
    let (mut write_calls, mut read_calls, mut path_reads, mut wcu, mut rcu, mut failed) =
        (0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    let per_event = |v: f64| v / accepted as f64;
    for part in SERVICES {
        let (Some(now), Some(then)) = (after.dynamo.get(&part), before.dynamo.get(&part)) else {
            continue;
        };
        let delta = now.since(then);
        for ((operation, result), calls) in &delta.calls {
            let units: Vec<String> = delta
                .units
                .iter()
                .filter(|((op, _, _), _)| op == operation && result == "ok")
                .map(|((_, table, kind), units)| format!("{table}: {:.3} {kind}", per_event(*units)))
                .collect();
            if result == "ok" {
                if writes(operation) {
                    write_calls += calls;
                } else {
                    read_calls += calls;
                    if part != Part::Persister {
                        path_reads += calls;
                    }
                }
            } else {
                failed += calls;
            }
            dynamo_rows.push_str(&format!(
                "| {} | {operation} | {result} | {:.3} | {} |\n",
                part.name(),
                per_event(*calls),
                if units.is_empty() {
                    "—".to_owned()
                } else {
                    units.join("; ")
                },
            ));
        }
        for ((_, _, kind), units) in &delta.units {
            match kind.as_str() {
                "write" => wcu += units,
                _ => rcu += units,
            }
        }
    }

    let report = format!(
        "### Cost per event ({accepted} events at {rate} events/s, one matching subscription, no `Idempotency-Key`)\n\n\
         Measured over {span:.0} s from the first event to the last outcome stored; idle CPU measured for {idle:.0} s \
         before. Deliveries beyond one per event: {retries:.0} retries, {duplicates} duplicates at the receiver. \
         From 202 to the first webhook ({delivered} events): p50 {p50:.0} ms, p95 {p95:.0} ms, p99 {p99:.0} ms, \
         max {max:.0} ms. p95 by {WINDOW_SECS} s of 202s, in order: {over_time}.\n\n\
         | process | CPU used | idle CPU (of one core) | CPU per 1,000 events | net of idle |\n|---|---|---|---|---|\n\
         {cpu_rows}| **services together** | | | **{services_gross:.1} ms** | **{services_net:.1} ms** |\n\n\
         The services' CPU by thread (threads named alike but for digits together; CPU as used, not net of idle; \
         sleeps: voluntary context switches, about how often the threads were woken):\n\n\
         | service | threads | how many | CPU per 1,000 events | sleeps per event | preempted per event |\n|---|---|---|---|---|---|\n\
         {thread_rows}\n\
         DynamoDB per event (the services' own metrics):\n\n\
         | service | operation | result | calls per event | capacity units per event (table: units) |\n|---|---|---|---|---|\n\
         {dynamo_rows}\n\
         Per event: **{wr:.3} write calls**, **{wcu:.3} WCU**, {rd:.3} read calls ({path:.3} on the ingest-to-delivery \
         path: gateway, router, deliverer), {rcu:.3} RCU; {failed:.3} failed calls (a failed conditional write is \
         charged but reports no units). Persister event writes by why they were written: {releases}; partitions \
         that waited for the other topic, by how the wait ended: {waits}.\n\n{kafka}",
        delivered = latencies.len(),
        p50 = latency(0.50),
        p95 = latency(0.95),
        p99 = latency(0.99),
        max = latency(1.0),
        releases = releases(&after, &before),
        waits = align_waits(&after, &before),
        kafka = traffic::report(&written, &cluster.common.topics, accepted),
        rate = plan.rate,
        span = span.as_secs_f64(),
        idle = idle.span.as_secs_f64(),
        wr = per_event(write_calls),
        wcu = per_event(wcu),
        rd = per_event(read_calls),
        path = per_event(path_reads),
        rcu = per_event(rcu),
        failed = per_event(failed),
    );
    Ok(Cost { report, failures })
}

/// The window of [`latency_over_time`], in seconds.
const WINDOW_SECS: u64 = 5;

/// The p95 from 202 to first webhook of the events accepted in each
/// [`WINDOW_SECS`] of the run, in ms, in order: tells a stall (one window
/// high) from a drift (the later windows higher).
fn latency_over_time(entries: &[load::Entry], receiver: &Receiver) -> String {
    let Some(start) = entries.iter().map(|e| e.accepted).min() else {
        return "none".to_owned();
    };
    let mut windows: Vec<Vec<Duration>> = Vec::new();
    for entry in entries {
        let Some(seen) = receiver.seen(&entry.id) else { continue };
        let window = usize::try_from(entry.accepted.duration_since(start).as_secs() / WINDOW_SECS).unwrap_or(0);
        if windows.len() <= window {
            windows.resize_with(window + 1, Vec::new);
        }
        windows[window].push(seen.first.saturating_duration_since(entry.accepted));
    }
    windows
        .iter_mut()
        .map(|window| {
            window.sort_unstable();
            format!("{:.0}", triggers_bench::percentile(window, 0.95).as_secs_f64() * 1000.0)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The rows of the by-thread table: every kind of thread of every service
/// that used CPU or slept over the run, busiest first within a service.
fn thread_rows(now: &Sample, then: &Sample, events: usize) -> String {
    let per_event = |n: u64| n as f64 / events as f64;
    let mut rows = String::new();
    for part in SERVICES {
        let Some(kinds) = now.threads.get(&part) else {
            continue;
        };
        let mut used: Vec<(&String, triggers_stack::ThreadUse)> = kinds
            .iter()
            .map(|(kind, use_now)| {
                let earlier = then
                    .threads
                    .get(&part)
                    .and_then(|k| k.get(kind))
                    .copied()
                    .unwrap_or_default();
                (kind, use_now.since(&earlier))
            })
            .filter(|(_, used)| !used.cpu.is_zero() || per_event(used.sleeps) >= 0.01)
            .collect();
        used.sort_by(|a, b| b.1.cpu.cmp(&a.1.cpu).then_with(|| a.0.cmp(b.0)));
        for (kind, used) in used {
            rows.push_str(&format!(
                "| {} | `{kind}` | {} | {:.1} ms | {:.2} | {:.2} |\n",
                part.name(),
                used.threads,
                used.cpu.as_secs_f64() * 1_000_000.0 / events as f64,
                per_event(used.sleeps),
                per_event(used.preempted),
            ));
        }
    }
    rows
}

/// The metrics of one service now; `None` when it does not answer.
async fn scrape(cluster: &Cluster, http: &reqwest::Client, part: Part) -> Option<Vec<Series>> {
    let url = format!("http://127.0.0.1:{}/metrics", cluster.ports.of(part));
    let response = http.get(url).send().await.ok()?;
    Some(parse_exposition(&response.text().await.unwrap_or_default()))
}

/// The sum of the series named `name` in `series`.
fn sum(series: &[Series], name: &str) -> f64 {
    series.iter().filter(|s| s.name == name).map(|s| s.value).sum()
}

/// `name`'s change from `then` to `now` in `part`, by the value of its
/// label `label`: `a 12, b 3`.
/// The persister's event writes between two samples, by why they were
/// written (settled, due, full, closing).
fn releases(now: &Sample, then: &Sample) -> String {
    by_label(
        now,
        then,
        Part::Persister,
        "triggers_persister_event_writes_total",
        "release",
    )
}

/// The persister's partitions that waited for the other topic between two
/// samples, by how the wait ended.
fn align_waits(now: &Sample, then: &Sample) -> String {
    by_label(
        now,
        then,
        Part::Persister,
        "triggers_consumer_align_waits_total",
        "ended",
    )
}

fn by_label(now: &Sample, then: &Sample, part: Part, name: &str, label: &str) -> String {
    let mut values: BTreeMap<&str, f64> = BTreeMap::new();
    for (sign, sample) in [(1.0, now), (-1.0, then)] {
        for series in sample.counters.get(&part).into_iter().flatten() {
            if series.name == name {
                let key = series.labels.get(label).map_or("", String::as_str);
                *values.entry(key).or_default() += sign * series.value;
            }
        }
    }
    let values: Vec<String> = values
        .into_iter()
        .filter(|(_, value)| *value > 0.0)
        .map(|(key, value)| format!("{key} {value:.0}"))
        .collect();
    if values.is_empty() {
        "none".to_owned()
    } else {
        values.join(", ")
    }
}

/// What one stage of a busy run measured.
struct Stage {
    part: Part,
    /// From the last look that found no record handled to the look that
    /// found all (at most 250 ms longer than the work).
    working: Duration,
    /// Frozen until the stage began, then until it finished: CPU used
    /// by every process over the stage.
    used: BTreeMap<Part, Duration>,
    /// The stage's length (for the idle CPU taken off).
    span: Duration,
}

/// Every process's CPU time now.
fn cpu_now(cluster: &Cluster) -> BTreeMap<Part, Duration> {
    SERVICES
        .iter()
        .chain(OTHERS.iter())
        .filter_map(|part| Some((*part, triggers_stack::group_cpu(cluster.group(*part)?))))
        .collect()
}

fn used_since(now: &BTreeMap<Part, Duration>, then: &BTreeMap<Part, Duration>) -> BTreeMap<Part, Duration> {
    now.iter()
        .map(|(part, used)| (*part, used.saturating_sub(then.get(part).copied().unwrap_or_default())))
        .collect()
}

/// How far a consumer got through the backlog: events it handled since
/// `baseline` (its metrics before it was frozen).
async fn progress(
    cluster: &Cluster,
    http: &reqwest::Client,
    receiver: &Receiver,
    entries: &[crate::load::Entry],
    baseline: &Sample,
    part: Part,
) -> usize {
    let since = |series: &[Series], name: &str| (sum(series, name) - total(baseline, part, name)).max(0.0) as usize;
    match part {
        Part::Router => since(
            &scrape(cluster, http, part).await.unwrap_or_default(),
            "triggers_router_events_total",
        ),
        // Each event has two outcomes: routed, and its one delivery.
        Part::Persister => {
            let series = scrape(cluster, http, part).await.unwrap_or_default();
            since(&series, "triggers_persister_events_total")
                .min(since(&series, "triggers_persister_outcomes_total") / OUTCOMES_PER_EVENT)
        }
        _ => entries.iter().filter(|e| receiver.seen(&e.id).is_some()).count(),
    }
}

/// CPU per event of each service *busy*: with router, deliverer and
/// persister frozen (SIGSTOP), one gateway takes `plan.events` at
/// `rate` (the warm-up at `plan.rate`); then each consumer in turn runs alone through the backlog
/// (router, deliverer, persister), with the others frozen or done. Each
/// service's CPU is measured over its own stage, net of its idle rate:
/// what a pod costs per event when it has work queued, which is how pods
/// run at 10k events/s (docs/capacity.md), rather than woken for every
/// record at 100 events/s as in [`cost`].
///
/// With `catch_up`, only the persister is frozen: router and deliverer
/// work live, and the persister then catches up on events and outcomes
/// written side by side, as after an outage of the persister alone.
pub async fn busy(
    cluster: &Cluster,
    receiver: &Receiver,
    auditor: &Auditor,
    dir: &std::path::Path,
    plan: Plan,
    rate: u32,
    catch_up: bool,
) -> anyhow::Result<Cost> {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?;
    let url = format!("http://127.0.0.1:{}/v1/events", cluster.ports.of(Part::GatewayA));
    let idle = warm_up_and_idle(cluster, receiver, auditor, &http, dir, plan).await?;
    let consumers: &[Part] = if catch_up {
        &[Part::Persister]
    } else {
        &[Part::Router, Part::Deliverer, Part::Persister]
    };
    let baseline = sample(cluster, &http).await;
    for &part in consumers {
        cluster.freeze(part, true)?;
    }

    eprintln!(
        "[busy] gateway: {} events at {} events/s, frozen: {}",
        plan.events,
        rate,
        consumers.iter().map(|part| part.name()).collect::<Vec<_>>().join(", ")
    );
    let mut stages = Vec::new();
    let (start, cpu_start) = (Instant::now(), cpu_now(cluster));
    let mut load = Load::start_with(
        url,
        &cluster.demo.api_key,
        rate,
        &dir.join("ledger.txt"),
        false,
        plan.data,
    )?;
    while load.accepted() < plan.events && start.elapsed() < plan.limit {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    load.stop().await?;
    let span = start.elapsed();
    stages.push(Stage {
        part: Part::GatewayA,
        working: span,
        used: used_since(&cpu_now(cluster), &cpu_start),
        span,
    });
    let sent = load.counters();
    let entries = load.entries(0);
    let accepted = entries.len();
    if catch_up {
        // Router and deliverer finish live, before the persister starts.
        let start = Instant::now();
        while progress(cluster, &http, receiver, &entries, &baseline, Part::Deliverer).await < accepted {
            anyhow::ensure!(start.elapsed() < plan.limit, "not every event was delivered");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    for &part in consumers {
        eprintln!("[busy] {}: {accepted} events of backlog, alone", part.name());
        let (start, cpu_start) = (Instant::now(), cpu_now(cluster));
        cluster.freeze(part, false)?;
        // The last look that found nothing handled yet: the stage's work
        // began after it (so `working` is at most one look too long).
        let mut before_first = start;
        loop {
            let done = progress(cluster, &http, receiver, &entries, &baseline, part).await;
            if done == 0 {
                before_first = Instant::now();
            }
            if done >= accepted {
                break;
            }
            anyhow::ensure!(
                start.elapsed() < plan.limit,
                "{} handled {done} of {accepted} events in {} s",
                part.name(),
                plan.limit.as_secs()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let span = start.elapsed();
        stages.push(Stage {
            part,
            working: before_first.elapsed(),
            used: used_since(&cpu_now(cluster), &cpu_start),
            span,
        });
    }
    // The persister's last writes are counted once they are answered.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = sample(cluster, &http).await;
    let left = auditor.settle(receiver, &entries, Instant::now() + plan.limit).await;

    let mut failures = Vec::new();
    if !left.is_empty() {
        failures.push(left.describe());
    }
    if accepted < plan.events {
        failures.push(format!("only {accepted} of {} events accepted", plan.events));
    }
    if sent.rejected + sent.server_errors + sent.gave_up > 0 {
        failures.push(format!(
            "{} refused, {} 5xx, {} given up",
            sent.rejected, sent.server_errors, sent.gave_up
        ));
    }

    let per_thousand = |d: Duration| d.as_secs_f64() * 1000.0 / accepted.max(1) as f64 * 1000.0;
    let mut rows = String::new();
    let mut together = 0.0;
    for stage in &stages {
        let used = |part: Part| stage.used.get(&part).copied().unwrap_or_default();
        let own = used(stage.part);
        let net = per_thousand(own.saturating_sub(idle.over(stage.part, stage.span)));
        together += net;
        let store = if stage.part == Part::Persister {
            format!("{:.0} ms", per_thousand(used(Part::Dynamo)))
        } else {
            "—".to_owned()
        };
        rows.push_str(&format!(
            "| {} | {:.1} s | {:.0} | {:.2} s | {:.0} ms | **{net:.0} ms** | {:.0} ms | {store} |\n",
            stage.part.name(),
            stage.working.as_secs_f64(),
            accepted as f64 / stage.working.as_secs_f64().max(0.001),
            own.as_secs_f64(),
            per_thousand(own),
            per_thousand(used(Part::Broker)),
        ));
    }
    let dynamo_of = |part: Part| {
        after
            .dynamo
            .get(&part)
            .zip(baseline.dynamo.get(&part))
            .map(|(now, then)| now.since(then))
            .unwrap_or_default()
    };
    let persister = dynamo_of(Part::Persister);
    let per_event = |v: f64| v / accepted.max(1) as f64;
    let deliverer_reads: f64 = dynamo_of(Part::Deliverer)
        .calls
        .iter()
        .filter(|((operation, _), _)| !writes(operation))
        .map(|(_, calls)| calls)
        .sum();
    let deliverer_rcu: f64 = dynamo_of(Part::Deliverer)
        .units
        .iter()
        .filter(|((_, _, kind), _)| kind == "read")
        // Folded from +0.0: an empty f64 sum is -0.0, printed "-0.000".
        .fold(0.0, |sum, (_, units)| sum + units);
    let write_calls: f64 = persister
        .calls
        .iter()
        .filter(|((operation, result), _)| writes(operation) && result == "ok")
        .map(|(_, calls)| calls)
        .sum();
    let wcu: f64 = persister
        .units
        .iter()
        .filter(|((_, _, kind), _)| kind == "write")
        .map(|(_, units)| units)
        .sum();

    let how = if catch_up {
        "with the persister frozen (router and deliverer live); then the persister caught up alone"
    } else {
        "with router, deliverer and persister frozen; then each of them ran alone through the backlog"
    };
    let report = format!(
        "### CPU per event, each service busy ({accepted} events, 1 KB, one matching subscription)\n\n\
         The gateway took the events at {rate} events/s {how}. *Working* is from the last look (every 250 ms) that found no record \
         handled to the first that found all; CPU is over its whole stage, net of its idle rate ({idle:.0} s measured before).\n\n\
         | service | working | events/s | CPU used | per 1,000 events | net of idle | Tansu per 1,000 | DynamoDB Local per 1,000 |\n\
         |---|---|---|---|---|---|---|---|\n\
         {rows}| **services together** | | | | | **{together:.0} ms** | | |\n\n\
         Persister while busy: {wr:.3} write calls and {wcu:.3} WCU per event. Deliverer while busy: \
         {dr:.3} DynamoDB read calls and {drcu:.3} RCU per event (a delivery more than 5 s old is checked for an \
         acknowledgement first, in `BatchGetItem`s shared by concurrent deliveries; a fresh one is not).\n\n\
         Persister event writes by why they were written: {releases}. Partitions that waited for the other \
         topic, by how the wait ended: {waits}.\n",
        releases = releases(&after, &baseline),
        waits = align_waits(&after, &baseline),
        idle = idle.span.as_secs_f64(),
        wr = per_event(write_calls),
        wcu = per_event(wcu),
        dr = per_event(deliverer_reads),
        drcu = per_event(deliverer_rcu),
    );
    Ok(Cost { report, failures })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_is_read_with_its_labels() {
        let text = "# HELP x y\n\
                    triggers_dynamodb_request_duration_seconds_count{operation=\"PutItem\",result=\"ok\"} 12\n\
                    triggers_dynamodb_capacity_units_sum{capacity=\"write\",operation=\"PutItem\",table=\"a,b\"} 24.5\n\
                    triggers_persister_events_total 7\n";
        let series = parse_exposition(text);
        assert_eq!(series.len(), 3);
        assert_eq!(series[1].labels["table"], "a,b");
        assert_eq!(series[2].value, 7.0);
        let dynamo = Dynamo::from_series(&series);
        assert_eq!(dynamo.calls[&("PutItem".to_owned(), "ok".to_owned())], 12.0);
        assert_eq!(
            dynamo.units[&("PutItem".to_owned(), "a,b".to_owned(), "write".to_owned())],
            24.5
        );
        let later = Dynamo::from_series(&parse_exposition(
            "triggers_dynamodb_request_duration_seconds_count{operation=\"PutItem\",result=\"ok\"} 20\n",
        ));
        assert_eq!(
            later.since(&dynamo).calls[&("PutItem".to_owned(), "ok".to_owned())],
            8.0
        );
    }
}
