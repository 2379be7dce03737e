//! The counts behind `GET /v1/stats` and the store gauges of `/metrics`,
//! kept per key prefix for a bounded time.
//!
//! Counting costs the store a pass over the records it counts (a scan in
//! Redis, an index walk in Postgres), while a dashboard asks every second or
//! so and several may ask at once. So:
//!
//! - each prefix's answer is kept for `max_age`, or for [`COST_FACTOR`]
//!   times as long as counting took, whichever is longer: however large the
//!   store, counting one prefix takes at most about a tenth of the store's
//!   time, however many callers poll;
//! - a count runs in a task of its own, one per prefix at a time: callers
//!   that find the answer too old share the count under way, and a caller
//!   that gives up does not cut it short, so the work is never wasted;
//! - a caller waits for a count up to a bound (the store timeout); past it,
//!   it takes the last answer kept, however old (its `as_of` says so), or,
//!   when there is none yet, a `store_unavailable` error to retry later.
//!
//! Prefixes are the namespaces of the configured tokens plus `""`, so the
//! map is bounded by the configuration.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chrono::Utc;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use onceflight_core::{Error, Result, StoreStats, Timestamp};
// Tokio's clock, which tests can pause and move on.
use tokio::time::Instant;

/// How many times as long as a count took its answer is kept at least.
pub(crate) const COST_FACTOR: u32 = 10;

/// Counts as one read of the store saw them, and when.
#[derive(Clone, Debug)]
pub(crate) struct Counted {
    /// The counts.
    pub(crate) stats: StoreStats,
    /// When they were read (the server's clock, for display).
    pub(crate) as_of: Timestamp,
    /// How long they are kept before the store is counted again.
    pub(crate) kept_for: Duration,
    /// When they were read, for judging their age.
    read_at: Instant,
}

impl Counted {
    fn fresh(&self) -> bool {
        self.read_at.elapsed() < self.kept_for
    }
}

/// A count of the store under way, shared by every caller that waits on it.
type Counting = Shared<BoxFuture<'static, Result<Counted>>>;

/// One prefix: the answer kept, and the count under way, if any.
#[derive(Debug, Default)]
struct Slot {
    kept: Option<Counted>,
    counting: Option<Counting>,
}

type Slots = HashMap<String, Arc<Mutex<Slot>>>;

/// Counts per key prefix, each kept for a while and counted by one task at a
/// time.
#[derive(Debug)]
pub(crate) struct StatsCache {
    max_age: Duration,
    slots: Mutex<Slots>,
}

/// Takes a lock poisoned by a panic as it is: every change under these
/// locks is one assignment, never left half-done.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl StatsCache {
    /// A cache keeping each answer for `max_age` at least (zero: count on
    /// every request, each caller on its own, for as long as it waits).
    pub(crate) fn new(max_age: Duration) -> Self {
        Self {
            max_age,
            slots: Mutex::default(),
        }
    }

    /// The counts under `prefix`: the answer kept while it is fresh, else
    /// the answer of a count of the store (`count`, started in a task of its
    /// own unless one is under way), waited for up to `wait`; past `wait`,
    /// the last answer kept, or `Unavailable` when there is none. A failed
    /// count keeps nothing, so the next caller counts again.
    pub(crate) async fn counts<F>(
        &self,
        prefix: &str,
        wait: Duration,
        backend: &'static str,
        count: F,
    ) -> Result<Counted>
    where
        F: FnOnce() -> BoxFuture<'static, Result<StoreStats>>,
    {
        let still_counting = || {
            Error::unavailable(
                backend,
                StillCounting {
                    waited: wait,
                    prefix: prefix.to_owned(),
                },
            )
        };
        if self.max_age.is_zero() {
            let started = Instant::now();
            let stats = tokio::time::timeout(wait, count())
                .await
                .map_err(|_| still_counting())??;
            return Ok(counted(stats, started, Duration::ZERO));
        }
        let slot = Arc::clone(lock(&self.slots).entry(prefix.to_owned()).or_default());
        let counting = {
            let mut state = lock(&slot);
            if let Some(kept) = state.kept.as_ref().filter(|kept| kept.fresh()) {
                return Ok(kept.clone());
            }
            match &state.counting {
                Some(counting) => counting.clone(),
                None => {
                    let counting = self.start(Arc::clone(&slot), backend, count());
                    state.counting = Some(counting.clone());
                    counting
                }
            }
        };
        match tokio::time::timeout(wait, counting).await {
            Ok(answer) => answer,
            Err(_) => lock(&slot).kept.clone().ok_or_else(still_counting),
        }
    }

    /// Runs `count` in a task of its own, which keeps its answer in `slot`
    /// whether or not anyone still waits for it.
    fn start(
        &self,
        slot: Arc<Mutex<Slot>>,
        backend: &'static str,
        count: BoxFuture<'static, Result<StoreStats>>,
    ) -> Counting {
        let max_age = self.max_age;
        let after = Arc::clone(&slot);
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let answer = count.await;
            let mut state = lock(&slot);
            state.counting = None;
            let counted = counted(answer?, started, max_age);
            state.kept = Some(counted.clone());
            Ok(counted)
        });
        async move {
            task.await.unwrap_or_else(|error| {
                // The count panicked before it could clear its place: the
                // next caller counts again.
                lock(&after).counting = None;
                Err(Error::Backend {
                    backend,
                    message: format!("counting the store failed: {error}"),
                })
            })
        }
        .boxed()
        .shared()
    }

    /// The last answer kept for `prefix`, however old, without counting.
    pub(crate) fn last(&self, prefix: &str) -> Option<Counted> {
        let slot = Arc::clone(lock(&self.slots).get(prefix)?);
        lock(&slot).kept.clone()
    }
}

