//! Prometheus metrics, and `InstrumentedStore`, which times every store
//! operation by operation and backend.
//!
//! Besides counters and latencies, a few gauges say whether the process holds
//! what it should and nothing more, so that a leak shows on a dashboard
//! before it shows as an outage: long-polls held right now
//! (`onceflight_waits_in_progress`), the tokio runtime's alive tasks
//! (`onceflight_runtime_alive_tasks`), and, on Linux, the usual
//! `process_open_fds`, `process_max_fds` and `process_resident_memory_bytes`
//! (read from `/proc/self` at scrape time, with the names Prometheus's own
//! process collectors use, so existing dashboards and alerts apply).
//!
//! The store's own contents show as gauges of the whole store (every
//! namespace): `onceflight_records{state}`,
//! `onceflight_records_by_kind{kind,state}`, `onceflight_leases{state="live"|"expired"}`
//! and `onceflight_oldest_live_lease_seconds`. They come from the counts
//! `GET /v1/stats` keeps, refreshed when a scrape finds them older than
//! `--stats-max-age-ms`, so scraping costs the store at most one count per
//! that interval.
//!
//! With a hit cache, `onceflight_hit_cache_{hits,misses,invalidations}_total`
//! count claims answered in process, claims that went to the store, and
//! results forgotten because the store said they changed (or its push
//! channel broke); `onceflight_hit_cache_entries` is what it holds.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use onceflight_core::{
    ChangeFeed, Claim, ClaimOptions, Error, HitCacheStats, JobError, ListPage, ListQuery, Record,
    Renewal, RequestKey, RequestStore, Result, StateCounts, StoreStats, Token,
};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreLabels {
    operation: &'static str,
    backend: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindStateLabels {
    kind: String,
    state: &'static str,
}

fn latency_histogram() -> Histogram {
    // 100 µs to about 6.5 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 17))
}

fn wait_histogram() -> Histogram {
    // 1 ms to about 65 s: long-polls last up to a minute.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// The service's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    claims: Family<OutcomeLabels, Counter>,
    fenced_rejected: Family<OperationLabels, Counter>,
    waits: Counter,
    wait_seconds: Histogram,
    store_seconds: Family<StoreLabels, Histogram, fn() -> Histogram>,
    waits_in_progress: Gauge,
    alive_tasks: Gauge,
    hit_cache: HitCacheMetrics,
    store: StoreGauges,
    /// Unprefixed process gauges (`process_*`), filled in at scrape time.
    process: ProcessGauges,
}

/// The hit cache's counters, copied from [`HitCacheStats`] at scrape time.
#[derive(Debug, Default)]
struct HitCacheMetrics {
    hits: Counter,
    misses: Counter,
    invalidations: Counter,
    entries: Gauge,
}

impl HitCacheMetrics {
    fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "hit_cache_hits",
            "Claims answered from the hit cache, without a store round trip",
            metrics.hits.clone(),
        );
        registry.register(
            "hit_cache_misses",
            "Claims that went past the hit cache to the store",
            metrics.misses.clone(),
        );
        registry.register(
            "hit_cache_invalidations",
            "Results the hit cache forgot because the store said they changed or its push channel broke",
            metrics.invalidations.clone(),
        );
        registry.register(
            "hit_cache_entries",
            "Results the hit cache holds",
            metrics.entries.clone(),
        );
        metrics
    }

    /// Brings the counters up to `stats` (which only grow).
    fn observe(&self, stats: HitCacheStats) {
        for (counter, now) in [
            (&self.hits, stats.hits),
            (&self.misses, stats.misses),
            (&self.invalidations, stats.invalidations),
        ] {
            counter.inc_by(now.saturating_sub(counter.get()));
        }
        self.entries
            .set(i64::try_from(stats.entries).unwrap_or(i64::MAX));
    }
}

/// The store's records and leases, copied from the last [`StoreStats`] read.
#[derive(Debug, Default)]
struct StoreGauges {
    records: Family<StateLabels, Gauge>,
    by_kind: Family<KindStateLabels, Gauge>,
    leases: Family<StateLabels, Gauge>,
    oldest_live_lease_seconds: Gauge<f64, AtomicU64>,
}

