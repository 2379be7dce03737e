//! Keys: hostile ones round-trip as records of their own, refused ones
//! reach no store, and path-like ones are plain bytes that escape nothing.

use std::collections::HashSet;

use onceflight_core::RequestKey;
use reqwest::StatusCode;
use serde_json::json;

use super::{Fixture, encode, send, store_operations, stored_result};

/// Keys full of SQL, Lua, Redis and path metacharacters, each store's own
/// separators, multi-byte UTF-8 and the 512-byte limit are accepted, come
/// back byte for byte through claim → complete → GET without the namespace,
/// and are each a record of their own (look-alikes included); each tenant's
/// records sit under its namespace in the store, and nowhere else.
pub(super) async fn hostile_keys_round_trip_as_distinct_records(fx: &Fixture) {
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
            let body = claimed.expect(StatusCode::CREATED);
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
            let body = completed.expect(StatusCode::OK);
            assert_eq!(
                body["key"].as_str(),
                Some(key.as_str()),
                "{}",
                completed.what
            );
            assert_eq!(body["state"], "completed", "{}", completed.what);
            assert_eq!(body["result"], result, "{}", completed.what);

            let read = caller.get(&segment, "").await;
            let body = read.expect(StatusCode::OK);
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
pub(super) async fn refused_keys_are_invalid_key_and_reach_no_store(fx: &Fixture) {
    let refused = refused_key_segments();
    for caller in fx.callers() {
        let before = store_operations(caller.addr).await;
        for segment in &refused {
            for reply in caller.every_route(segment).await {
                if segment.is_empty() && !reply.what.starts_with("POST") {
                    reply.expect_error(StatusCode::NOT_FOUND, "not_found");
                } else {
                    reply.expect_error(StatusCode::BAD_REQUEST, "invalid_key");
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
pub(super) async fn path_like_keys_are_plain_bytes_and_cannot_escape(fx: &Fixture) {
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
                    claimed.expect(StatusCode::CREATED);
                    tokens.push((key, claimed.token()));
                }
                Some(&(_, token)) => {
                    claimed.expect(StatusCode::ACCEPTED);
                    assert_eq!(
                        claimed.token(),
                        token,
                        "{}: another spelling of {key:?} finds the same record",
                        claimed.what
                    );
                }
            }
            let read = caller.get(segment, "").await;
            assert_eq!(
                read.expect(StatusCode::OK)["key"].as_str(),
                Some(key),
                "{}",
                read.what
            );
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
                    matches!(
                        reply.status,
                        StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED
                    ),
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
