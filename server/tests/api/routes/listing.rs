//! The operator's view over HTTP: `GET /v1/requests` (filters, pages,
//! cursors, namespaces), `GET /v1/stats` (counts, kept for a while) and the
//! store gauges of `/metrics`.

use std::time::Duration;

use axum::http::StatusCode;
use onceflight_server::Limits;
use onceflight_server::auth::Tokens;
use serde_json::{Value, json};

use super::{ALPHA, Api, BETA, assert_record_fields, assert_timestamp, op};
use crate::{key_set, page_keys};

/// Limits whose counts are read afresh on every request.
fn fresh_counts() -> Limits {
    Limits {
        stats_max_age: Duration::ZERO,
        ..Limits::default()
    }
}

/// Records in every state under `ls-` (keys as they go in a URL: `|` is
/// `%7C`): live, stuck (released), done, retry (retryable failure), final
/// (final failure), and one `video` record.
async fn zoo(api: &Api) {
    let image = json!({"kind": "image", "lease_ms": 60_000});
    api.acquire("image%7Cls-live", image.clone()).await;
    let token = api.acquire("image%7Cls-stuck", image.clone()).await;
    api.post(&op("image%7Cls-stuck", "release"), json!({"token": token}))
        .await
        .expect(StatusCode::OK);
    let token = api.acquire("image%7Cls-done", image.clone()).await;
    api.post(
        &op("image%7Cls-done", "complete"),
        json!({"token": token, "result": {"big": "result"}}),
    )
    .await
    .expect(StatusCode::OK);
    let token = api.acquire("image%7Cls-retry", image.clone()).await;
    api.post(
        &op("image%7Cls-retry", "fail"),
        json!({"token": token, "message": "flaky", "retryable": true}),
    )
    .await
    .expect(StatusCode::OK);
    let token = api.acquire("image%7Cls-final", image.clone()).await;
    api.post(
        &op("image%7Cls-final", "fail"),
        json!({"token": token, "message": "bad prompt", "retryable": false}),
    )
    .await
    .expect(StatusCode::OK);
    api.acquire(
        "video%7Cls-clip",
        json!({"kind": "video", "lease_ms": 60_000}),
    )
    .await;
}

/// Each filter keeps exactly its records, every item is a full record body
/// with `"result": null`, and the last page has no cursor.
#[tokio::test]
async fn every_state_filter_keeps_its_records() {
    let api = Api::new();
    zoo(&api).await;
    let all = [
        "image|ls-live",
        "image|ls-stuck",
        "image|ls-done",
        "image|ls-retry",
        "image|ls-final",
        "video|ls-clip",
    ];
    let cases: [(&str, &[&str]); 11] = [
        ("", &all),
        (
            "state=processing",
            &["image|ls-live", "image|ls-stuck", "video|ls-clip"],
        ),
        ("state=processing&stuck=true", &["image|ls-stuck"]),
        ("stuck=true", &["image|ls-stuck"]),
        ("stuck=false", &all),
        ("state=completed", &["image|ls-done"]),
        ("state=failed", &["image|ls-retry", "image|ls-final"]),
        ("retry=allowed", &["image|ls-retry"]),
        ("state=failed&retry=none", &["image|ls-final"]),
        ("kind=video", &["video|ls-clip"]),
        ("prefix=image%7Cls-d", &["image|ls-done"]),
    ];
    for (query, expected) in cases {
        let reply = api.get(&format!("/v1/requests?{query}")).await;
        let page = reply.expect(StatusCode::OK);
        assert_eq!(
            page_keys(page),
            key_set(expected),
            "?{query}: {}",
            reply.text
        );
        assert_eq!(page["next_cursor"], Value::Null, "?{query}: one page");
        for record in page["records"].as_array().expect("records") {
            assert_record_fields(record, &format!("?{query}"));
            assert_eq!(record["result"], Value::Null, "?{query}: no result listed");
        }
    }
    let page = api.get("/v1/requests?state=failed&retry=allowed").await;
    let failed = &page.expect(StatusCode::OK)["records"][0];
    assert_eq!(
        failed["error"],
        json!({"message": "flaky", "retryable": true})
    );
    assert!(failed["retry_after_ms"].is_u64(), "{failed}");
    let page = api.get("/v1/requests?stuck=true").await;
    let stuck = &page.expect(StatusCode::OK)["records"][0];
    assert_eq!(stuck["lease_expired"], true, "{stuck}");
    // The record itself still has its result.
    let record = api.record("image%7Cls-done").await;
    assert_eq!(
        record.expect(StatusCode::OK)["result"],
        json!({"big": "result"})
    );
}

