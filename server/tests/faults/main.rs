//! The real `onceflight` binary while its store fails (docs/protocol.md §5
//! and §7): the path to Postgres or Redis frozen or cut by a TCP proxy in
//! between, PostgreSQL crashed with `pg_ctl stop -m immediate` and started
//! again, Redis killed and restarted with and without an append-only file.
//!
//! What must hold in every case:
//! - while the store is down, every request that needs it answers 503
//!   `store_unavailable` with `Retry-After`, within the store timeout (plus
//!   slack for a loaded machine) — never a hang, never another 5xx;
//! - once the store is back, the service resumes by itself: no restart, and
//!   long-polls are woken by the store again (its LISTEN or subscription
//!   reconnected);
//! - a result acknowledged before the fault is still there, unchanged — on
//!   Postgres, and on Redis with an append-only file. Without one, a Redis
//!   restart forgets every record (the README says so), and tokens granted
//!   afterwards are still greater than every earlier one (§5.2).
//!
//! The proxy cases need `DATABASE_URL` / `REDIS_URL`; the crash cases start
//! their own PostgreSQL and Redis from the installed binaries. Each skips
//! loudly when what it needs is missing, unless
//! `ONCEFLIGHT_REQUIRE_BACKENDS=1`.
//!
//! This file holds what every case does (serve, prepare, expect the outage,
//! expect the recovery); the cases are in [`paths`] (the proxy) and
//! [`crashes`] (the store processes themselves).

#[path = "../common/mod.rs"]
mod common;

mod crashes;
mod paths;

use std::time::{Duration, Instant};

use common::{Server, call, claim_and_complete, client, send};
use futures::future::join_all;
use onceflight_test_support::unique_name;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// The server's store timeout in these tests (`--store-timeout-ms`).
const STORE_TIMEOUT: Duration = Duration::from_millis(1500);

/// The longest a request may take while the store is down: the store
/// timeout plus generous slack for a loaded 2-core machine. Anything longer
/// is a hang.
const OUTAGE_BOUND: Duration = Duration::from_secs(10);

/// How long the service may take to resume by itself once the store is
/// back: reconnecting pools back off for a while.
const RECOVERY_BOUND: Duration = Duration::from_secs(40);

/// A long-poll that the store must wake well before its fallback re-read
/// (5 s) would.
const PUSHED_WAIT_MS: u64 = 4000;

/// Which store a server runs on, and how its namespace is chosen.
enum Store<'a> {
    Postgres(&'a str),
    Redis(&'a str),
}

/// `onceflight serve` on `store` (a fresh schema or key prefix), with a
/// short store timeout, ready once `/readyz` answers.
async fn serve(store: Store<'_>) -> Server {
    let timeout = STORE_TIMEOUT.as_millis().to_string();
    let namespace = unique_name("t_faults");
    let launch = crate::common::launch()
        .args(&["--store-timeout-ms", &timeout])
        .env("RUST_LOG", "info")
        .ready_when("/readyz", Duration::from_secs(30));
    let launch = match store {
        Store::Postgres(url) => launch.args(&[
            "--store",
            url,
            "--pg-schema",
            &namespace,
            "--pg-pool-size",
            "4",
        ]),
        Store::Redis(url) => {
            launch.args(&["--store", url, "--redis-prefix", &format!("{namespace}:")])
        }
    };
    launch.start().await
}

/// A raw answer, which may be a 503 (unlike [`call`]'s), and how long it
/// took.
struct Answer {
    what: String,
    status: StatusCode,
    retry_after: Option<String>,
    json: Value,
    took: Duration,
}

async fn request(
    client: &reqwest::Client,
    server: &Server,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Answer {
    let started = Instant::now();
    let (what, status, headers, text) =
        send(client, method, &server.url(path), body.as_ref(), None).await;
    Answer {
        what,
        status,
        retry_after: headers
            .get("retry-after")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned),
        json: serde_json::from_str(&text).unwrap_or(Value::Null),
        took: started.elapsed(),
    }
}

/// Asserts that `answer` is a prompt 503 `store_unavailable` with a
/// numeric `Retry-After` (`/readyz` has its own body and needs no code).
#[track_caller]
fn assert_unavailable(answer: &Answer, bound: Duration) {
    assert_eq!(
        answer.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}: a request that needs the store while it is down is a 503, got {} {}",
        answer.what,
        answer.status,
        answer.json
    );
    if !answer.what.ends_with("/readyz") {
        assert_eq!(
            answer.json["error"]["code"], "store_unavailable",
            "{}: the error code, got {}",
            answer.what, answer.json
        );
        assert!(
            answer
                .retry_after
                .as_deref()
                .is_some_and(|secs| secs.parse::<u64>().is_ok()),
            "{}: a 503 carries Retry-After in seconds, got {:?}",
            answer.what,
            answer.retry_after
        );
    }
    assert!(
        answer.took <= bound,
        "{}: answered after {:?}, more than {bound:?}: a request must not hang on a store that \
         is down",
        answer.what,
        answer.took
    );
}

fn claim_body(lease_ms: u64) -> Value {
    json!({"kind": "image", "owner": "faults", "lease_ms": lease_ms})
}

/// What a test set up before breaking the store: a completed key and a key
/// whose lease is held.
struct Before {
    done: String,
    result: Value,
    held: String,
    held_token: u64,
}

