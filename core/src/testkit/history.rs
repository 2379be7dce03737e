//! A recorded history of store calls and its check against docs/protocol.md
//! §5: the one checker behind [`super::check_concurrent_history`] (tasks
//! calling a store) and the server's fault tests (worker processes calling
//! the HTTP API, killed mid-request).
//!
//! A [`History`] lists [`Call`]s, each about one key: the [`Op`] and its
//! arguments, a stamp taken just before it was made and, with its
//! [`Answer`], one taken once that arrived, on one order shared by every
//! client (a global counter, or one machine's wall clock). An answer stamped
//! before another call's invocation took effect before that call did;
//! nothing else about the order is assumed. A call without an answer (its
//! client was killed, the transport failed, the store timed out) may have
//! taken effect at any moment after it was made, or never: every check
//! allows both. Lease instants are the store's own, compared only with each
//! other. [`Work`] is a job begun under a lease. [`check`] checks, per key:
//!
//! - every call is valid, so no answer is an error but `LeaseLost`;
//! - §5.2: no token is granted twice; every token shown was granted (or may
//!   have been, by an unanswered claim); a grant exceeds every token shown
//!   before its claim;
//! - §5.3 and §4: a fenced call with token `t` never succeeds once a token
//!   greater than `t` was shown, answers the record it made, and is refused
//!   only once `t` stopped being current (a later grant, an unanswered claim,
//!   or a complete, fail or release of `t`, which a repeated complete or
//!   fail does not count as);
//! - §5.1 and §5.5: unless its holder (may have) ended it, a lease is
//!   followed by the next grant only once it expired, renewals included,
//!   within [`CLOCK_RESOLUTION`]; each job ran once per lease, by the client
//!   it was granted to; §3: the next grant has the next attempt (the same
//!   after a release), and attempts skipped were granted to unanswered claims;
//! - §5.4: complete succeeds under one token only; once an answer showed the
//!   key completed every later answer shows that result, which a complete of
//!   that token sent, and no lease is granted after it.
//!
//! The checks assume no key is deleted or outlives its retention.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::time::Duration;

use bytes::Bytes;

use crate::{Claim, Error, Record, RecordState, Timestamp, Token};

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

