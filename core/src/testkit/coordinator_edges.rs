//! Cases for the [`Coordinator`] at the edges a fleet meets: a lease lost
//! mid-job, a job that blocks its thread or never ends, callers that leave
//! after the job returned, an outage while the result is stored, retryable
//! failures waited out, callers with differing options, and callers outside
//! a Tokio runtime.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use bytes::Bytes;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::cases::{acquired, claim, json, key, options};
use super::faults::Faulty;
use super::{Setup, SuiteConfig, Timing};
use crate::{
    Claim, Coordinator, DEFAULT_RETRY_BACKOFF, Error, Fingerprint, JobError, Owner, RecordState,
    RequestKey, RequestStore, RunError, RunOptions, Source,
};

/// Sets its flag when dropped: proves a job's future was dropped (aborted),
/// not left running.
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Waits (bounded) until `flag` is set: an aborted task is dropped the next
/// time the runtime gets to it, not at the `abort` call.
async fn eventually_set(flag: &AtomicBool, t: Timing, what: &str) {
    let deadline = Instant::now() + t.units(4) + t.slack * 4;
    while !flag.load(Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(t.units(1) / 10).await;
    }
}

/// Waits until `key`'s record is settled (terminal or its lease over), at
/// most `units`.
async fn settled<S: RequestStore + ?Sized>(
    store: &S,
    key: &RequestKey,
    t: Timing,
    units: u32,
) -> crate::Record {
    let deadline = Instant::now() + t.units(units) + t.slack * 2;
    loop {
        let record = store
            .get(key)
            .await
            .expect("get")
            .expect("the record exists");
        if record.is_settled() {
            return record;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "record never settled: {record:?}");
        store.wait(key, left).await.expect("wait");
    }
}

/// A job that signals `started`, then runs until aborted, and sets
/// `dropped` when its future is dropped.
fn hung_job(
    started: &Arc<Notify>,
    dropped: &Arc<AtomicBool>,
) -> impl FnOnce(crate::JobContext) -> futures::future::BoxFuture<'static, Result<Bytes, JobError>>
+ Send
+ 'static {
    let started = Arc::clone(started);
    let guard = DropFlag(Arc::clone(dropped));
    move |_ctx| {
        Box::pin(async move {
            let _guard = guard;
            started.notify_one();
            std::future::pending::<()>().await;
            Ok(Bytes::new())
        })
    }
}

/// The key is deleted while the job runs: the renewal finds the lease lost,
/// the job is stopped, and the call, granted the key again, cannot run a
/// `FnOnce` job twice — it says so with `LeaseLostMidJob` (never a store
/// `LeaseLost` for a token it never held) and gives the new lease back.
pub async fn lease_deleted_mid_job_stops_the_job_and_says_so<T: Setup>(setup: &T, t: Timing) {
    let store = Arc::new(setup.store(SuiteConfig::default()).await);
    let coordinator = Coordinator::new(Arc::clone(&store));
    let k = key("deleted-mid-job");
    let started = Arc::new(Notify::new());
    let dropped = Arc::new(AtomicBool::new(false));
    let run = {
        let k = k.clone();
        let job = hung_job(&started, &dropped);
        tokio::spawn(async move { coordinator.get_or_run(k, options(t, 3), job).await })
    };
    started.notified().await;
    assert!(
        store.delete(&k).await.expect("delete"),
        "the record existed"
    );
    let deleted_at = Instant::now();
    let result = run.await.expect("caller task");
    assert!(
        matches!(&result, Err(RunError::LeaseLostMidJob { key }) if *key == k),
        "expected LeaseLostMidJob, got {result:?}"
    );
    assert!(
        deleted_at.elapsed() <= t.units(2) + t.slack * 2,
        "noticed within a renewal period: {:?}",
        deleted_at.elapsed()
    );
    eventually_set(&dropped, t, "the job's future was dropped").await;
    let next = acquired(claim(&*store, &k, &options(t, 3)).await);
    assert_eq!(
        next.attempt, 1,
        "the lease it was granted again was released"
    );
    assert!(!next.takeover, "released, not expired");
}

