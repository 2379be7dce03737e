//! Hostile keys and values on every store, through the served HTTP API
//! (docs/protocol.md §2, §5.7, §7).
//!
//! Each scenario runs on the memory store, on Postgres (`DATABASE_URL`, a
//! fresh schema) and on Redis (`REDIS_URL`, a fresh key prefix), each opened
//! by `onceflight_server::stores::open` as the binary opens it and served on
//! `127.0.0.1:0`: once with two bearer-token tenants (`a` and `b`) and once,
//! over a store of its own, without tokens. Without the backend's URL the
//! Postgres and Redis cases skip loudly, unless
//! `ONCEFLIGHT_REQUIRE_BACKENDS=1`.
//!
//! Requests go out over a hand-written HTTP/1.1 exchange rather than an HTTP
//! client, because clients normalise URLs (`..` and `%2e%2e` segments are
//! resolved away by the WHATWG URL rules), and the point here is to send
//! exactly the bytes an attacker would.
//!
//! What the router and §7 make of path-like keys, decided here and proved
//! below:
//!
//! - a key is opaque bytes to every store: `.`/`..` segments, `/`, `\` and
//!   percent signs mean nothing to them, and the server never resolves a
//!   path. `%2F` inside the `{key}` segment decodes to a `/` in the key (the
//!   key `a/b` is valid, §2 forbids only control characters); `%252F`
//!   decodes once, to the three characters `%2F`; a bare `..` or `%2E%2E`
//!   segment is the two-character key `..`.
//! - an unencoded `/` splits the path, so `/v1/requests/a/b` matches no route
//!   (404 `not_found`) and reaches no store.
//! - an empty `{key}` segment before an operation (`/v1/requests//claim`) is
//!   the empty key: 400 `invalid_key`. `GET`/`DELETE /v1/requests/` has no
//!   key segment at all and is no route: 404 `not_found`. Neither reaches
//!   the store.
//! - a tenant's key is stored as `<namespace>/<key>` and namespaces are
//!   `[a-z0-9_.-]`, so whatever tenant `b` sends lands under `b/` — `a/k`
//!   from `b` is the stored key `b/a/k`, never `a/k`.
//! - Unicode *control* characters (general category Cc: C0, DEL, C1) are
//!   refused in keys, owners and fingerprints, as §2/§7 say; other
//!   invisible characters (format characters such as U+200D or U+202E) are
//!   not control characters in Unicode's sense and are ordinary key bytes.
//! - failure messages may carry line breaks and tabs (stack traces do) but
//!   not NUL, which PostgreSQL's `text` cannot hold: a message with NUL is
//!   400 `invalid_request` on every store, so that all stores answer alike.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use onceflight_core::testkit::unique_name;
use onceflight_core::{RequestKey, RequestStore};
use onceflight_server::auth::Tokens;
use onceflight_server::stores::{self, StoreOptions};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Tenant `a`'s bearer token.
const TOKEN_A: &str = "tenant-a-token-0123456789";
/// Tenant `b`'s bearer token.
const TOKEN_B: &str = "tenant-b-token-9876543210";

/// Runs each named scenario on every store, as `<store>::<scenario>`.
macro_rules! on_every_store {
    ($($scenario:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $scenario() {
                    let fixture = super::Fixture::open("memory", "memory://".to_owned()).await;
                    super::$scenario(&fixture).await;
                }
            )*
        }

        #[cfg(feature = "postgres")]
        mod postgres {
            $(
                #[tokio::test]
                async fn $scenario() {
                    let Some(url) = onceflight_core::testkit::backend_url("DATABASE_URL") else { return };
                    let fixture = super::Fixture::open("postgres", url).await;
                    super::$scenario(&fixture).await;
                }
            )*
        }

        #[cfg(feature = "redis")]
        mod redis {
            $(
                #[tokio::test]
                async fn $scenario() {
                    let Some(url) = onceflight_core::testkit::backend_url("REDIS_URL") else { return };
                    let fixture = super::Fixture::open("redis", url).await;
                    super::$scenario(&fixture).await;
                }
            )*
        }
    };
}

on_every_store!(
    hostile_keys_round_trip_as_distinct_records,
    refused_keys_are_invalid_key_and_reach_no_store,
    path_like_keys_are_plain_bytes_and_cannot_escape,
    tenants_cannot_reach_each_other,
    requests_without_a_valid_token_are_unauthorized,
    hostile_values_round_trip_or_are_refused,
);

// ---------------------------------------------------------------------------
// The scenarios.
// ---------------------------------------------------------------------------

