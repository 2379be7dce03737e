//! Records written by the previous layout — a hash at the record's key and
//! a lease key holding the token, written as the previous scripts wrote them
//! (fields at the top of `lua/lib.lua`) — are honoured during a rolling
//! upgrade: a completed result is served and kept, a live lease is not
//! handed out again and its holder can still renew, complete or fail it,
//! an expired one is taken over with a higher token, and the fence of a
//! `delete` keeps tokens increasing.

mod common;

use std::time::Duration;

use onceflight_core::{
    Bytes, Claim, ClaimOptions, Error, JobError, Kind, Lease, RecordState, RequestKey,
    RequestStore, Token,
};
use onceflight_store_redis::RedisStore;
use onceflight_test_support::backend_available;
use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;

const RETENTION_MS: i64 = 3_600_000;

fn key(name: &str) -> RequestKey {
    RequestKey::parse(name).expect("valid key")
}

fn options() -> ClaimOptions {
    ClaimOptions::new(Kind::parse("image").expect("kind"))
}

fn acquired(claim: onceflight_core::Result<Claim>) -> Lease {
    match claim {
        Ok(Claim::Acquired(lease)) => lease,
        other => panic!("expected Acquired, got {other:?}"),
    }
}

/// A store, a plain connection, and Redis's clock in ms.
async fn setup() -> (RedisStore, MultiplexedConnection, i64) {
    let url = common::redis_url();
    let store = common::store_on(
        &url,
        &common::fresh_prefix(),
        Duration::from_millis(u64::try_from(RETENTION_MS).expect("retention")),
    )
    .await;
    let mut conn = common::raw(&url).await;
    let (seconds, micros): (i64, i64) = redis::cmd("TIME")
        .query_async(&mut conn)
        .await
        .expect("TIME");
    (store, conn, seconds * 1000 + micros / 1000)
}

/// What a record of the previous layout held, beside the fields every
/// record had.
enum Legacy<'a> {
    /// Processing, the lease ending at `lexp` (ms), `released` or not.
    Processing { lexp: i64, released: bool },
    /// Completed with `result`.
    Completed { result: &'a str },
    /// Failed with `message`; a retry allowed at `retry_at` (ms), if any.
    Failed {
        message: &'a str,
        retryable: bool,
        retry_at: Option<i64>,
    },
}

/// Writes `key`'s record as the previous scripts left it at `now` with
/// `token` on attempt `attempt`: the hash, its expiry, and for a live lease
/// the lease key (`SET … PXAT`).
async fn write_legacy(
    store: &RedisStore,
    conn: &mut MultiplexedConnection,
    key: &RequestKey,
    token: u64,
    attempt: u32,
    now: i64,
    legacy: Legacy<'_>,
) {
    let [record_key, _] = store.redis_keys(key);
    let lease_key = record_key.replacen(":record:", ":lease:", 1);
    let mut fields: Vec<(&str, String)> = vec![
        ("kind", "image".into()),
        ("token", token.to_string()),
        ("attempt", attempt.to_string()),
        ("max", "3".into()),
        ("backoff", "1000".into()),
        ("ttl", "30000".into()),
        ("owner", "old-worker".into()),
        ("created", (now - 5000).to_string()),
        ("updated", now.to_string()),
    ];
    let exp = match legacy {
        Legacy::Processing { lexp, released } => {
            fields.extend([
                ("state", "processing".into()),
                ("failures", "0".into()),
                ("lexp", lexp.to_string()),
                ("rel", if released { "1" } else { "0" }.into()),
            ]);
            if !released && lexp > now {
                let () = redis::cmd("SET")
                    .arg(&lease_key)
                    .arg(token)
                    .arg("PXAT")
                    .arg(lexp)
                    .query_async(conn)
                    .await
                    .expect("SET lease");
            }
            lexp + RETENTION_MS
        }
        Legacy::Completed { result } => {
            fields.extend([
                ("state", "completed".into()),
                ("failures", "0".into()),
                ("rel", "0".into()),
                ("result", result.into()),
                ("done", now.to_string()),
            ]);
            now + RETENTION_MS
        }
        Legacy::Failed {
            message,
            retryable,
            retry_at,
        } => {
            fields.extend([
                ("state", "failed".into()),
                ("rel", "0".into()),
                ("emsg", message.into()),
                ("eretry", if retryable { "1" } else { "0" }.into()),
                ("failures", if retryable { "1" } else { "0" }.into()),
                ("ftok", token.to_string()),
            ]);
            if let Some(at) = retry_at {
                fields.push(("retry_at", at.to_string()));
            }
            now + RETENTION_MS
        }
    };
    fields.push(("exp", exp.to_string()));
    let () = conn
        .hset_multiple(&record_key, &fields)
        .await
        .expect("HSET");
    let () = conn.pexpire_at(&record_key, exp).await.expect("PEXPIREAT");
}

