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
//!
//! The cases: [`trickles`] (headers and bodies trickled, stalled or
//! oversized) and [`connections`] (long-polls, keep-alive, the connection
//! cap and shutdown).

mod connections;
mod trickles;

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
