//! The shared conformance suite on the memory store, directly and through
//! `Arc<dyn RequestStore>`, on tokio's paused clock.

use std::sync::Arc;

use onceflight_core::RequestStore;
use onceflight_core::testkit::SuiteConfig;
use onceflight_store_memory::{MemoryConfig, MemoryStore};

async fn setup(config: SuiteConfig) -> MemoryStore {
    MemoryStore::new(MemoryConfig::default().with_retention(config.retention))
}

onceflight_core::conformance_tests!(setup, paused);

/// The same cases through a trait object, as the server holds its store.
mod dyn_store {
    use super::*;

    async fn setup(config: SuiteConfig) -> Arc<dyn RequestStore> {
        Arc::new(super::setup(config).await)
    }

    onceflight_core::conformance_tests!(setup, paused);
}

/// The same cases on real time and a multi-thread runtime, where tasks truly
/// race and the store's timers are real ones.
mod real_time {
    use super::*;

    onceflight_core::conformance_tests!(setup);
}
