//! Helpers shared by the server's integration tests: the real `onceflight`
//! binary as a process guard ([`Server`], started through [`Launch`]), JSON
//! requests against it ([`call`], [`Reply`]), and the service served
//! in-process on an ephemeral port ([`serve_in_process`]).

// Each test binary uses a part of these helpers.
#![allow(dead_code)]

pub(crate) mod fleet;
pub(crate) mod history;
#[cfg(feature = "client")]
pub(crate) mod over_http;
pub(crate) mod pg_cluster;
pub(crate) mod proxy;
pub(crate) mod redis_child;

use std::fs::File;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use onceflight_core::RequestStore;
use onceflight_server::auth::Tokens;
use onceflight_server::{AppState, Limits};
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// How long a server may take to be ready after it is spawned, unless its
/// [`Launch`] says otherwise.
pub(crate) const STARTUP: Duration = Duration::from_secs(20);

/// A port that was free a moment ago.
pub(crate) fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("a local address").port()
}

/// A log file no other server of this run writes.
fn log_path(what: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    std::env::temp_dir().join(format!(
        "onceflight-test-{what}-{}-{}.log",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

/// `onceflight <args>`, with stdin closed and none of the caller's
/// `ONCEFLIGHT_*` variables.
pub(crate) fn onceflight(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_onceflight"));
    command.args(args).stdin(Stdio::null());
    for (name, _) in std::env::vars() {
        if name.starts_with("ONCEFLIGHT_") {
            command.env_remove(name);
        }
    }
    command
}

/// How to start a `onceflight serve`: where it binds, its extra arguments and
/// environment, and what "ready" means.
#[derive(Debug, Clone)]
pub(crate) struct Launch {
    bind: Option<String>,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    ready_path: &'static str,
    startup: Duration,
}

impl Launch {
    /// `onceflight serve` on a free loopback port, with no extra arguments or
    /// environment, ready once `/healthz` answers 200 within [`STARTUP`].
    pub(crate) fn new() -> Self {
        Self {
            bind: None,
            args: Vec::new(),
            envs: Vec::new(),
            ready_path: "/healthz",
            startup: STARTUP,
        }
    }

    /// Binds `bind` (`host:port`) instead of a free loopback port.
    pub(crate) fn bind(mut self, bind: &str) -> Self {
        self.bind = Some(bind.to_owned());
        self
    }

    /// Appends `args` after `serve --bind <bind>`.
    pub(crate) fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|arg| (*arg).to_owned()));
        self
    }

    /// Sets the variable `name` to `value` in the server's environment.
    pub(crate) fn env(mut self, name: &str, value: &str) -> Self {
        self.envs.push((name.to_owned(), value.to_owned()));
        self
    }

    /// The server is ready once `path` answers 200, which it must do within
    /// `startup` of being spawned.
    pub(crate) fn ready_when(mut self, path: &'static str, startup: Duration) -> Self {
        self.ready_path = path;
        self.startup = startup;
        self
    }

    /// Spawns `onceflight serve --bind <bind> <args>` with the environment
    /// asked for; does not wait.
    pub(crate) fn spawn(self) -> Server {
        let bind = self
            .bind
            .unwrap_or_else(|| format!("127.0.0.1:{}", free_port()));
        let port = bind.rsplit(':').next().expect("host:port");
        let log = log_path("serve");
        let log_file = File::create(&log).expect("create the log file");
        let mut command = onceflight(&["serve", "--bind", &bind]);
        command
            .args(&self.args)
            .envs(self.envs)
            .stdout(log_file.try_clone().expect("clone the log file"))
            .stderr(log_file);
        let child = command.spawn().expect("spawn onceflight serve");
        Server {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log,
            ready_path: self.ready_path,
            startup: self.startup,
        }
    }

    /// Spawns the server and waits until it is ready.
    pub(crate) async fn start(self) -> Server {
        let mut server = self.spawn();
        server.wait_ready().await;
        server
    }
}

/// A running `onceflight serve`, killed when dropped. Its logs go to a file
/// so they can be shown when a test fails.
pub(crate) struct Server {
    child: Child,
    base: String,
    log: PathBuf,
    ready_path: &'static str,
    startup: Duration,
}

impl Server {
    /// Spawns a server as [`Launch::new`] describes and waits until it is up.
    pub(crate) async fn start() -> Self {
        Launch::new().start().await
    }