/// Keys full of SQL, Lua, Redis and path metacharacters, each store's own
/// separators, multi-byte UTF-8 and the 512-byte limit are accepted, come
/// back byte for byte through claim → complete → GET without the namespace,
/// and are each a record of their own (look-alikes included); each tenant's
/// records sit under its namespace in the store, and nowhere else.
async fn hostile_keys_round_trip_as_distinct_records(fx: &Fixture) {
    let keys = hostile_keys();
    let unique: HashSet<&String> = keys.iter().collect();
    assert_eq!(unique.len(), keys.len(), "the key list has no duplicates");

    for caller in fx.callers() {
        for key in &keys {
            let segment = encode(key);
            let claimed = caller
                .post(&segment, "claim", &json!({"kind": "hostile", "owner": "w"}))
                .await;
            // A fresh record for every key: were two keys one record, the
            // second would answer 200 `completed`, not 201.
            let body = claimed.expect(201);
            assert_eq!(body["state"], "acquired", "{}", claimed.what);
            assert_eq!(body["key"].as_str(), Some(key.as_str()), "{}", claimed.what);
            let token = claimed.token();

            let result = json!({"tenant": caller.tenant, "key": key});
            let completed = caller
                .post(
                    &segment,
                    "complete",
                    &json!({"token": token, "result": result}),
                )
                .await;
            let body = completed.expect(200);
            assert_eq!(
                body["key"].as_str(),
                Some(key.as_str()),
                "{}",
                completed.what
            );
            assert_eq!(body["state"], "completed", "{}", completed.what);
            assert_eq!(body["result"], result, "{}", completed.what);

            let read = caller.get(&segment, "").await;
            let body = read.expect(200);
            assert_eq!(body["key"].as_str(), Some(key.as_str()), "{}", read.what);
            assert_eq!(body["result"], result, "{}", read.what);
            assert_eq!(body["token"].as_u64(), Some(token), "{}", read.what);
        }
    }

    // In the store itself: every record sits exactly at `<tenant>/<key>`
    // (or at `<key>` for the service without tokens) and nowhere else.
    for key in &keys {
        let plain = RequestKey::parse(key.as_str()).expect("an accepted key is valid");
        for tenant in ["a", "b"] {
            let stored = RequestKey::namespaced(tenant, &plain).expect("a valid namespace");
            let record = fx
                .tenants
                .store
                .get(&stored)
                .await
                .expect("read the store")
                .unwrap_or_else(|| {
                    panic!(
                        "{}: tenant {tenant}'s {key:?} is in the store at {stored:?}",
                        fx.name
                    )
                });
            assert_eq!(record.key, stored, "{}: the stored record's key", fx.name);
            assert_eq!(
                stored_result(&record),
                json!({"tenant": tenant, "key": key}),
                "{}: the record at {stored:?} is tenant {tenant}'s",
                fx.name
            );
        }
        // The bare key holds a record only when it reads as another
        // tenant's stored key (`a/b` is tenant `a`'s key `b`): then it is
        // that record, and the bare key never holds anything of its own.
        if let Some(record) = fx.tenants.store.get(&plain).await.expect("read the store") {
            let result = stored_result(&record);
            let reassembled = format!(
                "{}/{}",
                result["tenant"].as_str().unwrap_or_default(),
                result["key"].as_str().unwrap_or_default()
            );
            assert_eq!(
                reassembled, *key,
                "{}: a record at the bare key {key:?} can only be a tenant's namespaced record",
                fx.name
            );
        }
        let open = fx
            .open
            .store
            .get(&plain)
            .await
            .expect("read the store")
            .unwrap_or_else(|| panic!("{}: {key:?} without tokens is stored as it is", fx.name));
        assert_eq!(
            stored_result(&open),
            json!({"tenant": "none", "key": key}),
            "{}: the tokenless service's record of {key:?}",
            fx.name
        );
    }
}

/// NUL, every C0 and C1 control character, DEL, overlong and otherwise
/// invalid UTF-8, surrogates, code points past U+10FFFF and a 513-byte key
/// are 400 `invalid_key` on every route, as is the empty key (bar `GET` and
/// `DELETE /v1/requests/`, which are no route), and not one of them reaches
/// the store.
async fn refused_keys_are_invalid_key_and_reach_no_store(fx: &Fixture) {
    let refused = refused_key_segments();
    for caller in fx.callers() {
        let before = store_operations(caller.addr).await;
        for segment in &refused {
            for reply in caller.every_route(segment).await {
                if segment.is_empty() && !reply.what.starts_with("POST") {
                    reply.expect_error(404, "not_found");
                } else {
                    reply.expect_error(400, "invalid_key");
                }
            }
        }
        let after = store_operations(caller.addr).await;
        assert_eq!(
            before, after,
            "{} ({}): a refused key never reaches the store",
            fx.name, caller.tenant
        );
    }
    // The nearest valid neighbours of a few refused keys were never
    // created: the refusal stored nothing under another spelling.
    for neighbour in ["a", "ab", "a b", "a\u{fffd}b", "\u{fffd}", "/", "\u{2f}"] {
        let plain = RequestKey::parse(neighbour).expect("a valid key");
        for store in [&fx.tenants.store, &fx.open.store] {
            assert!(
                store.get(&plain).await.expect("read the store").is_none(),
                "{}: nothing was stored at {neighbour:?}",
                fx.name
            );
        }
        let namespaced = RequestKey::namespaced("a", &plain).expect("a valid namespace");
        assert!(
            fx.tenants
                .store
                .get(&namespaced)
                .await
                .expect("read the store")
                .is_none(),
            "{}: nothing was stored at {namespaced:?}",
            fx.name
        );
    }
}

