//! `complete`, `fail` and `release` on every store at 1, 8 and 64 concurrent
//! callers, each beside a bare write of the same kind measured in the same
//! run through the same pool or connection:
//!
//! - memory: a bare sharded-map insert;
//! - Postgres (both servers, and through the transaction pooler in a full
//!   run): a bare primary-key `UPDATE` of one row as wide as ours, setting
//!   the columns the operation sets;
//! - Redis: a bare `SET … XX PX` of an existing key.
//!
//! Each lease is claimed beforehand, outside the timed section, in batches
//! of concurrent claims (and each baseline row or key written beforehand
//! the same way); only the finishing calls are timed. §9 sets no target
//! for these: the report shows the ratio.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use criterion::Criterion;
use onceflight_benches::load::{self, Shared};
use onceflight_benches::report::{self, Figure};
use onceflight_benches::stores::{self, Pg};
use onceflight_benches::{CALLERS, criterion, quick, runtime};
use onceflight_core::{
    Bytes, Claim, ClaimOptions, JobError, Kind, RequestKey, RequestStore, Token,
};
use onceflight_store_postgres::PgStore;
use parking_lot::Mutex;
use tokio::runtime::Runtime;

const BENCH: &str = "finish";

/// The result every `complete` stores, and the value of the bare writes.
const RESULT: &[u8] = br#"{"url":"https://cdn.example/renders/finish.png"}"#;

/// The error message every `fail` stores.
const MESSAGE: &str = "the renderer ran out of memory";

/// Leases (and baseline rows or keys) made at once before a timed run.
const BATCH: usize = 64;

type BoxFut = Pin<Box<dyn Future<Output = ()> + Send>>;
/// The bare write of one operation on one key.
type Bare = Arc<dyn Fn(Finish, String) -> BoxFut + Send + Sync>;
/// Makes the `n` keys `key_of(prefix, 0..n)` ready for the bare write.
type Prepare = Arc<dyn Fn(String, u64) -> BoxFut + Send + Sync>;

/// The operations that end a lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Finish {
    Complete,
    Fail,
    Release,
}

impl Finish {
    const ALL: [Finish; 3] = [Finish::Complete, Finish::Fail, Finish::Release];

    fn id(self) -> &'static str {
        match self {
            Finish::Complete => "complete",
            Finish::Fail => "fail",
            Finish::Release => "release",
        }
    }

    fn group(self) -> String {
        format!(
            "{}: leases claimed beforehand, only the {} calls timed",
            self.id(),
            self.id()
        )
    }
}

/// A store under measurement with its baseline.
#[derive(Clone)]
struct Subject {
    name: &'static str,
    store: Arc<dyn RequestStore>,
    bare: Bare,
    prepare: Prepare,
    bare_name: &'static str,
}

/// The `i`th key of a run.
fn key_of(prefix: &str, i: u64) -> String {
    format!("{prefix}|{i}")
}

fn options() -> ClaimOptions {
    ClaimOptions::new(Kind::parse("image").expect("kind"))
        .with_lease_ttl(Duration::from_secs(600))
        .expect("lease")
}

/// Claims `n` fresh keys under `prefix`, `BATCH` at a time, and returns
/// their leases.
async fn claim_leases(store: &dyn RequestStore, prefix: &str, n: u64) -> Vec<(RequestKey, Token)> {
    let options = options();
    let keys: Vec<RequestKey> = (0..n)
        .map(|i| RequestKey::parse(key_of(prefix, i)).expect("key"))
        .collect();
    let mut leases = Vec::with_capacity(keys.len());
    for batch in keys.chunks(BATCH) {
        let claims =
            futures::future::join_all(batch.iter().map(|key| store.claim_or_get(key, &options)))
                .await;
        for (key, claim) in batch.iter().zip(claims) {
            match claim.expect("claim_or_get") {
                Claim::Acquired(lease) => leases.push((key.clone(), lease.token)),
                other => panic!("a fresh key is acquired, {key} was {}", other.state_name()),
            }
        }
    }
    leases
}

/// Our operation on one lease.
async fn finish(store: &dyn RequestStore, what: Finish, key: &RequestKey, token: Token) {
    let done = match what {
        Finish::Complete => store
            .complete(key, token, Bytes::from_static(RESULT))
            .await
            .map(drop),
        Finish::Fail => store
            .fail(key, token, &JobError::permanent(MESSAGE))
            .await
            .map(drop),
        Finish::Release => store.release(key, token).await.map(drop),
    };
    done.unwrap_or_else(|e| panic!("{} {key}: {e}", what.id()));
}

