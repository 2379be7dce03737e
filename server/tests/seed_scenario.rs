//! End to end through the real `onceflight` binary: the incident of
//! `seed/000_11623b1c91619f4c.txt` replayed over HTTP, graceful shutdown with
//! a held long-poll, and the refusal to serve a non-loopback address without
//! tokens.
//!
//! Each test starts its own server on a free loopback port and kills it when
//! dropped.

use std::fs::File;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// The seed's request hash: `image|<sha256 of the prompt>`, here the SHA-256
/// of "a portrait of a dwarf ranger, oil painting".
const PROMPT_HASH: &str = "c1918bb1753c73c1bd2dba0d1eb6d2c9615753e5c99f54d106e28f5758ed2247";

/// How long a server may take to answer `/healthz` after it is spawned.
const STARTUP: Duration = Duration::from_secs(20);

/// A port that was free a moment ago.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("a local address").port()
}

/// A running `onceflight serve`, killed when dropped. Its logs go to a file
/// so they can be shown when a test fails.
struct Server {
    child: Child,
    base: String,
    log: PathBuf,
}

impl Server {
    /// Spawns `onceflight serve --bind <bind> <args>` with `envs` and none of
    /// the caller's `ONCEFLIGHT_*` variables.
    fn spawn(bind: &str, args: &[&str], envs: &[(&str, &str)]) -> Self {
        let port = bind.rsplit(':').next().expect("host:port");
        let log =
            std::env::temp_dir().join(format!("onceflight-e2e-{}-{port}.log", std::process::id()));
        let log_file = File::create(&log).expect("create the log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_onceflight"));
        command
            .args(["serve", "--bind", bind])
            .args(args)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("clone the log file"))
            .stderr(log_file);
        for (name, _) in std::env::vars() {
            if name.starts_with("ONCEFLIGHT_") {
                command.env_remove(name);
            }
        }
        command.envs(envs.iter().copied());
        let child = command.spawn().expect("spawn onceflight serve");
        Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log,
        }
    }

    /// Spawns a server on a free loopback port and waits until it is up.
    async fn start() -> Self {
        let mut server = Self::spawn(&format!("127.0.0.1:{}", free_port()), &[], &[]);
        server.wait_ready().await;
        server
    }

    /// Waits (bounded) until `/healthz` answers 200.
    async fn wait_ready(&mut self) {
        let client = client();
        let deadline = Instant::now() + STARTUP;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the server") {
                panic!(
                    "the server exited with {status} before it was ready:\n{}",
                    self.logs()
                );
            }
            if let Ok(response) = client.get(format!("{}/healthz", self.base)).send().await
                && response.status() == StatusCode::OK
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the server did not answer /healthz within {STARTUP:?}:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits (bounded) for the process to exit.
    async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the server") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the server was still running after {within:?}:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Errors mean the process is gone already.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("an HTTP client")
}

/// A reply: status, headers and the body parsed as JSON (`Null` if none).
#[derive(Debug)]
struct Reply {
    what: String,
    status: StatusCode,
    headers: HeaderMap,
    json: Value,
}

impl Reply {
    #[track_caller]
    fn expect(&self, status: StatusCode) -> &Value {
        assert_eq!(
            self.status, status,
            "{}: expected {status}, got {} {}",
            self.what, self.status, self.json
        );
        &self.json
    }

    #[track_caller]
    fn expect_error(&self, status: StatusCode, code: &str) {
        assert_eq!(
            (self.status, self.json["error"]["code"].as_str()),
            (status, Some(code)),
            "{}: expected {status} `{code}`, got {} {}",
            self.what,
            self.status,
            self.json
        );
    }

    #[track_caller]
    fn token(&self) -> u64 {
        self.json["token"]
            .as_u64()
            .unwrap_or_else(|| panic!("{}: no token in {}", self.what, self.json))
    }
}

/// Sends one request; asserts that the answer is never a 5xx and that every
/// error carries `{"error": {"code", "message"}}`.
async fn call(
    client: &reqwest::Client,
    method: Method,
    url: &str,
    body: Option<Value>,
    bearer: Option<&str>,
) -> Reply {
    let what = format!("{method} {url}");
    let mut request = client.request(method, url);
    if let Some(body) = body {
        request = request.json(&body);
    }
    if let Some(bearer) = bearer {
        request = request.bearer_auth(bearer);
    }
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let status = response.status();
    let headers = response.headers().clone();
    let text = response
        .text()
        .await
        .unwrap_or_else(|e| panic!("{what}: reading the body: {e}"));
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    assert!(
        !status.is_server_error(),
        "{what}: no response may be a 5xx here, got {status} {text}"
    );
    if status.is_client_error() {
        assert!(
            json["error"]["code"].is_string() && json["error"]["message"].is_string(),
            "{what}: a {status} carries the error body, got {text}"
        );
    }
    Reply {
        what,
        status,
        headers,
        json,
    }
}

/// The incident, replayed: worker A claims the image and dies; a retry during
/// A's lease is told the job is in flight instead of hitting a duplicate key;
/// once the lease expires the retry takes over; A's late result is refused;
/// and B's result is served to everyone after.
#[tokio::test]
async fn the_seed_incident_heals_itself() {
    let server = Server::start().await;
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
    let mut server = Server::start().await;
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

    let pid = server.child.id().to_string();
    let signalled = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("run kill");
    assert!(signalled.success(), "kill -TERM {pid}: {signalled}");
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

    let status = server.wait_exit(Duration::from_secs(10)).await;
    assert!(
        status.success(),
        "the server exits successfully on SIGTERM, got {status}:\n{}",
        server.logs()
    );
}

/// A non-loopback bind needs tokens (or an explicit flag).
#[tokio::test]
async fn a_public_bind_requires_tokens() {
    let port = free_port();
    let bind = format!("0.0.0.0:{port}");

    let mut refused = Server::spawn(&bind, &[], &[]);
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
    let mut server = Server::spawn(
        &bind,
        &[],
        &[("ONCEFLIGHT_TOKENS", &format!("ops:{token}"))],
    );
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
    let mut open = Server::spawn(&bind, &["--allow-unauthenticated"], &[]);
    open.wait_ready().await;
}
