//! What only the Postgres store must prove: the hit path writes nothing and
//! answers only what it needs, a claim that loses the race to create a
//! record writes nothing either, renewals and completions are HOT updates,
//! one round trip per operation, recovery from terminated connections, and
//! several instances on one database.

mod common;

use common::{acquired, key, options};

use std::sync::Arc;
use std::time::Duration;

use onceflight_core::{
    Bytes, Claim, ClaimOptions, Error, Fingerprint, JobError, RequestKey, RequestStore,
};
use onceflight_store_postgres::{PgConfig, PgStore};
use onceflight_test_support::backend_available;
use sqlx::{Column, Connection, Executor, PgConnection, Row, ValueRef};
use tokio::time::Instant;

async fn store_on(url: &str, pool_size: u32) -> PgStore {
    let store = PgStore::connect(
        PgConfig::new(url)
            .with_schema("onceflight")
            .with_pool_size(pool_size),
    )
    .await
    .expect("connect");
    store.migrate().await.expect("migrate");
    store
}

/// Calls the claim function inside a transaction of its own and returns the
/// outcome and `txid_current_if_assigned()`: a transaction id is assigned
/// exactly when the statement locked or wrote a row (and so wrote WAL).
async fn claim_in_own_transaction(
    conn: &mut PgConnection,
    key: &RequestKey,
    kind: &str,
    fingerprint: Option<&str>,
) -> (String, Option<i64>) {
    let mut tx = conn.begin().await.expect("begin");
    let outcome: String = sqlx::query_scalar(
        "SELECT outcome FROM onceflight_claim_v2($1, $2, $3, NULL, 30000, 3, 1000, 86400000)",
    )
    .bind(key.as_str())
    .bind(kind)
    .bind(fingerprint)
    .fetch_one(&mut *tx)
    .await
    .expect("claim");
    let xid: Option<i64> = sqlx::query_scalar("SELECT txid_current_if_assigned()")
        .fetch_one(&mut *tx)
        .await
        .expect("txid");
    tx.commit().await.expect("commit");
    (outcome, xid)
}

/// Three records a claim with `o` hits: completed, in flight (a live
/// lease), failed for good.
async fn hits(store: &PgStore, o: &ClaimOptions) -> [RequestKey; 3] {
    let (done, busy, failed) = (key("done"), key("busy"), key("failed"));
    let lease = acquired(store.claim_or_get(&done, o).await.unwrap());
    store
        .complete(&done, lease.token, Bytes::from_static(b"{}"))
        .await
        .unwrap();
    let _ = acquired(store.claim_or_get(&busy, o).await.unwrap());
    let lease = acquired(store.claim_or_get(&failed, o).await.unwrap());
    store
        .fail(&failed, lease.token, &JobError::permanent("no"))
        .await
        .unwrap();
    [done, busy, failed]
}

/// Hit claims — a result, a live lease, a final failure, a mismatch — take
/// no row lock, assign no transaction id and so write no WAL; a claim that
/// must write does get one (so the check can fail).
#[tokio::test]
async fn the_hit_path_writes_nothing() {
    if !backend_available("DATABASE_URL") {
        return;
    }
    let schema = common::fresh_schema();
    let store = common::store_with(&schema, Duration::from_secs(3600)).await;
    let o = options(Duration::from_secs(60)).with_fingerprint(Fingerprint::parse("fp").unwrap());
    let [done, busy, failed] = hits(&store, &o).await;

    let mut conn = PgConnection::connect(&common::database_url())
        .await
        .expect("connect");
    sqlx::query(sqlx::AssertSqlSafe(format!("SET search_path = {schema}")))
        .execute(&mut conn)
        .await
        .unwrap();
    let row_versions = async |conn: &mut PgConnection| -> Vec<(String, String)> {
        sqlx::query("SELECT xmin::text, xmax::text FROM onceflight_records ORDER BY key")
            .fetch_all(conn)
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    };
    let before = row_versions(&mut conn).await;
    for (k, kind, fingerprint, expected) in [
        (&done, "image", Some("fp"), "completed"),
        (&busy, "image", None, "in_flight"),
        (&failed, "image", Some("fp"), "failed"),
        (&done, "video", None, "mismatch"),
        (&busy, "image", Some("other"), "mismatch"),
    ] {
        let (outcome, xid) = claim_in_own_transaction(&mut conn, k, kind, fingerprint).await;
        assert_eq!(outcome, expected, "outcome for {k}");
        assert_eq!(xid, None, "a {expected} claim assigned a transaction id");
    }
    // The same hits through the store: not one row version or lock changes.
    for k in [&done, &busy, &failed] {
        let _ = store.claim_or_get(k, &o).await.unwrap();
    }
    assert_eq!(
        row_versions(&mut conn).await,
        before,
        "no row locked or written"
    );

    let (outcome, xid) = claim_in_own_transaction(&mut conn, &key("fresh"), "image", None).await;
    assert_eq!(outcome, "acquired");
    assert!(
        xid.is_some(),
        "a fresh claim writes, so it has a transaction id"
    );
}

