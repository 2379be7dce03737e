//! Clients that trickle, stall or oversize their headers or bodies are cut
//! off, and do not keep others from being served.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{
    BOUND, SHORT, Served, closed_within, endless_header, exchange, get, post, read_response,
    short_limits, trickle,
};

/// A slowloris client — a header byte every 100 ms, never finishing — is
/// disconnected soon after the header timeout, without an answer.
#[tokio::test]
async fn a_slowloris_client_is_cut_off_after_the_header_timeout() {
    let served = Served::start(short_limits()).await;
    let outcome = trickle(served.connect().await, endless_header(), b'a', BOUND).await;
    assert!(
        outcome.cut,
        "a client trickling its headers for {BOUND:?} is never cut off (timeout {SHORT:?}): {outcome:?}"
    );
    assert!(
        outcome.after >= SHORT,
        "the connection is closed only once the header timeout has passed: {outcome:?}"
    );
    assert!(
        !outcome.received.starts_with(b"HTTP/1.1 2"),
        "an unfinished request is never answered with success: {:?}",
        String::from_utf8_lossy(&outcome.received)
    );
    served.stop().await;
}

/// While 60 slowloris connections are open, a normal client gets every
/// answer; the slow ones are all cut off afterwards.
#[tokio::test]
async fn many_slow_clients_do_not_starve_a_normal_one() {
    // A longer header timeout, so that the slow clients are certainly all
    // still connected while the normal client works.
    let mut limits = short_limits();
    limits.header_timeout = Duration::from_secs(5);
    let served = Served::start(limits).await;
    let mut slow = Vec::new();
    for _ in 0..60 {
        let stream = served.connect().await;
        slow.push(tokio::spawn(trickle(
            stream,
            endless_header(),
            b'a',
            BOUND + BOUND,
        )));
    }
    // Let every slow client send its partial header block.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let claim = exchange(
        &served,
        &post("/v1/requests/busy/claim", r#"{"kind": "image"}"#),
    )
    .await;
    assert_eq!(
        claim.status, 201,
        "claim while slow clients wait: {claim:?}"
    );
    let token = claim.json()["token"].as_u64().expect("a token");
    for _ in 0..10 {
        let read = exchange(&served, &get("/v1/requests/busy")).await;
        assert_eq!(read.status, 200, "GET while slow clients wait: {read:?}");
        assert_eq!(read.json()["state"], "processing", "{read:?}");
    }
    let done = exchange(
        &served,
        &post(
            "/v1/requests/busy/complete",
            &format!(r#"{{"token": {token}, "result": {{"ok": true}}}}"#),
        ),
    )
    .await;
    assert_eq!(
        done.status, 200,
        "complete while slow clients wait: {done:?}"
    );
    let still_open = slow.iter().filter(|task| !task.is_finished()).count();
    assert_eq!(
        still_open, 60,
        "the normal client was served while all the slow clients were connected"
    );

    for task in slow {
        let outcome = task.await.expect("the slow client does not panic");
        assert!(
            outcome.cut,
            "every slow client is cut off in the end: {outcome:?}"
        );
    }
    served.stop().await;
}

/// A client that sends its headers and then only part of the body, or the
/// body one byte every 100 ms, gets 408 `request_timeout` once the body
/// timeout passes and the connection is closed; nothing is stored.
#[tokio::test]
async fn a_stalled_or_trickled_body_is_cut_off_with_408() {
    let served = Served::start(short_limits()).await;
    let body = r#"{"kind": "image", "owner": "slow"}"#;
    let head = format!(
        "POST /v1/requests/stalled/claim HTTP/1.1\r\nHost: test\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );

    // Stalled: half the body, then nothing.
    let mut stream = served.connect().await;
    stream
        .write_all(format!("{head}{}", &body[..10]).as_bytes())
        .await
        .expect("send the head and part of the body");
    let answer = tokio::time::timeout(BOUND, read_response(&mut stream))
        .await
        .unwrap_or_else(|_| panic!("a stalled body is answered within {BOUND:?}"))
        .expect("a stalled body gets an answer before the close");
    assert_eq!(answer.status, 408, "a stalled body: {answer:?}");
    assert_eq!(
        answer.json()["error"]["code"],
        "request_timeout",
        "the §7 error body: {answer:?}"
    );
    assert!(
        answer.json()["error"]["message"].is_string(),
        "the §7 error body: {answer:?}"
    );
    let (closed, _) = closed_within(&mut stream, BOUND).await;
    assert!(closed, "the connection is closed after the 408");

    // Trickled: the body a byte at a time, each well within the timeout.
    let mut prefix = head.into_bytes();
    prefix.extend_from_slice(b"{\"kind\": \"image\", ");
    let outcome = trickle(served.connect().await, prefix, b' ', BOUND).await;
    assert!(outcome.cut, "a trickled body is cut off: {outcome:?}");
    let text = String::from_utf8_lossy(&outcome.received);
    assert!(
        text.starts_with("HTTP/1.1 408") && text.contains("request_timeout"),
        "a trickled body gets 408 request_timeout: {text:?}"
    );

    let after = exchange(&served, &get("/v1/requests/stalled")).await;
    assert_eq!(
        after.status, 404,
        "a request cut off in its body changed nothing: {after:?}"
    );
    served.stop().await;
}

/// A 1 MiB header, or 500 small headers, gets 431 or a close — never a
/// hang — and the server goes on serving others.
#[tokio::test]
async fn oversized_headers_get_431_and_others_are_served() {
    let served = Served::start(short_limits()).await;
    let huge = format!(
        "GET /healthz HTTP/1.1\r\nHost: test\r\nX-Huge: {}\r\n\r\n",
        "a".repeat(1024 * 1024)
    );
    let many = format!(
        "GET /healthz HTTP/1.1\r\nHost: test\r\n{}\r\n",
        (0..500)
            .map(|i| format!("X-Header-{i}: {i}\r\n"))
            .collect::<String>()
    );
    for (what, request) in [("a 1 MiB header", huge), ("500 headers", many)] {
        let stream = served.connect().await;
        let (mut reader, mut writer) = stream.into_split();
        // The server may close while the request is still being written;
        // that is one of the acceptable outcomes, so write errors are fine.
        let writing = tokio::spawn(async move {
            let _ = writer.write_all(request.as_bytes()).await;
            writer
        });
        let mut received = Vec::new();
        let closed = tokio::time::timeout(BOUND, reader.read_to_end(&mut received))
            .await
            .is_ok();
        assert!(
            closed,
            "{what}: the connection is closed within {BOUND:?}, not left hanging"
        );
        let text = String::from_utf8_lossy(&received);
        assert!(
            received.is_empty() || text.starts_with("HTTP/1.1 431"),
            "{what}: answered 431 or closed, got {text:?}"
        );
        drop(writing.await);
        let ok = exchange(&served, &get("/healthz")).await;
        assert_eq!(ok.status, 200, "after {what}, others are served: {ok:?}");
    }
    served.stop().await;
}
