//! The shared conformance suite on the memory store, directly and through
//! `Arc<dyn RequestStore>`, on tokio's paused clock.

use std::sync::Arc;

use onceflight_core::testkit::{Expiry, RawStorage, SuiteConfig, WithRawStorage};
use onceflight_core::{RequestKey, RequestStore};
use onceflight_store_memory::{MemoryConfig, MemoryStore};

async fn setup(config: SuiteConfig) -> MemoryStore {
    MemoryStore::new(MemoryConfig::default().with_retention(config.retention))
}

/// What the store's maps hold, past retention included.
async fn raw_record_exists(store: &MemoryStore, key: &RequestKey) -> bool {
    store.holds_record(key)
}

/// The memory store and a look at its maps; records past retention stay
/// there until swept.
fn memory() -> impl RawStorage<Store = MemoryStore> {
    WithRawStorage {
        setup,
        raw: raw_record_exists,
        expiry: Expiry::Swept,
    }
}

onceflight_core::conformance_tests!(memory(), paused);

/// The same cases through a trait object, as the server holds its store.
mod dyn_store {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::Mutex;

    use onceflight_core::testkit::Setup;

    use super::*;

    /// Builds memory stores behind `Arc<dyn RequestStore>` and keeps a
    /// handle on each, so their maps can be looked at through the trait
    /// object's address.
    #[derive(Default)]
    struct DynSetup {
        built: Mutex<Vec<Arc<MemoryStore>>>,
    }

    impl Setup for DynSetup {
        type Store = Arc<dyn RequestStore>;

        fn store(
            &self,
            config: SuiteConfig,
        ) -> Pin<Box<dyn Future<Output = Arc<dyn RequestStore>> + Send>> {
            let store = Arc::new(MemoryStore::new(
                MemoryConfig::default().with_retention(config.retention),
            ));
            self.built
                .lock()
                .expect("the list of built stores")
                .push(Arc::clone(&store));
            Box::pin(async move { store as Arc<dyn RequestStore> })
        }
    }

    impl RawStorage for DynSetup {
        fn expiry(&self) -> Expiry {
            Expiry::Swept
        }

        async fn raw_record_exists(&self, store: &Arc<dyn RequestStore>, key: &RequestKey) -> bool {
            let built = self.built.lock().expect("the list of built stores");
            let memory = built
                .iter()
                .find(|built| std::ptr::addr_eq(Arc::as_ptr(built), Arc::as_ptr(store)))
                .expect("a store this setup built");
            memory.holds_record(key)
        }
    }

    onceflight_core::conformance_tests!(DynSetup::default(), paused);
}

/// The same cases on real time and a multi-thread runtime, where tasks truly
/// race and the store's timers are real ones.
mod real_time {
    use super::*;

    onceflight_core::conformance_tests!(memory());
}

/// The same cases through a result cache in front of the store: a cache
/// hit answers exactly what the store would.
mod through_hit_cache {
    use onceflight_core::HitCacheConfig;
    use onceflight_core::testkit::ThroughHitCache;

    use super::*;

    onceflight_core::conformance_tests!(
        ThroughHitCache::new(memory(), HitCacheConfig::default()),
        paused
    );
}
