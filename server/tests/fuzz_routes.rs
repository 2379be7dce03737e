//! Property-based fuzzing of the HTTP layer through the router:
//! random methods, paths (percent-encoded random bytes, `..`, `%2F`, `%00`,
//! overlong and invalid UTF-8, very long keys, valid keys), queries, headers
//! and bodies (random bytes, random JSON, near-valid bodies with fields of
//! random types and out-of-range values, bodies over the limit), each sent
//! through `app(state)` with `tower::ServiceExt::oneshot` (no socket).
//!
//! The store is a memory store seeded with records in every state, wrapped
//! in [`CountingStore`], which counts every *state change* it lets through.
//! For every case: the status is never a 5xx; every 4xx carries the §7
//! error body `{"error": {"code", "message"}}`; a 4xx changed nothing (the
//! counter did not move); and nothing panics. The run is made without
//! tokens and with tokens (namespaces).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use bytes::Bytes;
use http_body_util::BodyExt;
use onceflight_core::{
    Claim, ClaimOptions, JobError, Kind, Record, Renewal, RequestKey, RequestStore, Result, Token,
};
use onceflight_server::auth::Tokens;
use onceflight_server::{AppState, Limits, app};
use onceflight_store_memory::{MemoryConfig, MemoryStore};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{Value, json};
use tower::ServiceExt;

/// Cases per run: enough to cover the combinations, a few seconds each.
const CASES: u32 = 2000;

/// Largest result and body the fuzzed service takes, small so that bodies
/// over the limit are cheap to generate.
const MAX_RESULT: usize = 2048;
const MAX_BODY: usize = 4096;

const ALPHA: &str = "alpha-token-0123456789";
const BETA: &str = "beta-token-0123456789";

/// A store that counts the state changes it lets through: a claim that
/// acquires, a successful renew, complete, fail or release, and a delete
/// that removed a record.
#[derive(Debug)]
struct CountingStore {
    inner: MemoryStore,
    changes: Arc<AtomicU64>,
}

impl CountingStore {
    fn counted<T>(&self, result: Result<T>, changed: impl FnOnce(&T) -> bool) -> Result<T> {
        if let Ok(value) = &result
            && changed(value)
        {
            self.changes.fetch_add(1, Ordering::SeqCst);
        }
        result
    }
}

#[async_trait]
impl RequestStore for CountingStore {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    async fn claim_or_get(&self, key: &RequestKey, options: &ClaimOptions) -> Result<Claim> {
        let claim = self.inner.claim_or_get(key, options).await;
        self.counted(claim, |c| matches!(c, Claim::Acquired(_)))
    }
    async fn renew(
        &self,
        key: &RequestKey,
        token: Token,
        ttl: Option<Duration>,
    ) -> Result<Renewal> {
        let renewal = self.inner.renew(key, token, ttl).await;
        self.counted(renewal, |_| true)
    }
    async fn complete(&self, key: &RequestKey, token: Token, result: Bytes) -> Result<Record> {
        let record = self.inner.complete(key, token, result).await;
        self.counted(record, |_| true)
    }
    async fn fail(&self, key: &RequestKey, token: Token, error: &JobError) -> Result<Record> {
        let record = self.inner.fail(key, token, error).await;
        self.counted(record, |_| true)
    }
    async fn release(&self, key: &RequestKey, token: Token) -> Result<Record> {
        let record = self.inner.release(key, token).await;
        self.counted(record, |_| true)
    }
    async fn get(&self, key: &RequestKey) -> Result<Option<Record>> {
        self.inner.get(key).await
    }
    async fn wait(&self, key: &RequestKey, timeout: Duration) -> Result<Option<Record>> {
        self.inner.wait(key, timeout).await
    }
    async fn delete(&self, key: &RequestKey) -> Result<bool> {
        let deleted = self.inner.delete(key).await;
        self.counted(deleted, |removed| *removed)
    }
    async fn sweep(&self) -> Result<u64> {
        self.inner.sweep().await
    }
}

/// The service under test, its change counter, and the tokens of the
/// seeded leases (so that some fuzzed fenced calls carry a valid one).
struct Fixture {
    router: Router,
    changes: Arc<AtomicU64>,
    tokens: Vec<u64>,
}

