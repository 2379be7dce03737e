//! The result cache's own rules, on the memory store behind a push channel
//! that each test drives by hand (on tokio's paused clock): what it serves,
//! when it stops serving, and what it forgets.
//!
//! The memory store's own channel is in process and never late, so these
//! tests put it behind [`Pushed`], a store that forwards every call to a
//! memory store but offers a channel of its own, which the test confirms,
//! breaks and feeds as a remote store's listener would.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use onceflight_core::{
    Bytes, CachedStore, ChangeFeed, Claim, ClaimOptions, Error, Fingerprint, HitCacheConfig,
    JobError, Kind, ListPage, ListQuery, Record, Renewal, RequestKey, RequestStore, Result,
    StoreStats, Token,
};
use onceflight_store_memory::{MemoryConfig, MemoryStore};
use parking_lot::Mutex;
use tokio::time::Instant;

const MAX_STALE: Duration = Duration::from_millis(500);

/// A memory store with a push channel the test drives.
#[derive(Debug)]
struct Pushed {
    inner: MemoryStore,
    feed: Option<ChangeFeed>,
    /// Keys whose change the channel reports while a claim of them is on
    /// its way back: a deletion racing a fetch.
    notify_during_claim: Mutex<Vec<String>>,
}

impl Pushed {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            inner: MemoryStore::new(MemoryConfig::default().with_retention(RETENTION)),
            feed: Some(ChangeFeed::new()),
            notify_during_claim: Mutex::default(),
        })
    }

    fn feed(&self) -> &ChangeFeed {
        self.feed.as_ref().expect("this store has a channel")
    }
}

const RETENTION: Duration = Duration::from_secs(60);

#[async_trait]
impl RequestStore for Pushed {
    fn backend(&self) -> &'static str {
        "pushed"
    }
    async fn claim_or_get(&self, key: &RequestKey, options: &ClaimOptions) -> Result<Claim> {
        let claim = self.inner.claim_or_get(key, options).await;
        if self
            .notify_during_claim
            .lock()
            .contains(&key.as_str().to_owned())
        {
            self.feed().changed(key.as_str());
        }
        claim
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
        self.inner.delete(key).await
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
        self.feed.clone()
    }
}

fn key(name: &str) -> RequestKey {
    RequestKey::parse(name).expect("a valid key")
}

fn options() -> ClaimOptions {
    ClaimOptions::new(Kind::parse("image").expect("a valid kind"))
}

fn cache(store: &Arc<Pushed>) -> CachedStore {
    CachedStore::new(
        Arc::clone(store) as Arc<dyn RequestStore>,
        HitCacheConfig::default().with_max_stale(MAX_STALE),
    )
    .expect("a store with a channel")
}

/// Completes `key` in the store with `result`, through the cache.
async fn complete(cache: &CachedStore, key: &RequestKey, result: &'static str) -> Token {
    let Claim::Acquired(lease) = cache.claim_or_get(key, &options()).await.expect("claim") else {
        panic!("a fresh key is acquired");
    };
    cache
        .complete(key, lease.token, Bytes::from_static(result.as_bytes()))
        .await
        .expect("complete");
    lease.token
}

/// Claims `key` and returns the result if the answer is `Completed`.
async fn result_of(cache: &CachedStore, key: &RequestKey) -> Option<Bytes> {
    match cache.claim_or_get(key, &options()).await.expect("claim") {
        Claim::Completed(done) => Some(done.result),
        _ => None,
    }
}

/// The store's record of `key` vanishes without the channel saying so, as
/// when a deletion's notice is late: only the cache can still answer.
async fn delete_unseen(store: &Pushed, key: &RequestKey) {
    assert!(
        store.inner.delete(key).await.expect("delete"),
        "the record was there"
    );
}

