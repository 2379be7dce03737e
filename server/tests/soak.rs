//! A bounded soak of the real `onceflight` binary on each store: for
//! `ONCEFLIGHT_SOAK_SECS` (default 120 s) a mixed load over a few hundred
//! keys — claims that complete, fail (retryable or not), crash (abandon a
//! short lease, so others take over), release and delete, herds
//! on fresh keys, stale workers finishing late — runs beside rounds of more
//! than 1,000 long-polls held at once, some of whose clients walk away.
//! The invariants are checked as it goes: no 5xx, exactly one `acquired` in
//! a herd on a fresh key, no token granted twice, a completed result never
//! changes until the key is deleted, a lease holder is never fenced out
//! while its lease is live.
//!
//! Afterwards, once every client is gone: no long-poll is counted as held,
//! the runtime's alive tasks and the open file descriptors are back near
//! the baseline taken after warm-up (no leaked requests, client or store
//! connections), the resident memory is back near its start, and the store
//! itself sees no more of this server's connections than its pool and
//! listener (`pg_stat_activity`, Redis `CLIENT LIST`).
//!
//! The three stores soak at the same time, one test each, so the file takes
//! about `ONCEFLIGHT_SOAK_SECS` plus a minute. Postgres and Redis need
//! `DATABASE_URL` / `REDIS_URL` (each test skips loudly without, unless
//! `ONCEFLIGHT_REQUIRE_BACKENDS=1`) and work in a fresh schema or prefix.
//!
//! Open files: each soak holds more than 1,000 client sockets in this
//! process and as many in its server, so when the soft `RLIMIT_NOFILE` is
//! below [`FD_LIMIT`], this process raises it (up to the hard limit, with
//! `prlimit`, before any server is spawned, so the servers inherit it) and
//! says so.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::Poll;
use std::time::{Duration, Instant};

use common::{Launch, Reply, Server, call, client};

/// An HTTP client for the load. Its idle connections are dropped after 4 s,
/// before the server's keep-alive timer (its `header_timeout`, 10 s) closes
/// them: otherwise a request sent on a connection at the moment the server
/// closes it fails with "connection closed before message completed" — the
/// usual race of HTTP keep-alive, which a client avoids by giving up idle
/// connections first.
fn soak_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .pool_idle_timeout(Duration::from_secs(4))
        .build()
        .expect("an HTTP client")
}
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

/// Soak length per store when `ONCEFLIGHT_SOAK_SECS` is unset.
const DEFAULT_SOAK_SECS: u64 = 120;
/// Keys the mixed load cycles through.
const POOL_KEYS: u64 = 300;
/// Concurrent workers of the mixed load.
const WORKERS: u64 = 24;
/// Claims in a herd on a fresh key.
const HERD: usize = 12;
/// Long-polls sent per round, all on in-flight keys.
const LONG_POLLS: usize = 1_100;
/// Long-polls that must be held at once in every round.
const HELD_AT_ONCE: i64 = 1_000;
/// Of the long-polls of a round, how many walk away before an answer.
const ABANDONED: usize = 100;
/// In-flight keys the long-polls of a round wait on.
const PARKED_KEYS: usize = 40;
/// `wait_ms` of the rounds' long-polls: longer than a round needs, so that
/// each is answered by its key settling, not by the timeout.
const POLL_WAIT_MS: u64 = 25_000;
/// Lease of a worker that will crash: short, so takeovers happen.
const CRASH_LEASE_MS: u64 = 300;
/// Lease of a worker that will finish.
const WORK_LEASE_MS: u64 = 15_000;
/// Pool size of the Postgres server under soak.
const PG_POOL: u32 = 8;
/// The soft limit of open files the soaks need in this process and in
/// their servers.
const FD_LIMIT: u64 = 8_192;
/// Slack on the alive tasks afterwards: the store's own tasks may differ a
/// little from the baseline (a reconnect, a pooled connection's task).
const TASK_SLACK: i64 = 8;
/// Slack on the open files afterwards, besides the store's pool.
const FD_SLACK: u64 = 8;
/// Resident memory afterwards may exceed the baseline by this much. The
/// allocator (glibc: an arena per thread, freed pages kept for reuse) does
/// not hand back every page it used at the peak of 1,100 connections, so
/// "back near the start" needs room; a leak per operation or per request
/// (tens of thousands of each here) would pass it many times over.
const RSS_SLACK_KIB: u64 = 64 * 1024;
/// How soon a held long-poll must be answered once its key settles: the
/// stores' bounded fallback re-read (5 s) plus room for a loaded machine —
/// well under [`POLL_WAIT_MS`], so an answer that only came at the timeout
/// fails.
const PROMPT: Duration = Duration::from_secs(15);
/// How long the server may take to settle after the load stops.
const SETTLE: Duration = Duration::from_secs(POLL_WAIT_MS / 1000 + 20);

/// The memory store: results in the process itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_on_memory() {
    raise_fd_limit();
    let server = Launch::new()
        .args(&["--store", "memory://"])
        .ready_when("/readyz", Duration::from_secs(30))
        .start()
        .await;
    soak("memory", server, Probe::Memory).await;
}

/// Postgres, in a fresh schema, with a pool of [`PG_POOL`].
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_on_postgres() {
    let Some(database) = onceflight_core::testkit::backend_url("DATABASE_URL") else {
        return;
    };
    raise_fd_limit();
    let schema = onceflight_core::testkit::unique_name("t_soak");
    let pool = PG_POOL.to_string();
    let server = Launch::new()
        .args(&[
            "--store",
            &database,
            "--pg-schema",
            &schema,
            "--pg-pool-size",
            &pool,
        ])
        .ready_when("/readyz", Duration::from_secs(30))
        .start()
        .await;
    soak("postgres", server, Probe::Postgres { url: database }).await;
}

/// Redis, under a fresh key prefix.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_on_redis() {
    let Some(redis) = onceflight_core::testkit::backend_url("REDIS_URL") else {
        return;
    };
    raise_fd_limit();
    let prefix = format!("{}:", onceflight_core::testkit::unique_name("t_soak"));
    let server = Launch::new()
        .args(&["--store", &redis, "--redis-prefix", &prefix])
        .ready_when("/readyz", Duration::from_secs(30))
        .start()
        .await;
    soak("redis", server, Probe::Redis { url: redis }).await;
}

