//! Reading two topics of one consumer side by side in time.
//!
//! A consumer of two topics gets their records in whatever order its
//! fetches return them. When it is behind (after an outage, or when it
//! cannot keep up) one topic may be read far ahead of the other: the
//! persister then read every partition of `events` to its end while
//! `outcomes` still lagged by thousands, so an event's outcomes came long
//! after the event had been held and written alone, and each event cost
//! three writes instead of one (loadtest/RESULTS.md, "busy").
//!
//! An [`Aligner`] keeps either topic from running ahead of the other by
//! more than `slack` in record time (the records' Kafka timestamps), the
//! way Kafka Streams feeds a task its input partitions in timestamp order.
//! A record read beyond the other topic's latest record time plus `slack`
//! pauses its partition (the record is kept and handled as usual; only
//! further fetches stop), which resumes once
//! - the other topic caught up to that record (within `slack`), or
//! - the other topic brought nothing for `quiet` of the wait: it is at its
//!   end, or stopped, and waiting for it saves nothing. The partition is
//!   then read freely until the other topic brings a record, or
//! - the partition waited `max_wait`: a topic that moves but lags (written
//!   by a router far behind) must not hold the other back for longer. The
//!   partition is then read freely until the other topic passed the record
//!   it stopped at.
//!
//! Pausing only delays reading a partition: nothing is skipped or read
//! twice (librdkafka resumes a partition from the position the application
//! reached). The aligner is pure bookkeeping; [`crate::consume::run`]
//! pauses and resumes for it.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

/// Two topics read side by side, and how closely.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Align {
    /// The two topics; neither runs ahead of the other.
    pub topics: [String; 2],
    /// How far ahead (record time) of the other a topic may be read.
    pub slack: Duration,
    /// A wait ends when the other topic brought nothing for this long.
    pub quiet: Duration,
    /// The longest a partition waits at once.
    pub max_wait: Duration,
}

/// Why a partition stopped waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The other topic caught up.
    CaughtUp,
    /// The other topic was quiet.
    Quiet,
    /// It waited `max_wait`.
    MaxWait,
}

impl Ended {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CaughtUp => "caught_up",
            Self::Quiet => "quiet",
            Self::MaxWait => "max_wait",
        }
    }
}

/// A partition of one of the two topics: the topic's index in
/// [`Align::topics`], and the partition.
pub type Side = (usize, i32);

/// Why a partition is read freely, and until when.
#[derive(Debug, Clone, Copy)]
enum Excuse {
    /// It waited `max_wait`: until the other topic passed this record time.
    Past(i64),
    /// The other topic was quiet: until it brings a record after its
    /// this many.
    Quiet(u64),
}

#[derive(Debug, Clone, Copy)]
struct Wait {
    /// The record time it stopped at.
    at: i64,
    since: Instant,
}

/// The state of one alignment: each topic's progress, the partitions
/// waiting for the other topic and those excused from waiting.
///
/// A partition waits only while its records are ahead of the *latest*
/// record time read from the other topic, so the two topics never wait for
/// each other at once.
#[derive(Debug)]
pub struct Aligner {
    align: Align,
    /// The latest record time read from each topic (ms).
    at: [Option<i64>; 2],
    /// When each topic last brought a record (or the aligner started).
    seen: [Instant; 2],
    /// Records read of each topic.
    records: [u64; 2],
    waiting: HashMap<Side, Wait>,
    /// Partitions read freely for a while after a wait that the other
    /// topic did not end.
    excused: HashMap<Side, Excuse>,
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

impl Aligner {
    /// Starts with both topics unread: the first read waits for the
    /// other's first records (up to `quiet`).
    pub fn new(align: Align, now: Instant) -> Self {
        Self {
            align,
            at: [None; 2],
            seen: [now; 2],
            records: [0; 2],
            waiting: HashMap::new(),
            excused: HashMap::new(),
        }
    }

    /// The name of topic `index`.
    pub fn topic(&self, index: usize) -> &str {
        &self.align.topics[index]
    }

    fn index(&self, topic: &str) -> Option<usize> {
        self.align.topics.iter().position(|t| t == topic)
    }

