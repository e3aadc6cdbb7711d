//! Batched, coalesced writes to the event store (the `<prefix>events` and
//! `<prefix>attempts` tables, through [`eventstore`]).
//!
//! Records are gathered for up to `batch_wait` (or `max_batch` records),
//! then written together: every attempt item of the batch in
//! `BatchWriteItem`s of 25, and per event one write for its body with all its
//! outcomes of the batch (a new event's first write already carries its
//! progress), or one read-modify-write of its progress for all its outcomes.
//! Under load an event's body and its `routed` outcome usually share a batch,
//! so most events cost one item write instead of three calls. The first
//! writes of new events go 25 to a call (`persister.batch_creates`: PartiQL
//! `INSERT`s, [`eventstore::create_events`]); one a batch finds already
//! exists (its stub, a tombstone) is then written on its own.
//!
//! The writer remembers the version and progress it last wrote of recent
//! events ([`eventstore::ProgressCache`]): the next change of the same event
//! skips its read, and a body written after its stub skips the create that
//! would fail. Writes stay conditional on the version, so a stale entry only
//! costs a retry. Writes of the same event take turns across batches
//! ([`EventTurns`]): an event's body and its `routed` outcome often fall
//! into consecutive batches, and written at once they raced, one of them
//! into a failed conditional write and a read.
//!
//! An event that is not settled yet (see [`Progress::settled`]) and whose
//! deliveries have not failed is held for `hold`, so that its body, its
//! `routed` and its `delivered` outcomes, which come within a few hundred
//! milliseconds in the common case, become one item write instead of a
//! create and an update: half the write units, and the event never passes
//! through the inbox index. `hold` is counted in *record time*, like a
//! stream processor's windows: an event is due once the writer took a
//! record `hold` newer than the event's first (records carry the time
//! they were made), or, when no record came for [`QUIET`], `hold` after it
//! was held (at most ten times `hold` in any case). Live, the two are the
//! same; a persister catching up after an outage takes its records far
//! faster or slower than they were made, and on the wall clock its held
//! events came due before their outcomes had been read (each event then
//! cost three writes instead of one). A settled event is written at once; the held
//! are bounded in number (beyond `max_held` the oldest is written), and
//! shutdown or a closed queue writes them all. Holding only delays a
//! record's offset: nothing is acknowledged before it is in DynamoDB. A
//! held record gives up its consumer slot ([`Slot::free`]) and takes it
//! back when released to be written ([`Slot::occupy`]): held events never
//! keep the consumer from reading the outcomes that settle them (while
//! they kept their slots, a consumer whose slots were all held read
//! nothing more until their hold ran out, and then wrote each event
//! twice), and writes in flight still hold it back.
//!
//! A record's handler learns when its effect is in DynamoDB (then its offset
//! may be stored); a write that fails is retried until shutdown, unless
//! DynamoDB can never take it (an item over 400 KB): then its records are
//! poison, for the quarantine.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use triggers_core::CancellationToken;
use triggers_core::analytics::Tally;
use triggers_core::consume::{Handled, Slot};
use triggers_core::delivery::Outcome;
use triggers_core::dynamo::{Inserted, ItemClient, StoreErrorKind, Tables};
use triggers_core::event::Event;
use triggers_core::eventstore;
use triggers_core::ids::{EventId, TenantId};
use triggers_core::quarantine::Poison;
use triggers_core::status::{EventStatus, Progress};
use triggers_core::tenancy::StoreError;

/// One record's effect.
#[derive(Debug)]
pub enum Record {
    /// An event, with the expiry of its items.
    Event(Box<Event>, i64),
    /// An outcome, with the expiry of its items.
    Outcome(Box<Outcome>, i64),
}

#[derive(Debug)]
struct Pending {
    record: Record,
    done: oneshot::Sender<Handled>,
    /// Its consumer slot (none in the writer's own tests).
    slot: Option<Slot>,
}

/// What became of a write that was retried until it succeeded, shutdown
/// came, or DynamoDB refused it for good.
fn handled(written: Option<Result<(), StoreError>>) -> Handled {
    match written {
        Some(Ok(())) => Handled::Done,
        None => Handled::Stopped,
        Some(Err(e)) => Handled::Poison(Poison::new("store_rejected", e.to_string())),
    }
}

/// Hands records to the batching task. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Writer {
    queue: mpsc::Sender<Pending>,
}

/// How the writer gathers records into writes.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    /// Records per batch at most.
    pub max_batch: usize,
    /// How long a batch gathers records.
    pub batch_wait: Duration,
    /// Create new events' items 25 to a call
    /// ([`eventstore::create_events`]).
    pub batch_creates: bool,
    /// Event writes in flight at once.
    pub writes_in_flight: usize,
    /// How long an event that is not settled waits for more of its records
    /// (zero: written with its batch).
    pub hold: Duration,
    /// Events held at once at most.
    pub max_held: usize,
}

/// One event's records of a batch (or of several, while held).
#[derive(Default)]
struct Group {
    body: Option<(Box<Event>, i64)>,
    outcomes: Vec<Outcome>,
    /// Every outcome with its expiry, for the attempt items.
    attempts: Vec<(Outcome, i64)>,
    expires_at: i64,
    /// The time its earliest record was made (ms since the epoch).
    at: Option<i64>,
    done: Vec<oneshot::Sender<Handled>>,
    /// The consumer's slots of its records.
    slots: Vec<Slot>,
}

impl Group {
    /// Notes a record made at `at`.
    fn made(&mut self, at: i64) {
        self.at = Some(self.at.map_or(at, |earliest| earliest.min(at)));
    }

