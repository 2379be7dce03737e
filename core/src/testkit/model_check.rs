//! Model-based property test: random operation sequences run against a store
//! and against the reference [`Model`], answer by answer.
//!
//! Each proptest case builds a fresh tokio runtime and a fresh store, then
//! runs up to `max_ops` operations on two or three keys: claims (two kinds,
//! so that mismatches happen; two fingerprints; two owners; leases of 2.5 or
//! 4.5 ticks; 1–3 attempts), renewals, completions, failures (retryable or
//! not), releases, gets, deletes, sweeps, and the passing of 1–4 ticks.
//! Fenced operations present either a token granted earlier for that key
//! (the latest or an older one) or a made-up one that was never granted.
//!
//! Time is chosen so that no expiry ever lands near an instant at which an
//! operation runs: operations run at whole ticks, leases last 2.5 or 4.5
//! ticks, retention is 8.25 ticks and the retry backoff is a third of a tick
//! (doubling to ⅔ and 4⁄3). Every deadline is therefore at least a quarter
//! tick away from every operation, which is what lets the real-time mode
//! compare durations within a quarter tick without flakiness.
//!
//! Store tokens and model tokens differ; the harness keeps a one-to-one map
//! per key, set at each `Acquired`, and checks that each new store token is
//! greater than every store token seen before for that key.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use tokio::time::Instant;

use super::model::{ClaimOutcome, Model, ModelError, ModelToken, NEVER_GRANTED, RecordView};
use super::{Expiry, Setup, SuiteConfig};
use crate::{
    Claim, ClaimOptions, Error, Fingerprint, JobError, Kind, MAX_TOKEN, Owner, Record, RequestKey,
    RequestStore, Token,
};

/// How [`check_against_model`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelCheckConfig {
    /// How many random operation sequences to run (each on a fresh store).
    pub cases: u32,
    /// The longest sequence generated.
    pub max_ops: usize,
    /// One tick of test time: every operation runs at a whole tick.
    pub tick: Duration,
    /// Whether the runtime starts with tokio's clock paused (stores on tokio
    /// time, like the memory store); otherwise time is real and durations
    /// are compared within a quarter tick.
    pub paused: bool,
    /// What the store's `sweep` finds: exactly the model's records past
    /// retention ([`Expiry::Swept`], the default), or none because storage
    /// forgot them by itself ([`Expiry::ByStorage`]) or because sweeping is
    /// not this store's job ([`Expiry::SweptElsewhere`]).
    pub expiry: Expiry,
}

impl ModelCheckConfig {
    /// For stores on tokio's clock: 1 s ticks that cost nothing, durations
    /// compared exactly, 256 sequences of up to 40 operations (a fraction of
    /// a second; 64 sequences missed a seeded retention bug about a third of
    /// the time).
    pub fn paused() -> Self {
        Self {
            cases: 256,
            max_ops: 40,
            tick: Duration::from_secs(1),
            paused: true,
            expiry: Expiry::Swept,
        }
    }

    /// For stores on a real clock (a database server): 300 ms ticks, 6
    /// sequences of up to 20 operations and at most 10 ticks of waiting per
    /// sequence, so that one sequence takes three seconds at most.
    pub fn real() -> Self {
        Self {
            cases: 6,
            max_ops: 20,
            tick: Duration::from_millis(300),
            paused: false,
            expiry: Expiry::Swept,
        }
    }

    /// The same, for a store whose sweep finds what `expiry` says.
    pub fn with_expiry(mut self, expiry: Expiry) -> Self {
        self.expiry = expiry;
        self
    }

    /// How far a duration the store reports may stray from the model's.
    fn tolerance(&self) -> Duration {
        if self.paused {
            Duration::ZERO
        } else {
            self.tick / 4
        }
    }

    /// How many ticks one sequence may wait in total (real time only).
    fn advance_budget(&self) -> Option<u32> {
        (!self.paused).then_some(REAL_TIME_ADVANCE_BUDGET)
    }
}