/// With a job that can run again, a lease lost mid-job leads to a second run
/// under the new lease, whose result every caller gets.
pub async fn repeatable_job_runs_again_after_its_lease_is_deleted<T: Setup>(setup: &T, t: Timing) {
    let store = Arc::new(setup.store(SuiteConfig::default()).await);
    let coordinator = Coordinator::new(Arc::clone(&store));
    let k = key("deleted-then-rerun");
    let runs = Arc::new(AtomicUsize::new(0));
    let started = Arc::new(Notify::new());
    let run = {
        let k = k.clone();
        let runs = Arc::clone(&runs);
        let started = Arc::clone(&started);
        tokio::spawn(async move {
            coordinator
                .get_or_run_repeatable(k, options(t, 3), move |_ctx| {
                    let run = runs.fetch_add(1, Ordering::SeqCst) + 1;
                    let started = Arc::clone(&started);
                    async move {
                        if run == 1 {
                            started.notify_one();
                            std::future::pending::<()>().await;
                        }
                        Ok(json(&format!("run {run}")))
                    }
                })
                .await
        })
    };
    started.notified().await;
    store.delete(&k).await.expect("delete");
    let outcome = run.await.expect("caller task").expect("the second run");
    assert_eq!(outcome.source, Source::Ran);
    assert_eq!(outcome.result, json("run 2"), "the second run's result");
    assert_eq!(runs.load(Ordering::SeqCst), 2, "ran twice");
    let stored = store.get(&k).await.expect("get").expect("record");
    assert_eq!(stored.result, Some(json("run 2")), "stored");
}

/// A job that finished but whose `complete` was refused (the key was deleted
/// just before) keeps its result: the call claims again and stores it under
/// the new lease.
pub async fn finished_result_is_stored_under_a_new_lease<T: Setup>(setup: &T, t: Timing) {
    let store = Arc::new(setup.store(SuiteConfig::default()).await);
    let coordinator = Coordinator::new(Arc::clone(&store));
    let k = key("fenced-complete");
    let first_token = Arc::new(std::sync::Mutex::new(None));
    let job = {
        let store = Arc::clone(&store);
        let k = k.clone();
        let first_token = Arc::clone(&first_token);
        move |ctx: crate::JobContext| async move {
            *first_token.lock().expect("lock") = Some(ctx.token());
            store.delete(&k).await.expect("delete");
            Ok(json("finished"))
        }
    };
    let outcome = coordinator
        .get_or_run(k.clone(), options(t, 4), job)
        .await
        .expect("the finished result is stored");
    let first = first_token.lock().expect("lock").expect("the job ran");
    assert_eq!(outcome.source, Source::Ran);
    assert_eq!(outcome.result, json("finished"));
    assert!(outcome.token > first, "stored under a newer lease");
    let stored = store.get(&k).await.expect("get").expect("record");
    assert_eq!(stored.state, RecordState::Completed);
    assert_eq!(stored.result, Some(json("finished")));
    assert_eq!(stored.token, outcome.token);
}

/// A job that blocks its thread for longer than its lease keeps the lease:
/// renewals run on a task of their own (multi-thread runtimes only; on a
/// paused, current-thread clock a blocked thread stops everything).
pub async fn blocking_job_keeps_its_lease<T: Setup>(setup: &T, t: Timing) {
    let store = Arc::new(setup.store(SuiteConfig::default()).await);
    let coordinator = Coordinator::new(Arc::clone(&store));
    let k = key("blocking-job");
    // A flag, not a `Notify`: a wake-up sent from the job's thread just
    // before it blocks would park this case on that very thread (tokio runs
    // a task woken from a worker on that worker next), and prove nothing.
    let started = Arc::new(AtomicBool::new(false));
    let run = {
        let k = k.clone();
        let started = Arc::clone(&started);
        let block = t.units(6);
        tokio::spawn(async move {
            coordinator
                .get_or_run(k, options(t, 3), move |_ctx| async move {
                    started.store(true, Ordering::SeqCst);
                    // A synchronous SDK call, say.
                    std::thread::sleep(block);
                    Ok(json("blocked"))
                })
                .await
        })
    };
    eventually_set(&started, t, "the job started").await;
    t.sleep(4).await;
    match claim(&*store, &k, &options(t, 3)).await {
        Claim::InFlight(f) => assert_eq!(f.attempt, 1, "no takeover"),
        other => panic!("the blocked job's lease should be live, got {other:?}"),
    }
    let outcome = run.await.expect("caller task").expect("get_or_run");
    assert_eq!(outcome.attempt, 1, "completed on its first lease");
    assert_eq!(outcome.result, json("blocked"));
}

