//! Concurrent histories: many tasks on a multi-thread runtime claim,
//! complete, fail, release, crash, renew, read and wait on a few keys; the
//! recorded history must show docs/protocol.md §5's guarantees.
//!
//! Every call is stamped with two numbers from one global atomic sequence:
//! one taken just before the call, one just after it returned. A response
//! stamped before another call's invocation stamp certainly happened before
//! that call took effect, whatever the scheduling. The checks, per key and in
//! this order, rely only on that order — except §5.1, which compares the
//! store's own timestamps — so they hold on any store and any machine:
//!
//! - §5.2: no token is granted twice; every token a response shows was
//!   granted; a granted token is greater than every token any response
//!   showed before the claim was made.
//! - §5.3: a renew, complete, fail or release with token `t` never succeeds
//!   once a response has shown a token greater than `t`.
//! - §5.1 (and §5.5, which all tasks exercise at once on fresh keys): unless
//!   its holder completed, failed or released it, a lease is followed by the
//!   next grant (on the store's clock: its `expires_at − ttl`) only once it
//!   expired, renewals included.
//! - §4: a fenced call is refused only if a later lease was granted (every
//!   task uses a lease for at most one renew and one final call).
//! - §5.4: at most one result is ever accepted, every completed answer shows
//!   exactly it under its token, and no lease is granted after it.
//!
//! No store call may fail otherwise: every input is valid.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};

use super::{Setup, SuiteConfig};
use crate::{
    Claim, ClaimOptions, Error, JobError, Kind, Owner, Record, RecordState, RequestKey,
    RequestStore, Timestamp, Token,
};

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
    let events = runtime.block_on(async {
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
                    events: Vec::new(),
                };
                let start = Arc::clone(&start);
                tokio::spawn(async move {
                    start.wait().await;
                    worker.run(script).await
                })
            })
            .collect();
        let mut events = Vec::new();
        for (task, handle) in handles.into_iter().enumerate() {
            match handle.await {
                Ok(mut task_events) => events.append(&mut task_events),
                Err(e) => return Err(format!("task {task} panicked or was cancelled: {e}")),
            }
        }
        Ok(events)
    });
    let events = events.map_err(TestCaseError::fail)?;
    check_history(&events, config.keys).map_err(TestCaseError::fail)
}

/// One task: runs its script and records every call.
struct Worker<S> {
    task: usize,
    store: Arc<S>,
    keys: Arc<[RequestKey]>,
    clock: Arc<AtomicU64>,
    lease_ttl: Duration,
    events: Vec<Event>,
}

impl<S: RequestStore> Worker<S> {
    async fn run(mut self, script: Vec<Step>) -> Vec<Event> {
        for step in script {
            match step {
                Step::Claim {
                    key,
                    job,
                    wait_if_in_flight,
                } => self.claim(key, job, wait_if_in_flight).await,
                Step::Get { key } => {
                    let store = Arc::clone(&self.store);
                    let k = self.keys[key].clone();
                    self.record(key, Call::Get, async move {
                        Answer::from_read(store.get(&k).await)
                    })
                    .await;
                }
                Step::Wait { key } => self.wait(key, self.lease_ttl).await,
            }
        }
        self.events
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
            let store = Arc::clone(&self.store);
            let k = self.keys[key].clone();
            let options = options.clone();
            let answer = self
                .record(key, Call::Claim, async move {
                    match store.claim_or_get(&k, &options).await {
                        Ok(claim) => Answer::from_claim(claim),
                        Err(e) => Answer::Error(e.to_string()),
                    }
                })
                .await;
            match answer {
                Answer::Acquired { token, .. } => return self.work(key, token, job).await,
                Answer::InFlight { remaining, .. } if wait_if_in_flight && attempt == 0 => {
                    self.wait(key, remaining.min(self.lease_ttl)).await;
                }
                _ => return,
            }
        }
    }

    async fn work(&mut self, key: usize, token: Token, job: Job) {
        match job.work {
            Work::None => {}
            Work::Short(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
            Work::Overrun => tokio::time::sleep(self.lease_ttl * 3 / 2).await,
        }
        let k = self.keys[key].clone();
        if job.renew {
            let store = Arc::clone(&self.store);
            let k = k.clone();
            self.record(key, Call::Renew(token), async move {
                match store.renew(&k, token, None).await {
                    Ok(renewal) => Answer::Renewed {
                        expires_at: renewal.expires_at,
                    },
                    Err(e) => Answer::from_error(e),
                }
            })
            .await;
        }
        let store = Arc::clone(&self.store);
        match job.end {
            End::Crash => {}
            End::Complete => {
                // JSON text, so that the harness runs over the HTTP API too.
                let result = Bytes::from(format!("\"task {} token {token}\"", self.task));
                let call = Call::Complete(token, result.clone());
                self.record(key, call, async move {
                    Answer::from_fenced(store.complete(&k, token, result).await)
                })
                .await;
            }
            End::FailRetryable | End::FailPermanent => {
                let retryable = matches!(job.end, End::FailRetryable);
                let error = JobError::new(format!("task {} gave up", self.task), retryable);
                self.record(key, Call::Fail(token, retryable), async move {
                    Answer::from_fenced(store.fail(&k, token, &error).await)
                })
                .await;
            }
            End::Release => {
                self.record(key, Call::Release(token), async move {
                    Answer::from_fenced(store.release(&k, token).await)
                })
                .await;
            }
        }
    }

    async fn wait(&mut self, key: usize, timeout: Duration) {
        let store = Arc::clone(&self.store);
        let k = self.keys[key].clone();
        self.record(key, Call::Wait, async move {
            Answer::from_read(store.wait(&k, timeout).await)
        })
        .await;
    }

    /// Runs `call`, stamping it just before and just after, and keeps it.
    async fn record(
        &mut self,
        key: usize,
        call: Call,
        answer: impl Future<Output = Answer>,
    ) -> Answer {
        let invoked = self.clock.fetch_add(1, Ordering::SeqCst);
        let answer = answer.await;
        let returned = self.clock.fetch_add(1, Ordering::SeqCst);
        self.events.push(Event {
            task: self.task,
            key,
            invoked,
            returned,
            call,
            answer: answer.clone(),
        });
        answer
    }
}

