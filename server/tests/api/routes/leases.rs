//! Claims, heartbeats, completions, failures and releases: what each
//! answers, and how tokens fence the holders that lost their lease.

use std::time::Duration;

use axum::http::{StatusCode, header};
use serde_json::json;

use super::{Api, assert_record_fields, assert_timestamp, op};

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
