//! Request bodies: malformed, mistyped or out-of-range fields are 400
//! `invalid_request`, bodies and results over their limits are 413
//! `too_large`, and neither reaches the store or changes anything.

use axum::http::{Method, StatusCode};
use onceflight_server::Limits;
use onceflight_server::auth::Tokens;
use serde_json::{Value, json};

use super::{Api, op};

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