impl StoreGauges {
    fn register(registry: &mut Registry) -> Self {
        let gauges = Self::default();
        registry.register(
            "records",
            "Records in the store by state, as last counted",
            gauges.records.clone(),
        );
        registry.register(
            "records_by_kind",
            "Records in the store by kind and state, as last counted",
            gauges.by_kind.clone(),
        );
        registry.register(
            "leases",
            "Leases of processing records: live (jobs running) or expired (run out, nobody took over yet)",
            gauges.leases.clone(),
        );
        registry.register(
            "oldest_live_lease_seconds",
            "Age of the oldest record holding a live lease (the longest-running job); 0 when none",
            gauges.oldest_live_lease_seconds.clone(),
        );
        gauges
    }

    fn observe(&self, stats: &StoreStats) {
        let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let by_state = |counts: &StateCounts| {
            [
                ("processing", counts.processing),
                ("completed", counts.completed),
                ("failed", counts.failed),
            ]
        };
        for (state, n) in by_state(&stats.states) {
            self.records
                .get_or_create(&StateLabels { state })
                .set(count(n));
        }
        // Kinds that are gone must not linger with their last figures; the
        // family is rebuilt, and a scrape rendering in between sees fewer
        // series for an instant rather than wrong ones.
        self.by_kind.clear();
        for (kind, counts) in &stats.kinds {
            for (state, n) in by_state(counts) {
                self.by_kind
                    .get_or_create(&KindStateLabels {
                        kind: kind.as_str().to_owned(),
                        state,
                    })
                    .set(count(n));
            }
        }
        for (state, n) in [
            ("live", stats.leases_live),
            ("expired", stats.leases_expired),
        ] {
            self.leases
                .get_or_create(&StateLabels { state })
                .set(count(n));
        }
        self.oldest_live_lease_seconds.set(
            stats
                .oldest_live_lease_age
                .map_or(0.0, |age| age.as_secs_f64()),
        );
    }
}

/// The `process_*` gauges of Prometheus's process collectors, in their own
/// registry because they carry no `onceflight_` prefix.
#[derive(Debug)]
struct ProcessGauges {
    registry: Registry,
    open_fds: Gauge,
    max_fds: Gauge,
    resident_bytes: Gauge,
}

impl Default for ProcessGauges {
    fn default() -> Self {
        let mut registry = Registry::default();
        let open_fds = Gauge::default();
        let max_fds = Gauge::default();
        let resident_bytes = Gauge::default();
        // Only Linux has the `/proc/self` these are read from; elsewhere the
        // registry stays empty rather than exporting zeros.
        if cfg!(target_os = "linux") {
            registry.register(
                "process_open_fds",
                "Open file descriptors: sockets of clients and stores included",
                open_fds.clone(),
            );
            registry.register(
                "process_max_fds",
                "The soft limit of open file descriptors",
                max_fds.clone(),
            );
            registry.register(
                "process_resident_memory_bytes",
                "Resident memory of the process",
                resident_bytes.clone(),
            );
        }
        Self {
            registry,
            open_fds,
            max_fds,
            resident_bytes,
        }
    }
}

impl ProcessGauges {
    /// Reads the current figures from `/proc/self`; a figure that cannot be
    /// read keeps its last value.
    fn refresh(&self) {
        if !cfg!(target_os = "linux") {
            return;
        }
        if let Ok(entries) = std::fs::read_dir("/proc/self/fd") {
            // The directory handle being read is one of the entries.
            let open = entries.count().saturating_sub(1);
            self.open_fds.set(i64::try_from(open).unwrap_or(i64::MAX));
        }
        if let Some(max) = proc_field("/proc/self/limits", "Max open files")
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        {
            self.max_fds.set(max);
        }
        if let Some(kib) = proc_field("/proc/self/status", "VmRSS:")
            .and_then(|rest| rest.split_whitespace().next()?.parse::<i64>().ok())
        {
            self.resident_bytes.set(kib.saturating_mul(1024));
        }
    }
}

/// The rest of the first line of the file at `path` that starts with
/// `label`.
fn proc_field(path: &str, label: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix(label))
        .map(str::to_owned)
}

/// Counts one held long-poll in `onceflight_waits_in_progress` for as long
/// as it lives. Dropping it, whichever way the request ends (answered, timed
/// out, or its future dropped because the client went away), uncounts it,
/// so the gauge cannot drift.
#[derive(Debug)]
#[must_use = "the long-poll is counted only while the guard lives"]
pub struct WaitInProgress {
    gauge: Gauge,
}

