//! The load: events posted at a fixed rate (open loop: one every 1/rate s
//! whatever the answers take), each retried with its `Idempotency-Key` as a
//! careful client does (transport errors, 429 and 503 honouring
//! `Retry-After`, other 5xx) for up to two minutes. The ledger records every
//! event id that got a 202, in memory and in `ledger.txt`.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use triggers_core::CancellationToken;

pub use triggers_bench::payload::Data;

/// An accepted event.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The id the gateway answered.
    pub id: String,
    /// When the 202 arrived.
    pub accepted: Instant,
}

/// What the client saw; each counter only grows.
#[derive(Debug, Default)]
pub struct Counters {
    /// Events started.
    pub sent: AtomicU64,
    /// Events answered 202.
    pub accepted: AtomicU64,
    /// Requests answered 429.
    pub throttled: AtomicU64,
    /// Requests answered 503.
    pub unavailable: AtomicU64,
    /// Requests answered 409 `idempotency_in_progress` (retried).
    pub in_progress: AtomicU64,
    /// Requests answered with another 5xx (a defect).
    pub server_errors: AtomicU64,
    /// Requests that got no answer (connection refused or reset, timeout).
    pub transport_errors: AtomicU64,
    /// Events answered with a 4xx other than 429 (a defect: the events are valid).
    pub rejected: AtomicU64,
    /// Events that got no 202 within the retry window.
    pub gave_up: AtomicU64,
    /// Events not started because too many were in flight.
    pub skipped: AtomicU64,
}

/// A copy of [`Counters`] at one moment.
#[derive(Debug, Default, Clone, Copy)]
pub struct Snapshot {
    pub sent: u64,
    pub accepted: u64,
    pub throttled: u64,
    pub unavailable: u64,
    pub in_progress: u64,
    pub server_errors: u64,
    pub transport_errors: u64,
    pub rejected: u64,
    pub gave_up: u64,
    pub skipped: u64,
}

impl Counters {
    fn snapshot(&self) -> Snapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Snapshot {
            sent: get(&self.sent),
            accepted: get(&self.accepted),
            throttled: get(&self.throttled),
            unavailable: get(&self.unavailable),
            in_progress: get(&self.in_progress),
            server_errors: get(&self.server_errors),
            transport_errors: get(&self.transport_errors),
            rejected: get(&self.rejected),
            gave_up: get(&self.gave_up),
            skipped: get(&self.skipped),
        }
    }
}

impl std::ops::Sub for Snapshot {
    type Output = Snapshot;
    fn sub(self, earlier: Snapshot) -> Snapshot {
        Snapshot {
            sent: self.sent - earlier.sent,
            accepted: self.accepted - earlier.accepted,
            throttled: self.throttled - earlier.throttled,
            unavailable: self.unavailable - earlier.unavailable,
            in_progress: self.in_progress - earlier.in_progress,
            server_errors: self.server_errors - earlier.server_errors,
            transport_errors: self.transport_errors - earlier.transport_errors,
            rejected: self.rejected - earlier.rejected,
            gave_up: self.gave_up - earlier.gave_up,
            skipped: self.skipped - earlier.skipped,
        }
    }
}

struct Ledger {
    entries: Mutex<Vec<Entry>>,
    file: Mutex<std::io::BufWriter<std::fs::File>>,
}

