//! The conformance cases: one public async function per property of docs/protocol.md
//! §3–§5, each run by every backend through
//! [`conformance_tests!`](crate::conformance_tests).
//!
//! Results are JSON text so that the same cases pass over the HTTP API,
//! which carries results as JSON.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::{Expiry, RawStorage, Setup, SuiteConfig, Timing};
use crate::backend::lease_expired_message;
use crate::{
    Claim, ClaimOptions, DEFAULT_RETRY_BACKOFF, Error, Fingerprint, JobError, Kind, Lease,
    MAX_LEASE_TTL, MAX_TOKEN, Owner, Record, RecordState, RequestKey, RequestStore, Token,
};

pub(crate) fn key(name: &str) -> RequestKey {
    RequestKey::parse(format!("image|{name}")).expect("a valid test key")
}

/// Claim options for kind `image` with a lease of `ttl_units`.
pub(crate) fn options(t: Timing, ttl_units: u32) -> ClaimOptions {
    ClaimOptions::new(Kind::parse("image").expect("valid kind"))
        .with_lease_ttl(t.units(ttl_units))
        .expect("valid lease ttl")
}

pub(crate) fn json(text: &str) -> Bytes {
    Bytes::from(format!("{{\"value\":{text:?}}}"))
}

pub(crate) async fn claim<S: RequestStore>(store: &S, key: &RequestKey, o: &ClaimOptions) -> Claim {
    store
        .claim_or_get(key, o)
        .await
        .unwrap_or_else(|e| panic!("claim_or_get({key}) failed: {e}"))
}

pub(crate) fn acquired(claim: Claim) -> Lease {
    match claim {
        Claim::Acquired(lease) => lease,
        other => panic!("expected Acquired, got {other:?}"),
    }
}

async fn record<S: RequestStore>(store: &S, key: &RequestKey) -> Record {
    store
        .get(key)
        .await
        .unwrap_or_else(|e| panic!("get({key}) failed: {e}"))
        .unwrap_or_else(|| panic!("expected a record for {key}"))
}

fn assert_lease_lost<T: std::fmt::Debug>(result: crate::Result<T>, what: &str) {
    assert!(
        matches!(result, Err(Error::LeaseLost { .. })),
        "{what}: expected LeaseLost, got {result:?}"
    );
}

/// The parts of a record a refused operation must leave as they were.
fn snapshot(r: &Record) -> impl PartialEq + std::fmt::Debug + use<> {
    (
        r.state,
        r.token,
        r.attempt,
        r.owner.clone(),
        r.kind.clone(),
        r.fingerprint.clone(),
        r.lease_expires_at,
        r.result.clone(),
        r.error.clone(),
        r.updated_at,
        r.expires_at,
    )
}

/// A claim on a key with no record is `Acquired`: attempt 1, no takeover, a
/// full lease, and a `processing` record that shows the claim's values.
pub async fn fresh_claim_is_acquired<T: Setup>(setup: &T, t: Timing) {
    let store = setup.store(SuiteConfig::default()).await;
    let k = key("fresh");
    let o = options(t, 4)
        .with_fingerprint(Fingerprint::parse("sha256:abc").unwrap())
        .with_owner(Owner::parse("worker-1").unwrap());
    let lease = acquired(claim(&store, &k, &o).await);
    assert_eq!(lease.key, k, "lease key");
    assert_eq!(lease.attempt, 1, "first lease is attempt 1");
    assert!(!lease.takeover, "a fresh claim is not a takeover");
    assert!(
        lease.token.get() >= 1 && lease.token.get() <= MAX_TOKEN,
        "token in range"
    );
    assert_eq!(lease.ttl, t.units(4), "lease ttl");
    assert!(
        t.about(lease.remaining, t.units(4)),
        "remaining {:?} ≈ ttl",
        lease.remaining
    );

    let r = record(&store, &k).await;
    assert_eq!(r.state, RecordState::Processing, "state");
    assert_eq!(r.token, lease.token, "record token");
    assert_eq!(r.attempt, 1, "record attempt");
    assert_eq!(r.kind.as_str(), "image", "kind");
    assert_eq!(
        r.fingerprint.as_ref().map(|f| f.as_str()),
        Some("sha256:abc")
    );
    assert_eq!(r.owner.as_ref().map(|o| o.as_str()), Some("worker-1"));
    assert_eq!(r.lease_expires_at, Some(lease.expires_at), "lease end");
    assert!(!r.lease_expired(), "lease is live");
    assert!(
        r.result.is_none() && r.error.is_none(),
        "no result, no error"
    );
    assert!(r.created_at <= r.updated_at, "created_at <= updated_at");
    assert!(
        r.expires_at.is_some_and(|e| e >= lease.expires_at),
        "retention ends after the lease"
    );
}

/// A claim while another lease is live is `InFlight` with the holder's token,
/// owner and attempt, and the time left on its lease.
pub async fn live_lease_is_in_flight<T: Setup>(setup: &T, t: Timing) {
    let store = setup.store(SuiteConfig::default()).await;
    let k = key("inflight");
    let first = options(t, 4).with_owner(Owner::parse("worker-a").unwrap());
    let lease = acquired(claim(&store, &k, &first).await);
    t.sleep(1).await;
    let second = options(t, 4).with_owner(Owner::parse("worker-b").unwrap());
    match claim(&store, &k, &second).await {
        Claim::InFlight(f) => {
            assert_eq!(f.token, lease.token, "holder's token");
            assert_eq!(f.attempt, 1, "holder's attempt");
            assert_eq!(f.owner.as_ref().map(|o| o.as_str()), Some("worker-a"));
            assert_eq!(f.lease_expires_at, lease.expires_at, "holder's lease end");
            assert!(
                t.about(f.remaining, t.units(3)),
                "remaining {:?} ≈ 3 units",
                f.remaining
            );
        }
        other => panic!("expected InFlight, got {other:?}"),
    }
    assert_eq!(
        record(&store, &k).await.token,
        lease.token,
        "nothing changed"
    );
}

