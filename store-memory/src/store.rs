//! The sharded in-process store.

use std::collections::{BinaryHeap, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::time::Instant;

use onceflight_core::backend::{backoff_after, check_lease_ttl, lease_expired_message};
use onceflight_core::{
    ChangeFeed, Claim, ClaimOptions, Completed, Error, Failed, Fingerprint, InFlight, JobError,
    Kind, Lease, ListCursor, ListOrder, ListPage, ListQuery, MAX_TOKEN, Owner, Record, RecordState,
    Renewal, RequestKey, RequestStore, Result, StoreStats, Token,
};

use crate::config::MemoryConfig;
use crate::error::{BACKEND, MemoryError};

/// Longest retention honoured (100 years): "keep forever" in practice.
const MAX_RETENTION: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// An in-process [`RequestStore`]: sharded maps, tokio time, notified waiters.
///
/// Cheap to share behind an `Arc`; all methods take `&self`.
#[derive(Debug)]
pub struct MemoryStore {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    retention: Duration,
    clock: Clock,
    /// Deletions, for result caches in front of the store.
    feed: ChangeFeed,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new(MemoryConfig::default())
    }
}

impl MemoryStore {
    /// A store built from `config`, or `InvalidInput` when
    /// [`MemoryConfig::validate`] refuses it (a zero retention).
    pub fn try_new(config: MemoryConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self::build(config))
    }

    /// A store built from `config`.
    ///
    /// # Panics
    ///
    /// When [`MemoryConfig::validate`] refuses `config` (a zero retention);
    /// [`MemoryStore::try_new`] returns the error instead.
    pub fn new(config: MemoryConfig) -> Self {
        if let Err(e) = config.validate() {
            panic!("invalid memory store configuration: {e}");
        }
        Self::build(config)
    }

    fn build(config: MemoryConfig) -> Self {
        let shards = config.shards.max(1).next_power_of_two();
        Self {
            shards: (0..shards).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: RandomState::new(),
            // Clamped so that `Instant + retention` can never overflow.
            retention: config.retention.min(MAX_RETENTION),
            clock: Clock::new(),
            feed: ChangeFeed::in_process(),
        }
    }

    /// Whether memory still holds a record for `key`: a live one, or one past
    /// retention that no sweep, claim or delete has removed yet (every
    /// operation already treats those as absent). For tests and diagnostics
    /// of [`RequestStore::sweep`]; [`RequestStore::get`] is the API.
    pub fn holds_record(&self, key: &RequestKey) -> bool {
        self.shard(key).lock().records.contains_key(key)
    }

    fn shard(&self, key: &RequestKey) -> &Mutex<Shard> {
        // The shard count is a power of two, so masking picks uniformly.
        let hash = self.hasher.hash_one(key.as_str());
        &self.shards[(hash as usize) & (self.shards.len() - 1)]
    }
}

/// One lock's worth of records. Tokens are counted per shard: a key always
/// maps to the same shard, so its tokens strictly increase, deletes included.
#[derive(Debug, Default)]
struct Shard {
    records: HashMap<RequestKey, Entry>,
    last_token: u64,
}

impl Shard {
    /// The record of `key` if it is within retention at `now`.
    fn live(&mut self, key: &RequestKey, now: Instant) -> Option<&mut Entry> {
        self.records.get_mut(key).filter(|e| e.expires_at > now)
    }

    /// The live record of `key` if `accepts` it for a fenced operation with
    /// `token`; otherwise `LeaseLost`.
    fn fenced(
        &mut self,
        key: &RequestKey,
        token: Token,
        now: Instant,
        accepts: impl FnOnce(&Entry) -> bool,
    ) -> Result<&mut Entry> {
        self.live(key, now)
            .filter(|e| accepts(e))
            .ok_or_else(|| lease_lost(key, token))
    }
}

/// Hands out the shard's next token.
fn next_token(last_token: &mut u64) -> Result<Token> {
    if *last_token >= MAX_TOKEN {
        return Err(MemoryError::TokensExhausted.into());
    }
    *last_token += 1;
    Token::new(*last_token)
}