/// A repeated claim of a completed key is answered from memory: the same
/// token and result, while the store no longer has the record.
#[tokio::test(start_paused = true)]
async fn completed_results_are_served_from_memory() {
    let store = Pushed::new();
    let cache = cache(&store);
    store.feed().confirmed(Instant::now());
    let key = key("served");
    let token = complete(&cache, &key, "png").await;

    let Claim::Completed(first) = cache.claim_or_get(&key, &options()).await.expect("claim") else {
        panic!("completed");
    };
    assert_eq!(first.token, token, "the lease that completed it");
    assert!(
        first.retention_remaining.is_some(),
        "the store says how long it keeps it"
    );
    delete_unseen(&store, &key).await;
    assert_eq!(
        result_of(&cache, &key).await.as_deref(),
        Some(&b"png"[..]),
        "answered from memory"
    );
    let stats = cache.stats();
    assert_eq!(
        (stats.hits, stats.entries),
        (1, 1),
        "one hit, one entry: {stats:?}"
    );
}

/// Until the channel is confirmed, nothing is served from memory.
#[tokio::test(start_paused = true)]
async fn nothing_is_served_before_the_channel_is_confirmed() {
    let store = Pushed::new();
    let cache = cache(&store);
    let key = key("unconfirmed");
    complete(&cache, &key, "a").await;
    assert!(result_of(&cache, &key).await.is_some(), "the store answers");
    delete_unseen(&store, &key).await;
    assert_eq!(
        result_of(&cache, &key).await,
        None,
        "the store answered again"
    );
    assert_eq!(cache.stats().hits, 0, "no hit: {:?}", cache.stats());
}

/// A result is served only while the last confirmation is at most the
/// staleness bound old; a new confirmation serves it again.
#[tokio::test(start_paused = true)]
async fn a_silent_channel_stops_hits_after_the_staleness_bound() {
    let store = Pushed::new();
    let cache = cache(&store);
    store.feed().confirmed(Instant::now());
    let key = key("stale");
    complete(&cache, &key, "a").await;
    assert!(result_of(&cache, &key).await.is_some(), "filled");
    assert_eq!(cache.stats().entries, 1, "kept");

    tokio::time::advance(MAX_STALE + Duration::from_millis(1)).await;
    let before = cache.stats().hits;
    assert!(
        result_of(&cache, &key).await.is_some(),
        "the store still has it"
    );
    assert_eq!(
        cache.stats().hits,
        before,
        "past the bound, the store answered"
    );

    store.feed().confirmed(Instant::now());
    assert!(result_of(&cache, &key).await.is_some(), "served");
    assert_eq!(cache.stats().hits, before + 1, "confirmed again: a hit");
}

/// A change the channel reports forgets the result: the next claim goes to
/// the store.
#[tokio::test(start_paused = true)]
async fn a_reported_change_forgets_the_result() {
    let store = Pushed::new();
    let cache = cache(&store);
    store.feed().confirmed(Instant::now());
    let key = key("deleted");
    complete(&cache, &key, "a").await;
    assert!(result_of(&cache, &key).await.is_some(), "filled");

    delete_unseen(&store, &key).await;
    store.feed().changed(key.as_str());
    assert!(
        matches!(
            cache.claim_or_get(&key, &options()).await,
            Ok(Claim::Acquired(_))
        ),
        "the store's answer after the deletion"
    );
    let stats = cache.stats();
    assert_eq!((stats.invalidations, stats.entries), (1, 0), "{stats:?}");
}

/// A broken channel empties the cache whole, and nothing is served until it
/// is confirmed again.
#[tokio::test(start_paused = true)]
async fn a_lost_channel_empties_the_cache() {
    let store = Pushed::new();
    let cache = cache(&store);
    store.feed().confirmed(Instant::now());
    let keys = [key("lost-1"), key("lost-2")];
    for key in &keys {
        complete(&cache, key, "a").await;
        assert!(result_of(&cache, key).await.is_some(), "filled");
    }
    assert_eq!(cache.stats().entries, 2, "both kept");

    store.feed().lost();
    let stats = cache.stats();
    assert_eq!((stats.entries, stats.invalidations), (0, 2), "{stats:?}");
    assert!(
        result_of(&cache, &keys[0]).await.is_some(),
        "from the store"
    );
    assert_eq!(
        cache.stats().entries,
        0,
        "not kept while the channel is down"
    );
}

