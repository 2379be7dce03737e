//! The Postgres store at its edges: a `fail` after a claim ended the lease,
//! configuration refused up front, operations that time out on the server
//! too, and a LISTEN connection that comes back after an error or a silent
//! network.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use onceflight_core::testkit::backend_available;
use onceflight_core::{
    Bytes, Claim, ClaimOptions, Error, JobError, Kind, RecordState, RequestKey, RequestStore,
};
use onceflight_store_postgres::{PgConfig, PgStore};
use sqlx::{Connection, PgConnection};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

fn key(name: &str) -> RequestKey {
    RequestKey::parse(format!("image|{name}")).unwrap()
}

fn options(lease: Duration) -> ClaimOptions {
    ClaimOptions::new(Kind::parse("image").unwrap())
        .with_lease_ttl(lease)
        .unwrap()
}

fn acquired(claim: Claim) -> onceflight_core::Lease {
    match claim {
        Claim::Acquired(lease) => lease,
        other => panic!("expected Acquired, got {other:?}"),
    }
}

/// A lease that expired with no attempt left is failed by the next claim;
/// a `fail` from the worker that held it comes too late and is `LeaseLost`,
/// as a `complete` is, and changes nothing.
async fn fail_after_an_exhausted_claim_is_lost(store: &PgStore) {
    let k = key("exhausted");
    let o = options(Duration::from_millis(200))
        .with_max_attempts(1)
        .unwrap();
    let lease = acquired(store.claim_or_get(&k, &o).await.expect("first claim"));
    tokio::time::sleep(Duration::from_millis(400)).await;
    match store.claim_or_get(&k, &o).await.expect("second claim") {
        Claim::Failed(failed) => assert_eq!(
            failed.retry_after, None,
            "no attempt left, so no retry: {failed:?}"
        ),
        other => panic!("an expired lease with no attempt left must fail, got {other:?}"),
    }
    let before = store.get(&k).await.expect("get").expect("record");
    let late = store
        .fail(&k, lease.token, &JobError::retryable("worker gave up"))
        .await;
    assert!(
        matches!(late, Err(Error::LeaseLost { .. })),
        "a fail after the claim failed the record must be LeaseLost, got {late:?}"
    );
    let late = store
        .complete(&k, lease.token, Bytes::from_static(b"1"))
        .await;
    assert!(
        matches!(late, Err(Error::LeaseLost { .. })),
        "a complete after the claim failed the record must be LeaseLost, got {late:?}"
    );
    let after = store.get(&k).await.expect("get").expect("record");
    assert_eq!(after.error, before.error, "the claim's error stands");
    assert_eq!(after.state, RecordState::Failed);

    // A fail that succeeded still succeeds again with the same token.
    let k = key("failed-twice");
    let lease = acquired(store.claim_or_get(&k, &o).await.expect("claim"));
    store
        .fail(&k, lease.token, &JobError::permanent("first"))
        .await
        .expect("fail");
    let again = store
        .fail(&k, lease.token, &JobError::permanent("second"))
        .await
        .expect("a repeated fail with the same token succeeds");
    assert_eq!(
        again.error.as_ref().map(JobError::message),
        Some("first"),
        "the first error stands"
    );
}

#[tokio::test]
async fn a_fail_after_an_exhausted_claim_is_lease_lost() {
    if !backend_available(Some("DATABASE_URL")) {
        return;
    }
    let store = common::store_with(&common::fresh_schema(), Duration::from_secs(3600)).await;
    fail_after_an_exhausted_claim_is_lost(&store).await;
}

#[tokio::test]
async fn a_fail_after_an_exhausted_claim_is_lease_lost_through_the_pooler() {
    if !backend_available(Some("DATABASE_URL")) || !backend_available(Some("PGBOUNCER_URL")) {
        return;
    }
    let store =
        common::pooled_store_with(&common::fresh_schema(), Duration::from_secs(3600)).await;
    fail_after_an_exhausted_claim_is_lost(&store).await;
}

/// A retention of zero would make every record vanish as it is written: it
/// is refused when connecting, before anything reaches the database.
#[tokio::test]
async fn a_zero_retention_is_refused() {
    if !backend_available(Some("DATABASE_URL")) {
        return;
    }
    let config = PgConfig::new(common::database_url())
        .with_schema(common::fresh_schema())
        .with_retention(Duration::ZERO);
    let refused = PgStore::connect(config).await;
    assert!(
        matches!(
            &refused,
            Err(Error::InvalidInput { reason, .. }) if reason.contains("retention")
        ),
        "a zero retention must be InvalidInput naming retention, got {refused:?}"
    );
}