/// A long-poll on a key whose holder shortens its lease with a heartbeat
/// and then vanishes is answered once that shorter lease expires, not at
/// its own timeout: the memory store's waiters used to sleep until the lease
/// end they had seen (found by the soak's rounds, which then took their
/// full `wait_ms`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_wakes_when_a_shortened_lease_expires() {
    let server = Launch::new().args(&["--store", "memory://"]).start().await;
    let http = client();
    let claim = call(
        &http,
        Method::POST,
        &server.url("/v1/requests/soak%7Cshort/claim"),
        Some(json!({"kind": "soak", "lease_ms": 60000})),
        None,
    )
    .await;
    claim.expect(StatusCode::CREATED);
    let token = claim.token();
    let url = server.url("/v1/requests/soak%7Cshort?wait_ms=30000");
    let held = tokio::spawn(async move { call(&client(), Method::GET, &url, None, None).await });
    wait_for_gauge(&server.url(""), "onceflight_waits_in_progress", |n| n == 1)
        .await
        .expect("the long-poll is held");
    let shortened = Instant::now();
    call(
        &http,
        Method::POST,
        &server.url("/v1/requests/soak%7Cshort/heartbeat"),
        Some(json!({"token": token, "lease_ms": 200})),
        None,
    )
    .await
    .expect(StatusCode::OK);
    let reply = tokio::time::timeout(Duration::from_secs(10), held)
        .await
        .expect("the long-poll is answered within 10 s of the lease's 200 ms end, not at its 30 s timeout")
        .expect("the long-poll task");
    let body = reply.expect(StatusCode::OK);
    assert_eq!(body["state"], "processing", "{body}");
    assert_eq!(
        body["lease_expired"], true,
        "answered because the lease expired: {body}"
    );
    assert!(
        shortened.elapsed() >= Duration::from_millis(150),
        "not answered before the shortened lease's end: {:?}",
        shortened.elapsed()
    );
}

/// How to ask the store how many connections this server holds.
enum Probe {
    Memory,
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    Postgres {
        url: String,
    },
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    Redis {
        url: String,
    },
}

impl Probe {
    /// Most connections the server may hold to its store when idle: the
    /// pool and the listener.
    fn connection_bound(&self) -> usize {
        match self {
            Probe::Memory => 0,
            Probe::Postgres { .. } => PG_POOL as usize + 1,
            // The multiplexed connection and the pub/sub one, plus one being
            // replaced by a reconnect.
            Probe::Redis { .. } => 3,
        }
    }

    /// Connections the server may hold beyond the baseline's.
    fn fd_slack(&self) -> u64 {
        FD_SLACK + self.connection_bound() as u64
    }

    /// The store's view: how many of its clients are sockets of process
    /// `pid` (matched by the client's port).
    async fn store_side_connections(&self, pid: u32) -> Option<usize> {
        match self {
            Probe::Memory => None,
            #[cfg(feature = "postgres")]
            Probe::Postgres { url } => Some(postgres_connections(url, pid).await),
            #[cfg(feature = "redis")]
            Probe::Redis { url } => Some(redis_connections(url, pid).await),
            // A store whose feature is off never runs.
            #[allow(unreachable_patterns)]
            _ => {
                let _ = pid;
                None
            }
        }
    }
}

/// What a soak measures of its server at one instant.
#[derive(Debug, Clone, Copy)]
struct Figures {
    rss_kib: u64,
    peak_rss_kib: u64,
    open_fds: u64,
    /// `process_open_fds` of `/metrics`.
    exported_fds: i64,
    alive_tasks: i64,
    waits_in_progress: i64,
}