    /// Adds a later batch's records of the same event.
    fn merge(&mut self, later: Group) {
        if later.body.is_some() {
            self.body = later.body;
        }
        self.outcomes.extend(later.outcomes);
        self.attempts.extend(later.attempts);
        self.expires_at = self.expires_at.max(later.expires_at);
        if let Some(at) = later.at {
            self.made(at);
        }
        self.done.extend(later.done);
        self.slots.extend(later.slots);
    }

    /// Held, its records only wait: they give up their consumer slots, so
    /// that held events never keep the consumer from reading the outcomes
    /// that settle them.
    fn free_slots(&self) {
        for slot in &self.slots {
            slot.free();
        }
    }

    /// Released from hold to be written, its records work again: they take
    /// their slots back, so that writes in flight bound how far the
    /// consumer reads ahead of them.
    fn occupy_slots(self) -> Self {
        for slot in &self.slots {
            slot.occupy();
        }
        self
    }

    /// Whether holding the event longer saves nothing: its body is here or
    /// stored (`known`: the progress this writer last wrote), and with the
    /// outcomes here its progress is settled, or a delivery failed (its next
    /// attempt is a retry tier away, seconds at least, and the event should
    /// show as `retrying` now).
    fn ready(&self, known: Option<Progress>) -> bool {
        if self.body.is_none() && known.is_none() {
            return false;
        }
        let mut progress = known.unwrap_or_default();
        for outcome in &self.outcomes {
            progress.apply(outcome);
        }
        progress.settled() || progress.status() == EventStatus::Retrying
    }
}

/// Why held records were written.
#[derive(Debug, Clone, Copy)]
enum Release {
    /// Their event settled, or a delivery of it failed.
    Settled,
    /// Held for `hold`.
    Due,
    /// More than `max_held` events were held.
    Full,
    /// Shutdown, or the last `Writer` dropped.
    Closing,
}

impl Release {
    fn as_str(self) -> &'static str {
        match self {
            Self::Settled => "settled",
            Self::Due => "due",
            Self::Full => "full",
            Self::Closing => "closing",
        }
    }
}

type Key = (TenantId, EventId);

/// A held event that is quiet for this long (no record taken) is due
/// `hold` after it was held: nothing more is coming to move record time.
pub const QUIET: Duration = Duration::from_millis(250);

/// A held event is due after this many times `hold` on the wall clock,
/// whatever record time says.
const BACKSTOP: u32 = 10;

/// A held event in the order held.
struct Entry {
    /// When it was held.
    since: Instant,
    /// The time its earliest record was made.
    at: Option<i64>,
    key: Key,
    generation: u64,
}

/// The events held back, and when each is due (in the order held).
struct Held {
    hold: Duration,
    max: usize,
    groups: HashMap<Key, (Group, u64)>,
    due: VecDeque<Entry>,
    generation: u64,
    /// The latest time a record taken was made (ms): how far the writer
    /// has read, in record time.
    read_to: Option<i64>,
    /// When records were last taken.
    last_taken: Option<Instant>,
}

impl Held {
    fn new(hold: Duration, max: usize) -> Self {
        Self {
            hold,
            max,
            groups: HashMap::new(),
            due: VecDeque::new(),
            generation: 0,
            read_to: None,
            last_taken: None,
        }
    }

    fn len(&self) -> usize {
        self.groups.len()
    }

    fn is_current(&self, entry: &Entry) -> bool {
        self.groups
            .get(&entry.key)
            .is_some_and(|(_, generation)| *generation == entry.generation)
    }

    /// Whether `entry` is due at `now`: records `hold` newer than its
    /// first were taken, or it was held `hold` and nothing came for
    /// [`QUIET`], or it was held `BACKSTOP` times `hold`.
    fn is_due(&self, entry: &Entry, now: Instant) -> bool {
        let hold_ms = i64::try_from(self.hold.as_millis()).unwrap_or(i64::MAX);
        let read_past = entry
            .at
            .zip(self.read_to)
            .is_some_and(|(at, read_to)| read_to >= at.saturating_add(hold_ms));
        let quiet = self
            .last_taken
            .is_none_or(|taken| now.saturating_duration_since(taken) >= QUIET);
        let waited = now.saturating_duration_since(entry.since);
        read_past || (quiet && waited >= self.hold) || waited >= self.hold * BACKSTOP
    }

    /// When the first held event is due on the wall clock (record time
    /// moves only when records are taken: [`Held::add`] looks then).
    fn next_due(&self) -> Option<Instant> {
        let first = self.due.iter().find(|entry| self.is_current(entry))?;
        let quiet_from = self.last_taken.map_or(first.since, |taken| taken + QUIET);
        Some(
            (first.since + self.hold)
                .max(quiet_from)
                .min(first.since + self.hold * BACKSTOP),
        )
    }

    /// Takes a batch's groups: each joins its event's held records; the
    /// settled (all of them when `hold` is off) are returned to be written
    /// now, with the oldest held beyond `max`.
    fn add(
        &mut self,
        groups: Groups,
        now: Instant,
        hold: bool,
        known: impl Fn(&Key) -> Option<Progress>,
    ) -> Vec<(Key, Group, Release)> {
        let mut ready = Vec::new();
        if let Some(latest) = groups.values().filter_map(|group| group.at).max() {
            self.read_to = Some(self.read_to.map_or(latest, |read_to| read_to.max(latest)));
        }
        self.last_taken = Some(now);
        for (key, group) in groups {
            let group = match self.groups.remove(&key) {
                Some((mut earlier, generation)) => {
                    earlier.merge(group);
                    if !hold || earlier.ready(known(&key)) {
                        ready.push((key, earlier.occupy_slots(), Release::Settled));
                    } else {
                        earlier.free_slots();
                        self.groups.insert(key, (earlier, generation));
                    }
                    continue;
                }
                None => group,
            };
            if !hold || self.hold.is_zero() || group.ready(known(&key)) {
                ready.push((key, group, Release::Settled));
                continue;
            }
            group.free_slots();
            self.generation += 1;
            self.due.push_back(Entry {
                since: now,
                at: group.at,
                key,
                generation: self.generation,
            });
            self.groups.insert(key, (group, self.generation));
        }
        while self.groups.len() > self.max {
            match self.pop_front() {
                Some((key, group)) => ready.push((key, group, Release::Full)),
                None => break,
            }
        }
        // Record time moved: the held it passed are due.
        ready.extend(self.take_due(now));
        ready
    }

