//! Secrets never leak: store passwords and bearer tokens appear in
//! no log line, response body or header, metric, start-up error, `--help`
//! text or `Debug` output.
//!
//! The running-server cases start the real `onceflight` binary with
//! `RUST_LOG=trace` (human and JSON logs), drive every route with the right
//! token, a wrong one, none, and into every error (400, 401, 404, 405, 409,
//! 422), then stop it and grep everything it said for every secret. Each
//! secret is unique to its test, so a hit cannot be a coincidence.
//!
//! - Tokens: from `ONCEFLIGHT_TOKENS` and from a tokens file, on the memory
//!   store (always runs).
//! - Postgres (feature `postgres`, `DATABASE_URL`): the store URL and the
//!   LISTEN URL carry passwords. The machine's PostgreSQL trusts loopback
//!   (as the clusters `cargo xtask test` starts do), so a made-up password
//!   connects; a `DATABASE_URL` that already has a password has that
//!   password grepped instead.
//! - Redis (feature `redis`): a throw-away `redis-server --requirepass` of
//!   this test's own, so the password is checked by the server for real.
//!   Missing `redis-server` skips loudly, or fails under
//!   `ONCEFLIGHT_REQUIRE_BACKENDS=1`.
//! - Failing starts: unreachable, malformed, unknown-scheme and
//!   misconfigured store URLs with passwords, and bad token lists, must fail
//!   with a message that names the problem but not the secret.

mod common;

use std::fmt::Write as _;
use std::io::Write as _;
use std::time::Duration;

use common::{Launch, Server, free_port, onceflight};
use onceflight_core::testkit::unique_name;
use onceflight_server::auth::Tokens;
use onceflight_server::stores::{self, StoreOptions};
use onceflight_server::{AppState, Limits};
use reqwest::Method;
use serde_json::{Value, json};

/// A secret no other test or process uses: letters, digits and `_`, so it
/// reads the same raw, percent-encoded and JSON-escaped.
fn secret(what: &str) -> String {
    format!("S3cr3t{}", unique_name(what).replace('_', "X"))
}

/// Asserts that no secret appears in `text`; `what` says where it came from.
#[track_caller]
fn assert_no_secret(what: &str, text: &str, secrets: &[&str]) {
    for secret in secrets {
        // Long secrets are also looked for in halves, so a cut-off or
        // wrapped echo is caught too.
        let half = &secret[..secret.len() / 2];
        assert!(
            !text.contains(secret) && !text.contains(half),
            "{what} shows the secret {secret:?}:\n{text}"
        );
    }
}

