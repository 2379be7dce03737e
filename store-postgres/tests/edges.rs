//! The Postgres store at its edges: a `fail` after a claim ended the lease,
//! configuration refused up front, operations that time out on the server
//! too, and a LISTEN connection that comes back after an error or a silent
//! network.

mod common;

use common::{acquired, key, options};

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use onceflight_core::{Bytes, Claim, Error, JobError, RecordState, RequestStore};
use onceflight_store_postgres::{PgConfig, PgPooler, PgStore};
use onceflight_test_support::backend_available;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection, Row};
use tokio::time::Instant;

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
    if !backend_available("DATABASE_URL") {
        return;
    }
    let store = common::store_with(&common::fresh_schema(), Duration::from_secs(3600)).await;
    fail_after_an_exhausted_claim_is_lost(&store).await;
}

#[tokio::test]
async fn a_fail_after_an_exhausted_claim_is_lease_lost_through_the_pooler() {
    if !backend_available("DATABASE_URL") || !backend_available("PGBOUNCER_URL") {
        return;
    }
    let store = common::pooled_store_with(&common::fresh_schema(), Duration::from_secs(3600)).await;
    fail_after_an_exhausted_claim_is_lost(&store).await;
}

/// A retention of zero would make every record vanish as it is written: it
/// is refused when connecting, before anything reaches the database.
#[tokio::test]
async fn a_zero_retention_is_refused() {
    if !backend_available("DATABASE_URL") {
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

/// A store in `schema` of `url`'s database, migrated, whose operations time
/// out after `operation_timeout`.
async fn store_timing_out(config: PgConfig, operation_timeout: Duration) -> PgStore {
    let store = PgStore::connect(config.with_operation_timeout(operation_timeout))
        .await
        .expect("connect");
    store.migrate().await.expect("migrate");
    store
}

/// Another session holds the record's row lock: `complete` answers
/// `Unavailable` in about the operation timeout, and Postgres has ended the
/// statement too — none of the store's statements is still running or
/// waiting for the lock, and once the lock is let go nothing commits.
async fn a_timed_out_operation_ends_on_the_server(store: &PgStore, timeout: Duration) {
    let schema = store.schema().to_owned();
    let k = key("locked");
    let lease = acquired(
        store
            .claim_or_get(&k, &options(Duration::from_secs(60)))
            .await
            .expect("claim"),
    );
    let mut locker = PgConnection::connect(&common::database_url())
        .await
        .expect("connect");
    let mut tx = locker.begin().await.expect("begin");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT 1 FROM \"{schema}\".onceflight_records WHERE key = $1 FOR UPDATE"
    )))
    .bind(k.as_str())
    .execute(&mut *tx)
    .await
    .expect("lock the row");

    let started = Instant::now();
    let result = store
        .complete(&k, lease.token, Bytes::from_static(b"\"late\""))
        .await;
    let took = started.elapsed();
    assert!(
        matches!(result, Err(Error::Unavailable { .. })),
        "an operation stuck on a lock must be Unavailable, got {result:?}"
    );
    assert!(
        took >= timeout / 2 && took < timeout + Duration::from_millis(500),
        "answered after {took:?}, operation timeout {timeout:?}"
    );

    // Postgres answered (or is about to): nothing of the store's is left on
    // the server.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut admin = PgConnection::connect(&common::database_url())
        .await
        .expect("connect");
    let running: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT query, wait_event_type FROM pg_stat_activity \
         WHERE state = 'active' AND pid <> pg_backend_pid() \
           AND strpos(query, '\"' || $1 || '\".onceflight_complete') > 0",
    )
    .bind(&schema)
    .fetch_all(&mut admin)
    .await
    .expect("pg_stat_activity");
    assert!(
        running.is_empty(),
        "the timed-out statement still runs on the server: {running:?}"
    );

    tx.rollback().await.expect("let go of the lock");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let record = store.get(&k).await.expect("get").expect("record");
    assert_eq!(
        record.state,
        RecordState::Processing,
        "the timed-out complete must not commit once the lock is gone: {record:?}"
    );
    // The lease is still good: the operation can be retried.
    store
        .complete(&k, lease.token, Bytes::from_static(b"\"retried\""))
        .await
        .expect("a retried complete succeeds");
}

#[tokio::test]
async fn a_timed_out_operation_ends_on_the_server_too() {
    if !backend_available("DATABASE_URL") {
        return;
    }
    let timeout = Duration::from_secs(1);
    let config = PgConfig::new(common::database_url())
        .with_schema(common::fresh_schema())
        .with_pool_size(2);
    let store = store_timing_out(config, timeout).await;
    a_timed_out_operation_ends_on_the_server(&store, timeout).await;
}