    /// The held that are due at `now`, in the order held (one not due yet
    /// keeps those behind it).
    fn take_due(&mut self, now: Instant) -> Vec<(Key, Group, Release)> {
        let mut ready = Vec::new();
        while let Some(first) = self.due.front() {
            if !self.is_current(first) {
                self.due.pop_front();
            } else if self.is_due(first, now) {
                if let Some((key, group)) = self.pop_front() {
                    ready.push((key, group, Release::Due));
                }
            } else {
                break;
            }
        }
        ready
    }

    /// Every held event.
    fn take_all(&mut self) -> Vec<(Key, Group, Release)> {
        self.due.clear();
        self.groups
            .drain()
            .map(|(key, (group, _))| (key, group.occupy_slots(), Release::Closing))
            .collect()
    }

    /// The first in the due order that is still held under the same
    /// generation (an event written early leaves a stale entry behind).
    fn pop_front(&mut self) -> Option<(Key, Group)> {
        while let Some(entry) = self.due.pop_front() {
            if self.is_current(&entry) {
                return self
                    .groups
                    .remove(&entry.key)
                    .map(|(group, _)| (entry.key, group.occupy_slots()));
            }
        }
        None
    }
}

/// What the batching task does next.
enum Next {
    /// Write these held groups (due, or shutdown).
    Release(Vec<(Key, Group, Release)>),
    /// A batch starts with this record.
    First(Pending),
    /// Every `Writer` is gone.
    Closed,
}

/// Sleeps until `at`, or forever.
async fn until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Writer {
    /// Starts the batching task; it writes what it holds and ends when
    /// every `Writer` is dropped.
    pub fn start(
        clients: Clients,
        tables: Tables,
        tally: Tally,
        batching: Batching,
        shutdown: CancellationToken,
    ) -> Self {
        let Batching {
            max_batch,
            batch_wait,
            batch_creates,
            writes_in_flight,
            hold,
            max_held,
        } = batching;
        let (queue, mut incoming) = mpsc::channel::<Pending>(max_batch.max(1) * 4);
        let store = Arc::new(Store {
            dynamo: clients.sdk,
            items: clients.items,
            tables,
            cache: eventstore::ProgressCache::default(),
            tally,
            turns: EventTurns::new(TURN_STRIPES),
            batch_creates: BatchCreates::new(batch_creates),
        });
        tokio::spawn(async move {
            let slots = Arc::new(tokio::sync::Semaphore::new(writes_in_flight.max(1)));
            let mut held = Held::new(hold, max_held.max(1));
            loop {
                let first = tokio::select! {
                    biased;
                    () = shutdown.cancelled(), if held.len() > 0 => Next::Release(held.take_all()),
                    () = until(held.next_due()) => Next::Release(held.take_due(Instant::now())),
                    first = incoming.recv() => first.map_or(Next::Closed, Next::First),
                };
                let (ready, closed) = match first {
                    Next::Release(ready) => (ready, false),
                    // Nothing more comes: write what is held.
                    Next::Closed => (held.take_all(), true),
                    Next::First(first) => {
                        let batch = triggers_core::gather::group(&mut incoming, first, batch_wait, max_batch).await;
                        metrics::histogram!("triggers_persister_batch_size").record(batch.len() as f64);
                        let ready = held.add(
                            coalesce(batch),
                            Instant::now(),
                            !shutdown.is_cancelled(),
                            |(tenant, id)| store.cache.progress(tenant, id),
                        );
                        (ready, false)
                    }
                };
                write_groups(&store, ready, &slots, &shutdown);
                metrics::gauge!("triggers_persister_held_events").set(held.len() as f64);
                if closed {
                    break;
                }
            }
        });
        Self { queue }
    }

    /// Writes `record` with the next batch; `Done` once it is in DynamoDB,
    /// `Stopped` if shutdown came first. While the record is held (its
    /// event waits for more records), it frees its consumer `slot`.
    pub async fn write(&self, record: Record, slot: Slot) -> Handled {
        let (done, written) = oneshot::channel();
        let pending = Pending {
            record,
            done,
            slot: Some(slot),
        };
        if self.queue.send(pending).await.is_err() {
            return Handled::Stopped;
        }
        written.await.unwrap_or(Handled::Stopped)
    }
}

/// The DynamoDB clients of the writes.
#[derive(Debug)]
pub struct Clients {
    /// For the rare calls (removing the attempts of a deleted event).
    pub sdk: aws_sdk_dynamodb::Client,
    /// For every event's writes (`dynamodb.lean_client`).
    pub items: ItemClient,
}

/// What the writes share.
struct Store {
    dynamo: aws_sdk_dynamodb::Client,
    items: ItemClient,
    tables: Tables,
    cache: eventstore::ProgressCache,
    tally: Tally,
    turns: EventTurns,
    batch_creates: BatchCreates,
}

