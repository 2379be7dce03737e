//! Random operation sequences on PostgreSQL checked step by step against the
//! reference model of docs/protocol.md §3–§4 (real time). A binary of its own, so that
//! no other test competes with its timing.

mod common;

use onceflight_core::HitCacheConfig;
use onceflight_core::testkit::{ModelCheckConfig, ThroughHitCache, check_against_model};
use onceflight_test_support::backend_available;

/// Every answer of the Postgres store matches the reference model; and
/// through a result cache in front of it (one after the other, so that
/// neither competes with the other's timing).
#[test]
fn postgres_store_matches_the_model() {
    if backend_available("DATABASE_URL") {
        check_against_model(common::setup, ModelCheckConfig::real());
        check_against_model(
            ThroughHitCache::new(common::setup, HitCacheConfig::default()),
            ModelCheckConfig::real(),
        );
    }
}