/// Runs random operation sequences against stores built by `setup` and
/// against the reference [`Model`], comparing every answer; panics with the
/// shrunk sequence and the step where they first disagree.
///
/// A plain function, to be called from a `#[test]` (not `#[tokio::test]`):
/// it builds its own current-thread runtime per sequence, with tokio's clock
/// paused when `config.paused` is set.
pub fn check_against_model<T: Setup>(setup: T, config: ModelCheckConfig) {
    assert!(
        config.tick >= Duration::from_millis(12),
        "ModelCheckConfig::tick must be at least 12 ms (the retry backoff is a third of it, \
         the tolerance a quarter), got {:?}",
        config.tick
    );
    assert!(
        config.max_ops >= 1,
        "ModelCheckConfig::max_ops must be at least 1"
    );
    let mut runner = TestRunner::new(Config {
        cases: config.cases,
        failure_persistence: None,
        // Shrinking reruns whole sequences; on real time each costs seconds,
        // so a failure there shrinks for a minute at most.
        max_shrink_iters: if config.paused { 4096 } else { 64 },
        max_shrink_time: if config.paused { 0 } else { 60_000 },
        // Real-time sequences whose store calls ran late are discarded; a
        // machine too loaded to finish a few on time fails, saying so.
        max_global_rejects: config.cases.saturating_mul(4).max(8),
        ..Config::default()
    });
    let result = runner.run(&case_strategy(config.max_ops), |case| {
        run_case(&setup, &config, &case)
    });
    if let Err(error) = result {
        panic!("the store disagrees with the reference model of docs/protocol.md §3–§4.\n{error}");
    }
}

/// Total ticks a real-time sequence may wait.
const REAL_TIME_ADVANCE_BUDGET: u32 = 10;

const KINDS: [&str; 2] = ["image", "text"];
const FINGERPRINTS: [&str; 2] = ["fp-a", "fp-b"];
const OWNERS: [&str; 2] = ["worker-a", "worker-b"];
/// Keys are drawn from this many indices and folded onto the case's 2–3
/// keys, so that shrinking the key count keeps the sequence meaningful.
const KEY_INDICES: usize = 3;

/// One generated sequence.
#[derive(Clone)]
struct Case {
    keys: usize,
    ops: Vec<Op>,
}

/// One generated operation. Key fields are indices, folded onto the case's
/// keys when run.
#[derive(Clone, Copy)]
enum Op {
    Claim(ClaimOp),
    Renew {
        key: usize,
        token: Pick,
        extend: bool,
    },
    Complete {
        key: usize,
        token: Pick,
    },
    Fail {
        key: usize,
        token: Pick,
        retryable: bool,
    },
    Release {
        key: usize,
        token: Pick,
    },
    Get {
        key: usize,
    },
    Delete {
        key: usize,
    },
    Sweep,
    Advance {
        ticks: u32,
    },
}

#[derive(Clone, Copy)]
struct ClaimOp {
    key: usize,
    kind: usize,
    fingerprint: Option<usize>,
    owner: Option<usize>,
    long_lease: bool,
    max_attempts: u32,
}

/// Which token a fenced operation presents.
#[derive(Clone, Copy)]
enum Pick {
    /// The token granted `n` grants before the latest one for this key (0:
    /// the latest); the oldest if there were fewer, a made-up one if none.
    Back(usize),
    /// A made-up token that was never granted.
    Bogus,
}

