//! The conformance suite over HTTP on Redis: each case gets its own
//! onceflight service (a `RedisStore` under a fresh key prefix, served on
//! `127.0.0.1:0`) and talks to it through `HttpStore`, so the API of design
//! §7, the client and the Redis store together must behave exactly as a
//! store does.
//!
//! Needs `REDIS_URL`; without it every case skips and says so, unless
//! `ONCEFLIGHT_REQUIRE_BACKENDS=1`.

mod common;

use common::serve_in_process;
use onceflight_core::testkit::{SuiteConfig, unique_name};
use onceflight_server::auth::Tokens;
use onceflight_server::client::HttpStore;
use onceflight_store_redis::{RedisConfig, RedisStore};

/// Serves a Redis store under a fresh prefix, with the suite's retention,
/// on an ephemeral loopback port for as long as the test's runtime lives;
/// returns a client for it.
async fn setup(config: SuiteConfig) -> HttpStore {
    let url = std::env::var("REDIS_URL").expect("REDIS_URL (checked by the macro)");
    let store = RedisStore::connect(
        RedisConfig::new(url)
            .with_prefix(format!("{}:", unique_name("t_http")))
            .with_retention(config.retention),
    )
    .await
    .expect("connect to REDIS_URL");
    let base = serve_in_process(store, Tokens::default()).await;
    HttpStore::new(&base).expect("a valid base URL")
}

onceflight_core::conformance_tests!(setup, requires "REDIS_URL");
