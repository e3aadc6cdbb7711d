//! Pressure without faults: the gateway offered twice what it can take
//! (overload), and the whole pipeline for a long time at a steady rate
//! (soak). Both sample the services' resident memory from `/proc`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use triggers_core::CancellationToken;

use crate::audit::Auditor;
use crate::cluster::{Cluster, Part};
use crate::load::{Entry, Load};
use crate::receiver::Receiver;

const MIB: f64 = 1024.0 * 1024.0;

/// One request of the overload test.
#[derive(Debug, Clone, Copy)]
struct Answer {
    /// When it was sent, since its phase began.
    sent: Duration,
    /// Its status; 0 when no answer came (connection refused or reset, timeout).
    status: u16,
    /// How long the answer took.
    latency: Duration,
    /// Whether a 429 or 503 carried `Retry-After`.
    retry_after: bool,
    /// Whether a 503 was the gateway shedding load (`overloaded`), not a
    /// dependency failing (`unavailable`).
    shed: bool,
}

/// An event of about 1 KB, without an `Idempotency-Key` (nothing but Kafka
/// on the ingest path).
fn event(seq: u64) -> serde_json::Value {
    serde_json::json!({
        "type": "overload.test",
        "source": "/fault-suite/overload",
        "partition_key": format!("key-{}", seq % 64),
        "data": {"seq": seq, "pad": "x".repeat(900)},
    })
}

async fn send(http: &reqwest::Client, url: &str, auth: &str, seq: u64, phase: Instant) -> Answer {
    let sent = phase.elapsed();
    let started = Instant::now();
    let answer = http
        .post(url)
        .header("authorization", auth)
        .json(&event(seq))
        .send()
        .await;
    let (status, retry_after, shed) = match answer {
        Ok(response) => {
            let status = response.status().as_u16();
            let retry_after = response.headers().contains_key("retry-after");
            // Read the body: the connection goes back to the pool.
            let body = response.bytes().await.unwrap_or_default();
            let shed = status == 503
                && serde_json::from_slice::<serde_json::Value>(&body).is_ok_and(|b| b["error"]["code"] == "overloaded");
            (status, retry_after, shed)
        }
        Err(_) => (0, false, false),
    };
    Answer {
        sent,
        status,
        latency: started.elapsed(),
        retry_after,
        shed,
    }
}

