//! The `Coordinator`: "run this job once per key and share its result", built
//! from the primitives of [`RequestStore`].

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinHandle};
use tokio::time::Instant;

use crate::claim::{Claim, Lease, Record};
use crate::error::Error;
use crate::store::RequestStore;
use crate::types::{ClaimOptions, Fingerprint, JobError, Kind, RequestKey, Token};

/// Default cap on one `wait` call while another worker holds the lease; the
/// store wakes the waiter earlier on any change, and the loop claims again.
const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(30);

/// Tries of a `complete` or `fail` that hits an unavailable store: the same
/// token makes them idempotent, so repeating them is safe.
const FINISH_TRIES: u32 = 5;

/// Where a [`Outcome`]'s result came from.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Source {
    /// This coordinator ran the job (for this caller or for a caller it
    /// coalesced with).
    Ran,
    /// The result was already stored when the key was claimed.
    Cached,
    /// Another worker was running the job; the coordinator waited for it.
    Awaited,
}

/// A job's result, as returned by [`Coordinator::get_or_run`].
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub struct Outcome {
    /// The job's result.
    pub result: Bytes,
    /// Whether the job ran here, was cached, or ran elsewhere.
    pub source: Source,
    /// The token of the lease that completed the job.
    pub token: Token,
    /// The attempt that completed the job.
    pub attempt: u32,
}

impl Outcome {
    /// An outcome, e.g. for a test double of code that calls the
    /// coordinator.
    pub fn new(result: Bytes, source: Source, token: Token, attempt: u32) -> Self {
        Self {
            result,
            source,
            token,
            attempt,
        }
    }
}

/// Why [`Coordinator::get_or_run`] returned no result.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The job failed, here or on another worker (a panic in the job, or a
    /// run past [`RunOptions::with_max_run_time`], counts as a retryable
    /// failure). `retry_after` says when a new call may run it again; `None`
    /// means no retry will be allowed.
    #[error("job failed on attempt {attempt}: {error}")]
    Failed {
        /// The stored failure.
        error: JobError,
        /// The attempt that failed.
        attempt: u32,
        /// When a retry will be allowed, if ever.
        retry_after: Option<Duration>,
    },
    /// The lease was lost while the job ran (the key was deleted, or another
    /// worker took it over while this one could not renew), the job was
    /// stopped, and when this call claimed the key again it was granted a new
    /// lease, but the job cannot run twice in one call (it is `FnOnce`; see
    /// [`Coordinator::get_or_run_repeatable`]). The new lease was released at
    /// once, so the next caller runs the job without waiting. Calling again
    /// is safe.
    #[error(
        "the lease on key {key:?} was lost while the job ran, and the job cannot run again in this call"
    )]
    LeaseLostMidJob {
        /// The request's key.
        key: RequestKey,
    },
    /// `get_or_run` was polled outside a Tokio runtime and the coordinator
    /// was given none ([`Coordinator::with_runtime`]): the job, its renewals
    /// and its completion run on spawned tasks.
    #[error(
        "no Tokio runtime to run the job on: call from within one, or give the coordinator one with `with_runtime`"
    )]
    NoRuntime,
    /// The store refused or could not be reached.
    #[error(transparent)]
    Store(#[from] Error),
}

/// How one [`Coordinator::get_or_run`] call claims and runs: the
/// [`ClaimOptions`] sent to the store, plus what only the coordinator
/// enforces. Built from `ClaimOptions` with `From`, so `get_or_run(key,
/// claim_options, job)` keeps working.
#[derive(Clone, Debug)]
pub struct RunOptions {
    claim: ClaimOptions,
    max_run_time: Option<Duration>,
    wait_out_retryable_failures: bool,
}

impl RunOptions {
    /// Runs with `claim` and nothing else: no maximum run time, and a
    /// retryable failure is returned at once.
    pub fn new(claim: ClaimOptions) -> Self {
        Self {
            claim,
            max_run_time: None,
            wait_out_retryable_failures: false,
        }
    }

