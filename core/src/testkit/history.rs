//! A recorded history of store calls and its check against docs/protocol.md
//! §5: the one checker behind [`check_concurrent_history`](super::check_concurrent_history) (tasks calling a
//! store) and the server's fault tests (worker processes calling the HTTP
//! API, killed mid-request).
//!
//! A [`History`] lists [`Call`]s, each about one key: the operation and the
//! arguments that matter ([`Op`]), a stamp taken just before it was invoked
//! and one taken once its answer arrived, both on one order shared by every
//! client (a global counter, or the wall clock of one machine), and the
//! [`Answer`], or none at all (the client was
//! killed, the transport failed, the store timed out): such a call may or
//! may not have taken effect, at any moment after its invocation, and every
//! check allows both. An answer stamped before another call's invocation
//! certainly took effect before that call did; nothing else about the order
//! is assumed. Lease instants are the store's own (a grant's, a lease's end)
//! and are compared only with each other, within [`CLOCK_RESOLUTION`].
//! [`Work`] says when a client began the job under a lease.
//!
//! [`check`] checks, key by key:
//!
//! - no call is answered with an error: every input is valid;
//! - §5.2: no token is granted twice; every token an answer shows was
//!   granted, or could have been by an unanswered claim; a granted token is
//!   greater than every token any answer showed before the claim;
//! - §5.3: a renew, complete, fail or release with token `t` never succeeds
//!   once an answer has shown a token greater than `t`, and a success shows
//!   the record it made (completed, failed or still processing under `t`);
//! - §5.1 (and §5.5): unless its holder completed, failed or released it
//!   (or may have, unanswered), a lease is followed by the next grant only
//!   once it expired on the store's clock, renewals included, and every
//!   piece of [`Work`] ran under a lease granted to its client before it
//!   began, once per lease;
//! - §3: attempts count leases: the next grant keeps the attempt only after
//!   a release, and the attempts skipped are no more than the claims left
//!   unanswered;
//! - §4: a fenced call is refused only once its token stopped being current:
//!   a later lease was granted (or an unanswered claim may have been), or a
//!   release, complete or fail with that token ended the lease (a repeated
//!   complete or fail succeeds again), or a claim found it failed;
//! - §5.4: every complete that succeeded has one token; once an answer has
//!   shown the key completed, every answer shows the same token and result,
//!   which a complete with that token sent, and no lease is granted after.
//!
//! The checks assume the history deletes no key and keeps none past its
//! retention.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::time::Duration;

use bytes::Bytes;

use crate::{Claim, Error, Record, RecordState, Timestamp};

/// A point on the order shared by every client of a history.
pub type Stamp = u64;

/// How far two of the store's instants may be off from what they stand for
/// when one lease's end is compared with the next grant (§5.1): rounding to
/// the store's clock resolution, or to the milliseconds of the HTTP API.
pub const CLOCK_RESOLUTION: Duration = Duration::from_millis(2);

/// Every call of a run, and the work done under leases.
#[derive(Clone, Debug, Default)]
pub struct History {
    /// The calls, in any order.
    pub calls: Vec<Call>,
    /// When clients began jobs under their leases, in any order.
    pub work: Vec<Work>,
}

/// One call to the store, about one key.
#[derive(Clone, Debug)]
pub struct Call {
    /// The key the call is about.
    pub key: String,
    /// Who made it, as reports name it (`task 3`, `worker 4242`).
    pub client: String,
    /// The operation and its arguments.
    pub op: Op,
    /// Taken just before the call was made.
    pub invoked: Stamp,
    /// The answer, stamped just after it arrived; `None` when none came:
    /// the call may or may not have taken effect.
    pub answer: Option<(Stamp, Answer)>,
    /// The answer as the client received it, when that says more than
    /// [`Answer`] keeps (an HTTP status and body): reports show it instead.
    pub raw: Option<String>,
}

/// An operation of docs/protocol.md §3–§4 and the arguments the checks need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// `claim_or_get`.
    Claim,
    /// `renew` with a token.
    Renew(u64),
    /// `complete` with a token and the result sent.
    Complete(u64, Bytes),
    /// `fail` with a token.
    Fail(u64),
    /// `release` with a token.
    Release(u64),
    /// `get`.
    Get,
    /// `wait`.
    Wait,
}

