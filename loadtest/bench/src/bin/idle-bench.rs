//! `idle-bench`: what an idle local stack costs in CPU.
//!
//! Starts the whole local pipeline (as `scripts/run-local` does, on free
//! ports, data in a temporary folder), sends one event through it, lets it
//! settle, then reads the CPU time of every process on the machine from
//! `/proc` before and after a quiet window. Prints Markdown: % of one core
//! per process (services in this process, Tansu, DynamoDB Local, anything
//! else that ran) and the whole machine, how long one event then takes from
//! 202 to webhook (every consumer paused), and the services' threads.
//!
//! Any `TRIGGERS_<SECTION>__<FIELD>` setting of the environment applies, so
//! `TRIGGERS_KAFKA__IDLE_FETCH_INTERVAL=0s idle-bench` measures the stack
//! without idle pacing.

// A benchmark program: its report is its output.
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use serde_json::json;

#[derive(Debug, Parser)]
#[command(about = "CPU of an idle local stack")]
struct Args {
    /// Seconds to let the stack settle after the first event.
    #[arg(long, default_value_t = 10)]
    settle: u64,
    /// Seconds of the measured quiet window.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
}

/// CPU ticks (user + system) per process id, with the process's name.
fn process_ticks() -> BTreeMap<u32, (String, u64)> {
    ticks_in("/proc")
}

/// CPU ticks per thread of this process, with the thread's name.
fn thread_ticks() -> BTreeMap<u32, (String, u64)> {
    ticks_in("/proc/self/task")
}

/// CPU ticks of every `<dir>/<id>/stat` (processes or one process's threads).
fn ticks_in(dir: &str) -> BTreeMap<u32, (String, u64)> {
    let mut ticks = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return ticks;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("{dir}/{pid}/stat")) else {
            continue;
        };
        // `pid (comm) state ...`: the name may hold spaces, so split at the last ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = stat[open + 1..close].to_owned();
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        // After the name: state is field 0, utime field 11, stime field 12.
        let (Some(utime), Some(stime)) = (
            fields.get(11).and_then(|v| v.parse::<u64>().ok()),
            fields.get(12).and_then(|v| v.parse::<u64>().ok()),
        ) else {
            continue;
        };
        ticks.insert(pid, (name, utime + stime));
    }
    ticks
}

/// The ticks `id` spent since `before` (all of them if it is new).
fn spent(before: &BTreeMap<u32, (String, u64)>, id: u32, ticks: u64) -> u64 {
    ticks.saturating_sub(before.get(&id).map_or(0, |(_, t)| *t))
}

/// Sends one event of `event_type` and waits for its webhook; the time from
/// its 202 to the webhook.
async fn deliver_one(
    client: &reqwest::Client,
    stack: &triggers_local::LocalStack,
    event_type: &str,
) -> anyhow::Result<Duration> {
    let before = stack.received.count();
    client
        .post(format!("{}/v1/events", stack.endpoints.gateway_url))
        .bearer_auth(&stack.demo.api_key)
        .json(&json!({"type": event_type, "source": "idle-bench", "data": {}}))
        .send()
        .await?
        .error_for_status()?;
    let accepted = Instant::now();
    while stack.received.count() == before {
        anyhow::ensure!(
            accepted.elapsed() < Duration::from_secs(30),
            "the {event_type} event was not delivered"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(accepted.elapsed())
}

/// Busy and total ticks of the whole machine (`/proc/stat`, all cores).
fn machine_ticks() -> anyhow::Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().context("empty /proc/stat")?;
    let values: Vec<u64> = line.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    let total: u64 = values.iter().sum();
    // idle and iowait are fields 3 and 4.
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    Ok((total - idle, total))
}

/// Clock ticks per second of `/proc` times (`getconf CLK_TCK`; 100 on Linux).
fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let triggers_bench::Local {
        stack,
        source,
        guards: _guards,
    } = triggers_bench::start_local(Some("idle-bench")).await?;
    let kafka = source.common()?.kafka;

    // One event through the whole pipeline, so every consumer has worked once.
    let client = reqwest::Client::new();
    deliver_one(&client, &stack, "idle.check").await?;
    tokio::time::sleep(Duration::from_secs(args.settle)).await;

    let (busy_before, total_before) = machine_ticks()?;
    let before = process_ticks();
    let threads_before = thread_ticks();
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let elapsed = started.elapsed().as_secs_f64();
    let after = process_ticks();
    let threads_after = thread_ticks();
    let (busy_after, total_after) = machine_ticks()?;

    // The price of pacing: one event after the quiet window, from its 202 to
    // its webhook, while every consumer is paused.
    let wake = deliver_one(&client, &stack, "idle.wake").await?;
    stack.stop().await;

    let hz = clock_ticks();
    let me = std::process::id();
    let percent = |ticks: u64| ticks as f64 / hz / elapsed * 100.0;
    let mut rows: Vec<(String, f64)> = Vec::new();
    for (pid, (name, ticks)) in &after {
        let spent = spent(&before, *pid, *ticks);
        if spent == 0 {
            continue;
        }
        let label = if *pid == me {
            "services (gateway, router, persister, deliverer, registry, receiver)".to_owned()
        } else {
            name.clone()
        };
        rows.push((label, percent(spent)));
    }
    rows.sort_by(|a, b| b.1.total_cmp(&a.1));
    // The services' threads, summed by name (librdkafka names its threads
    // `rdk:main`, `rdk:broker<N>`, …; tokio's are `tokio-runtime-worker`).
    let mut by_name: BTreeMap<String, (usize, u64)> = BTreeMap::new();
    for (tid, (name, ticks)) in &threads_after {
        let spent = spent(&threads_before, *tid, *ticks);
        let entry = by_name.entry(name.clone()).or_default();
        entry.0 += 1;
        entry.1 += spent;
    }
    let mut threads: Vec<(String, usize, f64)> = by_name
        .into_iter()
        .map(|(name, (count, ticks))| (name, count, percent(ticks)))
        .collect();
    threads.sort_by(|a, b| b.2.total_cmp(&a.2));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let machine = (busy_after - busy_before) as f64 / (total_after - total_before).max(1) as f64 * cores * 100.0;

    println!(
        "Idle local stack, {:.0} s window after {} s settling; `kafka.fetch_wait_max` = {}, \
         `kafka.idle_fetch_interval` = {}, `kafka.idle_after` = {}\n",
        elapsed,
        args.settle,
        humantime::format_duration(kafka.fetch_wait_max),
        humantime::format_duration(kafka.idle_fetch_interval),
        humantime::format_duration(kafka.idle_after),
    );
    println!("| process | CPU, % of one core |");
    println!("|---|---|");
    let mut sum = 0.0;
    for (label, percent) in &rows {
        if *percent >= 0.05 {
            println!("| {label} | {percent:.1} |");
        }
        sum += percent;
    }
    println!("| **all processes** | **{sum:.1}** |");
    println!("| whole machine (`/proc/stat`) | {machine:.1} |");
    println!(
        "\nAn event after the quiet window, 202 to webhook: {} ms\n",
        wake.as_millis()
    );
    println!("The services' threads, by name:\n");
    println!("| thread | count | CPU, % of one core |");
    println!("|---|---|---|");
    for (name, count, percent) in threads.iter().filter(|t| t.2 >= 0.05) {
        println!("| `{name}` | {count} | {percent:.1} |");
    }
    Ok(())
}
