//! The shared conformance suite, reference model and property harnesses that
//! every backend runs (feature `testkit`).
//!
//! - [`cases`]: one public async function per property of docs/protocol.md §3–§5, and
//!   [`coordinator_cases`] and [`coordinator_edges`] for the [`crate::Coordinator`]
//!   on top of a store.
//!   [`conformance_tests!`](crate::conformance_tests) expands to one
//!   `#[tokio::test]` per function, so every backend runs every case under its
//!   own name.
//! - [`model`]: a reference model of §3–§4; [`check_against_model`] drives
//!   random operation sequences against a store and the model and compares
//!   them step by step.
//! - [`check_concurrent_history`]: many tasks on a multi-thread runtime
//!   claim, complete, fail and crash on a few keys; the recorded history must
//!   show §5's guarantees.
//! - [`history`]: a store-neutral history of calls and the one checker of
//!   §5 over it, which the concurrent harness and the server's fault tests
//!   (worker processes, killed mid-request) both record into.
//!
//! A backend provides a [`Setup`]: an async function from [`SuiteConfig`] to a
//! fresh, isolated store (its own Postgres schema, its own Redis prefix).

use std::future::Future;
use std::time::Duration;

use futures::future::BoxFuture;

use crate::RequestKey;
use crate::store::RequestStore;

pub mod cases;
mod concurrency;
pub mod coordinator_cases;
pub mod coordinator_edges;
mod faults;
pub mod history;
mod hit_cache;
pub mod model;
mod model_check;

pub use concurrency::{ConcurrencyConfig, check_concurrent_history};
pub use hit_cache::{
    Invalidation, ThroughHitCache, check_cut_channel, check_delete_reaches_other_cache,
};
pub use model_check::{ModelCheckConfig, check_against_model};

/// Every page of `query` on `store`, its cursors followed to the end, each
/// page checked as every store must answer one: within the limit, in the
/// query's order of creation, every record passing the query's filters and carrying no
/// result. Bounded, so that a listing that never ends fails instead of
/// hanging.
pub async fn every_page<S: RequestStore + ?Sized>(
    store: &S,
    query: &crate::ListQuery,
) -> Vec<Vec<crate::Record>> {
    let mut pages = Vec::new();
    let mut cursor = None;
    for _ in 0..10_000 {
        let page = store
            .list(&query.clone().with_cursor(cursor))
            .await
            .unwrap_or_else(|e| panic!("list({query:?}) failed: {e}"));
        assert!(
            page.records.len() <= query.limit() as usize,
            "a page of {} records over the limit {}",
            page.records.len(),
            query.limit()
        );
        // Only the creation instants are compared: the key breaks ties of
        // the store's own precision, and the HTTP API shows instants to the
        // millisecond, so records a store ordered by key within one
        // millisecond may show the same instant in another order. The
        // stores' own tests check the tie-break.
        let created: Vec<_> = page.records.iter().map(|r| r.created_at).collect();
        let mut sorted = created.clone();
        sorted.sort();
        if query.order() == crate::ListOrder::NewestFirst {
            sorted.reverse();
        }
        assert_eq!(created, sorted, "a page is in the query's order");
        for record in &page.records {
            assert!(query.accepts(record), "{record:?} does not match {query:?}");
            assert!(record.result.is_none(), "a listing carries no result");
        }
        pages.push(page.records);
        match page.next {
            Some(next) => cursor = Some(next),
            None => return pages,
        }
    }
    panic!("the listing of {query:?} did not end after 10000 pages");
}

/// What a fresh store under test must be configured with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SuiteConfig {
    /// How long completed and failed records are kept, and abandoned leases
    /// after they end.
    pub retention: Duration,
}

impl Default for SuiteConfig {
    fn default() -> Self {
        Self {
            retention: Duration::from_secs(3600),
        }
    }
}

/// Builds a fresh, isolated store for one test. Implemented for every
/// `Fn(SuiteConfig) -> impl Future<Output = impl RequestStore>`, so an
/// `async fn setup(config: SuiteConfig) -> MyStore` is a `Setup`.
pub trait Setup: Send + Sync + 'static {
    /// The store under test.
    type Store: RequestStore;

    /// A new store configured as `config` says, sharing no records with any
    /// other store this setup built.
    fn store(&self, config: SuiteConfig) -> BoxFuture<'static, Self::Store>;
}

