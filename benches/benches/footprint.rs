//! Memory store footprint: resident bytes per completed record at 1 M
//! records, beside a `HashMap<String, Bytes>` of the same keys and results.
//!
//! The memory store keeps a whole record per key (state, token, lease,
//! timestamps, retention) in sharded maps; the question operators ask is
//! what that costs over the bare minimum any cache needs — the key and the
//! result in one map. Both are measured in this process as the growth of
//! its resident memory (`VmRSS` of `/proc/self/status`) while they are
//! filled, so allocator overhead and the maps' spare capacity count, as they
//! do in a real process. The baseline is measured first and kept alive
//! while the store is filled: nothing is freed between the two
//! measurements, so neither can reuse memory the other gave back to the
//! allocator (freed memory need not return to the OS).
//!
//! Criterion measures one small thing on the filled store, a `get` of a
//! random existing key, so that the target is a real criterion bench.
//!
//! Then the Redis store: the growth of Redis's own `used_memory` (its
//! allocator's count, exact and free of this process's noise) per record,
//! for completed records with a 100-byte result (at most 400 bytes each)
//! and for records in flight (at most 300 bytes each), beside bare keys
//! written with `SET … PX`: one holding the same 100-byte value, and one
//! holding a token, as a hand-written lock would. The store's prefix is as
//! long as its default (`onceflight:`), so that the figures read as a
//! production deployment's. It runs on a Redis of its own when
//! `redis-server` is installed (else on `REDIS_URL`, saying so), since keys
//! expiring on a shared server would shrink the growth it measures.
//!
//! Redis's key tables (one for the keys, one for their expiries) double
//! their bucket arrays when they fill: a doubling that fell inside one
//! measured phase would charge that phase's records with the whole new
//! array (8 bytes a bucket, twice), tens of bytes each, depending only on
//! where the table happened to stand. So before measuring, padding keys
//! grow both tables past the size the measured keys will need, and every
//! phase measures what its records themselves add, baselines alike. Over a
//! server's life the bucket arrays add about 11 bytes per key per table on
//! average (8 bytes a bucket, tables between half full and full), for a
//! bare `SET` as for a record.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use onceflight_benches::report::{self, Figure};
use onceflight_benches::{criterion, quick, runtime, stores};
use onceflight_core::{Claim, ClaimOptions, Kind, RecordState, RequestKey, RequestStore};
use onceflight_store_memory::{MemoryConfig, MemoryStore};
use onceflight_store_redis::{RedisConfig, RedisStore};

const BENCH: &str = "footprint";
const STORE: &str = "memory";

/// Records in each map. A million fit in a few seconds even in a quick
/// run, so quick and full runs measure the same thing.
const RECORDS: u64 = 1_000_000;

/// Records read back to check that the store holds what was written.
const SAMPLE: u64 = 10_000;

/// Keys the criterion `get` cycles through, drawn at random beforehand so
/// that building them is not timed.
const PROBES: u64 = 4_096;

/// The length of every key.
const KEY_BYTES: usize = 70;

/// The length of every result.
const RESULT_BYTES: usize = 39;

