//! `claim_or_get` throughput and latency on every store, at 1, 8 and 64
//! concurrent callers, each beside the bare operation §9 names as its
//! baseline, measured in the same run through the same pool or connection:
//!
//! - fresh keys (every claim creates a record), beside a bare insert;
//! - one hot completed key (every claim is a hit), beside a bare read or
//!   insert-or-get of an existing key;
//! - a Zipf-distributed key set (a few popular prompts, a long tail; first
//!   claims acquire, later ones find the lease in flight);
//! - contention proper: the callers race for one fresh key at a time
//!   (exactly one may acquire — a correctness check).
//!
//! Then round trips per claim, counted on the store's side: transactions
//! in `pg_stat_database` of a database only the count uses, and EVALSHA
//! calls in Redis's `INFO commandstats`.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::Criterion;
use onceflight_benches::load::{self, Shared, Zipf};
use onceflight_benches::report::{self, Figure};
use onceflight_benches::{CALLERS, criterion, runtime, stores};
use onceflight_core::{Bytes, Claim, ClaimOptions, Kind, RequestKey, RequestStore};
use onceflight_store_postgres::{PgConfig, PgStore};
use onceflight_store_redis::RedisStore;
use parking_lot::Mutex;
use sqlx::Connection as _;
use tokio::runtime::Runtime;

const BENCH: &str = "claims";

type BoxFut = Pin<Box<dyn Future<Output = ()> + Send>>;
/// An operation on a key: ours (`claim_or_get`) or the baseline.
type Op = Arc<dyn Fn(String) -> BoxFut + Send + Sync>;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Scenario {
    Fresh,
    Hot,
    Zipf,
    Race,
}

impl Scenario {
    const ALL: [Scenario; 4] = [
        Scenario::Fresh,
        Scenario::Hot,
        Scenario::Zipf,
        Scenario::Race,
    ];

    fn id(self) -> &'static str {
        match self {
            Scenario::Fresh => "fresh",
            Scenario::Hot => "hot",
            Scenario::Zipf => "zipf",
            Scenario::Race => "race",
        }
    }

    fn group(self) -> &'static str {
        match self {
            Scenario::Fresh => "claim_or_get: fresh keys",
            Scenario::Hot => "claim_or_get: one hot completed key",
            Scenario::Zipf => "claim_or_get: Zipf-distributed keys",
            Scenario::Race => "claim_or_get: callers racing for one fresh key",
        }
    }
}