/// Everything a client saw of one response: status line, headers and body.
async fn exchange(
    client: &reqwest::Client,
    method: Method,
    url: &str,
    authorization: Option<&str>,
    body: Option<Value>,
) -> (u16, Value, String) {
    let mut request = client.request(method.clone(), url);
    if let Some(authorization) = authorization {
        request = request.header("authorization", authorization);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = response.status();
    let mut seen = format!("{method} {url} -> {status}\n");
    for (name, value) in response.headers() {
        let _ = writeln!(
            seen,
            "{name}: {}",
            String::from_utf8_lossy(value.as_bytes())
        );
    }
    let text = response.text().await.unwrap_or_default();
    seen.push_str(&text);
    assert!(
        !status.is_server_error(),
        "{method} {url}: no 5xx here, got {seen}"
    );
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    (status.as_u16(), json, seen)
}

/// Drives every route of `server`, with each of `tokens` (right ones),
/// near-misses of them, none, and into every error the API has. Returns all
/// that the client saw (status lines, headers, bodies).
async fn exercise(server: &Server, tokens: &[&str]) -> String {
    let client = common::client();
    let mut seen = String::new();
    for path in ["/healthz", "/readyz", "/metrics", "/openapi.json", "/nope"] {
        let (_, _, text) = exchange(&client, Method::GET, &server.url(path), None, None).await;
        seen.push_str(&text);
    }
    let mut headers: Vec<Option<String>> = vec![
        None,
        Some("Bearer".to_owned()),
        Some("Bearer not-a-configured-token".to_owned()),
    ];
    for token in tokens {
        headers.push(Some(format!("Bearer {token}")));
        // Near misses carry the secret itself: an error that echoed the
        // header would show it.
        headers.push(Some(format!("Bearer {token}x")));
        headers.push(Some(format!("Bearer x{token}")));
        headers.push(Some(format!("Basic {token}")));
        headers.push(Some((*token).to_owned()));
    }
    for authorization in &headers {
        let auth = authorization.as_deref();
        let key = server.url(&format!("/v1/requests/{}", unique_name("k")));
        let mut call = async |method: Method, url: String, body: Option<Value>| {
            let (status, json, text) = exchange(&client, method, &url, auth, body).await;
            seen.push_str(&text);
            seen.push('\n');
            (status, json)
        };
        let (status, claimed) = call(
            Method::POST,
            format!("{key}/claim"),
            Some(json!({"kind": "s", "fingerprint": "f", "owner": "w"})),
        )
        .await;
        // The right tokens are served, everything else is refused: the
        // secrets were really in use.
        let expected = if tokens
            .iter()
            .any(|t| authorization.as_deref() == Some(format!("Bearer {t}").as_str()))
        {
            201
        } else {
            401
        };
        assert_eq!(
            status, expected,
            "a claim with `Authorization: {authorization:?}`: {claimed}"
        );
        let token = claimed["token"].as_u64().unwrap_or(1);
        if status == 201 {
            // 202 in flight, 422 mismatch, 409 lost, 400 bad input.
            call(
                Method::POST,
                format!("{key}/claim"),
                Some(json!({"kind": "s"})),
            )
            .await;
            call(
                Method::POST,
                format!("{key}/claim"),
                Some(json!({"kind": "s", "fingerprint": "g"})),
            )
            .await;
            call(
                Method::POST,
                format!("{key}/complete"),
                Some(json!({"token": token + 1, "result": 1})),
            )
            .await;
            call(
                Method::POST,
                format!("{key}/heartbeat"),
                Some(json!({"token": "nope"})),
            )
            .await;
        }
        call(
            Method::POST,
            format!("{key}/heartbeat"),
            Some(json!({"token": token, "lease_ms": 60_000})),
        )
        .await;
        call(
            Method::POST,
            format!("{key}/complete"),
            Some(json!({"token": token, "result": {"ok": true}})),
        )
        .await;
        call(Method::GET, key.clone(), None).await;
        call(Method::GET, format!("{key}?wait_ms=20"), None).await;
        call(Method::GET, format!("{key}?wait_ms=999999"), None).await;
        call(Method::PUT, key.clone(), None).await;
        call(Method::DELETE, key.clone(), None).await;
        call(Method::DELETE, key.clone(), None).await;
        call(Method::GET, key.clone(), None).await;
        let (_, claimed) = call(
            Method::POST,
            format!("{key}/claim"),
            Some(json!({"kind": "s"})),
        )
        .await;
        let token = claimed["token"].as_u64().unwrap_or(1);
        call(
            Method::POST,
            format!("{key}/fail"),
            Some(json!({"token": token, "message": "boom", "retryable": true})),
        )
        .await;
        call(
            Method::POST,
            format!("{key}/release"),
            Some(json!({"token": token})),
        )
        .await;
        call(
            Method::POST,
            server.url("/v1/requests/%00/claim"),
            Some(json!({"kind": "s"})),
        )
        .await;
        call(
            Method::POST,
            format!("{key}/claim"),
            Some(json!({"kind": "s", "unknown": 1})),
        )
        .await;
        call(Method::GET, server.url("/v1/nope"), None).await;
    }
    let (_, _, metrics) = exchange(&client, Method::GET, &server.url("/metrics"), None, None).await;
    assert!(
        metrics.contains("onceflight_claims"),
        "the metrics are there to grep: {metrics}"
    );
    seen.push_str(&metrics);
    seen
}

/// Writes `text` to a fresh file and returns its path.
fn temp_file(what: &str, text: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("{}.txt", unique_name(what)));
    let mut file = std::fs::File::create(&path).expect("create a temporary file");
    file.write_all(text.as_bytes())
        .expect("write a temporary file");
    path
}

