//! Prometheus metrics, and `InstrumentedStore`, which times every store
//! operation by operation and backend.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use onceflight_core::{
    Claim, ClaimOptions, Error, JobError, Record, Renewal, RequestKey, RequestStore, Result, Token,
};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
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
        Self {
            registry,
            claims,
            fenced_rejected,
            waits,
            wait_seconds,
            store_seconds,
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

    fn store_op(&self, operation: &'static str, backend: &'static str, took: Duration) {
        self.store_seconds
            .get_or_create(&StoreLabels { operation, backend })
            .observe(took.as_secs_f64());
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// A store that times each operation of the store it wraps.
#[derive(Debug)]
pub struct InstrumentedStore {
    inner: Arc<dyn RequestStore>,
    metrics: Arc<Metrics>,
}

impl InstrumentedStore {
    /// Wraps `inner`, recording into `metrics`.
    pub fn new(inner: Arc<dyn RequestStore>, metrics: Arc<Metrics>) -> Self {
        Self { inner, metrics }
    }

    async fn timed<T>(
        &self,
        operation: &'static str,
        op: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let started = Instant::now();
        let result = op.await;
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
        self.timed("wait", self.inner.wait(key, timeout)).await
    }
    async fn delete(&self, key: &RequestKey) -> Result<bool> {
        self.timed("delete", self.inner.delete(key)).await
    }
    async fn sweep(&self) -> Result<u64> {
        self.timed("sweep", self.inner.sweep()).await
    }
}
