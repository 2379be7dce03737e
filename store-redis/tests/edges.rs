//! The Redis store at the edges of Redis's own behaviour: out of memory,
//! a retention that ends at once, a token floor above Redis's clock, an
//! evicting `maxmemory-policy`, a half-open pub/sub connection, and a
//! `fail` whose lease a claim already turned failed. Tests that need a
//! specially configured Redis run their own `redis-server` on loopback.

mod common;

use std::sync::Arc;
use std::time::Duration;

use onceflight_core::{
    Bytes, Claim, ClaimOptions, Error, JobError, Kind, Lease, RecordState, RequestKey, RequestStore,
};
use onceflight_store_redis::{RedisConfig, RedisStore};
use onceflight_test_support::backend_available;
use redis::AsyncCommands;

use onceflight_test_support::proxy::Proxy;
use onceflight_test_support::redis::{Options, Redis};

fn key(name: &str) -> RequestKey {
    RequestKey::parse(name).expect("valid key")
}

fn options(lease: Duration) -> ClaimOptions {
    ClaimOptions::new(Kind::parse("image").expect("kind"))
        .with_lease_ttl(lease)
        .expect("lease ttl")
}

fn acquired(claim: onceflight_core::Result<Claim>) -> Lease {
    match claim {
        Ok(Claim::Acquired(lease)) => lease,
        other => panic!("expected Acquired, got {other:?}"),
    }
}

async fn store_at(url: &str, config: impl FnOnce(RedisConfig) -> RedisConfig) -> RedisStore {
    RedisStore::connect(config(
        RedisConfig::new(url)
            .with_prefix(common::fresh_prefix())
            .with_retention(Duration::from_secs(3600)),
    ))
    .await
    .expect("connect")
}