/// How long batched creates stay off after DynamoDB denied one.
const DENIED_PAUSE: Duration = Duration::from_secs(600);

/// Whether new events' items are created in batches now: when configured
/// (`persister.batch_creates`) and not paused. A role without
/// `dynamodb:PartiQLInsert` is denied every batch; rather than retry those
/// for ever (nothing would be stored), the persister creates new events
/// one by one, as with `batch_creates = false`, and tries a batch again
/// [`DENIED_PAUSE`] later, so a permission granted meanwhile is taken up
/// without a restart.
#[derive(Debug)]
struct BatchCreates {
    configured: bool,
    paused_until: std::sync::Mutex<Option<Instant>>,
}

impl BatchCreates {
    fn new(configured: bool) -> Self {
        Self {
            configured,
            paused_until: std::sync::Mutex::new(None),
        }
    }

    /// Whether to batch the creates of events made new at `now`.
    fn on(&self, now: Instant) -> bool {
        self.configured && !Self::paused(*self.pause(), now)
    }

    /// A batch was denied at `now`: off for [`DENIED_PAUSE`]. `true` when
    /// this starts a pause (not a batch sent before the first denial was
    /// answered), so it is reported once per pause.
    fn denied(&self, now: Instant) -> bool {
        let mut pause = self.pause();
        let starts = !Self::paused(*pause, now);
        if starts {
            *pause = Some(now + DENIED_PAUSE);
        }
        starts
    }

    /// Whether a pause lasting `until` is still on at `now`.
    fn paused(until: Option<Instant>, now: Instant) -> bool {
        until.is_some_and(|until| now < until)
    }

    fn pause(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.paused_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Stripes of [`EventTurns`]: far more than writes in flight, so unrelated
/// events seldom wait for each other.
const TURN_STRIPES: usize = 4096;

/// One event's writes one at a time: a lock per stripe of event keys. The
/// later write then finds the earlier one's version in the progress cache
/// and goes straight to its conditional update.
struct EventTurns {
    stripes: Box<[tokio::sync::Mutex<()>]>,
    hasher: std::hash::RandomState,
}

impl EventTurns {
    fn new(stripes: usize) -> Self {
        Self {
            stripes: (0..stripes.max(1)).map(|_| tokio::sync::Mutex::new(())).collect(),
            hasher: std::hash::RandomState::new(),
        }
    }

    /// The stripe of `key`.
    fn stripe(&self, key: &Key) -> usize {
        use std::hash::BuildHasher;
        self.hasher.hash_one(key) as usize % self.stripes.len()
    }

    /// The lock the writes of `key` take turns on.
    fn of(&self, key: &Key) -> &tokio::sync::Mutex<()> {
        &self.stripes[self.stripe(key)]
    }

    /// The turns of every key of `keys`, taken in the stripes' order, so
    /// two writers taking several never wait for each other in a circle.
    async fn all<'a>(&self, keys: impl Iterator<Item = &'a Key>) -> Vec<tokio::sync::MutexGuard<'_, ()>> {
        let mut stripes: Vec<usize> = keys.map(|key| self.stripe(key)).collect();
        stripes.sort_unstable();
        stripes.dedup();
        let mut turns = Vec::with_capacity(stripes.len());
        for stripe in stripes {
            turns.push(self.stripes[stripe].lock().await);
        }
        turns
    }
}

/// The writes of a batch, one per event.
type Groups = HashMap<Key, Group>;

/// A batch per event: its body (if in the batch), its outcomes in the
/// order read (each also for its attempt item), the latest expiry, and who
/// waits for it.
fn coalesce(batch: Vec<Pending>) -> Groups {
    let mut groups: Groups = HashMap::new();
    for Pending { record, done, slot } in batch {
        match record {
            Record::Event(event, expires_at) => {
                let group = groups.entry((event.tenant, event.id)).or_default();
                group.expires_at = group.expires_at.max(expires_at);
                group.made(event.received_at);
                group.body = Some((event, expires_at));
                group.done.push(done);
                group.slots.extend(slot);
            }
            Record::Outcome(outcome, expires_at) => {
                let group = groups.entry((outcome.tenant, outcome.event_id)).or_default();
                group.expires_at = group.expires_at.max(expires_at);
                group.made(outcome.at);
                group.attempts.push(((*outcome).clone(), expires_at));
                group.outcomes.push(*outcome);
                group.done.push(done);
                group.slots.extend(slot);
            }
        }
    }
    groups
}

