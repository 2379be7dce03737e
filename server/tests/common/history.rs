//! The recorded history of a fault scenario and its checker against docs/protocol.md
//! §5.
//!
//! Worker processes write one JSON line per event to a log file of their
//! own: `req` just before a request is sent, `resp` (status and body) or
//! `err` (a transport error) once it is over, and `job_start` / `job_end` /
//! `job_abandoned` around the work done under a lease. Every line carries the
//! worker's pid and the wall clock in nanoseconds (`t`); all processes run on
//! one machine, so their clocks agree. A request whose `req` line has no
//! answer was cut short by a kill: the checker treats it as possibly applied.
//!
//! Lease instants are compared on the store's clock only (the
//! `lease_expires_at` the store answered), never against a client's clock:
//! that is the only clock §4 judges leases by. Wall-clock stamps are used
//! only to order what one client saw before another client acted
//! (happened-before), which needs no clock agreement with the store.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use chrono::DateTime;
use serde::Deserialize;
use serde_json::Value;

/// How far two store-clock instants of the API may be off from what they
/// stand for: timestamps are written with millisecond precision, truncated.
pub(crate) const CLOCK_TOLERANCE_MS: i64 = 2;

/// One line of a worker's log.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Line {
    /// The worker process.
    pub(crate) pid: u32,
    /// Wall clock, nanoseconds since the Unix epoch.
    pub(crate) t: u64,
    /// `req`, `resp`, `err`, `job_start`, `job_end`, `job_abandoned`, ….
    pub(crate) ev: String,
    /// The request this line is about (`req`, `resp`, `err`).
    pub(crate) id: Option<u64>,
    /// `claim`, `wait`, `heartbeat`, `complete`, `fail` or `release`.
    pub(crate) op: Option<String>,
    pub(crate) key: Option<String>,
    pub(crate) token: Option<u64>,
    /// The request's JSON body (`req`).
    pub(crate) sent: Option<Value>,
    /// The response's status and JSON body (`resp`).
    pub(crate) status: Option<u16>,
    pub(crate) body: Option<Value>,
    /// A transport error (`err`).
    pub(crate) error: Option<String>,
}

/// Every complete line of the log at `path` (a line cut short by a kill is
/// left out; a missing file is an empty log).
pub(crate) fn read_lines(path: &Path) -> Vec<Line> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = match text.rfind('\n') {
        Some(end) => &text[..end],
        None => "",
    };
    complete
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{}: unreadable line {line:?}: {e}", path.display()))
        })
        .collect()
}

/// What became of a request.
#[derive(Debug, Clone)]
pub(crate) enum Outcome {
    /// A response arrived at `recv`.
    Answered { recv: u64, status: u16, body: Value },
    /// The transport failed at `recv` (the server may or may not have acted).
    Failed { recv: u64, error: String },
    /// The worker died before it learnt anything.
    Unanswered,
}

/// One HTTP request of one worker.
#[derive(Debug, Clone)]
pub(crate) struct Call {
    pub(crate) pid: u32,
    pub(crate) op: String,
    pub(crate) key: String,
    /// The token of a fenced operation.
    pub(crate) token: Option<u64>,
    pub(crate) request: Value,
    pub(crate) sent: u64,
    pub(crate) outcome: Outcome,
}

impl Call {
    /// The status and body, if a response arrived.
    pub(crate) fn answer(&self) -> Option<(u16, &Value)> {
        match &self.outcome {
            Outcome::Answered { status, body, .. } => Some((*status, body)),
            _ => None,
        }
    }

    /// Whether the call is a fenced write (§4).
    pub(crate) fn is_fenced(&self) -> bool {
        matches!(
            self.op.as_str(),
            "heartbeat" | "complete" | "fail" | "release"
        )
    }

    /// Whether the answer is 409 `lease_lost`.
    pub(crate) fn is_lease_lost(&self) -> bool {
        self.answer()
            .is_some_and(|(status, body)| status == 409 && body["error"]["code"] == "lease_lost")
    }
}