    /// Aborts the job once it has run for `max_run_time` and records a
    /// retryable failure, so that a hung job frees its key for the fleet
    /// (after the record's backoff) instead of renewing its lease forever.
    pub fn with_max_run_time(mut self, max_run_time: Duration) -> Self {
        self.max_run_time = Some(max_run_time);
        self
    }

    /// When the call meets a retryable failure that allows a retry later
    /// (`Failed { retry_after: Some(..) }`, from another worker's attempt or
    /// from its own), waits out the backoff and claims again, until the
    /// record runs out of attempts (`max_attempts`) or the job succeeds.
    /// Its own attempt is run again only by
    /// [`Coordinator::get_or_run_repeatable`]; a `FnOnce` job's own failure
    /// is returned. Off by default: the failure is returned at once.
    pub fn wait_out_retryable_failures(mut self, wait: bool) -> Self {
        self.wait_out_retryable_failures = wait;
        self
    }

    /// The options sent with each claim.
    pub fn claim(&self) -> &ClaimOptions {
        &self.claim
    }

    /// The maximum run time, if any.
    pub fn max_run_time(&self) -> Option<Duration> {
        self.max_run_time
    }

    /// Whether retryable failures are waited out.
    pub fn waits_out_retryable_failures(&self) -> bool {
        self.wait_out_retryable_failures
    }
}

impl From<ClaimOptions> for RunOptions {
    fn from(claim: ClaimOptions) -> Self {
        Self::new(claim)
    }
}

/// What a job gets to know about the lease it runs under.
#[derive(Clone, Debug)]
pub struct JobContext {
    lease: Lease,
}

impl JobContext {
    /// The lease the job runs under. Its token is a fencing token: pass it to
    /// downstream systems that can refuse stale writers.
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// The request's key.
    pub fn key(&self) -> &RequestKey {
        &self.lease.key
    }

    /// The lease's fencing token.
    pub fn token(&self) -> Token {
        self.lease.token
    }
}

/// Runs jobs once per key across every process that shares the store.
///
/// Cloning is cheap and clones share the in-process coalescing table.
///
/// # Runtime
///
/// The job, its lease renewals and its completion run on tasks spawned on a
/// Tokio runtime: the one `get_or_run` is polled in, or the one given with
/// [`Coordinator::with_runtime`] (then the returned future may be polled by
/// any executor, e.g. `futures::executor::block_on` on a plain thread).
/// Without either, `get_or_run` returns [`RunError::NoRuntime`].
///
/// Renewals run on their own task, so a job that blocks its thread (a
/// synchronous SDK call, CPU work between two `.await`s) does not lose its
/// lease on a multi-thread runtime; it still holds one worker thread for as
/// long as it blocks, so long blocking work belongs in
/// `tokio::task::spawn_blocking`. On a current-thread runtime a blocking job
/// stops every task, renewals included.
#[derive(Debug)]
pub struct Coordinator<S: RequestStore + ?Sized> {
    store: Arc<S>,
    flights: Arc<Mutex<FlightTable>>,
    max_wait: Duration,
    runtime: Option<Handle>,
}

impl<S: RequestStore + ?Sized> Clone for Coordinator<S> {
    fn clone(&self) -> Self {
        Self {
            store: Arc::clone(&self.store),
            flights: Arc::clone(&self.flights),
            max_wait: self.max_wait,
            runtime: self.runtime.clone(),
        }
    }
}

type FlightResult = Option<Result<Outcome, RunError>>;

/// Flights in progress in this process. Callers coalesce only with a flight
/// whose kind and fingerprint match theirs: a caller with other values must
/// get the store's own verdict (`FingerprintMismatch`).
type FlightTable = HashMap<FlightKey, FlightEntry>;

#[derive(Clone, PartialEq, Eq, Hash, Debug)]
struct FlightKey {
    key: RequestKey,
    kind: Kind,
    fingerprint: Option<Fingerprint>,
}

#[derive(Debug)]
struct FlightEntry {
    id: u64,
    callers: usize,
    result: watch::Receiver<FlightResult>,
    abort: AbortHandle,
}

