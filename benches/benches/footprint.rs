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

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use onceflight_benches::report::{self, Figure};
use onceflight_benches::{criterion, runtime};
use onceflight_core::{Claim, ClaimOptions, Kind, RecordState, RequestKey, RequestStore};
use onceflight_store_memory::{MemoryConfig, MemoryStore};

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

    let intact = runtime.block_on(count_intact(&store));
    report::check_eq(
        BENCH,
        "sampled records completed with their result",
        STORE,
        intact as f64,
        SAMPLE as f64,
        &format!("{SAMPLE} keys of the {RECORDS} drawn at random and read back with get"),
    );

    criterion.final_summary();
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
async fn count_intact(store: &MemoryStore) -> u64 {
    let mut intact = 0;
    for draw in 0..SAMPLE {
        let i = mix(draw ^ 0x5eed) % RECORDS;
        let record = store
            .get(&request_key(i))
            .await
            .unwrap_or_else(|e| panic!("get record {i}: {e}"));
        if let Some(record) = record
            && record.state == RecordState::Completed
            && record.result == Some(result_json(i))
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
