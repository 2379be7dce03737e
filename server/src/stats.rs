//! The counts behind `GET /v1/stats` and the store gauges of `/metrics`,
//! kept per key prefix for a bounded time.
//!
//! Counting costs the store a pass over the records it counts (a scan in
//! Redis, an index walk in Postgres), while a dashboard asks every second or
//! so and several may ask at once. Each prefix's answer is therefore kept for
//! `max_age`, and a read is single-flight: callers that find the answer too
//! old queue on the prefix's lock, the first one reads, and the others take
//! its fresh answer. The store is thus counted at most once per `max_age` per
//! prefix, however many callers poll. Prefixes are the namespaces of the
//! configured tokens plus `""`, so the map is bounded by the configuration.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::Utc;
use onceflight_core::{RequestStore, Result, StoreStats, Timestamp};

/// Counts as one read of the store saw them, and when.
#[derive(Clone, Debug)]
pub(crate) struct Counted {
    /// The counts.
    pub(crate) stats: StoreStats,
    /// When they were read (the server's clock, for display).
    pub(crate) as_of: Timestamp,
    /// When they were read, for judging their age.
    read_at: Instant,
}

/// Counts per key prefix, each kept for `max_age` and read single-flight.
#[derive(Debug)]
pub(crate) struct StatsCache {
    max_age: Duration,
    entries: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Counted>>>>>,
}

impl StatsCache {
    /// A cache keeping each answer for `max_age` (zero: read every time).
    pub(crate) fn new(max_age: Duration) -> Self {
        Self {
            max_age,
            entries: Mutex::default(),
        }
    }

    /// The map of prefixes. A panic while it was held cannot have left it
    /// half-changed (each use is one map call), so a poisoned lock is taken
    /// as it is.
    fn entries(&self) -> MutexGuard<'_, HashMap<String, Arc<tokio::sync::Mutex<Option<Counted>>>>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How long an answer is kept.
    pub(crate) fn max_age(&self) -> Duration {
        self.max_age
    }

    /// The counts under `prefix`: the kept answer while younger than the
    /// maximum age, else a fresh read of `store` (shared with every caller
    /// that waits for it). A failed read is returned and nothing is kept,
    /// so the next caller tries again.
    pub(crate) async fn counts(&self, store: &dyn RequestStore, prefix: &str) -> Result<Counted> {
        if self.max_age.is_zero() {
            return read(store, prefix).await;
        }
        let slot = Arc::clone(self.entries().entry(prefix.to_owned()).or_default());
        let mut kept = slot.lock().await;
        if let Some(counted) = kept.as_ref()
            && counted.read_at.elapsed() < self.max_age
        {
            return Ok(counted.clone());
        }
        let counted = read(store, prefix).await?;
        *kept = Some(counted.clone());
        Ok(counted)
    }

    /// The last answer kept for `prefix`, however old, without reading.
    pub(crate) fn last(&self, prefix: &str) -> Option<Counted> {
        let slot = Arc::clone(self.entries().get(prefix)?);
        // A read in progress holds the lock; its caller will have the
        // fresh answer, and this one takes none rather than wait.
        let kept = slot.try_lock().ok()?;
        kept.clone()
    }
}

async fn read(store: &dyn RequestStore, prefix: &str) -> Result<Counted> {
    let stats = store.counts(prefix).await?;
    Ok(Counted {
        stats,
        as_of: Utc::now(),
        read_at: Instant::now(),
    })
}
