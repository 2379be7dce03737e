//! The `RequestStore` trait: the small set of atomic operations every backend
//! implements, each in one store round trip.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::claim::{Claim, Record, Renewal};
use crate::error::Result;
use crate::feed::ChangeFeed;
use crate::listing::{ListPage, ListQuery, StoreStats};
use crate::types::{ClaimOptions, JobError, RequestKey, Token};

/// A store of request records: the lifecycle of docs/protocol.md §3 and §4.
///
/// Every method is one atomic step judged by the store's clock, and in the
/// common case one round trip to the store. Fenced methods (`renew`,
/// `complete`, `fail`, `release`) take the key and the lease's token and
/// succeed only while that token is the record's current one and the record is
/// `processing` (or, for `complete` and `fail`, when repeating the same
/// successful call); otherwise they return [`crate::Error::LeaseLost`] and
/// change nothing.
///
/// Every method may return [`crate::Error::Unavailable`] when the store cannot
/// be reached; all of them are safe to retry.
#[async_trait]
pub trait RequestStore: Send + Sync + Debug + 'static {
    /// The backend's short name (`memory`, `postgres`, `redis`, `http`), for
    /// errors and metrics.
    fn backend(&self) -> &'static str;

    /// Decides atomically, per docs/protocol.md §3, whether the caller gets a lease
    /// (fresh, takeover of an expired lease, or retry after backoff), or
    /// learns that the job is in flight, completed or failed.
    ///
    /// A lease granted after a release carries the same attempt number and
    /// `takeover: false`: only a lease granted over an *expired* lease is a
    /// takeover.
    ///
    /// Atomic: concurrent claims of one key see one order; exactly one of N
    /// concurrent claims of a fresh key is `Acquired`. Not idempotent: each
    /// `Acquired` grants a new token. A claim that finds a live lease, a
    /// result or a final failure writes nothing.
    ///
    /// Errors: `FingerprintMismatch` when the record's kind or fingerprint
    /// differs (a fingerprint absent on either side is not a mismatch).
    async fn claim_or_get(&self, key: &RequestKey, options: &ClaimOptions) -> Result<Claim>;

    /// Extends the lease to the store's now + `ttl` (default: the ttl of the
    /// claim that granted it). Succeeds past expiry as long as nobody took
    /// over.
    ///
    /// Atomic and fenced. Idempotent in effect (the lease ends `ttl` after the
    /// last renewal). Errors: `LeaseLost`; `InvalidInput` for a ttl outside
    /// 1 ms ..= 24 h.
    async fn renew(&self, key: &RequestKey, token: Token, ttl: Option<Duration>)
    -> Result<Renewal>;

    /// Stores the result, turns the record `completed` and wakes every waiter.
    ///
    /// Atomic and fenced. Idempotent: repeating it with the same token after
    /// it succeeded returns the record again and the first result stands.
    /// Errors: `LeaseLost` (another token, or the record failed).
    async fn complete(&self, key: &RequestKey, token: Token, result: Bytes) -> Result<Record>;

    /// Stores the error, turns the record `failed` and wakes every waiter. A
    /// retryable failure with attempts left allows a retry after the backoff.
    ///
    /// Atomic and fenced. Idempotent: repeating it with the same token after
    /// it succeeded returns the record again and the first error stands.
    /// Errors: `LeaseLost` (another token, the record completed, or a claim
    /// already turned the record `failed` because the lease expired with no
    /// attempt left — only a repeat of a `fail` that succeeded succeeds).
    async fn fail(&self, key: &RequestKey, token: Token, error: &JobError) -> Result<Record>;

    /// Gives the lease up: it ends now and its token is retired. The record
    /// stays `processing`, is claimable at once without using an attempt, and
    /// waiters wake.
    ///
    /// Atomic and fenced. Not repeatable: a second release with the same
    /// token is `LeaseLost`, as is any later use of the token.
    async fn release(&self, key: &RequestKey, token: Token) -> Result<Record>;

    /// The record of `key`, if one exists and is within retention.
    ///
    /// Read-only.
    async fn get(&self, key: &RequestKey) -> Result<Option<Record>>;

    /// Waits until the record is terminal, its lease expires or is released,
    /// it is deleted, or `timeout` passes, and returns the record as it then
    /// is. Returns at once when there is nothing to wait for (no record, a
    /// terminal record, an expired lease).
    ///
    /// The store pushes the wake-up; any polling is a bounded fallback.
    /// Changes no record: a store may note that someone waits on the key,
    /// so that writes on keys nobody waits for notify no one (Postgres
    /// registers the key in an unlogged table for as long as the waiter may
    /// sleep).
    async fn wait(&self, key: &RequestKey, timeout: Duration) -> Result<Option<Record>>;

    /// Forgets the record (invalidates a cached result) and wakes its
    /// waiters. Tokens are never reused: a later claim gets a greater one.
    ///
    /// Atomic; idempotent (returns whether a record was there).
    async fn delete(&self, key: &RequestKey) -> Result<bool>;

    /// Deletes records past retention; returns how many it deleted.
    /// Housekeeping only: every other method already treats such records as
    /// absent, so correctness never depends on it running.
    async fn sweep(&self) -> Result<u64>;

    /// One page of the records `query` selects, for operators: records
    /// within retention, without their results, in the query's order.
    ///
    /// Read-only and never on the claim path. Not a snapshot: a record that
    /// exists and matches the filter from the first page to the last appears
    /// in some page; stores that keep an order (memory, Postgres) return it
    /// exactly once and in order, stores that scan (Redis) may return it
    /// twice and order each page only. A page may hold fewer records than the
    /// limit while a cursor for the next one is returned.
    ///
    /// Errors: `InvalidInput` (field `cursor`) for a cursor this store did
    /// not write.
    async fn list(&self, query: &ListQuery) -> Result<ListPage>;

    /// Counts of the records within retention whose key starts with
    /// `prefix` (empty: all), by state and kind, with the leases live and
    /// run out, as one read of the store sees them.
    ///
    /// Read-only. Its cost grows with the records counted: callers that
    /// serve it often (the server's `/v1/stats` and gauges) keep the answer
    /// for a few seconds.
    async fn counts(&self, prefix: &str) -> Result<StoreStats>;

    /// The store's push channel of record changes, for a [`crate::CachedStore`]
    /// in front of it; `None` (the default) when the store has none, and its
    /// results cannot be cached safely.
    fn change_feed(&self) -> Option<ChangeFeed> {
        None
    }
}

