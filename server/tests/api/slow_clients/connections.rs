//! Connections that must outlive the timeouts (long-polls, keep-alive),
//! the connection cap, and a shutdown that idle or slow clients cannot
//! hold up.

use std::time::Duration;

use tokio::io::AsyncWriteExt;

use super::{
    BOUND, SHORT, Served, closed_within, endless_header, exchange, get, post, read_response,
    short_limits,
};

/// A long-poll held many times longer than the header and body timeouts is
/// answered normally when the job completes; keep-alive reuse still works,
/// and a kept-alive connection left idle is closed after the header timeout.
#[tokio::test]
async fn long_polls_and_keep_alive_outlive_the_timeouts() {
    let served = Served::start(short_limits()).await;
    let claim = exchange(
        &served,
        &post(
            "/v1/requests/held/claim",
            r#"{"kind": "image", "lease_ms": 60000}"#,
        ),
    )
    .await;
    assert_eq!(claim.status, 201, "{claim:?}");
    let token = claim.json()["token"].as_u64().expect("a token");

    let mut poller = served.connect().await;
    poller
        .write_all(get("/v1/requests/held?wait_ms=30000").as_bytes())
        .await
        .expect("send the long-poll");
    let held = tokio::spawn(async move {
        tokio::time::timeout(BOUND + BOUND, read_response(&mut poller)).await
    });
    // Hold it for five header/body timeouts before completing the job.
    tokio::time::sleep(SHORT * 5).await;
    assert!(
        !held.is_finished(),
        "the long-poll is still held after {:?}",
        SHORT * 5
    );
    let done = exchange(
        &served,
        &post(
            "/v1/requests/held/complete",
            &format!(r#"{{"token": {token}, "result": "done"}}"#),
        ),
    )
    .await;
    assert_eq!(done.status, 200, "{done:?}");
    let answer = held
        .await
        .expect("the poller does not panic")
        .expect("the long-poll is answered once the job completes")
        .expect("the long-poll is answered, not cut off");
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.json()["state"], "completed", "{answer:?}");
    assert_eq!(answer.json()["result"], "done", "{answer:?}");

    // Keep-alive: two requests on one connection, a pause shorter than the
    // header timeout between them.
    let mut stream = served.connect().await;
    let keep = "GET /v1/requests/held HTTP/1.1\r\nHost: test\r\n\r\n";
    for round in 0..2 {
        stream
            .write_all(keep.as_bytes())
            .await
            .expect("send on the kept-alive connection");
        let reply = tokio::time::timeout(BOUND, read_response(&mut stream))
            .await
            .expect("an answer within the bound")
            .unwrap_or_else(|| panic!("round {round}: the kept-alive connection was closed"));
        assert_eq!(reply.status, 200, "round {round}: {reply:?}");
        assert_ne!(
            reply.header("connection"),
            Some("close"),
            "round {round}: the connection is kept alive"
        );
        tokio::time::sleep(SHORT / 3).await;
    }
    // Then left idle, it is closed.
    let (closed, received) = closed_within(&mut stream, BOUND).await;
    assert!(
        closed && received.is_empty(),
        "an idle kept-alive connection is closed without a word: closed {closed}, {:?}",
        String::from_utf8_lossy(&received)
    );
    served.stop().await;
}

/// With `max_connections` 2, a third client waits while two connections are
/// open and is served as soon as one closes.
#[tokio::test]
async fn the_connection_cap_holds_and_frees() {
    let mut limits = short_limits();
    limits.header_timeout = Duration::from_secs(30);
    limits.max_connections = Some(2);
    let served = Served::start(limits).await;
    let first = served.connect().await;
    let second = served.connect().await;
    // Give the server time to accept both (its slots are then taken).
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut third = served.connect().await;
    third
        .write_all(get("/healthz").as_bytes())
        .await
        .expect("the kernel queues the third connection's request");
    let early = tokio::time::timeout(Duration::from_millis(500), read_response(&mut third)).await;
    assert!(
        early.is_err(),
        "the third connection is not served while two are open: {early:?}"
    );
    drop(first);
    let answer = tokio::time::timeout(BOUND, read_response(&mut third))
        .await
        .unwrap_or_else(|_| panic!("the third connection is served within {BOUND:?} of a close"))
        .expect("an answer, not a close");
    assert_eq!(answer.status, 200, "{answer:?}");
    drop(second);
    served.stop().await;
}

/// A graceful shutdown is not held up for ever by a client that connected
/// and never sent a request, nor by one stuck half-way through its headers,
/// nor by an idle kept-alive connection: `serve` returns within the bound.
#[tokio::test]
async fn shutdown_is_not_held_by_silent_slow_or_idle_clients() {
    let served = Served::start(short_limits()).await;
    let _silent = served.connect().await;
    let mut half = served.connect().await;
    half.write_all(&endless_header())
        .await
        .expect("send half a header block");
    let mut idle = served.connect().await;
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .expect("send a request");
    let answer = tokio::time::timeout(BOUND, read_response(&mut idle))
        .await
        .expect("an answer within the bound")
        .expect("an answer");
    assert_eq!(answer.status, 200, "{answer:?}");
    // `stop` asserts that `serve` returns within the bound.
    served.stop().await;
    let (closed, _) = closed_within(&mut idle, BOUND).await;
    assert!(
        closed,
        "the idle kept-alive connection is closed by the shutdown"
    );
}
