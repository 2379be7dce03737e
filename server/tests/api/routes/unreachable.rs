//! The API in front of a store that cannot be reached ([`Unreachable`]:
//! every operation is `Unavailable`).
//!
//! `RequestStore` is an `#[async_trait]` trait; the impl below is written in
//! the form that macro expands to (boxed futures), so this test needs no
//! `async-trait` dev-dependency.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{StatusCode, header};
use onceflight_core::{
    Bytes, Claim, ClaimOptions, Error, JobError, ListPage, ListQuery, Record, Renewal, RequestKey,
    RequestStore, Result, StoreStats, Token,
};
use onceflight_server::auth::Tokens;
use onceflight_server::{AppState, Limits, app};
use serde_json::json;

use super::{Api, op, record_uri};

type Answer<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

/// A store every operation of which fails as `Unavailable`.
#[derive(Debug)]
struct Unreachable;

fn down<'a, T: 'a>() -> Answer<'a, T> {
    Box::pin(async {
        Err(Error::unavailable(
            "memory",
            std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused"),
        ))
    })
}

impl RequestStore for Unreachable {
    fn backend(&self) -> &'static str {
        "memory"
    }
    fn claim_or_get<'life0, 'life1, 'life2, 'async_trait>(
        &'life0 self,
        _key: &'life1 RequestKey,
        _options: &'life2 ClaimOptions,
    ) -> Answer<'async_trait, Claim>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        Self: 'async_trait,
    {
        down()
    }
    fn renew<'life0, 'life1, 'async_trait>(
        &'life0 self,
        _key: &'life1 RequestKey,
        _token: Token,
        _ttl: Option<Duration>,
    ) -> Answer<'async_trait, Renewal>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        down()
    }
    fn complete<'life0, 'life1, 'async_trait>(
        &'life0 self,
        _key: &'life1 RequestKey,
        _token: Token,
        _result: Bytes,
    ) -> Answer<'async_trait, Record>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        down()
    }
    fn fail<'life0, 'life1, 'life2, 'async_trait>(
        &'life0 self,
        _key: &'life1 RequestKey,
        _token: Token,
        _error: &'life2 JobError,
    ) -> Answer<'async_trait, Record>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        Self: 'async_trait,
    {
        down()
    }
    fn release<'life0, 'life1, 'async_trait>(
        &'life0 self,
        _key: &'life1 RequestKey,
        _token: Token,
    ) -> Answer<'async_trait, Record>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        down()
    }
    fn get<'life0, 'life1, 'async_trait>(
        &'life0 self,
        _key: &'life1 RequestKey,
    ) -> Answer<'async_trait, Option<Record>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        down()
    }
    fn wait<'life0, 'life1, 'async_trait>(
        &'life0 self,
        _key: &'life1 RequestKey,
        _timeout: Duration,
    ) -> Answer<'async_trait, Option<Record>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        down()
    }
    fn delete<'life0, 'life1, 'async_trait>(
        &'life0 self,
        _key: &'life1 RequestKey,
    ) -> Answer<'async_trait, bool>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        down()
    }
    fn sweep<'life0, 'async_trait>(&'life0 self) -> Answer<'async_trait, u64>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        down()
    }
    fn list<'life0, 'life1, 'async_trait>(
        &'life0 self,
        _query: &'life1 ListQuery,
    ) -> Answer<'async_trait, ListPage>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        down()
    }
    fn counts<'life0, 'life1, 'async_trait>(
        &'life0 self,
        _prefix: &'life1 str,
    ) -> Answer<'async_trait, StoreStats>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        down()
    }
}

/// A store that cannot be reached: 503 `store_unavailable` with
/// `Retry-After` on every route that needs it, and on `/readyz`; `/healthz`
/// still answers 200 (the process is up).
#[tokio::test]
async fn an_unreachable_store_is_503_store_unavailable() {
    let api = Api {
        app: app(AppState::new(
            Arc::new(Unreachable),
            Tokens::default(),
            Limits::default(),
        )),
        authorization: None,
    };
    api.get("/healthz").await.expect(StatusCode::OK);
    let replies = [
        api.get("/readyz").await,
        api.claim("k", json!({"kind": "image"})).await,
        api.post(&op("k", "heartbeat"), json!({"token": 1})).await,
        api.post(&op("k", "complete"), json!({"token": 1, "result": 1}))
            .await,
        api.post(&op("k", "fail"), json!({"token": 1, "message": "m"}))
            .await,
        api.post(&op("k", "release"), json!({"token": 1})).await,
        api.record("k").await,
        api.get(&format!("{}?wait_ms=1000", record_uri("k"))).await,
        api.delete(&record_uri("k")).await,
    ];
    for reply in replies {
        reply.expect_error(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable");
        assert!(
            reply.headers.contains_key(header::RETRY_AFTER),
            "{}: a 503 carries Retry-After: {:?}",
            reply.what,
            reply.headers
        );
        assert!(
            !reply.text.contains("connection refused"),
            "{}: the answer leaks no internal detail: {}",
            reply.what,
            reply.text
        );
    }
}
