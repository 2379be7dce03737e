//! Workers as real OS processes, killed (`SIGKILL`) and paused (`SIGSTOP`)
//! while they hold leases, and the `onceflight` server killed under load, on
//! every store where it applies (a crashed worker, at scale); and
//! the store itself crashed or cut off from the server while workers are
//! busy.
//!
//! This is a `harness = false` test. Run with `ONCEFLIGHT_FAULT_WORKER` set
//! to a JSON [`WorkerConfig`], the binary is a worker: a plain tokio program
//! that claims keys over HTTP, "runs the job" (sleeps, heartbeating),
//! completes with a result naming its pid and token, waits with `GET
//! ?wait_ms` on work in flight, retries connection errors and 503s, and
//! writes every request, answer and job event to its log (see
//! `common/history.rs`). Without it, the binary runs the scenarios, each in
//! its own server (a fresh Postgres schema, a fresh Redis prefix), as
//! libtest would: `test <name> ... ok` lines, a non-zero exit on failure,
//! names as substring filters, `--list`, `--skip`, and the other libtest
//! flags accepted and ignored. Workers must be separate processes so that a
//! kill or a pause is exactly what a crashed or frozen (GC, swap, VM
//! migration) worker is: the kernel stops it between any two instructions.
//!
//! After each scenario the merged history of every worker is checked
//! against docs/protocol.md §5 (`history::check`), plus what the scenario is about.
//! Postgres and Redis scenarios need `DATABASE_URL` / `REDIS_URL`; without
//! them they skip loudly, unless `ONCEFLIGHT_REQUIRE_BACKENDS=1`.

mod common;

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::history::{self, History, Line};
use common::{Launch, Server, call, client};
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

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

/// Scenarios run at once (each is mostly sleeping processes).
const PARALLEL: usize = 4;