/// A change reported while a result is on its way from the store keeps
/// that result out of the cache.
#[tokio::test(start_paused = true)]
async fn a_change_during_the_fetch_keeps_the_result_out() {
    let store = Pushed::new();
    let cache = cache(&store);
    store.feed().confirmed(Instant::now());
    let key = key("raced");
    complete(&cache, &key, "a").await;
    store
        .notify_during_claim
        .lock()
        .push(key.as_str().to_owned());
    assert!(
        result_of(&cache, &key).await.is_some(),
        "the store's answer"
    );
    assert_eq!(cache.stats().entries, 0, "not kept: {:?}", cache.stats());
}

/// A result is never served past the retention the store reported.
#[tokio::test(start_paused = true)]
async fn retention_ends_the_entry() {
    let store = Pushed::new();
    let cache = cache(&store);
    let key = key("retained");
    store.feed().confirmed(Instant::now());
    complete(&cache, &key, "a").await;
    assert!(result_of(&cache, &key).await.is_some(), "filled");

    tokio::time::advance(RETENTION + Duration::from_millis(1)).await;
    store.feed().confirmed(Instant::now());
    assert!(
        matches!(
            cache.claim_or_get(&key, &options()).await,
            Ok(Claim::Acquired(_))
        ),
        "past retention the record is gone, and so is the entry"
    );
}

/// A claim the store might refuse goes to the store: another kind, or a
/// fingerprint the entry cannot vouch for.
#[tokio::test(start_paused = true)]
async fn claims_that_could_mismatch_go_to_the_store() {
    let store = Pushed::new();
    let cache = cache(&store);
    store.feed().confirmed(Instant::now());
    let key = key("fingerprinted");
    let a = Fingerprint::parse("a").expect("fingerprint");
    let b = Fingerprint::parse("b").expect("fingerprint");
    let with_a = options().with_fingerprint(a.clone());
    let Claim::Acquired(lease) = cache.claim_or_get(&key, &with_a).await.expect("claim") else {
        panic!("acquired");
    };
    cache
        .complete(&key, lease.token, Bytes::from_static(b"x"))
        .await
        .expect("complete");
    assert!(
        matches!(
            cache.claim_or_get(&key, &with_a).await,
            Ok(Claim::Completed(_))
        ),
        "filled"
    );

    let other_kind = ClaimOptions::new(Kind::parse("video").expect("kind"));
    assert!(
        matches!(
            cache.claim_or_get(&key, &other_kind).await,
            Err(Error::FingerprintMismatch { .. })
        ),
        "another kind: the store's refusal"
    );
    assert!(
        matches!(
            cache
                .claim_or_get(&key, &options().with_fingerprint(b))
                .await,
            Err(Error::FingerprintMismatch { .. })
        ),
        "another fingerprint: the store's refusal"
    );
    let hits = cache.stats().hits;
    assert!(
        matches!(
            cache.claim_or_get(&key, &options()).await,
            Ok(Claim::Completed(_))
        ),
        "no fingerprint never mismatches"
    );
    assert!(
        matches!(
            cache.claim_or_get(&key, &with_a).await,
            Ok(Claim::Completed(_))
        ),
        "the same fingerprint"
    );
    assert_eq!(cache.stats().hits, hits + 2, "both from memory");
}