fn case_strategy(max_ops: usize) -> impl Strategy<Value = Case> {
    (
        2..=KEY_INDICES,
        proptest::collection::vec(op_strategy(), 1..=max_ops),
    )
        .prop_map(|(keys, ops)| Case { keys, ops })
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let key = || 0..KEY_INDICES;
    let pick = || {
        prop_oneof![
            6 => Just(Pick::Back(0)),
            3 => (1usize..=3).prop_map(Pick::Back),
            1 => Just(Pick::Bogus),
        ]
    };
    let claim = (
        key(),
        prop_oneof![9 => Just(0usize), 1 => Just(1usize)],
        prop_oneof![2 => Just(None), 3 => Just(Some(0usize)), 1 => Just(Some(1usize))],
        proptest::option::of(0..OWNERS.len()),
        any::<bool>(),
        1..=3u32,
    )
        .prop_map(
            |(key, kind, fingerprint, owner, long_lease, max_attempts)| {
                Op::Claim(ClaimOp {
                    key,
                    kind,
                    fingerprint,
                    owner,
                    long_lease,
                    max_attempts,
                })
            },
        );
    prop_oneof![
        6 => claim,
        2 => (key(), pick(), any::<bool>())
            .prop_map(|(key, token, extend)| Op::Renew { key, token, extend }),
        3 => (key(), pick()).prop_map(|(key, token)| Op::Complete { key, token }),
        3 => (key(), pick(), any::<bool>())
            .prop_map(|(key, token, retryable)| Op::Fail { key, token, retryable }),
        2 => (key(), pick()).prop_map(|(key, token)| Op::Release { key, token }),
        2 => key().prop_map(|key| Op::Get { key }),
        1 => key().prop_map(|key| Op::Delete { key }),
        1 => Just(Op::Sweep),
        5 => (1..=4u32).prop_map(|ticks| Op::Advance { ticks }),
    ]
}

impl Op {
    fn key(&self) -> Option<usize> {
        match *self {
            Op::Claim(ClaimOp { key, .. })
            | Op::Renew { key, .. }
            | Op::Complete { key, .. }
            | Op::Fail { key, .. }
            | Op::Release { key, .. }
            | Op::Get { key }
            | Op::Delete { key } => Some(key),
            Op::Sweep | Op::Advance { .. } => None,
        }
    }

    /// The operation as one line, with its key folded onto `keys` keys.
    fn describe(&self, keys: usize) -> String {
        let k = self.key().map(|k| k % keys).unwrap_or_default();
        match *self {
            Op::Claim(c) => format!(
                "claim k{k} kind={} fingerprint={} owner={} lease={} max_attempts={}",
                KINDS[c.kind],
                c.fingerprint.map_or("none", |f| FINGERPRINTS[f]),
                c.owner.map_or("none", |o| OWNERS[o]),
                if c.long_lease { "4.5t" } else { "2.5t" },
                c.max_attempts
            ),
            Op::Renew { token, extend, .. } => format!(
                "renew k{k} {token:?} ttl={}",
                if extend { "2.5t" } else { "default" }
            ),
            Op::Complete { token, .. } => format!("complete k{k} {token:?}"),
            Op::Fail {
                token, retryable, ..
            } => format!(
                "fail k{k} {token:?} {}",
                if retryable { "retryable" } else { "permanent" }
            ),
            Op::Release { token, .. } => format!("release k{k} {token:?}"),
            Op::Get { .. } => format!("get k{k}"),
            Op::Delete { .. } => format!("delete k{k}"),
            Op::Sweep => "sweep".to_owned(),
            Op::Advance { ticks } => format!("advance {ticks}t"),
        }
    }
}

impl fmt::Debug for Op {
    /// The operation with its key index unfolded (the case's `Debug` folds
    /// it onto the case's keys).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe(usize::MAX))
    }
}

impl fmt::Debug for Pick {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pick::Back(0) => f.write_str("token=latest"),
            Pick::Back(n) => write!(f, "token=latest-{n}"),
            Pick::Bogus => f.write_str("token=never-granted"),
        }
    }
}

impl fmt::Debug for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} keys, {} operations:", self.keys, self.ops.len())?;
        for (i, op) in self.ops.iter().enumerate() {
            writeln!(f, "  #{i:<2} {}", op.describe(self.keys))?;
        }
        Ok(())
    }
}

