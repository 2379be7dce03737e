//! Reads and the rest of the API: `GET` (with and without `wait_ms`),
//! `DELETE`, the operations routes, unknown routes and wrong methods.

use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode, header};
use onceflight_server::Limits;
use onceflight_server::auth::Tokens;
use serde_json::json;

use super::{Api, op, record_uri};

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