impl Drop for WaitInProgress {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("onceflight");
        let claims = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "claims",
            "Claim outcomes: acquired, takeover, retry, in_flight, completed (a cache hit), failed",
            claims.clone(),
        );
        let fenced_rejected = Family::<OperationLabels, Counter>::default();
        registry.register(
            "fenced_rejected",
            "Fenced operations refused with lease_lost, by operation",
            fenced_rejected.clone(),
        );
        let waits = Counter::default();
        registry.register("waits", "Held GET ?wait_ms long-polls", waits.clone());
        let wait_seconds = wait_histogram();
        registry.register(
            "wait_duration_seconds",
            "How long held long-polls waited",
            wait_seconds.clone(),
        );
        let store_seconds =
            Family::<StoreLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        registry.register(
            "store_operation_duration_seconds",
            "Store operation latency by operation and backend",
            store_seconds.clone(),
        );
        let waits_in_progress = Gauge::default();
        registry.register(
            "waits_in_progress",
            "GET ?wait_ms long-polls held right now",
            waits_in_progress.clone(),
        );
        let alive_tasks = Gauge::default();
        registry.register(
            "runtime_alive_tasks",
            "Tasks alive in the tokio runtime: one per open client connection, plus the store's and the service's own",
            alive_tasks.clone(),
        );
        let hit_cache = HitCacheMetrics::register(&mut registry);
        let store = StoreGauges::register(&mut registry);
        Self {
            registry,
            hit_cache,
            store,
            claims,
            fenced_rejected,
            waits,
            wait_seconds,
            store_seconds,
            waits_in_progress,
            alive_tasks,
            process: ProcessGauges::default(),
        }
    }
}

impl Metrics {
    /// Counts a claim's outcome.
    pub fn claim(&self, claim: &Claim) {
        let outcome = match claim {
            Claim::Acquired(lease) if lease.takeover => "takeover",
            Claim::Acquired(lease) if lease.attempt > 1 => "retry",
            Claim::Acquired(_) => "acquired",
            Claim::InFlight(_) => "in_flight",
            Claim::Completed(_) => "completed",
            Claim::Failed(_) => "failed",
        };
        self.claims.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// Counts a fenced operation refused with `lease_lost`.
    pub fn fenced_rejected(&self, operation: &'static str) {
        self.fenced_rejected
            .get_or_create(&OperationLabels { operation })
            .inc();
    }

    /// Records a held long-poll and how long it waited.
    pub fn waited(&self, waited: Duration) {
        self.waits.inc();
        self.wait_seconds.observe(waited.as_secs_f64());
    }

    /// Counts a long-poll as held until the returned guard is dropped.
    pub fn wait_in_progress(&self) -> WaitInProgress {
        self.waits_in_progress.inc();
        WaitInProgress {
            gauge: self.waits_in_progress.clone(),
        }
    }

    fn store_op(&self, operation: &'static str, backend: &'static str, took: Duration) {
        self.store_seconds
            .get_or_create(&StoreLabels { operation, backend })
            .observe(took.as_secs_f64());
    }

    /// Copies the hit cache's counters, to be rendered next.
    pub fn observe_hit_cache(&self, stats: HitCacheStats) {
        self.hit_cache.observe(stats);
    }

    /// Copies the store's counts, to be rendered next.
    pub fn observe_store_stats(&self, stats: &StoreStats) {
        self.store.observe(stats);
    }

    /// The Prometheus text exposition of every metric. The gauges of the
    /// runtime and the process are read now.
    pub fn render(&self) -> String {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let alive = runtime.metrics().num_alive_tasks();
            self.alive_tasks
                .set(i64::try_from(alive).unwrap_or(i64::MAX));
        }
        self.process.refresh();
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode_registry(&mut text, &self.registry);
        let _ =
            prometheus_client::encoding::text::encode_registry(&mut text, &self.process.registry);
        let _ = prometheus_client::encoding::text::encode_eof(&mut text);
        text
    }
}