/// A hit answers only the columns its outcome needs (docs/protocol.md §3's
/// answers, and the record's retention end), not the whole record.
#[tokio::test]
async fn a_hit_answers_only_what_it_needs() {
    if !backend_available("DATABASE_URL") {
        return;
    }
    let schema = common::fresh_schema();
    let store = common::store_with(&schema, Duration::from_secs(3600)).await;
    let [done, busy, failed] = hits(&store, &options(Duration::from_secs(60))).await;

    let mut conn = PgConnection::connect(&common::database_url())
        .await
        .expect("connect");
    for (k, kind, outcome, answered) in [
        (
            &done,
            "image",
            "completed",
            &["token", "attempt", "result", "completed_at"][..],
        ),
        (
            &busy,
            "image",
            "in_flight",
            &["token", "attempt", "lease_expires_at"][..],
        ),
        (
            &failed,
            "image",
            "failed",
            &["token", "attempt", "error_message", "error_retryable"][..],
        ),
        (&done, "video", "mismatch", &["kind"][..]),
    ] {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT * FROM \"{schema}\".onceflight_claim_v2($1, $2, NULL, NULL, 30000, 3, 1000, 86400000)"
        )))
        .bind(k.as_str())
        .bind(kind)
        .fetch_one(&mut conn)
        .await
        .expect("claim");
        let outcome_seen: String = row.get("outcome");
        assert_eq!(outcome_seen, outcome, "outcome for {k}");
        // Every outcome but a mismatch carries the retention end.
        let mut expected: Vec<&str> = vec!["outcome", "db_now"];
        expected.extend(answered);
        if outcome != "mismatch" {
            expected.push("expires_at");
        }
        let mut filled: Vec<&str> = row
            .columns()
            .iter()
            .filter(|c| !row.try_get_raw(c.ordinal()).expect("column").is_null())
            .map(|c| c.name())
            .collect();
        filled.sort_unstable();
        expected.sort_unstable();
        assert_eq!(filled, expected, "columns a {outcome} answer fills");
        for whole_record in [
            "rec",
            "fingerprint",
            "created_at",
            "updated_at",
            "max_attempts",
        ] {
            assert!(
                row.try_column(whole_record).is_err(),
                "a claim answers no {whole_record}"
            );
        }
    }
}

