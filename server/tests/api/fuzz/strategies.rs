//! What the fuzzed requests are made of: methods, paths, queries, headers
//! and bodies, each mostly near a valid request and sometimes far from
//! one.

use axum::http::Method;
use proptest::prelude::*;
use serde_json::{Value, json};

use super::{ALPHA, BETA, MAX_BODY, MAX_RESULT, SEEDED};

/// One fuzzed request, kept as parts so a failure shows what was sent.
#[derive(Clone, Debug)]
pub(super) struct Case {
    pub(super) method: Method,
    pub(super) path: String,
    pub(super) query: Option<String>,
    pub(super) content_type: Option<String>,
    pub(super) authorization: Option<String>,
    pub(super) extra_header: Option<(String, String)>,
    pub(super) body: Vec<u8>,
}

/// Every byte outside the unreserved set, percent-encoded.
fn encode_all(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(b) {
                char::from(*b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A `{key}` path segment.
fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        // The seeded keys, encoded as a client would.
        6 => prop::sample::select(SEEDED.to_vec()).prop_map(|(k, _)| encode_all(k.as_bytes())),
        // Fresh valid keys.
        3 => "[a-z]{1,8}\\|[a-z0-9]{1,16}".prop_map(|k| encode_all(k.as_bytes())),
        // Random bytes, percent-encoded.
        1 => prop::collection::vec(any::<u8>(), 0..40).prop_map(|b| encode_all(&b)),
        // Random text, percent-encoded as UTF-8.
        1 => any::<String>().prop_map(|s| encode_all(s.as_bytes())),
        // Traps.
        2 => prop::sample::select(vec![
            "..",
            ".",
            "%2E%2E",
            "%2F",
            "a%2Fb",
            "..%2F..%2Fetc%2Fpasswd",
            "%00",
            "a%00b",
            "%C0%AF",
            "%C0%80",
            "%E0%80%AF",
            "%FF%FE",
            "%ED%A0%80",
            "%F4%90%80%80",
            "%",
            "%G1",
            "%2",
            "%7F",
            "%0A",
            "%0D%0A",
            "%C2%85",
            "%E2%80%8B",
            "%E2%80%AE",
            "image|raw",
            "image%7Craw",
            "+",
            "%20",
            "a;b",
            "a=b",
            "~",
        ])
        .prop_map(str::to_owned),
        // Keys around the 512-byte limit.
        1 => (500_usize..530).prop_map(|n| "k".repeat(n)),
        1 => (100_usize..200).prop_map(|n| "%E2%82%AC".repeat(n)),
    ]
}

fn path() -> impl Strategy<Value = String> {
    let suffix = prop::sample::select(vec![
        "",
        "/claim",
        "/heartbeat",
        "/complete",
        "/fail",
        "/release",
        "/",
        "/claim/",
        "/claim/extra",
        "/unknown",
        "/CLAIM",
        "/%63laim",
    ]);
    prop_oneof![
        6 => (segment(), suffix).prop_map(|(s, x)| format!("/v1/requests/{s}{x}")),
        1 => prop::sample::select(vec![
            "/healthz",
            "/readyz",
            "/metrics",
            "/",
            "/v1",
            "/v1/",
            "/v1/requests",
            "/v1/requests/",
            "/v1/requests//claim",
            "/v1//requests/k",
            "/V1/requests/k",
            "/v2/requests/k",
            "/healthz/",
            "/%76%31/requests/k",
        ])
        .prop_map(str::to_owned),
        1 => prop::collection::vec(segment(), 0..5).prop_map(|s| format!("/{}", s.join("/"))),
    ]
}

fn query() -> impl Strategy<Value = Option<String>> {
    let wait = prop_oneof![
        // Valid waits, kept tiny so a held long-poll costs little.
        (0_u64..20).prop_map(|n| n.to_string()),
        Just("00005".to_owned()),
        Just("60001".to_owned()),
        Just("18446744073709551615".to_owned()),
        Just("18446744073709551616".to_owned()),
        Just("99999999999999999999999".to_owned()),
        Just("-1".to_owned()),
        Just("1.5".to_owned()),
        Just("1e3".to_owned()),
        Just("".to_owned()),
        Just("abc".to_owned()),
        Just("%31".to_owned()),
        Just("%FF".to_owned()),
        Just("+1".to_owned()),
        Just("0x10".to_owned()),
    ];
    prop_oneof![
        8 => Just(None),
        3 => wait.clone().prop_map(|w| Some(format!("wait_ms={w}"))),
        1 => (wait.clone(), wait).prop_map(|(a, b)| Some(format!("wait_ms={a}&wait_ms={b}"))),
        1 => prop::sample::select(vec![
            "wait_ms",
            "foo=1",
            "wait_ms=1&foo=2",
            "=",
            "&&",
            "%ZZ",
            "wait_ms=%00",
            "wait%5Fms=3",
        ])
        .prop_map(|q| Some(q.to_owned())),
        1 => prop::collection::vec(any::<u8>(), 0..30).prop_map(|b| Some(encode_all(&b))),
    ]
}

fn method() -> impl Strategy<Value = Method> {
    prop_oneof![
        4 => Just(Method::POST),
        3 => Just(Method::GET),
        1 => Just(Method::DELETE),
        1 => prop::sample::select(vec![
            Method::PUT,
            Method::PATCH,
            Method::HEAD,
            Method::OPTIONS,
            Method::TRACE,
            Method::from_bytes(b"FOO").expect("a valid method"),
        ]),
    ]
}

fn content_type() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        12 => Just(Some("application/json".to_owned())),
        1 => Just(None),
        2 => prop::sample::select(vec![
            "application/json; charset=utf-8",
            "APPLICATION/JSON",
            " application/json ",
            "application/json;",
            "application/jsonx",
            "application/problem+json",
            "text/plain",
            "multipart/form-data; boundary=x",
            "",
            ";",
        ])
        .prop_map(|c| Some(c.to_owned())),
        1 => "[ -~]{0,40}".prop_map(Some),
    ]
}