/// The work one worker did under one lease.
#[derive(Debug, Clone)]
pub(crate) struct Job {
    pub(crate) pid: u32,
    pub(crate) key: String,
    pub(crate) token: u64,
    pub(crate) start: u64,
    /// When the worker finished (or abandoned) the job, if it lived to.
    pub(crate) end: Option<u64>,
}

/// A lease a worker was told it holds (a 201 to its claim).
#[derive(Debug, Clone)]
pub(crate) struct Grant {
    pub(crate) pid: u32,
    pub(crate) token: u64,
    pub(crate) attempt: u64,
    pub(crate) takeover: bool,
    /// The store's instant of the grant (its `lease_expires_at` less the
    /// requested TTL), in Unix milliseconds.
    pub(crate) granted_at_ms: i64,
    /// `lease_expires_at`, in Unix milliseconds of the store's clock.
    pub(crate) expires_ms: i64,
    /// Wall clock when the claim was sent and when its answer arrived.
    pub(crate) sent: u64,
    pub(crate) recv: u64,
}

/// Everything every worker of a scenario recorded.
#[derive(Debug, Clone, Default)]
pub(crate) struct History {
    pub(crate) calls: Vec<Call>,
    pub(crate) jobs: Vec<Job>,
}

impl History {
    /// Pairs each worker's requests with their outcomes and its job events.
    pub(crate) fn from_lines(lines: impl IntoIterator<Item = Line>) -> Self {
        let mut calls: Vec<Call> = Vec::new();
        let mut by_id: HashMap<(u32, u64), usize> = HashMap::new();
        let mut jobs: Vec<Job> = Vec::new();
        let mut open_jobs: HashMap<(u32, u64), usize> = HashMap::new();
        for line in lines {
            match line.ev.as_str() {
                "req" => {
                    let id = line.id.expect("a req line has an id");
                    by_id.insert((line.pid, id), calls.len());
                    calls.push(Call {
                        pid: line.pid,
                        op: line.op.unwrap_or_default(),
                        key: line.key.unwrap_or_default(),
                        token: line.token,
                        request: line.sent.unwrap_or(Value::Null),
                        sent: line.t,
                        outcome: Outcome::Unanswered,
                    });
                }
                "resp" | "err" => {
                    let id = line.id.expect("a resp or err line has an id");
                    let index = *by_id
                        .get(&(line.pid, id))
                        .unwrap_or_else(|| panic!("an answer to no request: {line:?}"));
                    calls[index].outcome = match line.status {
                        Some(status) if line.ev == "resp" => Outcome::Answered {
                            recv: line.t,
                            status,
                            body: line.body.unwrap_or(Value::Null),
                        },
                        _ => Outcome::Failed {
                            recv: line.t,
                            error: line.error.unwrap_or_default(),
                        },
                    };
                }
                "job_start" => {
                    let token = line.token.expect("a job has a token");
                    open_jobs.insert((line.pid, token), jobs.len());
                    jobs.push(Job {
                        pid: line.pid,
                        key: line.key.unwrap_or_default(),
                        token,
                        start: line.t,
                        end: None,
                    });
                }
                "job_end" | "job_abandoned" => {
                    let token = line.token.expect("a job has a token");
                    if let Some(&index) = open_jobs.get(&(line.pid, token)) {
                        jobs[index].end = Some(line.t);
                    }
                }
                _ => {}
            }
        }
        Self { calls, jobs }
    }

