//! End to end through the real `onceflight` binary: the failure of a
//! hand-written request table (docs/protocol.md §1) replayed over HTTP, graceful shutdown with
//! a held long-poll, the refusal to serve a non-loopback address without
//! tokens, the refusal of a zero retention, and the small-body limit's
//! flag.
//!
//! Each test starts its own server on a free loopback port and kills it when
//! dropped.

use std::time::{Duration, Instant};

use onceflight_server::stores::{self, OpenStoreError, StoreOptions};
use reqwest::header::RETRY_AFTER;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::common::{call, client, free_port};

/// A request hash as such a table keys it: `image|<sha256 of the prompt>`, here the SHA-256
/// of "a portrait of a dwarf ranger, oil painting".
const PROMPT_HASH: &str = "c1918bb1753c73c1bd2dba0d1eb6d2c9615753e5c99f54d106e28f5758ed2247";

/// The crashed-worker scenario, replayed: worker A claims the image and dies; a retry during
/// A's lease is told the job is in flight instead of hitting a duplicate key;
/// once the lease expires the retry takes over; A's late result is refused;
/// and B's result is served to everyone after.
#[tokio::test]
async fn a_crashed_worker_heals_itself() {
    let server = crate::common::start_server().await;
    let http = client();
    let key = format!("image%7C{PROMPT_HASH}");
    let decoded = format!("image|{PROMPT_HASH}");
    let claim_url = server.url(&format!("/v1/requests/{key}/claim"));
    let complete_url = server.url(&format!("/v1/requests/{key}/complete"));

    // Worker A claims the key with a short lease, then crashes mid-generation.
    let claimed_at = Instant::now();
    let a = call(
        &http,
        Method::POST,
        &claim_url,
        Some(json!({"kind": "image", "owner": "worker-a", "lease_ms": 1500})),
        None,
    )
    .await;
    let body = a.expect(StatusCode::CREATED);
    assert_eq!(body["state"], "acquired", "{body}");
    assert_eq!(body["key"], decoded.as_str(), "{body}");
    assert_eq!(body["takeover"], false, "{body}");
    let token_a = a.token();

    // The client retries before A's lease ends: the job is in flight, no
    // duplicate-key error.
    let retry = call(
        &http,
        Method::POST,
        &claim_url,
        Some(json!({"kind": "image", "owner": "worker-b", "lease_ms": 1500})),
        None,
    )
    .await;
    assert!(
        claimed_at.elapsed() < Duration::from_millis(1500),
        "the retry must come before A's lease ends; it took {:?}",
        claimed_at.elapsed()
    );
    let body = retry.expect(StatusCode::ACCEPTED);
    assert_eq!(body["state"], "in_flight", "{body}");
    assert_eq!(body["owner"], "worker-a", "{body}");
    assert_eq!(body["token"], token_a, "{body}");
    assert!(
        body["retry_after_ms"].as_u64().is_some_and(|ms| ms <= 1500),
        "{body}"
    );
    assert!(
        retry.headers.contains_key(RETRY_AFTER),
        "a 202 in_flight carries Retry-After: {:?}",
        retry.headers
    );

    // After A's lease has expired, the retry takes over: no sweep needed.
    tokio::time::sleep(Duration::from_millis(1800)).await;
    let b = call(
        &http,
        Method::POST,
        &claim_url,
        Some(json!({"kind": "image", "owner": "worker-b", "lease_ms": 30000})),
        None,
    )
    .await;
    let body = b.expect(StatusCode::CREATED);
    assert_eq!(body["state"], "acquired", "{body}");
    assert_eq!(body["takeover"], true, "{body}");
    assert_eq!(body["attempt"], 2, "{body}");
    let token_b = b.token();
    assert!(
        token_b > token_a,
        "the takeover's token {token_b} is above A's {token_a}"
    );

    // Worker A, presumed dead, comes back late: fenced off.
    call(
        &http,
        Method::POST,
        &complete_url,
        Some(json!({"token": token_a, "result": {"url": "https://cdn/a.png"}})),
        None,
    )
    .await
    .expect_error(StatusCode::CONFLICT, "lease_lost");

    // Worker B finishes.
    let done = call(
        &http,
        Method::POST,
        &complete_url,
        Some(json!({"token": token_b, "result": {"url": "https://cdn/b.png"}})),
        None,
    )
    .await;
    let record = done.expect(StatusCode::OK);
    assert_eq!(record["state"], "completed", "{record}");
    assert_eq!(
        record["result"],
        json!({"url": "https://cdn/b.png"}),
        "{record}"
    );

    // Everyone after gets B's result at once.
    let later = call(
        &http,
        Method::POST,
        &claim_url,
        Some(json!({"kind": "image", "owner": "worker-c"})),
        None,
    )
    .await;
    let body = later.expect(StatusCode::OK);
    assert_eq!(body["state"], "completed", "{body}");
    assert_eq!(body["token"], token_b, "{body}");
    assert_eq!(
        body["result"],
        json!({"url": "https://cdn/b.png"}),
        "{body}"
    );
    let record = call(
        &http,
        Method::GET,
        &server.url(&format!("/v1/requests/{key}")),
        None,
        None,
    )
    .await;
    let record = record.expect(StatusCode::OK);
    assert_eq!(record["key"], decoded.as_str(), "{record}");
    assert_eq!(
        record["result"],
        json!({"url": "https://cdn/b.png"}),
        "{record}"
    );
}

