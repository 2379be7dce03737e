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

#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "redis")]
mod redis;
mod starts;

use std::fmt::Write as _;
use std::io::Write as _;

use onceflight_test_support::unique_name;
use reqwest::Method;
use serde_json::{Value, json};

use crate::common::{self, Launch, Server};

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
        let launch = crate::common::launch()
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
