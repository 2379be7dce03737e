//! Who gets notified: a write (other than a delete, which result caches
//! must hear of) on a key nobody waits for sends no NOTIFY (a
//! notifying commit holds a cluster-wide lock through its WAL flush); a
//! write on a watched key does, and wakes the waiter; and a waiter that
//! starts while a write commits is never left asleep.

mod common;

use common::{acquired, key, options};

use std::sync::Arc;
use std::time::Duration;

use onceflight_core::{Bytes, JobError, Record, RecordState, RequestKey, RequestStore, Token};
use onceflight_store_postgres::{PgConfig, PgStore};
use onceflight_test_support::backend_available;
use sqlx::postgres::PgListener;
use sqlx::{Connection, Executor, PgConnection};

/// The channel the store notifies on.
const CHANNEL: &str = "onceflight";

/// Long enough that no test here can pass by a waiter's fallback re-read,
/// a lease's end or a wait's deadline: a waiter that was not notified
/// returns its unsettled record at the deadline, and the test fails.
const NEVER: Duration = Duration::from_secs(600);
const WAIT: Duration = Duration::from_secs(30);

/// A migrated store in a fresh schema whose waiters re-read only when
/// notified (the fallback is far beyond any wait here).
async fn store() -> PgStore {
    let mut config = PgConfig::new(common::database_url())
        .with_schema(common::fresh_schema())
        .with_pool_size(4);
    config.wait_fallback = NEVER;
    let store = PgStore::connect(config).await.expect("connect");
    store.migrate().await.expect("migrate");
    store
}

/// A connection of the test's own that listens on the store's channel.
async fn listener() -> PgListener {
    let mut listener = PgListener::connect(&common::database_url())
        .await
        .expect("listen connection");
    listener.listen(CHANNEL).await.expect("LISTEN");
    listener
}

fn payload(store: &PgStore, key: &RequestKey) -> String {
    format!("{}:{}", store.schema(), key.as_str())
}

/// Sends a marker notification on a connection of its own (so after every
/// write the test already saw commit) and returns the payloads that
/// `listener` received before it. Notifications reach a listener in commit
/// order, so a write's notification, if there was one, is among them: no
/// grace period is guessed.
async fn received_before_marker(listener: &mut PgListener, store: &PgStore) -> Vec<String> {
    let marker = format!("{}:marker-{}", store.schema(), common::fresh_schema());
    let mut conn = PgConnection::connect(&common::database_url())
        .await
        .expect("connect");
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(&marker)
        .execute(&mut conn)
        .await
        .expect("notify the marker");
    let mut seen = Vec::new();
    loop {
        let notification = tokio::time::timeout(WAIT, listener.recv())
            .await
            .expect("the marker arrives")
            .expect("receive");
        if notification.payload() == marker {
            return seen;
        }
        seen.push(notification.payload().to_owned());
    }
}