    /// Notes a record read. Returns the partition to pause when the record
    /// runs ahead of the other topic; after any record, [`Aligner::ready`]
    /// may have partitions to resume.
    pub fn saw(&mut self, topic: &str, partition: i32, timestamp: Option<i64>, now: Instant) -> Option<Side> {
        let index = self.index(topic)?;
        let other = 1 - index;
        self.seen[index] = now;
        self.records[index] += 1;
        // A record without a time cannot be placed: it is read as it comes.
        let at = timestamp?;
        self.at[index] = Some(self.at[index].map_or(at, |seen| seen.max(at)));
        let side = (index, partition);
        if self.waiting.contains_key(&side) {
            return None;
        }
        if let Some(&excuse) = self.excused.get(&side) {
            let over = match excuse {
                Excuse::Past(until) => self.at[other].is_some_and(|reached| reached >= until),
                Excuse::Quiet(records) => self.records[other] > records,
            };
            if !over {
                return None;
            }
            self.excused.remove(&side);
        }
        let ahead = self.at[other].is_none_or(|reached| at > reached.saturating_add(millis(self.align.slack)));
        ahead.then(|| {
            self.waiting.insert(side, Wait { at, since: now });
            side
        })
    }

    /// Takes the partitions whose wait is over, and why.
    pub fn ready(&mut self, now: Instant) -> Vec<(Side, Ended)> {
        if self.waiting.is_empty() {
            return Vec::new();
        }
        let reached = self
            .at
            .map(|at| at.map(|at| at.saturating_add(millis(self.align.slack))));
        let mut ready = Vec::new();
        self.waiting.retain(|&side, wait| {
            let other = 1 - side.0;
            let ended = if reached[other].is_some_and(|reached| reached >= wait.at) {
                Ended::CaughtUp
            } else if now.saturating_duration_since(self.seen[other].max(wait.since)) >= self.align.quiet {
                self.excused.insert(side, Excuse::Quiet(self.records[other]));
                Ended::Quiet
            } else if now.saturating_duration_since(wait.since) >= self.align.max_wait {
                self.excused.insert(side, Excuse::Past(wait.at));
                Ended::MaxWait
            } else {
                return true;
            };
            ready.push((side, ended));
            false
        });
        ready
    }

    /// When a wait ends at the latest, if any partition waits.
    pub fn next_due(&self) -> Option<Instant> {
        self.waiting
            .iter()
            .map(|(&(index, _), wait)| {
                (wait.since + self.align.max_wait).min(self.seen[1 - index].max(wait.since) + self.align.quiet)
            })
            .min()
    }

    /// The partitions waiting (paused).
    pub fn waiting(&self) -> impl Iterator<Item = Side> + '_ {
        self.waiting.keys().copied()
    }