/// Counts of what the load did, for the summary and to prove each path ran.
#[derive(Debug, Default)]
struct Stats {
    claims: AtomicU64,
    acquired: AtomicU64,
    takeovers: AtomicU64,
    in_flight: AtomicU64,
    cache_hits: AtomicU64,
    failed_hits: AtomicU64,
    completes: AtomicU64,
    repeated_completes: AtomicU64,
    fails_retryable: AtomicU64,
    fails_final: AtomicU64,
    releases: AtomicU64,
    crashes: AtomicU64,
    stale_fenced: AtomicU64,
    stale_completed: AtomicU64,
    deletes: AtomicU64,
    herds: AtomicU64,
    short_polls: AtomicU64,
    rounds: AtomicU64,
    polls_answered: AtomicU64,
    polls_abandoned: AtomicU64,
    most_held: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

fn read(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// What the load has seen, to check the invariants against.
#[derive(Debug, Default)]
struct Book {
    inner: Mutex<BookInner>,
}

#[derive(Debug, Default)]
struct BookInner {
    /// Per key: bumped when a delete starts and when it ends.
    epochs: HashMap<String, u64>,
    /// Per key: deletes in progress.
    deleting: HashMap<String, u32>,
    /// Per key: the token whose result was seen, in which epoch, and when
    /// that observation ended.
    completed: HashMap<String, (u64, u64, Instant)>,
    /// Every (key, token) a claim acquired.
    granted: HashSet<(String, u64)>,
}

/// The moment a request started: the key's epoch, if no delete of it was
/// in progress, and the instant.
#[derive(Debug, Clone, Copy)]
struct Seen {
    epoch: Option<u64>,
    at: Instant,
}

impl Seen {
    /// An observation not checked against other ones.
    fn unchecked() -> Self {
        Self {
            epoch: None,
            at: Instant::now(),
        }
    }
}

impl Book {
    fn lock(&self) -> MutexGuard<'_, BookInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Call before sending a request whose answer is checked against the
    /// book.
    fn start(&self, key: &str) -> Seen {
        let inner = self.lock();
        let epoch = (inner.deleting.get(key).copied().unwrap_or(0) == 0)
            .then(|| inner.epochs.get(key).copied().unwrap_or(0));
        Seen {
            epoch,
            at: Instant::now(),
        }
    }

    /// Whether no delete of `key` started, ran or ended since `seen`.
    fn undisturbed(inner: &BookInner, key: &str, seen: Seen) -> Option<u64> {
        let epoch = seen.epoch?;
        let now = inner.epochs.get(key).copied().unwrap_or(0);
        (now == epoch && inner.deleting.get(key).copied().unwrap_or(0) == 0).then_some(epoch)
    }

    /// A claim acquired `token` for `key`: the token is new, and no result
    /// seen for the key before the claim was sent was lost without a delete.
    fn acquired(&self, key: &str, token: u64, seen: Seen, what: &str) {
        let mut inner = self.lock();
        assert!(
            inner.granted.insert((key.to_owned(), token)),
            "{what}: token {token} for {key} was granted twice"
        );
        if let Some(epoch) = Self::undisturbed(&inner, key, seen)
            && let Some((seen_epoch, seen_token, seen_at)) = inner.completed.get(key)
        {
            assert!(
                *seen_epoch != epoch || *seen_at > seen.at,
                "{what}: {key} was completed with token {seen_token} and never deleted, \
                 yet a claim acquired it again (token {token})"
            );
        }
    }

    /// `record` (a record or claim body) shows `key` completed: its result
    /// is the one its token's holder stored, and the same one every earlier
    /// reader saw since the key was last deleted.
    fn completed(&self, key: &str, record: &Value, seen: Seen, what: &str) {
        let token = record["token"]
            .as_u64()
            .unwrap_or_else(|| panic!("{what}: a completed body without a token: {record}"));
        assert_eq!(
            record["result"],
            result_for(key, token),
            "{what}: the result of {key} is the one the holder of token {token} stored first"
        );
        let mut inner = self.lock();
        if let Some(epoch) = Self::undisturbed(&inner, key, seen) {
            match inner.completed.get(key) {
                Some((seen_epoch, seen_token, _)) if *seen_epoch == epoch => assert_eq!(
                    *seen_token, token,
                    "{what}: the completed result of {key} changed without a delete"
                ),
                _ => {
                    inner
                        .completed
                        .insert(key.to_owned(), (epoch, token, Instant::now()));
                }
            }
        }
    }

    fn delete_started(&self, key: &str) {
        let mut inner = self.lock();
        *inner.epochs.entry(key.to_owned()).or_default() += 1;
        *inner.deleting.entry(key.to_owned()).or_default() += 1;
    }

    fn delete_ended(&self, key: &str) {
        let mut inner = self.lock();
        *inner.epochs.entry(key.to_owned()).or_default() += 1;
        if let Some(n) = inner.deleting.get_mut(key) {
            *n = n.saturating_sub(1);
        }
    }
}

/// The result the holder of `token` stores for `key`: derived from both, so
/// any reader can tell whose it is; its size varies so that the store's
/// memory sees records of different sizes.
fn result_for(key: &str, token: u64) -> Value {
    let pad = "x".repeat(usize::try_from(token % 1024).unwrap_or(0));
    json!({"key": key, "token": token, "pad": pad})
}

/// A small deterministic generator (xorshift64*), one per task.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

/// A worker that walked away from a lease, and when.
#[derive(Debug)]
struct Stale {
    key: String,
    token: u64,
    since: Instant,
}

/// Everything the load's tasks share.
struct Soak {
    name: &'static str,
    base: String,
    http: reqwest::Client,
    book: Book,
    stats: Stats,
    stale: Mutex<Vec<Stale>>,
    deadline: Instant,
}

impl Soak {
    fn url(&self, key: &str, rest: &str) -> String {
        format!(
            "{}/v1/requests/{}{rest}",
            self.base,
            key.replace('|', "%7C")
        )
    }

    async fn post(&self, key: &str, op: &str, body: Value) -> Reply {
        call(
            &self.http,
            Method::POST,
            &self.url(key, &format!("/{op}")),
            Some(body),
            None,
        )
        .await
    }

    async fn claim(&self, key: &str, owner: &str, lease_ms: u64) -> Reply {
        bump(&self.stats.claims);
        let body = json!({
            "kind": "soak",
            "owner": owner,
            "lease_ms": lease_ms,
            "max_attempts": 3,
            "retry_backoff_ms": 50,
        });
        self.post(key, "claim", body).await
    }

    /// Deletes `key`, which may be gone already (another worker).
    async fn delete(&self, key: &str) -> Reply {
        self.book.delete_started(key);
        let reply = call(&self.http, Method::DELETE, &self.url(key, ""), None, None).await;
        self.book.delete_ended(key);
        assert!(
            matches!(reply.status, StatusCode::NO_CONTENT | StatusCode::NOT_FOUND),
            "{}: 204 or 404, got {} {}",
            reply.what,
            reply.status,
            reply.json
        );
        bump(&self.stats.deletes);
        reply
    }

    /// Completes `key` with `token`'s result, sometimes twice (a client
    /// retrying after a lost response), and checks the record.
    async fn complete(&self, key: &str, token: u64, rng: &mut Rng, claimed: Claimed) {
        let seen = self.book.start(key);
        let reply = self
            .post(
                key,
                "complete",
                json!({"token": token, "result": result_for(key, token)}),
            )
            .await;
        if self.fenced(&reply, key, claimed) {
            return;
        }
        let body = reply.expect(StatusCode::OK);
        assert_eq!(body["state"], "completed", "{}: {body}", reply.what);
        assert_eq!(body["token"], token, "{}: {body}", reply.what);
        bump(&self.stats.completes);
        self.book.completed(key, body, seen, &reply.what);
        if rng.below(10) == 0 {
            // The same token again, with another result: success, and the
            // first result stands.
            let seen = self.book.start(key);
            let again = self
                .post(
                    key,
                    "complete",
                    json!({"token": token, "result": {"another": true}}),
                )
                .await;
            bump(&self.stats.repeated_completes);
            if again.status == StatusCode::OK {
                self.book.completed(key, &again.json, seen, &again.what);
            } else {
                // Only a delete in between can explain a refusal.
                again.expect_error(StatusCode::CONFLICT, "lease_lost");
                assert!(
                    claimed.seen.epoch.is_none()
                        || self.book.start(key).epoch != claimed.seen.epoch,
                    "{}: a repeated complete with the completing token is refused only after a delete",
                    again.what
                );
            }
        }
    }

    /// Whether `reply` is a `lease_lost` the holder had to expect: its lease
    /// ran out (so another may have taken over) or the key was deleted.
    /// Any other refusal of a live lease's holder is a bug.
    fn fenced(&self, reply: &Reply, key: &str, claimed: Claimed) -> bool {
        if reply.status != StatusCode::CONFLICT {
            return false;
        }
        reply.expect_error(StatusCode::CONFLICT, "lease_lost");
        let expired = claimed.at.elapsed() >= Duration::from_millis(claimed.lease_ms);
        let deleted = {
            let inner = self.book.lock();
            Book::undisturbed(&inner, key, claimed.seen).is_none()
        };
        assert!(
            expired || deleted,
            "{}: the holder of a live lease ({} ms, claimed {:?} ago) was fenced out of {key} with no delete",
            reply.what,
            claimed.lease_ms,
            claimed.at.elapsed()
        );
        true
    }
}

/// When and how a lease was claimed.
#[derive(Debug, Clone, Copy)]
struct Claimed {
    at: Instant,
    lease_ms: u64,
    seen: Seen,
}

/// Runs the soak against `server` and checks what it left behind.
async fn soak(name: &'static str, server: Server, probe: Probe) {
    let secs = std::env::var("ONCEFLIGHT_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SOAK_SECS);
    let pid = server.pid();

    warm_up(&server).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = figures(&server).await;
    assert_eq!(
        before.waits_in_progress, 0,
        "{name}: no long-poll is held before the soak"
    );

    let started = Instant::now();
    let soak = Arc::new(Soak {
        name,
        base: server.url(""),
        http: soak_client(),
        book: Book::default(),
        stats: Stats::default(),
        stale: Mutex::new(Vec::new()),
        deadline: started + Duration::from_secs(secs),
    });
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        let soak = Arc::clone(&soak);
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng::new(w + 1);
            let mut n = 0;
            while Instant::now() < soak.deadline {
                episode(&soak, w, n, &mut rng).await;
                n += 1;
            }
        }));
    }
    let rounds = {
        let soak = Arc::clone(&soak);
        let server_url = server.url("");
        tokio::spawn(async move {
            let mut round = 0;
            // A round takes a few seconds; at least one runs however short
            // the soak.
            loop {
                long_poll_round(&soak, &server_url, round).await;
                round += 1;
                if Instant::now() >= soak.deadline {
                    break;
                }
            }
        })
    };
    for task in tasks {
        task.await.expect("a load worker panicked");
    }
    rounds.await.expect("the long-poll rounds panicked");
    let load_secs = started.elapsed().as_secs_f64();

    // Forget every key of the soak, so the memory they held can go.
    let soak = Arc::into_inner(soak).expect("every task is done");
    let stats = soak.stats;
    for i in 0..POOL_KEYS {
        let key = format!("soak|k{i}");
        let reply = call(
            &soak.http,
            Method::DELETE,
            &format!("{}/v1/requests/{}", soak.base, key.replace('|', "%7C")),
            None,
            None,
        )
        .await;
        assert!(
            matches!(reply.status, StatusCode::NO_CONTENT | StatusCode::NOT_FOUND),
            "{}: {} {}",
            reply.what,
            reply.status,
            reply.json
        );
    }
    // Every client connection closes with its client.
    drop(soak.http);

    let after = settle(name, &server, &before, probe.fd_slack()).await;
    let connections = probe.store_side_connections(pid).await;

    let summary = format!(
        "soak on {name}: {load_secs:.0} s, {} claims ({} acquired, {} takeovers, {} in flight, \
         {} cache hits, {} failed), {} completes (+{} repeated), {} retryable and {} final \
         failures, {} releases, {} crashes ({} stale completes fenced, {} let through), \
         {} deletes, {} herds of {HERD}, {} short long-polls; {} rounds of {LONG_POLLS} \
         long-polls: at most {} held at once, {} answered, {} abandoned by their clients. \
         Server before → after: RSS {} → {} KiB (peak {} KiB), open fds {} → {}, alive tasks \
         {} → {}, held long-polls {} → {}; store-side connections: {}",
        read(&stats.claims),
        read(&stats.acquired),
        read(&stats.takeovers),
        read(&stats.in_flight),
        read(&stats.cache_hits),
        read(&stats.failed_hits),
        read(&stats.completes),
        read(&stats.repeated_completes),
        read(&stats.fails_retryable),
        read(&stats.fails_final),
        read(&stats.releases),
        read(&stats.crashes),
        read(&stats.stale_fenced),
        read(&stats.stale_completed),
        read(&stats.deletes),
        read(&stats.herds),
        read(&stats.short_polls),
        read(&stats.rounds),
        read(&stats.most_held),
        read(&stats.polls_answered),
        read(&stats.polls_abandoned),
        before.rss_kib,
        after.rss_kib,
        after.peak_rss_kib,
        before.open_fds,
        after.open_fds,
        before.alive_tasks,
        after.alive_tasks,
        before.waits_in_progress,
        after.waits_in_progress,
        connections.map_or_else(|| "n/a".to_owned(), |n| n.to_string()),
    );
    // Straight to the stderr handle: the harness hides captured output of
    // passing tests, and CI's log should show these figures.
    let _ = writeln!(std::io::stderr(), "{summary}");

    // Every path of the protocol ran.
    for (what, count) in [
        ("acquired claims", &stats.acquired),
        ("takeovers", &stats.takeovers),
        ("in-flight answers", &stats.in_flight),
        ("cache hits", &stats.cache_hits),
        ("completes", &stats.completes),
        ("retryable failures", &stats.fails_retryable),
        ("final failures", &stats.fails_final),
        ("releases", &stats.releases),
        ("crashes", &stats.crashes),
        ("deletes", &stats.deletes),
        ("herds", &stats.herds),
        ("long-poll rounds", &stats.rounds),
        ("abandoned long-polls", &stats.polls_abandoned),
    ] {
        assert!(
            read(count) > 0,
            "{name}: the soak ran some {what}: {summary}"
        );
    }
    assert!(
        read(&stats.most_held) >= HELD_AT_ONCE as u64,
        "{name}: at least {HELD_AT_ONCE} long-polls were held at once: {summary}"
    );

    // The exported process gauge agrees with /proc once nothing moves (the
    // scrape's own connection and the directory being read may differ).
    // Connections the load left behind may still be closing between the
    // scrape and the read of /proc, so the two are compared again for a
    // while before they must agree.
    let mut now = after;
    for _ in 0..20 {
        if now.exported_fds.abs_diff(now.open_fds as i64) <= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        now = figures(&server).await;
    }
    assert!(
        now.exported_fds.abs_diff(now.open_fds as i64) <= 4,
        "{name}: process_open_fds ({}) agrees with /proc/<pid>/fd ({})",
        now.exported_fds,
        now.open_fds
    );

    // Nothing leaked.
    assert_eq!(
        after.waits_in_progress, 0,
        "{name}: no long-poll is still counted as held once every client is gone: {summary}"
    );
    assert!(
        after.alive_tasks <= before.alive_tasks + TASK_SLACK,
        "{name}: the runtime's alive tasks are back near the baseline (+{TASK_SLACK}): {summary}"
    );
    assert!(
        after.open_fds <= before.open_fds + probe.fd_slack(),
        "{name}: open file descriptors are back near the baseline (+{}: the store's pool may \
         keep idle connections): {summary}",
        probe.fd_slack()
    );
    assert!(
        after.rss_kib <= before.rss_kib + RSS_SLACK_KIB,
        "{name}: resident memory is back near its start (+{RSS_SLACK_KIB} KiB): {summary}"
    );
    if let Some(connections) = connections {
        assert!(
            (1..=probe.connection_bound()).contains(&connections),
            "{name}: the store sees between 1 and {} connections of this server (pool and \
             listener): {summary}",
            probe.connection_bound()
        );
    }

    // The server is still healthy, and stops cleanly.
    let mut server = server;
    call(&client(), Method::GET, &server.url("/readyz"), None, None)
        .await
        .expect(StatusCode::OK);
    server.terminate().await;
}