fn main() {
    // The runtime exists before the first reading, so that its threads and
    // their stacks are counted in neither figure.
    let runtime = runtime();
    let mut criterion = criterion();
    assert_eq!(
        key_text(0).len(),
        KEY_BYTES,
        "keys are allocated to their size"
    );
    assert_eq!(
        result_json(0).len(),
        RESULT_BYTES,
        "results are allocated to their size"
    );

    let before_baseline = resident_bytes();
    let baseline = baseline_map(RECORDS);
    let after_baseline = resident_bytes();

    let store = Arc::new(MemoryStore::new(MemoryConfig::default()));
    let started = Instant::now();
    runtime.block_on(fill(&store, RECORDS));
    let filled_in = started.elapsed();
    let after_store = resident_bytes();
    println!(
        "footprint: {RECORDS} records into the memory store in {:.1} s",
        filled_in.as_secs_f64()
    );
    assert_eq!(
        baseline.len() as u64,
        RECORDS,
        "the baseline holds every record"
    );
    drop(baseline);

    let ours = per_record(after_store, after_baseline, RECORDS);
    let theirs = per_record(after_baseline, before_baseline, RECORDS);

    let probes: Vec<RequestKey> = (0..PROBES)
        .map(|i| request_key(mix(i ^ 0xface) % RECORDS))
        .collect();
    let mut next = 0;
    criterion.bench_function("memory store: get of an existing key, 1 M records", |b| {
        b.to_async(&runtime).iter(|| {
            next = (next + 1) % probes.len();
            store.get(&probes[next])
        });
    });

    report::figure(&Figure {
        bench: BENCH,
        group: "Memory store footprint".to_owned(),
        name: "bytes per record".to_owned(),
        store: STORE.to_owned(),
        unit: "bytes/record",
        higher_is_better: false,
        ours,
        baseline: Some(theirs),
        baseline_name: Some("HashMap<String, Bytes> of the same keys and results".to_owned()),
        note: Some(format!(
            "{RECORDS} completed records ({KEY_BYTES}-byte keys `image|<64 hex>`, kind \
             `image`, {RESULT_BYTES}-byte JSON results), filled by {} concurrent tasks through \
             claim_or_get + complete in {:.1} s. Growth of this process's resident memory (VmRSS) divided by \
             the records, allocator overhead and the maps' spare capacity included; the \
             baseline was measured first, in the same process, and kept alive while the store \
             was filled, so neither reused memory the other freed.",
            fillers(),
            filled_in.as_secs_f64(),
        )),
        ..Figure::default()
    });

    let intact = runtime.block_on(count_intact(&*store, RECORDS, result_json));
    report::check_eq(
        BENCH,
        "sampled records completed with their result",
        STORE,
        intact as f64,
        SAMPLE as f64,
        &format!("{SAMPLE} keys of the {RECORDS} drawn at random and read back with get"),
    );

    runtime.block_on(redis_footprint());

    criterion.final_summary();
}

/// The length of every result in the Redis footprint.
const REDIS_RESULT_BYTES: usize = 100;

/// The most a completed Redis record may take, bytes.
const REDIS_COMPLETED_LIMIT: f64 = 400.0;

/// The most a Redis record in flight may take, bytes.
const REDIS_IN_FLIGHT_LIMIT: f64 = 300.0;

/// Records of each kind in the Redis footprint.
fn redis_records() -> u64 {
    if quick() { 20_000 } else { 100_000 }
}