    /// The calls about `key`.
    pub(crate) fn calls_of<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a Call> + 'a {
        self.calls.iter().filter(move |call| call.key == key)
    }

    /// Every key any call was about.
    pub(crate) fn keys(&self) -> BTreeSet<String> {
        self.calls.iter().map(|call| call.key.clone()).collect()
    }

    /// The leases granted for `key` that a worker learnt of, by token.
    pub(crate) fn grants(&self, key: &str) -> Vec<Grant> {
        let mut grants: Vec<Grant> = self
            .calls_of(key)
            .filter(|call| call.op == "claim")
            .filter_map(|call| match &call.outcome {
                Outcome::Answered { recv, status, body } if *status == 201 => {
                    let expires_ms = store_ms(&body["lease_expires_at"]);
                    let ttl = call.request["lease_ms"].as_i64().unwrap_or(30_000);
                    Some(Grant {
                        pid: call.pid,
                        token: body["token"]
                            .as_u64()
                            .expect("an acquired claim has a token"),
                        attempt: body["attempt"].as_u64().unwrap_or(0),
                        takeover: body["takeover"] == true,
                        granted_at_ms: expires_ms - ttl,
                        expires_ms,
                        sent: call.sent,
                        recv: *recv,
                    })
                }
                _ => None,
            })
            .collect();
        grants.sort_by_key(|grant| grant.token);
        grants
    }

    /// The latest instant (store clock, Unix ms) the lease `token` of `key`
    /// is known to have lasted until: its grant's expiry or a later one a
    /// successful heartbeat answered. A heartbeat whose answer was lost may
    /// have extended it further, which only makes the checks on it weaker,
    /// never wrong.
    pub(crate) fn known_expiry(&self, key: &str, token: u64) -> Option<i64> {
        let granted = self
            .grants(key)
            .into_iter()
            .find(|grant| grant.token == token)?
            .expires_ms;
        let renewed = self
            .calls_of(key)
            .filter(|call| call.op == "heartbeat" && call.token == Some(token))
            .filter_map(|call| match call.answer() {
                Some((200, body)) => Some(store_ms(&body["lease_expires_at"])),
                _ => None,
            })
            .max();
        Some(renewed.map_or(granted, |renewed| renewed.max(granted)))
    }

    /// The completions the store acknowledged (200), by key: the token and
    /// the result sent.
    pub(crate) fn acked_completions(&self) -> BTreeMap<String, Vec<(u64, Value)>> {
        let mut acked: BTreeMap<String, Vec<(u64, Value)>> = BTreeMap::new();
        for call in &self.calls {
            if call.op == "complete"
                && let Some((200, _)) = call.answer()
            {
                acked.entry(call.key.clone()).or_default().push((
                    call.token.expect("a complete has a token"),
                    call.request["result"].clone(),
                ));
            }
        }
        acked
    }
}

/// An RFC 3339 instant of the API as Unix milliseconds.
pub(crate) fn store_ms(value: &Value) -> i64 {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("not a timestamp: {value}"));
    DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("not an RFC 3339 timestamp {text:?}: {e}"))
        .timestamp_millis()
}

/// Checks the whole history, and the final record of every key (`finals`:
/// the body of a `GET` after every worker stopped), against §5; returns one
/// message per violation, empty when the history is correct.
///
/// - a token is granted once, and tokens follow the grants' order, both on
///   the store's clock and as the clients saw them (§5.2);
/// - attempts only skip numbers the killed requests can explain;
/// - a lease is granted only once the one before it ended on the store's
///   clock, and never after the key completed (§5.1);
/// - a fenced write with a token superseded before it was sent is refused
///   with 409 `lease_lost` (§5.3), and no answer is a 500;
/// - one token completes a key, with one result, and every later read sees
///   that result, as does the final record, which names its writer's token
///   (§5.4), so no acknowledged result is lost;
/// - every job ran under a lease granted to its worker before it started,
///   once per lease;
/// - every key ended completed.
pub(crate) fn check(history: &History, finals: &BTreeMap<String, Value>) -> Vec<String> {
    let mut violations = Vec::new();
    let acked = history.acked_completions();
    let mut keys = history.keys();
    keys.extend(finals.keys().cloned());

    for call in &history.calls {
        if let Some((status, body)) = call.answer()
            && status >= 500
            && status != 503
        {
            violations.push(format!(
                "{} {} by {}: a {status} is a bug: {body}",
                call.op, call.key, call.pid
            ));
        }
    }

    for key in &keys {
        let grants = history.grants(key);
        check_grants(history, key, &grants, &acked, &mut violations);
        check_fenced_writes(history, key, &grants, &mut violations);
        check_results(
            history,
            key,
            acked.get(key),
            finals.get(key),
            &mut violations,
        );
    }
    check_jobs(history, &mut violations);
    violations
}

