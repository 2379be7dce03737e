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
//!
//! The parts: [`run`] (a soak from warm-up to the checks afterwards),
//! [`load`] (the mixed load's workers) and [`book`] (what they saw, checked
//! as they go), [`rounds`] (the rounds of long-polls), [`probes`] (the
//! server's figures: `/metrics`, `/proc`), `connections` (the store's own
//! view of the server's connections) and `resp` (the Redis commands it
//! sends).

#[path = "../common/mod.rs"]
mod common;

mod book;
#[cfg(any(feature = "postgres", feature = "redis"))]
mod connections;
mod load;
mod probes;
#[cfg(feature = "redis")]
mod resp;
mod rounds;
mod run;

use std::time::{Duration, Instant};

use common::{call, client};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::probes::{Probe, raise_fd_limit, wait_for_gauge};
use crate::run::soak;

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
    let server = crate::common::launch()
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
    let Some(database) = onceflight_test_support::backend_url("DATABASE_URL") else {
        return;
    };
    raise_fd_limit();
    let schema = onceflight_test_support::unique_name("t_soak");
    let pool = PG_POOL.to_string();
    let server = crate::common::launch()
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
    let Some(redis) = onceflight_test_support::backend_url("REDIS_URL") else {
        return;
    };
    raise_fd_limit();
    let prefix = format!("{}:", onceflight_test_support::unique_name("t_soak"));
    let server = crate::common::launch()
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
    let server = crate::common::launch()
        .args(&["--store", "memory://"])
        .start()
        .await;
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