#[derive(Debug)]
struct Entry {
    kind: Kind,
    fingerprint: Option<Fingerprint>,
    owner: Option<Owner>,
    state: RecordState,
    token: Token,
    attempt: u32,
    max_attempts: u32,
    retry_backoff: Duration,
    lease_ttl: Duration,
    /// The lease's end while `processing`; the release instant once released.
    lease_expires_at: Instant,
    /// The lease was given up: its token is retired and the next lease does
    /// not count as an attempt.
    released: bool,
    result: Option<Bytes>,
    error: Option<JobError>,
    /// A claim turned the record failed because its lease expired with no
    /// attempt left: its holder never failed it, so a `fail` with its token
    /// is no repeat and is refused.
    failed_by_expiry: bool,
    /// Retryable failures so far, which sets the backoff's doubling.
    failures: u32,
    retry_at: Option<Instant>,
    created_at: Instant,
    updated_at: Instant,
    completed_at: Option<Instant>,
    expires_at: Instant,
    /// Present while someone waits; dropping it wakes every waiter.
    waker: Option<watch::Sender<()>>,
}

impl Entry {
    fn wake(&mut self) {
        self.waker = None;
    }

    /// Whether `token` is the current lease of a `processing` record.
    fn holds(&self, token: Token) -> bool {
        self.state == RecordState::Processing && !self.released && self.token == token
    }

    fn lease_live(&self, now: Instant) -> bool {
        !self.released && self.lease_expires_at > now
    }

    /// Grants a new lease on this record (takeover, retry or after release).
    fn grant(&mut self, token: Token, options: &ClaimOptions, now: Instant, retention: Duration) {
        self.state = RecordState::Processing;
        self.token = token;
        self.owner = options.owner().cloned();
        self.lease_ttl = options.lease_ttl();
        self.lease_expires_at = now + self.lease_ttl;
        self.released = false;
        self.error = None;
        self.failed_by_expiry = false;
        self.retry_at = None;
        self.updated_at = now;
        self.expires_at = self.lease_expires_at + retention;
    }

    fn lease(&self, key: &RequestKey, clock: &Clock, now: Instant, takeover: bool) -> Lease {
        Lease::new(
            key.clone(),
            self.token,
            self.attempt,
            self.lease_ttl,
            clock.wall(self.lease_expires_at),
            self.lease_expires_at.saturating_duration_since(now),
        )
        .with_takeover(takeover)
    }

    fn failed(&self, key: &RequestKey, now: Instant) -> Failed {
        Failed::new(
            key.clone(),
            self.token,
            self.attempt,
            self.error
                .clone()
                .unwrap_or_else(|| JobError::retryable("failed")),
            self.retry_at.map(|at| at.saturating_duration_since(now)),
        )
    }

    fn record(&self, key: &RequestKey, clock: &Clock, now: Instant) -> Record {
        let processing = self.state == RecordState::Processing;
        let mut record = Record::new(
            key.clone(),
            self.kind.clone(),
            self.state,
            self.token,
            clock.wall(self.created_at),
        );
        record.fingerprint = self.fingerprint.clone();
        record.attempt = self.attempt;
        record.max_attempts = self.max_attempts;
        record.owner = self.owner.clone();
        record.lease_expires_at = processing.then(|| clock.wall(self.lease_expires_at));
        record.lease_remaining =
            processing.then(|| self.lease_expires_at.saturating_duration_since(now));
        record.result = self.result.clone();
        record.error = self.error.clone();
        record.retry_after = self.retry_at.map(|at| at.saturating_duration_since(now));
        record.updated_at = clock.wall(self.updated_at);
        record.completed_at = self.completed_at.map(|at| clock.wall(at));
        record.expires_at = Some(clock.wall(self.expires_at));
        record.retention_remaining = Some(self.expires_at.saturating_duration_since(now));
        record
    }

    /// Ends the record as `failed`; a retry is allowed after the backoff only
    /// for a retryable failure with attempts left.
    fn set_failed(&mut self, error: JobError, now: Instant, retention: Duration) {
        let retry = error.is_retryable() && self.attempt < self.max_attempts;
        if error.is_retryable() {
            self.failures += 1;
        }
        self.retry_at = retry.then(|| now + backoff_after(self.retry_backoff, self.failures));
        self.state = RecordState::Failed;
        self.error = Some(error);
        self.failed_by_expiry = false;
        self.lease_expires_at = now;
        self.updated_at = now;
        self.expires_at = now + retention;
        self.wake();
    }
}

