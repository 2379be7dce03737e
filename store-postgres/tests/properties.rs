//! The property harnesses of `onceflight-core` on PostgreSQL: random
//! operation sequences against the reference model (real time), and
//! concurrent histories checked for design §5's guarantees.

mod common;

use onceflight_core::testkit::{
    ConcurrencyConfig, ModelCheckConfig, backend_available, check_against_model,
    check_concurrent_history,
};

/// Every answer of the Postgres store matches the reference model of §3–§4.
#[test]
fn postgres_store_matches_the_model() {
    if backend_available(Some("DATABASE_URL")) {
        check_against_model(common::setup, ModelCheckConfig::real());
    }
}

/// Concurrent claims, completions, failures, releases, crashes and readers
/// on Postgres leave a history that upholds §5.1–§5.5.
#[test]
fn postgres_store_concurrent_history_upholds_guarantees() {
    if backend_available(Some("DATABASE_URL")) {
        check_concurrent_history(common::setup, ConcurrencyConfig::default());
    }
}