/// Under `noeviction` with memory full, a fresh claim and a takeover are
/// refused as `Unavailable` before they write anything, while the work
/// already granted can still complete, fail, release and be deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_memory_refuses_new_claims_and_lets_granted_work_finish() {
    if !backend_available("REDIS_URL") {
        return;
    }
    let server = Redis::start_with(Options::default().args(&[
        "--maxmemory",
        "3mb",
        "--maxmemory-policy",
        "noeviction",
    ]))
    .expect("a Redis of the test's own");
    let url = server.url();
    let store = store_at(&url, |c| c).await;
    let mut raw = common::raw(&url).await;

    let to_complete = acquired(
        store
            .claim_or_get(&key("complete"), &options(Duration::from_secs(60)))
            .await,
    );
    let to_fail = acquired(
        store
            .claim_or_get(&key("fail"), &options(Duration::from_secs(60)))
            .await,
    );
    let to_release = acquired(
        store
            .claim_or_get(&key("release"), &options(Duration::from_secs(60)))
            .await,
    );
    let _ = acquired(
        store
            .claim_or_get(&key("delete"), &options(Duration::from_secs(60)))
            .await,
    );
    let expiring = acquired(
        store
            .claim_or_get(&key("expiring"), &options(Duration::from_millis(200)))
            .await,
    );
    let live = acquired(
        store
            .claim_or_get(&key("live"), &options(Duration::from_secs(60)))
            .await,
    );
    let given_up = acquired(
        store
            .claim_or_get(&key("given-up"), &options(Duration::from_secs(60)))
            .await,
    );
    store
        .fail(
            &given_up.key,
            given_up.token,
            &JobError::permanent("given up"),
        )
        .await
        .expect("fail");

    // Fill Redis until it refuses writes.
    let filler = "x".repeat(16 * 1024);
    let mut full = false;
    for i in 0..10_000 {
        let set: redis::RedisResult<()> = raw.set(format!("fill:{i}"), &filler).await;
        if let Err(error) = set {
            assert_eq!(
                error.code(),
                Some("OOM"),
                "the filler stops at OOM: {error}"
            );
            full = true;
            break;
        }
    }
    assert!(full, "Redis never ran out of memory");
    // The refused write's own arguments took memory that is free again:
    // lower the limit below what the data holds, so Redis stays full.
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("1mb")
        .query_async(&mut raw)
        .await
        .expect("CONFIG SET maxmemory");
    let probe: redis::RedisResult<()> = raw.set("probe", "1").await;
    assert!(
        matches!(&probe, Err(e) if e.code() == Some("OOM")),
        "Redis is out of memory for the rest of the test: {probe:?}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A fresh claim: refused, nothing written.
    let fresh = key("fresh");
    let refused = store
        .claim_or_get(&fresh, &options(Duration::from_secs(60)))
        .await;
    assert!(
        matches!(&refused, Err(Error::Unavailable { .. })),
        "a fresh claim under OOM is Unavailable, got {refused:?}"
    );
    for redis_key in store.redis_keys(&fresh) {
        let exists: bool = raw.exists(&redis_key).await.expect("EXISTS");
        assert!(
            !exists,
            "the refused claim wrote nothing, yet {redis_key} exists"
        );
    }

    // A takeover of the expired lease: refused, the record unchanged.
    let [record_key, _] = store.redis_keys(&expiring.key);
    let before: Vec<u8> = raw.get(&record_key).await.expect("GET");
    let refused = store
        .claim_or_get(&expiring.key, &options(Duration::from_secs(60)))
        .await;
    assert!(
        matches!(&refused, Err(Error::Unavailable { .. })),
        "a takeover under OOM is Unavailable, got {refused:?}"
    );
    let after: Vec<u8> = raw.get(&record_key).await.expect("GET");
    assert_eq!(before, after, "the refused takeover changed the record");

    // Work already granted finishes.
    let completed = store
        .complete(
            &to_complete.key,
            to_complete.token,
            Bytes::from_static(b"{\"done\":true}"),
        )
        .await;
    assert!(
        matches!(&completed, Ok(r) if r.state == RecordState::Completed),
        "complete under OOM succeeds, got {completed:?}"
    );
    let failed = store
        .fail(&to_fail.key, to_fail.token, &JobError::new("gave up", true))
        .await;
    assert!(
        matches!(&failed, Ok(r) if r.state == RecordState::Failed),
        "fail under OOM succeeds, got {failed:?}"
    );
    let released = store.release(&to_release.key, to_release.token).await;
    assert!(
        matches!(&released, Ok(r) if r.state == RecordState::Processing),
        "release under OOM succeeds, got {released:?}"
    );
    let deleted = store.delete(&key("delete")).await;
    assert!(
        matches!(deleted, Ok(true)),
        "delete under OOM succeeds, got {deleted:?}"
    );
    // Claims that only read are still answered, and so is get.
    let hit = store
        .claim_or_get(&to_complete.key, &options(Duration::from_secs(60)))
        .await;
    assert!(
        matches!(&hit, Ok(Claim::Completed(c)) if c.result.as_ref() == b"{\"done\":true}"),
        "a claim hitting a completed record is answered under OOM, got {hit:?}"
    );
    let hit = store
        .claim_or_get(&given_up.key, &options(Duration::from_secs(60)))
        .await;
    assert!(
        matches!(&hit, Ok(Claim::Failed(f)) if f.error.message() == "given up"),
        "a claim hitting a failed record is answered under OOM, got {hit:?}"
    );
    let hit = store
        .claim_or_get(&live.key, &options(Duration::from_secs(60)))
        .await;
    assert!(
        matches!(&hit, Ok(Claim::InFlight(f)) if f.token == live.token),
        "a claim hitting a live lease is answered under OOM, got {hit:?}"
    );
    let mismatch = store
        .claim_or_get(
            &to_complete.key,
            &ClaimOptions::new(Kind::parse("video").expect("kind")),
        )
        .await;
    assert!(
        matches!(&mismatch, Err(Error::FingerprintMismatch { .. })),
        "a mismatch is answered under OOM, got {mismatch:?}"
    );
    let read = store.get(&to_complete.key).await;
    assert!(
        matches!(&read, Ok(Some(r)) if r.state == RecordState::Completed),
        "get is answered under OOM, got {read:?}"
    );
}

