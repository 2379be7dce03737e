//! HTTP through the real server (docs/protocol.md §9: "claims/s through the server
//! ≥ 0.5 × a bare route of the same server"), and how many long-polls one
//! server holds and at what memory cost.
//!
//! The `onceflight` binary of `ONCEFLIGHT_BIN` is started on a free
//! loopback port with the memory store, so that what is measured is the
//! HTTP layer — routing, JSON, the claim handler — and not a database.
//!
//! - Claims: 64 callers share one keep-alive client and `POST
//!   /v1/requests/{key}/claim`, on one hot completed key (the cache hit,
//!   200) and on fresh keys (201); the baseline is `GET /healthz` of the same
//!   server through the same client and callers, which costs the same
//!   connection handling and nothing else. Client and server share this
//!   machine's cores, as they would on one host.
//! - Long-poll capacity: `N` concurrent `GET /v1/requests/{key}?wait_ms=60000`
//!   on one key whose job is in flight, held by a fresh server; its resident
//!   memory growth divided by `N` is what a waiter costs. Then the key is
//!   completed and every held request must be answered with the completed
//!   record: the time from `complete` to each answer is recorded too.
//!
//! - Hits through a hit cache: a server on Postgres (`DATABASE_URL`) with
//!   `--hit-cache-max-stale-ms`, hot claims beside `GET /healthz` of that
//!   server (§9's HTTP target for cached hits: ≥ 0.9 × the bare route).
//!
//! Without `ONCEFLIGHT_BIN` the benchmark is skipped loudly, unless
//! `ONCEFLIGHT_REQUIRE_BACKENDS=1` (`cargo xtask bench` builds the binary
//! and sets both).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use criterion::Criterion;
use onceflight_benches::load::{self, Series, Shared};
use onceflight_benches::report::{self, Figure};
use onceflight_benches::{criterion, quick, runtime, stores};
use onceflight_test_support::env;
use onceflight_test_support::server::{Launch, Server};
use reqwest::header::CONTENT_TYPE;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::runtime::Runtime;
use tokio::sync::Semaphore;

const BENCH: &str = "http";
const STORE: &str = "http (memory store)";
const CLAIMS_GROUP: &str = "HTTP: claims through the server";
const POLLS_GROUP: &str = "HTTP: long-poll capacity";
const BASELINE: &str = "GET /healthz (bare route, same server)";

/// Concurrent callers of the claims figures.
const CALLERS: usize = 64;

/// The completed key every hot claim hits (no character needs encoding).
const HOT_KEY: &str = "bench-hot";

/// Every claim's body: the smallest valid one.
const CLAIM_BODY: &str = r#"{"kind":"image"}"#;

/// How long the server may take to answer `/readyz`.
const STARTUP: Duration = Duration::from_secs(30);

/// How long held long-polls may take to be answered once the key completes.
const ANSWER_WITHIN: Duration = Duration::from_secs(30);

/// Long-poll connections opened at once: enough to fill the server quickly,
/// few enough not to overflow its accept backlog.
const CONNECTING: usize = 256;

/// File descriptors left for everything but the long-poll sockets, in this
/// process and in the server (which inherits this process's limit).
const SPARE_FILES: usize = 200;

fn main() {
    let Some(binary) = server_binary() else {
        return;
    };
    let runtime = runtime();
    let mut criterion = criterion();

    let server = runtime.block_on(start_server(&binary));
    claims(&mut criterion, &runtime, &server);
    drop(server);

    if let Some(server) = runtime.block_on(start_cached_server(&binary)) {
        cached_hits(&mut criterion, &runtime, &server);
        drop(server);
    }

    // A fresh server, so that memory the claims freed cannot hide what the
    // waiters cost.
    let server = runtime.block_on(start_server(&binary));
    runtime.block_on(long_polls(&server));
    drop(server);

    criterion.final_summary();
}