/// Unknown parameters and bad values are 400 `invalid_request`.
#[tokio::test]
async fn bad_parameters_are_invalid_requests() {
    let api = Api::new();
    zoo(&api).await;
    for query in [
        "state=bogus",
        "state=",
        "state=PROCESSING",
        "stuck=maybe",
        "retry=sometimes",
        "order=sideways",
        "limit=0",
        "limit=501",
        "limit=-1",
        "limit=ten",
        "limit=2.5",
        "kind=Not%20A%20Kind",
        "kind=",
        "prefix=a%0Ab",
        "cursor=",
        "cursor=a%20b",
        "cursor=not-a-cursor",
        "cursor=k1.12.zz",
        "unknown=1",
        "wait_ms=10",
        "state=completed&stuck=true",
        "state=failed&stuck=true",
        "state=processing&retry=allowed",
        "state=completed&retry=none",
        "stuck=true&retry=none",
        "state=failed&state=completed",
    ] {
        let reply = api.get(&format!("/v1/requests?{query}")).await;
        reply.expect_error(StatusCode::BAD_REQUEST, "invalid_request");
    }
}

/// `limit` is 1–500; small pages followed by their cursors list every
/// record once, newest or oldest first; a prefix longer than any key lists
/// nothing, and one over 1024 bytes is refused.
#[tokio::test]
async fn pages_follow_the_cursor_within_the_limit() {
    let api = Api::new();
    let names: Vec<String> = (0..7).map(|i| format!("image|page-{i}")).collect();
    for name in &names {
        api.acquire(&name.replace('|', "%7C"), json!({"kind": "image"}))
            .await;
    }
    for limit in [1, 500] {
        let reply = api.get(&format!("/v1/requests?limit={limit}")).await;
        let page = reply.expect(StatusCode::OK);
        assert_eq!(
            page["records"].as_array().map(Vec::len),
            Some(limit.min(7)),
            "limit={limit}"
        );
    }
    for order in ["newest", "oldest"] {
        let mut listed = Vec::new();
        let mut sizes = Vec::new();
        let mut uri = format!("/v1/requests?order={order}&limit=3&prefix=image%7Cpage-");
        for _ in 0..10 {
            let reply = api.get(&uri).await;
            let page = reply.expect(StatusCode::OK).clone();
            let records = page["records"].as_array().expect("records").clone();
            sizes.push(records.len());
            listed.extend(
                records
                    .iter()
                    .map(|r| r["key"].as_str().unwrap().to_owned()),
            );
            match page["next_cursor"].as_str() {
                Some(cursor) => {
                    uri = format!(
                        "/v1/requests?order={order}&limit=3&prefix=image%7Cpage-&cursor={cursor}"
                    );
                }
                None => break,
            }
        }
        assert_eq!(sizes, [3, 3, 1], "{order}: pages of at most 3");
        let mut expected = names.clone();
        if order == "newest" {
            expected.reverse();
        }
        assert_eq!(listed, expected, "{order}: every record once, in order");
    }
    let longest = "x".repeat(1024);
    let reply = api.get(&format!("/v1/requests?prefix={longest}")).await;
    let page = reply.expect(StatusCode::OK);
    assert_eq!(page_keys(page), key_set(&[]), "no key is that long");
    let reply = api.get(&format!("/v1/requests?prefix={longest}x")).await;
    reply.expect_error(StatusCode::BAD_REQUEST, "invalid_request");
}

/// A token lists and counts only its own namespace, and keys come back
/// without the namespace; without a token, both routes are 401.
#[tokio::test]
async fn tokens_see_only_their_own_namespace() {
    let tokens =
        Tokens::from_env_list(&format!("alpha:{ALPHA},beta:{BETA}")).expect("a valid token list");
    let api = Api::with(tokens, fresh_counts());
    let alpha = api.as_caller(Some(ALPHA));
    let beta = api.as_caller(Some(BETA));
    alpha.acquire("image%7Ca1", json!({"kind": "image"})).await;
    alpha.acquire("image%7Ca2", json!({"kind": "image"})).await;
    beta.acquire("video%7Cb1", json!({"kind": "video"})).await;

    let page = alpha.get("/v1/requests").await;
    assert_eq!(
        page_keys(page.expect(StatusCode::OK)),
        key_set(&["image|a1", "image|a2"]),
        "alpha's own keys, without the namespace"
    );
    let page = beta.get("/v1/requests?prefix=image").await;
    assert_eq!(
        page_keys(page.expect(StatusCode::OK)),
        key_set(&[]),
        "beta has no images"
    );
    let page = beta.get("/v1/requests").await;
    assert_eq!(
        page_keys(page.expect(StatusCode::OK)),
        key_set(&["video|b1"])
    );
    // The longest prefix, with the namespace in front, matches nothing.
    let page = alpha
        .get(&format!("/v1/requests?prefix={}", "x".repeat(1024)))
        .await;
    assert_eq!(page_keys(page.expect(StatusCode::OK)), key_set(&[]));
    // A prefix naming the other namespace stays inside the caller's own.
    let page = beta.get("/v1/requests?prefix=alpha%2F").await;
    assert_eq!(page_keys(page.expect(StatusCode::OK)), key_set(&[]));

    let stats = alpha.get("/v1/stats").await;
    let stats = stats.expect(StatusCode::OK);
    assert_eq!(stats["records"]["total"], 2, "{stats}");
    assert_eq!(
        stats["kinds"].as_object().map(|k| k.len()),
        Some(1),
        "{stats}"
    );
    let stats = beta.get("/v1/stats").await;
    let stats = stats.expect(StatusCode::OK);
    assert_eq!(stats["records"]["total"], 1, "{stats}");
    assert_eq!(stats["kinds"]["video"]["processing"], 1, "{stats}");

    for uri in ["/v1/requests", "/v1/stats"] {
        api.get(uri)
            .await
            .expect_error(StatusCode::UNAUTHORIZED, "unauthorized");
        api.as_caller(Some("not-a-configured-token-0000"))
            .get(uri)
            .await
            .expect_error(StatusCode::UNAUTHORIZED, "unauthorized");
    }
}

