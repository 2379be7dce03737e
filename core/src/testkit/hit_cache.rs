//! Any backend's setup with a [`CachedStore`] in front of each store it
//! builds, so that the conformance suite and the model check hold the
//! cache to the same contract as the store; and the checks of a cache on
//! one server against deletions made on another.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use tokio::time::Instant;

use super::{Expiry, RawStorage, Setup, SuiteConfig};
use crate::{CachedStore, Claim, ClaimOptions, HitCacheConfig, Kind, RequestKey, RequestStore};

/// `setup`'s stores, each behind a [`CachedStore`] with `config`.
///
/// The raw look at storage asks the wrapped store of the cache it is given.
pub struct ThroughHitCache<S: Setup> {
    setup: S,
    config: HitCacheConfig,
    /// Every cache built, with the store behind it.
    built: Arc<Mutex<Vec<Built<S::Store>>>>,
}

struct Built<T> {
    cache: Arc<CachedStore>,
    store: Arc<T>,
}

impl<S: Setup> ThroughHitCache<S> {
    /// Wraps `setup` with caches configured as `config`.
    pub fn new(setup: S, config: HitCacheConfig) -> Self {
        Self {
            setup,
            config,
            built: Arc::default(),
        }
    }
}

impl<S: Setup> Setup for ThroughHitCache<S> {
    type Store = Arc<CachedStore>;

    fn store(&self, suite: SuiteConfig) -> BoxFuture<'static, Self::Store> {
        let store = self.setup.store(suite);
        let config = self.config;
        let built = Arc::clone(&self.built);
        Box::pin(async move {
            let store = Arc::new(store.await);
            let cache = Arc::new(
                CachedStore::new(Arc::clone(&store) as Arc<dyn RequestStore>, config)
                    .expect("a store with a push channel and a valid cache configuration"),
            );
            built
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(Built {
                    cache: Arc::clone(&cache),
                    store,
                });
            cache
        })
    }
}

impl<S: RawStorage> RawStorage for ThroughHitCache<S> {
    fn expiry(&self) -> Expiry {
        self.setup.expiry()
    }

    async fn raw_record_exists(&self, cache: &Arc<CachedStore>, key: &RequestKey) -> bool {
        let store = self
            .built
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|built| Arc::ptr_eq(&built.cache, cache))
            .map(|built| Arc::clone(&built.store))
            .expect("a cache this setup built");
        self.setup.raw_record_exists(&*store, key).await
    }
}

/// How a [`CachedStore`] on one server saw a deletion made on another.
#[derive(Clone, Copy, Debug)]
pub struct Invalidation {
    /// From the moment the delete returned to the first claim the cache
    /// sent to the store: how stale the cache was, at most.
    pub seen_after: Duration,
}