fn authorization() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        2 => Just(None),
        8 => Just(Some(format!("Bearer {ALPHA}"))),
        3 => Just(Some(format!("Bearer {BETA}"))),
        1 => prop::sample::select(vec![
            format!("bearer {ALPHA}"),
            format!("Bearer  {ALPHA} "),
            format!("Basic {ALPHA}"),
            "Bearer".to_owned(),
            "Bearer ".to_owned(),
            ALPHA.to_owned(),
            format!("Bearer {ALPHA}x"),
        ])
        .prop_map(Some),
        1 => "Bearer [ -~]{0,40}".prop_map(Some),
    ]
}

fn extra_header() -> impl Strategy<Value = Option<(String, String)>> {
    prop_oneof![
        4 => Just(None),
        1 => ("x-[a-z]{1,10}", "[ -~]{0,64}").prop_map(Some),
        1 => prop::sample::select(vec![
            ("content-length", "0"),
            ("transfer-encoding", "chunked"),
            ("expect", "100-continue"),
            ("content-encoding", "gzip"),
            ("host", "example.invalid"),
            ("x-forwarded-for", "127.0.0.1"),
        ])
        .prop_map(|(n, v)| Some((n.to_owned(), v.to_owned()))),
    ]
}

/// A JSON value of random shape.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,20}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,12}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Raw JSON text of a value a field might carry: right, wrong type, out of
/// range, or not JSON the serializer would write.
fn field_value(seeded_tokens: Vec<u64>) -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(seeded_tokens).prop_map(|t| t.to_string()),
        prop::sample::select(vec![
            "0",
            "1",
            "-1",
            "1000",
            "1001",
            "30000",
            "86400000",
            "86400001",
            "3600001",
            "4294967296",
            "9007199254740991",
            "9007199254740992",
            "18446744073709551615",
            "18446744073709551616",
            "1e400",
            "-0",
            "1.5",
            "1.0",
            "true",
            "false",
            "null",
            "\"\"",
            "\"image\"",
            "\"Image\"",
            "\"a b\"",
            "\"1\"",
            "\"image\\u0000\"",
            "\"\\ud800\"",
            "[]",
            "{}",
            "[1,2]",
            "{\"a\":1}",
        ])
        .prop_map(str::to_owned),
        ".{0,80}".prop_map(|s| Value::from(s).to_string()),
        (60_usize..140).prop_map(|n| Value::from("f".repeat(n)).to_string()),
        (4000_usize..4200).prop_map(|n| Value::from("m".repeat(n)).to_string()),
        (1900_usize..2300).prop_map(|n| Value::from("r".repeat(n)).to_string()),
        any_json().prop_map(|v| v.to_string()),
    ]
}

