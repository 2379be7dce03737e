//! What stores answer: the four claim outcomes, leases and records.

use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};

use crate::error::{Error, Result};
use crate::types::{ClaimOptions, Fingerprint, JobError, Kind, Owner, RequestKey, Token};

/// A point in time on the store's clock, as UTC.
pub type Timestamp = DateTime<Utc>;

/// The one atomic decision of a claim: a new lease, work in flight elsewhere,
/// a result, or a failure.
///
/// Dropping an [`Claim::Acquired`] unused blocks the key for the lease's
/// time to live: do the job, or [`crate::RequestStore::release`] the lease.
#[derive(Clone, PartialEq, Eq, Debug)]
#[must_use = "an Acquired claim holds the key until its lease ends: run the job or release it"]
pub enum Claim {
    /// The caller holds a new lease and must do the job (or release it).
    Acquired(Lease),
    /// Another worker holds a live lease.
    InFlight(InFlight),
    /// The job is done; here is its result.
    Completed(Completed),
    /// The job failed and may not be retried now.
    Failed(Failed),
}

impl Claim {
    /// The token this outcome reports: the new lease's, or the record's current
    /// one.
    pub fn token(&self) -> Token {
        match self {
            Claim::Acquired(l) => l.token,
            Claim::InFlight(f) => f.token,
            Claim::Completed(c) => c.token,
            Claim::Failed(f) => f.token,
        }
    }

    /// The record's attempt number this outcome reports.
    pub fn attempt(&self) -> u32 {
        match self {
            Claim::Acquired(l) => l.attempt,
            Claim::InFlight(f) => f.attempt,
            Claim::Completed(c) => c.attempt,
            Claim::Failed(f) => f.attempt,
        }
    }

    /// The outcome's name as used by the HTTP API and metrics.
    pub fn state_name(&self) -> &'static str {
        match self {
            Claim::Acquired(_) => "acquired",
            Claim::InFlight(_) => "in_flight",
            Claim::Completed(_) => "completed",
            Claim::Failed(_) => "failed",
        }
    }
}

/// The right to do a key's job until `expires_at` (store clock).
///
/// A lease granted after a release carries the release's attempt number and
/// `takeover: false`: the previous holder gave the key back, nobody was taken
/// over. Only a lease granted over an *expired* lease is a takeover.
#[derive(Clone, PartialEq, Eq, Debug)]
#[must_use = "a lease holds the key until it ends: run the job, then complete, fail or release it"]
#[non_exhaustive]
pub struct Lease {
    /// The request's key.
    pub key: RequestKey,
    /// The fencing token every later operation on this lease must present.
    pub token: Token,
    /// How many leases the record has been granted, this one included
    /// (releases excepted).
    pub attempt: u32,
    /// The lease's time to live, the default for renewals.
    pub ttl: Duration,
    /// When the lease ends on the store's clock.
    pub expires_at: Timestamp,
    /// Time left on the lease when the store answered, so that callers need
    /// no synchronized clock.
    pub remaining: Duration,
    /// Whether this lease took over another worker's expired lease; `false`
    /// for a fresh record, a retry after a failure, and a claim after a
    /// release.
    pub takeover: bool,
}

/// Another worker holds a live lease.
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub struct InFlight {
    /// The request's key.
    pub key: RequestKey,
    /// The holder's token.
    pub token: Token,
    /// The record's attempt number.
    pub attempt: u32,
    /// The holder's owner id, if it gave one.
    pub owner: Option<Owner>,
    /// When the holder's lease ends unless renewed.
    pub lease_expires_at: Timestamp,
    /// Time left on the holder's lease when the store answered.
    pub remaining: Duration,
}

/// The job completed.
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub struct Completed {
    /// The request's key.
    pub key: RequestKey,
    /// The token of the lease that completed the job.
    pub token: Token,
    /// The attempt that completed the job.
    pub attempt: u32,
    /// The job's result, opaque bytes.
    pub result: Bytes,
    /// When the job completed.
    pub completed_at: Timestamp,
    /// Time left before the store forgets the result, as the store judged it
    /// when it answered; `None` when the store did not say (a cache in front
    /// of the store then does not keep the result).
    pub retention_remaining: Option<Duration>,
}

/// The job failed and no lease can be granted now.
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub struct Failed {
    /// The request's key.
    pub key: RequestKey,
    /// The token of the last lease.
    pub token: Token,
    /// The record's attempt number.
    pub attempt: u32,
    /// Why it failed.
    pub error: JobError,
    /// When a retry will be allowed, if one will: `None` after a permanent
    /// failure or when no attempt is left.
    pub retry_after: Option<Duration>,
}