/// A claim that loses the race to create a record — it found none, and the
/// winner's insert commits while it is on its way — reads the winner's
/// record like any hit: no row lock, no transaction id (and so no WAL and no
/// commit flush). The winner's transaction is held open until the loser is
/// seen waiting for it, so the race happens every time.
#[tokio::test]
async fn a_claim_that_loses_the_race_to_create_writes_nothing() {
    if !backend_available("DATABASE_URL") {
        return;
    }
    let schema = common::fresh_schema();
    let _store = common::store_with(&schema, Duration::from_secs(3600)).await;
    let claim = format!(
        "SELECT outcome FROM \"{schema}\".onceflight_claim_v2($1, 'image', NULL, NULL, 30000, 3, 1000, 86400000)"
    );
    let connect = async || {
        PgConnection::connect(&common::database_url())
            .await
            .expect("connect")
    };
    let (mut winner, mut loser, mut admin) = (connect().await, connect().await, connect().await);
    let loser_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut loser)
        .await
        .expect("pid");
    let k = key("contested");

    winner.execute("BEGIN").await.expect("begin");
    let won: String = sqlx::query_scalar(sqlx::AssertSqlSafe(claim.clone()))
        .bind(k.as_str())
        .fetch_one(&mut winner)
        .await
        .expect("winner's claim");
    assert_eq!(won, "acquired");

    let losing = tokio::spawn(async move {
        loser.execute("BEGIN").await.expect("begin");
        let outcome: String = sqlx::query_scalar(sqlx::AssertSqlSafe(claim))
            .bind(k.as_str())
            .fetch_one(&mut loser)
            .await
            .expect("loser's claim");
        let xid: Option<i64> = sqlx::query_scalar("SELECT txid_current_if_assigned()")
            .fetch_one(&mut loser)
            .await
            .expect("txid");
        loser.execute("COMMIT").await.expect("commit");
        (outcome, xid)
    });
    // The loser found no record and now waits for the winner.
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let waiting: bool = sqlx::query_scalar(
                "SELECT coalesce(wait_event_type = 'Lock', false) FROM pg_stat_activity WHERE pid = $1",
            )
            .bind(loser_pid)
            .fetch_one(&mut admin)
            .await
            .expect("read activity");
            if waiting {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the losing claim waits for the winner's commit");
    winner.execute("COMMIT").await.expect("commit");

    let (outcome, xid) = losing.await.expect("loser");
    assert_eq!(outcome, "in_flight", "the loser reads the winner's lease");
    assert_eq!(xid, None, "the losing claim assigned a transaction id");
}

/// Renewals and completions are HOT updates (no index on a column they
/// rewrite, room on the page): counted in `pg_stat_user_tables` of a
/// database only this test uses, so that no other transaction holds back
/// the pruning of old row versions.
#[tokio::test]
async fn renewals_and_completions_are_hot_updates() {
    if !backend_available("DATABASE_URL") {
        return;
    }
    let (url, name) = common::dedicated_database().await;
    // One pooled connection, so that flushing its statistics flushes all.
    let store = store_on(&url, 1).await;
    let mut admin = PgConnection::connect(&url).await.expect("connect");
    let k = key("hot");
    let lease = acquired(
        store
            .claim_or_get(&k, &options(Duration::from_secs(60)))
            .await
            .unwrap(),
    );
    const RENEWALS: i64 = 20;
    for _ in 0..RENEWALS {
        store.renew(&k, lease.token, None).await.unwrap();
    }
    store
        .complete(
            &k,
            lease.token,
            Bytes::from_static(b"{\"url\":\"https://cdn/x.png\"}"),
        )
        .await
        .unwrap();
    sqlx::query("SELECT pg_stat_force_next_flush()")
        .execute(store.pool())
        .await
        .expect("force flush");
    let (updates, hot): (i64, i64) = sqlx::query_as(
        "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables \
         WHERE schemaname = 'onceflight' AND relname = 'onceflight_records'",
    )
    .fetch_one(&mut admin)
    .await
    .expect("read stats");
    drop(admin);
    drop(store);
    common::drop_database(&name).await;
    assert_eq!(
        updates,
        RENEWALS + 1,
        "every renewal and the completion counted"
    );
    assert_eq!(
        hot, updates,
        "every renewal and the completion is a HOT update"
    );
}