/// One call and its response.
#[derive(Clone, Debug)]
struct Event {
    task: usize,
    key: usize,
    /// Sequence number taken just before the call.
    invoked: u64,
    /// Sequence number taken just after it returned.
    returned: u64,
    call: Call,
    answer: Answer,
}

#[derive(Clone, Debug)]
enum Call {
    Claim,
    Renew(Token),
    Complete(Token, Bytes),
    Fail(Token, bool),
    Release(Token),
    Get,
    Wait,
}

#[derive(Clone, Debug)]
enum Answer {
    Acquired {
        token: Token,
        attempt: u32,
        takeover: bool,
        /// The store-clock instant the lease was granted (`expires_at − ttl`).
        granted_at: Timestamp,
        expires_at: Timestamp,
    },
    InFlight {
        token: Token,
        remaining: Duration,
    },
    Completed {
        token: Token,
        result: Bytes,
    },
    Failed {
        token: Token,
    },
    Renewed {
        expires_at: Timestamp,
    },
    /// A record (from get, wait, or a successful complete, fail, release),
    /// or none.
    Record(Option<Seen>),
    LeaseLost,
    Error(String),
}

/// What the history keeps of a record.
#[derive(Clone, Debug)]
struct Seen {
    state: RecordState,
    token: Token,
    result: Option<Bytes>,
}

impl Answer {
    fn from_claim(claim: Claim) -> Self {
        match claim {
            Claim::Acquired(lease) => Answer::Acquired {
                token: lease.token,
                attempt: lease.attempt,
                takeover: lease.takeover,
                granted_at: lease.expires_at
                    - chrono::Duration::from_std(lease.ttl).unwrap_or(chrono::Duration::MAX),
                expires_at: lease.expires_at,
            },
            Claim::InFlight(f) => Answer::InFlight {
                token: f.token,
                remaining: f.remaining,
            },
            Claim::Completed(c) => Answer::Completed {
                token: c.token,
                result: c.result,
            },
            Claim::Failed(f) => Answer::Failed { token: f.token },
        }
    }

    fn from_record(record: Record) -> Seen {
        Seen {
            state: record.state,
            token: record.token,
            result: record.result,
        }
    }

    fn from_read(read: Result<Option<Record>, Error>) -> Self {
        match read {
            Ok(record) => Answer::Record(record.map(Self::from_record)),
            Err(e) => Answer::Error(e.to_string()),
        }
    }

    fn from_fenced(done: Result<Record, Error>) -> Self {
        match done {
            Ok(record) => Answer::Record(Some(Self::from_record(record))),
            Err(e) => Self::from_error(e),
        }
    }