/// A store that times each operation of the store it wraps, and bounds it.
///
/// Every operation gets at most `timeout` (a `wait` gets its own timeout plus
/// `timeout`, and a count, which walks the records, at least five minutes);
/// past it the call is dropped and answers
/// [`Error::Unavailable`], so a store that stops answering — a frozen
/// network path, a stalled server — turns into 503 `store_unavailable`
/// within a known time instead of a request that hangs. The stores have
/// their own timeouts too; this one holds whatever the store does.
#[derive(Debug)]
pub struct InstrumentedStore {
    inner: Arc<dyn RequestStore>,
    metrics: Arc<Metrics>,
    timeout: Duration,
}

/// The least time a count of the store is given: counting walks every
/// record under a prefix.
const COUNTS_TIMEOUT: Duration = Duration::from_secs(300);

/// The error of a store operation that ran out of time.
#[derive(Debug, thiserror::Error)]
#[error("the store did not answer {operation} within {timeout:?}")]
struct TimedOut {
    operation: &'static str,
    timeout: Duration,
}

impl InstrumentedStore {
    /// Wraps `inner`, recording into `metrics` and giving each operation at
    /// most `timeout`.
    pub fn new(inner: Arc<dyn RequestStore>, metrics: Arc<Metrics>, timeout: Duration) -> Self {
        Self {
            inner,
            metrics,
            timeout,
        }
    }

    async fn timed<T>(
        &self,
        operation: &'static str,
        op: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        self.bounded(operation, self.timeout, op).await
    }

    async fn bounded<T>(
        &self,
        operation: &'static str,
        timeout: Duration,
        op: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let started = Instant::now();
        let result = match tokio::time::timeout(timeout, op).await {
            Ok(result) => result,
            Err(_) => Err(Error::unavailable(
                self.inner.backend(),
                TimedOut { operation, timeout },
            )),
        };
        self.metrics
            .store_op(operation, self.inner.backend(), started.elapsed());
        if matches!(result, Err(Error::LeaseLost { .. })) {
            self.metrics.fenced_rejected(operation);
        }
        result
    }
}

#[async_trait]
impl RequestStore for InstrumentedStore {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    async fn claim_or_get(&self, key: &RequestKey, options: &ClaimOptions) -> Result<Claim> {
        let claim = self
            .timed("claim_or_get", self.inner.claim_or_get(key, options))
            .await?;
        self.metrics.claim(&claim);
        Ok(claim)
    }
    async fn renew(
        &self,
        key: &RequestKey,
        token: Token,
        ttl: Option<Duration>,
    ) -> Result<Renewal> {
        self.timed("renew", self.inner.renew(key, token, ttl)).await
    }
    async fn complete(&self, key: &RequestKey, token: Token, result: Bytes) -> Result<Record> {
        self.timed("complete", self.inner.complete(key, token, result))
            .await
    }
    async fn fail(&self, key: &RequestKey, token: Token, error: &JobError) -> Result<Record> {
        self.timed("fail", self.inner.fail(key, token, error)).await
    }
    async fn release(&self, key: &RequestKey, token: Token) -> Result<Record> {
        self.timed("release", self.inner.release(key, token)).await
    }
    async fn get(&self, key: &RequestKey) -> Result<Option<Record>> {
        self.timed("get", self.inner.get(key)).await
    }
    async fn wait(&self, key: &RequestKey, timeout: Duration) -> Result<Option<Record>> {
        let bound = timeout.saturating_add(self.timeout);
        self.bounded("wait", bound, self.inner.wait(key, timeout))
            .await
    }
    async fn delete(&self, key: &RequestKey) -> Result<bool> {
        self.timed("delete", self.inner.delete(key)).await
    }
    async fn sweep(&self) -> Result<u64> {
        self.timed("sweep", self.inner.sweep()).await
    }
    async fn list(&self, query: &ListQuery) -> Result<ListPage> {
        self.timed("list", self.inner.list(query)).await
    }
    async fn counts(&self, prefix: &str) -> Result<StoreStats> {
        // A count walks the records, so it may take far longer than one
        // operation on a large store; its callers wait for it no longer than
        // the store timeout, and it goes on without them (see `stats.rs`).
        let bound = self.timeout.max(COUNTS_TIMEOUT);
        self.bounded("counts", bound, self.inner.counts(prefix))
            .await
    }
    fn change_feed(&self) -> Option<ChangeFeed> {
        self.inner.change_feed()
    }
}