/// Claims on a hot completed key and on fresh keys, beside `GET /healthz`.
fn claims(criterion: &mut Criterion, runtime: &Runtime, server: &Server) {
    let client = claims_client();
    let (hot, bare) = runtime.block_on(hot_and_bare(&client, server));
    let (fresh_url, run) = (
        server.url("/v1/requests/bench-fresh-"),
        stores::unique("run"),
    );
    let fresh = Endpoint::new(
        &client,
        server,
        Method::POST,
        StatusCode::CREATED,
        move |i| format!("{fresh_url}{i}-{run}/claim"),
    );
    let (hot_series, bare_series, fresh_series) = (load::series(), load::series(), load::series());

    bench_endpoints(
        criterion,
        runtime,
        "http_claims",
        &[
            ("hot completed key: POST claim", &hot, &hot_series),
            ("GET /healthz (baseline)", &bare, &bare_series),
            // Last: every fresh claim leaves a record in the server.
            ("fresh keys: POST claim", &fresh, &fresh_series),
        ],
    );

    let mut bare_series = bare_series.lock();
    let (bare_p50, bare_p99) = (
        bare_series.percentile_us(0.5),
        bare_series.percentile_us(0.99),
    );
    let (bare_server_us, bare_client_us) = bare.cpu_per_request_us();
    let figure = |name: &str, endpoint: &Endpoint, series: &Shared, target: bool, what: &str| {
        let mut series = series.lock();
        let (server_us, client_us) = endpoint.cpu_per_request_us();
        report::figure(&Figure {
            bench: BENCH,
            group: CLAIMS_GROUP.to_owned(),
            name: name.to_owned(),
            store: STORE.to_owned(),
            concurrency: Some(CALLERS),
            unit: "req/s",
            higher_is_better: true,
            ours: series.throughput(),
            baseline: Some(bare_series.throughput()),
            baseline_name: Some(BASELINE.to_owned()),
            target: target.then_some(0.5),
            limit: None,
            target_text: target.then(|| "≥ 0.5 × bare route (§9)".to_owned()),
            p50_us: series.percentile_us(0.5),
            p99_us: series.percentile_us(0.99),
            baseline_p50_us: bare_p50,
            baseline_p99_us: bare_p99,
            note: Some(format!(
                "{what}, by {CALLERS} callers over one keep-alive reqwest client. CPU per \
                 request: server {server_us:.1} µs (GET /healthz {bare_server_us:.1} µs), client \
                 {client_us:.1} µs (GET /healthz {bare_client_us:.1} µs) — client and server share \
                 this machine's cores"
            )),
        });
    };
    figure(
        "claim, hot completed key",
        &hot,
        &hot_series,
        true,
        "POST /v1/requests/bench-hot/claim {\"kind\":\"image\"} answered 200 with the \
         completed record",
    );
    figure(
        "claim, fresh keys",
        &fresh,
        &fresh_series,
        false,
        "POST /v1/requests/bench-fresh-<i>-<run>/claim {\"kind\":\"image\"} on a new key \
         each time, answered 201 acquired (the leases are left to expire)",
    );

    check_answered(
        STORE,
        &[
            ("hot-key claims not answered 200", &hot),
            ("GET /healthz not answered 200", &bare),
            ("fresh-key claims not answered 201", &fresh),
        ],
    );
}

/// The store of the hit-cache figures and its label, from `DATABASE_URL`.
const CACHED_STORE: &str = "http (postgres, hit cache)";

/// `onceflight serve` on Postgres (`DATABASE_URL`, a fresh schema) with a
/// hit cache, or `None` after saying loudly that the figure is skipped.
async fn start_cached_server(binary: &Path) -> Option<Server> {
    let database = stores::Pg::Fast.url()?;
    let schema = stores::unique("http_cache");
    Some(
        Launch::new(binary)
            .args(&[
                "--store",
                &database,
                "--pg-schema",
                &schema,
                "--hit-cache-max-stale-ms",
                "1000",
            ])
            .env("RUST_LOG", "warn")
            .ready_when("/readyz", STARTUP)
            .start()
            .await,
    )
}

/// Hot claims through a server whose store is Postgres, answered from its
/// hit cache, beside `GET /healthz` of the same server: the HTTP layer is
/// all that is left of a hit.
fn cached_hits(criterion: &mut Criterion, runtime: &Runtime, server: &Server) {
    let client = claims_client();
    let (hot, bare) = runtime.block_on(hot_and_bare(&client, server));
    let (hot_series, bare_series) = (load::series(), load::series());
    bench_endpoints(
        criterion,
        runtime,
        "http_claims_hit_cache",
        &[
            ("hot completed key: POST claim", &hot, &hot_series),
            ("GET /healthz (baseline)", &bare, &bare_series),
        ],
    );
    let (mut ours, mut base) = (hot_series.lock(), bare_series.lock());
    report::figure(&Figure {
        bench: BENCH,
        group: CLAIMS_GROUP.to_owned(),
        name: "claim, hot completed key, hit cache".to_owned(),
        store: CACHED_STORE.to_owned(),
        concurrency: Some(CALLERS),
        unit: "req/s",
        higher_is_better: true,
        ours: ours.throughput(),
        baseline: Some(base.throughput()),
        baseline_name: Some(BASELINE.to_owned()),
        target: Some(0.9),
        target_text: Some("≥ 0.9 × bare route: hits answered in process".to_owned()),
        p50_us: ours.percentile_us(0.5),
        p99_us: ours.percentile_us(0.99),
        baseline_p50_us: base.percentile_us(0.5),
        baseline_p99_us: base.percentile_us(0.99),
        note: Some(format!(
            "the server on Postgres with --hit-cache-max-stale-ms 1000, by {CALLERS} callers \
             over one keep-alive reqwest client"
        )),
        ..Figure::default()
    });
    check_answered(
        CACHED_STORE,
        &[
            ("hit-cache claims not answered 200", &hot),
            ("GET /healthz not answered 200", &bare),
        ],
    );
}