impl<F, Fut, S> Setup for F
where
    F: Fn(SuiteConfig) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = S> + Send + 'static,
    S: RequestStore,
{
    type Store = S;

    fn store(&self, config: SuiteConfig) -> BoxFuture<'static, S> {
        Box::pin(self(config))
    }
}

/// What a backend's storage does with records past retention (docs/protocol.md §4:
/// `sweep` is housekeeping only, so both are correct; the cases hold each
/// backend to the one it declares).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expiry {
    /// Records past retention stay in storage, hidden from every operation,
    /// until `sweep` removes them (or a claim or delete replaces or removes
    /// them): `sweep` counts each one it removes. The memory and Postgres
    /// stores.
    Swept,
    /// Storage forgets records past retention by itself (Redis key TTLs):
    /// nothing is left for `sweep`, which answers 0.
    ByStorage,
    /// This store's `sweep` does nothing and answers 0, because sweeping is
    /// someone else's job: an HTTP client, whose service sweeps its own
    /// store on its own schedule. Storage keeps records past retention
    /// until then.
    SweptElsewhere,
}

/// A look past a store's API at what its storage physically holds, which the
/// `sweep` case needs: `get` hides records past retention, so only this can
/// show that `sweep` really removed them.
///
/// Required by [`cases::sweep_removes_only_expired_records`], so a setup
/// without it does not compile into the conformance suite. Wrap a setup
/// function and an inspecting async function with [`WithRawStorage`], or
/// implement it on a setup type of your own.
pub trait RawStorage: Setup {
    /// How this backend's storage treats records past retention.
    fn expiry(&self) -> Expiry;

    /// Whether `store`'s storage still holds a record for `key`, live or
    /// past retention — asked of the storage itself (a map, a table row, a
    /// Redis key), not through `store`'s API.
    // Not `Send`: the cases await it in place, never in a spawned task, and
    // an `AsyncFn` cannot promise `Send` on stable Rust.
    #[allow(async_fn_in_trait)]
    async fn raw_record_exists(&self, store: &Self::Store, key: &RequestKey) -> bool;
}

/// A [`Setup`] and a [`RawStorage`] from parts: `setup` builds stores,
/// `raw` answers [`RawStorage::raw_record_exists`], and `expiry` says what
/// the storage does with records past retention.
///
/// ```text
/// async fn raw(store: &MyStore, key: &RequestKey) -> bool { /* … */ }
/// conformance_tests!(WithRawStorage { setup, raw, expiry: Expiry::Swept }, paused);
/// ```
#[derive(Clone, Copy, Debug)]
pub struct WithRawStorage<F, R> {
    /// Builds the stores.
    pub setup: F,
    /// Looks at a store's storage.
    pub raw: R,
    /// What the storage does with records past retention.
    pub expiry: Expiry,
}

impl<F: Setup, R: Send + Sync + 'static> Setup for WithRawStorage<F, R> {
    type Store = F::Store;

    fn store(&self, config: SuiteConfig) -> BoxFuture<'static, Self::Store> {
        self.setup.store(config)
    }
}

impl<F, R> RawStorage for WithRawStorage<F, R>
where
    F: Setup,
    R: AsyncFn(&F::Store, &RequestKey) -> bool + Send + Sync + 'static,
{
    fn expiry(&self) -> Expiry {
        self.expiry
    }

    async fn raw_record_exists(&self, store: &Self::Store, key: &RequestKey) -> bool {
        (self.raw)(store, key).await
    }
}

/// How time passes for a backend under test.
///
/// Durations in the cases are whole `unit`s. With tokio's paused clock (the
/// memory store), sleeping costs nothing and store operations take no time,
/// so `slack` is zero; against a real server, `unit` is short and `slack`
/// absorbs round-trip time and scheduling noise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// One unit of test time.
    pub unit: Duration,
    /// How far a measured duration may stray from the expected one.
    pub slack: Duration,
}

impl Timing {
    /// For a test on tokio's paused clock (`#[tokio::test(start_paused = true)]`).
    pub const PAUSED: Timing = Timing {
        unit: Duration::from_secs(1),
        slack: Duration::ZERO,
    };