/// `stats`, counted since `started`, kept for `max_age` or [`COST_FACTOR`]
/// times as long as counting took, whichever is longer (nothing is kept
/// when `max_age` is zero).
fn counted(stats: StoreStats, started: Instant, max_age: Duration) -> Counted {
    let kept_for = if max_age.is_zero() {
        Duration::ZERO
    } else {
        max_age.max(started.elapsed().saturating_mul(COST_FACTOR))
    };
    Counted {
        stats,
        as_of: Utc::now(),
        kept_for,
        read_at: Instant::now(),
    }
}

/// Why counts are not there: counting takes longer than a caller waits,
/// and no earlier counts are kept.
#[derive(Debug, thiserror::Error)]
#[error("counting the records under {prefix:?} takes longer than {waited:?}; ask again later")]
struct StillCounting {
    waited: Duration,
    prefix: String,
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Counts that take `took` each, asked for with a wait of `wait`; the
    /// counts started are counted in `calls`.
    struct Counter {
        calls: Arc<AtomicUsize>,
        took: Duration,
        wait: Duration,
    }

    impl Counter {
        fn new(took: Duration, wait: Duration) -> Self {
            Self {
                calls: Arc::default(),
                took,
                wait,
            }
        }

        /// Asks `cache` for the counts under `prefix`; a count started now
        /// finds `total` records in flight.
        async fn ask(&self, cache: &StatsCache, prefix: &str, total: u64) -> Result<Counted> {
            let (calls, took) = (Arc::clone(&self.calls), self.took);
            let count = move || {
                async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(took).await;
                    let mut stats = StoreStats::default();
                    stats.states.processing = total;
                    Ok(stats)
                }
                .boxed()
            };
            cache.counts(prefix, self.wait, "memory", count).await
        }

        /// The records an answer found, and how many counts were started.
        fn seen(&self, answer: &Result<Counted>) -> (u64, usize) {
            let found = answer.as_ref().expect("counts").stats.states.processing;
            (found, self.calls.load(Ordering::SeqCst))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_count_goes_on_without_its_caller_and_is_kept_ten_times_as_long() {
        let cache = StatsCache::new(Duration::from_secs(1));
        let took = Duration::from_secs(30);
        let counter = Counter::new(took, Duration::from_secs(5));

        // The first caller gives up after its wait: no counts yet. A second
        // caller shares the count under way rather than start one.
        for total in [7, 8] {
            let early = counter.ask(&cache, "", total).await;
            assert!(
                matches!(&early, Err(error) if error.is_retryable()),
                "{early:?}"
            );
        }
        assert_eq!(counter.calls.load(Ordering::SeqCst), 1, "one count");

        // The count finishes on its own and is kept, ten times as long as
        // it took.
        tokio::time::sleep(took).await;
        let kept = counter.ask(&cache, "", 9).await;
        assert_eq!(counter.seen(&kept), (7, 1));
        let kept_for = kept.expect("counts").kept_for;
        assert!(kept_for >= took * COST_FACTOR, "kept for {kept_for:?}");

        // Long past `max_age`, yet within that: no new count.
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(counter.seen(&counter.ask(&cache, "", 9).await), (7, 1));

        // Once that has passed, a new count starts; until it ends, callers
        // get the last answer, however old.
        tokio::time::sleep(took * COST_FACTOR).await;
        assert_eq!(counter.seen(&counter.ask(&cache, "", 9).await), (7, 2));
        tokio::time::sleep(took).await;
        assert_eq!(counter.seen(&counter.ask(&cache, "", 10).await), (9, 2));
        assert_eq!(cache.last("").map(|c| c.stats.states.processing), Some(9));
    }

    #[tokio::test(start_paused = true)]
    async fn a_quick_count_is_kept_for_the_maximum_age() {
        let cache = StatsCache::new(Duration::from_secs(5));
        let counter = Counter::new(Duration::from_millis(10), Duration::from_secs(1));
        for total in [1, 2] {
            let counted = counter.ask(&cache, "a/", total).await;
            assert_eq!(counter.seen(&counted), (1, 1), "kept");
            assert_eq!(counted.expect("counts").kept_for, Duration::from_secs(5));
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(counter.seen(&counter.ask(&cache, "a/", 3).await), (3, 2));
        // Another prefix is counted on its own.
        assert_eq!(counter.seen(&counter.ask(&cache, "b/", 4).await), (4, 3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_count_keeps_nothing_and_a_zero_age_counts_every_time() {
        let cache = StatsCache::new(Duration::from_secs(5));
        let failing =
            || async { Err(Error::unavailable("memory", std::io::Error::other("down"))) }.boxed();
        let failed = cache
            .counts("", Duration::from_secs(1), "memory", failing)
            .await;
        assert!(failed.is_err(), "{failed:?}");
        assert!(cache.last("").is_none(), "nothing kept");
        // The next caller counts again.
        let counter = Counter::new(Duration::from_millis(10), Duration::from_secs(1));
        assert_eq!(counter.seen(&counter.ask(&cache, "", 5).await), (5, 1));

        let cache = StatsCache::new(Duration::ZERO);
        let counter = Counter::new(Duration::from_millis(10), Duration::from_secs(1));
        for total in [1, 2] {
            assert_eq!(
                counter.seen(&counter.ask(&cache, "", total).await),
                (total, total as usize)
            );
        }
        // Counting on every request, a caller still waits no longer than
        // its bound.
        let slow = Counter::new(Duration::from_secs(10), Duration::from_secs(1));
        let late = slow.ask(&cache, "", 3).await;
        assert!(
            matches!(&late, Err(error) if error.is_retryable()),
            "{late:?}"
        );
    }
}