/// A little of everything, so that lazily built state (pools, buffers,
/// worker threads) exists before the baseline.
async fn warm_up(server: &Server) {
    let http = soak_client();
    for i in 0..50 {
        let key = format!("warm%7C{i}");
        let claim = call(
            &http,
            Method::POST,
            &server.url(&format!("/v1/requests/{key}/claim")),
            Some(json!({"kind": "soak", "lease_ms": 30000})),
            None,
        )
        .await;
        let token = claim.token();
        let polls: Vec<_> = (0..4)
            .map(|_| {
                let (http, url) = (
                    http.clone(),
                    server.url(&format!("/v1/requests/{key}?wait_ms=10000")),
                );
                tokio::spawn(async move { call(&http, Method::GET, &url, None, None).await })
            })
            .collect();
        call(
            &http,
            Method::POST,
            &server.url(&format!("/v1/requests/{key}/complete")),
            Some(json!({"token": token, "result": {"warm": i}})),
            None,
        )
        .await
        .expect(StatusCode::OK);
        for poll in polls {
            poll.await.expect("a warm-up long-poll");
        }
        call(
            &http,
            Method::DELETE,
            &server.url(&format!("/v1/requests/{key}")),
            None,
            None,
        )
        .await
        .expect(StatusCode::NO_CONTENT);
    }
}