async fn key_type(
    store: &RedisStore,
    conn: &mut MultiplexedConnection,
    key: &RequestKey,
) -> String {
    let [record_key, _] = store.redis_keys(key);
    redis::cmd("TYPE")
        .arg(&record_key)
        .query_async(conn)
        .await
        .expect("TYPE")
}

fn token(value: u64) -> Token {
    Token::new(value).expect("token")
}

/// A completed record of the previous layout is served by claims and
/// `get` without being rewritten, and `delete` fences its token.
#[tokio::test]
async fn a_completed_legacy_record_is_served_and_its_token_fenced() {
    if !backend_available("REDIS_URL") {
        return;
    }
    let (store, mut conn, now) = setup().await;
    let k = key("legacy-completed");
    let old = u64::try_from(now).expect("now") * 1000 + 7;
    write_legacy(
        &store,
        &mut conn,
        &k,
        old,
        2,
        now,
        Legacy::Completed { result: "\"old\"" },
    )
    .await;

    let claim = store.claim_or_get(&k, &options()).await;
    assert!(
        matches!(&claim, Ok(Claim::Completed(c))
            if c.result.as_ref() == b"\"old\"" && c.token == token(old) && c.attempt == 2),
        "the old result is served, got {claim:?}"
    );
    let record = store.get(&k).await.expect("get").expect("record");
    assert_eq!(record.state, RecordState::Completed, "get reads it");
    assert_eq!(
        record.owner.as_ref().map(|o| o.as_str()),
        Some("old-worker")
    );
    assert_eq!(
        key_type(&store, &mut conn, &k).await,
        "hash",
        "reading does not rewrite the record"
    );
    let mismatch = store
        .claim_or_get(&k, &ClaimOptions::new(Kind::parse("video").expect("kind")))
        .await;
    assert!(
        matches!(mismatch, Err(Error::FingerprintMismatch { .. })),
        "its kind is checked: {mismatch:?}"
    );

    assert!(store.delete(&k).await.expect("delete"), "deleted");
    let lease = acquired(store.claim_or_get(&k, &options()).await);
    assert!(
        lease.token > token(old),
        "the fence keeps the old token: {} after {old}",
        lease.token
    );
}

/// A live lease of the previous layout is not handed out again; its holder
/// renews and completes it with its old token, after which the record has
/// the new layout.
#[tokio::test]
async fn a_live_legacy_lease_is_in_flight_and_its_holder_finishes() {
    if !backend_available("REDIS_URL") {
        return;
    }
    let (store, mut conn, now) = setup().await;
    let k = key("legacy-live");
    let old = u64::try_from(now).expect("now") * 1000;
    let legacy = Legacy::Processing {
        lexp: now + 30_000,
        released: false,
    };
    write_legacy(&store, &mut conn, &k, old, 1, now, legacy).await;

    let claim = store.claim_or_get(&k, &options()).await;
    assert!(
        matches!(&claim, Ok(Claim::InFlight(f))
            if f.token == token(old) && f.owner.as_ref().map(|o| o.as_str()) == Some("old-worker")),
        "the live lease is in flight, got {claim:?}"
    );
    let stale = store.complete(&k, token(old - 1), Bytes::new()).await;
    assert!(
        matches!(stale, Err(Error::LeaseLost { .. })),
        "another token is fenced off: {stale:?}"
    );
    let renewed = store
        .renew(&k, token(old), Some(Duration::from_secs(60)))
        .await
        .expect("the holder renews");
    assert!(
        renewed.remaining > Duration::from_secs(30),
        "renewed to 60 s: {renewed:?}"
    );
    assert_eq!(
        key_type(&store, &mut conn, &k).await,
        "string",
        "the first write converts the record"
    );
    let claim = store.claim_or_get(&k, &options()).await;
    assert!(
        matches!(&claim, Ok(Claim::InFlight(f)) if f.token == token(old)),
        "still in flight after the conversion, got {claim:?}"
    );
    let record = store
        .complete(&k, token(old), Bytes::from_static(b"\"new\""))
        .await
        .expect("the holder completes");
    assert_eq!(record.state, RecordState::Completed, "completed");
    assert_eq!(record.attempt, 1, "on its attempt");
    let claim = store.claim_or_get(&k, &options()).await;
    assert!(
        matches!(&claim, Ok(Claim::Completed(c)) if c.result.as_ref() == b"\"new\""),
        "the result is served, got {claim:?}"
    );
}

