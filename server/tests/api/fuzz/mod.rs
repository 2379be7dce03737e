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
//!
//! The requests are drawn by the strategies of [`strategies`].

mod strategies;

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
    Claim, ClaimOptions, JobError, Kind, ListPage, ListQuery, Record, Renewal, RequestKey,
    RequestStore, Result, StoreStats, Token,
};
use onceflight_server::auth::Tokens;
use onceflight_server::{AppState, Limits, app};
use onceflight_store_memory::{MemoryConfig, MemoryStore};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::Value;
use tower::ServiceExt;

use self::strategies::{Case, case};

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
    async fn list(&self, query: &ListQuery) -> Result<ListPage> {
        self.inner.list(query).await
    }
    async fn counts(&self, prefix: &str) -> Result<StoreStats> {
        self.inner.counts(prefix).await
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