/// One step of the mixed load by worker `w`.
async fn episode(soak: &Soak, w: u64, n: u64, rng: &mut Rng) {
    let roll = rng.below(100);
    if roll < 4 {
        return herd(soak, w, n).await;
    }
    if roll < 10 && finish_stale(soak).await {
        return;
    }
    let key = format!("soak|k{}", rng.below(POOL_KEYS));
    let owner = format!("w{w}");
    // Decided before the claim: a crashing worker takes a short lease.
    let crash = rng.below(100) < 15;
    let lease_ms = if crash { CRASH_LEASE_MS } else { WORK_LEASE_MS };
    let seen = soak.book.start(&key);
    let at = Instant::now();
    let reply = soak.claim(&key, &owner, lease_ms).await;
    let claimed = Claimed { at, lease_ms, seen };
    match reply.status {
        StatusCode::CREATED => {
            let body = reply.expect(StatusCode::CREATED);
            assert_eq!(body["state"], "acquired", "{}: {body}", reply.what);
            let token = reply.token();
            soak.book.acquired(&key, token, seen, &reply.what);
            bump(&soak.stats.acquired);
            if body["takeover"] == true {
                bump(&soak.stats.takeovers);
            }
            if crash {
                bump(&soak.stats.crashes);
                soak.stale
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(Stale {
                        key,
                        token,
                        since: Instant::now(),
                    });
                return;
            }
            match rng.below(100) {
                0..65 => soak.complete(&key, token, rng, claimed).await,
                65..78 => fail(soak, &key, token, true, claimed).await,
                78..85 => fail(soak, &key, token, false, claimed).await,
                _ => {
                    let reply = soak.post(&key, "release", json!({"token": token})).await;
                    if !soak.fenced(&reply, &key, claimed) {
                        let body = reply.expect(StatusCode::OK);
                        assert_eq!(body["state"], "processing", "{}: {body}", reply.what);
                        assert_eq!(body["lease_expired"], true, "{}: {body}", reply.what);
                        bump(&soak.stats.releases);
                    }
                }
            }
        }
        StatusCode::ACCEPTED => {
            let body = reply.expect(StatusCode::ACCEPTED);
            assert_eq!(body["state"], "in_flight", "{}: {body}", reply.what);
            bump(&soak.stats.in_flight);
            if rng.below(3) == 0 {
                let wait = 200 + rng.below(1300);
                let seen = soak.book.start(&key);
                let url = soak.url(&key, &format!("?wait_ms={wait}"));
                let poll = call(&soak.http, Method::GET, &url, None, None).await;
                bump(&soak.stats.short_polls);
                match poll.status {
                    StatusCode::OK if poll.json["state"] == "completed" => {
                        soak.book.completed(&key, &poll.json, seen, &poll.what);
                    }
                    StatusCode::OK => {}
                    _ => poll.expect_error(StatusCode::NOT_FOUND, "not_found"),
                }
            }
        }
        StatusCode::OK if reply.json["state"] == "completed" => {
            bump(&soak.stats.cache_hits);
            soak.book.completed(&key, &reply.json, seen, &reply.what);
            if rng.below(100) < 15 {
                soak.delete(&key).await;
            }
        }
        StatusCode::OK => {
            let body = reply.expect(StatusCode::OK);
            assert_eq!(body["state"], "failed", "{}: {body}", reply.what);
            bump(&soak.stats.failed_hits);
            if body["retry_after_ms"].is_null() && rng.below(2) == 0 {
                soak.delete(&key).await;
            }
        }
        other => panic!("{}: unexpected {other} {}", reply.what, reply.json),
    }
}

/// Fails `key`'s lease and checks the record.
async fn fail(soak: &Soak, key: &str, token: u64, retryable: bool, claimed: Claimed) {
    let reply = soak
        .post(
            key,
            "fail",
            json!({"token": token, "message": "soak failure", "retryable": retryable}),
        )
        .await;
    if soak.fenced(&reply, key, claimed) {
        return;
    }
    let body = reply.expect(StatusCode::OK);
    assert_eq!(body["state"], "failed", "{}: {body}", reply.what);
    assert_eq!(
        body["error"]["retryable"], retryable,
        "{}: {body}",
        reply.what
    );
    bump(if retryable {
        &soak.stats.fails_retryable
    } else {
        &soak.stats.fails_final
    });
}

