//! `fault-suite`: the whole pipeline as separate processes under a steady
//! load, faults injected one at a time, and an accounting after each that
//! every event the gateway accepted (202) was delivered and is stored as
//! delivered. Prints a Markdown table: what each fault cost (refused
//! requests, duplicates) and how long the pipeline took to recover.
//!
//! `loadtest/faults/run` builds release binaries and runs the full suite;
//! `scripts/test` runs `--short`.
// A command-line tool: the report goes to stdout.
#![allow(clippy::print_stdout)]

mod audit;
mod cluster;
mod cost;
mod load;
mod pressure;
mod proxy;
mod receiver;
mod scenario;
mod traffic;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use triggers_core::CancellationToken;

use crate::audit::Auditor;
use crate::cluster::{Cluster, Part};
use crate::load::{Load, Snapshot};
use crate::receiver::Receiver;
use crate::scenario::Fault;

/// Faults injected into the whole pipeline under load; nothing accepted may be lost.
#[derive(Debug, Parser)]
struct Args {
    /// Events per second, posted one by one (half of what the store keeps
    /// up with on a 2-core machine with DynamoDB Local: see
    /// docs/reliability.md).
    #[arg(long, default_value_t = 50)]
    rate: u32,
    /// Keep the load on until at least this many events were accepted.
    #[arg(long, default_value_t = 20_000)]
    min_events: usize,
    /// The short version (for `scripts/test`): each fault once and briefly,
    /// 20 events/s, no minimum.
    #[arg(long)]
    short: bool,
    /// Only these scenarios (comma-separated names, e.g. `kill-router,poison`).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Normal load before each fault.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    calm: Duration,
    /// How long the pipeline may take to account for every event after a
    /// fault healed before the scenario fails (default 10 min; short 3 min).
    #[arg(long, value_parser = humantime::parse_duration)]
    recovery_limit: Option<Duration>,
    /// Where the service binaries are (default: next to this program).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Keep data, logs and the ledger here (default: a temporary folder,
    /// kept only when the suite fails).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Also write the report to this file.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Instead of the faults: the gateway's capacity, then twice that for
    /// `--overload-for`, then half (docs/reliability.md, "Overload").
    #[arg(long)]
    overload: bool,
    /// How long the overload lasts.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    overload_for: Duration,
    /// The gateway's memory must stay under this (MiB) in the overload.
    #[arg(long, default_value_t = 256)]
    rss_limit_mib: u64,
    /// Instead of the faults: the pipeline at `--rate` for this long
    /// (docs/reliability.md, "Soak"), e.g. `30m`.
    #[arg(long, value_parser = humantime::parse_duration)]
    soak: Option<Duration>,
    /// The soak's warm-up: memory is judged after it. Longer than the
    /// persister's progress cache keeps an idle entry (5 min), so the cache
    /// is at its steady size when judging starts.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10m")]
    warm_up: Duration,
    /// How far (fraction) a service's memory may move after the warm-up.
    #[arg(long, default_value_t = 0.10)]
    tolerance: f64,
    /// Instead of the faults: what an event costs — CPU time per service
    /// and DynamoDB calls and capacity units per event — for
    /// `--cost-events` events at `--rate` (docs/capacity.md).
    #[arg(long)]
    cost: bool,
    /// Events the cost run sends.
    #[arg(long, default_value_t = 20_000)]
    cost_events: usize,
    /// Instead of the faults: CPU per event of each service busy — the
    /// gateway takes `--cost-events` at `--busy-rate` with the consumers
    /// frozen, then each consumer works through the backlog alone
    /// (docs/capacity.md).
    #[arg(long)]
    busy: bool,
    /// The gateway's rate in the busy run (its warm-up runs at `--rate`).
    #[arg(long, default_value_t = 600)]
    busy_rate: u32,
    /// With `--busy`: freeze only the persister, so it catches up on the
    /// events and outcomes that router and deliverer wrote live meanwhile
    /// (as after an outage of the persister alone).
    #[arg(long, requires = "busy")]
    catch_up: bool,
    /// How long the cost run measures every process idle first.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "20s")]
    idle: Duration,
    /// The cost run's events' `data`: `pad` (724 bytes of `x`) or `order`
    /// (about 1 KB of order JSON, varying, which deflates as real JSON does).
    #[arg(long, value_enum, default_value_t = load::Data::Pad)]
    data: load::Data,
}

