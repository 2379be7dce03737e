//! Failures and retries (docs/protocol.md §3): backoff, permanent failures,
//! attempts used up, expired last leases, and releases that use no attempt.

use super::*;

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