/// Work in flight and failures always go to the store.
#[tokio::test(start_paused = true)]
async fn only_completed_records_are_kept() {
    let store = Pushed::new();
    let cache = cache(&store);
    store.feed().confirmed(Instant::now());
    let busy = key("in-flight");
    let Claim::Acquired(_) = cache.claim_or_get(&busy, &options()).await.expect("claim") else {
        panic!("acquired");
    };
    let failed = key("failed");
    let Claim::Acquired(lease) = cache
        .claim_or_get(&failed, &options())
        .await
        .expect("claim")
    else {
        panic!("acquired");
    };
    cache
        .fail(&failed, lease.token, &JobError::permanent("no"))
        .await
        .expect("fail");
    for _ in 0..3 {
        assert!(
            matches!(
                cache.claim_or_get(&busy, &options()).await,
                Ok(Claim::InFlight(_))
            ),
            "in flight"
        );
        assert!(
            matches!(
                cache.claim_or_get(&failed, &options()).await,
                Ok(Claim::Failed(_))
            ),
            "failed"
        );
    }
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.entries), (0, 0), "{stats:?}");
}

/// A delete through the cache forgets the result at once.
#[tokio::test(start_paused = true)]
async fn a_delete_through_the_cache_forgets_at_once() {
    let store = Pushed::new();
    let cache = cache(&store);
    store.feed().confirmed(Instant::now());
    let key = key("deleted-here");
    complete(&cache, &key, "a").await;
    assert!(result_of(&cache, &key).await.is_some(), "filled");
    assert!(cache.delete(&key).await.expect("delete"), "deleted");
    assert!(
        matches!(
            cache.claim_or_get(&key, &options()).await,
            Ok(Claim::Acquired(_))
        ),
        "acquired afresh"
    );
}

/// The cache keeps at most its configured number of results.
#[tokio::test(start_paused = true)]
async fn the_number_of_results_is_bounded() {
    let store = Pushed::new();
    let cache = CachedStore::new(
        Arc::clone(&store) as Arc<dyn RequestStore>,
        HitCacheConfig::default()
            .with_max_stale(MAX_STALE)
            .with_max_entries(16),
    )
    .expect("cache");
    store.feed().confirmed(Instant::now());
    for i in 0..100 {
        let key = key(&format!("bounded-{i}"));
        complete(&cache, &key, "a").await;
        assert!(result_of(&cache, &key).await.is_some(), "completed");
    }
    let entries = cache.stats().entries;
    assert!(
        (1..=16).contains(&entries),
        "at most 16 kept, got {entries}"
    );
}

/// A store without a push channel cannot have its results cached, and a
/// zero staleness bound is refused.
#[tokio::test]
async fn a_cache_needs_a_channel_and_a_bound() {
    let silent = Arc::new(Pushed {
        inner: MemoryStore::default(),
        feed: None,
        notify_during_claim: Mutex::default(),
    });
    assert!(
        matches!(
            CachedStore::new(silent, HitCacheConfig::default()),
            Err(Error::InvalidInput { .. })
        ),
        "no channel"
    );
    assert!(
        matches!(
            CachedStore::new(
                Pushed::new(),
                HitCacheConfig::default().with_max_stale(Duration::ZERO)
            ),
            Err(Error::InvalidInput { .. })
        ),
        "a zero bound"
    );
}

/// The memory store's own channel is in process: a delete through the store
/// itself reaches a cache in front of it at once.
#[tokio::test(start_paused = true)]
async fn the_memory_stores_own_deletes_reach_the_cache() {
    let store = Arc::new(MemoryStore::default());
    let cache = CachedStore::new(
        Arc::clone(&store) as Arc<dyn RequestStore>,
        HitCacheConfig::default(),
    )
    .expect("the memory store has a channel");
    let key = key("memory");
    let Claim::Acquired(lease) = cache.claim_or_get(&key, &options()).await.expect("claim") else {
        panic!("acquired");
    };
    cache
        .complete(&key, lease.token, Bytes::from_static(b"a"))
        .await
        .expect("complete");
    assert!(result_of(&cache, &key).await.is_some(), "filled");
    assert!(result_of(&cache, &key).await.is_some(), "hit");
    assert_eq!(cache.stats().hits, 1, "{:?}", cache.stats());
    assert!(
        store.delete(&key).await.expect("delete"),
        "deleted behind the cache"
    );
    assert!(
        matches!(
            cache.claim_or_get(&key, &options()).await,
            Ok(Claim::Acquired(_))
        ),
        "the cache heard of it"
    );
}