/// A store's answer, as the checks see it.
#[derive(Clone, Debug)]
pub enum Answer {
    /// A claim was granted this lease.
    Acquired(Lease),
    /// A renewal: the lease now ends at this instant of the store's clock.
    Renewed(Timestamp),
    /// A record: what a claim found (in flight, completed, failed), what a
    /// `get` or `wait` read, or what a successful complete, fail or release
    /// made. `None`: no record.
    Record(Option<Seen>),
    /// A fenced call was refused.
    LeaseLost,
    /// Any other error.
    Error(String),
}

/// A granted lease.
#[derive(Clone, Copy, Debug)]
pub struct Lease {
    /// Its fencing token.
    pub token: u64,
    /// Its attempt number.
    pub attempt: u32,
    /// Whether it took over an expired lease.
    pub takeover: bool,
    /// When it was granted, on the store's clock (its end less its TTL).
    pub granted_at: Timestamp,
    /// When it ends, on the store's clock.
    pub expires_at: Timestamp,
}

/// What an answer shows of a record.
#[derive(Clone, Debug)]
pub struct Seen {
    /// The record's state.
    pub state: RecordState,
    /// Its current token.
    pub token: u64,
    /// Its result, if completed.
    pub result: Option<Bytes>,
}

/// A client beginning the job under a lease it holds.
#[derive(Clone, Debug)]
pub struct Work {
    /// The key.
    pub key: String,
    /// The client, named as in its calls.
    pub client: String,
    /// The lease's token.
    pub token: u64,
    /// When the job began, on the history's order.
    pub started: Stamp,
}

/// A broken guarantee.
#[derive(Clone, Debug)]
pub struct Violation {
    /// The key, the guarantee and what happened, in one line.
    pub what: String,
    /// The key's calls around those involved, one a line, those marked `»`.
    pub context: String,
}

impl fmt::Display for Violation {
    /// One line; `{:#}` adds the key's calls around it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.what)?;
        if f.alternate() && !self.context.is_empty() {
            write!(f, "\n  the key's calls around it:\n{}", self.context)?;
        }
        Ok(())
    }
}

impl Answer {
    /// A store's answer to `claim_or_get`.
    pub fn from_claim(claim: Claim) -> Self {
        let seen = |state, token: crate::Token, result| {
            Answer::Record(Some(Seen {
                state,
                token: token.get(),
                result,
            }))
        };
        match claim {
            Claim::Acquired(lease) => Answer::Acquired(Lease {
                token: lease.token.get(),
                attempt: lease.attempt,
                takeover: lease.takeover,
                granted_at: lease.expires_at
                    - chrono::Duration::from_std(lease.ttl).unwrap_or(chrono::Duration::MAX),
                expires_at: lease.expires_at,
            }),
            Claim::InFlight(f) => seen(RecordState::Processing, f.token, None),
            Claim::Completed(c) => seen(RecordState::Completed, c.token, Some(c.result)),
            Claim::Failed(f) => seen(RecordState::Failed, f.token, None),
        }
    }

    /// A store's answer to `get`, `wait`, `complete`, `fail` or `release`.
    pub fn from_record(answer: Result<Option<Record>, Error>) -> Self {
        match answer {
            Ok(record) => Answer::Record(record.map(|r| Seen {
                state: r.state,
                token: r.token.get(),
                result: r.result,
            })),
            Err(e) => Self::from_error(e),
        }
    }

    /// A store's error.
    pub fn from_error(error: Error) -> Self {
        match error {
            Error::LeaseLost { .. } => Answer::LeaseLost,
            e => Answer::Error(e.to_string()),
        }
    }

    /// The token the answer shows, if any.
    fn token(&self) -> Option<u64> {
        match self {
            Answer::Acquired(lease) => Some(lease.token),
            Answer::Record(Some(seen)) => Some(seen.token),
            _ => None,
        }
    }