    /// For a test against a real server on real time.
    pub const REAL: Timing = Timing {
        unit: Duration::from_millis(250),
        slack: Duration::from_millis(120),
    };

    /// `n` units.
    pub fn units(self, n: u32) -> Duration {
        self.unit * n
    }

    /// Sleeps `n` units (free on a paused clock).
    pub async fn sleep(self, n: u32) {
        tokio::time::sleep(self.units(n)).await;
    }

    /// Whether `actual` is within `slack` of `expected`.
    pub fn about(self, actual: Duration, expected: Duration) -> bool {
        actual.abs_diff(expected) <= self.slack
    }
}

/// Expands to one `#[tokio::test]` per conformance case (and coordinator
/// case), each calling the case with `setup`.
///
/// `conformance_tests!(setup)` runs on real time ([`Timing::REAL`]);
/// `conformance_tests!(setup, paused)` runs on tokio's paused clock
/// ([`Timing::PAUSED`]), for stores that use tokio time;
/// `conformance_tests!(setup, requires available)` runs on real time, each
/// test first calling `available: fn() -> bool` and returning at once when
/// it says the backend is not there (it is the caller's to say so loudly,
/// or to fail when backends are required). The calling crate needs `tokio`
/// (with `macros`, `rt`, and `test-util` for `paused`) as a dev-dependency.
#[macro_export]
macro_rules! conformance_tests {
    ($setup:expr) => {
        $crate::__conformance_cases!(@each $setup, real, (|| true));
    };
    ($setup:expr, paused) => {
        $crate::__conformance_cases!(@each $setup, paused, (|| true));
    };
    ($setup:expr, requires $available:expr) => {
        $crate::__conformance_cases!(@each $setup, real, ($available));
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_cases {
    (@each $setup:expr, $mode:ident, $requires:expr) => {
        $crate::__conformance_cases!(@list $setup, $mode, $requires, cases:
            fresh_claim_is_acquired,
            live_lease_is_in_flight,
            expired_lease_is_taken_over,
            renew_extends_a_live_lease,
            renew_after_expiry_without_takeover_succeeds,
            renew_after_takeover_is_lease_lost,
            renew_refuses_an_out_of_range_ttl,
            stale_token_complete_is_lease_lost,
            stale_token_fail_is_lease_lost,
            stale_token_release_is_lease_lost,
            fenced_operations_on_a_missing_key_are_lease_lost,
            complete_stores_the_result,
            complete_twice_with_same_token_keeps_first_result,
            fail_twice_with_same_token_keeps_first_error,
            complete_after_fail_and_fail_after_complete_are_lease_lost,
            retryable_failure_backs_off_then_retries,
            permanent_failure_is_final,
            max_attempts_exhausted_by_failures,
            expired_lease_without_attempts_left_fails,
            fail_after_expired_last_lease_is_lease_lost,
            release_does_not_consume_an_attempt,
            kind_mismatch_is_refused_and_changes_nothing,
            fingerprint_mismatch_is_refused_and_changes_nothing,
            delete_then_claim_gets_a_higher_token,
            delete_and_get_of_a_missing_key,
            retention_expiry_forgets_the_record,
            sweep_removes_only_expired_records,
            wait_returns_on_complete,
            wait_returns_on_fail,
            wait_returns_on_lease_expiry,
            wait_returns_on_release,
            wait_returns_on_delete,
            wait_times_out,
            wait_returns_at_once_when_nothing_to_wait_for,
            concurrent_fresh_claims_acquire_once,
            tokens_strictly_increase_across_the_lifecycle,
            completed_result_is_the_same_for_every_reader,
            list_filters_by_state_kind_and_prefix,
            list_pages_follow_the_cursor_in_order,
            list_pages_stay_complete_while_records_change,
            list_refuses_a_foreign_cursor,
            stats_count_by_state_kind_and_prefix;
        coordinator:
            herd_of_callers_runs_the_job_once,
            herd_across_two_coordinators_runs_the_job_once,
            cached_result_is_returned_without_running,
            job_failure_is_recorded_and_returned,
            panicking_job_is_recorded_as_retryable_failure,
            crashed_worker_is_taken_over_after_its_lease,
            long_job_keeps_its_lease_alive,
            cancellation_releases_the_lease;
        coordinator_edges:
            lease_deleted_mid_job_stops_the_job_and_says_so,
            repeatable_job_runs_again_after_its_lease_is_deleted,
            finished_result_is_stored_under_a_new_lease,
            result_is_stored_when_callers_leave_during_complete,
            max_run_time_aborts_a_hung_job,
            renewal_refused_for_good_ends_the_run,
            store_outage_while_finishing,
            waiter_can_wait_out_a_retryable_failure,
            repeatable_job_waits_out_its_own_failures,
            coalesced_callers_share_the_first_callers_options,
            get_or_run_outside_a_runtime
        );
        $crate::__conformance_cases!(@multi_thread $setup, $mode, $requires);
    };
    // Cases that need a multi-thread runtime: on tokio's paused clock (a
    // current-thread runtime) a thread blocked by a job stops every task, so
    // there is nothing to observe.
    (@multi_thread $setup:expr, real, $requires:expr) => {
        $crate::__conformance_cases!(@one $setup, real, $requires, coordinator_edges, blocking_job_keeps_its_lease);
    };
    (@multi_thread $setup:expr, paused, $requires:expr) => {};
    (@list $setup:expr, $mode:ident, $requires:expr, cases: $($case:ident),* ; coordinator: $($coord:ident),* ; coordinator_edges: $($edge:ident),*) => {
        $( $crate::__conformance_cases!(@one $setup, $mode, $requires, cases, $case); )*
        $( $crate::__conformance_cases!(@one $setup, $mode, $requires, coordinator_cases, $coord); )*
        $( $crate::__conformance_cases!(@one $setup, $mode, $requires, coordinator_edges, $edge); )*
    };
    (@one $setup:expr, real, $requires:expr, $module:ident, $case:ident) => {
        #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $case() {
            if !($requires)() {
                return;
            }
            $crate::testkit::$module::$case(&$setup, $crate::testkit::Timing::REAL).await;
        }
    };
    (@one $setup:expr, paused, $requires:expr, $module:ident, $case:ident) => {
        #[::tokio::test(start_paused = true)]
        async fn $case() {
            if !($requires)() {
                return;
            }
            $crate::testkit::$module::$case(&$setup, $crate::testkit::Timing::PAUSED).await;
        }
    };
}

#[cfg(test)]
mod tests {
    /// The public cases of a module's source: every `pub async fn` name.
    fn cases_in(source: &str) -> Vec<&str> {
        source
            .lines()
            .filter_map(|line| line.trim_start().strip_prefix("pub async fn "))
            .map(|rest| {
                rest.split(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .next()
                    .unwrap_or_default()
            })
            .collect()
    }

    /// Every public case is in the conformance macro's list, so no backend
    /// can miss one silently; and every name in the list is a case.
    #[test]
    fn every_case_is_listed_in_the_macro() {
        let this = include_str!("mod.rs");
        let start = this
            .find("macro_rules! __conformance_cases")
            .expect("the macro");
        let listed: Vec<&str> = this[start..]
            .split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .filter(|word| !word.is_empty())
            .collect();
        let modules = [
            ("cases::claim", include_str!("cases/claim.rs")),
            ("cases::fenced", include_str!("cases/fenced.rs")),
            ("cases::guarantees", include_str!("cases/guarantees.rs")),
            ("cases::lifetime", include_str!("cases/lifetime.rs")),
            ("cases::listing", include_str!("cases/listing.rs")),
            ("cases::renew", include_str!("cases/renew.rs")),
            ("cases::retry", include_str!("cases/retry.rs")),
            ("cases::wait", include_str!("cases/wait.rs")),
            ("coordinator_cases", include_str!("coordinator_cases.rs")),
            ("coordinator_edges", include_str!("coordinator_edges.rs")),
        ];
        let mut total = 0;
        for (module, source) in modules {
            let cases = cases_in(source);
            assert!(!cases.is_empty(), "{module} has cases");
            for case in cases {
                total += 1;
                assert!(
                    listed.contains(&case),
                    "{module}::{case} is a public case but not in the list of `conformance_tests!`"
                );
            }
        }
        assert!(
            total > 50,
            "found only {total} cases: is the parser still right?"
        );
    }
}