fn main() -> ExitCode {
    if let Ok(config) = std::env::var(WORKER_ENV) {
        return worker::main(&config);
    }
    harness::main()
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

/// The worker side: a plain tokio program talking raw HTTP.
mod worker {
    use std::fs::{File, OpenOptions};
    use std::sync::Mutex;
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// Runs the worker `config` describes; exit 0 once every key is done.
    pub(super) fn main(config: &str) -> ExitCode {
        let config: WorkerConfig = serde_json::from_str(config).expect("a worker config");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        runtime.block_on(run(config));
        ExitCode::SUCCESS
    }

    struct Worker {
        config: WorkerConfig,
        http: reqwest::Client,
        log: Mutex<File>,
        pid: u32,
        deadline: Instant,
        next_id: AtomicU64,
        next_key: AtomicUsize,
    }

    async fn run(config: WorkerConfig) {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&config.log)
            .expect("open the worker's log");
        let worker = std::sync::Arc::new(Worker {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .expect("an HTTP client"),
            log: Mutex::new(log),
            pid: std::process::id(),
            deadline: Instant::now() + Duration::from_millis(config.deadline_ms),
            next_id: AtomicU64::new(0),
            next_key: AtomicUsize::new(0),
            config,
        });
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..worker.config.tasks {
            let worker = std::sync::Arc::clone(&worker);
            tasks.spawn(async move {
                loop {
                    let next = worker.next_key.fetch_add(1, Ordering::Relaxed);
                    let Some(key) = worker.config.keys.get(next).cloned() else {
                        break;
                    };
                    worker.see_done(&key).await;
                }
            });
        }
        while let Some(joined) = tasks.join_next().await {
            joined.expect("a worker task");
        }
        worker.record(json!({"ev": "exit"}));
    }

    impl Worker {
        /// Appends one line to the log in a single write, so that a kill
        /// leaves whole lines behind (the reader drops a torn last line).
        fn record(&self, mut line: Value) {
            line["pid"] = json!(self.pid);
            line["t"] = json!(now_ns());
            let mut text = line.to_string();
            text.push('\n');
            let mut log = self.log.lock().expect("the log lock");
            log.write_all(text.as_bytes()).expect("write the log");
        }

        /// Sends `op` for `key` until an answer arrives (transport errors
        /// are logged and retried with a short backoff); returns the status
        /// and JSON body.
        async fn send(&self, op: &str, key: &str, token: Option<u64>, body: Value) -> (u16, Value) {
            let mut backoff = Duration::from_millis(25);
            loop {
                if Instant::now() > self.deadline {
                    self.record(json!({"ev": "deadline"}));
                    std::process::exit(2);
                }
                let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                let base = &self.config.base;
                let request = match op {
                    "wait" => self
                        .http
                        .get(format!("{base}/v1/requests/{key}?wait_ms=5000")),
                    _ => self
                        .http
                        .post(format!("{base}/v1/requests/{key}/{op}"))
                        .json(&body),
                };
                self.record(json!({
                    "ev": "req", "id": id, "op": op, "key": key, "token": token, "sent": body,
                }));
                let failure = match request.send().await {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        match response.text().await {
                            Ok(text) => {
                                let json =
                                    serde_json::from_str(&text).unwrap_or(Value::String(text));
                                self.record(json!({
                                    "ev": "resp", "id": id, "status": status, "body": json,
                                }));
                                return (status, json);
                            }
                            Err(e) => e,
                        }
                    }
                    Err(e) => e,
                };
                self.record(json!({"ev": "err", "id": id, "error": failure.to_string()}));
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(400));
            }
        }

        /// Claims `key` until it is completed, doing the job whenever a
        /// lease is granted.
        async fn see_done(&self, key: &str) {
            let config = &self.config;
            let mut backoff = Duration::from_millis(25);
            loop {
                let claim = json!({
                    "kind": "image", "owner": config.owner, "lease_ms": config.lease_ms,
                    "max_attempts": 1000,
                });
                let (status, body) = self.send("claim", key, None, claim).await;
                match (status, body["state"].as_str()) {
                    (201, Some("acquired")) => {
                        let token = body["token"].as_u64().expect("a lease has a token");
                        if self.run_job(key, token).await {
                            return;
                        }
                    }
                    (202, Some("in_flight")) => {
                        self.send("wait", key, None, Value::Null).await;
                    }
                    (200, Some("completed")) => return,
                    _ => {
                        // A 503 while the store or server is away, or an
                        // answer the checker will report: try again later.
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_millis(400));
                    }
                }
            }
        }

        /// Runs the job under `token`, heartbeating, then completes it;
        /// returns whether the key is done for this worker.
        async fn run_job(&self, key: &str, token: u64) -> bool {
            let config = &self.config;
            self.record(json!({"ev": "job_start", "key": key, "token": token}));
            let end = tokio::time::Instant::now() + Duration::from_millis(config.job_ms);
            let mut lost = false;
            loop {
                let now = tokio::time::Instant::now();
                if now >= end {
                    break;
                }
                let left = end - now;
                if config.heartbeat_ms == 0 {
                    tokio::time::sleep(left).await;
                    break;
                }
                tokio::time::sleep(left.min(Duration::from_millis(config.heartbeat_ms))).await;
                let heartbeat = json!({"token": token, "lease_ms": config.lease_ms});
                let (status, _) = self.send("heartbeat", key, Some(token), heartbeat).await;
                if status == 409 {
                    lost = true;
                    if !config.stubborn {
                        break;
                    }
                }
            }
            let result =
                json!({"pid": self.pid, "owner": config.owner, "token": token, "key": key});
            if config.stubborn {
                // A worker that never noticed: it tries every write.
                self.record(json!({"ev": "job_end", "key": key, "token": token}));
                let writes = [
                    (
                        "heartbeat",
                        json!({"token": token, "lease_ms": config.lease_ms}),
                    ),
                    ("complete", json!({"token": token, "result": result})),
                    (
                        "fail",
                        json!({"token": token, "message": "late failure", "retryable": true}),
                    ),
                    ("release", json!({"token": token})),
                ];
                for (op, body) in writes {
                    self.send(op, key, Some(token), body).await;
                }
                return true;
            }
            if lost {
                self.record(json!({"ev": "job_abandoned", "key": key, "token": token}));
                return false;
            }
            self.record(json!({"ev": "job_end", "key": key, "token": token}));
            let complete = json!({"token": token, "result": result});
            loop {
                match self
                    .send("complete", key, Some(token), complete.clone())
                    .await
                {
                    (200, _) => return true,
                    (409, _) => return false,
                    _ => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        }
    }
}

/// A worker process seen from the test: killed when dropped.
struct WorkerProcess {
    child: Child,
    pid: u32,
    log: PathBuf,
}