/// Transactions committed in database `name`, after flushing the pending
/// statistics of every connection that `pool` holds.
async fn committed_transactions(admin: &mut PgConnection, store: &PgStore, name: &str) -> i64 {
    // Runs on the store's only pooled connection, flushing its counters at
    // the end of this very transaction.
    sqlx::query("SELECT pg_stat_force_next_flush()")
        .execute(store.pool())
        .await
        .expect("force flush");
    sqlx::query("SELECT pg_stat_clear_snapshot()")
        .execute(&mut *admin)
        .await
        .expect("clear snapshot");
    sqlx::query_scalar(
        "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = $1",
    )
    .bind(name)
    .fetch_one(&mut *admin)
    .await
    .expect("read stats")
}

/// Each of `claim_or_get`, `renew`, `complete`, `fail`, `release`, `get` and
/// `delete` is one statement — one transaction — on the server, counted in
/// `pg_stat_database` of a database only this test uses (once its statement
/// is prepared on the connection).
#[tokio::test]
async fn every_operation_is_one_round_trip() {
    if !backend_available("DATABASE_URL") {
        return;
    }
    let (url, name) = common::dedicated_database().await;
    drop(store_on(&url, 4).await);
    // One pooled connection, so that flushing its statistics flushes all.
    let store = PgStore::connect(PgConfig::new(&url).with_pool_size(1))
        .await
        .expect("connect");
    let mut admin = PgConnection::connect(&common::database_url())
        .await
        .expect("connect");
    let o = options(Duration::from_secs(60));
    // Warm up: sqlx prepares each statement once per connection (an extra
    // round trip the first time); measure the steady state after that.
    for k in [key("warm-1"), key("warm-2")] {
        let lease = acquired(store.claim_or_get(&k, &o).await.unwrap());
        store.renew(&k, lease.token, None).await.unwrap();
        store
            .complete(&k, lease.token, Bytes::from_static(b"1"))
            .await
            .unwrap();
        store
            .fail(&k, lease.token, &JobError::retryable("x"))
            .await
            .ok();
        store.release(&k, lease.token).await.ok();
        store.get(&k).await.unwrap();
        store.delete(&k).await.unwrap();
    }
    let mut counts = Vec::new();
    let mut before = committed_transactions(&mut admin, &store, &name).await;
    let mut count = async |what: &str, before: &mut i64| {
        let after = committed_transactions(&mut admin, &store, &name).await;
        // One for the operation, one for the flush itself.
        counts.push((what.to_owned(), after - *before - 1));
        *before = after;
    };
    let lease = acquired(store.claim_or_get(&key("a"), &o).await.unwrap());
    count("claim (fresh)", &mut before).await;
    let _ = store.claim_or_get(&key("a"), &o).await.unwrap();
    count("claim (in flight)", &mut before).await;
    store.renew(&key("a"), lease.token, None).await.unwrap();
    count("renew", &mut before).await;
    store
        .complete(&key("a"), lease.token, Bytes::from_static(b"1"))
        .await
        .unwrap();
    count("complete", &mut before).await;
    let _ = store.claim_or_get(&key("a"), &o).await.unwrap();
    count("claim (completed)", &mut before).await;
    let lease = acquired(store.claim_or_get(&key("b"), &o).await.unwrap());
    store
        .fail(&key("b"), lease.token, &JobError::retryable("x"))
        .await
        .unwrap();
    count("claim + fail", &mut before).await;
    let lease = acquired(store.claim_or_get(&key("c"), &o).await.unwrap());
    store.release(&key("c"), lease.token).await.unwrap();
    count("claim + release", &mut before).await;
    store.get(&key("a")).await.unwrap();
    count("get", &mut before).await;
    store.delete(&key("a")).await.unwrap();
    count("delete", &mut before).await;
    drop(store);
    common::drop_database(&name).await;
    let expected = [1, 1, 1, 1, 1, 2, 2, 1, 1];
    assert_eq!(
        counts.iter().map(|(_, n)| *n).collect::<Vec<_>>(),
        expected,
        "server-side transactions per operation: {counts:?}"
    );
}

