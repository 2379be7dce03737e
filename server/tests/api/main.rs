//! The HTTP API, in-process and through the real `onceflight` binary: the
//! routes one by one ([`routes`]) and fuzzed ([`fuzz`]), hostile keys and
//! values on every store ([`hostile`]), slow and oversized clients at the
//! edge ([`slow_clients`]), secrets that must never show ([`secrets`]) and
//! the binary end to end ([`end_to_end`]), and the operator's commands
//! against it ([`cli`]).
//!
//! The modules that start the binary or open stores by URL need the
//! `memory` feature (the binary's default store); Postgres and Redis cases
//! need their features, and `DATABASE_URL` / `REDIS_URL` (they skip loudly
//! without them, unless `ONCEFLIGHT_REQUIRE_BACKENDS=1`).

#[path = "../common/mod.rs"]
mod common;

#[cfg(feature = "memory")]
mod cli;
#[cfg(feature = "memory")]
mod end_to_end;
mod fuzz;
#[cfg(feature = "memory")]
mod hostile;
mod routes;
#[cfg(feature = "memory")]
mod secrets;
mod slow_clients;

use std::collections::BTreeSet;

/// The keys of one `GET /v1/requests` page.
fn page_keys(page: &serde_json::Value) -> BTreeSet<String> {
    page["records"]
        .as_array()
        .unwrap_or_else(|| panic!("a page has records: {page}"))
        .iter()
        .map(|r| r["key"].as_str().expect("a key").to_owned())
        .collect()
}

/// `keys` as a set, to compare with [`page_keys`].
fn key_set(keys: &[&str]) -> BTreeSet<String> {
    keys.iter().map(|k| (*k).to_owned()).collect()
}
