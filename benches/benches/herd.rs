//! The herd of docs/protocol.md §9, and the hand-written check-insert-poll
//! approach of docs/protocol.md §1 beside ours.
//!
//! - Herd: 1,000 concurrent `Coordinator::get_or_run` for one fresh key
//!   with a 50 ms job, spread over 8 coordinators (as 8 processes would
//!   be) on one store: the job must run exactly once (a correctness check),
//!   and the time from the job's completion to each caller's return is
//!   measured (p50, p99).
//! - The check-insert-poll approach (docs/protocol.md §1), implemented
//!   faithfully on the same Postgres: check a cache table, check for a
//!   pending row, insert (catching 23505 and re-reading), poll every 500 ms
//!   for completion. Its herd figure stands beside ours as the baseline;
//!   its throughput beside `get_or_run`'s, and the duplicate-key errors it
//!   hits are counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode};
use onceflight_benches::load::{self, Series};
use onceflight_benches::report::{self, Figure};
use onceflight_benches::stores::Pg;
use onceflight_benches::{criterion, runtime, stores};
use onceflight_core::{Bytes, ClaimOptions, Coordinator, Kind, RequestKey, RequestStore};
use parking_lot::Mutex;
use sqlx::PgPool;
use tokio::runtime::Runtime;

const BENCH: &str = "herd";
const HERD: usize = 1_000;
const COORDINATORS: usize = 8;
const JOB: Duration = Duration::from_millis(50);
const POLL_EVERY: Duration = Duration::from_millis(500);
/// Untimed herds before the timed ones, so that the pool's connections are
/// open.
const WARM_UP_HERDS: u64 = 3;

/// What the herds of one series saw.
#[derive(Default)]
struct HerdStats {
    herds: u64,
    /// Job runs per herd that ran other than once.
    wrong_runs: Vec<usize>,
    /// Completion → return, per caller, over all herds.
    after_completion: Series,
    duplicate_key_errors: u64,
}

/// One herd of `get_or_run` on `coordinators` for a fresh key.
async fn our_herd(
    coordinators: &[Arc<Coordinator<dyn RequestStore>>],
    key: String,
    stats: &Mutex<HerdStats>,
) {
    let runs = Arc::new(AtomicUsize::new(0));
    let done_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let key = RequestKey::parse(key).expect("key");
    let options = ClaimOptions::new(Kind::parse("image").expect("kind"));
    let callers: Vec<_> = (0..HERD)
        .map(|i| {
            let coordinator = Arc::clone(&coordinators[i % coordinators.len()]);
            let (key, options, runs, done_at) = (
                key.clone(),
                options.clone(),
                Arc::clone(&runs),
                Arc::clone(&done_at),
            );
            async move {
                coordinator
                    .get_or_run(key, options, move |_| async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(JOB).await;
                        *done_at.lock() = Some(Instant::now());
                        Ok(Bytes::from_static(br#"{"url":"https://cdn/herd.png"}"#))
                    })
                    .await
                    .expect("get_or_run");
            }
        })
        .collect();
    let returned = gather(callers).await;
    record_herd(
        stats,
        runs.load(Ordering::SeqCst),
        *done_at.lock(),
        &returned,
        0,
    );
}

/// Runs the herd's callers at once and returns when each got its answer.
async fn gather<F>(callers: Vec<F>) -> Vec<Instant>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let running: Vec<_> = callers
        .into_iter()
        .map(|caller| {
            tokio::spawn(async move {
                caller.await;
                Instant::now()
            })
        })
        .collect();
    let mut returned = Vec::with_capacity(running.len());
    for caller in running {
        returned.push(caller.await.expect("caller"));
    }
    returned
}

fn record_herd(
    stats: &Mutex<HerdStats>,
    runs: usize,
    done_at: Option<Instant>,
    returned: &[Instant],
    duplicates: u64,
) {
    let done_at = done_at.expect("the job completed");
    let latencies: Vec<Duration> = returned
        .iter()
        .map(|r| r.saturating_duration_since(done_at))
        .collect();
    let last = latencies.iter().max().copied().unwrap_or_default();
    let mut stats = stats.lock();
    stats.herds += 1;
    if runs != 1 {
        stats.wrong_runs.push(runs);
    }
    stats.duplicate_key_errors += duplicates;
    stats
        .after_completion
        .add(returned.len() as u64, last, latencies);
}