/// Receives until `expected` arrives (other schemas' tests share the
/// channel); fails if it does not within [`WAIT`].
async fn receive(listener: &mut PgListener, expected: &str) {
    tokio::time::timeout(WAIT, async {
        loop {
            let notification = listener.recv().await.expect("receive");
            if notification.payload() == expected {
                return;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no notification {expected:?}"));
}

/// The four writes that end or give up a lease, by name.
const WRITES: [&str; 4] = ["complete", "fail", "release", "delete"];

async fn write(store: &PgStore, what: &str, key: &RequestKey, token: Token) {
    match what {
        "complete" => {
            let record = store.complete(key, token, Bytes::from_static(b"1")).await;
            assert_eq!(record.expect("complete").state, RecordState::Completed);
        }
        "fail" => {
            let record = store.fail(key, token, &JobError::permanent("no")).await;
            assert_eq!(record.expect("fail").state, RecordState::Failed);
        }
        "release" => {
            let record = store.release(key, token).await.expect("release");
            assert!(record.lease_expired(), "released: {record:?}");
        }
        "delete" => assert!(store.delete(key).await.expect("delete"), "deleted"),
        other => unreachable!("{other}"),
    }
}

/// What a waiter on a key that `what` wrote must see: the new state, or no
/// record after a delete.
fn assert_settled_by(what: &str, record: Option<Record>) {
    match (what, record) {
        ("delete", None) => {}
        ("complete", Some(r)) if r.state == RecordState::Completed => {}
        ("fail", Some(r)) if r.state == RecordState::Failed => {}
        ("release", Some(r)) if r.lease_expired() => {}
        (what, other) => panic!("after {what}, the waiter saw {other:?}"),
    }
}

/// Whether `store` holds a waiter's registration for `key`.
async fn registered(conn: &mut PgConnection, store: &PgStore, key: &RequestKey) -> bool {
    let sql = format!(
        "SELECT count(*) FROM \"{}\".onceflight_watches WHERE key = $1",
        store.schema()
    );
    let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind(key.as_str())
        .fetch_one(conn)
        .await
        .expect("read registrations");
    n > 0
}

/// Polls `condition` until it holds (failing after [`WAIT`]): a wait for a
/// state, not a timing assertion.
async fn until<F: AsyncFnMut() -> bool>(what: &str, mut condition: F) {
    tokio::time::timeout(WAIT, async {
        while !condition().await {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("never: {what}"));
}

/// A complete, fail or release on a key nobody waits for sends no
/// notification at all, while a delete always notifies (result caches
/// elsewhere must forget the record); the same write on a key with a waiter
/// notifies it and wakes the waiter with the new state.
#[tokio::test]
async fn only_watched_keys_are_notified() {
    if !backend_available("DATABASE_URL") {
        return;
    }
    let store = Arc::new(store().await);
    let mut listener = listener().await;
    let mut admin = PgConnection::connect(&common::database_url())
        .await
        .expect("connect");
    let o = options(NEVER);
    for what in WRITES {
        let quiet = key(&format!("quiet-{what}"));
        let lease = acquired(store.claim_or_get(&quiet, &o).await.expect("claim"));
        write(&store, what, &quiet, lease.token).await;
        let seen = received_before_marker(&mut listener, &store).await;
        if what == "delete" {
            // Result caches on other servers must hear of every delete.
            assert!(
                seen.contains(&payload(&store, &quiet)),
                "a delete with nobody waiting must still notify, for result caches: {seen:?}"
            );
        } else {
            assert!(
                !seen.contains(&payload(&store, &quiet)),
                "{what} with nobody waiting sent a notification: {seen:?}"
            );
        }

        let watched = key(&format!("watched-{what}"));
        let lease = acquired(store.claim_or_get(&watched, &o).await.expect("claim"));
        let waiter = {
            let (store, watched) = (Arc::clone(&store), watched.clone());
            tokio::spawn(async move { store.wait(&watched, WAIT).await.expect("wait") })
        };
        until("the waiter registered", async || {
            registered(&mut admin, &store, &watched).await
        })
        .await;
        write(&store, what, &watched, lease.token).await;
        receive(&mut listener, &payload(&store, &watched)).await;
        assert_settled_by(what, waiter.await.expect("waiter"));
    }
}

/// Waiters that start while a write commits, round after round and on
/// several keys at once, always return the new state, woken by the write
/// or reading it; none is left waiting for a notification that was never
/// sent (it would return the old state at its deadline).
#[tokio::test]
async fn a_waiter_racing_a_write_always_sees_it() {
    if !backend_available("DATABASE_URL") {
        return;
    }
    let store = Arc::new(store().await);
    let o = options(NEVER);
    for round in 0..40 {
        let mut racing = Vec::new();
        for i in 0..8 {
            let k = key(&format!("race-{round}-{i}"));
            let lease = acquired(store.claim_or_get(&k, &o).await.expect("claim"));
            let what = WRITES[(round + i) % WRITES.len()];
            let waiter = {
                let (store, k) = (Arc::clone(&store), k.clone());
                tokio::spawn(async move { store.wait(&k, WAIT).await.expect("wait") })
            };
            let writer = {
                let (store, k) = (Arc::clone(&store), k.clone());
                // Spread the writes over the waiters' first reads.
                let lag = Duration::from_micros(((round * 8 + i) % 7 * 300) as u64);
                tokio::spawn(async move {
                    tokio::time::sleep(lag).await;
                    write(&store, what, &k, lease.token).await;
                })
            };
            racing.push((what, waiter, writer));
        }
        for (what, waiter, writer) in racing {
            writer.await.expect("writer");
            assert_settled_by(what, waiter.await.expect("waiter"));
        }
    }
}

/// Whether a server process running a statement that mentions `needle` is
/// waiting for a lock.
async fn blocked(admin: &mut PgConnection, needle: &str) -> bool {
    sqlx::query_scalar(
        "SELECT count(*) > 0 FROM pg_stat_activity \
         WHERE wait_event_type = 'Lock' AND position($1 in query) > 0 AND pid <> pg_backend_pid()",
    )
    .bind(needle)
    .fetch_one(admin)
    .await
    .expect("read activity")
}

/// Both orders of the race, held open: a write whose transaction has not
/// committed yet makes a waiter's read wait for the commit (and see the
/// write); a waiter whose registration has not committed yet makes a write
/// wait for it (and notify).
#[tokio::test]
async fn the_watch_lock_orders_a_waiter_and_a_write() {
    if !backend_available("DATABASE_URL") {
        return;
    }
    let store = Arc::new(store().await);
    let schema = store.schema().to_owned();
    let o = options(NEVER);
    let mut admin = PgConnection::connect(&common::database_url())
        .await
        .expect("connect");

    // The write first: its transaction holds the key's watch lock.
    let k = key("write-first");
    let lease = acquired(store.claim_or_get(&k, &o).await.expect("claim"));
    let mut writer = PgConnection::connect(&common::database_url())
        .await
        .expect("connect");
    writer.execute("BEGIN").await.expect("begin");
    let outcome: String = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT outcome FROM \"{schema}\".onceflight_complete_v2($1, $2, '\\x31', 3600000)"
    )))
    .bind(k.as_str())
    .bind(i64::try_from(lease.token.get()).expect("token"))
    .fetch_one(&mut writer)
    .await
    .expect("complete");
    assert_eq!(outcome, "ok");
    let waiter = {
        let (store, k) = (Arc::clone(&store), k.clone());
        tokio::spawn(async move { store.wait(&k, WAIT).await.expect("wait") })
    };
    let watch_call = format!("\"{schema}\".onceflight_watch(");
    until("the waiter's read waits for the write", async || {
        blocked(&mut admin, &watch_call).await
    })
    .await;
    writer.execute("COMMIT").await.expect("commit");
    assert_settled_by("complete", waiter.await.expect("waiter"));

    // The waiter first: its transaction holds the lock shared and has
    // registered; the write waits for its commit and then notifies.
    let k = key("waiter-first");
    let lease = acquired(store.claim_or_get(&k, &o).await.expect("claim"));
    let mut listener = listener().await;
    let mut watcher = PgConnection::connect(&common::database_url())
        .await
        .expect("connect");
    watcher.execute("BEGIN").await.expect("begin");
    let state: String = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT (rec).state FROM \"{schema}\".onceflight_watch($1, 600000)"
    )))
    .bind(k.as_str())
    .fetch_one(&mut watcher)
    .await
    .expect("watch");
    assert_eq!(state, "processing");
    let writer = {
        let (store, k) = (Arc::clone(&store), k.clone());
        tokio::spawn(async move {
            store
                .complete(&k, lease.token, Bytes::from_static(b"1"))
                .await
                .expect("complete")
        })
    };
    let complete_call = format!("\"{schema}\".onceflight_complete_v2(");
    until("the write waits for the waiter's commit", async || {
        blocked(&mut admin, &complete_call).await
    })
    .await;
    assert!(
        !writer.is_finished(),
        "the write went ahead of the waiter's uncommitted registration"
    );
    watcher.execute("COMMIT").await.expect("commit");
    writer.await.expect("writer");
    receive(&mut listener, &format!("{schema}:{}", k.as_str())).await;
}