/// The bare sharded map of the memory baseline, as many shards as the
/// memory store, each a mutex around a map: an insert of the key.
fn memory_subject() -> Subject {
    let shards: Arc<Vec<Mutex<HashMap<String, Bytes>>>> =
        Arc::new((0..64).map(|_| Mutex::new(HashMap::new())).collect());
    let bare: Bare = Arc::new(move |_: Finish, key: String| {
        let shards = Arc::clone(&shards);
        Box::pin(async move {
            use std::hash::{BuildHasher, RandomState};
            thread_local!(static HASHER: RandomState = RandomState::new());
            let shard = HASHER.with(|h| h.hash_one(&key)) as usize % shards.len();
            std::hint::black_box(shards[shard].lock().insert(key, Bytes::from_static(RESULT)));
        })
    });
    Subject {
        name: "memory",
        store: Arc::new(stores::memory()),
        bare,
        prepare: Arc::new(|_: String, _: u64| Box::pin(async {})),
        bare_name: "bare sharded-map insert",
    }
}

/// The columns each operation sets, as the bare `UPDATE`'s `SET` list with
/// `$2` for its value (the result, the error message) where it has one.
fn update_set(what: Finish) -> &'static str {
    match what {
        Finish::Complete => {
            "state = 'completed', result = $2, lease_expires_at = NULL, \
             updated_at = clock_timestamp(), completed_at = clock_timestamp()"
        }
        Finish::Fail => {
            "state = 'failed', error_message = $2, error_retryable = false, \
             lease_expires_at = NULL, updated_at = clock_timestamp()"
        }
        Finish::Release => {
            "released = true, lease_expires_at = clock_timestamp(), \
             updated_at = clock_timestamp()"
        }
    }
}

/// Inserts the rows `key_of(prefix, 0..n)` into the same-width table, as
/// fresh claims leave them, in one statement.
fn prepare_rows_sql(table: &str, sequence: &str) -> String {
    format!(
        "INSERT INTO {table} (key, kind, state, token, attempt, max_attempts, \
         retry_backoff_ms, lease_ttl_ms, lease_expires_at, created_at, updated_at, expires_at) \
         SELECT $1 || '|' || g, 'image', 'processing', nextval({sequence}), 1, 1, 1000, 600000, \
         clock_timestamp() + interval '600 s', clock_timestamp(), clock_timestamp(), \
         clock_timestamp() + interval '1 day' FROM generate_series(0, $2 - 1) AS g"
    )
}

