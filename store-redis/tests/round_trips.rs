//! One round trip per operation (docs/protocol.md §9), counted on Redis's side with
//! `INFO commandstats`, and a claim's hit path that writes nothing, counted
//! by Redis's dirty counter. A binary of its own: the counters are
//! server-wide, so no other test may run beside these, and these two take
//! turns.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use onceflight_core::{
    Bytes, Claim, ClaimOptions, Error, JobError, Kind, RequestKey, RequestStore, Token,
};
use onceflight_store_redis::RedisStore;
use onceflight_test_support::backend_available;
use redis::aio::MultiplexedConnection;

/// Taken by each test here for its whole run: the counters are server-wide.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A fresh store, and a plain connection for reading the counters.
async fn store_and_counters() -> (RedisStore, MultiplexedConnection) {
    let url = common::redis_url();
    let store = common::store_on(&url, &common::fresh_prefix(), Duration::from_secs(3600)).await;
    (store, common::raw(&url).await)
}

/// The calls per command name on the server.
async fn command_calls(conn: &mut MultiplexedConnection) -> HashMap<String, u64> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .expect("INFO commandstats");
    info.lines()
        .filter_map(|line| {
            let (name, stats) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = stats
                .split(',')
                .find_map(|kv| kv.strip_prefix("calls="))?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

fn delta(before: &HashMap<String, u64>, after: &HashMap<String, u64>, name: &str) -> u64 {
    after.get(name).copied().unwrap_or(0) - before.get(name).copied().unwrap_or(0)
}

/// The commands a client could use to do an operation's work itself, or to
/// spread it over several round trips, or to load the library again; the
/// functions run their commands inside Redis, where they count too, so
/// those are not listed.
const NEVER_FROM_THE_CLIENT: [&str; 8] = [
    "eval",
    "evalsha",
    "script|load",
    "function|load",
    "multi",
    "exec",
    "watch",
    "hgetall",
];

/// Every operation — claims of each outcome, renew, complete, fail, release,
/// get, delete — is exactly one FCALL (or FCALL_RO) once the library is
/// loaded.
#[tokio::test]
async fn each_operation_is_one_fcall() {
    if !backend_available("REDIS_URL") {
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().await;
    let (store, mut conn) = store_and_counters().await;
    let k = RequestKey::parse("counted").expect("key");
    let opts = ClaimOptions::new(Kind::parse("image").expect("kind"));
    // Runs every function once.
    let warm = RequestKey::parse("warm-up").expect("key");
    for _ in 0..2 {
        if let Ok(Claim::Acquired(lease)) = store.claim_or_get(&warm, &opts).await {
            store.renew(&warm, lease.token, None).await.expect("renew");
            store.release(&warm, lease.token).await.expect("release");
        }
    }
    for token in [1, 2] {
        let _ = store
            .complete(&warm, Token::new(token).expect("token"), Bytes::new())
            .await;
        let _ = store
            .fail(
                &warm,
                Token::new(token).expect("token"),
                &JobError::permanent("x"),
            )
            .await;
    }
    store.get(&warm).await.expect("get");
    store.delete(&warm).await.expect("delete");

    let mut token = Token::new(1).expect("token");
    for step in [
        "claim (fresh)",
        "claim (in flight)",
        "renew",
        "release",
        "claim (after release)",
        "fail",
        "claim (failed)",
        "get",
        "complete (lease lost)",
        "delete",
        "claim (fresh again)",
        "complete",
        "claim (completed)",
    ] {
        let before = command_calls(&mut conn).await;
        match step {
            "claim (fresh)" | "claim (after release)" | "claim (fresh again)" => {
                match store.claim_or_get(&k, &opts).await.expect(step) {
                    Claim::Acquired(lease) => token = lease.token,
                    other => panic!("{step}: expected Acquired, got {other:?}"),
                }
            }
            "claim (in flight)" | "claim (failed)" | "claim (completed)" => {
                let _ = store.claim_or_get(&k, &opts).await.expect(step);
            }
            "renew" => {
                store.renew(&k, token, None).await.expect(step);
            }
            "release" => {
                store.release(&k, token).await.expect(step);
            }
            "fail" => {
                store
                    .fail(&k, token, &JobError::permanent("no"))
                    .await
                    .expect(step);
            }
            "get" => {
                store.get(&k).await.expect(step);
            }
            "complete (lease lost)" => {
                let lost = store.complete(&k, token, Bytes::new()).await;
                assert!(
                    matches!(lost, Err(Error::LeaseLost { .. })),
                    "{step}: {lost:?}"
                );
            }
            "delete" => assert!(store.delete(&k).await.expect(step), "{step}: deleted"),
            "complete" => {
                store
                    .complete(&k, token, Bytes::from_static(b"1"))
                    .await
                    .expect(step);
            }
            other => panic!("unknown step {other}"),
        }
        let after = command_calls(&mut conn).await;
        assert_eq!(
            delta(&before, &after, "fcall") + delta(&before, &after, "fcall_ro"),
            1,
            "{step}: one FCALL"
        );
        for name in NEVER_FROM_THE_CLIENT {
            assert_eq!(delta(&before, &after, name), 0, "{step}: no {name}");
        }
    }
}

/// Writes Redis has made since its last save (`INFO persistence`); every
/// write command adds to it, whether or not Redis saves anything.
async fn dirty(conn: &mut MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("persistence")
        .query_async(conn)
        .await
        .expect("INFO persistence");
    info.lines()
        .find_map(|line| line.strip_prefix("rdb_changes_since_last_save:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("rdb_changes_since_last_save in INFO persistence")
}

/// A claim that finds a live lease, a result, a final failure or a
/// mismatch — and `get` — write nothing: Redis's dirty counter stands
/// still, while a claim that acquires does move it (so the check can fail).
#[tokio::test]
async fn the_hit_path_writes_nothing() {
    if !backend_available("REDIS_URL") {
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().await;
    let (store, mut conn) = store_and_counters().await;
    let opts = ClaimOptions::new(Kind::parse("image").expect("kind"));
    let other_kind = ClaimOptions::new(Kind::parse("video").expect("kind"));
    let (live, done, failed) = (
        RequestKey::parse("live").expect("key"),
        RequestKey::parse("done").expect("key"),
        RequestKey::parse("failed").expect("key"),
    );
    let before = dirty(&mut conn).await;
    let Ok(Claim::Acquired(_)) = store.claim_or_get(&live, &opts).await else {
        panic!("fresh claim acquires");
    };
    assert!(
        dirty(&mut conn).await > before,
        "acquiring writes (the check can fail)"
    );
    let Ok(Claim::Acquired(lease)) = store.claim_or_get(&done, &opts).await else {
        panic!("fresh claim acquires");
    };
    store
        .complete(&done, lease.token, Bytes::from_static(b"1"))
        .await
        .expect("complete");
    let Ok(Claim::Acquired(lease)) = store.claim_or_get(&failed, &opts).await else {
        panic!("fresh claim acquires");
    };
    store
        .fail(&failed, lease.token, &JobError::permanent("no"))
        .await
        .expect("fail");

    let before = dirty(&mut conn).await;
    for _ in 0..3 {
        assert!(matches!(
            store.claim_or_get(&live, &opts).await,
            Ok(Claim::InFlight(_))
        ));
        assert!(matches!(
            store.claim_or_get(&done, &opts).await,
            Ok(Claim::Completed(_))
        ));
        assert!(matches!(
            store.claim_or_get(&failed, &opts).await,
            Ok(Claim::Failed(_))
        ));
        assert!(matches!(
            store.claim_or_get(&done, &other_kind).await,
            Err(Error::FingerprintMismatch { .. })
        ));
        store.get(&live).await.expect("get");
    }
    assert_eq!(dirty(&mut conn).await, before, "no hit wrote anything");
}