/// A store under measurement with its baselines.
#[derive(Clone)]
struct Subject {
    name: &'static str,
    store: Arc<dyn RequestStore>,
    /// The bare operation for fresh, Zipf and racing keys, and its name.
    insert: (Op, &'static str),
    /// The bare operation for the hot key (which exists), and its name.
    hit: (Op, &'static str),
}

impl Subject {
    /// The §9 target for `scenario` at `callers`, as a minimum ratio.
    fn target(&self, scenario: Scenario, callers: usize) -> Option<(f64, String)> {
        let t = match (self.name, scenario) {
            (_, Scenario::Race) => return None,
            ("memory", _) => 0.5,
            ("postgres" | "postgres (transaction pooler)", Scenario::Fresh | Scenario::Hot) => 0.8,
            ("postgres" | "postgres (transaction pooler)", _) => return None,
            ("redis", _) if callers == 1 => 0.9,
            ("redis", _) => 0.4,
            _ => return None,
        };
        Some((t, format!("≥ {t} × baseline (§9)")))
    }
}

fn options() -> ClaimOptions {
    ClaimOptions::new(Kind::parse("image").expect("kind"))
        .with_lease_ttl(Duration::from_secs(600))
        .expect("lease")
}

fn claim_op(store: Arc<dyn RequestStore>) -> Op {
    let options = Arc::new(options());
    Arc::new(move |key: String| {
        let (store, options) = (Arc::clone(&store), Arc::clone(&options));
        Box::pin(async move {
            let key = RequestKey::parse(key).expect("key");
            let _ = store
                .claim_or_get(&key, &options)
                .await
                .expect("claim_or_get");
        })
    })
}

/// The bare sharded map of §9's memory baseline: as many shards as the
/// memory store, each a mutex around a map, insert-or-get of a key.
fn memory_subject() -> Subject {
    let shards: Arc<Vec<Mutex<HashMap<String, u64>>>> =
        Arc::new((0..64).map(|_| Mutex::new(HashMap::new())).collect());
    let next = Arc::new(AtomicU64::new(1));
    let insert: Op = Arc::new(move |key: String| {
        let (shards, next) = (Arc::clone(&shards), Arc::clone(&next));
        Box::pin(async move {
            use std::hash::{BuildHasher, RandomState};
            thread_local!(static HASHER: RandomState = RandomState::new());
            let shard = HASHER.with(|h| h.hash_one(&key)) as usize % shards.len();
            let token = next.fetch_add(1, Ordering::Relaxed);
            std::hint::black_box(*shards[shard].lock().entry(key).or_insert(token));
        })
    });
    Subject {
        name: "memory",
        store: Arc::new(stores::memory()),
        hit: (Arc::clone(&insert), "bare sharded-map insert-or-get"),
        insert: (insert, "bare sharded-map insert-or-get"),
    }
}

async fn postgres_subject() -> Option<Subject> {
    let store = stores::postgres(stores::PG_POOL).await?;
    let table = format!("\"{}\".bench_bare", store.schema());
    let records = format!("\"{}\".onceflight_records", store.schema());
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE {table} (key text PRIMARY KEY, token bigint NOT NULL)"
    )))
    .execute(store.pool())
    .await
    .expect("create the baseline table");
    let pool = store.pool().clone();
    let insert_sql: Arc<str> =
        format!("INSERT INTO {table} (key, token) VALUES ($1, 1) ON CONFLICT DO NOTHING").into();
    let insert: Op = Arc::new(move |key: String| {
        let (pool, sql) = (pool.clone(), Arc::clone(&insert_sql));
        Box::pin(async move {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(key)
                .execute(&pool)
                .await
                .expect("bare insert");
        })
    });
    let pool = store.pool().clone();
    let select_sql: Arc<str> = format!("SELECT * FROM {records} WHERE key = $1").into();
    let hit: Op = Arc::new(move |key: String| {
        let (pool, sql) = (pool.clone(), Arc::clone(&select_sql));
        Box::pin(async move {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(key)
                .fetch_optional(&pool)
                .await
                .expect("bare select");
        })
    });
    Some(Subject {
        name: "postgres",
        store: Arc::new(store),
        insert: (insert, "bare INSERT … ON CONFLICT DO NOTHING (same pool)"),
        hit: (hit, "bare primary-key SELECT (same pool)"),
    })
}

/// Postgres through a transaction-mode pooler (PgBouncer), the store in
/// `PgPooler::Transaction` mode: every claim one simple-protocol query. The
/// baselines go the same way (no prepared statement survives such a pooler),
/// through the same pool.
async fn postgres_pooled_subject() -> Option<Subject> {
    let store = stores::postgres_pooled(stores::PG_POOL).await?;
    let table = format!("\"{}\".bench_bare", store.schema());
    let records = format!("\"{}\".onceflight_records", store.schema());
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE {table} (key text PRIMARY KEY, token bigint NOT NULL)"
    )))
    .execute(store.pool())
    .await
    .expect("create the baseline table");
    // Bench keys are letters, digits, `|` and `-`; quotes are doubled anyway.
    let quoted = |key: &str| format!("'{}'", key.replace('\'', "''"));
    let pool = store.pool().clone();
    let insert: Op = Arc::new(move |key: String| {
        let pool = pool.clone();
        let sql = format!(
            "INSERT INTO {table} (key, token) VALUES ({}, 1) ON CONFLICT DO NOTHING",
            quoted(&key)
        );
        Box::pin(async move {
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&pool)
                .await
                .expect("bare insert");
        })
    });
    let pool = store.pool().clone();
    let hit: Op = Arc::new(move |key: String| {
        let pool = pool.clone();
        let sql = format!("SELECT * FROM {records} WHERE key = {}", quoted(&key));
        Box::pin(async move {
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .fetch_optional(&pool)
                .await
                .expect("bare select");
        })
    });
    Some(Subject {
        name: "postgres (transaction pooler)",
        store: Arc::new(store),
        insert: (
            insert,
            "bare INSERT … ON CONFLICT DO NOTHING (same pool, unprepared)",
        ),
        hit: (hit, "bare primary-key SELECT (same pool, unprepared)"),
    })
}