/// The store's clock: tokio's monotonic time (pausable in tests), shown as
/// UTC by anchoring it to the wall clock once at start.
#[derive(Debug)]
struct Clock {
    start: Instant,
    start_wall: DateTime<Utc>,
}

impl Clock {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            start_wall: Utc::now(),
        }
    }

    fn wall(&self, at: Instant) -> DateTime<Utc> {
        let since = at.saturating_duration_since(self.start);
        self.start_wall + chrono::Duration::from_std(since).unwrap_or(chrono::Duration::MAX)
    }
}

fn lease_lost(key: &RequestKey, token: Token) -> Error {
    Error::lease_lost(key, token)
}

/// docs/protocol.md §3: a differing kind, or two fingerprints that differ (an absent
/// one on either side is no mismatch).
fn mismatch(key: &RequestKey, entry: &Entry, options: &ClaimOptions) -> Option<Error> {
    let differs = entry.kind != *options.kind()
        || matches!(
            (&entry.fingerprint, options.fingerprint()),
            (Some(ours), Some(theirs)) if ours != theirs
        );
    differs.then(|| Error::fingerprint_mismatch(key, &entry.kind, options))
}

#[async_trait]
impl RequestStore for MemoryStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn claim_or_get(&self, key: &RequestKey, options: &ClaimOptions) -> Result<Claim> {
        let now = Instant::now();
        let retention = self.retention;
        let clock = &self.clock;
        let mut shard = self.shard(key).lock();
        let Shard {
            records,
            last_token,
        } = &mut *shard;
        if let Some(entry) = records.get_mut(key).filter(|e| e.expires_at > now) {
            if let Some(error) = mismatch(key, entry, options) {
                return Err(error);
            }
            let takeover = match entry.state {
                RecordState::Processing if entry.lease_live(now) => {
                    let mut in_flight = InFlight::new(
                        key.clone(),
                        entry.token,
                        entry.attempt,
                        clock.wall(entry.lease_expires_at),
                        entry.lease_expires_at.saturating_duration_since(now),
                    );
                    in_flight.owner = entry.owner.clone();
                    return Ok(Claim::InFlight(in_flight));
                }
                // A released lease is given back without using an attempt.
                RecordState::Processing if entry.released => false,
                RecordState::Processing if entry.attempt >= entry.max_attempts => {
                    let message = lease_expired_message(entry.attempt, entry.max_attempts);
                    entry.set_failed(JobError::retryable(message), now, retention);
                    entry.failed_by_expiry = true;
                    // The attempts are spent: no retry, although retryable.
                    entry.retry_at = None;
                    return Ok(Claim::Failed(entry.failed(key, now)));
                }
                RecordState::Processing => true,
                RecordState::Completed => {
                    return Ok(Claim::Completed(
                        Completed::new(
                            key.clone(),
                            entry.token,
                            entry.attempt,
                            entry.result.clone().unwrap_or_default(),
                            clock.wall(entry.completed_at.unwrap_or(entry.updated_at)),
                        )
                        .with_retention_remaining(entry.expires_at.saturating_duration_since(now)),
                    ));
                }
                RecordState::Failed if entry.retry_at.is_some_and(|at| at <= now) => false,
                RecordState::Failed => return Ok(Claim::Failed(entry.failed(key, now))),
            };
            if !entry.released {
                entry.attempt += 1;
            }
            let token = next_token(last_token)?;
            entry.grant(token, options, now, retention);
            return Ok(Claim::Acquired(entry.lease(key, clock, now, takeover)));
        }