/// When the last caller leaves after the job returned but before `complete`
/// was acknowledged, the result is still stored (the completion is shielded
/// from the cancellation).
pub async fn result_is_stored_when_callers_leave_during_complete<T: Setup>(setup: &T, t: Timing) {
    let store = Arc::new(Faulty::new(setup.store(SuiteConfig::default()).await));
    let gate = store.hold_completes();
    let coordinator = Coordinator::new(Arc::clone(&store));
    let k = key("left-during-complete");
    let caller = {
        let k = k.clone();
        tokio::spawn(async move {
            coordinator
                .get_or_run(k, options(t, 4), |_| async { Ok(json("kept")) })
                .await
        })
    };
    store.complete_called().await;
    caller.abort();
    let _ = caller.await;
    gate.add_permits(1);
    let record = settled(&*store, &k, t, 4).await;
    assert_eq!(
        record.state,
        RecordState::Completed,
        "the completion survived the cancellation: {record:?}"
    );
    assert_eq!(record.result, Some(json("kept")));
}

/// A job past its maximum run time is aborted and recorded as a retryable
/// failure, so the key is free for the fleet after the backoff.
pub async fn max_run_time_aborts_a_hung_job<T: Setup>(setup: &T, t: Timing) {
    let store = Arc::new(setup.store(SuiteConfig::default()).await);
    let coordinator = Coordinator::new(Arc::clone(&store));
    let k = key("hung");
    let started = Arc::new(Notify::new());
    let dropped = Arc::new(AtomicBool::new(false));
    let began = Instant::now();
    let result = coordinator
        .get_or_run(
            k.clone(),
            RunOptions::new(options(t, 3)).with_max_run_time(t.units(2)),
            hung_job(&started, &dropped),
        )
        .await;
    let took = began.elapsed();
    match &result {
        Err(RunError::Failed {
            error,
            retry_after,
            attempt,
        }) => {
            assert!(error.is_retryable(), "retryable: {error:?}");
            assert!(
                error.message().contains("maximum run time"),
                "says why: {:?}",
                error.message()
            );
            assert!(retry_after.is_some(), "a retry will be allowed");
            assert_eq!(*attempt, 1);
        }
        other => panic!("expected RunError::Failed, got {other:?}"),
    }
    assert!(
        took + t.slack >= t.units(2) && took <= t.units(2) + t.slack * 3,
        "aborted at its maximum run time: {took:?}"
    );
    eventually_set(&dropped, t, "the hung job's future was dropped").await;
    let stored = store.get(&k).await.expect("get").expect("record");
    assert_eq!(stored.state, RecordState::Failed, "the failure is stored");
    tokio::time::sleep(DEFAULT_RETRY_BACKOFF + t.slack).await;
    let retry = acquired(claim(&*store, &k, &options(t, 3)).await);
    assert_eq!(retry.attempt, 2, "the fleet may retry the key");
}

/// A renewal refused for a reason retrying cannot change ends the run
/// (instead of renewing forever): the job is stopped, the caller gets the
/// store's error, and the lease is released.
pub async fn renewal_refused_for_good_ends_the_run<T: Setup>(setup: &T, t: Timing) {
    let store = Arc::new(Faulty::new(setup.store(SuiteConfig::default()).await));
    store.refuse_renewals(Error::InvalidInput {
        field: "lease_ttl",
        reason: "refused by the test".into(),
    });
    let coordinator = Coordinator::new(Arc::clone(&store));
    let k = key("renew-refused");
    let started = Arc::new(Notify::new());
    let dropped = Arc::new(AtomicBool::new(false));
    let result = coordinator
        .get_or_run(k.clone(), options(t, 3), hung_job(&started, &dropped))
        .await;
    assert!(
        matches!(result, Err(RunError::Store(Error::InvalidInput { .. }))),
        "the renewal's error ends the run: {result:?}"
    );
    eventually_set(&dropped, t, "the job's future was dropped").await;
    let record = settled(&*store, &k, t, 2).await;
    assert!(record.lease_expired(), "released: {record:?}");
    let next = acquired(claim(&*store, &k, &options(t, 3)).await);
    assert!(!next.takeover, "released, so not a takeover");
}