static FLIGHT_IDS: AtomicU64 = AtomicU64::new(1);

/// What a job returns.
type JobResult = Result<Bytes, JobError>;

/// The job a flight runs: once (`get_or_run`) or as often as the flight
/// needs (`get_or_run_repeatable`).
enum JobSlot {
    Once(Option<Box<dyn FnOnce(JobContext) -> BoxFuture<'static, JobResult> + Send>>),
    Repeatable(Box<dyn FnMut(JobContext) -> BoxFuture<'static, JobResult> + Send>),
}

impl JobSlot {
    /// The job's future for `context`, or `None` once a `FnOnce` job ran.
    fn start(&mut self, context: JobContext) -> Option<BoxFuture<'static, JobResult>> {
        match self {
            JobSlot::Once(job) => job.take().map(|job| job(context)),
            JobSlot::Repeatable(job) => Some(job(context)),
        }
    }

    /// Whether [`JobSlot::start`] would give a future.
    fn can_run(&self) -> bool {
        match self {
            JobSlot::Once(job) => job.is_some(),
            JobSlot::Repeatable(_) => true,
        }
    }
}

impl<S: RequestStore + ?Sized> Coordinator<S> {
    /// A coordinator over `store`.
    pub fn new(store: Arc<S>) -> Self {
        Self {
            store,
            flights: Arc::default(),
            max_wait: DEFAULT_MAX_WAIT,
            runtime: None,
        }
    }

    /// Caps each `wait` on work in flight elsewhere (default 30 s). The store
    /// wakes waiters on every change, so this only bounds how long a missed
    /// wake-up could go unnoticed.
    pub fn with_max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = max_wait.max(Duration::from_millis(1));
        self
    }

    /// Runs jobs on `runtime` when `get_or_run` is polled outside a Tokio
    /// runtime (from synchronous code through `block_on`, or from another
    /// executor). Inside a runtime, that runtime is used.
    pub fn with_runtime(mut self, runtime: Handle) -> Self {
        self.runtime = Some(runtime);
        self
    }

    /// The store this coordinator works on.
    pub fn store(&self) -> &Arc<S> {
        &self.store
    }

    /// Returns the result of `key`'s job, running `job` only if no result is
    /// stored and no other worker is running it.
    ///
    /// - A stored result is returned at once ([`Source::Cached`]).
    /// - If another worker holds a live lease, waits for it through the
    ///   store's push-based [`RequestStore::wait`] and returns its result
    ///   ([`Source::Awaited`]); if that worker dies, takes over when its lease
    ///   expires.
    /// - Otherwise runs `job` under a lease that is renewed by a separate task
    ///   every third of its time to live, and completes or fails the record
    ///   with what the job returns ([`Source::Ran`]). A job that panics, or
    ///   runs past [`RunOptions::with_max_run_time`], is recorded as a
    ///   retryable failure.
    ///
    /// `options` is a [`ClaimOptions`] or, for the coordinator's own
    /// settings, a [`RunOptions`].
    ///
    /// # Lost leases
    ///
    /// If a renewal finds the lease lost (the key was deleted, or another
    /// worker took over while this one could not reach the store), the job is
    /// stopped and the call claims again like any caller: it returns the other
    /// worker's result or failure, waits for it, or takes over. If it is
    /// granted a lease again, a `FnOnce` job cannot run a second time: the
    /// lease is released and the call returns [`RunError::LeaseLostMidJob`].
    /// A job that had already *finished* when its `complete` was refused
    /// keeps its result: granted a new lease, the call completes the record
    /// with it ([`Source::Ran`]), since the result is a valid one for the key
    /// (the claim's kind and fingerprint matched); a failure is not recorded
    /// again, so the next attempt is not spent on it.
    ///
    /// # Coalescing
    ///
    /// Concurrent calls for the same key with the same kind and fingerprint
    /// in this process share one store claim and one run: the first caller's
    /// `job` and options (lease time to live, owner, `max_attempts`, run
    /// options) are used, the others' jobs are dropped unused and their other
    /// options ignored. Calls whose kind or fingerprint differ never share a
    /// flight: each claims on its own and gets the store's verdict
    /// (`FingerprintMismatch` when the record was created with another).
    ///
    /// # Cancellation
    ///
    /// The job runs on a spawned task, so it keeps running while any caller
    /// still waits. When every caller's future has been dropped while the job
    /// still runs, the job is aborted and its lease released, so another
    /// worker can take the key at once. Once the job has returned, its
    /// completion (or failure) is stored even if every caller goes away.
    pub async fn get_or_run<F, Fut>(
        &self,
        key: RequestKey,
        options: impl Into<RunOptions>,
        job: F,
    ) -> Result<Outcome, RunError>
    where
        F: FnOnce(JobContext) -> Fut + Send + 'static,
        Fut: Future<Output = JobResult> + Send + 'static,
    {
        let job = JobSlot::Once(Some(Box::new(move |context| job(context).boxed())));
        self.run_flight(key, options.into(), job).await
    }