/// An expired lease of the previous layout is taken over with a higher
/// token on the next attempt, and the old holder is fenced off; a released
/// one is claimed without a takeover, on the same attempt.
#[tokio::test]
async fn expired_and_released_legacy_leases_are_claimed_again() {
    if !backend_available("REDIS_URL") {
        return;
    }
    let (store, mut conn, now) = setup().await;
    let old = u64::try_from(now).expect("now") * 1000;

    let k = key("legacy-expired");
    let legacy = Legacy::Processing {
        lexp: now - 1000,
        released: false,
    };
    write_legacy(&store, &mut conn, &k, old, 1, now - 31_000, legacy).await;
    let lease = acquired(store.claim_or_get(&k, &options()).await);
    assert!(lease.takeover, "a takeover");
    assert!(lease.token > token(old), "with a higher token");
    assert_eq!(lease.attempt, 2, "on the next attempt");
    let late = store.complete(&k, token(old), Bytes::new()).await;
    assert!(
        matches!(late, Err(Error::LeaseLost { .. })),
        "the old holder is fenced off: {late:?}"
    );

    let k = key("legacy-released");
    let legacy = Legacy::Processing {
        lexp: now - 10,
        released: true,
    };
    write_legacy(&store, &mut conn, &k, old, 1, now - 10, legacy).await;
    let lease = acquired(store.claim_or_get(&k, &options()).await);
    assert!(!lease.takeover, "no takeover after a release");
    assert!(lease.token > token(old), "a higher token");
    assert_eq!(lease.attempt, 1, "a release is no attempt");
}

/// A failed record of the previous layout answers claims with its error
/// until its retry is due; the `fail` that made it failed may be repeated.
#[tokio::test]
async fn failed_legacy_records_keep_their_error_and_retry_schedule() {
    if !backend_available("REDIS_URL") {
        return;
    }
    let (store, mut conn, now) = setup().await;
    let old = u64::try_from(now).expect("now") * 1000;

    let k = key("legacy-failed");
    let legacy = Legacy::Failed {
        message: "old failure",
        retryable: false,
        retry_at: None,
    };
    write_legacy(&store, &mut conn, &k, old, 1, now, legacy).await;
    let claim = store.claim_or_get(&k, &options()).await;
    assert!(
        matches!(&claim, Ok(Claim::Failed(f))
            if f.error.message() == "old failure" && !f.error.is_retryable()
                && f.retry_after.is_none() && f.token == token(old)),
        "the old failure stands, got {claim:?}"
    );
    let repeated = store
        .fail(&k, token(old), &JobError::permanent("again"))
        .await;
    assert!(
        matches!(&repeated, Ok(r) if r.error.as_ref().map(JobError::message) == Some("old failure")),
        "the fail that made it failed may be repeated, changing nothing: {repeated:?}"
    );

    let k = key("legacy-retry-due");
    let legacy = Legacy::Failed {
        message: "flaky",
        retryable: true,
        retry_at: Some(now - 1),
    };
    write_legacy(&store, &mut conn, &k, old, 1, now - 2000, legacy).await;
    let lease = acquired(store.claim_or_get(&k, &options()).await);
    assert_eq!(lease.attempt, 2, "the due retry is the next attempt");
    assert!(lease.token > token(old), "with a higher token");
    let record = store
        .fail(&lease.key, lease.token, &JobError::new("flaky again", true))
        .await
        .expect("fail");
    assert!(
        record
            .retry_after
            .is_some_and(|after| after > Duration::from_millis(1000)),
        "the backoff counts the old failure too (2 s after two): {record:?}"
    );
}

/// A fence key of the previous layout (the same string the store writes
/// today) keeps the next token above it.
#[tokio::test]
async fn a_legacy_fence_is_honoured() {
    if !backend_available("REDIS_URL") {
        return;
    }
    let (store, mut conn, now) = setup().await;
    let k = key("legacy-fence");
    let high = (u64::try_from(now).expect("now") + 3_600_000) * 1000;
    let [_, fence_key] = store.redis_keys(&k);
    let () = redis::cmd("SET")
        .arg(&fence_key)
        .arg(high)
        .arg("PX")
        .arg(60_000)
        .query_async(&mut conn)
        .await
        .expect("SET fence");
    let lease = acquired(store.claim_or_get(&k, &options()).await);
    assert!(
        lease.token > token(high),
        "above the fence: {} after {high}",
        lease.token
    );
    let fence_left: bool = conn.exists(&fence_key).await.expect("EXISTS");
    assert!(
        !fence_left,
        "the record holds the token now, the fence is gone"
    );
}