/// SIGTERM answers a held long-poll at once with the record as it is, and
/// the process exits successfully.
#[tokio::test]
async fn sigterm_answers_held_long_polls_and_exits_cleanly() {
    let mut server = crate::common::start_server().await;
    let http = client();
    call(
        &http,
        Method::POST,
        &server.url("/v1/requests/slow/claim"),
        Some(json!({"kind": "image", "owner": "w", "lease_ms": 60000})),
        None,
    )
    .await
    .expect(StatusCode::CREATED);

    let url = server.url("/v1/requests/slow?wait_ms=30000");
    let held = tokio::spawn(async move {
        let reply = call(&client(), Method::GET, &url, None, None).await;
        (reply, Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !held.is_finished(),
        "the long-poll is held while the lease is live"
    );

    server.sigterm();
    let sent = Instant::now();

    let (reply, answered) = tokio::time::timeout(Duration::from_secs(10), held)
        .await
        .expect("the held request is answered within 10 s of SIGTERM, not after wait_ms")
        .expect("the long-poll task");
    let record = reply.expect(StatusCode::OK);
    assert_eq!(
        record["state"], "processing",
        "the record as it is: {record}"
    );
    assert_eq!(record["key"], "slow", "{record}");
    assert_eq!(record["lease_expired"], false, "{record}");
    let took = answered.saturating_duration_since(sent);
    assert!(
        took < Duration::from_secs(5),
        "answered {took:?} after SIGTERM"
    );

    server.expect_clean_exit().await;
}

/// A non-loopback bind needs tokens (or an explicit flag).
#[tokio::test]
async fn a_public_bind_requires_tokens() {
    let port = free_port();
    let bind = format!("0.0.0.0:{port}");

    let mut refused = crate::common::launch().bind(&bind).spawn();
    let status = refused.wait_exit(Duration::from_secs(20)).await;
    let logs = refused.logs();
    assert!(
        !status.success(),
        "serving {bind} without tokens must fail, got {status}:\n{logs}"
    );
    assert!(
        logs.to_lowercase().contains("token"),
        "the refusal mentions tokens:\n{logs}"
    );
    drop(refused);

    let token = "ops-token-0123456789";
    let mut server = crate::common::launch()
        .bind(&bind)
        .env("ONCEFLIGHT_TOKENS", &format!("ops:{token}"))
        .spawn();
    server.wait_ready().await;
    let http = client();
    let claim_url = server.url("/v1/requests/k/claim");
    call(
        &http,
        Method::POST,
        &claim_url,
        Some(json!({"kind": "image"})),
        None,
    )
    .await
    .expect_error(StatusCode::UNAUTHORIZED, "unauthorized");
    call(
        &http,
        Method::POST,
        &claim_url,
        Some(json!({"kind": "image"})),
        Some(token),
    )
    .await
    .expect(StatusCode::CREATED);
    drop(server);

    // The explicit opt-out also starts.
    let bind = format!("0.0.0.0:{}", free_port());
    let mut open = crate::common::launch()
        .bind(&bind)
        .args(&["--allow-unauthenticated"])
        .spawn();
    open.wait_ready().await;
}

/// A retention of zero — every record forgotten the instant it is written,
/// so no claim would ever see another's lease — is refused before serving,
/// by the flag and by its environment twin, with an error naming the flag.
#[tokio::test]
async fn zero_retention_is_refused_at_start_up() {
    for launch in [
        crate::common::launch().args(&["--retention-secs", "0"]),
        crate::common::launch().env("ONCEFLIGHT_RETENTION_SECS", "0"),
    ] {
        let mut server = launch.spawn();
        let status = server.wait_exit(Duration::from_secs(20)).await;
        let logs = server.logs();
        assert!(
            !status.success(),
            "a zero retention must stop the start, exited {status}:\n{logs}"
        );
        assert!(
            logs.contains("--retention-secs"),
            "the error names the flag:\n{logs}"
        );
    }
    // Opening the memory store as the binary does refuses it too.
    let options = StoreOptions {
        retention: Duration::ZERO,
        ..StoreOptions::default()
    };
    let opened = stores::open("memory://", &options).await;
    assert!(
        matches!(
            opened,
            Err(OpenStoreError::Connect {
                source: onceflight_core::Error::InvalidInput {
                    field: "retention",
                    ..
                },
                ..
            })
        ),
        "memory:// with a zero retention: got {:?}",
        opened.map(|store| store.backend())
    );
    // One second is the least that is accepted.
    crate::common::launch()
        .args(&["--retention-secs", "1"])
        .start()
        .await
        .terminate()
        .await;
}

/// `--max-small-body-bytes` sets the limit of bodies without a result: a
/// claim body past it is 413 `too_large`, a claim within it is served.
#[tokio::test]
async fn the_small_body_limit_flag_is_honoured() {
    let mut server = crate::common::launch()
        .args(&["--max-small-body-bytes", "1024"])
        .start()
        .await;
    let http = client();
    let claim_url = server.url("/v1/requests/k/claim");
    call(
        &http,
        Method::POST,
        &claim_url,
        Some(json!({"kind": "image", "owner": "o".repeat(1024)})),
        None,
    )
    .await
    .expect_error(StatusCode::PAYLOAD_TOO_LARGE, "too_large");
    call(
        &http,
        Method::POST,
        &claim_url,
        Some(json!({"kind": "image", "owner": "o".repeat(100)})),
        None,
    )
    .await
    .expect(StatusCode::CREATED);
    server.terminate().await;
}