    /// Forgets a partition taken away (a new owner starts unpaused).
    pub fn revoked(&mut self, topic: &str, partition: i32) {
        if let Some(index) = self.index(topic) {
            self.waiting.remove(&(index, partition));
            self.excused.remove(&(index, partition));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVENTS: usize = 0;
    const OUTCOMES: usize = 1;

    fn aligner(now: Instant) -> Aligner {
        Aligner::new(
            Align {
                topics: ["events".to_owned(), "outcomes".to_owned()],
                slack: Duration::from_millis(500),
                quiet: Duration::from_secs(1),
                max_wait: Duration::from_secs(10),
            },
            now,
        )
    }

    const T: i64 = 1_700_000_000_000;

    #[test]
    fn a_topic_ahead_waits_until_the_other_reaches_it() {
        let now = Instant::now();
        let mut a = aligner(now);
        // The first record waits for the other topic's first.
        assert_eq!(a.saw("outcomes", 0, Some(T), now), Some((OUTCOMES, 0)));
        assert_eq!(a.saw("events", 3, Some(T + 500), now), None);
        assert_eq!(a.ready(now), vec![((OUTCOMES, 0), Ended::CaughtUp)]);
        // Beyond the slack: partition 3 waits; its next records do not ask again.
        assert_eq!(a.saw("events", 3, Some(T + 2_000), now), Some((EVENTS, 3)));
        assert_eq!(a.saw("events", 3, Some(T + 2_001), now), None);
        assert_eq!(a.waiting().collect::<Vec<_>>(), vec![(EVENTS, 3)]);
        assert_eq!(a.saw("outcomes", 1, Some(T + 1_000), now), None);
        assert!(a.ready(now).is_empty(), "the outcomes are not there yet");
        // The latest time counts, whichever partition brought it.
        assert_eq!(a.saw("outcomes", 0, Some(T + 1_500), now), None);
        assert_eq!(a.ready(now), vec![((EVENTS, 3), Ended::CaughtUp)]);
        assert_eq!(a.next_due(), None);
    }

    #[test]
    fn either_topic_may_be_the_one_ahead_but_never_both() {
        let now = Instant::now();
        let mut a = aligner(now);
        assert_eq!(a.saw("events", 0, Some(T), now), Some((EVENTS, 0)));
        // Outcomes far ahead of the events read: they wait, and the events
        // (behind them) are free to go.
        assert_eq!(a.saw("outcomes", 0, Some(T + 5_000), now), Some((OUTCOMES, 0)));
        assert_eq!(a.ready(now), vec![((EVENTS, 0), Ended::CaughtUp)]);
        assert_eq!(a.saw("events", 0, Some(T + 4_000), now), None);
        assert!(a.ready(now).is_empty());
        assert_eq!(a.saw("events", 0, Some(T + 4_600), now), None);
        assert_eq!(a.ready(now), vec![((OUTCOMES, 0), Ended::CaughtUp)]);
    }

    #[test]
    fn a_quiet_topic_is_waited_for_once_until_it_brings_a_record() {
        let start = Instant::now();
        let mut a = aligner(start);
        a.saw("outcomes", 0, Some(T), start);
        a.saw("events", 0, Some(T), start);
        assert_eq!(a.ready(start), vec![((OUTCOMES, 0), Ended::CaughtUp)]);
        // Outcomes last read a minute ago (a persister frozen, then
        // thawed): events ahead still wait for them, for `quiet`.
        let thawed = start + Duration::from_secs(60);
        assert_eq!(a.saw("events", 0, Some(T + 30_000), thawed), Some((EVENTS, 0)));
        assert_eq!(a.next_due(), Some(thawed + Duration::from_secs(1)));
        assert!(a.ready(thawed + Duration::from_millis(999)).is_empty());
        let later = thawed + Duration::from_secs(1);
        assert_eq!(a.ready(later), vec![((EVENTS, 0), Ended::Quiet)]);
        // Then read freely (a router that is down writes no outcomes)...
        assert_eq!(a.saw("events", 0, Some(T + 60_000), later), None);
        // ...until the outcomes come again.
        a.saw("outcomes", 1, Some(T + 1_000), later);
        assert_eq!(a.saw("events", 0, Some(T + 60_001), later), Some((EVENTS, 0)));
    }

    #[test]
    fn a_lagging_topic_holds_a_partition_back_at_most_max_wait() {
        let start = Instant::now();
        let mut a = aligner(start);
        a.saw("outcomes", 0, Some(T), start);
        a.saw("events", 0, Some(T), start);
        a.ready(start);
        assert_eq!(a.saw("events", 0, Some(T + 30_000), start), Some((EVENTS, 0)));
        // The outcomes keep coming, slowly.
        for step in 1..10 {
            let now = start + Duration::from_secs(step);
            a.saw(
                "outcomes",
                0,
                Some(T + 1_000 * i64::try_from(step).unwrap_or_default()),
                now,
            );
            assert!(a.ready(now).is_empty());
        }
        let now = start + Duration::from_secs(10);
        a.saw("outcomes", 0, Some(T + 10_000), now);
        assert_eq!(a.ready(now), vec![((EVENTS, 0), Ended::MaxWait)]);
        // Excused until the outcomes pass where it stopped.
        assert_eq!(a.saw("events", 0, Some(T + 40_000), now), None);
        a.saw("outcomes", 0, Some(T + 30_000), now);
        assert_eq!(a.saw("events", 0, Some(T + 41_000), now), Some((EVENTS, 0)));
    }

    #[test]
    fn other_topics_and_untimed_records_are_not_held_and_revoked_are_forgotten() {
        let now = Instant::now();
        let mut a = aligner(now);
        a.saw("outcomes", 0, Some(T), now);
        a.ready(now);
        a.waiting.clear();
        assert_eq!(a.saw("quarantine", 0, Some(T + 60_000), now), None);
        assert_eq!(a.saw("events", 0, None, now), None);
        assert_eq!(a.saw("events", 0, Some(T + 60_000), now), Some((EVENTS, 0)));
        a.revoked("outcomes", 0);
        assert_eq!(a.waiting().count(), 1);
        a.revoked("events", 0);
        assert_eq!(a.waiting().count(), 0);
        assert_eq!(a.next_due(), None);
    }
}