/// Seeds `key` (in `namespace`, if any) with a record in `state`; returns
/// the token of its lease.
async fn seed(store: &MemoryStore, namespace: Option<&str>, key: &str, state: &str) -> u64 {
    let mut key = RequestKey::parse(key).expect("a valid seed key");
    if let Some(ns) = namespace {
        key = RequestKey::namespaced(ns, &key).expect("a valid namespace");
    }
    let ttl = if state == "expired" {
        Duration::from_millis(1)
    } else {
        Duration::from_secs(3600)
    };
    let options = ClaimOptions::new(Kind::parse("image").expect("a valid kind"))
        .with_lease_ttl(ttl)
        .expect("a valid ttl")
        .with_max_attempts(1)
        .expect("valid attempts");
    let Claim::Acquired(lease) = store
        .claim_or_get(&key, &options)
        .await
        .expect("seed claim")
    else {
        panic!("seeding {key:?} acquires");
    };
    match state {
        "completed" => {
            store
                .complete(&key, lease.token, Bytes::from_static(br#"{"seeded":true}"#))
                .await
                .expect("seed complete");
        }
        "failed" => {
            let error = JobError::parse("seeded failure", false).expect("a valid message");
            store
                .fail(&key, lease.token, &error)
                .await
                .expect("seed fail");
        }
        "released" => {
            store
                .release(&key, lease.token)
                .await
                .expect("seed release");
        }
        _ => {}
    }
    lease.token.get()
}

/// Keys the generator uses as they are, seeded in these states.
const SEEDED: [(&str, &str); 5] = [
    ("image|done", "completed"),
    ("image|busy", "processing"),
    ("image|failed", "failed"),
    ("image|expired", "expired"),
    ("image|released", "released"),
];

async fn fixture(with_tokens: bool) -> Fixture {
    let store = MemoryStore::new(MemoryConfig::default());
    let namespaces: &[Option<&str>] = if with_tokens {
        &[Some("alpha"), Some("beta")]
    } else {
        &[None]
    };
    let mut tokens = Vec::new();
    for namespace in namespaces {
        for (key, state) in SEEDED {
            tokens.push(seed(&store, *namespace, key, state).await);
        }
    }
    // Let the expired lease expire.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let changes = Arc::new(AtomicU64::new(0));
    let counting = CountingStore {
        inner: store,
        changes: Arc::clone(&changes),
    };
    let configured = if with_tokens {
        Tokens::from_env_list(&format!("alpha:{ALPHA},beta:{BETA}")).expect("valid tokens")
    } else {
        Tokens::default()
    };
    let mut limits = Limits::with_result_limit(MAX_RESULT);
    limits.max_body_bytes = MAX_BODY;
    let state = AppState::new(Arc::new(counting), configured, limits);
    Fixture {
        router: app(state),
        changes,
        tokens,
    }
}

/// One fuzzed request, kept as parts so a failure shows what was sent.
#[derive(Clone, Debug)]
struct Case {
    method: Method,
    path: String,
    query: Option<String>,
    content_type: Option<String>,
    authorization: Option<String>,
    extra_header: Option<(String, String)>,
    body: Vec<u8>,
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

fn case(seeded_tokens: Vec<u64>) -> impl Strategy<Value = Case> {
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

/// The request `case` describes, or `None` when it is not even a valid HTTP
/// request (no server would see it).
fn build(case: &Case) -> Option<Request<Body>> {
    let uri = match &case.query {
        Some(q) => format!("{}?{q}", case.path),
        None => case.path.clone(),
    };
    let mut request = Request::builder().method(case.method.clone()).uri(uri);
    if let Some(c) = &case.content_type {
        request = request.header(header::CONTENT_TYPE, c);
    }
    if let Some(a) = &case.authorization {
        request = request.header(header::AUTHORIZATION, a);
    }
    if let Some((n, v)) = &case.extra_header {
        request = request.header(n, v);
    }
    request.body(Body::from(case.body.clone())).ok()
}

/// Sends `case` and checks the invariants that hold for every request.
async fn check(fixture: &Fixture, case: &Case) -> std::result::Result<bool, TestCaseError> {
    let Some(request) = build(case) else {
        return Ok(false);
    };
    let before = fixture.changes.load(Ordering::SeqCst);
    let response = tokio::time::timeout(
        Duration::from_secs(10),
        fixture.router.clone().oneshot(request),
    )
    .await
    .map_err(|_| TestCaseError::fail("no answer within 10 s"))?
    .unwrap_or_else(|never| match never {});
    let after = fixture.changes.load(Ordering::SeqCst);
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|e| TestCaseError::fail(format!("reading the body: {e}")))?
        .to_bytes();
    let text = String::from_utf8_lossy(&bytes);
    prop_assert!(
        !status.is_server_error(),
        "never a 5xx, got {status} {text}"
    );
    if status.is_client_error() {
        // A HEAD answer has no body by definition; its status still counts.
        if case.method != Method::HEAD {
            let json: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            prop_assert!(
                json["error"]["code"].is_string() && json["error"]["message"].is_string(),
                "a {status} carries the §7 error body, got {text}"
            );
            prop_assert_eq!(
                json.as_object().map(|o| o.len()),
                Some(1),
                "the error body has only `error`: {}",
                text
            );
        }
        prop_assert_eq!(
            before,
            after,
            "a {} changed the store's state: {}",
            status,
            text
        );
    }
    if status == StatusCode::CREATED || status == StatusCode::NO_CONTENT {
        prop_assert!(
            after > before,
            "a {status} (acquired or deleted) is a state change the store saw"
        );
    }
    Ok(true)
}

/// Runs [`CASES`] fuzzed requests against one service, made with or
/// without tokens; asserts that most cases were valid HTTP requests.
fn fuzz(with_tokens: bool) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let fixture = runtime.block_on(fixture(with_tokens));
    let sent = AtomicU64::new(0);
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&case(fixture.tokens.clone()), |case| {
        if runtime.block_on(check(&fixture, &case))? {
            sent.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    });
    if let Err(failure) = result {
        panic!("fuzzing the router (tokens: {with_tokens}): {failure}");
    }
    let sent = sent.into_inner();
    assert!(
        sent * 10 >= u64::from(CASES) * 9,
        "at least 90% of the cases are valid requests that reached the router: {sent} of {CASES}"
    );
    assert!(
        fixture.changes.load(Ordering::SeqCst) > 0,
        "some fuzzed requests were valid and changed state (the counter works)"
    );
}

/// Fuzzed requests to a service without tokens: never a 5xx, every 4xx with
/// the §7 error body and no state change, no panic.
#[test]
fn fuzzed_requests_without_tokens_are_answered_safely() {
    fuzz(false);
}

/// The same with tokens configured: also no state change on any 401, and
/// namespaced keys behave like the rest.
#[test]
fn fuzzed_requests_with_tokens_are_answered_safely() {
    fuzz(true);
}