/// Starts the writes of `groups`: their attempt items at once; the events
/// new to this writer (their body here, no version known) created 25 to a
/// call ([`eventstore::create_events`]); every other event's write, and a
/// create a batch left undone, on its own. Each takes a write slot as it
/// frees up (no write waits for another).
fn write_groups(
    store: &Arc<Store>,
    groups: Vec<(Key, Group, Release)>,
    slots: &Arc<tokio::sync::Semaphore>,
    shutdown: &CancellationToken,
) {
    if groups.is_empty() {
        return;
    }
    let mut attempts = Vec::new();
    let groups: Vec<(Key, Group)> = groups
        .into_iter()
        .map(|(key, mut group, release)| {
            metrics::counter!("triggers_persister_event_writes_total", "release" => release.as_str()).increment(1);
            attempts.append(&mut group.attempts);
            (key, group)
        })
        .collect();
    // The attempt items, shared by the groups that have outcomes.
    let attempts_written: AttemptsWritten = {
        let (store, shutdown) = (store.clone(), shutdown.clone());
        let task = tokio::spawn(async move {
            if attempts.is_empty() {
                return Handled::Done;
            }
            let written = handled(
                triggers_core::consume::retry_transient("store attempts", &shutdown, StoreError::is_retriable, || {
                    eventstore::put_attempts(&store.items, &store.tables, &attempts)
                })
                .await,
            );
            if written == Handled::Done {
                for (outcome, _) in &attempts {
                    store.tally.attempted(outcome);
                }
            }
            written
        });
        async move { task.await.unwrap_or(Handled::Stopped) }.boxed().shared()
    };
    let job = WriteJob {
        store: store.clone(),
        slots: slots.clone(),
        shutdown: shutdown.clone(),
        attempts_written,
    };
    let mut new = Vec::new();
    let batch_creates = store.batch_creates.on(Instant::now());
    for (key, group) in groups {
        let item = match &group.body {
            Some((event, expires_at)) if batch_creates && store.cache.progress(&key.0, &key.1).is_none() => {
                eventstore::new_item(event, *expires_at, &group.outcomes)
            }
            _ => None,
        };
        match item {
            Some(item) => new.push((key, group, item)),
            None => {
                tokio::spawn(job.clone().write_alone(key, group, Create::Try));
            }
        }
    }
    while !new.is_empty() {
        let batch: Vec<_> = new.drain(..new.len().min(CREATES_PER_CALL)).collect();
        tokio::spawn(job.clone().create_batch(batch));
    }
}

/// Events one batched create makes at most (one `BatchExecuteStatement`).
const CREATES_PER_CALL: usize = 25;

/// Whether the attempt items of a batch are in DynamoDB.
type AttemptsWritten = futures::future::Shared<futures::future::BoxFuture<'static, Handled>>;

/// Whether an event's own write tries to create its item first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Create {
    /// Unless this writer knows the item exists.
    Try,
    /// A batched create found it exists: write into it.
    Skip,
}

/// What a write of some events needs.
#[derive(Clone)]
struct WriteJob {
    store: Arc<Store>,
    slots: Arc<tokio::sync::Semaphore>,
    shutdown: CancellationToken,
    attempts_written: AttemptsWritten,
}

impl WriteJob {
    /// Creates the items of `batch` in one call, holding every one of its
    /// events' turns; each event a batch does not create is written on
    /// its own after.
    async fn create_batch(self, batch: Vec<(Key, Group, eventstore::NewItem)>) {
        let (groups, items): (Vec<_>, Vec<_>) =
            batch.into_iter().map(|(key, group, item)| ((key, group), item)).unzip();
        let results = {
            let store = &self.store;
            let _turns = store.turns.all(groups.iter().map(|(key, _)| key)).await;
            let Ok(_slot) = self.slots.clone().acquire_owned().await else {
                return;
            };
            let track = eventstore::Track {
                cache: Some(&store.cache),
                tally: Some(&store.tally),
            };
            // A denial is not retried here: these events have another way in.
            let retriable = |e: &StoreError| e.is_retriable() && e.kind() != StoreErrorKind::Denied;
            triggers_core::consume::retry_transient("store events", &self.shutdown, retriable, || {
                eventstore::create_events(&store.items, &store.tables, &items, track)
            })
            .await
        };
        let results = match results {
            None => {
                for (_, group) in groups {
                    for done in group.done {
                        let _ = done.send(Handled::Stopped);
                    }
                }
                return;
            }
            Some(Ok(results)) => results,
            // Not a transient failure: each event on its own, which
            // reports what fails. A role without `dynamodb:PartiQLInsert`:
            // no batches for a while.
            Some(Err(e)) => {
                if e.kind() == StoreErrorKind::Denied && self.store.batch_creates.denied(Instant::now()) {
                    tracing::warn!(
                        error = %e,
                        pause = ?DENIED_PAUSE,
                        "batched creates denied: new events are created one by one meanwhile \
                         (grant dynamodb:PartiQLInsert, or set persister.batch_creates = false)"
                    );
                }
                vec![Inserted::Failed(String::new()); groups.len()]
            }
        };
        for ((key, group), result) in groups.into_iter().zip(results) {
            match result {
                Inserted::Created => {
                    let attempts = self.attempts_written.clone();
                    tokio::spawn(async move {
                        let written = if group.outcomes.is_empty() {
                            Handled::Done
                        } else {
                            attempts.await
                        };
                        for done in group.done {
                            let _ = done.send(written.clone());
                        }
                    });
                }
                Inserted::Exists => {
                    tokio::spawn(self.clone().write_alone(key, group, Create::Skip));
                }
                Inserted::Failed(_) => {
                    tokio::spawn(self.clone().write_alone(key, group, Create::Try));
                }
            }
        }
    }

    /// One event's write: its body (created, or written into its item) with
    /// its outcomes, or its outcomes alone; then its waiters are told.
    async fn write_alone(self, (tenant, id): Key, group: Group, create: Create) {
        let store = &self.store;
        let shutdown = &self.shutdown;
        let _turn = store.turns.of(&(tenant, id)).lock().await;
        let Ok(_slot) = self.slots.clone().acquire_owned().await else {
            return;
        };
        let (dynamo, tables) = (&store.items, &store.tables);
        let track = eventstore::Track {
            cache: Some(&store.cache),
            tally: Some(&store.tally),
        };
        let written =
            triggers_core::consume::retry_transient("store event", shutdown, StoreError::is_retriable, || async {
                match &group.body {
                    Some((event, expires_at)) if create == Create::Skip => {
                        eventstore::put_existing_event(dynamo, tables, event, *expires_at, &group.outcomes, track).await
                    }
                    Some((event, expires_at)) => {
                        eventstore::put_event_with(dynamo, tables, event, *expires_at, &group.outcomes, track).await
                    }
                    None => eventstore::apply_outcomes(
                        dynamo,
                        tables,
                        &tenant,
                        &id,
                        &group.outcomes,
                        group.expires_at,
                        track,
                    )
                    .await
                    .map(|status| status.is_some()),
                }
            })
            .await;
        // Whether the event still exists (`false`: deleted, a tombstone).
        let alive = !matches!(written, Some(Ok(false)));
        let mut written = handled(written.map(|w| w.map(|_| ())));
        if written == Handled::Done && !group.outcomes.is_empty() {
            written = self.attempts_written.clone().await;
            if written == Handled::Done && !alive {
                written = remove_orphans(store, &tenant, &id, shutdown).await;
            }
        }
        for done in group.done {
            let _ = done.send(written.clone());
        }
    }
}

