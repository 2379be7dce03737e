//! What the Redis store promises beyond the shared suite: abandoned
//! records forgotten by Redis's own expiry, functions loaded again after
//! they are lost, several instances on one Redis, and wake-ups made good
//! after the subscription reconnects.

mod common;

use std::time::Duration;

use onceflight_core::{
    Bytes, Claim, ClaimOptions, Error, Kind, Lease, RecordState, RequestKey, RequestStore,
};
use onceflight_store_redis::RedisStore;
use onceflight_test_support::backend_available;
use onceflight_test_support::redis::Redis;
use redis::AsyncCommands;

fn key(name: &str) -> RequestKey {
    RequestKey::parse(name).expect("valid key")
}

fn options(lease: Duration) -> ClaimOptions {
    ClaimOptions::new(Kind::parse("image").expect("kind"))
        .with_lease_ttl(lease)
        .expect("lease ttl")
}

fn acquired(claim: Claim) -> Lease {
    match claim {
        Claim::Acquired(lease) => lease,
        other => panic!("expected Acquired, got {other:?}"),
    }
}

/// A crashed worker's lease ends by Redis's clock, with nobody sweeping:
/// the next claim takes over. The record itself, abandoned, is forgotten by
/// Redis at the lease's end plus retention, by its own expiry.
#[tokio::test]
async fn an_abandoned_lease_ends_and_its_record_is_forgotten_by_redis_itself() {
    if !backend_available("REDIS_URL") {
        return;
    }
    let retention = Duration::from_millis(400);
    let store = common::store_on(&common::redis_url(), &common::fresh_prefix(), retention).await;
    let mut conn = common::raw(&common::redis_url()).await;
    let k = key("abandoned");
    let [record_key, _] = store.redis_keys(&k);
    let first = acquired(
        store
            .claim_or_get(&k, &options(Duration::from_millis(300)))
            .await
            .expect("claim"),
    );
    let ttl: i64 = conn.pttl(&record_key).await.expect("PTTL");
    assert!(
        (301..=700).contains(&ttl),
        "the record expires at the lease's end plus retention, got {ttl} ms"
    );
    // The worker "crashes": it never renews, completes or releases.
    tokio::time::sleep(Duration::from_millis(350)).await;
    let second = acquired(
        store
            .claim_or_get(&k, &options(Duration::from_millis(300)))
            .await
            .expect("claim after expiry"),
    );
    assert!(second.takeover, "the next claim takes over");
    assert!(second.token > first.token, "with a higher token");
    assert!(
        matches!(
            store
                .complete(&k, first.token, Bytes::from_static(b"late"))
                .await,
            Err(Error::LeaseLost { .. })
        ),
        "the crashed worker's late write is fenced off"
    );
    // The second worker crashes too, and nobody claims again.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let exists: bool = conn.exists(&record_key).await.expect("EXISTS");
    assert!(
        !exists,
        "Redis forgot the abandoned record by itself, past lease end plus retention"
    );
}

/// Functions lost under the store (a restart or failover without
/// persistence, `FUNCTION FLUSH`) mid-run: the next operations load the
/// library again transparently and succeed. On a Redis of the test's own,
/// since others share the library on the common one.
#[tokio::test]
async fn functions_lost_mid_run_are_loaded_again() {
    if !backend_available("REDIS_URL") {
        return;
    }
    let server = Redis::start().expect("a Redis of the test's own");
    let url = server.url();
    let store = common::store_on(&url, &common::fresh_prefix(), Duration::from_secs(3600)).await;
    let mut conn = common::raw(&url).await;
    let k = key("flushed");
    let lease = acquired(
        store
            .claim_or_get(&k, &options(Duration::from_secs(30)))
            .await
            .expect("claim"),
    );
    let flush = async |conn: &mut redis::aio::MultiplexedConnection| {
        let () = redis::cmd("FUNCTION")
            .arg("FLUSH")
            .query_async(conn)
            .await
            .expect("FUNCTION FLUSH");
    };
    flush(&mut conn).await;
    store
        .renew(&k, lease.token, None)
        .await
        .expect("renew after FUNCTION FLUSH");
    let () = redis::cmd("FUNCTION")
        .arg("DELETE")
        .arg(store.library())
        .query_async(&mut conn)
        .await
        .expect("FUNCTION DELETE");
    let record = store
        .complete(&k, lease.token, Bytes::from_static(b"\"done\""))
        .await
        .expect("complete after FUNCTION DELETE");
    assert_eq!(record.state, RecordState::Completed, "completed");
    flush(&mut conn).await;
    assert!(
        matches!(
            store.get(&k).await,
            Ok(Some(r)) if r.result.as_deref() == Some(&b"\"done\""[..])
        ),
        "get (FCALL_RO) loads the library again too"
    );
    flush(&mut conn).await;
    assert!(
        matches!(
            store.claim_or_get(&k, &options(Duration::from_secs(30))).await,
            Ok(Claim::Completed(c)) if c.result.as_ref() == b"\"done\""
        ),
        "the result is served after another flush"
    );
    let libraries: Vec<redis::Value> = redis::cmd("FUNCTION")
        .arg("LIST")
        .arg("LIBRARYNAME")
        .arg(store.library())
        .query_async(&mut conn)
        .await
        .expect("FUNCTION LIST");
    assert_eq!(libraries.len(), 1, "the library is loaded again");
}

