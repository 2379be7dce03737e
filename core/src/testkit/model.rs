//! A reference model of docs/protocol.md §3–§4: what a store must answer, computed the
//! simplest way that is obviously right.
//!
//! [`Model`] is pure and deterministic. It keeps every record in a map, has an
//! explicit clock (`now`, a [`Duration`] since the model started, moved only
//! by [`Model::advance`]) and its own fencing tokens (one counter for all keys,
//! starting at 1, so tokens strictly increase per key across deletes and
//! retention, and [`NEVER_GRANTED`] is never granted). It trades every
//! concern of a real store (speed, concurrency, wall-clock timestamps) for
//! being easy to check against the protocol text (`docs/protocol.md`), so that
//! [`check_against_model`](super::check_against_model) can hold any backend
//! to it step by step.
//!
//! Where the protocol only sketches, the model pins down these choices (every
//! store implements the same):
//!
//! - A record is *live* while its retention instant `expires_at` is strictly
//!   after `now`; a record that is not live is treated as absent by every
//!   operation (a claim creates a fresh record with attempt 1).
//! - Retention runs from the last change: a lease's end (claim, renewal,
//!   release) or the moment the record turned completed or failed.
//! - `kind`, `fingerprint`, `max_attempts` and the retry backoff are fixed by
//!   the claim that creates the record; a later grant takes only its owner and
//!   lease ttl from its claim.
//! - A claim that finds an expired lease with no attempt left turns the
//!   record failed with [`lease_expired_message`] — a retryable error that
//!   counts as a retryable failure but allows no retry.
//! - `complete` repeated with the record's token on a completed record, and
//!   `fail` repeated with the record's token on a record that this token's
//!   own `fail` turned failed, succeed without changing anything (docs/protocol.md §4's
//!   same-token idempotence). A `fail` by the holder of a lease that a claim
//!   turned failed, because it expired on the last attempt, is `LeaseLost`,
//!   as its `complete` is: that worker never failed anything, so there is
//!   no earlier success for it to repeat, and its message is not recorded.
//! - A claim after a `release` answers `Acquired` with `takeover: false` and
//!   the same attempt number: the lease was given back, not abandoned, so
//!   nothing was taken over and no attempt was used.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;

use crate::claim::RecordState;
use crate::types::{
    ClaimOptions, Fingerprint, JobError, Kind, Owner, backoff_after, check_lease_ttl,
    lease_expired_message,
};

/// A fencing token of the model. Model tokens are not the store's tokens: a
/// harness keeps the correspondence, established at each grant.
pub type ModelToken = u64;

/// A token the model never grants (its counter starts at 1): the model's
/// side of a made-up token.
pub const NEVER_GRANTED: ModelToken = 0;

/// The reference model: every key's record, a clock and a token counter.
#[derive(Clone, Debug)]
pub struct Model {
    now: Duration,
    retention: Duration,
    last_token: ModelToken,
    records: BTreeMap<String, Entry>,
}

/// What the model answers to a claim (docs/protocol.md §3's four outcomes), with the
/// values a store's [`crate::Claim`] must match.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum ClaimOutcome {
    /// A new lease.
    Acquired {
        /// The new lease's token.
        token: ModelToken,
        /// The record's attempt number, this lease included.
        attempt: u32,
        /// Whether the lease took over an expired one.
        takeover: bool,
        /// Time left on the new lease (its ttl).
        remaining: Duration,
    },
    /// Another lease is live.
    InFlight {
        /// The holder's token.
        token: ModelToken,
        /// The holder's owner.
        owner: Option<Owner>,
        /// The record's attempt number.
        attempt: u32,
        /// Time left on the holder's lease.
        remaining: Duration,
    },
    /// The job completed.
    Completed {
        /// The token that completed it.
        token: ModelToken,
        /// The attempt that completed it.
        attempt: u32,
        /// The stored result.
        result: Bytes,
    },
    /// The job failed and no lease can be granted now.
    Failed {
        /// The last lease's token.
        token: ModelToken,
        /// The record's attempt number.
        attempt: u32,
        /// The stored error.
        error: JobError,
        /// Time until a retry is allowed, if one will be.
        retry_after: Option<Duration>,
    },
}

/// Why the model refused an operation; it changed nothing.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ModelError {
    /// The token is not the current lease of a live, `processing` record
    /// (and the call is not a same-token repeat of a successful
    /// `complete`/`fail`).
    LeaseLost,
    /// The claim's kind differs from the record's, or both fingerprints are
    /// present and differ.
    FingerprintMismatch,
    /// A renewal asked for a ttl outside 1 ms ..= 24 h.
    InvalidInput,
}