/// One line of the report.
#[derive(Debug)]
struct Row {
    name: String,
    fault: String,
    lasted: Duration,
    load: Snapshot,
    duplicates: usize,
    /// The longest time from a 202 to the event's first webhook.
    max_lag: Duration,
    /// From the heal until every event accepted before it was delivered.
    delivered_in: Option<Duration>,
    recovery: Option<Duration>,
    extra: String,
    failure: Option<String>,
}

/// What [`Suite::account`] found.
struct Accounted {
    /// From the heal until every event accepted before it was delivered.
    delivered_in: Option<Duration>,
    /// … and stored as delivered.
    recovery: Option<Duration>,
    duplicates: usize,
    max_lag: Duration,
    failure: Option<String>,
}

struct Suite {
    cluster: Cluster,
    receiver: Receiver,
    load: Load,
    auditor: Auditor,
    /// Ledger entries before this index are accounted for.
    checked: usize,
    calm: Duration,
    limit: Duration,
}

impl Suite {
    /// Accounts for every event accepted up to now (`healed`): waits until
    /// each is delivered and stored; the time that took, or what is left.
    async fn account(&mut self, healed: Instant) -> Accounted {
        let upto = self.load.accepted();
        let entries: Vec<_> = self
            .load
            .entries(self.checked)
            .into_iter()
            .take(upto - self.checked)
            .collect();
        let left = self.auditor.settle(&self.receiver, &entries, healed + self.limit).await;
        self.checked = upto;
        let seen: Vec<_> = entries
            .iter()
            .filter_map(|e| Some((e, self.receiver.seen(&e.id)?)))
            .collect();
        Accounted {
            // When the last of them reached the endpoint (the receiver's clock,
            // not the audit's polling).
            delivered_in: left.undelivered.is_empty().then(|| {
                seen.iter()
                    .map(|(_, s)| s.first.saturating_duration_since(healed))
                    .max()
                    .unwrap_or_default()
            }),
            recovery: left.is_empty().then(|| healed.elapsed()),
            duplicates: seen.iter().filter(|(_, s)| s.count > 1).count(),
            max_lag: seen
                .iter()
                .map(|(e, s)| s.first.saturating_duration_since(e.accepted))
                .max()
                .unwrap_or_default(),
            failure: (!left.is_empty()).then(|| left.describe()),
        }
    }

    async fn run(&mut self, fault: &Fault) -> anyhow::Result<Row> {
        eprintln!("[faults] {}: {}", fault.name(), fault.describe());
        let before = self.load.counters();
        tokio::time::sleep(self.calm).await;
        let quarantined_before = quarantined(&self.cluster).await;
        let injected = Instant::now();
        fault
            .inject(&mut self.cluster, &mut self.receiver)
            .await
            .with_context(|| format!("injecting {}", fault.name()))?;
        let healed = Instant::now();
        let Accounted {
            delivered_in,
            recovery,
            duplicates,
            max_lag,
            mut failure,
        } = self.account(healed).await;
        if let Some(f) = failure.as_mut()
            && self.cluster.broker_panicked()
        {
            f.push_str(
                "; Tansu's storage task panicked (\"more or less than one row\": its defect with \
                 bumped producer epochs) and serves nothing until every producer is new",
            );
        }
        let accepted = self.load.counters().accepted - before.accepted;
        if accepted == 0 {
            failure = Some(format!(
                "no event was accepted during the scenario{}",
                failure.map(|f| format!("; {f}")).unwrap_or_default()
            ));
        }
        let crashed = self.cluster.crashed();
        if !crashed.is_empty() {
            failure = Some(format!(
                "{} exited by itself{}",
                crashed.join(", "),
                failure.map(|f| format!("; {f}")).unwrap_or_default()
            ));
        }
        let extra = match fault {
            Fault::Poison { .. } => format!(
                "{} records quarantined",
                quarantined(&self.cluster).await - quarantined_before
            ),
            _ => String::new(),
        };
        let row = Row {
            name: fault.name(),
            fault: fault.describe(),
            lasted: healed - injected,
            load: self.load.counters() - before,
            duplicates,
            max_lag,
            delivered_in,
            recovery,
            extra,
            failure,
        };
        eprintln!("[faults] {}: {}", row.name, row.verdict());
        Ok(row)
    }
}