/// `text` as a quoted SQL literal.
fn quoted(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Postgres on `server` (directly) or through the transaction pooler, where
/// no prepared statement survives and every bare statement is sent
/// unprepared, as the store sends its own.
async fn postgres_subject(server: Option<Pg>) -> Option<Subject> {
    let (store, name, pooled): (PgStore, &'static str, bool) = match server {
        Some(server) => (
            stores::postgres_on(server, stores::PG_POOL).await?,
            server.name(),
            false,
        ),
        None => (
            stores::postgres_pooled(stores::PG_POOL).await?,
            "postgres (transaction pooler)",
            true,
        ),
    };
    let (table, sequence) = stores::create_wide_table(&store).await;

    let pool = store.pool().clone();
    let insert_sql: Arc<str> = prepare_rows_sql(&table, &sequence).into();
    let prepare: Prepare = Arc::new(move |prefix: String, n: u64| {
        let (pool, sql) = (pool.clone(), Arc::clone(&insert_sql));
        Box::pin(async move {
            let n = i64::try_from(n).expect("rows");
            if pooled {
                let sql = sql
                    .replace("$1", &quoted(&prefix))
                    .replace("$2", &n.to_string());
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                    .execute(&pool)
                    .await
                    .expect("insert the baseline rows");
            } else {
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(prefix)
                    .bind(n)
                    .execute(&pool)
                    .await
                    .expect("insert the baseline rows");
            }
        })
    });

    let pool = store.pool().clone();
    let bare: Bare = Arc::new(move |what: Finish, key: String| {
        let pool = pool.clone();
        let sql = format!("UPDATE {table} SET {} WHERE key = $1", update_set(what));
        Box::pin(async move {
            let done = if pooled {
                let value = match what {
                    Finish::Complete => format!("'\\x{}'::bytea", hex(RESULT)),
                    Finish::Fail => quoted(MESSAGE),
                    Finish::Release => String::new(),
                };
                let sql = sql.replace("$2", &value).replace("$1", &quoted(&key));
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&pool).await
            } else {
                let query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(key);
                let query = match what {
                    Finish::Complete => query.bind(RESULT),
                    Finish::Fail => query.bind(MESSAGE),
                    Finish::Release => query,
                };
                query.execute(&pool).await
            };
            let updated = done.expect("bare UPDATE").rows_affected();
            assert_eq!(updated, 1, "the bare UPDATE finds its row");
        })
    });
    Some(Subject {
        name,
        store: Arc::new(store),
        bare,
        prepare,
        bare_name: if pooled {
            "bare primary-key UPDATE of a row as wide as ours (same pool, unprepared)"
        } else {
            "bare primary-key UPDATE of a row as wide as ours (same pool)"
        },
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn redis_subject() -> Option<Subject> {
    let store = stores::redis().await?;
    let conn = store.connection();
    let prefix = format!("{}bare:", store.prefix());
    let bare: Bare = {
        let (conn, prefix) = (conn.clone(), prefix.clone());
        Arc::new(move |_: Finish, key: String| {
            let (mut conn, key) = (conn.clone(), format!("{prefix}{key}"));
            Box::pin(async move {
                let set: Option<String> = redis::cmd("SET")
                    .arg(key)
                    .arg(RESULT)
                    .arg("XX")
                    .arg("PX")
                    .arg(600_000)
                    .query_async(&mut conn)
                    .await
                    .expect("bare SET XX PX");
                assert!(set.is_some(), "the bare SET XX finds its key");
            })
        })
    };
    let prepare: Prepare = Arc::new(move |run: String, n: u64| {
        let (mut conn, prefix) = (conn.clone(), prefix.clone());
        Box::pin(async move {
            let mut pipe = redis::pipe();
            for i in 0..n {
                pipe.cmd("SET")
                    .arg(format!("{prefix}{}", key_of(&run, i)))
                    .arg(RESULT)
                    .arg("PX")
                    .arg(600_000)
                    .ignore();
                if (i + 1) % 1_000 == 0 || i + 1 == n {
                    let () = pipe
                        .query_async(&mut conn)
                        .await
                        .expect("write the baseline keys");
                    pipe.clear();
                }
            }
        })
    });
    Some(Subject {
        name: "redis",
        store: Arc::new(store),
        bare,
        prepare,
        bare_name: "bare SET XX PX of an existing key (same connection)",
    })
}

/// Times `iters` of our operation over `callers` tasks, on leases claimed
/// first.
async fn ours(
    store: Arc<dyn RequestStore>,
    what: Finish,
    callers: usize,
    iters: u64,
    series: Shared,
) -> Duration {
    let leases = Arc::new(claim_leases(&*store, &stores::unique("l"), iters).await);
    load::run(callers, iters, &series, move |i| {
        let (store, leases) = (Arc::clone(&store), Arc::clone(&leases));
        async move {
            let (key, token) = &leases[i as usize];
            finish(&*store, what, key, *token).await;
        }
    })
    .await
}

/// Times `iters` of the bare write over `callers` tasks, on keys prepared
/// first.
async fn bare(
    subject: Subject,
    what: Finish,
    callers: usize,
    iters: u64,
    series: Shared,
) -> Duration {
    let prefix = stores::unique("b");
    (subject.prepare)(prefix.clone(), iters).await;
    let bare = subject.bare;
    load::run(callers, iters, &series, move |i| {
        bare(what, key_of(&prefix, i))
    })
    .await
}

/// Measures every operation at every caller count on the subjects `make`
/// gives: a new one per series for the memory store (whose records would
/// otherwise pile up in one map), the same one for the network stores.
fn measure(c: &mut Criterion, rt: &Runtime, make: &dyn Fn() -> Subject) {
    let first = make();
    for what in Finish::ALL {
        let mut group = c.benchmark_group(format!("{}/{}", what.id(), first.name));
        if quick() {
            // Each sample claims its leases first, untimed: keep the quick
            // run's wall time near criterion's own.
            group
                .warm_up_time(Duration::from_millis(100))
                .measurement_time(Duration::from_millis(500));
        }
        for callers in CALLERS {
            let subject = make();
            let ours_series = load::series();
            let base_series = load::series();
            group.bench_function(format!("ours/{callers}"), |b| {
                b.to_async(rt).iter_custom(|iters| {
                    ours(
                        Arc::clone(&subject.store),
                        what,
                        callers,
                        iters,
                        Arc::clone(&ours_series),
                    )
                });
            });
            group.bench_function(format!("baseline/{callers}"), |b| {
                b.to_async(rt).iter_custom(|iters| {
                    bare(
                        subject.clone(),
                        what,
                        callers,
                        iters,
                        Arc::clone(&base_series),
                    )
                });
            });
            let mut ours = ours_series.lock();
            let mut base = base_series.lock();
            report::figure(&Figure {
                bench: BENCH,
                group: what.group(),
                name: what.id().to_owned(),
                store: subject.name.to_owned(),
                concurrency: Some(callers),
                unit: "ops/s",
                higher_is_better: true,
                ours: ours.throughput(),
                baseline: Some(base.throughput()),
                baseline_name: Some(subject.bare_name.to_owned()),
                p50_us: ours.percentile_us(0.5),
                p99_us: ours.percentile_us(0.99),
                baseline_p50_us: base.percentile_us(0.5),
                baseline_p99_us: base.percentile_us(0.99),
                ..Figure::default()
            });
        }
        group.finish();
    }
}

fn main() {
    let rt = runtime();
    let mut c = criterion();
    measure(&mut c, &rt, &memory_subject);
    for server in Pg::ALL {
        if let Some(subject) = rt.block_on(postgres_subject(Some(server))) {
            measure(&mut c, &rt, &move || subject.clone());
        }
    }
    // Through the pooler in a full run only: the direct figures already
    // show the operations' cost, and a quick run stays short.
    if !quick()
        && let Some(subject) = rt.block_on(postgres_subject(None))
    {
        measure(&mut c, &rt, &move || subject.clone());
    }
    if let Some(subject) = rt.block_on(redis_subject()) {
        measure(&mut c, &rt, &move || subject.clone());
    }
    c.final_summary();
}