/// `..`, `.`, `/`, `\` and their percent-encoded (and double-encoded)
/// spellings are ordinary key bytes: each spelling decodes once, the same
/// key spelled two ways is the same record, and an unencoded `/` is no
/// route at all.
async fn path_like_keys_are_plain_bytes_and_cannot_escape(fx: &Fixture) {
    // (path segment as sent, the key it must decode to).
    let spellings = [
        ("..", ".."),
        ("%2E%2E", ".."),
        ("%2e%2e", ".."),
        (".", "."),
        ("%2E", "."),
        ("..%2Fx", "../x"),
        ("%2e%2e%2fx", "../x"),
        ("%2E%2E%2F%2E%2E%2Fetc%2Fpasswd", "../../etc/passwd"),
        ("x%2F..", "x/.."),
        ("a%2F..%2Fb", "a/../b"),
        ("%2F", "/"),
        ("%2Fx", "/x"),
        ("%252F", "%2F"),
        ("%252e%252e%252f", "%2e%2e%2f"),
        ("..%5Cx", "..\\x"),
        ("%5C", "\\"),
        ("%3A", ":"),
        ("%3F", "?"),
        ("%23", "#"),
    ];
    for caller in fx.callers() {
        // The first spelling of each key claims it; every other spelling of
        // the same key must find that record.
        let mut tokens: Vec<(&str, u64)> = Vec::new();
        for (segment, key) in spellings {
            let claimed = caller
                .post(
                    segment,
                    "claim",
                    &json!({"kind": "path", "lease_ms": 60_000}),
                )
                .await;
            assert_eq!(
                claimed.json["key"].as_str(),
                Some(key),
                "{}: {segment:?} decodes once, to {key:?}",
                claimed.what
            );
            match tokens.iter().find(|(k, _)| *k == key) {
                None => {
                    claimed.expect(201);
                    tokens.push((key, claimed.token()));
                }
                Some(&(_, token)) => {
                    claimed.expect(202);
                    assert_eq!(
                        claimed.token(),
                        token,
                        "{}: another spelling of {key:?} finds the same record",
                        claimed.what
                    );
                }
            }
            let read = caller.get(segment, "").await;
            assert_eq!(read.expect(200)["key"].as_str(), Some(key), "{}", read.what);
        }
        if let Some(namespace) = caller.namespace() {
            for (key, token) in &tokens {
                let stored = RequestKey::namespaced(
                    namespace,
                    &RequestKey::parse(*key).expect("a valid key"),
                )
                .expect("a valid namespace");
                let record = fx
                    .tenants
                    .store
                    .get(&stored)
                    .await
                    .expect("read the store")
                    .unwrap_or_else(|| panic!("{}: {key:?} is stored at {stored:?}", fx.name));
                assert_eq!(record.token.get(), *token, "{}: {stored:?}", fx.name);
            }
        }

        // An unencoded slash splits the path: no route, no store call.
        let before = store_operations(caller.addr).await;
        for target in [
            "/v1/requests/a/b",
            "/v1/requests/a/b/claim",
            "/v1/requests/../a/k",
            "/v1/requests/../../healthz/x",
            "/v1/requests/b/../a/k/claim",
        ] {
            for method in ["GET", "POST", "DELETE"] {
                let reply = send(
                    caller.addr,
                    method,
                    target,
                    caller.bearer,
                    Some(json!({"kind": "path", "token": 1}).to_string()),
                )
                .await;
                assert!(
                    matches!(reply.status, 404 | 405),
                    "{}: a path with an unencoded slash in the key is no route, got {} {}",
                    reply.what,
                    reply.status,
                    reply.text
                );
            }
        }
        let after = store_operations(caller.addr).await;
        assert_eq!(
            before, after,
            "{} ({}): an unrouted path reaches no store",
            fx.name, caller.tenant
        );
    }
}

