//! What a request costs Redis, on a Redis of the test's own (its counters
//! and memory are then the store's alone): the memory of a record, bounded
//! here, and the commands a claim runs inside Redis, counted here, with the
//! server time they take reported beside a bare `SET … NX PX` — reported
//! only, never asserted (speed is for benchmarks). To see the report:
//!
//! ```text
//! REDIS_URL=redis://127.0.0.1:6379 cargo test -p onceflight-store-redis \
//!     --all-features --test footprint -- --nocapture
//! ```

mod common;

use std::collections::HashMap;
use std::time::Duration;

use onceflight_core::{Bytes, Claim, ClaimOptions, Kind, Owner, RequestKey, RequestStore};
use onceflight_store_redis::{RedisConnection, RedisStore};
use onceflight_test_support::backend_available;
use onceflight_test_support::redis::Redis;

/// A store under the default prefix on a Redis of the test's own.
async fn own_store() -> (Redis, RedisStore) {
    let server = Redis::start().expect("a Redis of the test's own");
    let store = common::store_on(&server.url(), "onceflight:", Duration::from_secs(86_400)).await;
    (server, store)
}

/// A request key of a realistic length: a kind and a 32-digit hash.
fn request_key(n: u32) -> RequestKey {
    RequestKey::parse(format!(
        "image|{:032x}",
        u128::from(n) * 0x9e37_79b9_7f4a_7c15
    ))
    .expect("valid key")
}

fn options() -> ClaimOptions {
    ClaimOptions::new(Kind::parse("image").expect("kind"))
        .with_owner(Owner::parse("worker-7f3a").expect("owner"))
}

/// `MEMORY USAGE` summed over the request's Redis keys.
async fn memory(store: &RedisStore, key: &RequestKey) -> u64 {
    let mut conn = store.connection();
    let mut total = 0;
    for redis_key in store.redis_keys(key) {
        let used: Option<u64> = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(&redis_key)
            .query_async(&mut conn)
            .await
            .expect("MEMORY USAGE");
        total += used.unwrap_or(0);
    }
    total
}

/// A record in flight takes at most 300 bytes of Redis's memory, and a
/// completed one with a 100-byte result at most 400 (about 200 and 300
/// today: the bounds leave room for allocator size classes and a longer
/// owner).
#[tokio::test]
async fn a_record_is_small() {
    if !backend_available("REDIS_URL") {
        return;
    }
    let (_server, store) = own_store().await;
    let key = request_key(1);
    let Claim::Acquired(lease) = store.claim_or_get(&key, &options()).await.expect("claim") else {
        panic!("a fresh key is acquired");
    };
    let in_flight = memory(&store, &key).await;
    eprintln!("memory of a record in flight: {in_flight} B");
    assert!(
        (1..=300).contains(&in_flight),
        "a record in flight takes {in_flight} B"
    );
    store
        .complete(&key, lease.token, Bytes::from(vec![b'r'; 100]))
        .await
        .expect("complete");
    let completed = memory(&store, &key).await;
    eprintln!("memory of a completed record (100 B result): {completed} B");
    assert!(
        (100..=400).contains(&completed),
        "a completed record with a 100-byte result takes {completed} B"
    );
}

/// Per command name: (calls, microseconds) from `INFO commandstats`.
async fn command_stats(conn: &mut RedisConnection) -> HashMap<String, (u64, u64)> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .expect("INFO commandstats");
    info.lines()
        .filter_map(|line| {
            let (name, stats) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let field = |label: &str| -> Option<u64> {
                stats
                    .split(',')
                    .find_map(|kv| kv.strip_prefix(label))?
                    .parse()
                    .ok()
            };
            Some((name.to_owned(), (field("calls=")?, field("usec=")?)))
        })
        .collect()
}

/// What ran between two `command_stats`: calls and µs per command name.
fn since(
    before: &HashMap<String, (u64, u64)>,
    after: &HashMap<String, (u64, u64)>,
) -> HashMap<String, (u64, u64)> {
    after
        .iter()
        .filter_map(|(name, (calls, usec))| {
            let (calls_before, usec_before) = before.get(name).copied().unwrap_or((0, 0));
            (*calls > calls_before)
                .then(|| (name.clone(), (calls - calls_before, usec - usec_before)))
        })
        .collect()
}

fn per_call(stats: &HashMap<String, (u64, u64)>, name: &str) -> f64 {
    let (calls, usec) = stats.get(name).copied().unwrap_or((0, 1));
    usec as f64 / calls.max(1) as f64
}

/// A hot claim (the key completed) runs one command inside Redis, a GET,
/// and a fresh claim four (GET of the record and of the fence, TIME, SET),
/// each claim one FCALL. Reports the server time of each beside a bare
/// `SET key val NX PX 30000` on fresh keys, measured in the same run.
#[tokio::test]
async fn claims_run_few_commands_inside_redis() {
    if !backend_available("REDIS_URL") {
        return;
    }
    const N: u32 = 2000;
    let (_server, store) = own_store().await;
    let mut conn = store.connection();
    let hot = request_key(0);
    let Claim::Acquired(lease) = store.claim_or_get(&hot, &options()).await.expect("claim") else {
        panic!("a fresh key is acquired");
    };
    store
        .complete(&hot, lease.token, Bytes::from(vec![b'r'; 100]))
        .await
        .expect("complete");

    let before = command_stats(&mut conn).await;
    for n in 0..N {
        let _: Option<String> = redis::cmd("SET")
            .arg(format!("bare:{n}"))
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(30_000)
            .query_async(&mut conn)
            .await
            .expect("SET NX PX");
    }
    let bare = since(&before, &command_stats(&mut conn).await);

    let before = command_stats(&mut conn).await;
    for _ in 0..N {
        let claim = store.claim_or_get(&hot, &options()).await.expect("claim");
        assert!(matches!(claim, Claim::Completed(_)), "a hit: {claim:?}");
    }
    let hits = since(&before, &command_stats(&mut conn).await);

    let before = command_stats(&mut conn).await;
    for n in 1..=N {
        let claim = store
            .claim_or_get(&request_key(n), &options())
            .await
            .expect("claim");
        assert!(matches!(claim, Claim::Acquired(_)), "fresh: {claim:?}");
    }
    let fresh = since(&before, &command_stats(&mut conn).await);

    let calls = |stats: &HashMap<String, (u64, u64)>| -> Vec<(String, u64)> {
        let mut calls: Vec<(String, u64)> = stats
            .iter()
            .filter(|(name, _)| !matches!(name.as_str(), "info" | "ping"))
            .map(|(name, (calls, _))| (name.clone(), *calls))
            .collect();
        calls.sort();
        calls
    };
    let n = u64::from(N);
    assert_eq!(
        calls(&hits),
        vec![("fcall".to_owned(), n), ("get".to_owned(), n)],
        "a hot claim: one FCALL running one GET"
    );
    assert_eq!(
        calls(&fresh),
        vec![
            ("fcall".to_owned(), n),
            ("get".to_owned(), 2 * n),
            ("set".to_owned(), n),
            ("time".to_owned(), n),
        ],
        "a fresh claim: one FCALL running two GETs, TIME and SET"
    );

    let set = per_call(&bare, "set");
    let (hot_us, fresh_us) = (per_call(&hits, "fcall"), per_call(&fresh, "fcall"));
    eprintln!(
        "server time per call (INFO commandstats, {N} calls each): bare SET NX PX {set:.2} µs; \
         hot claim {hot_us:.2} µs = {:.2}× SET; fresh claim {fresh_us:.2} µs = {:.2}× SET",
        hot_us / set,
        fresh_us / set
    );
}
