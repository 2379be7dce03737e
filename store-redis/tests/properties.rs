//! Concurrent histories on Redis and Redis Cluster checked for docs/protocol.md §5's
//! guarantees.

mod common;

use onceflight_core::testkit::{ConcurrencyConfig, check_concurrent_history};
use onceflight_test_support::backend_available;

/// Concurrent claims, completions, failures, releases, crashes and readers
/// on Redis leave a history that upholds §5.1–§5.5.
#[test]
fn redis_store_concurrent_history_upholds_guarantees() {
    if backend_available("REDIS_URL") {
        check_concurrent_history(common::setup, ConcurrencyConfig::default());
    }
}

/// The same on the three-master cluster, where every operation is routed by
/// its request's hash tag.
#[test]
fn redis_cluster_concurrent_history_upholds_guarantees() {
    if backend_available("REDIS_CLUSTER_URLS") {
        check_concurrent_history(common::cluster_setup, ConcurrencyConfig::default());
    }
}