/// A worker that crashed a while ago comes back and completes with its old
/// token: refused if anyone took over or deleted the key since; accepted
/// (its token is still current) otherwise. Returns whether there was one.
async fn finish_stale(soak: &Soak) -> bool {
    let stale = {
        let mut stale = soak.stale.lock().unwrap_or_else(PoisonError::into_inner);
        let ready = stale
            .iter()
            .position(|s| s.since.elapsed() > Duration::from_millis(2 * CRASH_LEASE_MS));
        ready.map(|i| stale.swap_remove(i))
    };
    let Some(Stale { key, token, .. }) = stale else {
        return false;
    };
    let seen = soak.book.start(&key);
    let reply = soak
        .post(
            &key,
            "complete",
            json!({"token": token, "result": result_for(&key, token)}),
        )
        .await;
    if reply.status == StatusCode::CONFLICT {
        reply.expect_error(StatusCode::CONFLICT, "lease_lost");
        bump(&soak.stats.stale_fenced);
    } else {
        let body = reply.expect(StatusCode::OK);
        assert_eq!(
            body["token"], token,
            "{}: a stale worker's complete succeeds only while its token is current: {body}",
            reply.what
        );
        soak.book.completed(&key, body, seen, &reply.what);
        bump(&soak.stats.stale_completed);
    }
    true
}

/// [`HERD`] concurrent claims on a fresh key: exactly one acquires, the
/// others see its lease in flight. The winner completes; the key goes.
async fn herd(soak: &Soak, w: u64, n: u64) {
    let key = format!("soak|h{w}-{n}");
    let seen = soak.book.start(&key);
    let claims = (0..HERD).map(|i| soak.claim(&key, if i == 0 { "h0" } else { "hn" }, 60_000));
    let replies = join_all(claims).await;
    let winners: Vec<&Reply> = replies
        .iter()
        .filter(|r| r.status == StatusCode::CREATED)
        .collect();
    assert_eq!(
        winners.len(),
        1,
        "{}: exactly one of {HERD} concurrent claims on a fresh key acquires: {:?}",
        soak.name,
        replies
            .iter()
            .map(|r| (r.status, &r.json))
            .collect::<Vec<_>>()
    );
    let winner = winners[0];
    assert_eq!(winner.json["takeover"], false, "{:?}", winner);
    assert_eq!(winner.json["attempt"], 1, "{:?}", winner);
    let token = winner.token();
    soak.book.acquired(&key, token, seen, &winner.what);
    bump(&soak.stats.acquired);
    for reply in &replies {
        if reply.status != StatusCode::CREATED {
            let body = reply.expect(StatusCode::ACCEPTED);
            assert_eq!(body["state"], "in_flight", "{}: {body}", reply.what);
            assert_eq!(body["token"], token, "{}: {body}", reply.what);
            bump(&soak.stats.in_flight);
        }
    }
    let claimed = Claimed {
        at: Instant::now(),
        lease_ms: 60_000,
        seen,
    };
    let mut rng = Rng::new(w ^ n);
    soak.complete(&key, token, &mut rng, claimed).await;
    soak.delete(&key).await;
    bump(&soak.stats.herds);
}

/// Awaits every future of `futures` concurrently on this task (they borrow
/// the soak, so they are not spawned).
async fn join_all<F: Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut futures: Vec<_> = futures.map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(value) => *output = Some(value),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outputs
        .into_iter()
        .map(|output| output.expect("every future is ready"))
        .collect()
}

/// What becomes of a parked key once its long-polls are held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Complete,
    FailRetryable,
    FailFinal,
    Release,
    /// The holder shortens its lease to 200 ms with a heartbeat, then
    /// vanishes.
    Crash,
}

impl Fate {
    fn of(i: usize) -> Self {
        match i % 6 {
            0 | 1 => Fate::Complete,
            2 => Fate::FailRetryable,
            3 => Fate::FailFinal,
            4 => Fate::Release,
            _ => Fate::Crash,
        }
    }
}

