//! The recorded history of a fault scenario, read from the workers' logs
//! and checked against docs/protocol.md §5 by the one checker of
//! `onceflight_core::testkit::history`.
//!
//! Worker processes write one JSON line per event to a log file of their
//! own: `req` just before a request is sent, `resp` (status and body) or
//! `err` (a transport error) once it is over, and `job_start` / `job_end` /
//! `job_abandoned` around the work done under a lease. Every line carries the
//! worker's pid and the wall clock in nanoseconds (`t`); all processes run on
//! one machine, so their clocks agree, and they order what one client saw
//! before another acted. A request whose `req` line has no answer was cut
//! short by a kill: the checker treats it as possibly applied.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use onceflight_core::testkit::history::{self as checked, Answer, Lease, Op, Seen, Stamp, Work};
use onceflight_core::{Bytes, RecordState, Timestamp};
use serde::Deserialize;
use serde_json::Value;

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
    pub(crate) takeover: bool,
    /// Wall clock when the answer arrived.
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

    /// The leases granted for `key` that a worker learnt of, by token.
    pub(crate) fn grants(&self, key: &str) -> Vec<Grant> {
        let mut grants: Vec<Grant> = self
            .calls_of(key)
            .filter(|call| call.op == "claim")
            .filter_map(|call| match &call.outcome {
                Outcome::Answered { recv, status, body } if *status == 201 => Some(Grant {
                    pid: call.pid,
                    token: body["token"].as_u64()?,
                    takeover: body["takeover"] == true,
                    recv: *recv,
                }),
                _ => None,
            })
            .collect();
        grants.sort_by_key(|grant| grant.token);
        grants
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

/// Checks the whole history, and the final record of every key (`finals`:
/// the body of a `GET` after every worker stopped, read after everything
/// else), against docs/protocol.md §5 with the core checker; returns one
/// message per violation, empty when the history is correct. Every key must
/// also have ended completed.
pub(crate) fn check(history: &History, finals: &BTreeMap<String, Value>) -> Vec<String> {
    let mut keys: BTreeSet<&String> = history.calls.iter().map(|call| &call.key).collect();
    keys.extend(finals.keys());
    let mut violations = Vec::new();
    for key in keys {
        match finals.get(key) {
            None => violations.push(format!("{key}: has no final record")),
            Some(record) if record["state"] != "completed" => {
                violations.push(format!("{key}: did not end completed: {record}"));
            }
            Some(_) => {}
        }
    }
    let finals = finals.iter().map(|(key, record)| checked::Call {
        key: key.clone(),
        client: "the final read".to_owned(),
        op: Op::Get,
        invoked: Stamp::MAX - 1,
        answer: Some((Stamp::MAX, answer(&Op::Get, 200, &Value::Null, record))),
        raw: Some(record.to_string()),
    });
    let jobs = history.jobs.iter().map(|job| Work {
        key: job.key.clone(),
        client: format!("worker {}", job.pid),
        token: job.token,
        started: job.start,
    });
    let calls = history.calls.iter().map(Call::checked).chain(finals);
    let history = checked::History {
        calls: calls.collect(),
        work: jobs.collect(),
    };
    violations.extend(checked::check(&history));
    violations
}

impl Call {
    /// This request as the core checker sees it, stamped by the wall clock
    /// of its `req` line and of its answer. A 503 (the server gave up on a
    /// store call that may still go through), a transport error or no answer
    /// at all leave it possibly applied.
    fn checked(&self) -> checked::Call {
        let token = self.token.unwrap_or_default();
        let op = match self.op.as_str() {
            "claim" => Op::Claim,
            "wait" => Op::Wait,
            "heartbeat" => Op::Renew(token),
            "complete" => Op::Complete(token, Bytes::from(self.request["result"].to_string())),
            "fail" => Op::Fail(token),
            "release" => Op::Release(token),
            other => panic!("a request of no known kind: {other}"),
        };
        let (answer, raw) = match &self.outcome {
            Outcome::Answered { recv, status, body } if *status != 503 => {
                let answer = if self.is_fenced() && self.is_lease_lost() {
                    Answer::LeaseLost
                } else {
                    answer(&op, *status, &self.request, body)
                };
                (Some((*recv, answer)), format!("{status} {body}"))
            }
            Outcome::Answered { status, body, .. } => (None, format!("{status} {body}")),
            Outcome::Failed { error, .. } => (None, format!("transport error: {error}")),
            Outcome::Unanswered => (None, "no answer: possibly applied".to_owned()),
        };
        checked::Call {
            key: self.key.clone(),
            client: format!("worker {}", self.pid),
            op,
            invoked: self.sent,
            answer,
            raw: Some(raw),
        }
    }
}

/// What the answer `status` `body` to `op` (sent with `request`) says: a
/// lease, a renewal, a record, or anything else as an error.
fn answer(op: &Op, status: u16, request: &Value, body: &Value) -> Answer {
    let time = |field: &str| -> Option<Timestamp> { body[field].as_str()?.parse().ok() };
    let answer = || -> Option<Answer> {
        let token = body["token"].as_u64();
        Some(match (op, status) {
            (Op::Claim, 201) => {
                let expires_at = time("lease_expires_at")?;
                let ttl = chrono::Duration::milliseconds(request["lease_ms"].as_i64()?);
                Answer::Acquired(Lease {
                    token: token?,
                    attempt: u32::try_from(body["attempt"].as_u64()?).ok()?,
                    takeover: body["takeover"] == true,
                    granted_at: expires_at - ttl,
                    expires_at,
                })
            }
            (Op::Renew(_), 200) => Answer::Renewed(time("lease_expires_at")?),
            (Op::Claim, 202) | (_, 200) => Answer::Record(Some(Seen {
                state: match body["state"].as_str()? {
                    "processing" | "in_flight" => RecordState::Processing,
                    "completed" => RecordState::Completed,
                    "failed" => RecordState::Failed,
                    _ => return None,
                },
                token: token?,
                result: (body["state"] == "completed")
                    .then(|| Bytes::from(body["result"].to_string())),
            })),
            (Op::Wait, 404) => Answer::Record(None),
            _ => return None,
        })
    };
    answer().unwrap_or_else(|| Answer::Error(format!("{status} {body}")))
}