/// A claim after the lease expired takes over: a greater token, attempt + 1,
/// `takeover = true`.
pub async fn expired_lease_is_taken_over<T: Setup>(setup: &T, t: Timing) {
    let store = setup.store(SuiteConfig::default()).await;
    let k = key("takeover");
    let first = acquired(claim(&store, &k, &options(t, 2)).await);
    t.sleep(3).await;
    let second = acquired(claim(&store, &k, &options(t, 4)).await);
    assert!(second.takeover, "takeover flag");
    assert!(second.token > first.token, "token strictly increases");
    assert_eq!(second.attempt, 2, "attempt + 1");
    let r = record(&store, &k).await;
    assert_eq!(r.token, second.token, "record holds the new token");
    assert!(!r.lease_expired(), "the new lease is live");
}

/// `renew` moves the lease's end to now + ttl, by default the lease's own.
pub async fn renew_extends_a_live_lease<T: Setup>(setup: &T, t: Timing) {
    let store = setup.store(SuiteConfig::default()).await;
    let k = key("renew");
    let lease = acquired(claim(&store, &k, &options(t, 4)).await);
    t.sleep(3).await;
    let renewed = store.renew(&k, lease.token, None).await.expect("renew");
    assert!(
        t.about(renewed.remaining, t.units(4)),
        "renewed for the lease's own ttl, {:?} left",
        renewed.remaining
    );
    assert!(renewed.expires_at > lease.expires_at, "the end moved later");
    t.sleep(2).await;
    match claim(&store, &k, &options(t, 4)).await {
        Claim::InFlight(f) => assert_eq!(f.token, lease.token, "still the holder"),
        other => panic!("a renewed lease must still be in flight, got {other:?}"),
    }
    let longer = store
        .renew(&k, lease.token, Some(t.units(8)))
        .await
        .expect("renew with a ttl");
    assert!(
        t.about(longer.remaining, t.units(8)),
        "explicit ttl, {:?} left",
        longer.remaining
    );
}

/// `renew` past expiry succeeds while nobody took over.
pub async fn renew_after_expiry_without_takeover_succeeds<T: Setup>(setup: &T, t: Timing) {
    let store = setup.store(SuiteConfig::default()).await;
    let k = key("late-renew");
    let lease = acquired(claim(&store, &k, &options(t, 2)).await);
    t.sleep(3).await;
    let renewed = store
        .renew(&k, lease.token, None)
        .await
        .expect("a late renew with the current token succeeds");
    assert!(
        t.about(renewed.remaining, t.units(2)),
        "{:?} left",
        renewed.remaining
    );
    match claim(&store, &k, &options(t, 2)).await {
        Claim::InFlight(f) => assert_eq!(f.token, lease.token, "holder kept the key"),
        other => panic!("expected InFlight after the late renew, got {other:?}"),
    }
}

/// `renew` with a token that was taken over is `LeaseLost` and changes
/// nothing.
pub async fn renew_after_takeover_is_lease_lost<T: Setup>(setup: &T, t: Timing) {
    let store = setup.store(SuiteConfig::default()).await;
    let k = key("renew-lost");
    let old = acquired(claim(&store, &k, &options(t, 2)).await);
    t.sleep(3).await;
    let new = acquired(claim(&store, &k, &options(t, 4)).await);
    let before = record(&store, &k).await;
    assert_lease_lost(store.renew(&k, old.token, None).await, "renew(stale)");
    let after = record(&store, &k).await;
    assert_eq!(snapshot(&after), snapshot(&before), "record unchanged");
    assert_eq!(after.token, new.token, "the new holder keeps the key");
}

/// `renew` with a ttl outside 1 ms ..= 24 h is `InvalidInput` and changes
/// nothing.
pub async fn renew_refuses_an_out_of_range_ttl<T: Setup>(setup: &T, t: Timing) {
    let store = setup.store(SuiteConfig::default()).await;
    let k = key("renew-ttl");
    let lease = acquired(claim(&store, &k, &options(t, 4)).await);
    let before = record(&store, &k).await;
    for ttl in [Duration::ZERO, MAX_LEASE_TTL + Duration::from_millis(1)] {
        let result = store.renew(&k, lease.token, Some(ttl)).await;
        assert!(
            matches!(
                result,
                Err(Error::InvalidInput {
                    field: "lease_ttl",
                    ..
                })
            ),
            "renew ttl {ttl:?}: expected InvalidInput(lease_ttl), got {result:?}"
        );
    }
    assert_eq!(
        snapshot(&record(&store, &k).await),
        snapshot(&before),
        "unchanged"
    );
}

/// Claims the key, lets the lease expire, and takes it over: returns the
/// stale lease and the current one.
async fn stale_and_current<S: RequestStore>(
    store: &S,
    k: &RequestKey,
    t: Timing,
) -> (Lease, Lease) {
    let old = acquired(claim(store, k, &options(t, 2)).await);
    t.sleep(3).await;
    let new = acquired(claim(store, k, &options(t, 4)).await);
    (old, new)
}