async fn quarantined(cluster: &Cluster) -> f64 {
    scenario::counter_sum(cluster, "triggers_quarantined_total").await
        + scenario::counter_sum(cluster, "triggers_router_invalid_events_total").await
}

impl Row {
    fn verdict(&self) -> String {
        match (&self.failure, self.recovery) {
            (Some(failure), _) => format!("FAILED: {failure}"),
            (None, Some(recovery)) => format!(
                "ok: every event accepted before the heal delivered {} and stored {} after it",
                seconds(self.delivered_in),
                seconds(Some(recovery))
            ),
            (None, None) => "ok".to_owned(),
        }
    }

    fn markdown(&self) -> String {
        let l = &self.load;
        format!(
            "| {} | {} | {:.0} s | {} | {} / {} / {} | {} | {:.1} s | {} | {} | {} | {} |",
            self.name,
            self.fault,
            self.lasted.as_secs_f64(),
            l.accepted,
            l.throttled + l.unavailable + l.in_progress,
            l.transport_errors,
            l.gave_up + l.rejected + l.server_errors,
            self.duplicates,
            self.max_lag.as_secs_f64(),
            seconds(self.delivered_in),
            seconds(self.recovery),
            if self.extra.is_empty() { "" } else { &self.extra },
            if self.failure.is_some() { "**FAILED**" } else { "ok" },
        )
    }
}

fn seconds(duration: Option<Duration>) -> String {
    duration
        .map(|d| format!("{:.1} s", d.as_secs_f64()))
        .unwrap_or_else(|| "—".to_owned())
}

