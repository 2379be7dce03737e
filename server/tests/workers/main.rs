//! Workers as real OS processes, killed (`SIGKILL`) and paused (`SIGSTOP`)
//! while they hold leases, and the `onceflight` server killed under load, on
//! every store where it applies (a crashed worker, at scale); and
//! the store itself crashed or cut off from the server while workers are
//! busy.
//!
//! This is a `harness = false` test. Run with `ONCEFLIGHT_FAULT_WORKER` set
//! to a JSON [`WorkerConfig`], the binary is a worker ([`worker`]): a plain
//! tokio program that claims keys over HTTP, "runs the job" (sleeps,
//! heartbeating), completes with a result naming its pid and token, waits
//! with `GET ?wait_ms` on work in flight, retries connection errors and
//! 503s, and writes every request, answer and job event to its log (see
//! `common/history.rs`). Without it, the binary runs the scenarios through
//! `libtest-mimic` (libtest's command line and output), each in its own
//! server (a fresh Postgres schema, a fresh Redis prefix). Workers must be
//! separate processes so that a kill or a pause is exactly what a crashed
//! or frozen (GC, swap, VM migration) worker is: the kernel stops it
//! between any two instructions.
//!
//! After each scenario the merged history of every worker is checked
//! against docs/protocol.md §5 (`history::check`, itself checked by
//! [`checker`]), plus what the scenario is about: [`kills`] (workers
//! killed and paused), [`server_kill`] (the server killed) and [`outages`]
//! (the store crashed or frozen). Postgres and Redis scenarios need `DATABASE_URL` /
//! `REDIS_URL`; without them they skip loudly, unless
//! `ONCEFLIGHT_REQUIRE_BACKENDS=1`.

#[path = "../common/mod.rs"]
mod common;

mod checker;
mod kills;
#[cfg(any(feature = "postgres", feature = "redis"))]
mod outages;
mod process;
#[cfg(feature = "postgres")]
mod server_kill;
mod worker;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::history::{self, History, Line};
use common::{Launch, Server, call_until_available, client};
use libtest_mimic::{Arguments, Failed, Trial};
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::runtime::Handle;

use crate::process::WorkerProcess;

/// The variable that makes this binary a worker; its value is the worker's
/// JSON [`WorkerConfig`].
const WORKER_ENV: &str = "ONCEFLIGHT_FAULT_WORKER";

/// How long a server may take to answer `/readyz` after it is spawned.
const STARTUP: Duration = Duration::from_secs(30);

/// The longest any scenario may take before it counts as hung. Each is
/// designed to take a few seconds; this bound only detects hangs on a loaded
/// 2-core machine.
const SCENARIO_BOUND: Duration = Duration::from_secs(90);

/// Slack on top of one lease TTL for a killed worker's key to be taken over
/// (§5.6): scheduling, process start-up and HTTP on a loaded CI machine.
const TAKEOVER_SLACK: Duration = Duration::from_secs(6);
/// How long a read after the run may still find the store unavailable (503)
/// after an outage ended.
const STORE_BACK: Duration = Duration::from_secs(15);

/// Scenarios run at once (each is mostly sleeping processes).
const PARALLEL: usize = 4;

/// A worker when [`WORKER_ENV`] is set; otherwise the scenarios, as
/// libtest would run them (names as filters, `--list`, `--skip`, …).
fn main() -> ExitCode {
    if let Ok(config) = std::env::var(WORKER_ENV) {
        return worker::main(&config);
    }
    let mut args = Arguments::from_args();
    // [`PARALLEL`] scenarios at once: not one per core (libtest-mimic's
    // default), nor `RUST_TEST_THREADS` (which it does not read; `cargo
    // xtask test` sets 8). Each scenario is mostly sleeping processes, and
    // its bounds ([`TAKEOVER_SLACK`], [`SCENARIO_BOUND`]) are set for four
    // at once on a 2-core machine. `--test-threads` on the command line
    // wins.
    args.test_threads.get_or_insert(PARALLEL);
    // One runtime for every scenario, as small as the machine: the
    // scenarios' own tasks (proxies, held requests) share its two threads.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let trials = scenarios()
        .into_iter()
        .map(|(name, scenario)| {
            let runtime = runtime.handle().clone();
            Trial::test(name, move || run(&runtime, scenario))
        })
        .collect();
    libtest_mimic::run(&args, trials).exit_code()
}