/// Whatever key tenant `b` sends — `a/k`, `../a/k`, encoded, double-encoded,
/// with backslashes or doubled slashes — it can neither read, claim,
/// complete, fail, release, renew, delete nor wait on tenant `a`'s records;
/// `a`'s records never change and never show a namespace, and `b`'s own
/// records land under `b/`.
async fn tenants_cannot_reach_each_other(fx: &Fixture) {
    let a = fx.tenant(TOKEN_A, "a");
    let b = fx.tenant(TOKEN_B, "b");

    // Tenant `a`: one record in flight, one completed.
    let live = a
        .post("k", "claim", &json!({"kind": "secret", "lease_ms": 60_000}))
        .await;
    live.expect(201);
    let live_token = live.token();
    let done = a.post("done", "claim", &json!({"kind": "secret"})).await;
    done.expect(201);
    let done_token = done.token();
    a.post(
        "done",
        "complete",
        &json!({"token": done_token, "result": {"secret": "a"}}),
    )
    .await
    .expect(200);

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
        b.get(segment, "").await.expect_error(404, "not_found");
        b.get(segment, "?wait_ms=2000")
            .await
            .expect_error(404, "not_found");
        for token in [live_token, done_token] {
            b.post(segment, "heartbeat", &json!({"token": token}))
                .await
                .expect_error(409, "lease_lost");
            b.post(
                segment,
                "complete",
                &json!({"token": token, "result": "stolen"}),
            )
            .await
            .expect_error(409, "lease_lost");
            b.post(segment, "fail", &json!({"token": token, "message": "x"}))
                .await
                .expect_error(409, "lease_lost");
            b.post(segment, "release", &json!({"token": token}))
                .await
                .expect_error(409, "lease_lost");
        }
        b.delete(segment).await.expect_error(404, "not_found");
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
            let body = claimed.expect(200);
            assert_eq!(body["result"], expected, "{}: b's own record", claimed.what);
        } else {
            claimed_keys.push(key);
            let body = claimed.expect(201);
            assert_eq!(body["key"].as_str(), Some(key.as_str()), "{}", claimed.what);
            let token = claimed.token();
            b.post(
                segment,
                "complete",
                &json!({"token": token, "result": expected}),
            )
            .await
            .expect(200);
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
    let body = read.expect(200);
    assert_eq!(body["key"], "k", "{}: no namespace in the key", read.what);
    assert_eq!(body["state"], "processing", "{}", read.what);
    assert_eq!(body["token"].as_u64(), Some(live_token), "{}", read.what);
    assert_eq!(body["attempt"], 1, "{}", read.what);
    let read = a.get("done", "").await;
    let body = read.expect(200);
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
    renewed.expect(200);
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
    a.get("a%2Fk", "").await.expect_error(404, "not_found");
    a.get("..%2Fa%2Fk", "").await.expect_error(404, "not_found");
}

/// With tokens configured, every `/v1` route without a token, with an
/// unknown one, or with a malformed `Authorization` header is 401
/// `unauthorized` and reaches no store; the operational routes need none.
async fn requests_without_a_valid_token_are_unauthorized(fx: &Fixture) {
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
            reply.expect_error(401, "unauthorized");
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
        assert_eq!(reply.status, 200, "{}: needs no token", reply.what);
    }
}

