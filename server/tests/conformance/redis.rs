//! The conformance suite over HTTP on Redis: each case gets its own
//! onceflight service (a `RedisStore` under a fresh key prefix, served on
//! `127.0.0.1:0`) and talks to it through `HttpStore`, so the API of docs/protocol.md
//! §7, the client and the Redis store together must behave exactly as a
//! store does.
//!
//! Needs `REDIS_URL`; without it every case skips and says so, unless
//! `ONCEFLIGHT_REQUIRE_BACKENDS=1`.

use futures::future::BoxFuture;
use onceflight_core::RequestKey;
use onceflight_core::testkit::{Expiry, SuiteConfig};
use onceflight_store_redis::{RedisConfig, RedisStore};
use onceflight_test_support::unique_name;

use crate::common::over_http::OverHttp;

/// A Redis store under a fresh prefix, with the suite's retention.
fn open(config: SuiteConfig) -> BoxFuture<'static, RedisStore> {
    Box::pin(async move {
        let url = std::env::var("REDIS_URL").expect("REDIS_URL (checked by the macro)");
        RedisStore::connect(
            RedisConfig::new(url)
                .with_prefix(format!("{}:", unique_name("t_http")))
                .with_retention(config.retention),
        )
        .await
        .expect("connect to REDIS_URL")
    })
}

/// Whether Redis still holds the served store's record for `key`, asked
/// with `EXISTS` through the store's own connection (its script keys are
/// known to the store).
fn raw<'a>(store: &'a RedisStore, key: &'a RequestKey) -> BoxFuture<'a, bool> {
    Box::pin(async move {
        let [record, ..] = store.redis_keys(key);
        let mut connection = store.connection();
        let found: i64 = ::redis::cmd("EXISTS")
            .arg(&record)
            .query_async(&mut connection)
            .await
            .expect("EXISTS");
        found == 1
    })
}

onceflight_core::conformance_tests!(
    OverHttp::new(open, raw, Expiry::ByStorage),
    requires || onceflight_test_support::backend_available("REDIS_URL")
);