/// Every connection of the store is terminated (`pg_terminate_backend`):
/// failures are `Unavailable`, later operations succeed, and the LISTEN
/// connection comes back so a waiter is still woken by NOTIFY.
#[tokio::test]
async fn terminated_connections_are_unavailable_then_recover() {
    if !backend_available("DATABASE_URL") {
        return;
    }
    let (url, name) = common::dedicated_database().await;
    let store = Arc::new(store_on(&url, 2).await);
    let mut admin = PgConnection::connect(&common::database_url())
        .await
        .expect("connect");
    let o = options(Duration::from_secs(60));
    let lease = acquired(store.claim_or_get(&key("k"), &o).await.unwrap());

    let terminated: i64 = sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(&name)
    .fetch_one(&mut admin)
    .await
    .expect("terminate");
    assert!(terminated >= 2, "the pool's and the listener's connections");

    // Each operation either succeeds or is Unavailable; within a few tries
    // the store has reconnected by itself. One success is not enough: the
    // pool may still hold another terminated connection it has not used
    // yet, so the store has recovered once more operations in a row than the
    // pool has connections have succeeded.
    let mut in_a_row = 0;
    for _ in 0..40 {
        match store.get(&key("k")).await {
            Ok(record) => {
                assert!(record.is_some(), "nothing was lost");
                in_a_row += 1;
                if in_a_row > 2 {
                    break;
                }
                continue;
            }
            Err(e) => assert!(
                matches!(e, Error::Unavailable { .. }),
                "a lost connection must be Unavailable, got {e:?}"
            ),
        }
        in_a_row = 0;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(in_a_row > 2, "the store reconnected");

    // Give the listener a moment to notice and re-LISTEN, then check that a
    // completion wakes a waiter through NOTIFY, well before the 5 s fallback.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let waiter = {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            store
                .wait(&key("k"), Duration::from_secs(20))
                .await
                .expect("wait")
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let completed_at = Instant::now();
    store
        .complete(&key("k"), lease.token, Bytes::from_static(b"1"))
        .await
        .expect("complete after recovery");
    let record = waiter.await.expect("waiter").expect("record");
    let late = completed_at.elapsed();
    assert!(record.state.is_terminal(), "the waiter saw the completion");
    assert!(
        late < Duration::from_secs(2),
        "woken by NOTIFY, {late:?} late"
    );
    drop(store);
    common::drop_database(&name).await;
}

/// Two store instances on one database (the horizontal-scale case): a herd
/// of claims spread over both yields exactly one `Acquired`, and a waiter on
/// one is woken by a completion on the other.
#[tokio::test]
async fn two_instances_share_one_database() {
    if !backend_available("DATABASE_URL") {
        return;
    }
    let schema = common::fresh_schema();
    let a = Arc::new(common::store_with(&schema, Duration::from_secs(3600)).await);
    let b = Arc::new(common::store_with(&schema, Duration::from_secs(3600)).await);
    let k = key("herd");
    let claims: Vec<_> = (0..40)
        .map(|i| {
            let store = if i % 2 == 0 {
                Arc::clone(&a)
            } else {
                Arc::clone(&b)
            };
            let k = k.clone();
            tokio::spawn(async move {
                store
                    .claim_or_get(&k, &options(Duration::from_secs(60)))
                    .await
            })
        })
        .collect();
    let mut winners = Vec::new();
    for claim in claims {
        match claim.await.unwrap().expect("claim") {
            Claim::Acquired(lease) => winners.push(lease),
            Claim::InFlight(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "exactly one Acquired across both instances"
    );

    let waiter = {
        let a = Arc::clone(&a);
        let k = k.clone();
        tokio::spawn(async move { a.wait(&k, Duration::from_secs(20)).await.expect("wait") })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let completed_at = Instant::now();
    b.complete(&k, winners[0].token, Bytes::from_static(b"\"png\""))
        .await
        .expect("complete on b");
    let record = waiter.await.unwrap().expect("record");
    let late = completed_at.elapsed();
    assert_eq!(record.result.as_deref(), Some(&b"\"png\""[..]));
    assert!(
        late < Duration::from_secs(2),
        "woken across instances, {late:?} late"
    );
}