fn run_case<T: Setup>(
    setup: &T,
    config: &ModelCheckConfig,
    case: &Case,
) -> Result<(), TestCaseError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(config.paused)
        .build()
        .map_err(|e| TestCaseError::fail(format!("cannot build a tokio runtime: {e}")))?;
    runtime.block_on(async {
        let retention = config.tick * 33 / 4;
        let store = setup.store(SuiteConfig { retention }).await;
        let mut run = Run::new(&store, config, case.keys, retention);
        for (step, op) in case.ops.iter().enumerate() {
            let compared = run.step(step, op).await;
            // A late store call makes the sequence inconclusive, not wrong:
            // it may have seen a deadline the model had not reached. Such a
            // sequence is discarded (and counted against a small budget).
            if let Err(late) = run.check_timing() {
                return Err(TestCaseError::reject(late));
            }
            if let Err(disagreement) = compared {
                return Err(TestCaseError::fail(run.report(step, op, &disagreement)));
            }
        }
        Ok(())
    })
}

/// The state of one sequence: the store, the model, the token map.
struct Run<'a, S> {
    store: &'a S,
    model: Model,
    config: &'a ModelCheckConfig,
    keys: Vec<RequestKey>,
    tokens: Vec<Tokens>,
    /// The store-clock instant of the model's time zero.
    start: Instant,
    advanced: u32,
    /// One line per step run so far.
    history: Vec<String>,
}

impl<'a, S: RequestStore> Run<'a, S> {
    fn new(store: &'a S, config: &'a ModelCheckConfig, keys: usize, retention: Duration) -> Self {
        Self {
            store,
            model: Model::new(retention),
            config,
            keys: (0..keys)
                .map(|i| RequestKey::parse(format!("model-check-{i}")).expect("a valid test key"))
                .collect(),
            tokens: (0..keys).map(|_| Tokens::default()).collect(),
            start: Instant::now(),
            advanced: 0,
            history: Vec::new(),
        }
    }