/// Two store instances on one Redis (two processes of a fleet): a herd
/// spread over both gets exactly one `Acquired`, and a waiter on one is
/// woken by a completion on the other — by pub/sub, not by its fallback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_one_decision_and_wake_each_other() {
    if !backend_available("REDIS_URL") {
        return;
    }
    let prefix = common::fresh_prefix();
    let url = common::redis_url();
    let connect = |fallback| {
        let (url, prefix) = (url.clone(), prefix.clone());
        async move {
            RedisStore::connect(
                onceflight_store_redis::RedisConfig::new(url)
                    .with_prefix(prefix)
                    .with_wait_fallback(fallback),
            )
            .await
            .expect("connect")
        }
    };
    let a = std::sync::Arc::new(connect(Duration::from_secs(60)).await);
    let b = std::sync::Arc::new(connect(Duration::from_secs(60)).await);
    let k = key("shared");
    let opts = options(Duration::from_secs(30));
    let herd = (0..64).map(|i| {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        let (k, opts) = (k.clone(), opts.clone());
        tokio::spawn(async move { store.claim_or_get(&k, &opts).await.expect("claim") })
    });
    let claims = futures::future::join_all(herd).await;
    let winners: Vec<_> = claims
        .into_iter()
        .map(|c| c.expect("task"))
        .filter_map(|c| match c {
            Claim::Acquired(lease) => Some(lease),
            _ => None,
        })
        .collect();
    assert_eq!(
        winners.len(),
        1,
        "exactly one Acquired across both instances"
    );
    let lease = winners[0].clone();

    let waiter = {
        let (a, k) = (a.clone(), k.clone());
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let record = a.wait(&k, Duration::from_secs(30)).await.expect("wait");
            (record, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    b.complete(&k, lease.token, Bytes::from_static(b"42"))
        .await
        .expect("complete on b");
    let (record, waited) = waiter.await.expect("waiter");
    let record = record.expect("record");
    assert_eq!(
        record.state,
        RecordState::Completed,
        "the waiter on a sees b's result"
    );
    // The fallback is 60 s and the timeout 30 s: returning at all within the
    // timeout with the result means the message arrived.
    assert!(
        waited < Duration::from_secs(20),
        "woken by pub/sub, not by a timeout ({waited:?})"
    );
}

/// A wake-up lost while the subscription was down is made good by the
/// re-check after it reconnects: the record changes without a message
/// (written behind the store's back), the subscription is killed, and the
/// waiter — whose fallback is a minute away — re-reads and returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_re_read_after_the_subscription_reconnects() {
    if !backend_available("REDIS_URL") {
        return;
    }
    let store = std::sync::Arc::new(
        RedisStore::connect(
            onceflight_store_redis::RedisConfig::new(common::redis_url())
                .with_prefix(common::fresh_prefix())
                .with_wait_fallback(Duration::from_secs(60)),
        )
        .await
        .expect("connect"),
    );
    let mut conn = common::raw(&common::redis_url()).await;
    let k = key("lost-message");
    let _ = acquired(
        store
            .claim_or_get(&k, &options(Duration::from_secs(30)))
            .await
            .expect("claim"),
    );
    let waiter = {
        let (store, k) = (store.clone(), k.clone());
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            (
                store.wait(&k, Duration::from_secs(40)).await,
                started.elapsed(),
            )
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Completed without the PUBLISH the store's function would send.
    let [record_key, _] = store.redis_keys(&k);
    common::complete_silently(&mut conn, &record_key, "\"lost\"").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiter.is_finished(),
        "no message was sent, so the waiter still waits"
    );
    let () = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut conn)
        .await
        .map(|_: i64| ())
        .expect("CLIENT KILL TYPE pubsub");
    let (record, waited) = waiter.await.expect("waiter");
    let record = record.expect("wait").expect("record");
    assert_eq!(
        record.state,
        RecordState::Completed,
        "the re-read saw the change"
    );
    assert!(
        waited < Duration::from_secs(20),
        "woken by the re-check after reconnecting, not the fallback ({waited:?})"
    );
}

/// Keys holding the hash-tag characters themselves, and keys that hash to
/// every master, run on the cluster: each request's Redis keys share a
/// slot whatever its key says.
#[tokio::test]
async fn any_key_runs_on_the_cluster() {
    if !backend_available("REDIS_CLUSTER_URLS") {
        return;
    }
    let store = common::store_on(
        &common::cluster_urls(),
        &common::fresh_prefix(),
        Duration::from_secs(3600),
    )
    .await;
    let keys = [
        "{",
        "}",
        "{}",
        "a{b}c",
        "}{",
        "{{x}}",
        "image|{prompt}",
        "ключ",
    ]
    .into_iter()
    .map(String::from)
    .chain((0..32).map(|i| format!("spread-{i}")));
    for name in keys {
        let k = key(&name);
        let lease = acquired(
            store
                .claim_or_get(&k, &options(Duration::from_secs(30)))
                .await
                .unwrap_or_else(|e| panic!("claim {name:?}: {e}")),
        );
        store
            .complete(&k, lease.token, Bytes::from(name.clone().into_bytes()))
            .await
            .unwrap_or_else(|e| panic!("complete {name:?}: {e}"));
        let record = store.get(&k).await.expect("get").expect("record");
        assert_eq!(record.result.as_deref(), Some(name.as_bytes()), "{name:?}");
        assert!(store.delete(&k).await.expect("delete"), "{name:?} deleted");
    }
}