/// What a worker process does.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct WorkerConfig {
    /// The server, e.g. `http://127.0.0.1:7700`.
    base: String,
    /// The keys to see completed, in order; tasks take the next one free.
    keys: Vec<String>,
    /// Keys worked on at once.
    tasks: usize,
    /// The owner id the worker claims with.
    owner: String,
    lease_ms: u64,
    /// How long a job takes.
    job_ms: u64,
    /// Heartbeat period during a job (0: none).
    heartbeat_ms: u64,
    /// After its job, attempt every fenced write (heartbeat, complete, fail,
    /// release) whatever the answers, then stop: a worker that does not
    /// notice it lost its lease.
    stubborn: bool,
    /// Where to write the history.
    log: PathBuf,
    /// The worker gives up (exit 2) after this long, so that no worker
    /// outlives a crashed test.
    deadline_ms: u64,
}

/// Wall clock, nanoseconds since the Unix epoch.
fn now_ns() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970");
    u64::try_from(since.as_nanos()).expect("nanoseconds fit u64 until 2554")
}

/// The store a scenario's server runs on.
#[derive(Debug, Clone)]
enum Backend {
    Memory,
    Postgres(String),
    Redis(String),
}

impl Backend {
    /// The backend named `name`, or `None` (after saying so loudly) when its
    /// URL is not set and backends are not required.
    fn named(name: &str) -> Option<Self> {
        match name {
            "memory" => Some(Self::Memory),
            "postgres" => onceflight_test_support::backend_url("DATABASE_URL").map(Self::Postgres),
            "redis" => onceflight_test_support::backend_url("REDIS_URL").map(Self::Redis),
            other => panic!("no backend {other}"),
        }
    }

    /// `onceflight serve` on this store, in the schema or under the prefix
    /// `namespace` (the memory store needs none), ready once `/readyz`
    /// answers.
    fn launch(&self, namespace: &str) -> Launch {
        let launch = match self {
            Self::Memory => crate::common::launch().args(&["--store", "memory://"]),
            Self::Postgres(url) => crate::common::launch().args(&[
                "--store",
                url,
                "--pg-schema",
                namespace,
                "--pg-pool-size",
                "4",
            ]),
            Self::Redis(url) => crate::common::launch().args(&[
                "--store",
                url,
                "--redis-prefix",
                &format!("{namespace}:"),
            ]),
        };
        launch
            .env("RUST_LOG", "info")
            .ready_when("/readyz", STARTUP)
    }
}

/// A worker config for `server` with the common settings.
fn config(server: &Server, owner: &str, keys: &[String], tasks: usize) -> WorkerConfig {
    WorkerConfig {
        base: server.url(""),
        keys: keys.to_vec(),
        tasks,
        owner: owner.to_owned(),
        lease_ms: 900,
        job_ms: 600,
        heartbeat_ms: 300,
        stubborn: false,
        log: PathBuf::new(),
        deadline_ms: 60_000,
    }
}