/// Times each endpoint's load as a function of criterion's `group`.
fn bench_endpoints(
    criterion: &mut Criterion,
    runtime: &Runtime,
    group: &str,
    endpoints: &[(&str, &Endpoint, &Shared)],
) {
    let mut group = criterion.benchmark_group(group);
    for &(name, endpoint, series) in endpoints {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| runtime.block_on(endpoint.load(iters, series)));
        });
    }
    group.finish();
}

/// Checks that every request each endpoint sent was answered as expected.
fn check_answered(store: &str, endpoints: &[(&str, &Endpoint)]) {
    for &(what, endpoint) in endpoints {
        report::check_eq(
            BENCH,
            what,
            store,
            endpoint.wrong.load(Ordering::Relaxed) as f64,
            0.0,
            &format!(
                "of {} requests (criterion's warm-up included)",
                endpoint.sent.load(Ordering::Relaxed)
            ),
        );
    }
}

/// The client of the claims figures: keep-alive connections for every
/// caller. Idle connections are dropped before the server's header timeout
/// (10 s) closes them, which could fail a request sent at that moment.
fn claims_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(CALLERS)
        .pool_idle_timeout(Duration::from_secs(4))
        .timeout(Duration::from_secs(30))
        .build()
        .expect("an HTTP client")
}

/// Completes the hot key on `server`; then its claims (answered 200) and
/// the bare route `GET /healthz`.
async fn hot_and_bare(client: &reqwest::Client, server: &Server) -> (Endpoint, Endpoint) {
    complete_hot_key(client, server).await;
    let hot_url = server.url(&format!("/v1/requests/{HOT_KEY}/claim"));
    let hot = Endpoint::new(client, server, Method::POST, StatusCode::OK, move |_| {
        hot_url.clone()
    });
    let bare_url = server.url("/healthz");
    let bare = Endpoint::new(client, server, Method::GET, StatusCode::OK, move |_| {
        bare_url.clone()
    });
    (hot, bare)
}

/// Claims `bench-hot` and completes it, then checks that a claim answers
/// the completed record.
async fn complete_hot_key(client: &reqwest::Client, server: &Server) {
    let claim_url = server.url(&format!("/v1/requests/{HOT_KEY}/claim"));
    let acquired = post_json(client, &claim_url, &json!({"kind": "image"})).await;
    assert_eq!(
        acquired.0,
        StatusCode::CREATED,
        "claim {HOT_KEY}: {}",
        acquired.1
    );
    let token = acquired.1["token"].clone();
    let done = post_json(
        client,
        &server.url(&format!("/v1/requests/{HOT_KEY}/complete")),
        &json!({"token": token, "result": {"url": "x"}}),
    )
    .await;
    assert_eq!(done.0, StatusCode::OK, "complete {HOT_KEY}: {}", done.1);
    let hit = post_json(client, &claim_url, &json!({"kind": "image"})).await;
    assert!(
        hit.0 == StatusCode::OK
            && hit.1["state"] == "completed"
            && hit.1["result"] == json!({"url": "x"}),
        "a claim of the completed {HOT_KEY} answers 200 with its result, got {} {}",
        hit.0,
        hit.1
    );
}

/// One kind of request the load sends: how many were sent, how many were
/// not answered as expected, and the CPU time spent on them.
struct Endpoint {
    client: reqwest::Client,
    /// `POST` (with the claim body) or `GET`.
    method: Method,
    expected: StatusCode,
    /// The URL of the `i`th request.
    url: Arc<dyn Fn(u64) -> String + Send + Sync>,
    server_pid: u32,
    /// Requests sent so far, which also numbers fresh keys.
    sent: Arc<AtomicU64>,
    wrong: Arc<AtomicU64>,
    /// CPU time of the server and of this process while the load ran,
    /// clock ticks.
    server_ticks: AtomicU64,
    client_ticks: AtomicU64,
}

