//! A concurrent load generator: `callers` tasks share a number of
//! operations; it reports the wall time and every operation's latency.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// What one measured series produced so far: operations, the wall time
/// they took, and a sample of latencies.
#[derive(Debug, Default)]
pub struct Series {
    ops: u64,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

/// Latencies kept per series at the most (a uniform enough sample: every
/// run contributes its first ones).
const MAX_LATENCIES: usize = 200_000;

impl Series {
    /// Adds a run of `ops` operations that took `elapsed` wall time.
    pub fn add(&mut self, ops: u64, elapsed: Duration, latencies: Vec<Duration>) {
        self.ops += ops;
        self.elapsed += elapsed;
        let room = MAX_LATENCIES.saturating_sub(self.latencies.len());
        self.latencies.extend(latencies.into_iter().take(room));
    }

    /// Operations per second over all runs.
    pub fn throughput(&self) -> f64 {
        if self.elapsed.is_zero() {
            0.0
        } else {
            self.ops as f64 / self.elapsed.as_secs_f64()
        }
    }

    /// The `q` quantile (0–1) of the latencies, µs.
    pub fn percentile_us(&mut self, q: f64) -> Option<f64> {
        if self.latencies.is_empty() {
            return None;
        }
        self.latencies.sort_unstable();
        let index = ((self.latencies.len() - 1) as f64 * q).round() as usize;
        Some(self.latencies[index].as_secs_f64() * 1e6)
    }
}

/// A series shared between a benchmark's routine and its reporting.
pub type Shared = Arc<Mutex<Series>>;

/// A new shared series.
pub fn series() -> Shared {
    Arc::new(Mutex::new(Series::default()))
}

/// Runs `ops` operations over `callers` concurrent tasks: task `t` calls
/// `op(i)` for its share of `i` in `0..ops`. Records the run in `series`
/// and returns the wall time (what criterion's `iter_custom` wants).
pub async fn run<F, Fut>(callers: usize, ops: u64, series: &Shared, op: F) -> Duration
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..callers.max(1))
        .map(|_| {
            let (op, next) = (Arc::clone(&op), Arc::clone(&next));
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as u64;
                    if i >= ops {
                        return latencies;
                    }
                    let began = Instant::now();
                    op(i).await;
                    latencies.push(began.elapsed());
                }
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(ops as usize);
    for task in tasks {
        latencies.extend(task.await.expect("a load task"));
    }
    let elapsed = start.elapsed();
    series.lock().add(ops, elapsed, latencies);
    elapsed
}

/// A Zipf-distributed sampler over `n` items (exponent `s`): a few popular
/// prompts and a long tail. Deterministic (a fixed xorshift seed), so runs
/// compare.
#[derive(Debug, Clone)]
pub struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    /// The distribution over `0..n`.
    pub fn new(n: usize, s: f64) -> Self {
        let weights: Vec<f64> = (1..=n).map(|k| 1.0 / (k as f64).powf(s)).collect();
        let total: f64 = weights.iter().sum();
        let mut acc = 0.0;
        let cdf = weights
            .iter()
            .map(|w| {
                acc += w / total;
                acc
            })
            .collect();
        Self { cdf }
    }

    /// The item for the `i`th draw.
    pub fn sample(&self, i: u64) -> usize {
        // splitmix64 of the draw index: uniform in [0, 1).
        let mut z = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let u = (z >> 11) as f64 / (1u64 << 53) as f64;
        self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::Zipf;

    #[test]
    fn zipf_favours_the_head() {
        let zipf = Zipf::new(10_000, 1.1);
        let draws: Vec<usize> = (0..100_000).map(|i| zipf.sample(i)).collect();
        let head = draws.iter().filter(|&&k| k < 10).count();
        assert!(
            head > 30_000,
            "the ten most popular get a large share: {head}"
        );
        assert!(draws.iter().any(|&k| k > 5_000), "the tail is drawn too");
    }
}