/// `workers` clients posting back to back for `lasted`: what the gateway
/// takes when clients wait for each answer.
async fn closed_loop(http: &reqwest::Client, url: &str, auth: &str, workers: u64, lasted: Duration) -> Vec<Answer> {
    let phase = Instant::now();
    let answers = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..workers {
        let (http, url, auth, answers) = (http.clone(), url.to_owned(), auth.to_owned(), answers.clone());
        tasks.spawn(async move {
            let mut seq = worker << 32;
            while phase.elapsed() < lasted {
                let answer = send(&http, &url, &auth, seq, phase).await;
                answers.lock().unwrap_or_else(PoisonError::into_inner).push(answer);
                seq += 1;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    answers.lock().unwrap_or_else(PoisonError::into_inner).clone()
}

/// Requests at `rate`/s for `lasted` whatever the answers take (open
/// loop), at most `cap` unanswered at once (the rest are counted as not
/// sent): what clients that do not slow down do to the gateway.
async fn open_loop(
    http: &reqwest::Client,
    url: &str,
    auth: &str,
    rate: f64,
    lasted: Duration,
    cap: u64,
) -> (Vec<Answer>, u64) {
    let phase = Instant::now();
    let answers = Arc::new(Mutex::new(Vec::new()));
    let in_flight = Arc::new(AtomicU64::new(0));
    let mut not_sent = 0;
    let mut tasks = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut seq = 0u64;
    while phase.elapsed() < lasted {
        tick.tick().await;
        while tasks.try_join_next().is_some() {}
        let due = (phase.elapsed().as_secs_f64() * rate) as u64;
        while seq < due {
            seq += 1;
            if in_flight.load(Ordering::Relaxed) >= cap {
                not_sent += 1;
                continue;
            }
            in_flight.fetch_add(1, Ordering::Relaxed);
            let (http, url, auth) = (http.clone(), url.to_owned(), auth.to_owned());
            let (answers, in_flight) = (answers.clone(), in_flight.clone());
            tasks.spawn(async move {
                let answer = send(&http, &url, &auth, seq, phase).await;
                answers.lock().unwrap_or_else(PoisonError::into_inner).push(answer);
                in_flight.fetch_sub(1, Ordering::Relaxed);
            });
        }
    }
    while tasks.join_next().await.is_some() {}
    let answers = answers.lock().unwrap_or_else(PoisonError::into_inner).clone();
    (answers, not_sent)
}

fn percentile(mut values: Vec<Duration>, p: f64) -> Duration {
    if values.is_empty() {
        return Duration::ZERO;
    }
    values.sort_unstable();
    let rank = ((values.len() as f64 * p).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

fn accepted_latencies(answers: &[Answer]) -> Vec<Duration> {
    answers.iter().filter(|a| a.status == 202).map(|a| a.latency).collect()
}

/// Samples the resident memory of `group` every 250 ms until finished;
/// the largest value seen.
struct RssWatch {
    largest: Arc<AtomicU64>,
    stop: CancellationToken,
}

impl RssWatch {
    fn start(group: u32) -> Self {
        let largest = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        let (seen, stopping) = (largest.clone(), stop.clone());
        tokio::task::spawn_blocking(move || {
            while !stopping.is_cancelled() {
                if let Some(rss) = triggers_stack::group_rss(group) {
                    seen.fetch_max(rss, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        });
        Self { largest, stop }
    }

    fn finish(self) -> u64 {
        self.stop.cancel();
        self.largest.load(Ordering::Relaxed)
    }
}

/// What the overload test measured and whether it passed.
pub struct Overload {
    pub report: String,
    pub failures: Vec<String>,
}

/// The gateway's capacity (closed loop), then twice that offered for
/// `lasted` (open loop), then half of it: every refusal must be a 429 or
/// 503 with `Retry-After`, the gateway's memory must stay under
/// `rss_limit`, and half the load must be served in full at once.
pub async fn overload(cluster: &Cluster, lasted: Duration, rss_limit: u64) -> anyhow::Result<Overload> {
    let part = Part::GatewayA;
    let group = cluster
        .group(part)
        .ok_or_else(|| anyhow::anyhow!("gateway-a is not running"))?;
    let url = format!("http://127.0.0.1:{}/v1/events", cluster.ports.of(part));
    let auth = format!("Bearer {}", cluster.demo.api_key);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(4_096)
        .build()?;
    let rss_idle = triggers_stack::group_rss(group).unwrap_or_default();

    eprintln!("[overload] capacity: 64 clients back to back for 20 s");
    let answers = closed_loop(&http, &url, &auth, 64, Duration::from_secs(20)).await;
    // The first seconds warm the connections and the producer up.
    let steady: Vec<Answer> = answers
        .iter()
        .filter(|a| a.sent >= Duration::from_secs(5))
        .copied()
        .collect();
    let capacity = steady.iter().filter(|a| a.status == 202).count() as f64 / 15.0;
    let capacity_p99 = percentile(accepted_latencies(&steady), 0.99);
    anyhow::ensure!(
        capacity >= 10.0,
        "the gateway took {capacity:.0} events/s: too little to test"
    );
    let rss_warm = triggers_stack::group_rss(group).unwrap_or_default();

    let offered = capacity * 2.0;
    eprintln!(
        "[overload] {capacity:.0} events/s; now {offered:.0}/s for {} s",
        lasted.as_secs()
    );
    let watch = RssWatch::start(group);
    let (answers, not_sent) = open_loop(&http, &url, &auth, offered, lasted, 20_000).await;
    let rss_peak = watch.finish();
    let count = |f: &dyn Fn(&Answer) -> bool| answers.iter().filter(|a| f(a)).count();
    let accepted = count(&|a| a.status == 202);
    let throttled = count(&|a| a.status == 429);
    let unavailable = count(&|a| a.status == 503 && !a.shed);
    let shed = count(&|a| a.shed);
    let without_retry_after = count(&|a| matches!(a.status, 429 | 503) && !a.retry_after);
    let no_answer = count(&|a| a.status == 0);
    let other = count(&|a| !matches!(a.status, 0 | 202 | 429 | 503));
    let overload_p50 = percentile(accepted_latencies(&answers), 0.5);
    let overload_p99 = percentile(accepted_latencies(&answers), 0.99);
    let refusal_p99 = percentile(
        answers
            .iter()
            .filter(|a| matches!(a.status, 429 | 503))
            .map(|a| a.latency)
            .collect(),
        0.99,
    );

    let relief = capacity / 2.0;
    eprintln!("[overload] load drops to {relief:.0}/s for 30 s");
    let (after, after_not_sent) = open_loop(&http, &url, &auth, relief, Duration::from_secs(30), 20_000).await;
    // Recovered: from the first whole second whose requests were all
    // accepted, every later second too.
    let mut seconds: BTreeMap<u64, (usize, usize)> = BTreeMap::new();
    for a in &after {
        let s = seconds.entry(a.sent.as_secs()).or_default();
        s.0 += 1;
        s.1 += usize::from(a.status == 202);
    }
    let recovered_after = seconds
        .iter()
        .rev()
        .take_while(|(_, (sent, ok))| sent == ok)
        .last()
        .map(|(second, _)| Duration::from_secs(*second));
    let after_refused = after.iter().filter(|a| a.status != 202).count();
    let after_p99 = percentile(
        after
            .iter()
            .filter(|a| a.status == 202 && a.sent >= Duration::from_secs(5))
            .map(|a| a.latency)
            .collect(),
        0.99,
    );

    let mut failures = Vec::new();
    if other > 0 {
        failures.push(format!("{other} answers other than 202, 429 and 503"));
    }
    if without_retry_after > 0 {
        failures.push(format!("{without_retry_after} refusals without Retry-After"));
    }
    if rss_peak > rss_limit {
        failures.push(format!(
            "the gateway's memory reached {:.0} MiB (limit {:.0} MiB)",
            rss_peak as f64 / MIB,
            rss_limit as f64 / MIB
        ));
    }
    match recovered_after {
        Some(at) if at <= Duration::from_secs(5) => {}
        Some(at) => failures.push(format!(
            "half the load was served in full only after {} s",
            at.as_secs()
        )),
        None => failures.push("the gateway still refused requests 30 s after the load dropped".to_owned()),
    }
    if not_sent > 0 || after_not_sent > 0 {
        eprintln!("[overload] the client's own cap held back {not_sent} + {after_not_sent} requests");
    }
    let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
    let mib = |b: u64| format!("{:.0} MiB", b as f64 / MIB);
    let report = format!(
        "### Overload (one gateway, default settings)\n\n\
         | phase | offered | accepted/s | 202 p50 / p99 | refused 429 / 503 `overloaded` / 503 `unavailable` (with Retry-After) | no answer | other | gateway RSS |\n\
         |---|---|---|---|---|---|---|---|\n\
         | capacity (64 clients, closed loop) | as fast as answered | {capacity:.0} | — / {cap_p99} | — | — | — | {idle} idle → {warm} |\n\
         | overload, {secs} s | {offered:.0}/s (2×) | {acc_rate:.0} | {p50} / {p99} | {throttled} / {shed} / {unavailable} ({with_ra}); refusal p99 {refusal_p99} | {no_answer} | {other} | peak **{peak}** |\n\
         | load drops | {relief:.0}/s (½×) | {after_rate:.0} | — / {after_p99} (after 5 s) | {after_refused} refused in all | — | — | — |\n\n\
         Recovered (every request of each later second accepted) **{recovered}** after the load dropped; \
         client-side cap held back {not_sent} requests.\n",
        cap_p99 = ms(capacity_p99),
        idle = mib(rss_idle),
        warm = mib(rss_warm),
        secs = lasted.as_secs(),
        acc_rate = accepted as f64 / lasted.as_secs_f64(),
        p50 = ms(overload_p50),
        p99 = ms(overload_p99),
        with_ra = if without_retry_after == 0 { "all" } else { "**not all**" },
        refusal_p99 = ms(refusal_p99),
        peak = mib(rss_peak),
        after_rate = after.iter().filter(|a| a.status == 202).count() as f64 / 30.0,
        after_p99 = ms(after_p99),
        recovered = recovered_after.map_or_else(|| "never".to_owned(), |d| format!("{} s", d.as_secs())),
    );
    Ok(Overload { report, failures })
}

/// Resident memory samples of one part.
#[derive(Default)]
struct Memory {
    samples: Vec<(Duration, u64)>,
}

/// What the soak measured and whether it passed.
pub struct Soak {
    pub report: String,
    pub failures: Vec<String>,
}

/// The parts whose memory the soak judges (the services), and the ones it
/// reports only (the local stand-ins for MSK and DynamoDB).
const JUDGED: [Part; 6] = [
    Part::GatewayA,
    Part::GatewayB,
    Part::Router,
    Part::Persister,
    Part::Deliverer,
    Part::Registry,
];
const REPORTED: [Part; 2] = [Part::Broker, Part::Dynamo];

/// The pipeline at `rate` events/s (the suite's careful client, through
/// both gateways) for `lasted`: after `warm_up`, every service's memory
/// must stay within ±`tolerance` of its value at the end of the warm-up,
/// the consumers' lag must stay bounded, and at the end every accepted
/// event must be delivered and stored.
#[allow(clippy::too_many_arguments)]
pub async fn soak(
    cluster: &Cluster,
    receiver: &Receiver,
    load: &mut Load,
    auditor: &Auditor,
    lasted: Duration,
    warm_up: Duration,
    tolerance: f64,
    limit: Duration,
) -> anyhow::Result<Soak> {
    let started = Instant::now();
    let mut memory: BTreeMap<Part, Memory> = BTreeMap::new();
    let mut lag: Vec<(Duration, f64)> = Vec::new();
    let groups: Vec<(Part, u32)> = JUDGED
        .iter()
        .chain(REPORTED.iter())
        .filter_map(|part| Some((*part, cluster.group(*part)?)))
        .collect();
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    while started.elapsed() < lasted {
        tick.tick().await;
        let at = started.elapsed();
        for (part, group) in &groups {
            if let Some(rss) = triggers_stack::group_rss(*group) {
                memory.entry(*part).or_default().samples.push((at, rss));
            }
        }
        lag.push((
            at,
            crate::scenario::counter_sum(cluster, "triggers_consumer_lag_records").await,
        ));
        if at.as_secs() % 60 < 10 {
            eprintln!(
                "[soak] {} min: {} events accepted, lag {:.0} records",
                at.as_secs() / 60,
                load.accepted(),
                lag.last().map_or(0.0, |l| l.1)
            );
        }
    }
    load.stop().await?;
    let entries: Vec<Entry> = load.entries(0);
    let stopped = Instant::now();
    let left = auditor.settle(receiver, &entries, stopped + limit).await;

    let mut failures = Vec::new();
    let mut rows = String::new();
    for (part, Memory { samples }) in &memory {
        let judged = JUDGED.contains(part);
        let after: Vec<u64> = samples
            .iter()
            .filter(|(at, _)| *at >= warm_up)
            .map(|(_, r)| *r)
            .collect();
        let (Some(&base), Some(&last)) = (after.first(), after.last()) else {
            continue;
        };
        let low = after.iter().copied().min().unwrap_or(base);
        let high = after.iter().copied().max().unwrap_or(base);
        let spread = |v: u64| (v as f64 - base as f64) / base as f64;
        let within = spread(low) >= -tolerance && spread(high) <= tolerance;
        if judged && !within {
            failures.push(format!(
                "{}: memory {:+.0}% / {:+.0}% of its value after warm-up",
                part.name(),
                spread(low) * 100.0,
                spread(high) * 100.0
            ));
        }
        rows.push_str(&format!(
            "| {} | {:.0} MiB | {:.0} MiB | {:.0}–{:.0} MiB ({:+.1}% / {:+.1}%) | {} |\n",
            part.name(),
            samples.first().map_or(0.0, |s| s.1 as f64 / MIB),
            base as f64 / MIB,
            low as f64 / MIB,
            high as f64 / MIB,
            spread(low) * 100.0,
            spread(high) * 100.0,
            match (judged, within) {
                (false, _) => format!("reported only ({:.0} MiB at the end)", last as f64 / MIB),
                (true, true) => "ok".to_owned(),
                (true, false) => "**FAILED**".to_owned(),
            }
        ));
    }
    // Lag: bounded means the last quarter of the run is no worse than the
    // first quarter after warm-up, give or take a second of events.
    let after_warm: Vec<(Duration, f64)> = lag.iter().filter(|(at, _)| *at >= warm_up).copied().collect();
    let quarter = (after_warm.len() / 4).max(1);
    let peak = |s: &[(Duration, f64)]| s.iter().map(|l| l.1).fold(0.0, f64::max);
    let early = peak(&after_warm[..quarter.min(after_warm.len())]);
    let late = peak(&after_warm[after_warm.len().saturating_sub(quarter)..]);
    let overall = peak(&after_warm);
    let slack = f64::from(load.rate()) * 5.0;
    if late > early * 2.0 + slack {
        failures.push(format!(
            "the consumers' lag grew: {early:.0} records at most early after warm-up, {late:.0} at the end"
        ));
    }
    let lags: Vec<Duration> = entries
        .iter()
        .filter_map(|e| Some(receiver.seen(&e.id)?.first.saturating_duration_since(e.accepted)))
        .collect();
    if !left.is_empty() {
        failures.push(format!("after the load stopped: {}", left.describe()));
    }
    let counters = load.counters();
    let report = format!(
        "### Soak ({} min at {} events/s; warm-up {} min)\n\n\
         {} events accepted, {} delivered and stored as `delivered`: {}; refused and retried {} (429/503/409), \
         gave up {}. 202 → webhook p50 {:.2} s, p99 {:.2} s, max {:.1} s. Consumer lag (all groups, records) \
         after warm-up: at most {early:.0} in the first quarter, {late:.0} in the last, {overall:.0} overall.\n\n\
         | process | RSS at start | after warm-up | range after warm-up | verdict |\n|---|---|---|---|---|\n{rows}",
        lasted.as_secs() / 60,
        load.rate(),
        warm_up.as_secs() / 60,
        entries.len(),
        if left.is_empty() {
            "all".to_owned()
        } else {
            format!("**not all** ({})", left.describe())
        },
        if left.is_empty() { "yes" } else { "**no**" },
        counters.throttled + counters.unavailable + counters.in_progress,
        counters.gave_up,
        percentile(lags.clone(), 0.5).as_secs_f64(),
        percentile(lags.clone(), 0.99).as_secs_f64(),
        percentile(lags, 1.0).as_secs_f64(),
    );
    Ok(Soak { report, failures })
}