/// Tokens, attempts and lease exclusion of `key`'s grants.
fn check_grants(
    history: &History,
    key: &str,
    grants: &[Grant],
    acked: &BTreeMap<String, Vec<(u64, Value)>>,
    violations: &mut Vec<String>,
) {
    for pair in grants.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        if a.token == b.token {
            violations.push(format!(
                "{key}: token {} was granted twice (to {} and {})",
                a.token, a.pid, b.pid
            ));
            continue;
        }
        if b.granted_at_ms + CLOCK_TOLERANCE_MS < a.granted_at_ms {
            violations.push(format!(
                "{key}: token {} was granted at {} ms, before the smaller token {} at {} ms",
                b.token, b.granted_at_ms, a.token, a.granted_at_ms
            ));
        }
        // One unexpired lease at a time: the next grant comes after the
        // previous lease's end (store clock), which a completion never has.
        let end = history
            .known_expiry(key, a.token)
            .unwrap_or(a.expires_ms)
            .min(settled_at(history, key, a.token).unwrap_or(i64::MAX));
        if b.granted_at_ms + CLOCK_TOLERANCE_MS < end {
            violations.push(format!(
                "{key}: token {} was granted at {} ms while token {} was live until {end} ms",
                b.token, b.granted_at_ms, a.token
            ));
        }
        if acked
            .get(key)
            .is_some_and(|done| done.iter().any(|(token, _)| *token == a.token))
        {
            violations.push(format!(
                "{key}: token {} was granted after token {} completed the key",
                b.token, a.token
            ));
        }
        let released = history.calls_of(key).any(|call| {
            call.op == "release"
                && call.token == Some(a.token)
                && call.answer().is_some_and(|(s, _)| s == 200)
        });
        if b.attempt < a.attempt || (b.attempt == a.attempt && !released) {
            violations.push(format!(
                "{key}: attempt went from {} (token {}) to {} (token {})",
                a.attempt, a.token, b.attempt, b.token
            ));
        }
    }
    // Wall-clock order: a grant a client had already seen precedes any
    // grant asked for after it.
    for a in grants {
        for b in grants {
            if a.recv < b.sent && a.token >= b.token {
                violations.push(format!(
                    "{key}: token {} was answered before the claim that got the smaller token {} was sent",
                    a.token, b.token
                ));
            }
        }
    }
    // Attempts count every lease granted; the ones nobody heard of must be
    // explained by claims whose answers were lost.
    if let Some(first) = grants.first() {
        let hidden: u64 = first.attempt.saturating_sub(1)
            + grants
                .windows(2)
                .map(|pair| pair[1].attempt.saturating_sub(pair[0].attempt + 1))
                .sum::<u64>();
        // A 503 is "unknown", not "nothing happened": the server may have
        // given up on a store call that went through after all.
        let unanswered = history
            .calls_of(key)
            .filter(|call| {
                call.op == "claim" && call.answer().is_none_or(|(status, _)| status == 503)
            })
            .count() as u64;
        if hidden > unanswered {
            violations.push(format!(
                "{key}: {hidden} leases were granted that no client heard of, but only {unanswered} claims went unanswered"
            ));
        }
    }
}

/// When (store clock) a successful release or fail of `token` ended its
/// lease early: the record's `updated_at` in that answer.
fn settled_at(history: &History, key: &str, token: u64) -> Option<i64> {
    history
        .calls_of(key)
        .filter(|call| matches!(call.op.as_str(), "release" | "fail") && call.token == Some(token))
        .filter_map(|call| match call.answer() {
            Some((200, body)) => Some(store_ms(&body["updated_at"])),
            _ => None,
        })
        .min()
}

