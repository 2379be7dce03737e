//! Any backend's setup with a [`CachedStore`] in front of each store it
//! builds, so that the conformance suite and the model check hold the
//! cache to the same contract as the store.

use std::sync::{Arc, Mutex, PoisonError};

use futures::future::BoxFuture;

use super::{Expiry, RawStorage, Setup, SuiteConfig};
use crate::{CachedStore, HitCacheConfig, RequestKey, RequestStore};

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