/// Starts `launch` with `RUST_LOG=trace`, exercises it with `tokens`, stops
/// it, and asserts that none of `secrets` shows in anything it answered or
/// logged; returns its logs.
async fn run_and_grep(launch: Launch, tokens: &[&str], secrets: &[&str]) -> String {
    let mut server = launch.env("RUST_LOG", "trace").start().await;
    let seen = exercise(&server, tokens).await;
    server.terminate().await;
    let logs = server.logs();
    assert!(
        logs.contains("onceflight listening"),
        "the server logged its start, so the logs are there to grep:\n{logs}"
    );
    assert_no_secret("the responses", &seen, secrets);
    assert_no_secret("the logs", &logs, secrets);
    logs
}

/// Bearer tokens from `ONCEFLIGHT_TOKENS` and from a tokens file never show,
/// with human and with JSON logs.
#[tokio::test]
async fn bearer_tokens_never_show() {
    for format in ["human", "json"] {
        let env_token = secret("envtok");
        let file_token = secret("filetok");
        let file = temp_file("tokens", &format!("# tenants\nb {file_token}\n"));
        let launch = Launch::new()
            .env("ONCEFLIGHT_TOKENS", &format!("a:{env_token}"))
            .args(&[
                "--tokens-file",
                file.to_str().expect("a UTF-8 path"),
                "--log-format",
                format,
            ]);
        let logs = run_and_grep(
            launch,
            &[&env_token, &file_token],
            &[&env_token, &file_token],
        )
        .await;
        if format == "json" {
            assert!(
                logs.lines().any(|l| l.trim_start().starts_with('{')),
                "--log-format json writes JSON lines:\n{logs}"
            );
        }
        let _ = std::fs::remove_file(file);
    }
}

/// A `DATABASE_URL` with a password of this test's own (or the one it has),
/// plus the secret given to the LISTEN URL, and the secret as a URL query
/// parameter.
#[cfg(feature = "postgres")]
fn postgres_url_with_password(url: &str, password: &str) -> (String, String) {
    let (scheme, rest) = url.split_once("://").expect("a postgres:// URL");
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    match authority.rsplit_once('@') {
        // It has a password already: that password is the secret.
        Some((userinfo, _)) if userinfo.contains(':') => {
            let existing = userinfo.split_once(':').map(|(_, p)| p).unwrap_or_default();
            (url.to_owned(), existing.to_owned())
        }
        Some((user, host)) => (
            format!("{scheme}://{user}:{password}@{host}{tail}"),
            password.to_owned(),
        ),
        None => {
            let joiner = if tail.contains('?') { '&' } else { '?' };
            (
                format!("{url}{joiner}password={password}"),
                password.to_owned(),
            )
        }
    }
}

/// The Postgres store's password (and the LISTEN URL's) never show.
#[cfg(feature = "postgres")]
#[tokio::test]
async fn postgres_password_never_shows() {
    let Some(database_url) = onceflight_core::testkit::backend_url("DATABASE_URL") else {
        return;
    };
    let (store_url, store_secret) = postgres_url_with_password(&database_url, &secret("pgpw"));
    let (listen_url, listen_secret) =
        postgres_url_with_password(&database_url, &secret("pglisten"));
    assert!(
        store_secret.len() >= 8,
        "DATABASE_URL's own password is too short to grep for reliably"
    );
    let token = secret("pgtok");
    for format in ["human", "json"] {
        let launch = Launch::new()
            .env("ONCEFLIGHT_TOKENS", &format!("a:{token}"))
            .env("ONCEFLIGHT_PG_LISTEN_URL", &listen_url)
            .args(&[
                "--store",
                &store_url,
                "--pg-schema",
                &unique_name("t_secrets"),
                "--log-format",
                format,
            ]);
        let logs = run_and_grep(launch, &[&token], &[&store_secret, &listen_secret, &token]).await;
        assert!(
            logs.contains("postgres"),
            "the store is described in the logs, credentials removed:\n{logs}"
        );
        assert!(
            logs.contains("sqlx::query"),
            "RUST_LOG=trace is in effect: sqlx logs every statement:\n{logs}"
        );
    }
}