/// `complete` with a stale token is `LeaseLost` and changes nothing; the
/// current holder can still complete.
pub async fn stale_token_complete_is_lease_lost<T: Setup>(setup: &T, t: Timing) {
    let store = setup.store(SuiteConfig::default()).await;
    let k = key("stale-complete");
    let (old, new) = stale_and_current(&store, &k, t).await;
    let before = record(&store, &k).await;
    assert_lease_lost(
        store.complete(&k, old.token, json("late")).await,
        "complete(stale)",
    );
    assert_eq!(
        snapshot(&record(&store, &k).await),
        snapshot(&before),
        "unchanged"
    );
    let done = store
        .complete(&k, new.token, json("fresh"))
        .await
        .expect("complete(current)");
    assert_eq!(done.result, Some(json("fresh")), "the holder's result");
    assert_lease_lost(
        store.complete(&k, old.token, json("late")).await,
        "complete(stale) after the holder completed",
    );
    assert_eq!(record(&store, &k).await.result, Some(json("fresh")));
}

/// `fail` with a stale token is `LeaseLost` and changes nothing.
pub async fn stale_token_fail_is_lease_lost<T: Setup>(setup: &T, t: Timing) {
    let store = setup.store(SuiteConfig::default()).await;
    let k = key("stale-fail");
    let (old, _new) = stale_and_current(&store, &k, t).await;
    let before = record(&store, &k).await;
    assert_lease_lost(
        store
            .fail(&k, old.token, &JobError::permanent("late"))
            .await,
        "fail(stale)",
    );
    assert_eq!(
        snapshot(&record(&store, &k).await),
        snapshot(&before),
        "unchanged"
    );
}

/// `release` with a stale token is `LeaseLost` and changes nothing.
pub async fn stale_token_release_is_lease_lost<T: Setup>(setup: &T, t: Timing) {
    let store = setup.store(SuiteConfig::default()).await;
    let k = key("stale-release");
    let (old, _new) = stale_and_current(&store, &k, t).await;
    let before = record(&store, &k).await;
    assert_lease_lost(store.release(&k, old.token).await, "release(stale)");
    let after = record(&store, &k).await;
    assert_eq!(snapshot(&after), snapshot(&before), "unchanged");
    assert!(!after.lease_expired(), "the holder's lease is still live");
}

/// Fenced operations on a key with no record are `LeaseLost` and create
/// nothing.
pub async fn fenced_operations_on_a_missing_key_are_lease_lost<T: Setup>(setup: &T, _t: Timing) {
    let store = setup.store(SuiteConfig::default()).await;
    let k = key("missing");
    let token = Token::new(1).unwrap();
    assert_lease_lost(store.renew(&k, token, None).await, "renew");
    assert_lease_lost(store.complete(&k, token, json("x")).await, "complete");
    assert_lease_lost(
        store.fail(&k, token, &JobError::retryable("x")).await,
        "fail",
    );
    assert_lease_lost(store.release(&k, token).await, "release");
    assert!(
        store.get(&k).await.expect("get").is_none(),
        "nothing created"
    );
}

/// `complete` stores the result; later claims and reads see it.
pub async fn complete_stores_the_result<T: Setup>(setup: &T, t: Timing) {
    let store = setup.store(SuiteConfig::default()).await;
    let k = key("complete");
    let lease = acquired(claim(&store, &k, &options(t, 4)).await);
    let done = store
        .complete(&k, lease.token, json("png"))
        .await
        .expect("complete");
    assert_eq!(done.state, RecordState::Completed, "state");
    assert_eq!(done.result, Some(json("png")), "result");
    assert!(done.completed_at.is_some(), "completed_at set");
    assert_eq!(
        done.lease_expires_at, None,
        "a terminal record has no lease"
    );
    assert!(
        !done.lease_expired(),
        "lease_expired is false when terminal"
    );
    match claim(&store, &k, &options(t, 4)).await {
        Claim::Completed(c) => {
            assert_eq!(c.result, json("png"), "claim sees the result");
            assert_eq!(c.token, lease.token, "completing token");
            assert_eq!(c.attempt, 1, "attempt");
            assert_eq!(Some(c.completed_at), done.completed_at, "completed_at");
        }
        other => panic!("expected Completed, got {other:?}"),
    }
    assert_eq!(record(&store, &k).await.result, Some(json("png")));
}

/// `complete` repeated with the same token succeeds and the first result
/// stands.
pub async fn complete_twice_with_same_token_keeps_first_result<T: Setup>(setup: &T, t: Timing) {
    let store = setup.store(SuiteConfig::default()).await;
    let k = key("complete-twice");
    let lease = acquired(claim(&store, &k, &options(t, 4)).await);
    store
        .complete(&k, lease.token, json("first"))
        .await
        .expect("first complete");
    let again = store
        .complete(&k, lease.token, json("second"))
        .await
        .expect("same-token complete is idempotent");
    assert_eq!(again.result, Some(json("first")), "first result stands");
    assert_eq!(record(&store, &k).await.result, Some(json("first")));
}

/// `fail` repeated with the same token succeeds and the first error stands.
pub async fn fail_twice_with_same_token_keeps_first_error<T: Setup>(setup: &T, t: Timing) {
    let store = setup.store(SuiteConfig::default()).await;
    let k = key("fail-twice");
    let lease = acquired(claim(&store, &k, &options(t, 4)).await);
    store
        .fail(&k, lease.token, &JobError::retryable("one"))
        .await
        .expect("first fail");
    let again = store
        .fail(&k, lease.token, &JobError::permanent("two"))
        .await
        .expect("same-token fail is idempotent");
    assert_eq!(
        again.error,
        Some(JobError::retryable("one")),
        "first error stands"
    );
    assert_eq!(again.state, RecordState::Failed);
}