    /// Waits (bounded) until the ready path answers 200.
    pub(crate) async fn wait_ready(&mut self) {
        let client = client();
        let (path, startup) = (self.ready_path, self.startup);
        let deadline = Instant::now() + startup;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the server") {
                panic!(
                    "the server exited with {status} before it was ready:\n{}",
                    self.logs()
                );
            }
            if let Ok(response) = client.get(self.url(path)).send().await
                && response.status() == StatusCode::OK
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the server did not answer {path} with 200 within {startup:?}:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits (bounded) for the process to exit.
    pub(crate) async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
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

    /// Sends the process SIGTERM; does not wait.
    pub(crate) fn sigterm(&self) {
        let pid = self.child.id().to_string();
        let signalled = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(signalled.success(), "kill -TERM {pid}: {signalled}");
    }

    /// Waits (bounded) for the exit SIGTERM asks for, and asserts that it is
    /// a success.
    pub(crate) async fn expect_clean_exit(&mut self) {
        let status = self.wait_exit(Duration::from_secs(10)).await;
        assert!(
            status.success(),
            "the server exits successfully on SIGTERM, got {status}:\n{}",
            self.logs()
        );
    }

    /// SIGTERM, then waits (bounded) for a successful exit.
    pub(crate) async fn terminate(&mut self) {
        self.sigterm();
        self.expect_clean_exit().await;
    }

    /// The server's process id (for reading `/proc/<pid>`).
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The URL of `path` on this server.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Everything the server has logged so far.
    pub(crate) fn logs(&self) -> String {
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

/// An HTTP client with a 60 s timeout, which drops idle connections before
/// the server's header timeout closes them (a request sent just as the
/// server closes its connection would fail).
pub(crate) fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .pool_idle_timeout(Duration::from_secs(4))
        .build()
        .expect("an HTTP client")
}

/// A reply: status, headers, the body parsed as JSON (`Null` if it is none
/// or not JSON) and the body as text.
#[derive(Debug)]
pub(crate) struct Reply {
    /// The request, as `METHOD url`, for messages.
    pub(crate) what: String,
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) json: Value,
    /// The body as it came, for messages and for bodies that are not JSON.
    pub(crate) text: String,
}

impl Reply {
    /// The JSON body, after asserting that the status is `status`.
    #[track_caller]
    pub(crate) fn expect(&self, status: StatusCode) -> &Value {
        assert_eq!(
            self.status, status,
            "{}: expected {status}, got {} {}",
            self.what, self.status, self.text
        );
        &self.json
    }

    /// Asserts that the reply is the error `code` with `status`.
    #[track_caller]
    pub(crate) fn expect_error(&self, status: StatusCode, code: &str) {
        assert_eq!(
            (self.status, self.json["error"]["code"].as_str()),
            (status, Some(code)),
            "{}: expected {status} `{code}`, got {} {}",
            self.what,
            self.status,
            self.text
        );
    }

    /// The body's `token`, which must be there.
    #[track_caller]
    pub(crate) fn token(&self) -> u64 {
        self.json["token"]
            .as_u64()
            .unwrap_or_else(|| panic!("{}: no token in {}", self.what, self.text))
    }
}

/// Sends one request, with `body` as JSON and `bearer` as the token if given;
/// asserts that the answer is never a 5xx and that every error carries
/// `{"error": {"code", "message"}}`.
pub(crate) async fn call(
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
    let json = checked_json(&what, status.as_u16(), &text);
    Reply {
        what,
        status,
        headers,
        json,
        text,
    }
}

/// The body of an answer as JSON (`Null` if it is none), after asserting
/// that the answer is no 5xx and that a 4xx carries the §7 error body.
pub(crate) fn checked_json(what: &str, status: u16, text: &str) -> Value {
    let json = serde_json::from_str(text).unwrap_or(Value::Null);
    assert!(
        status < 500,
        "{what}: no response may be a 5xx here, got {status} {text}"
    );
    if (400..500).contains(&status) {
        assert!(
            json["error"]["code"].is_string() && json["error"]["message"].is_string(),
            "{what}: a {status} carries the error body, got {text}"
        );
    }
    json
}

/// Serves `store` with `tokens` and the default limits, in-process on an
/// ephemeral loopback port, for as long as the test's runtime lives. Returns
/// the service's base URL.
pub(crate) async fn serve_in_process(store: impl RequestStore, tokens: Tokens) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let address = listener.local_addr().expect("the bound address");
    let state = AppState::new(Arc::new(store), tokens, Limits::default());
    tokio::spawn(onceflight_server::serve(
        listener,
        state,
        std::future::pending(),
    ));
    format!("http://{address}")
}