#[async_trait]
impl<T: RequestStore + ?Sized> RequestStore for Arc<T> {
    fn backend(&self) -> &'static str {
        (**self).backend()
    }
    async fn claim_or_get(&self, key: &RequestKey, options: &ClaimOptions) -> Result<Claim> {
        (**self).claim_or_get(key, options).await
    }
    async fn renew(
        &self,
        key: &RequestKey,
        token: Token,
        ttl: Option<Duration>,
    ) -> Result<Renewal> {
        (**self).renew(key, token, ttl).await
    }
    async fn complete(&self, key: &RequestKey, token: Token, result: Bytes) -> Result<Record> {
        (**self).complete(key, token, result).await
    }
    async fn fail(&self, key: &RequestKey, token: Token, error: &JobError) -> Result<Record> {
        (**self).fail(key, token, error).await
    }
    async fn release(&self, key: &RequestKey, token: Token) -> Result<Record> {
        (**self).release(key, token).await
    }
    async fn get(&self, key: &RequestKey) -> Result<Option<Record>> {
        (**self).get(key).await
    }
    async fn wait(&self, key: &RequestKey, timeout: Duration) -> Result<Option<Record>> {
        (**self).wait(key, timeout).await
    }
    async fn delete(&self, key: &RequestKey) -> Result<bool> {
        (**self).delete(key).await
    }
    async fn sweep(&self) -> Result<u64> {
        (**self).sweep().await
    }
    async fn list(&self, query: &ListQuery) -> Result<ListPage> {
        (**self).list(query).await
    }
    async fn counts(&self, prefix: &str) -> Result<StoreStats> {
        (**self).counts(prefix).await
    }
    fn change_feed(&self) -> Option<ChangeFeed> {
        (**self).change_feed()
    }
}