/// Removes the attempt items and dead letters the batch wrote for an event
/// that was deleted meanwhile (late outcomes of a deleted event): a deleted
/// event leaves nothing behind but its tombstone.
async fn remove_orphans(store: &Store, tenant: &TenantId, id: &EventId, shutdown: &CancellationToken) -> Handled {
    let prefixes = [format!("{id}#"), triggers_core::deadletter::event_prefix(id)];
    for prefix in &prefixes {
        let removed =
            triggers_core::consume::retry_transient("remove orphans", shutdown, StoreError::is_retriable, || {
                eventstore::delete_prefix(&store.dynamo, &store.tables.attempts, tenant, prefix)
            })
            .await;
        match removed {
            Some(Ok(count)) => {
                metrics::counter!("triggers_persister_orphans_removed_total").increment(count as u64);
            }
            other => return handled(other.map(|r| r.map(|_| ()))),
        }
    }
    Handled::Done
}

#[cfg(test)]
mod tests {
    use triggers_core::delivery::OutcomeKind;
    use triggers_core::ids::SubscriptionId;

    use super::*;

    fn event(tenant: TenantId) -> Event {
        Event::new(tenant, "order.created", "test", serde_json::Value::Null)
    }

    fn pending(record: Record) -> (Pending, oneshot::Receiver<Handled>) {
        let (done, waiting) = oneshot::channel();
        (
            Pending {
                record,
                done,
                slot: None,
            },
            waiting,
        )
    }

    #[test]
    fn a_batch_becomes_one_write_per_event_with_its_outcomes_in_order() {
        let tenant = TenantId::new();
        let (first, second) = (event(tenant), event(tenant));
        let routed = Outcome::routing(&first, vec![SubscriptionId::new()]);
        let mut delivered = routed.clone();
        delivered.kind = OutcomeKind::Delivered;
        let batch = vec![
            pending(Record::Outcome(Box::new(routed.clone()), 200)).0,
            pending(Record::Event(Box::new(first.clone()), 100)).0,
            pending(Record::Event(Box::new(second.clone()), 100)).0,
            pending(Record::Outcome(Box::new(delivered.clone()), 150)).0,
        ];
        let groups = coalesce(batch);
        assert_eq!(groups.len(), 2, "one group per event");
        let group = &groups[&(tenant, first.id)];
        assert_eq!(group.body.as_ref().map(|(e, _)| e.id), Some(first.id));
        let kinds: Vec<OutcomeKind> = group.outcomes.iter().map(|o| o.kind).collect();
        assert_eq!(
            kinds,
            [OutcomeKind::Routed, OutcomeKind::Delivered],
            "in the order read"
        );
        assert_eq!(group.expires_at, 200, "the latest expiry of its records");
        assert_eq!(group.done.len(), 3, "every record of the event waits for its write");
        let alone = &groups[&(tenant, second.id)];
        assert!(alone.outcomes.is_empty());
        assert_eq!(alone.done.len(), 1);
        assert_eq!(group.attempts.len(), 2, "every outcome is offered as an attempt item");
        assert_eq!(group.attempts[1].1, 150, "with its own expiry");
    }

    /// One event's records arriving as they do in the common case.
    fn records(tenant: TenantId) -> (Event, Outcome, Outcome) {
        let event = event(tenant);
        let routed = Outcome::routing(&event, vec![SubscriptionId::new()]);
        let mut delivered = routed.clone();
        delivered.kind = OutcomeKind::Delivered;
        delivered.subscription_id = routed.subscriptions.first().copied();
        (event, routed, delivered)
    }

    fn batch(records: Vec<Record>) -> (Groups, Vec<oneshot::Receiver<Handled>>) {
        let (batch, waiting): (Vec<_>, Vec<_>) = records.into_iter().map(pending).unzip();
        (coalesce(batch), waiting)
    }

    fn nothing_known(_: &Key) -> Option<Progress> {
        None
    }