async fn redis_subject() -> Option<Subject> {
    let store = stores::redis().await?;
    let conn = store.connection();
    let prefix = format!("{}bare:", store.prefix());
    let insert: Op = Arc::new(move |key: String| {
        let (mut conn, key) = (conn.clone(), format!("{prefix}{key}"));
        Box::pin(async move {
            let _: Option<String> = redis::cmd("SET")
                .arg(key)
                .arg(1)
                .arg("NX")
                .arg("PX")
                .arg(600_000)
                .query_async(&mut conn)
                .await
                .expect("bare SET NX PX");
        })
    });
    Some(Subject {
        name: "redis",
        store: Arc::new(store),
        hit: (Arc::clone(&insert), "bare SET NX PX (same connection)"),
        insert: (insert, "bare SET NX PX (same connection)"),
    })
}

/// Runs `iters` operations of `scenario` over `callers` tasks.
async fn drive(
    op: Op,
    scenario: Scenario,
    callers: usize,
    iters: u64,
    keys: Arc<Keys>,
    series: Shared,
) -> Duration {
    if scenario == Scenario::Race {
        // One race per iteration: `callers` claims of one fresh key at once.
        let start = Instant::now();
        let mut latencies = Vec::new();
        for _ in 0..iters {
            let key = keys.fresh();
            let racers: Vec<_> = (0..callers)
                .map(|_| {
                    let (op, key) = (Arc::clone(&op), key.clone());
                    tokio::spawn(async move {
                        let began = Instant::now();
                        op(key).await;
                        began.elapsed()
                    })
                })
                .collect();
            for racer in racers {
                latencies.push(racer.await.expect("racer"));
            }
        }
        let elapsed = start.elapsed();
        series
            .lock()
            .add(iters * callers as u64, elapsed, latencies);
        return elapsed;
    }
    load::run(callers, iters, &series, move |i| {
        let key = keys.key(scenario, i);
        op(key)
    })
    .await
}

/// The keys of one series: fresh ones from a counter, the hot key, and
/// Zipf draws from a set of its own.
struct Keys {
    prefix: String,
    next: AtomicU64,
    zipf: Zipf,
}

impl Keys {
    fn new(prefix: String) -> Self {
        Self {
            prefix,
            next: AtomicU64::new(0),
            zipf: Zipf::new(10_000, 1.1),
        }
    }

    fn fresh(&self) -> String {
        format!(
            "{}|f{}",
            self.prefix,
            self.next.fetch_add(1, Ordering::Relaxed)
        )
    }

    fn key(&self, scenario: Scenario, i: u64) -> String {
        match scenario {
            Scenario::Fresh | Scenario::Race => self.fresh(),
            Scenario::Hot => "hot".to_owned(),
            Scenario::Zipf => {
                let draw = self.next.fetch_add(1, Ordering::Relaxed) ^ i.rotate_left(17);
                format!("{}|z{}", self.prefix, self.zipf.sample(draw))
            }
        }
    }
}

/// Races of `callers` claims for fresh keys, checking that each has exactly
/// one `Acquired` (docs/protocol.md §5.5), outside criterion's timing.
fn check_races(rt: &Runtime, subject: &Subject, callers: usize) {
    let races = if onceflight_benches::quick() { 20 } else { 100 };
    let keys = Keys::new(stores::unique("race-check"));
    let mut wrong = 0;
    for _ in 0..races {
        let key = RequestKey::parse(keys.fresh()).expect("key");
        let acquired = rt.block_on(async {
            let claims: Vec<_> = (0..callers)
                .map(|_| {
                    let (store, key) = (Arc::clone(&subject.store), key.clone());
                    tokio::spawn(async move { store.claim_or_get(&key, &options()).await })
                })
                .collect();
            let mut acquired = 0;
            for claim in claims {
                if matches!(claim.await.expect("racer"), Ok(Claim::Acquired(_))) {
                    acquired += 1;
                }
            }
            acquired
        });
        if acquired != 1 {
            wrong += 1;
        }
    }
    report::check_eq(
        BENCH,
        &format!("races of {callers} callers with other than one Acquired"),
        subject.name,
        f64::from(wrong),
        0.0,
        &format!("{races} races for fresh keys"),
    );
}