/// A live record as the model shows it at its `now`: the fields a store's
/// [`crate::Record`] must match.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct RecordView {
    /// The record's state.
    pub state: RecordState,
    /// The current (or last) lease's token.
    pub token: ModelToken,
    /// Leases granted to the record (releases excepted).
    pub attempt: u32,
    /// Leases the record may be granted.
    pub max_attempts: u32,
    /// The owner of the current (or last) lease.
    pub owner: Option<Owner>,
    /// The job type.
    pub kind: Kind,
    /// The creating claim's fingerprint.
    pub fingerprint: Option<Fingerprint>,
    /// The result of a completed record.
    pub result: Option<Bytes>,
    /// The error of a failed record.
    pub error: Option<JobError>,
    /// `processing` only: time left on the lease, zero once it expired or
    /// was released; `None` for a terminal record.
    pub lease_remaining: Option<Duration>,
    /// `failed` only: time until a retry is allowed (zero once it is), or
    /// `None` when no retry will be allowed.
    pub retry_after: Option<Duration>,
    /// `completed` only: when the record completed, on the model's clock.
    pub completed_at: Option<Duration>,
}

impl RecordView {
    /// Whether the record is `processing` with its lease over (expired or
    /// released), as [`crate::Record::lease_expired`].
    pub fn lease_expired(&self) -> bool {
        self.state == RecordState::Processing && self.lease_remaining == Some(Duration::ZERO)
    }
}

impl Model {
    /// An empty model at time zero whose records are kept `retention` after
    /// their last change.
    pub fn new(retention: Duration) -> Self {
        Self {
            now: Duration::ZERO,
            retention,
            last_token: NEVER_GRANTED,
            records: BTreeMap::new(),
        }
    }

    /// The model's clock: time since it started.
    pub fn now(&self) -> Duration {
        self.now
    }

    /// The retention the model was built with.
    pub fn retention(&self) -> Duration {
        self.retention
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&mut self, by: Duration) {
        self.now += by;
    }

    /// docs/protocol.md §3: decides the claim of `key` with `options`.
    pub fn claim(&mut self, key: &str, options: &ClaimOptions) -> Result<ClaimOutcome, ModelError> {
        let now = self.now;
        let retention = self.retention;
        let Some(entry) = self.live_mut(key) else {
            let token = self.next_token();
            let entry = Entry::create(options, token, now, retention);
            let outcome = entry.acquired(false, now);
            self.records.insert(key.to_owned(), entry);
            return Ok(outcome);
        };

        // A mismatch is checked before anything else and changes nothing.
        let fingerprints_differ = matches!(
            (&entry.fingerprint, options.fingerprint()),
            (Some(ours), Some(theirs)) if ours != theirs
        );
        if entry.kind != *options.kind() || fingerprints_differ {
            return Err(ModelError::FingerprintMismatch);
        }

        enum Decision {
            Answer(ClaimOutcome),
            Grant { attempt: u32, takeover: bool },
        }
        let decision = match entry.state {
            RecordState::Processing if !entry.released && now < entry.lease_expires_at => {
                Decision::Answer(ClaimOutcome::InFlight {
                    token: entry.token,
                    owner: entry.owner.clone(),
                    attempt: entry.attempt,
                    remaining: entry.lease_expires_at - now,
                })
            }
            // A release does not use an attempt.
            RecordState::Processing if entry.released => Decision::Grant {
                attempt: entry.attempt,
                takeover: false,
            },
            RecordState::Processing if entry.attempt >= entry.max_attempts => {
                let message = lease_expired_message(entry.attempt, entry.max_attempts);
                entry.state = RecordState::Failed;
                entry.error = Some(JobError::retryable(message));
                entry.failed_by_expiry = true;
                entry.failures += 1;
                entry.retry_at = None;
                entry.expires_at = now + retention;
                Decision::Answer(entry.failed_outcome(now))
            }
            RecordState::Processing => Decision::Grant {
                attempt: entry.attempt + 1,
                takeover: true,
            },
            RecordState::Completed => Decision::Answer(ClaimOutcome::Completed {
                token: entry.token,
                attempt: entry.attempt,
                result: entry.result.clone().unwrap_or_default(),
            }),
            RecordState::Failed if entry.retry_at.is_some_and(|at| at <= now) => Decision::Grant {
                attempt: entry.attempt + 1,
                takeover: false,
            },
            RecordState::Failed => Decision::Answer(entry.failed_outcome(now)),
        };

        match decision {
            Decision::Answer(outcome) => Ok(outcome),
            Decision::Grant { attempt, takeover } => {
                let token = self.next_token();
                let entry = self
                    .records
                    .get_mut(key)
                    .expect("the record was found live just above");
                entry.grant(options, token, attempt, now, retention);
                Ok(entry.acquired(takeover, now))
            }
        }
    }

