//! Values: owners, fingerprints, results and failure messages meant to
//! break a store come back exactly, or are refused and change nothing.

use reqwest::StatusCode;
use serde_json::json;

use super::Fixture;

/// Owners, fingerprints, results and failure messages full of
/// metacharacters, NUL escapes, unicode and deep nesting come back exactly,
/// or are refused with a 4xx that changes nothing; never a 5xx.
pub(super) async fn hostile_values_round_trip_or_are_refused(fx: &Fixture) {
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
            claimed.expect(StatusCode::CREATED);
            let read = caller.get(&key, "").await;
            let body = read.expect(StatusCode::OK);
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
                again.expect(StatusCode::ACCEPTED)["owner"].as_str(),
                Some(text),
                "{}",
                again.what
            );
            let other = format!("{text}'");
            caller
                .post(&key, "claim", &json!({"kind": "v", "fingerprint": other}))
                .await
                .expect_error(StatusCode::UNPROCESSABLE_ENTITY, "fingerprint_mismatch");

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
                completed.expect(StatusCode::OK)["result"],
                result,
                "{}",
                completed.what
            );
            let read = caller.get(&key, "").await;
            assert_eq!(
                read.expect(StatusCode::OK)["result"],
                result,
                "{}",
                read.what
            );
            let hit = caller
                .post(&key, "claim", &json!({"kind": "v", "fingerprint": text}))
                .await;
            assert_eq!(hit.expect(StatusCode::OK)["result"], result, "{}", hit.what);

            // A failure message holding the text (and a line break, which
            // stack traces carry).
            let key = format!("message-{i}");
            let claimed = caller.post(&key, "claim", &json!({"kind": "v"})).await;
            claimed.expect(StatusCode::CREATED);
            let message = format!("{text}\n\tat line 2");
            let failed = caller
                .post(
                    &key,
                    "fail",
                    &json!({"token": claimed.token(), "message": message, "retryable": false}),
                )
                .await;
            assert_eq!(
                failed.expect(StatusCode::OK)["error"]["message"].as_str(),
                Some(message.as_str()),
                "{}",
                failed.what
            );
            let answer = caller.post(&key, "claim", &json!({"kind": "v"})).await;
            let body = answer.expect(StatusCode::OK);
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
                    .expect_error(StatusCode::BAD_REQUEST, "invalid_request");
            }
            caller
                .get(&key, "")
                .await
                .expect_error(StatusCode::NOT_FOUND, "not_found");
        }

        // A failure message with NUL is refused and changes nothing: the
        // record stays in flight under the same token.
        let claimed = caller
            .post("nul-message", "claim", &json!({"kind": "v"}))
            .await;
        claimed.expect(StatusCode::CREATED);
        let token = claimed.token();
        for message in ["\u{0}", "before\u{0}after", "'\u{0}'; DROP TABLE x; --"] {
            caller
                .post(
                    "nul-message",
                    "fail",
                    &json!({"token": token, "message": message}),
                )
                .await
                .expect_error(StatusCode::BAD_REQUEST, "invalid_request");
        }
        let read = caller.get("nul-message", "").await;
        let body = read.expect(StatusCode::OK);
        assert_eq!(body["state"], "processing", "{}", read.what);
        assert_eq!(body["token"].as_u64(), Some(token), "{}", read.what);

        // Results written with raw JSON escapes (surrogate pairs, `\u0000`,
        // escaped quotes and slashes) are stored as the JSON they denote.
        let claimed = caller.post("escapes", "claim", &json!({"kind": "v"})).await;
        claimed.expect(StatusCode::CREATED);
        let raw = format!(
            r#"{{"token": {}, "result": "\ud83e\udd80 \u0000 \"]]\" \/ \\ \u00e9 \u2028"}}"#,
            claimed.token()
        );
        let completed = caller.post_raw("escapes", "complete", raw).await;
        assert_eq!(
            completed.expect(StatusCode::OK)["result"],
            json!("🦀 \u{0} \"]]\" / \\ é \u{2028}"),
            "{}",
            completed.what
        );

        // A lone surrogate is not text: refused, or kept as the very JSON
        // that was sent. Never a 5xx (`post_raw` checks).
        let claimed = caller.post("lone", "claim", &json!({"kind": "v"})).await;
        claimed.expect(StatusCode::CREATED);
        let raw = format!(r#"{{"token": {}, "result": "\ud800"}}"#, claimed.token());
        let reply = caller.post_raw("lone", "complete", raw).await;
        match reply.status {
            StatusCode::OK => assert!(
                reply.text.contains(r#""result":"\ud800""#),
                "{}: a lone surrogate kept must come back as sent: {}",
                reply.what,
                reply.text
            ),
            _ => reply.expect_error(StatusCode::BAD_REQUEST, "invalid_request"),
        }

        // Deep nesting within the size limit: 100 levels round-trip
        // exactly; 100000 levels are refused or round-trip exactly.
        for depth in [100, 100_000] {
            let key = format!("nested-{depth}");
            let claimed = caller.post(&key, "claim", &json!({"kind": "v"})).await;
            claimed.expect(StatusCode::CREATED);
            let nested = format!("{}\"]]\"{}", "[".repeat(depth), "]".repeat(depth));
            let raw = format!(r#"{{"token": {}, "result": {nested}}}"#, claimed.token());
            let reply = caller.post_raw(&key, "complete", raw).await;
            if reply.status == StatusCode::OK {
                let read = caller.get(&key, "").await;
                assert_eq!(read.status, StatusCode::OK, "{}: {}", read.what, read.text);
                assert!(
                    read.text.contains(&format!("\"result\":{nested}")),
                    "{}: the nested result comes back exactly",
                    read.what
                );
            } else {
                assert!(depth > 100, "{}: 100 levels are accepted", reply.what);
                reply.expect_error(StatusCode::BAD_REQUEST, "invalid_request");
                let read = caller.get(&key, "").await;
                assert_eq!(
                    read.expect(StatusCode::OK)["state"],
                    "processing",
                    "{}",
                    read.what
                );
            }
        }

        // Kinds are `[a-z0-9_.-]` only: metacharacters are refused.
        for kind in ["v'", "v;--", "v]]", "V", "v/x", "v x", "v\u{0}", ""] {
            caller
                .post("kind", "claim", &json!({"kind": kind}))
                .await
                .expect_error(StatusCode::BAD_REQUEST, "invalid_request");
        }
        caller
            .get("kind", "")
            .await
            .expect_error(StatusCode::NOT_FOUND, "not_found");
    }
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
