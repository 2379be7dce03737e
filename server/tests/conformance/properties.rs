//! The property harnesses of `onceflight-core` through the HTTP API: random
//! operation sequences against the reference model, and concurrent
//! histories checked for docs/protocol.md §5's guarantees, each case on its own
//! service (memory store) reached through `HttpStore`.

use onceflight_core::testkit::{
    ConcurrencyConfig, Expiry, ModelCheckConfig, SuiteConfig, check_against_model,
    check_concurrent_history,
};
use onceflight_server::auth::Tokens;
use onceflight_server::client::HttpStore;
use onceflight_store_memory::{MemoryConfig, MemoryStore};

use crate::common::serve_in_process;

/// A fresh service with the retention the harness asks for, and a client.
async fn setup(config: SuiteConfig) -> HttpStore {
    let store = MemoryStore::new(MemoryConfig::default().with_retention(config.retention));
    let base = serve_in_process(store, Tokens::default()).await;
    HttpStore::new(&base).expect("a valid base URL")
}

/// Every answer through the API matches the reference model of §3–§4.
#[test]
fn http_api_matches_the_model() {
    // `HttpStore::sweep` does nothing: the service sweeps its own store.
    check_against_model(
        setup,
        ModelCheckConfig::real().with_expiry(Expiry::SweptElsewhere),
    );
}

/// Concurrent claims, completions, failures, releases, crashes and readers
/// through the API leave a history that upholds §5.1–§5.5.
#[test]
fn http_api_concurrent_history_upholds_guarantees() {
    check_concurrent_history(setup, ConcurrencyConfig::default());
}
