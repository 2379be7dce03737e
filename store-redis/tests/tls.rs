//! `rediss://`: the store over TLS (rustls) to a Redis of the test's own
//! with a certificate from a throw-away certificate authority, trusted
//! through `RedisConfig::tls_root_cert`; without that root it refuses the
//! server.

mod common;

use std::time::Duration;

use onceflight_core::{Bytes, Claim, ClaimOptions, Kind, RecordState, RequestKey, RequestStore};
use onceflight_store_redis::{RedisConfig, RedisStore};
use onceflight_test_support::backend_available;
use onceflight_test_support::redis::{Options, Redis};

/// Claims, waits across the pub/sub connection and completes over TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_works_over_tls_with_a_private_ca() {
    // Runs with the Redis tests: it needs the same `redis-server`.
    if !backend_available("REDIS_URL") {
        return;
    }
    // A certificate for 127.0.0.1 signed by a throw-away CA.
    let redis = Redis::start_with(Options {
        tls: true,
        ..Options::default()
    })
    .expect("a Redis with TLS of the test's own");
    let url = redis.url();
    let ca_file = redis.certificates().expect("TLS material").ca_file();

    let untrusted = RedisStore::connect(RedisConfig::new(&url)).await;
    assert!(
        untrusted.is_err(),
        "a server signed by an unknown CA is refused"
    );

    let store = std::sync::Arc::new(
        RedisStore::connect(
            RedisConfig::new(&url)
                .with_prefix(common::fresh_prefix())
                .with_tls_root_cert(ca_file)
                .with_wait_fallback(Duration::from_secs(60)),
        )
        .await
        .expect("connect over TLS with the private CA"),
    );
    let key = RequestKey::parse("image|tls").expect("key");
    let Ok(Claim::Acquired(lease)) = store
        .claim_or_get(
            &key,
            &ClaimOptions::new(Kind::parse("image").expect("kind")),
        )
        .await
    else {
        panic!("a fresh claim over TLS acquires");
    };
    let waiter = {
        let (store, key) = (store.clone(), key.clone());
        tokio::spawn(async move { store.wait(&key, Duration::from_secs(30)).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    store
        .complete(&key, lease.token, Bytes::from_static(b"\"over tls\""))
        .await
        .expect("complete over TLS");
    let record = tokio::time::timeout(Duration::from_secs(20), waiter)
        .await
        .expect("woken through the TLS subscription, not the fallback")
        .expect("waiter")
        .expect("wait")
        .expect("record");
    assert_eq!(record.state, RecordState::Completed, "completed");
    assert_eq!(
        record.result.as_deref(),
        Some(&b"\"over tls\""[..]),
        "the result"
    );
}
