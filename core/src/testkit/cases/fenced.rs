//! Fencing (docs/protocol.md §4): stale tokens and missing keys are
//! `LeaseLost`; `complete` and `fail` are idempotent for their own token.

use super::*;

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