/// Completes the hot key in the store and creates it for the baseline.
fn prepare_hot_key(rt: &Runtime, subject: &Subject) {
    // The hot key: completed once, read by every hot claim.
    rt.block_on(async {
        let hot = RequestKey::parse("hot").expect("key");
        if let Claim::Acquired(lease) = subject
            .store
            .claim_or_get(&hot, &options())
            .await
            .expect("claim")
        {
            subject
                .store
                .complete(
                    &hot,
                    lease.token,
                    Bytes::from_static(br#"{"url":"https://cdn/hot.png"}"#),
                )
                .await
                .expect("complete");
        }
        // The baselines' hot key exists too.
        (subject.hit.0)("hot".to_owned()).await;
    });
}

/// Measures every scenario at every caller count on the subjects `make`
/// gives: a new one per series for the memory store — whose fresh-key
/// series would otherwise grow one store (and one baseline map) to
/// millions of records, measuring the allocator more than the store — and
/// the same one for the network stores.
fn measure(c: &mut Criterion, rt: &Runtime, make: &dyn Fn() -> Subject) {
    let first = make();
    for scenario in Scenario::ALL {
        let mut group = c.benchmark_group(format!("claim_or_get/{}/{}", scenario.id(), first.name));
        for callers in CALLERS {
            let subject = make();
            prepare_hot_key(rt, &subject);
            let (baseline, baseline_name) = match scenario {
                Scenario::Hot => subject.hit.clone(),
                _ => subject.insert.clone(),
            };
            let ours_series = load::series();
            let base_series = load::series();
            for (id, op, series, keys) in [
                (
                    "ours",
                    claim_op(Arc::clone(&subject.store)),
                    &ours_series,
                    Arc::new(Keys::new(stores::unique("o"))),
                ),
                (
                    "baseline",
                    baseline,
                    &base_series,
                    Arc::new(Keys::new(stores::unique("b"))),
                ),
            ] {
                group.bench_function(format!("{id}/{callers}"), |b| {
                    b.to_async(rt).iter_custom(|iters| {
                        drive(
                            Arc::clone(&op),
                            scenario,
                            callers,
                            iters,
                            Arc::clone(&keys),
                            Arc::clone(series),
                        )
                    });
                });
            }
            let target = subject.target(scenario, callers);
            let mut ours = ours_series.lock();
            let mut base = base_series.lock();
            report::figure(&Figure {
                bench: BENCH,
                group: scenario.group().to_owned(),
                name: "claim_or_get".to_owned(),
                store: subject.name.to_owned(),
                concurrency: Some(callers),
                unit: "claims/s",
                higher_is_better: true,
                ours: ours.throughput(),
                baseline: Some(base.throughput()),
                baseline_name: Some(baseline_name.to_owned()),
                target: target.as_ref().map(|t| t.0),
                target_text: target.map(|t| t.1),
                p50_us: ours.percentile_us(0.5),
                p99_us: ours.percentile_us(0.99),
                baseline_p50_us: base.percentile_us(0.5),
                baseline_p99_us: base.percentile_us(0.99),
                note: match scenario {
                    Scenario::Zipf => Some("10,000 keys, s = 1.1; a key's first claim acquires, later ones find it in flight".to_owned()),
                    Scenario::Race => Some(format!("one race = {callers} callers on one fresh key; throughput counts claims")),
                    _ => None,
                },
            });
        }
        group.finish();
        if scenario == Scenario::Race {
            for callers in CALLERS {
                check_races(rt, &first, callers);
            }
        }
    }
}

/// `url` with its database replaced by `database`.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{database}", &base[..path_start]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

/// Round trips per claim on Postgres: transactions counted in
/// `pg_stat_database` of a database that only this count uses, through a
/// store with one pooled connection (so one flush covers it).
async fn postgres_round_trips() {
    let Some(url) = stores::backend_url("DATABASE_URL") else {
        return;
    };
    let mut admin = sqlx::PgConnection::connect(&url).await.expect("connect");
    let database = stores::unique("bench_rt");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}")))
        .execute(&mut admin)
        .await
        .expect("create the counting database");
    let store = PgStore::connect(PgConfig::new(with_database(&url, &database)).with_pool_size(1))
        .await
        .expect("connect");
    store.migrate().await.expect("migrate");
    let count = async |admin: &mut sqlx::PgConnection| -> i64 {
        sqlx::query("SELECT pg_stat_force_next_flush()")
            .execute(store.pool())
            .await
            .expect("flush");
        sqlx::query("SELECT pg_stat_clear_snapshot()")
            .execute(&mut *admin)
            .await
            .expect("clear");
        sqlx::query_scalar(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = $1",
        )
        .bind(&database)
        .fetch_one(&mut *admin)
        .await
        .expect("stats")
    };
    let n = 500;
    let o = options();
    let key = |i: usize| RequestKey::parse(format!("rt|{i}")).expect("key");
    // Warm up: sqlx prepares each statement once per connection.
    let _ = store
        .claim_or_get(&key(usize::MAX), &o)
        .await
        .expect("claim");
    let _ = store
        .claim_or_get(&key(usize::MAX), &o)
        .await
        .expect("claim");
    for what in ["fresh key", "live lease (hit)"] {
        let before = count(&mut admin).await;
        for i in 0..n {
            let _ = store.claim_or_get(&key(i), &o).await.expect("claim");
        }
        let after = count(&mut admin).await;
        // One transaction is the flush itself. The store's LISTEN
        // connection may report its own (startup) transaction late, within
        // the window: rounding to one decimal absorbs a handful of those
        // over `n` claims, while a second round trip per claim reads 2.0.
        let per_claim = ((after - before - 1) as f64 / n as f64 * 10.0).round() / 10.0;
        report::check_eq(
            BENCH,
            &format!("round trips per claim_or_get ({what})"),
            "postgres",
            per_claim,
            1.0,
            "transactions per claim in pg_stat_database of a database only this count uses, to one decimal",
        );
    }
    drop(store);
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {database} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await;
}

