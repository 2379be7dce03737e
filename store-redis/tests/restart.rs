//! A Redis restart: operations in flight fail with `Unavailable` (retryable),
//! the store reconnects by itself, loads its function library again (a Redis
//! without persistence forgot it) and subscribes again. Runs its own
//! `redis-server` (the binary `cargo xtask test` needs anyway) so that it
//! may kill it.

mod common;

use std::time::{Duration, Instant};

use onceflight_core::{Claim, ClaimOptions, Kind, RequestKey, RequestStore};
use onceflight_store_redis::{RedisConfig, RedisStore};
use onceflight_test_support::backend_available;

use onceflight_test_support::redis::Redis;

fn options() -> ClaimOptions {
    ClaimOptions::new(Kind::parse("image").expect("kind"))
}

/// Kill Redis under a store, start it again: errors are `Unavailable`
/// meanwhile, then everything works again with no help.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_is_unavailable_then_recovers_by_itself() {
    if !backend_available("REDIS_URL") {
        return;
    }
    let mut server = Redis::start().expect("a Redis of the test's own");
    let url = server.url();
    let store = RedisStore::connect(
        RedisConfig::new(&url)
            .with_prefix(common::fresh_prefix())
            .with_response_timeout(Duration::from_secs(2))
            // Long enough that only a pushed wake-up or the re-check after
            // a reconnect can end the waits below in time.
            .with_wait_fallback(Duration::from_secs(60)),
    )
    .await
    .expect("connect");
    let store = std::sync::Arc::new(store);
    let before = RequestKey::parse("before-restart").expect("key");
    assert!(matches!(
        store.claim_or_get(&before, &options()).await,
        Ok(Claim::Acquired(_))
    ));
    server.crash();
    let started = Instant::now();
    let down = store.get(&before).await;
    assert!(
        matches!(&down, Err(e) if e.is_retryable()),
        "an operation while Redis is down is Unavailable, got {down:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "it fails within its timeouts, not hangs ({:?})",
        started.elapsed()
    );

    server
        .start_again()
        .expect("Redis starts again on its port");
    let after = RequestKey::parse("after-restart").expect("key");
    let deadline = Instant::now() + Duration::from_secs(20);
    let lease = loop {
        match store.claim_or_get(&after, &options()).await {
            Ok(Claim::Acquired(lease)) => break lease,
            Ok(other) => panic!("a fresh key after the restart is Acquired, got {other:?}"),
            Err(e) => {
                assert!(e.is_retryable(), "only Unavailable while reconnecting: {e}");
                assert!(Instant::now() < deadline, "the store did not recover: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };

    // The subscription works again: a completion wakes a new waiter.
    let took =
        common::waiter_sees_completion(&store, &after, lease.token, Duration::from_millis(200))
            .await;
    assert!(
        took < Duration::from_secs(20),
        "woken by pub/sub ({took:?})"
    );
}