/// A body that is nearly a valid one: an object of known (and sometimes
/// unknown or repeated) fields with values of random types.
fn near_valid_body(seeded_tokens: Vec<u64>) -> impl Strategy<Value = Vec<u8>> {
    let name = prop::sample::select(vec![
        "kind",
        "kind",
        "token",
        "token",
        "result",
        "message",
        "retryable",
        "lease_ms",
        "max_attempts",
        "retry_backoff_ms",
        "fingerprint",
        "owner",
        "extra",
        "Kind",
    ]);
    prop::collection::vec((name, field_value(seeded_tokens)), 0..5).prop_map(|fields| {
        let inner: Vec<String> = fields
            .iter()
            .map(|(name, value)| format!("{:?}: {value}", name))
            .collect();
        format!("{{{}}}", inner.join(", ")).into_bytes()
    })
}

/// A body that is valid for one of the operations, with a seeded token.
fn valid_body(seeded_tokens: Vec<u64>) -> impl Strategy<Value = Vec<u8>> {
    let token = prop::sample::select(seeded_tokens);
    prop_oneof![
        Just(json!({"kind": "image"})),
        Just(json!({"kind": "image", "fingerprint": "fp", "owner": "w", "lease_ms": 60000})),
        token.clone().prop_map(|t| json!({"token": t})),
        token
            .clone()
            .prop_map(|t| json!({"token": t, "lease_ms": 1000})),
        token
            .clone()
            .prop_map(|t| json!({"token": t, "result": {"ok": true}})),
        token.prop_map(|t| json!({"token": t, "message": "boom", "retryable": false})),
    ]
    .prop_map(|v| v.to_string().into_bytes())
}

fn body(seeded_tokens: Vec<u64>) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => Just(Vec::new()),
        5 => valid_body(seeded_tokens.clone()),
        4 => near_valid_body(seeded_tokens),
        1 => prop::collection::vec(any::<u8>(), 0..256),
        1 => any_json().prop_map(|v| v.to_string().into_bytes()),
        1 => prop::sample::select(vec![
            "{",
            "}",
            "{\"kind\": \"image\"",
            "{\"kind\": \"image\"}}",
            "{\"kind\": \"image\"} trailing",
            "[{\"kind\": \"image\"}]",
            "\"image\"",
            "null",
            " \t\n{\"kind\":\"image\"}",
            "\u{feff}{\"kind\":\"image\"}",
            "{\"kind\": \"image\", \"kind\": \"video\"}",
            "{\"token\": 1, \"token\": 2}",
        ])
        .prop_map(|b| b.as_bytes().to_vec()),
        // Over the body limit (which is over the result limit).
        1 => (MAX_BODY - 10..MAX_BODY * 3).prop_map(|n| {
            format!("{{\"token\": 1, \"result\": \"{}\"}}", "x".repeat(n)).into_bytes()
        }),
        1 => (MAX_RESULT - 20..MAX_BODY - 40).prop_map(|n| {
            format!("{{\"token\": 1, \"result\": \"{}\"}}", "x".repeat(n)).into_bytes()
        }),
        1 => (1_usize..200).prop_map(|depth| {
            format!("{}{}", "[".repeat(depth * 4), "]".repeat(depth * 4)).into_bytes()
        }),
    ]
}

/// A method and a path: mostly a known route with its own method (so that
/// most cases reach a handler), sometimes any method on any path.
fn target() -> impl Strategy<Value = (Method, String)> {
    let route = prop::sample::select(vec![
        (Method::POST, "/claim"),
        (Method::POST, "/claim"),
        (Method::POST, "/heartbeat"),
        (Method::POST, "/complete"),
        (Method::POST, "/complete"),
        (Method::POST, "/fail"),
        (Method::POST, "/release"),
        (Method::GET, ""),
        (Method::GET, ""),
        (Method::DELETE, ""),
    ]);
    prop_oneof![
        3 => (route, segment())
            .prop_map(|((m, suffix), s)| (m, format!("/v1/requests/{s}{suffix}"))),
        1 => (method(), path()),
    ]
}

pub(super) fn case(seeded_tokens: Vec<u64>) -> impl Strategy<Value = Case> {
    (
        target(),
        query(),
        content_type(),
        authorization(),
        extra_header(),
        body(seeded_tokens),
    )
        .prop_map(
            |((method, path), query, content_type, authorization, extra_header, body)| Case {
                method,
                path,
                query,
                content_type,
                authorization,
                extra_header,
                body,
            },
        )
}