    /// Runs `op` on both sides and compares the answers.
    async fn step(&mut self, step: usize, op: &Op) -> Result<(), String> {
        let tick = self.config.tick;
        let k = op.key().map(|k| k % self.keys.len()).unwrap_or_default();
        let key = self.keys[k].clone();
        let mut line = format!(
            "#{step:<2} t={:<3} {}",
            self.ticks(self.model.now()),
            op.describe(self.keys.len())
        );
        let compared = match *op {
            Op::Claim(c) => {
                let options = claim_options(&c, tick);
                let expected = self.model.claim(key.as_str(), &options);
                let actual = self.store.claim_or_get(&key, &options).await;
                line += &format!(" → {}", self.show_claim(&expected));
                self.compare_claim(k, &expected, &actual)
            }
            Op::Renew { token, extend, .. } => {
                let (model_token, store_token) = self.tokens[k].pick(token);
                let ttl = extend.then(|| tick * 5 / 2);
                let expected = self.model.renew(key.as_str(), model_token, ttl);
                let actual = self.store.renew(&key, store_token, ttl).await;
                line += &format!(" ({}) → {expected:?}", show_token(model_token));
                match (&expected, &actual) {
                    (Ok(expected), Ok(actual)) => {
                        let mut diff = Diff::new(self.config.tolerance());
                        diff.near("remaining", *expected, actual.remaining);
                        diff.finish()
                    }
                    _ => compare_errors(&expected, &actual),
                }
            }
            Op::Complete { token, .. } => {
                let (model_token, store_token) = self.tokens[k].pick(token);
                // JSON text, so that the harness runs over the HTTP API too.
                let result = Bytes::from(format!("\"result of step {step}\""));
                let expected = self
                    .model
                    .complete(key.as_str(), model_token, result.clone());
                let actual = self.store.complete(&key, store_token, result).await;
                line += &format!(" ({}) → {}", show_token(model_token), show_view(&expected));
                self.compare_record_result(k, &expected, &actual)
            }
            Op::Fail {
                token, retryable, ..
            } => {
                let (model_token, store_token) = self.tokens[k].pick(token);
                let error = JobError::new(format!("failure at step {step}"), retryable);
                let expected = self.model.fail(key.as_str(), model_token, &error);
                let actual = self.store.fail(&key, store_token, &error).await;
                line += &format!(" ({}) → {}", show_token(model_token), show_view(&expected));
                self.compare_record_result(k, &expected, &actual)
            }
            Op::Release { token, .. } => {
                let (model_token, store_token) = self.tokens[k].pick(token);
                let expected = self.model.release(key.as_str(), model_token);
                let actual = self.store.release(&key, store_token).await;
                line += &format!(" ({}) → {}", show_token(model_token), show_view(&expected));
                self.compare_record_result(k, &expected, &actual)
            }
            Op::Get { .. } => {
                let expected = self.model.get(key.as_str());
                let actual = self.store.get(&key).await;
                line += &match &expected {
                    Some(view) => format!(" → {}", show_record(view)),
                    None => " → no record".to_owned(),
                };
                match (&expected, &actual) {
                    (_, Err(e)) => Err(format!("get failed: {e}")),
                    (Some(expected), Ok(Some(actual))) => self.compare_record(k, expected, actual),
                    (None, Ok(None)) => Ok(()),
                    (expected, Ok(actual)) => Err(format!(
                        "expected {}, store has {}",
                        if expected.is_some() {
                            "a record"
                        } else {
                            "no record"
                        },
                        if actual.is_some() { "a record" } else { "none" },
                    )),
                }
            }
            Op::Delete { .. } => {
                let expected = self.model.delete(key.as_str());
                let actual = self.store.delete(&key).await;
                line += &format!(" → {expected}");
                match actual {
                    Ok(actual) if actual == expected => Ok(()),
                    Ok(actual) => Err(format!(
                        "delete returned {actual}, expected {expected} (whether a live record was there)"
                    )),
                    Err(e) => Err(format!("delete failed: {e}")),
                }
            }
            Op::Sweep => {
                let past_retention = self.model.sweep();
                // Records past retention stay in storage until something
                // removes them: a claim that starts the key afresh, a
                // delete, or this sweep — as in the model, so the count is
                // exact. Storage that forgets them by itself leaves none.
                let expected = match self.config.expiry {
                    Expiry::Swept => past_retention,
                    Expiry::ByStorage | Expiry::SweptElsewhere => 0,
                };
                let actual = self.store.sweep().await;
                line += &format!(" → {expected}");
                match actual {
                    Ok(actual) if actual == expected => Ok(()),
                    Ok(actual) => Err(format!(
                        "sweep removed {actual} records, expected {expected} ({past_retention} were past retention, {:?})",
                        self.config.expiry
                    )),
                    Err(e) => Err(format!("sweep failed: {e}")),
                }
            }
            Op::Advance { ticks } => {
                let ticks = match self.config.advance_budget() {
                    Some(budget) => ticks.min(budget - self.advanced),
                    None => ticks,
                };
                self.advanced += ticks;
                self.model.advance(tick * ticks);
                // Sleeping until an absolute instant keeps operations on whole
                // ticks even when store calls take real time; on a paused
                // clock tokio jumps straight there.
                tokio::time::sleep_until(self.start + self.model.now()).await;
                if ticks < op_ticks(op) {
                    line += &format!(" (cut to {ticks}t: the time budget is spent)");
                }
                Ok(())
            }
        };
        self.history.push(line);
        compared
    }

    /// On real time, a store call that ended more than a quarter tick after
    /// its tick may have seen a deadline the model had not reached; say so
    /// rather than report a disagreement.
    fn check_timing(&self) -> Result<(), String> {
        if self.config.paused {
            return Ok(());
        }
        let late = Instant::now().saturating_duration_since(self.start + self.model.now());
        if late > self.config.tolerance() {
            return Err(format!(
                "the store call ended {late:?} after its tick (more than a quarter tick): \
                 its durations and expiries can no longer be compared with the model's; \
                 is the store overloaded?"
            ));
        }
        Ok(())
    }

