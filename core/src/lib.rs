//! The core of onceflight: run an expensive job once per key across a fleet
//! and share its result.
//!
//! - [`RequestStore`] is the small atomic protocol every backend implements
//!   (docs/protocol.md §3–§4): [`RequestStore::claim_or_get`] decides in one step whether
//!   the caller does the job, waits for it, or takes its cached result.
//! - [`Coordinator`] is what most Rust callers use: [`Coordinator::get_or_run`]
//!   claims, runs the job while renewing the lease, completes or fails it,
//!   waits on work in flight elsewhere and takes over expired work.
//!
//! This crate does no I/O of its own and depends on no database client.

pub mod backend;
mod cache;
mod claim;
mod coordinator;
mod error;
mod feed;
mod listing;
mod redact;
mod store;
mod types;
mod waiters;

#[cfg(feature = "testkit")]
pub mod testkit;

pub use cache::{CachedStore, HitCacheConfig, HitCacheStats};
pub use claim::{
    Claim, Completed, Failed, InFlight, Lease, Record, RecordState, Renewal, Timestamp,
};
pub use coordinator::{Coordinator, JobContext, Outcome, RunError, RunOptions, Source};
pub use error::{Error, Result};
pub use feed::ChangeFeed;
pub use listing::{
    DEFAULT_LIST_LIMIT, ListCursor, ListOrder, ListPage, ListQuery, MAX_LIST_LIMIT, StateCounts,
    StateFilter, StoreStats,
};
pub use store::RequestStore;
pub use types::{
    ClaimOptions, DEFAULT_LEASE_TTL, DEFAULT_MAX_ATTEMPTS, DEFAULT_RETENTION,
    DEFAULT_RETRY_BACKOFF, Fingerprint, JobError, Kind, MAX_ATTEMPTS_LIMIT, MAX_LEASE_TTL,
    MAX_MESSAGE_BYTES, MAX_RETRY_BACKOFF, MAX_TOKEN, Owner, RequestKey, Token,
};

/// Re-exported so that stores and callers name the same versions.
pub use bytes::Bytes;