    #[test]
    fn a_held_record_frees_its_consumer_slot_until_it_is_written() {
        let tenant = TenantId::new();
        let slotted = |record: Record| {
            let (mut pending, waiting) = pending(record);
            let slot = Slot::standalone(CancellationToken::new());
            pending.slot = Some(slot.clone());
            (coalesce(vec![pending]), slot, waiting)
        };
        let (event, routed, delivered) = records(tenant);
        let mut held = Held::new(Duration::from_secs(1), 100);
        let start = Instant::now();
        let (first, body, _w1) = slotted(Record::Event(Box::new(event), 100));
        assert!(held.add(first, start, true, nothing_known).is_empty());
        assert!(body.is_freed(), "held: the event's record only waits");
        let (second, routing, _w2) = slotted(Record::Outcome(Box::new(routed), 100));
        assert!(held.add(second, start, true, nothing_known).is_empty());
        assert!(routing.is_freed(), "joined a held event: it only waits");
        let (third, delivery, _w3) = slotted(Record::Outcome(Box::new(delivered), 100));
        assert_eq!(held.add(third, start, true, nothing_known).len(), 1, "settled");
        assert!(
            !delivery.is_freed(),
            "it settled its event: written at once, in its slot"
        );
        assert!(
            !body.is_freed() && !routing.is_freed(),
            "released to be written, the held records take their slots back"
        );

        // An event whose records settle it in one batch is never held.
        let (event, routed, delivered) = records(tenant);
        let slots: Vec<Slot> = (0..3).map(|_| Slot::standalone(CancellationToken::new())).collect();
        let batch = [
            Record::Event(Box::new(event), 100),
            Record::Outcome(Box::new(routed), 100),
            Record::Outcome(Box::new(delivered), 100),
        ]
        .into_iter()
        .zip(&slots)
        .map(|(record, slot)| {
            let (mut pending, _) = pending(record);
            pending.slot = Some(slot.clone());
            pending
        })
        .collect();
        assert_eq!(held.add(coalesce(batch), start, true, nothing_known).len(), 1);
        assert!(slots.iter().all(|slot| !slot.is_freed()), "written at once");
    }

    #[test]
    fn an_event_is_held_until_settled_then_written_once_with_all_its_records() {
        let tenant = TenantId::new();
        let (event, routed, delivered) = records(tenant);
        let key = (tenant, event.id);
        let mut held = Held::new(Duration::from_secs(1), 100);
        let start = Instant::now();
        let (first, _w1) = batch(vec![Record::Event(Box::new(event.clone()), 100)]);
        assert!(held.add(first, start, true, nothing_known).is_empty(), "accepted: held");
        let (second, _w2) = batch(vec![Record::Outcome(Box::new(routed), 100)]);
        assert!(held.add(second, start, true, nothing_known).is_empty(), "routed: held");
        assert_eq!(held.len(), 1);
        let (third, _w3) = batch(vec![Record::Outcome(Box::new(delivered), 300)]);
        let ready = held.add(third, start, true, nothing_known);
        assert_eq!(ready.len(), 1, "delivered: settled, written");
        let (written, group, release) = &ready[0];
        assert_eq!(*written, key);
        assert!(matches!(release, Release::Settled));
        assert!(group.body.is_some(), "one write with the body");
        assert_eq!(group.outcomes.len(), 2, "and both outcomes");
        assert_eq!(group.attempts.len(), 2);
        assert_eq!(group.done.len(), 3, "every record waits for that write");
        assert_eq!(group.expires_at, 300);
        assert_eq!(held.len(), 0);
        assert!(
            held.take_due(start + Duration::from_secs(5)).is_empty(),
            "its due entry is stale"
        );
    }

    #[test]
    fn an_event_that_does_not_settle_is_written_when_due() {
        let tenant = TenantId::new();
        let (event, routed, _) = records(tenant);
        let mut held = Held::new(Duration::from_secs(1), 100);
        let start = Instant::now();
        let (groups, _waiting) = batch(vec![
            Record::Event(Box::new(event.clone()), 100),
            Record::Outcome(Box::new(routed), 100),
        ]);
        assert!(held.add(groups, start, true, nothing_known).is_empty());
        assert_eq!(held.next_due(), Some(start + Duration::from_secs(1)));
        assert!(held.take_due(start + Duration::from_millis(999)).is_empty(), "not yet");
        let due = held.take_due(start + Duration::from_secs(1));
        assert_eq!(due.len(), 1);
        assert!(matches!(due[0].2, Release::Due));
        assert_eq!(due[0].1.outcomes.len(), 1);
        assert_eq!(held.len(), 0);
        assert_eq!(held.next_due(), None);
    }

    #[test]
    fn hold_is_counted_in_record_time_while_records_come() {
        let tenant = TenantId::new();
        let start = Instant::now();
        let mut held = Held::new(Duration::from_secs(1), 100);
        // Catching up: an event made long ago, then records keep coming,
        // all made less than `hold` after it.
        let (old, routed, _) = records(tenant);
        let made = old.received_at;
        let (groups, _w) = batch(vec![Record::Event(Box::new(old.clone()), 100)]);
        assert!(held.add(groups, start, true, nothing_known).is_empty());
        let mut now = start;
        for step in 1..=8 {
            now = start + Duration::from_millis(250 * step);
            let mut other = event(tenant);
            other.received_at = made + 100 * i64::try_from(step).unwrap_or_default();
            let (groups, _w) = batch(vec![Record::Event(Box::new(other), 100)]);
            let ready = held.add(groups, now, true, nothing_known);
            assert!(
                ready.iter().all(|(key, _, _)| key.1 != old.id),
                "due after {} ms of wall clock but only {} ms of record time",
                250 * step,
                100 * step
            );
        }
        // Its outcome comes two seconds late on the wall clock, in time.
        let (groups, _w) = batch(vec![Record::Outcome(Box::new(routed), 100)]);
        assert!(held.add(groups, now, true, nothing_known).is_empty());
        // A record made `hold` after it: due, with its outcome.
        let mut later = event(tenant);
        later.received_at = made + 1_000;
        let (groups, _w) = batch(vec![Record::Event(Box::new(later), 100)]);
        let ready = held.add(groups, now, true, nothing_known);
        let (_, group, release) = ready
            .iter()
            .find(|(key, _, _)| key.1 == old.id)
            .unwrap_or_else(|| panic!("not due after a record made `hold` later"));
        assert!(matches!(release, Release::Due));
        assert_eq!(group.outcomes.len(), 1);
        // Nothing comes any more: each of the rest is due once it is quiet
        // and `hold` after it was held.
        assert_eq!(held.next_due(), Some(now + QUIET));
        let rest = held.take_due(now + QUIET);
        assert_eq!(rest.len(), 5, "the five held at least `hold` before");
        assert!(rest.iter().all(|(_, _, release)| matches!(release, Release::Due)));
        assert_eq!(held.next_due(), Some(start + Duration::from_millis(2_500)));
        assert_eq!(held.take_due(now + Duration::from_secs(1)).len(), 4);
        assert_eq!(held.len(), 0);
    }

