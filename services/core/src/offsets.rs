//! Offsets under concurrent work: records of a partition may finish in any
//! order, but an offset may be stored only when it and every record before it
//! are done. The tracker answers the highest offset of that contiguous done
//! prefix, each time it moves.

use std::collections::{BTreeSet, HashMap};

#[derive(Debug, Default)]
struct Partition {
    first_started: Option<i64>,
    in_flight: BTreeSet<i64>,
    highest_done: Option<i64>,
    stored: Option<i64>,
}

/// Tracks started and finished records per (topic, partition).
#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: HashMap<(String, i32), Partition>,
}

impl OffsetTracker {
    /// An empty tracker.
    pub fn new() -> Self {
        Self::default()
    }

    /// A record was read and its work started. Records of one partition must
    /// be started in offset order (as a consumer reads them).
    pub fn start(&mut self, topic: &str, partition: i32, offset: i64) {
        let state = self.partitions.entry((topic.to_owned(), partition)).or_default();
        state.first_started.get_or_insert(offset);
        state.in_flight.insert(offset);
    }

    /// A record's work is done. Returns the offset to store (the last record
    /// of the done prefix) when it moved.
    pub fn complete(&mut self, topic: &str, partition: i32, offset: i64) -> Option<i64> {
        let state = self.partitions.get_mut(&(topic.to_owned(), partition))?;
        if !state.in_flight.remove(&offset) {
            return None;
        }
        state.highest_done = Some(state.highest_done.map_or(offset, |h| h.max(offset)));
        let candidate = match state.in_flight.first() {
            Some(first) => first - 1,
            None => state.highest_done?,
        };
        let ours = state.first_started.is_some_and(|first| candidate >= first);
        if ours && state.stored.is_none_or(|stored| candidate > stored) {
            state.stored = Some(candidate);
            Some(candidate)
        } else {
            None
        }
    }

    /// Records of all partitions still being worked on.
    pub fn in_flight(&self) -> usize {
        self.partitions.values().map(|p| p.in_flight.len()).sum()
    }

    /// The last offset returned for storing in a partition.
    pub fn stored(&self, topic: &str, partition: i32) -> Option<i64> {
        self.partitions.get(&(topic.to_owned(), partition))?.stored
    }

    /// Forgets a partition (it was revoked).
    pub fn forget(&mut self, topic: &str, partition: i32) {
        self.partitions.remove(&(topic.to_owned(), partition));
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn out_of_order_completion_stores_only_the_done_prefix() {
        let mut t = OffsetTracker::new();
        for o in 10..15 {
            t.start("e", 0, o);
        }
        assert_eq!(t.complete("e", 0, 12), None);
        assert_eq!(t.complete("e", 0, 11), None);
        assert_eq!(t.complete("e", 0, 10), Some(12));
        assert_eq!(t.complete("e", 0, 14), None);
        assert_eq!(t.complete("e", 0, 13), Some(14));
        assert_eq!(t.in_flight(), 0);
        // Partitions are independent.
        t.start("e", 1, 0);
        t.start("e", 2, 0);
        assert_eq!(t.complete("e", 2, 0), Some(0));
        assert_eq!(t.complete("e", 1, 0), Some(0));
        // Unknown or repeated completions change nothing.
        assert_eq!(t.complete("e", 1, 0), None);
        assert_eq!(t.complete("x", 0, 1), None);
    }

    proptest! {
        /// Whatever the completion order, the stored offset never passes an
        /// unfinished record, only grows, and ends at the last record.
        #[test]
        fn never_passes_unfinished_work(order in Just((0..40i64).collect::<Vec<_>>()).prop_shuffle()) {
            let mut t = OffsetTracker::new();
            for o in 0..40 {
                t.start("e", 0, o);
            }
            let mut done = std::collections::BTreeSet::new();
            let mut last = -1;
            for o in order {
                done.insert(o);
                if let Some(stored) = t.complete("e", 0, o) {
                    prop_assert!(stored > last);
                    prop_assert!((0..=stored).all(|x| done.contains(&x)));
                    last = stored;
                }
            }
            prop_assert_eq!(last, 39);
        }
    }
}