/// After `fail`, `complete` with the same token is `LeaseLost`, and after
/// `complete`, `fail` is.
pub async fn complete_after_fail_and_fail_after_complete_are_lease_lost<T: Setup>(
    setup: &T,
    t: Timing,
) {
    let store = setup.store(SuiteConfig::default()).await;
    let failed = key("failed-then-complete");
    let lease = acquired(claim(&store, &failed, &options(t, 4)).await);
    store
        .fail(&failed, lease.token, &JobError::permanent("no"))
        .await
        .expect("fail");
    assert_lease_lost(
        store.complete(&failed, lease.token, json("x")).await,
        "complete after fail",
    );
    assert_eq!(record(&store, &failed).await.state, RecordState::Failed);

    let completed = key("completed-then-fail");
    let lease = acquired(claim(&store, &completed, &options(t, 4)).await);
    store
        .complete(&completed, lease.token, json("ok"))
        .await
        .expect("complete");
    assert_lease_lost(
        store
            .fail(&completed, lease.token, &JobError::retryable("x"))
            .await,
        "fail after complete",
    );
    assert_eq!(record(&store, &completed).await.result, Some(json("ok")));
}

/// A retryable failure answers `Failed` with `retry_after` until the backoff
/// (1 s, then 2 s) has passed, then `Acquired` with attempt + 1.
pub async fn retryable_failure_backs_off_then_retries<T: Setup>(setup: &T, t: Timing) {
    let store = setup.store(SuiteConfig::default()).await;
    let k = key("retry");
    let o = options(t, 4).with_max_attempts(3).unwrap();
    let first = acquired(claim(&store, &k, &o).await);
    let failed = store
        .fail(&k, first.token, &JobError::retryable("rate limited"))
        .await
        .expect("fail");
    assert!(
        failed
            .retry_after
            .is_some_and(|d| t.about(d, DEFAULT_RETRY_BACKOFF)),
        "record retry_after ≈ 1 s, got {:?}",
        failed.retry_after
    );
    match claim(&store, &k, &o).await {
        Claim::Failed(f) => {
            assert_eq!(f.error, JobError::retryable("rate limited"), "error");
            assert_eq!(f.attempt, 1, "attempt");
            assert!(
                f.retry_after
                    .is_some_and(|d| t.about(d, DEFAULT_RETRY_BACKOFF)),
                "retry_after ≈ 1 s, got {:?}",
                f.retry_after
            );
        }
        other => panic!("expected Failed during backoff, got {other:?}"),
    }
    tokio::time::sleep(DEFAULT_RETRY_BACKOFF + t.slack).await;
    let second = acquired(claim(&store, &k, &o).await);
    assert_eq!(second.attempt, 2, "a retry is attempt + 1");
    assert!(!second.takeover, "a retry is not a takeover");
    assert!(second.token > first.token, "retry gets a greater token");
    assert!(
        record(&store, &k).await.error.is_none(),
        "a new lease clears the error"
    );
    store
        .fail(&k, second.token, &JobError::retryable("rate limited again"))
        .await
        .expect("second fail");
    match claim(&store, &k, &o).await {
        Claim::Failed(f) => assert!(
            f.retry_after
                .is_some_and(|d| t.about(d, DEFAULT_RETRY_BACKOFF * 2)),
            "the backoff doubles to 2 s, got {:?}",
            f.retry_after
        ),
        other => panic!("expected Failed during the second backoff, got {other:?}"),
    }
}

/// A permanent failure answers `Failed` with no `retry_after`, for good.
pub async fn permanent_failure_is_final<T: Setup>(setup: &T, t: Timing) {
    let store = setup.store(SuiteConfig::default()).await;
    let k = key("permanent");
    let lease = acquired(claim(&store, &k, &options(t, 4)).await);
    let failed = store
        .fail(&k, lease.token, &JobError::permanent("prompt refused"))
        .await
        .expect("fail");
    assert_eq!(failed.retry_after, None, "no retry");
    assert_eq!(failed.lease_expires_at, None, "no lease");
    t.sleep(2).await;
    tokio::time::sleep(DEFAULT_RETRY_BACKOFF).await;
    match claim(&store, &k, &options(t, 4)).await {
        Claim::Failed(f) => {
            assert_eq!(f.error, JobError::permanent("prompt refused"));
            assert_eq!(f.retry_after, None, "no retry will be allowed");
            assert_eq!(f.token, lease.token, "the failing token");
        }
        other => panic!("expected Failed, got {other:?}"),
    }
}

/// Once `max_attempts` leases failed, the record answers `Failed` with no
/// `retry_after`, though the failure was retryable.
pub async fn max_attempts_exhausted_by_failures<T: Setup>(setup: &T, t: Timing) {
    let store = setup.store(SuiteConfig::default()).await;
    let k = key("exhausted");
    let o = options(t, 4).with_max_attempts(2).unwrap();
    let first = acquired(claim(&store, &k, &o).await);
    store
        .fail(&k, first.token, &JobError::retryable("flaky"))
        .await
        .expect("fail 1");
    tokio::time::sleep(DEFAULT_RETRY_BACKOFF + t.slack).await;
    let second = acquired(claim(&store, &k, &o).await);
    assert_eq!(second.attempt, 2);
    let failed = store
        .fail(&k, second.token, &JobError::retryable("flaky"))
        .await
        .expect("fail 2");
    assert_eq!(failed.retry_after, None, "no attempt left");
    tokio::time::sleep(DEFAULT_RETRY_BACKOFF * 2 + t.slack).await;
    match claim(&store, &k, &o).await {
        Claim::Failed(f) => {
            assert_eq!(f.attempt, 2, "attempt");
            assert!(f.error.is_retryable(), "the error stays retryable");
            assert_eq!(f.retry_after, None, "but no retry is allowed");
        }
        other => panic!("expected Failed with attempts exhausted, got {other:?}"),
    }
}