    /// The token and result of the completed record the answer shows.
    fn completed(&self) -> Option<(u64, Option<&Bytes>)> {
        match self {
            Answer::Record(Some(seen)) if seen.state == RecordState::Completed => {
                Some((seen.token, seen.result.as_ref()))
            }
            _ => None,
        }
    }

    /// Whether the answer says what state the key is in.
    fn shows_state(&self) -> bool {
        !matches!(self, Answer::LeaseLost | Answer::Error(_))
    }
}

impl Op {
    /// The token of a fenced operation.
    fn token(&self) -> Option<u64> {
        match self {
            Op::Renew(t) | Op::Complete(t, _) | Op::Fail(t) | Op::Release(t) => Some(*t),
            Op::Claim | Op::Get | Op::Wait => None,
        }
    }

    /// The state a successful complete, fail or release leaves the record in.
    fn ends_in(&self) -> Option<RecordState> {
        match self {
            Op::Complete(..) => Some(RecordState::Completed),
            Op::Fail(_) => Some(RecordState::Failed),
            Op::Release(_) => Some(RecordState::Processing),
            _ => None,
        }
    }
}

impl Call {
    fn answer(&self) -> Option<&Answer> {
        self.answer.as_ref().map(|(_, answer)| answer)
    }

    fn answered_at(&self) -> Option<Stamp> {
        self.answer.as_ref().map(|(at, _)| *at)
    }

    /// Whether this call's answer arrived before `later` was invoked.
    fn before(&self, later: &Call) -> bool {
        self.answered_at().is_some_and(|at| at < later.invoked)
    }

    /// The token this call's answer shows.
    fn shown(&self) -> Option<u64> {
        self.answer().and_then(Answer::token)
    }

    /// Whether this is a fenced call that succeeded.
    fn succeeded(&self) -> bool {
        self.op.token().is_some()
            && matches!(
                self.answer(),
                Some(Answer::Renewed(_) | Answer::Record(Some(_)))
            )
    }

    /// Whether this is a fenced call that succeeded or may have.
    fn may_have_succeeded(&self) -> bool {
        self.succeeded() || (self.op.token().is_some() && self.answer().is_none())
    }

    fn lease(&self) -> Option<&Lease> {
        match self.answer() {
            Some(Answer::Acquired(lease)) => Some(lease),
            _ => None,
        }
    }

    /// The operation and who made it.
    fn name(&self) -> String {
        format!("{} by {}", self.op, self.client)
    }

    /// The answer as reports show it.
    fn said(&self) -> String {
        match (&self.raw, self.answer()) {
            (Some(raw), _) => raw.clone(),
            (None, Some(answer)) => answer.to_string(),
            (None, None) => "no answer (possibly applied)".to_owned(),
        }
    }
}

/// Checks docs/protocol.md §5 on `history`, key by key; returns every
/// violation found, none when the history upholds it.
pub fn check(history: &History) -> Vec<Violation> {
    let mut by_key: BTreeMap<&str, Vec<&Call>> = BTreeMap::new();
    for call in &history.calls {
        by_key.entry(&call.key).or_default().push(call);
    }
    let mut found = Vec::new();
    for (key, mut calls) in by_key {
        calls.sort_by_key(|c| c.invoked);
        let mut key = KeyCheck {
            key,
            calls: &calls,
            found: &mut found,
        };
        let mut grants: Vec<(&Call, &Lease)> = calls
            .iter()
            .filter_map(|c| Some((*c, c.lease()?)))
            .collect();
        grants.sort_by_key(|(_, lease)| lease.token);
        key.errors();
        key.tokens(&grants);
        key.fencing(&grants);
        key.leases(&grants);
        key.results(&grants);
    }
    let mut runs: HashMap<(&str, u64), &Work> = HashMap::new();
    for work in &history.work {
        let mut report = |what| {
            found.push(Violation {
                what: format!(
                    "{}: §5.1 (one run of the job per lease, by its holder): {what}",
                    work.key
                ),
                context: String::new(),
            })
        };
        if let Some(other) = runs.insert((work.key.as_str(), work.token), work) {
            let (a, b) = (&other.client, &work.client);
            report(format!(
                "token {} ran the job twice ({a} and {b})",
                work.token
            ));
        }
        let granted = history.calls.iter().any(|c| {
            (&c.key, &c.client) == (&work.key, &work.client)
                && c.lease().is_some_and(|l| l.token == work.token)
                && c.answered_at().is_some_and(|at| at <= work.started)
        });
        if !granted {
            let (client, token) = (&work.client, work.token);
            report(format!(
                "{client} started a job under token {token}, which it had not been granted"
            ));
        }
    }
    found
}

