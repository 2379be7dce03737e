//! [`CachedStore`]: completed results kept in process, in front of any
//! store with a push channel, so that a hit costs no store round trip.
//!
//! Only completed records are kept: they change only by being deleted or by
//! reaching the end of their retention. Leases, work in flight and failures
//! always go to the store. A kept result is served only while
//!
//! - its retention, as the store reported it when it answered, has not run
//!   out (counted from before the call, so never past the store's own end);
//! - the store's [`ChangeFeed`] confirmed its channel at most
//!   [`HitCacheConfig::max_stale`] ago: a deletion on any server reaches
//!   this cache within that bound, and while the channel is down nothing is
//!   served;
//! - the claim asks for the same kind and a fingerprint that does not
//!   contradict the record's (anything else goes to the store, which
//!   decides).
//!
//! A deletion notified while a result was being fetched keeps that result
//! out of the cache, and a broken channel empties it whole.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::time::Instant;

use crate::claim::{Claim, Completed, Record, Renewal};
use crate::error::{Error, Result};
use crate::feed::{ChangeFeed, FeedListener};
use crate::listing::{ListPage, ListQuery, StoreStats};
use crate::store::RequestStore;
use crate::types::{ClaimOptions, Fingerprint, JobError, Kind, RequestKey, Token};

/// Shards of the cache's map, so that hits on different keys rarely
/// contend.
const SHARDS: usize = 16;

/// What [`CachedStore`] keeps and how stale it may be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct HitCacheConfig {
    /// The longest a deletion on another server can go unseen: a result is
    /// served only while the store's push channel was confirmed at most
    /// this long ago. The store probes its channel a few times within it.
    pub max_stale: Duration,
    /// Most results kept; past it, the one whose retention ends first goes.
    pub max_entries: usize,
    /// Larger results are not kept.
    pub max_result_bytes: usize,
}

impl HitCacheConfig {
    /// Default staleness bound: one second.
    pub const DEFAULT_MAX_STALE: Duration = Duration::from_secs(1);
    /// Default number of results kept.
    pub const DEFAULT_MAX_ENTRIES: usize = 10_000;
    /// Default largest result kept: 1 MiB.
    pub const DEFAULT_MAX_RESULT_BYTES: usize = 1 << 20;

    /// Sets [`HitCacheConfig::max_stale`].
    pub fn with_max_stale(mut self, max_stale: Duration) -> Self {
        self.max_stale = max_stale;
        self
    }

    /// Sets [`HitCacheConfig::max_entries`].
    pub fn with_max_entries(mut self, max_entries: usize) -> Self {
        self.max_entries = max_entries;
        self
    }

    /// Sets [`HitCacheConfig::max_result_bytes`].
    pub fn with_max_result_bytes(mut self, max_result_bytes: usize) -> Self {
        self.max_result_bytes = max_result_bytes;
        self
    }
}

impl Default for HitCacheConfig {
    fn default() -> Self {
        Self {
            max_stale: Self::DEFAULT_MAX_STALE,
            max_entries: Self::DEFAULT_MAX_ENTRIES,
            max_result_bytes: Self::DEFAULT_MAX_RESULT_BYTES,
        }
    }
}

/// Counters of a [`CachedStore`], for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HitCacheStats {
    /// Claims answered from the cache.
    pub hits: u64,
    /// Claims that went to the store.
    pub misses: u64,
    /// Results forgotten because the store said they changed, or because
    /// its channel broke.
    pub invalidations: u64,
    /// Results kept now.
    pub entries: u64,
}

/// A [`RequestStore`] that answers repeated claims of completed records from
/// memory (see the module docs), and passes everything else to the store it
/// wraps.
pub struct CachedStore {
    inner: Arc<dyn RequestStore>,
    feed: ChangeFeed,
    cache: Arc<Cache>,
}