/// Fenced writes with a superseded token are refused.
fn check_fenced_writes(
    history: &History,
    key: &str,
    grants: &[Grant],
    violations: &mut Vec<String>,
) {
    for call in history.calls_of(key).filter(|call| call.is_fenced()) {
        let Some((status, body)) = call.answer() else {
            continue;
        };
        let token = call.token.expect("a fenced call has a token");
        let superseded_by = grants
            .iter()
            .find(|grant| grant.token > token && grant.recv < call.sent);
        if let Some(newer) = superseded_by
            && !call.is_lease_lost()
        {
            violations.push(format!(
                "{key}: {} with token {token} by {} was sent after token {} was granted, yet got {status} {body}",
                call.op, call.pid, newer.token
            ));
        }
        if !matches!(status, 200 | 409 | 503) {
            violations.push(format!(
                "{key}: {} with token {token} by {} got an unexpected {status} {body}",
                call.op, call.pid
            ));
        }
        if status == 200 && call.op == "complete" {
            let expected = &call.request["result"];
            if body["state"] != "completed" || body["token"] != token || &body["result"] != expected
            {
                violations.push(format!(
                    "{key}: complete with token {token} answered 200 with another record: {body}"
                ));
            }
        }
    }
}

/// One result per key, seen by every reader and by the final record.
fn check_results(
    history: &History,
    key: &str,
    acked: Option<&Vec<(u64, Value)>>,
    last: Option<&Value>,
    violations: &mut Vec<String>,
) {
    let mut settled: Option<(u64, Value)> = None;
    for (token, result) in acked.into_iter().flatten() {
        match &settled {
            None => settled = Some((*token, result.clone())),
            Some((first, first_result)) if first != token || first_result != result => {
                violations.push(format!(
                    "{key}: two completions were acknowledged: token {first} with {first_result} and token {token} with {result}"
                ));
            }
            Some(_) => {}
        }
    }
    match last {
        Some(record) if record["state"] == "completed" => {
            let (token, result) = (&record["token"], &record["result"]);
            if let Some((acked_token, acked_result)) = &settled
                && (token != acked_token || result != acked_result)
            {
                violations.push(format!(
                    "{key}: the acknowledged result (token {acked_token}, {acked_result}) was lost: the record is {record}"
                ));
            }
            if &result["token"] != token || result["key"] != key {
                violations.push(format!(
                    "{key}: the stored result was not written by the holder of its token: {record}"
                ));
            }
            if settled.is_none() {
                settled = Some((token.as_u64().unwrap_or(0), result.clone()));
            }
        }
        Some(record) => violations.push(format!("{key}: did not end completed: {record}")),
        None => violations.push(format!("{key}: has no final record")),
    }
    // Every read that found the key completed found that one result.
    if let Some((token, result)) = settled {
        for call in history.calls_of(key) {
            let Some((200, body)) = call.answer() else {
                continue;
            };
            if matches!(call.op.as_str(), "claim" | "wait")
                && body["state"] == "completed"
                && (body["token"] != token || body["result"] != result)
            {
                violations.push(format!(
                    "{key}: a {} by {} read another result than token {token}'s {result}: {body}",
                    call.op, call.pid
                ));
            }
        }
    }
}

/// Each job ran under a lease its worker had been granted, once per lease.
fn check_jobs(history: &History, violations: &mut Vec<String>) {
    let mut seen: HashMap<(String, u64), u32> = HashMap::new();
    for job in &history.jobs {
        if let Some(other) = seen.insert((job.key.clone(), job.token), job.pid) {
            violations.push(format!(
                "{}: token {} ran the job twice (workers {other} and {})",
                job.key, job.token, job.pid
            ));
        }
        let granted = history.grants(&job.key).into_iter().any(|grant| {
            grant.token == job.token && grant.pid == job.pid && grant.recv <= job.start
        });
        if !granted {
            violations.push(format!(
                "{}: worker {} started a job under token {} it had not been granted",
                job.key, job.pid, job.token
            ));
        }
    }
}
