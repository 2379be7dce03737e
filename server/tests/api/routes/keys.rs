//! Keys and callers: keys §2 refuses never reach the store, percent-encoded
//! keys round-trip, and bearer tokens keep each namespace to itself.

use axum::http::{Method, StatusCode};
use onceflight_server::Limits;
use onceflight_server::auth::Tokens;
use serde_json::json;

use super::{ALPHA, Api, BETA, op, record_uri};

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