    /// docs/protocol.md §4 `renew`: the lease now ends `ttl` (default: the lease's own
    /// ttl) after `now`; returns the time left on it.
    pub fn renew(
        &mut self,
        key: &str,
        token: ModelToken,
        ttl: Option<Duration>,
    ) -> Result<Duration, ModelError> {
        if let Some(ttl) = ttl {
            check_lease_ttl(ttl).map_err(|_| ModelError::InvalidInput)?;
        }
        let now = self.now;
        let retention = self.retention;
        let entry = self.holder_mut(key, token).ok_or(ModelError::LeaseLost)?;
        let ttl = ttl.unwrap_or(entry.lease_ttl);
        entry.lease_expires_at = now + ttl;
        entry.expires_at = entry.lease_expires_at + retention;
        Ok(ttl)
    }

    /// docs/protocol.md §4 `complete`: stores `result` and turns the record completed;
    /// a repeat with the same token returns the record, first result kept.
    pub fn complete(
        &mut self,
        key: &str,
        token: ModelToken,
        result: Bytes,
    ) -> Result<RecordView, ModelError> {
        let now = self.now;
        let retention = self.retention;
        if let Some(entry) = self.holder_mut(key, token) {
            entry.state = RecordState::Completed;
            entry.result = Some(result);
            entry.completed_at = Some(now);
            entry.expires_at = now + retention;
            return Ok(entry.view(now));
        }
        match self.live_mut(key) {
            Some(entry) if entry.token == token && entry.state == RecordState::Completed => {
                Ok(entry.view(now))
            }
            _ => Err(ModelError::LeaseLost),
        }
    }

    /// docs/protocol.md §4 `fail`: stores `error` and turns the record failed, with a
    /// retry allowed after the backoff when the error is retryable and an
    /// attempt is left; a repeat with the same token after a `fail` that
    /// succeeded returns the record, first error kept. A token whose expired
    /// lease a claim turned failed (no attempt left) is `LeaseLost`.
    pub fn fail(
        &mut self,
        key: &str,
        token: ModelToken,
        error: &JobError,
    ) -> Result<RecordView, ModelError> {
        let now = self.now;
        let retention = self.retention;
        if let Some(entry) = self.holder_mut(key, token) {
            entry.state = RecordState::Failed;
            entry.error = Some(error.clone());
            entry.failed_by_expiry = false;
            entry.retry_at = None;
            if error.is_retryable() {
                entry.failures += 1;
                if entry.attempt < entry.max_attempts {
                    entry.retry_at = Some(now + backoff_after(entry.retry_backoff, entry.failures));
                }
            }
            entry.expires_at = now + retention;
            return Ok(entry.view(now));
        }
        match self.live_mut(key) {
            // Only a repeat of a `fail` that succeeded: a record that a claim
            // failed for its expired lease was never failed by this token.
            Some(entry)
                if entry.token == token
                    && entry.state == RecordState::Failed
                    && !entry.failed_by_expiry =>
            {
                Ok(entry.view(now))
            }
            _ => Err(ModelError::LeaseLost),
        }
    }

    /// docs/protocol.md §4 `release`: the lease ends now and its token is retired; the
    /// record stays `processing` and is claimable at once.
    pub fn release(&mut self, key: &str, token: ModelToken) -> Result<RecordView, ModelError> {
        let now = self.now;
        let retention = self.retention;
        let entry = self.holder_mut(key, token).ok_or(ModelError::LeaseLost)?;
        entry.released = true;
        entry.lease_expires_at = now;
        entry.expires_at = now + retention;
        Ok(entry.view(now))
    }

    /// docs/protocol.md §4 `get`: the live record of `key`, if any.
    pub fn get(&self, key: &str) -> Option<RecordView> {
        self.records
            .get(key)
            .filter(|entry| entry.is_live(self.now))
            .map(|entry| entry.view(self.now))
    }

    /// docs/protocol.md §4 `delete`: forgets the record; whether a live one was there.
    /// Tokens are never reused (the counter is not per record).
    pub fn delete(&mut self, key: &str) -> bool {
        self.records
            .remove(key)
            .is_some_and(|entry| entry.is_live(self.now))
    }

