//! A result cache in front of the Postgres store: the conformance suite
//! through it, a deletion on one server reaching another server's cache
//! within the staleness bound, and a silent LISTEN connection keeping the
//! cache from serving anything past it.

mod common;

use std::sync::Arc;
use std::time::Duration;

use onceflight_core::testkit::{
    ThroughHitCache, check_cut_channel, check_delete_reaches_other_cache,
};
use onceflight_core::{HitCacheConfig, RequestStore};
use onceflight_store_postgres::{PgConfig, PgStore};
use onceflight_test_support::backend_available;

/// The conformance suite through a cache: whatever it answers from memory
/// is what the store would answer.
mod conformance {
    use super::*;

    onceflight_core::conformance_tests!(
        ThroughHitCache::new(
            common::suite(common::setup),
            HitCacheConfig::default().with_max_stale(Duration::from_millis(300))
        ),
        requires || onceflight_test_support::backend_available("DATABASE_URL")
    );
}

const MAX_STALE: Duration = Duration::from_millis(300);
const RETENTION: Duration = Duration::from_secs(3600);

/// Two servers on one schema: a delete on one reaches the other's cache
/// through NOTIFY, well within the bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_on_one_server_reaches_the_cache_of_another() {
    if !backend_available("DATABASE_URL") {
        return;
    }
    let schema = common::fresh_schema();
    let a = common::store_with(&schema, RETENTION).await;
    let b = common::store_with(&schema, RETENTION).await;
    let seen = check_delete_reaches_other_cache(Arc::new(a), Arc::new(b), MAX_STALE).await;
    eprintln!(
        "a delete reached the other server's cache {:?} after it returned (bound {MAX_STALE:?})",
        seen.seen_after
    );
}

/// The other server's LISTEN connection goes silent (half-open): nothing
/// is served from its cache past the bound, and once the store replaces the
/// connection the cache serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_listen_connection_stops_the_cache_within_the_bound() {
    if !backend_available("DATABASE_URL") {
        return;
    }
    let (proxy, through_proxy) = common::database_through_proxy().await;
    let schema = common::fresh_schema();
    let a = common::store_with(&schema, RETENTION).await;
    let b = PgStore::connect(
        PgConfig::new(common::database_url())
            .with_schema(&schema)
            .with_listen_url(through_proxy)
            .with_pool_size(2)
            .with_operation_timeout(Duration::from_secs(2)),
    )
    .await
    .expect("connect");
    let proxy = Arc::new(proxy);
    let (cut, heal) = (Arc::clone(&proxy), Arc::clone(&proxy));
    check_cut_channel(
        Arc::new(a) as Arc<dyn RequestStore>,
        Arc::new(b),
        MAX_STALE,
        move || cut.freeze_open(),
        move || heal.heal(),
    )
    .await;
}
