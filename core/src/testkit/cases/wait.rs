//! Waiting (docs/protocol.md §4): `wait` returns on every change that ends
//! the wait, and on its timeout.

use super::*;

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