/// Bytes per record of each kind on Redis (see the module's docs), and a
/// check that the completed records read back with their results.
async fn redis_footprint() {
    let Some(shared_url) = stores::backend_url("REDIS_URL") else {
        return;
    };
    // A Redis of its own when redis-server is installed: on a shared one,
    // keys of other benchmarks (or other users) expiring meanwhile would
    // shrink the growth measured here.
    let own = onceflight_test_support::redis::Redis::start()
        .map_err(|error| {
            eprintln!(
                "the Redis footprint is measured on REDIS_URL, shared ({error}): keys expiring \
                 there meanwhile make its figures low"
            );
        })
        .ok();
    let url = own.as_ref().map_or(shared_url, |own| own.url());
    // As long as the default `onceflight:`, and unique to this run.
    let prefix = format!(
        "of{:08x}:",
        mix(u64::from(std::process::id()) ^ now_nanos()) as u32
    );
    let store = Arc::new(
        RedisStore::connect(RedisConfig::new(&url).with_prefix(&prefix))
            .await
            .expect("connect to REDIS_URL"),
    );
    let mut conn = redis::Client::open(url)
        .expect("a Redis URL")
        .get_multiplexed_async_connection()
        .await
        .expect("connect to REDIS_URL");
    let records = redis_records();
    let retention_ms = u64::try_from(onceflight_core::DEFAULT_RETENTION.as_millis())
        .expect("retention in milliseconds");

    grow_key_tables(&mut conn, &format!("{prefix}pad:"), 4 * records).await;
    let before = used_memory(&mut conn).await;
    set_keys(&mut conn, &format!("{prefix}v:"), records, |i| {
        redis_result(i).to_vec()
    })
    .await;
    let value_keys = used_memory(&mut conn).await;
    set_keys(&mut conn, &format!("{prefix}l:"), records, |i| {
        mix(i).to_string().into_bytes()
    })
    .await;
    let lock_keys = used_memory(&mut conn).await;
    fill_redis(&store, 0..records, true).await;
    let completed = used_memory(&mut conn).await;
    fill_redis(&store, records..2 * records, false).await;
    let in_flight = used_memory(&mut conn).await;

    let per = |after: u64, before: u64| per_record(after, before, records);
    let note = format!(
        "growth of Redis's used_memory (INFO memory) over {records} records with \
         {KEY_BYTES}-byte keys under an {}-byte prefix, written through the store \
         (claim_or_get, then complete with a {REDIS_RESULT_BYTES}-byte result for completed \
         ones); baseline keys with the same names and a TTL (PX {retention_ms}) written first",
        prefix.len()
    );
    report::figure(&Figure {
        bench: BENCH,
        group: "Redis store footprint".to_owned(),
        name: "bytes per completed record".to_owned(),
        store: "redis".to_owned(),
        unit: "bytes/record",
        higher_is_better: false,
        ours: per(completed, lock_keys),
        baseline: Some(per(value_keys, before)),
        baseline_name: Some(format!(
            "bare SET … PX of the key and the same {REDIS_RESULT_BYTES}-byte value"
        )),
        limit: Some(REDIS_COMPLETED_LIMIT),
        target_text: Some(format!("≤ {REDIS_COMPLETED_LIMIT} bytes per record")),
        note: Some(note.clone()),
        ..Figure::default()
    });
    report::figure(&Figure {
        bench: BENCH,
        group: "Redis store footprint".to_owned(),
        name: "bytes per record in flight".to_owned(),
        store: "redis".to_owned(),
        unit: "bytes/record",
        higher_is_better: false,
        ours: per(in_flight, completed),
        baseline: Some(per(lock_keys, value_keys)),
        baseline_name: Some("bare SET … PX of the key and a token (a lock)".to_owned()),
        limit: Some(REDIS_IN_FLIGHT_LIMIT),
        target_text: Some(format!("≤ {REDIS_IN_FLIGHT_LIMIT} bytes per record")),
        note: Some(note),
        ..Figure::default()
    });

    let intact = count_intact(&*store, records, redis_result).await;
    report::check_eq(
        BENCH,
        "sampled records completed with their result",
        "redis",
        intact as f64,
        SAMPLE.min(records) as f64,
        "keys drawn at random from the completed records and read back with get",
    );
    remove_keys(&mut conn, &prefix).await;
}

/// Keys of margin between the grown key tables and the next doubling,
/// beyond the room asked for.
const TABLE_SLACK: u64 = 1_000;

/// Writes padding keys under `prefix` until Redis's key tables (keys and
/// expiries) have grown to a size that holds `room` more keys without
/// doubling again, then waits for Redis to finish moving keys into the
/// grown tables. A table of 2^n buckets doubles when it holds 2^n keys, so
/// once it has doubled past holding `2^(n-1)` keys and 2^n > `present` +
/// `room` + slack, none of the next `room` keys makes it double.
async fn grow_key_tables(conn: &mut redis::aio::MultiplexedConnection, prefix: &str, room: u64) {
    let present: u64 = redis::cmd("DBSIZE")
        .query_async(conn)
        .await
        .expect("DBSIZE");
    let mut buckets = 4_u64;
    while buckets <= 2 * (present + room + TABLE_SLACK) {
        buckets *= 2;
    }
    // Past half of `buckets` keys, the table has doubled to `buckets`.
    let padding = (buckets / 2 + TABLE_SLACK).saturating_sub(present);
    set_keys(conn, prefix, padding, |_| b"1".to_vec()).await;
    // Redis moves keys into a grown table a bucket at a time (on each
    // command, and for a millisecond ten times a second) and frees the old
    // array when done: for the last doubling, `buckets / 2` pointers in
    // each of the two tables. Wait for that to be freed, so that it does
    // not happen inside a measured phase.
    let old_arrays = buckets * 8;
    let mut peak = used_memory(conn).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = used_memory(conn).await;
        if now + old_arrays <= peak {
            return;
        }
        peak = peak.max(now);
    }
    eprintln!("footprint: Redis did not free its old key tables within 30 s; a phase may read low");
}