/// The checks of one key's calls, sorted by invocation.
struct KeyCheck<'a, 'f> {
    key: &'a str,
    calls: &'a [&'a Call],
    found: &'f mut Vec<Violation>,
}

impl<'a> KeyCheck<'a, '_> {
    fn report(&mut self, guarantee: &'static str, what: String, involved: &[&Call]) {
        self.found.push(Violation {
            what: format!("{}: {guarantee}: {what}", self.key),
            context: context(self.calls, involved),
        });
    }

    /// The calls that unanswered claims could have made before `at`.
    fn unanswered_claims(&self, at: Stamp) -> usize {
        let unanswered = |c: &&&Call| c.op == Op::Claim && c.answer().is_none();
        self.calls
            .iter()
            .filter(unanswered)
            .filter(|c| c.invoked < at)
            .count()
    }

    /// Every input is valid: no call may fail but with `LeaseLost`.
    fn errors(&mut self) {
        for c in self.calls {
            if let Some(Answer::Error(_)) = c.answer() {
                let what = format!("{} answered {}, which is a bug", c.name(), c.said());
                self.report("no call fails", what, &[c]);
            }
        }
    }

    /// §5.2: tokens come from grants, once each, and increase.
    fn tokens(&mut self, grants: &[(&Call, &Lease)]) {
        for pair in grants.windows(2) {
            let ((a, lease), (b, next)) = (pair[0], pair[1]);
            if lease.token == next.token {
                let what = format!(
                    "token {} was granted twice (to {} and {})",
                    lease.token, a.client, b.client
                );
                self.report("§5.2 (no token is granted twice)", what, &[a, b]);
            }
        }
        // Each token no answer granted needs its own unanswered claim,
        // invoked before an answer first showed the token.
        let granted: BTreeSet<u64> = grants.iter().map(|(_, lease)| lease.token).collect();
        let mut answered = self.calls.to_vec();
        answered.sort_by_key(|c| c.answered_at());
        let mut strangers = BTreeSet::new();
        for c in answered {
            let Some(token) = c.shown().filter(|t| !granted.contains(t)) else {
                continue;
            };
            let at = c.answered_at().unwrap_or(Stamp::MAX);
            if strangers.insert(token) && self.unanswered_claims(at) < strangers.len() {
                let what = format!(
                    "{} shows token {token}, which no claim was granted",
                    c.name()
                );
                self.report("§5.2 (tokens come only from grants)", what, &[c]);
            }
        }
        for &(claim, lease) in grants {
            if let Some((earlier, seen)) = self.shown_before(claim, lease.token) {
                let what = format!(
                    "token {} was granted to {} after {} had shown token {seen}",
                    lease.token,
                    claim.client,
                    earlier.name()
                );
                self.report("§5.2 (tokens strictly increase)", what, &[earlier, claim]);
            }
        }
    }

    /// An answer that arrived before `call` was invoked and showed a token
    /// of at least `least`, and that token.
    fn shown_before(&self, call: &Call, least: u64) -> Option<(&'a Call, u64)> {
        self.calls.iter().find_map(|e| {
            let seen = e.shown().filter(|&seen| seen >= least && e.before(call))?;
            Some((*e, seen))
        })
    }

    /// §5.3 and §4: fenced calls succeed exactly while their token is current.
    fn fencing(&mut self, grants: &[(&Call, &Lease)]) {
        for &op in self.calls {
            let Some(token) = op.op.token() else {
                continue;
            };
            if op.succeeded() {
                if let Some((newer, seen)) = self.shown_before(op, token + 1) {
                    let what = format!(
                        "{} was invoked after {} had shown token {seen}, yet got {}",
                        op.name(),
                        newer.name(),
                        op.said()
                    );
                    self.report(
                        "§5.3 (only the holder of the current token can renew, complete, fail or release)",
                        what,
                        &[newer, op],
                    );
                }
                if let (Some(Answer::Record(Some(seen))), Some(state)) =
                    (op.answer(), op.op.ends_in())
                    && (seen.token, seen.state) != (token, state)
                {
                    let what = format!(
                        "{} succeeded, but its answer shows another record: {}",
                        op.name(),
                        op.said()
                    );
                    self.report("§4 (a fenced call answers the record it made)", what, &[op]);
                }
                continue;
            }
            let Some(refused) = op
                .answered_at()
                .filter(|_| matches!(op.answer(), Some(Answer::LeaseLost)))
            else {
                continue;
            };
            // A later lease, a claim that may have granted one or that found
            // the lease failed, or another call that ended it (a repeated
            // complete or fail succeeds again).
            let superseded = grants
                .iter()
                .any(|(claim, lease)| lease.token > token && claim.invoked < refused)
                || self.unanswered_claims(refused) > 0;
            let ended = self.calls.iter().any(|&c| {
                let repeat = std::mem::discriminant(&c.op) == std::mem::discriminant(&op.op)
                    && !matches!(op.op, Op::Release(_));
                c.invoked < refused
                    && match (&c.op, c.answer()) {
                        (Op::Claim, Some(Answer::Record(Some(seen)))) => {
                            (seen.state, seen.token) == (RecordState::Failed, token)
                        }
                        (ended_by, _) => {
                            !std::ptr::eq(c, op)
                                && ended_by.token() == Some(token)
                                && ended_by.ends_in().is_some()
                                && c.may_have_succeeded()
                                && !(repeat && c.succeeded())
                        }
                    }
            });
            if !superseded && !ended {
                let what = format!(
                    "{} was refused, though no later lease was granted and nothing ended its lease",
                    op.name()
                );
                self.report(
                    "§4 (fenced calls succeed while their token is current)",
                    what,
                    &[op],
                );
            }
        }
    }

    /// Whether a call with `token` that ends a lease (or only a release),
    /// invoked before `by`, succeeded (or, unless `certainly`, may have).
    fn ended(&self, token: u64, release_only: bool, certainly: bool, by: Stamp) -> bool {
        self.calls.iter().any(|c| {
            c.op.token() == Some(token)
                && c.op.ends_in().is_some()
                && (!release_only || matches!(c.op, Op::Release(_)))
                && c.invoked < by
                && if certainly {
                    c.succeeded()
                } else {
                    c.may_have_succeeded()
                }
        })
    }

    /// §5.1 (and §5.5) on the store's clock, and §3's attempts.
    fn leases(&mut self, grants: &[(&Call, &Lease)]) {
        let slack = chrono::Duration::from_std(CLOCK_RESOLUTION).expect("a small duration");
        let mut hidden = grants
            .first()
            .map_or(0, |(_, lease)| lease.attempt.saturating_sub(1));
        for pair in grants.windows(2) {
            let ((a, lease), (b, next)) = (pair[0], pair[1]);
            let by = b.answered_at().unwrap_or(Stamp::MAX);
            if lease.token == next.token {
                continue;
            }
            // A lease its holder ended early is ordered before the next grant
            // by fencing, which the other checks cover. Its end's instant is
            // not compared: a store may read its clock for a claim before it
            // waits for the release that lets it grant.
            if !self.ended(lease.token, false, false, by) {
                let renewed = self
                    .calls
                    .iter()
                    .filter(|c| c.op == Op::Renew(lease.token))
                    .filter_map(|c| match c.answer() {
                        Some(Answer::Renewed(until)) if *until > lease.expires_at => {
                            Some((*until, *c))
                        }
                        _ => None,
                    })
                    .max_by_key(|(until, _)| *until);
                let end = renewed.map_or(lease.expires_at, |(until, _)| until);
                if next.granted_at + slack < end {
                    let mut involved = vec![a, b];
                    involved.extend(renewed.map(|(_, c)| c));
                    let what = format!(
                        "token {} was granted at {} on the store's clock while token {} was live until {}",
                        next.token,
                        time(&next.granted_at),
                        lease.token,
                        time(&end),
                    );
                    let fresh = (lease.attempt, next.attempt) == (1, 1)
                        && !lease.takeover
                        && !next.takeover;
                    let guarantee = if fresh {
                        "§5.1 and §5.5 (at most one unexpired lease; N concurrent claims on a fresh key: exactly one Acquired)"
                    } else {
                        "§5.1 (at most one unexpired lease at any instant)"
                    };
                    self.report(guarantee, what, &involved);
                }
            }
            // §3: the next lease has the next attempt, or the same after a
            // release; attempts skipped are leases granted unheard of.
            let least = u32::from(!self.ended(lease.token, true, false, by));
            let surely = u32::from(!self.ended(lease.token, true, true, by));
            if next.attempt < lease.attempt + least {
                let what = format!(
                    "attempt went from {} (token {}) to {} (token {})",
                    lease.attempt, lease.token, next.attempt, next.token
                );
                self.report(
                    "§3 (attempts count the leases granted, releases excepted)",
                    what,
                    &[a, b],
                );
            }
            hidden += next.attempt.saturating_sub(lease.attempt + surely);
        }
        let unanswered = self.unanswered_claims(Stamp::MAX);
        if hidden as usize > unanswered {
            let what = format!(
                "{hidden} leases were granted that no client heard of, but only {unanswered} claims went unanswered"
            );
            let involved: Vec<&Call> = grants.iter().map(|(c, _)| *c).collect();
            self.report("§3 (attempts count the leases granted)", what, &involved);
        }
    }

    /// §5.4: one result, seen by every reader, and no lease after it.
    fn results(&mut self, grants: &[(&Call, &Lease)]) {
        const GUARANTEE: &str = "§5.4 (once completed, every reader sees the same result)";
        let calls = self.calls;
        let completed = |c: &&Call| matches!(c.op, Op::Complete(..)) && c.succeeded();
        let completes: Vec<&Call> = calls.iter().copied().filter(completed).collect();
        if let Some(other) = completes
            .iter()
            .find(|c| c.op.token() != completes[0].op.token())
        {
            let what = format!(
                "{} and {} both succeeded",
                completes[0].name(),
                other.name()
            );
            self.report(GUARANTEE, what, &[completes[0], other]);
        }
        let mut views: Vec<(&Call, u64, Option<&Bytes>)> = calls
            .iter()
            .filter_map(|c| {
                let (token, result) = c.answer()?.completed()?;
                Some((*c, token, result))
            })
            .collect();
        views.sort_by_key(|(c, ..)| c.answered_at());
        for &(reader, token, result) in &views {
            let sent = calls.iter().any(|c| {
                matches!(&c.op, Op::Complete(t, sent) if (*t, Some(sent)) == (token, result))
                    && c.may_have_succeeded()
            });
            if !sent {
                let what = format!(
                    "{} shows result {result:?} under token {token}, which no complete with that token sent",
                    reader.name()
                );
                self.report(GUARANTEE, what, &[reader]);
            }
        }
        let Some(&(first, token, result)) = views.first() else {
            return;
        };
        let lost = |other: &Call| {
            let (first, other, said) = (first.name(), other.name(), other.said());
            format!(
                "token {token}'s result {result:?}, shown to {first}, was lost: {other} shows {said}"
            )
        };
        for &(reader, t, r) in &views[1..] {
            if (t, r) != (token, result) {
                self.report(GUARANTEE, lost(reader), &[first, reader]);
            }
        }
        for &c in calls {
            if first.before(c)
                && c.answer()
                    .is_some_and(|a| a.shows_state() && a.completed().is_none())
            {
                self.report(GUARANTEE, lost(c), &[first, c]);
            }
        }
        let done = completes.first().copied().unwrap_or(first);
        for &(claim, lease) in grants.iter().filter(|(_, lease)| lease.token > token) {
            let what = format!(
                "token {} was granted after token {token} completed the key",
                lease.token
            );
            self.report(GUARANTEE, what, &[done, claim]);
        }
    }
}

