//! Concurrent histories: many tasks on a multi-thread runtime claim,
//! complete, fail, release, crash, renew, read and wait on a few keys; the
//! recorded history must show docs/protocol.md §5's guarantees.
//!
//! Every call is stamped with two numbers from one global atomic sequence:
//! one taken just before the call, one just after it returned, and recorded
//! into a [`History`], which [`history::check`] checks key by key. A
//! response stamped before another call's invocation stamp certainly
//! happened before that call took effect, whatever the scheduling, so the
//! checks hold on any store and any machine. Every input is valid and every
//! call is answered.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};

use super::history::{self, Answer, Call, History, Op};
use super::{Setup, SuiteConfig};
use crate::{ClaimOptions, JobError, Kind, Owner, RecordState, RequestKey, RequestStore, Token};

/// How [`check_concurrent_history`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConcurrencyConfig {
    /// How many random histories to run (each on a fresh store).
    pub cases: u32,
    /// Concurrent tasks per history.
    pub tasks: usize,
    /// Keys the tasks share.
    pub keys: usize,
    /// Steps each task runs.
    pub ops_per_task: usize,
    /// The lease every claim asks for; crashed and slow workers lose theirs
    /// after it.
    pub lease_ttl: Duration,
}

impl Default for ConcurrencyConfig {
    /// 8 histories of 16 tasks × 12 steps on 3 keys with 40 ms leases: well
    /// under a second each.
    fn default() -> Self {
        Self {
            cases: 8,
            tasks: 16,
            keys: 3,
            ops_per_task: 12,
            lease_ttl: Duration::from_millis(40),
        }
    }
}

/// Runs random concurrent scripts against stores built by `setup`, each
/// history on a fresh two-worker multi-thread runtime on real time, and
/// checks docs/protocol.md §5's guarantees on the recorded history; panics naming the
/// violated guarantee with the relevant slice of the history.
///
/// A plain function, to be called from a `#[test]` (not `#[tokio::test]`).
/// The store must keep records for at least a few seconds (it is built with
/// an hour of retention) and must not be shared with other tests.
pub fn check_concurrent_history<T: Setup>(setup: T, config: ConcurrencyConfig) {
    assert!(
        config.tasks >= 2 && config.keys >= 1 && config.ops_per_task >= 1,
        "ConcurrencyConfig needs at least 2 tasks, 1 key and 1 step per task: {config:?}"
    );
    assert!(
        config.lease_ttl >= Duration::from_millis(10),
        "ConcurrencyConfig::lease_ttl must be at least 10 ms, got {:?}",
        config.lease_ttl
    );
    let mut runner = TestRunner::new(Config {
        cases: config.cases,
        failure_persistence: None,
        // A history does not replay the same way twice, so shrinking can
        // only help a little; keep it short.
        max_shrink_iters: 16,
        ..Config::default()
    });
    let scripts = proptest::collection::vec(
        proptest::collection::vec(step_strategy(config.keys), config.ops_per_task),
        config.tasks,
    );
    let result = runner.run(&scripts, |scripts| run_case(&setup, &config, scripts));
    match result {
        Ok(()) => {}
        Err(TestError::Fail(reason, _)) => {
            panic!("a concurrent history broke a guarantee of docs/protocol.md §5: {reason}")
        }
        Err(error) => panic!("the concurrent history check could not run: {error}"),
    }
}

/// One step of a task's script.
#[derive(Clone, Copy, Debug)]
enum Step {
    /// Claim `key`; with a lease, do `job`; when in flight, optionally wait
    /// for the holder.
    Claim {
        key: usize,
        job: Job,
        wait_if_in_flight: bool,
    },
    /// Read the record.
    Get { key: usize },
    /// Wait (briefly) for the record to settle.
    Wait { key: usize },
}

/// What a task does with a lease it got.
#[derive(Clone, Copy, Debug)]
struct Job {
    work: Work,
    renew: bool,
    end: End,
}

#[derive(Clone, Copy, Debug)]
enum Work {
    /// Finish at once.
    None,
    /// Work a few milliseconds, well within the lease.
    Short(u64),
    /// Work past the lease's end, so that others may take over.
    Overrun,
}