/// One round of long-polls: [`PARKED_KEYS`] keys are claimed, then
/// [`LONG_POLLS`] `GET ?wait_ms` are sent on them and at least
/// [`HELD_AT_ONCE`] must be held at once (the server's own gauge says so);
/// [`ABANDONED`] clients walk away (the gauge must drop by as much), then
/// every key settles one way or another and every remaining long-poll is
/// answered with the record as the settling left it. The keys are then
/// claimed once more (takeover, retry, re-acquire after release, final
/// failure, cache hit) and deleted.
async fn long_poll_round(soak: &Arc<Soak>, base: &str, round: u64) {
    let name = soak.name;
    let keys: Vec<String> = (0..PARKED_KEYS)
        .map(|i| format!("soak|p{round}-{i}"))
        .collect();
    let mut tokens = Vec::new();
    for key in &keys {
        let seen = soak.book.start(key);
        let reply = soak.claim(key, "parker", 60_000).await;
        reply.expect(StatusCode::CREATED);
        soak.book.acquired(key, reply.token(), seen, &reply.what);
        bump(&soak.stats.acquired);
        tokens.push(reply.token());
    }

    // The long-polls, on a client of their own: each holds a connection.
    let polls_http = soak_client();
    let polls: Vec<JoinHandle<(usize, Reply, Instant, Duration)>> = (0..LONG_POLLS)
        .map(|p| {
            let i = p % PARKED_KEYS;
            let url = soak.url(&keys[i], &format!("?wait_ms={POLL_WAIT_MS}"));
            let http = polls_http.clone();
            tokio::spawn(async move {
                let sent = Instant::now();
                let reply = call(&http, Method::GET, &url, None, None).await;
                (i, reply, Instant::now(), sent.elapsed())
            })
        })
        .collect();
    let held = wait_for_gauge(base, "onceflight_waits_in_progress", |n| n >= HELD_AT_ONCE)
        .await
        .unwrap_or_else(|last| {
            panic!("{name}: round {round}: {HELD_AT_ONCE} long-polls are held at once within {SETTLE:?} (last seen {last})")
        });
    soak.stats
        .most_held
        .fetch_max(u64::try_from(held).unwrap_or(0), Ordering::Relaxed);

    // Clients that go away: their requests must stop being counted.
    let mut abandoned = polls;
    let polls = abandoned.split_off(ABANDONED);
    for poll in &abandoned {
        poll.abort();
    }
    for poll in abandoned {
        // Aborted: its request future, and so its connection, is dropped.
        let _ = poll.await;
    }
    let ceiling = i64::try_from(LONG_POLLS - ABANDONED).unwrap_or(i64::MAX);
    wait_for_gauge(base, "onceflight_waits_in_progress", |n| n <= ceiling)
        .await
        .unwrap_or_else(|last| {
            panic!("{name}: round {round}: the {ABANDONED} long-polls whose clients left are uncounted (held: {last}, at most {ceiling} expected)")
        });
    soak.stats
        .polls_abandoned
        .fetch_add(ABANDONED as u64, Ordering::Relaxed);

    // Settle every key.
    let mut settled_at = Vec::new();
    for (i, (key, &token)) in keys.iter().zip(&tokens).enumerate() {
        let claimed = Claimed {
            at: Instant::now(),
            lease_ms: 60_000,
            seen: soak.book.start(key),
        };
        match Fate::of(i) {
            Fate::Complete => {
                let mut rng = Rng::new(round * 1000 + i as u64);
                soak.complete(key, token, &mut rng, claimed).await;
            }
            Fate::FailRetryable => fail(soak, key, token, true, claimed).await,
            Fate::FailFinal => fail(soak, key, token, false, claimed).await,
            Fate::Release => {
                soak.post(key, "release", json!({"token": token}))
                    .await
                    .expect(StatusCode::OK);
                bump(&soak.stats.releases);
            }
            Fate::Crash => {
                soak.post(key, "heartbeat", json!({"token": token, "lease_ms": 200}))
                    .await
                    .expect(StatusCode::OK);
                bump(&soak.stats.crashes);
            }
        }
        settled_at.push(Instant::now());
    }
    let crashed_at = Instant::now();

    // Every remaining long-poll is answered with its key as it settled.
    for poll in polls {
        let answered = tokio::time::timeout(SETTLE, poll)
            .await
            .unwrap_or_else(|_| panic!("{name}: round {round}: a held long-poll is answered within {SETTLE:?} of its key settling"))
            .expect("a long-poll task");
        let (i, reply, at, waited) = answered;
        let body = reply.expect(StatusCode::OK);
        let state = body["state"].as_str().unwrap_or_default();
        let ran_out = waited >= Duration::from_millis(POLL_WAIT_MS);
        if state == "processing" && (at < settled_at[i] || ran_out) {
            // On a machine too loaded to settle this key within the poll's
            // wait, the poll ran out first (its answer may even arrive just
            // after the settling call returned, having read the record just
            // before): it must then answer with the key as it was, still
            // held under the same token.
            assert_eq!(body["token"], tokens[i], "{}: {body}", reply.what);
            bump(&soak.stats.polls_answered);
            continue;
        }
        let late = at.saturating_duration_since(settled_at[i]);
        assert!(
            late < PROMPT,
            "{}: a held long-poll is answered within {PROMPT:?} of its key settling ({:?}), \
             not at its {POLL_WAIT_MS} ms timeout: {body}",
            reply.what,
            Fate::of(i)
        );
        match Fate::of(i) {
            Fate::Complete => {
                assert_eq!(state, "completed", "{}: {body}", reply.what);
                soak.book
                    .completed(&keys[i], body, Seen::unchecked(), &reply.what);
            }
            Fate::FailRetryable | Fate::FailFinal => {
                assert_eq!(state, "failed", "{}: {body}", reply.what);
            }
            Fate::Release | Fate::Crash => {
                assert_eq!(state, "processing", "{}: {body}", reply.what);
                assert_eq!(body["token"], tokens[i], "{}: {body}", reply.what);
            }
        }
        bump(&soak.stats.polls_answered);
    }
    drop(polls_http);

    // Claim each key once more: the protocol's next step for each fate.
    let since = crashed_at.elapsed();
    if since < Duration::from_millis(300) {
        tokio::time::sleep(Duration::from_millis(300) - since).await;
    }
    for (i, key) in keys.iter().enumerate() {
        let seen = soak.book.start(key);
        let reply = soak.claim(key, "next", 60_000).await;
        let fate = Fate::of(i);
        match fate {
            Fate::Complete => {
                assert_eq!(
                    reply.expect(StatusCode::OK)["state"],
                    "completed",
                    "{:?}",
                    reply
                );
                soak.book.completed(key, &reply.json, seen, &reply.what);
                bump(&soak.stats.cache_hits);
            }
            Fate::FailFinal => {
                let body = reply.expect(StatusCode::OK);
                assert_eq!(body["state"], "failed", "{}: {body}", reply.what);
                assert!(
                    body["retry_after_ms"].is_null(),
                    "{}: a final failure allows no retry: {body}",
                    reply.what
                );
                bump(&soak.stats.failed_hits);
            }
            Fate::FailRetryable | Fate::Release | Fate::Crash => {
                let body = reply.expect(StatusCode::CREATED);
                assert!(
                    reply.token() > tokens[i],
                    "{}: a new lease has a greater token than {}: {body}",
                    reply.what,
                    tokens[i]
                );
                assert_eq!(
                    body["takeover"],
                    fate == Fate::Crash,
                    "{}: only the crashed holder's lease is taken over: {body}",
                    reply.what
                );
                let attempt = if fate == Fate::Release { 1 } else { 2 };
                assert_eq!(body["attempt"], attempt, "{}: {body}", reply.what);
                soak.book.acquired(key, reply.token(), seen, &reply.what);
                bump(&soak.stats.acquired);
                if fate == Fate::Crash {
                    bump(&soak.stats.takeovers);
                }
            }
        }
    }
    for key in &keys {
        soak.delete(key).await.expect(StatusCode::NO_CONTENT);
    }
    bump(&soak.stats.rounds);
}

/// The value of the gauge `name` in `text` (Prometheus exposition).
fn gauge(text: &str, name: &str) -> Option<i64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse::<f64>().ok())
        .map(|value| value as i64)
}

/// `/metrics` of the server at `base`, on a connection of its own that
/// closes after the answer.
async fn scrape(base: &str) -> String {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(20))
        .build()
        .expect("an HTTP client");
    let reply = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {base}/metrics: {e}"));
    assert_eq!(reply.status(), StatusCode::OK, "GET {base}/metrics");
    reply.text().await.expect("the metrics text")
}