    fn ticks(&self, at: Duration) -> String {
        let ticks = at.as_secs_f64() / self.config.tick.as_secs_f64();
        format!("{}", (ticks * 1000.0).round() / 1000.0)
    }

    fn show_claim(&self, outcome: &Result<ClaimOutcome, ModelError>) -> String {
        match outcome {
            Ok(ClaimOutcome::Acquired {
                token,
                attempt,
                takeover,
                ..
            }) => format!("Acquired token {token} attempt {attempt} takeover {takeover}"),
            Ok(ClaimOutcome::InFlight {
                token, remaining, ..
            }) => format!(
                "InFlight token {token} remaining {}t",
                self.ticks(*remaining)
            ),
            Ok(ClaimOutcome::Completed { token, .. }) => format!("Completed token {token}"),
            Ok(ClaimOutcome::Failed {
                token,
                error,
                retry_after,
                ..
            }) => format!(
                "Failed token {token} {:?} retry_after {}",
                error.message(),
                retry_after.map_or("none".to_owned(), |d| format!("{}t", self.ticks(d)))
            ),
            Err(e) => format!("{e:?}"),
        }
    }

    fn compare_claim(
        &mut self,
        k: usize,
        expected: &Result<ClaimOutcome, ModelError>,
        actual: &Result<Claim, Error>,
    ) -> Result<(), String> {
        let (expected, actual) = match (expected, actual) {
            (Ok(expected), Ok(actual)) => (expected, actual),
            _ => return compare_errors(expected, actual),
        };
        let tokens = &mut self.tokens[k];
        let mut diff = Diff::new(self.config.tolerance());
        match (expected, actual) {
            (
                ClaimOutcome::Acquired {
                    token,
                    attempt,
                    takeover,
                    remaining,
                },
                Claim::Acquired(lease),
            ) => {
                tokens.grant(*token, lease.token)?;
                diff.eq("key", &self.keys[k], &lease.key);
                diff.eq("attempt", attempt, &lease.attempt);
                diff.eq("takeover", takeover, &lease.takeover);
                diff.near("remaining", *remaining, lease.remaining);
                diff.near("ttl", *remaining, lease.ttl);
            }
            (
                ClaimOutcome::InFlight {
                    token,
                    owner,
                    attempt,
                    remaining,
                },
                Claim::InFlight(in_flight),
            ) => {
                diff.token(tokens, *token, in_flight.token);
                diff.eq("key", &self.keys[k], &in_flight.key);
                diff.eq("owner", owner, &in_flight.owner);
                diff.eq("attempt", attempt, &in_flight.attempt);
                diff.near("remaining", *remaining, in_flight.remaining);
            }
            (
                ClaimOutcome::Completed {
                    token,
                    attempt,
                    result,
                },
                Claim::Completed(completed),
            ) => {
                diff.token(tokens, *token, completed.token);
                diff.eq("key", &self.keys[k], &completed.key);
                diff.eq("attempt", attempt, &completed.attempt);
                diff.eq("result", result, &completed.result);
            }
            (
                ClaimOutcome::Failed {
                    token,
                    attempt,
                    error,
                    retry_after,
                },
                Claim::Failed(failed),
            ) => {
                diff.token(tokens, *token, failed.token);
                diff.eq("key", &self.keys[k], &failed.key);
                diff.eq("attempt", attempt, &failed.attempt);
                diff.eq("error", error, &failed.error);
                diff.near_opt("retry_after", *retry_after, failed.retry_after);
            }
            (expected, actual) => {
                return Err(format!(
                    "the model answers {expected:?}\n    the store answered {actual:?}"
                ));
            }
        }
        diff.finish()
            .map_err(|d| format!("{d}\n    the store answered {actual:?}"))
    }

    fn compare_record_result(
        &self,
        k: usize,
        expected: &Result<RecordView, ModelError>,
        actual: &Result<Record, Error>,
    ) -> Result<(), String> {
        match (expected, actual) {
            (Ok(expected), Ok(actual)) => self.compare_record(k, expected, actual),
            _ => compare_errors(expected, actual),
        }
    }