/// An expired lease with no attempt left is not taken over: the claim fails
/// the record ("lease expired on attempt N of M", retryable, no retry).
pub async fn expired_lease_without_attempts_left_fails<T: Setup>(setup: &T, t: Timing) {
    let store = setup.store(SuiteConfig::default()).await;
    let k = key("expired-last");
    let o = options(t, 2).with_max_attempts(1).unwrap();
    let lease = acquired(claim(&store, &k, &o).await);
    t.sleep(3).await;
    match claim(&store, &k, &o).await {
        Claim::Failed(f) => {
            assert_eq!(f.error.message(), lease_expired_message(1, 1), "message");
            assert!(f.error.is_retryable(), "retryable");
            assert_eq!(f.retry_after, None, "no retry allowed");
            assert_eq!(f.attempt, 1, "attempt");
            assert_eq!(f.token, lease.token, "no new token was granted");
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    let r = record(&store, &k).await;
    assert_eq!(r.state, RecordState::Failed, "the record is failed");
    assert_lease_lost(
        store.complete(&k, lease.token, json("late")).await,
        "the dead worker's late complete",
    );
}

/// A `fail` with the token of a lease that a claim turned failed (expired,
/// no attempt left) is `LeaseLost`, as `complete` is, and changes nothing.
pub async fn fail_after_expired_last_lease_is_lease_lost<T: Setup>(setup: &T, t: Timing) {
    let store = setup.store(SuiteConfig::default()).await;
    let k = key("expired-last-fail");
    let o = options(t, 2).with_max_attempts(1).unwrap();
    let lease = acquired(claim(&store, &k, &o).await);
    t.sleep(3).await;
    match claim(&store, &k, &o).await {
        Claim::Failed(f) => {
            assert_eq!(f.retry_after, None, "no retry allowed");
            assert_eq!(f.token, lease.token, "no new token was granted");
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    let before = record(&store, &k).await;
    assert_eq!(before.state, RecordState::Failed, "the claim failed it");
    let late = store
        .fail(&k, lease.token, &JobError::permanent("late"))
        .await;
    assert!(
        matches!(late, Err(Error::LeaseLost { .. })),
        "the dead worker's late fail: expected LeaseLost, got {late:?}"
    );
    let after = record(&store, &k).await;
    assert_eq!(snapshot(&after), snapshot(&before), "record unchanged");
    assert_eq!(
        after.error.as_ref().map(JobError::message),
        Some(lease_expired_message(1, 1).as_str()),
        "the expiry's error stands"
    );
}

/// A release ends the lease at once without using an attempt: the next claim
/// gets the same attempt number, no takeover, and the old token is retired.
pub async fn release_does_not_consume_an_attempt<T: Setup>(setup: &T, t: Timing) {
    let store = setup.store(SuiteConfig::default()).await;
    let k = key("release");
    let o = options(t, 10).with_max_attempts(1).unwrap();
    let first = acquired(claim(&store, &k, &o).await);
    let released = store.release(&k, first.token).await.expect("release");
    assert_eq!(released.state, RecordState::Processing, "still processing");
    assert!(released.lease_expired(), "the lease ended now");
    let second = acquired(claim(&store, &k, &o).await);
    assert_eq!(second.attempt, 1, "a release does not count as an attempt");
    assert!(
        !second.takeover,
        "claiming a released lease is not a takeover"
    );
    assert!(second.token > first.token, "a new token");
    assert_lease_lost(store.renew(&k, first.token, None).await, "renew(released)");
    assert_lease_lost(
        store.release(&k, first.token).await,
        "release(released) again",
    );
}

/// A claim whose kind differs from the record's is `FingerprintMismatch`, on a
/// live or a completed record, and changes nothing.
pub async fn kind_mismatch_is_refused_and_changes_nothing<T: Setup>(setup: &T, t: Timing) {
    let store = setup.store(SuiteConfig::default()).await;
    let k = key("kind");
    let lease = acquired(claim(&store, &k, &options(t, 4)).await);
    let video = ClaimOptions::new(Kind::parse("video").unwrap());
    let before = record(&store, &k).await;
    let refused = store.claim_or_get(&k, &video).await;
    assert!(
        matches!(refused, Err(Error::FingerprintMismatch { .. })),
        "expected FingerprintMismatch, got {refused:?}"
    );
    assert_eq!(
        snapshot(&record(&store, &k).await),
        snapshot(&before),
        "unchanged"
    );
    store
        .complete(&k, lease.token, json("x"))
        .await
        .expect("complete");
    let refused = store.claim_or_get(&k, &video).await;
    assert!(
        matches!(refused, Err(Error::FingerprintMismatch { .. })),
        "also on a completed record, got {refused:?}"
    );
}

/// A claim whose fingerprint differs from the record's is
/// `FingerprintMismatch` and changes nothing; a fingerprint absent on either
/// side is not a mismatch.
pub async fn fingerprint_mismatch_is_refused_and_changes_nothing<T: Setup>(setup: &T, t: Timing) {
    let store = setup.store(SuiteConfig::default()).await;
    let k = key("fingerprint");
    let a = options(t, 4).with_fingerprint(Fingerprint::parse("fp-a").unwrap());
    let b = options(t, 4).with_fingerprint(Fingerprint::parse("fp-b").unwrap());
    let lease = acquired(claim(&store, &k, &a).await);
    let before = record(&store, &k).await;
    let refused = store.claim_or_get(&k, &b).await;
    assert!(
        matches!(refused, Err(Error::FingerprintMismatch { .. })),
        "expected FingerprintMismatch, got {refused:?}"
    );
    assert_eq!(
        snapshot(&record(&store, &k).await),
        snapshot(&before),
        "unchanged"
    );
    match claim(&store, &k, &options(t, 4)).await {
        Claim::InFlight(f) => assert_eq!(f.token, lease.token),
        other => panic!("a claim without fingerprint is no mismatch, got {other:?}"),
    }

    let bare = key("fingerprint-bare");
    let _ = acquired(claim(&store, &bare, &options(t, 4)).await);
    assert!(
        matches!(claim(&store, &bare, &a).await, Claim::InFlight(_)),
        "a record without fingerprint accepts any"
    );
}

/// After `delete`, the key is gone and a new claim gets a strictly greater
/// token, attempt 1.
pub async fn delete_then_claim_gets_a_higher_token<T: Setup>(setup: &T, t: Timing) {
    let store = setup.store(SuiteConfig::default()).await;
    let k = key("delete");
    let first = acquired(claim(&store, &k, &options(t, 4)).await);
    store
        .complete(&k, first.token, json("old"))
        .await
        .expect("complete");
    assert!(
        store.delete(&k).await.expect("delete"),
        "a record was there"
    );
    assert!(store.get(&k).await.expect("get").is_none(), "gone");
    let second = acquired(claim(&store, &k, &options(t, 4)).await);
    assert!(second.token > first.token, "tokens are never reused");
    assert_eq!(second.attempt, 1, "a new record");
    assert_lease_lost(
        store.complete(&k, first.token, json("old")).await,
        "the deleted record's token",
    );
}

/// `delete`, `get` and `wait` on a key with no record: false, none, none.
pub async fn delete_and_get_of_a_missing_key<T: Setup>(setup: &T, t: Timing) {
    let store = setup.store(SuiteConfig::default()).await;
    let k = key("nothing");
    assert!(!store.delete(&k).await.expect("delete"), "nothing deleted");
    assert!(store.get(&k).await.expect("get").is_none(), "no record");
    assert!(
        store.wait(&k, t.units(1)).await.expect("wait").is_none(),
        "no record"
    );
}

/// A record past its retention is forgotten: `get` sees nothing and a claim
/// starts a new record with a greater token.
pub async fn retention_expiry_forgets_the_record<T: Setup>(setup: &T, t: Timing) {
    let store = setup
        .store(SuiteConfig {
            retention: t.units(2),
        })
        .await;
    let k = key("retention");
    let first = acquired(claim(&store, &k, &options(t, 4)).await);
    let done = store
        .complete(&k, first.token, json("v"))
        .await
        .expect("complete");
    let expires = done.expires_at.expect("a retention instant");
    let completed = done.completed_at.expect("completed_at");
    assert!(
        t.about(
            (expires - completed).to_std().unwrap_or_default(),
            t.units(2)
        ),
        "expires_at = completed_at + retention"
    );
    assert!(store.get(&k).await.expect("get").is_some(), "kept for now");
    t.sleep(3).await;
    assert!(
        store.get(&k).await.expect("get").is_none(),
        "forgotten after retention"
    );
    let second = acquired(claim(&store, &k, &options(t, 4)).await);
    assert_eq!(second.attempt, 1, "a new record");
    assert!(second.token > first.token, "a greater token");
}

/// `sweep` deletes records past retention from storage, counting them, and
/// keeps the others; storage that forgets them by itself
/// ([`Expiry::ByStorage`]) leaves it nothing to count, and a store whose
/// sweeping happens elsewhere ([`Expiry::SweptElsewhere`]) removes nothing.
pub async fn sweep_removes_only_expired_records<T: Setup + RawStorage>(setup: &T, t: Timing) {
    let store = setup
        .store(SuiteConfig {
            retention: t.units(4),
        })
        .await;
    let old = key("sweep-old");
    let young = key("sweep-young");
    let live = key("sweep-live");
    let lease = acquired(claim(&store, &old, &options(t, 4)).await);
    store
        .complete(&old, lease.token, json("old"))
        .await
        .expect("complete old");
    t.sleep(2).await;
    let lease = acquired(claim(&store, &young, &options(t, 4)).await);
    store
        .complete(&young, lease.token, json("young"))
        .await
        .expect("complete young");
    let _ = acquired(claim(&store, &live, &options(t, 10)).await);
    t.sleep(3).await;
    assert!(
        store.get(&old).await.expect("get").is_none(),
        "old is past retention"
    );
    // Whether storage holds `old` before the sweep, what the sweep counts,
    // and whether storage holds `old` after it.
    let (held_before, swept_count, held_after) = match setup.expiry() {
        Expiry::Swept => (true, 1, false),
        Expiry::ByStorage => (false, 0, false),
        Expiry::SweptElsewhere => (true, 0, true),
    };
    assert_eq!(
        setup.raw_record_exists(&store, &old).await,
        held_before,
        "whether storage holds the record past retention before the sweep ({:?})",
        setup.expiry()
    );
    let swept = store.sweep().await.expect("sweep");
    assert_eq!(
        swept,
        swept_count,
        "sweep counts the records it removed ({:?})",
        setup.expiry()
    );
    assert_eq!(
        setup.raw_record_exists(&store, &old).await,
        held_after,
        "whether storage holds the record past retention after the sweep ({:?})",
        setup.expiry()
    );
    for kept in [&young, &live] {
        assert!(
            setup.raw_record_exists(&store, kept).await,
            "{kept} is still in storage"
        );
    }
    assert_eq!(
        record(&store, &young).await.result,
        Some(json("young")),
        "young is kept"
    );
    assert!(!record(&store, &live).await.lease_expired(), "live is kept");
    assert_eq!(
        store.sweep().await.expect("second sweep"),
        0,
        "nothing is left to sweep"
    );
}

/// A `wait(key, timeout)` running in its own task.
struct Waiter {
    /// Yields the record and when `wait` returned.
    handle: tokio::task::JoinHandle<(Option<Record>, Instant)>,
    /// Set once the store's `wait` future has been polled and answered
    /// `Pending`: the store had its chance to look and subscribe, and chose
    /// to wait.
    pending: Arc<std::sync::atomic::AtomicBool>,
}

/// Spawns `wait(key, timeout)`.
fn spawn_wait<S: RequestStore>(store: &Arc<S>, k: &RequestKey, timeout: Duration) -> Waiter {
    use std::future::Future as _;
    use std::sync::atomic::{AtomicBool, Ordering};

    let store = Arc::clone(store);
    let k = k.clone();
    let pending = Arc::new(AtomicBool::new(false));
    let seen = Arc::clone(&pending);
    let handle = tokio::spawn(async move {
        let mut wait = std::pin::pin!(store.wait(&k, timeout));
        let record = std::future::poll_fn(|cx| {
            let poll = wait.as_mut().poll(cx);
            if poll.is_pending() {
                seen.store(true, Ordering::SeqCst);
            }
            poll
        })
        .await
        .expect("wait");
        (record, Instant::now())
    });
    Waiter { handle, pending }
}

/// Claims `name`, holds a `wait` on it, and applies `change` only once the
/// waiter is provably pending; checks that it returned at the change, not
/// at its timeout, and returns what it got.
///
/// No store-agnostic way shows that a waiter has subscribed to a store's
/// wake-ups (a Postgres LISTEN, a Redis subscription, an in-process
/// channel are each private to their store). So instead of trusting a
/// sleep, the case proves what can be proved: the store's `wait` future
/// was polled and answered `Pending` (it looked, found the lease live, and
/// chose to wait), and had not returned when the change was made. A
/// correct store then wakes it within `slack` of the change, whether it
/// subscribed before the change or looked again after; a store that
/// missed the wake-up returns at the 20-unit timeout and fails. One more
/// unit between the proof and the change lets a networked backend finish
/// subscribing, so that the push path is what is exercised.
async fn wait_across<S: RequestStore>(
    store: S,
    name: &str,
    t: Timing,
    change: impl AsyncFnOnce(&S, &RequestKey, Token),
) -> Option<Record> {
    use std::sync::atomic::Ordering;

    let store = Arc::new(store);
    let k = key(name);
    let lease = acquired(claim(&*store, &k, &options(t, 20)).await);
    let waiter = spawn_wait(&store, &k, t.units(20));
    let proven_by = Instant::now() + t.units(10);
    while !waiter.pending.load(Ordering::SeqCst) {
        assert!(
            !waiter.handle.is_finished(),
            "wait returned before the change, on a live lease"
        );
        assert!(
            Instant::now() < proven_by,
            "the waiter was never pending within 10 units"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    t.sleep(1).await;
    assert!(
        !waiter.handle.is_finished(),
        "wait returned before the change, on a live lease"
    );
    change(&*store, &k, lease.token).await;
    let changed_at = Instant::now();
    let (record, woke_at) = waiter.handle.await.expect("waiter task");
    let late = woke_at.saturating_duration_since(changed_at);
    assert!(
        late <= t.slack + Duration::from_millis(5),
        "the waiter woke {late:?} after the change (its timeout was 20 units): it missed the wake-up"
    );
    record
}

/// `wait` returns with the completed record as soon as the job completes.
pub async fn wait_returns_on_complete<T: Setup>(setup: &T, t: Timing) {
    let store = setup.store(SuiteConfig::default()).await;
    let record = wait_across(store, "wait-complete", t, async |s, k, token| {
        s.complete(k, token, json("done")).await.expect("complete");
    })
    .await
    .expect("a record");
    assert_eq!(record.state, RecordState::Completed);
    assert_eq!(record.result, Some(json("done")));
}

/// `wait` returns with the failed record as soon as the job fails.
pub async fn wait_returns_on_fail<T: Setup>(setup: &T, t: Timing) {
    let store = setup.store(SuiteConfig::default()).await;
    let record = wait_across(store, "wait-fail", t, async |s, k, token| {
        s.fail(k, token, &JobError::permanent("boom"))
            .await
            .expect("fail");
    })
    .await
    .expect("a record");
    assert_eq!(record.state, RecordState::Failed);
    assert_eq!(record.error, Some(JobError::permanent("boom")));
}

/// `wait` returns when the lease expires, so the waiter can take over.
pub async fn wait_returns_on_lease_expiry<T: Setup>(setup: &T, t: Timing) {
    let store = setup.store(SuiteConfig::default()).await;
    let k = key("wait-expiry");
    let lease = acquired(claim(&store, &k, &options(t, 2)).await);
    let started = Instant::now();
    let record = store
        .wait(&k, t.units(20))
        .await
        .expect("wait")
        .expect("a record");
    let waited = started.elapsed();
    assert!(record.lease_expired(), "returned because the lease expired");
    assert!(
        waited + t.slack >= lease.remaining && waited <= lease.remaining + t.slack * 2,
        "returned at the lease's end: waited {waited:?}, lease had {:?}",
        lease.remaining
    );
    assert!(
        acquired(claim(&store, &k, &options(t, 2)).await).takeover,
        "the waiter can take over"
    );
}

/// `wait` returns as soon as the lease is released.
pub async fn wait_returns_on_release<T: Setup>(setup: &T, t: Timing) {
    let store = setup.store(SuiteConfig::default()).await;
    let record = wait_across(store, "wait-release", t, async |s, k, token| {
        s.release(k, token).await.expect("release");
    })
    .await
    .expect("a record");
    assert!(record.lease_expired(), "the released lease is over");
}

/// `wait` returns with no record as soon as the record is deleted.
pub async fn wait_returns_on_delete<T: Setup>(setup: &T, t: Timing) {
    let store = setup.store(SuiteConfig::default()).await;
    let record = wait_across(store, "wait-delete", t, async |s, k, _token| {
        assert!(s.delete(k).await.expect("delete"), "deleted");
    })
    .await;
    assert!(record.is_none(), "deleted: no record, got {record:?}");
}

/// `wait` returns the record as it is when the timeout passes.
pub async fn wait_times_out<T: Setup>(setup: &T, t: Timing) {
    let store = setup.store(SuiteConfig::default()).await;
    let k = key("wait-timeout");
    let _ = acquired(claim(&store, &k, &options(t, 20)).await);
    let started = Instant::now();
    let record = store
        .wait(&k, t.units(1))
        .await
        .expect("wait")
        .expect("a record");
    let waited = started.elapsed();
    assert_eq!(record.state, RecordState::Processing, "still processing");
    assert!(!record.lease_expired(), "the lease is still live");
    assert!(
        waited + t.slack >= t.units(1) && waited <= t.units(1) + t.slack * 2,
        "waited {waited:?} for a 1-unit timeout"
    );
}

/// `wait` returns at once when there is nothing to wait for.
pub async fn wait_returns_at_once_when_nothing_to_wait_for<T: Setup>(setup: &T, t: Timing) {
    let store = setup.store(SuiteConfig::default()).await;
    let k = key("wait-done");
    let lease = acquired(claim(&store, &k, &options(t, 20)).await);
    store
        .complete(&k, lease.token, json("v"))
        .await
        .expect("complete");
    let started = Instant::now();
    let record = store.wait(&k, t.units(20)).await.expect("wait");
    assert_eq!(
        record.map(|r| r.state),
        Some(RecordState::Completed),
        "completed"
    );
    assert!(
        started.elapsed() <= t.slack,
        "a terminal record is returned at once"
    );
    let started = Instant::now();
    assert!(
        store
            .wait(&key("wait-none"), t.units(20))
            .await
            .expect("wait")
            .is_none()
    );
    assert!(started.elapsed() <= t.slack, "no record: returned at once");
}

/// §5.5: of N concurrent claims on a fresh key exactly one is `Acquired`; the
/// others see its token in flight.
pub async fn concurrent_fresh_claims_acquire_once<T: Setup>(setup: &T, t: Timing) {
    let store = Arc::new(setup.store(SuiteConfig::default()).await);
    let k = key("herd");
    let claims: Vec<_> = (0..64)
        .map(|i| {
            let store = Arc::clone(&store);
            let k = k.clone();
            let o = options(t, 20).with_owner(Owner::parse(format!("w{i}")).unwrap());
            tokio::spawn(async move { store.claim_or_get(&k, &o).await })
        })
        .collect();
    let mut acquired = Vec::new();
    let mut in_flight = Vec::new();
    for handle in claims {
        match handle.await.expect("claim task").expect("claim") {
            Claim::Acquired(lease) => acquired.push(lease.token),
            Claim::InFlight(f) => in_flight.push(f.token),
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    assert_eq!(acquired.len(), 1, "exactly one Acquired, got {acquired:?}");
    assert!(
        in_flight.iter().all(|&t| t == acquired[0]),
        "every other claim sees the winner's token"
    );
}

/// §5.2: every token granted for a key is greater than all before it, through
/// takeover, release, retry, completion and delete.
pub async fn tokens_strictly_increase_across_the_lifecycle<T: Setup>(setup: &T, t: Timing) {
    let store = setup.store(SuiteConfig::default()).await;
    let k = key("tokens");
    let o = options(t, 2).with_max_attempts(10).unwrap();
    let mut tokens = Vec::new();
    let lease = acquired(claim(&store, &k, &o).await);
    tokens.push(lease.token);
    t.sleep(3).await;
    let lease = acquired(claim(&store, &k, &o).await);
    tokens.push(lease.token);
    store.release(&k, lease.token).await.expect("release");
    let lease = acquired(claim(&store, &k, &o).await);
    tokens.push(lease.token);
    store
        .fail(&k, lease.token, &JobError::retryable("again"))
        .await
        .expect("fail");
    tokio::time::sleep(DEFAULT_RETRY_BACKOFF + t.slack).await;
    let lease = acquired(claim(&store, &k, &o).await);
    tokens.push(lease.token);
    store
        .complete(&k, lease.token, json("v"))
        .await
        .expect("complete");
    store.delete(&k).await.expect("delete");
    let lease = acquired(claim(&store, &k, &o).await);
    tokens.push(lease.token);
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "tokens strictly increase: {tokens:?}"
    );
}

/// §5.4: once completed, every reader — claims, gets and waits, concurrent —
/// sees the same result.
pub async fn completed_result_is_the_same_for_every_reader<T: Setup>(setup: &T, t: Timing) {
    let store = Arc::new(setup.store(SuiteConfig::default()).await);
    let k = key("readers");
    let lease = acquired(claim(&*store, &k, &options(t, 4)).await);
    let result = json("the one result");
    store
        .complete(&k, lease.token, result.clone())
        .await
        .expect("complete");
    let readers: Vec<_> = (0..48)
        .map(|i| {
            let store = Arc::clone(&store);
            let k = k.clone();
            tokio::spawn(async move {
                match i % 3 {
                    0 => match store.claim_or_get(&k, &options(t, 4)).await.expect("claim") {
                        Claim::Completed(c) => Some(c.result),
                        _ => None,
                    },
                    1 => store.get(&k).await.expect("get").and_then(|r| r.result),
                    _ => store
                        .wait(&k, t.units(1))
                        .await
                        .expect("wait")
                        .and_then(|r| r.result),
                }
            })
        })
        .collect();
    for reader in readers {
        assert_eq!(
            reader.await.expect("reader"),
            Some(result.clone()),
            "every reader sees the result"
        );
    }
}