#[tokio::test]
async fn a_timed_out_operation_ends_on_the_server_too_through_the_pooler() {
    if !backend_available("DATABASE_URL") || !backend_available("PGBOUNCER_URL") {
        return;
    }
    let timeout = Duration::from_secs(1);
    let config = PgConfig::new(common::pooled_url())
        .with_pooler(PgPooler::Transaction)
        .with_listen_url(common::database_url())
        .with_schema(common::fresh_schema())
        .with_pool_size(2);
    let store = store_timing_out(config, timeout).await;
    a_timed_out_operation_ends_on_the_server(&store, timeout).await;
    // Nothing the store sets outlives its statement on the pooler's shared
    // server connections.
    let pooled_options = PgConnectOptions::from_str(&common::pooled_url())
        .expect("pooled URL")
        .extra_float_digits(None);
    let mut pooled = PgConnection::connect_with(&pooled_options)
        .await
        .expect("connect through the pooler");
    for _ in 0..6 {
        let row = sqlx::raw_sql(
            "SELECT current_setting('statement_timeout'), current_setting('lock_timeout')",
        )
        .fetch_one(&mut pooled)
        .await
        .expect("read settings");
        let (statement, lock): (String, String) = (row.get(0), row.get(1));
        assert_eq!(
            (statement.as_str(), lock.as_str()),
            ("0", "0"),
            "a server connection kept the store's time bounds"
        );
    }
}

/// The listening connection is terminated while the database refuses new
/// connections, so the first reconnection fails. A completion notified
/// before the listener is back must still reach a waiter as soon as it
/// listens again — not after the (here very long) fallback re-read.
#[tokio::test]
async fn a_waiter_is_woken_once_the_listener_is_back_after_failing() {
    if !backend_available("DATABASE_URL") {
        return;
    }
    let (url, name) = common::dedicated_database().await;
    let mut config = PgConfig::new(&url).with_pool_size(2);
    config.wait_fallback = Duration::from_secs(60);
    config.listen_ping = Duration::from_secs(60);
    let store = Arc::new(store_timing_out(config, Duration::from_secs(5)).await);
    let k = key("k");
    let lease = acquired(
        store
            .claim_or_get(&k, &options(Duration::from_secs(60)))
            .await
            .expect("claim"),
    );
    let waiter = {
        let (store, k) = (Arc::clone(&store), k.clone());
        tokio::spawn(async move { store.wait(&k, Duration::from_secs(20)).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut admin = PgConnection::connect(&common::database_url())
        .await
        .expect("connect");
    let allow = async |admin: &mut PgConnection, allow: bool| {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "ALTER DATABASE {name} ALLOW_CONNECTIONS {allow}"
        )))
        .execute(admin)
        .await
        .expect("alter database");
    };
    allow(&mut admin, false).await;
    let terminated: i64 = sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE datname = $1 AND query ILIKE 'LISTEN%'",
    )
    .bind(&name)
    .fetch_one(&mut admin)
    .await
    .expect("terminate");
    assert_eq!(terminated, 1, "the listening connection was found");
    // The listener notices and fails to reconnect, at least once.
    tokio::time::sleep(Duration::from_millis(500)).await;
    store
        .complete(&k, lease.token, Bytes::from_static(b"1"))
        .await
        .expect("complete on a pooled connection that stayed");
    let completed_at = Instant::now();
    allow(&mut admin, true).await;

    let record = waiter
        .await
        .expect("waiter")
        .expect("wait")
        .expect("record");
    let late = completed_at.elapsed();
    assert_eq!(
        record.state,
        RecordState::Completed,
        "the waiter must see the completion once the listener is back, not time out ({late:?})"
    );
    assert!(
        late < Duration::from_secs(5),
        "woken {late:?} after the completion: by the listener's return, not the fallback"
    );
    drop(store);
    common::drop_database(&name).await;
}

/// The listening connection goes silent without closing (half-open): a
/// completion notified meanwhile is lost on it. The listener's ping finds
/// the connection dead, a new one listens, and the waiter is woken then —
/// not after the (here very long) fallback re-read.
#[tokio::test]
async fn a_silent_listening_connection_is_replaced() {
    if !backend_available("DATABASE_URL") {
        return;
    }
    let (proxy, through_proxy) = common::database_through_proxy().await;
    let mut config = PgConfig::new(common::database_url())
        .with_schema(common::fresh_schema())
        .with_listen_url(through_proxy)
        .with_pool_size(2);
    config.wait_fallback = Duration::from_secs(60);
    config.listen_ping = Duration::from_millis(200);
    let store = Arc::new(store_timing_out(config, Duration::from_secs(1)).await);
    let k = key("k");
    let lease = acquired(
        store
            .claim_or_get(&k, &options(Duration::from_secs(60)))
            .await
            .expect("claim"),
    );
    // Every connection open now (the listener's) goes silent.
    proxy.freeze_open();
    let waiter = {
        let (store, k) = (Arc::clone(&store), k.clone());
        tokio::spawn(async move { store.wait(&k, Duration::from_secs(20)).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    store
        .complete(&k, lease.token, Bytes::from_static(b"1"))
        .await
        .expect("complete");
    let completed_at = Instant::now();
    let record = waiter
        .await
        .expect("waiter")
        .expect("wait")
        .expect("record");
    let late = completed_at.elapsed();
    assert_eq!(
        record.state,
        RecordState::Completed,
        "the waiter must see the completion once the listener is replaced ({late:?})"
    );
    assert!(
        late < Duration::from_secs(5),
        "woken {late:?} after the completion: by the replaced listener, not the fallback"
    );
}
