//! The property harnesses of `onceflight-core` on the memory store: random
//! operation sequences checked step by step against the reference model (on
//! tokio's paused clock, directly and through `Arc<dyn RequestStore>`), and
//! concurrent histories checked for docs/protocol.md §5's guarantees (on real time).

use std::sync::Arc;

use onceflight_core::testkit::{
    ConcurrencyConfig, ModelCheckConfig, SuiteConfig, ThroughHitCache, check_against_model,
    check_concurrent_history,
};
use onceflight_core::{HitCacheConfig, RequestStore};
use onceflight_store_memory::{MemoryConfig, MemoryStore};

/// A fresh memory store with the retention the harness asks for.
async fn setup(config: SuiteConfig) -> MemoryStore {
    MemoryStore::new(MemoryConfig::default().with_retention(config.retention))
}

/// The same store behind a trait object, as the server holds it.
async fn dyn_setup(config: SuiteConfig) -> Arc<dyn RequestStore> {
    Arc::new(setup(config).await)
}

/// Every answer of the memory store matches the reference model of §3–§4.
#[test]
fn memory_store_matches_the_model() {
    check_against_model(setup, ModelCheckConfig::paused());
}

/// The same model check through `Arc<dyn RequestStore>`: forwarding loses
/// nothing.
#[test]
fn memory_store_behind_a_trait_object_matches_the_model() {
    check_against_model(dyn_setup, ModelCheckConfig::paused());
}

/// The model check through a result cache in front of the store: every
/// answer, cached or not, is the model's.
#[test]
fn memory_store_through_a_hit_cache_matches_the_model() {
    check_against_model(
        ThroughHitCache::new(setup, HitCacheConfig::default()),
        ModelCheckConfig::paused(),
    );
}

/// Concurrent claims, completions, failures, releases, crashes and readers
/// leave a history that upholds §5.1–§5.5.
#[test]
fn memory_store_concurrent_history_upholds_guarantees() {
    check_concurrent_history(setup, ConcurrencyConfig::default());
}

/// The concurrent history through a result cache: hits served from memory
/// still uphold §5.
#[test]
fn memory_store_through_a_hit_cache_upholds_guarantees() {
    check_concurrent_history(
        ThroughHitCache::new(setup, HitCacheConfig::default()),
        ConcurrencyConfig::default(),
    );
}
