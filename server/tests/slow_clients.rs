//! The HTTP edge under slow, stalled and oversized clients: real
//! sockets against `serve` in-process on `127.0.0.1:0`, with short
//! configured timeouts so each case takes a second or two.
//!
//! What is proved: a client trickling its headers (slowloris) or its body is
//! cut off once its timeout passes, however steadily it trickles; many such
//! clients do not keep a normal client from its answers; an oversized header
//! block gets 431 (or a close) and the server serves others; long-polls and
//! keep-alive reuse are not cut; the connection cap holds; and a graceful
//! shutdown is not held up by a client that never sends a request.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use onceflight_server::auth::Tokens;
use onceflight_server::{AppState, Limits};
use onceflight_store_memory::{MemoryConfig, MemoryStore};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The short timeouts most cases configure.
const SHORT: Duration = Duration::from_millis(300);

/// How often a slow client sends its next byte: well inside [`SHORT`], so a
/// timer that restarted on every byte would never fire.
const TRICKLE: Duration = Duration::from_millis(100);

/// A generous bound for anything that must happen "soon" (a cut-off, an
/// answer): it only detects hangs, it measures nothing.
const BOUND: Duration = Duration::from_secs(10);

/// A service served in-process; shut down gracefully by [`Served::stop`],
/// or simply dropped with the test's runtime.
struct Served {
    address: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Served {
    /// Serves a fresh memory store with `limits` and no tokens.
    async fn start(limits: Limits) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let address = listener.local_addr().expect("the bound address");
        let store = MemoryStore::new(MemoryConfig::default());
        let state = AppState::new(Arc::new(store), Tokens::default(), limits);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(onceflight_server::serve(listener, state, async move {
            // A dropped sender also means "stop".
            let _ = stopped.await;
        }));
        Self {
            address,
            stop: Some(stop),
            task,
        }
    }

    /// Begins the graceful shutdown and returns how long `serve` took to
    /// return, asserting that it did within [`BOUND`] and without error.
    async fn stop(mut self) -> Duration {
        let started = Instant::now();
        let _ = self.stop.take().expect("stopped once").send(());
        let result = tokio::time::timeout(BOUND, &mut self.task)
            .await
            .unwrap_or_else(|_| panic!("serve did not return within {BOUND:?} of the shutdown"));
        result
            .expect("the serve task does not panic")
            .expect("serve returns Ok");
        started.elapsed()
    }

    async fn connect(&self) -> TcpStream {
        TcpStream::connect(self.address)
            .await
            .expect("connect to the server")
    }
}

/// Limits with [`SHORT`] header and body timeouts, the rest default.
fn short_limits() -> Limits {
    Limits {
        header_timeout: SHORT,
        body_timeout: SHORT,
        ..Limits::default()
    }
}

/// A whole response read from a connection: status, headers (lower-cased
/// names) and body.
#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one response (with a `Content-Length` body, as this server sends)
/// from `stream`; `None` if the connection closes before a whole one.
async fn read_response(stream: &mut TcpStream) -> Option<Response> {
    let mut buffer = Vec::new();
    let mut chunk = [0_u8; 8192];
    let head_end = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("a status line in {head:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .map_or(0, |(_, v)| v.parse().expect("a numeric content-length"));
    let mut body = buffer[head_end..].to_vec();
    while body.len() < length {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    body.truncate(length);
    Some(Response {
        status,
        headers,
        body,
    })
}

/// Whether the server has closed `stream` (EOF or reset), waiting at most
/// `within`. Bytes that arrive meanwhile are returned for the caller to judge.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> (bool, Vec<u8>) {
    let mut received = Vec::new();
    let mut chunk = [0_u8; 8192];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Err(_) => return (false, received),
            Ok(Ok(0) | Err(_)) => return (true, received),
            Ok(Ok(n)) => received.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Sends `request` on a fresh connection and reads the answer, all within
/// [`BOUND`].
async fn exchange(served: &Served, request: &str) -> Response {
    let mut stream = served.connect().await;
    tokio::time::timeout(BOUND, async {
        stream
            .write_all(request.as_bytes())
            .await
            .expect("send the request");
        read_response(&mut stream).await
    })
    .await
    .unwrap_or_else(|_| panic!("no answer within {BOUND:?} to {request:?}"))
    .unwrap_or_else(|| panic!("the connection closed without an answer to {request:?}"))
}

/// A complete `POST` of a JSON `body` to `path`, closing the connection after.
fn post(path: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// A complete `GET` of `path`, closing the connection after.
fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
}

/// How a trickling client's connection ended.
#[derive(Debug)]
struct Trickled {
    /// Whether the server closed the connection within the bound.
    cut: bool,
    /// How long after the first byte that happened (or the bound).
    after: Duration,
    /// Whatever the server sent before closing.
    received: Vec<u8>,
}

/// Sends `prefix`, then one more byte of `filler` every [`TRICKLE`], until
/// the server closes the connection or `bound` passes.
async fn trickle(mut stream: TcpStream, prefix: Vec<u8>, filler: u8, bound: Duration) -> Trickled {
    let started = Instant::now();
    let mut received = Vec::new();
    if stream.write_all(&prefix).await.is_err() {
        return Trickled {
            cut: true,
            after: started.elapsed(),
            received,
        };
    }
    let mut chunk = [0_u8; 8192];
    let mut tick = tokio::time::interval(TRICKLE);
    tick.tick().await;
    loop {
        if started.elapsed() > bound {
            return Trickled {
                cut: false,
                after: started.elapsed(),
                received,
            };
        }
        tokio::select! {
            read = stream.read(&mut chunk) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&chunk[..n]),
            },
            _ = tick.tick() => {
                if stream.write_all(&[filler]).await.is_err() {
                    break;
                }
            }
        }
    }
    Trickled {
        cut: true,
        after: started.elapsed(),
        received,
    }
}

/// The start of a request whose header block never ends.
fn endless_header() -> Vec<u8> {
    b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Slow: ".to_vec()
}

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