    fn from_error(error: Error) -> Self {
        match error {
            Error::LeaseLost { .. } => Answer::LeaseLost,
            e => Answer::Error(e.to_string()),
        }
    }

    /// The token the store reported in this response, if any.
    fn token(&self) -> Option<Token> {
        match self {
            Answer::Acquired { token, .. }
            | Answer::InFlight { token, .. }
            | Answer::Completed { token, .. }
            | Answer::Failed { token } => Some(*token),
            Answer::Record(Some(seen)) => Some(seen.token),
            Answer::Renewed { .. }
            | Answer::Record(None)
            | Answer::LeaseLost
            | Answer::Error(_) => None,
        }
    }

    /// The result a reader saw, if the response shows a completed record.
    fn result(&self) -> Option<&Bytes> {
        match self {
            Answer::Completed { result, .. } => Some(result),
            Answer::Record(Some(Seen {
                state: RecordState::Completed,
                result,
                ..
            })) => Some(result.as_ref().unwrap_or(&EMPTY)),
            _ => None,
        }
    }
}

/// What a completed record without a result shows (a violation in itself).
static EMPTY: Bytes = Bytes::from_static(b"<completed without a result>");

impl Call {
    /// The token of a fenced call.
    fn fenced_token(&self) -> Option<Token> {
        match self {
            Call::Renew(t) | Call::Complete(t, _) | Call::Fail(t, _) | Call::Release(t) => Some(*t),
            Call::Claim | Call::Get | Call::Wait => None,
        }
    }
}

impl Event {
    /// Whether a fenced call succeeded.
    fn fenced_ok(&self) -> bool {
        self.call.fenced_token().is_some()
            && matches!(
                self.answer,
                Answer::Renewed { .. } | Answer::Record(Some(_))
            )
    }

    /// Whether this response certainly came before `later` took effect.
    fn before(&self, later: &Event) -> bool {
        self.returned < later.invoked
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{:>4}..{:>4}] task {:>2} ",
            self.invoked, self.returned, self.task
        )?;
        match &self.call {
            Call::Claim => f.write_str("claim")?,
            Call::Renew(t) => write!(f, "renew token {t}")?,
            Call::Complete(t, result) => write!(f, "complete token {t} result {result:?}")?,
            Call::Fail(t, retryable) => write!(
                f,
                "fail token {t} {}",
                if *retryable { "retryable" } else { "permanent" }
            )?,
            Call::Release(t) => write!(f, "release token {t}")?,
            Call::Get => f.write_str("get")?,
            Call::Wait => f.write_str("wait")?,
        }
        f.write_str(" → ")?;
        match &self.answer {
            Answer::Acquired {
                token,
                attempt,
                takeover,
                granted_at,
                expires_at,
            } => write!(
                f,
                "Acquired token {token} attempt {attempt}{} (store clock {} .. {})",
                if *takeover { " takeover" } else { "" },
                granted_at.format("%H:%M:%S%.6f"),
                expires_at.format("%H:%M:%S%.6f"),
            ),
            Answer::InFlight { token, remaining } => {
                write!(f, "InFlight token {token} remaining {remaining:?}")
            }
            Answer::Completed { token, result } => {
                write!(f, "Completed token {token} result {result:?}")
            }
            Answer::Failed { token } => write!(f, "Failed token {token}"),
            Answer::Renewed { expires_at } => {
                write!(f, "renewed until {}", expires_at.format("%H:%M:%S%.6f"))
            }
            Answer::Record(None) => f.write_str("no record"),
            Answer::Record(Some(seen)) => {
                write!(f, "{} token {}", seen.state.as_str(), seen.token)?;
                match &seen.result {
                    Some(result) => write!(f, " result {result:?}"),
                    None => Ok(()),
                }
            }
            Answer::LeaseLost => f.write_str("LeaseLost"),
            Answer::Error(e) => write!(f, "error: {e}"),
        }
    }
}

/// How far the store's own timestamps may disagree when comparing one
/// lease's end with the next grant (§5.1): rounding to the store's clock
/// resolution, not scheduling noise (both instants are the store's).
const CLOCK_RESOLUTION: Duration = Duration::from_millis(2);

/// Checks docs/protocol.md §5 on the whole history, key by key.
fn check_history(events: &[Event], keys: usize) -> Result<(), String> {
    for key in 0..keys {
        let mut mine: Vec<&Event> = events.iter().filter(|e| e.key == key).collect();
        mine.sort_by_key(|e| e.invoked);
        check_key(key, &mine)?;
    }
    Ok(())
}