impl WorkerProcess {
    /// Starts a worker with `config` (its log path is filled in here).
    fn spawn(mut config: WorkerConfig) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        config.log = std::env::temp_dir().join(format!(
            "onceflight-fault-worker-{}-{}.jsonl",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let child = Command::new(std::env::current_exe().expect("this test binary"))
            .env(
                WORKER_ENV,
                serde_json::to_string(&config).expect("a config"),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn a worker");
        Self {
            pid: child.id(),
            child,
            log: config.log,
        }
    }

    /// Sends `signal` (`KILL`, `STOP`, `CONT`) with `kill(1)`; returns the
    /// wall clock just before.
    fn signal(&self, signal: &str) -> u64 {
        let at = now_ns();
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {}: {status}", self.pid);
        at
    }

    /// SIGKILL, then reaps the process; returns the wall clock of the kill.
    fn kill(&mut self) -> u64 {
        let at = self.signal("KILL");
        self.child.wait().expect("reap the killed worker");
        at
    }

    /// What the worker has logged so far.
    fn lines(&self) -> Vec<Line> {
        history::read_lines(&self.log)
    }

    /// Waits (bounded) for the worker to exit and asserts it succeeded.
    async fn expect_success(&mut self, within: Duration) {
        let status = self.wait_exit(within).await;
        assert!(
            status.success(),
            "worker {} exits 0 once its keys are done, got {status}",
            self.pid
        );
    }

    async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll a worker") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "worker {} still running after {within:?}; its log: {}",
                self.pid,
                self.log.display()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The leases this worker holds by its log: jobs started and neither
    /// ended nor abandoned, as (key, token, start).
    fn open_jobs(&self) -> Vec<(String, u64, u64)> {
        let history = History::from_lines(self.lines());
        history
            .jobs
            .iter()
            .filter(|job| job.end.is_none())
            .map(|job| (job.key.clone(), job.token, job.start))
            .collect()
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        // SIGKILL ends a stopped process too; errors mean it is gone.
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        } else {
            eprintln!("worker {} kept its log at {}", self.pid, self.log.display());
        }
    }
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
            "postgres" => onceflight_core::testkit::backend_url("DATABASE_URL").map(Self::Postgres),
            "redis" => onceflight_core::testkit::backend_url("REDIS_URL").map(Self::Redis),
            other => panic!("no backend {other}"),
        }
    }

    /// `onceflight serve` on this store, in the schema or under the prefix
    /// `namespace` (the memory store needs none), ready once `/readyz`
    /// answers.
    fn launch(&self, namespace: &str) -> Launch {
        let launch = match self {
            Self::Memory => Launch::new().args(&["--store", "memory://"]),
            Self::Postgres(url) => Launch::new().args(&[
                "--store",
                url,
                "--pg-schema",
                namespace,
                "--pg-pool-size",
                "4",
            ]),
            Self::Redis(url) => {
                Launch::new().args(&["--store", url, "--redis-prefix", &format!("{namespace}:")])
            }
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
        let reply = call(
            &http,
            Method::GET,
            &server.url(&format!("/v1/requests/{key}")),
            None,
            None,
        )
        .await;
        records.insert(key.clone(), reply.expect(StatusCode::OK).clone());
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

/// Several workers over tens of keys; two of them are SIGKILLed while each
/// holds leases, and replacements finish the work. Every lease of a killed
/// worker that did not complete is taken over, after its end on the store's
/// clock and within one lease TTL (plus slack) of the kill (§5.6), with
/// `takeover: true`; the whole history satisfies §5.
async fn sigkilled_workers_are_taken_over_after_one_lease(backend: Backend) {
    let name = "sigkill";
    let server = backend
        .launch(&onceflight_core::testkit::unique_name("t_flt"))
        .start()
        .await;
    let all = keys("kill", 36);
    let mut workers: Vec<WorkerProcess> = (0..4)
        .map(|i| {
            let mut order = all.clone();
            order.rotate_left(i * 9);
            WorkerProcess::spawn(config(&server, &format!("w{i}"), &order, 3))
        })
        .collect();
    let lease = Duration::from_millis(900);

    // Victims: two workers each holding a lease whose job began less than
    // 250 ms ago, so that it is certainly still held when the kill lands.
    let victims: Vec<usize> = poll(
        "two workers hold fresh leases",
        Duration::from_secs(20),
        || {
            let now = now_ns();
            let holding: Vec<usize> = workers
                .iter()
                .enumerate()
                .filter(|(_, worker)| {
                    worker
                        .open_jobs()
                        .iter()
                        .any(|(_, _, start)| now.saturating_sub(*start) < 250_000_000)
                })
                .map(|(i, _)| i)
                .take(2)
                .collect();
            (holding.len() == 2).then_some(holding)
        },
    )
    .await;
    let mut kills = Vec::new();
    for &victim in &victims {
        let at = workers[victim].kill();
        kills.push((workers[victim].pid, at));
    }

    // Replacements start on the keys the victims held, one task each.
    let mut held_by_victims = Vec::new();
    for &victim in &victims {
        let held: Vec<String> = workers[victim]
            .open_jobs()
            .into_iter()
            .map(|(key, _, _)| key)
            .collect();
        let mut order = held.clone();
        order.extend(all.iter().filter(|key| !held.contains(key)).cloned());
        let tasks = held.len() + 1;
        held_by_victims.extend(held);
        workers.push(WorkerProcess::spawn(config(
            &server,
            &format!("replacement-of-{}", workers[victim].pid),
            &order,
            tasks,
        )));
    }
    assert!(
        !held_by_victims.is_empty(),
        "{name}: the killed workers held leases when they died"
    );
    for (i, worker) in workers.iter_mut().enumerate() {
        if !victims.contains(&i) {
            worker.expect_success(Duration::from_secs(45)).await;
        }
    }

    let finals = final_records(&server, &all).await;
    let refs: Vec<&WorkerProcess> = workers.iter().collect();
    let history = checked_history(name, &refs, &finals);

    // The victims' leases that did not complete were taken over in time.
    let mut taken_over = 0;
    for (pid, killed_at) in kills {
        for key in &all {
            let grants = history.grants(key);
            let final_token = finals[key]["token"].as_u64();
            for dead in grants.iter().filter(|grant| grant.pid == pid) {
                if final_token == Some(dead.token) {
                    continue; // Its completion landed before the kill.
                }
                let next = grants
                    .iter()
                    .find(|grant| grant.token > dead.token)
                    .unwrap_or_else(|| panic!("{name}: {key}: token {} of killed worker {pid} was never taken over: {grants:?}", dead.token));
                assert!(
                    next.takeover,
                    "{name}: {key}: the lease after killed token {} is a takeover: {next:?}",
                    dead.token
                );
                let delay = Duration::from_nanos(next.recv.saturating_sub(killed_at));
                assert!(
                    delay <= lease + TAKEOVER_SLACK,
                    "{name}: {key}: killed worker {pid}'s key was taken over {delay:?} after the kill; one lease is {lease:?}"
                );
                taken_over += 1;
            }
        }
    }
    assert!(
        taken_over >= 1,
        "{name}: at least one lease of a killed worker was taken over"
    );
}

/// A worker holding leases is SIGSTOPped past its lease; another takes over
/// and completes; once resumed (SIGCONT) the frozen worker tries every
/// fenced write and each is refused with 409 `lease_lost`; the newer result
/// stands.
async fn sigstopped_worker_is_fenced_after_takeover(backend: Backend) {
    let name = "sigstop";
    let server = backend
        .launch(&onceflight_core::testkit::unique_name("t_flt"))
        .start()
        .await;
    let all = keys("stop", 2);
    let frozen_config = WorkerConfig {
        lease_ms: 700,
        job_ms: 4_000,
        heartbeat_ms: 200,
        stubborn: true,
        ..config(&server, "frozen", &all, 2)
    };
    let mut frozen = WorkerProcess::spawn(frozen_config);
    let held = poll(
        "the frozen worker holds both keys",
        Duration::from_secs(20),
        || {
            let jobs = frozen.open_jobs();
            (jobs.len() == 2).then_some(jobs)
        },
    )
    .await;
    frozen.signal("STOP");

    let mut taker = WorkerProcess::spawn(WorkerConfig {
        lease_ms: 700,
        job_ms: 200,
        heartbeat_ms: 0,
        ..config(&server, "taker", &all, 2)
    });
    taker.expect_success(Duration::from_secs(30)).await;
    let resumed_at = frozen.signal("CONT");
    frozen.expect_success(Duration::from_secs(30)).await;

    let finals = final_records(&server, &all).await;
    let history = checked_history(name, &[&frozen, &taker], &finals);

    for (key, token, _) in &held {
        let record = &finals[key];
        let taker_grant = history
            .grants(key)
            .into_iter()
            .find(|grant| grant.pid == taker.pid)
            .unwrap_or_else(|| panic!("{name}: {key}: the taker was granted a lease: {record}"));
        assert!(
            taker_grant.takeover && taker_grant.token > *token,
            "{name}: {key}: the taker took over frozen token {token}: {taker_grant:?}"
        );
        assert_eq!(
            (record["token"].as_u64(), &record["result"]["pid"]),
            (Some(taker_grant.token), &json!(taker.pid)),
            "{name}: {key}: the taker's newer result stands: {record}"
        );
        // After it resumed, every write of the frozen worker was refused,
        // and it tried each kind.
        let late: Vec<_> = history
            .calls_of(key)
            .filter(|c| c.pid == frozen.pid && c.is_fenced() && c.sent >= resumed_at)
            .filter(|c| c.answer().is_some())
            .collect();
        for c in &late {
            assert!(
                c.is_lease_lost(),
                "{name}: {key}: {} with frozen token {token} after SIGCONT is 409 lease_lost, got {:?}",
                c.op,
                c.answer()
            );
        }
        for op in ["heartbeat", "complete", "fail", "release"] {
            assert!(
                late.iter().any(|c| c.op == op),
                "{name}: {key}: the resumed worker attempted a {op}"
            );
        }
    }
}

/// (Postgres) The server is SIGKILLed while workers are busy and restarted
/// on the same port and schema: every result acknowledged before the kill is
/// still there, unchanged; the workers recover by themselves (connection
/// errors are retried) and every key ends completed; the history satisfies
/// §5.
#[cfg(feature = "postgres")]
async fn sigkilled_server_loses_no_result(backend: Backend) {
    let name = "server-kill";
    let schema = onceflight_core::testkit::unique_name("t_flt");
    let server = backend.launch(&schema).start().await;
    let bind = server.url("").trim_start_matches("http://").to_owned();
    let all = keys("crash", 36);
    let mut workers: Vec<WorkerProcess> = (0..3)
        .map(|i| {
            let mut order = all.clone();
            order.rotate_left(i * 12);
            WorkerProcess::spawn(WorkerConfig {
                lease_ms: 1_000,
                job_ms: 300,
                heartbeat_ms: 0,
                ..config(&server, &format!("w{i}"), &order, 3)
            })
        })
        .collect();

    // Kill once results are being acknowledged and jobs are running.
    let before = poll(
        "results acknowledged while jobs run",
        Duration::from_secs(20),
        || {
            let lines: Vec<Line> = workers.iter().flat_map(|worker| worker.lines()).collect();
            let history = History::from_lines(lines);
            let acked = history.acked_completions();
            let running = workers.iter().any(|worker| !worker.open_jobs().is_empty());
            (acked.len() >= 6 && running).then_some(acked)
        },
    )
    .await;
    drop(server);
    let restarted = backend.launch(&schema).bind(&bind).start().await;

    // Every acknowledged result is still there, unchanged.
    let http = client();
    for (key, completions) in &before {
        let reply = call(
            &http,
            Method::GET,
            &restarted.url(&format!("/v1/requests/{key}")),
            None,
            None,
        )
        .await;
        let record = reply.expect(StatusCode::OK);
        let (token, result) = &completions[0];
        assert_eq!(
            (
                record["state"].as_str(),
                record["token"].as_u64(),
                &record["result"]
            ),
            (Some("completed"), Some(*token), result),
            "{name}: {key}: the result acknowledged before the kill survives it"
        );
    }
    assert!(
        before.len() < all.len(),
        "{name}: work was still in progress when the server was killed"
    );
    for worker in &mut workers {
        worker.expect_success(Duration::from_secs(45)).await;
    }
    let finals = final_records(&restarted, &all).await;
    let refs: Vec<&WorkerProcess> = workers.iter().collect();
    let history = checked_history(name, &refs, &finals);
    let cut = history
        .calls
        .iter()
        .filter(|c| !matches!(c.outcome, history::Outcome::Answered { .. }))
        .count();
    eprintln!(
        "{name}: {cut} requests were cut by the kill and retried; all {} keys completed",
        all.len()
    );
}

/// The store failing under busy workers: Postgres and Redis only.
#[cfg(any(feature = "postgres", feature = "redis"))]
mod outages {
    use super::*;
    use crate::common::pg_cluster::PgCluster;
    use crate::common::proxy::Proxy;
    use crate::common::redis_child::RedisChild;

    /// How the store fails under a busy server.
    #[derive(Debug, Clone, Copy)]
    pub(super) enum Outage {
        /// The store process dies (PostgreSQL: `pg_ctl stop -m immediate`;
        /// Redis, with an append-only file: SIGKILL) and starts again.
        Crash,
        /// A proxy between server and store holds every byte, then lets them
        /// through.
        Freeze,
    }

    /// What takes the store away and gives it back.
    enum Breaker {
        Postgres(PgCluster),
        Redis(RedisChild),
        Proxy(Proxy),
    }

    impl Breaker {
        fn fail(&mut self) {
            match self {
                Self::Postgres(cluster) => cluster.crash(),
                Self::Redis(redis) => redis.crash(),
                Self::Proxy(proxy) => proxy.freeze(),
            }
        }

        fn recover(&mut self) {
            match self {
                Self::Postgres(cluster) => cluster.begin(),
                Self::Redis(redis) => redis.begin(),
                Self::Proxy(proxy) => proxy.heal(),
            }
        }
    }

    /// How long the store stays away: longer than a lease, so leases expire
    /// meanwhile and are taken over afterwards.
    const OUTAGE: Duration = Duration::from_millis(2500);

    /// Workers busy on `store` when it fails for [`OUTAGE`] and comes back:
    /// requests meanwhile answer 503 (retried by the workers) or fail, nothing
    /// hangs, every key ends completed, and the whole history — 503s counted as
    /// "unknown", since a timed-out call may have gone through — passes the §5
    /// checker, results acknowledged before the outage included.
    pub(super) async fn store_outage_mid_run(store: &'static str, outage: Outage) {
        let name = format!("{store}-{outage:?}-mid-run");
        let (backend, mut breaker) = match (store, outage) {
            ("postgres", Outage::Crash) => {
                let Some(cluster) = PgCluster::start(&name) else {
                    return;
                };
                (Backend::Postgres(cluster.url()), Breaker::Postgres(cluster))
            }
            ("redis", Outage::Crash) => {
                let Some(redis) = RedisChild::start(&name, true) else {
                    return;
                };
                (Backend::Redis(redis.url()), Breaker::Redis(redis))
            }
            (store, Outage::Freeze) => match Backend::named(store) {
                None => return,
                Some(Backend::Postgres(url)) => {
                    let (proxy, url) = Proxy::in_front_of(&url, 5432).await;
                    (Backend::Postgres(url), Breaker::Proxy(proxy))
                }
                Some(Backend::Redis(url)) => {
                    let (proxy, url) = Proxy::in_front_of(&url, 6379).await;
                    (Backend::Redis(url), Breaker::Proxy(proxy))
                }
                Some(Backend::Memory) => panic!("the memory store has no outage"),
            },
            (store, outage) => panic!("no {outage:?} scenario on {store}"),
        };
        let schema = onceflight_core::testkit::unique_name("t_flt");
        let server = backend
            .launch(&schema)
            .args(&["--store-timeout-ms", "1000"])
            .start()
            .await;
        let all = keys("outage", 30);
        let mut workers: Vec<WorkerProcess> = (0..3)
            .map(|i| {
                let mut order = all.clone();
                order.rotate_left(i * 10);
                WorkerProcess::spawn(config(&server, &format!("w{i}"), &order, 3))
            })
            .collect();

        poll(
            "results acknowledged while jobs run",
            Duration::from_secs(20),
            || {
                let lines: Vec<Line> = workers.iter().flat_map(|worker| worker.lines()).collect();
                let acked = History::from_lines(lines).acked_completions().len();
                let running = workers.iter().any(|worker| !worker.open_jobs().is_empty());
                (acked >= 4 && running).then_some(())
            },
        )
        .await;
        breaker.fail();
        tokio::time::sleep(OUTAGE).await;
        breaker.recover();

        for worker in &mut workers {
            worker.expect_success(Duration::from_secs(50)).await;
        }
        let finals = final_records(&server, &all).await;
        let refs: Vec<&WorkerProcess> = workers.iter().collect();
        let history = checked_history(&name, &refs, &finals);
        let felt = history
            .calls
            .iter()
            .filter(|call| !matches!(call.answer(), Some((status, _)) if status != 503))
            .count();
        assert!(
            felt > 0,
            "{name}: the outage was felt: some requests answered 503 or failed"
        );
        eprintln!(
            "{name}: {felt} requests answered 503 or failed during the outage and were retried; \
             all {} keys completed",
            all.len()
        );
    }
}

/// The checker is not vacuous: a correct history passes, and each kind of
/// §5 violation, planted in a copy of it, is reported.
async fn history_checker_catches_each_violation() {
    const S: u64 = 1_000_000_000;
    // 1.7e12 ms: an instant in 2023, as the store would write it.
    fn at(ms: i64) -> Value {
        json!(
            chrono::DateTime::from_timestamp_millis(1_700_000_000_000 + ms)
                .expect("a valid instant")
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        )
    }
    fn line(pid: u32, t: u64, fields: Value) -> Line {
        let mut value = fields;
        value["pid"] = json!(pid);
        value["t"] = json!(t);
        serde_json::from_value(value).expect("a line")
    }
    fn claim(pid: u32, id: u64, t: u64, token: u64, attempt: u64, granted_ms: i64) -> [Line; 2] {
        [
            line(
                pid,
                t,
                json!({"ev": "req", "id": id, "op": "claim", "key": "k", "sent": {"lease_ms": 1000}}),
            ),
            line(
                pid,
                t + 1_000,
                json!({"ev": "resp", "id": id, "status": 201, "body": {
                    "state": "acquired", "token": token, "attempt": attempt,
                    "lease_expires_at": at(granted_ms + 1000), "takeover": attempt > 1,
                }}),
            ),
        ]
    }
    fn complete(pid: u32, id: u64, t: u64, token: u64, status: u16) -> [Line; 2] {
        let result = json!({"pid": pid, "token": token, "key": "k"});
        let body = if status == 200 {
            json!({"state": "completed", "token": token, "result": result})
        } else {
            json!({"error": {"code": "lease_lost", "message": "lost"}})
        };
        [
            line(
                pid,
                t,
                json!({"ev": "req", "id": id, "op": "complete", "key": "k", "token": token,
                "sent": {"token": token, "result": result}}),
            ),
            line(
                pid,
                t + 1_000,
                json!({"ev": "resp", "id": id, "status": status, "body": body}),
            ),
        ]
    }
    fn job(pid: u32, t: u64, token: u64) -> Line {
        line(
            pid,
            t,
            json!({"ev": "job_start", "key": "k", "token": token}),
        )
    }
    fn final_of(token: u64, pid: u32) -> BTreeMap<String, Value> {
        let result = json!({"pid": pid, "token": token, "key": "k"});
        BTreeMap::from([(
            "k".to_owned(),
            json!({"state": "completed", "token": token, "result": result}),
        )])
    }
    // Worker 1 is granted token 5 at 0 ms and dies; worker 2 takes over
    // with token 6 at 1500 ms (after the lease ended at 1000 ms), runs the
    // job, completes; worker 1's late complete is refused.
    let good = || -> Vec<Line> {
        let mut lines = Vec::new();
        lines.extend(claim(1, 0, S, 5, 1, 0));
        lines.push(job(1, S + 2_000, 5));
        lines.extend(claim(2, 0, 3 * S, 6, 2, 1_500));
        lines.push(job(2, 3 * S + 2_000, 6));
        lines.extend(complete(2, 1, 4 * S, 6, 200));
        lines.extend(complete(1, 1, 5 * S, 5, 409));
        lines
    };
    let verdict = |lines: Vec<Line>, finals: BTreeMap<String, Value>| {
        history::check(&History::from_lines(lines), &finals)
    };
    let clean = verdict(good(), final_of(6, 2));
    assert!(clean.is_empty(), "a correct history passes: {clean:?}");

    // What is planted, the history and final records, and the words the
    // report must contain.
    type Planted = (
        &'static str,
        Vec<Line>,
        BTreeMap<String, Value>,
        &'static str,
    );
    let planted: Vec<Planted> = vec![
        (
            "a token granted twice",
            {
                let mut lines = good();
                lines.extend(claim(3, 0, 6 * S, 6, 3, 3_000));
                lines
            },
            final_of(6, 2),
            "granted twice",
        ),
        (
            "a takeover while the lease is live",
            {
                let mut lines = good();
                lines.splice(3..5, claim(2, 0, 3 * S, 6, 2, 500));
                lines
            },
            final_of(6, 2),
            "while token 5 was live",
        ),
        (
            "a stale complete accepted",
            {
                let mut lines = good();
                lines.truncate(lines.len() - 2);
                lines.extend(complete(1, 1, 5 * S, 5, 200));
                lines
            },
            final_of(6, 2),
            "yet got 200",
        ),
        (
            "an acknowledged result lost",
            good(),
            final_of(5, 1),
            "was lost",
        ),
        (
            "a key left unfinished",
            good(),
            BTreeMap::from([("k".to_owned(), json!({"state": "processing"}))]),
            "did not end completed",
        ),
        (
            "a job without a lease",
            {
                let mut lines = good();
                lines.push(job(3, 6 * S, 6));
                lines
            },
            final_of(6, 2),
            "had not been granted",
        ),
        (
            "a grant nobody can explain",
            {
                let mut lines = good();
                lines.splice(3..5, claim(2, 0, 3 * S, 6, 3, 1_500));
                lines
            },
            final_of(6, 2),
            "no client heard of",
        ),
        (
            "a 500",
            {
                let mut lines = good();
                lines.push(line(
                    3,
                    6 * S,
                    json!({"ev": "req", "id": 0, "op": "claim", "key": "k", "sent": {}}),
                ));
                lines.push(line(
                    3,
                    6 * S + 1,
                    json!({"ev": "resp", "id": 0, "status": 500, "body": {}}),
                ));
                lines
            },
            final_of(6, 2),
            "is a bug",
        ),
    ];
    for (what, lines, finals, expected) in planted {
        let found = verdict(lines, finals);
        assert!(
            found.iter().any(|violation| violation.contains(expected)),
            "the checker reports {what} (`{expected}`), got {found:?}"
        );
    }
}

/// The scenario runner: libtest's command line and output, enough for
/// `cargo test`.
mod harness {
    use super::*;

    type Scenario = fn() -> Pin<Box<dyn Future<Output = ()> + Send>>;

    macro_rules! on {
        ($backend:literal, $scenario:ident) => {
            (
                concat!($backend, "::", stringify!($scenario)),
                (|| {
                    Box::pin(async {
                        if let Some(backend) = Backend::named($backend) {
                            $scenario(backend).await;
                        }
                    })
                }) as Scenario,
            )
        };
    }

    /// Every scenario, by name; Postgres and Redis ones only when the
    /// server is built with that store.
    fn scenarios() -> Vec<(&'static str, Scenario)> {
        let mut all: Vec<(&'static str, Scenario)> = Vec::new();
        all.extend([
            (
                "history_checker_catches_each_violation",
                (|| Box::pin(history_checker_catches_each_violation())) as Scenario,
            ),
            on!("memory", sigkilled_workers_are_taken_over_after_one_lease),
            on!("memory", sigstopped_worker_is_fenced_after_takeover),
        ]);
        #[cfg(feature = "postgres")]
        all.extend([
            on!("postgres", sigkilled_workers_are_taken_over_after_one_lease),
            on!("postgres", sigstopped_worker_is_fenced_after_takeover),
            on!("postgres", sigkilled_server_loses_no_result),
            (
                "postgres::store_crash_mid_run",
                (|| {
                    Box::pin(outages::store_outage_mid_run(
                        "postgres",
                        outages::Outage::Crash,
                    ))
                }) as Scenario,
            ),
            (
                "postgres::store_frozen_mid_run",
                (|| {
                    Box::pin(outages::store_outage_mid_run(
                        "postgres",
                        outages::Outage::Freeze,
                    ))
                }) as Scenario,
            ),
        ]);
        #[cfg(feature = "redis")]
        all.extend([
            on!("redis", sigkilled_workers_are_taken_over_after_one_lease),
            on!("redis", sigstopped_worker_is_fenced_after_takeover),
            (
                "redis::store_crash_mid_run",
                (|| {
                    Box::pin(outages::store_outage_mid_run(
                        "redis",
                        outages::Outage::Crash,
                    ))
                }) as Scenario,
            ),
            (
                "redis::store_frozen_mid_run",
                (|| {
                    Box::pin(outages::store_outage_mid_run(
                        "redis",
                        outages::Outage::Freeze,
                    ))
                }) as Scenario,
            ),
        ]);
        all
    }

    /// What the command line asks for.
    #[derive(Default)]
    struct Args {
        list: bool,
        ignored_only: bool,
        exact: bool,
        filters: Vec<String>,
        skips: Vec<String>,
    }

    fn args() -> Args {
        let mut args = Args::default();
        let mut given = std::env::args().skip(1);
        while let Some(arg) = given.next() {
            match arg.as_str() {
                "--list" => args.list = true,
                "--ignored" => args.ignored_only = true,
                "--exact" => args.exact = true,
                "--skip" => args.skips.extend(given.next()),
                // libtest flags that take a value, which is not a filter.
                "--test-threads" | "--format" | "--color" | "--logfile" | "-Z"
                | "--shuffle-seed" => {
                    given.next();
                }
                flag if flag.starts_with('-') => {}
                filter => args.filters.push(filter.to_owned()),
            }
        }
        args
    }

    impl Args {
        fn selects(&self, name: &str) -> bool {
            let matches = |pattern: &String| {
                if self.exact {
                    name == pattern
                } else {
                    name.contains(pattern.as_str())
                }
            };
            !self.ignored_only
                && (self.filters.is_empty() || self.filters.iter().any(matches))
                && !self.skips.iter().any(|skip| name.contains(skip.as_str()))
        }
    }

    pub(super) fn main() -> ExitCode {
        let args = args();
        let selected: Vec<_> = scenarios()
            .into_iter()
            .filter(|(name, _)| args.selects(name))
            .collect();
        if args.list {
            for (name, _) in &selected {
                println!("{name}: test");
            }
            return ExitCode::SUCCESS;
        }
        println!("\nrunning {} tests", selected.len());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let started = Instant::now();
        let failed = runtime.block_on(async {
            let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(PARALLEL));
            let mut running = tokio::task::JoinSet::new();
            for (name, scenario) in selected.iter().copied() {
                let permits = std::sync::Arc::clone(&permits);
                running.spawn(async move {
                    let _permit = permits.acquire_owned().await.expect("the semaphore");
                    let began = Instant::now();
                    let outcome =
                        tokio::spawn(tokio::time::timeout(SCENARIO_BOUND, scenario())).await;
                    let verdict = match outcome {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(_)) => Err(format!("did not finish within {SCENARIO_BOUND:?}")),
                        Err(e) if e.is_panic() => Err("panicked (see above)".to_owned()),
                        Err(e) => Err(e.to_string()),
                    };
                    let took = began.elapsed();
                    match &verdict {
                        Ok(()) => println!("test {name} ... ok ({took:.1?})"),
                        Err(why) => println!("test {name} ... FAILED ({took:.1?}): {why}"),
                    }
                    (name, verdict)
                });
            }
            let mut failed = Vec::new();
            while let Some(joined) = running.join_next().await {
                let (name, verdict) = joined.expect("a scenario runner");
                if verdict.is_err() {
                    failed.push(name);
                }
            }
            failed
        });
        let passed = selected.len() - failed.len();
        if failed.is_empty() {
            println!(
                "\ntest result: ok. {passed} passed; 0 failed; finished in {:.2?}\n",
                started.elapsed()
            );
            ExitCode::SUCCESS
        } else {
            println!("\nfailures:\n    {}", failed.join("\n    "));
            println!(
                "\ntest result: FAILED. {passed} passed; {} failed; finished in {:.2?}\n",
                failed.len(),
                started.elapsed()
            );
            ExitCode::from(101)
        }
    }
}