    /// [`Coordinator::get_or_run`] with a job that can run more than once in
    /// one call: after a lost lease it runs again under the new lease instead
    /// of returning [`RunError::LeaseLostMidJob`], and with
    /// [`RunOptions::wait_out_retryable_failures`] its own retryable failures
    /// are retried after their backoff, up to the record's `max_attempts`.
    pub async fn get_or_run_repeatable<F, Fut>(
        &self,
        key: RequestKey,
        options: impl Into<RunOptions>,
        mut job: F,
    ) -> Result<Outcome, RunError>
    where
        F: FnMut(JobContext) -> Fut + Send + 'static,
        Fut: Future<Output = JobResult> + Send + 'static,
    {
        let job = JobSlot::Repeatable(Box::new(move |context| job(context).boxed()));
        self.run_flight(key, options.into(), job).await
    }

    async fn run_flight(
        &self,
        key: RequestKey,
        options: RunOptions,
        job: JobSlot,
    ) -> Result<Outcome, RunError> {
        let Some(runtime) = Handle::try_current().ok().or_else(|| self.runtime.clone()) else {
            return Err(RunError::NoRuntime);
        };
        let flight = FlightKey {
            key: key.clone(),
            kind: options.claim.kind().clone(),
            fingerprint: options.claim.fingerprint().cloned(),
        };
        let (id, mut result) = self.join_or_start(&runtime, flight.clone(), options, job);
        let _caller = CallerGuard {
            flights: Arc::clone(&self.flights),
            flight,
            id,
        };
        let outcome = match result.wait_for(Option::is_some).await {
            Ok(done) => done.clone(),
            Err(_) => None,
        };
        outcome.unwrap_or_else(|| {
            Err(RunError::Store(Error::Backend {
                backend: "coordinator",
                message: "the job's task ended without an outcome".into(),
            }))
        })
    }