#[derive(Clone, Copy, Debug)]
enum End {
    Complete,
    FailRetryable,
    FailPermanent,
    /// Drop the lease without a word: it must be taken over after expiry.
    Crash,
    Release,
}

fn step_strategy(keys: usize) -> impl Strategy<Value = Step> {
    // Completions and permanent failures settle a key for good, so they
    // are rarer than the endings that hand the key on to another task.
    let work = prop_oneof![
        2 => Just(Work::None),
        3 => (1..=5u64).prop_map(Work::Short),
        2 => Just(Work::Overrun),
    ];
    let end = prop_oneof![
        2 => Just(End::Complete),
        3 => Just(End::FailRetryable),
        1 => Just(End::FailPermanent),
        3 => Just(End::Crash),
        3 => Just(End::Release),
    ];
    let job = (work, prop::bool::weighted(0.3), end).prop_map(|(work, renew, end)| Job {
        work,
        renew,
        end,
    });
    prop_oneof![
        6 => (0..keys, job, any::<bool>()).prop_map(|(key, job, wait_if_in_flight)| {
            Step::Claim { key, job, wait_if_in_flight }
        }),
        2 => (0..keys).prop_map(|key| Step::Get { key }),
        1 => (0..keys).prop_map(|key| Step::Wait { key }),
    ]
}

fn run_case<T: Setup>(
    setup: &T,
    config: &ConcurrencyConfig,
    scripts: Vec<Vec<Step>>,
) -> Result<(), TestCaseError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| TestCaseError::fail(format!("cannot build a tokio runtime: {e}")))?;
    let history = runtime.block_on(async {
        let store = Arc::new(
            setup
                .store(SuiteConfig {
                    retention: Duration::from_secs(3600),
                })
                .await,
        );
        let keys: Arc<[RequestKey]> = (0..config.keys)
            .map(|i| RequestKey::parse(format!("concurrent-{i}")).expect("a valid test key"))
            .collect();
        let clock = Arc::new(AtomicU64::new(0));
        let start = Arc::new(tokio::sync::Barrier::new(scripts.len()));
        let handles: Vec<_> = scripts
            .into_iter()
            .enumerate()
            .map(|(task, script)| {
                let worker = Worker {
                    task,
                    store: Arc::clone(&store),
                    keys: Arc::clone(&keys),
                    clock: Arc::clone(&clock),
                    lease_ttl: config.lease_ttl,
                    history: History::default(),
                };
                let start = Arc::clone(&start);
                tokio::spawn(async move {
                    start.wait().await;
                    worker.run(script).await
                })
            })
            .collect();
        let mut history = History::default();
        for (task, handle) in handles.into_iter().enumerate() {
            match handle.await {
                Ok(mut task) => {
                    history.calls.append(&mut task.calls);
                    history.work.append(&mut task.work);
                }
                Err(e) => return Err(format!("task {task} panicked or was cancelled: {e}")),
            }
        }
        Ok(history)
    });
    let history = history.map_err(TestCaseError::fail)?;
    match history::check(&history).as_slice() {
        [] => Ok(()),
        [first, rest @ ..] => Err(TestCaseError::fail(format!(
            "{first}\n({} more violations)",
            rest.len()
        ))),
    }
}

/// One task: runs its script and records every call.
struct Worker<S> {
    task: usize,
    store: Arc<S>,
    keys: Arc<[RequestKey]>,
    clock: Arc<AtomicU64>,
    lease_ttl: Duration,
    history: History,
}

impl<S: RequestStore> Worker<S> {
    async fn run(mut self, script: Vec<Step>) -> History {
        for step in script {
            match step {
                Step::Claim {
                    key,
                    job,
                    wait_if_in_flight,
                } => self.claim(key, job, wait_if_in_flight).await,
                Step::Get { key } => {
                    let get = |s: Arc<S>, k| async move { Answer::from_record(s.get(&k).await) };
                    self.record(key, Op::Get, get).await;
                }
                Step::Wait { key } => self.wait(key).await,
            }
        }
        self.history
    }

