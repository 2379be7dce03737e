//! Tenants: whatever tenant `b` sends, it cannot reach tenant `a`'s
//! records, and a request without a valid token reaches no store.

use std::collections::BTreeSet;

use onceflight_core::RequestKey;
use reqwest::StatusCode;
use serde_json::json;

use crate::{key_set, page_keys};

use super::{Caller, Fixture, TOKEN_A, TOKEN_B, send, store_operations, stored_result};

/// Whatever key tenant `b` sends — `a/k`, `../a/k`, encoded, double-encoded,
/// with backslashes or doubled slashes — it can neither read, claim,
/// complete, fail, release, renew, delete nor wait on tenant `a`'s records;
/// `a`'s records never change and never show a namespace, and `b`'s own
/// records land under `b/`.
pub(super) async fn tenants_cannot_reach_each_other(fx: &Fixture) {
    let a = fx.tenant(TOKEN_A, "a");
    let b = fx.tenant(TOKEN_B, "b");

    // Tenant `a`: one record in flight, one completed.
    let live = a
        .post("k", "claim", &json!({"kind": "secret", "lease_ms": 60_000}))
        .await;
    live.expect(StatusCode::CREATED);
    let live_token = live.token();
    let done = a.post("done", "claim", &json!({"kind": "secret"})).await;
    done.expect(StatusCode::CREATED);
    let done_token = done.token();
    a.post(
        "done",
        "complete",
        &json!({"token": done_token, "result": {"secret": "a"}}),
    )
    .await
    .expect(StatusCode::OK);

    // (segment as `b` sends it, the key it decodes to).
    let mut attacks: Vec<(String, String)> = Vec::new();
    for name in ["k", "done"] {
        for (segment, key) in [
            (name.to_owned(), name.to_owned()),
            (format!("a%2F{name}"), format!("a/{name}")),
            (format!("A%2F{name}"), format!("A/{name}")),
            (format!("..%2Fa%2F{name}"), format!("../a/{name}")),
            (format!("%2E%2E%2Fa%2F{name}"), format!("../a/{name}")),
            (format!("%2e%2e%2fa%2f{name}"), format!("../a/{name}")),
            (format!("%2Fa%2F{name}"), format!("/a/{name}")),
            (format!("b%2F..%2Fa%2F{name}"), format!("b/../a/{name}")),
            (format!("a%252F{name}"), format!("a%2F{name}")),
            (format!("a%5C{name}"), format!("a\\{name}")),
            (format!("..%5Ca%5C{name}"), format!("..\\a\\{name}")),
            (format!("a%2F%2F{name}"), format!("a//{name}")),
            (format!("a%2F.%2F{name}"), format!("a/./{name}")),
            (format!("a%3A{name}"), format!("a:{name}")),
            (format!("%7Ba%7D%2F{name}"), format!("{{a}}/{name}")),
        ] {
            if !attacks.iter().any(|(s, _)| *s == segment) {
                attacks.push((segment, key));
            }
        }
    }

    for (segment, _) in &attacks {
        // Nothing of `a`'s is visible or reachable from `b`.
        b.get(segment, "")
            .await
            .expect_error(StatusCode::NOT_FOUND, "not_found");
        b.get(segment, "?wait_ms=2000")
            .await
            .expect_error(StatusCode::NOT_FOUND, "not_found");
        for token in [live_token, done_token] {
            b.post(segment, "heartbeat", &json!({"token": token}))
                .await
                .expect_error(StatusCode::CONFLICT, "lease_lost");
            b.post(
                segment,
                "complete",
                &json!({"token": token, "result": "stolen"}),
            )
            .await
            .expect_error(StatusCode::CONFLICT, "lease_lost");
            b.post(segment, "fail", &json!({"token": token, "message": "x"}))
                .await
                .expect_error(StatusCode::CONFLICT, "lease_lost");
            b.post(segment, "release", &json!({"token": token}))
                .await
                .expect_error(StatusCode::CONFLICT, "lease_lost");
        }
        b.delete(segment)
            .await
            .expect_error(StatusCode::NOT_FOUND, "not_found");
    }

    // A claim is `b`'s own fresh record under the key it sent, never `a`'s
    // in-flight or completed one; another spelling of a key `b` claimed
    // before finds `b`'s record.
    let mut claimed_keys: Vec<&str> = Vec::new();
    for (segment, key) in &attacks {
        let expected = json!({"tenant": "b", "key": key});
        let claimed = b
            .post(segment, "claim", &json!({"kind": "secret", "owner": "b"}))
            .await;
        if claimed_keys.contains(&key.as_str()) {
            let body = claimed.expect(StatusCode::OK);
            assert_eq!(body["result"], expected, "{}: b's own record", claimed.what);
        } else {
            claimed_keys.push(key);
            let body = claimed.expect(StatusCode::CREATED);
            assert_eq!(body["key"].as_str(), Some(key.as_str()), "{}", claimed.what);
            let token = claimed.token();
            b.post(
                segment,
                "complete",
                &json!({"token": token, "result": expected}),
            )
            .await
            .expect(StatusCode::OK);
        }
        let stored = RequestKey::namespaced("b", &RequestKey::parse(key.as_str()).expect("valid"))
            .expect("a valid namespace");
        let record = fx
            .tenants
            .store
            .get(&stored)
            .await
            .expect("read the store")
            .unwrap_or_else(|| panic!("{}: b's {key:?} is stored at {stored:?}", fx.name));
        assert_eq!(
            stored_result(&record),
            json!({"tenant": "b", "key": key}),
            "{}: b's record",
            fx.name
        );
    }

    // `a`'s records are exactly as `a` left them, and show no namespace.
    let read = a.get("k", "").await;
    let body = read.expect(StatusCode::OK);
    assert_eq!(body["key"], "k", "{}: no namespace in the key", read.what);
    assert_eq!(body["state"], "processing", "{}", read.what);
    assert_eq!(body["token"].as_u64(), Some(live_token), "{}", read.what);
    assert_eq!(body["attempt"], 1, "{}", read.what);
    let read = a.get("done", "").await;
    let body = read.expect(StatusCode::OK);
    assert_eq!(
        body["key"], "done",
        "{}: no namespace in the key",
        read.what
    );
    assert_eq!(body["result"], json!({"secret": "a"}), "{}", read.what);
    assert_eq!(body["token"].as_u64(), Some(done_token), "{}", read.what);
    let renewed = a
        .post("k", "heartbeat", &json!({"token": live_token}))
        .await;
    renewed.expect(StatusCode::OK);
    for name in ["k", "done"] {
        let stored = RequestKey::namespaced("a", &RequestKey::parse(name).expect("valid"))
            .expect("a valid namespace");
        let record = fx
            .tenants
            .store
            .get(&stored)
            .await
            .expect("read the store")
            .unwrap_or_else(|| panic!("{}: a's {name:?} is stored at {stored:?}", fx.name));
        let token = if name == "k" { live_token } else { done_token };
        assert_eq!(
            record.token.get(),
            token,
            "{}: a's {name:?} kept its token",
            fx.name
        );
        // And nothing of `a`'s leaked to a bare, un-namespaced key.
        assert!(
            fx.tenants
                .store
                .get(&RequestKey::parse(name).expect("valid"))
                .await
                .expect("read the store")
                .is_none(),
            "{}: no record at the bare key {name:?}",
            fx.name
        );
    }

    // `a` in turn sees none of `b`'s records under their plain keys.
    a.get("a%2Fk", "")
        .await
        .expect_error(StatusCode::NOT_FOUND, "not_found");
    a.get("..%2Fa%2Fk", "")
        .await
        .expect_error(StatusCode::NOT_FOUND, "not_found");

    // Listings and counts hold to the namespace too: each tenant lists its
    // own keys, without the namespace, and a prefix that names the other
    // tenant stays inside the caller's own keys.
    let b_keys: BTreeSet<String> = claimed_keys.iter().map(|key| (*key).to_owned()).collect();
    assert_eq!(listed(&a, "").await, key_set(&["k", "done"]), "{}", fx.name);
    assert_eq!(listed(&b, "").await, b_keys, "{}", fx.name);
    let b_under_a: BTreeSet<String> = b_keys
        .iter()
        .filter(|key| key.starts_with("a/"))
        .cloned()
        .collect();
    assert!(!b_under_a.is_empty(), "b sent keys that start with `a/`");
    assert_eq!(listed(&b, "?prefix=a%2F").await, b_under_a, "{}", fx.name);
    assert_eq!(
        listed(&a, "?prefix=b%2F").await,
        key_set(&[]),
        "{}",
        fx.name
    );
    let reply = a.read("/v1/stats").await;
    let stats = reply.expect(StatusCode::OK);
    assert_eq!(
        stats["records"],
        json!({"processing": 1, "completed": 1, "failed": 0, "total": 2}),
        "{}: a counts its own records",
        fx.name
    );
    let reply = b.read("/v1/stats").await;
    let stats = reply.expect(StatusCode::OK);
    assert_eq!(
        stats["records"]["total"].as_u64(),
        Some(b_keys.len() as u64),
        "{}: b counts its own records: {stats}",
        fx.name
    );
}

