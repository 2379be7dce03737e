//! Route-level tests of the HTTP API (docs/protocol.md §7), without a socket: each
//! request goes through `app(state)` with `tower::ServiceExt::oneshot`.
//!
//! Every reply passes through [`Api::send`], which checks the invariants that
//! hold for every response: never a 500 (nor any 5xx but 503), and every
//! 4xx/5xx carries `{"error": {"code", "message"}}`.
//!
//! By what they exercise: [`leases`] (claim, heartbeat, complete, fail,
//! release and their tokens), [`reads`] (GET, long-polls, DELETE and the
//! operations routes), [`bodies`] (bodies refused, size limits), [`keys`]
//! (keys refused and percent-encoded, bearer tokens and namespaces) and
//! [`unreachable`] (a store that cannot be reached).

mod bodies;
mod keys;
mod leases;
mod listing;
mod reads;
mod ui;
mod unreachable;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use onceflight_server::auth::Tokens;
use onceflight_server::{AppState, Limits, app};
use onceflight_store_memory::{MemoryConfig, MemoryStore};
use serde_json::Value;
use tower::ServiceExt;

use crate::common::Reply;

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
    /// per-operation latency histograms of `/metrics`. The counts a scrape
    /// itself may take for the store gauges are left out: they are the
    /// scrape's, not the requests'.
    async fn store_calls(&self) -> u64 {
        self.store_calls_where(|operation| operation != "counts")
            .await
    }

    /// How many `operation`s have reached the store so far.
    async fn store_calls_of(&self, operation: &str) -> u64 {
        self.store_calls_where(|o| o == operation).await
    }

    async fn store_calls_where(&self, keep: impl Fn(&str) -> bool) -> u64 {
        let reply = self.get("/metrics").await;
        reply.expect(StatusCode::OK);
        reply
            .text
            .lines()
            .filter(|line| line.starts_with("onceflight_store_operation_duration_seconds_count"))
            .filter(|line| {
                line.split("operation=\"")
                    .nth(1)
                    .and_then(|rest| rest.split('"').next())
                    .is_some_and(&keep)
            })
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
