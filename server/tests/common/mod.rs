//! Helpers shared by the server's integration tests. Most come from
//! `onceflight-test-support`: the real `onceflight` binary as a process guard
//! ([`Server`], started through [`launch`]), JSON requests against it
//! ([`call`], [`Reply`]), a PostgreSQL or Redis of the test's own to crash
//! ([`own_postgres`], [`own_redis`]); what is the server's alone is here:
//! the service served in-process on an ephemeral port
//! ([`serve_in_process`]).

// Each test binary uses a part of these helpers and re-exports.
#![allow(dead_code, unused_imports)]

pub(crate) mod fleet;
pub(crate) mod history;
#[cfg(feature = "client")]
pub(crate) mod over_http;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use onceflight_core::RequestStore;
use onceflight_server::auth::Tokens;
use onceflight_server::{AppState, Limits};
use onceflight_test_support::env;
pub(crate) use onceflight_test_support::http::{
    Reply, call, call_until_available, checked_json, client, send,
};
use onceflight_test_support::postgres::{self, Postgres};
pub(crate) use onceflight_test_support::proxy::Proxy;
use onceflight_test_support::redis::{self, Redis};
pub(crate) use onceflight_test_support::server::{Launch, STARTUP, Server};
use reqwest::{Method, StatusCode};
use serde_json::json;

/// The binary under test.
const BIN: &str = env!("CARGO_BIN_EXE_onceflight");

/// `onceflight serve` on a free loopback port, with no extra arguments or
/// environment, ready once `/healthz` answers 200 within [`STARTUP`].
pub(crate) fn launch() -> Launch {
    Launch::new(BIN)
}

/// A server as [`launch`] describes, once it is up.
pub(crate) async fn start_server() -> Server {
    launch().start().await
}

/// `onceflight <args>`, with stdin closed and none of the caller's
/// `ONCEFLIGHT_*` variables.
pub(crate) fn onceflight(args: &[&str]) -> Command {
    onceflight_test_support::server::command(Path::new(BIN), args)
}

/// A port that was free a moment ago.
pub(crate) fn free_port() -> u16 {
    onceflight_test_support::process::free_port().expect("a free loopback port")
}

/// A PostgreSQL cluster of the test's own, for faults that must not touch
/// the shared server of `DATABASE_URL`: its commits wait for the WAL, so a
/// crash ([`Postgres::crash`]) loses nothing acknowledged. `None` (after
/// saying so loudly) when the server binaries are not installed and backends
/// are not required.
pub(crate) fn own_postgres(test: &str) -> Option<Postgres> {
    if !Postgres::installed() {
        return env::skip(
            test,
            "PostgreSQL server binaries (initdb, pg_ctl) are not installed (`apt-get install \
             postgresql`)",
        );
    }
    let options = postgres::Options {
        synchronous_commit: true,
        ..postgres::Options::default()
    };
    Some(Postgres::start_with(options).unwrap_or_else(|e| panic!("{test}: {e:#}")))
}

/// A `redis-server` of the test's own, persisting with an append-only file
/// synced on every write when `append_only`, else keeping nothing on disk;
/// `None` (after saying so loudly) when `redis-server` is not installed and
/// backends are not required.
pub(crate) fn own_redis(test: &str, append_only: bool) -> Option<Redis> {
    if !Redis::installed() {
        return env::skip(
            test,
            "redis-server is not installed (`apt-get install redis-server`)",
        );
    }
    let options = redis::Options {
        append_only,
        ..redis::Options::default()
    };
    Some(Redis::start_with(options).unwrap_or_else(|e| panic!("{test}: {e:#}")))
}

/// Serves `store` with `tokens` and the default limits (but counts read
/// afresh on every `/v1/stats`: the suite's counts must see the writes just
/// made), in-process on an ephemeral loopback port, for as long as the
/// test's runtime lives. Returns the service's base URL.
pub(crate) async fn serve_in_process(store: impl RequestStore, tokens: Tokens) -> String {
    serve_in_process_with(store, tokens, None).await
}

/// [`serve_in_process`], with a hit cache configured as `hit_cache` when
/// given.
pub(crate) async fn serve_in_process_with(
    store: impl RequestStore,
    tokens: Tokens,
    hit_cache: Option<onceflight_core::HitCacheConfig>,
) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let address = listener.local_addr().expect("the bound address");
    let store: Arc<dyn RequestStore> = Arc::new(store);
    let limits = Limits {
        stats_max_age: std::time::Duration::ZERO,
        ..Limits::default()
    };
    let state = match hit_cache {
        Some(config) => AppState::with_hit_cache(store, tokens, limits, config)
            .expect("a store with a push channel"),
        None => AppState::new(store, tokens, limits),
    };
    tokio::spawn(onceflight_server::serve(
        listener,
        state,
        std::future::pending(),
    ));
    format!("http://{address}")
}

/// Claims the fresh `key` (as it goes in a URL) on `server` with `body`
/// and completes it with `result`; returns the lease's token.
pub(crate) async fn claim_and_complete(
    http: &reqwest::Client,
    server: &Server,
    key: &str,
    body: serde_json::Value,
    result: &serde_json::Value,
) -> u64 {
    let claim = call(
        http,
        Method::POST,
        &server.url(&format!("/v1/requests/{key}/claim")),
        Some(body),
        None,
    )
    .await;
    claim.expect(StatusCode::CREATED);
    let token = claim.token();
    call(
        http,
        Method::POST,
        &server.url(&format!("/v1/requests/{key}/complete")),
        Some(json!({"token": token, "result": result})),
        None,
    )
    .await
    .expect(StatusCode::OK);
    token
}