/// `/v1/stats` counts by state and kind, live and run-out leases, the
/// oldest live lease, and says when it counted.
#[tokio::test]
async fn stats_count_states_kinds_and_leases() {
    let api = Api::with(Tokens::default(), fresh_counts());
    let empty = api.get("/v1/stats").await;
    let empty = empty.expect(StatusCode::OK);
    assert_eq!(
        empty["records"],
        json!({"processing": 0, "completed": 0, "failed": 0, "total": 0})
    );
    assert_eq!(empty["oldest_live_lease_ms"], Value::Null, "{empty}");
    assert_eq!(empty["kinds"], json!({}), "{empty}");

    zoo(&api).await;
    let reply = api.get("/v1/stats").await;
    let stats = reply.expect(StatusCode::OK);
    assert_eq!(
        stats["records"],
        json!({"processing": 3, "completed": 1, "failed": 2, "total": 6}),
        "{stats}"
    );
    assert_eq!(
        stats["kinds"],
        json!({
            "image": {"processing": 2, "completed": 1, "failed": 2, "total": 5},
            "video": {"processing": 1, "completed": 0, "failed": 0, "total": 1},
        }),
        "{stats}"
    );
    assert_eq!(stats["leases"], json!({"live": 2, "expired": 1}), "{stats}");
    assert!(stats["oldest_live_lease_ms"].is_u64(), "{stats}");
    assert_timestamp(&stats["as_of"], "as_of");
    assert_eq!(stats["max_age_ms"], 0, "{stats}");
}

/// With a maximum age, `/v1/stats` answers from the counts it kept until
/// they are that old, so polling does not count the store each time.
#[tokio::test]
async fn stats_are_kept_for_the_maximum_age() {
    let api = Api::new();
    api.acquire("image%7Cfirst", json!({"kind": "image"})).await;
    let first = api.get("/v1/stats").await;
    let first = first.expect(StatusCode::OK).clone();
    assert_eq!(first["records"]["total"], 1, "{first}");
    assert_eq!(first["max_age_ms"], 5000, "the default maximum age");
    let counts = api.store_calls_of("counts").await;
    api.acquire("image%7Csecond", json!({"kind": "image"}))
        .await;
    for _ in 0..5 {
        let again = api.get("/v1/stats").await;
        let again = again.expect(StatusCode::OK);
        assert_eq!(again["records"]["total"], 1, "kept: {again}");
        assert_eq!(again["as_of"], first["as_of"], "the same count");
    }
    assert_eq!(
        api.store_calls_of("counts").await,
        counts,
        "neither the polls nor the scrapes counted the store again"
    );
}

/// `/metrics` carries the store gauges, counted over every namespace.
#[tokio::test]
async fn metrics_show_the_store_gauges() {
    let api = Api::with(Tokens::default(), fresh_counts());
    zoo(&api).await;
    let reply = api.get("/metrics").await;
    reply.expect(StatusCode::OK);
    for line in [
        "onceflight_records{state=\"processing\"} 3",
        "onceflight_records{state=\"completed\"} 1",
        "onceflight_records{state=\"failed\"} 2",
        "onceflight_records_by_kind{kind=\"image\",state=\"failed\"} 2",
        "onceflight_records_by_kind{kind=\"video\",state=\"processing\"} 1",
        "onceflight_leases{state=\"live\"} 2",
        "onceflight_leases{state=\"expired\"} 1",
    ] {
        assert!(
            reply.text.lines().any(|l| l == line),
            "/metrics lacks {line:?}:\n{}",
            reply.text
        );
    }
    assert!(
        reply
            .text
            .lines()
            .any(|l| l.starts_with("onceflight_oldest_live_lease_seconds ")),
        "{}",
        reply.text
    );
}