/// Polls `ready` every 20 ms until it returns `Some`, for at most `within`.
async fn poll<T>(what: &str, within: Duration, mut ready: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = ready() {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The final record of every key (a plain `GET`), by key.
async fn final_records(server: &Server, keys: &[String]) -> BTreeMap<String, Value> {
    let http = client();
    let mut records = BTreeMap::new();
    for key in keys {
        let url = server.url(&format!("/v1/requests/{key}"));
        // A store just back from an outage may still answer 503
        // `store_unavailable` (with `Retry-After`) while its pool replaces
        // connections the outage left behind: such a read is retried for a
        // bounded time, as the API asks of clients. Any other 5xx, or a 503
        // past the bound, fails.
        let reply = call_until_available(&http, Method::GET, &url, None, None, STORE_BACK).await;
        let record = reply.expect(StatusCode::OK).clone();
        records.insert(key.clone(), record);
    }
    records
}

/// Merges the logs of `workers` and checks them and `finals` against §5;
/// panics with every violation.
fn checked_history(
    name: &str,
    workers: &[&WorkerProcess],
    finals: &BTreeMap<String, Value>,
) -> History {
    let mut lines: Vec<Line> = workers.iter().flat_map(|worker| worker.lines()).collect();
    lines.sort_by_key(|line| line.t);
    let history = History::from_lines(lines);
    let violations = history::check(&history, finals);
    assert!(
        violations.is_empty(),
        "{name}: {} violations of §5 in a history of {} calls:\n{}",
        violations.len(),
        history.calls.len(),
        violations
            .iter()
            .take(30)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    history
}

/// Keys `<prefix>-00` … for a scenario.
fn keys(prefix: &str, count: usize) -> Vec<String> {
    (0..count).map(|i| format!("{prefix}-{i:02}")).collect()
}

/// A scenario: a future to run on the shared runtime.
type Scenario = fn() -> Pin<Box<dyn Future<Output = ()> + Send>>;

/// Runs `scenario` on `runtime`, bounded by [`SCENARIO_BOUND`]; a panic in
/// it is this trial's panic.
fn run(runtime: &Handle, scenario: Scenario) -> Result<(), Failed> {
    let task = runtime.spawn(async move { tokio::time::timeout(SCENARIO_BOUND, scenario()).await });
    match runtime.block_on(task) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(format!("did not finish within {SCENARIO_BOUND:?}").into()),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(e.to_string().into()),
    }
}

/// `$scenario` of `$module` on the backend `$backend`, named
/// `<backend>::<scenario>`; it skips (loudly) when the backend's URL is not
/// set.
macro_rules! on {
    ($backend:literal, $module:ident :: $scenario:ident) => {
        (
            concat!($backend, "::", stringify!($scenario)),
            (|| {
                Box::pin(async {
                    if let Some(backend) = Backend::named($backend) {
                        $module::$scenario(backend).await;
                    }
                })
            }) as Scenario,
        )
    };
}

/// The store `$store` failing (`$outage`) under busy workers, named
/// `<store>::<name>`.
#[cfg(any(feature = "postgres", feature = "redis"))]
macro_rules! outage {
    ($store:literal, $outage:ident, $name:literal) => {
        (
            concat!($store, "::", $name),
            (|| {
                Box::pin(outages::store_outage_mid_run(
                    $store,
                    outages::Outage::$outage,
                ))
            }) as Scenario,
        )
    };
}

/// Every scenario, by name; Postgres and Redis ones only when the server is
/// built with that store.
fn scenarios() -> Vec<(&'static str, Scenario)> {
    let mut all: Vec<(&'static str, Scenario)> = Vec::new();
    all.extend([
        (
            "history_checker_catches_each_violation",
            (|| Box::pin(checker::history_checker_catches_each_violation())) as Scenario,
        ),
        on!(
            "memory",
            kills::sigkilled_workers_are_taken_over_after_one_lease
        ),
        on!("memory", kills::sigstopped_worker_is_fenced_after_takeover),
    ]);
    #[cfg(feature = "postgres")]
    all.extend([
        on!(
            "postgres",
            kills::sigkilled_workers_are_taken_over_after_one_lease
        ),
        on!(
            "postgres",
            kills::sigstopped_worker_is_fenced_after_takeover
        ),
        on!("postgres", server_kill::sigkilled_server_loses_no_result),
        outage!("postgres", Crash, "store_crash_mid_run"),
        outage!("postgres", Freeze, "store_frozen_mid_run"),
    ]);
    #[cfg(feature = "redis")]
    all.extend([
        on!(
            "redis",
            kills::sigkilled_workers_are_taken_over_after_one_lease
        ),
        on!("redis", kills::sigstopped_worker_is_fenced_after_takeover),
        outage!("redis", Crash, "store_crash_mid_run"),
        outage!("redis", Freeze, "store_frozen_mid_run"),
    ]);
    all
}