/// The running load.
pub struct Load {
    rate: u32,
    ledger: Arc<Ledger>,
    counters: Arc<Counters>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// How long one event is retried before the client gives up.
const RETRY_WINDOW: Duration = Duration::from_secs(120);
/// Events in flight at most (memory stays bounded when nothing answers).
const MAX_IN_FLIGHT: u64 = 20_000;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Load {
    /// Starts posting to `url` (`…/v1/events`) at `rate` events/s, each
    /// event with an `Idempotency-Key`.
    pub fn start(url: String, api_key: &str, rate: u32, ledger_file: &std::path::Path) -> anyhow::Result<Self> {
        Self::start_with(url, api_key, rate, ledger_file, true, Data::Pad)
    }

    /// [`Load::start`], with or without an `Idempotency-Key` on each event
    /// (without: nothing but Kafka on the ingest path, the common case),
    /// its events' `data` as `data` says.
    pub fn start_with(
        url: String,
        api_key: &str,
        rate: u32,
        ledger_file: &std::path::Path,
        idempotency_keys: bool,
        data: Data,
    ) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(40))
            .pool_idle_timeout(Duration::from_secs(5))
            .build()?;
        let ledger = Arc::new(Ledger {
            entries: Mutex::new(Vec::new()),
            file: Mutex::new(std::io::BufWriter::new(std::fs::File::create(ledger_file)?)),
        });
        let counters = Arc::new(Counters::default());
        let stop = CancellationToken::new();
        let auth = format!("Bearer {api_key}");
        let run = Self::run(
            http,
            url,
            auth,
            rate,
            idempotency_keys,
            data,
            ledger.clone(),
            counters.clone(),
            stop.clone(),
        );
        Ok(Self {
            rate,
            ledger,
            counters,
            stop,
            task: tokio::spawn(run),
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn run(
        http: reqwest::Client,
        url: String,
        auth: String,
        rate: u32,
        idempotency_keys: bool,
        data: Data,
        ledger: Arc<Ledger>,
        counters: Arc<Counters>,
        stop: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(Duration::from_secs(1) / rate.max(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let in_flight = Arc::new(AtomicU64::new(0));
        let run_id = ulid::Ulid::new().to_string().to_lowercase();
        let pad = "x".repeat(700);
        let mut tasks = tokio::task::JoinSet::new();
        for seq in 0u64.. {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            while tasks.try_join_next().is_some() {}
            if in_flight.load(Ordering::Relaxed) >= MAX_IN_FLIGHT {
                counters.skipped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            counters.sent.fetch_add(1, Ordering::Relaxed);
            in_flight.fetch_add(1, Ordering::Relaxed);
            let body = serde_json::json!({
                "type": "fault.test",
                "source": "/fault-suite",
                "subject": format!("seq-{seq}"),
                // A busy tenant spreads its events over partitions (without a
                // key, all of a tenant's events share one partition).
                "partition_key": format!("key-{}", seq % 64),
                "data": data.of(seq, &pad),
            });
            let mut request = http.post(&url).header("authorization", &auth).json(&body);
            if idempotency_keys {
                request = request.header("idempotency-key", format!("fs-{run_id}-{seq}"));
            }
            let (ledger, counters, in_flight) = (ledger.clone(), counters.clone(), in_flight.clone());
            tasks.spawn(async move {
                if let Some(id) = post(request, &counters).await {
                    counters.accepted.fetch_add(1, Ordering::Relaxed);
                    let _ = writeln!(lock(&ledger.file), "{id}");
                    lock(&ledger.entries).push(Entry {
                        id,
                        accepted: Instant::now(),
                    });
                } else {
                    counters.gave_up.fetch_add(1, Ordering::Relaxed);
                }
                in_flight.fetch_sub(1, Ordering::Relaxed);
            });
        }
        // Events already started finish (or give up) before the load stops.
        while tasks.join_next().await.is_some() {}
        let _ = lock(&ledger.file).flush();
    }

    /// Stops starting events and waits for those in flight.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        self.stop.cancel();
        (&mut self.task).await?;
        Ok(())
    }

    /// Events per second.
    pub fn rate(&self) -> u32 {
        self.rate
    }

    /// The counters now.
    pub fn counters(&self) -> Snapshot {
        self.counters.snapshot()
    }

    /// How many events were accepted so far.
    pub fn accepted(&self) -> usize {
        lock(&self.ledger.entries).len()
    }

    /// Ledger entries `from..` (in the order their 202s arrived).
    pub fn entries(&self, from: usize) -> Vec<Entry> {
        lock(&self.ledger.entries)
            .get(from..)
            .map(<[Entry]>::to_vec)
            .unwrap_or_default()
    }
}

/// Posts one event until it is accepted or the retry window closes; the id
/// of the accepted event.
async fn post(request: reqwest::RequestBuilder, counters: &Counters) -> Option<String> {
    let deadline = Instant::now() + RETRY_WINDOW;
    let mut backoff = Duration::from_millis(100);
    loop {
        let attempt = request.try_clone()?;
        let mut wait = backoff;
        match attempt.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let retry_after = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    .map(Duration::from_secs);
                match status {
                    202 => {
                        let body: serde_json::Value = response.json().await.ok()?;
                        return body.get("id").and_then(|id| id.as_str()).map(str::to_owned);
                    }
                    429 => counters.throttled.fetch_add(1, Ordering::Relaxed),
                    // The same key is still being processed (an earlier try
                    // whose answer was lost): its answer comes on a retry.
                    409 if retry_after.is_some() => counters.in_progress.fetch_add(1, Ordering::Relaxed),
                    503 => counters.unavailable.fetch_add(1, Ordering::Relaxed),
                    500..=599 => counters.server_errors.fetch_add(1, Ordering::Relaxed),
                    _ => {
                        counters.rejected.fetch_add(1, Ordering::Relaxed);
                        let body = response.text().await.unwrap_or_default();
                        eprintln!("[faults] a valid event was refused: {status} {body}");
                        return None;
                    }
                };
                if let Some(after) = retry_after {
                    wait = after.min(Duration::from_secs(2));
                }
            }
            Err(_) => {
                counters.transport_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        if Instant::now() + wait >= deadline {
            return None;
        }
        tokio::time::sleep(wait).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}
