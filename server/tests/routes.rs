//! Route-level tests of the HTTP API (docs/protocol.md §7), without a socket: each
//! request goes through `app(state)` with `tower::ServiceExt::oneshot`.
//!
//! Every reply passes through [`Api::send`], which checks the invariants that
//! hold for every response: never a 500 (nor any 5xx but 503), and every
//! 4xx/5xx carries `{"error": {"code", "message"}}`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use onceflight_server::auth::Tokens;
use onceflight_server::{AppState, Limits, app};
use onceflight_store_memory::{MemoryConfig, MemoryStore};
use serde_json::{Value, json};
use tower::ServiceExt;

/// Every field §7 lists for a record body.
const RECORD_FIELDS: [&str; 15] = [
    "state",
    "key",
    "kind",
    "fingerprint",
    "token",
    "attempt",
    "owner",
    "lease_expires_at",
    "lease_expired",
    "result",
    "error",
    "created_at",
    "updated_at",
    "completed_at",
    "expires_at",
];

/// Record fields that change with the passing of time alone (extensions
/// counting down), left out when checking that a record did not change.
const TIME_VARYING: [&str; 2] = ["lease_ms", "retry_after_ms"];

const ALPHA: &str = "alpha-token-0123456789";
const BETA: &str = "beta-token-0123456789";

/// A reply: status, headers, the body parsed as JSON (`Null` when it is not
/// JSON) and the body as text.
#[derive(Debug)]
struct Reply {
    what: String,
    status: StatusCode,
    headers: HeaderMap,
    json: Value,
    text: String,
}

impl Reply {
    /// Asserts the status and returns the JSON body.
    #[track_caller]
    fn expect(&self, status: StatusCode) -> &Value {
        assert_eq!(
            self.status, status,
            "{}: expected {status}, got {} with body {}",
            self.what, self.status, self.text
        );
        &self.json
    }

    /// Asserts an error reply with `status` and `code`.
    #[track_caller]
    fn expect_error(&self, status: StatusCode, code: &str) {
        assert_eq!(
            (self.status, self.json["error"]["code"].as_str()),
            (status, Some(code)),
            "{}: expected {status} `{code}`, got {} with body {}",
            self.what,
            self.status,
            self.text
        );
    }

    /// The `token` of a claim or record body.
    #[track_caller]
    fn token(&self) -> u64 {
        self.json["token"]
            .as_u64()
            .unwrap_or_else(|| panic!("{}: no integer token in {}", self.what, self.text))
    }
}

/// The router under test, and the `Authorization` header sent with each
/// request.
#[derive(Clone)]
struct Api {
    app: Router,
    authorization: Option<String>,
}

impl Api {
    fn new() -> Self {
        Self::with(Tokens::default(), Limits::default())
    }

    fn with(tokens: Tokens, limits: Limits) -> Self {
        let store = Arc::new(MemoryStore::new(
            MemoryConfig::default().with_retention(Duration::from_secs(3600)),
        ));
        Self {
            app: app(AppState::new(store, tokens, limits)),
            authorization: None,
        }
    }

    /// The same router, called with `bearer` (or none).
    fn as_caller(&self, bearer: Option<&str>) -> Self {
        self.with_authorization(bearer.map(|b| format!("Bearer {b}")))
    }

    /// The same router, called with this `Authorization` header (or none).
    fn with_authorization(&self, authorization: Option<String>) -> Self {
        Self {
            app: self.app.clone(),
            authorization,
        }
    }

    /// Sends a request and checks the invariants of every response.
    async fn send(
        &self,
        method: Method,
        uri: &str,
        body: Option<Vec<u8>>,
        content_type: Option<&str>,
    ) -> Reply {
        let what = format!("{method} {uri}");
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(content_type) = content_type {
            request = request.header(header::CONTENT_TYPE, content_type);
        }
        if let Some(authorization) = &self.authorization {
            request = request.header(header::AUTHORIZATION, authorization);
        }
        let request = request
            .body(body.map_or_else(Body::empty, Body::from))
            .unwrap_or_else(|e| panic!("{what}: cannot build the request: {e}"));
        let response = self
            .app
            .clone()
            .oneshot(request)
            .await
            .unwrap_or_else(|e| panic!("{what}: the router failed: {e}"));
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response
            .into_body()
            .collect()
            .await
            .unwrap_or_else(|e| panic!("{what}: cannot read the body: {e}"))
            .to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let reply = Reply {
            what,
            status,
            headers,
            json,
            text,
        };
        check_invariants(&reply);
        reply
    }

    async fn post(&self, uri: &str, body: Value) -> Reply {
        let bytes = serde_json::to_vec(&body).expect("serializable");
        self.send(Method::POST, uri, Some(bytes), Some("application/json"))
            .await
    }

    async fn post_raw(&self, uri: &str, body: impl Into<Vec<u8>>) -> Reply {
        self.send(
            Method::POST,
            uri,
            Some(body.into()),
            Some("application/json"),
        )
        .await
    }

    async fn get(&self, uri: &str) -> Reply {
        self.send(Method::GET, uri, None, None).await
    }

    async fn delete(&self, uri: &str) -> Reply {
        self.send(Method::DELETE, uri, None, None).await
    }

    /// `POST /v1/requests/{key}/claim`; `key` is already percent-encoded.
    async fn claim(&self, key: &str, body: Value) -> Reply {
        self.post(&op(key, "claim"), body).await
    }

    /// Claims `key` and asserts it was acquired; returns the token.
    async fn acquire(&self, key: &str, body: Value) -> u64 {
        let reply = self.claim(key, body).await;
        reply.expect(StatusCode::CREATED);
        assert_eq!(reply.json["state"], "acquired", "{}", reply.text);
        reply.token()
    }

    /// `GET /v1/requests/{key}`.
    async fn record(&self, key: &str) -> Reply {
        self.get(&record_uri(key)).await
    }

    /// The record of `key` without the fields that count down with time, to
    /// check that an operation changed nothing.
    async fn snapshot(&self, key: &str) -> Value {
        let reply = self.record(key).await;
        let mut record = reply.expect(StatusCode::OK).clone();
        for field in TIME_VARYING {
            record.as_object_mut().expect("an object").remove(field);
        }
        record
    }

    /// How many operations have reached the store so far, read from the
    /// per-operation latency histograms of `/metrics`.
    async fn store_calls(&self) -> u64 {
        let reply = self.get("/metrics").await;
        reply.expect(StatusCode::OK);
        reply
            .text
            .lines()
            .filter(|line| line.starts_with("onceflight_store_operation_duration_seconds_count"))
            .map(|line| {
                line.rsplit(' ')
                    .next()
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or_else(|| panic!("unreadable metrics line {line:?}"))
            })
            .sum()
    }
}

fn op(key: &str, operation: &str) -> String {
    format!("/v1/requests/{key}/{operation}")
}

fn record_uri(key: &str) -> String {
    format!("/v1/requests/{key}")
}

/// What holds for every response of the service.
#[track_caller]
fn check_invariants(reply: &Reply) {
    assert_ne!(
        reply.status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "{}: a 500 is a bug (§7): {}",
        reply.what,
        reply.text
    );
    assert!(
        !reply.status.is_server_error() || reply.status == StatusCode::SERVICE_UNAVAILABLE,
        "{}: unexpected {}: {}",
        reply.what,
        reply.status,
        reply.text
    );
    if reply.status.is_client_error() || reply.status.is_server_error() {
        let error = &reply.json["error"];
        for field in ["code", "message"] {
            assert!(
                error[field].as_str().is_some_and(|s| !s.is_empty()),
                "{}: a {} must carry {{\"error\": {{\"code\", \"message\"}}}}, got {:?}",
                reply.what,
                reply.status,
                reply.text
            );
        }
        assert!(
            reply
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|ct| ct.to_str().ok())
                .is_some_and(|ct| ct.starts_with("application/json")),
            "{}: error bodies are JSON, got content-type {:?}",
            reply.what,
            reply.headers.get(header::CONTENT_TYPE)
        );
    }
}