/// A record's state (docs/protocol.md §2).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum RecordState {
    /// A lease was granted; it may have expired or been released.
    Processing,
    /// The result is stored.
    Completed,
    /// The error is stored.
    Failed,
}

impl RecordState {
    /// The state's name as used by the HTTP API.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordState::Processing => "processing",
            RecordState::Completed => "completed",
            RecordState::Failed => "failed",
        }
    }

    /// Whether the record is `completed` or `failed`.
    pub fn is_terminal(self) -> bool {
        !matches!(self, RecordState::Processing)
    }
}

/// What a store keeps per key, as seen at one instant of the store's clock.
///
/// Fields that depend on "now" (`lease_remaining`, `retry_after`) are computed
/// by the store when it reads the record, so that no client clock is needed.
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub struct Record {
    /// The request's key.
    pub key: RequestKey,
    /// The job type.
    pub kind: Kind,
    /// The request's fingerprint, if the creating claim gave one.
    pub fingerprint: Option<Fingerprint>,
    /// The record's state.
    pub state: RecordState,
    /// The current (or last) lease's token.
    pub token: Token,
    /// How many leases the record has been granted (releases excepted).
    pub attempt: u32,
    /// How many leases the record may be granted.
    pub max_attempts: u32,
    /// The owner of the current (or last) lease, if it gave one.
    pub owner: Option<Owner>,
    /// When the lease ends; `None` for a terminal record.
    pub lease_expires_at: Option<Timestamp>,
    /// Time left on the lease; zero once it expired or was released; `None`
    /// for a terminal record.
    pub lease_remaining: Option<Duration>,
    /// The result of a completed record.
    pub result: Option<Bytes>,
    /// The error of a failed record.
    pub error: Option<JobError>,
    /// For a failed record: time until a retry is allowed (zero once it is),
    /// or `None` when no retry will be allowed.
    pub retry_after: Option<Duration>,
    /// When the record was created.
    pub created_at: Timestamp,
    /// When the record last changed.
    pub updated_at: Timestamp,
    /// When the record completed (completed records only).
    pub completed_at: Option<Timestamp>,
    /// When the record will be forgotten (retention).
    pub expires_at: Option<Timestamp>,
    /// Time left before the record is forgotten, as the store judged it when
    /// it read the record; `None` when the store did not say.
    pub retention_remaining: Option<Duration>,
}

impl Record {
    /// Whether the record is `processing` and its lease has expired or was
    /// released, so that a claim would take it over.
    pub fn lease_expired(&self) -> bool {
        self.state == RecordState::Processing && self.lease_remaining == Some(Duration::ZERO)
    }

    /// Whether a waiter on this record has nothing left to wait for: the
    /// record is terminal or its lease is over.
    pub fn is_settled(&self) -> bool {
        self.state.is_terminal() || self.lease_expired()
    }
}

/// How a store decided a claim, for stores whose atomic step answers the
/// record it decided on plus a decision (the Postgres function, the Redis
/// script); [`Record::into_claim`] turns the pair into a [`Claim`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Decision {
    /// A lease was granted: the record holds it.
    Acquired {
        /// The lease's time to live.
        ttl: Duration,
        /// Whether it took over an expired lease.
        takeover: bool,
    },
    /// Another worker holds a live lease.
    InFlight,
    /// The record is completed.
    Completed,
    /// The record failed and no lease is granted now.
    Failed,
    /// The claim's kind or fingerprint differs from the record's.
    Mismatch,
}

impl Record {
    /// The [`Claim`] answering `decision` on this record (as read by the same
    /// atomic step), or `FingerprintMismatch`. A record that contradicts the
    /// decision (a lease without an end) is a `Backend` error of `backend`.
    pub fn into_claim(
        self,
        decision: Decision,
        options: &ClaimOptions,
        backend: &'static str,
    ) -> Result<Claim> {
        let corrupt = |what: &str| Error::Backend {
            backend,
            message: format!("{what} for key {:?}", self.key.as_str()),
        };
        Ok(match decision {
            Decision::Acquired { ttl, takeover } => Claim::Acquired(Lease {
                token: self.token,
                attempt: self.attempt,
                ttl,
                expires_at: self
                    .lease_expires_at
                    .ok_or_else(|| corrupt("a granted lease without an end"))?,
                remaining: self.lease_remaining.unwrap_or_default(),
                takeover,
                key: self.key,
            }),
            Decision::InFlight => Claim::InFlight(InFlight {
                token: self.token,
                attempt: self.attempt,
                lease_expires_at: self
                    .lease_expires_at
                    .ok_or_else(|| corrupt("a live lease without an end"))?,
                remaining: self.lease_remaining.unwrap_or_default(),
                owner: self.owner,
                key: self.key,
            }),
            Decision::Completed => Claim::Completed(Completed {
                token: self.token,
                attempt: self.attempt,
                result: self
                    .result
                    .ok_or_else(|| corrupt("a completed record without a result"))?,
                completed_at: self.completed_at.unwrap_or(self.updated_at),
                retention_remaining: self.retention_remaining,
                key: self.key,
            }),
            Decision::Failed => Claim::Failed(Failed {
                token: self.token,
                attempt: self.attempt,
                error: self
                    .error
                    .ok_or_else(|| corrupt("a failed record without an error"))?,
                retry_after: self.retry_after,
                key: self.key,
            }),
            Decision::Mismatch => {
                return Err(Error::fingerprint_mismatch(&self.key, &self.kind, options));
            }
        })
    }
}