    /// Claims `key`; with a lease, does `job`. When the job is in flight
    /// and `wait_if_in_flight` is set, waits for the holder and claims once
    /// more: the waiters of an expiring lease then race to take it over.
    async fn claim(&mut self, key: usize, job: Job, wait_if_in_flight: bool) {
        let options = ClaimOptions::new(Kind::parse("concurrent").expect("a valid kind"))
            .with_owner(Owner::parse(format!("task-{}", self.task)).expect("a valid owner"))
            .with_lease_ttl(self.lease_ttl)
            .and_then(|o| o.with_max_attempts(1000))
            .and_then(|o| o.with_retry_backoff(Duration::from_millis(5)))
            .expect("claim options within the limits");
        for attempt in 0..2 {
            let options = options.clone();
            let claim = |s: Arc<S>, k| async move {
                s.claim_or_get(&k, &options)
                    .await
                    .map_or_else(Answer::from_error, Answer::from_claim)
            };
            match self.record(key, Op::Claim, claim).await {
                Answer::Acquired(lease) => {
                    let token = Token::new(lease.token).expect("a granted token is valid");
                    return self.work(key, token, job).await;
                }
                Answer::Record(Some(seen))
                    if seen.state == RecordState::Processing
                        && wait_if_in_flight
                        && attempt == 0 =>
                {
                    self.wait(key).await;
                }
                _ => return,
            }
        }
    }

    async fn work(&mut self, key: usize, token: Token, job: Job) {
        self.history.work.push(history::Work {
            key: self.keys[key].as_str().to_owned(),
            client: format!("task {}", self.task),
            token: token.get(),
            started: self.clock.fetch_add(1, Ordering::SeqCst),
        });
        match job.work {
            Work::None => {}
            Work::Short(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
            Work::Overrun => tokio::time::sleep(self.lease_ttl * 3 / 2).await,
        }
        let t = token.get();
        if job.renew {
            let renew = |s: Arc<S>, k| async move {
                s.renew(&k, token, None)
                    .await
                    .map_or_else(Answer::from_error, |r| Answer::Renewed(r.expires_at))
            };
            self.record(key, Op::Renew(t), renew).await;
        }
        let done = |done: Result<_, _>| Answer::from_record(done.map(Some));
        match job.end {
            End::Crash => {}
            End::Complete => {
                // JSON text, so that the harness runs over the HTTP API too.
                let result = Bytes::from(format!("\"task {} token {token}\"", self.task));
                let op = Op::Complete(t, result.clone());
                let complete =
                    |s: Arc<S>, k| async move { done(s.complete(&k, token, result).await) };
                self.record(key, op, complete).await;
            }
            End::FailRetryable | End::FailPermanent => {
                let retryable = matches!(job.end, End::FailRetryable);
                let error = JobError::new(format!("task {} gave up", self.task), retryable);
                let fail = |s: Arc<S>, k| async move { done(s.fail(&k, token, &error).await) };
                self.record(key, Op::Fail(t), fail).await;
            }
            End::Release => {
                let release = |s: Arc<S>, k| async move { done(s.release(&k, token).await) };
                self.record(key, Op::Release(t), release).await;
            }
        }
    }

    async fn wait(&mut self, key: usize) {
        let timeout = self.lease_ttl;
        let wait = |s: Arc<S>, k| async move { Answer::from_record(s.wait(&k, timeout).await) };
        self.record(key, Op::Wait, wait).await;
    }

    /// Makes the call `op` on `key` (`call` gets the store and the key),
    /// stamping it just before and just after, and keeps it.
    async fn record<F: Future<Output = Answer>>(
        &mut self,
        key: usize,
        op: Op,
        call: impl FnOnce(Arc<S>, RequestKey) -> F,
    ) -> Answer {
        let call = call(Arc::clone(&self.store), self.keys[key].clone());
        let invoked = self.clock.fetch_add(1, Ordering::SeqCst);
        let answer = call.await;
        let at = self.clock.fetch_add(1, Ordering::SeqCst);
        self.history.calls.push(Call {
            key: self.keys[key].as_str().to_owned(),
            client: format!("task {}", self.task),
            op,
            invoked,
            answer: Some((at, answer.clone())),
            raw: None,
        });
        answer
    }
}