/// Two servers: `a` and `b` are two stores over the same storage (as two
/// servers' stores are), `b` with a [`CachedStore`] of staleness bound
/// `max_stale` in front. A result completed through `a` and served from
/// `b`'s cache is deleted through `a`; `b` must never serve it once
/// `max_stale` has passed since the delete returned (it should stop much
/// sooner: when the push channel delivers the deletion).
///
/// # Panics
///
/// When the cache serves the deleted result past the bound, never starts
/// serving from memory, or a store call fails.
pub async fn check_delete_reaches_other_cache(
    a: Arc<dyn RequestStore>,
    b: Arc<dyn RequestStore>,
    max_stale: Duration,
) -> Invalidation {
    let cache = CachedStore::new(b, HitCacheConfig::default().with_max_stale(max_stale))
        .expect("a store with a push channel");
    let key = cross_server_key("deleted-elsewhere");
    let options = ClaimOptions::new(Kind::parse("image").expect("a valid kind"));
    complete_through(&*a, &key, &options, "first").await;
    served_from_memory(&cache, &key, &options).await;
    a.delete(&key)
        .await
        .expect("delete through the other server");
    let deleted = Instant::now();
    loop {
        let claim = cache
            .claim_or_get(&key, &options)
            .await
            .expect("claim after the delete");
        let elapsed = deleted.elapsed();
        match claim {
            Claim::Completed(stale) => assert!(
                elapsed <= max_stale,
                "a result deleted {elapsed:?} ago on another server was still served \
                 ({:?}), past the staleness bound of {max_stale:?}",
                stale.result
            ),
            _ => {
                return Invalidation {
                    seen_after: elapsed,
                };
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A push channel that breaks silently: `b`'s cache (bound `max_stale`)
/// serves a result completed through `a`; then `cut` silences `b`'s push
/// channel (no error, nothing delivered) and the result is deleted through
/// `a`. Once `max_stale` has passed, `b` must answer from the store, not
/// from memory — nor serve any other result from memory while the channel
/// stays silent. After `heal`, the cache serves again once the store has
/// replaced or confirmed its channel.
///
/// # Panics
///
/// When a stale result is served past the bound, the cache serves while its
/// channel is silent, never serves again after `heal`, or a store call
/// fails.
pub async fn check_cut_channel(
    a: Arc<dyn RequestStore>,
    b: Arc<dyn RequestStore>,
    max_stale: Duration,
    cut: impl FnOnce(),
    heal: impl FnOnce(),
) {
    let cache = CachedStore::new(b, HitCacheConfig::default().with_max_stale(max_stale))
        .expect("a store with a push channel");
    let options = ClaimOptions::new(Kind::parse("image").expect("a valid kind"));
    let deleted = cross_server_key("deleted-while-cut");
    let kept = cross_server_key("kept-while-cut");
    for key in [&deleted, &kept] {
        complete_through(&*a, key, &options, "first").await;
        served_from_memory(&cache, key, &options).await;
    }
    cut();
    a.delete(&deleted)
        .await
        .expect("delete through the other server");
    tokio::time::sleep(max_stale + Duration::from_millis(1)).await;
    let claim = cache
        .claim_or_get(&deleted, &options)
        .await
        .expect("claim after the delete");
    assert!(
        matches!(claim, Claim::Acquired(_)),
        "with its push channel silent for {max_stale:?}, the cache must ask the store, \
         which holds no record any more; got {claim:?}"
    );
    let before = cache.stats().hits;
    let claim = cache
        .claim_or_get(&kept, &options)
        .await
        .expect("claim of a kept result");
    assert!(matches!(claim, Claim::Completed(_)), "got {claim:?}");
    assert_eq!(
        cache.stats().hits,
        before,
        "with its push channel silent past the bound, the cache served from memory"
    );
    heal();
    served_from_memory(&cache, &kept, &options).await;
}

fn cross_server_key(name: &str) -> RequestKey {
    RequestKey::parse(format!("image|{name}")).expect("a valid test key")
}

/// Claims `key` through `store` and completes it with `result`.
async fn complete_through(
    store: &dyn RequestStore,
    key: &RequestKey,
    options: &ClaimOptions,
    result: &'static str,
) {
    match store.claim_or_get(key, options).await.expect("claim") {
        Claim::Acquired(lease) => {
            store
                .complete(key, lease.token, Bytes::from_static(result.as_bytes()))
                .await
                .expect("complete");
        }
        other => panic!("expected a fresh key, got {other:?}"),
    }
}

/// Claims `key` through `cache` until a claim is answered from memory (the
/// store's channel confirmed and the result kept), for up to 30 s: a store
/// whose channel was just replaced confirms it within its own timeouts.
async fn served_from_memory(cache: &CachedStore, key: &RequestKey, options: &ClaimOptions) {
    let give_up = Instant::now() + Duration::from_secs(30);
    loop {
        let before = cache.stats().hits;
        let claim = cache.claim_or_get(key, options).await.expect("claim");
        assert!(matches!(claim, Claim::Completed(_)), "got {claim:?}");
        if cache.stats().hits > before {
            return;
        }
        assert!(
            Instant::now() < give_up,
            "the cache never served {key:?} from memory: the store's push channel never confirmed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
