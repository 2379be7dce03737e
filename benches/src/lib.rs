//! The harness of onceflight's benchmarks (docs/protocol.md §9): stores to measure,
//! a concurrent load generator with latency percentiles, and the figures
//! each benchmark records for `cargo xtask bench`'s report.
//!
//! Every speed figure is a ratio: ours beside a baseline measured in the
//! same run, on the same store, through the same pool or connection —
//! this machine is shared and noisy, so absolute numbers mean little.
//! Correctness checks (a job run twice, more than one round trip per
//! operation) panic, which fails the run.
//!
//! Environment: `DATABASE_URL`, `REDIS_URL` (stores are skipped loudly
//! without them, unless `ONCEFLIGHT_REQUIRE_BACKENDS=1`),
//! `ONCEFLIGHT_BENCH_QUICK=1` (brief runs), `ONCEFLIGHT_BENCH_OUT` (where
//! `figures.jsonl` goes; default `target/onceflight-bench`), `ONCEFLIGHT_BIN`
//! (the `onceflight` binary, for the HTTP benchmarks).

pub mod load;
pub mod report;
pub mod stores;

use std::time::Duration;

use criterion::Criterion;

/// Whether this is a quick run (`ONCEFLIGHT_BENCH_QUICK=1`): every
/// benchmark, briefly.
pub fn quick() -> bool {
    std::env::var("ONCEFLIGHT_BENCH_QUICK").is_ok_and(|v| v == "1")
}

/// Criterion configured for a quick or a full run. No plots: the report
/// is `cargo xtask bench`'s.
pub fn criterion() -> Criterion {
    let c = Criterion::default().without_plots().configure_from_args();
    if quick() {
        c.sample_size(10)
            .warm_up_time(Duration::from_millis(200))
            .measurement_time(Duration::from_millis(800))
    } else {
        c.sample_size(20)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(4))
    }
}

/// A multi-thread runtime with one worker per core, for the benchmarks'
/// callers and the stores' tasks alike.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// The resident memory (`VmRSS`) of process `pid` — `"self"` for this one
/// — in bytes (Linux's `/proc`).
pub fn resident_bytes(pid: &str) -> u64 {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().strip_suffix("kB"))
        .and_then(|kib| kib.trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .unwrap_or_else(|| panic!("VmRSS in {path} (Linux only)"))
}

/// The concurrency levels of docs/protocol.md §9.
pub const CALLERS: [usize; 3] = [1, 8, 64];