/// EVALSHA calls (and no EVAL or SCRIPT LOAD) per claim on Redis, from
/// `INFO commandstats`.
async fn redis_round_trips(store: &RedisStore) {
    let Some(url) = stores::backend_url("REDIS_URL") else {
        return;
    };
    let mut conn = redis::Client::open(url)
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let calls = async |conn: &mut redis::aio::MultiplexedConnection, name: &str| -> f64 {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(conn)
            .await
            .expect("INFO");
        info.lines()
            .find_map(|l| l.strip_prefix(&format!("cmdstat_{name}:")))
            .and_then(|s| s.split(',').find_map(|kv| kv.strip_prefix("calls=")))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0.0)
    };
    let n = 200;
    let o = options();
    for what in ["fresh key", "live lease (hit)"] {
        let before = (
            calls(&mut conn, "evalsha").await,
            calls(&mut conn, "eval").await,
        );
        for i in 0..n {
            let key = RequestKey::parse(format!("rt|{i}")).expect("key");
            let _ = store.claim_or_get(&key, &o).await.expect("claim");
        }
        let after = (
            calls(&mut conn, "evalsha").await,
            calls(&mut conn, "eval").await,
        );
        report::check_eq(
            BENCH,
            &format!("round trips per claim_or_get ({what})"),
            "redis",
            (after.0 - before.0 + after.1 - before.1) / f64::from(n),
            1.0,
            "EVALSHA + EVAL calls in INFO commandstats",
        );
    }
}

fn main() {
    let rt = runtime();
    let mut c = criterion();
    measure(&mut c, &rt, &memory_subject);
    if let Some(subject) = rt.block_on(postgres_subject()) {
        measure(&mut c, &rt, &move || subject.clone());
    }
    rt.block_on(postgres_round_trips());
    if let Some(subject) = rt.block_on(postgres_pooled_subject()) {
        measure(&mut c, &rt, &move || subject.clone());
    }
    if let Some(subject) = rt.block_on(redis_subject()) {
        measure(&mut c, &rt, &move || subject.clone());
    }
    if let Some(store) = rt.block_on(stores::redis()) {
        rt.block_on(redis_round_trips(&store));
    }
    c.final_summary();
}