    fn compare_record(
        &self,
        k: usize,
        expected: &RecordView,
        actual: &Record,
    ) -> Result<(), String> {
        let tokens = &self.tokens[k];
        let mut diff = Diff::new(self.config.tolerance());
        diff.eq("key", &self.keys[k], &actual.key);
        diff.eq("state", &expected.state, &actual.state);
        diff.token(tokens, expected.token, actual.token);
        diff.eq("attempt", &expected.attempt, &actual.attempt);
        diff.eq("max_attempts", &expected.max_attempts, &actual.max_attempts);
        diff.eq("owner", &expected.owner, &actual.owner);
        diff.eq("kind", &expected.kind, &actual.kind);
        diff.eq("fingerprint", &expected.fingerprint, &actual.fingerprint);
        diff.eq("result", &expected.result, &actual.result);
        diff.eq("error", &expected.error, &actual.error);
        diff.near_opt(
            "lease_remaining",
            expected.lease_remaining,
            actual.lease_remaining,
        );
        diff.eq(
            "lease_expires_at is set",
            &expected.lease_remaining.is_some(),
            &actual.lease_expires_at.is_some(),
        );
        diff.eq(
            "lease_expired()",
            &expected.lease_expired(),
            &actual.lease_expired(),
        );
        diff.near_opt("retry_after", expected.retry_after, actual.retry_after);
        diff.eq(
            "completed_at is set",
            &expected.completed_at.is_some(),
            &actual.completed_at.is_some(),
        );
        diff.finish()
            .map_err(|d| format!("{d}\n    the store's record: {actual:?}"))
    }

    /// The failure message: where it happened, what differs, and every step
    /// up to it.
    fn report(&self, step: usize, op: &Op, disagreement: &str) -> String {
        let keys: Vec<String> = self
            .keys
            .iter()
            .enumerate()
            .map(|(i, key)| format!("k{i} = {:?}", key.as_str()))
            .collect();
        format!(
            "step #{step} ({}) at t={}: {disagreement}\n  steps run (tokens are the model's; {}):\n    {}",
            op.describe(self.keys.len()),
            self.ticks(self.model.now()),
            keys.join(", "),
            self.history.join("\n    ")
        )
    }
}

fn op_ticks(op: &Op) -> u32 {
    match op {
        Op::Advance { ticks } => *ticks,
        _ => 0,
    }
}

fn claim_options(c: &ClaimOp, tick: Duration) -> ClaimOptions {
    let mut options = ClaimOptions::new(Kind::parse(KINDS[c.kind]).expect("a valid test kind"));
    if let Some(f) = c.fingerprint {
        options = options
            .with_fingerprint(Fingerprint::parse(FINGERPRINTS[f]).expect("a valid fingerprint"));
    }
    if let Some(o) = c.owner {
        options = options.with_owner(Owner::parse(OWNERS[o]).expect("a valid owner"));
    }
    let lease = if c.long_lease {
        tick * 9 / 2
    } else {
        tick * 5 / 2
    };
    options
        .with_lease_ttl(lease)
        .and_then(|o| o.with_max_attempts(c.max_attempts))
        .and_then(|o| o.with_retry_backoff(tick / 3))
        .expect("test claim options within the limits")
}

/// A model token as the step lines show it.
fn show_token(token: ModelToken) -> String {
    if token == NEVER_GRANTED {
        "a never-granted token".to_owned()
    } else {
        format!("token {token}")
    }
}

fn show_view(view: &Result<RecordView, ModelError>) -> String {
    match view {
        Ok(view) => show_record(view),
        Err(e) => format!("{e:?}"),
    }
}

fn show_record(view: &RecordView) -> String {
    format!(
        "{} token {} attempt {}{}",
        view.state.as_str(),
        view.token,
        view.attempt,
        if view.lease_expired() {
            " (lease over)"
        } else {
            ""
        }
    )
}

