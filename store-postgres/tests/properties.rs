//! Concurrent histories on PostgreSQL checked for docs/protocol.md §5's guarantees.

mod common;

use onceflight_core::testkit::{ConcurrencyConfig, check_concurrent_history};
use onceflight_test_support::backend_available;

/// Concurrent claims, completions, failures, releases, crashes and readers
/// on Postgres leave a history that upholds §5.1–§5.5.
#[test]
fn postgres_store_concurrent_history_upholds_guarantees() {
    if backend_available("DATABASE_URL") {
        check_concurrent_history(common::setup, ConcurrencyConfig::default());
    }
}

/// The same through a transaction-mode pooler, whose few server connections
/// serve every client in turn: §5 holds there too.
#[test]
fn pooled_store_concurrent_history_upholds_guarantees() {
    if backend_available("PGBOUNCER_URL") {
        check_concurrent_history(common::pooled_setup, ConcurrencyConfig::default());
    }
}