/// Asserts `value` is an RFC 3339 UTC timestamp, e.g.
/// `2024-05-01T12:00:00.123Z`.
#[track_caller]
fn assert_timestamp(value: &Value, what: &str) {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("{what}: expected a timestamp, got {value}"));
    let bytes = text.as_bytes();
    let shaped = bytes.len() >= 20
        && text.ends_with('Z')
        && bytes[4] == b'-'
        && bytes[7] == b'-'
        && bytes[10] == b'T'
        && bytes[13] == b':'
        && bytes[16] == b':'
        && text[..4].bytes().all(|b| b.is_ascii_digit());
    assert!(shaped, "{what}: {text:?} is not RFC 3339 UTC");
}

/// Asserts `body` has every field of a §7 record body.
#[track_caller]
fn assert_record_fields(body: &Value, what: &str) {
    let object = body
        .as_object()
        .unwrap_or_else(|| panic!("{what}: a record must be an object, got {body}"));
    for field in RECORD_FIELDS {
        assert!(
            object.contains_key(field),
            "{what}: the record lacks `{field}` (absent values are null): {body}"
        );
    }
    assert_timestamp(&body["created_at"], what);
    assert_timestamp(&body["updated_at"], what);
}

#[tokio::test]
async fn claim_acquires_then_reports_in_flight() {
    let api = Api::new();
    let reply = api
        .claim(
            "image%7Cab",
            json!({"kind": "image", "owner": "worker-a", "lease_ms": 30000}),
        )
        .await;
    let body = reply.expect(StatusCode::CREATED);
    assert_eq!(body["state"], "acquired", "{body}");
    assert_eq!(body["key"], "image|ab", "{body}");
    assert!(body["token"].as_u64().is_some(), "token: {body}");
    assert_eq!(body["attempt"], 1, "{body}");
    assert_timestamp(&body["lease_expires_at"], "acquired.lease_expires_at");
    let lease_ms = body["lease_ms"].as_u64().expect("lease_ms is an integer");
    assert!(
        (29_000..=30_000).contains(&lease_ms),
        "lease_ms {lease_ms} for a 30 s lease"
    );
    assert_eq!(body["takeover"], false, "{body}");
    let token = reply.token();

    let reply = api
        .claim("image%7Cab", json!({"kind": "image", "owner": "worker-b"}))
        .await;
    let body = reply.expect(StatusCode::ACCEPTED);
    assert_eq!(body["state"], "in_flight", "{body}");
    assert_eq!(body["key"], "image|ab", "{body}");
    assert_eq!(body["token"], token, "the holder's token: {body}");
    assert_eq!(body["attempt"], 1, "{body}");
    assert_eq!(body["owner"], "worker-a", "the holder's owner: {body}");
    assert_timestamp(&body["lease_expires_at"], "in_flight.lease_expires_at");
    let left = body["retry_after_ms"]
        .as_u64()
        .expect("retry_after_ms is an integer");
    assert!(
        (1..=30_000).contains(&left),
        "retry_after_ms {left} is the time left on the lease"
    );
    let retry_after = reply
        .headers
        .get(header::RETRY_AFTER)
        .expect("a 202 in_flight carries Retry-After");
    let secs: u64 = retry_after
        .to_str()
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("Retry-After is whole seconds: {retry_after:?}"));
    assert!((1..=30).contains(&secs), "Retry-After {secs}");
}

#[tokio::test]
async fn complete_answers_the_record_and_later_claims_get_the_result() {
    let api = Api::new();
    let token = api.acquire("k", json!({"kind": "image"})).await;

    let reply = api
        .post(
            &op("k", "complete"),
            json!({"token": token, "result": {"url": "https://cdn/x.png", "n": [1, 2]}}),
        )
        .await;
    let record = reply.expect(StatusCode::OK);
    assert_record_fields(record, "complete");
    assert_eq!(record["state"], "completed", "{record}");
    assert_eq!(record["key"], "k", "{record}");
    assert_eq!(record["kind"], "image", "{record}");
    assert_eq!(record["token"], token, "{record}");
    assert_eq!(record["attempt"], 1, "{record}");
    assert_eq!(
        record["result"],
        json!({"url": "https://cdn/x.png", "n": [1, 2]}),
        "{record}"
    );
    for absent in ["fingerprint", "owner", "error"] {
        assert!(record[absent].is_null(), "`{absent}` is null: {record}");
    }
    assert!(
        record["lease_expires_at"].is_null(),
        "a terminal record has lease_expires_at null: {record}"
    );
    assert_eq!(
        record["lease_expired"], false,
        "a terminal record has lease_expired false: {record}"
    );
    assert_timestamp(&record["completed_at"], "record.completed_at");
    assert_timestamp(&record["expires_at"], "record.expires_at");
    let completed_at = record["completed_at"].clone();

    let reply = api.claim("k", json!({"kind": "image"})).await;
    let body = reply.expect(StatusCode::OK);
    assert_eq!(body["state"], "completed", "{body}");
    assert_eq!(body["key"], "k", "{body}");
    assert_eq!(body["token"], token, "{body}");
    assert_eq!(body["attempt"], 1, "{body}");
    assert_eq!(
        body["result"],
        json!({"url": "https://cdn/x.png", "n": [1, 2]}),
        "{body}"
    );
    assert_eq!(body["completed_at"], completed_at, "{body}");

    // §4: the same token completing again succeeds and the first result
    // stands.
    let reply = api
        .post(&op("k", "complete"), json!({"token": token, "result": 2}))
        .await;
    let record = reply.expect(StatusCode::OK);
    assert_eq!(
        record["result"],
        json!({"url": "https://cdn/x.png", "n": [1, 2]}),
        "the first result stands: {record}"
    );
    // Once completed, a fail with the same token is lease_lost.
    let reply = api
        .post(&op("k", "fail"), json!({"token": token, "message": "late"}))
        .await;
    reply.expect_error(StatusCode::CONFLICT, "lease_lost");
}

#[tokio::test]
async fn record_fields_carry_kind_fingerprint_and_owner() {
    let api = Api::new();
    api.acquire(
        "k",
        json!({"kind": "image", "fingerprint": "fp-1", "owner": "w1"}),
    )
    .await;
    let reply = api.record("k").await;
    let record = reply.expect(StatusCode::OK);
    assert_record_fields(record, "GET processing");
    assert_eq!(record["state"], "processing", "{record}");
    assert_eq!(record["fingerprint"], "fp-1", "{record}");
    assert_eq!(record["owner"], "w1", "{record}");
    assert_timestamp(&record["lease_expires_at"], "processing.lease_expires_at");
    assert_eq!(record["lease_expired"], false, "{record}");
    for absent in ["result", "error", "completed_at"] {
        assert!(record[absent].is_null(), "`{absent}` is null: {record}");
    }
}