fn report(args: &Args, rows: &[Row], totals: &str) -> String {
    let mut text = format!(
        "### Fault suite ({}; {} events/s)\n\n\
         | scenario | fault | lasted | accepted | refused (429/503/409 in progress) / no answer / gave up | duplicates | longest 202 → webhook | all delivered after | all stored after | notes | result |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
        if args.short { "short" } else { "full" },
        args.rate
    );
    for row in rows {
        text.push_str(&row.markdown());
        text.push('\n');
    }
    text.push('\n');
    text.push_str(totals);
    for row in rows.iter().filter(|r| r.failure.is_some()) {
        text.push_str(&format!("\n- {}: {}", row.name, row.verdict()));
    }
    text.push('\n');
    text
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.short {
        args.rate = args.rate.min(20);
        args.min_events = 0;
    }
    let limit = args.recovery_limit.unwrap_or(if args.short {
        Duration::from_secs(180)
    } else {
        Duration::from_secs(600)
    });
    let temp = tempfile::Builder::new().prefix("triggers-faults-").tempdir()?;
    let dir = args.data_dir.clone().unwrap_or_else(|| temp.path().to_owned());
    std::fs::create_dir_all(&dir)?;
    // Absolute: the services run with their own working directory and read
    // their configuration file from under it.
    let dir = std::fs::canonicalize(&dir).with_context(|| format!("{}", dir.display()))?;
    let bin_dir = match &args.bin_dir {
        Some(dir) => dir.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("the program's folder")?
            .to_owned(),
    };
    if args.overload || args.soak.is_some() || args.cost || args.busy {
        return pressure_run(&args, &dir, &bin_dir, temp, limit).await;
    }
    let faults: Vec<Fault> = Fault::all(args.short)
        .into_iter()
        .filter(|f| args.only.is_empty() || args.only.contains(&f.name()))
        .collect();
    anyhow::ensure!(!faults.is_empty(), "no scenario is named {:?}", args.only);

    eprintln!("[faults] starting the pipeline in {}", dir.display());
    let env = std::env::vars().filter(|(name, _)| name.starts_with("TRIGGERS_") && name.contains("__"));
    let cluster = Cluster::start(&dir, &bin_dir, "", env.collect()).await?;
    let receiver = Receiver::start(cluster.ports.receiver)?;
    let proxy_shutdown = CancellationToken::new();
    let gateways = vec![cluster.ports.of(Part::GatewayA), cluster.ports.of(Part::GatewayB)];
    proxy::start(cluster.ports.proxy, gateways, proxy_shutdown.clone()).await?;
    let base = format!("http://127.0.0.1:{}", cluster.ports.proxy);
    let load = Load::start(
        format!("{base}/v1/events"),
        &cluster.demo.api_key,
        args.rate,
        &dir.join("ledger.txt"),
    )?;
    let auditor = Auditor::new(base, &cluster.demo.api_key)?;
    let started = Instant::now();
    let mut suite = Suite {
        cluster,
        receiver,
        load,
        auditor,
        checked: 0,
        calm: args.calm,
        limit,
    };

    let mut rows = Vec::new();
    eprintln!("[faults] no fault: {} s of load", args.calm.as_secs());
    let before = suite.load.counters();
    tokio::time::sleep(args.calm).await;
    let Accounted {
        delivered_in,
        recovery,
        duplicates,
        max_lag,
        failure,
    } = suite.account(Instant::now()).await;
    rows.push(Row {
        name: "none".to_owned(),
        fault: "no fault (baseline)".to_owned(),
        lasted: Duration::ZERO,
        load: suite.load.counters() - before,
        duplicates,
        max_lag,
        delivered_in,
        recovery,
        extra: String::new(),
        failure,
    });
    for fault in &faults {
        match suite.run(fault).await {
            Ok(row) => rows.push(row),
            Err(e) => {
                rows.push(Row {
                    name: fault.name(),
                    fault: fault.describe(),
                    lasted: Duration::ZERO,
                    load: Snapshot::default(),
                    duplicates: 0,
                    max_lag: Duration::ZERO,
                    delivered_in: None,
                    recovery: None,
                    extra: String::new(),
                    failure: Some(format!("{e:#}")),
                });
                break;
            }
        }
    }
    while suite.load.accepted() < args.min_events && rows.iter().all(|r| r.failure.is_none()) {
        eprintln!(
            "[faults] {} of {} events accepted; load goes on",
            suite.load.accepted(),
            args.min_events
        );
        tokio::time::sleep(Duration::from_secs(10)).await;
    }

    // The rest of the ledger, after the load stopped.
    let Suite {
        cluster,
        mut receiver,
        mut load,
        auditor,
        checked,
        ..
    } = suite;
    load.stop().await?;
    let entries = load.entries(0);
    let stopped = Instant::now();
    let left = auditor.settle(&receiver, &entries[checked..], stopped + limit).await;
    let totals = load.counters();
    let duplicates = entries
        .iter()
        .filter(|e| receiver.seen(&e.id).is_some_and(|s| s.count > 1))
        .count();
    let (mismatched, unreadable) = receiver.anomalies();
    let mut failures: Vec<String> = rows.iter().filter_map(|r| r.failure.clone()).collect();
    if !left.is_empty() {
        failures.push(format!("after the load stopped: {}", left.describe()));
    }
    if mismatched + unreadable > 0 {
        failures.push(format!(
            "{mismatched} webhooks whose webhook-id was not the event id, {unreadable} unreadable"
        ));
    }
    if totals.rejected + totals.server_errors > 0 {
        failures.push(format!(
            "{} valid events refused with a 4xx, {} answered with a 5xx other than 503",
            totals.rejected, totals.server_errors
        ));
    }
    let summary = format!(
        "Totals: {} events sent in {:.0} s, {} accepted (the ledger), every one delivered and stored as \
         `delivered`: {}; {} delivered more than once; {} gave up after 2 min of retries (never accepted, \
         not in the ledger); webhook-id ≠ event id: {mismatched}.\n",
        totals.sent,
        started.elapsed().as_secs_f64(),
        entries.len(),
        if failures.is_empty() { "yes" } else { "**no**" },
        duplicates,
        totals.gave_up,
    );
    let text = report(&args, &rows, &summary);
    publish(&args, &text, &failures)?;
    receiver.down().await;
    proxy_shutdown.cancel();
    cluster.stop().await;
    conclude(&args, &failures, temp)
}

