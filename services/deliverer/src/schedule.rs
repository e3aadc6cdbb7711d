//! The verdict of an attempt and the retry schedule: which tier the next
//! attempt goes to and when (at least the tier's delay with ±10 % jitter,
//! at least what `Retry-After` asks, at most an hour of it).

use std::time::Duration;

use crate::attempt::AttemptResult;

/// How an attempt ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// 2xx.
    Delivered,
    /// 410 Gone: disable the subscription.
    Gone,
    /// Anything else: retry later.
    Retry,
}

/// The `status_class` label of a response: `2xx` … `5xx`, or `none` when
/// the endpoint did not answer (timeout, connection refused, blocked).
pub(crate) fn status_class(status: Option<u16>) -> &'static str {
    match status {
        Some(200..=299) => "2xx",
        Some(300..=399) => "3xx",
        Some(400..=499) => "4xx",
        Some(500..=599) => "5xx",
        Some(_) => "other",
        None => "none",
    }
}

/// The verdict of an attempt.
pub fn verdict(result: &AttemptResult) -> Verdict {
    match result.status {
        Some(status) if (200..300).contains(&status) => Verdict::Delivered,
        Some(410) => Verdict::Gone,
        _ => Verdict::Retry,
    }
}

/// When the next attempt after a failed one may run, and on which tier;
/// `None` when the tiers are exhausted (dead-letter). `position` is the
/// failed attempt's place in its round ([`Delivery::round_position`]): 0 for
/// the first attempt, whose retry goes to the first tier.
pub fn next_attempt(
    tiers: &[Duration],
    position: i32,
    retry_after: Option<u64>,
    now: i64,
    jitter: f64,
) -> Option<(usize, i64)> {
    let tier = usize::try_from(position).ok()?;
    let delay = tiers.get(tier)?;
    let jittered = delay.as_secs_f64() * (1.0 + jitter);
    let asked = retry_after.unwrap_or(0).min(MAX_RETRY_AFTER.as_secs()) as f64;
    let wait = jittered.max(asked);
    Some((tier, now.saturating_add((wait * 1000.0) as i64)))
}

/// The longest `Retry-After` honoured: an endpoint asking for more (by
/// mistake, or `3000000000`) is retried after an hour.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3_600);
/// The jitter of retry delays, either way.
pub(crate) const MAX_JITTER: f64 = 0.1;

pub(crate) fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use triggers_core::delivery::Delivery;
    use triggers_core::ids::SubscriptionId;

    use super::*;

    fn result(status: Option<u16>) -> AttemptResult {
        AttemptResult {
            status,
            excerpt: None,
            error: None,
            retry_after: None,
            latency_ms: 1,
        }
    }

    #[test]
    fn verdicts() {
        assert_eq!(verdict(&result(Some(200))), Verdict::Delivered);
        assert_eq!(verdict(&result(Some(204))), Verdict::Delivered);
        assert_eq!(verdict(&result(Some(410))), Verdict::Gone);
        for status in [
            Some(301),
            Some(400),
            Some(404),
            Some(408),
            Some(429),
            Some(500),
            Some(503),
            None,
        ] {
            assert_eq!(verdict(&result(status)), Verdict::Retry, "{status:?}");
        }
    }

    #[test]
    fn the_retry_schedule_follows_the_tiers_and_retry_after() {
        let tiers: Vec<Duration> = [5, 30, 120].into_iter().map(Duration::from_secs).collect();
        assert_eq!(next_attempt(&tiers, 0, None, 0, 0.0), Some((0, 5_000)));
        assert_eq!(next_attempt(&tiers, 1, None, 0, 0.0), Some((1, 30_000)));
        assert_eq!(next_attempt(&tiers, 2, None, 1_000, 0.0), Some((2, 121_000)));
        assert_eq!(next_attempt(&tiers, 3, None, 0, 0.0), None);
        assert_eq!(next_attempt(&tiers, -1, None, 0, 0.0), None);
        // Retry-After wins when longer; jitter moves the delay by at most its share.
        assert_eq!(next_attempt(&tiers, 0, Some(60), 0, 0.0), Some((0, 60_000)));
        assert_eq!(next_attempt(&tiers, 0, Some(2), 0, 0.0), Some((0, 5_000)));
        assert_eq!(next_attempt(&tiers, 0, None, 0, 0.1), Some((0, 5_500)));
    }

    #[test]
    fn a_huge_retry_after_is_capped_and_never_overflows() {
        let tiers: Vec<Duration> = [5, 30].into_iter().map(Duration::from_secs).collect();
        let hour = i64::try_from(MAX_RETRY_AFTER.as_millis()).unwrap_or(i64::MAX);
        assert_eq!(next_attempt(&tiers, 0, Some(3_000_000_000), 0, 0.0), Some((0, hour)));
        assert_eq!(
            next_attempt(&tiers, 1, Some(u64::MAX), 1_000, 0.0),
            Some((1, 1_000 + hour))
        );
        assert_eq!(
            next_attempt(&tiers, 0, Some(u64::MAX), i64::MAX - 10, 0.0),
            Some((0, i64::MAX))
        );
    }

    #[test]
    fn a_replay_starts_a_new_round_of_the_schedule() {
        let tiers: Vec<Duration> = [5, 30].into_iter().map(Duration::from_secs).collect();
        let event =
            triggers_core::event::Event::new(triggers_core::ids::TenantId::new(), "t", "s", serde_json::Value::Null);
        // Three attempts before (the round was exhausted): the replay is attempt 4,
        // and its retry goes to the first tier again.
        let replay = Delivery::again(event, SubscriptionId::new(), 3, true);
        assert_eq!((replay.attempt, replay.round_position()), (4, 0));
        assert_eq!(
            next_attempt(&tiers, replay.round_position(), None, 0, 0.0),
            Some((0, 5_000))
        );
    }
}