    /// docs/protocol.md §4 `sweep`: forgets every record past retention; how many.
    pub fn sweep(&mut self) -> u64 {
        let now = self.now;
        let before = self.records.len();
        self.records.retain(|_, entry| entry.is_live(now));
        (before - self.records.len()) as u64
    }

    fn next_token(&mut self) -> ModelToken {
        self.last_token += 1;
        self.last_token
    }

    fn live_mut(&mut self, key: &str) -> Option<&mut Entry> {
        let now = self.now;
        self.records.get_mut(key).filter(|entry| entry.is_live(now))
    }

    /// The record of `key` if `token` holds its lease: live, `processing`,
    /// not released, and `token` is the current token. Past expiry is fine:
    /// only a takeover (a new token) ends a holder's rights.
    fn holder_mut(&mut self, key: &str, token: ModelToken) -> Option<&mut Entry> {
        self.live_mut(key).filter(|entry| {
            entry.state == RecordState::Processing && !entry.released && entry.token == token
        })
    }
}

/// One key's record, with instants on the model's clock.
#[derive(Clone, Debug)]
struct Entry {
    kind: Kind,
    fingerprint: Option<Fingerprint>,
    max_attempts: u32,
    retry_backoff: Duration,
    state: RecordState,
    token: ModelToken,
    attempt: u32,
    owner: Option<Owner>,
    /// The current lease's ttl, the default for its renewals.
    lease_ttl: Duration,
    lease_expires_at: Duration,
    released: bool,
    result: Option<Bytes>,
    error: Option<JobError>,
    /// The record is failed because a claim found its lease expired with no
    /// attempt left, not because its holder called `fail`.
    failed_by_expiry: bool,
    /// Retryable failures so far (the backoff doubles with each).
    failures: u32,
    retry_at: Option<Duration>,
    completed_at: Option<Duration>,
    /// The retention instant: the record is live while `now < expires_at`.
    expires_at: Duration,
}

impl Entry {
    /// A new record, granted its first lease.
    fn create(
        options: &ClaimOptions,
        token: ModelToken,
        now: Duration,
        retention: Duration,
    ) -> Self {
        let mut entry = Self {
            kind: options.kind().clone(),
            fingerprint: options.fingerprint().cloned(),
            max_attempts: options.max_attempts(),
            retry_backoff: options.retry_backoff(),
            state: RecordState::Processing,
            token,
            attempt: 1,
            owner: None,
            lease_ttl: options.lease_ttl(),
            lease_expires_at: now,
            released: false,
            result: None,
            error: None,
            failed_by_expiry: false,
            failures: 0,
            retry_at: None,
            completed_at: None,
            expires_at: now,
        };
        entry.grant(options, token, 1, now, retention);
        entry
    }

    fn is_live(&self, now: Duration) -> bool {
        now < self.expires_at
    }

    /// Every grant: a new token and lease from this claim, no error, no
    /// pending retry.
    fn grant(
        &mut self,
        options: &ClaimOptions,
        token: ModelToken,
        attempt: u32,
        now: Duration,
        retention: Duration,
    ) {
        self.state = RecordState::Processing;
        self.token = token;
        self.attempt = attempt;
        self.owner = options.owner().cloned();
        self.lease_ttl = options.lease_ttl();
        self.lease_expires_at = now + options.lease_ttl();
        self.released = false;
        self.error = None;
        self.failed_by_expiry = false;
        self.retry_at = None;
        self.expires_at = self.lease_expires_at + retention;
    }

    fn acquired(&self, takeover: bool, now: Duration) -> ClaimOutcome {
        ClaimOutcome::Acquired {
            token: self.token,
            attempt: self.attempt,
            takeover,
            remaining: self.lease_expires_at - now,
        }
    }

    fn failed_outcome(&self, now: Duration) -> ClaimOutcome {
        ClaimOutcome::Failed {
            token: self.token,
            attempt: self.attempt,
            error: self
                .error
                .clone()
                .expect("a failed record always has an error"),
            retry_after: self.retry_at.map(|at| at.saturating_sub(now)),
        }
    }