/// A throw-away `redis-server` requiring a password, killed when dropped.
#[cfg(feature = "redis")]
struct PasswordRedis {
    child: std::process::Child,
    port: u16,
}

#[cfg(feature = "redis")]
impl PasswordRedis {
    /// Starts one on a free loopback port, or `None` (said loudly) when
    /// `redis-server` is not installed and backends are not required.
    fn start(password: &str) -> Option<Self> {
        let port = free_port();
        let spawned = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--requirepass", password])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(e) => {
                let required = std::env::var("ONCEFLIGHT_REQUIRE_BACKENDS").is_ok_and(|v| v == "1");
                assert!(
                    !required,
                    "redis-server cannot run ({e}) but ONCEFLIGHT_REQUIRE_BACKENDS=1: apt-get install redis-server"
                );
                let _ = writeln!(
                    std::io::stderr(),
                    "SKIPPED: redis-server cannot run ({e}); install redis-server to run this test"
                );
                return None;
            }
        };
        let redis = Self { child, port };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(redis)
    }
}

#[cfg(feature = "redis")]
impl Drop for PasswordRedis {
    fn drop(&mut self) {
        // Errors mean the process is gone already.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Redis store's password never shows, in either URL form (`:pw@` and
/// `user:pw@`).
#[cfg(feature = "redis")]
#[tokio::test]
async fn redis_password_never_shows() {
    let password = secret("redispw");
    let Some(redis) = PasswordRedis::start(&password) else {
        return;
    };
    let token = secret("redistok");
    for (format, url) in [
        (
            "human",
            format!("redis://:{password}@127.0.0.1:{}/", redis.port),
        ),
        (
            "json",
            format!("redis://default:{password}@127.0.0.1:{}/0", redis.port),
        ),
    ] {
        let launch = Launch::new()
            .env("ONCEFLIGHT_TOKENS", &format!("a:{token}"))
            .env("ONCEFLIGHT_STORE", &url)
            .args(&[
                "--redis-prefix",
                &format!("{}:", unique_name("t_secrets")),
                "--log-format",
                format,
            ]);
        let logs = run_and_grep(launch, &[&token], &[&password, &token]).await;
        assert!(
            logs.contains("redis"),
            "the store is described in the logs, credentials removed:\n{logs}"
        );
    }

    // A wrong password is a failed start that shows neither password.
    let wrong = secret("wrongpw");
    let url = format!("redis://:{wrong}@127.0.0.1:{}/", redis.port);
    let output = failed_start(&["serve", "--store", &url]).await;
    assert_no_secret(
        "a start with a wrong Redis password",
        &output,
        &[&wrong, &password],
    );
}

/// Runs `onceflight <args>` (with `envs`) that must fail: waits (bounded)
/// for its exit and returns its output.
async fn failed_start_with(args: &[&str], envs: &[(&str, &str)]) -> String {
    let mut launch = Launch::new().env("RUST_LOG", "trace");
    for (name, value) in envs {
        launch = launch.env(name, value);
    }
    // `Launch` runs `serve --bind <free port>` with these extra arguments;
    // a `migrate` is run by hand below.
    if args.first() == Some(&"migrate") {
        let mut command = onceflight(args);
        command.env("RUST_LOG", "trace");
        for (name, value) in envs {
            command.env(name, value);
        }
        let output = tokio::time::timeout(
            Duration::from_secs(60),
            tokio::task::spawn_blocking(move || command.output()),
        )
        .await
        .expect("onceflight migrate exits within 60 s")
        .expect("join")
        .expect("run onceflight migrate");
        assert!(!output.status.success(), "onceflight {args:?} must fail");
        return format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let mut server = launch.args(&args[1..]).spawn();
    let status = server.wait_exit(Duration::from_secs(60)).await;
    let logs = server.logs();
    assert!(
        !status.success(),
        "onceflight {args:?} must fail to start, exited {status}:\n{logs}"
    );
    assert!(
        logs.contains("Error"),
        "onceflight {args:?} says why it failed:\n{logs}"
    );
    logs
}

async fn failed_start(args: &[&str]) -> String {
    failed_start_with(args, &[]).await
}

/// Starts that fail — unreachable, malformed, unknown or misconfigured
/// stores whose URLs carry passwords, and bad token lists — say why without
/// the secret.
#[tokio::test]
async fn failing_starts_never_show_a_secret() {
    let pw = secret("startpw");
    let pw2 = secret("listenpw");
    // Nothing listens on a port that was free a moment ago: refused at
    // once, and nothing leaves the machine.
    let closed = free_port();
    let cases: Vec<Vec<String>> = vec![
        vec![format!("postgres://app:{pw}@127.0.0.1:{closed}/db")],
        vec![format!(
            "postgresql://app@127.0.0.1:{closed}/db?password={pw}&sslmode=disable"
        )],
        vec![format!("postgres://app:{pw}@127.0.0.1:notaport/db")],
        vec![format!("postgres://app:{pw}@[::1/db")],
        vec![
            format!("postgres://app:{pw}@127.0.0.1:{closed}/db"),
            "--pg-schema".to_owned(),
            "Bad-Schema;DROP".to_owned(),
        ],
        vec![
            format!("postgres://app:{pw}@127.0.0.1:{closed}/db"),
            "--pg-listen-url".to_owned(),
            format!("postgres://app:{pw2}@127.0.0.1:{closed}/db"),
        ],
        vec![format!("redis://:{pw}@127.0.0.1:{closed}/")],
        vec![format!("redis://app:{pw}@127.0.0.1:{closed}/0")],
        vec![format!("rediss://:{pw}@127.0.0.1:{closed}/")],
        vec![format!("redis://:{pw}@127.0.0.1:notaport/")],
        vec![format!(
            "redis://:{pw}@127.0.0.1:{closed},redis://:{pw2}@127.0.0.1:{}",
            free_port()
        )],
        vec![
            format!("redis://:{pw}@127.0.0.1:{closed}/"),
            "--redis-prefix".to_owned(),
            "{bad}".to_owned(),
        ],
        vec![format!("ftp://app:{pw}@127.0.0.1:{closed}/")],
        // Mistyped URLs: no scheme, and passwords with unencoded `,`, `/`,
        // `@` or `?`, which a URL parser reads as something else.
        vec![format!("app:{pw}@127.0.0.1")],
        vec![format!("postgres://app:{pw},x@127.0.0.1:{closed}/db")],
        vec![format!("postgres://app:{pw}/x@127.0.0.1:{closed}/db")],
        vec![format!("postgres://app:{pw}@x@127.0.0.1:{closed}/db")],
        vec![format!("postgres://app:{pw}?x@127.0.0.1:{closed}/db")],
        vec![format!("redis://:{pw},x@127.0.0.1:{closed}/")],
        vec![format!("redis://:{pw}/x@127.0.0.1:{closed}/")],
    ];
    for case in &cases {
        let mut args = vec!["serve", "--store"];
        args.extend(case.iter().map(String::as_str));
        let output = failed_start(&args).await;
        assert_no_secret(&format!("onceflight {args:?}"), &output, &[&pw, &pw2]);
        // The same store given through the environment.
        let mut env_args = vec!["serve"];
        env_args.extend(case[1..].iter().map(String::as_str));
        let output = failed_start_with(&env_args, &[("ONCEFLIGHT_STORE", &case[0])]).await;
        assert_no_secret(
            &format!("onceflight {env_args:?} with ONCEFLIGHT_STORE"),
            &output,
            &[&pw, &pw2],
        );
        if case.len() == 1 {
            let output = failed_start(&["migrate", "--store", &case[0]]).await;
            assert_no_secret(
                &format!("onceflight migrate {case:?}"),
                &output,
                &[&pw, &pw2],
            );
        }
    }

    // Bad token lists: the error names the entry, never a token.
    let good = secret("goodtok");
    let bad = secret("badtok");
    for list in [
        format!("a:{good},Bad-Namespace:{bad}"),
        format!("a:{good},b:{good}"),
        format!("a:{good},{bad}"),
        format!("a:{good},b:{bad} {bad}"),
        format!("a {good}"),
    ] {
        let output = failed_start_with(&["serve"], &[("ONCEFLIGHT_TOKENS", &list)]).await;
        assert_no_secret(
            &format!("ONCEFLIGHT_TOKENS={list:?}"),
            &output,
            &[&good, &bad],
        );
    }
    for text in [
        format!("a {good}\nBad-Namespace {bad}\n"),
        format!("a {good}\nb {good}\n"),
        format!("a:{good}\n"),
        format!("a {good}\n{bad}\n"),
    ] {
        let file = temp_file("badtokens", &text);
        let path = file.to_str().expect("a UTF-8 path").to_owned();
        let output = failed_start(&["serve", "--tokens-file", &path]).await;
        assert_no_secret(
            &format!("the tokens file {text:?}"),
            &output,
            &[&good, &bad],
        );
        let _ = std::fs::remove_file(file);
    }
}

/// `--help` never shows the secret values of the environment variables that
/// configure it.
#[tokio::test]
async fn help_never_shows_secret_environment_values() {
    let pw = secret("helppw");
    let token = secret("helptok");
    for args in [
        &["serve", "--help"][..],
        &["migrate", "--help"],
        &["--help"],
    ] {
        let mut command = onceflight(args);
        command
            .env("ONCEFLIGHT_STORE", format!("postgres://app:{pw}@db/x"))
            .env(
                "ONCEFLIGHT_PG_LISTEN_URL",
                format!("postgres://app:{pw}@db/x"),
            )
            .env("ONCEFLIGHT_TOKENS", format!("a:{token}"));
        let output = tokio::task::spawn_blocking(move || command.output())
            .await
            .expect("join")
            .expect("run onceflight --help");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(output.status.success(), "{args:?}: {text}");
        assert!(text.contains("Usage"), "{args:?} prints help: {text}");
        assert_no_secret(&format!("onceflight {args:?}"), &text, &[&pw, &token]);
    }
}

/// `Debug` and `Display` of the configuration and of start-up errors, and
/// of the service's whole state, leave secrets out.
#[tokio::test]
async fn debug_output_never_shows_a_secret() {
    let pw = secret("debugpw");
    let token = secret("debugtok");
    let secrets = [pw.as_str(), token.as_str()];

    let tokens = Tokens::from_env_list(&format!("a:{token}")).expect("valid tokens");
    assert_no_secret("Tokens", &format!("{tokens:?}"), &secrets);
    let tokens = Tokens::from_file_text(&format!("a {token}\n")).expect("valid tokens");
    assert_no_secret("Tokens from a file", &format!("{tokens:?}"), &secrets);
    for list in [
        format!("Bad:{token}"),
        format!("a:{token},b:{token}"),
        format!("a:{token},{token}"),
    ] {
        let error = Tokens::from_env_list(&list).expect_err("an invalid list");
        assert_no_secret("TokensError", &format!("{error} {error:?}"), &secrets);
    }

    let options = StoreOptions {
        pg_listen_url: Some(format!("postgres://app:{pw}@db/x")),
        pg_schema: Some("s".to_owned()),
        redis_prefix: Some("p:".to_owned()),
        ..StoreOptions::default()
    };
    assert_no_secret("StoreOptions", &format!("{options:?}"), &secrets);

    let closed = free_port();
    for url in [
        format!("postgres://app:{pw}@127.0.0.1:{closed}/db"),
        format!("postgres://app:{pw}@127.0.0.1:notaport/db"),
        format!("postgresql://app@127.0.0.1:{closed}/db?password={pw}"),
        format!("redis://:{pw}@127.0.0.1:{closed}/"),
        format!("redis://:{pw}@127.0.0.1:notaport/"),
        format!("redis://:{pw}@127.0.0.1:{closed},redis://:{pw}@127.0.0.1:{closed}"),
        format!("ftp://app:{pw}@host/"),
        format!("app:{pw}@host"),
        format!("postgres://app:{pw},x@127.0.0.1:{closed}/db"),
        format!("postgres://app:{pw}/x@127.0.0.1:{closed}/db"),
        format!("redis://:{pw}?x@127.0.0.1:{closed}/"),
    ] {
        let error = tokio::time::timeout(Duration::from_secs(60), stores::open(&url, &options))
            .await
            .expect("opening an unreachable store gives up within 60 s")
            .expect_err("nothing to connect to");
        let shown = format!("{error} | {error:?}");
        let error = anyhow::Error::new(error);
        let chain = format!("{error:#} | {error:?}");
        assert_no_secret("OpenStoreError", &format!("{shown} | {chain}"), &secrets);
    }

    let memory = stores::open("memory://", &StoreOptions::default())
        .await
        .expect("the memory store");
    let state = AppState::new(memory, tokens, Limits::default());
    assert_no_secret(
        "AppState",
        &format!("{state:?} {:?}", state.tokens()),
        &secrets,
    );
}

/// `Debug` of the Postgres configuration, of a connected store and of the
/// state serving it leave the passwords out.
#[cfg(feature = "postgres")]
#[tokio::test]
async fn postgres_debug_output_never_shows_a_password() {
    let Some(database_url) = onceflight_core::testkit::backend_url("DATABASE_URL") else {
        return;
    };
    let (url, pw) = postgres_url_with_password(&database_url, &secret("pgdebug"));
    let config = onceflight_store_postgres::PgConfig::new(url.as_str())
        .with_listen_url(url.as_str())
        .with_schema(unique_name("t_secrets"));
    assert_no_secret("PgConfig", &format!("{config:?}"), &[&pw]);
    let options = StoreOptions {
        pg_schema: Some(unique_name("t_secrets")),
        pg_listen_url: Some(url.clone()),
        pg_pool_size: Some(2),
        ..StoreOptions::default()
    };
    let store = stores::open(&url, &options).await.expect("open the store");
    assert_no_secret("PgStore", &format!("{store:?}"), &[&pw]);
    let state = AppState::new(store, Tokens::default(), Limits::default());
    assert_no_secret("AppState on Postgres", &format!("{state:?}"), &[&pw]);
}

/// `Debug` of the Redis configuration, of a connected store and of the
/// state serving it leave the password out.
#[cfg(feature = "redis")]
#[tokio::test]
async fn redis_debug_output_never_shows_a_password() {
    let pw = secret("redisdebug");
    let Some(redis) = PasswordRedis::start(&pw) else {
        return;
    };
    let url = format!("redis://:{pw}@127.0.0.1:{}/", redis.port);
    let config = onceflight_store_redis::RedisConfig::new(url.as_str());
    assert_no_secret("RedisConfig", &format!("{config:?}"), &[&pw]);
    let options = StoreOptions {
        redis_prefix: Some(format!("{}:", unique_name("t_secrets"))),
        ..StoreOptions::default()
    };
    let store = stores::open(&url, &options).await.expect("open the store");
    assert_no_secret("RedisStore", &format!("{store:?}"), &[&pw]);
    let state = AppState::new(store, Tokens::default(), Limits::default());
    assert_no_secret("AppState on Redis", &format!("{state:?}"), &[&pw]);
}