/// Every key `caller` lists with `query`, following the cursor to the last
/// page (a Redis page may hold fewer than the limit, even none, while the
/// scan goes on, and may repeat a key when Redis resizes its key table
/// between pages, as other tests' keys come and go).
async fn listed(caller: &Caller<'_>, query: &str) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    let mut cursor: Option<String> = None;
    loop {
        let target = match &cursor {
            None => format!("/v1/requests{query}"),
            Some(cursor) => {
                let joiner = if query.is_empty() { '?' } else { '&' };
                format!("/v1/requests{query}{joiner}cursor={cursor}")
            }
        };
        let reply = caller.read(&target).await;
        let page = reply.expect(StatusCode::OK);
        keys.extend(page_keys(page));
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return keys,
        }
    }
}

/// With tokens configured, every `/v1` route without a token, with an
/// unknown one, or with a malformed `Authorization` header is 401
/// `unauthorized` and reaches no store; the operational routes need none.
pub(super) async fn requests_without_a_valid_token_are_unauthorized(fx: &Fixture) {
    let addr = fx.tenants.addr.as_str();
    let before = store_operations(addr).await;
    let headers: [Option<&str>; 8] = [
        None,
        Some("Bearer "),
        Some("Bearer nope-nope-nope-nope"),
        Some("Bearer tenant-a-token-012345678"),
        Some("Bearer tenant-a-token-0123456789x"),
        Some("Bearer tenant-a-token-0123456789,tenant-b-token-9876543210"),
        Some("Basic dGVuYW50LWEtdG9rZW4tMDEyMzQ1Njc4OQ=="),
        Some("tenant-a-token-0123456789"),
    ];
    for authorization in headers {
        let caller = Caller {
            addr,
            bearer: None,
            authorization,
            tenant: "intruder",
        };
        for reply in caller.every_route("k").await {
            reply.expect_error(StatusCode::UNAUTHORIZED, "unauthorized");
        }
        for target in ["/v1/requests", "/v1/stats"] {
            caller
                .read(target)
                .await
                .expect_error(StatusCode::UNAUTHORIZED, "unauthorized");
        }
    }
    let after = store_operations(addr).await;
    assert_eq!(
        before, after,
        "{}: an unauthorized request reaches no store",
        fx.name
    );
    for path in ["/healthz", "/metrics", "/openapi.json"] {
        let reply = send(addr, "GET", path, None, None).await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "{}: needs no token",
            reply.what
        );
    }
}