impl Endpoint {
    fn new(
        client: &reqwest::Client,
        server: &Server,
        method: Method,
        expected: StatusCode,
        url: impl Fn(u64) -> String + Send + Sync + 'static,
    ) -> Self {
        Self {
            client: client.clone(),
            method,
            expected,
            url: Arc::new(url),
            server_pid: server.pid(),
            sent: Arc::default(),
            wrong: Arc::default(),
            server_ticks: AtomicU64::new(0),
            client_ticks: AtomicU64::new(0),
        }
    }

    /// Sends `ops` requests over [`CALLERS`] callers; returns the wall time.
    async fn load(&self, ops: u64, series: &Shared) -> Duration {
        let (client, method, expected, url) = (
            self.client.clone(),
            self.method.clone(),
            self.expected,
            Arc::clone(&self.url),
        );
        let (sent, wrong) = (Arc::clone(&self.sent), Arc::clone(&self.wrong));
        let (server_before, client_before) = (cpu_ticks(self.server_pid), own_cpu_ticks());
        let elapsed = load::run(CALLERS, ops, series, move |_| {
            let (client, method, url, sent, wrong) = (
                client.clone(),
                method.clone(),
                Arc::clone(&url),
                Arc::clone(&sent),
                Arc::clone(&wrong),
            );
            async move {
                let mut request =
                    client.request(method.clone(), url(sent.fetch_add(1, Ordering::Relaxed)));
                if method == Method::POST {
                    request = request
                        .header(CONTENT_TYPE, "application/json")
                        .body(CLAIM_BODY);
                }
                let answered = match request.send().await {
                    // The body is read so that the connection is reused.
                    Ok(response) => response.status() == expected && response.bytes().await.is_ok(),
                    Err(_) => false,
                };
                if !answered {
                    wrong.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
        .await;
        self.server_ticks.fetch_add(
            cpu_ticks(self.server_pid).saturating_sub(server_before),
            Ordering::Relaxed,
        );
        self.client_ticks.fetch_add(
            own_cpu_ticks().saturating_sub(client_before),
            Ordering::Relaxed,
        );
        elapsed
    }

    /// CPU time per request of the server and of this process (the
    /// client), µs.
    fn cpu_per_request_us(&self) -> (f64, f64) {
        let sent = self.sent.load(Ordering::Relaxed).max(1) as f64;
        let us = |ticks: &AtomicU64| ticks.load(Ordering::Relaxed) as f64 * 1e6 / USER_HZ / sent;
        (us(&self.server_ticks), us(&self.client_ticks))
    }
}

/// Holds `N` long-polls on one in-flight key, measures the server's memory
/// before and while it holds them, then completes the key and checks that
/// every one is answered.
async fn long_polls(server: &Server) {
    let wanted = if quick() { 1_000 } else { 10_000 };
    let files = open_files_limit();
    let n = wanted.min(files.saturating_sub(SPARE_FILES));
    if n < wanted {
        eprintln!(
            "http: holding {n} long-polls instead of {wanted}: the open files limit is {files}"
        );
    }
    let client = reqwest::Client::new();
    let key = stores::unique("bench-poll");
    let acquired = post_json(
        &client,
        &server.url(&format!("/v1/requests/{key}/claim")),
        &json!({"kind": "image", "lease_ms": 60_000}),
    )
    .await;
    assert_eq!(
        acquired.0,
        StatusCode::CREATED,
        "claim {key}: {}",
        acquired.1
    );
    let token = acquired.1["token"].clone();

    let pid = server.pid();
    let (rss_before, files_before) = (settled_rss(pid).await, open_files(pid));
    let request: Arc<[u8]> = format!(
        "GET /v1/requests/{key}?wait_ms=60000 HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        server.addr()
    )
    .into_bytes()
    .into();
    let (gate, sent) = (
        Arc::new(Semaphore::new(CONNECTING)),
        Arc::new(AtomicUsize::new(0)),
    );
    let mut polls: Vec<_> = (0..n)
        .map(|_| {
            let (request, gate, sent) =
                (Arc::clone(&request), Arc::clone(&gate), Arc::clone(&sent));
            tokio::spawn(long_poll(server.addr(), request, gate, sent))
        })
        .collect();

    // Held once every request is written, the server has accepted every
    // connection, and its memory has stopped growing. (The server counts
    // long-polls only once they end, so its metrics cannot say.)
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last_rss = 0;
    let mut steady = 0;
    let rss_held = loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let written = sent.load(Ordering::Relaxed);
        let accepted = open_files(pid).saturating_sub(files_before);
        let rss = rss_of(pid);
        let stable = written == n && accepted >= n && rss.abs_diff(last_rss) <= 64 * 1024;
        steady = if stable { steady + 1 } else { 0 };
        if steady >= 3 {
            break rss;
        }
        assert!(
            Instant::now() < deadline,
            "the long-polls were not all held within 60 s: {written} of {n} written, {accepted} \
             connections accepted, resident memory {rss} bytes (was {} bytes)\n{}",
            rss_before,
            server.logs()
        );
        last_rss = rss;
    };
    let held = polls.iter().filter(|poll| !poll.is_finished()).count();

    let completed_at = Instant::now();
    let done = post_json(
        &client,
        &server.url(&format!("/v1/requests/{key}/complete")),
        &json!({"token": token, "result": {"url": "x"}}),
    )
    .await;
    assert_eq!(done.0, StatusCode::OK, "complete {key}: {}", done.1);

    let answer_deadline = tokio::time::Instant::from_std(completed_at + ANSWER_WITHIN);
    let mut latencies = Vec::with_capacity(n);
    let mut failures = Vec::new();
    for poll in &mut polls {
        match tokio::time::timeout_at(answer_deadline, &mut *poll).await {
            Ok(Ok(Ok(answered_at))) => {
                latencies.push(answered_at.saturating_duration_since(completed_at))
            }
            Ok(Ok(Err(e))) => failures.push(e),
            Ok(Err(e)) => failures.push(format!("the task failed: {e}")),
            Err(_) => {
                poll.abort();
                failures.push(format!("no answer within {ANSWER_WITHIN:?}"));
            }
        }
    }
    let answered = latencies.len();
    let last_answer = latencies.iter().max().copied().unwrap_or_default();
    let mut answers = Series::default();
    answers.add(answered as u64, last_answer, latencies);

    report::figure(&Figure {
        bench: BENCH,
        group: POLLS_GROUP.to_owned(),
        name: "held long-polls".to_owned(),
        store: STORE.to_owned(),
        unit: "waiters",
        higher_is_better: true,
        ours: held as f64,
        p50_us: answers.percentile_us(0.5),
        p99_us: answers.percentile_us(0.99),
        note: Some(format!(
            "{n} GET /v1/requests/<key>?wait_ms=60000 on one in-flight key, held at once by \
             one server (memory store, --max-waiters 100000), each on its own connection; \
             p50/p99: time from sending complete to each held request's answer (the last after \
             {:.1} ms)",
            last_answer.as_secs_f64() * 1e3
        )),
        ..Figure::default()
    });
    report::figure(&Figure {
        bench: BENCH,
        group: POLLS_GROUP.to_owned(),
        name: "server memory per held long-poll".to_owned(),
        store: STORE.to_owned(),
        unit: "bytes/waiter",
        higher_is_better: false,
        ours: rss_held.saturating_sub(rss_before) as f64 / held.max(1) as f64,
        note: Some(format!(
            "growth of the server's resident memory (VmRSS) while it held {held} long-polls \
             ({} → {} KiB), divided by the waiters: connection, request and waiter state together",
            rss_before / 1024,
            rss_held / 1024
        )),
        ..Figure::default()
    });
    if let Some(first) = failures.first() {
        eprintln!(
            "http: {} long-polls not answered as expected, the first: {first}",
            failures.len()
        );
    }
    report::check_eq(
        BENCH,
        "long-polls answered after complete",
        STORE,
        answered as f64,
        n as f64,
        &format!("answered 200 with state completed within {ANSWER_WITHIN:?} of complete"),
    );
}

/// One long-poll on a connection of its own: connects (at most
/// [`CONNECTING`] at a time), writes `request`, and reads the answer.
/// Returns when the answer was read, if it is 200 with the completed record.
async fn long_poll(
    address: SocketAddr,
    request: Arc<[u8]>,
    gate: Arc<Semaphore>,
    sent: Arc<AtomicUsize>,
) -> Result<Instant, String> {
    let permit = gate.acquire_owned().await.map_err(|e| e.to_string())?;
    let mut stream = TcpStream::connect(address)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    stream
        .write_all(&request)
        .await
        .map_err(|e| format!("write: {e}"))?;
    drop(permit);
    sent.fetch_add(1, Ordering::Relaxed);

    let mut response = Vec::with_capacity(4096);
    let (head_end, body_len) = loop {
        if let Some(head_end) = find(&response, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&response[..head_end]).to_ascii_lowercase();
            let body_len = head.lines().find_map(|line| {
                line.strip_prefix("content-length:")
                    .and_then(|len| len.trim().parse::<usize>().ok())
            });
            break (head_end + 4, body_len);
        }
        if read_some(&mut stream, &mut response).await? == 0 {
            return Err("the connection closed before an answer".to_owned());
        }
    };
    // Without a length, the body ends with the connection.
    while body_len.is_none_or(|len| response.len() < head_end + len) {
        if read_some(&mut stream, &mut response).await? == 0 {
            break;
        }
    }
    let answered_at = Instant::now();
    let status_line = String::from_utf8_lossy(&response[..head_end])
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    let body: Value = serde_json::from_slice(&response[head_end..]).unwrap_or(Value::Null);
    if status_line.starts_with("HTTP/1.1 200") && body["state"] == "completed" {
        Ok(answered_at)
    } else {
        Err(format!("{status_line}: {body}"))
    }
}

async fn read_some(stream: &mut TcpStream, into: &mut Vec<u8>) -> Result<usize, String> {
    let mut chunk = [0; 4096];
    let read = stream
        .read(&mut chunk)
        .await
        .map_err(|e| format!("read: {e}"))?;
    into.extend_from_slice(&chunk[..read]);
    Ok(read)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// POSTs `body` as JSON; returns the status and the JSON answer.
async fn post_json(client: &reqwest::Client, url: &str, body: &Value) -> (StatusCode, Value) {
    let response = client
        .post(url)
        .json(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let status = response.status();
    let json = response.json().await.unwrap_or(Value::Null);
    (status, json)
}

/// The `onceflight` binary, or `None` after saying loudly that this
/// benchmark is skipped.
fn server_binary() -> Option<PathBuf> {
    match std::env::var_os("ONCEFLIGHT_BIN") {
        Some(path) if !path.is_empty() => Some(PathBuf::from(path)),
        _ => env::skip(
            "the HTTP benchmarks",
            "ONCEFLIGHT_BIN (set by `cargo xtask bench`, which builds the binary) is not set",
        ),
    }
}

/// `onceflight serve` with the memory store on a free loopback port, once
/// `/readyz` answers 200.
async fn start_server(binary: &Path) -> Server {
    Launch::new(binary)
        .args(&["--store", "memory://", "--max-waiters", "100000"])
        .env("RUST_LOG", "warn")
        .ready_when("/readyz", STARTUP)
        .start()
        .await
}

/// The soft limit on open files of this process (the server inherits it).
fn open_files_limit() -> usize {
    let limits = std::fs::read_to_string("/proc/self/limits").expect("read /proc/self/limits");
    limits
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))
        .and_then(|values| values.split_whitespace().next())
        .map(|soft| soft.parse().unwrap_or(usize::MAX))
        .expect("Max open files in /proc/self/limits (Linux only)")
}

/// How many files the process `pid` has open.
fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |entries| entries.count())
}

