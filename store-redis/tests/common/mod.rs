//! Fresh, isolated Redis stores for tests: each under a key prefix of its
//! own, on the single server (`REDIS_URL`) or the cluster
//! (`REDIS_CLUSTER_URLS`), both set by `cargo xtask test`.

// Each test binary uses a part of these helpers.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use onceflight_core::testkit::{Expiry, RawStorage, Setup, SuiteConfig, WithRawStorage};
use onceflight_core::{Bytes, RecordState, RequestKey, RequestStore, Token};
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
    format!("{}:", onceflight_test_support::unique_name("t"))
}

/// A store on `url` under `prefix`, with `retention`.
pub(crate) async fn store_on(url: &str, prefix: &str, retention: Duration) -> RedisStore {
    RedisStore::connect(
        RedisConfig::new(url)
            .with_prefix(prefix)
            .with_retention(retention),
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "connect to {}: {e}",
            onceflight_core::backend::redact_url(url)
        )
    })
}

/// The conformance suite's setup on the single server.
pub(crate) async fn setup(config: SuiteConfig) -> RedisStore {
    store_on(&redis_url(), &fresh_prefix(), config.retention).await
}

/// The conformance suite's setup on the cluster.
pub(crate) async fn cluster_setup(config: SuiteConfig) -> RedisStore {
    store_on(&cluster_urls(), &fresh_prefix(), config.retention).await
}

/// A plain connection to `url`, for looking behind the store's back.
pub(crate) async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .expect("a valid Redis URL")
        .get_multiplexed_async_connection()
        .await
        .expect("a plain Redis connection")
}

/// Whether Redis still holds `key`'s record, asked with `EXISTS` on the
/// record's own Redis key: the conformance suite's look past the store's API.
pub(crate) async fn raw_record_exists(store: &RedisStore, key: &RequestKey) -> bool {
    let [record, ..] = store.redis_keys(key);
    let mut connection = store.connection();
    let found: i64 = redis::cmd("EXISTS")
        .arg(&record)
        .query_async(&mut connection)
        .await
        .expect("EXISTS");
    found == 1
}

/// The conformance suite's setup built by `setup`, with a look at Redis;
/// Redis forgets records past retention by itself (key TTLs).
pub(crate) fn suite<F: Setup<Store = RedisStore>>(setup: F) -> impl RawStorage<Store = RedisStore> {
    WithRawStorage {
        setup,
        raw: raw_record_exists,
        expiry: Expiry::ByStorage,
    }
}

/// Starts a waiter on `key`, gives it `settle` to subscribe, completes `key`
/// with `token`, and returns how long after the completion the waiter saw
/// it (asserting that it saw the completed record).
pub(crate) async fn waiter_sees_completion(
    store: &std::sync::Arc<RedisStore>,
    key: &RequestKey,
    token: Token,
    settle: Duration,
) -> Duration {
    let waiter = {
        let (store, key) = (std::sync::Arc::clone(store), key.clone());
        tokio::spawn(async move { store.wait(&key, Duration::from_secs(30)).await })
    };
    tokio::time::sleep(settle).await;
    let started = Instant::now();
    store
        .complete(key, token, Bytes::from_static(b"1"))
        .await
        .expect("complete");
    let record = waiter
        .await
        .expect("waiter")
        .expect("wait")
        .expect("record");
    assert_eq!(
        record.state,
        RecordState::Completed,
        "woken with the result"
    );
    started.elapsed()
}

/// Where the token sits among a packed record's values (`lua/lib.lua`).
pub(crate) const TOKEN_FIELD: usize = 5;

/// Rewrites value `position` of the packed record at `record_key` (Redis's
/// key) to `value`, keeping the key's expiry: a record as some earlier
/// moment left it, written behind the store's back.
pub(crate) async fn set_record_field(
    conn: &mut redis::aio::MultiplexedConnection,
    record_key: &str,
    position: usize,
    value: u64,
) {
    let () = redis::cmd("EVAL")
        .arg(
            "local r = cmsgpack.unpack(redis.call('GET', KEYS[1]))
             r[tonumber(ARGV[1])] = tonumber(ARGV[2])
             redis.call('SET', KEYS[1], cmsgpack.pack(r), 'KEEPTTL')",
        )
        .arg(1)
        .arg(record_key)
        .arg(position)
        .arg(value)
        .query_async(conn)
        .await
        .expect("rewrite a packed record");
}

/// Completes the packed record at `record_key` with `result` as the
/// `complete` function would, but without its wake-up: a change waiters
/// are not told of. Positions as in `lua/lib.lua`: 2 state, 7 done, 9
/// result, 14 lease end.
pub(crate) async fn complete_silently(
    conn: &mut redis::aio::MultiplexedConnection,
    record_key: &str,
    result: &str,
) {
    let () = redis::cmd("EVAL")
        .arg(
            "local r = cmsgpack.unpack(redis.call('GET', KEYS[1]))
             local t = redis.call('TIME')
             r[2], r[7], r[9], r[14] = 'c', tonumber(t[1]) * 1000, ARGV[1], false
             redis.call('SET', KEYS[1], cmsgpack.pack(r), 'KEEPTTL')",
        )
        .arg(1)
        .arg(record_key)
        .arg(result)
        .query_async(conn)
        .await
        .expect("complete a packed record silently");
}