#[tokio::test]
async fn failures_answer_failed_claims() {
    let api = Api::new();

    // Permanent failure: no retry, `retry_after_ms` null.
    let token = api.acquire("perm", json!({"kind": "image"})).await;
    let reply = api
        .post(
            &op("perm", "fail"),
            json!({"token": token, "message": "bad prompt", "retryable": false}),
        )
        .await;
    let record = reply.expect(StatusCode::OK);
    assert_record_fields(record, "fail");
    assert_eq!(record["state"], "failed", "{record}");
    assert_eq!(
        record["error"],
        json!({"message": "bad prompt", "retryable": false}),
        "{record}"
    );
    assert!(record["lease_expires_at"].is_null(), "{record}");
    assert_eq!(record["lease_expired"], false, "{record}");
    let reply = api.claim("perm", json!({"kind": "image"})).await;
    let body = reply.expect(StatusCode::OK);
    assert_eq!(body["state"], "failed", "{body}");
    assert_eq!(body["key"], "perm", "{body}");
    assert_eq!(body["token"], token, "{body}");
    assert_eq!(body["attempt"], 1, "{body}");
    assert_eq!(
        body["error"],
        json!({"message": "bad prompt", "retryable": false}),
        "{body}"
    );
    assert!(
        body.as_object()
            .expect("object")
            .contains_key("retry_after_ms")
            && body["retry_after_ms"].is_null(),
        "retry_after_ms is present and null for a permanent failure: {body}"
    );

    // A missing `retryable` means true; the retry waits for the backoff.
    let token = api.acquire("retry", json!({"kind": "image"})).await;
    let reply = api
        .post(
            &op("retry", "fail"),
            json!({"token": token, "message": "GPU fell over"}),
        )
        .await;
    let record = reply.expect(StatusCode::OK);
    assert_eq!(
        record["error"],
        json!({"message": "GPU fell over", "retryable": true}),
        "retryable defaults to true: {record}"
    );
    let reply = api.claim("retry", json!({"kind": "image"})).await;
    let body = reply.expect(StatusCode::OK);
    assert_eq!(body["state"], "failed", "{body}");
    assert_eq!(body["error"]["retryable"], true, "{body}");
    let after = body["retry_after_ms"]
        .as_u64()
        .unwrap_or_else(|| panic!("a retryable failure has a numeric retry_after_ms: {body}"));
    assert!(
        (1..=1000).contains(&after),
        "the first backoff is 1 s: {after}"
    );

    // A retryable failure with no attempts left: no retry either.
    let token = api
        .acquire("last", json!({"kind": "image", "max_attempts": 1}))
        .await;
    api.post(&op("last", "fail"), json!({"token": token, "message": "x"}))
        .await
        .expect(StatusCode::OK);
    let reply = api.claim("last", json!({"kind": "image"})).await;
    let body = reply.expect(StatusCode::OK);
    assert_eq!(body["state"], "failed", "{body}");
    assert!(
        body["retry_after_ms"].is_null(),
        "no attempts left: retry_after_ms null: {body}"
    );
}

#[tokio::test]
async fn fingerprint_or_kind_mismatch_is_422_and_changes_nothing() {
    let api = Api::new();
    api.acquire("k", json!({"kind": "image", "fingerprint": "fp-1"}))
        .await;
    let before = api.snapshot("k").await;
    api.claim("k", json!({"kind": "image", "fingerprint": "fp-2"}))
        .await
        .expect_error(StatusCode::UNPROCESSABLE_ENTITY, "fingerprint_mismatch");
    api.claim("k", json!({"kind": "video", "fingerprint": "fp-1"}))
        .await
        .expect_error(StatusCode::UNPROCESSABLE_ENTITY, "fingerprint_mismatch");
    assert_eq!(
        api.snapshot("k").await,
        before,
        "a mismatch changes nothing"
    );
    // A fingerprint absent on either side is not a mismatch.
    api.claim("k", json!({"kind": "image"}))
        .await
        .expect(StatusCode::ACCEPTED);
}

#[tokio::test]
async fn heartbeat_extends_the_lease_and_refuses_other_tokens() {
    let api = Api::new();
    let token = api
        .acquire("k", json!({"kind": "image", "lease_ms": 5000}))
        .await;
    let reply = api
        .post(
            &op("k", "heartbeat"),
            json!({"token": token, "lease_ms": 60000}),
        )
        .await;
    let body = reply.expect(StatusCode::OK);
    assert_timestamp(&body["lease_expires_at"], "heartbeat.lease_expires_at");
    let left = body["lease_ms"].as_u64().expect("lease_ms is an integer");
    assert!(
        (59_000..=60_000).contains(&left),
        "the lease now ends 60 s from now: {left}"
    );
    // Without lease_ms, the lease's own TTL.
    let body = api
        .post(&op("k", "heartbeat"), json!({"token": token}))
        .await
        .expect(StatusCode::OK)
        .clone();
    assert!(body["lease_ms"].as_u64().is_some(), "{body}");

    let before = api.snapshot("k").await;
    api.post(&op("k", "heartbeat"), json!({"token": token + 1}))
        .await
        .expect_error(StatusCode::CONFLICT, "lease_lost");
    assert_eq!(
        api.snapshot("k").await,
        before,
        "a refused heartbeat changes nothing"
    );
}

#[tokio::test]
async fn a_takeover_fences_the_old_token() {
    let api = Api::new();
    let old = api
        .acquire("k", json!({"kind": "image", "lease_ms": 1, "owner": "a"}))
        .await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    let reply = api.claim("k", json!({"kind": "image", "owner": "b"})).await;
    let body = reply.expect(StatusCode::CREATED);
    assert_eq!(body["state"], "acquired", "{body}");
    assert_eq!(body["takeover"], true, "{body}");
    assert_eq!(body["attempt"], 2, "{body}");
    let new = reply.token();
    assert!(new > old, "the takeover's token {new} is above {old}");

    let before = api.snapshot("k").await;
    for (operation, body) in [
        ("complete", json!({"token": old, "result": "late"})),
        ("fail", json!({"token": old, "message": "late"})),
        ("heartbeat", json!({"token": old})),
        ("release", json!({"token": old})),
    ] {
        api.post(&op("k", operation), body)
            .await
            .expect_error(StatusCode::CONFLICT, "lease_lost");
    }
    assert_eq!(
        api.snapshot("k").await,
        before,
        "the stale worker changed nothing"
    );
    api.post(&op("k", "complete"), json!({"token": new, "result": "b"}))
        .await
        .expect(StatusCode::OK);
}

#[tokio::test]
async fn release_gives_the_lease_up() {
    let api = Api::new();
    let token = api.acquire("k", json!({"kind": "image"})).await;
    let reply = api.post(&op("k", "release"), json!({"token": token})).await;
    let record = reply.expect(StatusCode::OK);
    assert_record_fields(record, "release");
    assert_eq!(record["state"], "processing", "{record}");
    assert_eq!(record["lease_expired"], true, "{record}");

    let before = api.snapshot("k").await;
    for operation in ["release", "heartbeat"] {
        api.post(&op("k", operation), json!({"token": token}))
            .await
            .expect_error(StatusCode::CONFLICT, "lease_lost");
    }
    assert_eq!(api.snapshot("k").await, before, "refusals change nothing");

    // Claimable at once; a release is not an attempt.
    let reply = api.claim("k", json!({"kind": "image"})).await;
    let body = reply.expect(StatusCode::CREATED);
    assert_eq!(
        body["attempt"], 1,
        "a release does not count as an attempt: {body}"
    );
    assert!(reply.token() > token, "{body}");
}

