//! A store decorator for the coordinator cases: it injects outages and
//! refusals into chosen operations of a real store, and can hold `complete`
//! at a gate, so that cases can put the coordinator in the situations a fleet
//! meets (the store down while a job finishes, a renewal refused for good, a
//! caller leaving while the result is being stored).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::{Notify, Semaphore};

use crate::claim::{Claim, Record, Renewal};
use crate::error::{Error, Result};
use crate::listing::{ListPage, ListQuery, StoreStats};
use crate::store::RequestStore;
use crate::types::{ClaimOptions, JobError, RequestKey, Token};

/// `inner` with faults switched on by the case.
#[derive(Debug)]
pub(crate) struct Faulty<S> {
    inner: S,
    /// How many of the next `complete` calls answer `Unavailable` without
    /// reaching the store.
    complete_outages: AtomicU32,
    /// What every `renew` answers instead of renewing, when set.
    renew_refusal: Mutex<Option<Error>>,
    /// When set, `complete` waits for a permit before it reaches the store.
    complete_gate: Mutex<Option<std::sync::Arc<Semaphore>>>,
    /// Notified each time `complete` is called.
    complete_called: Notify,
}

impl<S: RequestStore> Faulty<S> {
    pub(crate) fn new(inner: S) -> Self {
        Self {
            inner,
            complete_outages: AtomicU32::new(0),
            renew_refusal: Mutex::new(None),
            complete_gate: Mutex::new(None),
            complete_called: Notify::new(),
        }
    }

    /// The next `n` completes fail as if the store were down.
    pub(crate) fn fail_next_completes(&self, n: u32) {
        self.complete_outages.store(n, Ordering::SeqCst);
    }

    /// Every renew answers `error` from now on.
    pub(crate) fn refuse_renewals(&self, error: Error) {
        *self.renew_refusal.lock().expect("lock") = Some(error);
    }

    /// Completes wait at a gate; returns the gate (add permits to open it).
    pub(crate) fn hold_completes(&self) -> std::sync::Arc<Semaphore> {
        let gate = std::sync::Arc::new(Semaphore::new(0));
        *self.complete_gate.lock().expect("lock") = Some(std::sync::Arc::clone(&gate));
        gate
    }

    /// Resolves when `complete` is next called (or was called since the last
    /// time this resolved).
    pub(crate) async fn complete_called(&self) {
        self.complete_called.notified().await;
    }
}

pub(crate) fn outage() -> Error {
    Error::unavailable("faulty", std::io::Error::other("injected outage"))
}

#[async_trait]
impl<S: RequestStore> RequestStore for Faulty<S> {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    async fn claim_or_get(&self, key: &RequestKey, options: &ClaimOptions) -> Result<Claim> {
        self.inner.claim_or_get(key, options).await
    }

    async fn renew(
        &self,
        key: &RequestKey,
        token: Token,
        ttl: Option<Duration>,
    ) -> Result<Renewal> {
        let refusal = self.renew_refusal.lock().expect("lock").clone();
        match refusal {
            Some(error) => Err(error),
            None => self.inner.renew(key, token, ttl).await,
        }
    }

    async fn complete(&self, key: &RequestKey, token: Token, result: Bytes) -> Result<Record> {
        self.complete_called.notify_one();
        let gate = self.complete_gate.lock().expect("lock").clone();
        if let Some(gate) = gate {
            let _permit = gate.acquire().await.expect("the gate is never closed");
        }
        let outage_now = self
            .complete_outages
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if outage_now {
            return Err(outage());
        }
        self.inner.complete(key, token, result).await
    }

    async fn fail(&self, key: &RequestKey, token: Token, error: &JobError) -> Result<Record> {
        self.inner.fail(key, token, error).await
    }

    async fn release(&self, key: &RequestKey, token: Token) -> Result<Record> {
        self.inner.release(key, token).await
    }

    async fn get(&self, key: &RequestKey) -> Result<Option<Record>> {
        self.inner.get(key).await
    }

    async fn wait(&self, key: &RequestKey, timeout: Duration) -> Result<Option<Record>> {
        self.inner.wait(key, timeout).await
    }

    async fn delete(&self, key: &RequestKey) -> Result<bool> {
        self.inner.delete(key).await
    }

    async fn sweep(&self) -> Result<u64> {
        self.inner.sweep().await
    }

    async fn list(&self, query: &ListQuery) -> Result<ListPage> {
        self.inner.list(query).await
    }

    async fn counts(&self, prefix: &str) -> Result<StoreStats> {
        self.inner.counts(prefix).await
    }
}