/// A lease that expired with no attempts left, turned failed by a claim,
/// cannot be failed afterwards by its former holder: `LeaseLost`, as
/// `complete` is. A `fail` that succeeded still succeeds when repeated.
#[tokio::test]
async fn fail_after_a_claim_turned_the_lease_failed_is_lease_lost() {
    if !backend_available("REDIS_URL") {
        return;
    }
    let store = store_at(&common::redis_url(), |c| c).await;
    let k = key("expired-no-attempts");
    let short = options(Duration::from_millis(100))
        .with_max_attempts(1)
        .expect("max attempts");
    let first = acquired(store.claim_or_get(&k, &short).await);
    tokio::time::sleep(Duration::from_millis(250)).await;
    let claim = store.claim_or_get(&k, &short).await;
    assert!(
        matches!(&claim, Ok(Claim::Failed(f)) if f.retry_after.is_none() && f.token == first.token),
        "the expired lease with no attempts left makes the claim Failed, got {claim:?}"
    );
    let late = store
        .fail(&k, first.token, &JobError::new("too late", true))
        .await;
    assert!(
        matches!(&late, Err(Error::LeaseLost { .. })),
        "fail on a lease a claim turned failed is LeaseLost, got {late:?}"
    );
    let late = store
        .complete(&k, first.token, Bytes::from_static(b"1"))
        .await;
    assert!(
        matches!(&late, Err(Error::LeaseLost { .. })),
        "complete there is LeaseLost too, got {late:?}"
    );

    // The same fail twice: both succeed, the first error stands.
    let k = key("failed-twice");
    let lease = acquired(store.claim_or_get(&k, &short).await);
    let once = store
        .fail(&k, lease.token, &JobError::new("first", false))
        .await;
    assert!(
        matches!(&once, Ok(r) if r.state == RecordState::Failed),
        "{once:?}"
    );
    let twice = store
        .fail(&k, lease.token, &JobError::new("second", false))
        .await;
    assert!(
        matches!(&twice, Ok(r) if r.error.as_ref().map(JobError::message) == Some("first")),
        "a repeated fail succeeds and the first error stands, got {twice:?}"
    );
}

/// A retention under a millisecond would forget every record the instant
/// it settles: the store refuses it at connect.
#[tokio::test]
async fn a_retention_under_a_millisecond_is_refused() {
    if !backend_available("REDIS_URL") {
        return;
    }
    for retention in [Duration::ZERO, Duration::from_micros(500)] {
        let connected = RedisStore::connect(
            RedisConfig::new(common::redis_url())
                .with_prefix(common::fresh_prefix())
                .with_retention(retention),
        )
        .await;
        assert!(
            matches!(
                &connected,
                Err(Error::InvalidInput {
                    field: "retention",
                    ..
                })
            ),
            "a retention of {retention:?} is refused, got {:?}",
            connected.as_ref().map(|_| "a store")
        );
    }
}

/// The settling functions answer with the record as they left it even
/// when its retention ends at once and Redis drops it before the reply.
/// Called straight through FCALL, since the store refuses such a retention.
#[tokio::test]
async fn a_function_whose_retention_ends_at_once_still_answers_the_record() {
    if !backend_available("REDIS_URL") {
        return;
    }
    let store = store_at(&common::redis_url(), |c| c).await;
    let mut raw = common::raw(&common::redis_url()).await;
    for (name, extra) in [
        ("complete", vec!["\"r\"", "0"]),
        ("fail", vec!["boom", "1", "0"]),
        ("release", vec!["0"]),
    ] {
        let k = key(&format!("vanishing-{name}"));
        let lease = acquired(
            store
                .claim_or_get(&k, &options(Duration::from_secs(60)))
                .await,
        );
        let mut call = redis::cmd("FCALL");
        call.arg(format!("{}_{name}", store.library())).arg(2);
        for redis_key in store.redis_keys(&k) {
            call.arg(redis_key);
        }
        call.arg(lease.token.get());
        for arg in extra {
            call.arg(arg);
        }
        let reply: Vec<redis::Value> = call
            .query_async(&mut raw)
            .await
            .unwrap_or_else(|e| panic!("{name} with retention 0: {e}"));
        // Reply: outcome, now, state, kind, fp, token… (`view` in lua/lib.lua)
        assert_eq!(
            reply.first(),
            Some(&redis::Value::BulkString(b"ok".to_vec())),
            "{name} answers ok: {reply:?}"
        );
        assert!(
            matches!(reply.get(2), Some(redis::Value::BulkString(_))),
            "{name} answered the record's state: {reply:?}"
        );
        assert_eq!(
            reply.get(5),
            Some(&redis::Value::Int(
                i64::try_from(lease.token.get()).expect("token")
            )),
            "{name} answered the token"
        );
        // It expires at Redis's now: gone once that millisecond is past.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let [record_key, ..] = store.redis_keys(&k);
        let exists: bool = raw.exists(&record_key).await.expect("EXISTS");
        assert!(!exists, "the record of {name} expired at once, as asked");
    }
}