/// The key's calls from shortly before the first involved one to shortly
/// after the last, at most about forty lines; involved calls are marked.
fn context(calls: &[&Call], involved: &[&Call]) -> String {
    let lo = involved.iter().map(|c| c.invoked).min().unwrap_or(0);
    let hi = involved
        .iter()
        .map(|c| c.answered_at().unwrap_or(Stamp::MAX))
        .max()
        .unwrap_or(Stamp::MAX);
    let marked = |c: &Call| involved.iter().any(|i| std::ptr::eq(*i, c));
    let window: Vec<&&Call> = calls
        .iter()
        .filter(|c| c.answered_at().unwrap_or(Stamp::MAX) >= lo && c.invoked <= hi)
        .collect();
    let mut skip = window.len().saturating_sub(40);
    let mut lines = Vec::new();
    if skip > 0 {
        lines.push(format!("    … {skip} earlier unmarked calls left out …"));
    }
    for c in window {
        if !marked(c) && skip > 0 {
            skip -= 1;
            continue;
        }
        lines.push(format!("  {} {c}", if marked(c) { "»" } else { " " }));
    }
    lines.join("\n")
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = self
            .answered_at()
            .map_or("?".to_owned(), |at| at.to_string());
        write!(
            f,
            "[{}..{at}] {} → {}",
            self.invoked,
            self.name(),
            self.said()
        )
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Claim => f.write_str("claim"),
            Op::Renew(t) => write!(f, "renew token {t}"),
            Op::Complete(t, result) => write!(f, "complete token {t} result {result:?}"),
            Op::Fail(t) => write!(f, "fail token {t}"),
            Op::Release(t) => write!(f, "release token {t}"),
            Op::Get => f.write_str("get"),
            Op::Wait => f.write_str("wait"),
        }
    }
}

