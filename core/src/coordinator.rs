//! The `Coordinator`: "run this job once per key and share its result", built
//! from the primitives of [`RequestStore`].

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use tokio::sync::watch;
use tokio::task::AbortHandle;
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

/// Why [`Coordinator::get_or_run`] returned no result.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The job failed, here or on another worker (a panic in the job counts
    /// as a retryable failure). `retry_after` says when a new call may run it
    /// again; `None` means no retry will be allowed.
    #[error("job failed on attempt {attempt}: {error}")]
    Failed {
        /// The stored failure.
        error: JobError,
        /// The attempt that failed.
        attempt: u32,
        /// When a retry will be allowed, if ever.
        retry_after: Option<Duration>,
    },
    /// The store refused or could not be reached.
    #[error(transparent)]
    Store(#[from] Error),
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
#[derive(Debug)]
pub struct Coordinator<S: RequestStore + ?Sized> {
    store: Arc<S>,
    flights: Arc<Mutex<FlightTable>>,
    max_wait: Duration,
}

impl<S: RequestStore + ?Sized> Clone for Coordinator<S> {
    fn clone(&self) -> Self {
        Self {
            store: Arc::clone(&self.store),
            flights: Arc::clone(&self.flights),
            max_wait: self.max_wait,
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

impl<S: RequestStore + ?Sized> Coordinator<S> {
    /// A coordinator over `store`.
    pub fn new(store: Arc<S>) -> Self {
        Self {
            store,
            flights: Arc::default(),
            max_wait: DEFAULT_MAX_WAIT,
        }
    }

    /// Caps each `wait` on work in flight elsewhere (default 30 s). The store
    /// wakes waiters on every change, so this only bounds how long a missed
    /// wake-up could go unnoticed.
    pub fn with_max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = max_wait.max(Duration::from_millis(1));
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
    /// - Otherwise runs `job` under a lease that is renewed in the background
    ///   every third of its time to live, and completes or fails the record
    ///   with what the job returns ([`Source::Ran`]). A job that panics is
    ///   recorded as a retryable failure. If the lease is lost meanwhile, the
    ///   job is dropped and the call waits for whoever holds the key now.
    ///
    /// Concurrent calls for the same key with the same kind and fingerprint
    /// in this process share one store claim and one run: the
    /// first caller's `job` runs, the others' are dropped unused. The job runs
    /// on a spawned task, so it keeps running while any caller still waits;
    /// when every caller's future has been dropped, the job is cancelled and
    /// its lease released, so another worker can take the key at once.
    pub async fn get_or_run<F, Fut>(
        &self,
        key: RequestKey,
        options: ClaimOptions,
        job: F,
    ) -> Result<Outcome, RunError>
    where
        F: FnOnce(JobContext) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Bytes, JobError>> + Send + 'static,
    {
        let flight = FlightKey {
            key: key.clone(),
            kind: options.kind().clone(),
            fingerprint: options.fingerprint().cloned(),
        };
        let (id, mut result) = self.join_or_start(flight.clone(), options, job);
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

    /// Joins the flight in progress for `flight`, or starts one. Returns the
    /// flight's id and a receiver of its outcome.
    fn join_or_start<F, Fut>(
        &self,
        flight: FlightKey,
        options: ClaimOptions,
        job: F,
    ) -> (u64, watch::Receiver<FlightResult>)
    where
        F: FnOnce(JobContext) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Bytes, JobError>> + Send + 'static,
    {
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
        };
        let table = Arc::clone(&self.flights);
        let task_flight = flight.clone();
        let task = tokio::spawn(async move {
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
/// cancelled (which releases its lease).
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
    options: ClaimOptions,
    max_wait: Duration,
}

/// How running the job under a lease ended.
enum LeaseEnd {
    Completed(Record),
    Failed(Record),
    /// Another worker holds the key now.
    Lost,
}

impl<S: RequestStore + ?Sized> Flight<S> {
    async fn run<F, Fut>(self, job: F) -> Result<Outcome, RunError>
    where
        F: FnOnce(JobContext) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Bytes, JobError>> + Send + 'static,
    {
        let mut job = Some(job);
        let mut waited = false;
        loop {
            match self.store.claim_or_get(&self.key, &self.options).await? {
                Claim::Acquired(lease) => {
                    let Some(job) = job.take() else {
                        // The job already ran once under a lease that was
                        // lost; it cannot run twice. Give the new lease back
                        // so that another caller can use it.
                        let token = lease.token;
                        let _ = self.store.release(&self.key, token).await;
                        return Err(Error::LeaseLost {
                            key: self.key.clone(),
                            token,
                        }
                        .into());
                    };
                    match self.run_under_lease(lease, job).await? {
                        LeaseEnd::Completed(record) => return Ok(outcome(record, Source::Ran)),
                        LeaseEnd::Failed(record) => return Err(failure(record)),
                        LeaseEnd::Lost => waited = true,
                    }
                }
                Claim::InFlight(_) => {
                    waited = true;
                    self.store.wait(&self.key, self.max_wait).await?;
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
                    return Err(RunError::Failed {
                        error: failed.error,
                        attempt: failed.attempt,
                        retry_after: failed.retry_after,
                    });
                }
            }
        }
    }

    async fn run_under_lease<F, Fut>(&self, lease: Lease, job: F) -> Result<LeaseEnd, Error>
    where
        F: FnOnce(JobContext) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Bytes, JobError>> + Send + 'static,
    {
        let token = lease.token;
        let mut release = ReleaseOnDrop {
            store: Some(Arc::clone(&self.store)),
            key: self.key.clone(),
            token,
        };
        let context = JobContext {
            lease: lease.clone(),
        };
        // The job is called inside the guarded future so that a panic while
        // building it is caught too.
        let job = AssertUnwindSafe(async move { job(context).await }).catch_unwind();
        let ran = tokio::select! {
            ran = job => ran,
            () = keep_alive(&*self.store, &lease) => {
                // The lease is gone: nothing to release, and the job's result
                // could not be stored.
                release.disarm();
                return Ok(LeaseEnd::Lost);
            }
        };
        let finished = match ran {
            Ok(Ok(result)) => self
                .finish(|| self.store.complete(&self.key, token, result.clone()))
                .await
                .map(LeaseEnd::Completed),
            Ok(Err(error)) => self
                .finish(|| self.store.fail(&self.key, token, &error))
                .await
                .map(LeaseEnd::Failed),
            Err(panic) => {
                let error =
                    JobError::retryable(format!("job panicked: {}", panic_message(&*panic)));
                self.finish(|| self.store.fail(&self.key, token, &error))
                    .await
                    .map(LeaseEnd::Failed)
            }
        };
        match finished {
            Ok(end) => {
                release.disarm();
                Ok(end)
            }
            Err(Error::LeaseLost { .. }) => {
                release.disarm();
                Ok(LeaseEnd::Lost)
            }
            // Keep the guard armed: releasing lets another worker retry at
            // once instead of after the lease.
            Err(e) => Err(e),
        }
    }

    /// Runs a `complete` or `fail`, retrying while the store is unavailable.
    async fn finish<'a, Op, OpFut>(&'a self, op: Op) -> Result<Record, Error>
    where
        Op: Fn() -> OpFut,
        OpFut: Future<Output = Result<Record, Error>> + 'a,
    {
        let mut pause = Duration::from_millis(50);
        let mut tries = 1;
        loop {
            match op().await {
                Err(e) if e.is_retryable() && tries < FINISH_TRIES => {
                    tracing::warn!(key = %self.key, error = %e, "store unavailable while finishing a job; retrying");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                    tries += 1;
                }
                other => return other,
            }
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

/// Renews `lease` every third of its time to live; returns only once the
/// lease is lost. Transient store errors are retried at the same pace: the
/// lease stays ours past its expiry as long as nobody takes it over.
async fn keep_alive<S: RequestStore + ?Sized>(store: &S, lease: &Lease) {
    let every = (lease.ttl / 3).max(Duration::from_millis(1));
    loop {
        tokio::time::sleep_until(Instant::now() + every).await;
        match store.renew(&lease.key, lease.token, None).await {
            Ok(_) => {}
            Err(Error::LeaseLost { .. }) => return,
            Err(e) => {
                tracing::warn!(key = %lease.key, token = %lease.token, error = %e, "lease renewal failed; will retry");
            }
        }
    }
}

/// Releases a lease when the job's future is dropped before it finished
/// (the caller went away), so that another worker can take the key at once.
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
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
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