/// `VmRSS` of the process `pid`, bytes.
fn rss_of(pid: u32) -> u64 {
    onceflight_benches::resident_bytes(&pid.to_string())
}

/// The resident memory of `pid` once two readings 100 ms apart agree (or
/// after a second).
async fn settled_rss(pid: u32) -> u64 {
    let mut last = rss_of(pid);
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = rss_of(pid);
        if now == last {
            break;
        }
        last = now;
    }
    last
}

/// Clock ticks a second in `/proc/<pid>/stat`: `USER_HZ`, 100 on every
/// Linux architecture.
const USER_HZ: f64 = 100.0;

/// CPU time (user and system) of every thread of the process `pid` so far,
/// clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    stat_cpu_ticks(&format!("/proc/{pid}/stat"))
}

/// CPU time of this process so far, clock ticks.
fn own_cpu_ticks() -> u64 {
    stat_cpu_ticks("/proc/self/stat")
}

fn stat_cpu_ticks(path: &str) -> u64 {
    let stat = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    // The command name, in parentheses, may hold spaces: fields are counted
    // after it, from the third (`state`); utime and stime are the 14th and
    // 15th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    field(14)
        .zip(field(15))
        .map(|(user, system)| user + system)
        .unwrap_or_else(|| panic!("utime and stime in {path}"))
}