async fn prepare(server: &Server) -> Before {
    let client = client();
    let done = unique_name("done");
    let result = json!({"url": "s3://bucket/done.png", "n": 7});
    claim_and_complete(&client, server, &done, claim_body(60_000), &result).await;
    let held = unique_name("held");
    let held_token = call(
        &client,
        Method::POST,
        &server.url(&format!("/v1/requests/{held}/claim")),
        Some(claim_body(60_000)),
        None,
    )
    .await
    .token();
    Before {
        done,
        result,
        held,
        held_token,
    }
}

/// Fires one request of every kind at once while the store is down and
/// asserts each is a prompt 503.
async fn expect_outage(server: &Server, before: &Before) {
    let client = client();
    let fresh = unique_name("fresh");
    let requests = [
        (
            Method::POST,
            format!("/v1/requests/{fresh}/claim"),
            Some(claim_body(5_000)),
            OUTAGE_BOUND,
        ),
        (
            Method::GET,
            format!("/v1/requests/{}", before.done),
            None,
            OUTAGE_BOUND,
        ),
        (
            Method::POST,
            format!("/v1/requests/{}/heartbeat", before.held),
            Some(json!({"token": before.held_token})),
            OUTAGE_BOUND,
        ),
        (
            Method::POST,
            format!("/v1/requests/{}/complete", before.held),
            Some(json!({"token": before.held_token, "result": "late"})),
            OUTAGE_BOUND,
        ),
        (
            // Not the completed key: an operation that timed out may still
            // take effect once the path heals (its bytes were on the way),
            // so a 503 means "retry", never "nothing happened" — which is
            // safe because every operation is idempotent for its caller.
            Method::DELETE,
            format!("/v1/requests/{fresh}"),
            None,
            OUTAGE_BOUND,
        ),
        (
            // A long-poll may wait its wait_ms on top of the store timeout.
            Method::GET,
            format!("/v1/requests/{}?wait_ms=1000", before.held),
            None,
            OUTAGE_BOUND + Duration::from_secs(1),
        ),
        (Method::GET, "/readyz".to_owned(), None, OUTAGE_BOUND),
    ];
    let answers = join_all(requests.iter().map(|(method, path, body, _)| {
        request(&client, server, method.clone(), path, body.clone())
    }))
    .await;
    for (answer, (_, _, _, bound)) in answers.iter().zip(&requests) {
        assert_unavailable(answer, *bound);
    }
    // The liveness probe needs no store.
    let health = request(&client, server, Method::GET, "/healthz", None).await;
    assert_eq!(
        health.status,
        StatusCode::OK,
        "/healthz answers while the store is down"
    );
}

/// Waits (bounded) until the service answers `GET path` with something
/// other than 503, and returns that answer.
async fn recovered(server: &Server, path: &str) -> Answer {
    let client = client();
    let deadline = Instant::now() + RECOVERY_BOUND;
    loop {
        let answer = request(&client, server, Method::GET, path, None).await;
        if answer.status != StatusCode::SERVICE_UNAVAILABLE {
            assert!(
                !answer.status.is_server_error(),
                "{}: after the store came back, got {} {}",
                answer.what,
                answer.status,
                answer.json
            );
            return answer;
        }
        assert!(
            Instant::now() < deadline,
            "the service did not resume by itself within {RECOVERY_BOUND:?} of the store \
             coming back; last answer {} {}:\n{}",
            answer.status,
            answer.json,
            server.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// After the store is back: the service answers again, a long-poll is woken
/// by the store (not by its fallback re-read), and new work goes through.
async fn expect_resumed(server: &Server) {
    recovered(server, "/readyz").await;
    let client = client();
    // Reconnected pools may still hand out a connection that died in the
    // fault; give the first few requests a chance to meet it.
    let key = unique_name("after");
    let token = loop {
        let answer = request(
            &client,
            server,
            Method::POST,
            &format!("/v1/requests/{key}/claim"),
            Some(claim_body(30_000)),
        )
        .await;
        if answer.status == StatusCode::CREATED {
            break answer.json["token"].as_u64().expect("a token");
        }
        assert_unavailable(&answer, OUTAGE_BOUND);
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let poll = {
        let client = client.clone();
        let url = server.url(&format!("/v1/requests/{key}?wait_ms={PUSHED_WAIT_MS}"));
        tokio::spawn(async move { client.get(url).send().await?.json::<Value>().await })
    };
    // Let the long-poll register before the completion it waits for.
    tokio::time::sleep(Duration::from_millis(300)).await;
    call(
        &client,
        Method::POST,
        &server.url(&format!("/v1/requests/{key}/complete")),
        Some(json!({"token": token, "result": "after"})),
        None,
    )
    .await
    .expect(StatusCode::OK);
    let woken = poll
        .await
        .expect("the long-poll task")
        .expect("the long-poll answer");
    assert_eq!(
        woken["state"], "completed",
        "a long-poll after the store came back is woken by the store's push (LISTEN or \
         subscription reconnected), within {PUSHED_WAIT_MS} ms; got {woken}"
    );
}

/// After the store is back, the result acknowledged before the fault is
/// still there, unchanged.
async fn expect_result_kept(server: &Server, before: &Before) {
    let answer = recovered(server, &format!("/v1/requests/{}", before.done)).await;
    assert_eq!(
        (answer.status, &answer.json["result"]),
        (StatusCode::OK, &before.result),
        "a result completed before the fault survives it unchanged: {}",
        answer.json
    );
}