        let token = next_token(last_token)?;
        let lease_expires_at = now + options.lease_ttl();
        let entry = Entry {
            kind: options.kind().clone(),
            fingerprint: options.fingerprint().cloned(),
            owner: options.owner().cloned(),
            state: RecordState::Processing,
            token,
            attempt: 1,
            max_attempts: options.max_attempts(),
            retry_backoff: options.retry_backoff(),
            lease_ttl: options.lease_ttl(),
            lease_expires_at,
            released: false,
            result: None,
            error: None,
            failed_by_expiry: false,
            failures: 0,
            retry_at: None,
            created_at: now,
            updated_at: now,
            completed_at: None,
            expires_at: lease_expires_at + retention,
            waker: None,
        };
        let lease = entry.lease(key, clock, now, false);
        // Replacing a record past retention drops its waker, waking waiters.
        records.insert(key.clone(), entry);
        Ok(Claim::Acquired(lease))
    }

    async fn renew(
        &self,
        key: &RequestKey,
        token: Token,
        ttl: Option<Duration>,
    ) -> Result<Renewal> {
        let ttl = ttl.map(check_lease_ttl).transpose()?;
        let now = Instant::now();
        let mut shard = self.shard(key).lock();
        let entry = shard.fenced(key, token, now, |e| e.holds(token))?;
        let lease_expires_at = now + ttl.unwrap_or(entry.lease_ttl);
        if lease_expires_at < entry.lease_expires_at {
            // Waiters sleep until the lease end they saw; a shorter lease
            // must wake them, or they would sleep past its expiry (a
            // takeover's chance) until their timeout.
            entry.wake();
        }
        entry.lease_expires_at = lease_expires_at;
        entry.updated_at = now;
        entry.expires_at = entry.lease_expires_at + self.retention;
        Ok(Renewal::new(
            self.clock.wall(entry.lease_expires_at),
            entry.lease_expires_at.saturating_duration_since(now),
        ))
    }

    async fn complete(&self, key: &RequestKey, token: Token, result: Bytes) -> Result<Record> {
        let now = Instant::now();
        let mut shard = self.shard(key).lock();
        let entry = shard.fenced(key, token, now, |e| e.token == token)?;
        match entry.state {
            RecordState::Processing if !entry.released => {
                entry.state = RecordState::Completed;
                entry.result = Some(result);
                entry.completed_at = Some(now);
                entry.lease_expires_at = now;
                entry.updated_at = now;
                entry.expires_at = now + self.retention;
                entry.wake();
            }
            // The same token repeating a successful complete: the first
            // result stands.
            RecordState::Completed => {}
            _ => return Err(lease_lost(key, token)),
        }
        Ok(entry.record(key, &self.clock, now))
    }

    async fn fail(&self, key: &RequestKey, token: Token, error: &JobError) -> Result<Record> {
        let now = Instant::now();
        let mut shard = self.shard(key).lock();
        let entry = shard.fenced(key, token, now, |e| e.token == token)?;
        match entry.state {
            RecordState::Processing if !entry.released => {
                entry.set_failed(error.clone(), now, self.retention);
            }
            // The same token repeating a successful fail: the first error
            // stands. A record a claim failed for its expired lease was not
            // failed by this token, which lost its lease like a `complete`
            // would.
            RecordState::Failed if !entry.failed_by_expiry => {}
            _ => return Err(lease_lost(key, token)),
        }
        Ok(entry.record(key, &self.clock, now))
    }

    async fn release(&self, key: &RequestKey, token: Token) -> Result<Record> {
        let now = Instant::now();
        let mut shard = self.shard(key).lock();
        let entry = shard.fenced(key, token, now, |e| e.holds(token))?;
        entry.released = true;
        entry.lease_expires_at = now;
        entry.updated_at = now;
        entry.expires_at = now + self.retention;
        entry.wake();
        Ok(entry.record(key, &self.clock, now))
    }

    async fn get(&self, key: &RequestKey) -> Result<Option<Record>> {
        let now = Instant::now();
        let mut shard = self.shard(key).lock();
        Ok(shard
            .live(key, now)
            .map(|e| e.record(key, &self.clock, now)))
    }

    async fn wait(&self, key: &RequestKey, timeout: Duration) -> Result<Option<Record>> {
        let deadline = Instant::now() + timeout;
        loop {
            let now = Instant::now();
            let (mut changed, lease_end) = {
                let mut shard = self.shard(key).lock();
                let Some(entry) = shard.live(key, now) else {
                    return Ok(None);
                };
                let record = entry.record(key, &self.clock, now);
                if record.is_settled() || now >= deadline {
                    return Ok(Some(record));
                }
                // Subscribing under the lock means no change can slip between
                // this look and the wait below.
                let changed = entry
                    .waker
                    .get_or_insert_with(|| watch::channel(()).0)
                    .subscribe();
                (changed, entry.lease_expires_at)
            };
            tokio::select! {
                // The sender is dropped on every change: that is the wake-up.
                _ = changed.changed() => {}
                () = tokio::time::sleep_until(lease_end.min(deadline)) => {}
            }
        }
    }

    async fn delete(&self, key: &RequestKey) -> Result<bool> {
        let now = Instant::now();
        // Dropping the entry drops its waker, which wakes the waiters.
        let removed = self.shard(key).lock().records.remove(key);
        if removed.is_some() {
            self.feed.changed(key.as_str());
        }
        Ok(removed.is_some_and(|entry| entry.expires_at > now))
    }

    async fn sweep(&self) -> Result<u64> {
        let mut swept = 0;
        for shard in self.shards.iter() {
            // One shard at a time, so claims on other shards never wait for
            // the whole sweep.
            let now = Instant::now();
            let mut shard = shard.lock();
            let before = shard.records.len();
            shard.records.retain(|_, e| e.expires_at > now);
            swept += (before - shard.records.len()) as u64;
        }
        Ok(swept)
    }

    /// Walks every shard, one lock at a time, keeping the page's records in
    /// a heap bounded by the limit: memory proportional to the page, time to
    /// the records held.
    async fn list(&self, query: &ListQuery) -> Result<ListPage> {
        let after = query.cursor().map(ListCursor::to_keyset).transpose()?;
        let after = after.map(|(at, key)| (at.timestamp_micros(), key));
        let newest_first = query.order() == ListOrder::NewestFirst;
        let wanted = query.limit() as usize + 1;
        // The heap's top is the worst record kept, dropped when a better one
        // comes; "better" means earlier in the listing's order.
        let mut page: BinaryHeap<Ranked> = BinaryHeap::with_capacity(wanted + 1);
        for shard in self.shards.iter() {
            let now = Instant::now();
            let shard = shard.lock();
            for (key, entry) in &shard.records {
                if entry.expires_at <= now || !key.as_str().starts_with(query.prefix()) {
                    continue;
                }
                let created = self.clock.wall(entry.created_at).timestamp_micros();
                let rank = (created, key.as_str());
                if let Some((at, last)) = &after {
                    let past = (*at, last.as_str());
                    if (newest_first && rank >= past) || (!newest_first && rank <= past) {
                        continue;
                    }
                }
                if page.len() == wanted && !Ranked::beats(rank, page.peek(), newest_first) {
                    continue;
                }
                let mut record = entry.record(key, &self.clock, now);
                if !query.accepts(&record) {
                    continue;
                }
                record.result = None;
                page.push(Ranked {
                    created,
                    newest_first,
                    record,
                });
                if page.len() > wanted {
                    page.pop();
                }
            }
        }
        let mut records: Vec<Record> = page
            .into_sorted_vec()
            .into_iter()
            .map(|r| r.record)
            .collect();
        let next = if records.len() == wanted {
            records.pop();
            records
                .last()
                .map(|r| ListCursor::keyset(r.created_at, &r.key))
        } else {
            None
        };
        Ok(ListPage::new(records, next))
    }

    async fn counts(&self, prefix: &str) -> Result<StoreStats> {
        let mut stats = StoreStats::default();
        for shard in self.shards.iter() {
            let now = Instant::now();
            let shard = shard.lock();
            for (key, entry) in &shard.records {
                if entry.expires_at > now && key.as_str().starts_with(prefix) {
                    stats.add(&entry.record(key, &self.clock, now), self.clock.wall(now));
                }
            }
        }
        Ok(stats)
    }

    fn change_feed(&self) -> Option<ChangeFeed> {
        Some(self.feed.clone())
    }
}

/// A record kept for a listing's page, ordered so that the heap's top is
/// the one furthest along the listing's order.
struct Ranked {
    /// The creation instant in microseconds, the precision of cursors.
    created: i64,
    newest_first: bool,
    record: Record,
}

impl Ranked {
    fn rank(&self) -> (i64, &str) {
        (self.created, self.record.key.as_str())
    }

    /// Whether a record of `rank` comes before `worst` in the listing.
    fn beats(rank: (i64, &str), worst: Option<&Ranked>, newest_first: bool) -> bool {
        worst.is_none_or(|w| {
            if newest_first {
                rank > w.rank()
            } else {
                rank < w.rank()
            }
        })
    }
}

impl PartialEq for Ranked {
    fn eq(&self, other: &Self) -> bool {
        self.rank() == other.rank()
    }
}

impl Eq for Ranked {}

impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Ranked {
    /// Later in the listing is greater.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let ascending = self.rank().cmp(&other.rank());
        if self.newest_first {
            ascending.reverse()
        } else {
            ascending
        }
    }
}