/// An outage while the result is stored is retried; one that outlasts every
/// try returns the store's error and releases the lease, so another worker
/// can run the job at once.
pub async fn store_outage_while_finishing<T: Setup>(setup: &T, t: Timing) {
    let store = Arc::new(Faulty::new(setup.store(SuiteConfig::default()).await));
    let coordinator = Coordinator::new(Arc::clone(&store));
    let k = key("outage-brief");
    store.fail_next_completes(2);
    let outcome = coordinator
        .get_or_run(k.clone(), options(t, 4), |_| async { Ok(json("stored")) })
        .await
        .expect("a brief outage is retried");
    assert_eq!(outcome.result, json("stored"));
    let stored = store.get(&k).await.expect("get").expect("record");
    assert_eq!(
        stored.result,
        Some(json("stored")),
        "stored after the outage"
    );

    let k = key("outage-long");
    store.fail_next_completes(u32::MAX);
    let result = coordinator
        .get_or_run(k.clone(), options(t, 20), |_| async { Ok(json("lost")) })
        .await;
    store.fail_next_completes(0);
    assert!(
        matches!(result, Err(RunError::Store(ref e)) if e.is_retryable()),
        "the outage is the caller's error: {result:?}"
    );
    let record = settled(&*store, &k, t, 4).await;
    assert!(record.lease_expired(), "the lease was released: {record:?}");
}

/// A waiter that sees another worker's retryable failure returns it by
/// default; asked to, it waits out the backoff and runs the job itself.
pub async fn waiter_can_wait_out_a_retryable_failure<T: Setup>(setup: &T, t: Timing) {
    let store = Arc::new(setup.store(SuiteConfig::default()).await);
    let k = key("wait-out");
    let worker = acquired(claim(&*store, &k, &options(t, 8)).await);
    let plain = {
        let coordinator = Coordinator::new(Arc::clone(&store));
        let k = k.clone();
        tokio::spawn(async move {
            coordinator
                .get_or_run(k, options(t, 4), |_| async { Ok(json("plain")) })
                .await
        })
    };
    let patient = {
        let coordinator = Coordinator::new(Arc::clone(&store));
        let k = k.clone();
        tokio::spawn(async move {
            coordinator
                .get_or_run(
                    k,
                    RunOptions::new(options(t, 4)).wait_out_retryable_failures(true),
                    |_| async { Ok(json("patient")) },
                )
                .await
        })
    };
    t.sleep(1).await;
    store
        .fail(&k, worker.token, &JobError::retryable("rate limited"))
        .await
        .expect("the worker's failure");
    let plain = plain.await.expect("task");
    assert!(
        matches!(
            &plain,
            Err(RunError::Failed {
                retry_after: Some(_),
                ..
            })
        ),
        "by default the failure is returned with its retry time: {plain:?}"
    );
    let patient = patient
        .await
        .expect("task")
        .expect("waited out the backoff");
    assert_eq!(patient.source, Source::Ran, "ran the job after the backoff");
    assert_eq!(patient.attempt, 2);
    assert_eq!(patient.result, json("patient"));
}

/// A repeatable job that fails retryably is run again after the backoff
/// when asked to, up to the record's attempts.
pub async fn repeatable_job_waits_out_its_own_failures<T: Setup>(setup: &T, t: Timing) {
    let store = Arc::new(setup.store(SuiteConfig::default()).await);
    let coordinator = Coordinator::new(Arc::clone(&store));
    let runs = Arc::new(AtomicUsize::new(0));
    let job = {
        let runs = Arc::clone(&runs);
        move |_ctx| {
            let run = runs.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                if run < 3 {
                    Err(JobError::retryable(format!("flaky run {run}")))
                } else {
                    Ok(json("third time"))
                }
            }
        }
    };
    let claim_options = options(t, 4).with_max_attempts(3).expect("valid");
    let outcome = coordinator
        .get_or_run_repeatable(
            key("own-failures"),
            RunOptions::new(claim_options.clone()).wait_out_retryable_failures(true),
            job,
        )
        .await
        .expect("the third attempt succeeds");
    assert_eq!(outcome.attempt, 3);
    assert_eq!(outcome.result, json("third time"));
    assert_eq!(runs.load(Ordering::SeqCst), 3);

    let runs = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&runs);
    let result = coordinator
        .get_or_run_repeatable(
            key("always-fails"),
            RunOptions::new(claim_options).wait_out_retryable_failures(true),
            move |_ctx| {
                counter.fetch_add(1, Ordering::SeqCst);
                async { Err(JobError::retryable("down")) }
            },
        )
        .await;
    assert!(
        matches!(
            &result,
            Err(RunError::Failed {
                retry_after: None,
                attempt: 3,
                ..
            })
        ),
        "gives up when the attempts run out: {result:?}"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 3, "one run per attempt");
}

