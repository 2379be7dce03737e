//! The real `onceflight` binary on Redis: several servers share one Redis
//! and key prefix (one lease per key across all of them, long-polls woken
//! across instances through pub/sub), and a bad prefix is refused at start.
//!
//! Needs `REDIS_URL`; without it each test skips and says so, unless
//! `ONCEFLIGHT_REQUIRE_BACKENDS=1`. Each test works under a fresh prefix and
//! kills its servers when dropped.

use std::time::Duration;

use onceflight_test_support::{backend_available, unique_name};

use crate::common::{Launch, Server, fleet, onceflight};

/// How long a server may take to answer `/readyz` after it is spawned.
const STARTUP: Duration = Duration::from_secs(30);

/// The Redis server, or `None` (after saying so loudly) when the test must
/// skip.
fn redis_url() -> Option<String> {
    if !backend_available("REDIS_URL") {
        return None;
    }
    std::env::var("REDIS_URL").ok()
}

/// `onceflight serve` on a free loopback port, on `redis` under `prefix`;
/// ready once `/readyz` answers 200 within [`STARTUP`].
fn redis_server(redis: &str, prefix: &str) -> Launch {
    crate::common::launch()
        .args(&["--store", redis, "--redis-prefix", prefix])
        .env("RUST_LOG", "info")
        .ready_when("/readyz", STARTUP)
}

/// Two servers on `redis` under one fresh prefix, both ready, with `extra`
/// arguments.
async fn two_servers_with(redis: &str, extra: &[&str]) -> (Server, Server) {
    let prefix = format!("{}:", unique_name("t_srv"));
    let mut a = redis_server(redis, &prefix).args(extra).spawn();
    let mut b = redis_server(redis, &prefix).args(extra).spawn();
    a.wait_ready().await;
    b.wait_ready().await;
    (a, b)
}

/// Two servers on `redis` under one fresh prefix, both ready.
async fn two_servers(redis: &str) -> (Server, Server) {
    two_servers_with(redis, &[]).await
}

/// Two servers with hit caches on one prefix: a result served from B's
/// memory and deleted through A is never served by B past the bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_on_one_server_reaches_the_hit_cache_of_another() {
    let Some(redis) = redis_url() else {
        return;
    };
    let (a, b) = two_servers_with(&redis, &fleet::HIT_CACHE_FLAGS).await;
    fleet::a_delete_on_one_server_reaches_the_hit_cache_of_the_other(&a, &b).await;
}

/// Horizontal scale on Redis: a herd spread over two servers under one
/// prefix grants exactly one lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_one_redis_grant_one_lease() {
    let Some(redis) = redis_url() else {
        return;
    };
    let (a, b) = two_servers(&redis).await;
    fleet::a_herd_over_two_servers_gets_one_lease(&a, &b).await;
}

/// A long-poll held on one server is woken through Redis pub/sub by a
/// completion through another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_wakes_when_another_server_completes() {
    let Some(redis) = redis_url() else {
        return;
    };
    let (a, b) = two_servers(&redis).await;
    fleet::a_long_poll_on_one_server_wakes_on_completion_through_the_other(&a, &b).await;
}

/// A prefix the store cannot use (braces would break its hash tags) stops
/// the server at start with a clear message, and the password in the store
/// URL never reaches the output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_prefix_is_refused_at_start_without_leaking_the_password() {
    let Some(redis) = redis_url() else {
        return;
    };
    let with_password = redis.replacen("redis://", "redis://:hunter2-secret@", 1);
    let output = onceflight(&[
        "serve",
        "--bind",
        "127.0.0.1:0",
        "--store",
        &with_password,
        "--redis-prefix",
        "bad{prefix}",
    ])
    .output()
    .expect("run onceflight");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!output.status.success(), "refused: {text}");
    assert!(text.contains("braces"), "names the problem: {text}");
    assert!(
        !text.contains("hunter2-secret"),
        "no password in the output: {text}"
    );
}
