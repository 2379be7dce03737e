//! Cases for the [`Coordinator`] on top of each store: it runs a job once per
//! key, shares the result, takes over dead work, and gives leases back.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use tokio::time::Instant;

use super::cases::{acquired, claim, json, key, options};
use super::{Setup, SuiteConfig, Timing};
use crate::{
    Claim, Coordinator, DEFAULT_RETRY_BACKOFF, JobError, RecordState, RequestStore, RunError,
    Source,
};

/// A job that counts its runs, sleeps `units`, and returns `result`.
fn counted_job(
    runs: &Arc<AtomicUsize>,
    t: Timing,
    units: u32,
    result: Bytes,
) -> impl FnOnce(crate::JobContext) -> futures::future::BoxFuture<'static, Result<Bytes, JobError>>
+ Send
+ 'static {
    let runs = Arc::clone(runs);
    move |_ctx| {
        Box::pin(async move {
            runs.fetch_add(1, Ordering::SeqCst);
            t.sleep(units).await;
            Ok(result)
        })
    }
}

/// Starts `n` concurrent `get_or_run` calls for `key` on `coordinator`.
fn herd<S: RequestStore>(
    coordinator: &Coordinator<S>,
    n: usize,
    runs: &Arc<AtomicUsize>,
    t: Timing,
    name: &str,
) -> Vec<tokio::task::JoinHandle<Result<crate::Outcome, RunError>>> {
    (0..n)
        .map(|_| {
            let coordinator = coordinator.clone();
            let job = counted_job(runs, t, 2, json("herd result"));
            let k = key(name);
            tokio::spawn(async move { coordinator.get_or_run(k, options(t, 4), job).await })
        })
        .collect()
}