/// Compares two answers of which at least one is an error.
fn compare_errors<A: fmt::Debug, B: fmt::Debug>(
    expected: &Result<A, ModelError>,
    actual: &Result<B, Error>,
) -> Result<(), String> {
    let same = match (expected, actual) {
        (Err(ModelError::LeaseLost), Err(Error::LeaseLost { .. }))
        | (Err(ModelError::FingerprintMismatch), Err(Error::FingerprintMismatch { .. }))
        | (Err(ModelError::InvalidInput), Err(Error::InvalidInput { .. })) => true,
        (Ok(_), Ok(_)) => unreachable!("compare_errors is only called with an error"),
        _ => false,
    };
    if same {
        Ok(())
    } else {
        Err(format!(
            "the model answers {expected:?}\n    the store answered {actual:?}"
        ))
    }
}

/// The token map of one key: each grant's model token and store token, in
/// the order granted.
#[derive(Default)]
struct Tokens {
    grants: Vec<(ModelToken, Token)>,
}

impl Tokens {
    /// Records a grant, checking that the store's token is greater than
    /// every store token seen for this key (docs/protocol.md §2: tokens strictly
    /// increase, even across deletes and retention).
    fn grant(&mut self, model: ModelToken, store: Token) -> Result<(), String> {
        if let Some(&(_, latest)) = self.grants.last()
            && store <= latest
        {
            return Err(format!(
                "the store granted token {store}, not greater than its earlier token \
                 {latest} for this key (docs/protocol.md §2, §5.2)"
            ));
        }
        self.grants.push((model, store));
        Ok(())
    }

    /// The token pair a fenced operation presents.
    fn pick(&self, pick: Pick) -> (ModelToken, Token) {
        let bogus = (
            NEVER_GRANTED,
            Token::new(MAX_TOKEN).expect("MAX_TOKEN is a valid token"),
        );
        match pick {
            Pick::Bogus => bogus,
            Pick::Back(n) => match self.grants.len() {
                0 => bogus,
                len => self.grants[len - 1 - n.min(len - 1)],
            },
        }
    }

    /// The model token a store token stands for, if the store granted it.
    fn model_of(&self, store: Token) -> Option<ModelToken> {
        self.grants
            .iter()
            .find(|&&(_, s)| s == store)
            .map(|&(m, _)| m)
    }
}

/// Collects the fields where the store differs from the model.
struct Diff {
    tolerance: Duration,
    found: Vec<String>,
}

impl Diff {
    fn new(tolerance: Duration) -> Self {
        Self {
            tolerance,
            found: Vec::new(),
        }
    }

    fn eq<T: PartialEq + fmt::Debug + ?Sized>(&mut self, field: &str, expected: &T, actual: &T) {
        if expected != actual {
            self.found
                .push(format!("{field}: model {expected:?}, store {actual:?}"));
        }
    }

    fn token(&mut self, tokens: &Tokens, expected: ModelToken, actual: Token) {
        match tokens.model_of(actual) {
            Some(model) if model == expected => {}
            Some(model) => self.found.push(format!(
                "token: model {expected}, store {actual} (which stands for model token {model})"
            )),
            None => self.found.push(format!(
                "token: model {expected}, store {actual}, a token the store never granted for this key"
            )),
        }
    }

    fn near(&mut self, field: &str, expected: Duration, actual: Duration) {
        if expected.abs_diff(actual) > self.tolerance {
            self.found.push(format!(
                "{field}: model {expected:?}, store {actual:?} (tolerance {:?})",
                self.tolerance
            ));
        }
    }

    fn near_opt(&mut self, field: &str, expected: Option<Duration>, actual: Option<Duration>) {
        match (expected, actual) {
            (Some(expected), Some(actual)) => self.near(field, expected, actual),
            (None, None) => {}
            (expected, actual) => self
                .found
                .push(format!("{field}: model {expected:?}, store {actual:?}")),
        }
    }

    fn finish(self) -> Result<(), String> {
        if self.found.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "differs from the model in {}",
                self.found.join("; ")
            ))
        }
    }
}