/// Callers with the same kind and fingerprint share the first caller's
/// flight and options (owner, lease); a caller with another fingerprint is
/// never coalesced onto it and gets the store's `FingerprintMismatch`.
pub async fn coalesced_callers_share_the_first_callers_options<T: Setup>(setup: &T, t: Timing) {
    let store = Arc::new(setup.store(SuiteConfig::default()).await);
    let coordinator = Coordinator::new(Arc::clone(&store));
    let k = key("coalesced-options");
    let fingerprint = |f: &str| Fingerprint::parse(f).expect("fingerprint");
    let owner = |o: &str| Owner::parse(o).expect("owner");
    let go = Arc::new(Notify::new());
    let started = Arc::new(Notify::new());
    let first = {
        let coordinator = coordinator.clone();
        let k = k.clone();
        let (go, started) = (Arc::clone(&go), Arc::clone(&started));
        let o = options(t, 4)
            .with_fingerprint(fingerprint("a"))
            .with_owner(owner("first"));
        tokio::spawn(async move {
            coordinator
                .get_or_run(k, o, move |_| async move {
                    started.notify_one();
                    go.notified().await;
                    Ok(json("first's"))
                })
                .await
        })
    };
    started.notified().await;
    let second_ran = Arc::new(AtomicBool::new(false));
    let second = {
        let coordinator = coordinator.clone();
        let k = k.clone();
        let ran = Arc::clone(&second_ran);
        let o = options(t, 8)
            .with_fingerprint(fingerprint("a"))
            .with_owner(owner("second"));
        tokio::spawn(async move {
            coordinator
                .get_or_run(k, o, move |_| async move {
                    ran.store(true, Ordering::SeqCst);
                    Ok(json("second's"))
                })
                .await
        })
    };
    let other = coordinator
        .get_or_run(
            k.clone(),
            options(t, 4).with_fingerprint(fingerprint("b")),
            |_| async { Ok(json("other's")) },
        )
        .await;
    assert!(
        matches!(
            other,
            Err(RunError::Store(Error::FingerprintMismatch { .. }))
        ),
        "another fingerprint is refused, not coalesced: {other:?}"
    );
    let record = store.get(&k).await.expect("get").expect("record");
    assert_eq!(
        record.owner.as_ref().map(Owner::as_str),
        Some("first"),
        "the first caller's owner"
    );
    go.notify_one();
    let first = first.await.expect("task").expect("first");
    let second = second.await.expect("task").expect("second");
    assert_eq!(first.result, json("first's"));
    assert_eq!(second.result, json("first's"), "the shared run's result");
    assert_eq!(second.token, first.token, "one lease");
    assert!(
        !second_ran.load(Ordering::SeqCst),
        "the second job never ran"
    );
}

/// Outside a Tokio runtime, `get_or_run` says so instead of panicking; given
/// a runtime, it works from a plain thread's `block_on`.
pub async fn get_or_run_outside_a_runtime<T: Setup>(setup: &T, t: Timing) {
    let store = Arc::new(setup.store(SuiteConfig::default()).await);
    let bare = Coordinator::new(Arc::clone(&store));
    let given =
        Coordinator::new(Arc::clone(&store)).with_runtime(tokio::runtime::Handle::current());
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let bare = futures::executor::block_on(bare.get_or_run(
            key("no-runtime"),
            options(t, 4),
            |_| async { Ok(json("never")) },
        ));
        let given = futures::executor::block_on(given.get_or_run(
            key("given-runtime"),
            options(t, 4),
            |_| async { Ok(json("from a plain thread")) },
        ));
        let _ = tx.send((bare, given));
    });
    let (bare, given) = rx.await.expect("the thread answered");
    assert!(
        matches!(bare, Err(RunError::NoRuntime)),
        "no runtime is an error, not a panic: {bare:?}"
    );
    let given = given.expect("ran on the given runtime");
    assert_eq!(given.result, json("from a plain thread"));
    assert!(
        store.get(&key("no-runtime")).await.expect("get").is_none(),
        "nothing was claimed without a runtime"
    );
}
