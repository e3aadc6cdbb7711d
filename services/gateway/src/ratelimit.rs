//! Per-tenant rate limits: a token bucket per tenant, refilled at the limit
//! (events per second) with one second of burst. Every event of a batch
//! counts. A batch larger than the burst is let through when the bucket is
//! full and leaves it in debt, so it is never refused forever.
//!
//! The buckets live in each replica: with `rate_limit_replicas = N` each
//! replica enforces `limit / N`, so N replicas behind a balancing load
//! balancer enforce the limit together (see `docs/rate-limits.md`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use triggers_core::ids::TenantId;

/// What a request may see of its tenant's bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quota {
    /// The limit, events per second (this replica's share times replicas).
    pub limit: u32,
    /// Whole events that may still be sent now.
    pub remaining: u32,
    /// Seconds until the bucket is full again.
    pub reset: u64,
}

/// A refusal.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Exceeded {
    /// The quota after the refusal.
    pub quota: Quota,
    /// When enough capacity is back.
    pub retry_after: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// The buckets of every tenant seen by this replica.
#[derive(Debug)]
pub struct RateLimiter {
    default_limit: u32,
    replicas: u32,
    buckets: Mutex<HashMap<TenantId, Bucket>>,
}

impl RateLimiter {
    /// Buckets with `default_limit` events/s, shared by `replicas` replicas.
    pub fn new(default_limit: u32, replicas: u32) -> Self {
        Self {
            default_limit,
            replicas: replicas.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes `events` tokens from `tenant`'s bucket, at `now`.
    pub fn acquire(
        &self,
        tenant: TenantId,
        own_limit: Option<u32>,
        events: u32,
        now: Instant,
    ) -> Result<Quota, Exceeded> {
        let limit = own_limit.unwrap_or(self.default_limit).max(1);
        let rate = f64::from(limit) / f64::from(self.replicas);
        let capacity = rate.max(1.0);
        let mut buckets = self.buckets.lock();
        if buckets.len() > 100_000 {
            buckets.retain(|_, b| now.duration_since(b.updated) < Duration::from_secs(60));
        }
        let bucket = buckets.entry(tenant).or_insert(Bucket {
            tokens: capacity,
            updated: now,
        });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(capacity);
        bucket.updated = now;
        let wanted = f64::from(events);
        let quota = |tokens: f64| Quota {
            limit,
            remaining: tokens.max(0.0).floor() as u32,
            reset: ((capacity - tokens).max(0.0) / rate).ceil() as u64,
        };
        // A request larger than the burst goes through only on a full bucket.
        let allowed = bucket.tokens >= wanted || (wanted > capacity && bucket.tokens >= capacity);
        if allowed {
            bucket.tokens -= wanted;
            Ok(quota(bucket.tokens))
        } else {
            let missing = wanted.min(capacity) - bucket.tokens;
            Err(Exceeded {
                quota: quota(bucket.tokens),
                retry_after: Duration::from_secs_f64((missing / rate).max(0.001)),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_the_limit_passes_then_the_rate_holds() {
        let limiter = RateLimiter::new(10, 1);
        let tenant = TenantId::new();
        let start = Instant::now();
        for i in 0..10 {
            let quota = limiter
                .acquire(tenant, None, 1, start)
                .unwrap_or_else(|e| panic!("{i}: {e:?}"));
            assert_eq!(quota.remaining, 9 - i);
        }
        let refused = limiter.acquire(tenant, None, 1, start).expect_err("11th passed");
        assert_eq!(refused.quota.remaining, 0);
        assert!((refused.retry_after.as_secs_f64() - 0.1).abs() < 1e-6, "{refused:?}");
        // 100 ms later one more event is allowed, not two.
        let later = start + Duration::from_millis(100);
        assert!(limiter.acquire(tenant, None, 1, later).is_ok());
        assert!(limiter.acquire(tenant, None, 1, later).is_err());
    }

    #[test]
    fn tenants_have_their_own_buckets_and_limits() {
        let limiter = RateLimiter::new(2, 1);
        let (a, b) = (TenantId::new(), TenantId::new());
        let now = Instant::now();
        assert!(limiter.acquire(a, None, 2, now).is_ok());
        assert!(limiter.acquire(a, None, 1, now).is_err());
        assert!(limiter.acquire(b, None, 2, now).is_ok());
        let c = TenantId::new();
        let quota = limiter
            .acquire(c, Some(100), 50, now)
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!((quota.limit, quota.remaining), (100, 50));
    }

    #[test]
    fn a_batch_over_the_burst_passes_on_a_full_bucket_and_leaves_debt() {
        let limiter = RateLimiter::new(100, 1);
        let tenant = TenantId::new();
        let now = Instant::now();
        assert!(limiter.acquire(tenant, None, 500, now).is_ok());
        let refused = limiter.acquire(tenant, None, 1, now).expect_err("passed in debt");
        // 400 in debt, plus the one wanted, at 100/s.
        assert!((refused.retry_after.as_secs_f64() - 4.01).abs() < 1e-6, "{refused:?}");
        assert!(
            limiter
                .acquire(tenant, None, 1, now + Duration::from_millis(4_010))
                .is_ok()
        );
    }

    #[test]
    fn replicas_share_the_limit() {
        let limiter = RateLimiter::new(10, 2);
        let tenant = TenantId::new();
        let now = Instant::now();
        assert!(limiter.acquire(tenant, None, 5, now).is_ok());
        assert!(limiter.acquire(tenant, None, 1, now).is_err());
    }
}