/// 1,000 concurrent `get_or_run` for one key: the job runs once and every
/// caller gets its result.
pub async fn herd_of_callers_runs_the_job_once<T: Setup>(setup: &T, t: Timing) {
    let store = Arc::new(setup.store(SuiteConfig::default()).await);
    let coordinator = Coordinator::new(store);
    let runs = Arc::new(AtomicUsize::new(0));
    let callers = herd(&coordinator, 1000, &runs, t, "herd");
    for caller in callers {
        let outcome = caller.await.expect("caller task").expect("get_or_run");
        assert_eq!(outcome.result, json("herd result"), "every caller's result");
        assert_eq!(outcome.attempt, 1, "one attempt");
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the job ran exactly once");
}

/// Two coordinators (two processes) on one store: the job runs once; the
/// other side waits through the store and gets the same result.
pub async fn herd_across_two_coordinators_runs_the_job_once<T: Setup>(setup: &T, t: Timing) {
    let store = Arc::new(setup.store(SuiteConfig::default()).await);
    let a = Coordinator::new(Arc::clone(&store));
    let b = Coordinator::new(store);
    let runs = Arc::new(AtomicUsize::new(0));
    let mut callers = herd(&a, 100, &runs, t, "two-herds");
    callers.extend(herd(&b, 100, &runs, t, "two-herds"));
    let mut sources = Vec::new();
    for caller in callers {
        let outcome = caller.await.expect("caller task").expect("get_or_run");
        assert_eq!(outcome.result, json("herd result"));
        sources.push(outcome.source);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the job ran exactly once");
    assert!(
        sources.contains(&Source::Ran) && sources.contains(&Source::Awaited),
        "one side ran, the other waited: {:?}",
        sources.iter().collect::<std::collections::HashSet<_>>()
    );
}

/// A stored result is returned without running the job.
pub async fn cached_result_is_returned_without_running<T: Setup>(setup: &T, t: Timing) {
    let store = Arc::new(setup.store(SuiteConfig::default()).await);
    let coordinator = Coordinator::new(store);
    let runs = Arc::new(AtomicUsize::new(0));
    let first = coordinator
        .get_or_run(
            key("cached"),
            options(t, 4),
            counted_job(&runs, t, 1, json("v1")),
        )
        .await
        .expect("first call");
    assert_eq!(first.source, Source::Ran, "the first call runs the job");
    let second = coordinator
        .get_or_run(
            key("cached"),
            options(t, 4),
            counted_job(&runs, t, 1, json("v2")),
        )
        .await
        .expect("second call");
    assert_eq!(second.source, Source::Cached, "the second call is a hit");
    assert_eq!(second.result, json("v1"), "the stored result");
    assert_eq!(second.token, first.token, "the completing token");
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the job ran once");
}

/// A job's error is stored and returned; a permanent failure is not run again.
pub async fn job_failure_is_recorded_and_returned<T: Setup>(setup: &T, t: Timing) {
    let store = Arc::new(setup.store(SuiteConfig::default()).await);
    let coordinator = Coordinator::new(Arc::clone(&store));
    let runs = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&runs);
    let failed = coordinator
        .get_or_run(key("job-fails"), options(t, 4), move |_| async move {
            counter.fetch_add(1, Ordering::SeqCst);
            Err(JobError::permanent("prompt refused"))
        })
        .await;
    match failed {
        Err(RunError::Failed {
            error, retry_after, ..
        }) => {
            assert_eq!(error, JobError::permanent("prompt refused"));
            assert_eq!(retry_after, None, "a permanent failure has no retry");
        }
        other => panic!("expected RunError::Failed, got {other:?}"),
    }
    let record = store
        .get(&key("job-fails"))
        .await
        .expect("get")
        .expect("record");
    assert_eq!(record.state, RecordState::Failed, "the failure is stored");
    let again = coordinator
        .get_or_run(
            key("job-fails"),
            options(t, 4),
            counted_job(&runs, t, 1, json("x")),
        )
        .await;
    assert!(
        matches!(again, Err(RunError::Failed { .. })),
        "still failed: {again:?}"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1, "not run again");
}

fn explode() -> Result<Bytes, JobError> {
    panic!("the model crashed")
}

/// A job that panics is recorded as a retryable failure; after the backoff
/// the next call runs the job again.
pub async fn panicking_job_is_recorded_as_retryable_failure<T: Setup>(setup: &T, t: Timing) {
    let store = Arc::new(setup.store(SuiteConfig::default()).await);
    let coordinator = Coordinator::new(Arc::clone(&store));
    let failed = coordinator
        .get_or_run(key("panics"), options(t, 4), |_| async { explode() })
        .await;
    match failed {
        Err(RunError::Failed {
            error,
            retry_after,
            attempt,
        }) => {
            assert!(error.is_retryable(), "a panic is retryable");
            assert!(
                error.message().contains("the model crashed"),
                "message {:?}",
                error.message()
            );
            assert!(retry_after.is_some(), "a retry will be allowed");
            assert_eq!(attempt, 1);
        }
        other => panic!("expected RunError::Failed, got {other:?}"),
    }
    tokio::time::sleep(DEFAULT_RETRY_BACKOFF + t.slack).await;
    let runs = Arc::new(AtomicUsize::new(0));
    let retried = coordinator
        .get_or_run(
            key("panics"),
            options(t, 4),
            counted_job(&runs, t, 1, json("fixed")),
        )
        .await
        .expect("the retry succeeds");
    assert_eq!(retried.attempt, 2, "the retry is attempt 2");
    assert_eq!(retried.source, Source::Ran);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

/// A worker that died holding the lease (it never completes nor releases)
/// delays the key by at most its lease: the next caller waits, then takes
/// over and runs the job.
pub async fn crashed_worker_is_taken_over_after_its_lease<T: Setup>(setup: &T, t: Timing) {
    let store = Arc::new(setup.store(SuiteConfig::default()).await);
    let k = key("crashed");
    let dead = acquired(claim(&*store, &k, &options(t, 3)).await);
    let started = Instant::now();
    let coordinator = Coordinator::new(Arc::clone(&store));
    let runs = Arc::new(AtomicUsize::new(0));
    let outcome = coordinator
        .get_or_run(
            k.clone(),
            options(t, 4),
            counted_job(&runs, t, 1, json("v")),
        )
        .await
        .expect("takes over");
    let took = started.elapsed();
    assert_eq!(outcome.source, Source::Ran, "ran after the takeover");
    assert_eq!(outcome.attempt, 2, "the takeover is attempt 2");
    assert!(outcome.token > dead.token, "a greater token");
    assert!(
        took + t.slack >= dead.remaining,
        "not before the dead lease expired ({took:?})"
    );
    assert!(
        took <= dead.remaining + t.units(1) + t.slack * 3,
        "at most one lease (+ the 1-unit job) late: took {took:?}"
    );
    let late = store.complete(&k, dead.token, json("zombie")).await;
    assert!(
        matches!(late, Err(crate::Error::LeaseLost { .. })),
        "the dead worker's late complete is refused as LeaseLost: {late:?}"
    );
}

/// A job that runs for several lease lifetimes keeps its lease by renewing:
/// nobody takes over meanwhile.
pub async fn long_job_keeps_its_lease_alive<T: Setup>(setup: &T, t: Timing) {
    let store = Arc::new(setup.store(SuiteConfig::default()).await);
    let coordinator = Coordinator::new(Arc::clone(&store));
    let k = key("long-job");
    let runs = Arc::new(AtomicUsize::new(0));
    let job = counted_job(&runs, t, 10, json("slow"));
    let run = {
        let k = k.clone();
        tokio::spawn(async move { coordinator.get_or_run(k, options(t, 3), job).await })
    };
    for _ in 0..4 {
        t.sleep(2).await;
        match claim(&*store, &k, &options(t, 3)).await {
            Claim::InFlight(f) => assert_eq!(f.attempt, 1, "no takeover happened"),
            Claim::Completed(_) => break,
            other => panic!("the lease should be kept alive, got {other:?}"),
        }
    }
    let outcome = run.await.expect("task").expect("get_or_run");
    assert_eq!(outcome.attempt, 1, "completed on the first lease");
    assert_eq!(outcome.result, json("slow"));
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

/// Dropping every caller's future cancels the job and releases its lease at
/// once: another worker can claim without waiting, on the same attempt.
pub async fn cancellation_releases_the_lease<T: Setup>(setup: &T, t: Timing) {
    let store = Arc::new(setup.store(SuiteConfig::default()).await);
    let coordinator = Coordinator::new(Arc::clone(&store));
    let k = key("cancelled");
    let started = Arc::new(tokio::sync::Notify::new());
    let job_started = Arc::clone(&started);
    let caller = {
        let k = k.clone();
        tokio::spawn(async move {
            coordinator
                .get_or_run(k, options(t, 20), move |_| async move {
                    job_started.notify_one();
                    std::future::pending::<()>().await;
                    Ok(Bytes::new())
                })
                .await
        })
    };
    started.notified().await;
    caller.abort();
    let before = Instant::now();
    let record = store
        .wait(&k, t.units(20))
        .await
        .expect("wait")
        .expect("record");
    assert!(record.lease_expired(), "the lease was released");
    assert!(
        before.elapsed() < t.units(10),
        "released, not expired: waited {:?}",
        before.elapsed()
    );
    let next = acquired(claim(&*store, &k, &options(t, 4)).await);
    assert_eq!(next.attempt, 1, "a release does not use an attempt");
    assert!(!next.takeover, "not a takeover");
}