/// The polling approach's schema: a cache table and a request table with a unique
/// request hash.
async fn polling_schema(pool: &PgPool) {
    for statement in [
        "CREATE TABLE asset_cache (request_hash text PRIMARY KEY, result text NOT NULL)",
        "CREATE TABLE asset_requests (id bigserial PRIMARY KEY, request_hash text NOT NULL UNIQUE, \
         status text NOT NULL, result text, created_at timestamptz NOT NULL DEFAULT now(), \
         updated_at timestamptz NOT NULL DEFAULT now())",
    ] {
        sqlx::query(statement)
            .execute(pool)
            .await
            .expect("polling schema");
    }
}

/// The polling approach's `getOrGenerate`: the usual patch (catch 23505,
/// re-read, poll), step by step.
/// Returns whether this caller ran the job, and the duplicate-key errors
/// it hit.
async fn polling_get_or_generate(pool: &PgPool, hash: &str, job: Duration) -> (bool, u64) {
    // 1. Cache check.
    if sqlx::query_scalar::<_, String>("SELECT result FROM asset_cache WHERE request_hash = $1")
        .bind(hash)
        .fetch_optional(pool)
        .await
        .expect("cache check")
        .is_some()
    {
        return (false, 0);
    }
    // 2. Pending check.
    let pending = sqlx::query_scalar::<_, String>(
        "SELECT status FROM asset_requests WHERE request_hash = $1 AND status = 'pending'",
    )
    .bind(hash)
    .fetch_optional(pool)
    .await
    .expect("pending check");
    if pending.is_some() {
        poll(pool, hash).await;
        return (false, 0);
    }
    // 3. Insert, catching 23505 and re-reading.
    let inserted =
        sqlx::query("INSERT INTO asset_requests (request_hash, status) VALUES ($1, 'pending')")
            .bind(hash)
            .execute(pool)
            .await;
    match inserted {
        Ok(_) => {}
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("23505") => {
            poll(pool, hash).await;
            return (false, 1);
        }
        Err(e) => panic!("polling insert: {e}"),
    }
    // 4. Generate, mark done, fill the cache.
    tokio::time::sleep(job).await;
    let result = r#"{"url":"https://cdn/image.png"}"#;
    sqlx::query("UPDATE asset_requests SET status = 'done', result = $2, updated_at = now() WHERE request_hash = $1")
        .bind(hash)
        .bind(result)
        .execute(pool)
        .await
        .expect("mark done");
    sqlx::query(
        "INSERT INTO asset_cache (request_hash, result) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind(hash)
    .bind(result)
    .execute(pool)
    .await
    .expect("fill cache");
    (true, 0)
}

/// The polling approach's wait: re-read every 500 ms until the row is done.
async fn poll(pool: &PgPool, hash: &str) {
    loop {
        let status: Option<String> =
            sqlx::query_scalar("SELECT status FROM asset_requests WHERE request_hash = $1")
                .bind(hash)
                .fetch_optional(pool)
                .await
                .expect("poll");
        if status.as_deref() == Some("done") {
            return;
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

async fn polling_herd(pool: &PgPool, hash: String, stats: &Mutex<HerdStats>) {
    let runs = Arc::new(AtomicUsize::new(0));
    let done_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let duplicates = Arc::new(AtomicU64::new(0));
    let callers: Vec<_> = (0..HERD)
        .map(|_| {
            let (pool, hash, runs, done_at, duplicates) = (
                pool.clone(),
                hash.clone(),
                Arc::clone(&runs),
                Arc::clone(&done_at),
                Arc::clone(&duplicates),
            );
            async move {
                let (ran, dups) = polling_get_or_generate(&pool, &hash, JOB).await;
                if ran {
                    runs.fetch_add(1, Ordering::SeqCst);
                    // The job's caller returns right after marking it done.
                    done_at.lock().get_or_insert_with(Instant::now);
                }
                duplicates.fetch_add(dups, Ordering::Relaxed);
            }
        })
        .collect();
    let returned = gather(callers).await;
    record_herd(
        stats,
        runs.load(Ordering::SeqCst),
        *done_at.lock(),
        &returned,
        duplicates.load(Ordering::Relaxed),
    );
}

fn herd_figure(store: &str, ours: &mut HerdStats, polling: Option<&mut HerdStats>) {
    let p99 = |s: &mut HerdStats| s.after_completion.percentile_us(0.99);
    let p50 = |s: &mut HerdStats| s.after_completion.percentile_us(0.5);
    let (baseline, baseline_p50, baseline_p99, dups) = match polling {
        Some(polling) => (
            p99(polling).map(|us| us / 1000.0),
            p50(polling),
            p99(polling),
            Some(polling.duplicate_key_errors as f64 / polling.herds.max(1) as f64),
        ),
        None => (None, None, None, None),
    };
    report::figure(&Figure {
        bench: BENCH,
        group: "Herd: 1,000 get_or_run on one key, 50 ms job — completion to return (p99)"
            .to_owned(),
        name: "completion → caller return, p99".to_owned(),
        store: store.to_owned(),
        concurrency: Some(HERD),
        unit: "ms",
        higher_is_better: false,
        ours: p99(ours).unwrap_or(0.0) / 1000.0,
        baseline,
        baseline_name: baseline.map(|_| {
            "the polling approach: check, check, insert (23505), poll every 500 ms".to_owned()
        }),
        target: None,
        limit: None,
        target_text: None,
        p50_us: p50(ours),
        p99_us: p99(ours),
        baseline_p50_us: baseline_p50,
        baseline_p99_us: baseline_p99,
        note: Some(match dups {
            Some(d) => format!(
                "{} herds each; {COORDINATORS} coordinators share the store; the polling approach's callers hit {d:.0} duplicate-key errors (23505) per herd",
                ours.herds
            ),
            None => format!(
                "{} herds; {COORDINATORS} coordinators share the store",
                ours.herds
            ),
        }),
    });
    report::check_eq(
        BENCH,
        &format!("herds of {HERD} in which the job ran other than once"),
        store,
        ours.wrong_runs.len() as f64,
        0.0,
        &format!("{} herds; runs counted inside the job", ours.herds),
    );
}

/// Runs herds as criterion's `group`/`id` (flat sampling: a herd takes
/// from 50 ms to a second), each `herd(n, stats)` with `n` counting herds
/// so that each gets a fresh key; returns what the herds saw.
fn measure_herds<F, Fut>(
    c: &mut Criterion,
    rt: &Runtime,
    group: &str,
    id: &str,
    herd: F,
) -> HerdStats
where
    F: Fn(u64, Arc<Mutex<HerdStats>>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let stats = Arc::new(Mutex::new(HerdStats::default()));
    let next = AtomicU64::new(0);
    // Herds before the timed ones: the first herds open the pool's
    // connections (a TLS handshake each on a server that offers TLS), which
    // a running service did long before. They are checked, not timed.
    let warm_up = Arc::new(Mutex::new(HerdStats::default()));
    rt.block_on(async {
        for _ in 0..WARM_UP_HERDS {
            herd(next.fetch_add(1, Ordering::Relaxed), Arc::clone(&warm_up)).await;
        }
    });
    stats.lock().wrong_runs = std::mem::take(&mut warm_up.lock().wrong_runs);
    let mut group = c.benchmark_group(group);
    group.sampling_mode(SamplingMode::Flat).sample_size(10);
    group.bench_function(id, |b| {
        b.to_async(rt).iter_custom(|iters| {
            let (herd, stats, next) = (&herd, &stats, &next);
            async move {
                let start = Instant::now();
                for _ in 0..iters {
                    herd(next.fetch_add(1, Ordering::Relaxed), Arc::clone(stats)).await;
                }
                start.elapsed()
            }
        });
    });
    group.finish();
    Arc::try_unwrap(stats)
        .ok()
        .expect("no herd runs on")
        .into_inner()
}

/// Herds of `get_or_run` on `store`, through [`COORDINATORS`] coordinators.
fn measure_ours(
    c: &mut Criterion,
    rt: &Runtime,
    name: &str,
    store: Arc<dyn RequestStore>,
) -> HerdStats {
    let coordinators: Vec<Arc<Coordinator<dyn RequestStore>>> = (0..COORDINATORS)
        .map(|_| Arc::new(Coordinator::new(Arc::clone(&store))))
        .collect();
    let prefix = stores::unique("herd");
    measure_herds(c, rt, &format!("herd/{name}"), "ours", |n, stats| {
        let (coordinators, key) = (&coordinators, format!("{prefix}|{n}"));
        async move { our_herd(coordinators, key, &stats).await }
    })
}

/// Herds of the polling approach on `pool`.
fn measure_polling(c: &mut Criterion, rt: &Runtime, pool: &PgPool) -> HerdStats {
    measure_herds(c, rt, "herd/postgres", "polling", |n, stats| async move {
        polling_herd(pool, format!("image|herd-{n}"), &stats).await;
    })
}

/// Throughput on fresh keys with an instant job, 64 callers: ours
/// (`get_or_run`: claim, run, complete) beside the polling approach (cache
/// check, pending check, insert, mark done, fill cache).
fn throughput(c: &mut Criterion, rt: &Runtime, store: Arc<dyn RequestStore>, pool: &PgPool) {
    const CALLERS: usize = 64;
    let coordinator = Arc::new(Coordinator::new(store));
    let ours = load::series();
    let polling = load::series();
    let prefix = stores::unique("tp");
    let mut group = c.benchmark_group("get_or_run/fresh/postgres");
    {
        let (coordinator, prefix) = (Arc::clone(&coordinator), prefix.clone());
        let next = Arc::new(AtomicU64::new(0));
        group.bench_function(format!("ours/{CALLERS}"), |b| {
            b.to_async(rt).iter_custom(|iters| {
                let (coordinator, prefix) = (Arc::clone(&coordinator), prefix.clone());
                let (next, series) = (Arc::clone(&next), Arc::clone(&ours));
                async move {
                    load::run(CALLERS, iters, &series, move |_| {
                        let coordinator = Arc::clone(&coordinator);
                        let key = RequestKey::parse(format!(
                            "{prefix}|{}",
                            next.fetch_add(1, Ordering::Relaxed)
                        ))
                        .expect("key");
                        async move {
                            coordinator
                                .get_or_run(
                                    key,
                                    ClaimOptions::new(Kind::parse("image").expect("kind")),
                                    |_| async { Ok(Bytes::from_static(b"1")) },
                                )
                                .await
                                .expect("get_or_run");
                        }
                    })
                    .await
                }
            });
        });
    }
    let round = Arc::new(AtomicU64::new(0));
    group.bench_function(format!("polling/{CALLERS}"), |b| {
        b.to_async(rt).iter_custom(|iters| {
            let (pool, series) = (pool.clone(), Arc::clone(&polling));
            let round = round.fetch_add(1, Ordering::Relaxed);
            async move {
                load::run(CALLERS, iters, &series, move |i| {
                    let pool = pool.clone();
                    async move {
                        polling_get_or_generate(
                            &pool,
                            &format!("image|tp-{round}-{i}"),
                            Duration::ZERO,
                        )
                        .await;
                    }
                })
                .await
            }
        });
    });
    group.finish();
    let (mut ours, mut polling) = (ours.lock(), polling.lock());
    report::figure(&Figure {
        bench: BENCH,
        group: "get_or_run on fresh keys (instant job), beside the polling approach".to_owned(),
        name: "get_or_run".to_owned(),
        store: "postgres".to_owned(),
        concurrency: Some(CALLERS),
        unit: "jobs/s",
        higher_is_better: true,
        ours: ours.throughput(),
        baseline: Some(polling.throughput()),
        baseline_name: Some("the polling approach (5 statements, no lease)".to_owned()),
        target: None,
        limit: None,
        target_text: None,
        p50_us: ours.percentile_us(0.5),
        p99_us: ours.percentile_us(0.99),
        baseline_p50_us: polling.percentile_us(0.5),
        baseline_p99_us: polling.percentile_us(0.99),
        note: Some("ours: claim + complete with a lease and fencing; the polling approach: cache check, pending check, insert, update, cache insert".to_owned()),
    });
}

fn main() {
    let rt = runtime();
    let mut c = criterion();
    let memory: Arc<dyn RequestStore> = Arc::new(stores::memory());
    let mut stats = measure_ours(&mut c, &rt, "memory", memory);
    herd_figure("memory", &mut stats, None);

    if let Some(pg) = rt.block_on(stores::postgres(stores::PG_POOL)) {
        // The polling approach's tables live beside ours, in the store's fresh schema,
        // reached through a pool of the same size on the same server.
        let pool = rt.block_on(stores::postgres_pool_in(pg.schema(), stores::PG_POOL));
        rt.block_on(polling_schema(&pool));
        let store: Arc<dyn RequestStore> = Arc::new(pg);
        let mut ours = measure_ours(&mut c, &rt, "postgres", Arc::clone(&store));
        let mut polling = measure_polling(&mut c, &rt, &pool);
        herd_figure("postgres", &mut ours, Some(&mut polling));
        throughput(&mut c, &rt, store, &pool);
    }

    // The herd on the server with production durability: one claim and one
    // complete write, so it costs about what it does on the other server.
    if let Some(pg) = rt.block_on(stores::postgres_on(Pg::Durable, stores::PG_POOL)) {
        let mut ours = measure_ours(&mut c, &rt, Pg::Durable.name(), Arc::new(pg));
        herd_figure(Pg::Durable.name(), &mut ours, None);
    }

    if let Some(redis) = rt.block_on(stores::redis()) {
        let mut stats = measure_ours(&mut c, &rt, "redis", Arc::new(redis));
        herd_figure("redis", &mut stats, None);
    }
    c.final_summary();
}