impl CachedStore {
    /// Wraps `inner`. Fails with `InvalidInput` when `inner` has no push
    /// channel ([`RequestStore::change_feed`]), since its results could then
    /// not be kept safely, or when `config.max_stale` is zero.
    pub fn new(inner: Arc<dyn RequestStore>, config: HitCacheConfig) -> Result<Self> {
        let Some(feed) = inner.change_feed() else {
            return Err(Error::InvalidInput {
                field: "hit_cache",
                reason: format!(
                    "the {} store pushes no changes, so its results cannot be cached",
                    inner.backend()
                ),
            });
        };
        if config.max_stale.is_zero() {
            return Err(Error::InvalidInput {
                field: "hit_cache_max_stale",
                reason: "must be above zero".to_owned(),
            });
        }
        let cache = Arc::new(Cache::new(config));
        // Probing a few times within the bound keeps the cache serving
        // while the channel is healthy.
        let listener: Weak<dyn FeedListener> = Arc::downgrade(&cache) as Weak<dyn FeedListener>;
        feed.listen(listener, config.max_stale / 3);
        Ok(Self { inner, feed, cache })
    }

    /// The counters so far.
    pub fn stats(&self) -> HitCacheStats {
        self.cache.stats()
    }

    /// The configuration.
    pub fn config(&self) -> HitCacheConfig {
        self.cache.config
    }
}

impl fmt::Debug for CachedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedStore")
            .field("inner", &self.inner)
            .field("config", &self.cache.config)
            .field("stats", &self.stats())
            .finish()
    }
}

#[async_trait]
impl RequestStore for CachedStore {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    async fn claim_or_get(&self, key: &RequestKey, options: &ClaimOptions) -> Result<Claim> {
        let asked_at = Instant::now();
        if let Some(hit) = self.cache.lookup(key, options, &self.feed, asked_at) {
            return Ok(Claim::Completed(hit));
        }
        let generation = self.cache.generation(key);
        let claim = self.inner.claim_or_get(key, options).await?;
        if let Claim::Completed(completed) = &claim {
            self.cache
                .fill(completed, options, generation, &self.feed, asked_at);
        }
        Ok(claim)
    }

    async fn renew(
        &self,
        key: &RequestKey,
        token: Token,
        ttl: Option<Duration>,
    ) -> Result<Renewal> {
        self.inner.renew(key, token, ttl).await
    }

    async fn complete(&self, key: &RequestKey, token: Token, result: Bytes) -> Result<Record> {
        self.inner.complete(key, token, result).await
    }

    async fn fail(&self, key: &RequestKey, token: Token, error: &JobError) -> Result<Record> {
        self.inner.fail(key, token, error).await
    }

    async fn release(&self, key: &RequestKey, token: Token) -> Result<Record> {
        self.inner.release(key, token).await
    }

    async fn get(&self, key: &RequestKey) -> Result<Option<Record>> {
        self.inner.get(key).await
    }

    async fn wait(&self, key: &RequestKey, timeout: Duration) -> Result<Option<Record>> {
        self.inner.wait(key, timeout).await
    }

    async fn delete(&self, key: &RequestKey) -> Result<bool> {
        // Forgotten here at once, and again after: a claim that read the
        // record before the delete must not put it back.
        self.cache.forget(key.as_str());
        let deleted = self.inner.delete(key).await;
        self.cache.forget(key.as_str());
        deleted
    }

    async fn sweep(&self) -> Result<u64> {
        self.inner.sweep().await
    }

    async fn list(&self, query: &ListQuery) -> Result<ListPage> {
        self.inner.list(query).await
    }

    async fn counts(&self, prefix: &str) -> Result<StoreStats> {
        self.inner.counts(prefix).await
    }

    fn change_feed(&self) -> Option<ChangeFeed> {
        Some(self.feed.clone())
    }
}

/// A kept result.
struct Entry {
    completed: Completed,
    kind: Kind,
    fingerprint: Option<Fingerprint>,
    /// Local instant at which the store's retention ends, at the latest.
    ends: Instant,
}

#[derive(Default)]
struct Shard {
    entries: HashMap<String, Entry>,
    /// Bumped by every invalidation in this shard, so that a result fetched
    /// across one is not kept.
    generation: u64,
}

struct Cache {
    config: HitCacheConfig,
    hasher: RandomState,
    shards: Vec<Mutex<Shard>>,
    hits: AtomicU64,
    misses: AtomicU64,
    invalidations: AtomicU64,
}

impl Cache {
    fn new(config: HitCacheConfig) -> Self {
        Self {
            config,
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            invalidations: AtomicU64::new(0),
        }
    }