    #[test]
    fn holding_is_bounded_off_when_closing_and_failures_and_late_outcomes_go_at_once() {
        let tenant = TenantId::new();
        let start = Instant::now();
        // Beyond the bound, the oldest goes.
        let mut held = Held::new(Duration::from_secs(1), 2);
        let events: Vec<Event> = (0..3).map(|_| event(tenant)).collect();
        let mut ready = Vec::new();
        let mut waiting = Vec::new();
        for (i, e) in events.iter().enumerate() {
            let (groups, w) = batch(vec![Record::Event(Box::new(e.clone()), 100)]);
            waiting.extend(w);
            ready.extend(held.add(groups, start + Duration::from_millis(i as u64), true, nothing_known));
        }
        assert_eq!(ready.len(), 1);
        assert_eq!(ready[0].0, (tenant, events[0].id), "the oldest");
        assert!(matches!(ready[0].2, Release::Full));
        assert_eq!(held.len(), 2);
        // Closing: everything.
        let all = held.take_all();
        assert_eq!(all.len(), 2);
        assert!(all.iter().all(|(_, _, r)| matches!(r, Release::Closing)));
        // Not holding (shutdown): a new event goes with its batch.
        let (groups, _w) = batch(vec![Record::Event(Box::new(event(tenant)), 100)]);
        assert_eq!(held.add(groups, start, false, nothing_known).len(), 1);
        // A late outcome of an event this writer stored as routed settles it.
        let (stored, routed, delivered) = records(tenant);
        let mut known = Progress::default();
        known.apply(&routed);
        let (groups, _w) = batch(vec![Record::Outcome(Box::new(delivered.clone()), 100)]);
        let ready = held.add(groups, start, true, |key: &Key| {
            (key.1 == stored.id).then(|| known.clone())
        });
        assert_eq!(ready.len(), 1, "written at once");
        // A failed first attempt: the retry is seconds away, written now.
        let (failing, routed, mut retrying) = records(tenant);
        retrying.kind = OutcomeKind::Retrying;
        let (groups, _w) = batch(vec![
            Record::Event(Box::new(failing), 100),
            Record::Outcome(Box::new(routed), 100),
            Record::Outcome(Box::new(retrying), 100),
        ]);
        let ready = held.add(groups, start, true, nothing_known);
        assert_eq!(ready.len(), 1, "retrying: written at once");
        // Unknown to this writer (body not seen): held, the routed outcome
        // may name more subscriptions.
        let (groups, _w) = batch(vec![Record::Outcome(Box::new(delivered), 100)]);
        assert!(held.add(groups, start, true, nothing_known).is_empty());
        // No hold at all: nothing waits.
        let mut off = Held::new(Duration::ZERO, 100);
        let (groups, _w) = batch(vec![Record::Event(Box::new(event(tenant)), 100)]);
        assert_eq!(off.add(groups, start, true, nothing_known).len(), 1);
    }

    #[tokio::test]
    async fn writes_of_one_event_take_turns() {
        let turns = EventTurns::new(64);
        let tenant = TenantId::new();
        let key = (tenant, EventId::new());
        let first = turns.of(&key).lock().await;
        assert!(
            turns.of(&key).try_lock().is_err(),
            "a second write of the event waits for the first"
        );
        drop(first);
        assert!(turns.of(&key).try_lock().is_ok(), "and goes once the first is done");
        // Unrelated events mostly have a stripe of their own.
        let others: std::collections::HashSet<usize> =
            (0..32).map(|_| turns.stripe(&(tenant, EventId::new()))).collect();
        assert!(
            others.len() > 12,
            "32 events spread over {} of 64 stripes",
            others.len()
        );
    }

    #[test]
    fn a_denied_batch_turns_batched_creates_off_for_a_while() {
        let now = Instant::now();
        let creates = BatchCreates::new(true);
        assert!(creates.on(now));
        assert!(creates.denied(now), "the first denial starts a pause");
        assert!(
            !creates.denied(now + Duration::from_secs(1)),
            "a batch sent before the answer came does not start another"
        );
        assert!(!creates.on(now + DENIED_PAUSE - Duration::from_millis(1)));
        assert!(creates.on(now + DENIED_PAUSE), "tried again after the pause");
        assert!(
            creates.denied(now + DENIED_PAUSE),
            "and a new denial starts a new pause"
        );
        assert!(!creates.on(now + DENIED_PAUSE + Duration::from_secs(1)));
        // Not configured: never on.
        assert!(!BatchCreates::new(false).on(now));
    }

    #[test]
    fn a_write_ends_done_stopped_or_poison() {
        assert_eq!(handled(Some(Ok(()))), Handled::Done);
        assert_eq!(handled(None), Handled::Stopped);
        let refused = StoreError::found(
            "PutItem",
            "t_events",
            triggers_core::dynamo::StoreErrorKind::TooLarge,
            "over 400 KB",
        );
        assert!(matches!(handled(Some(Err(refused))), Handled::Poison(p) if p.reason == "store_rejected"));
    }
}