#[tokio::test]
async fn fenced_operations_on_a_missing_key_are_lease_lost() {
    let api = Api::new();
    for (operation, body) in [
        ("heartbeat", json!({"token": 1})),
        ("complete", json!({"token": 1, "result": 1})),
        ("fail", json!({"token": 1, "message": "m"})),
        ("release", json!({"token": 1})),
        ("release", json!({"token": 0})),
    ] {
        api.post(&op("nothing", operation), body)
            .await
            .expect_error(StatusCode::CONFLICT, "lease_lost");
    }
    api.record("nothing")
        .await
        .expect_error(StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn tokens_that_are_not_safe_integers_are_invalid_requests() {
    let api = Api::new();
    let token = api.acquire("k", json!({"kind": "image"})).await;
    let before = api.snapshot("k").await;
    let calls = api.store_calls().await;
    for bad in [
        "9007199254740992",
        "18446744073709551615",
        "18446744073709551616",
        "-1",
        "1.5",
        "1e3",
        "\"1\"",
        "null",
        "true",
    ] {
        for (operation, body) in [
            ("heartbeat", format!(r#"{{"token": {bad}}}"#)),
            ("complete", format!(r#"{{"token": {bad}, "result": 1}}"#)),
            ("fail", format!(r#"{{"token": {bad}, "message": "m"}}"#)),
            ("release", format!(r#"{{"token": {bad}}}"#)),
        ] {
            let reply = api.post_raw(&op("k", operation), body.clone()).await;
            assert_eq!(
                (reply.status, reply.json["error"]["code"].as_str()),
                (StatusCode::BAD_REQUEST, Some("invalid_request")),
                "{operation} with token {bad}: {}",
                reply.text
            );
        }
    }
    // Missing token.
    api.post(&op("k", "release"), json!({}))
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_request");
    assert_eq!(
        api.store_calls().await,
        calls,
        "refused tokens never reach the store"
    );
    assert_eq!(api.snapshot("k").await, before, "nothing changed");
    // The largest safe integer is a well-formed token, just not this one.
    api.post(
        &op("k", "release"),
        json!({"token": 9_007_199_254_740_991_u64}),
    )
    .await
    .expect_error(StatusCode::CONFLICT, "lease_lost");
    api.post(&op("k", "release"), json!({"token": token}))
        .await
        .expect(StatusCode::OK);
}

/// `body` (a JSON object) padded with trailing spaces to exactly `len`
/// bytes: still the same JSON, just longer.
fn padded(body: Value, len: usize) -> Vec<u8> {
    let mut bytes = serde_json::to_vec(&body).expect("serializable");
    assert!(bytes.len() <= len, "{body} is longer than {len} bytes");
    bytes.resize(len, b' ');
    bytes
}

/// Claim, heartbeat, fail and release carry no result: their bodies have a
/// small limit of their own (64 KiB by default), one byte past it is 413
/// `too_large` and changes nothing, and up to it the body is read as usual.
/// `complete` keeps the result-sized limit.
#[tokio::test]
async fn bodies_without_a_result_have_a_small_limit_of_their_own() {
    let limits = Limits::default();
    assert_eq!(limits.max_small_body_bytes, 64 * 1024, "the default");
    let at = limits.max_small_body_bytes;
    let api = Api::with(Tokens::default(), limits);

    let claim = json!({"kind": "image"});
    api.post_raw(&op("k", "claim"), padded(claim.clone(), at + 1))
        .await
        .expect_error(StatusCode::PAYLOAD_TOO_LARGE, "too_large");
    api.record("k")
        .await
        .expect_error(StatusCode::NOT_FOUND, "not_found");
    let token = api
        .post_raw(&op("k", "claim"), padded(claim.clone(), at))
        .await
        .expect(StatusCode::CREATED)["token"]
        .as_u64()
        .expect("a token");

    let before = api.snapshot("k").await;
    for (route, body) in [
        ("heartbeat", json!({"token": token})),
        ("release", json!({"token": token})),
        ("fail", json!({"token": token, "message": "m"})),
    ] {
        api.post_raw(&op("k", route), padded(body, at + 1))
            .await
            .expect_error(StatusCode::PAYLOAD_TOO_LARGE, "too_large");
    }
    assert_eq!(api.snapshot("k").await, before, "nothing changed");

    api.post_raw(&op("k", "heartbeat"), padded(json!({"token": token}), at))
        .await
        .expect(StatusCode::OK);
    api.post_raw(&op("k", "release"), padded(json!({"token": token}), at))
        .await
        .expect(StatusCode::OK);
    let token = api
        .post_raw(&op("k", "claim"), padded(claim, at))
        .await
        .expect(StatusCode::CREATED)["token"]
        .as_u64()
        .expect("a token");
    api.post_raw(
        &op("k", "fail"),
        padded(json!({"token": token, "message": "m"}), at),
    )
    .await
    .expect(StatusCode::OK);

    // A result well past the small limit is still welcome in `complete`.
    let token = api.acquire("big", json!({"kind": "image"})).await;
    let result = "r".repeat(4 * at);
    let record = api
        .post(
            &op("big", "complete"),
            json!({"token": token, "result": result}),
        )
        .await
        .expect(StatusCode::OK)
        .clone();
    assert_eq!(record["result"], json!(result), "the result is stored");
}

/// The small-body limit is configurable, and a claim body of a result's
/// size — parsed and refused for its fields before — is refused for its
/// size without being read as JSON.
#[tokio::test]
async fn the_small_body_limit_is_configurable() {
    let limits = Limits {
        max_small_body_bytes: 1024,
        ..Limits::default()
    };
    let api = Api::with(Tokens::default(), limits);
    api.post_raw(&op("k", "claim"), padded(json!({"kind": "image"}), 1025))
        .await
        .expect_error(StatusCode::PAYLOAD_TOO_LARGE, "too_large");
    api.post_raw(&op("k", "claim"), padded(json!({"kind": "image"}), 1024))
        .await
        .expect(StatusCode::CREATED);

    let api = Api::new();
    let fingerprint = "f".repeat(1024 * 1024 + 1024);
    api.claim("j", json!({"kind": "image", "fingerprint": fingerprint}))
        .await
        .expect_error(StatusCode::PAYLOAD_TOO_LARGE, "too_large");
}

#[tokio::test]
async fn results_and_bodies_over_the_limits_are_too_large() {
    let limits = Limits::with_result_limit(64);
    let api = Api::with(Tokens::default(), limits);
    let token = api.acquire("k", json!({"kind": "image"})).await;
    let before = api.snapshot("k").await;

    let over = "x".repeat(100);
    api.post(
        &op("k", "complete"),
        json!({"token": token, "result": over}),
    )
    .await
    .expect_error(StatusCode::PAYLOAD_TOO_LARGE, "too_large");
    let huge = "x".repeat(limits.max_body_bytes + 1);
    api.post(
        &op("k", "complete"),
        json!({"token": token, "result": huge}),
    )
    .await
    .expect_error(StatusCode::PAYLOAD_TOO_LARGE, "too_large");
    api.post(&op("k", "fail"), json!({"token": token, "message": huge}))
        .await
        .expect_error(StatusCode::PAYLOAD_TOO_LARGE, "too_large");
    assert_eq!(
        api.snapshot("k").await,
        before,
        "an oversized result changes nothing"
    );
    api.claim("fresh", json!({"kind": "image", "owner": huge}))
        .await
        .expect_error(StatusCode::PAYLOAD_TOO_LARGE, "too_large");
    api.record("fresh")
        .await
        .expect_error(StatusCode::NOT_FOUND, "not_found");

    // Exactly at the limit (64 bytes of JSON) is fine.
    let at_limit = "y".repeat(62);
    let record = api
        .post(
            &op("k", "complete"),
            json!({"token": token, "result": at_limit}),
        )
        .await
        .expect(StatusCode::OK)
        .clone();
    assert_eq!(record["result"], json!(at_limit), "{record}");
}

#[tokio::test]
async fn get_and_delete() {
    let api = Api::new();
    api.record("k")
        .await
        .expect_error(StatusCode::NOT_FOUND, "not_found");
    api.delete(&record_uri("k"))
        .await
        .expect_error(StatusCode::NOT_FOUND, "not_found");

    let token = api.acquire("k", json!({"kind": "image"})).await;
    let record = api.record("k").await.expect(StatusCode::OK).clone();
    assert_eq!(record["token"], token, "{record}");

    let reply = api.delete(&record_uri("k")).await;
    reply.expect(StatusCode::NO_CONTENT);
    assert!(reply.text.is_empty(), "a 204 has no body: {:?}", reply.text);
    api.record("k")
        .await
        .expect_error(StatusCode::NOT_FOUND, "not_found");
    api.delete(&record_uri("k"))
        .await
        .expect_error(StatusCode::NOT_FOUND, "not_found");
    // Tokens are never reused, deletes included.
    let again = api.acquire("k", json!({"kind": "image"})).await;
    assert!(again > token, "token {again} after delete is above {token}");
}

#[tokio::test]
async fn get_with_wait_ms_is_held_until_the_job_completes() {
    let api = Api::new();
    let token = api.acquire("k", json!({"kind": "image"})).await;
    let worker = api.clone();
    let completer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        worker
            .post(
                &op("k", "complete"),
                json!({"token": token, "result": "done"}),
            )
            .await
            .expect(StatusCode::OK);
    });
    let started = Instant::now();
    let reply = api.get(&format!("{}?wait_ms=10000", record_uri("k"))).await;
    let waited = started.elapsed();
    let record = reply.expect(StatusCode::OK);
    assert_eq!(record["state"], "completed", "{record}");
    assert_eq!(record["result"], "done", "{record}");
    assert!(
        waited >= Duration::from_millis(250),
        "the GET was held until the complete: {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(5),
        "the GET was answered promptly after the complete: {waited:?}"
    );
    completer.await.expect("the completer ran");

    // On a terminal record, at once.
    let started = Instant::now();
    api.get(&format!("{}?wait_ms=10000", record_uri("k")))
        .await
        .expect(StatusCode::OK);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // On a missing key, 404 at once.
    let started = Instant::now();
    api.get(&format!("{}?wait_ms=10000", record_uri("missing")))
        .await
        .expect_error(StatusCode::NOT_FOUND, "not_found");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn get_with_wait_ms_returns_when_the_lease_expires() {
    let api = Api::new();
    api.acquire("k", json!({"kind": "image", "lease_ms": 300}))
        .await;
    let started = Instant::now();
    let reply = api.get(&format!("{}?wait_ms=10000", record_uri("k"))).await;
    let waited = started.elapsed();
    let record = reply.expect(StatusCode::OK);
    assert_eq!(record["state"], "processing", "{record}");
    assert_eq!(record["lease_expired"], true, "{record}");
    assert!(
        waited < Duration::from_secs(5),
        "the waiter wakes at expiry to take over: {waited:?}"
    );
}

#[tokio::test]
async fn wait_ms_out_of_range_is_invalid_request() {
    let api = Api::new();
    api.acquire("k", json!({"kind": "image"})).await;
    for query in [
        "wait_ms=60001",
        "wait_ms=-1",
        "wait_ms=abc",
        "wait_ms=1.5",
        "wait_ms=99999999999999999999999",
        "colour=blue",
    ] {
        let reply = api.get(&format!("{}?{query}", record_uri("k"))).await;
        assert_eq!(
            (reply.status, reply.json["error"]["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_request")),
            "GET ?{query}: {}",
            reply.text
        );
    }
    api.get(&format!("{}?wait_ms=0", record_uri("k")))
        .await
        .expect(StatusCode::OK);
}

#[tokio::test]
async fn operations_routes() {
    let api = Api::new();
    api.get("/healthz").await.expect(StatusCode::OK);
    api.get("/readyz").await.expect(StatusCode::OK);

    api.acquire("k", json!({"kind": "image"})).await;
    let reply = api.get("/metrics").await;
    reply.expect(StatusCode::OK);
    let content_type = reply
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|ct| ct.to_str().ok())
        .unwrap_or("");
    assert!(
        content_type.starts_with("text/plain"),
        "Prometheus text: {content_type}"
    );
    assert!(
        reply.text.contains("onceflight_claims_total"),
        "metrics count claims:\n{}",
        reply.text
    );

    let reply = api.get("/openapi.json").await;
    let doc = reply.expect(StatusCode::OK);
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "an OpenAPI 3 document: {}",
        doc["openapi"]
    );
    for (path, method) in [
        ("/v1/requests/{key}/claim", "post"),
        ("/v1/requests/{key}/heartbeat", "post"),
        ("/v1/requests/{key}/complete", "post"),
        ("/v1/requests/{key}/fail", "post"),
        ("/v1/requests/{key}/release", "post"),
        ("/v1/requests/{key}", "get"),
        ("/v1/requests/{key}", "delete"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
        ("/openapi.json", "get"),
    ] {
        assert!(
            doc["paths"][path][method].is_object(),
            "the document describes {method} {path}"
        );
        if method == "post" {
            assert!(
                doc["paths"][path][method]["responses"]["413"].is_object(),
                "the document says {method} {path} may answer 413 too_large"
            );
        }
    }
}

#[tokio::test]
async fn unknown_routes_and_wrong_methods() {
    let api = Api::new();
    for uri in ["/nope", "/v1/requests/k/explode", "/v1", "/v2/requests/k"] {
        api.get(uri)
            .await
            .expect_error(StatusCode::NOT_FOUND, "not_found");
    }
    api.post("/v1/requests/k/explode", json!({}))
        .await
        .expect_error(StatusCode::NOT_FOUND, "not_found");
    for (method, uri) in [
        (Method::GET, "/v1/requests/k/claim"),
        (Method::PUT, "/v1/requests/k"),
        (Method::POST, "/v1/requests/k"),
        (Method::DELETE, "/v1/requests/k/complete"),
        (Method::POST, "/healthz"),
        (Method::DELETE, "/metrics"),
    ] {
        api.send(method.clone(), uri, None, None)
            .await
            .expect_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    }
    api.record("k")
        .await
        .expect_error(StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn bad_keys_are_refused_and_reach_nothing() {
    let api = Api::new();
    let calls = api.store_calls().await;

    // Empty key: whatever the router makes of it, a 4xx with the error body.
    for (method, uri) in [
        (Method::POST, "/v1/requests//claim"),
        (Method::GET, "/v1/requests/"),
        (Method::DELETE, "/v1/requests/"),
    ] {
        let body = (method == Method::POST).then(|| br#"{"kind":"image"}"#.to_vec());
        let reply = api.send(method, uri, body, Some("application/json")).await;
        assert!(
            reply.status.is_client_error()
                && matches!(
                    reply.json["error"]["code"].as_str(),
                    Some("not_found" | "invalid_key")
                ),
            "{}: expected a 4xx not_found or invalid_key, got {} {}",
            reply.what,
            reply.status,
            reply.text
        );
    }

    let too_long = "k".repeat(513);
    let multibyte_too_long = "%E7%94%BB".repeat(171); // 513 bytes
    for key in [
        too_long.as_str(),
        multibyte_too_long.as_str(),
        "a%0Ab",
        "%0A",
        "a%7Fb",
        "a%C2%85b",
        "a%00b",
        "a%09b",
        "a%E2%80%8Eb%1B",
        "a%FFb",
        "a%C3",
    ] {
        let short = &key[..key.len().min(24)];
        let reply = api.claim(key, json!({"kind": "image"})).await;
        assert_eq!(
            (reply.status, reply.json["error"]["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_key")),
            "claim on key {short}…: {}",
            reply.text
        );
        for (method, uri, body) in [
            (Method::GET, record_uri(key), None),
            (Method::DELETE, record_uri(key), None),
            (
                Method::POST,
                op(key, "release"),
                Some(br#"{"token":1}"#.to_vec()),
            ),
        ] {
            let reply = api.send(method, &uri, body, Some("application/json")).await;
            assert_eq!(
                (reply.status, reply.json["error"]["code"].as_str()),
                (StatusCode::BAD_REQUEST, Some("invalid_key")),
                "{} on key {short}…: {}",
                reply.what.split(' ').next().unwrap_or(""),
                reply.text
            );
        }
    }
    assert_eq!(
        api.store_calls().await,
        calls,
        "refused keys never reach the store"
    );

    // 512 bytes is the limit, and fine.
    let longest = "k".repeat(512);
    api.acquire(&longest, json!({"kind": "image"})).await;
    api.record(&longest).await.expect(StatusCode::OK);
}

#[tokio::test]
async fn bad_claim_bodies_are_refused_and_change_nothing() {
    let api = Api::new();
    let long_129 = "f".repeat(129);
    let cases: Vec<(&str, String)> = vec![
        ("invalid JSON", r#"{"kind": "image""#.to_owned()),
        ("not JSON", "kind=image".to_owned()),
        ("empty body", String::new()),
        ("an array", "[]".to_owned()),
        ("null", "null".to_owned()),
        ("missing kind", "{}".to_owned()),
        ("empty kind", r#"{"kind": ""}"#.to_owned()),
        ("upper-case kind", r#"{"kind": "Image"}"#.to_owned()),
        ("kind with a space", r#"{"kind": "an image"}"#.to_owned()),
        (
            "kind of 65 chars",
            format!(r#"{{"kind": "{}"}}"#, "a".repeat(65)),
        ),
        (
            "unknown field",
            r#"{"kind": "image", "colour": "blue"}"#.to_owned(),
        ),
        ("kind as a number", r#"{"kind": 1}"#.to_owned()),
        (
            "kind twice",
            r#"{"kind": "image", "kind": "video"}"#.to_owned(),
        ),
        (
            "lease_ms as a string",
            r#"{"kind": "image", "lease_ms": "5"}"#.to_owned(),
        ),
        (
            "owner as a number",
            r#"{"kind": "image", "owner": 5}"#.to_owned(),
        ),
        (
            "max_attempts as a string",
            r#"{"kind": "image", "max_attempts": "3"}"#.to_owned(),
        ),
        (
            "fingerprint as an object",
            r#"{"kind": "image", "fingerprint": {}}"#.to_owned(),
        ),
        (
            "lease_ms 0",
            r#"{"kind": "image", "lease_ms": 0}"#.to_owned(),
        ),
        (
            "lease_ms -1",
            r#"{"kind": "image", "lease_ms": -1}"#.to_owned(),
        ),
        (
            "lease_ms 86400001",
            r#"{"kind": "image", "lease_ms": 86400001}"#.to_owned(),
        ),
        (
            "lease_ms 1e30",
            r#"{"kind": "image", "lease_ms": 1e30}"#.to_owned(),
        ),
        (
            "lease_ms 1.5",
            r#"{"kind": "image", "lease_ms": 1.5}"#.to_owned(),
        ),
        (
            "max_attempts 0",
            r#"{"kind": "image", "max_attempts": 0}"#.to_owned(),
        ),
        (
            "max_attempts 1001",
            r#"{"kind": "image", "max_attempts": 1001}"#.to_owned(),
        ),
        (
            "max_attempts 2^32",
            r#"{"kind": "image", "max_attempts": 4294967296}"#.to_owned(),
        ),
        (
            "fingerprint of 129 bytes",
            format!(r#"{{"kind": "image", "fingerprint": "{long_129}"}}"#),
        ),
        (
            "empty fingerprint",
            r#"{"kind": "image", "fingerprint": ""}"#.to_owned(),
        ),
        (
            "owner of 129 bytes",
            format!(r#"{{"kind": "image", "owner": "{long_129}"}}"#),
        ),
        (
            "owner with a newline",
            r#"{"kind": "image", "owner": "a\nb"}"#.to_owned(),
        ),
        (
            "fingerprint with U+0085",
            r#"{"kind": "image", "fingerprint": "a\u0085b"}"#.to_owned(),
        ),
    ];
    for key in ["k", "held"] {
        if key == "held" {
            api.acquire(key, json!({"kind": "image", "owner": "w"}))
                .await;
        }
        let before = if key == "held" {
            Some(api.snapshot(key).await)
        } else {
            None
        };
        let calls = api.store_calls().await;
        for (case, body) in &cases {
            let reply = api.post_raw(&op(key, "claim"), body.clone()).await;
            assert_eq!(
                (reply.status, reply.json["error"]["code"].as_str()),
                (StatusCode::BAD_REQUEST, Some("invalid_request")),
                "claim on {key:?} with {case}: {}",
                reply.text
            );
        }
        // No content type.
        let reply = api
            .send(
                Method::POST,
                &op(key, "claim"),
                Some(br#"{"kind":"image"}"#.to_vec()),
                None,
            )
            .await;
        reply.expect_error(StatusCode::BAD_REQUEST, "invalid_request");
        let reply = api
            .send(
                Method::POST,
                &op(key, "claim"),
                Some(br#"{"kind":"image"}"#.to_vec()),
                Some("text/plain"),
            )
            .await;
        reply.expect_error(StatusCode::BAD_REQUEST, "invalid_request");
        assert_eq!(
            api.store_calls().await,
            calls,
            "refused claims on {key:?} never reach the store"
        );
        match before {
            None => api
                .record(key)
                .await
                .expect_error(StatusCode::NOT_FOUND, "not_found"),
            Some(before) => assert_eq!(
                api.snapshot(key).await,
                before,
                "refused claims change nothing"
            ),
        }
    }

    // The bounds themselves are accepted.
    for (key, body) in [
        ("lease-1", json!({"kind": "image", "lease_ms": 1})),
        (
            "lease-max",
            json!({"kind": "image", "lease_ms": 86_400_000}),
        ),
        ("attempts-1", json!({"kind": "image", "max_attempts": 1})),
        (
            "attempts-max",
            json!({"kind": "image", "max_attempts": 1000}),
        ),
        (
            "long-fields",
            json!({"kind": "a".repeat(64), "fingerprint": "f".repeat(128), "owner": "o".repeat(128)}),
        ),
    ] {
        api.acquire(key, body).await;
    }
}

#[tokio::test]
async fn bad_fenced_bodies_are_refused_and_change_nothing() {
    let api = Api::new();
    let token = api.acquire("k", json!({"kind": "image"})).await;
    let before = api.snapshot("k").await;
    let calls = api.store_calls().await;
    let long_message = "m".repeat(4097);
    for (operation, body) in [
        ("heartbeat", json!({"token": token, "lease_ms": 0})),
        ("heartbeat", json!({"token": token, "lease_ms": 86_400_001})),
        ("heartbeat", json!({"token": token, "lease_ms": -5})),
        ("heartbeat", json!({"token": token, "extra": 1})),
        ("complete", json!({"token": token})),
        ("complete", json!({"token": token, "result": 1, "extra": 1})),
        ("fail", json!({"token": token})),
        ("fail", json!({"token": token, "message": long_message})),
        (
            "fail",
            json!({"token": token, "message": "m", "retryable": "yes"}),
        ),
        ("release", json!({"token": token, "why": "bored"})),
    ] {
        let reply = api.post(&op("k", operation), body.clone()).await;
        assert_eq!(
            (reply.status, reply.json["error"]["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_request")),
            "{operation} with {}: {}",
            &body.to_string()[..body.to_string().len().min(80)],
            reply.text
        );
    }
    for operation in ["heartbeat", "complete", "fail", "release"] {
        api.post_raw(&op("k", operation), "{\"token\":")
            .await
            .expect_error(StatusCode::BAD_REQUEST, "invalid_request");
    }
    assert_eq!(
        api.store_calls().await,
        calls,
        "refused bodies never reach the store"
    );
    assert_eq!(api.snapshot("k").await, before, "nothing changed");
    // A message of exactly 4096 bytes is fine.
    api.post(
        &op("k", "fail"),
        json!({"token": token, "message": "m".repeat(4096)}),
    )
    .await
    .expect(StatusCode::OK);
}

#[tokio::test]
async fn percent_encoded_keys_round_trip() {
    let api = Api::new();
    for (encoded, decoded) in [
        ("image%7Cab", "image|ab"),
        ("a%2Fb", "a/b"),
        ("a%20b", "a b"),
        ("%E7%94%BB", "画"),
        ("100%25", "100%"),
        ("a%3Fb%23c", "a?b#c"),
        ("a+b", "a+b"),
        ("image%7C9f86d0%2Fx%20%E7%94%BB", "image|9f86d0/x 画"),
    ] {
        let reply = api.claim(encoded, json!({"kind": "image"})).await;
        let body = reply.expect(StatusCode::CREATED);
        assert_eq!(body["key"], decoded, "claim on {encoded}: {body}");
        let token = reply.token();
        let record = api.record(encoded).await;
        let record = record.expect(StatusCode::OK);
        assert_eq!(record["key"], decoded, "GET {encoded}: {record}");
        assert_eq!(record["token"], token, "GET {encoded}: {record}");
        let record = api
            .post(
                &op(encoded, "complete"),
                json!({"token": token, "result": decoded}),
            )
            .await;
        assert_eq!(
            record.expect(StatusCode::OK)["key"],
            decoded,
            "complete on {encoded}"
        );
    }
    // `a%2Fb` is one key, not the path a/b.
    api.record("a")
        .await
        .expect_error(StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn bearer_tokens_and_namespaces() {
    let tokens =
        Tokens::from_env_list(&format!("alpha:{ALPHA},beta:{BETA}")).expect("a valid token list");
    let api = Api::with(tokens, Limits::default());
    let anonymous = api.as_caller(None);
    let wrong = api.as_caller(Some("gamma-token-0123456789"));
    let alpha = api.as_caller(Some(ALPHA));
    let beta = api.as_caller(Some(BETA));

    for caller in [&anonymous, &wrong] {
        caller
            .claim("image%7Cshared", json!({"kind": "image"}))
            .await
            .expect_error(StatusCode::UNAUTHORIZED, "unauthorized");
        caller
            .record("image%7Cshared")
            .await
            .expect_error(StatusCode::UNAUTHORIZED, "unauthorized");
        caller
            .delete(&record_uri("image%7Cshared"))
            .await
            .expect_error(StatusCode::UNAUTHORIZED, "unauthorized");
        caller
            .post(&op("image%7Cshared", "release"), json!({"token": 1}))
            .await
            .expect_error(StatusCode::UNAUTHORIZED, "unauthorized");
        // Authentication comes before validation.
        caller
            .post_raw(&op("image%7Cshared", "claim"), "{")
            .await
            .expect_error(StatusCode::UNAUTHORIZED, "unauthorized");
    }
    // The right token, but not as a bearer token.
    for authorization in [
        format!("Basic {ALPHA}"),
        ALPHA.to_owned(),
        "Bearer ".to_owned(),
    ] {
        api.with_authorization(Some(authorization))
            .record("image%7Cshared")
            .await
            .expect_error(StatusCode::UNAUTHORIZED, "unauthorized");
    }

    let reply = alpha
        .claim("image%7Cshared", json!({"kind": "image", "owner": "a"}))
        .await;
    let body = reply.expect(StatusCode::CREATED);
    assert_eq!(
        body["key"], "image|shared",
        "the caller's key, no namespace: {body}"
    );
    let alpha_token = reply.token();
    let record = alpha.record("image%7Cshared").await;
    assert_eq!(
        record.expect(StatusCode::OK)["key"],
        "image|shared",
        "the caller's key, no namespace"
    );

    // Beta cannot see, fence or delete alpha's record ...
    beta.record("image%7Cshared")
        .await
        .expect_error(StatusCode::NOT_FOUND, "not_found");
    beta.delete(&record_uri("image%7Cshared"))
        .await
        .expect_error(StatusCode::NOT_FOUND, "not_found");
    beta.post(
        &op("image%7Cshared", "complete"),
        json!({"token": alpha_token, "result": "beta's"}),
    )
    .await
    .expect_error(StatusCode::CONFLICT, "lease_lost");
    // ... nor reach it by spelling out the namespace.
    beta.record("alpha%2Fimage%7Cshared")
        .await
        .expect_error(StatusCode::NOT_FOUND, "not_found");
    // ... and its own claim on the same key is a fresh acquisition.
    let reply = beta.claim("image%7Cshared", json!({"kind": "video"})).await;
    let body = reply.expect(StatusCode::CREATED);
    assert_eq!(body["state"], "acquired", "{body}");
    assert_eq!(body["attempt"], 1, "{body}");
    assert_eq!(body["takeover"], false, "{body}");

    let record = alpha.record("image%7Cshared").await;
    let record = record.expect(StatusCode::OK);
    assert_eq!(record["token"], alpha_token, "alpha's record: {record}");
    assert_eq!(record["owner"], "a", "alpha's record: {record}");
    assert_eq!(record["kind"], "image", "alpha's record: {record}");

    // The longest key fits in a namespace too.
    let longest = "k".repeat(512);
    let reply = beta.claim(&longest, json!({"kind": "image"})).await;
    assert_eq!(
        reply.expect(StatusCode::CREATED)["key"],
        longest.as_str(),
        "a 512-byte key under a namespace"
    );
    beta.record(&longest).await.expect(StatusCode::OK);

    // Operations routes need no token.
    for uri in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
        anonymous.get(uri).await.expect(StatusCode::OK);
    }
}

/// serde accepts a struct as a JSON array of its fields in order; the API's
/// bodies are objects (§7), so an array is a bad body like any other.
#[tokio::test]
async fn json_arrays_are_not_bodies() {
    let api = Api::new();
    let mut accepted = Vec::new();
    let claim = api.post(&op("fresh", "claim"), json!(["image"])).await;
    if claim.status != StatusCode::BAD_REQUEST || claim.json["error"]["code"] != "invalid_request" {
        accepted.push(format!(
            "claim [\"image\"]: {} {}",
            claim.status, claim.text
        ));
    }
    if api.record("fresh").await.status != StatusCode::NOT_FOUND {
        accepted.push("claim [\"image\"] created a record".to_owned());
    }
    for (operation, body) in [
        ("heartbeat", json!([0, 60000])),
        ("complete", json!([0, "r"])),
        ("fail", json!([0, "m", false])),
        ("release", json!([0])),
    ] {
        let key = format!("array-{operation}");
        let token = api.acquire(&key, json!({"kind": "image"})).await;
        let mut body = body;
        body[0] = json!(token);
        let before = api.snapshot(&key).await;
        let reply = api.post(&op(&key, operation), body.clone()).await;
        if reply.status != StatusCode::BAD_REQUEST
            || reply.json["error"]["code"] != "invalid_request"
        {
            accepted.push(format!(
                "{operation} {body}: {} {}",
                reply.status, reply.text
            ));
        }
        if api.snapshot(&key).await != before {
            accepted.push(format!("{operation} {body} changed the record"));
        }
    }
    assert!(
        accepted.is_empty(),
        "array bodies must be 400 invalid_request and change nothing:\n{}",
        accepted.join("\n")
    );
}

/// Deeply nested JSON neither crashes the server nor answers a 5xx.
#[tokio::test]
async fn deeply_nested_json_is_answered() {
    let api = Api::new();
    let token = api.acquire("k", json!({"kind": "image"})).await;
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let reply = api
        .post_raw(
            &op("k", "complete"),
            format!(r#"{{"token": {token}, "result": {deep}}}"#),
        )
        .await;
    assert!(
        matches!(reply.status, StatusCode::OK | StatusCode::BAD_REQUEST),
        "a deeply nested result: {} {}",
        reply.status,
        reply.text
    );
    // Within the 64 KiB limit of a claim body, so that it is parsed.
    let deep = format!("{}{}", "[".repeat(30_000), "]".repeat(30_000));
    let reply = api
        .post_raw(&op("j", "claim"), format!(r#"{{"kind": {deep}}}"#))
        .await;
    reply.expect_error(StatusCode::BAD_REQUEST, "invalid_request");
}

/// Past `max_waiters` held long-polls, a GET with `wait_ms` is refused with a
/// 503 and `Retry-After` rather than queued (an extension of §7).
#[tokio::test]
async fn too_many_waiters_is_503_with_retry_after() {
    let limits = Limits {
        max_waiters: 1,
        ..Limits::default()
    };
    let api = Api::with(Tokens::default(), limits);
    let token = api.acquire("k", json!({"kind": "image"})).await;
    let waiter = api.clone();
    let held = tokio::spawn(async move {
        waiter
            .get(&format!("{}?wait_ms=10000", record_uri("k")))
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!held.is_finished(), "the first long-poll is held");
    let reply = api.get(&format!("{}?wait_ms=10000", record_uri("k"))).await;
    reply.expect_error(StatusCode::SERVICE_UNAVAILABLE, "too_many_waiters");
    assert!(
        reply.headers.contains_key(header::RETRY_AFTER),
        "a 503 carries Retry-After: {:?}",
        reply.headers
    );
    // Without wait_ms the record is still readable.
    api.record("k").await.expect(StatusCode::OK);
    api.post(&op("k", "release"), json!({"token": token}))
        .await
        .expect(StatusCode::OK);
    held.await
        .expect("the held long-poll")
        .expect(StatusCode::OK);
}

/// A 405 says which methods the route takes (RFC 9110 §15.5.6).
#[tokio::test]
async fn wrong_method_lists_the_allowed_ones() {
    let api = Api::new();
    let reply = api.get(&op("k", "claim")).await;
    reply.expect_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    let allow = reply
        .headers
        .get(header::ALLOW)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("a 405 carries Allow: {:?}", reply.headers));
    assert!(allow.contains("POST"), "Allow: {allow}");
}

/// A store that cannot be reached: every operation is `Unavailable`.
///
/// `RequestStore` is an `#[async_trait]` trait; the impl below is written in
/// the form that macro expands to (boxed futures), so this test needs no
/// `async-trait` dev-dependency.
mod unreachable {
    use std::future::Future;
    use std::pin::Pin;
    use std::time::Duration;

    use onceflight_core::{
        Bytes, Claim, ClaimOptions, Error, JobError, Record, Renewal, RequestKey, RequestStore,
        Result, Token,
    };

    type Answer<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

    #[derive(Debug)]
    pub(crate) struct Unreachable;

    fn down<'a, T: 'a>() -> Answer<'a, T> {
        Box::pin(async {
            Err(Error::unavailable(
                "memory",
                std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused"),
            ))
        })
    }

    impl RequestStore for Unreachable {
        fn backend(&self) -> &'static str {
            "memory"
        }
        fn claim_or_get<'life0, 'life1, 'life2, 'async_trait>(
            &'life0 self,
            _key: &'life1 RequestKey,
            _options: &'life2 ClaimOptions,
        ) -> Answer<'async_trait, Claim>
        where
            'life0: 'async_trait,
            'life1: 'async_trait,
            'life2: 'async_trait,
            Self: 'async_trait,
        {
            down()
        }
        fn renew<'life0, 'life1, 'async_trait>(
            &'life0 self,
            _key: &'life1 RequestKey,
            _token: Token,
            _ttl: Option<Duration>,
        ) -> Answer<'async_trait, Renewal>
        where
            'life0: 'async_trait,
            'life1: 'async_trait,
            Self: 'async_trait,
        {
            down()
        }
        fn complete<'life0, 'life1, 'async_trait>(
            &'life0 self,
            _key: &'life1 RequestKey,
            _token: Token,
            _result: Bytes,
        ) -> Answer<'async_trait, Record>
        where
            'life0: 'async_trait,
            'life1: 'async_trait,
            Self: 'async_trait,
        {
            down()
        }
        fn fail<'life0, 'life1, 'life2, 'async_trait>(
            &'life0 self,
            _key: &'life1 RequestKey,
            _token: Token,
            _error: &'life2 JobError,
        ) -> Answer<'async_trait, Record>
        where
            'life0: 'async_trait,
            'life1: 'async_trait,
            'life2: 'async_trait,
            Self: 'async_trait,
        {
            down()
        }
        fn release<'life0, 'life1, 'async_trait>(
            &'life0 self,
            _key: &'life1 RequestKey,
            _token: Token,
        ) -> Answer<'async_trait, Record>
        where
            'life0: 'async_trait,
            'life1: 'async_trait,
            Self: 'async_trait,
        {
            down()
        }
        fn get<'life0, 'life1, 'async_trait>(
            &'life0 self,
            _key: &'life1 RequestKey,
        ) -> Answer<'async_trait, Option<Record>>
        where
            'life0: 'async_trait,
            'life1: 'async_trait,
            Self: 'async_trait,
        {
            down()
        }
        fn wait<'life0, 'life1, 'async_trait>(
            &'life0 self,
            _key: &'life1 RequestKey,
            _timeout: Duration,
        ) -> Answer<'async_trait, Option<Record>>
        where
            'life0: 'async_trait,
            'life1: 'async_trait,
            Self: 'async_trait,
        {
            down()
        }
        fn delete<'life0, 'life1, 'async_trait>(
            &'life0 self,
            _key: &'life1 RequestKey,
        ) -> Answer<'async_trait, bool>
        where
            'life0: 'async_trait,
            'life1: 'async_trait,
            Self: 'async_trait,
        {
            down()
        }
        fn sweep<'life0, 'async_trait>(&'life0 self) -> Answer<'async_trait, u64>
        where
            'life0: 'async_trait,
            Self: 'async_trait,
        {
            down()
        }
    }
}

/// A store that cannot be reached: 503 `store_unavailable` with
/// `Retry-After` on every route that needs it, and on `/readyz`; `/healthz`
/// still answers 200 (the process is up).
#[tokio::test]
async fn an_unreachable_store_is_503_store_unavailable() {
    let api = Api {
        app: app(AppState::new(
            Arc::new(unreachable::Unreachable),
            Tokens::default(),
            Limits::default(),
        )),
        authorization: None,
    };
    api.get("/healthz").await.expect(StatusCode::OK);
    let replies = [
        api.get("/readyz").await,
        api.claim("k", json!({"kind": "image"})).await,
        api.post(&op("k", "heartbeat"), json!({"token": 1})).await,
        api.post(&op("k", "complete"), json!({"token": 1, "result": 1}))
            .await,
        api.post(&op("k", "fail"), json!({"token": 1, "message": "m"}))
            .await,
        api.post(&op("k", "release"), json!({"token": 1})).await,
        api.record("k").await,
        api.get(&format!("{}?wait_ms=1000", record_uri("k"))).await,
        api.delete(&record_uri("k")).await,
    ];
    for reply in replies {
        reply.expect_error(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable");
        assert!(
            reply.headers.contains_key(header::RETRY_AFTER),
            "{}: a 503 carries Retry-After: {:?}",
            reply.what,
            reply.headers
        );
        assert!(
            !reply.text.contains("connection refused"),
            "{}: the answer leaks no internal detail: {}",
            reply.what,
            reply.text
        );
    }
}