/// Writes `count` keys `<prefix><key_text(i)>` holding `value(i)`, with the
/// store's retention as their time to live, a thousand to a pipeline.
async fn set_keys(
    conn: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
    count: u64,
    value: impl Fn(u64) -> Vec<u8>,
) {
    let retention_ms = u64::try_from(onceflight_core::DEFAULT_RETENTION.as_millis())
        .expect("retention in milliseconds");
    let mut pipe = redis::pipe();
    for i in 0..count {
        pipe.cmd("SET")
            .arg(format!("{prefix}{}", key_text(i)))
            .arg(value(i))
            .arg("PX")
            .arg(retention_ms)
            .ignore();
        if (i + 1) % 1_000 == 0 || i + 1 == count {
            let () = pipe.query_async(conn).await.expect("SET the baseline keys");
            pipe.clear();
        }
    }
}

/// Claims the records of `range` through the store, 64 at a time, and
/// completes each with its result when `complete`.
async fn fill_redis(store: &Arc<RedisStore>, range: std::ops::Range<u64>, complete: bool) {
    let options = ClaimOptions::new(Kind::parse("image").expect("a valid kind"))
        .with_lease_ttl(Duration::from_secs(3_600))
        .expect("a valid lease");
    let all: Vec<u64> = range.collect();
    for batch in all.chunks(64) {
        let done = batch.iter().map(|&i| {
            let (store, options) = (Arc::clone(store), options.clone());
            async move {
                let key = request_key(i);
                let claim = store
                    .claim_or_get(&key, &options)
                    .await
                    .unwrap_or_else(|e| panic!("claim {key}: {e}"));
                let Claim::Acquired(lease) = claim else {
                    panic!("a fresh key is acquired, {key} was {}", claim.state_name());
                };
                if complete {
                    store
                        .complete(&key, lease.token, redis_result(i))
                        .await
                        .unwrap_or_else(|e| panic!("complete {key}: {e}"));
                }
            }
        });
        futures::future::join_all(done).await;
    }
}

/// Redis's `used_memory`, bytes.
async fn used_memory(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(conn)
        .await
        .expect("INFO memory");
    info.lines()
        .find_map(|line| line.trim().strip_prefix("used_memory:"))
        .and_then(|bytes| bytes.parse().ok())
        .expect("used_memory in INFO memory")
}

/// Unlinks every key under `prefix`: the footprint's records are not worth
/// keeping for a day on a server someone else may use.
async fn remove_keys(conn: &mut redis::aio::MultiplexedConnection, prefix: &str) {
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1_000)
            .query_async(conn)
            .await
            .expect("SCAN");
        if !keys.is_empty() {
            let _: u64 = redis::cmd("UNLINK")
                .arg(keys)
                .query_async(conn)
                .await
                .expect("UNLINK");
        }
        if next == 0 {
            return;
        }
        cursor = next;
    }
}