impl Answer {
    /// A store's answer to `claim_or_get`.
    pub fn from_claim(claim: Claim) -> Self {
        let seen = Self::seen;
        match claim {
            Claim::Acquired(lease) => Answer::Acquired(Lease {
                token: lease.token.get(),
                attempt: lease.attempt,
                takeover: lease.takeover,
                granted_at: lease.expires_at
                    - chrono::Duration::from_std(lease.ttl).unwrap_or_default(),
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
            Ok(Some(r)) => Self::seen(r.state, r.token, r.result),
            Ok(None) => Answer::Record(None),
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

    fn seen(state: RecordState, token: Token, result: Option<Bytes>) -> Self {
        let token = token.get();
        Answer::Record(Some(Seen {
            state,
            token,
            result,
        }))
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
            Answer::Record(Some(s)) if s.state == RecordState::Completed => {
                Some((s.token, s.result.as_ref()))
            }
            _ => None,
        }
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
    fn answered(&self) -> Option<&Answer> {
        self.answer.as_ref().map(|(_, answer)| answer)
    }

    /// When the answer arrived; never, for a call without one.
    fn at(&self) -> Stamp {
        self.answer.as_ref().map_or(Stamp::MAX, |(at, _)| *at)
    }

    /// Whether this call's answer arrived before `later` was invoked.
    fn before(&self, later: &Call) -> bool {
        self.at() < later.invoked
    }

    /// The token this call's answer shows.
    fn shown(&self) -> Option<u64> {
        self.answered().and_then(Answer::token)
    }

    fn lease(&self) -> Option<&Lease> {
        match self.answered() {
            Some(Answer::Acquired(lease)) => Some(lease),
            _ => None,
        }
    }

    /// Whether this is a fenced call that succeeded (or, unless
    /// `certainly`, may have).
    fn succeeded(&self, certainly: bool) -> bool {
        self.op.token().is_some()
            && match self.answered() {
                Some(answer) => matches!(answer, Answer::Renewed(_) | Answer::Record(Some(_))),
                None => !certainly,
            }
    }

    /// The operation and who made it.
    fn name(&self) -> String {
        format!("{:?} by {}", self.op, self.client)
    }

    /// The answer as reports show it.
    fn said(&self) -> String {
        match (&self.raw, self.answered()) {
            (Some(raw), _) => raw.clone(),
            (None, Some(answer)) => format!("{answer:?}"),
            (None, None) => "no answer (possibly applied)".to_owned(),
        }
    }
}

const VALID: &str = "every call is valid";
const S3: &str = "§3 (attempts count the leases granted, releases excepted)";
const S4: &str = "§4 (a fenced call succeeds while its token is current)";
const S51: &str =
    "§5.1 (one unexpired lease at a time, on the store's clock; one job run under it)";
const S55: &str = "§5.1 and §5.5 (N concurrent claims on a fresh key: exactly one Acquired)";
const S52: &str = "§5.2 (tokens come only from grants, once each, strictly increasing)";
const S53: &str =
    "§5.3 (only the holder of the current token can renew, complete, fail or release)";
const S54: &str = "§5.4 (once completed, every reader sees the same result)";

/// Checks docs/protocol.md §5 on `history`, key by key; returns every
/// violation found, none when the history upholds it: the key, the
/// guarantee and what happened on a first line, then the key's calls around
/// it, one a line, those involved marked `»`.
pub fn check(history: &History) -> Vec<String> {
    let mut keys: BTreeMap<&str, (Vec<&Call>, Vec<&Work>)> = BTreeMap::new();
    for call in &history.calls {
        keys.entry(&call.key).or_default().0.push(call);
    }
    for work in &history.work {
        keys.entry(&work.key).or_default().1.push(work);
    }
    let mut found = Vec::new();
    for (key, (mut calls, work)) in keys {
        calls.sort_by_key(|c| c.invoked);
        let mut grants: Vec<(&Call, &Lease)> = Vec::new();
        grants.extend(calls.iter().filter_map(|c| Some((*c, c.lease()?))));
        grants.sort_by_key(|(_, lease)| lease.token);
        let (calls, grants, found) = (&calls, &grants, &mut found);
        let mut check = KeyCheck {
            key,
            calls,
            grants,
            found,
        };
        for c in calls {
            if let Some(Answer::Error(_)) = c.answered() {
                check.report(VALID, format!("{} is a bug: {}", c.name(), c.said()), &[c]);
            }
        }
        check.tokens();
        check.fencing();
        check.leases();
        check.work(&work);
        check.results();
    }
    found
}

/// The checks of one key's calls, sorted by invocation, and its grants, by
/// token.
struct KeyCheck<'a, 'f> {
    key: &'a str,
    calls: &'a [&'a Call],
    grants: &'a [(&'a Call, &'a Lease)],
    found: &'f mut Vec<String>,
}

impl<'a> KeyCheck<'a, '_> {
    fn report(&mut self, guarantee: &str, what: String, involved: &[&Call]) {
        let context = context(self.calls, involved);
        self.found
            .push(format!("{}: {guarantee}: {what}{context}", self.key));
    }

    /// How many claims left unanswered were invoked before `at`.
    fn unanswered_claims(&self, at: Stamp) -> usize {
        let unanswered = |c: &&&Call| c.op == Op::Claim && c.answer.is_none() && c.invoked < at;
        self.calls.iter().filter(unanswered).count()
    }

    /// An answer that arrived before `call` was invoked and showed a token
    /// of at least `least`, and that token.
    fn shown_before(&self, call: &Call, least: u64) -> Option<(&'a Call, u64)> {
        let shown = |e: &&'a Call| Some((*e, e.shown().filter(|&t| t >= least && e.before(call))?));
        self.calls.iter().find_map(shown)
    }

    /// Whether a complete, fail or release (or only a release) with `token`,
    /// invoked before `by`, succeeded (or, unless `certainly`, may have).
    fn ended(&self, token: u64, release_only: bool, certainly: bool, by: Stamp) -> bool {
        self.calls.iter().any(|c| {
            c.op.token() == Some(token)
                && c.op.ends_in().is_some()
                && (!release_only || matches!(c.op, Op::Release(_)))
                && c.invoked < by
                && c.succeeded(certainly)
        })
    }

    /// §5.2: tokens come from grants, once each, and increase.
    fn tokens(&mut self) {
        for pair in self.grants.windows(2) {
            let ((a, lease), (b, next)) = (pair[0], pair[1]);
            if lease.token == next.token {
                let (t, x, y) = (lease.token, &a.client, &b.client);
                self.report(
                    S52,
                    format!("token {t} was granted twice ({x} and {y})"),
                    &[a, b],
                );
            }
        }
        // Each token no answer granted needs an unanswered claim of its own,
        // invoked before an answer first showed the token.
        let granted: BTreeSet<u64> = self.grants.iter().map(|(_, lease)| lease.token).collect();
        let mut answered = self.calls.to_vec();
        answered.sort_by_key(|c| c.at());
        let mut strangers = BTreeSet::new();
        for c in answered {
            if let Some(t) = c.shown().filter(|t| !granted.contains(t))
                && strangers.insert(t)
                && self.unanswered_claims(c.at()) < strangers.len()
            {
                let what = format!("{} shows token {t}, which no claim was granted", c.name());
                self.report(S52, what, &[c]);
            }
        }
        for &(claim, lease) in self.grants {
            if let Some((e, seen)) = self.shown_before(claim, lease.token) {
                let what = format!(
                    "token {} was granted after {} had shown token {seen}",
                    lease.token,
                    e.name()
                );
                self.report(S52, what, &[e, claim]);
            }
        }
    }

    /// §5.3 and §4: fenced calls succeed exactly while their token is
    /// current, and a success answers the record it made.
    fn fencing(&mut self) {
        for &op in self.calls {
            let (Some(t), o, said) = (op.op.token(), op.name(), op.said()) else {
                continue;
            };
            if op.succeeded(true) {
                if let Some((newer, seen)) = self.shown_before(op, t + 1) {
                    let what = format!(
                        "{o} was invoked after {} had shown token {seen}, yet got {said}",
                        newer.name()
                    );
                    self.report(S53, what, &[newer, op]);
                }
                if let (Some(Answer::Record(Some(seen))), Some(state)) =
                    (op.answered(), op.op.ends_in())
                    && (seen.token, seen.state) != (t, state)
                {
                    self.report(
                        S4,
                        format!("{o} succeeded with another record: {said}"),
                        &[op],
                    );
                }
                continue;
            }
            if !matches!(op.answered(), Some(Answer::LeaseLost)) {
                continue;
            }
            // Refused: a later lease was granted, or an unanswered claim may
            // have granted one, or a claim found the lease failed, or
            // another call with the token ended it (not a complete or fail
            // like this one: if it took effect, this repeat succeeds again).
            let refused = op.at();
            let later = |(c, lease): &(&Call, &Lease)| lease.token > t && c.invoked < refused;
            let superseded = self.unanswered_claims(refused) > 0 || self.grants.iter().any(later);
            let kind = std::mem::discriminant(&op.op);
            let ended = self.calls.iter().any(|&c| {
                let repeat =
                    kind == std::mem::discriminant(&c.op) && !matches!(c.op, Op::Release(_));
                let failed = |s: &Seen| (s.state, s.token) == (RecordState::Failed, t);
                c.invoked < refused
                    && !std::ptr::eq(c, op)
                    && match c.answered() {
                        Some(Answer::Record(Some(s))) if c.op == Op::Claim => failed(s),
                        _ => c.op.token() == Some(t) && c.op.ends_in().is_some() && !repeat,
                    }
                    && (c.op == Op::Claim || c.succeeded(false))
            });
            if !superseded && !ended {
                let what = format!("{o} was refused, though no later lease was granted");
                self.report(S4, format!("{what} and no call ended its lease"), &[op]);
            }
        }
    }

    /// §5.1 (and §5.5) on the store's clock, and §3's attempts.
    fn leases(&mut self) {
        let slack = chrono::Duration::from_std(CLOCK_RESOLUTION).unwrap_or_default();
        let first = self.grants.first().map(|(_, lease)| lease.attempt);
        let mut hidden = first.unwrap_or(1) - 1;
        for pair in self.grants.windows(2) {
            let ((a, lease), (b, next)) = (pair[0], pair[1]);
            let (t, n, by) = (lease.token, next.token, b.at());
            if t == n {
                continue;
            }
            // A lease its holder ended early is ordered before the next grant
            // by fencing, which the other checks cover. Its end's instant is
            // not compared: a store may read its clock for a claim before it
            // waits for the release that lets it grant.
            let renewal = |c: &&'a Call| match c.answered() {
                Some(Answer::Renewed(until)) if c.op == Op::Renew(t) => Some((*until, *c)),
                _ => None,
            };
            let renewed = self.calls.iter().filter_map(renewal).max_by_key(|r| r.0);
            let renewed = renewed.filter(|(until, _)| *until > lease.expires_at);
            let end = renewed.map_or(lease.expires_at, |(until, _)| until);
            if !self.ended(t, false, false, by) && next.granted_at + slack < end {
                let fresh = (lease.attempt, next.attempt) == (1, 1) && !next.takeover;
                let at = next.granted_at;
                let what = format!("token {n} was granted at {at} while token {t} was live");
                let mut involved = vec![a, b];
                involved.extend(renewed.map(|(_, c)| c));
                let guarantee = if fresh { S55 } else { S51 };
                self.report(guarantee, format!("{what} until {end}"), &involved);
            }
            // The next lease has the next attempt, or the same after a
            // release; attempts skipped are leases granted unheard of.
            let least = u32::from(!self.ended(t, true, false, by));
            let surely = u32::from(!self.ended(t, true, true, by));
            if next.attempt < lease.attempt + least {
                let (x, y) = (lease.attempt, next.attempt);
                let what = format!("attempt went from {x} (token {t}) to {y} (token {n})");
                self.report(S3, what, &[a, b]);
            }
            hidden += next.attempt.saturating_sub(lease.attempt + surely);
        }
        let unanswered = self.unanswered_claims(Stamp::MAX);
        if hidden as usize > unanswered {
            let involved: Vec<&Call> = self.grants.iter().map(|(c, _)| *c).collect();
            let what = format!("{hidden} leases were granted that no client heard of");
            let what = format!("{what}, for {unanswered} unanswered claims");
            self.report(S3, what, &involved);
        }
    }

    /// §5.1: every job ran under a lease granted to its client before it
    /// began, once per lease.
    fn work(&mut self, work: &[&Work]) {
        let mut runs: HashMap<u64, &str> = HashMap::new();
        for w in work {
            let (t, who) = (w.token, &w.client);
            let granted = |(c, lease): &&(&'a Call, &Lease)| {
                (lease.token, &c.client) == (t, who) && c.at() <= w.started
            };
            let grant: Vec<&Call> = self.grants.iter().filter(granted).map(|g| g.0).collect();
            if let Some(other) = runs.insert(t, who) {
                let what = format!("token {t} ran the job twice ({other} and {who})");
                self.report(S51, what, &grant);
            }
            if grant.is_empty() {
                let what = format!("{who} started a job under token {t}");
                self.report(S51, format!("{what}, which it had not been granted"), &[]);
            }
        }
    }

    /// §5.4: one result, seen by every reader, and no lease after it.
    fn results(&mut self) {
        let calls = self.calls;
        let completed = |c: &&&Call| matches!(c.op, Op::Complete(..)) && c.succeeded(true);
        let completes: Vec<&Call> = calls.iter().filter(completed).copied().collect();
        let token = |c: &&&Call| c.op.token();
        if let Some(&other) = completes.iter().find(|c| token(c) != token(&&completes[0])) {
            let what = format!(
                "{} and {} both succeeded",
                completes[0].name(),
                other.name()
            );
            self.report(S54, what, &[completes[0], other]);
        }
        let view = |c: &&'a Call| Some((*c, c.answered()?.completed()?));
        let mut views: Vec<(&Call, (u64, Option<&Bytes>))> = Vec::new();
        views.extend(calls.iter().filter_map(view));
        views.sort_by_key(|(c, _)| c.at());
        for &(reader, (t, result)) in &views {
            let sent = |c: &&&Call| match &c.op {
                Op::Complete(s, r) => (*s, Some(r)) == (t, result) && c.succeeded(false),
                _ => false,
            };
            if !calls.iter().any(|c| sent(&c)) {
                let what = format!("{} shows token {t}'s result {result:?}", reader.name());
                self.report(S54, format!("{what}, which no complete sent"), &[reader]);
            }
        }
        let Some(&(first, done)) = views.first() else {
            return;
        };
        // Every answer shows the one result; every answer after it, too.
        for &c in calls {
            let lost = match c.answered() {
                Some(Answer::LeaseLost | Answer::Error(_)) | None => false,
                Some(answer) => match answer.completed() {
                    Some(view) => view != done,
                    None => first.before(c),
                },
            };
            if lost {
                let (f, o, said) = (first.name(), c.name(), c.said());
                let what = format!("the result {f} saw was lost: {o} shows {said}");
                self.report(S54, what, &[first, c]);
            }
        }
        let by = completes.first().copied().unwrap_or(first);
        for &(claim, lease) in self.grants.iter().filter(|(_, lease)| lease.token > done.0) {
            let (n, t) = (lease.token, done.0);
            let what = format!("token {n} was granted after token {t} completed the key");
            self.report(S54, what, &[by, claim]);
        }
    }
}

/// The key's calls from shortly before the first involved one to shortly
/// after the last, a line each after a line break, at most about forty;
/// involved calls are marked.
fn context(calls: &[&Call], involved: &[&Call]) -> String {
    let lo = involved
        .iter()
        .map(|c| c.invoked)
        .min()
        .unwrap_or(Stamp::MAX);
    let hi = involved.iter().map(|c| c.at()).max().unwrap_or(0);
    let marked = |c: &Call| involved.iter().any(|i| std::ptr::eq(*i, c));
    let window = calls.iter().filter(|c| c.at() >= lo && c.invoked <= hi);
    let mut skip = window.clone().count().saturating_sub(40);
    let mut text = String::new();
    if skip > 0 {
        text.push_str(&format!("\n    … {skip} earlier unmarked calls left out …"));
    }
    for c in window {
        if !marked(c) && skip > 0 {
            skip -= 1;
            continue;
        }
        text.push_str(&format!("\n  {} {c}", if marked(c) { "»" } else { " " }));
    }
    text
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = self
            .answer
            .as_ref()
            .map_or("?".to_owned(), |(at, _)| at.to_string());
        write!(
            f,
            "[{}..{at}] {} → {}",
            self.invoked,
            self.name(),
            self.said()
        )
    }
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