/// `--overload`, `--soak`, `--cost` or `--busy`: the pipeline without faults, under
/// pressure or measured.
async fn pressure_run(
    args: &Args,
    dir: &std::path::Path,
    bin_dir: &std::path::Path,
    temp: tempfile::TempDir,
    limit: Duration,
) -> anyhow::Result<()> {
    eprintln!("[faults] starting the pipeline in {}", dir.display());
    let mut env: Vec<(String, String)> = std::env::vars()
        .filter(|(name, _)| name.starts_with("TRIGGERS_") && name.contains("__"))
        .collect();
    // The busy run freezes consumers for up to a minute. A session that
    // outlives the freeze keeps each in its group, so it resumes with its
    // partitions instead of rejoining: Tansu 0.6 can leave a static member
    // that rejoins after its session expired with no partitions, behind
    // its own expired self (loadtest/RESULTS.md, "busy").
    if args.busy && !env.iter().any(|(name, _)| name == "TRIGGERS_KAFKA__SESSION_TIMEOUT") {
        env.push(("TRIGGERS_KAFKA__SESSION_TIMEOUT".to_owned(), "180s".to_owned()));
    }
    let mut cluster = Cluster::start(dir, bin_dir, "", env).await?;
    let mut receiver = Receiver::start(cluster.ports.receiver)?;
    let (text, failures) = if args.cost || args.busy {
        let auditor = Auditor::new(
            format!("http://127.0.0.1:{}", cluster.ports.of(Part::GatewayA)),
            &cluster.demo.api_key,
        )?;
        let plan = cost::Plan {
            rate: args.rate,
            events: args.cost_events,
            idle: args.idle,
            limit,
            data: args.data,
        };
        let cost = if args.busy {
            let busy = cost::busy(&cluster, &receiver, &auditor, dir, plan, args.busy_rate, args.catch_up).await;
            // A run that failed half-way may leave consumers frozen.
            cluster.thaw();
            busy?
        } else {
            cost::cost(&cluster, &receiver, &auditor, dir, plan).await?
        };
        (cost.report, cost.failures)
    } else if let Some(lasted) = args.soak {
        let proxy_shutdown = CancellationToken::new();
        let gateways = vec![cluster.ports.of(Part::GatewayA), cluster.ports.of(Part::GatewayB)];
        proxy::start(cluster.ports.proxy, gateways, proxy_shutdown.clone()).await?;
        let base = format!("http://127.0.0.1:{}", cluster.ports.proxy);
        let mut load = Load::start(
            format!("{base}/v1/events"),
            &cluster.demo.api_key,
            args.rate,
            &dir.join("ledger.txt"),
        )?;
        let auditor = Auditor::new(base, &cluster.demo.api_key)?;
        let soak = pressure::soak(
            &cluster,
            &receiver,
            &mut load,
            &auditor,
            lasted,
            args.warm_up,
            args.tolerance,
            limit,
        )
        .await;
        proxy_shutdown.cancel();
        let soak = soak?;
        (soak.report, soak.failures)
    } else {
        let overload = pressure::overload(&cluster, args.overload_for, args.rss_limit_mib * 1024 * 1024).await?;
        (overload.report, overload.failures)
    };
    let crashed = cluster.crashed();
    let mut failures = failures;
    if !crashed.is_empty() {
        failures.push(format!("{} exited by itself", crashed.join(", ")));
    }
    publish(args, &text, &failures)?;
    receiver.down().await;
    cluster.stop().await;
    conclude(args, &failures, temp)
}

/// Prints the report and the failures, and writes the report to `--report`.
fn publish(args: &Args, text: &str, failures: &[String]) -> anyhow::Result<()> {
    println!("{text}");
    for failure in failures {
        eprintln!("[faults] FAILED: {failure}");
    }
    if let Some(path) = &args.report {
        std::fs::write(path, text).with_context(|| path.display().to_string())?;
    }
    Ok(())
}

/// Success, or the failures counted (and the data kept when it was in a
/// temporary folder).
fn conclude(args: &Args, failures: &[String], temp: tempfile::TempDir) -> anyhow::Result<()> {
    if failures.is_empty() {
        return Ok(());
    }
    let kept = temp.keep();
    if args.data_dir.is_none() {
        eprintln!("[faults] data and logs kept in {}", kept.display());
    }
    anyhow::bail!("{} check(s) failed", failures.len())
}