    fn view(&self, now: Duration) -> RecordView {
        let processing = self.state == RecordState::Processing;
        let failed = self.state == RecordState::Failed;
        RecordView {
            state: self.state,
            token: self.token,
            attempt: self.attempt,
            max_attempts: self.max_attempts,
            owner: self.owner.clone(),
            kind: self.kind.clone(),
            fingerprint: self.fingerprint.clone(),
            result: self
                .result
                .clone()
                .filter(|_| self.state == RecordState::Completed),
            error: self.error.clone().filter(|_| failed),
            lease_remaining: processing.then(|| {
                if self.released {
                    Duration::ZERO
                } else {
                    self.lease_expires_at.saturating_sub(now)
                }
            }),
            retry_after: if failed {
                self.retry_at.map(|at| at.saturating_sub(now))
            } else {
                None
            },
            completed_at: self
                .completed_at
                .filter(|_| self.state == RecordState::Completed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(kind: &str) -> ClaimOptions {
        ClaimOptions::new(Kind::parse(kind).expect("valid kind"))
            .with_lease_ttl(Duration::from_secs(10))
            .expect("valid ttl")
            .with_max_attempts(2)
            .expect("valid max_attempts")
    }

    const RETENTION: Duration = Duration::from_secs(100);

    #[test]
    fn takeover_then_exhausted_lease_fails() {
        let mut model = Model::new(RETENTION);
        let opts = options("image");
        let first = model.claim("k", &opts).expect("claim");
        assert!(
            matches!(
                first,
                ClaimOutcome::Acquired {
                    token: 1,
                    attempt: 1,
                    takeover: false,
                    ..
                }
            ),
            "a fresh claim acquires attempt 1: {first:?}"
        );
        model.advance(Duration::from_secs(11));
        let second = model.claim("k", &opts).expect("claim");
        assert!(
            matches!(
                second,
                ClaimOutcome::Acquired {
                    token: 2,
                    attempt: 2,
                    takeover: true,
                    ..
                }
            ),
            "an expired lease is taken over: {second:?}"
        );
        assert_eq!(
            model.complete("k", 1, Bytes::from_static(b"late")),
            Err(ModelError::LeaseLost),
            "the old token is fenced off"
        );
        model.advance(Duration::from_secs(11));
        let third = model.claim("k", &opts).expect("claim");
        assert_eq!(
            third,
            ClaimOutcome::Failed {
                token: 2,
                attempt: 2,
                error: JobError::retryable(lease_expired_message(2, 2)),
                retry_after: None,
            },
            "an expired lease without attempts left fails the record"
        );
    }

    #[test]
    fn fail_after_the_claim_failed_an_expired_last_lease_is_lease_lost() {
        let mut model = Model::new(RETENTION);
        let opts = options("image").with_max_attempts(1).expect("valid");
        model.claim("k", &opts).expect("claim");
        model.advance(Duration::from_secs(11));
        let failed = model.claim("k", &opts).expect("claim");
        assert!(
            matches!(
                failed,
                ClaimOutcome::Failed {
                    token: 1,
                    retry_after: None,
                    ..
                }
            ),
            "an expired last lease fails the record: {failed:?}"
        );
        let before = model.get("k");
        assert_eq!(
            model.fail("k", 1, &JobError::permanent("late")),
            Err(ModelError::LeaseLost),
            "the expired holder never failed the record, so there is nothing to repeat"
        );
        assert_eq!(model.get("k"), before, "the record is unchanged");

        model.claim("j", &options("image")).expect("claim");
        let error = JobError::permanent("mine");
        let first = model.fail("j", 2, &error).expect("fail");
        assert_eq!(
            model.fail("j", 2, &JobError::retryable("again")),
            Ok(first),
            "a repeat of a fail that succeeded succeeds, first error kept"
        );
    }

    #[test]
    fn release_keeps_the_attempt_and_retention_forgets() {
        let mut model = Model::new(RETENTION);
        let opts = options("image");
        model.claim("k", &opts).expect("claim");
        let released = model.release("k", 1).expect("release");
        assert!(
            released.lease_expired(),
            "a released lease is over: {released:?}"
        );
        assert_eq!(
            model.release("k", 1),
            Err(ModelError::LeaseLost),
            "release twice"
        );
        let again = model.claim("k", &opts).expect("claim");
        assert!(
            matches!(
                again,
                ClaimOutcome::Acquired {
                    token: 2,
                    attempt: 1,
                    takeover: false,
                    ..
                }
            ),
            "a released lease is re-granted with the same attempt: {again:?}"
        );
        model
            .complete("k", 2, Bytes::from_static(b"r"))
            .expect("complete");
        model.advance(RETENTION);
        assert_eq!(model.get("k"), None, "retention forgets the record");
        assert!(!model.delete("k"), "an expired record is not live");
        let fresh = model.claim("k", &options("text")).expect("claim");
        assert!(
            matches!(
                fresh,
                ClaimOutcome::Acquired {
                    token: 3,
                    attempt: 1,
                    ..
                }
            ),
            "an expired record is absent, even for another kind: {fresh:?}"
        );
    }
}
