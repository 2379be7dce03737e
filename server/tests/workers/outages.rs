//! The store failing under busy workers: Postgres and Redis only.

use std::time::Duration;

use crate::common::Proxy;
use crate::common::history::{History, Line};
use crate::process::WorkerProcess;
use crate::{Backend, checked_history, config, final_records, keys, poll};
use onceflight_test_support::postgres::Postgres;
use onceflight_test_support::redis::Redis;

/// How the store fails under a busy server.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Outage {
    /// The store process dies (PostgreSQL: `pg_ctl stop -m immediate`;
    /// Redis, with an append-only file: SIGKILL) and starts again.
    Crash,
    /// A proxy between server and store holds every byte, then lets them
    /// through.
    Freeze,
}

/// What takes the store away and gives it back.
enum Breaker {
    Postgres(Postgres),
    Redis(Redis),
    Proxy(Proxy),
}

impl Breaker {
    fn fail(&mut self) {
        match self {
            Self::Postgres(cluster) => cluster.crash().expect("crash PostgreSQL"),
            Self::Redis(redis) => redis.crash(),
            Self::Proxy(proxy) => proxy.freeze(),
        }
    }

    fn recover(&mut self) {
        match self {
            Self::Postgres(cluster) => cluster.start_again().expect("start PostgreSQL again"),
            Self::Redis(redis) => redis.start_again().expect("start Redis again"),
            Self::Proxy(proxy) => proxy.heal(),
        }
    }
}

/// How long the store stays away: longer than a lease, so leases expire
/// meanwhile and are taken over afterwards.
const OUTAGE: Duration = Duration::from_millis(2500);

/// Workers busy on `store` when it fails for [`OUTAGE`] and comes back:
/// requests meanwhile answer 503 (retried by the workers) or fail, nothing
/// hangs, every key ends completed, and the whole history — 503s counted as
/// "unknown", since a timed-out call may have gone through — passes the §5
/// checker, results acknowledged before the outage included.
pub(crate) async fn store_outage_mid_run(store: &'static str, outage: Outage) {
    let name = format!("{store}-{outage:?}-mid-run");
    let (backend, mut breaker) = match (store, outage) {
        ("postgres", Outage::Crash) => {
            let Some(cluster) = crate::common::own_postgres(&name) else {
                return;
            };
            (Backend::Postgres(cluster.url()), Breaker::Postgres(cluster))
        }
        ("redis", Outage::Crash) => {
            let Some(redis) = crate::common::own_redis(&name, true) else {
                return;
            };
            (Backend::Redis(redis.url()), Breaker::Redis(redis))
        }
        (store, Outage::Freeze) => match Backend::named(store) {
            None => return,
            Some(Backend::Postgres(url)) => {
                let (proxy, url) = Proxy::in_front_of(&url, 5432).await;
                (Backend::Postgres(url), Breaker::Proxy(proxy))
            }
            Some(Backend::Redis(url)) => {
                let (proxy, url) = Proxy::in_front_of(&url, 6379).await;
                (Backend::Redis(url), Breaker::Proxy(proxy))
            }
            Some(Backend::Memory) => panic!("the memory store has no outage"),
        },
        (store, outage) => panic!("no {outage:?} scenario on {store}"),
    };
    let schema = onceflight_test_support::unique_name("t_flt");
    let server = backend
        .launch(&schema)
        .args(&["--store-timeout-ms", "1000"])
        .start()
        .await;
    let all = keys("outage", 30);
    let mut workers: Vec<WorkerProcess> = (0..3)
        .map(|i| {
            let mut order = all.clone();
            order.rotate_left(i * 10);
            WorkerProcess::spawn(config(&server, &format!("w{i}"), &order, 3))
        })
        .collect();

    poll(
        "results acknowledged while jobs run",
        Duration::from_secs(20),
        || {
            let lines: Vec<Line> = workers.iter().flat_map(|worker| worker.lines()).collect();
            let acked = History::from_lines(lines).acked_completions().len();
            let running = workers.iter().any(|worker| !worker.open_jobs().is_empty());
            (acked >= 4 && running).then_some(())
        },
    )
    .await;
    breaker.fail();
    tokio::time::sleep(OUTAGE).await;
    breaker.recover();

    for worker in &mut workers {
        worker.expect_success(Duration::from_secs(50)).await;
    }
    let finals = final_records(&server, &all).await;
    let refs: Vec<&WorkerProcess> = workers.iter().collect();
    let history = checked_history(&name, &refs, &finals);
    let felt = history
        .calls
        .iter()
        .filter(|call| !matches!(call.answer(), Some((status, _)) if status != 503))
        .count();
    assert!(
        felt > 0,
        "{name}: the outage was felt: some requests answered 503 or failed"
    );
    eprintln!(
        "{name}: {felt} requests answered 503 or failed during the outage and were retried; \
         all {} keys completed",
        all.len()
    );
}