    /// Joins the flight in progress for `flight`, or starts one on `runtime`.
    /// Returns the flight's id and a receiver of its outcome.
    fn join_or_start(
        &self,
        runtime: &Handle,
        flight: FlightKey,
        options: RunOptions,
        job: JobSlot,
    ) -> (u64, watch::Receiver<FlightResult>) {
        let mut flights = lock(&self.flights);
        if let Some(entry) = flights.get_mut(&flight) {
            entry.callers += 1;
            return (entry.id, entry.result.clone());
        }
        let id = FLIGHT_IDS.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = watch::channel(None);
        let work = Flight {
            store: Arc::clone(&self.store),
            key: flight.key.clone(),
            options,
            max_wait: self.max_wait,
            runtime: runtime.clone(),
        };
        let table = Arc::clone(&self.flights);
        let task_flight = flight.clone();
        let task = runtime.spawn(async move {
            let outcome = work.run(job).await;
            // Ignore the error: it only means every caller has gone.
            let _ = tx.send(Some(outcome));
            let mut flights = lock(&table);
            if flights.get(&task_flight).is_some_and(|e| e.id == id) {
                flights.remove(&task_flight);
            }
        });
        flights.insert(
            flight,
            FlightEntry {
                id,
                callers: 1,
                result: rx.clone(),
                abort: task.abort_handle(),
            },
        );
        (id, rx)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The table is consistent after every statement, so a panic elsewhere
    // while it was locked leaves nothing half-done.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One caller's share of a flight: when the last caller goes, the flight is
/// cancelled (which aborts a running job and releases its lease; a
/// completion already under way is not affected).
struct CallerGuard {
    flights: Arc<Mutex<FlightTable>>,
    flight: FlightKey,
    id: u64,
}

impl Drop for CallerGuard {
    fn drop(&mut self) {
        let mut flights = lock(&self.flights);
        if let Some(entry) = flights.get_mut(&self.flight)
            && entry.id == self.id
        {
            entry.callers -= 1;
            if entry.callers == 0 {
                entry.abort.abort();
                flights.remove(&self.flight);
            }
        }
    }
}

/// The work of one flight: claim, then run, wait or return.
struct Flight<S: RequestStore + ?Sized> {
    store: Arc<S>,
    key: RequestKey,
    options: RunOptions,
    max_wait: Duration,
    runtime: Handle,
}

/// How a job ended.
enum JobEnd {
    Succeeded(Bytes),
    Failed(JobError),
}

/// How running the job under a lease ended.
enum LeaseEnd {
    Completed(Record),
    Failed(Record),
    /// The lease was lost; `result` is the job's result if it had succeeded
    /// before its `complete` was refused.
    Lost {
        result: Option<Bytes>,
    },
}

impl<S: RequestStore + ?Sized> Flight<S> {
    async fn run(self, mut job: JobSlot) -> Result<Outcome, RunError> {
        let mut waited = false;
        // A result whose `complete` was refused because the lease was lost,
        // to be stored under the next lease this call is granted.
        let mut unstored: Option<Bytes> = None;
        loop {
            let failed = match self
                .store
                .claim_or_get(&self.key, &self.options.claim)
                .await?
            {
                Claim::Acquired(lease) => {
                    let end = if let Some(result) = unstored.take() {
                        self.finish(lease.token, JobEnd::Succeeded(result), None)
                            .await?
                    } else {
                        let context = JobContext {
                            lease: lease.clone(),
                        };
                        let Some(run) = job.start(context) else {
                            // The job ran once under a lease that was lost;
                            // it cannot run twice. Give the new lease back so
                            // that another caller can use it at once.
                            if let Err(e) = self.store.release(&self.key, lease.token).await {
                                tracing::debug!(key = %self.key, error = %e, "could not release a lease this call cannot use");
                            }
                            return Err(RunError::LeaseLostMidJob {
                                key: self.key.clone(),
                            });
                        };
                        self.run_under_lease(lease, run).await?
                    };
                    match end {
                        LeaseEnd::Completed(record) => return Ok(outcome(record, Source::Ran)),
                        LeaseEnd::Failed(record) => {
                            let retry_after = record.retry_after;
                            let failure = failure(record);
                            if !job.can_run() {
                                return Err(failure);
                            }
                            (failure, retry_after)
                        }
                        LeaseEnd::Lost { result } => {
                            unstored = result;
                            waited = true;
                            continue;
                        }
                    }
                }
                Claim::InFlight(_) => {
                    waited = true;
                    self.store.wait(&self.key, self.max_wait).await?;
                    continue;
                }
                Claim::Completed(done) => {
                    return Ok(Outcome {
                        result: done.result,
                        source: if waited {
                            Source::Awaited
                        } else {
                            Source::Cached
                        },
                        token: done.token,
                        attempt: done.attempt,
                    });
                }
                Claim::Failed(failed) => {
                    let retry_after = failed.retry_after;
                    let failure = RunError::Failed {
                        error: failed.error,
                        attempt: failed.attempt,
                        retry_after,
                    };
                    (failure, retry_after)
                }
            };
            match failed {
                (_, Some(backoff)) if self.options.wait_out_retryable_failures => {
                    waited = true;
                    tokio::time::sleep(backoff.max(Duration::from_millis(1))).await;
                }
                (failure, _) => return Err(failure),
            }
        }
    }

    /// Runs `job` under `lease` on a task of its own, beside a task renewing
    /// the lease, then stores what it returned.
    async fn run_under_lease(
        &self,
        lease: Lease,
        job: BoxFuture<'static, JobResult>,
    ) -> Result<LeaseEnd, RunError> {
        let token = lease.token;
        // Armed until the lease is known to be over: if this future is
        // dropped (every caller went away) the lease is given back at once.
        let mut release = ReleaseOnDrop {
            store: Some(Arc::clone(&self.store)),
            key: self.key.clone(),
            token,
        };
        let mut renewal = AbortOnDrop(
            self.runtime
                .spawn(keep_alive(Arc::clone(&self.store), lease)),
        );
        // A task of its own: a panic in the job is caught by the task, and
        // aborting the task drops the job.
        let mut running = AbortOnDrop(self.runtime.spawn(job));
        let max_run_time = self.options.max_run_time;
        let deadline = async {
            match max_run_time {
                Some(limit) => tokio::time::sleep(limit).await,
                None => std::future::pending().await,
            }
        };
        let ended = tokio::select! {
            // A job that finished wins over a renewal that ended at the same
            // moment: its result may still be stored.
            biased;
            joined = &mut running.0 => match joined {
                Ok(Ok(result)) => JobEnd::Succeeded(result),
                Ok(Err(error)) => JobEnd::Failed(error),
                Err(join) => JobEnd::Failed(JobError::retryable(match join.try_into_panic() {
                    Ok(panic) => format!("job panicked: {}", panic_message(&*panic)),
                    Err(_) => "job was cancelled".to_owned(),
                })),
            },
            end = &mut renewal.0 => {
                running.0.abort();
                return match end {
                    Ok(RenewalEnd::Lost) => {
                        // Nothing to release: the lease is someone else's.
                        release.disarm();
                        Ok(LeaseEnd::Lost { result: None })
                    }
                    // The guard releases the lease on the way out.
                    Ok(RenewalEnd::Refused(error)) => Err(RunError::Store(error)),
                    Err(join) => Err(RunError::Store(Error::Backend {
                        backend: "coordinator",
                        message: format!("the lease renewal task ended: {join}"),
                    })),
                };
            }
            () = deadline => {
                running.0.abort();
                JobEnd::Failed(JobError::retryable(format!(
                    "job ran past its maximum run time of {} ms and was aborted",
                    max_run_time.unwrap_or_default().as_millis()
                )))
            }
        };
        release.disarm();
        self.finish(token, ended, Some(renewal)).await
    }

    /// Stores how the job ended (`complete` or `fail` with `token`) on a task
    /// of its own, so that callers going away cannot cancel it, retrying while
    /// the store is unavailable. `renewal` keeps the lease alive meanwhile.
    async fn finish(
        &self,
        token: Token,
        ended: JobEnd,
        renewal: Option<AbortOnDrop<RenewalEnd>>,
    ) -> Result<LeaseEnd, RunError> {
        let store = Arc::clone(&self.store);
        let key = self.key.clone();
        let finishing = self.runtime.spawn(async move {
            let _renewal = renewal;
            // Releases the lease if the record cannot be finished, so that
            // another worker can retry at once instead of after the lease.
            let mut release = ReleaseOnDrop {
                store: Some(Arc::clone(&store)),
                key: key.clone(),
                token,
            };
            let stored = match &ended {
                JobEnd::Succeeded(result) => {
                    with_retries(&key, || store.complete(&key, token, result.clone())).await
                }
                JobEnd::Failed(error) => {
                    with_retries(&key, || store.fail(&key, token, error)).await
                }
            };
            match stored {
                Ok(record) => {
                    release.disarm();
                    Ok(match ended {
                        JobEnd::Succeeded(_) => LeaseEnd::Completed(record),
                        JobEnd::Failed(_) => LeaseEnd::Failed(record),
                    })
                }
                Err(Error::LeaseLost { .. }) => {
                    release.disarm();
                    Ok(LeaseEnd::Lost {
                        result: match ended {
                            JobEnd::Succeeded(result) => Some(result),
                            JobEnd::Failed(_) => None,
                        },
                    })
                }
                Err(e) => Err(e),
            }
        });
        match finishing.await {
            Ok(end) => end.map_err(RunError::Store),
            Err(join) => Err(RunError::Store(Error::Backend {
                backend: "coordinator",
                message: format!("the task storing the job's outcome ended: {join}"),
            })),
        }
    }
}

/// Runs a `complete` or `fail`, retrying while the store is unavailable: the
/// same token makes them idempotent, so repeating them is safe.
async fn with_retries<'a, Op, OpFut>(key: &RequestKey, op: Op) -> Result<Record, Error>
where
    Op: Fn() -> OpFut,
    OpFut: Future<Output = Result<Record, Error>> + 'a,
{
    let mut pause = Duration::from_millis(50);
    let mut tries = 1;
    loop {
        match op().await {
            Err(e) if e.is_retryable() && tries < FINISH_TRIES => {
                tracing::warn!(%key, error = %e, "store unavailable while finishing a job; retrying");
                tokio::time::sleep(pause).await;
                pause *= 2;
                tries += 1;
            }
            other => return other,
        }
    }
}

fn outcome(record: Record, source: Source) -> Outcome {
    Outcome {
        result: record.result.unwrap_or_default(),
        source,
        token: record.token,
        attempt: record.attempt,
    }
}

fn failure(record: Record) -> RunError {
    RunError::Failed {
        error: record
            .error
            .unwrap_or_else(|| JobError::retryable("failed without an error message")),
        attempt: record.attempt,
        retry_after: record.retry_after,
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a non-string payload")
}

/// Why [`keep_alive`] stopped renewing.
enum RenewalEnd {
    /// The lease is no longer this worker's.
    Lost,
    /// The store refused the renewal for a reason retrying cannot change.
    Refused(Error),
}

/// Renews `lease` every third of its time to live until it is lost or a
/// renewal is refused for good. Transient store errors are retried at the
/// same pace: the lease stays ours past its expiry as long as nobody takes it
/// over.
async fn keep_alive<S: RequestStore + ?Sized>(store: Arc<S>, lease: Lease) -> RenewalEnd {
    let every = (lease.ttl / 3).max(Duration::from_millis(1));
    loop {
        tokio::time::sleep_until(Instant::now() + every).await;
        match store.renew(&lease.key, lease.token, None).await {
            Ok(_) => {}
            Err(Error::LeaseLost { .. }) => return RenewalEnd::Lost,
            Err(e) if e.is_retryable() => {
                tracing::warn!(key = %lease.key, token = %lease.token, error = %e, "lease renewal failed; will retry");
            }
            Err(e) => {
                tracing::error!(key = %lease.key, token = %lease.token, error = %e, "lease renewal refused; stopping the job");
                return RenewalEnd::Refused(e);
            }
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Releases a lease when dropped armed (the caller went away, or the job's
/// outcome could not be stored), so that another worker can take the key at
/// once.
struct ReleaseOnDrop<S: RequestStore + ?Sized> {
    store: Option<Arc<S>>,
    key: RequestKey,
    token: Token,
}

impl<S: RequestStore + ?Sized> ReleaseOnDrop<S> {
    fn disarm(&mut self) {
        self.store = None;
    }
}

impl<S: RequestStore + ?Sized> Drop for ReleaseOnDrop<S> {
    fn drop(&mut self) {
        let Some(store) = self.store.take() else {
            return;
        };
        // Without a runtime nothing can be sent; the lease then ends at its
        // expiry, which is what a crash would do.
        if let Ok(runtime) = Handle::try_current() {
            let key = self.key.clone();
            let token = self.token;
            runtime.spawn(async move {
                if let Err(e) = store.release(&key, token).await {
                    tracing::debug!(%key, %token, error = %e, "could not release an abandoned lease");
                }
            });
        }
    }
}