    fn shard(&self, key: &str) -> MutexGuard<'_, Shard> {
        // The modulo keeps the index below SHARDS, so the cast cannot
        // truncate anything that matters.
        let index = (self.hasher.hash_one(key) % SHARDS as u64) as usize;
        self.shards[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn lookup(
        &self,
        key: &RequestKey,
        options: &ClaimOptions,
        feed: &ChangeFeed,
        now: Instant,
    ) -> Option<Completed> {
        let hit = (|| {
            if !feed.fresh(now, self.config.max_stale) {
                return None;
            }
            let mut shard = self.shard(key.as_str());
            let entry = shard.entries.get(key.as_str())?;
            if entry.ends <= now {
                shard.entries.remove(key.as_str());
                return None;
            }
            if !matches_claim(entry, options) {
                // The store answers a mismatch with its own error.
                return None;
            }
            let mut completed = entry.completed.clone();
            completed.retention_remaining = Some(entry.ends - now);
            Some(completed)
        })();
        let counter = if hit.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        hit
    }

    fn generation(&self, key: &RequestKey) -> u64 {
        self.shard(key.as_str()).generation
    }

    /// Keeps `completed`, fetched for `options` by a call that began at
    /// `asked_at` when the key's shard was at `generation`, unless
    /// something was invalidated since, the channel is not confirmed, or
    /// the result is too large or without a known retention.
    fn fill(
        &self,
        completed: &Completed,
        options: &ClaimOptions,
        generation: u64,
        feed: &ChangeFeed,
        asked_at: Instant,
    ) {
        let Some(retention) = completed.retention_remaining else {
            return;
        };
        if completed.result.len() > self.config.max_result_bytes || self.config.max_entries == 0 {
            return;
        }
        let ends = asked_at + retention;
        let now = Instant::now();
        if ends <= now || !feed.fresh(now, self.config.max_stale) {
            return;
        }
        let key = completed.key.as_str();
        let mut shard = self.shard(key);
        if shard.generation != generation {
            return;
        }
        let per_shard = self.config.max_entries.div_ceil(SHARDS);
        if shard.entries.len() >= per_shard && !shard.entries.contains_key(key) {
            shard.entries.retain(|_, entry| entry.ends > now);
            if shard.entries.len() >= per_shard {
                let first_to_end = shard
                    .entries
                    .iter()
                    .min_by_key(|(_, entry)| entry.ends)
                    .map(|(key, _)| key.clone());
                if let Some(first_to_end) = first_to_end {
                    shard.entries.remove(&first_to_end);
                }
            }
        }
        shard.entries.insert(
            key.to_owned(),
            Entry {
                completed: completed.clone(),
                kind: options.kind().clone(),
                fingerprint: options.fingerprint().cloned(),
                ends,
            },
        );
    }

    /// Forgets `key`'s result, if kept, and keeps any fetch in flight from
    /// putting it back.
    fn forget(&self, key: &str) -> bool {
        let mut shard = self.shard(key);
        shard.generation += 1;
        shard.entries.remove(key).is_some()
    }

    fn stats(&self) -> HitCacheStats {
        let entries = self
            .shards
            .iter()
            .map(|shard| {
                shard
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .entries
                    .len() as u64
            })
            .sum();
        HitCacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            invalidations: self.invalidations.load(Ordering::Relaxed),
            entries,
        }
    }
}

impl FeedListener for Cache {
    fn changed(&self, key: &str) {
        if self.forget(key) {
            self.invalidations.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn reset(&self) {
        for shard in &self.shards {
            let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            shard.generation += 1;
            let forgotten = shard.entries.len() as u64;
            shard.entries.clear();
            self.invalidations.fetch_add(forgotten, Ordering::Relaxed);
        }
    }
}

/// Whether the store would answer `options` with the kept record as it
/// answered the claim that filled the entry. The kind is the record's (a
/// different one was a mismatch). The record's fingerprint is known only to
/// be absent or the filling claim's, so a claim with a fingerprint matches
/// only that one; a claim without one never mismatches.
fn matches_claim(entry: &Entry, options: &ClaimOptions) -> bool {
    entry.kind == *options.kind()
        && match options.fingerprint() {
            None => true,
            Some(asked) => entry.fingerprint.as_ref() == Some(asked),
        }
}