/// The `i`th result of the Redis footprint: JSON of exactly
/// [`REDIS_RESULT_BYTES`] bytes.
fn redis_result(i: u64) -> Bytes {
    let mut json = String::with_capacity(REDIS_RESULT_BYTES);
    write!(
        json,
        r#"{{"url":"s3://img/{:016x}.png","meta":""#,
        mix(i ^ 0x4444)
    )
    .expect("writing to a String");
    while json.len() < REDIS_RESULT_BYTES - 2 {
        json.push('x');
    }
    json.push_str(r#""}"#);
    assert_eq!(
        json.len(),
        REDIS_RESULT_BYTES,
        "results are {REDIS_RESULT_BYTES} bytes"
    );
    Bytes::from(json.into_bytes())
}

/// Nanoseconds since the epoch, to make the prefix unique per run.
fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The bare minimum a cache keeps: each key and its result, allocated to
/// their size, in one map grown as it is filled, like the store's shards.
fn baseline_map(records: u64) -> HashMap<String, Bytes> {
    let mut map = HashMap::new();
    for i in 0..records {
        map.insert(key_text(i), result_json(i));
    }
    map
}

/// Fills `store` with `records` completed records, over a few concurrent
/// tasks.
async fn fill(store: &Arc<MemoryStore>, records: u64) {
    let options = ClaimOptions::new(Kind::parse("image").expect("a valid kind"));
    let tasks = fillers() as u64;
    let handles: Vec<_> = (0..tasks)
        .map(|task| {
            let (store, options) = (Arc::clone(store), options.clone());
            tokio::spawn(async move {
                for i in (task..records).step_by(tasks as usize) {
                    let key = request_key(i);
                    let claim = store
                        .claim_or_get(&key, &options)
                        .await
                        .unwrap_or_else(|e| panic!("claim {key}: {e}"));
                    let Claim::Acquired(lease) = claim else {
                        panic!("a fresh key is acquired, {key} was {}", claim.state_name());
                    };
                    store
                        .complete(&key, lease.token, result_json(i))
                        .await
                        .unwrap_or_else(|e| panic!("complete {key}: {e}"));
                }
            })
        })
        .collect();
    for handle in handles {
        handle.await.expect("a filling task");
    }
}

/// How many of [`SAMPLE`] random records read back completed with the
/// result written.
async fn count_intact(store: &dyn RequestStore, records: u64, result: fn(u64) -> Bytes) -> u64 {
    let mut intact = 0;
    for draw in 0..SAMPLE.min(records) {
        let i = mix(draw ^ 0x5eed) % records;
        let record = store
            .get(&request_key(i))
            .await
            .unwrap_or_else(|e| panic!("get record {i}: {e}"));
        if let Some(record) = record
            && record.state == RecordState::Completed
            && record.result == Some(result(i))
        {
            intact += 1;
        }
    }
    intact
}

/// Concurrent filling tasks: one per core, at least two.
fn fillers() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().max(2))
}

/// The `i`th key: `image|` and 64 hex digits, 70 bytes, like the hash of a
/// request's parameters.
fn key_text(i: u64) -> String {
    let mut key = String::with_capacity(KEY_BYTES);
    write!(
        key,
        "image|{:016x}{:016x}{:016x}{:016x}",
        mix(i),
        mix(i ^ 0x1111),
        mix(i ^ 0x2222),
        mix(i ^ 0x3333)
    )
    .expect("writing to a String");
    key
}

fn request_key(i: u64) -> RequestKey {
    RequestKey::parse(key_text(i)).expect("a valid key")
}

/// The `i`th result: a small JSON object, 39 bytes, allocated to its size
/// (a `Vec` with spare room would make `Bytes` allocate a header too).
fn result_json(i: u64) -> Bytes {
    let mut json = String::with_capacity(RESULT_BYTES);
    write!(json, r#"{{"url":"s3://img/{:016x}.png"}}"#, mix(i ^ 0x4444))
        .expect("writing to a String");
    Bytes::from(json.into_bytes())
}

/// splitmix64: well-spread, deterministic bits from a counter.
fn mix(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Resident growth from `before` to `after`, per record.
fn per_record(after: u64, before: u64, records: u64) -> f64 {
    after.saturating_sub(before) as f64 / records as f64
}

/// This process's resident memory, bytes, once it has settled: the reading
/// is repeated until two agree (or for a second at most), so that pages
/// still being touched by a finishing task are counted.
fn resident_bytes() -> u64 {
    let mut last = vm_rss();
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(50));
        let now = vm_rss();
        if now == last {
            break;
        }
        last = now;
    }
    last
}

/// `VmRSS` of this process, bytes.
fn vm_rss() -> u64 {
    onceflight_benches::resident_bytes("self")
}