impl fmt::Display for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Answer::Acquired(l) => {
                let (start, end) = (time(&l.granted_at), time(&l.expires_at));
                let takeover = if l.takeover { " takeover" } else { "" };
                let (token, attempt) = (l.token, l.attempt);
                write!(
                    f,
                    "acquired token {token} attempt {attempt}{takeover} ({start} .. {end})"
                )
            }
            Answer::Renewed(until) => write!(f, "renewed until {}", time(until)),
            Answer::Record(None) => f.write_str("no record"),
            Answer::Record(Some(Seen {
                state,
                token,
                result,
            })) => {
                write!(f, "{} token {token} result {result:?}", state.as_str())
            }
            Answer::LeaseLost => f.write_str("lease lost"),
            Answer::Error(e) => write!(f, "error: {e}"),
        }
    }
}

/// An instant of the store's clock, as reports show it.
fn time(t: &Timestamp) -> String {
    t.format("%H:%M:%S%.6f").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use RecordState::*;

    /// One key's history, call by call: each invoked at the next even stamp
    /// and answered, if at all, at the odd one after.
    #[derive(Default)]
    struct Built(History);

    impl Built {
        fn call(mut self, client: &str, op: Op, answer: Option<Answer>) -> Self {
            let invoked = 2 * self.0.calls.len() as Stamp;
            let (key, client, raw) = ("k".to_owned(), client.to_owned(), None);
            let answer = answer.map(|answer| (invoked + 1, answer));
            self.0.calls.push(Call {
                key,
                client,
                op,
                invoked,
                answer,
                raw,
            });
            self
        }

        fn work(mut self, client: &str, token: u64) -> Self {
            let started = 2 * self.0.calls.len() as Stamp;
            let (key, client) = ("k".to_owned(), client.to_owned());
            self.0.work.push(Work {
                key,
                client,
                token,
                started,
            });
            self
        }

        /// Call `i` answered otherwise.
        fn but(mut self, i: usize, answer: Option<Answer>) -> Self {
            let at = self.0.calls[i].invoked + 1;
            self.0.calls[i].answer = answer.map(|answer| (at, answer));
            self
        }
    }

    fn at(ms: i64) -> Timestamp {
        chrono::DateTime::from_timestamp_millis(1_700_000_000_000 + ms).expect("an instant")
    }

    /// A lease of 100 ms granted at `ms`.
    fn lease(token: u64, attempt: u32, ms: i64) -> Option<Answer> {
        let (granted_at, expires_at, takeover) = (at(ms), at(ms + 100), attempt > 1);
        Some(Answer::Acquired(Lease {
            token,
            attempt,
            takeover,
            granted_at,
            expires_at,
        }))
    }

    fn seen(state: RecordState, token: u64, result: Option<&'static str>) -> Option<Answer> {
        let result = result.map(Bytes::from);
        Some(Answer::Record(Some(Seen {
            state,
            token,
            result,
        })))
    }

    fn complete(token: u64, result: &'static str) -> Op {
        Op::Complete(token, Bytes::from(result))
    }

    /// `a` is granted token 5 and stalls; `b` finds it in flight; `c`'s
    /// claim goes unanswered (it got token 6); once both leases expired `b`
    /// takes over with token 7, renews and completes; `a`'s late complete is
    /// refused and its release unanswered; readers see the result.
    fn ok() -> Built {
        Built::default()
            .call("a", Op::Claim, lease(5, 1, 0))
            .work("a", 5)
            .call("b", Op::Claim, seen(Processing, 5, None))
            .call("c", Op::Claim, None)
            .call("b", Op::Wait, seen(Processing, 6, None))
            .call("b", Op::Claim, lease(7, 3, 250))
            .work("b", 7)
            .call("b", Op::Renew(7), Some(Answer::Renewed(at(400))))
            .call("b", complete(7, "r7"), seen(Completed, 7, Some("r7")))
            .call("a", complete(5, "r5"), Some(Answer::LeaseLost))
            .call("a", Op::Release(5), None)
            .call("d", Op::Claim, seen(Completed, 7, Some("r7")))
            .call("d", Op::Get, seen(Completed, 7, Some("r7")))
    }

    #[test]
    fn a_valid_history_with_unanswered_calls_passes() {
        let found = check(&ok().0);
        assert!(found.is_empty(), "{found:#?}");
    }

    #[test]
    fn each_violation_is_caught() {
        let refused = Built::default().call("a", Op::Claim, lease(5, 1, 0));
        let renewed = Some(Answer::Renewed(at(300)));
        let cases = [
            (
                "is a bug",
                ok().call("e", Op::Get, Some(Answer::Error("down".into()))),
            ),
            ("granted twice", ok().but(2, lease(5, 1, 0))),
            (
                "no claim was granted",
                ok().call("e", Op::Get, seen(Processing, 9, None)),
            ),
            (
                "strictly increase",
                ok().call("e", Op::Claim, lease(6, 2, 900)),
            ),
            ("yet got", ok().but(7, seen(Completed, 5, Some("r5")))),
            ("another record", ok().but(6, seen(Processing, 7, None))),
            ("while token 5 was live", ok().but(4, lease(7, 3, 50))),
            ("was live until", ok().call("a", Op::Renew(5), renewed)),
            ("attempt went from", ok().but(4, lease(7, 1, 250))),
            ("no client heard of", ok().but(4, lease(7, 4, 250))),
            (
                "was refused",
                refused.call("a", Op::Renew(5), Some(Answer::LeaseLost)),
            ),
            (
                "both succeeded",
                ok().but(7, seen(Completed, 7, Some("r7"))),
            ),
            (
                "no complete with",
                ok().but(10, seen(Completed, 7, Some("r9"))),
            ),
            ("was lost", ok().but(10, seen(Processing, 7, None))),
            (
                "completed the key",
                ok().call("e", Op::Claim, lease(8, 4, 900)),
            ),
            ("ran the job twice", ok().work("b", 7)),
            ("had not been granted", ok().work("d", 7)),
        ];
        for (expected, built) in cases {
            let found = check(&built.0);
            let caught = found.iter().any(|v| v.what.contains(expected));
            assert!(caught, "`{expected}` is reported: {found:#?}");
        }
    }
}