fn check_key(key: usize, events: &[&Event]) -> Result<(), String> {
    let violation = |guarantee: &str, what: String, involved: &[&Event]| {
        Err(format!(
            "{guarantee} on key concurrent-{key}: {what}\n  history of the key around it:\n{}",
            slice(events, involved)
        ))
    };

    // Nothing but LeaseLost may go wrong: the inputs are all valid.
    if let Some(e) = events.iter().find(|e| matches!(e.answer, Answer::Error(_))) {
        return violation("a store call failed", format!("{e}"), &[e]);
    }

    let acquired: Vec<(&Event, Token)> = events
        .iter()
        .filter_map(|e| match e.answer {
            Answer::Acquired { token, .. } => Some((*e, token)),
            _ => None,
        })
        .collect();

    // §5.2: no token is granted twice.
    let mut granted: BTreeMap<Token, &Event> = BTreeMap::new();
    for &(e, token) in &acquired {
        if let Some(first) = granted.insert(token, e) {
            return violation(
                "§5.2 (no token is granted twice)",
                format!("token {token} was Acquired twice"),
                &[first, e],
            );
        }
    }

    // §5.2: every token a response shows was granted.
    for e in events {
        if let Some(token) = e.answer.token()
            && !granted.contains_key(&token)
        {
            return violation(
                "§5.2 (tokens come only from grants)",
                format!("a response shows token {token}, which no claim was granted"),
                &[e],
            );
        }
    }

    // §5.2: a grant's token exceeds every token shown before the claim.
    for &(claim, token) in &acquired {
        if let Some(earlier) = events
            .iter()
            .find(|e| e.before(claim) && e.answer.token().is_some_and(|seen| seen >= token))
        {
            return violation(
                "§5.2 (tokens strictly increase)",
                format!(
                    "token {token} was granted after a response had already shown token {}",
                    earlier.answer.token().expect("found by its token")
                ),
                &[earlier, claim],
            );
        }
    }

    // §5.3: a stale token is never accepted.
    for op in events.iter().filter(|e| e.fenced_ok()) {
        let token = op.call.fenced_token().expect("a fenced call");
        if let Some(newer) = events
            .iter()
            .find(|e| e.before(op) && e.answer.token().is_some_and(|seen| seen > token))
        {
            return violation(
                "§5.3 (only the holder of the current token can renew, complete, fail or release)",
                format!(
                    "an operation with token {token} succeeded after token {} had been shown",
                    newer.answer.token().expect("found by its token")
                ),
                &[newer, op],
            );
        }
    }

    // §5.1: at most one unexpired lease at any instant of the store's clock.
    // A lease that its holder completed, failed or released ended before the
    // next grant (fencing orders them, and §5.3 checks fencing); comparing
    // the instants would wrongly flag a store whose clock reading is taken
    // when its transaction starts (Postgres `now()`), which may be before the
    // release it waited for. Otherwise the lease ran until its expiry,
    // renewals included.
    let ended_early = |token: Token| {
        events.iter().any(|e| {
            e.call.fenced_token() == Some(token) && matches!(e.answer, Answer::Record(Some(_)))
        })
    };
    let mut by_token: Vec<&(&Event, Token)> = acquired.iter().collect();
    by_token.sort_by_key(|&&(_, token)| token);
    for pair in by_token.windows(2) {
        let (&(earlier, old), &(later, new)) = (pair[0], pair[1]);
        if ended_early(old) {
            continue;
        }
        let Answer::Acquired { expires_at, .. } = earlier.answer else {
            unreachable!("acquired events answer Acquired")
        };
        let renewed = events
            .iter()
            .copied()
            .filter_map(|e| match e.answer {
                Answer::Renewed { expires_at } if e.call.fenced_token() == Some(old) => {
                    Some((expires_at, e))
                }
                _ => None,
            })
            .max_by_key(|&(until, _)| until);
        let (lease_end, renewed_by) = match renewed {
            Some((until, e)) if until > expires_at => (until, Some(e)),
            _ => (expires_at, None),
        };
        let Answer::Acquired { granted_at, .. } = later.answer else {
            unreachable!("acquired events answer Acquired")
        };
        let slack = chrono::Duration::from_std(CLOCK_RESOLUTION).expect("a small duration");
        if granted_at + slack < lease_end {
            let mut involved = vec![earlier, later];
            involved.extend(renewed_by);
            let first_attempts = [earlier, later].iter().all(|e| {
                matches!(
                    e.answer,
                    Answer::Acquired {
                        attempt: 1,
                        takeover: false,
                        ..
                    }
                )
            });
            return violation(
                if first_attempts {
                    "§5.1 and §5.5 (at most one unexpired lease; N concurrent claims on a fresh \
                     key: exactly one Acquired)"
                } else {
                    "§5.1 (at most one unexpired lease at any instant)"
                },
                format!(
                    "token {new} was granted at {} on the store's clock, while token {old}'s lease \
                     ran until {}",
                    granted_at.format("%H:%M:%S%.6f"),
                    lease_end.format("%H:%M:%S%.6f"),
                ),
                &involved,
            );
        }
    }

    // §4: a fenced call is refused only when its token stopped being current.
    // Each task uses a lease for at most one renew and then one final call,
    // so a refusal means a later lease was granted before it.
    for op in events
        .iter()
        .filter(|e| e.call.fenced_token().is_some() && matches!(e.answer, Answer::LeaseLost))
    {
        let token = op.call.fenced_token().expect("a fenced call");
        let explained = acquired
            .iter()
            .any(|&(claim, newer)| newer > token && claim.invoked < op.returned);
        if !explained {
            return violation(
                "§4 (fenced operations succeed while the token is current)",
                format!(
                    "an operation with token {token} was refused though no later lease was granted"
                ),
                &[op],
            );
        }
    }

    // §5.4: one result, seen by every reader, and no lease after it.
    let completions: Vec<&Event> = events
        .iter()
        .copied()
        .filter(|e| e.fenced_ok() && matches!(e.call, Call::Complete(..)))
        .collect();
    if let [first, second, ..] = completions.as_slice() {
        return violation(
            "§5.4 (once completed, every reader sees the same result)",
            "two completes succeeded".to_owned(),
            &[first, second],
        );
    }
    let accepted = completions.first().map(|e| match &e.call {
        Call::Complete(token, result) => (*token, result.clone(), *e),
        _ => unreachable!("filtered on Complete"),
    });
    for reader in events.iter().copied() {
        let Some(seen) = reader.answer.result() else {
            continue;
        };
        match &accepted {
            Some((token, result, _)) if seen == result && reader.answer.token() == Some(*token) => {
            }
            Some((token, result, complete)) => {
                return violation(
                    "§5.4 (once completed, every reader sees the same result)",
                    format!(
                        "a reader saw result {seen:?} under token {:?}, but the accepted result is {result:?} under token {token}",
                        reader.answer.token()
                    ),
                    &[complete, reader],
                );
            }
            None => {
                return violation(
                    "§5.4 (once completed, every reader sees the same result)",
                    format!("a reader saw result {seen:?}, but no complete succeeded"),
                    &[reader],
                );
            }
        }
    }
    if let Some((completed_token, _, complete)) = &accepted
        && let Some(&(claim, token)) = acquired.iter().find(|&&(_, t)| t > *completed_token)
    {
        return violation(
            "§5.4 (once completed, every reader sees the same result)",
            format!("token {token} was granted after token {completed_token} completed the job"),
            &[complete, claim],
        );
    }

    Ok(())
}

/// The key's events from shortly before the first involved one to shortly
/// after the last, at most about forty lines; involved events are marked.
fn slice(events: &[&Event], involved: &[&Event]) -> String {
    let lo = involved.iter().map(|e| e.invoked).min().unwrap_or(0);
    let hi = involved
        .iter()
        .map(|e| e.returned)
        .max()
        .unwrap_or(u64::MAX);
    let window: Vec<&&Event> = events
        .iter()
        .filter(|e| e.returned >= lo && e.invoked <= hi)
        .collect();
    let marked = |e: &Event| {
        involved
            .iter()
            .any(|i| i.invoked == e.invoked && i.task == e.task)
    };
    let mut lines: Vec<String> = Vec::new();
    let skip = window.len().saturating_sub(40);
    if skip > 0 {
        lines.push(format!("    … {skip} earlier unmarked events left out …"));
    }
    let mut left = skip;
    for e in window {
        if !marked(e) && left > 0 {
            left -= 1;
            continue;
        }
        lines.push(format!("  {} {e}", if marked(e) { "»" } else { " " }));
    }
    lines.join("\n")
}
