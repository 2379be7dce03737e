//! Fresh, isolated Redis stores for tests: each under a key prefix of its
//! own, on the single server (`REDIS_URL`) or the cluster
//! (`REDIS_CLUSTER_URLS`), both set by `cargo xtask test`.

// Each test binary uses a part of these helpers.
#![allow(dead_code)]

use std::time::Duration;

use onceflight_core::testkit::SuiteConfig;
use onceflight_store_redis::{RedisConfig, RedisStore};

/// The single server the tests use.
pub(crate) fn redis_url() -> String {
    std::env::var("REDIS_URL").expect("REDIS_URL is set (checked by backend_available)")
}

/// The cluster's seed URLs, comma-separated.
pub(crate) fn cluster_urls() -> String {
    std::env::var("REDIS_CLUSTER_URLS")
        .expect("REDIS_CLUSTER_URLS is set (checked by backend_available)")
}

/// A key prefix no other test uses.
pub(crate) fn fresh_prefix() -> String {
    format!("{}:", onceflight_core::testkit::unique_name("t"))
}

/// A store on `url` under `prefix`, with `retention`.
pub(crate) async fn store_on(url: &str, prefix: &str, retention: Duration) -> RedisStore {
    RedisStore::connect(
        RedisConfig::new(url)
            .with_prefix(prefix)
            .with_retention(retention),
    )
    .await
    .unwrap_or_else(|e| panic!("connect to {}: {e}", onceflight_core::redact_url(url)))
}

/// The conformance suite's setup on the single server.
pub(crate) async fn setup(config: SuiteConfig) -> RedisStore {
    store_on(&redis_url(), &fresh_prefix(), config.retention).await
}

/// The conformance suite's setup on the cluster.
pub(crate) async fn cluster_setup(config: SuiteConfig) -> RedisStore {
    store_on(&cluster_urls(), &fresh_prefix(), config.retention).await
}