/// Scrapes until the gauge `name` satisfies `done` (its value) or
/// [`SETTLE`] passes (the last value seen).
async fn wait_for_gauge(base: &str, name: &str, done: impl Fn(i64) -> bool) -> Result<i64, i64> {
    let deadline = Instant::now() + SETTLE;
    loop {
        let text = scrape(base).await;
        let value = gauge(&text, name).unwrap_or_else(|| panic!("/metrics has {name}:\n{text}"));
        if done(value) {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            return Err(value);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The server's figures now: memory and files from `/proc/<pid>`, tasks and
/// held long-polls from `/metrics` (whose process gauges must agree with
/// `/proc`).
async fn figures(server: &Server) -> Figures {
    let pid = server.pid();
    let text = scrape(&server.url("")).await;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    let kib = |field: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("/proc/{pid}/status has {field}:\n{status}"))
    };
    let open_fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/fd: {e}"))
        .count() as u64;
    let metric =
        |name: &str| gauge(&text, name).unwrap_or_else(|| panic!("/metrics has {name}:\n{text}"));
    assert!(
        metric("process_resident_memory_bytes") > 0,
        "process_resident_memory_bytes is exported:\n{text}"
    );
    Figures {
        rss_kib: kib("VmRSS:"),
        peak_rss_kib: kib("VmHWM:"),
        open_fds,
        exported_fds: metric("process_open_fds"),
        alive_tasks: metric("onceflight_runtime_alive_tasks"),
        waits_in_progress: metric("onceflight_waits_in_progress"),
    }
}

/// Waits (bounded by [`SETTLE`]) until the server is back near `before`:
/// no held long-poll, alive tasks and open files within their slack; then
/// returns its figures.
async fn settle(name: &str, server: &Server, before: &Figures, fd_slack: u64) -> Figures {
    let deadline = Instant::now() + SETTLE;
    loop {
        let now = figures(server).await;
        let settled = now.waits_in_progress == 0
            && now.alive_tasks <= before.alive_tasks + TASK_SLACK
            && now.open_fds <= before.open_fds + fd_slack;
        if settled || Instant::now() >= deadline {
            if !settled {
                let _ = writeln!(
                    std::io::stderr(),
                    "soak on {name}: not settled after {SETTLE:?}: {now:?} (before: {before:?})"
                );
            }
            return now;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Raises this process's soft limit of open files to [`FD_LIMIT`] (or the
/// hard limit, if lower) when it is below, once, and says so.
fn raise_fd_limit() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let limits = std::fs::read_to_string("/proc/self/limits").expect("read /proc/self/limits");
        let line = limits
            .lines()
            .find(|line| line.starts_with("Max open files"))
            .expect("/proc/self/limits has Max open files");
        let mut numbers = line["Max open files".len()..].split_whitespace();
        let soft: u64 = numbers.next().and_then(|n| n.parse().ok()).unwrap_or(u64::MAX);
        let hard = numbers
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(u64::MAX);
        if soft >= FD_LIMIT {
            return;
        }
        let target = FD_LIMIT.min(hard);
        let pid = std::process::id().to_string();
        let hard_text = if hard == u64::MAX {
            "unlimited".to_owned()
        } else {
            hard.to_string()
        };
        let status = std::process::Command::new("prlimit")
            .args(["--pid", &pid, &format!("--nofile={target}:{hard_text}")])
            .status()
            .unwrap_or_else(|e| {
                panic!("the soak needs {FD_LIMIT} open files (ulimit -n is {soft}); running prlimit failed: {e}")
            });
        assert!(status.success(), "prlimit --nofile={target}: {status}");
        let _ = writeln!(
            std::io::stderr(),
            "soak: raised this process's soft limit of open files from {soft} to {target}"
        );
        assert!(
            target >= 2 * LONG_POLLS as u64 + 512,
            "the soak needs about {FD_LIMIT} open files; the hard limit is {hard}"
        );
    });
}

/// Local ports of the established TCP connections of process `pid` to
/// `port` (from `/proc/<pid>/net/tcp{,6}` and the process's socket fds).
#[cfg(any(feature = "postgres", feature = "redis"))]
fn ports_connected_to(pid: u32, port: u16) -> HashSet<u16> {
    let inodes: HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|entries| {
            entries
                .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
                .filter_map(|target| {
                    let target = target.to_string_lossy().into_owned();
                    Some(
                        target
                            .strip_prefix("socket:[")?
                            .strip_suffix(']')?
                            .to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let mut ports = HashSet::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(remote), Some(state), Some(inode)) =
                (fields.get(1), fields.get(2), fields.get(3), fields.get(9))
            else {
                continue;
            };
            let port_of = |address: &str| {
                address
                    .rsplit(':')
                    .next()
                    .and_then(|hex| u16::from_str_radix(hex, 16).ok())
            };
            // 01 is ESTABLISHED.
            if *state == "01" && port_of(remote) == Some(port) && inodes.contains(*inode) {
                ports.extend(port_of(local));
            }
        }
    }
    ports
}

/// How many of Postgres's client backends belong to process `pid`.
#[cfg(feature = "postgres")]
async fn postgres_connections(url: &str, pid: u32) -> usize {
    let parsed = reqwest::Url::parse(url).expect("DATABASE_URL is a URL");
    let port = parsed.port().unwrap_or(5432);
    let ours = ports_connected_to(pid, port);
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .expect("connect to DATABASE_URL");
    let rows: Vec<(Option<i32>,)> = sqlx::query_as(
        "SELECT client_port FROM pg_stat_activity WHERE application_name = 'onceflight'",
    )
    .fetch_all(&pool)
    .await
    .expect("read pg_stat_activity");
    pool.close().await;
    rows.into_iter()
        .filter_map(|(port,)| u16::try_from(port?).ok())
        .filter(|port| ours.contains(port))
        .count()
}

/// How many of Redis's clients belong to process `pid`.
#[cfg(feature = "redis")]
async fn redis_connections(url: &str, pid: u32) -> usize {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let parsed = reqwest::Url::parse(url).expect("REDIS_URL is a URL");
    let host = parsed.host_str().expect("REDIS_URL has a host").to_owned();
    let port = parsed.port().unwrap_or(6379);
    let ours = ports_connected_to(pid, port);
    let mut stream = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .expect("connect to REDIS_URL");
    let mut request = Vec::new();
    if let Some(password) = parsed.password() {
        let user = if parsed.username().is_empty() {
            "default"
        } else {
            parsed.username()
        };
        request.extend(resp(&["AUTH", user, password]));
    }
    request.extend(resp(&["CLIENT", "LIST"]));
    request.extend(resp(&["QUIT"]));
    stream.write_all(&request).await.expect("send CLIENT LIST");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("Redis answers CLIENT LIST")
        .expect("read CLIENT LIST");
    let text = String::from_utf8_lossy(&answer);
    text.lines()
        .filter_map(|line| {
            let addr = line
                .split_whitespace()
                .find_map(|field| field.strip_prefix("addr="))?;
            addr.rsplit(':').next()?.parse::<u16>().ok()
        })
        .filter(|port| ours.contains(port))
        .count()
}

/// `args` as a RESP command.
#[cfg(feature = "redis")]
fn resp(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend(format!("${}\r\n", arg.len()).into_bytes());
        out.extend(arg.as_bytes());
        out.extend(b"\r\n");
    }
    out
}
