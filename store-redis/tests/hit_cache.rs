//! A result cache in front of the Redis store: the conformance suite
//! through it, a deletion on one server reaching another server's cache
//! within the staleness bound, a silent pub/sub connection keeping the
//! cache from serving anything past it, and no cache over a cluster.

mod common;

use std::sync::Arc;
use std::time::Duration;

use onceflight_core::testkit::{
    SuiteConfig, ThroughHitCache, check_cut_channel, check_delete_reaches_other_cache,
};
use onceflight_core::{CachedStore, Error, HitCacheConfig, RequestStore};
use onceflight_store_redis::{RedisConfig, RedisStore};
use onceflight_test_support::backend_available;
use onceflight_test_support::proxy::Proxy;
use onceflight_test_support::redis::Redis;

/// The conformance suite through a cache: whatever it answers from memory
/// is what the store would answer.
mod conformance {
    use super::*;

    onceflight_core::conformance_tests!(
        ThroughHitCache::new(
            common::suite(common::setup),
            HitCacheConfig::default().with_max_stale(Duration::from_millis(300))
        ),
        requires || onceflight_test_support::backend_available("REDIS_URL")
    );
}

const MAX_STALE: Duration = Duration::from_millis(300);
const RETENTION: Duration = Duration::from_secs(3600);

/// Two servers on one prefix: a delete on one reaches the other's cache
/// through pub/sub, well within the bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_on_one_server_reaches_the_cache_of_another() {
    if !backend_available("REDIS_URL") {
        return;
    }
    let url = common::redis_url();
    let prefix = common::fresh_prefix();
    let a = common::store_on(&url, &prefix, RETENTION).await;
    let b = common::store_on(&url, &prefix, RETENTION).await;
    let seen = check_delete_reaches_other_cache(Arc::new(a), Arc::new(b), MAX_STALE).await;
    eprintln!(
        "a delete reached the other server's cache {:?} after it returned (bound {MAX_STALE:?})",
        seen.seen_after
    );
}

/// The other server's pub/sub connection goes silent (half-open): nothing
/// is served from its cache past the bound, and once the store subscribes
/// again the cache serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_subscription_stops_the_cache_within_the_bound() {
    if !backend_available("REDIS_URL") {
        return;
    }
    let server = Redis::start().expect("a Redis of the test's own");
    let (proxy, through_proxy) = Proxy::in_front_of(&server.url(), 6379).await;
    let prefix = common::fresh_prefix();
    let a = common::store_on(&server.url(), &prefix, RETENTION).await;
    let b = RedisStore::connect(
        RedisConfig::new(&through_proxy)
            .with_prefix(&prefix)
            .with_retention(RETENTION)
            .with_response_timeout(Duration::from_secs(2)),
    )
    .await
    .expect("connect");
    let proxy = Arc::new(proxy);
    let (cut, heal) = (Arc::clone(&proxy), Arc::clone(&proxy));
    check_cut_channel(
        Arc::new(a) as Arc<dyn RequestStore>,
        Arc::new(b),
        MAX_STALE,
        move || cut.freeze_open_that_sent(b"SUBSCRIBE"),
        move || heal.heal(),
    )
    .await;
}

/// A cluster forwards messages between nodes in no order a PING can
/// confirm: the store offers no push channel there, and a cache over it is
/// refused with a clear error rather than serving stale results.
#[tokio::test]
async fn a_cache_over_a_cluster_is_refused() {
    if !backend_available("REDIS_CLUSTER_URLS") {
        return;
    }
    let store = common::cluster_setup(SuiteConfig::default()).await;
    let refused = CachedStore::new(Arc::new(store), HitCacheConfig::default())
        .expect_err("no cache over a cluster");
    assert!(
        matches!(
            &refused,
            Error::InvalidInput {
                field: "hit_cache",
                ..
            }
        ),
        "{refused:?}"
    );
}