/// Owners, fingerprints, results and failure messages full of
/// metacharacters, NUL escapes, unicode and deep nesting come back exactly,
/// or are refused with a 4xx that changes nothing; never a 5xx.
async fn hostile_values_round_trip_or_are_refused(fx: &Fixture) {
    for caller in fx.callers() {
        for (i, text) in hostile_texts().iter().enumerate() {
            let text = text.as_str();
            // Owner and fingerprint round-trip through claim, GET and a
            // second claim's in-flight answer.
            let key = format!("owner-{i}");
            let claimed = caller
                .post(
                    &key,
                    "claim",
                    &json!({"kind": "v", "owner": text, "fingerprint": text, "lease_ms": 60_000}),
                )
                .await;
            claimed.expect(201);
            let read = caller.get(&key, "").await;
            let body = read.expect(200);
            assert_eq!(body["owner"].as_str(), Some(text), "{}", read.what);
            assert_eq!(body["fingerprint"].as_str(), Some(text), "{}", read.what);
            let again = caller
                .post(
                    &key,
                    "claim",
                    &json!({"kind": "v", "fingerprint": text, "owner": "other"}),
                )
                .await;
            assert_eq!(
                again.expect(202)["owner"].as_str(),
                Some(text),
                "{}",
                again.what
            );
            let other = format!("{text}'");
            caller
                .post(&key, "claim", &json!({"kind": "v", "fingerprint": other}))
                .await
                .expect_error(422, "fingerprint_mismatch");

            // A result holding the text, NULs, quotes and brackets.
            let result = json!({
                "text": text,
                "nul": "a\u{0}b\u{0}",
                "list": [text, "\u{0}", "]]", "'\"", null, true, 1.5, -0, 12_345_678_901_234_567_u64],
                "\u{0}key": {"]]": "[[", "%s": "$1"},
            });
            let token = claimed.token();
            let completed = caller
                .post(&key, "complete", &json!({"token": token, "result": result}))
                .await;
            assert_eq!(
                completed.expect(200)["result"],
                result,
                "{}",
                completed.what
            );
            let read = caller.get(&key, "").await;
            assert_eq!(read.expect(200)["result"], result, "{}", read.what);
            let hit = caller
                .post(&key, "claim", &json!({"kind": "v", "fingerprint": text}))
                .await;
            assert_eq!(hit.expect(200)["result"], result, "{}", hit.what);

            // A failure message holding the text (and a line break, which
            // stack traces carry).
            let key = format!("message-{i}");
            let claimed = caller.post(&key, "claim", &json!({"kind": "v"})).await;
            claimed.expect(201);
            let message = format!("{text}\n\tat line 2");
            let failed = caller
                .post(
                    &key,
                    "fail",
                    &json!({"token": claimed.token(), "message": message, "retryable": false}),
                )
                .await;
            assert_eq!(
                failed.expect(200)["error"]["message"].as_str(),
                Some(message.as_str()),
                "{}",
                failed.what
            );
            let answer = caller.post(&key, "claim", &json!({"kind": "v"})).await;
            let body = answer.expect(200);
            assert_eq!(body["state"], "failed", "{}", answer.what);
            assert_eq!(
                body["error"]["message"].as_str(),
                Some(message.as_str()),
                "{}",
                answer.what
            );
        }

        // Control characters in owners and fingerprints are refused, and
        // the claim creates nothing.
        for (i, bad) in ["a\u{0}b", "a\nb", "\u{7f}", "a\u{85}b", "\u{9f}"]
            .iter()
            .enumerate()
        {
            let key = format!("bad-field-{i}");
            for field in ["owner", "fingerprint"] {
                let mut body = json!({"kind": "v"});
                body[field] = json!(bad);
                caller
                    .post(&key, "claim", &body)
                    .await
                    .expect_error(400, "invalid_request");
            }
            caller.get(&key, "").await.expect_error(404, "not_found");
        }

        // A failure message with NUL is refused and changes nothing: the
        // record stays in flight under the same token.
        let claimed = caller
            .post("nul-message", "claim", &json!({"kind": "v"}))
            .await;
        claimed.expect(201);
        let token = claimed.token();
        for message in ["\u{0}", "before\u{0}after", "'\u{0}'; DROP TABLE x; --"] {
            caller
                .post(
                    "nul-message",
                    "fail",
                    &json!({"token": token, "message": message}),
                )
                .await
                .expect_error(400, "invalid_request");
        }
        let read = caller.get("nul-message", "").await;
        let body = read.expect(200);
        assert_eq!(body["state"], "processing", "{}", read.what);
        assert_eq!(body["token"].as_u64(), Some(token), "{}", read.what);

        // Results written with raw JSON escapes (surrogate pairs, `\u0000`,
        // escaped quotes and slashes) are stored as the JSON they denote.
        let claimed = caller.post("escapes", "claim", &json!({"kind": "v"})).await;
        claimed.expect(201);
        let raw = format!(
            r#"{{"token": {}, "result": "\ud83e\udd80 \u0000 \"]]\" \/ \\ \u00e9 \u2028"}}"#,
            claimed.token()
        );
        let completed = caller.post_raw("escapes", "complete", raw).await;
        assert_eq!(
            completed.expect(200)["result"],
            json!("🦀 \u{0} \"]]\" / \\ é \u{2028}"),
            "{}",
            completed.what
        );

        // A lone surrogate is not text: refused, or kept as the very JSON
        // that was sent. Never a 5xx (`post_raw` checks).
        let claimed = caller.post("lone", "claim", &json!({"kind": "v"})).await;
        claimed.expect(201);
        let raw = format!(r#"{{"token": {}, "result": "\ud800"}}"#, claimed.token());
        let reply = caller.post_raw("lone", "complete", raw).await;
        match reply.status {
            200 => assert!(
                reply.text.contains(r#""result":"\ud800""#),
                "{}: a lone surrogate kept must come back as sent: {}",
                reply.what,
                reply.text
            ),
            _ => reply.expect_error(400, "invalid_request"),
        }

        // Deep nesting within the size limit: 100 levels round-trip
        // exactly; 100000 levels are refused or round-trip exactly.
        for depth in [100, 100_000] {
            let key = format!("nested-{depth}");
            let claimed = caller.post(&key, "claim", &json!({"kind": "v"})).await;
            claimed.expect(201);
            let nested = format!("{}\"]]\"{}", "[".repeat(depth), "]".repeat(depth));
            let raw = format!(r#"{{"token": {}, "result": {nested}}}"#, claimed.token());
            let reply = caller.post_raw(&key, "complete", raw).await;
            if reply.status == 200 {
                let read = caller.get(&key, "").await;
                assert_eq!(read.status, 200, "{}: {}", read.what, read.text);
                assert!(
                    read.text.contains(&format!("\"result\":{nested}")),
                    "{}: the nested result comes back exactly",
                    read.what
                );
            } else {
                assert!(depth > 100, "{}: 100 levels are accepted", reply.what);
                reply.expect_error(400, "invalid_request");
                let read = caller.get(&key, "").await;
                assert_eq!(read.expect(200)["state"], "processing", "{}", read.what);
            }
        }

        // Kinds are `[a-z0-9_.-]` only: metacharacters are refused.
        for kind in ["v'", "v;--", "v]]", "V", "v/x", "v x", "v\u{0}", ""] {
            caller
                .post("kind", "claim", &json!({"kind": kind}))
                .await
                .expect_error(400, "invalid_request");
        }
        caller.get("kind", "").await.expect_error(404, "not_found");
    }
}

// ---------------------------------------------------------------------------
// The inputs.
// ---------------------------------------------------------------------------

/// Valid keys meant to break something: SQL, LIKE, Lua, Redis (glob,
/// hash-tag and this store's own `:record:`/`:lease:`/`:fence:` separators),
/// the server's `/` namespace separator, look-alike pairs, multi-byte and
/// invisible-but-not-control characters, and keys of exactly 512 bytes.
fn hostile_keys() -> Vec<String> {
    let mut keys: Vec<String> = [
        // SQL and its look-alikes.
        "a'b",
        "a''b",
        "'",
        "''",
        "a\"b",
        "a;b",
        "a--b",
        "-- comment",
        "'; DROP TABLE onceflight_requests; --",
        "x' OR '1'='1",
        "$1",
        "$$",
        "$tag$",
        "a\\b",
        "a\\\\b",
        "\\",
        "100%",
        "%",
        "%%",
        "a_b",
        "a%b",
        "E'\\x00'",
        // Lua, Redis and printf.
        "]]",
        "[[",
        "a]]..[[b",
        "]=]",
        "[==[",
        "{",
        "}",
        "{}",
        "a{b}",
        "a{c}",
        "{a}",
        "{a}b",
        "*",
        "?",
        "a*",
        "a?",
        "[a-z]",
        ":",
        "a:b",
        "a::b",
        "a b",
        " lead",
        "trail ",
        " ",
        "%s",
        "%s%s%s%n",
        "%d",
        // Store separators.
        "record:x",
        "x:record:y",
        "x:lease:y",
        "x:fence:y",
        "{cbf29ce484222325}:record:",
        "onceflight:wake",
        "wake",
        "t:k",
        // Server separator: `a/b` from a tenant is stored as `<ns>/a/b`.
        "a/b",
        "b/a",
        "/",
        "//",
        "a//b",
        "/a",
        "a/",
        // Unicode and look-alikes.
        "image|9f86d081884c7d659a2feaa0c55ad015",
        "日本語",
        "🦀",
        "🦀🦀",
        "é",
        "e\u{301}",
        "ﬁ",
        "fi",
        "\u{200d}",
        "a\u{200b}b",
        "ab",
        "\u{feff}a",
        "\u{202e}a",
        "\u{2028}",
        "\u{fffd}",
        "\u{10ffff}",
    ]
    .iter()
    .map(|k| (*k).to_owned())
    .collect();
    keys.push("\"\\r\\n\"".to_owned());
    // Exactly 512 bytes, in one-, two-, three- and four-byte characters.
    keys.push("k".repeat(512));
    keys.push(format!("{}é", "k".repeat(510)));
    keys.push(format!("{}日", "k".repeat(509)));
    keys.push("🦀".repeat(128));
    keys.push(format!("'{}'", ";".repeat(510)));
    keys
}

/// Path segments (percent-encoded as sent) whose keys §2/§7 refuse.
fn refused_key_segments() -> Vec<String> {
    let mut segments = Vec::new();
    // Every C0 control character, alone and inside a key, and DEL.
    for byte in (0x00..0x20).chain([0x7f]) {
        segments.push(format!("%{byte:02X}"));
        segments.push(format!("a%{byte:02X}b"));
    }
    // Every C1 control character (U+0080–U+009F, encoded as UTF-8).
    for low in 0x80..0xa0_u8 {
        segments.push(format!("a%C2%{low:02X}b"));
    }
    segments.extend(
        [
            // Overlong encodings of `/`, `.` and NUL.
            "%C0%AF",
            "%E0%80%AF",
            "%F0%80%80%AF",
            "%C0%AE%C0%AE",
            "%C0%AE%C0%AE%C0%AF",
            "%C0%80",
            "a%C0%80b",
            // Invalid UTF-8: stray bytes, truncated and out-of-range
            // sequences, encoded surrogates.
            "%FF",
            "%FE%FF",
            "%80",
            "a%C3",
            "%E6%97",
            "%F4%90%80%80",
            "%ED%A0%80",
            "%ED%B0%80",
            "%F8%88%80%80%80",
        ]
        .iter()
        .map(|s| (*s).to_owned()),
    );
    // The empty key.
    segments.push(String::new());
    // One byte over the limit, in one- and three-byte characters.
    segments.push("k".repeat(513));
    segments.push(encode(&"日".repeat(171)));
    segments.push(encode(&format!("{}é", "k".repeat(511))));
    segments
}

/// Owners, fingerprints and message texts (≤ 128 bytes, no control
/// characters) meant to break something.
fn hostile_texts() -> Vec<String> {
    [
        "'; DROP TABLE onceflight_requests; --",
        "a''b\"c\\d",
        "]]..[[x]]",
        "%s%n%d %% $1 $$",
        "{tag}:record:x",
        "x' OR '1'='1",
        "🦀 日本語 é e\u{301}",
        "\u{202e}evil\u{200d}",
        "\\u0000",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

// ---------------------------------------------------------------------------
// The services.
// ---------------------------------------------------------------------------

/// One store under test: a service with tenants `a` and `b`, and a service
/// without tokens over a store of its own (sharing one would let the
/// tokenless service's key `a/x` meet tenant `a`'s key `x`, which is the
/// operator's business, not an escape).
struct Fixture {
    name: &'static str,
    tenants: Service,
    open: Service,
}

/// A served store: its address and the store itself, read directly to see
/// where records landed.
struct Service {
    addr: String,
    store: Arc<dyn RequestStore>,
}

impl Fixture {
    async fn open(name: &'static str, url: String) -> Self {
        let tokens =
            Tokens::from_env_list(&format!("a:{TOKEN_A},b:{TOKEN_B}")).expect("valid tokens");
        Self {
            name,
            tenants: Service::open(&url, tokens).await,
            open: Service::open(&url, Tokens::default()).await,
        }
    }

    /// Every caller a scenario runs as: the two tenants, and the tokenless
    /// service's caller.
    fn callers(&self) -> [Caller<'_>; 3] {
        [
            self.tenant(TOKEN_A, "a"),
            self.tenant(TOKEN_B, "b"),
            Caller {
                addr: &self.open.addr,
                bearer: None,
                authorization: None,
                tenant: "none",
            },
        ]
    }

    fn tenant(&self, token: &'static str, tenant: &'static str) -> Caller<'_> {
        Caller {
            addr: &self.tenants.addr,
            bearer: Some(token),
            authorization: None,
            tenant,
        }
    }
}

impl Service {
    /// Opens a fresh store at `url` (its own Postgres schema or Redis key
    /// prefix) and serves it with `tokens`.
    async fn open(url: &str, tokens: Tokens) -> Self {
        let options = StoreOptions {
            pg_schema: Some(unique_name("t_hostile")),
            pg_pool_size: Some(4),
            redis_prefix: Some(format!("{}:", unique_name("t_hostile"))),
            ..StoreOptions::default()
        };
        let store = stores::open(url, &options)
            .await
            .unwrap_or_else(|e| panic!("open the store: {e:#}"));
        let base = common::serve_in_process(Arc::clone(&store), tokens).await;
        let addr = base
            .strip_prefix("http://")
            .expect("an http:// base URL")
            .to_owned();
        Self { addr, store }
    }
}

/// Who sends a request, and with what `Authorization` header.
#[derive(Clone, Copy)]
struct Caller<'a> {
    addr: &'a str,
    bearer: Option<&'a str>,
    /// A raw `Authorization` header, sent instead of `bearer`'s.
    authorization: Option<&'a str>,
    /// The tenant's namespace (`a`, `b`), or a name for messages.
    tenant: &'static str,
}

impl Caller<'_> {
    /// The namespace this caller's keys are stored under, if any.
    fn namespace(&self) -> Option<&'static str> {
        self.bearer.map(|_| self.tenant)
    }

    fn header(&self) -> Option<String> {
        self.authorization
            .map(str::to_owned)
            .or_else(|| self.bearer.map(|t| format!("Bearer {t}")))
    }

    async fn post(&self, segment: &str, op: &str, body: &Value) -> Reply {
        self.post_raw(segment, op, body.to_string()).await
    }

    async fn post_raw(&self, segment: &str, op: &str, body: String) -> Reply {
        send_with(
            self.addr,
            "POST",
            &format!("/v1/requests/{segment}/{op}"),
            self.header().as_deref(),
            Some(body),
        )
        .await
    }

    async fn get(&self, segment: &str, query: &str) -> Reply {
        send_with(
            self.addr,
            "GET",
            &format!("/v1/requests/{segment}{query}"),
            self.header().as_deref(),
            None,
        )
        .await
    }

    async fn delete(&self, segment: &str) -> Reply {
        send_with(
            self.addr,
            "DELETE",
            &format!("/v1/requests/{segment}"),
            self.header().as_deref(),
            None,
        )
        .await
    }

    /// One request to every `/v1` route for `segment`, with valid bodies.
    async fn every_route(&self, segment: &str) -> Vec<Reply> {
        vec![
            self.post(segment, "claim", &json!({"kind": "k"})).await,
            self.post(segment, "heartbeat", &json!({"token": 1})).await,
            self.post(segment, "complete", &json!({"token": 1, "result": 1}))
                .await,
            self.post(segment, "fail", &json!({"token": 1, "message": "m"}))
                .await,
            self.post(segment, "release", &json!({"token": 1})).await,
            self.get(segment, "").await,
            self.get(segment, "?wait_ms=5000").await,
            self.delete(segment).await,
        ]
    }
}

/// The result stored on `record`, as JSON.
fn stored_result(record: &onceflight_core::Record) -> Value {
    let bytes = record
        .result
        .as_deref()
        .unwrap_or_else(|| panic!("the record at {:?} has a result", record.key));
    serde_json::from_slice(bytes).expect("a result stored through the API is JSON")
}

/// How many store operations the service at `addr` has made, from its
/// `/metrics`: every operation is timed there, so an unchanged count means
/// that no request reached the store.
async fn store_operations(addr: &str) -> u64 {
    let reply = send(addr, "GET", "/metrics", None, None).await;
    assert_eq!(reply.status, 200, "{}: {}", reply.what, reply.text);
    reply
        .text
        .lines()
        .filter(|line| line.starts_with("onceflight_store_operation_duration_seconds_count"))
        .map(|line| {
            let count = line.rsplit(' ').next().unwrap_or_default();
            count
                .parse::<f64>()
                .unwrap_or_else(|_| panic!("a count in {line:?}")) as u64
        })
        .sum()
}

/// Percent-encodes every byte of `key` but ASCII letters and digits, so the
/// path carries exactly these bytes.
fn encode(key: &str) -> String {
    key.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------
// A literal HTTP/1.1 exchange.
// ---------------------------------------------------------------------------

/// A reply: status, raw body and the body as JSON (`Null` if it is not).
#[derive(Debug)]
struct Reply {
    /// `METHOD target`, for messages.
    what: String,
    status: u16,
    text: String,
    json: Value,
}

impl Reply {
    /// The JSON body, after asserting that the status is `status`.
    #[track_caller]
    fn expect(&self, status: u16) -> &Value {
        assert_eq!(
            self.status, status,
            "{}: expected {status}, got {} {}",
            self.what, self.status, self.text
        );
        &self.json
    }

    /// Asserts that the reply is the error `code` with `status`.
    #[track_caller]
    fn expect_error(&self, status: u16, code: &str) {
        assert_eq!(
            (self.status, self.json["error"]["code"].as_str()),
            (status, Some(code)),
            "{}: expected {status} `{code}`, got {} {}",
            self.what,
            self.status,
            self.text
        );
    }

    /// The body's `token`, which must be there.
    #[track_caller]
    fn token(&self) -> u64 {
        self.json["token"]
            .as_u64()
            .unwrap_or_else(|| panic!("{}: no token in {}", self.what, self.text))
    }
}

/// Sends `method target` with `Authorization: Bearer <bearer>` if given.
async fn send(
    addr: &str,
    method: &str,
    target: &str,
    bearer: Option<&str>,
    body: Option<String>,
) -> Reply {
    let header = bearer.map(|t| format!("Bearer {t}"));
    send_with(addr, method, target, header.as_deref(), body).await
}

/// Sends exactly `method target` over a fresh connection, with
/// `authorization` as the `Authorization` header and `body` as JSON if
/// given; asserts that the answer comes within 30 s, is never a 5xx, and
/// that every error carries `{"error": {"code", "message"}}`.
async fn send_with(
    addr: &str,
    method: &str,
    target: &str,
    authorization: Option<&str>,
    body: Option<String>,
) -> Reply {
    let what = format!("{method} {target}");
    let mut request =
        format!("{method} {target} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n");
    if let Some(authorization) = authorization {
        request.push_str(&format!("authorization: {authorization}\r\n"));
    }
    let body = body.unwrap_or_default();
    if !body.is_empty() {
        request.push_str("content-type: application/json\r\n");
    }
    request.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
    request.push_str(&body);
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        std::io::Result::Ok(raw)
    };
    let raw = tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within 30 s"))
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("{what}: no end of headers in the answer"));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut payload = raw[split + 4..].to_vec();
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{what}: no status in {head:?}"));
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        payload = dechunk(&payload);
    }
    let text =
        String::from_utf8(payload).unwrap_or_else(|e| panic!("{what}: a non-UTF-8 body: {e}"));
    let json = common::checked_json(&what, status, &text);
    Reply {
        what,
        status,
        text,
        json,
    }
}

/// The body of a chunked transfer encoding.
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let Some(end) = raw.windows(2).position(|w| w == b"\r\n") else {
            return body;
        };
        let size = std::str::from_utf8(&raw[..end])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok())
            .unwrap_or(0);
        if size == 0 {
            return body;
        }
        let start = end + 2;
        body.extend_from_slice(&raw[start..start + size]);
        raw = &raw[start + size + 2..];
    }
}