impl Record {
    /// The [`Renewal`] a store answers with the record it renewed; a record
    /// without a lease end is a `Backend` error of `backend`.
    pub fn into_renewal(self, backend: &'static str) -> Result<Renewal> {
        Ok(Renewal {
            expires_at: self.lease_expires_at.ok_or_else(|| Error::Backend {
                backend,
                message: format!(
                    "a renewed lease without an end for key {:?}",
                    self.key.as_str()
                ),
            })?,
            remaining: self.lease_remaining.unwrap_or_default(),
        })
    }
}

impl Lease {
    /// A lease as a store grants it (`takeover: false`; see
    /// [`Lease::with_takeover`]). For stores and for tests that build
    /// answers by hand.
    pub fn new(
        key: RequestKey,
        token: Token,
        attempt: u32,
        ttl: Duration,
        expires_at: Timestamp,
        remaining: Duration,
    ) -> Self {
        Self {
            key,
            token,
            attempt,
            ttl,
            expires_at,
            remaining,
            takeover: false,
        }
    }

    /// The same lease, marked as a takeover of an expired lease or not.
    pub fn with_takeover(mut self, takeover: bool) -> Self {
        self.takeover = takeover;
        self
    }
}

impl InFlight {
    /// Another worker's live lease, without an owner (set `owner` after).
    pub fn new(
        key: RequestKey,
        token: Token,
        attempt: u32,
        lease_expires_at: Timestamp,
        remaining: Duration,
    ) -> Self {
        Self {
            key,
            token,
            attempt,
            owner: None,
            lease_expires_at,
            remaining,
        }
    }
}

impl Completed {
    /// A completed job's answer.
    pub fn new(
        key: RequestKey,
        token: Token,
        attempt: u32,
        result: Bytes,
        completed_at: Timestamp,
    ) -> Self {
        Self {
            key,
            token,
            attempt,
            result,
            completed_at,
            retention_remaining: None,
        }
    }

    /// Sets [`Completed::retention_remaining`].
    pub fn with_retention_remaining(mut self, remaining: Duration) -> Self {
        self.retention_remaining = Some(remaining);
        self
    }
}

impl Failed {
    /// A failed job's answer.
    pub fn new(
        key: RequestKey,
        token: Token,
        attempt: u32,
        error: JobError,
        retry_after: Option<Duration>,
    ) -> Self {
        Self {
            key,
            token,
            attempt,
            error,
            retry_after,
        }
    }
}

impl Record {
    /// A record with its identity set and everything else empty: attempt 1
    /// of the default maximum, no owner, lease, result or error, updated when
    /// created. Stores and tests set the other (public) fields after.
    pub fn new(
        key: RequestKey,
        kind: Kind,
        state: RecordState,
        token: Token,
        created_at: Timestamp,
    ) -> Self {
        Self {
            key,
            kind,
            fingerprint: None,
            state,
            token,
            attempt: 1,
            max_attempts: crate::types::DEFAULT_MAX_ATTEMPTS,
            owner: None,
            lease_expires_at: None,
            lease_remaining: None,
            result: None,
            error: None,
            retry_after: None,
            created_at,
            updated_at: created_at,
            completed_at: None,
            expires_at: None,
            retention_remaining: None,
        }
    }
}

impl Renewal {
    /// A renewal's answer.
    pub fn new(expires_at: Timestamp, remaining: Duration) -> Self {
        Self {
            expires_at,
            remaining,
        }
    }
}

/// The new end of a renewed lease.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub struct Renewal {
    /// When the lease now ends on the store's clock.
    pub expires_at: Timestamp,
    /// Time left on the lease when the store answered.
    pub remaining: Duration,
}