/// Tokens never go backwards: once the store has seen a token above
/// Redis's clock (granted while the clock was ahead, before a failover or
/// a restart), every token it has granted since is above it.
#[tokio::test]
async fn tokens_stay_above_the_highest_token_the_store_has_seen() {
    if !backend_available("REDIS_URL") {
        return;
    }
    let store = store_at(&common::redis_url(), |c| c).await;
    let mut raw = common::raw(&common::redis_url()).await;
    // A record written when Redis's clock was an hour ahead: its token is
    // an hour of microseconds above today's clock.
    let ahead = key("granted-when-the-clock-was-ahead");
    let lease = acquired(
        store
            .claim_or_get(&ahead, &options(Duration::from_secs(60)))
            .await,
    );
    let high = lease.token.get() + 3_600_000_000;
    let [record_key, ..] = store.redis_keys(&ahead);
    common::set_record_field(&mut raw, &record_key, common::TOKEN_FIELD, high).await;
    let seen = store.get(&ahead).await.expect("get").expect("record");
    assert_eq!(seen.token.get(), high, "the store read the high token");

    for name in ["other-key", "another-key"] {
        let lease = acquired(
            store
                .claim_or_get(&key(name), &options(Duration::from_secs(60)))
                .await,
        );
        assert!(
            lease.token.get() > high,
            "a token granted after seeing {high} is above it, got {} for {name}",
            lease.token.get()
        );
    }
}

/// An evicting `maxmemory-policy` is noticed at connect and named in the
/// warning the store logs; `noeviction` draws none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicting_policy_is_reported_at_connect() {
    if !backend_available("REDIS_URL") {
        return;
    }
    let server =
        Redis::start_with(Options::default().args(&["--maxmemory-policy", "volatile-lru"]))
            .expect("a Redis of the test's own");
    let url = server.url();
    let store = store_at(&url, |c| c).await;
    assert_eq!(
        store.maxmemory_policy(),
        Some("volatile-lru"),
        "read at connect"
    );
    let warning = store.eviction_warning();
    assert!(
        matches!(&warning, Some(w) if w.contains("volatile-lru") && w.contains("noeviction")),
        "an evicting policy is warned about, by name: {warning:?}"
    );

    // Where CONFIG is disabled (managed Redis), INFO memory still tells.
    let mut raw = common::raw(&url).await;
    let () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("app")
        .arg("on")
        .arg(">pw")
        .arg("~*")
        .arg("&*")
        .arg("+@all")
        .arg("-config")
        .query_async(&mut raw)
        .await
        .expect("ACL SETUSER");
    let restricted = store_at(
        &format!("redis://app:pw@127.0.0.1:{}/", server.port()),
        |c| c,
    )
    .await;
    assert_eq!(
        restricted.maxmemory_policy(),
        Some("volatile-lru"),
        "read from INFO memory when CONFIG is refused"
    );

    let noeviction = store_at(&common::redis_url(), |c| c).await;
    let mut shared = common::raw(&common::redis_url()).await;
    let policy: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory-policy")
        .query_async(&mut shared)
        .await
        .expect("CONFIG GET");
    if policy.get(1).map(String::as_str) == Some("noeviction") {
        assert_eq!(
            noeviction.eviction_warning(),
            None,
            "noeviction draws no warning"
        );
    }
}

/// A pub/sub connection that silently stops delivering (half-open) is
/// noticed by the store's PING; it subscribes again and wakes its waiters,
/// who see a completion long before the fallback re-read would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_open_subscription_is_noticed_and_waiters_still_wake() {
    if !backend_available("REDIS_URL") {
        return;
    }
    let server = Redis::start().expect("a Redis of the test's own");
    let (proxy, url) = Proxy::in_front_of(&server.url(), 6379).await;
    let store = Arc::new(
        store_at(&url, |c| {
            c.with_wait_fallback(Duration::from_secs(60))
                .with_pubsub_ping(Duration::from_millis(200))
                .with_response_timeout(Duration::from_millis(500))
        })
        .await,
    );
    let k = key("half-open");
    let lease = acquired(
        store
            .claim_or_get(&k, &options(Duration::from_secs(60)))
            .await,
    );
    // Every pub/sub connection open now goes silent.
    proxy.freeze_open_that_sent(b"SUBSCRIBE");
    let took =
        common::waiter_sees_completion(&store, &k, lease.token, Duration::from_millis(100)).await;
    assert!(
        took < Duration::from_secs(10),
        "woken after the PING noticed the dead subscription, not by the 60 s fallback \
         nor the 30 s timeout ({took:?})"
    );
}