    fn renewed(ms: i64) -> Option<Answer> {
        Some(Answer::Renewed(at(ms)))
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
            .call("b", Op::Renew(7), renewed(400))
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
        let caught = |expected: &str, built: Built| {
            let found = check(&built.0);
            let caught = found.iter().any(|v| v.contains(expected));
            assert!(caught, "`{expected}` is reported: {found:#?}");
        };
        let (error, lost) = (Some(Answer::Error("down".into())), Some(Answer::LeaseLost));
        let (p9, r9) = (seen(Processing, 9, None), seen(Completed, 7, Some("r9")));
        caught("is a bug", ok().call("e", Op::Get, error));
        caught("granted twice", ok().but(2, lease(5, 1, 0)));
        caught("no claim was granted", ok().call("e", Op::Get, p9));
        caught(
            "had shown token",
            ok().call("e", Op::Claim, lease(6, 2, 900)),
        );
        caught("yet got", ok().but(7, seen(Completed, 5, Some("r5"))));
        caught("another record", ok().but(6, seen(Processing, 7, None)));
        caught("while token 5 was live", ok().but(4, lease(7, 3, 50)));
        caught("was live until", ok().call("a", Op::Renew(5), renewed(300)));
        caught("attempt went from", ok().but(4, lease(7, 1, 250)));
        caught("no client heard of", ok().but(4, lease(7, 4, 250)));
        let refused = Built::default().call("a", Op::Claim, lease(5, 1, 0));
        caught("was refused", refused.call("a", Op::Renew(5), lost));
        caught(
            "both succeeded",
            ok().but(7, seen(Completed, 7, Some("r7"))),
        );
        caught("which no complete sent", ok().but(10, r9));
        caught("was lost", ok().but(10, seen(Processing, 7, None)));
        caught(
            "completed the key",
            ok().call("e", Op::Claim, lease(8, 4, 900)),
        );
        caught("ran the job twice", ok().work("b", 7));
        caught("had not been granted", ok().work("d", 7));
    }
}
